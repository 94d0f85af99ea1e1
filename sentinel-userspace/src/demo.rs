//! `sentinel demo`: Sentinel's main job on an embedded default, end to end, in network
//! namespaces it creates and removes.
//!
//! A client namespace and a server namespace joined by a veth pair; the daemon attached to the
//! server side with its own socket, pin directory and logs; three clients sending bounded UDP
//! traffic: one blocked, one throttled, one allowlisted inside a blocked prefix. It prints what
//! each client sent and what reached the server, the kernel's counters and the per-source view,
//! checks each against what Sentinel promises, and fails when one does not hold.
//!
//! The demo is a list of [`STEPS`] over one [`Lab`]; the last one runs the reference case of
//! DESIGN.md ([`crate::lab::reference`]) on the demo bank in namespaces of its own. Everything is removed on return, on error, on a failed check and on Ctrl-C/SIGTERM
//! (the lab's guards drop: daemon killed and its pins unloaded, namespaces deleted).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
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

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: stopped early; namespaces, daemon and pins are removed on the way out");
    }
    Ok(())
}

/// What a client should see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Nothing gets through.
    Dropped,
    /// `rate` packets per second after a burst of `burst`.
    Throttled { rate: u64, burst: u64 },
    /// Everything gets through.
    Passed,
}

/// A simulated client: one source address on the client side.
struct Client {
    role: &'static str,
    addr: Ipv4Addr,
    /// The `sentinel top` verdict its address should show.
    verdict: &'static str,
    expect: Expect,
}

const THROTTLE_PPS: u64 = 50;
const THROTTLE_BURST: u64 = 10;

/// The clients. .10 is blocked; .20 is throttled; 198.18.0.24/29 is blocked but .30 inside it is
/// allowlisted, and the allowlist always wins.
const CLIENTS: &[Client] = &[
    Client {
        role: "blocked",
        addr: Ipv4Addr::new(198, 18, 0, 10),
        verdict: "block",
        expect: Expect::Dropped,
    },
    Client {
        role: "throttled",
        addr: Ipv4Addr::new(198, 18, 0, 20),
        verdict: "throttle",
        expect: Expect::Throttled {
            rate: THROTTLE_PPS,
            burst: THROTTLE_BURST,
        },
    },
    Client {
        role: "allowed",
        addr: Ipv4Addr::new(198, 18, 0, 30),
        verdict: "allow",
        expect: Expect::Passed,
    },
];

/// Offered load per client, and for how long.
const PPS: u64 = 400;
const SECONDS: u64 = 4;
const PORT: u16 = 7000;

/// What one client sent and what reached the server.
struct Traffic {
    sent: u64,
    received: u64,
    elapsed: Duration,
}

/// A scratch directory for the daemon's configuration and logs, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything the demo set up. Fields drop in order: the daemon (killed, pins unloaded), the
/// namespaces (and with them the veth pair), then the scratch directory.
pub struct Lab {
    daemon: Daemon,
    topo: Topology,
    _scratch: Scratch,
    traffic: Vec<Traffic>,
    checks: Vec<(bool, String)>,
}

impl Lab {
    fn start() -> anyhow::Result<Self> {
        // The daemon's alert and verdict logs go to a scratch directory: the demo must neither
        // replay nor append to the logs of a real installation under /var/lib/sentinel.
        let scratch = Scratch(
            std::env::temp_dir().join(format!("sentinel-demo-{}", crate::lab::unique_id())),
        );
        std::fs::create_dir_all(&scratch.0)?;
        let config = scratch.0.join("sentinel.toml");
        std::fs::write(
            &config,
            format!(
                "[alerts]\nlog = {:?}\n[verdicts]\nlog = {:?}\n",
                scratch.0.join("alerts.jsonl"),
                scratch.0.join("verdicts.jsonl")
            ),
        )?;
        let topo = Topology::new().context("creating namespaces (iproute2)")?;
        for c in CLIENTS {
            topo.add_client_addr(c.addr.into())?;
        }
        check_interrupt()?;
        let daemon = Daemon::start(
            &topo.server,
            &[&topo.server_if],
            &["--config", &config.to_string_lossy()],
        )
        .context("starting the daemon")?;
        Ok(Self {
            daemon,
            topo,
            _scratch: scratch,
            traffic: Vec::new(),
            checks: Vec::new(),
        })
    }

    /// Runs `sentinel ARGS` against the demo's daemon, showing the command and its output.
    fn sentinel(&self, args: &[&str]) -> anyhow::Result<String> {
        println!("$ sentinel {}", shell_words(args));
        let out = self.daemon.cli_ok(args)?;
        for line in out.lines() {
            println!("  {line}");
        }
        Ok(out)
    }

