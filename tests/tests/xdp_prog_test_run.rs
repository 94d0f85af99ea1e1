//! BPF_PROG_TEST_RUN tier: the XDP sentinel run by the kernel on crafted IPv4 and IPv6 frames,
//! one test per verdict path, checking the action, the counters and the per-source stats.

use std::{net::IpAddr, path::PathBuf};

use aya::programs::{TestRun, TestRunOptions};
use sentinel::{
    clock::monotonic_ns,
    control::api::{AddRequest, ListKind, ThrottleSpec},
    datapath::{Datapath, LoadOptions, unload},
    verdict::{Target, lists},
};
use sentinel_common::{
    CONFIG_FLAG_SHADOW, Config, FlowKey, RULE_FLAG_SHADOW, Reason, RuleValue, programs, v4_mapped,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// A loaded datapath with unique pins, unloaded on drop (also when a test fails).
struct Lab {
    dp: Datapath,
    pins: PathBuf,
}

impl Lab {
    fn new() -> Self {
        sentinel_tests::require_root();
        let pins = PathBuf::from(format!(
            "/sys/fs/bpf/sentinel-test-ptr-{}",
            sentinel_tests::unique_id()
        ));
        let dp = Datapath::load(&LoadOptions::new(&pins)).expect("load the XDP object");
        Self { dp, pins }
    }

    fn run(&mut self, frame: &[u8]) -> u32 {
        let prog = self.dp.xdp(programs::XDP_SENTINEL).expect("program");
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value
    }

    fn counter(&self, r: Reason) -> u64 {
        self.dp.maps.counters().unwrap()[r as usize].packets
    }

    fn add(
        &mut self,
        list: ListKind,
        targets: &[&str],
        shadow: bool,
        throttle: Option<ThrottleSpec>,
    ) {
        lists::add(
            &mut self.dp.maps,
            list,
            &AddRequest {
                targets: targets.iter().map(|s| s.to_string()).collect(),
                ttl_ms: None,
                reason: Some("test".into()),
                shadow,
                throttle,
            },
        )
        .expect("add");
    }

    fn source(&self, ip: &str) -> Option<sentinel_common::SourceStats> {
        let key = match Target::from(ip.parse::<IpAddr>().unwrap()).map_key() {
            sentinel::verdict::target::MapKey::Exact(k) => k,
            sentinel::verdict::target::MapKey::Prefix(_, k) => k,
        };
        self.dp
            .maps
            .sources()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, s)| s)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = unload(&self.pins);
    }
}

/// Frame builder: Ethernet (optionally 802.1Q-tagged), IPv4 or IPv6 (optionally with
/// hop-by-hop and fragment extension headers), UDP or TCP.
#[derive(Clone)]
struct Frame {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    vlan: bool,
    v6_ext: bool,
    payload: usize,
}

impl Frame {
    fn udp(src: &str, dst: &str) -> Self {
        Self {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: 17,
            sport: 40000,
            dport: 7000,
            vlan: false,
            v6_ext: false,
            payload: 32,
        }
    }
    fn tcp(mut self) -> Self {
        self.proto = 6;
        self
    }
    fn vlan(mut self) -> Self {
        self.vlan = true;
        self
    }
    fn v6_ext(mut self) -> Self {
        self.v6_ext = true;
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if self.vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        }
        let l4_len = if self.proto == 6 { 20 } else { 8 } + self.payload;
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == 6 {
            l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            l4.extend_from_slice(&(l4_len as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        l4.resize(l4_len, 0xab);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&[0x08, 0x00]);
                let tot = (20 + l4_len) as u16;
                f.extend_from_slice(&[
                    0x45,
                    0,
                    (tot >> 8) as u8,
                    tot as u8,
                    0,
                    0,
                    0x40,
                    0,
                    64,
                    self.proto,
                    0,
                    0,
                ]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&[0x86, 0xdd]);
                let ext_len = if self.v6_ext { 16 } else { 0 };
                let plen = (ext_len + l4_len) as u16;
                let nh = if self.v6_ext { 0 } else { self.proto };
                f.extend_from_slice(&[0x60, 0, 0, 0, (plen >> 8) as u8, plen as u8, nh, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                if self.v6_ext {
                    // Hop-by-hop (8 bytes, PadN) then a first fragment (offset 0, M=1).
                    f.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]);
                    f.extend_from_slice(&[self.proto, 0, 0, 1, 0, 0, 0, 7]);
                }
            }
            _ => panic!("mixed families"),
        }
        f.extend_from_slice(&l4);
        f
    }
}

