//! `cargo xtask bench datapath`: the XDP sentinel against its peers, written into the
//! `datapath` section of BENCHMARKS.md. See `sentinel_tests::bench` for what each part measures.
//!
//! Usage: `bench_datapath [--quick] [--only cost,memory,droprate,load]` (root).

use std::{net::IpAddr, time::Instant};

use anyhow::Context as _;
use sentinel::{
    datapath::{Datapath, LoadOptions, sys, unload},
    lab::{TempDir, TempPins, Topology},
};
use sentinel_tests::{
    bench::{
        PinnedCpu, addrs, cost,
        droprate::{self, ListSpec},
        load, loadavg, memory,
    },
    bench_report,
};

struct Opts {
    quick: bool,
    only: Option<Vec<String>>,
}

impl Opts {
    fn wants(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == part))
    }
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut opts = Opts {
        quick: false,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--only" => {
                let v = args.next().context("--only needs a list")?;
                opts.only = Some(v.split(',').map(str::to_owned).collect());
            }
            "-h" | "--help" => {
                println!("bench_datapath [--quick] [--only cost,memory,droprate,load]");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(opts)
}

fn iptables_backend() -> String {
    std::process::Command::new("iptables")
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "iptables".into())
}

fn main() -> anyhow::Result<()> {
    sentinel_tests::require_root();
    let opts = parse_args()?;
    // Both removed on drop, also when a phase fails or panics.
    let pins = TempPins::new("bench-dp");
    let work = TempDir::new("sentinel-bench-dp")?;
    let result = run(&opts, pins.path(), work.path());
    drop((work, pins));
    let body = result?;
    println!("\n{body}");
    if opts.only.is_none() {
        bench_report::write_section("datapath", &body)?;
    } else {
        println!("(--only: BENCHMARKS.md left unchanged)");
    }
    Ok(())
}

fn run(opts: &Opts, pin: &std::path::Path, work: &std::path::Path) -> anyhow::Result<String> {
    let started = Instant::now();
    let load_before = loadavg();
    let cpus = sys::possible_cpus()?;
    // The generator and the receiver's softirq share this CPU.
    let _pinned = PinnedCpu::new(cpus.saturating_sub(1))?;
    let mut sections = Vec::new();

    if opts.wants("cost") || opts.wants("memory") {
        let (rounds, repeat) = if opts.quick {
            (5, 100_000)
        } else {
            (11, 500_000)
        };
        let _ = unload(pin);
        let mut dp = Datapath::load(&LoadOptions::new(pin))?;
        let empty = memory::snapshot(&dp)?;
        if opts.wants("cost") {
            let rows = cost::run(&mut dp, rounds, repeat)?;
            sections.push(cost::table(&rows, rounds, repeat));
        } else {
            cost::fill_lists(&mut dp)?;
        }
        if opts.wants("memory") {
            let filled = memory::snapshot(&dp)?;
            sections.push(memory::table(&empty, &filled, cpus));
        }
        drop(dp);
        unload(pin)?;
    }

    let need_topo = opts.wants("droprate") || opts.wants("load");
    let topo = if need_topo {
        Some(Topology::new()?)
    } else {
        None
    };
    let v6_1m: Vec<IpAddr> = if need_topo {
        addrs::v6(1_000_000, 3)
            .into_iter()
            .map(IpAddr::V6)
            .collect()
    } else {
        Vec::new()
    };

    if opts.wants("droprate") {
        let topo = topo.as_ref().expect("topology");
        let params = droprate::Params {
            rounds: if opts.quick { 2 } else { 5 },
            frames: if opts.quick { 300_000 } else { 2_000_000 },
        };
        let v4 = |n: usize| -> Vec<IpAddr> {
            addrs::v4(n, n as u64).into_iter().map(IpAddr::V4).collect()
        };
        let mut specs = vec![
            ListSpec {
                label: "1k IPv4".into(),
                list: v4(1_000),
            },
            ListSpec {
                label: "100k IPv4".into(),
                list: v4(100_000),
            },
        ];
        if !opts.quick {
            specs.push(ListSpec {
                label: "100k IPv6".into(),
                list: v6_1m[..100_000].to_vec(),
            });
        }
        specs.push(ListSpec {
            label: "1M IPv6".into(),
            list: v6_1m.clone(),
        });
        let rows = droprate::run(topo, &specs, &params, pin, work)?;
        sections.push(droprate::table(&rows, &params, &iptables_backend()));
    }

    if opts.wants("load") {
        let topo = topo.as_ref().expect("topology");
        let rounds = if opts.quick { 1 } else { 3 };
        let r = load::run(topo, &v6_1m, rounds, pin, work)?;
        sections.push(load::table(&r, rounds));
    }
    drop(topo);

    let mut body = format!(
        "Regenerate: `cargo xtask bench datapath` (root; `--quick` for a short run). \
         Load average (1/5/15 min) before: {load_before}; after: {}; run took {:.0} s. \
         Other builds and tests may share the machine: the interleaved arms and paired ratios are \
         what to trust, the absolute figures only roughly.\n\n",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    body.push_str(&sections.join("\n"));
    Ok(body)
}
