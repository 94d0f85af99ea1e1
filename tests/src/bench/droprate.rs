//! Drop rate of blocklisted sources over a veth pair.
//!
//! The generator (see [`super::generator`]) sends frames from random sources of the list out of
//! the client veth; the server veth runs one arm:
//! - `sentinel`: `sentinel_xdp` with the list in its blocklist (default map sizes);
//! - `bare XDP_DROP`: `sentinel_xdp_drop`, the floor;
//! - `reference`: `sentinel_bench_ref`, the least a hash blocklist can do (minimal parse, one
//!   lookup in a hash of the same geometry as the sentinel's, drop on a hit), to separate what
//!   any hash blocklist costs on cold caches from what the sentinel adds;
//! - `nftables`: `sentinel_xdp_pass` (a veth only delivers XDP_TX frames to a peer with an XDP
//!   program), then a netdev ingress chain `ip saddr @set counter drop`;
//! - `iptables+ipset`: `sentinel_xdp_pass`, then iptables raw PREROUTING
//!   `-m set --match-set set src -j DROP`.
//!
//! The rate of an arm is the packets the server veth received (its `rx_packets`, which counts
//! every frame its XDP program saw) divided by the kernel time of the generator run (generation
//! and reception share the CPU, see the generator). Each arm's own drop counter is checked
//! against that count, so a mis-set arm cannot pass for a fast one.

use std::{net::IpAddr, path::Path};

use anyhow::Context as _;
use aya::programs::{Xdp, XdpMode, xdp::XdpLinkId};
use sentinel::{
    control::api::{AddRequest, ListKind},
    datapath::{Datapath, LoadOptions, MapSizes, unload},
    lab::{
        NetNs, Topology,
        netns::{SERVER_V4, SERVER_V6},
    },
    verdict::lists,
};
use sentinel_common::{Reason, bench::names as bench_names, programs};

use super::{
    InNs, frames, generator::Generator, median, median_ratio, netfilter::Peers, ratio_range, run_in,
};

/// The arms, in their base order (rotated each round).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    /// The XDP sentinel.
    Sentinel,
    /// Bare `XDP_DROP`.
    BareDrop,
    /// Minimal hash blocklist.
    Reference,
    /// nftables netdev ingress set.
    Nft,
    /// iptables raw + ipset.
    Ipset,
}

impl Arm {
    const ALL: [Arm; 5] = [
        Arm::Sentinel,
        Arm::BareDrop,
        Arm::Reference,
        Arm::Nft,
        Arm::Ipset,
    ];

    fn program(self) -> &'static str {
        match self {
            Arm::Sentinel => programs::XDP_SENTINEL,
            Arm::BareDrop => programs::XDP_DROP,
            Arm::Reference => bench_names::PROG_REFERENCE,
            Arm::Nft | Arm::Ipset => programs::XDP_PASS,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Arm::Sentinel => "sentinel",
            Arm::BareDrop => "bare XDP_DROP",
            Arm::Reference => "reference",
            Arm::Nft => "nftables",
            Arm::Ipset => "iptables+ipset",
        }
    }
}

/// One list to measure.
pub struct ListSpec {
    /// Label for the table ("1k IPv4").
    pub label: String,
    /// The blocked sources (frames come from these, at random).
    pub list: Vec<IpAddr>,
}

/// Results for one list: Mpps per round for each arm (index as [`Arm::ALL`]).
pub struct DropRow {
    /// The list's label.
    pub label: String,
    /// Entries in the list.
    pub entries: usize,
    /// Mpps per round, per arm.
    pub mpps: [Vec<f64>; 5],
    /// Mpps per round by wall clock (preemption included), per arm; for the log.
    pub wall_mpps: [Vec<f64>; 5],
    /// Lowest share of received packets the arm's own counter saw drop (should be ~1.0).
    pub min_coverage: [f64; 5],
}

/// Parameters of a run.
pub struct Params {
    /// Rounds (each runs every arm once).
    pub rounds: usize,
    /// Frames per arm and round.
    pub frames: u32,
}

fn link_info(ns: &NetNs, iface: &str) -> anyhow::Result<serde_json::Value> {
    let out = run_in(ns, "ip", &["-s", "-j", "link", "show", "dev", iface])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v[0].clone())
}

