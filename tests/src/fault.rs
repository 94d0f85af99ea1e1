//! One kernel map write made to fail on purpose, for tests of what a bulk operation leaves behind
//! when the kernel refuses a write part-way (a trie filled by another writer, memory running
//! out): nothing else makes such a failure happen at a chosen point. And a count of the lookups
//! an operation makes in a map.
//!
//! A seccomp filter on the thread that runs the operation hands that thread's
//! `BPF_MAP_UPDATE_ELEM` (or `BPF_MAP_LOOKUP_ELEM`) calls to a supervisor (user notification,
//! Linux 5.5+ for letting a call continue), which lets every call through but the chosen one.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

/// `bpf(2)` command numbers of a single element lookup and update (`include/uapi/linux/bpf.h`).
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;

/// Runs `f` on a thread of its own, on which the `nth` (1-based) `BPF_MAP_UPDATE_ELEM` of the
/// map behind `map_fd` fails with `errno`; every other call goes through. Returns what `f`
/// returned and how many updates of that map it asked for (the failed one included), so that a
/// test can tell the failure did happen where it meant it to.
pub fn fail_nth_update<T: Send>(
    map_fd: RawFd,
    nth: usize,
    errno: i32,
    f: impl FnOnce() -> T + Send,
) -> (T, usize) {
    supervise(BPF_MAP_UPDATE_ELEM, map_fd, Some((nth, errno)), f)
}

/// Runs `f` on a thread of its own; returns what it returned and how many single element
/// lookups (`BPF_MAP_LOOKUP_ELEM`) of the map behind `map_fd` it made.
pub fn count_lookups<T: Send>(map_fd: RawFd, f: impl FnOnce() -> T + Send) -> (T, usize) {
    supervise(BPF_MAP_LOOKUP_ELEM, map_fd, None, f)
}

/// Runs `f` on a thread whose `bpf(2)` calls of command `cmd` a supervisor sees; those on
/// `map_fd` are counted, and the `nth` of them fails with `errno` when `fail` says so.
fn supervise<T: Send>(
    cmd: u32,
    map_fd: RawFd,
    fail: Option<(usize, i32)>,
    f: impl FnOnce() -> T + Send,
) -> (T, usize) {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = s.spawn(move || {
            tx.send(install_filter(cmd).expect("a seccomp filter with a listener"))
                .expect("the supervisor waits");
            f()
        });
        let listener = rx.recv().expect("the worker's filter");
        let mut seen = 0;
        while !worker.is_finished() {
            if !readable(&listener, Duration::from_millis(20)) {
                continue;
            }
            // SAFETY: all-zero is a valid `seccomp_notif`, and the kernel wants it zeroed.
            let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
            // SAFETY: `notif` is a `seccomp_notif` the kernel fills.
            if unsafe {
                libc::ioctl(
                    listener.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_RECV,
                    &mut notif,
                )
            } < 0
            {
                // The call went away (its thread was interrupted): nothing to answer.
                continue;
            }
            // SAFETY: the caller is a thread of this process waiting in bpf(2) for this answer,
            // so its `union bpf_attr`, whose first member is the map fd, is alive and unchanged.
            let fd = unsafe { std::ptr::read_volatile(notif.data.args[1] as *const u32) } as RawFd;
            let mut resp = libc::seccomp_notif_resp {
                id: notif.id,
                val: 0,
                error: 0,
                flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
            };
            if fd == map_fd {
                seen += 1;
                if let Some((nth, errno)) = fail
                    && seen == nth
                {
                    resp.error = -errno;
                    resp.flags = 0;
                }
            }
            // SAFETY: `resp` is a `seccomp_notif_resp` the kernel reads. An error means the
            // caller no longer waits: nothing to do.
            unsafe {
                libc::ioctl(
                    listener.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_SEND,
                    &mut resp,
                )
            };
        }
        (worker.join().expect("the worker"), seen)
    })
}

/// Sends the calling thread's `bpf(2)` calls of command `cmd` to a listener; returns it.
fn install_filter(cmd: u32) -> io::Result<OwnedFd> {
    const fn stmt(code: u32, k: u32) -> libc::sock_filter {
        jump(code, k, 0, 0)
    }
    const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        }
    }
    // `struct seccomp_data`: `nr` at 0, `args[0]` at 16 (its low half first on little endian).
    let cmd_at = if cfg!(target_endian = "little") {
        16
    } else {
        20
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let equal = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let mut program = [
        stmt(load, 0),
        jump(equal, libc::SYS_bpf as u32, 0, 3),
        stmt(load, cmd_at),
        jump(equal, cmd, 0, 1),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_USER_NOTIF),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: plain prctl; it only stops this thread gaining privileges through execve.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Waits up to `timeout` for a notification.
fn readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid `pollfd`.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) > 0 }
}
