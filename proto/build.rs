fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so that a new machine needs no system package to build.
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=kinesis_butler/v1/butler.proto");
    tonic_prost_build::configure()
        .codec_path("crate::codec::PresizedCodec")
        // Payloads decode as slices of the received buffer rather than a copy each.
        .bytes(".kinesis_butler.v1.Record.data")
        .file_descriptor_set_path(std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("butler_descriptor.bin"))
        .compile_protos(&["kinesis_butler/v1/butler.proto"], &["."])?;
    Ok(())
}
