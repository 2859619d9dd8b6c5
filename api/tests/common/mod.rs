//! Shared harness: a real server (controller + redb store) on a temp unix socket and a
//! loopback TCP port, plus REST and gRPC clients.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use api::client::{Client, Target};
use api::controller::{Controller, ControllerConfig};
use api::proto::control_client::ControlClient;
use api::server::{ApiConfig, RunningServer, TcpConfig};
use api::store::RedbStore;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

pub const TOKEN: &str = "test-token-0123456789";

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub controller: Arc<Controller>,
    pub server: Option<RunningServer>,
}

impl Harness {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir).await
    }

    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        let store = Arc::new(RedbStore::open(&dir.path().join("state")).unwrap());
        let controller = Arc::new(Controller::open(store, ControllerConfig::default()).unwrap());
        let config = ApiConfig {
            unix_socket: dir.path().join("run/api.sock"),
            tcp: Some(TcpConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                token: Some(TOKEN.into()),
                token_file: None,
                tls: None,
            }),
        };
        let server = api::server::start(controller.clone(), &config)
            .await
            .unwrap();
        Self {
            dir,
            controller,
            server: Some(server),
        }
    }

    /// Stops the server and drops the controller and store, keeping the state directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        drop(self.controller);
        self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.server.as_ref().unwrap().unix_socket.clone()
    }

    pub fn tcp(&self) -> SocketAddr {
        self.server.as_ref().unwrap().tcp_addr.unwrap()
    }

    pub fn unix_client(&self) -> Client {
        Client::new(Target::Unix(self.socket()), None)
    }

    pub fn tcp_client(&self, token: Option<&str>) -> Client {
        Client::new(
            Target::Tcp(self.tcp().to_string()),
            token.map(str::to_string),
        )
    }

    pub async fn grpc_unix(&self) -> ControlClient<Channel> {
        let path = self.socket();
        ControlClient::new(unix_channel(&path).await)
    }

    pub async fn grpc_tcp(&self) -> ControlClient<Channel> {
        let ch = Endpoint::try_from(format!("http://{}", self.tcp()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        ControlClient::new(ch)
    }
}

pub async fn unix_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        }))
        .await
        .unwrap()
}

/// Adds the bearer token to a gRPC request.
pub fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}
