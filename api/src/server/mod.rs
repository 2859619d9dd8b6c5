//! The API server: REST (axum) and gRPC (tonic) on the same listeners.
//!
//! - The unix socket (default `/run/vdfw/api.sock`) is created with mode 0600: only root can
//!   connect, so it needs no token. It is bound under a temporary name, chmod'ed, then renamed
//!   into place, so it is never reachable with looser permissions.
//! - The optional TCP listener requires `Authorization: Bearer <token>` on every call;
//!   anything else is refused (HTTP 401, or gRPC `UNAUTHENTICATED`) and logged.
//!
//! One listener serves both protocols: HTTP/1.1 and HTTP/2 are auto-detected, and requests
//! with `content-type: application/grpc` are routed to the tonic service.

pub mod grpc;
mod metrics;
pub mod rest;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::controller::Controller;
pub use metrics::Metrics;

/// `[api]` section of the daemon configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_socket")]
    pub unix_socket: PathBuf,
    #[serde(default)]
    pub tcp: Option<TcpConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            unix_socket: default_socket(),
            tcp: None,
        }
    }
}

/// Default API socket path.
pub const DEFAULT_SOCKET: &str = "/run/vdfw/api.sock";

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    pub listen: SocketAddr,
    /// The bearer token, inline...
    #[serde(default)]
    pub token: Option<String>,
    /// ...or read from a file (first line), which keeps it out of the main config.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Serve TLS (and, with `client_ca`, require client certificates) instead of cleartext.
    #[serde(default)]
    pub tls: Option<tls::TlsConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the TCP API listener on {0} needs a bearer token: set api.tcp.token or api.tcp.token_file"
    )]
    MissingToken(SocketAddr),
    #[error("{0}: {1} exists and is not a socket; refusing to replace it")]
    NotASocket(String, PathBuf),
    #[error("API TLS configuration: {0}")]
    Tls(String),
}

fn io_err(path: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Io {
        path: path.to_string(),
        source,
    }
}

impl TcpConfig {
    fn resolve_token(&self) -> Result<String, ServerError> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.trim().to_string(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(io_err(f.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
            (None, None) => String::new(),
        };
        if token.is_empty() {
            return Err(ServerError::MissingToken(self.listen));
        }
        Ok(token)
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub controller: Arc<Controller>,
    pub metrics: Arc<Metrics>,
    /// Turns true when the server stops: long-lived streams (flow followers) end then, so
    /// graceful shutdown does not wait for clients that never hang up.
    pub shutdown: watch::Receiver<bool>,
}

/// The whole API (REST + gRPC + /metrics + /openapi.json), without authentication.
pub fn router(state: AppState) -> Router {
    let grpc = tonic::service::Routes::new(grpc::service(
        state.controller.clone(),
        state.shutdown.clone(),
    ))
    .into_axum_router();
    rest::router(state.clone())
        .merge(grpc)
        .layer(middleware::from_fn_with_state(
            state,
            metrics::count_requests,
        ))
}

#[derive(Clone)]
struct AuthState {
    token: Arc<str>,
    metrics: Arc<Metrics>,
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timing.
fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    if presented.len() != expected.len() {
        return false;
    }
    presented
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

async fn require_token(
    State(auth): State<AuthState>,
    ConnectInfo(tls::Peer(peer)): ConnectInfo<tls::Peer>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if presented.is_some_and(|t| token_matches(t, auth.token.as_bytes())) {
        return next.run(req).await;
    }
    auth.metrics.auth_failures.inc();
    let why = if presented.is_some() {
        "wrong bearer token"
    } else {
        "no bearer token"
    };
    tracing::warn!(%peer, method = %req.method(), path = %req.uri().path(), "refused unauthenticated API call: {why}");
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        // gRPC carries errors in headers of a 200 response (trailers-only).
        let mut resp = Response::new(Body::empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static("16"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("missing%20or%20wrong%20bearer%20token"),
        );
        return resp;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(rest::ApiError::new(format!(
            "unauthenticated: {why}; send 'Authorization: Bearer <token>' (api.tcp.token in the daemon config)"
        ))),
    )
        .into_response()
}

/// Resolves when the server is stopping.
pub async fn stopping(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Running listeners; dropping this does not stop them, call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub unix_socket: PathBuf,
    pub tcp_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight calls finish, removes the socket file.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.unix_socket);
    }
}

/// Binds the unix socket with mode 0600 without ever exposing it with looser permissions.
fn bind_private_unix(path: &Path) -> Result<UnixListener, ServerError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let shown = path.display().to_string();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io_err(&shown))?;
        }
        Ok(_) => return Err(ServerError::NotASocket(shown, path.to_path_buf())),
        Err(_) => {}
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io_err(tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(io_err(&shown))?;
    Ok(listener)
}

