//! `cargo xtask bench capture` (replay part): throughput of the whole userspace capture pipeline
//! (pcap parsing, TCP reassembly, HTTP parsing and transaction building) on one core, against
//! httparse alone parsing the same requests and responses from pre-split buffers (the parsing
//! limit), in the same run, interleaved, medians; and `tshark -r FILE -Y http` wall time on the
//! same file as a reference. Self-contained: the capture is generated in a temporary directory
//! (realistic API traffic: ~720-byte requests with bearer tokens and JSON bodies, JSON
//! responses, keep-alive connections, MSS-sized segments and ACKs over Ethernet).
//!
//! Needs no privileges. `--quick` uses a smaller capture and fewer rounds.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use sentinel::{
    capture::{CaptureReader, Segment, pcap::Link, synth::Conversation, synth::write_pcap},
    lab::sim::Rng,
    pipeline::{Pipeline, PipelineSettings},
};
use sentinel_tests::bench::{cpu_time, median, pin_to_one_cpu};

const MS: u64 = 1_000_000;
const MSS: usize = 1448;

const PATHS: [&str; 6] = [
    "/api/v1/accounts/{}/transactions",
    "/api/v1/transfers",
    "/api/v1/accounts/{}",
    "/api/v1/cards/{}/limits",
    "/api/v1/payees",
    "/api/v1/session/refresh",
];

fn request(rng: &mut Rng, i: u64) -> Vec<u8> {
    let path = PATHS[(i % PATHS.len() as u64) as usize]
        .replace("{}", &(10_000 + rng.below(90_000)).to_string());
    let token: String = (0..280)
        .map(|k| (b'A' + ((i as usize * 7 + k * 13) % 26) as u8) as char)
        .collect();
    let body = format!(
        "{{\"from_account\":\"{}\",\"to_account\":\"{}\",\"amount\":{}.{:02},\"currency\":\"SAR\",\"reference\":\"inv-{}\",\"note\":\"monthly rent\"}}",
        100_000 + rng.below(900_000),
        100_000 + rng.below(900_000),
        rng.below(5000),
        rng.below(100),
        i
    );
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: api.bank.example\r\nUser-Agent: BankApp/5.12.1 (iPhone; iOS 17.4; Scale/3.00)\r\nAccept: application/json\r\nAccept-Language: ar-SA,en;q=0.8\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.{token}\r\nContent-Type: application/json\r\nX-Request-Id: {:016x}\r\nContent-Length: {}\r\n\r\n",
        rng.next_u64(),
        body.len()
    );
    let mut r = head.into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

fn response(rng: &mut Rng) -> Vec<u8> {
    let items = 1 + rng.below(12);
    let mut body = String::from("{\"status\":\"ok\",\"items\":[");
    for k in 0..items {
        if k > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            "{{\"id\":{},\"date\":\"2026-11-{:02}T10:{:02}:00Z\",\"amount\":-{}.{:02},\"merchant\":\"Merchant {}\",\"category\":\"groceries\"}}",
            rng.below(1_000_000),
            1 + rng.below(28),
            rng.below(60),
            rng.below(900),
            rng.below(100),
            rng.below(500)
        ));
    }
    body.push_str("]}");
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nDate: Sat, 28 Nov 2026 10:00:00 GMT\r\nContent-Type: application/json; charset=utf-8\r\nCache-Control: no-store\r\nX-Request-Id: {:016x}\r\nContent-Length: {}\r\n\r\n",
        rng.next_u64(),
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

/// The capture and the HTTP messages in it (for the httparse arm).
struct Workload {
    file: PathBuf,
    file_bytes: u64,
    requests: Vec<Vec<u8>>,
    responses: Vec<Vec<u8>>,
    http_bytes: u64,
    exchanges: u64,
}

