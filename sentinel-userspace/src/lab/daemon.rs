//! A `sentinel run` process inside a namespace, with its own socket and pin directory.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{NetNs, TempDir, output_within, sentinel_bin};

/// How long a CLI command may take before the test fails (a bulk add of 100 000 entries takes
/// a few seconds).
const CLI_LIMIT: Duration = Duration::from_secs(120);

/// A running daemon. Dropping it kills the process and unloads its pins, so a failed test leaves
/// no program attached and no pinned map behind.
pub struct Daemon {
    child: Option<Child>,
    /// Control socket.
    pub socket: PathBuf,
    /// Pin directory.
    pub pin_path: PathBuf,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    ns_path: String,
    ifaces: Vec<String>,
    extra: Vec<String>,
    /// Socket, logs and configuration; dropped after the daemon is killed and unloaded.
    dir: TempDir,
}

impl Daemon {
    /// Starts `sentinel run --iface IFACES` in `ns` with a fresh socket and pin directory, and
    /// waits until the control socket answers. Without `--config` in `extra`, the daemon gets a
    /// configuration that keeps its alert and verdict logs in its own directory (a test must
    /// neither replay nor append to the logs of the host's installation, or of another test's
    /// daemon) and a response policy without rules: alerts are raised, nothing is acted on, so
    /// a load generator (wrk in the capture benchmark) is not throttled as the flood it is.
    /// Tests and benchmarks that want verdicts give their own `--config`.
    pub fn start(ns: &NetNs, ifaces: &[&str], extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(ns, ifaces, extra, "")
    }

    /// [`Daemon::start`] with `more` (TOML) after the configuration it writes (when `extra`
    /// has no `--config`): `[models]\nenabled = false\n` for a daemon that only captures.
    pub fn start_with(
        ns: &NetNs,
        ifaces: &[&str],
        extra: &[&str],
        more: &str,
    ) -> anyhow::Result<Self> {
        let id = super::unique_id();
        // Removed on every error path from here on.
        let dir = TempDir::new("sentinel-test")?;
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if extra.iter().any(|a| a == "--config") {
            anyhow::ensure!(
                more.is_empty(),
                "`more` is not read with a --config of its own"
            );
        } else {
            let config = dir.join("sentinel.toml");
            let policy = dir.join("policy.toml");
            std::fs::write(
                &policy,
                "# Alerts only: no rule acts.\nmode = \"enforce\"\n",
            )?;
            std::fs::write(
                &config,
                format!(
                    "[alerts]\nlog = {:?}\n[verdicts]\npolicy = {:?}\nlog = {:?}\n{more}",
                    dir.join("alerts.jsonl"),
                    policy,
                    dir.join("verdicts.jsonl")
                ),
            )?;
            extra.push("--config".into());
            extra.push(config.display().to_string());
        }
        let mut d = Self {
            child: None,
            socket: dir.join("sentinel.sock"),
            pin_path: PathBuf::from(format!("/sys/fs/bpf/sentinel-test-{id}")),
            log: dir.join("daemon.log"),
            ns_path: ns.path(),
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            extra,
            dir,
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path))
            .arg("--")
            .arg(sentinel_bin())
            .arg("run")
            .arg("--iface")
            .arg(self.ifaces.join(","))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--pin-path")
            .arg(&self.pin_path)
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("spawning sentinel run")?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("daemon exited with {status}: {}", self.log_text());
            }
            if self
                .cli(&["status", "--json"])
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("daemon not ready after 30 s: {}", self.log_text())
    }

    /// The alert log of a daemon started without `--config` (one line per alert).
    pub fn alert_log(&self) -> PathBuf {
        self.dir.join("alerts.jsonl")
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `sentinel ARGS --socket SOCKET` (for commands that talk to the daemon); fails when
    /// it takes longer than two minutes (a hung daemon).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full: Vec<&str> = args.to_vec();
        let socket = self.socket.to_string_lossy().into_owned();
        full.push("--socket");
        full.push(&socket);
        output_within(Command::new(sentinel_bin()).args(&full), CLI_LIMIT)
    }

    /// Like [`Daemon::cli`] but fails unless the command succeeds; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "sentinel {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sentinel status --json`, parsed.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.cli_ok(&["status", "--json"])?)?)
    }

    /// Packets counted under a verdict reason label (e.g. `drop_block`).
    pub fn counter(&self, reason: &str) -> anyhow::Result<u64> {
        let s = self.status()?;
        s["counters"][reason]["packets"]
            .as_u64()
            .with_context(|| format!("no counter {reason} in status"))
    }

    /// The daemon's process id (nsenter execs it, so this is the daemon itself).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the daemon with `signal` and waits for it to exit; one that has not exited after
    /// 30 s is killed with SIGKILL and the call fails (a shutdown that hangs fails the test
    /// instead of hanging it).
    pub fn kill(&mut self, signal: i32) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(c.id() as i32, signal) };
            let start = Instant::now();
            while c.try_wait()?.is_none() {
                if start.elapsed() > Duration::from_secs(30) {
                    let _ = c.kill();
                    c.wait()?;
                    bail!(
                        "daemon still running 30 s after signal {signal}; killed: {}",
                        self.log_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Starts the daemon again with the same socket, pins and arguments.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill(libc::SIGKILL)?;
        self.spawn()
    }

    /// Starts the daemon again after it was stopped.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        assert!(self.child.is_none(), "daemon still running");
        self.spawn()
    }

    /// The pin directory.
    pub fn pins(&self) -> &Path {
        &self.pin_path
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.kill(libc::SIGKILL);
        // A killed daemon leaves its pin lock's file (the lock died with it); unload removes it.
        let _ = output_within(
            Command::new(sentinel_bin())
                .args(["unload", "--pin-path"])
                .arg(&self.pin_path),
            Duration::from_secs(30),
        );
        // `dir` (socket, logs, configuration) goes with the fields.
    }
}
