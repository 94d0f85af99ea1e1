//! BPF_PROG_TEST_RUN tier: the XDP sentinel run by the kernel on crafted frames
//! (`sentinel_tests::packets`), one test per verdict path, each for IPv4 and IPv6, checking the
//! action, every reason counter and the per-source stats.
//!
//! Each test loads its own copy of the object with its own pins, so tests run in parallel and
//! start from empty maps and zero counters.

use std::time::{Duration, Instant};

use aya::programs::{TestRun, TestRunOptions};
use sentinel::{
    clock::monotonic_ns,
    control::api::{AddRequest, DelRequest, ListKind, ThrottleSpec},
    datapath::{Datapath, LoadOptions, unload},
    verdict::lists,
};
use sentinel_common::{
    HAS_ALL, HAS_FLOW_KILL, RULE_FLAG_SHADOW, Reason, RuleValue, SourceStats, ThrottleRule,
    programs,
};
use sentinel_tests::packets::{self, Ext, Frame, Packet, addr_key};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// The addresses of one family used by the tests.
struct Family {
    /// The client.
    src: &'static str,
    /// Its neighbour (outside any exact entry on `src`).
    other: &'static str,
    /// The server.
    dst: &'static str,
    /// A prefix not containing `src`, and an address inside it.
    prefix: &'static str,
    in_prefix: &'static str,
    /// An address just outside `prefix`.
    outside: &'static str,
}

const V4: Family = Family {
    src: "198.18.0.100",
    other: "198.18.0.101",
    dst: "198.18.0.1",
    prefix: "198.18.1.0/24",
    in_prefix: "198.18.1.77",
    outside: "198.18.2.1",
};
const V6: Family = Family {
    src: "2001:db8::100",
    other: "2001:db8::101",
    dst: "2001:db8::1",
    prefix: "2001:db8:0:1::/64",
    in_prefix: "2001:db8:0:1::77",
    outside: "2001:db8:0:2::1",
};
const FAMILIES: [Family; 2] = [V4, V6];

/// A frame with the headers that make parsing work harder: two VLAN tags and IPv4 options, or
/// one VLAN tag and hop-by-hop, destination options and a first-fragment header.
fn hard(p: Packet) -> Packet {
    if p.src.is_ipv4() {
        p.vlan(100).vlan(200).ipv4_options(8)
    } else {
        p.vlan(100)
            .ext(Ext::HopByHop)
            .ext(Ext::DestOpts { units: 2 })
            .ext(Ext::Fragment {
                offset: 0,
                more: true,
            })
    }
}

/// A loaded datapath with unique pins, unloaded on drop (also when a test fails, and when the
/// load itself fails after pinning maps).
struct Lab {
    dp: Datapath,
    _pins: sentinel::lab::TempPins,
}

impl Lab {
    fn new() -> Self {
        sentinel_tests::require_root();
        let pins = sentinel::lab::TempPins::new("ptr");
        let dp = Datapath::load(&LoadOptions::new(pins.path())).expect("load the XDP object");
        Self { dp, _pins: pins }
    }

    /// Runs `program` once on `frame`; returns the XDP action.
    fn run_program(&mut self, program: &str, frame: &[u8]) -> u32 {
        let prog = self.dp.xdp(program).expect("program");
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value
    }

    fn run(&mut self, frame: &[u8]) -> u32 {
        self.run_program(programs::XDP_SENTINEL, frame)
    }

    fn send(&mut self, p: &Packet) -> u32 {
        self.run(&p.build().bytes)
    }

    /// Asserts every reason counter: the listed ones have these packet counts, all others 0.
    fn expect_counts(&self, expected: &[(Reason, u64)]) {
        let got = self.dp.maps.counters().expect("counters");
        let want: Vec<(&str, u64)> = Reason::ALL
            .iter()
            .map(|r| {
                let n = expected
                    .iter()
                    .filter(|(e, _)| e == r)
                    .map(|(_, n)| *n)
                    .sum();
                (r.label(), n)
            })
            .collect();
        let have: Vec<(&str, u64)> = Reason::ALL
            .iter()
            .map(|r| (r.label(), got[*r as usize].packets))
            .collect();
        assert_eq!(have, want, "reason counters");
    }

    fn counter_bytes(&self, r: Reason) -> u64 {
        self.dp.maps.counters().expect("counters")[r as usize].bytes
    }

    fn add(&mut self, kind: ListKind, targets: &[&str], req: AddRequest) {
        let req = AddRequest {
            targets: targets.iter().map(|s| s.to_string()).collect(),
            ..req
        };
        lists::add(&mut self.dp.maps, kind, &req).expect("add");
    }

    fn remove(&mut self, kind: ListKind, targets: &[&str]) {
        let req = DelRequest {
            targets: targets.iter().map(|s| s.to_string()).collect(),
        };
        lists::remove(&mut self.dp.maps, kind, &req).expect("remove");
    }

    fn block(&mut self, targets: &[&str]) {
        self.add(ListKind::Block, targets, AddRequest::default());
    }

    fn allow(&mut self, targets: &[&str]) {
        self.add(ListKind::Allow, targets, AddRequest::default());
    }

    fn throttle(&mut self, targets: &[&str], rate_pps: u64, burst: u64, aggregate: Option<u8>) {
        let throttle = Some(ThrottleSpec {
            rate_pps,
            burst,
            aggregate,
        });
        self.add(
            ListKind::Throttle,
            targets,
            AddRequest {
                throttle,
                ..Default::default()
            },
        );
    }

    /// Puts the flow of `p` on the flow-kill list directly (no userspace API writes it yet).
    fn kill_flow(&mut self, p: &Packet, expires_ns: u64, flags: u32) {
        let v = RuleValue {
            expires_ns,
            reason_id: 0,
            flags,
        };
        self.dp.maps.mark_present(HAS_FLOW_KILL).unwrap();
        self.dp.maps.flow_kill.insert(p.flow_key(), v, 0).unwrap();
    }

    fn set_global_shadow(&mut self, on: bool) {
        self.dp.maps.set_shadow(on).unwrap();
    }

    /// Per-source stats of `ip` (summed over CPUs); zero when never seen.
    fn source(&self, ip: &str) -> SourceStats {
        let key = addr_key(ip.parse().unwrap());
        self.dp
            .maps
            .sources()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, s)| s)
            .unwrap_or_default()
    }

    /// Asserts packets, bytes and drops of a source.
    fn expect_source(&self, ip: &str, frames: &[&Frame], dropped: u64) {
        let s = self.source(ip);
        let bytes: u64 = frames.iter().map(|f| f.len()).sum();
        assert_eq!(
            (s.packets, s.bytes, s.dropped),
            (frames.len() as u64, bytes, dropped),
            "stats of {ip}"
        );
    }
}