fn generate(dir: &Path, conns: u64, per_conn: u64) -> anyhow::Result<Workload> {
    let mut rng = Rng::new(0x5eed_1234_abcd_0001);
    let server = "198.18.0.1:8080".parse()?;
    let t0 = 1_764_000_000_000 * MS;
    let mut requests = Vec::new();
    let mut responses = Vec::new();
    let mut segs: Vec<Segment> = Vec::new();
    // Connections 16 at a time, their segments interleaved as on a busy server.
    let batch = 16;
    let mut c = 0;
    while c < conns {
        let n = batch.min(conns - c);
        let mut convs: Vec<Conversation> = (0..n)
            .map(|k| {
                let id = c + k;
                let client = format!(
                    "198.18.{}.{}:{}",
                    1 + id / 250 % 250,
                    1 + id % 250,
                    20_000 + id % 40_000
                )
                .parse()
                .expect("address");
                Conversation::open(client, server, t0 + id * MS)
            })
            .collect();
        for e in 0..per_conn {
            for (k, conv) in convs.iter_mut().enumerate() {
                let t = t0 + (c + k as u64) * MS + (e + 1) * 20 * MS;
                let req = request(&mut rng, c * per_conn + e);
                let resp = response(&mut rng);
                conv.send_mss(true, &req, MSS, t);
                conv.ack(false, t + MS / 10);
                conv.send_mss(false, &resp, MSS, t + 2 * MS);
                conv.ack(true, t + 2 * MS + MS / 10);
                requests.push(req);
                responses.push(resp);
            }
        }
        let batch_segs: Vec<Vec<Segment>> = convs
            .into_iter()
            .map(|mut conv| {
                let t = conv.segments.last().map_or(t0, |s| s.ts_ns) + MS;
                conv.fin(true, t);
                conv.fin(false, t);
                conv.ack(true, t);
                conv.segments
            })
            .collect();
        // Merge by timestamp (stable: each connection keeps its order).
        let mut idx = vec![0usize; batch_segs.len()];
        loop {
            let mut best: Option<usize> = None;
            for (k, s) in batch_segs.iter().enumerate() {
                if let Some(seg) = s.get(idx[k])
                    && best.is_none_or(|b| seg.ts_ns < batch_segs[b][idx[b]].ts_ns)
                {
                    best = Some(k);
                }
            }
            let Some(b) = best else { break };
            segs.push(batch_segs[b][idx[b]].clone());
            idx[b] += 1;
        }
        c += n;
    }
    let file = dir.join("replay-bench.pcap");
    let f = std::io::BufWriter::new(std::fs::File::create(&file)?);
    write_pcap(f, Link::Ethernet, &segs, false)?;
    let file_bytes = std::fs::metadata(&file)?.len();
    let http_bytes = requests
        .iter()
        .chain(&responses)
        .map(|m| m.len() as u64)
        .sum();
    Ok(Workload {
        file,
        file_bytes,
        exchanges: requests.len() as u64,
        requests,
        responses,
        http_bytes,
    })
}

thread_local! {
    /// Wall time of the last pipeline run (for the comparison with tshark, which is timed by
    /// the wall clock).
    static WALL: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// The whole pipeline over the file: returns (CPU time, transactions).
fn run_pipeline(w: &Workload) -> anyhow::Result<(Duration, u64)> {
    let (start, wall) = (cpu_time(), Instant::now());
    let mut reader = CaptureReader::open(&w.file)?;
    let mut pipe = Pipeline::new(PipelineSettings::default());
    let mut n = 0u64;
    let mut check = 0u64;
    while let Some(seg) = reader.next_segment()? {
        pipe.push(seg);
        for t in pipe.drain() {
            n += 1;
            check = check.wrapping_add(t.status().unwrap_or(0) as u64 + t.resp_bytes);
        }
    }
    pipe.finish();
    for t in pipe.drain() {
        n += 1;
        check = check.wrapping_add(t.status().unwrap_or(0) as u64);
    }
    std::hint::black_box(check);
    WALL.with(|c| c.set(wall.elapsed()));
    Ok((cpu_time() - start, n))
}

/// httparse alone on the same messages, pre-split (heads only: httparse does not frame bodies).
fn run_httparse(w: &Workload) -> (Duration, u64) {
    let start = cpu_time();
    let mut n = 0u64;
    for (req, resp) in w.requests.iter().zip(&w.responses) {
        let mut h = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut h);
        if let Ok(httparse::Status::Complete(len)) = r.parse(req) {
            n += len as u64;
        }
        let mut h = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut h);
        if let Ok(httparse::Status::Complete(len)) = r.parse(resp) {
            n += len as u64;
        }
    }
    std::hint::black_box(n);
    (cpu_time() - start, w.exchanges)
}

