//! Per-packet cost of `sentinel_xdp` by BPF_PROG_TEST_RUN (hot key: the same frame `repeat`
//! times), each case paired with the bare `sentinel_xdp_drop` floor on the same frame, the two
//! interleaved and alternating which goes first. `duration` is the kernel's average per run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use aya::programs::{TestRun, TestRunOptions};
use sentinel::{
    control::api::{AddRequest, ListKind, ThrottleSpec},
    datapath::Datapath,
    lab::netns::{SERVER_V4, SERVER_V6},
    verdict::lists,
};
use sentinel_common::{MAX_RATE_PPS, Reason, programs};

use super::{addrs, frames, median, median_ratio};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// One measured case.
pub struct CostRow {
    /// What the packet meets.
    pub case: String,
    /// The verdict reason it is counted under.
    pub reason: Reason,
    /// Median ns per packet of `sentinel_xdp`.
    pub ours_ns: f64,
    /// Median ns per packet of `sentinel_xdp_drop`.
    pub floor_ns: f64,
    /// Median of the paired per-round ratios.
    pub ratio: f64,
}

struct Case {
    name: &'static str,
    src: IpAddr,
    reason: Reason,
}

fn frame(src: IpAddr) -> Vec<u8> {
    match src {
        IpAddr::V4(a) => frames::v4(MAC_A, MAC_B, a, SERVER_V4),
        IpAddr::V6(a) => frames::v6(MAC_A, MAC_B, a, SERVER_V6),
    }
}

fn add(dp: &mut Datapath, kind: ListKind, targets: Vec<String>) -> anyhow::Result<()> {
    let throttle = (kind == ListKind::Throttle).then_some(ThrottleSpec {
        rate_pps: MAX_RATE_PPS,
        burst: 1 << 20,
        aggregate: None,
    });
    lists::add(
        &mut dp.maps,
        kind,
        &AddRequest {
            targets,
            throttle,
            ..Default::default()
        },
    )
    .with_context(|| format!("adding to the {kind:?} list"))?;
    Ok(())
}

/// Entries that the "lists filled" cases add, all missed by the measured sources: 100k exact
/// IPv6 blocks, 4096 blocked IPv4 /28s in 198.19.0.0/16, 10k blocked IPv6 /64s, 1k allowed and
/// 1k throttled IPv6 /64s, 1k exact allowed and 1k exact throttled IPv6 addresses.
pub fn fill_lists(dp: &mut Datapath) -> anyhow::Result<()> {
    let exact: Vec<String> = addrs::v6(100_000, 11)
        .iter()
        .map(|a| a.to_string())
        .collect();
    add(dp, ListKind::Block, exact)?;
    let v4_prefixes: Vec<String> = (0..4096u32)
        .map(|i| {
            format!(
                "{}/28",
                Ipv4Addr::from(u32::from_be_bytes([198, 19, 0, 0]) + i * 16)
            )
        })
        .collect();
    add(dp, ListKind::Block, v4_prefixes)?;
    let v6_64 = |n: usize, seed: u64| -> Vec<String> {
        addrs::v6(n, seed)
            .iter()
            .map(|a| {
                let s = a.segments();
                format!(
                    "{}/64",
                    Ipv6Addr::new(s[0], s[1], s[2] | 0x8000, s[3], 0, 0, 0, 0)
                )
            })
            .collect()
    };
    add(dp, ListKind::Block, v6_64(10_000, 12))?;
    add(dp, ListKind::Allow, v6_64(1_000, 13))?;
    add(dp, ListKind::Throttle, v6_64(1_000, 14))?;
    let v6_exact = |n: usize, seed: u64| -> Vec<String> {
        addrs::v6(n, seed).iter().map(|a| a.to_string()).collect()
    };
    add(dp, ListKind::Allow, v6_exact(1_000, 15))?;
    add(dp, ListKind::Throttle, v6_exact(1_000, 16))?;
    Ok(())
}

fn counter(dp: &Datapath, r: Reason) -> anyhow::Result<u64> {
    Ok(dp.maps.counters()?[r as usize].packets)
}

