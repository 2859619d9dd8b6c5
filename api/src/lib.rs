//! vdfw control plane: the persistent store, the controller that realizes policy, flow
//! records, the REST and gRPC services, and the `vdfwctl` client.

pub mod store;
pub mod types;