const V4: &str = "198.18.0.100";
const V4_DST: &str = "198.18.0.1";
const V6: &str = "2001:db8::100";
const V6_DST: &str = "2001:db8::1";

#[test]
fn unlisted_sources_pass_and_are_counted_per_source() {
    let mut lab = Lab::new();
    for f in [
        Frame::udp(V4, V4_DST),
        Frame::udp(V4, V4_DST).tcp().vlan(),
        Frame::udp(V6, V6_DST),
        Frame::udp(V6, V6_DST).tcp().v6_ext(),
    ] {
        assert_eq!(lab.run(&f.bytes()), XDP_PASS);
    }
    assert_eq!(lab.counter(Reason::Pass), 4);
    let s = lab.source(V4).expect("v4 source tracked");
    assert_eq!((s.packets, s.dropped), (2, 0));
    assert_eq!(
        s.bytes,
        (Frame::udp(V4, V4_DST).bytes().len() + Frame::udp(V4, V4_DST).tcp().vlan().bytes().len())
            as u64
    );
    assert!(s.last_seen_ns > 0 && s.last_seen_ns <= monotonic_ns());
    assert_eq!(lab.source(V6).expect("v6 source tracked").packets, 2);
}

#[test]
fn blocked_addresses_and_prefixes_drop_v4_and_v6() {
    let mut lab = Lab::new();
    lab.add(ListKind::Block, &[V4, "2001:db8:0:1::/64"], false, None);
    assert_eq!(lab.run(&Frame::udp(V4, V4_DST).bytes()), XDP_DROP);
    assert_eq!(
        lab.run(&Frame::udp(V4, V4_DST).tcp().vlan().bytes()),
        XDP_DROP
    );
    assert_eq!(
        lab.run(&Frame::udp("2001:db8:0:1::77", V6_DST).bytes()),
        XDP_DROP
    );
    assert_eq!(
        lab.run(
            &Frame::udp("2001:db8:0:1::78", V6_DST)
                .tcp()
                .v6_ext()
                .bytes()
        ),
        XDP_DROP
    );
    assert_eq!(
        lab.run(&Frame::udp(V6, V6_DST).bytes()),
        XDP_PASS,
        "outside the /64"
    );
    assert_eq!(lab.counter(Reason::DropBlock), 4);
    assert_eq!(lab.counter(Reason::Pass), 1);
    assert_eq!(lab.source(V4).unwrap().dropped, 2);
}

#[test]
fn the_allowlist_wins_inside_a_blocked_prefix() {
    let mut lab = Lab::new();
    lab.add(
        ListKind::Block,
        &["198.18.0.0/24", "2001:db8::/48"],
        false,
        None,
    );
    lab.add(ListKind::Allow, &[V4, "2001:db8::100/128"], false, None);
    lab.add(
        ListKind::Throttle,
        &[V4],
        false,
        Some(ThrottleSpec {
            rate_pps: 1,
            burst: 1,
            aggregate: None,
        }),
    );
    for _ in 0..3 {
        assert_eq!(lab.run(&Frame::udp(V4, V4_DST).bytes()), XDP_PASS);
        assert_eq!(lab.run(&Frame::udp(V6, V6_DST).bytes()), XDP_PASS);
    }
    assert_eq!(
        lab.run(&Frame::udp("198.18.0.101", V4_DST).bytes()),
        XDP_DROP
    );
    assert_eq!(lab.counter(Reason::Allowlisted), 6);
    assert_eq!(lab.counter(Reason::DropBlock), 1);
}

