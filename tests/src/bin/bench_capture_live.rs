//! `cargo xtask bench capture` (live part): an HTTP server in a namespace under wrk load over
//! veth, in four interleaved arms:
//! - baseline: a pass-only XDP program on the server's veth (XDP on veth turns GSO off, so every
//!   arm must have one);
//! - xdp: the daemon with its XDP program only (no capture);
//! - capture: the daemon with its XDP program, TC capture on the HTTP port and the capture
//!   pipeline (reassembly, HTTP, transactions) draining the ring buffer, the models off
//!   (`[models] enabled = false`): the capture half of the data path;
//! - sentinel: the same with every transaction analysed (enrichment, models, response): the
//!   whole path;
//! - floor: what any capture of this design costs at least, the peer that says whether the
//!   targets can be met: the pass-only XDP program, the TC capture programs with their wakeup
//!   batching, and a consumer that drains the ring buffer with the daemon's own loop and record
//!   decoding, then drops every segment (no reassembly, no HTTP, no transactions).
//!
//! Reported: requests/s, p99 latency and CPU per request per arm (medians of rounds) and their
//! ratios, ring buffer loss and the daemon's CPU use.
//!
//! `SENTINEL_BENCH_ARM=base|xdp|capture|sentinel|floor` runs only that arm and writes nothing to
//! BENCHMARKS.md: a steady load to profile (e.g. `perf record -p` on the daemon).

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::XdpMode;
use sentinel::{
    capture::{
        Segment,
        live::CaptureControl,
        ringbuf::{self, RingStats, SegmentSink},
    },
    config::CaptureSettings,
    datapath::{Datapath, LoadOptions},
    lab::{Daemon, TempPins, Topology, bank::BankServer, netns::SERVER_V4},
};
use sentinel_common::programs;
use sentinel_tests::bench::{median, median_ratio, ratio_range};

struct WrkResult {
    rps: f64,
    p99_ms: f64,
    /// CPU time of the server (this process), wrk and the daemon (if any) per request, µs.
    cpu_us_per_req: f64,
    /// The daemon's share of it, µs.
    daemon_us_per_req: f64,
}

/// CPU time (user + system) of this process and of its reaped children, µs.
fn rusage_us() -> (f64, f64) {
    let get = |who| {
        // SAFETY: `ru` is a plain C struct that getrusage fills in.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid `who` and a pointer to a live rusage.
        unsafe { libc::getrusage(who, &mut ru) };
        let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
        us(ru.ru_utime) + us(ru.ru_stime)
    };
    (get(libc::RUSAGE_SELF), get(libc::RUSAGE_CHILDREN))
}

fn parse_latency(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        _ => return None,
    })
}

