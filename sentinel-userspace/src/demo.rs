//! `sentinel demo`: Sentinel's main job on an embedded default, end to end, in network
//! namespaces it creates and removes.
//!
//! A client namespace and a server namespace joined by a veth pair; the daemon attached to the
//! server side; three clients sending bounded UDP traffic: one blocked, one throttled, one
//! allowlisted inside the blocked prefix. It prints what each client sent and what reached the
//! server, and the kernel's counters, and fails when the outcome is wrong.

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::lab::{
    Daemon, Topology,
    netns::SERVER_V4,
    traffic::{Sink, send_paced},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

struct Client {
    role: &'static str,
    addr: IpAddr,
}

const SECONDS: u64 = 4;
const PPS: u64 = 400;
const THROTTLE_PPS: u64 = 50;
const THROTTLE_BURST: u64 = 10;
const PORT: u16 = 7000;

/// Runs the demo; every resource is cleaned up on return, error or Ctrl-C.
pub fn run() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo loads eBPF programs and creates network namespaces: run it as root");
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };

    println!("Sentinel demo: an XDP sentinel in front of a server, three clients.\n");
    let topo = Topology::new().context("creating namespaces (iproute2)")?;
    let clients = [
        Client {
            role: "blocked",
            addr: "198.18.0.10".parse()?,
        },
        Client {
            role: "throttled",
            addr: "198.18.0.20".parse()?,
        },
        Client {
            role: "allowed",
            addr: "198.18.0.30".parse()?,
        },
    ];
    for c in &clients {
        topo.add_client_addr(c.addr)?;
    }
    println!(
        "namespaces {} (clients) and {} (server), veth {} <-> {}",
        topo.client.name(),
        topo.server.name(),
        topo.client_if,
        topo.server_if
    );
    let daemon =
        Daemon::start(&topo.server, &[&topo.server_if], &[]).context("starting the daemon")?;
    println!(
        "daemon attached to {} (socket {})\n",
        topo.server_if,
        daemon.socket.display()
    );
    check_interrupt()?;

    // .10 is blocked; .20 is throttled; .24/29 is blocked but .30 inside it is allowlisted
    // (the allowlist always wins).
    daemon.cli_ok(&[
        "block",
        "add",
        "198.18.0.10",
        "--reason",
        "demo: known bad source",
        "--ttl",
        "10m",
    ])?;
    daemon.cli_ok(&[
        "block",
        "add",
        "198.18.0.24/29",
        "--reason",
        "demo: abusive range",
    ])?;
    daemon.cli_ok(&[
        "allow",
        "add",
        "198.18.0.30",
        "--reason",
        "demo: partner inside that range",
    ])?;
    daemon.cli_ok(&[
        "throttle",
        "add",
        "198.18.0.20",
        "--rate",
        &format!("{THROTTLE_PPS}/s"),
        "--burst",
        &THROTTLE_BURST.to_string(),
        "--reason",
        "demo: noisy client",
    ])?;
    print!("{}", daemon.cli_ok(&["block", "list"])?);
    print!("{}", daemon.cli_ok(&["allow", "list"])?);
    print!("{}", daemon.cli_ok(&["throttle", "list"])?);
    println!();

    let dst = SocketAddr::new(SERVER_V4.into(), PORT);
    let sink = Sink::start(&topo.server, dst)?;
    println!("sending {PPS} packets/s for {SECONDS} s from each client...");
    let senders: Vec<_> = clients
        .iter()
        .map(|c| {
            let ns_path = topo.client.path();
            let addr = c.addr;
            std::thread::spawn(move || -> anyhow::Result<u64> {
                crate::lab::netns::enter(&ns_path)?;
                let s = send_paced(
                    addr,
                    dst,
                    PPS * SECONDS,
                    PPS,
                    Duration::from_secs(SECONDS + 3),
                )?;
                Ok(s.packets)
            })
        })
        .collect();
    let mut sent = Vec::new();
    for s in senders {
        sent.push(s.join().map_err(|_| anyhow::anyhow!("sender panicked"))??);
    }
    sink.settle(Duration::from_millis(300), Duration::from_secs(3));
    check_interrupt()?;

    println!(
        "\n{:<10} {:<14} {:>8} {:>9}  expected",
        "CLIENT", "ADDRESS", "SENT", "RECEIVED"
    );
    let mut ok = true;
    for (c, s) in clients.iter().zip(&sent) {
        let got = sink.from(c.addr);
        let (expect, good) = match c.role {
            "blocked" => ("0 (dropped in XDP)".to_owned(), got == 0),
            "throttled" => {
                let allowed = THROTTLE_PPS * SECONDS + THROTTLE_BURST;
                (
                    format!("about {allowed} ({THROTTLE_PPS}/s + burst {THROTTLE_BURST})"),
                    got > 0 && (got as f64) < allowed as f64 * 1.3,
                )
            }
            _ => (format!("all {s}"), got == *s),
        };
        ok &= good;
        println!(
            "{:<10} {:<14} {:>8} {:>9}  {expect}{}",
            c.role,
            c.addr,
            s,
            got,
            if good { "" } else { "   <-- unexpected" }
        );
    }
    drop(sink);

    println!("\nkernel counters (sentinel status):");
    let status = daemon.status()?;
    if let Some(counters) = status["counters"].as_object() {
        for (k, v) in counters {
            let p = v["packets"].as_u64().unwrap_or(0);
            if p > 0 {
                println!("  {k:<18} {p:>10} packets");
            }
        }
    }
    println!("\nbusiest sources (sentinel top --json):");
    let top: serde_json::Value =
        serde_json::from_str(&daemon.cli_ok(&["top", "--json", "--limit", "5"])?)?;
    for s in top["sources"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} {:>8} packets {:>8} dropped  verdict {}",
            s["src_ip"].as_str().unwrap_or("?"),
            s["packets"],
            s["dropped"],
            s["verdict"].as_str().unwrap_or("?")
        );
    }
    drop(daemon);
    drop(topo);
    if !ok {
        bail!("the outcome was not what Sentinel promises (see above)");
    }
    println!("\ndemo finished: namespaces, daemon and pins removed.");
    Ok(())
}
