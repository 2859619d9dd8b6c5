//! vdfw control plane: the persistent store, the controller that realizes policy, flow
//! records, the REST and gRPC services, and the `vdfwctl` client.

pub mod client;
pub mod controller;
pub mod dataplane;
pub mod engine;
pub mod flows;
pub mod generate;
pub mod libvirt;
pub mod offline;
pub mod realized;
pub mod refs;
pub mod report;
pub mod server;
pub mod store;
pub mod trace;
pub mod types;
pub mod yaml;

/// Generated gRPC types and client/server stubs (`api/proto/vdfw/v1/control.proto`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("vdfw.v1");
}
