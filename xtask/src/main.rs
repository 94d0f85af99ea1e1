//! Developer and CI tasks: `cargo xtask setup | test | demo | bench`.
//!
//! xtask depends on nothing of Sentinel's own, so it builds on a bare machine before the BPF
//! toolchain exists; `setup` is what installs that toolchain.

mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Sentinel's developer and CI tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks: apt packages, rust-src for nightly, bpf-linker (LLVM 22).
    Setup,
    /// Run every test tier: format, clippy, host unit tests, BPF_PROG_TEST_RUN and namespace
    /// tests (root).
    Test {
        /// Only the host tier (format, clippy, unit tests); no root needed.
        #[arg(long)]
        unit: bool,
        /// Extra arguments for the root test run (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run Sentinel's main job on the embedded default: namespaces, the daemon, clients.
    Demo,
    /// Run a benchmark and write its figures into BENCHMARKS.md.
    Bench {
        /// Which benchmark.
        #[arg(value_enum)]
        name: Bench,
        /// A shorter run (fewer rounds).
        #[arg(long)]
        quick: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// XDP datapath: per-packet cost, drop rate vs nftables and ipset, bulk load.
    Datapath,
    /// Capture: TC program cost vs a reserve+copy+submit reference.
    Capture,
}

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cargo target directory (respects CARGO_TARGET_DIR).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Runs a command in the workspace root, failing with its exit status.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    cmd.current_dir(root());
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("{what} loads eBPF programs and creates network namespaces: run it as root");
    }
    Ok(())
}

/// Builds the `sentinel` binary (with its eBPF object) and returns its path.
fn build_sentinel(release: bool) -> anyhow::Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "-p", "sentinel-userspace"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)?;
    Ok(target_dir()
        .join(if release { "release" } else { "debug" })
        .join("sentinel"))
}

struct Tier {
    name: &'static str,
    result: anyhow::Result<()>,
    secs: f64,
}

fn tier(name: &'static str, f: impl FnOnce() -> anyhow::Result<()>) -> Tier {
    println!("\n==> {name}");
    let t = Instant::now();
    let result = f();
    Tier {
        name,
        result,
        secs: t.elapsed().as_secs_f64(),
    }
}

fn test(unit_only: bool, extra: &[String]) -> anyhow::Result<()> {
    if !unit_only {
        require_root("cargo xtask test")?;
    }
    setup::setup()?;
    let mut tiers = vec![
        tier("format (cargo fmt --check)", || {
            run(cargo().args(["fmt", "--all", "--", "--check"]))
        }),
        tier("lints (clippy -D warnings)", || {
            run(cargo()
                .args([
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "sentinel-ebpf",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ])
                .env("AYA_BUILD_SKIP", "1"))
        }),
        tier("host unit tests", || {
            run(cargo()
                .args([
                    "test",
                    "--workspace",
                    "--exclude",
                    "sentinel-ebpf",
                    "--exclude",
                    "sentinel-tests",
                ])
                .env("AYA_BUILD_SKIP", "1"))
        }),
    ];
    if !unit_only {
        tiers.push(tier(
            "kernel tests (BPF_PROG_TEST_RUN, namespaces, real traffic)",
            || {
                let bin = build_sentinel(false)?;
                run(cargo()
                    .args(["test", "-p", "sentinel-tests"])
                    .args(extra)
                    .env("SENTINEL_BIN", bin))
            },
        ));
    }
    println!("\n==> summary");
    let mut failed = 0;
    for t in &tiers {
        match &t.result {
            Ok(()) => println!("  ok    {:<60} {:>7.1} s", t.name, t.secs),
            Err(e) => {
                failed += 1;
                println!("  FAIL  {:<60} {:>7.1} s  {e:#}", t.name, t.secs);
            }
        }
    }
    if failed > 0 {
        bail!("{failed} tier(s) failed");
    }
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    require_root("cargo xtask demo")?;
    setup::setup()?;
    let bin = build_sentinel(false)?;
    run(Command::new(bin).arg("demo"))
}

fn bench(which: Bench, quick: bool) -> anyhow::Result<()> {
    require_root("cargo xtask bench")?;
    setup::setup()?;
    setup::ensure_packages(setup::BENCH_PACKAGES)?;
    let bin = build_sentinel(true)?;
    let bins: &[&str] = match which {
        Bench::Datapath => &["bench_datapath"],
        Bench::Capture => &["bench_capture_tc"],
    };
    for b in bins {
        let mut c = cargo();
        c.args(["run", "--release", "-p", "sentinel-tests", "--bin", b, "--"])
            .env("SENTINEL_BIN", &bin);
        if quick {
            c.arg("--quick");
        }
        run(&mut c)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::setup(),
        Task::Test { unit, args } => test(unit, &args),
        Task::Demo => demo(),
        Task::Bench { name, quick } => bench(name, quick),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