fn rx_packets(ns: &NetNs, iface: &str) -> anyhow::Result<u64> {
    link_info(ns, iface)?["stats64"]["rx"]["packets"]
        .as_u64()
        .context("no rx packet count")
}

fn mac(ns: &NetNs, iface: &str) -> anyhow::Result<[u8; 6]> {
    let s = link_info(ns, iface)?["address"]
        .as_str()
        .context("no MAC address")?
        .to_owned();
    let b: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16))
        .collect::<Result<_, _>>()?;
    b.try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC address {s}"))
}

fn program<'a>(
    dp: &'a mut Datapath,
    gen_: &'a mut Generator,
    arm: Arm,
) -> anyhow::Result<&'a mut Xdp> {
    match arm {
        Arm::Reference => gen_.reference(),
        _ => Ok(dp.xdp(arm.program())?),
    }
}

fn attach(
    dp: &mut Datapath,
    gen_: &mut Generator,
    topo: &Topology,
    arm: Arm,
) -> anyhow::Result<XdpLinkId> {
    let _ns = InNs::enter(&topo.server)?;
    program(dp, gen_, arm)?
        .attach(&topo.server_if, XdpMode::Driver)
        .with_context(|| format!("attaching {} to {} (native)", arm.program(), topo.server_if))
}

fn detach(
    dp: &mut Datapath,
    gen_: &mut Generator,
    topo: &Topology,
    arm: Arm,
    id: XdpLinkId,
) -> anyhow::Result<()> {
    let _ns = InNs::enter(&topo.server)?;
    program(dp, gen_, arm)?.detach(id)?;
    Ok(())
}

fn drop_block(dp: &Datapath) -> anyhow::Result<u64> {
    Ok(dp.maps.counters()?[Reason::DropBlock as usize].packets)
}

/// Measures every list. `pin_dir` is used for each list's sentinel maps (removed after).
pub fn run(
    topo: &Topology,
    specs: &[ListSpec],
    params: &Params,
    pin_dir: &Path,
    work: &Path,
) -> anyhow::Result<Vec<DropRow>> {
    let client_ifindex = link_info(&topo.client, &topo.client_if)?["ifindex"]
        .as_u64()
        .context("no ifindex")? as u32;
    let server_mac = mac(&topo.server, &topo.server_if)?;
    let client_mac = mac(&topo.client, &topo.client_if)?;
    let mut rows = Vec::new();
    for spec in specs {
        let _ = unload(pin_dir);
        let result = run_list(
            topo,
            spec,
            params,
            pin_dir,
            work,
            client_ifindex,
            server_mac,
            client_mac,
        );
        let _ = unload(pin_dir);
        rows.push(result.with_context(|| format!("drop rate with {}", spec.label))?);
    }
    Ok(rows)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site, all distinct context"
)]
fn run_list(
    topo: &Topology,
    spec: &ListSpec,
    params: &Params,
    pin_dir: &Path,
    work: &Path,
    client_ifindex: u32,
    server_mac: [u8; 6],
    client_mac: [u8; 6],
) -> anyhow::Result<DropRow> {
    println!(
        "drop rate, {} ({} entries): loading the lists",
        spec.label,
        spec.list.len()
    );
    let sizes = MapSizes::default();
    let mut gen_ = Generator::load(spec.list.len() as u32, sizes.block_exact)?;
    gen_.set_sources(&spec.list)?;
    gen_.set_reference_list(&spec.list)?;
    let frame = match spec.list[0] {
        IpAddr::V4(a) => frames::v4(server_mac, client_mac, a, SERVER_V4),
        IpAddr::V6(a) => frames::v6(server_mac, client_mac, a, SERVER_V6),
    };
    let mut opts = LoadOptions::new(pin_dir);
    opts.sizes = sizes;
    let mut dp = Datapath::load(&opts)?;
    lists::add(
        &mut dp.maps,
        ListKind::Block,
        &AddRequest {
            targets: spec.list.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        },
    )?;
    // Load every program before the rounds.
    for arm in Arm::ALL {
        dp.xdp(arm.program())?;
    }
    let peers = Peers::setup(&topo.server, &topo.server_if, &spec.list, work)?;
    let mut row = DropRow {
        label: spec.label.clone(),
        entries: spec.list.len(),
        mpps: Default::default(),
        wall_mpps: Default::default(),
        min_coverage: [f64::INFINITY; 5],
    };
    for round in 0..params.rounds {
        for k in 0..Arm::ALL.len() {
            let i = (k + round) % Arm::ALL.len();
            let arm = Arm::ALL[i];
            let link = attach(&mut dp, &mut gen_, topo, arm)?;
            if arm == Arm::Nft {
                peers.nft_on()?;
            }
            let count = |dp: &Datapath| -> anyhow::Result<u64> {
                match arm {
                    Arm::Sentinel => drop_block(dp),
                    Arm::BareDrop | Arm::Reference => Ok(0),
                    Arm::Nft => peers.nft_count(),
                    Arm::Ipset => peers.iptables_count(),
                }
            };
            let (rx0, c0) = (rx_packets(&topo.server, &topo.server_if)?, count(&dp)?);
            let g = {
                let _ns = InNs::enter(&topo.client)?;
                gen_.run(&frame, client_ifindex, params.frames)?
            };
            let (rx1, c1) = (rx_packets(&topo.server, &topo.server_if)?, count(&dp)?);
            if arm == Arm::Nft {
                peers.nft_off()?;
            }
            detach(&mut dp, &mut gen_, topo, arm, link)?;
            let rx = rx1 - rx0;
            let dropped = match arm {
                Arm::BareDrop | Arm::Reference => rx,
                _ => c1 - c0,
            };
            let kernel_s = g.frames as f64 * g.kernel_ns / 1e9;
            let mpps = rx as f64 / kernel_s / 1e6;
            let wall = rx as f64 / g.wall_s / 1e6;
            let coverage = dropped as f64 / rx.max(1) as f64;
            if (rx as f64) < 0.99 * g.frames as f64 || coverage < 0.99 {
                println!(
                    "  warning: {}: {} frames sent, {rx} received, {dropped} dropped by the arm",
                    arm.label(),
                    g.frames
                );
            }
            println!(
                "  round {round} {:<15} {:>6.2} Mpps ({:>5.0} ns/pkt; wall clock {:>5.2} Mpps)",
                arm.label(),
                mpps,
                g.kernel_ns,
                wall
            );
            row.mpps[i].push(mpps);
            row.wall_mpps[i].push(wall);
            row.min_coverage[i] = row.min_coverage[i].min(coverage);
        }
    }
    drop(peers);
    Ok(row)
}

