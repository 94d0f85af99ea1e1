//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks to build, test, benchmark
//! and demo Sentinel. Every step checks first and does nothing when its part is in place, so a
//! second run takes a few seconds.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::run::{self, output};

/// Debian packages, and who needs them.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "llvm-22-dev",
        "bpf-linker is built against LLVM 22 (rustc's LLVM)",
    ),
    (
        "libpolly-22-dev",
        "linked by LLVM 22 when building bpf-linker",
    ),
    ("gcc", "the host linker for Rust binaries"),
    (
        "iproute2",
        "ip netns / veth: the root tests, benchmarks and demo",
    ),
    ("util-linux", "nsenter: runs the daemon inside a namespace"),
    ("bpftool", "inspecting the loaded programs and maps"),
    ("nftables", "benchmark peer: netdev ingress set drop"),
    ("ipset", "benchmark peer: iptables raw + ipset"),
    ("iptables", "benchmark peer: iptables raw + ipset"),
    (
        "tshark",
        "benchmark peer (tshark -Y http); dumpcap and tshark for the capture_files root test",
    ),
    (
        "tcpdump",
        "records capture files for the capture_files root test",
    ),
    ("wrk", "HTTP load generator for the capture benchmarks"),
    (
        "hydra",
        "attack tool for the tools root test (brute force, stuffing)",
    ),
    (
        "sqlmap",
        "attack tool for the tools root test (SQL injection)",
    ),
    (
        "wfuzz",
        "attack tool and payload lists for the tools root test",
    ),
    ("ffuf", "attack tool for the tools root test (enumeration)"),
    ("curl", "the tools root test's benign client"),
    (
        "fail2ban",
        "benchmark peer: log-based ban loop (bench verdict)",
    ),
    (
        "python3-pyinotify",
        "fail2ban's pyinotify backend (bench verdict)",
    ),
];

/// The LLVM that bpf-linker must be built against (see shared TOOLCHAIN.md).
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Runs every setup step.
pub fn setup() -> anyhow::Result<()> {
    let start = Instant::now();
    println!("== setup: checking what this machine has ==");
    apt_packages()?;
    rust_toolchains()?;
    bpf_linker()?;
    println!(
        "setup: everything is in place ({:.1} s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The packages of `names` that dpkg does not list as installed.
fn missing_packages(names: &[&str]) -> anyhow::Result<Vec<String>> {
    // dpkg-query exits non-zero when one name is unknown, but still prints the others.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${db:Status-Status}\n")
        .args(names)
        .output()
        .context("running dpkg-query: setup supports Debian and its derivatives (apt)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, status)| *status == "installed")
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    Ok(names
        .iter()
        .filter(|n| !installed.contains(n))
        .map(|n| n.to_string())
        .collect())
}

fn apt_get(args: &[&str]) -> anyhow::Result<()> {
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
    let outcome = run::run(c, Some(Duration::from_secs(30 * 60)))?;
    if !outcome.success() {
        bail!("apt-get {} failed: {}", args.join(" "), outcome.failure());
    }
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    let names: Vec<&str> = APT_PACKAGES.iter().map(|(n, _)| *n).collect();
    let missing = missing_packages(&names)?;
    if missing.is_empty() {
        println!("apt: all {} packages installed", names.len());
        return Ok(());
    }
    for (name, why) in APT_PACKAGES {
        if missing.iter().any(|m| m == name) {
            println!("apt: missing {name} ({why})");
        }
    }
    if !run::is_root() {
        bail!(
            "setup must install {}: run it as root (e.g. `sudo -E cargo xtask setup`)",
            missing.join(" ")
        );
    }
    apt_get(&["update"])?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(missing.iter().map(String::as_str));
    apt_get(&args)?;
    let still = missing_packages(&names)?;
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    Ok(())
}

fn rustup(args: &[&str]) -> anyhow::Result<()> {
    let mut c = Command::new("rustup");
    c.args(args);
    let outcome = run::run(c, Some(Duration::from_secs(20 * 60)))?;
    if !outcome.success() {
        bail!("rustup {} failed: {}", args.join(" "), outcome.failure());
    }
    Ok(())
}

fn installed_components(toolchain: Option<&str>) -> Vec<String> {
    let mut c = Command::new("rustup");
    c.args(["component", "list", "--installed"]);
    if let Some(t) = toolchain {
        c.args(["--toolchain", t]);
    }
    output(&mut c)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_owned())
        .collect()
}

fn has_component(installed: &[String], name: &str) -> bool {
    installed
        .iter()
        .any(|c| c == name || c.starts_with(&format!("{name}-")))
}

fn rust_toolchains() -> anyhow::Result<()> {
    if output(Command::new("rustup").arg("--version")).is_none() {
        bail!("rustup not found: Sentinel needs rustup with the stable and nightly toolchains");
    }
    // The workspace builds with stable; fmt and clippy are tiers of `cargo xtask test`.
    let stable = installed_components(None);
    let want: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !has_component(&stable, c))
        .collect();
    if want.is_empty() {
        println!("rustup: rustfmt and clippy installed");
    } else {
        let mut args = vec!["component", "add"];
        args.extend(want);
        rustup(&args)?;
    }
    // The kernel crate builds with nightly (`-Z build-std=core` needs rust-src). Use the
    // toolchain named `nightly` as it is: a dated one cannot be fetched on these machines.
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("rustup: no nightly toolchain; installing it");
        rustup(&[
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ])?;
    }
    if has_component(&installed_components(Some("nightly")), "rust-src") {
        println!("rustup: nightly has rust-src");
    } else {
        rustup(&["component", "add", "rust-src", "--toolchain", "nightly"])?;
    }
    Ok(())
}

/// `$CARGO_HOME/bin`, where `cargo install` puts binaries.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin"))
}

fn bpf_linker_version() -> Option<String> {
    output(Command::new("bpf-linker").arg("--version")).map(|s| s.trim().to_owned())
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(v) = bpf_linker_version() {
        println!("bpf-linker: {v}");
        return Ok(());
    }
    println!("bpf-linker: not found; building it against LLVM 22 (takes a minute or two)");
    let path = format!(
        "{LLVM_PREFIX}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = run::cargo();
    c.env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
        .env("PATH", path)
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ]);
    let outcome = run::run(c, Some(Duration::from_secs(30 * 60)))?;
    if !outcome.success() {
        bail!("cargo install bpf-linker failed: {}", outcome.failure());
    }
    match bpf_linker_version() {
        Some(v) => {
            println!("bpf-linker: installed {v}");
            Ok(())
        }
        None => bail!(
            "bpf-linker was installed but does not run from PATH; add {} to PATH",
            cargo_bin_dir()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "$CARGO_HOME/bin".into())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_match_with_or_without_target_suffix() {
        let installed = vec![
            "rust-src".to_owned(),
            "rustfmt-x86_64-unknown-linux-gnu".to_owned(),
        ];
        assert!(has_component(&installed, "rust-src"));
        assert!(has_component(&installed, "rustfmt"));
        assert!(!has_component(&installed, "clippy"));
    }

    #[test]
    fn unknown_packages_count_as_missing() {
        if output(Command::new("dpkg-query").arg("--version")).is_none() {
            eprintln!("skipped: no dpkg-query on this machine");
            return;
        }
        // dpkg itself is always installed where dpkg-query runs.
        let missing = missing_packages(&["dpkg", "sentinel-no-such-package"]).unwrap();
        assert_eq!(missing, vec!["sentinel-no-such-package".to_owned()]);
    }

    #[test]
    fn package_list_has_no_duplicates() {
        let mut names: Vec<&str> = APT_PACKAGES.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len());
    }
}
