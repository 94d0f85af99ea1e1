//! `cargo xtask eval`: the labelled evaluation of the detection models.
//!
//! For each seed: simulate the world (benign population of the demo bank and attack scenarios of
//! every kind, `sentinel::lab::sim` and `lab::attacks`), write it as `traffic.pcap` with its
//! ground truth `truth.json` and a GeoIP database `geo.mmdb` (MaxMind layout, documentation
//! ranges) under `target/eval/seed-N/`, replay it through `$SENTINEL_BIN replay --emit alerts
//! --geoip-db geo.mmdb` (the released binary, exactly as a user would), keep its output as
//! `alerts.jsonl`, and score the alerts against the truth (`lab::eval`). Prints a table per kind
//! (scenarios detected, time or attempts to the first alert, benign principals flagged) and
//! writes it into BENCHMARKS.md (section `eval`) unless `--quick` or `--no-write`.
//!
//! `--seed N` (repeatable; default 1 to 5, 11 and 12: the models were tuned looking at seeds 1
//! to 5 and 7, and checked against the results of 11 and 12), `--quick` (400 users, 10 scenarios
//! per kind, one seed unless given), `--out DIR`.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, bail};
use sentinel::lab::{
    eval::{Score, Seen, Truth, details, flagged_share, kind_met, score, table, write_world},
    sim::{SimConfig, simulate},
};
use sentinel_tests::bench_report::{workspace_root, write_section};

struct Args {
    seeds: Vec<u64>,
    quick: bool,
    write: bool,
    out: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        seeds: Vec::new(),
        quick: false,
        write: true,
        out: workspace_root().join("target/eval"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--seed" => {
                let v = it.next().context("--seed needs a number")?;
                a.seeds.push(
                    v.parse()
                        .with_context(|| format!("--seed {v:?}: not a number"))?,
                );
            }
            "--quick" => a.quick = true,
            "--no-write" => a.write = false,
            "--out" => a.out = it.next().context("--out needs a directory")?.into(),
            "-h" | "--help" => {
                println!("usage: eval [--seed N]... [--quick] [--no-write] [--out DIR]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if a.seeds.is_empty() {
        a.seeds = if a.quick {
            vec![1]
        } else {
            vec![1, 2, 3, 4, 5, 11, 12]
        };
    }
    if a.quick {
        a.write = false;
    }
    Ok(a)
}

fn run_seed(a: &Args, seed: u64, sentinel: &PathBuf) -> anyhow::Result<(SimConfig, usize, Score)> {
    let cfg = SimConfig {
        seed,
        ..if a.quick {
            SimConfig {
                users: 400,
                per_kind: 10,
                ..SimConfig::default()
            }
        } else {
            SimConfig::default()
        }
    };
    let dir = a.out.join(format!("seed-{seed}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let t = Instant::now();
    let world = simulate(&cfg);
    let files = write_world(&world, &dir)?;
    let truth = Truth {
        config: &cfg,
        scenarios: &world.scenarios,
        benign: &world.benign,
    };
    std::fs::write(dir.join("truth.json"), serde_json::to_vec_pretty(&truth)?)?;
    println!(
        "seed {seed}: {} exchanges, {} scenarios, {} benign principals, written in {:.1} s to {}",
        world.exchanges.len(),
        world.scenarios.len(),
        world.benign.len(),
        t.elapsed().as_secs_f64(),
        dir.display()
    );
    let t = Instant::now();
    let alerts_path = dir.join("alerts.jsonl");
    let out = std::fs::File::create(&alerts_path)?;
    let status = Command::new(sentinel)
        .arg("replay")
        .arg(&files.pcap)
        .args(["--emit", "alerts", "--geoip-db"])
        .arg(&files.geo)
        .stdout(Stdio::from(out))
        .status()
        .with_context(|| format!("running {}", sentinel.display()))?;
    if !status.success() {
        bail!("sentinel replay failed: {status}");
    }
    let text = std::fs::read_to_string(&alerts_path)?;
    let alerts: Vec<Seen> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(Seen::parse)
        .collect::<anyhow::Result<_>>()
        .context("reading sentinel's alerts")?;
    println!(
        "seed {seed}: replay raised {} alerts in {:.1} s",
        alerts.len(),
        t.elapsed().as_secs_f64()
    );
    let s = score(&world.scenarios, &world.benign, &alerts);
    // What went wrong, for whoever tunes the models: the alerts on benign users and the
    // scenarios missed.
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let flagged: String = s
        .false_alerts
        .iter()
        .map(|&i| format!("{}\n", lines[i]))
        .collect();
    std::fs::write(dir.join("flagged.jsonl"), flagged)?;
    let missed: Vec<&sentinel::lab::sim::Scenario> = world
        .scenarios
        .iter()
        .filter(|sc| {
            s.kinds
                .get(&sc.kind)
                .is_some_and(|k| k.missed.contains(&sc.id))
        })
        .collect();
    std::fs::write(dir.join("missed.json"), serde_json::to_vec_pretty(&missed)?)?;
    Ok((cfg, world.exchanges.len(), s))
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let sentinel = sentinel::lab::sentinel_bin();
    let mut runs = Vec::new();
    let mut sizes = Vec::new();
    for &seed in &a.seeds {
        let (cfg, exchanges, s) = run_seed(&a, seed, &sentinel)?;
        sizes.push((cfg, exchanges));
        runs.push((seed, s));
    }
    let tbl = table(&runs);
    let det = details(&runs);
    println!("\n{tbl}\n{det}");
    let all_met = runs
        .iter()
        .all(|(_, s)| s.kinds.iter().all(|(k, ks)| kind_met(*k, ks)) && flagged_share(s) <= 0.001);
    if a.write {
        let (cfg, exchanges) = &sizes[0];
        let body = format!(
            "### Detection evaluation (`cargo xtask eval`)\n\n\
             Each seed simulates {} days of the demo bank: {} users (home cities in 12 countries, \
             mobile and web clients, one or two daily sessions, honest password mistakes, \
             expired tokens, trips with a day in transit, a shared office NAT, 10% on IPv6, 5% \
             business users with long sessions) plus anonymous visitors, and {} attack \
             scenarios of each of 14 kinds at random times over the last {} days, interleaved \
             with the benign traffic (~{} exchanges per seed). The capture is replayed through \
             `sentinel replay --emit alerts --geoip-db` (release build) and scored against the \
             ground truth. A scenario is detected by an alert of its kind naming one of its \
             sources or principals from a second before its first attack request (a login or \
             a look around before it does not count) to 10 minutes after its last request. \
             Volumetric scenarios run at attack rates (brute force 2.8-10 attempts/s, the \
             reference case's rate and up; stuffing 8-50/s; rate abuse 30-150/s; enumeration \
             15-60/s; scraping 30-100/s). The models were tuned looking at seeds 1 to 5 (and 7, \
             the host test's) and at the results, not the details, of seeds 11 and 12; seeds \
             run for the first time after the last change are named in the notes below.\n\n{tbl}\n{det}\nAll targets met on every seed: **{}**.\n",
            cfg.days,
            cfg.users,
            cfg.per_kind,
            cfg.attack_days,
            exchanges,
            if all_met { "yes" } else { "no" },
        );
        write_section("eval", &body)?;
        println!("BENCHMARKS.md: section eval written");
    }
    Ok(())
}
