//! `cargo xtask bench datapath`: the XDP sentinel measured against peers in one run.
//!
//! - [`cost`]: per-packet cost by BPF_PROG_TEST_RUN against the bare `XDP_DROP` floor;
//! - [`droprate`]: drop rate of blocklisted sources over a veth pair against a bare `XDP_DROP`
//!   program, an nftables netdev-ingress set and iptables raw + ipset, fed by [`generator`];
//! - [`load`]: loading a 1M-entry blocklist against `nft -f` and `ipset restore`;
//! - [`memory`]: kernel memory per map entry and per tracked source.
//!
//! Every figure is a ratio against a peer measured in the same run, arms interleaved (the order
//! rotates each round), medians over rounds. Every loop is bounded in count; traffic stays inside
//! namespaces the benchmark creates, with addresses from 198.18.0.0/15 and 2001:db8::/32 only.

pub mod addrs;
pub mod cost;
pub mod droprate;
pub mod generator;
pub mod load;
pub mod memory;
pub mod netfilter;

use std::{fs::File, os::fd::AsRawFd, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use sentinel::lab::NetNs;

/// Median of `v` (the upper one for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

/// Median of the per-round ratios `a[i] / b[i]` (paired, so slow phases of a noisy machine
/// cancel out).
pub fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&r)
}

/// Spread of the paired ratios: (min, max).
pub fn ratio_range(a: &[f64], b: &[f64]) -> (f64, f64) {
    a.iter()
        .zip(b)
        .map(|(x, y)| x / y)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(r), hi.max(r))
        })
}

/// CPU time of this thread: the arms are timed by it, so other work on the machine (two cores,
/// shared) does not count against either.
pub fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Pins the calling thread to the last CPU it may run on, for the rest of its life; returns that
/// CPU, or None when it could not.
pub fn pin_to_one_cpu() -> Option<usize> {
    let allowed = affinity().ok()?;
    // SAFETY: CPU_ISSET only reads inside the set.
    let cpu = (0..libc::CPU_SETSIZE as usize)
        .rev()
        .find(|&c| unsafe { libc::CPU_ISSET(c, &allowed) })?;
    set_affinity(cpu).ok()?;
    Some(cpu)
}

/// The calling thread inside a network namespace until dropped, then back where it was.
/// Program attachment (interface names) and `BPF_PROG_RUN` live frames (ingress ifindex) resolve
/// interfaces in the calling thread's namespace.
pub struct InNs {
    home: File,
}

impl InNs {
    /// Moves the calling thread into `ns`.
    pub fn enter(ns: &NetNs) -> anyhow::Result<Self> {
        let home = File::open("/proc/thread-self/ns/net").context("opening own netns")?;
        sentinel::lab::netns::enter(&ns.path())?;
        Ok(Self { home })
    }
}

impl Drop for InNs {
    fn drop(&mut self) {
        // SAFETY: a valid namespace fd; setns only affects the calling thread.
        let rc = unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "returning to the original network namespace: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Runs `cmd`, failing with its stderr unless it succeeds; returns stdout.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args` inside `ns`; returns stdout.
pub fn run_in(ns: &NetNs, program: &str, args: &[&str]) -> anyhow::Result<String> {
    run(ns.command(program).args(args))
}

/// The load averages from `/proc/loadavg` (1, 5 and 15 minutes), as text.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Pins the calling thread to one CPU until dropped (the generator and the receiver's softirq
/// then share it, which is how the peers were measured too); the previous affinity comes back
/// on drop.
pub struct PinnedCpu {
    previous: libc::cpu_set_t,
}

impl PinnedCpu {
    /// Pins the calling thread to `cpu`.
    pub fn new(cpu: usize) -> anyhow::Result<Self> {
        let previous = affinity()?;
        set_affinity(cpu).map_err(|e| anyhow::anyhow!("sched_setaffinity: {e}"))?;
        Ok(Self { previous })
    }
}

/// Sets the calling thread's CPU affinity to `cpu` alone.
fn set_affinity(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it;
    // sched_setaffinity(0) affects the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The calling thread's CPU affinity mask.
fn affinity() -> anyhow::Result<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity(0) writes inside it
    // and reads the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        Ok(set)
    }
}

impl Drop for PinnedCpu {
    fn drop(&mut self) {
        // SAFETY: restores the mask read in `new` for the calling thread.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.previous) };
    }
}

/// Frame builders for the benchmarks: UDP to port 9 (discard), small payload.
pub mod frames {
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Payload bytes after the UDP header (an IPv4 frame is then 60 bytes, the minimum).
    const PAYLOAD: usize = 18;

    /// Ethernet + IPv4 + UDP, 60 bytes, valid IPv4 header checksum, UDP checksum 0 (none).
    pub fn v4(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut f = Vec::with_capacity(60);
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&[0x08, 0x00]);
        let tot = (20 + 8 + PAYLOAD) as u16;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&tot.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        sentinel::capture::defrag::set_ipv4_header_checksum(&mut ip);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&udp(8 + PAYLOAD));
        f.extend(std::iter::repeat_n(0x5a, PAYLOAD));
        f
    }

    /// Ethernet + IPv6 + UDP (78 bytes; the UDP checksum is not filled in: every arm judges the
    /// packet before anything verifies it).
    pub fn v6(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let mut f = Vec::with_capacity(78);
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&[0x86, 0xdd]);
        let plen = (8 + PAYLOAD) as u16;
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&plen.to_be_bytes());
        f.extend_from_slice(&[17, 64]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&udp(8 + PAYLOAD));
        f.extend(std::iter::repeat_n(0x5a, PAYLOAD));
        f
    }

    fn udp(len: usize) -> [u8; 8] {
        let mut u = [0u8; 8];
        u[0..2].copy_from_slice(&40000u16.to_be_bytes());
        u[2..4].copy_from_slice(&9u16.to_be_bytes());
        u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        u
    }
}
