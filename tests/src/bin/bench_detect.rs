//! `cargo xtask bench detect`: all models together on a synthetic stream of enriched
//! transactions (benign routines, logins with honest failures, and a sprinkle of attacks), in
//! transactions per second on one core, against a peer measured in the same run on the same
//! transactions: parsing their HTTP request and response heads with `httparse` (the floor of what
//! the capture pipeline does per transaction). Rounds are interleaved; figures are medians.
//!
//! Then memory: one million distinct principals (each a login from its own address and a request
//! with the token it got), engine's own accounting and the process's resident set growth, per
//! principal.
//!
//! `--quick`: fewer rounds and 200k principals for the memory part.

use std::time::Instant;

use sentinel::lab::sim::Rng;

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
fn stream(n: usize, users: u64, span_s: u64) -> Vec<Observation> {
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
                    o.req_body = br#"{"to":"bob","amount":50}"#.to_vec();
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
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
    let d = median(&mut detect);
    let p = median(&mut peer);
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
        "All models together ({} detectors, {} principals warm, {} alerts in the timed rounds), \
         one core, {} rounds of {} transactions, medians:\n\n\
         | arm | per transaction | transactions/s |\n| --- | ---: | ---: |\n\
         | models (`Engine::observe`) | {:.2} µs | {:.0}k |\n\
         | peer: httparse request + response heads | {:.2} µs | {:.0}k |\n\n\
         Models cost {:.1}x the peer's head parsing.\n\n\
         Memory with {} distinct principals (a login from its own address, then a request with \
         its token): {:.0} bytes per principal by the engine's own accounting, {:.0} bytes by \
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
