//! vdfw control plane (REST + gRPC, stores, vdfwctl).