    /// Runs `sentinel ARGS` quietly and parses its JSON output.
    fn sentinel_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = self.daemon.cli_ok(args)?;
        serde_json::from_str(&out).with_context(|| format!("parsing `sentinel {}`", args.join(" ")))
    }

    /// Records and prints one promise and whether it held.
    fn check(&mut self, ok: bool, what: String) {
        println!("  {}  {what}", if ok { "ok  " } else { "FAIL" });
        self.checks.push((ok, what));
    }
}

fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.contains(' ') {
                format!("\"{a}\"")
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One step of the demo.
pub struct Step {
    /// Shown as the step's heading.
    pub title: &'static str,
    /// What it does; fails only when it cannot run (a broken promise is a failed check).
    pub run: fn(&mut Lab) -> anyhow::Result<()>,
}

/// The steps, in order.
pub const STEPS: &[Step] = &[
    Step {
        title: "rules: block, throttle and allow sources in the kernel maps",
        run: rules,
    },
    Step {
        title: "traffic: each client sends UDP to the server",
        run: traffic,
    },
    Step {
        title: "kernel counters per verdict reason (sentinel status)",
        run: counters,
    },
    Step {
        title: "per source, as the kernel counted it (sentinel top --json)",
        run: sources,
    },
    Step {
        title: "the reference case: 500 logins on a Riyadh user's account from Vietnam",
        run: reference_case,
    },
];

/// The reference case of DESIGN.md on the demo bank (its own namespaces and daemon, with HTTP
/// capture, the models and the response policy).
fn reference_case(lab: &mut Lab) -> anyhow::Result<()> {
    use crate::lab::reference::{self, ATTACKER, RIYADH, Settings};
    let settings = Settings::default();
    println!(
        "  the demo bank on 198.18.0.1:{}, {} benign clients, layla logging in from {RIYADH} (Riyadh),",
        reference::PORT,
        settings.benign_clients
    );
    println!(
        "  then {} login attempts on her account from {ATTACKER} (Vietnam) at {}/s with a script.",
        settings.attempts, settings.attack_rate
    );
    println!(
        "  policy: brute_force -> throttle at the learned rate (20 packets/s when none), block on repeat, revoke the account's sessions\n"
    );
    let r = reference::run(&settings)?;
    let per_s: Vec<String> = r.arrivals_per_s.iter().map(usize::to_string).collect();
    println!(
        "  attempts reaching the bank per second since the attack started: [{}] ({} of {})",
        per_s.join(", "),
        r.attempts_at_server,
        r.attempts_sent
    );
    for v in &r.verdicts {
        println!(
            "  verdict: {} {} {} (reason {})",
            v["list"].as_str().unwrap_or("?"),
            v["target"].as_str().unwrap_or("?"),
            v["rate_pps"]
                .as_u64()
                .map(|p| format!("at {p} packets/s"))
                .unwrap_or_default(),
            v["reason"].as_str().unwrap_or("?")
        );
    }
    if let Some(a) = r.brute_force_alert() {
        println!(
            "  alert: {} {} from {} ({}) -> {}",
            a["severity"].as_str().unwrap_or("?"),
            a["kind"].as_str().unwrap_or("?"),
            a["src_ip"].as_str().unwrap_or("?"),
            a["country"].as_str().unwrap_or("?"),
            a["action"].as_str().unwrap_or("?")
        );
        println!("    {}", a["explanation"].as_str().unwrap_or(""));
    }
    let first = r.first_verdict_s.unwrap_or(f64::INFINITY);
    lab.check(
        first < 1.0,
        format!(
            "the attacker is throttled in the kernel {:.0} ms after the attack started (< 1 s)",
            first * 1e3
        ),
    );
    lab.check(
        r.attempts_at_server < 100,
        format!(
            "{} of {} attempts reached the bank",
            r.attempts_at_server, r.attempts_sent
        ),
    );
    let alert_ok = r.brute_force_alert().is_some_and(|a| {
        a["country"] == "VN"
            && a["action"] == "throttle"
            && a["explanation"].as_str().is_some_and(|e| !e.is_empty())
    });
    lab.check(
        alert_ok,
        "the alert says brute_force, VN, throttle, and why".into(),
    );
    let revoked = r.revoked.iter().any(|t| r.riyadh_tokens.contains(t));
    lab.check(
        revoked,
        format!(
            "the identity provider got the revocation of layla's sessions {:.0} ms after the attack started",
            r.first_revocation_s.unwrap_or(f64::NAN) * 1e3
        ),
    );
    lab.check(
        r.benign_errors == 0,
        format!(
            "{} benign requests, {} errors",
            r.benign_requests, r.benign_errors
        ),
    );
    Ok(())
}

fn rules(lab: &mut Lab) -> anyhow::Result<()> {
    lab.sentinel(&[
        "block",
        "add",
        "198.18.0.10",
        "--ttl",
        "10m",
        "--reason",
        "demo: known bad source",
    ])?;
    lab.sentinel(&[
        "block",
        "add",
        "198.18.0.24/29",
        "--reason",
        "demo: abusive range",
    ])?;
    lab.sentinel(&[
        "allow",
        "add",
        "198.18.0.30",
        "--reason",
        "demo: partner inside that range",
    ])?;
    let rate = format!("{THROTTLE_PPS}/s");
    let burst = THROTTLE_BURST.to_string();
    lab.sentinel(&[
        "throttle",
        "add",
        "198.18.0.20",
        "--rate",
        &rate,
        "--burst",
        &burst,
        "--reason",
        "demo: noisy client",
    ])?;
    for list in ["block", "allow", "throttle"] {
        lab.sentinel(&[list, "list"])?;
    }
    Ok(())
}

fn traffic(lab: &mut Lab) -> anyhow::Result<()> {
    let dst = SocketAddr::new(SERVER_V4.into(), PORT);
    let sink = Sink::start(&lab.topo.server, dst)?;
    println!("sending {PPS} packets/s for {SECONDS} s from each client to {dst}, all at once...\n");
    let senders: Vec<_> = CLIENTS
        .iter()
        .map(|c| {
            let ns_path = lab.topo.client.path();
            let addr = IpAddr::V4(c.addr);
            std::thread::spawn(move || {
                crate::lab::netns::enter(&ns_path)?;
                send_paced(
                    addr,
                    dst,
                    PPS * SECONDS,
                    PPS,
                    Duration::from_secs(SECONDS + 3),
                )
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
        "  {:<10} {:<14} {:>6} {:>9}  EXPECTED",
        "CLIENT", "ADDRESS", "SENT", "RECEIVED"
    );
    let mut results = Vec::new();
    for (c, s) in CLIENTS.iter().zip(&sent) {
        let received = sink.from(c.addr.into());
        let expected = match c.expect {
            Expect::Dropped => "0: dropped in XDP".to_owned(),
            Expect::Passed => format!("all {}: the allowlist wins over the /29", s.packets),
            Expect::Throttled { rate, burst } => format!(
                "about {:.0}: burst {burst} + {rate}/s for {:.1} s",
                burst as f64 + rate as f64 * s.elapsed.as_secs_f64(),
                s.elapsed.as_secs_f64()
            ),
        };
        println!(
            "  {:<10} {:<14} {:>6} {:>9}  {expected}",
            c.role, c.addr, s.packets, received
        );
        results.push(Traffic {
            sent: s.packets,
            received,
            elapsed: s.elapsed,
        });
    }
    println!();
    for (c, t) in CLIENTS.iter().zip(&results) {
        let (ok, what) = match c.expect {
            Expect::Dropped => (
                t.received == 0 && t.sent > 0,
                format!(
                    "{} {}: none of {} reached the server",
                    c.role, c.addr, t.sent
                ),
            ),
            Expect::Passed => (
                t.received == t.sent && t.sent > 0,
                format!("{} {}: all {} reached the server", c.role, c.addr, t.sent),
            ),
            Expect::Throttled { rate, burst } => {
                let secs = t.elapsed.as_secs_f64();
                let low = rate as f64 * secs * 0.8;
                let high = (burst as f64 + rate as f64 * secs) * 1.2;
                (
                    (low..=high).contains(&(t.received as f64)),
                    format!(
                        "{} {}: {} of {} got through, within {:.0}..{:.0} ({rate}/s)",
                        c.role, c.addr, t.received, t.sent, low, high
                    ),
                )
            }
        };
        lab.check(ok, what);
    }
    lab.traffic = results;
    Ok(())
}

fn counters(lab: &mut Lab) -> anyhow::Result<()> {
    let status = lab.sentinel_json(&["status", "--json"])?;
    for p in status["programs"].as_array().into_iter().flatten() {
        println!(
            "  program {} on {} ({} mode, prog id {}), pinned at {}",
            p["program"].as_str().unwrap_or("?"),
            p["iface"].as_str().unwrap_or("?"),
            p["mode"].as_str().unwrap_or("?"),
            p["program_id"],
            p["pin"].as_str().unwrap_or("?")
        );
    }
    println!("\n  {:<18} {:>10} {:>12}", "REASON", "PACKETS", "BYTES");
    let counter = |k: &str| status["counters"][k]["packets"].as_u64().unwrap_or(0);
    for (k, v) in status["counters"].as_object().into_iter().flatten() {
        let p = v["packets"].as_u64().unwrap_or(0);
        if p > 0 {
            println!("  {k:<18} {p:>10} {:>12}", v["bytes"].as_u64().unwrap_or(0));
        }
    }
    println!();
    let traffic = std::mem::take(&mut lab.traffic);
    for (c, t) in CLIENTS.iter().zip(&traffic) {
        let (ok, what) = match c.expect {
            Expect::Dropped => (
                counter("drop_block") >= t.sent,
                format!(
                    "drop_block counted the {} packets of the blocked client",
                    t.sent
                ),
            ),
            Expect::Passed => (
                counter("allowlisted") >= t.sent,
                format!(
                    "allowlisted counted the {} packets of the allowed client",
                    t.sent
                ),
            ),
            Expect::Throttled { .. } => (
                counter("throttle_pass") >= t.received
                    && counter("drop_throttle") >= t.sent - t.received,
                format!(
                    "throttle_pass >= {} and drop_throttle >= {} for the throttled client",
                    t.received,
                    t.sent - t.received
                ),
            ),
        };
        lab.check(ok, what);
    }
    lab.traffic = traffic;
    Ok(())
}

fn sources(lab: &mut Lab) -> anyhow::Result<()> {
    let top = lab.sentinel_json(&["top", "--json", "--limit", "10"])?;
    let sources: Vec<&serde_json::Value> =
        top["sources"].as_array().into_iter().flatten().collect();
    println!(
        "  {:<26} {:>8} {:>8}  VERDICT",
        "SOURCE", "PACKETS", "DROPPED"
    );
    for s in &sources {
        println!(
            "  {:<26} {:>8} {:>8}  {}",
            s["src_ip"].as_str().unwrap_or("?"),
            s["packets"].as_u64().unwrap_or(0),
            s["dropped"].as_u64().unwrap_or(0),
            s["verdict"].as_str().unwrap_or("?")
        );
    }
    println!();
    let traffic = std::mem::take(&mut lab.traffic);
    for (c, t) in CLIENTS.iter().zip(&traffic) {
        let addr = c.addr.to_string();
        let Some(s) = sources.iter().find(|s| s["src_ip"].as_str() == Some(&addr)) else {
            // A source the blocklist drops on first sight gets no per-source entry (its packets
            // are counted under drop_block, checked above); every other client must be tracked.
            if !matches!(c.expect, Expect::Dropped) {
                lab.check(false, format!("{} {addr} is tracked in the kernel", c.role));
            }
            continue;
        };
        let packets = s["packets"].as_u64().unwrap_or(0);
        let dropped = s["dropped"].as_u64().unwrap_or(0);
        let verdict = s["verdict"].as_str().unwrap_or("?");
        let drops_ok = match c.expect {
            Expect::Dropped => dropped == packets,
            Expect::Passed => dropped == 0,
            Expect::Throttled { .. } => dropped >= t.sent - t.received,
        };
        lab.check(
            packets >= t.sent && verdict == c.verdict && drops_ok,
            format!(
                "{} {addr}: {packets} packets, {dropped} dropped, verdict {verdict} (expected {})",
                c.role, c.verdict
            ),
        );
    }
    lab.traffic = traffic;
    Ok(())
}

/// Runs the demo; every resource is cleaned up on return, error or Ctrl-C.
pub fn run() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the demo loads eBPF programs and creates network namespaces: run it as root \
             (e.g. `sudo sentinel demo`)"
        );
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing a handler that only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }

    println!("Sentinel demo: the XDP sentinel in front of a server, three clients.\n");
    let mut lab = Lab::start()?;
    println!(
        "  client namespace {:<14}            server namespace {}",
        lab.topo.client.name(),
        lab.topo.server.name()
    );
    for (i, c) in CLIENTS.iter().enumerate() {
        let link = if i == 1 {
            format!(
                "--- veth {} <-> {} [XDP sentinel] --- {}:{PORT} (UDP sink)",
                lab.topo.client_if, lab.topo.server_if, SERVER_V4
            )
        } else {
            String::new()
        };
        println!("  {:<14} {:<12} {link}", c.addr, format!("({})", c.role));
    }
    println!(
        "\n  daemon: sentinel run --iface {} (socket {}, pins {})",
        lab.topo.server_if,
        lab.daemon.socket.display(),
        lab.daemon.pin_path.display()
    );

    for (i, step) in STEPS.iter().enumerate() {
        check_interrupt()?;
        println!("\n== {}. {} ==\n", i + 1, step.title);
        (step.run)(&mut lab)?;
    }

    let failed: Vec<String> = lab
        .checks
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, what)| what.clone())
        .collect();
    let total = lab.checks.len();
    drop(lab);
    println!("\nnamespaces, daemon and pins removed.");
    if !failed.is_empty() {
        bail!(
            "{} of {total} checks failed, Sentinel did not do what it promises: {}",
            failed.len(),
            failed.join("; ")
        );
    }
    println!("demo passed: {total} of {total} checks held.");
    Ok(())
}
