//! Developer and CI tasks: `cargo xtask setup | test | demo | bench | eval`.
//!
//! xtask depends on nothing of Sentinel's own, so it builds on a bare machine before the BPF
//! toolchain exists; `setup` is what installs that toolchain. Every command it runs is printed
//! first, runs in its own process group (Ctrl-C is forwarded to it so it can clean up) and is
//! bounded in time.

mod run;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use run::{Outcome, TestCounts, Workspace, is_root};

#[derive(Parser)]
#[command(name = "xtask", about = "Sentinel's developer and CI tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks: apt packages, rustfmt/clippy, rust-src for nightly,
    /// bpf-linker built against LLVM 22. Fast and harmless when everything is there.
    Setup,
    /// Run every test tier: setup, format, clippy, host unit tests, then (as root) the
    /// BPF_PROG_TEST_RUN and network-namespace tests against a freshly built `sentinel`.
    Test {
        /// Only the host tier (format, clippy, unit tests, with a placeholder eBPF object):
        /// no setup, no root.
        #[arg(long)]
        unit: bool,
        /// Do not run setup first.
        #[arg(long)]
        no_setup: bool,
        /// Extra arguments for the root test run (e.g. a test name filter, --test-threads=1).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build `sentinel` and run `sentinel demo` (root): namespaces, the daemon, three clients.
    Demo {
        /// Arguments passed on to `sentinel demo`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run benchmarks (tests/src/bin/bench_NAME*.rs, release build, root); each writes its
    /// section of BENCHMARKS.md.
    Bench {
        /// Which benchmarks, by name or name prefix (e.g. `datapath`, `capture`); none: all.
        names: Vec<String>,
        /// A shorter run (fewer rounds), passed to each benchmark as `--quick`.
        #[arg(long)]
        quick: bool,
    },
    /// Evaluate the detection models on simulated, labelled traffic (tests/src/bin/eval.rs):
    /// simulate, replay through `sentinel replay --emit alerts`, score against the truth, print
    /// a table per alert kind and write it into BENCHMARKS.md. No root needed.
    Eval {
        /// Seeds to run (repeatable); default 1 to 5, 11 and 12 (1 with --quick).
        #[arg(long = "seed")]
        seeds: Vec<u64>,
        /// A smaller world (400 users, 10 scenarios per kind); BENCHMARKS.md is not written.
        #[arg(long)]
        quick: bool,
        /// Do not write BENCHMARKS.md.
        #[arg(long)]
        no_write: bool,
    },
}

/// Time limits per tier, generous for a fresh 2-core machine; CI allows 90 minutes in all.
const LIMIT_FMT: Duration = Duration::from_secs(5 * 60);
const LIMIT_BUILD: Duration = Duration::from_secs(30 * 60);
const LIMIT_ROOT_TESTS: Duration = Duration::from_secs(45 * 60);

fn require_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "{what} loads eBPF programs and creates network namespaces: run it as root \
             (e.g. `sudo -E cargo xtask ...`)"
        );
    }
    Ok(())
}

/// Runs a command and fails unless it succeeds.
fn run_ok(cmd: Command, limit: Duration) -> anyhow::Result<Outcome> {
    let shown = run::show(&cmd);
    let outcome = run::run(cmd, Some(limit))?;
    if !outcome.success() {
        bail!("{shown}: {}", outcome.failure());
    }
    Ok(outcome)
}

/// Builds `sentinel` (with its eBPF object) and returns its path.
fn build_sentinel(ws: &Workspace, release: bool) -> anyhow::Result<PathBuf> {
    let mut c = ws.cargo(&["build", "-p", "sentinel-userspace"]);
    if release {
        c.arg("--release");
    }
    // A placeholder object would build, then fail to load: always build the real one here.
    c.env_remove("AYA_BUILD_SKIP");
    run_ok(c, LIMIT_BUILD)?;
    Ok(ws.bin(if release { "release" } else { "debug" }, "sentinel"))
}

/// For `bench` and `eval`: runs setup, builds the release `sentinel` (see [`build_sentinel`])
/// and the `sentinel-tests` binaries that `select` names (cargo's `--bins` or `--bin NAME`),
/// and returns the path of `sentinel`.
fn build_release_tools(ws: &Workspace, select: &[&str]) -> anyhow::Result<PathBuf> {
    setup::setup()?;
    let sentinel = build_sentinel(ws, true)?;
    let mut build = ws.cargo(&["build", "--release", "-p", "sentinel-tests"]);
    build.args(select);
    // The same environment as the sentinel build above, or cargo rebuilds it with a placeholder.
    build.env_remove("AYA_BUILD_SKIP");
    run_ok(build, LIMIT_BUILD)?;
    Ok(sentinel)
}

