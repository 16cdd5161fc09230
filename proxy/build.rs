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
    println!("cargo:rerun-if-env-changed=SLUICE_PROTO_DEBUG");

    let api = proto_root.join("data-plane-api");
    let mut rel: Vec<PathBuf> = Vec::new();
    // Envoy's API, plus the xds matcher types that istiod's filter_chain_matcher uses through
    // Any (IPMatcher) and that envoy-types generates no struct for, and TypedStruct (udpa and
    // xds), which Istio wraps its own filters in.
    let local = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("proto");
    println!("cargo:rerun-if-changed={}", local.display());
    for (root, sub) in [
        (api.clone(), "envoy"),
        (proto_root.join("xds"), "xds/type"),
        (local.clone(), "xds"),
        (local.clone(), "udpa"),
    ] {
        let mut files = Vec::new();
        collect_protos(&root.join(sub), &mut files);
        files.sort();
        rel.extend(
            files
                .iter()
                .map(|f| f.strip_prefix(&root).unwrap().to_path_buf()),
        );
    }

    let mut includes: Vec<PathBuf> = vec![local.clone()];
    includes.extend(
        [
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
        .filter(|p| p.exists()),
    );

    // One compiler sees every file opened so far, and protobuf's relative-name lookup can then
    // be shadowed (`config.route.v3.X` inside `envoy.extensions.filters...` finds the package
    // `envoy.extensions.config` first). A file that fails that way compiles on its own, with
    // only its imports visible, and its descriptors are merged in. envoy-types ships the protos
    // its generated code needs, not every import of every file: files that fail alone too are
    // skipped (none is a type Sluice uses; the proxy's tests check the ones it needs).
    let mut main = protox::Compiler::new(&includes).expect("proto include paths");
    main.include_imports(true).include_source_info(false);
    let mut retry = Vec::new();
    for file in &rel {
        if main.open_file(file).is_err() {
            retry.push(file);
        }
    }
    let mut fds = main.file_descriptor_set();
    let mut seen: std::collections::HashSet<String> =
        fds.file.iter().map(|f| f.name().to_string()).collect();
    let mut skipped = Vec::new();
    for file in retry {
        let mut alone = protox::Compiler::new(&includes).expect("proto include paths");
        alone.include_imports(true).include_source_info(false);
        match alone.open_file(file) {
            Ok(_) => {
                for f in alone.file_descriptor_set().file {
                    if seen.insert(f.name().to_string()) {
                        fds.file.push(f);
                    }
                }
            }
            Err(e) => skipped.push(format!("{}: {e}", file.display())),
        }
    }
    if std::env::var("SLUICE_PROTO_DEBUG").is_ok() {
        for s in &skipped {
            println!("cargo:warning=skipped {s}");
        }
    }
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
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(std::env::var("TARGET").unwrap())
        .arg("--manifest-path")
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
