//! REST client for the vdfw API, over the unix socket (default) or TCP with a bearer token.
//! Used by `vdfwctl` and the end-to-end tests.

use std::path::PathBuf;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::server::rest::ApiError;

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    /// `host:port`, cleartext
    Tcp(String),
    /// `host:port`, TLS (see [`Client::with_tls`])
    Tls(String),
}

impl Target {
    /// `unix:/path`, a bare absolute path, `http://host:port` or `https://host:port`.
    pub fn parse(s: &str) -> Result<Self, ClientError> {
        if let Some(p) = s.strip_prefix("unix:") {
            Ok(Self::Unix(PathBuf::from(p.trim_start_matches("//"))))
        } else if s.starts_with('/') {
            Ok(Self::Unix(PathBuf::from(s)))
        } else if let Some(hp) = s.strip_prefix("http://") {
            Ok(Self::Tcp(hp.trim_end_matches('/').to_string()))
        } else if let Some(hp) = s.strip_prefix("https://") {
            Ok(Self::Tls(hp.trim_end_matches('/').to_string()))
        } else {
            Err(ClientError::BadTarget(s.to_string()))
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(hp) => write!(f, "http://{hp}"),
            Self::Tls(hp) => write!(f, "https://{hp}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "bad server address {0:?}: use unix:/run/vdfw/api.sock, http://HOST:PORT or https://HOST:PORT"
    )]
    BadTarget(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot connect to vdfwd at {target}: {source} (is vdfwd running? are you root?)")]
    Connect {
        target: Target,
        source: std::io::Error,
    },
    #[error("talking to vdfwd: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The server answered with an error.
    #[error("{}", format_api_error(.status, .error))]
    Api { status: StatusCode, error: ApiError },
    #[error("unexpected answer from vdfwd ({status}): {body}")]
    Decode { status: StatusCode, body: String },
}

fn format_api_error(status: &StatusCode, e: &ApiError) -> String {
    let mut s = format!("{} ({})", e.error, status.as_u16());
    if !e.details.is_empty() && !e.error.contains(&e.details[0].message) {
        for d in &e.details {
            s.push_str(&format!("\n  {d}"));
        }
    }
    s
}

/// Files for a TLS connection: the CA that signed the server certificate and, for mutual
/// TLS, this client's certificate and key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Clone)]
pub struct Client {
    target: Target,
    token: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.target)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(target: Target, token: Option<String>) -> Self {
        Self {
            target,
            token,
            tls: None,
        }
    }

    /// Configures TLS for an `https://` target.
    pub fn with_tls(mut self, files: &ClientTls) -> Result<Self, ClientError> {
        use crate::server::tls::{read_certs, read_key, root_store};
        let tls_err = |e: crate::server::ServerError| ClientError::Tls(e.to_string());
        let ca = files.ca.as_ref().ok_or_else(|| {
            ClientError::Tls("give the CA certificate that signed the server's (--cacert)".into())
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(root_store(ca).map_err(tls_err)?);
        let mut config = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    read_certs(cert).map_err(tls_err)?,
                    read_key(key).map_err(tls_err)?,
                )
                .map_err(|e| ClientError::Tls(format!("{}: {e}", key.display())))?,
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(ClientError::Tls(
                    "a client certificate needs both --cert and --key".into(),
                ));
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        self.tls = Some(Arc::new(config));
        Ok(self)
    }

    /// Sends one request on a fresh connection and returns the status and streaming body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Incoming), ClientError> {
        let connect_err = |source| ClientError::Connect {
            target: self.target.clone(),
            source,
        };
        let (mut sender, host) = match &self.target {
            Target::Unix(p) => {
                let stream = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(connect_err)?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                (sender, "localhost".to_string())
            }
            Target::Tcp(hp) => {
                let stream = tokio::net::TcpStream::connect(hp)
                    .await
                    .map_err(connect_err)?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                (sender, hp.clone())
            }
            Target::Tls(hp) => {
                let config = self.tls.clone().ok_or_else(|| {
                    ClientError::Tls("https:// needs the server's CA certificate (--cacert)".into())
                })?;
                let host = host_of(hp);
                let name = rustls_pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| ClientError::Tls(format!("server name {host:?}: {e}")))?;
                let tcp = tokio::net::TcpStream::connect(hp)
                    .await
                    .map_err(connect_err)?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(connect_err)?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                (sender, hp.clone())
            }
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host);
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(b)))?,
            None => req.body(Full::new(Bytes::new()))?,
        };
        let resp = sender.send_request(req).await?;
        Ok((resp.status(), resp.into_body()))
    }

    /// A JSON call: errors from the server become [`ClientError::Api`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let (status, incoming) = self.send(method, path, body).await?;
        let bytes = incoming.collect().await?.to_bytes();
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ApiError>(&bytes) {
                Ok(error) => ClientError::Api { status, error },
                Err(_) => ClientError::Decode {
                    status,
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                },
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            status,
            body: format!("{e}: {}", String::from_utf8_lossy(&bytes)),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// Streams a newline-delimited JSON response, calling `f` per line until the server ends
    /// the stream or `f` returns false.
    pub async fn lines(
        &self,
        path: &str,
        mut f: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let (status, mut body) = self.send(Method::GET, path, None).await?;
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            return Err(match serde_json::from_slice::<ApiError>(&bytes) {
                Ok(error) => ClientError::Api { status, error },
                Err(_) => ClientError::Decode {
                    status,
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                },
            });
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.extend_from_slice(data);
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]);
                if !line.is_empty() && !f(&line) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// The host part of `host:port` / `[v6]:port`.
fn host_of(hp: &str) -> &str {
    if let Some(rest) = hp.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    hp.rsplit_once(':').map_or(hp, |(h, _)| h)
}

/// Percent-encodes a path segment or query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("unix:/run/vdfw/api.sock").unwrap(),
            Target::Unix("/run/vdfw/api.sock".into())
        );
        assert_eq!(
            Target::parse("/tmp/a.sock").unwrap(),
            Target::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            Target::parse("http://127.0.0.1:7443/").unwrap(),
            Target::Tcp("127.0.0.1:7443".into())
        );
        assert_eq!(
            Target::parse("https://h:1").unwrap(),
            Target::Tls("h:1".into())
        );
        assert!(Target::parse("ftp://x").is_err());
        assert_eq!(host_of("127.0.0.1:7443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7443"), "::1");
        assert_eq!(encode("a b=c,d"), "a%20b%3Dc%2Cd");
    }
}
