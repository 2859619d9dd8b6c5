//! Compiles the gRPC protos with the protoc shipped in `protoc-bin-vendored`, so building
//! needs no system protobuf-compiler package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // An explicitly provided protoc wins (e.g. a distro build); otherwise the vendored one.
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // Safe in edition 2021; the build script has no other threads reading the env.
        std::env::set_var("PROTOC", protoc);
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No `connect()` helpers: callers build their own channel (unix socket, TLS), so the
        // library does not need tonic's client transport.
        .build_transport(false)
        .compile_protos(&["proto/vdfw/v1/control.proto"], &["proto"])?;
    Ok(())
}
