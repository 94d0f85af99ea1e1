//! Running commands for the tasks: each is printed before it runs, its output streams through
//! (stdout line by line, so `cargo test` result lines can be counted), it runs in its own process
//! group so a timeout or a forwarded Ctrl-C reaches every process it started, and it can be
//! bounded in time.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The signal (SIGINT or SIGTERM) xtask received, 0 for none.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// Catches SIGINT and SIGTERM so that xtask outlives its child: the signal is forwarded to the
/// child's process group, which gets to clean up (namespaces, pins) before xtask exits.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// The signal received so far, if any.
pub fn received_signal() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `cargo`, the one that runs xtask when there is one.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The command line as a person would type it, with the variables it sets.
pub fn show(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())))
        .collect();
    let program = Path::new(cmd.get_program());
    // `cargo` rather than the full path of the cargo binary that runs us.
    let program = if program.file_name() == Some(OsStr::new("cargo")) {
        "cargo".to_owned()
    } else {
        program.display().to_string()
    };
    parts.push(program);
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.contains(' ') {
            format!("'{a}'")
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

/// Tests counted from `cargo test` output (`test result: ...` lines).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestCounts {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
    /// Tests that were ignored.
    pub ignored: u64,
    /// Test binaries that reported a result.
    pub suites: u64,
}

impl TestCounts {
    /// Adds what one `test result:` line says; other lines are ignored.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        self.suites += 1;
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let [.., n, what] = words.as_slice() else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match *what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }

    /// Adds another count.
    pub fn merge(&mut self, other: TestCounts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.suites += other.suites;
    }
}

/// How a command ended.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status (none when it was killed after a timeout).
    pub status: Option<ExitStatus>,
    /// It ran longer than its limit and was killed.
    pub timed_out: bool,
    /// Tests counted in its output.
    pub tests: TestCounts,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Outcome {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    /// One phrase for a summary: what went wrong.
    pub fn failure(&self) -> String {
        if self.timed_out {
            format!("timed out after {:.0} s", self.elapsed.as_secs_f64())
        } else {
            match self.status {
                Some(s) => s.to_string(),
                None => "did not finish".into(),
            }
        }
    }
}

/// Grace period between forwarding a signal (or a timeout's SIGTERM) and SIGKILL.
const GRACE: Duration = Duration::from_secs(30);

/// Runs `cmd` in its own process group, printing it first, streaming its output, and counting
/// `cargo test` results. Kills the group after `limit`. Returns an error when the command cannot
/// start or when xtask was interrupted (after the child has stopped).
pub fn run(mut cmd: Command, limit: Option<Duration>) -> anyhow::Result<Outcome> {
    println!("$ {}", show(&cmd));
    let _ = std::io::stdout().flush();
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", show(&cmd)))?;
    let pgid = child.id() as i32;
    let counts = Arc::new(Mutex::new(TestCounts::default()));
    let reader = {
        let stdout = child.stdout.take().expect("stdout is piped");
        let counts = counts.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            let out = std::io::stdout();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        counts.lock().expect("counts").add_line(&line);
                        let mut o = out.lock();
                        let _ = o.write_all(&buf);
                        let _ = o.flush();
                    }
                }
            }
        })
    };
    let mut forwarded: Option<Instant> = None;
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if let Some(sig) = received_signal()
            && forwarded.is_none()
        {
            eprintln!("xtask: signal {sig} received; stopping {}", show(&cmd));
            // SAFETY: signalling the process group we created for this child.
            unsafe { libc::kill(-pgid, sig) };
            forwarded = Some(Instant::now());
        }
        if let Some(limit) = limit
            && start.elapsed() > limit
            && forwarded.is_none()
        {
            eprintln!(
                "xtask: {} ran longer than {:.0} s; stopping it",
                show(&cmd),
                limit.as_secs_f64()
            );
            timed_out = true;
            // SAFETY: as above.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            forwarded = Some(Instant::now());
        }
        if forwarded.is_some_and(|t| t.elapsed() > GRACE) {
            // SAFETY: as above.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let s = child.wait()?;
            break Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = reader.join();
    let tests = *counts.lock().expect("counts");
    if let Some(sig) = received_signal() {
        bail!("interrupted by signal {sig}");
    }
    Ok(Outcome {
        status,
        timed_out,
        tests,
        elapsed: start.elapsed(),
    })
}

/// Runs `cmd` quietly and returns its stdout when it succeeds, `None` otherwise (also when it
/// does not exist).
pub fn output(cmd: &mut Command) -> Option<String> {
    cmd.stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Where the workspace is and where cargo puts what it builds (honours `CARGO_TARGET_DIR`).
#[derive(Clone, Debug)]
pub struct Workspace {
    /// The workspace root.
    pub root: PathBuf,
    /// The target directory.
    pub target: PathBuf,
}

impl Workspace {
    /// Asks `cargo metadata`.
    pub fn locate() -> anyhow::Result<Self> {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the workspace")
            .to_path_buf();
        let out = cargo()
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(&here)
            .stderr(Stdio::inherit())
            .output()
            .context("running cargo metadata")?;
        if !out.status.success() {
            bail!("cargo metadata failed ({})", out.status);
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
        let path = |k: &str| -> anyhow::Result<PathBuf> {
            Ok(PathBuf::from(
                meta[k]
                    .as_str()
                    .with_context(|| format!("cargo metadata has no {k}"))?,
            ))
        };
        Ok(Self {
            root: path("workspace_root")?,
            target: path("target_directory")?,
        })
    }

    /// A `cargo` command run from the workspace root.
    pub fn cargo(&self, args: &[&str]) -> Command {
        let mut c = cargo();
        c.args(args).current_dir(&self.root);
        c
    }

    /// A binary built by cargo in `profile` (`debug` or `release`).
    pub fn bin(&self, profile: &str, name: &str) -> PathBuf {
        self.target.join(profile).join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_result_lines_are_counted() {
        let mut c = TestCounts::default();
        c.add_line("running 3 tests");
        c.add_line("test foo ... ok");
        c.add_line(
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        );
        c.add_line(
            "test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s\n",
        );
        assert_eq!(
            c,
            TestCounts {
                passed: 8,
                failed: 2,
                ignored: 1,
                suites: 2
            }
        );
    }

    #[test]
    fn commands_are_shown_with_their_variables() {
        let mut c = Command::new("/usr/bin/cargo");
        c.env("AYA_BUILD_SKIP", "1")
            .args(["clippy", "--", "-D", "warnings"]);
        assert_eq!(show(&c), "AYA_BUILD_SKIP=1 cargo clippy -- -D warnings");
        let mut c = Command::new("sentinel");
        c.args(["block", "add", "--reason", "two words"]);
        assert_eq!(show(&c), "sentinel block add --reason 'two words'");
    }
}
