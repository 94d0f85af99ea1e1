//! `cargo xtask bench verdict`: how fast a brute force is stopped, Sentinel against a log-based
//! ban loop, on the same attack in the same run.
//!
//! The stage is the reference case's (`sentinel::lab::reference::Scene`): the demo bank in a
//! server namespace, layla's login from Riyadh, then a scripted brute force on her account from
//! a Vietnam address: `ATTEMPTS` logins at `RATE` per second, each on its own connection. Two
//! arms, interleaved round by round:
//! - sentinel: the daemon on the server's veth (XDP + TC capture, the models, the reference
//!   policy: throttle at the learned rate, block on repeat);
//! - fail2ban: fail2ban-server in the server namespace reading the bank's access log (pyinotify
//!   backend, maxretry 5, findtime 60 s), banning with iptables-multiport on the bank's port.
//!
//! Reported per arm: attempts that reached the bank (let through), and the time from the
//! attack's start (just before its first connection) to the verdict: for Sentinel the kernel
//! write (verdict log), for fail2ban its `Ban` log line (the iptables rule follows within
//! milliseconds). Medians and p99 (the slowest run when fewer than 100) over the rounds.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use sentinel::{
    clock::unix_s_at,
    lab::reference::{ATTACKER, PORT, Scene, Settings, history_then_attack, secs_between},
};
use sentinel_tests::bench::median;

const ATTEMPTS: u32 = 240;
const RATE: u32 = 80;

/// fail2ban-server in the server namespace with a configuration of its own; stopped on drop.
struct Fail2ban {
    child: Option<Child>,
    socket: String,
    log: std::path::PathBuf,
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    let st = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .context("cp")?;
    if !st.success() {
        bail!("copying {} to {}", from.display(), to.display());
    }
    Ok(())
}

impl Fail2ban {
    fn start(scene: &Scene) -> anyhow::Result<Self> {
        let dir = scene.dir().join("fail2ban");
        copy_dir(Path::new("/etc/fail2ban"), &dir)
            .context("fail2ban is not installed (cargo xtask setup installs it)")?;
        // Only the bank's jail: no distribution defaults (Debian enables sshd in jail.d).
        let _ = std::fs::remove_dir_all(dir.join("jail.d"));
        std::fs::create_dir_all(dir.join("jail.d"))?;
        let socket = dir.join("f2b.sock").display().to_string();
        let log = dir.join("fail2ban.log");
        std::fs::write(
            dir.join("fail2ban.local"),
            format!(
                "[Definition]\nloglevel = INFO\nlogtarget = {}\nsocket = {socket}\npidfile = {}\ndbfile = :memory:\n",
                log.display(),
                dir.join("f2b.pid").display()
            ),
        )?;
        std::fs::write(
            dir.join("filter.d/sentinel-bank.conf"),
            "[Definition]\nfailregex = ^<HOST> - - \\[[^\\]]*\\] \"POST /login HTTP/1\\.1\" 401\nignoreregex =\n",
        )?;
        std::fs::write(
            dir.join("jail.local"),
            format!(
                "[DEFAULT]\nbackend = pyinotify\n\n[bank]\nenabled = true\nfilter = sentinel-bank\nlogpath = {}\nmaxretry = 5\nfindtime = 60\nbantime = 600\naction = iptables-multiport[name=bank, port=\"{PORT}\", protocol=tcp]\n",
                scene.access_log.display()
            ),
        )?;
        let child = scene
            .topo
            .server
            .command("fail2ban-server")
            .args(["-f", "-x", "-c"])
            .arg(&dir)
            .args(["-s", &socket])
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting fail2ban-server")?;
        let f = Self {
            child: Some(child),
            socket,
            log,
        };
        // Ready when the jail answers (its actionstart has created the iptables chain).
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let out = Command::new("fail2ban-client")
                .args(["-s", &f.socket, "status", "bank"])
                .output()?;
            if out.status.success() {
                return Ok(f);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "fail2ban did not start: {}",
            std::fs::read_to_string(&f.log).unwrap_or_default()
        )
    }

