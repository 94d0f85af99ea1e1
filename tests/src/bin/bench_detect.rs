//! `cargo xtask bench detect`: first, the issue's two phrases as written, on a realistic capture:
//! the evaluation simulator's world (`sentinel::lab::sim`, a reduced one: eval's `--quick`
//! population, benign users of the demo bank and attack scenarios of every kind) written as a
//! pcap with its GeoIP database in a temporary directory, replayed in-process in two arms, pinned
//! to one CPU and timed by the thread's CPU time, interleaved rounds, medians:
//!
//! - (a) the capture pipeline alone: pcap -> reassembly -> HTTP -> transactions
//!   (`sentinel::replay::replay` with a sink that drops them);
//! - (b) the whole replay: the same plus `sentinel::analyze::Analyzer` (enrichment, every model,
//!   ticks in stream time), through `sentinel::replay::alerts`, the driver `sentinel replay
//!   --emit alerts --geoip-db` runs, with a sink that counts the alerts instead of printing them.
//!
//! A third arm, (e), runs the pipeline and enrichment without the models, to split the analysis.
//!
//! "From replay" throughput is (b)'s transactions per CPU second; the analysis costs (b) - (a)
//! per transaction, compared with (a). Before timing, `sentinel replay FILE --emit alerts
//! --geoip-db DB` (the release binary) must give the same alert count as arm (b).
//!
//! Then all models together on a synthetic stream of enriched
//! transactions (benign routines, logins with honest failures, and a sprinkle of attacks), in
//! transactions per second on one core, against a peer measured in the same run on the same
//! transactions: parsing their HTTP request and response heads with `httparse` (the floor of what
//! the capture pipeline does per transaction). Rounds are interleaved; figures are medians.
//!
//! Then memory: one million distinct principals (each a login from its own address and a request
//! with the token it got, answered with a page naming its owner's e-mail address), engine's own accounting and the process's resident set growth, per
//! principal.
//!
//! `--quick`: fewer rounds, a smaller world and 200k principals for the memory part.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, ensure};
use sentinel::{
    analyze::Analyzer,
    config::Config,
    http::Transaction,
    lab::{
        TempDir,
        eval::{WorldFiles, write_world},
        sim::{Rng, SimConfig, simulate},
    },
    pipeline::PipelineSettings,
    replay::{self, replay},
};
use sentinel_tests::bench::{cpu_time, pin_to_one_cpu};

use sentinel::models::{
    Engine, ModelsConfig, Observation,
    synth::{S, T0, issued_token, login, obs, with_token},
};

const UAS: [&str; 3] = [
    "BankApp/4.2.1 (iPhone; iOS 18.1)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36",
    "BankApp/5.0 (Android 15; Pixel 9)",
];

/// `n` observations from `users` principals over `span_s` seconds, in time order.
fn stream(n: usize, users: u64, span_s: u64) -> Vec<Observation<'static>> {
    let mut r = Rng::new(7);
    let mut v = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = T0 + i * span_s * S / n as u64;
        let u = r.below(users);
        let ip = format!("198.18.{}.{}", (u / 250) % 256, u % 250 + 2);
        let ua = UAS[(u % 3) as usize];
        let o = match r.below(1000) {
            // Logins, a few failing.
            0..=39 => login(t, &ip, &format!("user{u}"), r.below(20) != 0, ua),
            // Injection attempts.
            40..=41 => {
                let mut o = obs(t, "203.0.113.40", "/search");
                o.query = "q=1%27%20OR%20%271%27%3D%271".into();
                o
            }
            // A brute force in progress.
            42..=45 => login(t, "203.0.113.10", "layla", false, "python-requests/2.31"),
            // An id walk.
            46..=50 => {
                let mut o = with_token(
                    obs(
                        t,
                        "198.51.100.60",
                        &format!("/accounts/{}", 200_000 + i % 5000),
                    ),
                    "tok-enum",
                );
                o.endpoint = "/accounts/{id}".into();
                o
            }
            // Routine traffic with the token of the user's last login.
            k => {
                let (path, ep) = match k % 4 {
                    0 => ("/balance".to_string(), "/balance"),
                    1 => (format!("/accounts/{}", 100_000 + u), "/accounts/{id}"),
                    2 => ("/transactions".to_string(), "/transactions"),
                    _ => ("/transfer".to_string(), "/transfer"),
                };
                let mut o = with_token(obs(t, &ip, &path), &format!("tok-user{u}"));
                o.endpoint = ep.into();
                o.user_agent = Some(ua.into());
                if ep == "/transfer" {
                    o.method = "POST".into();
                    o.req_headers
                        .push(("Content-Type".into(), "application/json".into()));
                    o.req_body = br#"{"to":"bob","amount":50}"#[..].into();
                    o.req_bytes = o.req_body.len() as u64;
                }
                o
            }
        };
        v.push(o);
    }
    v
}

