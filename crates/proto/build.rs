//! Generates Rust from `proto/` with protox, so no `protoc` is needed on the machine.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["common.proto", "client.proto", "events.proto", "api.proto", "internal.proto"]
        .map(|f| root.join("natter/v1").join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    // compile_fds does not write the descriptor set that reflection and
    // pbjson need, so write it ourselves.
    let descriptor_bytes = fds.encode_to_vec();
    std::fs::write(out.join("natter_descriptor.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        // A newer client may send fields this server does not know yet.
        .ignore_unknown_fields()
        .build(&[".natter.v1"])?;
    Ok(())
}
