//! `sentinel unload` asks the pins' lock, not a control socket, whether a daemon serves them: a
//! daemon listening on another socket than the one unload was given still keeps its pins.

use std::{io::Write as _, os::fd::AsRawFd as _, process::Command, time::Duration};

use sentinel::daemon::pin_lock_path;
use sentinel_tests::{TempDir, output_within, sentinel_bin};

fn unload(pins: &std::path::Path) -> std::process::Output {
    output_within(
        Command::new(sentinel_bin())
            .args(["unload", "--pin-path"])
            .arg(pins)
            .args(["--socket", "/nonexistent/sentinel.sock"]),
        Duration::from_secs(30),
    )
    .unwrap()
}

/// Removes the lock file however the test ends (a failed one would leave it behind).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn unload_refuses_while_the_pin_lock_is_held_and_removes_a_stale_one() {
    sentinel_tests::require_root();
    let dir = TempDir::new("sentinel-unload-lock").unwrap();
    let pins = dir.join("pins");
    let lock = pin_lock_path(&pins);
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let _tidy = RemoveOnDrop(lock.clone());
    // This process stands for a daemon on another socket: it holds the lock as the daemon does.
    let mut held = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&lock)
        .unwrap();
    // SAFETY: a valid open descriptor; flock takes no pointers.
    assert_eq!(
        unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    writeln!(held, "{} {}", pins.display(), std::process::id()).unwrap();

    let out = unload(&pins);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains(&format!("pid {}", std::process::id())) && said.contains("stop it first"),
        "{said}"
    );
    assert!(lock.exists(), "a held lock's file stays");

    // The "daemon" dies (SIGKILL leaves the file, without the lock): unload goes ahead and
    // removes the file.
    drop(held);
    assert!(lock.exists());
    let out = unload(&pins);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!lock.exists(), "the stale lock file is left behind");
}
