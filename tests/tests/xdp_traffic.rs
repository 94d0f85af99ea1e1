//! Attach tier: the real `sentinel` daemon on a veth between two namespaces this test creates,
//! real UDP traffic from clients, counted at the server.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use sentinel_tests::{
    Daemon, Topology,
    netns::{CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
    traffic::{Sink, send_udp},
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Setup {
    topo: Topology,
    daemon: Daemon,
}

fn setup(extra_clients: &[&str]) -> Setup {
    sentinel_tests::require_root();
    let topo = Topology::new().unwrap();
    for c in extra_clients {
        topo.add_client_addr(ip(c)).unwrap();
    }
    let daemon = Daemon::start(&topo.server, &[&topo.server_if], &[]).unwrap();
    Setup { topo, daemon }
}

fn dst4(port: u16) -> SocketAddr {
    SocketAddr::new(SERVER_V4.into(), port)
}
fn dst6(port: u16) -> SocketAddr {
    SocketAddr::new(SERVER_V6.into(), port)
}

/// Sends from the primary addresses once so both neighbour caches know the server.
fn warm_neighbours(s: &Setup) {
    let sink4 = Sink::start(&s.topo.server, dst4(6999)).unwrap();
    let sink6 = Sink::start(&s.topo.server, dst6(6999)).unwrap();
    send_udp(
        &s.topo.client,
        CLIENT_V4.into(),
        dst4(6999),
        3,
        3000,
        Duration::from_secs(2),
    )
    .unwrap();
    send_udp(
        &s.topo.client,
        CLIENT_V6.into(),
        dst6(6999),
        3,
        3000,
        Duration::from_secs(2),
    )
    .unwrap();
    sink4.settle(Duration::from_millis(100), Duration::from_secs(2));
    sink6.settle(Duration::from_millis(100), Duration::from_secs(2));
    assert!(
        sink4.total() > 0 && sink6.total() > 0,
        "the lab itself does not pass traffic"
    );
}

#[test]
fn blocked_v4_and_v6_sources_are_dropped_and_others_pass() {
    let s = setup(&["198.18.0.11", "2001:db8::11"]);
    warm_neighbours(&s);
    s.daemon
        .cli_ok(&["block", "add", "198.18.0.11", "2001:db8::11"])
        .unwrap();
    let before = s.daemon.counter("drop_block").unwrap();
    let sink4 = Sink::start(&s.topo.server, dst4(7001)).unwrap();
    let sink6 = Sink::start(&s.topo.server, dst6(7001)).unwrap();
    for (src, dst) in [
        (ip("198.18.0.11"), dst4(7001)),
        (CLIENT_V4.into(), dst4(7001)),
        (ip("2001:db8::11"), dst6(7001)),
        (CLIENT_V6.into(), dst6(7001)),
    ] {
        // Paced, so that the sink's socket buffer is never what drops packets.
        let sent = send_udp(&s.topo.client, src, dst, 300, 3000, Duration::from_secs(5)).unwrap();
        assert_eq!(sent.packets, 300);
    }
    sink4.settle(Duration::from_millis(200), Duration::from_secs(3));
    sink6.settle(Duration::from_millis(200), Duration::from_secs(3));
    assert_eq!(sink4.from(ip("198.18.0.11")), 0);
    assert_eq!(sink6.from(ip("2001:db8::11")), 0);
    assert_eq!(sink4.from(CLIENT_V4.into()), 300);
    assert_eq!(sink6.from(CLIENT_V6.into()), 300);
    let dropped = s.daemon.counter("drop_block").unwrap() - before;
    assert!(dropped >= 600, "drop_block grew by {dropped}");
}

#[test]
fn an_allowlisted_address_inside_a_blocked_prefix_passes() {
    let s = setup(&["198.18.0.20", "198.18.0.21"]);
    s.daemon
        .cli_ok(&["block", "add", "198.18.0.0/24", "--reason", "range"])
        .unwrap();
    s.daemon.cli_ok(&["allow", "add", "198.18.0.20"]).unwrap();
    let sink = Sink::start(&s.topo.server, dst4(7002)).unwrap();
    for src in ["198.18.0.20", "198.18.0.21"] {
        send_udp(
            &s.topo.client,
            ip(src),
            dst4(7002),
            200,
            3000,
            Duration::from_secs(5),
        )
        .unwrap();
    }
    sink.settle(Duration::from_millis(200), Duration::from_secs(3));
    assert_eq!(sink.from(ip("198.18.0.20")), 200);
    assert_eq!(sink.from(ip("198.18.0.21")), 0);
    assert!(s.daemon.counter("allowlisted").unwrap() >= 200);
}

#[test]
fn a_throttled_source_gets_through_at_the_configured_rate() {
    let s = setup(&["198.18.0.30"]);
    let (rate, burst) = (200u64, 20u64);
    s.daemon
        .cli_ok(&[
            "throttle",
            "add",
            "198.18.0.30",
            "--rate",
            &format!("{rate}/s"),
            "--burst",
            &burst.to_string(),
        ])
        .unwrap();
    let sink = Sink::start(&s.topo.server, dst4(7003)).unwrap();
    // Offer five times the rate for three seconds.
    let sent = send_udp(
        &s.topo.client,
        ip("198.18.0.30"),
        dst4(7003),
        3000,
        1000,
        Duration::from_secs(6),
    )
    .unwrap();
    sink.settle(Duration::from_millis(200), Duration::from_secs(3));
    let got = sink.from(ip("198.18.0.30")) as f64;
    // The bucket starts full: burst at once, then `rate` per second of the sending time.
    let expected = burst as f64 + rate as f64 * sent.elapsed.as_secs_f64();
    assert!(
        (got - expected).abs() <= 0.10 * expected,
        "received {got}, expected {expected:.0} +-10% ({} sent in {:?})",
        sent.packets,
        sent.elapsed
    );
    let passed = s.daemon.counter("throttle_pass").unwrap();
    let dropped = s.daemon.counter("drop_throttle").unwrap();
    assert_eq!(passed + dropped, sent.packets, "every packet judged once");
}

#[test]
fn ttl_expiry_restores_traffic() {
    let s = setup(&["198.18.0.40"]);
    s.daemon
        .cli_ok(&["block", "add", "198.18.0.40", "--ttl", "2s"])
        .unwrap();
    let sink = Sink::start(&s.topo.server, dst4(7004)).unwrap();
    send_udp(
        &s.topo.client,
        ip("198.18.0.40"),
        dst4(7004),
        50,
        3000,
        Duration::from_secs(2),
    )
    .unwrap();
    sink.settle(Duration::from_millis(200), Duration::from_secs(2));
    assert_eq!(
        sink.from(ip("198.18.0.40")),
        0,
        "blocked while the TTL runs"
    );
    std::thread::sleep(Duration::from_millis(2300));
    send_udp(
        &s.topo.client,
        ip("198.18.0.40"),
        dst4(7004),
        50,
        3000,
        Duration::from_secs(2),
    )
    .unwrap();
    sink.settle(Duration::from_millis(200), Duration::from_secs(2));
    assert_eq!(sink.from(ip("198.18.0.40")), 50, "passes after expiry");
    let list = s.daemon.cli_ok(&["block", "list", "--json"]).unwrap();
    assert!(
        !list.contains("198.18.0.40"),
        "expired entry still listed: {list}"
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
    let sink = Sink::start(&s.topo.server, dst4(7005)).unwrap();
    // A paced stream from the blocked source across the kill and the restart.
    let ns_path = s.topo.client.path();
    let stream = std::thread::spawn(move || {
        sentinel_tests::netns::enter(&ns_path).unwrap();
        sentinel_tests::traffic::send_paced(
            ip("198.18.0.50"),
            dst4(7005),
            2500,
            500,
            Duration::from_secs(8),
        )
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(800));
    s.daemon.kill(libc::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    s.daemon.start_again().unwrap();
    let sent = stream.join().unwrap();
    sink.settle(Duration::from_millis(200), Duration::from_secs(3));
    assert!(sent.packets > 2000);
    assert_eq!(
        sink.from(ip("198.18.0.50")),
        0,
        "a packet got through while the daemon was down or restarting"
    );
    let list = s.daemon.cli_ok(&["block", "list", "--json"]).unwrap();
    assert!(
        list.contains("198.18.0.50") && list.contains("persisted reason"),
        "{list}"
    );
    let st = s.daemon.status().unwrap();
    assert_eq!(st["programs"].as_array().unwrap().len(), 1, "{st}");
    assert!(
        s.daemon.log_text().contains("re-adopted"),
        "{}",
        s.daemon.log_text()
    );
    // Counters live in the pinned maps: the restarted daemon sees the drops of before.
    assert!(s.daemon.counter("drop_block").unwrap() >= sent.packets);
}

#[test]
fn sigterm_leaves_enforcement_and_unload_removes_it() {
    let mut s = setup(&["198.18.0.60"]);
    s.daemon.cli_ok(&["block", "add", "198.18.0.60"]).unwrap();
    s.daemon.kill(libc::SIGTERM).unwrap();
    let sink = Sink::start(&s.topo.server, dst4(7006)).unwrap();
    send_udp(
        &s.topo.client,
        ip("198.18.0.60"),
        dst4(7006),
        100,
        3000,
        Duration::from_secs(2),
    )
    .unwrap();
    sink.settle(Duration::from_millis(200), Duration::from_secs(2));
    assert_eq!(
        sink.from(ip("198.18.0.60")),
        0,
        "still enforced after a clean stop"
    );
    let out = std::process::Command::new(sentinel_tests::sentinel_bin())
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
    send_udp(
        &s.topo.client,
        ip("198.18.0.60"),
        dst4(7006),
        100,
        3000,
        Duration::from_secs(2),
    )
    .unwrap();
    sink.settle(Duration::from_millis(200), Duration::from_secs(2));
    assert_eq!(sink.from(ip("198.18.0.60")), 100, "passes once unloaded");
}

#[test]
fn bulk_lists_load_and_a_bad_line_loads_nothing() {
    let s = setup(&[]);
    let dir = std::env::temp_dir().join(format!("sentinel-bulk-{}", sentinel_tests::unique_id()));
    std::fs::create_dir_all(&dir).unwrap();
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
    let fills = s.daemon.status().unwrap()["maps"].clone();
    let entries = |name: &str| {
        fills
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()["entries"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(entries("SN_BLOCK_HASH"), 100_000);
    assert_eq!(entries("SN_BLOCK_LPM"), 1);

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
    let fills = s.daemon.status().unwrap()["maps"].clone();
    let after = fills
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "SN_BLOCK_HASH")
        .unwrap()["entries"]
        .as_u64()
        .unwrap();
    assert_eq!(after, 100_000, "nothing of the bad file was loaded");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_exits_2_and_an_absent_daemon_exits_1() {
    let s = setup(&[]);
    for args in [
        &["block", "add", "10.0.0.300"][..],
        &["block", "add", "198.51.100.7/24"],
        &["block", "add", "192.0.2.1", "--ttl", "soon"],
        &["throttle", "add", "192.0.2.1", "--rate", "fast"],
        &[
            "throttle",
            "add",
            "192.0.2.0/24",
            "--rate",
            "10/s",
            "--aggregate",
            "/16",
        ],
        &["block", "del", "198.51.100.99"],
        &["allow", "add"],
        &["block", "frobnicate"],
    ] {
        let out = s.daemon.cli(args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.trim().is_empty(), "{args:?} gave no message");
    }
    let out = std::process::Command::new(sentinel_tests::sentinel_bin())
        .args(["status", "--socket", "/nonexistent/sentinel.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the sentinel daemon"));
}