#[test]
fn unlisted_sources_pass_and_are_counted_per_source() {
    let mut lab = Lab::new();
    let mut total_bytes = 0;
    for f in &FAMILIES {
        let frames: Vec<Frame> = [
            Packet::udp(f.src, f.dst),
            Packet::tcp(f.src, f.dst).vlan(7),
            hard(Packet::tcp(f.src, f.dst)),
            hard(Packet::udp(f.src, f.dst)).payload(900),
            // A protocol without ports.
            Packet::udp(f.src, f.dst).proto(packets::ICMPV6),
        ]
        .iter()
        .map(Packet::build)
        .collect();
        for fr in &frames {
            assert_eq!(lab.run(&fr.bytes), XDP_PASS);
        }
        let refs: Vec<&Frame> = frames.iter().collect();
        lab.expect_source(f.src, &refs, 0);
        let s = lab.source(f.src);
        assert!(s.last_seen_ns > 0 && s.last_seen_ns <= monotonic_ns());
        total_bytes += frames.iter().map(Frame::len).sum::<u64>();
    }
    lab.expect_counts(&[(Reason::Pass, 10)]);
    assert_eq!(lab.counter_bytes(Reason::Pass), total_bytes);
}

#[test]
fn later_fragments_are_judged_on_addresses() {
    let mut lab = Lab::new();
    for f in &FAMILIES {
        lab.block(&[f.src]);
        let v4_frag = Packet::udp(f.src, f.dst).ipv4_fragment(185);
        let v6_frag = Packet::udp(f.src, f.dst).ext(Ext::Fragment {
            offset: 185,
            more: false,
        });
        let frag = if f.src.contains(':') {
            v6_frag
        } else {
            v4_frag
        };
        assert_eq!(lab.send(&frag), XDP_DROP);
        let other = Packet {
            src: f.other.parse().unwrap(),
            ..frag
        };
        assert_eq!(lab.send(&other), XDP_PASS);
    }
    // A later fragment has no ports, but nothing about it is truncated.
    lab.expect_counts(&[(Reason::DropBlock, 2), (Reason::Pass, 2)]);
}