/// The HTTP/1.1 request and response heads (and bodies) the transaction would have had.
fn wire(o: &Observation) -> (Vec<u8>, Vec<u8>) {
    let mut req = format!(
        "{} {}{}{} HTTP/1.1\r\n",
        o.method,
        o.path,
        if o.query.is_empty() { "" } else { "?" },
        o.query
    );
    for (n, v) in &o.req_headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", o.req_body.len()));
    let mut req = req.into_bytes();
    req.extend_from_slice(&o.req_body);
    let mut resp = format!(
        "HTTP/1.1 {} OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nDate: Sun, 01 Nov 2026 00:00:00 GMT\r\n\r\n",
        o.status,
        o.resp_body.len()
    )
    .into_bytes();
    resp.extend_from_slice(&o.resp_body);
    (req, resp)
}

fn parse(wire: &[(Vec<u8>, Vec<u8>)]) -> usize {
    let mut ok = 0;
    for (req, resp) in wire {
        let mut h = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Request::new(&mut h);
        if let Ok(httparse::Status::Complete(_)) = r.parse(req) {
            ok += 1;
        }
        let mut h = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut h);
        if let Ok(httparse::Status::Complete(_)) = r.parse(resp) {
            ok += 1;
        }
    }
    ok
}

/// The replay workload: the simulator's world as a capture, and its GeoIP database.
struct Capture {
    pcap: PathBuf,
    geo: PathBuf,
    exchanges: usize,
    scenarios: usize,
    users: usize,
    days: u64,
    bytes: u64,
}

fn capture(dir: &Path, quick: bool) -> anyhow::Result<Capture> {
    // Eval's `--quick` population (400 users, 10 scenarios of each kind); the full run simulates
    // more users so that an arm takes about a second.
    let cfg = SimConfig {
        seed: 1,
        users: if quick { 400 } else { 1000 },
        per_kind: 10,
        ..SimConfig::default()
    };
    let world = simulate(&cfg);
    let WorldFiles { pcap, geo } = write_world(&world, dir)?;
    Ok(Capture {
        bytes: std::fs::metadata(&pcap)?.len(),
        pcap,
        geo,
        exchanges: world.exchanges.len(),
        scenarios: world.scenarios.len(),
        users: cfg.users,
        days: cfg.days,
    })
}

/// Arm (a): the capture pipeline alone, showing each transaction to `each` (a no-op in the timed
/// rounds). Returns (CPU seconds, transactions).
fn arm_pipeline(c: &Capture, mut each: impl FnMut(&Transaction)) -> anyhow::Result<(f64, u64)> {
    let start = cpu_time();
    let mut n = 0u64;
    let mut check = 0u64;
    replay(&c.pcap, PipelineSettings::default(), |t| {
        each(&t);
        n += 1;
        check = check.wrapping_add(t.status().unwrap_or(0) as u64 + t.resp_bytes);
        std::hint::black_box(&t);
        Ok(())
    })?;
    std::hint::black_box(check);
    Ok(((cpu_time() - start).as_secs_f64(), n))
}

