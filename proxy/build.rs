//! Compiles Envoy's data-plane API `.proto` files (shipped inside the `envoy-types` crate) into
//! one `FileDescriptorSet`, embedded in the binary. The descriptor pool built from it gives the
//! proxy proto3-JSON/YAML decoding with `@type` Any resolution and Envoy-shaped JSON output for
//! `/config_dump`, using exactly the schema `envoy-types`' generated structs were made from.
//! No system `protoc` is involved: `protox` is a pure-Rust protobuf compiler.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let proto_root = envoy_types_proto_dir();
    println!("cargo:rerun-if-changed=build.rs");

    let api = proto_root.join("data-plane-api");
    let mut files = Vec::new();
    collect_protos(&api.join("envoy"), &mut files);
    files.sort();
    let rel: Vec<PathBuf> = files
        .iter()
        .map(|f| f.strip_prefix(&api).expect("under api").to_path_buf())
        .collect();

    let includes: Vec<PathBuf> = [
        "data-plane-api",
        "xds",
        "protoc-gen-validate",
        "googleapis",
        "cel-spec/proto",
        "opentelemetry-proto",
        "client_model",
        "ratelimit",
    ]
    .iter()
    .map(|d| proto_root.join(d))
    .filter(|p| p.exists())
    .collect();

    let fds = protox::compile(&rel, &includes).expect("compiling Envoy protos");
    let bytes = prost::Message::encode_to_vec(&fds);
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("envoy_descriptor.bin");
    std::fs::write(out, bytes).unwrap();
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_protos(&path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
}

/// Finds the `proto/` folder of the `envoy-types` package this build resolved, via
/// `cargo metadata` (works for registry, vendored and git sources alike).
fn envoy_types_proto_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SLUICE_ENVOY_PROTO_DIR") {
        return PathBuf::from(dir);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--manifest-path"])
        .arg(manifest.join("Cargo.toml"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pkgs = meta["packages"].as_array().unwrap();
    let pkg = pkgs
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types in cargo metadata");
    let manifest_path = PathBuf::from(pkg["manifest_path"].as_str().unwrap());
    let dir = manifest_path.parent().unwrap().join("proto");
    println!("cargo:rerun-if-changed={}", dir.display());
    dir
}
