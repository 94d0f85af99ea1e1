//! The `clsact` qdisc of the TC capture, added only where it is needed and removed only when
//! Sentinel added it.
//!
//! Since Linux 6.6 the capture programs attach as TCX links (aya 0.14 picks TCX by the same
//! version test as [`tcx_supported`]), which need no qdisc: Sentinel then leaves the interface's
//! qdiscs alone. Older kernels attach `cls_bpf` filters through netlink under a `clsact` qdisc.
//! When Sentinel creates that qdisc (it did not exist), it records so with a marker in the pin
//! directory: a symlink `qdiscs/clsact-IFACE` whose target names the network namespace (its
//! inode) and the interface index. A daemon that stops, and `sentinel unload`, remove a recorded
//! qdisc when no filter remains on it; a qdisc that was there before is never recorded, so never
//! removed, and one that someone else has since put filters on is kept.

use std::{
    fs, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use aya::programs::TcError;
use tracing::{info, warn};

const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const TCA_KIND: u16 = 1;
/// `TC_H_CLSACT` (the qdisc's parent) and its fixed handle `ffff:`.
const TC_H_CLSACT: u32 = 0xffff_fff1;
const CLSACT_HANDLE: u32 = 0xffff_0000;
/// The clsact qdisc's ingress and egress hooks (`TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_{IN,E}GRESS)`).
const CLSACT_INGRESS: u32 = 0xffff_fff2;
const CLSACT_EGRESS: u32 = 0xffff_fff3;

/// Whether the kernel attaches TC programs as TCX links (Linux 6.6+), as aya 0.14 decides.
pub fn tcx_supported() -> bool {
    aya::util::KernelVersion::current()
        .map(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
        .unwrap_or(false)
}

/// One `tcmsg` request with an optional `TCA_KIND`; returns the types of the messages the kernel
/// answered with before its acknowledgement or the end of its dump.
fn tc_request(
    ty: u16,
    flags: u16,
    ifindex: u32,
    parent: u32,
    handle: u32,
    kind: Option<&str>,
) -> io::Result<Vec<u16>> {
    // SAFETY: plain socket creation; the fd is owned right after.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(&0u32.to_ne_bytes()); // length, set below
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
    // struct tcmsg: family, 3 bytes of padding, ifindex, handle, parent, info.
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&handle.to_ne_bytes());
    msg.extend_from_slice(&parent.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    if let Some(kind) = kind {
        let payload = kind.len() + 1;
        msg.extend_from_slice(&((4 + payload) as u16).to_ne_bytes());
        msg.extend_from_slice(&TCA_KIND.to_ne_bytes());
        msg.extend_from_slice(kind.as_bytes());
        msg.push(0);
        msg.resize(msg.len().next_multiple_of(4), 0);
    }
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: `msg` is a valid buffer of `msg.len()` bytes; a null address sends to the kernel.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    // The kernel ends every answer with an acknowledgement, an error or NLMSG_DONE; a dump of
    // an interface's filters spans a few reads at most.
    for _ in 0..4096 {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let ty = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
            if len < 16 || len > rest.len() {
                return Err(io::Error::other("truncated netlink message"));
            }
            match ty {
                NLMSG_DONE => return Ok(seen),
                NLMSG_ERROR => {
                    let code = rest
                        .get(16..20)
                        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                        .ok_or_else(|| io::Error::other("truncated netlink error"))?;
                    return if code == 0 {
                        Ok(seen)
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
                other => seen.push(other),
            }
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
    }
    Err(io::Error::other("netlink answer did not end"))
}

/// Adds a clsact qdisc to `iface`; `false` when one was already there. aya's request asks
/// with `NLM_F_EXCL`, so the kernel answers an existing qdisc with `EEXIST`, which its error
/// keeps (`NetlinkError::raw_os_error`).
fn add_clsact(iface: &str) -> io::Result<bool> {
    match aya::programs::tc::qdisc_add_clsact(iface) {
        Ok(()) => Ok(true),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(TcError::IoError(e)) => Err(e),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// Filters on the clsact qdisc of `ifindex`, ingress and egress.
fn clsact_filters(ifindex: u32) -> io::Result<usize> {
    let mut n = 0;
    for parent in [CLSACT_INGRESS, CLSACT_EGRESS] {
        let seen = tc_request(
            RTM_GETTFILTER,
            NLM_F_REQUEST | NLM_F_DUMP,
            ifindex,
            parent,
            0,
            None,
        )?;
        n += seen.iter().filter(|t| **t == RTM_NEWTFILTER).count();
    }
    Ok(n)
}

fn del_clsact(ifindex: u32) -> io::Result<()> {
    tc_request(
        RTM_DELQDISC,
        NLM_F_REQUEST | NLM_F_ACK,
        ifindex,
        TC_H_CLSACT,
        CLSACT_HANDLE,
        Some("clsact"),
    )
    .map(drop)
}

fn ifindex(iface: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(iface)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated name.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// The calling thread's network namespace (the inode of its nsfs handle).
fn netns_id() -> io::Result<u64> {
    Ok(fs::metadata("/proc/thread-self/ns/net")?.ino())
}

fn marker_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("qdiscs")
}

/// Adds the clsact qdisc the netlink TC attachment needs to `iface` and, when it was not there
/// before, records that Sentinel created it. Returns whether it was created.
pub fn claim_clsact(pin_dir: &Path, iface: &str) -> io::Result<bool> {
    let index = ifindex(iface)?;
    if !add_clsact(iface)? {
        return Ok(false);
    }
    let dir = marker_dir(pin_dir);
    fs::create_dir_all(&dir)?;
    let marker = dir.join(format!("clsact-{iface}"));
    let _ = fs::remove_file(&marker);
    std::os::unix::fs::symlink(format!("{}:{index}", netns_id()?), &marker)?;
    Ok(true)
}

/// Removes the clsact qdiscs recorded under `pin_dir` (see [`claim_clsact`]) that no filter uses
/// any more, and the records. A qdisc in another network namespace than the caller's, or with
/// filters left on it, is kept with a warning. Returns the interfaces whose qdisc was removed.
pub fn release_clsacts(pin_dir: &Path) -> io::Result<Vec<String>> {
    let dir = marker_dir(pin_dir);
    let mut removed = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    let here = netns_id()?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let target = fs::read_link(entry.path())?;
        // Records that decide nothing more are dropped; only a failed removal keeps its own.
        let forget = || fs::remove_file(entry.path());
        let Some(iface) = name.strip_prefix("clsact-") else {
            forget()?;
            continue;
        };
        let recorded = target
            .to_str()
            .and_then(|t| t.split_once(':'))
            .and_then(|(ns, ix)| Some((ns.parse::<u64>().ok()?, ix.parse::<u32>().ok()?)));
        let Some((ns, index)) = recorded else {
            warn!(marker = %entry.path().display(), "unreadable clsact record; qdisc left in place");
            forget()?;
            continue;
        };
        if ns != here {
            warn!(
                iface,
                "the clsact qdisc Sentinel added is in another network namespace; left in place (`tc qdisc del dev {iface} clsact` there removes it)"
            );
            forget()?;
            continue;
        }
        if ifindex(iface).ok() != Some(index) {
            // The interface went away (and its qdisc with it), or another now has its name.
            forget()?;
            continue;
        }
        let outcome = clsact_filters(index).and_then(|n| match n {
            0 => match del_clsact(index) {
                Ok(()) => {
                    info!(iface, "removed the clsact qdisc added for the TC capture");
                    removed.push(iface.to_owned());
                    Ok(())
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => Ok(()),
                Err(e) => Err(e),
            },
            n => {
                warn!(
                    iface,
                    filters = n,
                    "the clsact qdisc Sentinel added now holds other filters; left in place"
                );
                Ok(())
            }
        });
        if let Err(e) = outcome {
            // Kept, with its record, for the next unload to try again.
            warn!(iface, error = %e, "could not remove the clsact qdisc added for the TC capture");
            continue;
        }
        forget()?;
    }
    // Records kept for another try keep the directory.
    let _ = fs::remove_dir(&dir);
    Ok(removed)
}