/// Runs wrk and accounts the CPU time of everything serving it: this process (the bank server's
/// threads; the main thread only waits), wrk (a child, reaped by `output`) and the daemon
/// `daemon` (by its /proc ticks). The packet path's softirq work is charged to whichever of them
/// was running.
fn wrk(
    topo: &Topology,
    url: &str,
    secs: u64,
    conns: u32,
    daemon: Option<u32>,
) -> anyhow::Result<WrkResult> {
    let (self0, children0) = rusage_us();
    let daemon0 = daemon.map(cpu_ticks).transpose()?;
    let out = Command::new("ip")
        .args(["netns", "exec", topo.client.name(), "wrk", "-t2"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .args(["--latency", url])
        .output()
        .context("running wrk (apt install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output: {text}"))?;
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(parse_latency)
        .with_context(|| format!("no 99% latency in wrk output: {text}"))?;
    let (self1, children1) = rusage_us();
    let daemon_us = match (daemon, daemon0) {
        (Some(pid), Some(t0)) => {
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
            (cpu_ticks(pid)? - t0) as f64 * 1e6 / hz
        }
        _ => 0.0,
    };
    let requests: f64 = text
        .lines()
        .find_map(|l| l.split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("no request count in wrk output: {text}"))?;
    let cpu_us = (self1 - self0) + (children1 - children0) + daemon_us;
    Ok(WrkResult {
        rps,
        p99_ms,
        cpu_us_per_req: cpu_us / requests.max(1.0),
        daemon_us_per_req: daemon_us / requests.max(1.0),
    })
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("stat format")? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// The median of the paired ratios `a / b` with their range, for the table.
fn ratio(a: &[f64], b: &[f64]) -> String {
    let (lo, hi) = ratio_range(a, b);
    format!("{:.3} ({lo:.2}-{hi:.2})", median_ratio(a, b))
}

/// Share of one core `pid` used since `t0`, when it had used `c0` ticks.
fn cpu_since(pid: u32, c0: u64, t0: Instant) -> anyhow::Result<f64> {
    let ticks = cpu_ticks(pid)? - c0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz / t0.elapsed().as_secs_f64())
}

/// Drops every segment: the floor arm's consumer.
struct Discard(u64);

impl SegmentSink for Discard {
    fn segment(&mut self, _seg: Segment) {
        self.0 += 1;
    }

    fn idle(&mut self, _now_unix_ns: u64) {}
}

/// The floor arm's data path, attached in the server namespace: the pass-only XDP program and
/// the TC capture on port `port`, with the daemon's default capture settings. Dropping it
/// detaches everything (TCX links and XDP go with the object).
struct Floor {
    _dp: Datapath,
    control: CaptureControl,
}

fn floor(
    topo: &Topology,
    pin: std::path::PathBuf,
    port: u16,
) -> anyhow::Result<(Floor, aya::maps::RingBuf<aya::maps::MapData>)> {
    let iface = topo.server_if.clone();
    topo.server.run(move || -> anyhow::Result<_> {
        let mut dp = Datapath::load(&LoadOptions::new(pin))?;
        dp.xdp(programs::XDP_PASS)?
            .attach(&iface, XdpMode::Driver)?;
        let handles = dp.take_capture()?;
        let mut control = CaptureControl {
            ports: handles.ports,
            config: handles.config,
            counters: handles.counters,
            settings: CaptureSettings {
                http_ports: vec![port],
                ..CaptureSettings::default()
            },
        };
        control.apply()?;
        dp.attach_capture(&iface)?;
        Ok((Floor { _dp: dp, control }, handles.ring))
    })?
}

/// Drains `ring` on a thread of this process (so its CPU time is counted with the server's) as
/// the daemon does, until `stop` fires; returns the segments dropped and the thread's CPU time
/// in seconds.
fn drain_thread(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::thread::JoinHandle<anyhow::Result<(u64, f64)>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let stats = RingStats::default();
            let mut sink = Discard(0);
            tokio::select! {
                r = ringbuf::drain(ring, &stats, &mut sink) => r?,
                _ = stop => {}
            }
            // SAFETY: `ts` is a plain C struct that clock_gettime fills in.
            let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
            // SAFETY: a valid clock id and a pointer to a live timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            Ok((sink.0, ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9))
        })
    })
}

