//! Builds the kernel programs with aya-build (nightly, `bpfel-unknown-none`) and leaves the object
//! in `OUT_DIR` for `include_bytes_aligned!`.
//!
//! With `AYA_BUILD_SKIP=1` the kernel build is skipped and an empty placeholder object is written,
//! so that `cargo check`, clippy and the host unit tests work without the BPF toolchain. A binary
//! built that way reports a clear error when it is asked to load programs.
use std::{fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "sentinel-ebpf")
        .ok_or_else(|| anyhow!("sentinel-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let root_dir = manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
        .as_str();

    let skip = std::env::var("AYA_BUILD_SKIP")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    if skip {
        let out = PathBuf::from(std::env::var("OUT_DIR")?).join("sentinel");
        fs::write(&out, []).with_context(|| format!("writing placeholder {}", out.display()))?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        println!("cargo:rustc-cfg=sentinel_ebpf_placeholder");
        println!("cargo:rustc-check-cfg=cfg(sentinel_ebpf_placeholder)");
        return Ok(());
    }
    println!("cargo:rustc-check-cfg=cfg(sentinel_ebpf_placeholder)");

    let package = Package {
        name: name.as_str(),
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
