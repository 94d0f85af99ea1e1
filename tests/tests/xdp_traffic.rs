//! Attach tier: the real `sentinel` daemon on a veth between two namespaces this test creates,
//! real UDP traffic from clients, counted at the server.
//!
//! Senders are paced (3000 datagrams/s at most), so that socket buffers never stand in for the
//! datapath, and every loop is bounded in count and time.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use sentinel_common::{bucket_new, bucket_take};
use sentinel_tests::{
    Daemon, TempDir, Topology,
    netns::{CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
    output_within, sentinel_bin,
    traffic::{Sink, send_paced, send_udp},
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Fields drop in order: the daemon is killed and unloaded before its namespaces go.
struct Setup {
    daemon: Daemon,
    topo: Topology,
}

fn setup(extra_clients: &[&str]) -> Setup {
    sentinel_tests::require_root();
    let topo = Topology::new().unwrap();
    for c in extra_clients {
        topo.add_client_addr(ip(c)).unwrap();
    }
    let daemon = Daemon::start(&topo.server, &[&topo.server_if], &[]).unwrap();
    Setup { daemon, topo }
}

/// An IPv4 and an IPv6 UDP sink on one port of the server.
struct Sinks {
    v4: Sink,
    v6: Sink,
    port: u16,
}

impl Sinks {
    fn start(s: &Setup, port: u16) -> Self {
        Self {
            v4: Sink::start(&s.topo.server, SocketAddr::new(SERVER_V4.into(), port)).unwrap(),
            v6: Sink::start(&s.topo.server, SocketAddr::new(SERVER_V6.into(), port)).unwrap(),
            port,
        }
    }

    /// The sink and server address for traffic from `src`.
    fn for_source(&self, src: IpAddr) -> (&Sink, SocketAddr) {
        match src {
            IpAddr::V4(_) => (&self.v4, SocketAddr::new(SERVER_V4.into(), self.port)),
            IpAddr::V6(_) => (&self.v6, SocketAddr::new(SERVER_V6.into(), self.port)),
        }
    }

    /// Sends `n` datagrams from `src` and returns how many of them arrived.
    fn delivered(&self, s: &Setup, src: IpAddr, n: u64) -> u64 {
        let (sink, dst) = self.for_source(src);
        let before = sink.from(src);
        let sent = send_udp(&s.topo.client, src, dst, n, 3000, Duration::from_secs(5)).unwrap();
        assert_eq!(sent.packets, n, "{src} could not send");
        sink.settle(Duration::from_millis(200), Duration::from_secs(3));
        sink.from(src) - before
    }

    fn total(&self) -> u64 {
        self.v4.total() + self.v6.total()
    }
}

/// Sends from the primary addresses so that both neighbour caches know the server before any
/// list could drop neighbour discovery.
fn warm_neighbours(s: &Setup) {
    let sinks = Sinks::start(s, 6999);
    for src in [CLIENT_V4.into(), CLIENT_V6.into()] {
        assert_eq!(
            sinks.delivered(s, src, 3),
            3,
            "the lab does not pass traffic"
        );
    }
}

#[test]
fn blocked_v4_and_v6_sources_are_dropped_and_others_pass() {
    let s = setup(&["198.18.0.11", "2001:db8::11"]);
    warm_neighbours(&s);
    s.daemon
        .cli_ok(&["block", "add", "198.18.0.11", "2001:db8::11"])
        .unwrap();
    let before = s.daemon.counter("drop_block").unwrap();
    let sinks = Sinks::start(&s, 7001);
    for (src, n) in [
        (ip("198.18.0.11"), 0),
        (CLIENT_V4.into(), 300),
        (ip("2001:db8::11"), 0),
        (CLIENT_V6.into(), 300),
    ] {
        assert_eq!(sinks.delivered(&s, src, 300), n, "from {src}");
    }
    let dropped = s.daemon.counter("drop_block").unwrap() - before;
    assert_eq!(dropped, 600, "drop_block grew by {dropped}");
}

#[test]
fn an_allowlisted_address_inside_a_blocked_prefix_passes() {
    let s = setup(&["198.18.0.20", "198.18.0.21", "2001:db8::20", "2001:db8::21"]);
    warm_neighbours(&s);
    // The IPv6 prefix leaves out the client's primary address, whose neighbour discovery
    // keeps the server reachable.
    s.daemon
        .cli_ok(&[
            "block",
            "add",
            "198.18.0.0/24",
            "2001:db8::/122",
            "--reason",
            "range",
        ])
        .unwrap();
    s.daemon
        .cli_ok(&["allow", "add", "198.18.0.20", "2001:db8::20"])
        .unwrap();
    let sinks = Sinks::start(&s, 7002);
    for (src, n) in [
        ("198.18.0.20", 200),
        ("198.18.0.21", 0),
        ("2001:db8::20", 200),
        ("2001:db8::21", 0),
    ] {
        assert_eq!(sinks.delivered(&s, ip(src), 200), n, "from {src}");
    }
    assert!(s.daemon.counter("allowlisted").unwrap() >= 400);
    assert!(s.daemon.counter("drop_block").unwrap() >= 400);
    // `explain` names the entries that cover the address, and only those.
    let x: serde_json::Value = serde_json::from_str(
        &s.daemon
            .cli_ok(&["explain", "198.18.0.20", "--json"])
            .unwrap(),
    )
    .unwrap();
    let mut covering: Vec<(String, String)> = x["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[0].as_str().unwrap().into(),
                e[1]["target"].as_str().unwrap().into(),
            )
        })
        .collect();
    covering.sort();
    assert_eq!(
        covering,
        [
            ("allow".to_owned(), "198.18.0.20".to_owned()),
            ("block".to_owned(), "198.18.0.0/24".to_owned())
        ],
        "{x}"
    );
    // The address as alerts name a principal (`ip:`) is the same address.
    let y: serde_json::Value = serde_json::from_str(
        &s.daemon
            .cli_ok(&["explain", "ip:198.18.0.20", "--json"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(y["entries"], x["entries"], "{y}");
    assert_eq!(y["source"]["packets"], x["source"]["packets"], "{y}");
}

/// Sends `count` datagrams from `src` paced at `pps` inside the client namespace; returns the
/// CLOCK_MONOTONIC time (the kernel's `bpf_ktime_get_ns` clock) of each send that succeeded.
fn send_timed(s: &Setup, src: IpAddr, dst: SocketAddr, count: u64, pps: u64) -> Vec<u64> {
    s.topo
        .client
        .run(move || {
            let sock = UdpSocket::bind(SocketAddr::new(src, 0)).unwrap();
            let start = Instant::now();
            let mut times = Vec::with_capacity(count as usize);
            for i in 0..count {
                let due = start + Duration::from_secs_f64(i as f64 / pps as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if sock.send_to(&[0x5a; 64], dst).is_ok() {
                    times.push(sentinel::clock::monotonic_ns());
                }
            }
            times
        })
        .unwrap()
}

/// How many packets arriving at `times` a token bucket passes, with the kernel's arithmetic
/// (`sentinel_common::bucket_take`; a bucket starts full at its first packet).
fn bucket_model(times: &[u64], rate: u64, burst: u64) -> u64 {
    let Some((first, rest)) = times.split_first() else {
        return 0;
    };
    let mut state = bucket_new(burst, *first);
    1 + rest
        .iter()
        .filter(|t| bucket_take(&mut state, rate, burst, **t))
        .count() as u64
}

#[test]
fn a_throttled_source_gets_through_at_the_configured_rate() {
    // Per family up to three fresh sources: an attempt whose sender stalled for longer than the
    // bucket holds (burst / rate = 100 ms) offered less than the rate asks for, and is repeated
    // from the next source.
    let v4 = ["198.18.0.30", "198.18.0.31", "198.18.0.32"];
    let v6 = ["2001:db8::30", "2001:db8::31", "2001:db8::32"];
    let s = setup(&[v4, v6].concat());
    warm_neighbours(&s);
    let (rate, burst) = (200u64, 20u64);
    let mut args = vec!["throttle", "add"];
    args.extend(v4.iter().chain(&v6));
    let (rate_arg, burst_arg) = (format!("{rate}/s"), burst.to_string());
    args.extend(["--rate", &rate_arg, "--burst", &burst_arg]);
    s.daemon.cli_ok(&args).unwrap();
    let sinks = Sinks::start(&s, 7003);
    let mut judged = 0;
    for sources in [v4, v6] {
        let mut fair = None;
        for src in sources {
            let (sink, dst) = sinks.for_source(ip(src));
            // Five times the rate for three seconds.
            let times = send_timed(&s, ip(src), dst, 3000, 1000);
            judged += times.len() as u64;
            sink.settle(Duration::from_millis(300), Duration::from_secs(3));
            let got = sink.from(ip(src)) as f64;
            let secs = (times[times.len() - 1] - times[0]) as f64 / 1e9;
            // The same bucket run on the send times, and what the configured rate allows over
            // the sending time.
            let model = bucket_model(&times, rate, burst) as f64;
            let ideal = burst as f64 + rate as f64 * secs;
            eprintln!(
                "{src}: {} sent in {secs:.2} s, {got} received, model {model}, rate {ideal:.0}",
                times.len()
            );
            assert!(
                (got - model).abs() <= 0.05 * model,
                "{src}: received {got}, the bucket model passes {model}"
            );
            if (model - ideal).abs() <= 0.02 * ideal {
                fair = Some((src, got, ideal));
                break;
            }
            eprintln!("{src}: the sender stalled; again from another source");
        }
        let (src, got, ideal) = fair.expect("the sender stalled in every attempt");
        assert!(
            (got - ideal).abs() <= 0.10 * ideal,
            "{src}: received {got}, the configured rate allows {ideal:.0} +-10%"
        );
    }
    let passed = s.daemon.counter("throttle_pass").unwrap();
    let dropped = s.daemon.counter("drop_throttle").unwrap();
    assert_eq!(passed + dropped, judged, "every packet judged once");
    assert_eq!(passed, sinks.total(), "what passed the throttle arrived");
}

#[test]
fn ttl_expiry_restores_traffic() {
    let s = setup(&["198.18.0.40", "2001:db8::40"]);
    warm_neighbours(&s);
    s.daemon
        .cli_ok(&["block", "add", "198.18.0.40", "2001:db8::40", "--ttl", "2s"])
        .unwrap();
    let t = Instant::now();
    let sinks = Sinks::start(&s, 7004);
    let sources = [ip("198.18.0.40"), ip("2001:db8::40")];
    for src in sources {
        assert_eq!(
            sinks.delivered(&s, src, 50),
            0,
            "{src} blocked while the TTL runs"
        );
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "too slow to see the block"
    );
    std::thread::sleep(
        Duration::from_secs(2).saturating_sub(t.elapsed()) + Duration::from_millis(300),
    );
    for src in sources {
        assert_eq!(
            sinks.delivered(&s, src, 50),
            50,
            "{src} passes after expiry"
        );
    }
    let list = s.daemon.cli_ok(&["block", "list", "--json"]).unwrap();
    assert!(
        list.trim().is_empty(),
        "expired entries still listed: {list}"
    );
}

#[test]
fn sigkill_and_restart_keep_blocking_without_a_gap() {
    let mut s = setup(&["198.18.0.50"]);
    s.daemon
        .cli_ok(&[
            "block",
            "add",
            "198.18.0.50",
            "--reason",
            "persisted reason",
        ])
        .unwrap();
    let attachment = |d: &Daemon| {
        let st = d.status().unwrap();
        let programs = st["programs"].as_array().unwrap().clone();
        assert_eq!(programs.len(), 1, "{st}");
        (
            programs[0]["link_id"].clone(),
            programs[0]["program_id"].clone(),
        )
    };
    let (link_before, prog_before) = attachment(&s.daemon);
    let sinks = Sinks::start(&s, 7005);
    // A paced stream from the blocked source across the kill and the restart.
    let (_, dst) = sinks.for_source(ip("198.18.0.50"));
    let stream = s.topo.client.spawn(move || {
        send_paced(ip("198.18.0.50"), dst, 2500, 500, Duration::from_secs(8)).unwrap()
    });
    std::thread::sleep(Duration::from_millis(800));
    s.daemon.kill(libc::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    s.daemon.start_again().unwrap();
    let sent = stream.join().unwrap().unwrap();
    sinks
        .v4
        .settle(Duration::from_millis(200), Duration::from_secs(3));
    assert!(sent.packets > 2000);
    assert_eq!(
        sinks.v4.from(ip("198.18.0.50")),
        0,
        "a packet got through while the daemon was down or restarting"
    );
    let list = s.daemon.cli_ok(&["block", "list", "--json"]).unwrap();
    assert!(
        list.contains("198.18.0.50") && list.contains("persisted reason"),
        "{list}"
    );
    // The same pinned link now runs the new daemon's program: it was replaced in place, never
    // detached.
    let (link_after, prog_after) = attachment(&s.daemon);
    assert_eq!(link_after, link_before, "the pinned link was re-adopted");
    assert_ne!(
        prog_after, prog_before,
        "the restarted daemon's program runs"
    );
    assert!(
        s.daemon.log_text().contains("re-adopted"),
        "{}",
        s.daemon.log_text()
    );
    // Counters live in the pinned maps: the restarted daemon sees the drops of before.
    assert!(s.daemon.counter("drop_block").unwrap() >= sent.packets);
    // And the restarted daemon keeps enforcing while other sources pass.
    for (src, n) in [(ip("198.18.0.50"), 0), (CLIENT_V4.into(), 200)] {
        assert_eq!(sinks.delivered(&s, src, 200), n, "{src} after the restart");
    }
}

#[test]
fn sigterm_leaves_enforcement_and_unload_removes_it() {
    let mut s = setup(&["198.18.0.60"]);
    s.daemon.cli_ok(&["block", "add", "198.18.0.60"]).unwrap();
    s.daemon.kill(libc::SIGTERM).unwrap();
    let xdp_attached = |s: &Setup| {
        let out = s
            .topo
            .server
            .command("ip")
            .args(["link", "show", "dev", &s.topo.server_if])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    };
    assert!(xdp_attached(&s), "the program stays attached after SIGTERM");
    let sinks = Sinks::start(&s, 7006);
    let src = ip("198.18.0.60");
    assert_eq!(
        sinks.delivered(&s, src, 100),
        0,
        "still enforced after a clean stop"
    );
    let out = std::process::Command::new(sentinel_bin())
        .args(["unload", "--pin-path"])
        .arg(&s.daemon.pin_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!s.daemon.pin_path.exists(), "pins left behind");
    assert!(!xdp_attached(&s), "the program is still attached");
    assert_eq!(sinks.delivered(&s, src, 100), 100, "passes once unloaded");
}

/// Entries of a map in `sentinel status --json`.
fn map_entries(d: &Daemon, name: &str) -> u64 {
    let st = d.status().unwrap();
    st["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no map {name} in {st}"))["entries"]
        .as_u64()
        .unwrap()
}

#[test]
fn bulk_lists_load_and_a_bad_line_loads_nothing() {
    let s = setup(&[]);
    warm_neighbours(&s);
    let dir = TempDir::new("sentinel-bulk").unwrap();
    let good = dir.join("good.txt");
    let mut text = String::from("# generated\n");
    for i in 0..60_000u32 {
        let a = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + i;
        text.push_str(&format!("{}\n", std::net::Ipv4Addr::from(a)));
    }
    for i in 0..40_000u32 {
        text.push_str(&format!("2001:db8:1::{:x}:{:x}\n", i >> 16, i & 0xffff));
    }
    text.push_str("203.0.113.0/24 # a prefix\n");
    std::fs::write(&good, &text).unwrap();
    let t = Instant::now();
    let out = s
        .daemon
        .cli_ok(&["block", "add", "--file", good.to_str().unwrap()])
        .unwrap();
    assert!(out.contains("100001 entries added"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(60));
    assert_eq!(map_entries(&s.daemon, "SN_BLOCK_HASH"), 100_000);
    assert_eq!(map_entries(&s.daemon, "SN_BLOCK_LPM"), 1);
    // The list covers the client's IPv4 address, not its IPv6 one.
    let sinks = Sinks::start(&s, 7007);
    assert_eq!(sinks.delivered(&s, CLIENT_V4.into(), 100), 0);
    assert_eq!(sinks.delivered(&s, CLIENT_V6.into(), 100), 100);

    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "192.0.2.1\n192.0.2.2\n192.0.2.999\n").unwrap();
    let out = s
        .daemon
        .cli(&["block", "add", "--file", bad.to_str().unwrap()])
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.txt:3:") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(
        map_entries(&s.daemon, "SN_BLOCK_HASH"),
        100_000,
        "nothing of the bad file was loaded"
    );
}

#[test]
fn bad_input_exits_2_and_an_absent_daemon_exits_1() {
    let s = setup(&[]);
    // Each with what its first line must name.
    for (args, names) in [
        (&["block", "add", "10.0.0.300"][..], "10.0.0.300"),
        (&["block", "add", "198.51.100.7/24"], "198.51.100.7/24"),
        (&["block", "add", "192.0.2.1", "--ttl", "soon"], "soon"),
        (&["throttle", "add", "192.0.2.1", "--rate", "fast"], "fast"),
        (
            &[
                "throttle",
                "add",
                "192.0.2.0/24",
                "--rate",
                "10/s",
                "--aggregate",
                "/16",
            ],
            "16",
        ),
        (&["block", "del", "198.51.100.99"], "198.51.100.99"),
        (&["allow", "add"], "no targets"),
        (&["block", "frobnicate"], "frobnicate"),
    ] {
        let out = s.daemon.cli(args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines.first().is_some_and(|l| l.contains(names)),
            "{args:?}: the first line should name {names:?}: {err}"
        );
        // Usage errors found by the argument parser end with its hint to try --help.
        if lines[0].starts_with("sentinel:") {
            assert_eq!(lines.len(), 1, "{args:?}: not one line: {err}");
        }
    }
    // Nothing of the rejected commands reached the lists.
    for list in ["block", "allow", "throttle"] {
        let out = s.daemon.cli_ok(&[list, "list", "--json"]).unwrap();
        assert_eq!(out.trim(), "", "{list} list (one JSON object per entry)");
    }
    let out = std::process::Command::new(sentinel_bin())
        .args(["status", "--socket", "/nonexistent/sentinel.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the sentinel daemon"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused_before_it_touches_the_kernel() {
    let s = setup(&["198.18.0.70"]);
    warm_neighbours(&s);
    s.daemon.cli_ok(&["block", "add", "198.18.0.70"]).unwrap();
    let program = |d: &Daemon| d.status().unwrap()["programs"][0]["program_id"].clone();
    let before = program(&s.daemon);
    assert!(
        before.is_u64(),
        "status names the running program: {before}"
    );
    // Same socket and pins, and shadow mode: had it loaded, it would have replaced the running
    // daemon's program and turned its enforcement into counting.
    let out = output_within(
        s.topo
            .server
            .command(sentinel_bin())
            .args(["run", "--iface", &s.topo.server_if, "--mode", "shadow"])
            .arg("--socket")
            .arg(&s.daemon.socket)
            .arg("--pin-path")
            .arg(&s.daemon.pin_path),
        Duration::from_secs(30),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("another sentinel daemon"), "{err}");
    assert!(
        s.daemon.socket.exists(),
        "the running daemon's socket stays"
    );
    assert_eq!(
        program(&s.daemon),
        before,
        "the running program was replaced"
    );
    let sinks = Sinks::start(&s, 7008);
    assert_eq!(
        sinks.delivered(&s, ip("198.18.0.70"), 100),
        0,
        "still enforced, not shadow"
    );
}