fn tshark(w: &Workload) -> Option<(Duration, u64)> {
    let start = Instant::now();
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(&w.file)
        .args(["-Y", "http", "-T", "fields", "-e", "frame.number"])
        .output()
        .ok()?;
    let el = start.elapsed();
    if !out.status.success() {
        eprintln!(
            "tshark failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let lines = out.stdout.iter().filter(|b| **b == b'\n').count() as u64;
    Some((el, lines))
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e9
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (conns, per_conn, rounds) = if quick { (400, 25, 5) } else { (2000, 30, 9) };
    let cpu = pin_to_one_cpu();
    let dir = sentinel::lab::TempDir::new("sentinel-bench-replay")?;
    let result = bench(dir.path(), conns, per_conn, rounds, cpu);
    drop(dir);
    let table = result?;
    println!("{table}");
    sentinel_tests::bench_report::write_section("capture-replay", &table)?;
    Ok(())
}

fn bench(
    dir: &Path,
    conns: u64,
    per_conn: u64,
    rounds: usize,
    cpu: Option<usize>,
) -> anyhow::Result<String> {
    let w = generate(dir, conns, per_conn)?;
    println!(
        "capture: {} exchanges on {} connections, {:.1} MB file, {:.1} MB of HTTP",
        w.exchanges,
        conns,
        w.file_bytes as f64 / 1e6,
        w.http_bytes as f64 / 1e6
    );
    // Warm the page cache and both code paths.
    let (_, n) = run_pipeline(&w)?;
    anyhow::ensure!(
        n == w.exchanges,
        "pipeline found {n} transactions, expected {}",
        w.exchanges
    );
    run_httparse(&w);
    let (mut pipe_s, mut parse_s, mut wall_s) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate which arm goes first.
        if r % 2 == 0 {
            pipe_s.push(run_pipeline(&w)?.0.as_secs_f64());
            parse_s.push(run_httparse(&w).0.as_secs_f64());
        } else {
            parse_s.push(run_httparse(&w).0.as_secs_f64());
            pipe_s.push(run_pipeline(&w)?.0.as_secs_f64());
        }
        wall_s.push(WALL.with(|c| c.get()).as_secs_f64());
    }
    let (p, h, pw) = (median(&pipe_s), median(&parse_s), median(&wall_s));
    let tshark = tshark(&w);
    let mut t = String::new();
    t.push_str("### Replay throughput (whole userspace pipeline, one core)\n\n");
    t.push_str(&format!(
        "Generated capture: {} HTTP/1.1 exchanges (~{} B requests with bearer tokens and JSON bodies, JSON responses) on {} keep-alive connections, Ethernet, MSS segments with ACKs: {:.1} MB of pcap carrying {:.1} MB of HTTP. Pinned to CPU {}; arms timed by thread CPU time, {} interleaved rounds, medians; tshark by wall time.\n\n",
        w.exchanges,
        w.requests.iter().map(|r| r.len()).sum::<usize>() / w.requests.len().max(1),
        conns,
        w.file_bytes as f64 / 1e6,
        w.http_bytes as f64 / 1e6,
        cpu.map_or("(not pinned)".to_string(), |c| c.to_string()),
        rounds
    ));
    t.push_str(
        "| arm | CPU time | HTTP Gbit/s | pcap Gbit/s | transactions/s |\n|---|---|---|---|---|\n",
    );
    t.push_str(&format!(
        "| sentinel pipeline (pcap + reassembly + HTTP + transactions) | {:.3} s | {:.2} | {:.2} | {:.0} |\n",
        p,
        gbps(w.http_bytes, p),
        gbps(w.file_bytes, p),
        w.exchanges as f64 / p
    ));
    t.push_str(&format!(
        "| httparse alone (same messages, pre-split, heads only) | {:.3} s | {:.2} | - | {:.0} |\n",
        h,
        gbps(w.http_bytes, h),
        w.exchanges as f64 / h
    ));
    if let Some((el, lines)) = &tshark {
        t.push_str(&format!(
            "| `tshark -r FILE -Y http` (reference, one run, its own threads) | {:.2} s | {:.3} | {:.3} | {:.0} |\n",
            el.as_secs_f64(),
            gbps(w.http_bytes, el.as_secs_f64()),
            gbps(w.file_bytes, el.as_secs_f64()),
            w.exchanges as f64 / el.as_secs_f64()
        ));
        println!("tshark matched {lines} HTTP frames");
    } else {
        t.push_str("| `tshark -r FILE -Y http` | not run (tshark missing or failed) | | | |\n");
    }
    let ratio = h / p;
    let pipe_gbps = gbps(w.http_bytes, p);
    t.push_str(&format!(
        "\nPipeline / httparse-alone: **{:.0}%** (target >= 40%); pipeline {:.2} Gbit/s of HTTP (target >= 1 Gbit/s): {}.{}\n",
        ratio * 100.0,
        pipe_gbps,
        if ratio >= 0.4 && pipe_gbps >= 1.0 { "both met" } else { "NOT met" },
        tshark
            .as_ref()
            .map(|(el, _)| format!(
                " By wall time (machine shared), the pipeline took {:.3} s ({:.2} Gbit/s of HTTP) and tshark {:.0}x that.",
                pw,
                gbps(w.http_bytes, pw),
                el.as_secs_f64() / pw
            ))
            .unwrap_or_default()
    ));
    Ok(t)
}