/// The table for BENCHMARKS.md.
pub fn table(rows: &[DropRow], params: &Params, iptables: &str) -> String {
    let mut t = format!(
        "### Drop rate of blocklisted sources over veth (Mpps, median of {} rounds x {} frames per arm)\n\n\
         Random sources drawn from the list (uniform, so caches are cold for the large lists). \
         One CPU generates (BPF_PROG_RUN live frames, XDP_TX) and receives (the veth's NAPI); the \
         rate is received packets over the kernel's time for the run, so every arm's figure \
         includes the generator's share (the bare XDP_DROP arm is nearly all generator). \
         Reference: the least an XDP hash blocklist can do (minimal parse, one lookup in a hash \
         sized like the sentinel's blocklist, drop on a hit; no counting). nftables: netdev \
         ingress `saddr @set drop`; iptables: raw PREROUTING `-m set --match-set` ({iptables}); \
         both behind an XDP_PASS program. Ratios are medians of the per-round ratios; the range \
         of the per-round ratio against bare XDP_DROP is in brackets.\n\n\
         | list | sentinel | bare XDP_DROP | reference | nftables | iptables+ipset | vs bare (>= 0.90) | vs reference | vs nft (>= 3x) | vs ipset (>= 3.5x) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        params.rounds, params.frames
    );
    let verdict = |r: f64, target: f64| {
        if r >= target {
            format!("{r:.2}x met")
        } else {
            format!("{r:.2}x **missed**")
        }
    };
    for r in rows {
        let m: Vec<f64> = r.mpps.iter().map(|v| median(v)).collect();
        let vs = |j: usize| median_ratio(&r.mpps[0], &r.mpps[j]);
        let (lo, hi) = ratio_range(&r.mpps[0], &r.mpps[1]);
        t.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} [{lo:.2}-{hi:.2}] | {:.2}x | {} | {} |\n",
            r.label,
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            verdict(vs(1), 0.90),
            vs(2),
            verdict(vs(3), 3.0),
            verdict(vs(4), 3.5),
        ));
    }
    t
}