fn measure(
    dp: &mut Datapath,
    cases: &[Case],
    suffix: &str,
    rounds: usize,
    repeat: u32,
) -> anyhow::Result<Vec<CostRow>> {
    let mut rows = Vec::new();
    for c in cases {
        let pkt = frame(c.src);
        let expect = if c.reason.is_drop() {
            XDP_DROP
        } else {
            XDP_PASS
        };
        // Warm up: the first packet inserts the source (and its bucket); then it is a hot key.
        for name in [programs::XDP_SENTINEL, programs::XDP_DROP] {
            dp.xdp(name)?.test_run(TestRunOptions {
                data_in: Some(&pkt),
                repeat: 1000,
                ..TestRunOptions::new()
            })?;
        }
        let before = counter(dp, c.reason)?;
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [programs::XDP_SENTINEL, programs::XDP_DROP]
            } else {
                [programs::XDP_DROP, programs::XDP_SENTINEL]
            };
            for name in order {
                let r = dp.xdp(name)?.test_run(TestRunOptions {
                    data_in: Some(&pkt),
                    repeat,
                    ..TestRunOptions::new()
                })?;
                let ns = r.duration.as_nanos() as f64;
                if name == programs::XDP_SENTINEL {
                    anyhow::ensure!(
                        r.return_value == expect,
                        "{}: sentinel_xdp returned {} (expected {expect})",
                        c.name,
                        r.return_value
                    );
                    ours.push(ns);
                } else {
                    floor.push(ns);
                }
            }
        }
        let counted = counter(dp, c.reason)? - before;
        anyhow::ensure!(
            counted == rounds as u64 * repeat as u64,
            "{}: {counted} packets counted as {} for {} runs",
            c.name,
            c.reason.label(),
            rounds as u64 * repeat as u64
        );
        let row = CostRow {
            case: format!("{}{suffix}", c.name),
            reason: c.reason,
            ours_ns: median(&ours),
            floor_ns: median(&floor),
            ratio: median_ratio(&ours, &floor),
        };
        println!(
            "  {:<44} {:>6.1} ns vs floor {:>5.1} ns",
            row.case, row.ours_ns, row.floor_ns
        );
        rows.push(row);
    }
    Ok(rows)
}

/// Measures every case on `dp` (freshly loaded, empty lists); leaves the lists filled.
pub fn run(dp: &mut Datapath, rounds: usize, repeat: u32) -> anyhow::Result<Vec<CostRow>> {
    let v4 = |c: u8| IpAddr::V4(Ipv4Addr::new(198, 18, c, 1));
    let v6 = |c: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, c, 0, 0, 0, 0, 1));
    let cases = [
        Case {
            name: "IPv4 pass (counted, every lookup misses)",
            src: v4(10),
            reason: Reason::Pass,
        },
        Case {
            name: "IPv4 throttled, conforming (bucket taken)",
            src: v4(11),
            reason: Reason::ThrottlePass,
        },
        Case {
            name: "IPv4 blocked, exact (hash)",
            src: v4(12),
            reason: Reason::DropBlock,
        },
        Case {
            name: "IPv4 blocked, prefix (LPM)",
            src: v4(13),
            reason: Reason::DropBlock,
        },
        Case {
            name: "IPv6 pass (counted, every lookup misses)",
            src: v6(10),
            reason: Reason::Pass,
        },
        Case {
            name: "IPv6 blocked, exact (hash)",
            src: v6(12),
            reason: Reason::DropBlock,
        },
    ];
    add(dp, ListKind::Throttle, vec![v4(11).to_string()])?;
    add(
        dp,
        ListKind::Block,
        vec![
            v4(12).to_string(),
            "198.18.13.0/24".into(),
            v6(12).to_string(),
        ],
    )?;
    println!("per-packet cost (BPF_PROG_TEST_RUN, {rounds} rounds x {repeat} runs)");
    let mut rows = measure(dp, &cases, "", rounds, repeat)?;
    fill_lists(dp)?;
    let filled = [
        Case {
            name: "IPv4 pass",
            src: v4(10),
            reason: Reason::Pass,
        },
        Case {
            name: "IPv4 blocked, prefix (LPM)",
            src: v4(13),
            reason: Reason::DropBlock,
        },
        Case {
            name: "IPv6 pass",
            src: v6(10),
            reason: Reason::Pass,
        },
    ];
    rows.extend(measure(dp, &filled, " [lists filled]", rounds, repeat)?);
    Ok(rows)
}

/// The table for BENCHMARKS.md.
pub fn table(rows: &[CostRow], rounds: usize, repeat: u32) -> String {
    let mut t = format!(
        "### Per-packet cost (BPF_PROG_TEST_RUN, hot key, ns per packet, median of {rounds} rounds x {repeat} runs)\n\n\
         Peer: `sentinel_xdp_drop` (bare `XDP_DROP`) on the same frame, interleaved. \
         \"Lists filled\": 100k exact IPv6 blocks, 4096 blocked IPv4 /28s, 10k blocked IPv6 /64s, \
         1k allowed and 1k throttled IPv6 /64s, 1k exact allowed and 1k exact throttled IPv6 \
         addresses, none matching the measured source.\n\n\
         | case | verdict | sentinel_xdp | bare XDP_DROP | ratio | target |\n|---|---|---|---|---|---|\n"
    );
    for (i, r) in rows.iter().enumerate() {
        let target = if i < 2 {
            if r.ours_ns <= 100.0 {
                "<= 100 ns: met"
            } else {
                "<= 100 ns: **missed**"
            }
        } else {
            ""
        };
        t.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.2}x | {target} |\n",
            r.case,
            r.reason.label(),
            r.ours_ns,
            r.floor_ns,
            r.ratio
        ));
    }
    t
}