/// A release `sentinel-tests` binary to run from the workspace root, told where `sentinel` is.
fn release_tool(ws: &Workspace, sentinel: &Path, name: &str) -> Command {
    let mut c = Command::new(ws.bin("release", name));
    c.current_dir(&ws.root).env("SENTINEL_BIN", sentinel);
    c
}

/// One tier of `cargo xtask test` and how it went.
struct Tier {
    name: &'static str,
    ok: bool,
    note: String,
    tests: TestCounts,
    secs: f64,
}

struct Tiers(Vec<Tier>);

impl Tiers {
    fn header(name: &str) {
        println!("\n==> {name}");
    }

    /// Runs a command as a tier.
    fn command(
        &mut self,
        name: &'static str,
        cmd: Command,
        limit: Duration,
    ) -> anyhow::Result<bool> {
        Self::header(name);
        let outcome = run::run(cmd, Some(limit))?;
        let ok = outcome.success();
        self.0.push(Tier {
            name,
            ok,
            note: if ok { String::new() } else { outcome.failure() },
            tests: outcome.tests,
            secs: outcome.elapsed.as_secs_f64(),
        });
        Ok(ok)
    }

    /// Runs a function as a tier.
    fn step(&mut self, name: &'static str, f: impl FnOnce() -> anyhow::Result<()>) -> bool {
        Self::header(name);
        let t = Instant::now();
        let r = f();
        let ok = r.is_ok();
        self.0.push(Tier {
            name,
            ok,
            note: r.err().map(|e| format!("{e:#}")).unwrap_or_default(),
            tests: TestCounts::default(),
            secs: t.elapsed().as_secs_f64(),
        });
        ok
    }

    fn fail(&mut self, name: &'static str, note: String) {
        Self::header(name);
        println!("{note}");
        self.0.push(Tier {
            name,
            ok: false,
            note,
            tests: TestCounts::default(),
            secs: 0.0,
        });
    }

    /// Prints the summary; true when every tier passed.
    fn summary(&self) -> bool {
        println!("\n==> summary");
        let mut total = TestCounts::default();
        for t in &self.0 {
            total.merge(t.tests);
            let tests = if t.tests.suites > 0 {
                format!(
                    "{} passed, {} failed, {} ignored",
                    t.tests.passed, t.tests.failed, t.tests.ignored
                )
            } else {
                String::new()
            };
            println!(
                "  {:<4}  {:<8} {:>7.1} s  {tests}{}{}",
                if t.ok { "ok" } else { "FAIL" },
                t.name,
                t.secs,
                if !tests.is_empty() && !t.note.is_empty() {
                    "; "
                } else {
                    ""
                },
                t.note
            );
        }
        let failed_tiers = self.0.iter().filter(|t| !t.ok).count();
        println!(
            "tiers: {} passed, {} failed",
            self.0.len() - failed_tiers,
            failed_tiers
        );
        println!("tests: {} passed, {} failed", total.passed, total.failed);
        failed_tiers == 0
    }
}

fn test(unit_only: bool, no_setup: bool, extra: &[String]) -> anyhow::Result<()> {
    let ws = Workspace::locate()?;
    println!(
        "workspace {}, target {}{}",
        ws.root.display(),
        ws.target.display(),
        if std::env::var_os("CI").is_some() {
            " (CI)"
        } else {
            ""
        }
    );
    let mut tiers = Tiers(Vec::new());
    if !unit_only && !no_setup && !tiers.step("setup", setup::setup) {
        tiers.summary();
        bail!("setup failed; no test was run");
    }
    tiers.command(
        "fmt",
        ws.cargo(&["fmt", "--all", "--", "--check"]),
        LIMIT_FMT,
    )?;
    // sentinel-ebpf only builds for bpfel-unknown-none (nightly, build-std): it is not linted
    // for the host. AYA_BUILD_SKIP gives the userspace crate a placeholder object.
    let mut clippy = ws.cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "sentinel-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    clippy.env("AYA_BUILD_SKIP", "1");
    tiers.command("clippy", clippy, LIMIT_BUILD)?;
    // --no-fail-fast: one failing test binary must not hide the results of the others.
    let mut unit = ws.cargo(&[
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "sentinel-ebpf",
        "--exclude",
        "sentinel-tests",
    ]);
    if unit_only {
        unit.env("AYA_BUILD_SKIP", "1");
        tiers.command("unit", unit, LIMIT_BUILD)?;
    } else {
        let built = tiers.step("build", || build_sentinel(&ws, false).map(|_| ()));
        // With the toolchain in place the unit tests see the real eBPF object.
        unit.env_remove("AYA_BUILD_SKIP");
        tiers.command("unit", unit, LIMIT_BUILD)?;
        if !is_root() {
            tiers.fail(
                "root",
                "the root tests (BPF_PROG_TEST_RUN, namespaces, real traffic) need root: run \
                 `sudo -E cargo xtask test`, or `cargo xtask test --unit` for the host tier only"
                    .into(),
            );
        } else if !built {
            tiers.fail("root", "not run: the sentinel binary did not build".into());
        } else {
            let mut root = ws.cargo(&["test", "--no-fail-fast", "-p", "sentinel-tests"]);
            root.env_remove("AYA_BUILD_SKIP")
                .env("SENTINEL_BIN", ws.bin("debug", "sentinel"));
            if !extra.is_empty() {
                root.arg("--").args(extra);
            }
            tiers.command("root", root, LIMIT_ROOT_TESTS)?;
        }
    }
    if !tiers.summary() {
        bail!("some tiers failed");
    }
    Ok(())
}

