//! Compiles the .proto files with protox (pure Rust): no `protoc` binary needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/warden/v1/session.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    // Small per-stream buffers: a server holds many sessions of tiny messages.
    tonic_prost_build::configure()
        .codec_path("crate::codec::SessionCodec")
        .compile_fds(fds)?;
    Ok(())
}