/// Starts the listeners. Must be called inside a tokio runtime.
pub async fn start(
    controller: Arc<Controller>,
    config: &ApiConfig,
) -> Result<RunningServer, ServerError> {
    let metrics = Arc::new(Metrics::new());
    let (shutdown, rx) = watch::channel(false);
    let state = AppState {
        controller,
        metrics: metrics.clone(),
        shutdown: rx.clone(),
    };
    let app = router(state);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();

    let unix = bind_private_unix(&config.unix_socket)?;
    tracing::info!(socket = %config.unix_socket.display(), "API listening (unix, mode 0600)");
    let unix_app = app.clone();
    let unix_rx = rx.clone();
    tasks.push(tokio::spawn(async move {
        axum::serve(unix, unix_app)
            .with_graceful_shutdown(stopped(unix_rx))
            .await
    }));

    let mut tcp_addr = None;
    if let Some(tcp) = &config.tcp {
        let token = tcp.resolve_token()?;
        let tls_config = tcp.tls.as_ref().map(tls::server_config).transpose()?;
        let listener = TcpListener::bind(tcp.listen)
            .await
            .map_err(io_err(tcp.listen))?;
        let addr = listener.local_addr().map_err(io_err(tcp.listen))?;
        tcp_addr = Some(addr);
        let mode = match &tcp.tls {
            Some(t) if t.client_ca.is_some() => "mutual TLS + bearer token",
            Some(_) => "TLS + bearer token",
            None => "cleartext, bearer token",
        };
        tracing::info!(%addr, "API listening (TCP, {mode})");
        if tls_config.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the TCP API listener is not on loopback and carries the bearer token in clear text: configure api.tcp.tls");
        }
        let auth = AuthState {
            token: token.into(),
            metrics: metrics.clone(),
        };
        let tcp_app = app
            .layer(middleware::from_fn_with_state(auth, require_token))
            .into_make_service_with_connect_info::<tls::Peer>();
        let done = stopped(rx);
        tasks.push(match tls_config {
            Some(cfg) => {
                let listener =
                    tls::TlsListener::new(listener, cfg, metrics).map_err(io_err(tcp.listen))?;
                tokio::spawn(async move {
                    axum::serve(listener, tcp_app)
                        .with_graceful_shutdown(done)
                        .await
                })
            }
            None => tokio::spawn(async move {
                axum::serve(listener, tcp_app)
                    .with_graceful_shutdown(done)
                    .await
            }),
        });
    }
    Ok(RunningServer {
        unix_socket: config.unix_socket.clone(),
        tcp_addr,
        shutdown,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(!token_matches(b"s3cres", b"s3cret"));
        assert!(!token_matches(b"s3cre", b"s3cret"));
        assert!(!token_matches(b"", b"s3cret"));
    }

    #[test]
    fn config_parses_and_requires_a_token_for_tcp() {
        let cfg: ApiConfig = toml::from_str(
            r#"
            unix_socket = "/tmp/x.sock"
            [tcp]
            listen = "127.0.0.1:7443"
            "#,
        )
        .unwrap();
        let tcp = cfg.tcp.unwrap();
        assert!(matches!(
            tcp.resolve_token(),
            Err(ServerError::MissingToken(_))
        ));
        let with = TcpConfig {
            token: Some(" abc ".into()),
            ..tcp
        };
        assert!(with.tls.is_none());
        assert_eq!(with.resolve_token().unwrap(), "abc");
        assert_eq!(
            ApiConfig::default().unix_socket,
            PathBuf::from(DEFAULT_SOCKET)
        );
    }
}