fn main() -> anyhow::Result<()> {
    sentinel_tests::require_root();
    let quick = std::env::args().any(|a| a == "--quick");
    // Many short rounds rather than a few long ones: on a shared 2-core machine the other load
    // changes within seconds, and only arms run back to back pair well.
    let (rounds, secs) = if quick { (2, 3) } else { (12, 3) };
    let conns = 32;
    let topo = Topology::new()?;
    let server = SocketAddr::new(SERVER_V4.into(), 8080);
    let _bank = BankServer::start(&topo.server, server)?;
    let url = format!("http://{server}/accounts/42");

    let (mut base_rps, mut base_p99, mut sen_rps, mut sen_p99) = (vec![], vec![], vec![], vec![]);
    let (mut xdp_rps, mut xdp_p99) = (vec![], vec![]);
    let (mut base_cost, mut xdp_cost, mut sen_cost) = (vec![], vec![], vec![]);
    let (mut cap_rps, mut cap_p99, mut cap_cost, mut cap_cpu) = (vec![], vec![], vec![], vec![]);
    let (mut cpu_share, mut xdp_cpu) = (Vec::new(), Vec::new());
    let (mut flo_rps, mut flo_p99, mut flo_cost, mut flo_cpu) = (vec![], vec![], vec![], vec![]);
    let (mut flo_full, mut flo_segments) = (0u64, 0u64);
    let (mut cap_daemon, mut sen_daemon) = (vec![], vec![]);
    let mut ring_full = 0u64;
    let mut captured = 0u64;
    for round in 0..rounds {
        // Five arms, the order rotating per round: the baseline, the sentinel's XDP program
        // alone (the daemon without capture), the capture half of the data path (TC capture,
        // reassembly, HTTP, transactions: the models off), the whole path with detection, and
        // the floor (TC capture drained and dropped).
        let arms = ["base", "xdp", "capture", "sentinel", "floor"];
        for k in 0..arms.len() {
            let arm = arms[(round + k) % arms.len()];
            if std::env::var("SENTINEL_BENCH_ARM").is_ok_and(|a| a != arm) {
                continue;
            }
            if arm == "base" {
                // A pass-only XDP program, attached from inside the server namespace. Both
                // guards drop at the end of the arm, also on an error or a panic: `_attached`
                // first (detaching the program), then `pins` (unloading the pins).
                let pins = TempPins::new("bench-live");
                let iface = topo.server_if.clone();
                let pin = pins.path().to_owned();
                let _attached = topo.server.run(move || -> anyhow::Result<Datapath> {
                    let mut dp = Datapath::load(&LoadOptions::new(pin))?;
                    let prog = dp.xdp(programs::XDP_PASS)?;
                    prog.attach(&iface, XdpMode::Driver)?;
                    Ok(dp)
                })??;
                let r = wrk(&topo, &url, secs, conns, None)?;
                base_rps.push(r.rps);
                base_p99.push(r.p99_ms);
                base_cost.push(r.cpu_us_per_req);
            } else if arm == "floor" {
                let pins = TempPins::new("bench-floor");
                let (attached, ring) = floor(&topo, pins.path().to_owned(), server.port())?;
                let (stop, stopped) = tokio::sync::oneshot::channel();
                let drain = drain_thread(ring, stopped);
                let r = wrk(&topo, &url, secs, conns, None);
                let _ = stop.send(());
                let (segments, cpu_s) = drain
                    .join()
                    .map_err(|_| anyhow::anyhow!("the floor's drain thread panicked"))??;
                let kernel = attached.control.kernel_counters()?;
                drop(attached);
                drop(pins);
                let r = r?;
                flo_full += kernel.get("ring_full").copied().unwrap_or(0);
                flo_segments += segments;
                flo_cpu.push(cpu_s / secs as f64);
                flo_rps.push(r.rps);
                flo_p99.push(r.p99_ms);
                flo_cost.push(r.cpu_us_per_req);
            } else if arm == "xdp" {
                let daemon = Daemon::start(&topo.server, &[&topo.server_if], &[])?;
                let pid = daemon.pid().context("daemon pid")?;
                let (t0, c0) = (Instant::now(), cpu_ticks(pid)?);
                let r = wrk(&topo, &url, secs, conns, Some(pid));
                xdp_cpu.push(cpu_since(pid, c0, t0)?);
                drop(daemon);
                let r = r?;
                xdp_rps.push(r.rps);
                xdp_p99.push(r.p99_ms);
                xdp_cost.push(r.cpu_us_per_req);
            } else if arm == "capture" {
                let daemon = Daemon::start_with(
                    &topo.server,
                    &[&topo.server_if],
                    &["--http-ports", "8080"],
                    "[models]\nenabled = false\n",
                )?;
                let pid = daemon.pid().context("daemon pid")?;
                let (t0, c0) = (Instant::now(), cpu_ticks(pid)?);
                let r = wrk(&topo, &url, secs, conns, Some(pid))?;
                cap_cpu.push(cpu_since(pid, c0, t0)?);
                let st = daemon.status()?;
                anyhow::ensure!(
                    st["analysis"].is_null(),
                    "the capture arm's daemon analyses: {}",
                    st["analysis"]
                );
                ring_full += st["capture"]["kernel"]["ring_full"].as_u64().unwrap_or(0);
                cap_rps.push(r.rps);
                cap_p99.push(r.p99_ms);
                cap_cost.push(r.cpu_us_per_req);
                cap_daemon.push(r.daemon_us_per_req);
            } else {
                let daemon =
                    Daemon::start(&topo.server, &[&topo.server_if], &["--http-ports", "8080"])?;
                let pid = daemon.pid().context("daemon pid")?;
                let (t0, c0) = (Instant::now(), cpu_ticks(pid)?);
                let r = wrk(&topo, &url, secs, conns, Some(pid))?;
                cpu_share.push(cpu_since(pid, c0, t0)?);
                let st = daemon.status()?;
                ring_full += st["capture"]["kernel"]["ring_full"].as_u64().unwrap_or(0);
                if std::env::var_os("SENTINEL_BENCH_DEBUG").is_some() {
                    eprintln!("{}", serde_json::to_string_pretty(&st["capture"])?);
                }
                captured += st["capture"]["kernel"]["captured"].as_u64().unwrap_or(0);
                sen_rps.push(r.rps);
                sen_p99.push(r.p99_ms);
                sen_cost.push(r.cpu_us_per_req);
                sen_daemon.push(r.daemon_us_per_req);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let (br, bp, sr, sp) = (
        median(&base_rps),
        median(&base_p99),
        median(&sen_rps),
        median(&sen_p99),
    );
    let (xr, xp) = (median(&xdp_rps), median(&xdp_p99));
    let (bc, xc, sc) = (median(&base_cost), median(&xdp_cost), median(&sen_cost));
    let cpu = median(&cpu_share);
    let cpu_xdp = median(&xdp_cpu);
    let (cr, cp, cc, cpu_cap) = (
        median(&cap_rps),
        median(&cap_p99),
        median(&cap_cost),
        median(&cap_cpu),
    );
    let (fr, fp, fc, cpu_flo) = (
        median(&flo_rps),
        median(&flo_p99),
        median(&flo_cost),
        median(&flo_cpu),
    );
    let table = format!(
        "### Live capture overhead on a protected server (wrk, {conns} connections, {secs} s x {rounds} rounds per arm, interleaved)\n\n\
         | arm | requests/s (median) | p99 latency (median) | CPU per request (median) |\n|---|---|---|---|\n\
         | pass-only XDP (baseline) | {br:.0} | {bp:.2} ms | {bc:.1} us |\n\
         | sentinel XDP alone (daemon without capture) | {xr:.0} | {xp:.2} ms | {xc:.1} us |\n\
         | sentinel: XDP + TC capture + capture pipeline (reassembly, HTTP, transactions; models off) | {cr:.0} | {cp:.2} ms | {cc:.1} us |\n\
         | sentinel: XDP + TC capture + pipeline + detection (the whole path) | {sr:.0} | {sp:.2} ms | {sc:.1} us |\n\
         | floor: pass-only XDP + TC capture, the ring drained by the daemon's loop and every segment dropped | {fr:.0} | {fp:.2} ms | {fc:.1} us |\n\
         | ratio, XDP alone / baseline (paired rounds) | {} | {} | {} |\n\
         | ratio, capture / baseline (paired rounds) | {} (target >= 0.95) | {} (target <= 1.05) | {} |\n\
         | ratio, whole / baseline (paired rounds) | {} (target >= 0.95) | {} (target <= 1.05) | {} |\n\
         | ratio, floor / baseline (paired rounds) | {} | {} | {} |\n\n\
         Ratios: median of the per-round ratios, with their range over the rounds. CPU per request: user + system \
         time of the server, wrk and the daemon (softirq work is charged to whichever ran) over the requests wrk \
         completed; its ratio, baseline / arm, is the request rate the arm would keep on a machine that only \
         these processes share, which other load on the machine does not move the way it moves requests/s. \
         Highest rate wrk drove over veth here: {:.0} requests/s. During the sentinel arm: {captured} segments captured, \
         {ring_full} lost to a full ring buffer in the capture and whole arms (target 0), daemon CPU {:.0}% of one core \
         (median; target < 100%; {:.0}% with the models off, {:.0}% in the XDP-alone arm); the daemon's CPU per \
         request {:.2} us with the models off, {:.2} us with them (medians). \
         Floor: {flo_segments} segments drained and dropped, {flo_full} lost to a full ring buffer, its drain thread \
         {:.0}% of one core (median).\n",
        ratio(&xdp_rps, &base_rps),
        ratio(&xdp_p99, &base_p99),
        ratio(&base_cost, &xdp_cost),
        ratio(&cap_rps, &base_rps),
        ratio(&cap_p99, &base_p99),
        ratio(&base_cost, &cap_cost),
        ratio(&sen_rps, &base_rps),
        ratio(&sen_p99, &base_p99),
        ratio(&base_cost, &sen_cost),
        ratio(&flo_rps, &base_rps),
        ratio(&flo_p99, &base_p99),
        ratio(&base_cost, &flo_cost),
        br.max(sr).max(xr).max(cr).max(fr),
        cpu * 100.0,
        cpu_cap * 100.0,
        cpu_xdp * 100.0,
        median(&cap_daemon),
        median(&sen_daemon),
        cpu_flo * 100.0
    );
    println!("{table}");
    if std::env::var_os("SENTINEL_BENCH_ARM").is_none() {
        sentinel_tests::bench_report::write_section("capture-live", &table)?;
    }
    Ok(())
}
