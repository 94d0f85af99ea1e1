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
pub mod traffic;

use std::path::PathBuf;

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

/// A short id unique to this process and call, for names of namespaces, links and pins.
pub fn unique_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{:x}", std::process::id() % 0x10000, n)
}
