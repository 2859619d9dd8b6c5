//! The TCP listener with mutual TLS: certificates made with rcgen, a real server on a
//! loopback port, REST (client library and the vdfwctl binary) and gRPC clients.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use api::client::{Client, ClientError, ClientTls, Target};
use api::controller::{Controller, ControllerConfig};
use api::proto;
use api::proto::control_client::ControlClient;
use api::server::tls::TlsConfig;
use api::server::{ApiConfig, TcpConfig};
use api::store::RedbStore;
use common::{authed, TOKEN};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    dir: &Path,
    name: &str,
    sans: &[&str],
    purpose: ExtendedKeyUsagePurpose,
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> (PathBuf, PathBuf) {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = vec![purpose];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn pki(dir: &Path) -> Pki {
    let ca1 = ca("vdfw test CA");
    let ca2 = ca("rogue CA");
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, ca1.pem()).unwrap();
    let (server_cert, server_key) = leaf(
        dir,
        "server",
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
        &ca1,
    );
    let (client_cert, client_key) = leaf(
        dir,
        "client",
        &["ops"],
        ExtendedKeyUsagePurpose::ClientAuth,
        &ca1,
    );
    let (rogue_cert, rogue_key) = leaf(
        dir,
        "rogue",
        &["ops"],
        ExtendedKeyUsagePurpose::ClientAuth,
        &ca2,
    );
    Pki {
        ca: ca_path,
        server_cert,
        server_key,
        client_cert,
        client_key,
        rogue_cert,
        rogue_key,
    }
}

async fn grpc_tls(
    addr: std::net::SocketAddr,
    pki: &Pki,
) -> ControlClient<tonic::transport::Channel> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(&pki.client_cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&pki.client_key).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let ch = tonic::transport::Endpoint::try_from("http://127.0.0.1")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    ControlClient::new(ch)
}

#[tokio::test]
async fn mutual_tls_listener_accepts_only_certified_clients_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let store = Arc::new(RedbStore::open(&dir.path().join("state")).unwrap());
    let controller = Arc::new(Controller::open(store, ControllerConfig::default()).unwrap());
    let config = ApiConfig {
        unix_socket: dir.path().join("api.sock"),
        tcp: Some(TcpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: Some(TOKEN.into()),
            token_file: None,
            tls: Some(TlsConfig {
                cert: pki.server_cert.clone(),
                key: pki.server_key.clone(),
                client_ca: Some(pki.ca.clone()),
            }),
        }),
    };
    let server = api::server::start(controller, &config).await.unwrap();
    let addr = server.tcp_addr.unwrap();
    let target = Target::Tls(addr.to_string());
    let files = |cert: &Path, key: &Path| ClientTls {
        ca: Some(pki.ca.clone()),
        cert: Some(cert.to_path_buf()),
        key: Some(key.to_path_buf()),
    };

    // Certified client + token: served.
    let good = Client::new(target.clone(), Some(TOKEN.into()))
        .with_tls(&files(&pki.client_cert, &pki.client_key))
        .unwrap();
    let rev: Value = good.get("/v1/revision").await.unwrap();
    assert_eq!(rev["revision"], 0);

    // Certified client without the token: 401.
    let no_token = Client::new(target.clone(), None)
        .with_tls(&files(&pki.client_cert, &pki.client_key))
        .unwrap();
    assert!(matches!(
        no_token.get::<Value>("/v1/revision").await,
        Err(ClientError::Api { status, .. }) if status == hyper::StatusCode::UNAUTHORIZED
    ));

    // No client certificate, or one from another CA: refused in the handshake.
    let anonymous = Client::new(target.clone(), Some(TOKEN.into()))
        .with_tls(&ClientTls {
            ca: Some(pki.ca.clone()),
            ..Default::default()
        })
        .unwrap();
    assert!(anonymous.get::<Value>("/v1/revision").await.is_err());
    let rogue = Client::new(target.clone(), Some(TOKEN.into()))
        .with_tls(&files(&pki.rogue_cert, &pki.rogue_key))
        .unwrap();
    assert!(rogue.get::<Value>("/v1/revision").await.is_err());
    // Cleartext HTTP on the TLS port gets nowhere either.
    let plain = Client::new(Target::Tcp(addr.to_string()), Some(TOKEN.into()));
    assert!(plain.get::<Value>("/v1/revision").await.is_err());

    // gRPC over the same mutual-TLS port.
    let mut g = grpc_tls(addr, &pki).await;
    let r = g
        .get_revision(authed(proto::ListRequest {}, TOKEN))
        .await
        .unwrap();
    assert_eq!(r.into_inner().revision, 0);
    let e = g.get_revision(proto::ListRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // The vdfwctl binary with --cacert/--cert/--key.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vdfwctl"))
        .args(["--server", &format!("https://{addr}"), "--token", TOKEN])
        .arg("--cacert")
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&pki.client_cert)
        .arg("--key")
        .arg(&pki.client_key)
        .arg("revision")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");

    // Handshake refusals were counted.
    let metrics_client = Client::new(Target::Unix(dir.path().join("api.sock")), None);
    let (_, body) = metrics_client
        .send(hyper::Method::GET, "/metrics", None)
        .await
        .unwrap();
    let text = String::from_utf8(
        http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let failures: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("vdfw_api_tls_handshake_failures_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(failures >= 2, "metrics:\n{text}");
    server.shutdown().await;
}
