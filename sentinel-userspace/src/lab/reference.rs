//! The reference case of DESIGN.md, end to end, in namespaces: the demo bank behind the daemon
//! (XDP and TC on the server side), a benign population, a user with a Riyadh history, then a
//! brute force of login attempts on her account from a Vietnam address. The root test and
//! `sentinel demo` run it and judge the [`Report`].
//!
//! Addresses: the server 198.18.0.1:8080; benign clients 198.18.0.11 and up; the Riyadh user
//! 192.0.2.10; the attacker 203.0.113.66. A GeoIP database built for the run maps 192.0.2.0/24
//! to Riyadh (SA) and 203.0.113.0/24 to Hanoi (VN). The identity provider's revocation endpoint
//! and the alert webhook are a recording receiver on the server namespace's loopback.
//! Every loop is bounded in count and time; everything is removed on return.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Daemon, NetNs, TempDir, Topology, bank::BankServer, netns::SERVER_V4};
use crate::enrich::geo::testdb::{Layout, Place, build};

/// The bank's port.
pub const PORT: u16 = 8080;
/// The Riyadh user's address (192.0.2.0/24 is Riyadh in the run's GeoIP database).
pub const RIYADH: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The attacker's address (203.0.113.0/24 is Hanoi, Vietnam).
pub const ATTACKER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
/// The receiver (revocation endpoint and alert webhook) in the server namespace.
const RECEIVER: &str = "127.0.0.1:9100";
/// The daemon's metrics address in the server namespace.
pub const METRICS: &str = "127.0.0.1:9464";

/// What to run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The policy in shadow mode: decide and count would-drops, never drop or revoke.
    pub shadow: bool,
    /// Login attempts of the attack.
    pub attempts: u32,
    /// Attempts started per second.
    pub attack_rate: u32,
    /// Benign traffic (and the Riyadh history) before the attack.
    pub warmup: Duration,
    /// Benign clients besides the Riyadh user.
    pub benign_clients: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            shadow: false,
            attempts: 500,
            attack_rate: 100,
            warmup: Duration::from_secs(3),
            benign_clients: 4,
        }
    }
}

/// What happened.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The policy was in shadow mode.
    pub shadow: bool,
    /// Attempts the attacker started.
    pub attempts_sent: u32,
    /// Attempts that got an HTTP answer.
    pub attempts_answered: u32,
    /// Attempts that reached the bank's handler.
    pub attempts_at_server: usize,
    /// Attempts reaching the server per second since the attack started.
    pub arrivals_per_s: Vec<usize>,
    /// The most attempts reaching the server within any one second starting 1 s or more after
    /// the attack started.
    pub max_attempts_per_s_after_1s: usize,
    /// Seconds from the attack's first attempt to the first kernel verdict on the attacker.
    pub first_verdict_s: Option<f64>,
    /// Verdicts on the attacker from the verdict log.
    pub verdicts: Vec<Value>,
    /// The first verdict's throttle rate, packets per second.
    pub throttle_pps: Option<u64>,
    /// Alerts about the attacker (the alert log).
    pub attacker_alerts: Vec<Value>,
    /// Alerts about anybody else (false positives on the benign population).
    pub other_alerts: Vec<Value>,
    /// Tokens the revocation receiver got.
    pub revoked: Vec<String>,
    /// Seconds from the attack's first attempt to the first revocation request.
    pub first_revocation_s: Option<f64>,
    /// Alerts the webhook receiver got.
    pub webhook_alerts: usize,
    /// The tokens the Riyadh user's logins were issued.
    pub riyadh_tokens: Vec<String>,
    /// Requests of the benign clients (the Riyadh user included).
    pub benign_requests: u32,
    /// Of which failed (error status, I/O error or timeout).
    pub benign_errors: u32,
    /// A few of the failures.
    pub benign_error_samples: Vec<String>,
    /// Kernel counters per verdict reason (packets).
    pub counters: Value,
    /// Model state from `sentinel status`.
    pub analysis: Value,
    /// The Prometheus scrape.
    pub metrics: String,
    /// `sentinel explain user:layla --json` after the attack.
    pub explain_layla: Value,
}

