//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks, and nothing when all is
//! there (it checks first, so a second run takes a second or two).
//!
//! - apt packages: LLVM 22 (to build bpf-linker against the LLVM that nightly rustc uses) and the
//!   tools the tests use (iproute2 for namespaces and veth, util-linux for nsenter);
//! - the nightly toolchain's rust-src (the kernel crate is built with `-Z build-std=core`);
//! - bpf-linker 0.13 built with `--features llvm-22` (its default, LLVM 23, is not packaged).

use std::process::Command;

use anyhow::{Context as _, bail};

use super::run;

/// Packages the build and the tests need.
pub const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "iproute2",
    "util-linux",
    "ca-certificates",
];

/// Extra packages for the benchmarks' peers.
pub const BENCH_PACKAGES: &[&str] = &["nftables", "ipset", "iptables", "bpftool", "tshark", "wrk"];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the missing packages of `pkgs` with apt (one `apt-get update` first).
pub fn ensure_packages(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("setup: apt packages present ({})", pkgs.join(" "));
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn has_rust_src() -> anyhow::Result<bool> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup (is rustup installed, with a nightly toolchain?)")?;
    if !out.status.success() {
        bail!(
            "rustup has no nightly toolchain: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src")))
}

fn has_bpf_linker() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Installs everything missing.
pub fn setup() -> anyhow::Result<()> {
    ensure_packages(PACKAGES)?;
    if has_rust_src()? {
        println!("setup: rust-src for nightly present");
    } else {
        println!("setup: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if has_bpf_linker() {
        println!("setup: bpf-linker present");
    } else {
        println!("setup: building bpf-linker against LLVM 22 (about a minute)");
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(
            Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
                .env("PATH", path),
        )?;
        if !has_bpf_linker() {
            bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
        }
    }
    Ok(())
}