/// Arm (e), to split the analysis: the capture pipeline and enrichment alone (the observation
/// the models would see, `Analyzer::observation`), no models. Returns CPU seconds.
fn arm_enrich(c: &Capture) -> anyhow::Result<f64> {
    let cfg = Config::default();
    let mut an = Analyzer::new(&cfg.enrich, &cfg.models, std::slice::from_ref(&c.geo))?;
    let start = cpu_time();
    replay(&c.pcap, PipelineSettings::default(), |t| {
        std::hint::black_box(an.observation(&t));
        Ok(())
    })?;
    Ok((cpu_time() - start).as_secs_f64())
}

/// Arm (b): the whole replay, as `sentinel replay --emit alerts --geoip-db` runs it (default
/// configuration, `replay::alerts`), without printing. The analyzer is built before the timed
/// region. Returns (CPU seconds, transactions, alerts).
fn arm_replay(c: &Capture) -> anyhow::Result<(f64, u64, usize)> {
    let cfg = Config::default();
    let mut an = Analyzer::new(&cfg.enrich, &cfg.models, std::slice::from_ref(&c.geo))?;
    let start = cpu_time();
    let mut raised = 0usize;
    replay::alerts(
        &c.pcap,
        PipelineSettings::default(),
        None,
        &mut an,
        |alerts| {
            raised += alerts.len();
            std::hint::black_box(alerts);
            Ok(())
        },
    )?;
    let cpu = (cpu_time() - start).as_secs_f64();
    Ok((cpu, an.stats().transactions, raised))
}