    /// When the attacker was banned, from the `Ban` line of the log (UTC).
    fn ban_time(&self) -> Option<SystemTime> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let line = text
            .lines()
            .find(|l| l.contains(&format!("Ban {ATTACKER}")))?;
        // 2026-11-28 19:50:00,123 fail2ban.actions ...
        parse_utc(line.get(..23)?)
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        let _ = Command::new("fail2ban-client")
            .args(["-s", &self.socket, "stop"])
            .output();
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS,mmm` in UTC.
fn parse_utc(s: &str) -> Option<SystemTime> {
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss, ms) = (n(11..13)?, n(14..16)?, n(17..19)?, n(20..23)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis((secs * 1000 + ms) as u64))
}

/// One arm's figures over the rounds.
#[derive(Default)]
struct Arm {
    through: Vec<f64>,
    verdict_s: Vec<f64>,
    missed: u32,
}

impl Arm {
    fn p99(v: &[f64]) -> f64 {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        if s.is_empty() {
            return f64::NAN;
        }
        let i = ((s.len() as f64) * 0.99).ceil() as usize;
        s[i.clamp(1, s.len()) - 1]
    }
}

fn settings() -> Settings {
    Settings {
        benign_clients: 0,
        attempts: ATTEMPTS,
        attack_rate: RATE,
        ..Settings::default()
    }
}

fn sentinel_round(arm: &mut Arm) -> anyhow::Result<()> {
    let scene = Scene::new(&settings())?;
    let daemon = scene.daemon()?;
    let (t0, _, _) = history_then_attack(&scene.topo.client, ATTEMPTS, RATE)?;
    std::thread::sleep(Duration::from_millis(500));
    arm.through.push(scene.attack_arrivals(t0).len() as f64);
    match scene
        .attacker_verdicts()
        .first()
        .and_then(|v| v["applied_at"].as_f64())
    {
        Some(at) => arm.verdict_s.push(at - unix_s_at(t0)),
        None => arm.missed += 1,
    }
    drop(daemon);
    Ok(())
}

fn fail2ban_round(arm: &mut Arm) -> anyhow::Result<()> {
    let scene = Scene::new(&settings())?;
    let f2b = Fail2ban::start(&scene)?;
    let (t0, _, _) = history_then_attack(&scene.topo.client, ATTEMPTS, RATE)?;
    std::thread::sleep(Duration::from_millis(500));
    arm.through.push(scene.attack_arrivals(t0).len() as f64);
    match f2b.ban_time() {
        Some(at) => arm.verdict_s.push(secs_between(t0, at)),
        None => arm.missed += 1,
    }
    drop(f2b);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    sentinel_tests::require_root();
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 10 };
    let (mut sen, mut f2b) = (Arm::default(), Arm::default());
    for round in 0..rounds {
        let order: [bool; 2] = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for sentinel_arm in order {
            if sentinel_arm {
                sentinel_round(&mut sen)?;
            } else {
                fail2ban_round(&mut f2b)?;
            }
        }
        println!(
            "round {}: sentinel let through {:?}, verdict {:?} s; fail2ban let through {:?}, ban {:?} s",
            round + 1,
            sen.through.last(),
            sen.verdict_s.last(),
            f2b.through.last(),
            f2b.verdict_s.last()
        );
    }
    let row = |name: &str, a: &Arm| {
        format!(
            "| {name} | {:.0} | {:.0} | {:.3} | {:.3} | {} |",
            median(&a.through),
            Arm::p99(&a.through),
            median(&a.verdict_s),
            Arm::p99(&a.verdict_s),
            a.missed
        )
    };
    let ratio = median(&sen.through) / median(&f2b.through);
    let table = format!(
        "## verdict: Sentinel vs fail2ban on a brute force\n\n\
         A scripted brute force on the demo bank's `/login` from one address: {ATTEMPTS} attempts \
         at {RATE}/s, one connection each, after the account's owner logged in from elsewhere. \
         {rounds} rounds per arm, interleaved. Sentinel: the daemon with the reference policy \
         (throttle at the learned rate, 20 packets/s without one; block on the second offence); \
         verdict time = the kernel write. fail2ban 1.0 (pyinotify backend, maxretry 5, \
         iptables-multiport ban in the server's namespace) reading the bank's access log; \
         verdict time = its `Ban` log line. Times from the attack's start (just before its \
         first connection).\n\n\
         | arm | attempts let through (median) | (p99) | time to verdict, s (median) | (p99) | runs without a verdict |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n{}\n{}\n\n\
         Sentinel lets through {:.2}x the attempts fail2ban lets through (median; target: at \
         most 0.5x); its time to verdict has p99 {:.0} ms (target: under 100 ms).\n\n\
         Detections fail2ban cannot make from an access log at all, which the same daemon \
         raises: credential stuffing spread over many sources (one client fingerprint), a new \
         country or impossible travel for an account (GeoIP against the account's history), a \
         token reused from several sources or countries, JWT weaknesses, injection in request \
         bodies, data exposure in responses.\n",
        row("sentinel", &sen),
        row("fail2ban", &f2b),
        ratio,
        Arm::p99(&sen.verdict_s) * 1e3,
    );
    println!("{table}");
    sentinel_tests::bench_report::write_section("verdict", &table)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail2ban_times_are_utc() {
        let t = parse_utc("2026-11-28 12:00:00,123").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
            1_795_867_200_123
        );
    }
}
