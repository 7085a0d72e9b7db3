//! Compiles the .proto files with protox (pure Rust): no `protoc` binary needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/warden/v1/session.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