#[test]
fn killed_flows_drop_only_their_five_tuple() {
    let mut lab = Lab::new();
    let key = FlowKey {
        src: v4_mapped([198, 18, 0, 100]),
        dst: v4_mapped([198, 18, 0, 1]),
        src_port: 40000,
        dst_port: 7000,
        proto: 6,
        _pad: [0; 3],
    };
    lab.dp
        .maps
        .flow_kill
        .insert(
            key,
            RuleValue {
                expires_ns: 0,
                reason_id: 0,
                flags: 0,
            },
            0,
        )
        .unwrap();
    assert_eq!(lab.run(&Frame::udp(V4, V4_DST).tcp().bytes()), XDP_DROP);
    assert_eq!(
        lab.run(&Frame::udp(V4, V4_DST).bytes()),
        XDP_PASS,
        "UDP is another flow"
    );
    let mut other_port = Frame::udp(V4, V4_DST).tcp();
    other_port.sport = 40001;
    assert_eq!(lab.run(&other_port.bytes()), XDP_PASS);
    assert_eq!(lab.counter(Reason::DropFlowKill), 1);
}

#[test]
fn throttles_pass_the_burst_then_drop_per_source_or_per_aggregate() {
    let mut lab = Lab::new();
    // Per source: rate so low that no token comes back during the test.
    lab.add(
        ListKind::Throttle,
        &["198.18.0.0/24"],
        false,
        Some(ThrottleSpec {
            rate_pps: 1,
            burst: 3,
            aggregate: None,
        }),
    );
    let verdicts: Vec<u32> = (0..5)
        .map(|_| lab.run(&Frame::udp(V4, V4_DST).bytes()))
        .collect();
    assert_eq!(verdicts, [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP]);
    // Another source in the same prefix has its own bucket.
    assert_eq!(
        lab.run(&Frame::udp("198.18.0.101", V4_DST).bytes()),
        XDP_PASS
    );
    // Aggregate /64 for IPv6: two sources of one /64 share one bucket.
    lab.add(
        ListKind::Throttle,
        &["2001:db8::/48"],
        false,
        Some(ThrottleSpec {
            rate_pps: 1,
            burst: 2,
            aggregate: Some(64),
        }),
    );
    let a = lab.run(&Frame::udp("2001:db8::a", V6_DST).bytes());
    let b = lab.run(&Frame::udp("2001:db8::b", V6_DST).bytes());
    let c = lab.run(&Frame::udp("2001:db8::c", V6_DST).bytes());
    let other_64 = lab.run(&Frame::udp("2001:db8:0:1::a", V6_DST).bytes());
    assert_eq!(
        [a, b, c, other_64],
        [XDP_PASS, XDP_PASS, XDP_DROP, XDP_PASS]
    );
    assert_eq!(lab.counter(Reason::ThrottlePass), 3 + 1 + 2 + 1);
    assert_eq!(lab.counter(Reason::DropThrottle), 2 + 1);
}

#[test]
fn shadow_entries_and_global_shadow_count_would_drops_and_pass() {
    let mut lab = Lab::new();
    lab.add(ListKind::Block, &[V4], true, None);
    assert_eq!(lab.run(&Frame::udp(V4, V4_DST).bytes()), XDP_PASS);
    assert_eq!(lab.counter(Reason::ShadowBlock), 1);
    lab.add(ListKind::Block, &[V6], false, None);
    assert_eq!(lab.run(&Frame::udp(V6, V6_DST).bytes()), XDP_DROP);
    lab.dp
        .maps
        .set_config(Config {
            flags: CONFIG_FLAG_SHADOW,
            _pad: 0,
        })
        .unwrap();
    assert_eq!(
        lab.run(&Frame::udp(V6, V6_DST).bytes()),
        XDP_PASS,
        "global shadow"
    );
    lab.add(
        ListKind::Throttle,
        &["198.18.0.7"],
        false,
        Some(ThrottleSpec {
            rate_pps: 1,
            burst: 1,
            aggregate: None,
        }),
    );
    assert_eq!(lab.run(&Frame::udp("198.18.0.7", V4_DST).bytes()), XDP_PASS);
    assert_eq!(lab.run(&Frame::udp("198.18.0.7", V4_DST).bytes()), XDP_PASS);
    assert_eq!(lab.counter(Reason::ShadowBlock), 2);
    assert_eq!(lab.counter(Reason::ShadowThrottle), 1);
    assert_eq!(lab.counter(Reason::DropBlock), 1);
    assert_eq!(lab.counter(Reason::DropThrottle), 0);
    let flags = lab
        .dp
        .maps
        .block_hash
        .get(&v4_mapped([198, 18, 0, 100]), 0)
        .unwrap()
        .flags;
    assert_eq!(flags & RULE_FLAG_SHADOW, RULE_FLAG_SHADOW);
}

