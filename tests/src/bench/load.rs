//! Loading a 1M-entry blocklist: `sentinel block add --file` through a running daemon (end to
//! end: the CLI reads and parses the file, sends it over the control socket, the daemon writes
//! the maps with batch updates), the same list through `verdict::lists::add` in-process (map
//! writes only), `nft -f` of a set with the same elements and `ipset restore` of the same list.
//! Each round starts from empty structures; arms interleaved, order rotated per round.

use std::{net::IpAddr, path::Path, time::Instant};

use anyhow::Context as _;
use aya::maps::IterableMap as _;
use sentinel::{
    control::api::{AddRequest, ListKind},
    datapath::{Datapath, LoadOptions, Maps, unload},
    lab::{Daemon, Topology},
    verdict::lists,
};
use sentinel_common::{AddrKey, RuleValue};

use super::{median, median_ratio, netfilter, run_in};

/// Seconds per round for each arm.
#[derive(Default)]
pub struct LoadResult {
    /// Entries.
    pub entries: usize,
    /// `sentinel block add --file` through the daemon.
    pub cli: Vec<f64>,
    /// `lists::add` in-process.
    pub raw: Vec<f64>,
    /// `nft -f`.
    pub nft: Vec<f64>,
    /// `ipset restore`.
    pub ipset: Vec<f64>,
}

fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, f64)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64()))
}

/// Runs `rounds` rounds with `list`. The daemon runs in the topology's server namespace, nft and
/// ipset in its client namespace (nothing else uses them by then).
pub fn run(
    topo: &Topology,
    list: &[IpAddr],
    rounds: usize,
    pin_dir: &Path,
    work: &Path,
) -> anyhow::Result<LoadResult> {
    let txt = work.join("blocklist.txt");
    let nft = work.join("blocklist.nft");
    let ips = work.join("blocklist.ipset");
    {
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&txt)?);
        writeln!(f, "# benchmark blocklist: {} addresses", list.len())?;
        for a in list {
            writeln!(f, "{a}")?;
        }
        f.flush()?;
    }
    netfilter::write_nft_file(&nft, list)?;
    netfilter::write_ipset_file(&ips, list)?;
    let targets: Vec<String> = list.iter().map(|a| a.to_string()).collect();
    let n = list.len();
    let mut res = LoadResult {
        entries: n,
        ..Default::default()
    };
    println!("loading {n} entries, {rounds} rounds");
    for round in 0..rounds {
        for k in 0..4 {
            match (k + round) % 4 {
                0 => {
                    let daemon = Daemon::start(&topo.server, &[&topo.server_if], &[])?;
                    let file = txt.to_string_lossy().into_owned();
                    let (_, s) = timed(|| daemon.cli_ok(&["block", "add", "--file", &file]))?;
                    let maps = Maps::open_pinned(daemon.pins())?;
                    let have =
                        Maps::count_hash::<AddrKey>(maps.block_hash.map(), size_of::<RuleValue>())?;
                    anyhow::ensure!(have == n, "daemon holds {have} of {n} entries");
                    drop(maps);
                    drop(daemon);
                    println!("  round {round} sentinel block add --file  {s:>6.2} s");
                    res.cli.push(s);
                }
                1 => {
                    let _ = unload(pin_dir);
                    let mut dp = Datapath::load(&LoadOptions::new(pin_dir))?;
                    let req = AddRequest {
                        targets: targets.clone(),
                        ..Default::default()
                    };
                    let (r, s) = timed(|| Ok(lists::add(&mut dp.maps, ListKind::Block, &req)?))?;
                    anyhow::ensure!(r.added == n, "lists::add wrote {} of {n}", r.added);
                    drop(dp);
                    unload(pin_dir)?;
                    println!("  round {round} lists::add                 {s:>6.2} s");
                    res.raw.push(s);
                }
                2 => {
                    let (_, s) = timed(|| {
                        run_in(&topo.client, "nft", &["-f", &nft.to_string_lossy()])
                            .context("nft -f")
                    })?;
                    run_in(
                        &topo.client,
                        "nft",
                        &["delete", "table", "netdev", netfilter::NFT_TABLE],
                    )?;
                    println!("  round {round} nft -f                     {s:>6.2} s");
                    res.nft.push(s);
                }
                _ => {
                    let (_, s) = timed(|| {
                        run_in(
                            &topo.client,
                            "ipset",
                            &["restore", "-f", &ips.to_string_lossy()],
                        )
                        .context("ipset restore")
                    })?;
                    let listed = run_in(&topo.client, "ipset", &["list", "-t", netfilter::SET])?;
                    run_in(&topo.client, "ipset", &["destroy", netfilter::SET])?;
                    anyhow::ensure!(
                        listed.contains(&format!("Number of entries: {n}")),
                        "ipset does not hold {n} entries: {listed}"
                    );
                    println!("  round {round} ipset restore              {s:>6.2} s");
                    res.ipset.push(s);
                }
            }
        }
    }
    for f in [&txt, &nft, &ips] {
        let _ = std::fs::remove_file(f);
    }
    Ok(res)
}

/// The table for BENCHMARKS.md.
pub fn table(r: &LoadResult, rounds: usize) -> String {
    let row = |name: &str, v: &[f64]| -> String {
        let nft = median_ratio(&r.nft, v);
        let ips = median_ratio(&r.ipset, v);
        let met = if nft > 1.0 && ips > 1.0 {
            "faster than both: met"
        } else {
            "faster than both: **missed**"
        };
        format!(
            "| {name} | {:.2} | {nft:.2}x | {ips:.2}x | {met} |\n",
            median(v)
        )
    };
    let mut t = format!(
        "### Loading {} blocklist entries (IPv6, s, median of {rounds} rounds)\n\n\
         Peers: `nft -f` of a netdev-table set (`size` set to the list) with the same elements; \
         `ipset restore` of a `hash:ip family inet6` set (hashsize and maxelem set to the list). \
         Speed-up = peer time / sentinel time, median of the per-round ratios. \
         nft -f: {:.2} s; ipset restore: {:.2} s.\n\n\
         | sentinel path | seconds | speed-up vs nft -f | speed-up vs ipset restore | target |\n|---|---|---|---|---|\n",
        r.entries,
        median(&r.nft),
        median(&r.ipset),
    );
    t.push_str(&row(
        "`sentinel block add --file` via the daemon (end to end)",
        &r.cli,
    ));
    t.push_str(&row("`lists::add` in-process (map writes)", &r.raw));
    t
}