impl Report {
    /// Kernel packets counted under `reason`.
    pub fn counter(&self, reason: &str) -> u64 {
        self.counters[reason]["packets"].as_u64().unwrap_or(0)
    }

    /// The first brute-force alert about the attacker.
    pub fn brute_force_alert(&self) -> Option<&Value> {
        self.attacker_alerts
            .iter()
            .find(|a| a["kind"] == "brute_force" && a["evidence"]["revocation_failed"].is_null())
    }
}

/// One recorded request to the receiver.
#[derive(Clone, Debug)]
struct Received {
    at: SystemTime,
    path: String,
    body: String,
}

/// The recording receiver on the server namespace's loopback.
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Receiver {
    fn start(ns: &NetNs) -> anyhow::Result<Self> {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let g = got.clone();
        let thread = ns.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(RECEIVER).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let app = axum::Router::new().fallback(
                    move |uri: axum::http::Uri, body: axum::body::Bytes| {
                        let g = g.clone();
                        async move {
                            g.lock().expect("lock").push(Received {
                                at: SystemTime::now(),
                                path: uri.path().to_owned(),
                                body: String::from_utf8_lossy(&body).into_owned(),
                            });
                            "ok"
                        }
                    },
                );
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("receiver on {RECEIVER}: {e}"),
            Err(_) => bail!("receiver on {RECEIVER} did not start"),
        }
        Ok(Self {
            got,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One HTTP/1.1 request on a new connection from `src` (Connection: close); the status and
/// body, or why it failed.
pub async fn http(
    src: IpAddr,
    dst: SocketAddr,
    head: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let fut = async {
        let sock = match src {
            IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(|e| format!("socket: {e}"))?;
        sock.bind(SocketAddr::new(src, 0))
            .map_err(|e| format!("bind {src}: {e}"))?;
        let mut s = sock
            .connect(dst)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut req = format!(
            "{head}Host: bank.test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        s.write_all(&req).await.map_err(|e| format!("write: {e}"))?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&resp);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status line in {} bytes", resp.len()))?;
        let body = match resp.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(p) => resp[p + 4..].to_vec(),
            None => Vec::new(),
        };
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
}

fn login_head(ua: &str) -> String {
    format!(
        "POST /login HTTP/1.1\r\nUser-Agent: {ua}\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
    )
}

fn get_head(path: &str, token: &str, ua: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nUser-Agent: {ua}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n"
    )
}

const APP_UA: &str = "BankApp/3.1 (iPhone; iOS 17.4)";
const ATTACK_UA: &str = "python-requests/2.31.0";

/// What the benign side saw.
#[derive(Default)]
struct Benign {
    requests: u32,
    errors: u32,
    samples: Vec<String>,
    riyadh_tokens: Vec<String>,
}

impl Benign {
    fn record(&mut self, who: IpAddr, what: &str, r: &Result<(u16, Vec<u8>), String>) {
        self.requests += 1;
        let bad = match r {
            Ok((s, _)) if (200..300).contains(s) => None,
            Ok((s, _)) => Some(format!("HTTP {s}")),
            Err(e) => Some(e.clone()),
        };
        if let Some(why) = bad {
            self.errors += 1;
            if self.samples.len() < 5 {
                self.samples.push(format!("{who} {what}: {why}"));
            }
        }
    }
}

/// A benign session: log in as `user`, then check the balance and the own account every
/// `every`, until `until`.
#[derive(Clone, Copy)]
struct Session {
    src: IpAddr,
    user: &'static str,
    password: &'static str,
    account: u32,
    every: Duration,
    until: Instant,
    /// The Riyadh user: her issued tokens are noted.
    riyadh: bool,
}

async fn benign_session(sess: Session, out: Arc<Mutex<Benign>>) {
    let Session {
        src,
        user,
        password,
        account,
        every,
        until,
        riyadh,
    } = sess;
    let server = SocketAddr::new(SERVER_V4.into(), PORT);
    let t = Duration::from_secs(3);
    let mut token = None;
    let mut n = 0u32;
    while Instant::now() < until && n < 1000 {
        n += 1;
        if token.is_none() {
            let body = format!(r#"{{"username":"{user}","password":"{password}"}}"#);
            let r = http(src, server, &login_head(APP_UA), body.as_bytes(), t).await;
            out.lock().expect("lock").record(src, "login", &r);
            if let Ok((200, b)) = &r {
                let v: Value = serde_json::from_slice(b).unwrap_or_default();
                token = v["token"].as_str().map(str::to_owned);
                if riyadh && let Some(t) = &token {
                    out.lock().expect("lock").riyadh_tokens.push(t.clone());
                }
            }
        } else {
            let tok = token.as_deref().unwrap_or_default();
            let path = if n.is_multiple_of(3) {
                format!("/accounts/{account}")
            } else {
                "/balance".to_owned()
            };
            let r = http(src, server, &get_head(&path, tok, APP_UA), b"", t).await;
            out.lock().expect("lock").record(src, &path, &r);
        }
        tokio::time::sleep(every).await;
    }
}

/// The attack: `attempts` logins on layla's account from the attacker, started at `rate` per
/// second, each with its own connection and a 1.5 s timeout. Returns (started, answered).
pub async fn attack(attempts: u32, rate: u32) -> (u32, u32) {
    let server = SocketAddr::new(SERVER_V4.into(), PORT);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..attempts {
        let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(rate.max(1)));
        tokio::time::sleep_until(due.into()).await;
        tasks.spawn(async move {
            let body = format!(r#"{{"username":"layla","password":"guess-{i:04}"}}"#);
            http(
                ATTACKER.into(),
                server,
                &login_head(ATTACK_UA),
                body.as_bytes(),
                Duration::from_millis(1500),
            )
            .await
            .is_ok()
        });
    }
    let mut answered = 0;
    while let Some(r) = tasks.join_next().await {
        if r.unwrap_or(false) {
            answered += 1;
        }
    }
    (attempts, answered)
}

/// From the client namespace: layla logs in once from Riyadh (her history), then the attack.
/// Returns when the attack started (just before its first connection), attempts started and
/// attempts answered.
pub fn history_then_attack(
    client: &NetNs,
    attempts: u32,
    rate: u32,
) -> anyhow::Result<(SystemTime, u32, u32)> {
    client.run(move || -> anyhow::Result<(SystemTime, u32, u32)> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let server = SocketAddr::new(SERVER_V4.into(), PORT);
            let body = br#"{"username":"layla","password":"riyadh-2024"}"#;
            let r = http(
                RIYADH.into(),
                server,
                &login_head(APP_UA),
                body,
                Duration::from_secs(3),
            )
            .await;
            if !matches!(r, Ok((200, _))) {
                bail!("layla's login from Riyadh failed: {r:?}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let t0 = SystemTime::now();
            let (sent, answered) = attack(attempts, rate).await;
            Ok((t0, sent, answered))
        })
    })?
}

/// Seconds from `a` to `b` (negative when `b` is earlier).
pub fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The most arrivals within any one-second window starting at or after `from` (seconds).
fn max_per_second(offsets: &[f64], from: f64) -> usize {
    // Handlers log concurrently: arrival stamps may be slightly out of order.
    let mut v: Vec<f64> = offsets.iter().copied().filter(|t| *t >= from).collect();
    v.sort_by(f64::total_cmp);
    let mut best = 0;
    let mut j = 0;
    for i in 0..v.len() {
        while v[j] < v[i] - 1.0 {
            j += 1;
        }
        best = best.max(i - j + 1);
    }
    best
}

/// The policy of the reference case: credential attacks are throttled at the learned rate
/// (20 packets/s when nothing was learned), blocked on repeat, and the account's sessions are
/// revoked; injection is blocked; everything else only alerts.
pub fn policy(shadow: bool) -> String {
    format!(
        r#"mode = "{}"
fallback_rate = 20

[escalation]
window = "1h"

[[rule]]
kinds = ["brute_force", "credential_stuffing"]
min_severity = "medium"
actions = ["throttle", "block", "block_prefix"]
rate = "learned"
ttl = "10m"
also = ["revoke_token"]

[[rule]]
kinds = ["sql_injection", "xss", "path_traversal"]
min_severity = "medium"
actions = ["block"]
ttl = "1h"
"#,
        if shadow { "shadow" } else { "enforce" }
    )
}

/// The stage of a run: namespaces with every client address, the GeoIP database, the policy
/// and the daemon's configuration in a scratch directory, the recording receiver and the bank
/// (with its access log). Fields drop in order: the servers, then the namespaces, then the
/// directory.
pub struct Scene {
    receiver: Receiver,
    /// The bank.
    pub bank: BankServer,
    /// The namespaces.
    pub topo: Topology,
    dir: TempDir,
    /// The daemon's configuration file.
    pub config_path: PathBuf,
    /// The daemon's verdict log.
    pub verdicts_path: PathBuf,
    /// The daemon's alert log.
    pub alerts_path: PathBuf,
    /// The bank's access log (Common Log Format).
    pub access_log: PathBuf,
    benign: Vec<Ipv4Addr>,
}

impl Scene {
    /// Sets the stage (no daemon yet).
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let topo = Topology::new().context("creating namespaces (iproute2)")?;
        let benign: Vec<Ipv4Addr> = (0..settings.benign_clients)
            .map(|i| Ipv4Addr::new(198, 18, 0, 11 + i))
            .collect();
        for a in benign.iter().chain([&RIYADH, &ATTACKER]) {
            topo.add_client_addr((*a).into())?;
        }
        for net in ["192.0.2.0/24", "203.0.113.0/24"] {
            topo.server
                .ip(&["route", "add", net, "dev", &topo.server_if])?;
        }
        let dir = TempDir::new("sentinel-ref")?;
        let geo = dir.join("geo.mmdb");
        std::fs::write(
            &geo,
            build(
                &[
                    Place {
                        net: "192.0.2.0/24".parse()?,
                        country: "SA",
                        city: "Riyadh",
                        lat: 24.7136,
                        lon: 46.6753,
                    },
                    Place {
                        net: "203.0.113.0/24".parse()?,
                        country: "VN",
                        city: "Hanoi",
                        lat: 21.0278,
                        lon: 105.8342,
                    },
                ],
                Layout::MaxMind,
            )?,
        )?;
        let policy_path = dir.join("policy.toml");
        std::fs::write(&policy_path, policy(settings.shadow))?;
        let alerts_path = dir.join("alerts.jsonl");
        let verdicts_path = dir.join("verdicts.jsonl");
        let config = format!(
            r#"[capture]
    http_ports = [{PORT}]

    [geoip]
    files = ["{geo}"]

    [alerts]
    log = "{alerts}"
    webhook = "http://{RECEIVER}/alerts"

    [verdicts]
    policy = "{policy}"
    log = "{verdicts}"

    [revoke]
    url = "http://{RECEIVER}/revoke"
    style = "rfc7009"
    client_id = "sentinel"

    [metrics]
    listen = "{METRICS}"
    "#,
            geo = geo.display(),
            alerts = alerts_path.display(),
            policy = policy_path.display(),
            verdicts = verdicts_path.display(),
        );
        let config_path = dir.join("sentinel.toml");
        std::fs::write(&config_path, config)?;

        let receiver = Receiver::start(&topo.server)?;
        let access_log = dir.join("access.log");
        let bank = BankServer::start_logged(
            &topo.server,
            SocketAddr::new(SERVER_V4.into(), PORT),
            Some(access_log.clone()),
        )?;
        Ok(Self {
            receiver,
            bank,
            topo,
            dir,
            config_path,
            verdicts_path,
            alerts_path,
            access_log,
            benign,
        })
    }

    /// The scratch directory (removed with the scene).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Starts the daemon on the server side with the scene's configuration.
    pub fn daemon(&self) -> anyhow::Result<Daemon> {
        let config_arg = self.config_path.display().to_string();
        Daemon::start(
            &self.topo.server,
            &[self.topo.server_if.as_str()],
            &["--config", &config_arg],
        )
    }

    /// Seconds after `t0` at which the attacker's login attempts reached the bank.
    pub fn attack_arrivals(&self, t0: SystemTime) -> Vec<f64> {
        self.bank
            .accesses()
            .iter()
            .filter(|a| a.client == IpAddr::V4(ATTACKER) && a.path == "/login")
            .map(|a| secs_between(t0, a.at))
            .collect()
    }

    /// Verdicts on the attacker in the daemon's verdict log.
    pub fn attacker_verdicts(&self) -> Vec<Value> {
        super::read_jsonl(&self.verdicts_path)
            .into_iter()
            .filter(|v| {
                v["target"]
                    .as_str()
                    .and_then(|t| t.parse::<ipnet::IpNet>().ok())
                    .is_some_and(|n| n.contains(&IpAddr::V4(ATTACKER)))
            })
            .collect()
    }
}

/// Runs the reference case once.
pub fn run(settings: &Settings) -> anyhow::Result<Report> {
    let scene = Scene::new(settings)?;
    let daemon = scene.daemon()?;
    let topo = &scene.topo;
    let benign = scene.benign.clone();

    // The client side: benign sessions from before the attack until after it, the Riyadh
    // user's history, then the attack.
    let warmup = settings.warmup;
    let attack_len = Duration::from_secs_f64(
        f64::from(settings.attempts) / f64::from(settings.attack_rate.max(1)),
    );
    let (attempts, rate) = (settings.attempts, settings.attack_rate);
    let out = Arc::new(Mutex::new(Benign::default()));
    let o = out.clone();
    let client = topo
        .client
        .spawn(move || -> anyhow::Result<(SystemTime, u32, u32)> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let until = Instant::now() + warmup + attack_len + Duration::from_millis(1500);
                let mut sessions = tokio::task::JoinSet::new();
                let users: Vec<_> = crate::lab::bank::USERS
                    .iter()
                    .filter(|(u, _)| *u != "layla")
                    .collect();
                for (i, a) in benign.iter().enumerate() {
                    let (u, p) = users[i % users.len()];
                    let sess = Session {
                        src: (*a).into(),
                        user: u,
                        password: p,
                        account: 100 + i as u32,
                        every: Duration::from_millis(250),
                        until,
                        riyadh: false,
                    };
                    sessions.spawn(benign_session(sess, o.clone()));
                }
                // Layla logs in from Riyadh twice (her morning and evening sessions, compressed).
                let riyadh_until = Instant::now() + warmup / 2;
                let layla = Session {
                    src: RIYADH.into(),
                    user: "layla",
                    password: "riyadh-2024",
                    account: 7,
                    every: Duration::from_millis(200),
                    until: riyadh_until,
                    riyadh: true,
                };
                benign_session(layla, o.clone()).await;
                let layla = Session {
                    every: Duration::from_millis(400),
                    until,
                    ..layla
                };
                sessions.spawn(benign_session(layla, o.clone()));
                tokio::time::sleep_until((riyadh_until + warmup / 2).into()).await;
                let t0 = SystemTime::now();
                let (sent, answered) = attack(attempts, rate).await;
                while sessions.join_next().await.is_some() {}
                Ok((t0, sent, answered))
            })
        });
    let (t0, sent, answered) = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))???;
    // Let the last responses through the pipeline.
    std::thread::sleep(Duration::from_millis(700));

    let attack_offsets = scene.attack_arrivals(t0);
    let mut arrivals_per_s = Vec::new();
    for t in &attack_offsets {
        let s = t.max(0.0) as usize;
        if arrivals_per_s.len() <= s {
            arrivals_per_s.resize(s + 1, 0);
        }
        arrivals_per_s[s] += 1;
    }
    let status = daemon.status()?;
    let explain_layla: Value =
        serde_json::from_str(&daemon.cli_ok(&["explain", "user:layla", "--json"])?)?;
    let metrics = topo
        .server
        .run(|| -> Result<String, String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let (code, body) = http(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    METRICS.parse().expect("address"),
                    "GET /metrics HTTP/1.1\r\n",
                    b"",
                    Duration::from_secs(5),
                )
                .await?;
                if code != 200 {
                    return Err(format!("HTTP {code}"));
                }
                Ok(String::from_utf8_lossy(&body).into_owned())
            })
        })?
        .map_err(|e| anyhow::anyhow!("scraping {METRICS}/metrics: {e}"))?;

    let attacker = ATTACKER.to_string();
    let verdicts = scene.attacker_verdicts();
    let first_verdict_s = verdicts
        .first()
        .and_then(|v| v["applied_at"].as_f64())
        .map(|at| at - crate::clock::unix_s_at(t0));
    let throttle_pps = verdicts.first().and_then(|v| v["rate_pps"].as_u64());
    let (attacker_alerts, other_alerts): (Vec<Value>, Vec<Value>) =
        super::read_jsonl(&scene.alerts_path)
            .into_iter()
            .partition(|a| a["src_ip"] == attacker.as_str());
    let received = scene.receiver.received();
    let revocations: Vec<&Received> = received.iter().filter(|r| r.path == "/revoke").collect();
    let revoked = revocations
        .iter()
        .flat_map(|r| crate::notify::revoke::parse_form(&r.body))
        .filter(|(k, _)| k == "token")
        .map(|(_, v)| v)
        .collect();
    let first_revocation_s = revocations.first().map(|r| secs_between(t0, r.at));
    let benign = std::mem::take(&mut *out.lock().expect("lock"));
    drop(daemon);
    drop(scene);
    Ok(Report {
        shadow: settings.shadow,
        attempts_sent: sent,
        attempts_answered: answered,
        attempts_at_server: attack_offsets.len(),
        max_attempts_per_s_after_1s: max_per_second(&attack_offsets, 1.0),
        arrivals_per_s,
        first_verdict_s,
        verdicts,
        throttle_pps,
        attacker_alerts,
        other_alerts,
        revoked,
        first_revocation_s,
        webhook_alerts: received.iter().filter(|r| r.path == "/alerts").count(),
        riyadh_tokens: benign.riyadh_tokens,
        benign_requests: benign.requests,
        benign_errors: benign.errors,
        benign_error_samples: benign.samples,
        counters: status["counters"].clone(),
        analysis: status["analysis"].clone(),
        metrics,
        explain_layla,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_the_busiest_second() {
        assert_eq!(max_per_second(&[], 1.0), 0);
        assert_eq!(max_per_second(&[0.1, 0.2, 1.1, 1.5, 1.9, 3.0], 1.0), 3);
        assert_eq!(max_per_second(&[0.1, 0.2, 0.3], 1.0), 0);
        assert_eq!(max_per_second(&[1.5, 3.0, 1.1, 1.9], 1.0), 3);
    }

    #[test]
    fn the_policies_are_valid() {
        for shadow in [false, true] {
            crate::verdict::policy::Policy::parse(&policy(shadow)).unwrap();
        }
    }
}