/// Alerts printed by the release binary on the same file.
fn cli_alerts(c: &Capture) -> anyhow::Result<usize> {
    let bin = sentinel::lab::sentinel_bin();
    let out = Command::new(&bin)
        .arg("replay")
        .arg(&c.pcap)
        .args(["--emit", "alerts", "--geoip-db"])
        .arg(&c.geo)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    ensure!(
        out.status.success(),
        "sentinel replay failed: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count())
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

/// The replay arms: the table of the issue's targets.
fn replay_section(quick: bool, cpu: Option<usize>) -> anyhow::Result<String> {
    let rounds = if quick { 3 } else { 7 };
    let dir = TempDir::new("sentinel-bench-detect")?;
    let t = Instant::now();
    let c = capture(dir.path(), quick)?;
    eprintln!(
        "capture: {} exchanges, {} scenarios, {:.1} MB, written in {:.1} s",
        c.exchanges,
        c.scenarios,
        c.bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    // Sanity: the in-process arm is what the command does.
    let (_, n, alerts) = arm_replay(&c)?;
    let cli = cli_alerts(&c)?;
    assert_eq!(
        cli, alerts,
        "`sentinel replay --emit alerts --geoip-db` printed {cli} alerts, the in-process arm raised {alerts}"
    );
    // The untimed pass of arm (a) also takes the capture's density in stream time: its span, and
    // the transactions that came more than a second after the latest before them (each of those
    // ticks the models).
    let (mut first, mut last, mut gaps) = (u64::MAX, 0u64, 0u64);
    let (_, na) = arm_pipeline(&c, |t| {
        first = first.min(t.ts_ns);
        if last > 0 && t.ts_ns > last + 1_000_000_000 {
            gaps += 1;
        }
        last = last.max(t.ts_ns);
    })?;
    assert_eq!(n, na, "both arms see the same transactions");
    eprintln!("sanity: {n} transactions, {alerts} alerts, same as `sentinel replay`");
    let span_s = last.saturating_sub(first) as f64 / 1e9;
    let (mut a_s, mut e_s, mut b_s) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        // Rotate which arm goes first.
        let (mut a, mut e, mut b) = (0.0, 0.0, 0.0);
        for k in 0..3 {
            match (r + k) % 3 {
                0 => a = arm_pipeline(&c, |_| {})?.0,
                1 => e = arm_enrich(&c)?,
                _ => b = arm_replay(&c)?.0,
            }
        }
        eprintln!(
            "round {r}: pipeline {:.3} s, pipeline + enrichment {:.3} s, whole replay {:.3} s ({:.0}k tx/s)",
            a,
            e,
            b,
            n as f64 / b / 1e3
        );
        a_s.push(a);
        e_s.push(e);
        b_s.push(b);
    }
    let (a, e, b) = (
        sentinel_tests::bench::median(&a_s),
        sentinel_tests::bench::median(&e_s),
        sentinel_tests::bench::median(&b_s),
    );
    let nf = n as f64;
    let (pa, pe, pb) = (a / nf, e / nf, b / nf);
    let analysis = pb - pa;
    // The analysis over the pipeline, per paired round (whole / pipeline - 1), as the other
    // benches' ratios: median and range.
    let ratio = sentinel_tests::bench::median_ratio(&b_s, &a_s) - 1.0;
    let (lo, hi) = sentinel_tests::bench::ratio_range(&b_s, &a_s);
    let (lo, hi) = (lo - 1.0, hi - 1.0);
    let rate = nf / b;
    Ok(format!(
        "### Detection in the replay (the issue's targets)\n\n\
         Capture: the evaluation simulator's world (seed 1, {} users, {} days, {} attack \
         scenarios of 14 kinds; `sentinel::lab::sim`) as a {:.1} MB pcap with its GeoIP \
         database: {} transactions, {} alerts (the same count as `sentinel replay FILE --emit \
         alerts --geoip-db DB` prints, checked). Replayed in-process, pinned to CPU {}, timed \
         by the thread's CPU time, {} interleaved rounds, medians. (a) is the capture pipeline \
         alone (pcap, reassembly, HTTP, transactions: `sentinel replay --emit transactions` \
         without its printing and without the principal lookup it adds); (b) is the whole \
         replay as `sentinel replay --emit alerts --geoip-db` runs it (enrichment, every model, \
         ticks), without printing; the analysis is (b) - (a).\n\n\
         | figure | measured | target | met |\n| --- | ---: | ---: | :---: |\n\
         | transactions/s per core from replay (b) | {:.0}k | >= 300k | {} |\n\
         | analysis / capture pipeline, per transaction | {:.0}% (rounds {:.0}-{:.0}%) | <= 25% | {} |\n\
         | per transaction: capture pipeline (a) | {:.2} µs | | |\n\
         | per transaction: whole replay (b) | {:.2} µs | | |\n\
         | per transaction: analysis (b) - (a) | {:.2} µs | | |\n\
         | of which enrichment: (e) - (a) | {:.2} µs | | |\n\
         | of which models and ticks: (b) - (e) | {:.2} µs | | |\n\n\
         (e) is the capture pipeline and enrichment without the models (`Analyzer::observation` \
         per transaction), a third interleaved arm, to split the analysis; the split is of \
         medians, indicative. The capture is sparse in stream time ({:.2} transactions per \
         second over {:.1} days; {} of the {} transactions, {:.0}%, come more than a second \
         after the one before, and each of those ticks every model, again at each second of \
         the gap in which an activity window fell due), so ticks weigh more per transaction \
         here than in a dense capture.\n\n",
        c.users,
        c.days,
        c.scenarios,
        c.bytes as f64 / 1e6,
        n,
        alerts,
        cpu.map_or("(not pinned)".to_string(), |c| c.to_string()),
        rounds,
        rate / 1e3,
        met(rate >= 300e3),
        ratio * 100.0,
        lo * 100.0,
        hi * 100.0,
        met(ratio <= 0.25),
        pa * 1e6,
        pb * 1e6,
        analysis * 1e6,
        (pe - pa) * 1e6,
        (pb - pe) * 1e6,
        nf / span_s,
        span_s / 86400.0,
        gaps,
        n,
        gaps as f64 * 100.0 / nf,
    ))
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let cpu = pin_to_one_cpu();
    let replay_table = replay_section(quick, cpu)?;
    let rounds = if quick { 5 } else { 11 };
    let chunk = 100_000;
    let users = 20_000;
    let span = 3600;
    let mut data = stream(chunk, users, span);
    let wires: Vec<_> = data.iter().map(wire).collect();
    let mut engine = Engine::new(&ModelsConfig::default())?;
    // Warm the engine: profiles, learned limits, templates of the population.
    for o in &data {
        engine.observe(o);
    }
    let mut detect = Vec::new();
    let mut peer = Vec::new();
    let mut alerts = 0usize;
    for round in 0..rounds {
        for o in &mut data {
            o.ts_ns += span * S;
        }
        let t = Instant::now();
        let mut out = Vec::new();
        for o in &data {
            engine.observe_into(o, &mut out);
        }
        out.extend(engine.tick(data.last().map(|o| o.ts_ns).unwrap_or(0)));
        let d = t.elapsed().as_secs_f64();
        alerts += out.len();
        let t = Instant::now();
        let n = parse(&wires);
        let p = t.elapsed().as_secs_f64();
        assert_eq!(n, 2 * wires.len(), "peer parsed everything");
        detect.push(d / chunk as f64);
        peer.push(p / chunk as f64);
        eprintln!(
            "round {round}: detect {:.0}k tx/s, httparse {:.0}k tx/s",
            1e-3 / (d / chunk as f64),
            1e-3 / (p / chunk as f64)
        );
    }
    let d = sentinel_tests::bench::median(&detect);
    let p = sentinel_tests::bench::median(&peer);
    let stats = engine.stats();

    // Memory: distinct principals, each a login and a request with its token.
    let principals: u64 = if quick { 200_000 } else { 1_000_000 };
    let mut mem = Engine::new(&ModelsConfig::default())?;
    let before = rss_bytes();
    for u in 0..principals {
        let t = T0 + u * 1_000_000;
        let ip = format!("2001:db8::{:x}:{:x}", u >> 16, u & 0xffff);
        let user = format!("user{u:07}");
        let ua = UAS[(u % 3) as usize];
        mem.observe(&login(t, &ip, &user, true, ua));
        let mut o = with_token(
            obs(t + 500_000, &ip, &format!("/accounts/{u}")),
            &issued_token(&user, t),
        );
        o.endpoint = "/accounts/{id}".into();
        // The account page names its owner: every principal receives a personal item, as
        // each customer of a real API sees their own e-mail address, and so holds an exposure
        // count (its window's distinct items).
        let page = format!(r#"{{"id":{u},"owner":"{user}@bank.example"}}"#);
        o.resp_bytes = page.len() as u64;
        o.resp_body = page.into_bytes().into();
        mem.observe(&o);
    }
    let after = rss_bytes();
    let ms = mem.stats();
    let per_rss = after.saturating_sub(before) as f64 / principals as f64;
    let per_own = ms.memory_bytes as f64 / principals as f64;
    let detectors: Vec<String> = ms
        .detectors
        .iter()
        .map(|d| {
            format!(
                "{} {:.0}",
                d.name,
                d.memory_bytes as f64 / principals as f64
            )
        })
        .collect();

    let table = format!(
        "{replay_table}### Models alone and memory\n\n\
         All models together ({} detectors, {} principals warm, {} alerts in the timed rounds), \
         one core, {} rounds of {} transactions, medians:\n\n\
         | arm | per transaction | transactions/s |\n| --- | ---: | ---: |\n\
         | models (`Engine::observe`) | {:.2} µs | {:.0}k |\n\
         | peer: httparse request + response heads | {:.2} µs | {:.0}k |\n\n\
         Models cost {:.1}x the peer's head parsing.\n\n\
         Memory with {} distinct principals (a login from its own address, then a request with \
         its token answered with a page naming the owner's e-mail address, so that each holds an \
         exposure count): {:.0} bytes per principal by the engine's own accounting, {:.0} bytes by \
         resident-set growth; projected for 1M principals: {:.0} MiB (limit 1024 MiB). Per detector \
         (bytes/principal): {}; profiles {}, credential links {}.\n",
        stats.detectors.len(),
        stats.profiles,
        alerts,
        rounds,
        chunk,
        d * 1e6,
        1e-3 / d,
        p * 1e6,
        1e-3 / p,
        d / p,
        principals,
        per_own,
        per_rss,
        per_rss.max(per_own) * 1e6 / (1 << 20) as f64,
        detectors.join(", "),
        ms.profiles,
        ms.links,
    );
    println!("{table}");
    sentinel_tests::bench_report::write_section("detect", &table)?;
    Ok(())
}