#[test]
fn expired_entries_stop_applying_without_userspace() {
    let mut lab = Lab::new();
    // Expiry is judged on the kernel's coarse clock (one tick, up to 4 ms here, behind): an
    // entry that expired 20 ms ago is gone.
    let past = RuleValue {
        expires_ns: monotonic_ns() - 20_000_000,
        reason_id: 0,
        flags: 0,
    };
    lab.dp
        .maps
        .block_hash
        .insert(v4_mapped([198, 18, 0, 100]), past, 0)
        .unwrap();
    assert_eq!(lab.run(&Frame::udp(V4, V4_DST).bytes()), XDP_PASS);
    let future = RuleValue {
        expires_ns: monotonic_ns() + 60_000_000_000,
        reason_id: 0,
        flags: 0,
    };
    lab.dp
        .maps
        .block_hash
        .insert(v4_mapped([198, 18, 0, 100]), future, 0)
        .unwrap();
    assert_eq!(lab.run(&Frame::udp(V4, V4_DST).bytes()), XDP_DROP);
    // A TTL from the list API expires the same way.
    lab.add(ListKind::Block, &[V6], false, None);
    lists::add(
        &mut lab.dp.maps,
        ListKind::Block,
        &AddRequest {
            targets: vec![V6.into()],
            ttl_ms: Some(50),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(lab.run(&Frame::udp(V6, V6_DST).bytes()), XDP_DROP);
    std::thread::sleep(std::time::Duration::from_millis(80));
    assert_eq!(lab.run(&Frame::udp(V6, V6_DST).bytes()), XDP_PASS);
    assert_eq!(lists::sweep_expired(&mut lab.dp.maps).unwrap(), 1);
}

#[test]
fn non_ip_malformed_and_truncated_frames_pass_and_are_counted() {
    let mut lab = Lab::new();
    lab.add(ListKind::Block, &[V4], false, None);
    // ARP.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x08, 0x06]);
    arp.resize(42, 0);
    assert_eq!(lab.run(&arp), XDP_PASS);
    assert_eq!(lab.counter(Reason::NonIp), 1);
    // (The kernel refuses test frames shorter than an Ethernet header.) Ethernet only with an
    // IPv4 type; IPv4 header cut short; bad IHL; IPv6 cut short.
    let full = Frame::udp(V4, V4_DST).bytes();
    assert_eq!(lab.run(&full[..14]), XDP_PASS);
    assert_eq!(lab.run(&full[..20]), XDP_PASS);
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x42;
    assert_eq!(lab.run(&bad_ihl), XDP_PASS);
    let v6 = Frame::udp(V6, V6_DST).bytes();
    assert_eq!(lab.run(&v6[..30]), XDP_PASS);
    assert_eq!(lab.counter(Reason::Malformed), 4);
    // Transport header cut short: judged on addresses (blocked source drops), counted.
    let tcp = Frame::udp(V4, V4_DST).tcp().bytes();
    assert_eq!(lab.run(&tcp[..14 + 20 + 10]), XDP_DROP);
    assert_eq!(lab.counter(Reason::TruncatedL4), 1);
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
