//! Generates the gRPC code from `proto/runner.proto`. Uses the vendored `protoc` unless `PROTOC`
//! points at another one, so building needs no system package.
#![allow(unsafe_code)]

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/runner.proto");
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    tonic_prost_build::configure().compile_protos(&["proto/runner.proto"], &["proto"])?;
    Ok(())
}