#[test]
fn blocked_addresses_and_prefixes_drop_v4_and_v6() {
    let mut lab = Lab::new();
    for f in &FAMILIES {
        let resp = lists::add(
            &mut lab.dp.maps,
            ListKind::Block,
            &AddRequest {
                targets: vec![f.src.into(), f.prefix.into()],
                reason: Some("test".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((resp.added, resp.exact, resp.prefixes), (2, 1, 1));

        let exact = [
            Packet::udp(f.src, f.dst).build(),
            hard(Packet::tcp(f.src, f.dst)).build(),
        ];
        for fr in &exact {
            assert_eq!(lab.run(&fr.bytes), XDP_DROP, "exact entry");
        }
        // A source the blocklist drops on its first packet gets no per-source entry: its
        // drops are counted under `drop_block` only (see `decide`).
        lab.expect_source(f.src, &[], 0);
        assert_eq!(
            lab.send(&Packet::udp(f.in_prefix, f.dst)),
            XDP_DROP,
            "inside {}",
            f.prefix
        );
        assert_eq!(
            lab.send(&hard(Packet::tcp(f.in_prefix, f.dst))),
            XDP_DROP,
            "inside {}",
            f.prefix
        );
        assert_eq!(lab.send(&Packet::udp(f.other, f.dst)), XDP_PASS);
        assert_eq!(lab.send(&Packet::udp(f.outside, f.dst)), XDP_PASS);
        assert_eq!(lab.source(f.other).dropped, 0);
        assert_eq!(lab.source(f.in_prefix).packets, 0);
    }
    lab.expect_counts(&[(Reason::DropBlock, 8), (Reason::Pass, 4)]);

    // Removing the entries through the list API lets the sources through again.
    for f in &FAMILIES {
        let del = DelRequest {
            targets: vec![f.src.into(), f.prefix.into()],
        };
        let resp = lists::remove(&mut lab.dp.maps, ListKind::Block, &del).unwrap();
        assert_eq!(resp.removed, 2);
        assert_eq!(lab.send(&Packet::udp(f.src, f.dst)), XDP_PASS);
        assert_eq!(lab.send(&Packet::udp(f.in_prefix, f.dst)), XDP_PASS);
    }
    lab.expect_counts(&[(Reason::DropBlock, 8), (Reason::Pass, 8)]);
    // Emptied lists are skipped by the kernel; a new entry applies from its first packet on.
    for f in &FAMILIES {
        lab.block(&[f.prefix]);
        assert_eq!(lab.send(&Packet::udp(f.in_prefix, f.dst)), XDP_DROP);
        lab.block(&[f.src]);
        assert_eq!(lab.send(&Packet::udp(f.src, f.dst)), XDP_DROP);
    }
    lab.expect_counts(&[(Reason::DropBlock, 12), (Reason::Pass, 8)]);
}

#[test]
fn the_allowlist_wins_over_blocks_flow_kills_and_throttles() {
    let mut lab = Lab::new();
    // An allowlisted address inside a blocked prefix, and an allowlisted prefix around a
    // blocked address.
    lab.block(&[
        "198.18.0.0/24",
        "2001:db8::/64",
        "198.18.5.3",
        "2001:db8:5::3",
    ]);
    lab.allow(&[V4.src, V6.src, "198.18.5.0/28", "2001:db8:5::/120"]);
    for f in &FAMILIES {
        let flow = Packet::tcp(f.src, f.dst);
        lab.kill_flow(&flow, 0, 0);
        lab.throttle(&[f.src], 1, 1, None);
        for _ in 0..3 {
            assert_eq!(lab.send(&Packet::udp(f.src, f.dst)), XDP_PASS);
        }
        assert_eq!(
            lab.send(&flow),
            XDP_PASS,
            "killed flow of an allowed source"
        );
        assert_eq!(lab.send(&hard(flow.clone())), XDP_PASS);
        assert_eq!(
            lab.send(&Packet::udp(f.other, f.dst)),
            XDP_DROP,
            "rest of the prefix"
        );
        assert_eq!(lab.source(f.src).dropped, 0);
    }
    for ip in ["198.18.5.3", "2001:db8:5::3"] {
        let dst = if ip.contains(':') { V6.dst } else { V4.dst };
        assert_eq!(lab.send(&Packet::udp(ip, dst)), XDP_PASS);
    }
    lab.expect_counts(&[(Reason::Allowlisted, 12), (Reason::DropBlock, 2)]);
    // An add the allowlist makes void says so (the CLI prints it as a note).
    let req = AddRequest {
        targets: vec![V4.src.into(), V4.other.into(), "198.18.5.0/30".into()],
        ..AddRequest::default()
    };
    let resp = lists::add(&mut lab.dp.maps, ListKind::Block, &req).expect("add");
    assert_eq!(resp.allowlisted, [V4.src, "198.18.5.0/30"]);
    // None of the three was blocked before; adding them again replaces all three.
    assert_eq!(resp.replaced, 0);
    let resp = lists::add(&mut lab.dp.maps, ListKind::Block, &req).expect("add");
    assert_eq!(resp.replaced, 3);
}

#[test]
fn killed_flows_drop_only_their_five_tuple() {
    let mut lab = Lab::new();
    for f in &FAMILIES {
        let flow = Packet::tcp(f.src, f.dst).ports(40000, 443);
        lab.kill_flow(&flow, 0, 0);
        assert_eq!(lab.send(&flow), XDP_DROP);
        assert_eq!(
            lab.send(&hard(flow.clone())),
            XDP_DROP,
            "found past VLAN tags and extension headers"
        );
        // Only the ports of its TCP header there (a tiny first fragment): still the flow.
        let tiny = flow.clone().payload(0).build();
        assert_eq!(
            lab.run(&tiny.cut(tiny.l4 + 8)),
            XDP_DROP,
            "header cut after 8 bytes"
        );
        for (what, p) in [
            ("UDP is another flow", flow.clone().proto(packets::UDP)),
            ("another source port", flow.clone().ports(40001, 443)),
            ("another destination port", flow.clone().ports(40000, 444)),
            (
                "the reverse direction",
                Packet::tcp(f.dst, f.src).ports(443, 40000),
            ),
            (
                "another source",
                Packet::tcp(f.other, f.dst).ports(40000, 443),
            ),
        ] {
            assert_eq!(lab.send(&p), XDP_PASS, "{what}");
        }
        // A killed UDP flow too.
        let udp = Packet::udp(f.src, f.dst).ports(5353, 53);
        lab.kill_flow(&udp, 0, 0);
        assert_eq!(lab.send(&udp), XDP_DROP);
        assert_eq!(lab.source(f.src).dropped, 4);
    }
    lab.expect_counts(&[
        (Reason::DropFlowKill, 8),
        (Reason::Pass, 10),
        (Reason::TruncatedL4, 2),
    ]);
}

#[test]
fn a_throttle_passes_its_burst_then_drops_each_source_on_its_own() {
    let mut lab = Lab::new();
    // Rate so low that no token comes back during the test.
    for f in &FAMILIES {
        lab.throttle(&[f.src], 1, 3, None);
        lab.throttle(&[f.prefix], 1, 2, None);
        let src: Vec<u32> = (0..5)
            .map(|_| lab.send(&Packet::udp(f.src, f.dst)))
            .collect();
        assert_eq!(src, [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP]);
        assert_eq!(lab.source(f.src).dropped, 2);
        // Two sources of a per-source prefix throttle each have their own bucket.
        let in_prefix_2 = f.in_prefix.replace("77", "78");
        for ip in [f.in_prefix, in_prefix_2.as_str()] {
            let got: Vec<u32> = (0..3)
                .map(|_| lab.send(&hard(Packet::udp(ip, f.dst))))
                .collect();
            assert_eq!(got, [XDP_PASS, XDP_PASS, XDP_DROP], "{ip}");
        }
        assert_eq!(
            lab.send(&Packet::udp(f.other, f.dst)),
            XDP_PASS,
            "unthrottled"
        );
    }
    lab.expect_counts(&[
        (Reason::ThrottlePass, 2 * (3 + 2 + 2)),
        (Reason::DropThrottle, 2 * (2 + 1 + 1)),
        (Reason::Pass, 2),
    ]);
}

#[test]
fn an_aggregate_throttle_shares_one_bucket_per_prefix() {
    let mut lab = Lab::new();
    // v4: /24 buckets inside a throttled /16; v6: /64 buckets inside a throttled /48.
    lab.throttle(&["198.18.0.0/16"], 1, 3, Some(24));
    lab.throttle(&["2001:db8::/48"], 1, 3, Some(64));
    for (a, b, other_bucket, dst) in [
        ("198.18.7.1", "198.18.7.200", "198.18.8.1", V4.dst),
        ("2001:db8::a", "2001:db8::ffff:b", "2001:db8:0:1::a", V6.dst),
    ] {
        let got: Vec<u32> = [a, b, a, b, a]
            .iter()
            .map(|ip| lab.send(&Packet::udp(ip, dst)))
            .collect();
        assert_eq!(got, [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP]);
        assert_eq!(lab.source(a).dropped, 1);
        assert_eq!(lab.source(b).dropped, 1);
        assert_eq!(lab.send(&Packet::udp(other_bucket, dst)), XDP_PASS);
    }
    lab.expect_counts(&[(Reason::ThrottlePass, 2 * 4), (Reason::DropThrottle, 2 * 2)]);
}

#[test]
fn a_throttle_refills_at_its_rate() {
    let mut lab = Lab::new();
    // 2 packets/s, burst 1: a token comes back every 500 ms.
    for f in &FAMILIES {
        lab.throttle(&[f.src], 2, 1, None);
    }
    let t = Instant::now();
    let first: Vec<u32> = FAMILIES
        .iter()
        .flat_map(|f| [Packet::udp(f.src, f.dst), Packet::udp(f.src, f.dst)])
        .map(|p| lab.send(&p))
        .collect();
    // Only meaningful if the machine did not stall for a token's time between the two.
    if t.elapsed() < Duration::from_millis(400) {
        assert_eq!(first, [XDP_PASS, XDP_DROP, XDP_PASS, XDP_DROP]);
    }
    std::thread::sleep(Duration::from_millis(700));
    for f in &FAMILIES {
        assert_eq!(lab.send(&Packet::udp(f.src, f.dst)), XDP_PASS, "refilled");
    }
}

#[test]
fn shadow_entries_count_would_drops_and_pass() {
    let mut lab = Lab::new();
    let shadow = || AddRequest {
        shadow: true,
        ..Default::default()
    };
    for f in &FAMILIES {
        lab.add(ListKind::Block, &[f.src, f.prefix], shadow());
        lab.add(
            ListKind::Throttle,
            &[f.other],
            AddRequest {
                throttle: Some(ThrottleSpec {
                    rate_pps: 1,
                    burst: 1,
                    aggregate: None,
                }),
                ..shadow()
            },
        );
        let flow = Packet::tcp(f.outside, f.dst);
        lab.kill_flow(&flow, 0, RULE_FLAG_SHADOW);
        assert_eq!(lab.send(&Packet::udp(f.src, f.dst)), XDP_PASS);
        assert_eq!(lab.send(&Packet::udp(f.in_prefix, f.dst)), XDP_PASS);
        assert_eq!(
            lab.send(&Packet::udp(f.other, f.dst)),
            XDP_PASS,
            "within the burst"
        );
        assert_eq!(
            lab.send(&Packet::udp(f.other, f.dst)),
            XDP_PASS,
            "over the rate"
        );
        assert_eq!(lab.send(&flow), XDP_PASS);
        for ip in [f.src, f.in_prefix, f.other, f.outside] {
            assert_eq!(lab.source(ip).dropped, 0, "{ip}");
        }
    }
    let listed = lists::list(&lab.dp.maps, ListKind::Block).unwrap();
    assert!(listed.iter().all(|e| e.shadow), "{listed:?}");
    lab.expect_counts(&[
        (Reason::ShadowBlock, 4),
        (Reason::ThrottlePass, 2),
        (Reason::ShadowThrottle, 2),
        (Reason::ShadowFlowKill, 2),
    ]);
}

#[test]
fn global_shadow_counts_would_drops_and_passes_until_turned_off() {
    let mut lab = Lab::new();
    for f in &FAMILIES {
        lab.block(&[f.src]);
        lab.throttle(&[f.other], 1, 1, None);
        lab.kill_flow(&Packet::tcp(f.outside, f.dst), 0, 0);
    }
    lab.set_global_shadow(true);
    for f in &FAMILIES {
        assert_eq!(lab.send(&Packet::udp(f.src, f.dst)), XDP_PASS);
        assert_eq!(lab.send(&Packet::udp(f.other, f.dst)), XDP_PASS);
        assert_eq!(lab.send(&Packet::udp(f.other, f.dst)), XDP_PASS);
        assert_eq!(lab.send(&Packet::tcp(f.outside, f.dst)), XDP_PASS);
        assert_eq!(lab.source(f.src).dropped, 0);
    }
    lab.expect_counts(&[
        (Reason::ShadowBlock, 2),
        (Reason::ThrottlePass, 2),
        (Reason::ShadowThrottle, 2),
        (Reason::ShadowFlowKill, 2),
    ]);
    lab.set_global_shadow(false);
    for f in &FAMILIES {
        assert_eq!(lab.send(&Packet::udp(f.src, f.dst)), XDP_DROP);
        assert_eq!(lab.send(&Packet::udp(f.other, f.dst)), XDP_DROP);
        assert_eq!(lab.send(&Packet::tcp(f.outside, f.dst)), XDP_DROP);
    }
    lab.expect_counts(&[
        (Reason::ShadowBlock, 2),
        (Reason::ThrottlePass, 2),
        (Reason::ShadowThrottle, 2),
        (Reason::ShadowFlowKill, 2),
        (Reason::DropBlock, 2),
        (Reason::DropThrottle, 2),
        (Reason::DropFlowKill, 2),
    ]);
}

fn rule(expires_ns: u64) -> RuleValue {
    RuleValue {
        expires_ns,
        reason_id: 0,
        flags: 0,
    }
}

fn throttle_rule(expires_ns: u64) -> ThrottleRule {
    ThrottleRule {
        rate_pps: 1,
        burst: 1,
        expires_ns,
        aggregate_prefix: 128,
        ..Default::default()
    }
}

#[test]
fn expired_entries_stop_applying_without_userspace() {
    use aya::maps::lpm_trie::Key;
    let mut lab = Lab::new();
    // Well in the past: the kernel may judge expiry with a clock that lags by a tick.
    let past = monotonic_ns() - 1_000_000_000;
    let m = &mut lab.dp.maps;
    // Written behind the list API's back: tell the kernel the maps hold entries.
    m.mark_present(HAS_ALL).unwrap();
    for f in &FAMILIES {
        let src = addr_key(f.src.parse().unwrap());
        let in_prefix = addr_key(f.in_prefix.parse().unwrap());
        let other = addr_key(f.other.parse().unwrap());
        let outside = addr_key(f.outside.parse().unwrap());
        // Expired block (exact and prefix), throttle (exact and prefix) and flow kill.
        m.block_hash.insert(src, rule(past), 0).unwrap();
        m.block_lpm
            .insert(&Key::new(128, in_prefix), rule(past), 0)
            .unwrap();
        m.throttle_hash
            .insert(other, throttle_rule(past), 0)
            .unwrap();
        m.throttle_lpm
            .insert(&Key::new(120, outside), throttle_rule(past), 0)
            .unwrap();
    }
    for f in &FAMILIES {
        lab.kill_flow(&Packet::tcp(f.src, f.dst), past, 0);
    }
    for f in &FAMILIES {
        for ip in [f.src, f.in_prefix, f.other, f.other, f.outside, f.outside] {
            assert_eq!(lab.send(&Packet::udp(ip, f.dst)), XDP_PASS, "{ip}");
        }
        assert_eq!(lab.send(&Packet::tcp(f.src, f.dst)), XDP_PASS);
    }
    lab.expect_counts(&[(Reason::Pass, 14)]);

    // Expired allow entries (exact and prefix) no longer shield a blocked source.
    let m = &mut lab.dp.maps;
    // Written behind the list API's back: tell the kernel the maps hold entries.
    m.mark_present(HAS_ALL).unwrap();
    for f in &FAMILIES {
        let src = addr_key(f.src.parse().unwrap());
        let in_prefix = addr_key(f.in_prefix.parse().unwrap());
        m.allow_hash.insert(src, rule(past), 0).unwrap();
        m.allow_lpm
            .insert(&Key::new(128, in_prefix), rule(past), 0)
            .unwrap();
        m.block_hash.insert(src, rule(0), 0).unwrap();
        m.block_hash.insert(in_prefix, rule(0), 0).unwrap();
    }
    for f in &FAMILIES {
        assert_eq!(lab.send(&Packet::udp(f.src, f.dst)), XDP_DROP);
        assert_eq!(lab.send(&Packet::udp(f.in_prefix, f.dst)), XDP_DROP);
    }
    lab.expect_counts(&[(Reason::Pass, 14), (Reason::DropBlock, 4)]);

    // The sweep reclaims exactly the expired entries: per family one block prefix (the exact
    // ones were replaced by live entries), two throttles, one flow and two allows.
    assert_eq!(lists::sweep_expired(&mut lab.dp.maps).unwrap(), 2 * 6);
}

#[test]
fn a_ttl_from_the_list_api_expires_in_the_kernel() {
    let mut lab = Lab::new();
    let ttl = |ms| AddRequest {
        ttl_ms: Some(ms),
        ..Default::default()
    };
    for f in &FAMILIES {
        lab.add(ListKind::Block, &[f.src, f.prefix], ttl(1000));
        lab.add(ListKind::Block, &[f.other], ttl(60_000));
    }
    for f in &FAMILIES {
        for ip in [f.src, f.in_prefix, f.other] {
            assert_eq!(lab.send(&Packet::udp(ip, f.dst)), XDP_DROP, "{ip}");
        }
    }
    std::thread::sleep(Duration::from_millis(1200));
    for f in &FAMILIES {
        assert_eq!(lab.send(&Packet::udp(f.src, f.dst)), XDP_PASS);
        assert_eq!(lab.send(&Packet::udp(f.in_prefix, f.dst)), XDP_PASS);
        assert_eq!(
            lab.send(&Packet::udp(f.other, f.dst)),
            XDP_DROP,
            "still live"
        );
    }
    let listed: Vec<String> = lists::list(&lab.dp.maps, ListKind::Block)
        .unwrap()
        .into_iter()
        .map(|e| e.target)
        .collect();
    assert_eq!(
        listed,
        [V4.other, V6.other],
        "expired entries are not listed"
    );
    assert_eq!(lists::sweep_expired(&mut lab.dp.maps).unwrap(), 4);
    lab.expect_counts(&[(Reason::DropBlock, 8), (Reason::Pass, 4)]);
}

#[test]
fn an_expired_prefix_does_not_hide_a_live_shorter_one() {
    let mut lab = Lab::new();
    let ttl = AddRequest {
        ttl_ms: Some(200),
        ..Default::default()
    };
    // For every list that uses prefixes, a permanent short prefix with short-lived longer ones
    // inside (for the blocklist two levels: /24 and /28 in a /17, /64 and /96 in a /48).
    let (v4_in, v6_in) = ("198.18.9.7", "2001:db8:0:9::7");
    lab.block(&["198.18.0.0/17", "2001:db8::/48"]);
    lab.add(
        ListKind::Block,
        &[
            "198.18.9.0/24",
            "198.18.9.0/28",
            "2001:db8:0:9::/64",
            "2001:db8:0:9::/96",
        ],
        ttl.clone(),
    );
    lab.allow(&["198.19.0.0/16", "2001:db8:1::/48"]);
    lab.add(
        ListKind::Allow,
        &["198.19.9.0/24", "2001:db8:1:9::/64"],
        ttl.clone(),
    );
    lab.block(&["198.19.9.7", "2001:db8:1:9::7"]);
    lab.throttle(&["198.18.128.0/17", "2001:db8:2::/48"], 1, 1, None);
    lab.add(
        ListKind::Throttle,
        &["198.18.200.0/24", "2001:db8:2:9::/64"],
        AddRequest {
            throttle: Some(ThrottleSpec {
                rate_pps: 1000,
                burst: 1000,
                aggregate: None,
            }),
            ..ttl
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    for (ip, dst) in [(v4_in, V4.dst), (v6_in, V6.dst)] {
        assert_eq!(
            lab.send(&Packet::udp(ip, dst)),
            XDP_DROP,
            "{ip}: the /17 still blocks"
        );
    }
    for (ip, dst) in [("198.19.9.7", V4.dst), ("2001:db8:1:9::7", V6.dst)] {
        assert_eq!(
            lab.send(&Packet::udp(ip, dst)),
            XDP_PASS,
            "{ip}: the /16 still allows"
        );
    }
    for (ip, dst) in [("198.18.200.7", V4.dst), ("2001:db8:2:9::7", V6.dst)] {
        let got = [
            lab.send(&Packet::udp(ip, dst)),
            lab.send(&Packet::udp(ip, dst)),
        ];
        assert_eq!(
            got,
            [XDP_PASS, XDP_DROP],
            "{ip}: the long-lived throttle applies"
        );
    }
    lab.expect_counts(&[
        (Reason::DropBlock, 2),
        (Reason::Allowlisted, 2),
        (Reason::ThrottlePass, 2),
        (Reason::DropThrottle, 2),
    ]);
}

#[test]
fn non_ip_frames_pass_and_are_counted() {
    let mut lab = Lab::new();
    for f in [
        packets::arp(&[]),
        packets::arp(&[5]),
        packets::ethertype(0x88cc, 46),
    ] {
        assert_eq!(lab.run(&f), XDP_PASS);
    }
    lab.expect_counts(&[(Reason::NonIp, 3)]);
    assert!(
        lab.dp.maps.sources().unwrap().is_empty(),
        "no source accounted"
    );
}

#[test]
fn malformed_headers_pass_and_are_counted_even_from_blocked_sources() {
    let mut lab = Lab::new();
    lab.block(&[V4.src, V6.src]);
    let v4 = Packet::udp(V4.src, V4.dst).build();
    let v6 = Packet::udp(V6.src, V6.dst).build();
    let tagged = Packet::udp(V4.src, V4.dst).vlan(9).build();
    let mut bad_version = v4.bytes.clone();
    bad_version[v4.l3] = 0x65;
    let mut bad_ihl = v4.bytes.clone();
    bad_ihl[v4.l3] = 0x44;
    let mut v6_bad_version = v6.bytes.clone();
    v6_bad_version[v6.l3] = 0x40;
    // (The kernel refuses test frames shorter than an Ethernet header.)
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("Ethernet header only", v4.cut(14)),
        ("VLAN tag cut short", tagged.cut(16)),
        ("IPv4 header cut short", v4.cut(v4.l3 + 10)),
        ("IPv4 without its addresses", v4.cut(v4.l3 + 16)),
        ("IPv4 version 6", bad_version),
        ("IPv4 IHL below 5", bad_ihl),
        ("IPv6 header cut short", v6.cut(v6.l3 + 30)),
        ("IPv6 version 4", v6_bad_version),
    ];
    for (what, frame) in &cases {
        assert_eq!(lab.run(frame), XDP_PASS, "{what}");
    }
    lab.expect_counts(&[(Reason::Malformed, cases.len() as u64)]);
}

#[test]
fn an_extension_chain_the_parser_cannot_follow_still_meets_the_lists() {
    // Once its addresses are read, an IPv6 packet is judged on them whatever its extension
    // headers: a routing header of 464 bytes with no segments left (Linux skips it and answers
    // the SYN) carried a blocked source's whole session past every list as "malformed".
    let mut lab = Lab::new();
    lab.block(&[V6.src]);
    let ext = Packet::udp(V6.src, V6.dst).ext(Ext::HopByHop).build();
    // A hop-by-hop header claiming 2 KiB: past the parser's bound.
    let mut huge_ext = ext.bytes.clone();
    huge_ext[ext.l3 + 40 + 1] = 255;
    let long_routing = hard(Packet::tcp(V6.src, V6.dst))
        .ext(Ext::DestOpts { units: 58 })
        .build();
    let mut seven = Packet::tcp(V6.src, V6.dst);
    for _ in 0..7 {
        seven = seven.ext(Ext::DestOpts { units: 1 });
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an extension header cut short", ext.cut(ext.l3 + 41)),
        ("a chain claiming 2 KiB", huge_ext),
        ("a 464-byte options header before TCP", long_routing.bytes),
        ("seven options headers before TCP", seven.build().bytes),
    ];
    for (what, frame) in &cases {
        assert_eq!(lab.run(frame), XDP_DROP, "{what}");
    }
    lab.expect_counts(&[(Reason::DropBlock, 4), (Reason::TruncatedL4, 4)]);
}

#[test]
fn truncated_transport_headers_are_counted_and_judged_on_addresses() {
    let mut lab = Lab::new();
    for f in &FAMILIES {
        lab.block(&[f.src]);
        for (src, want) in [(f.src, XDP_DROP), (f.other, XDP_PASS)] {
            let tcp = hard(Packet::tcp(src, f.dst)).build();
            let udp = Packet::udp(src, f.dst).build();
            for (what, frame) in [
                ("TCP cut inside its header", tcp.cut(tcp.l4 + 10)),
                ("TCP with no header at all", tcp.cut(tcp.l4)),
                ("UDP cut inside its header", udp.cut(udp.l4 + 4)),
            ] {
                assert_eq!(lab.run(&frame), want, "{what} from {src}");
            }
        }
        assert_eq!(
            lab.source(f.src).packets,
            0,
            "blocked: counted under drop_block only"
        );
    }
    lab.expect_counts(&[
        (Reason::DropBlock, 6),
        (Reason::Pass, 6),
        (Reason::TruncatedL4, 12),
    ]);
}

#[test]
fn the_bare_floor_programs_drop_and_pass_everything() {
    let mut lab = Lab::new();
    for f in &FAMILIES {
        let frame = Packet::udp(f.src, f.dst).build().bytes;
        assert_eq!(lab.run_program(programs::XDP_DROP, &frame), XDP_DROP);
        assert_eq!(lab.run_program(programs::XDP_PASS, &frame), XDP_PASS);
    }
    lab.expect_counts(&[]);
}

#[test]
fn the_object_contains_every_map_name() {
    let object = sentinel::datapath::loader::object().expect("built with the eBPF object");
    for name in sentinel_common::names::ALL
        .iter()
        .chain(sentinel_common::capture::names::ALL)
    {
        assert!(
            object.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name} not found in the eBPF object"
        );
    }
}

#[test]
fn cached_verdicts_follow_every_list_change() {
    // The kernel caches each source's list verdict in its per-source entry; every write through
    // the list API must reach sources it has already judged.
    let mut lab = Lab::new();
    for f in &FAMILIES {
        let p = Packet::udp(f.src, f.dst);
        assert_eq!(lab.send(&p), XDP_PASS, "unlisted");
        lab.block(&[f.src]);
        assert_eq!(lab.send(&p), XDP_DROP, "blocked after being judged");
        // A source tracked before its block keeps being counted in its entry.
        assert_eq!(lab.source(f.src).dropped, 1);
        lab.allow(&[f.src]);
        assert_eq!(lab.send(&p), XDP_PASS, "allowed over the block");
        lab.remove(ListKind::Allow, &[f.src]);
        assert_eq!(lab.send(&p), XDP_DROP, "allow removed");
        lab.remove(ListKind::Block, &[f.src]);
        assert_eq!(lab.send(&p), XDP_PASS, "block removed");
        lab.throttle(&[f.src], 1, 1, None);
        assert_eq!(lab.send(&p), XDP_PASS, "the bucket's one token");
        assert_eq!(lab.send(&p), XDP_DROP, "over the rate");
        lab.remove(ListKind::Throttle, &[f.src]);
        assert_eq!(lab.send(&p), XDP_PASS, "throttle removed");
        let q = Packet::udp(f.in_prefix, f.dst);
        assert_eq!(lab.send(&q), XDP_PASS, "unlisted");
        lab.block(&[f.prefix]);
        assert_eq!(lab.send(&q), XDP_DROP, "prefix blocked after being judged");
    }
    lab.expect_counts(&[
        (Reason::Pass, 8),
        (Reason::DropBlock, 6),
        (Reason::Allowlisted, 2),
        (Reason::ThrottlePass, 2),
        (Reason::DropThrottle, 2),
    ]);
}

#[test]
fn untracked_blocked_sources_follow_list_changes_and_shadow() {
    // A source blocked from its first packet gets no per-source entry and is judged from its
    // per-CPU `SN_BLOCKED` slot afterwards: list writes and the global shadow flag must reach it.
    let mut lab = Lab::new();
    for f in &FAMILIES {
        let p = Packet::udp(f.src, f.dst);
        lab.block(&[f.src]);
        assert_eq!(lab.send(&p), XDP_DROP, "first packet");
        assert_eq!(lab.send(&p), XDP_DROP, "from the slot");
        assert_eq!(lab.source(f.src).packets, 0, "untracked");
        lab.set_global_shadow(true);
        assert_eq!(lab.send(&p), XDP_PASS, "global shadow");
        lab.set_global_shadow(false);
        assert_eq!(lab.send(&p), XDP_DROP, "shadow off");
        lab.allow(&[f.src]);
        assert_eq!(lab.send(&p), XDP_PASS, "allowed over the block");
        lab.remove(ListKind::Allow, &[f.src]);
        assert_eq!(lab.send(&p), XDP_DROP, "allow removed");
        lab.remove(ListKind::Block, &[f.src]);
        assert_eq!(lab.send(&p), XDP_PASS, "block removed");
    }
    lab.expect_counts(&[
        (Reason::DropBlock, 8),
        (Reason::ShadowBlock, 2),
        (Reason::Allowlisted, 2),
        (Reason::Pass, 2),
    ]);
}

#[test]
fn untracked_blocked_sources_are_tracked_for_any_verdict_but_the_blocks_drop() {
    // Only the block's drop keeps a source out of `SN_SOURCES`; a packet its `SN_BLOCKED` slot
    // judges otherwise (a flow kill, checked before the block; shadow mode) is counted in a
    // per-source entry, as it would be without the slot.
    let mut lab = Lab::new();
    for f in &FAMILIES {
        // Kill flows first: marking the flow-kill map present invalidates cached verdicts.
        let shadow_kill = Packet::tcp(f.src, f.dst).ports(40000, 443);
        let kill = Packet::tcp(f.other, f.dst).ports(40000, 443);
        lab.kill_flow(&shadow_kill, 0, RULE_FLAG_SHADOW);
        lab.kill_flow(&kill, 0, 0);
        lab.block(&[f.src, f.other, f.in_prefix]);
        for ip in [f.src, f.other, f.in_prefix] {
            let p = Packet::udp(ip, f.dst);
            assert_eq!(lab.send(&p), XDP_DROP, "first packet");
            assert_eq!(lab.send(&p), XDP_DROP, "from the slot");
            assert_eq!(lab.source(ip).packets, 0, "untracked");
        }
        let shadow_frame = shadow_kill.build();
        assert_eq!(lab.run(&shadow_frame.bytes), XDP_PASS, "shadow flow kill");
        lab.expect_source(f.src, &[&shadow_frame], 0);
        let kill_frame = kill.build();
        assert_eq!(lab.run(&kill_frame.bytes), XDP_DROP, "flow kill");
        lab.expect_source(f.other, &[&kill_frame], 1);
        lab.set_global_shadow(true);
        let p = Packet::udp(f.in_prefix, f.dst).build();
        assert_eq!(lab.run(&p.bytes), XDP_PASS, "global shadow");
        lab.expect_source(f.in_prefix, &[&p], 0);
        lab.set_global_shadow(false);
    }
    lab.expect_counts(&[
        (Reason::DropBlock, 12),
        (Reason::ShadowFlowKill, 2),
        (Reason::DropFlowKill, 2),
        (Reason::ShadowBlock, 2),
    ]);
}

#[test]
fn pins_of_another_layout_are_migrated_or_refused() {
    use aya::maps::MapInfo;
    use sentinel::datapath::{DatapathError, loader::ensure_pin_dir};
    use sentinel_common::names;

    sentinel_tests::require_root();
    let guard = sentinel::lab::TempPins::new("ptr");
    let pins = guard.path().to_path_buf();
    let create = |name: &str, kind: &str, key: &str, value: &str| {
        ensure_pin_dir(&pins).unwrap();
        let path = pins.join(name);
        let st = std::process::Command::new("bpftool")
            .args(["map", "create"])
            .arg(&path)
            .args(["type", kind, "key", key, "value", value, "entries", "64"])
            .args(["name", name])
            .status()
            .expect("bpftool (cargo xtask setup installs it)");
        assert!(st.success(), "bpftool map create {name}");
    };

    // Per-source stats before the verdict cache: 32-byte values. Replaced.
    create(names::SOURCES, "lru_percpu_hash", "16", "32");
    let dp = Datapath::load(&LoadOptions::new(&pins)).expect("an old SN_SOURCES is migrated");
    let info = MapInfo::from_pin(pins.join(names::SOURCES)).unwrap();
    assert_eq!(info.value_size() as usize, size_of::<SourceStats>());
    drop(dp);
    unload(&pins).unwrap();

    // A map holding entries of another layout is refused with an error naming it.
    create(names::CONFIG, "array", "4", "16");
    let err = Datapath::load(&LoadOptions::new(&pins))
        .err()
        .expect("an incompatible SN_CONFIG is refused");
    assert!(
        matches!(err, DatapathError::IncompatiblePin { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(names::CONFIG) && msg.contains("sentinel unload"),
        "{msg}"
    );
    unload(&pins).unwrap();
    assert!(!pins.exists(), "unload removes the old pins too");
}

#[test]
fn a_hot_throttled_source_draws_tokens_in_batches_but_never_more_than_its_bucket() {
    // A burst of 100 lets a fast source draw tokens ahead of use on its CPU; one test run of
    // 150 repeats stays on one CPU and within the stash window: exactly the burst passes.
    let mut lab = Lab::new();
    for f in &FAMILIES {
        lab.throttle(&[f.src], 1, 100, None);
    }
    for f in &FAMILIES {
        let frame = Packet::udp(f.src, f.dst).build();
        let prog = lab.dp.xdp(programs::XDP_SENTINEL).expect("program");
        prog.test_run(TestRunOptions {
            data_in: Some(&frame.bytes),
            repeat: 150,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    }
    lab.expect_counts(&[(Reason::ThrottlePass, 200), (Reason::DropThrottle, 100)]);
}

#[test]
fn a_full_reasons_map_drops_unused_reasons_and_the_verdict_keeps_its_own() {
    use sentinel_common::{REASON_LEN, ReasonText, defaults::REASONS_MAX};
    let mut lab = Lab::new();
    // One blocked address whose reason is in use, then the map filled with reasons that no
    // entry names any more (the entries they labelled expired and were swept).
    let block = |lab: &mut Lab, target: &str, reason: &str| {
        let req = AddRequest {
            reason: Some(reason.into()),
            ..Default::default()
        };
        lab.add(ListKind::Block, &[target], req);
    };
    block(&mut lab, "192.0.2.77", "brute_force user:kept");
    let m = &mut lab.dp.maps;
    let mut stale = 0u32;
    for id in 1..u32::MAX {
        let text = ReasonText {
            text: [b'x'; REASON_LEN],
        };
        if m.reasons.insert(id, text, 0).is_err() {
            break;
        }
        stale += 1;
    }
    assert!(
        m.reasons.keys().count() as u32 >= REASONS_MAX,
        "filled ({stale} stale)"
    );
    // A new verdict with a new reason: written, with its reason, and the one in use kept.
    block(
        &mut lab,
        "198.51.100.77",
        "credential_stuffing 198.51.100.77",
    );
    let listed = lists::list(&lab.dp.maps, ListKind::Block).unwrap();
    let reason_of = |t: &str| {
        listed
            .iter()
            .find(|e| e.target == t)
            .and_then(|e| e.reason.clone())
    };
    assert_eq!(
        reason_of("198.51.100.77").as_deref(),
        Some("credential_stuffing 198.51.100.77")
    );
    assert_eq!(
        reason_of("192.0.2.77").as_deref(),
        Some("brute_force user:kept")
    );
    assert_eq!(lab.dp.maps.reasons.keys().count(), 2, "the stale ones went");
}

#[test]
fn a_full_list_refuses_a_bulk_add_whole_and_a_single_add_clearly() {
    sentinel_tests::require_root();
    let pins = sentinel::lab::TempPins::new("ptr-full");
    let mut opts = LoadOptions::new(pins.path());
    opts.sizes.block_exact = 16;
    let mut dp = Datapath::load(&opts).expect("load the XDP object");
    let addrs = |from: u32, n: u32| -> Vec<String> {
        (from..from + n)
            .map(|i| format!("198.51.100.{i}"))
            .collect()
    };
    let add = |dp: &mut Datapath, targets: Vec<String>| {
        let req = AddRequest {
            targets,
            ..Default::default()
        };
        lists::add(&mut dp.maps, ListKind::Block, &req)
    };
    add(&mut dp, addrs(1, 14)).expect("14 of 16");
    // Three more do not fit: none is written.
    let e = add(&mut dp, addrs(20, 3)).unwrap_err();
    assert!(matches!(e, lists::ListError::Full { adding: 3, .. }), "{e}");
    assert_eq!(lists::list(&dp.maps, ListKind::Block).unwrap().len(), 14);
    // One at a time up to the capacity, then a clear refusal naming the map.
    add(&mut dp, addrs(20, 1)).expect("15");
    add(&mut dp, addrs(21, 1)).expect("16");
    let e = add(&mut dp, addrs(22, 1)).unwrap_err();
    assert!(
        matches!(
            e,
            lists::ListError::Full {
                have: 16,
                max: 16,
                adding: 1,
                ..
            }
        ),
        "{e}"
    );
    // Replacing an entry takes no room, also when the list is full.
    add(&mut dp, addrs(1, 1)).expect("a replacement");
    assert_eq!(lists::list(&dp.maps, ListKind::Block).unwrap().len(), 16);
}

/// Every entry of the block list as the kernel holds it: exact keys, then prefixes, sorted.
type BlockContents = (
    Vec<(sentinel_common::AddrKey, RuleValue)>,
    Vec<(u32, sentinel_common::AddrKey, RuleValue)>,
);

fn block_contents(maps: &sentinel::datapath::Maps) -> BlockContents {
    let mut exact: Vec<_> = maps.block_hash.iter().map(Result::unwrap).collect();
    exact.sort_by_key(|(k, _)| *k);
    let mut prefixes: Vec<_> = maps
        .block_lpm
        .iter()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.prefix_len(), k.data(), v)
        })
        .collect();
    prefixes.sort_by_key(|(p, k, _)| (*p, *k));
    (exact, prefixes)
}

#[test]
fn a_bulk_add_that_fails_part_way_leaves_the_list_as_it_was() {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    use aya::maps::IterableMap as _;

    let mut lab = Lab::new();
    // An address and a prefix the add replaces, and a prefix it leaves alone.
    lab.add(
        ListKind::Block,
        &["198.51.100.1", "198.51.100.0/24", "2001:db8:1::/48"],
        AddRequest {
            reason: Some("before".into()),
            ..Default::default()
        },
    );
    let before = block_contents(&lab.dp.maps);
    let req = AddRequest {
        targets: [
            "198.51.100.1",
            "198.51.100.2",
            "203.0.113.0/24",
            "198.51.100.0/24",
            "2001:db8:2::/48",
        ]
        .map(String::from)
        .into(),
        ttl_ms: Some(600_000),
        reason: Some("after".into()),
        shadow: true,
        throttle: None,
    };
    // The third prefix write fails, as one would on a trie that another writer filled after
    // the room was checked: by then the addresses, a new prefix and a replaced one are in.
    let lpm = lab.dp.maps.block_lpm.map().fd().as_fd().as_raw_fd();
    let (res, updates) = sentinel_tests::fault::fail_nth_update(lpm, 3, libc::ENOSPC, || {
        lists::add(&mut lab.dp.maps, ListKind::Block, &req)
    });
    let e = res.unwrap_err();
    assert!(matches!(e, lists::ListError::Datapath(_)), "{e}");
    assert!(
        updates >= 3,
        "the failure came at the third prefix: {updates} writes"
    );
    assert_eq!(block_contents(&lab.dp.maps), before, "the list as it was");
    // And the kernel judges by it: the /24 it had replaced by a shadow entry drops again, the
    // new entries are gone.
    assert_eq!(
        lab.send(&Packet::udp("198.51.100.2", V4.dst)),
        XDP_DROP,
        "in the /24"
    );
    assert_eq!(lab.send(&Packet::udp("203.0.113.9", V4.dst)), XDP_PASS);
    assert_eq!(lab.send(&Packet::udp("2001:db8:2::9", V6.dst)), XDP_PASS);
    lab.expect_counts(&[(Reason::DropBlock, 1), (Reason::Pass, 2)]);
}

#[test]
fn an_add_looks_each_target_up_once() {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    use aya::maps::IterableMap as _;

    let mut lab = Lab::new();
    lab.block(&["198.51.100.1", "198.51.100.0/24"]);
    let hash = lab.dp.maps.block_hash.map().fd().as_fd().as_raw_fd();
    let lpm = lab.dp.maps.block_lpm.map().fd().as_fd().as_raw_fd();
    let req = |target: &str| AddRequest {
        targets: vec![target.into()],
        reason: Some("again".into()),
        ..Default::default()
    };
    // The lookup that keeps what a failed write must put back also counts the replaced entry.
    for (target, fd, map) in [
        ("198.51.100.1", hash, "hash"),
        ("198.51.100.0/24", lpm, "trie"),
    ] {
        let (resp, lookups) = sentinel_tests::fault::count_lookups(fd, || {
            lists::add(&mut lab.dp.maps, ListKind::Block, &req(target)).expect("add")
        });
        assert_eq!(resp.replaced, 1, "{target}");
        assert_eq!(lookups, 1, "{target}: lookups in the block {map}");
    }
}

#[test]
fn a_bulk_add_that_only_refreshes_a_full_list_fits() {
    sentinel_tests::require_root();
    let pins = sentinel::lab::TempPins::new("ptr-refresh");
    let mut opts = LoadOptions::new(pins.path());
    opts.sizes.block_exact = 4;
    opts.sizes.prefixes = 3;
    let mut dp = Datapath::load(&opts).expect("load the XDP object");
    let add = |dp: &mut Datapath, targets: &[&str]| {
        let req = AddRequest {
            targets: targets.iter().map(|t| t.to_string()).collect(),
            reason: Some("refresh".into()),
            ..Default::default()
        };
        lists::add(&mut dp.maps, ListKind::Block, &req)
    };
    let full = [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
        "203.0.113.0/24",
        "2001:db8:1::/48",
        "192.0.2.0/25",
    ];
    add(&mut dp, &full).expect("exactly full");
    // The same entries again (a list file loaded once more, to refresh TTL and reason) replace
    // what is there and take no room.
    let again = add(&mut dp, &full).expect("a refresh of a full list");
    assert_eq!(again.replaced, full.len());
    // The same prefix twice in one add is one entry.
    add(
        &mut dp,
        &["203.0.113.0/24", "203.0.113.0/24", "192.0.2.0/25"],
    )
    .expect("twice, one");
    // One new prefix among the refreshed ones does not fit, and is counted alone.
    let e = add(
        &mut dp,
        &["203.0.113.0/24", "2001:db8:1::/48", "198.18.0.0/16"],
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            lists::ListError::Full {
                have: 3,
                max: 3,
                adding: 1,
                ..
            }
        ),
        "{e}"
    );
    // As with one new address among the refreshed ones.
    let e = add(&mut dp, &["198.51.100.1", "198.51.100.9", "198.51.100.9"]).unwrap_err();
    assert!(matches!(e, lists::ListError::Full { adding: 1, .. }), "{e}");
    assert_eq!(lists::list(&dp.maps, ListKind::Block).unwrap().len(), 7);
}

#[test]
fn a_single_add_whose_generation_bump_fails_leaves_the_list_as_it_was() {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    use aya::maps::IterableMap as _;

    let mut lab = Lab::new();
    lab.add(
        ListKind::Block,
        &["198.51.100.1", "198.51.100.0/24"],
        AddRequest {
            reason: Some("before".into()),
            ..Default::default()
        },
    );
    let before = block_contents(&lab.dp.maps);
    let config = lab.dp.maps.config.map().fd().as_fd().as_raw_fd();
    // A new address, a replaced one, a new prefix and a replaced one: each written whole, then
    // the configuration write that tells the kernel (the second: the first raises the
    // presence flags) fails.
    for target in [
        "198.51.100.2",
        "198.51.100.1",
        "203.0.113.0/24",
        "198.51.100.0/24",
    ] {
        let req = AddRequest {
            targets: vec![target.into()],
            ttl_ms: Some(600_000),
            reason: Some("after".into()),
            shadow: true,
            throttle: None,
        };
        let (res, updates) = sentinel_tests::fault::fail_nth_update(config, 2, libc::EIO, || {
            lists::add(&mut lab.dp.maps, ListKind::Block, &req)
        });
        let e = res.unwrap_err();
        assert!(matches!(e, lists::ListError::Datapath(_)), "{target}: {e}");
        assert!(updates >= 2, "{target}: {updates} configuration writes");
        assert_eq!(
            block_contents(&lab.dp.maps),
            before,
            "{target}: the list as it was"
        );
    }
    // And the kernel judges by it.
    assert_eq!(lab.send(&Packet::udp("198.51.100.2", V4.dst)), XDP_DROP);
    assert_eq!(lab.send(&Packet::udp("203.0.113.9", V4.dst)), XDP_PASS);
}