fn demo(args: &[String]) -> anyhow::Result<()> {
    require_root("cargo xtask demo")?;
    setup::setup()?;
    let ws = Workspace::locate()?;
    let bin = build_sentinel(&ws, false)?;
    let mut c = Command::new(bin);
    c.arg("demo").args(args).current_dir(&ws.root);
    run_ok(c, Duration::from_secs(10 * 60))?;
    Ok(())
}

/// The benchmark binaries: `bench_*.rs` under tests/src/bin, without the `bench_` prefix.
fn benches(ws: &Workspace) -> anyhow::Result<Vec<String>> {
    let dir = ws.root.join("tests/src/bin");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("bench_")?
                .strip_suffix(".rs")
                .map(str::to_owned)
        })
        .collect();
    out.sort();
    Ok(out)
}

/// True when benchmark `bench` is selected by `name` (`capture` selects `capture_tc`).
fn selects(name: &str, bench: &str) -> bool {
    bench == name
        || bench
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('_'))
}

fn bench(names: &[String], quick: bool) -> anyhow::Result<()> {
    let ws = Workspace::locate()?;
    let all = benches(&ws)?;
    let chosen: Vec<&String> = all
        .iter()
        .filter(|b| names.is_empty() || names.iter().any(|n| selects(n, b)))
        .collect();
    if let Some(n) = names.iter().find(|n| !all.iter().any(|b| selects(n, b))) {
        bail!("no benchmark named {n:?}; there are: {}", all.join(", "));
    }
    if chosen.is_empty() {
        bail!("no benchmarks under tests/src/bin");
    }
    require_root("cargo xtask bench")?;
    let sentinel = build_release_tools(&ws, &["--bins"])?;
    let mut failed = Vec::new();
    for b in chosen {
        println!("\n==> bench {b}");
        let mut c = release_tool(&ws, &sentinel, &format!("bench_{b}"));
        if quick {
            c.arg("--quick");
        }
        let outcome = run::run(c, Some(Duration::from_secs(30 * 60)))?;
        if !outcome.success() {
            failed.push(format!("{b} ({})", outcome.failure()));
        }
    }
    if !failed.is_empty() {
        bail!("benchmarks failed: {}", failed.join(", "));
    }
    Ok(())
}

fn eval(seeds: &[u64], quick: bool, no_write: bool) -> anyhow::Result<()> {
    let ws = Workspace::locate()?;
    let sentinel = build_release_tools(&ws, &["--bin", "eval"])?;
    let mut c = release_tool(&ws, &sentinel, "eval");
    for s in seeds {
        c.args(["--seed", &s.to_string()]);
    }
    if quick {
        c.arg("--quick");
    }
    if no_write {
        c.arg("--no-write");
    }
    let outcome = run::run(c, Some(Duration::from_secs(60 * 60)))?;
    if !outcome.success() {
        bail!("eval failed ({})", outcome.failure());
    }
    Ok(())
}

/// Puts `$CARGO_HOME/bin` on PATH for everything xtask starts, so that a bpf-linker installed
/// by `setup` is found even where the login shell did not add it.
fn cargo_bin_on_path() {
    let Some(bin) = setup::cargo_bin_dir() else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)));
    if let Ok(joined) = joined {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("PATH", joined) };
    }
}

fn main() -> ExitCode {
    cargo_bin_on_path();
    let cli = Cli::parse();
    run::install_signal_handlers();
    let result = match cli.task {
        Task::Setup => setup::setup(),
        Task::Test {
            unit,
            no_setup,
            args,
        } => test(unit, no_setup, &args),
        Task::Demo { args } => demo(&args),
        Task::Bench { names, quick } => bench(&names, quick),
        Task::Eval {
            seeds,
            quick,
            no_write,
        } => eval(&seeds, quick, no_write),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            if run::received_signal().is_some() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_names_select_by_prefix() {
        assert!(selects("capture", "capture_tc"));
        assert!(selects("capture_tc", "capture_tc"));
        assert!(selects("datapath", "datapath"));
        assert!(!selects("cap", "capture_tc"));
        assert!(!selects("datapath", "capture_tc"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
