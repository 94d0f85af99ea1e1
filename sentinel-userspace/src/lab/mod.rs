//! The lab: network namespaces joined by a veth pair, the daemon run inside one of them, and
//! bounded UDP traffic between them. Used by the root tests, the benchmarks and `sentinel demo`.
//!
//! Every resource is an RAII guard that cleans up on drop, also when a test panics: namespaces
//! (and with them their veths), daemons (killed, then their pins unloaded) and pin directories.
//! Addresses come only from 198.18.0.0/15 and 2001:db8::/32; namespaces have no default route.

pub mod attacks;
pub mod bank;
pub mod daemon;
pub mod eval;
pub mod netns;
pub mod pcapgen;
pub mod reference;
pub mod sim;
pub mod tools;
pub mod traffic;

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

pub use daemon::Daemon;
pub use netns::{NetNs, Topology};

/// The `sentinel` binary to run: `$SENTINEL_BIN`, else this process when it is `sentinel`, else
/// the one built beside the test binary.
pub fn sentinel_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SENTINEL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    if exe.file_name().is_some_and(|n| n == "sentinel") {
        return exe;
    }
    // target/<profile>/deps/<test> -> target/<profile>/sentinel
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("sentinel");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p sentinel-userspace`) or set SENTINEL_BIN",
        bin.display()
    );
    bin
}

/// Panics with a clear message unless running as root (the tests load BPF programs and create
/// namespaces).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "root tests need root (BPF, network namespaces): run `cargo xtask test` as root"
    );
}

/// Fails, naming the first one, unless every program in `programs` is on `PATH` (a tool run
/// through `nsenter` would otherwise fail late and without its name).
pub fn require_programs(programs: &[&str]) -> anyhow::Result<()> {
    for p in programs {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()));
        anyhow::ensure!(
            found,
            "{p} is not installed (cargo xtask setup installs it)"
        );
    }
    Ok(())
}

/// A short id unique to this process and call, for names of namespaces, links and pins.
pub fn unique_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{:x}", std::process::id() % 0x10000, n)
}

/// A scratch directory, removed on drop (also when a test panics).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/PREFIX-ID` with an id unique to this process and call.
    pub fn new(prefix: &str) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", unique_id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bpffs pin directory for a test's programs and maps, `/sys/fs/bpf/sentinel-test-TAG-ID`,
/// unloaded on drop (also when the test panics).
#[derive(Debug)]
pub struct TempPins(PathBuf);

impl TempPins {
    /// A pin directory unique to this process and call (not created: loading creates it).
    pub fn new(tag: &str) -> Self {
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/sentinel-test-{tag}-{}",
            unique_id()
        )))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPins {
    fn drop(&mut self) {
        let _ = crate::datapath::unload(&self.0);
    }
}

/// The JSON objects of a JSON-lines file written so far (a daemon's alert, verdict or
/// transaction log); a missing file, or a line still being written, reads as nothing.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Runs `cmd` to completion like [`Command::output`], but kills it (and fails) when it takes
/// longer than `limit`: a hung daemon or CLI fails the test, whose guards then clean up, instead
/// of hanging it.
pub fn output_within(cmd: &mut Command, limit: Duration) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let stderr = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{cmd:?} did not finish within {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}
