//! Scoring an evaluation: the alerts `sentinel replay --emit alerts` raised on a simulated world
//! against its ground truth ([`Truth`]), per alert kind: scenarios detected, time (or attempts)
//! from the attack's start to its first alert, and benign principals flagged.
//!
//! An alert *detects* a scenario when it has the scenario's kind, names one of its sources or
//! principals, and comes between the attack's first request and [`DETECT_GRACE_NS`] after its
//! last. Any alert naming a scenario's source or principal from its start until
//! [`ATTRIBUTION_NS`] after its end belongs to the attack (a victim's own next login after a
//! takeover is part of it). Every other alert that names a benign user's principal, or an
//! address only benign users had when it names no better principal, flags that user.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    attacks::{INJECTION, VOLUMETRIC, kinds},
    pcapgen::PcapGen,
    sim::{BenignUser, NS, Scenario, SimConfig, World, places},
};
use crate::{
    analyze::Analyzer,
    enrich::geo::testdb::{self, Layout},
    models::{Alert, AlertKind},
    pipeline::PipelineSettings,
    replay,
};

/// An alert detects its scenario until this long after the attack's last request.
pub const DETECT_GRACE_NS: u64 = 600 * NS;
/// Alerts about an attack's sources and principals belong to it until this long after its end.
pub const ATTRIBUTION_NS: u64 = 24 * 3600 * NS;
/// Alerts about the accounts an attack only tried ([`Scenario::tried`]) belong to it until this
/// long after its end: the credential detector's window (its default), over which an account's
/// failures count.
pub const TRIED_ATTRIBUTION_NS: u64 = 600 * NS;

/// Alert times are capture times (microseconds in pcap, milliseconds in the alert's `ts`): an
/// attempt counts as seen by an alert up to this much after it.
const CLOCK_SLACK_NS: u64 = 1_000_000;

/// The ground truth written beside the capture.
#[derive(Clone, Debug, Serialize)]
pub struct Truth<'a> {
    /// What was simulated.
    pub config: &'a SimConfig,
    /// The attacks.
    pub scenarios: &'a [Scenario],
    /// The benign users and visitors.
    pub benign: &'a [BenignUser],
}

/// What scoring needs of an alert.
#[derive(Clone, Debug, Deserialize)]
pub struct Seen {
    /// Kind.
    pub kind: AlertKind,
    /// Client address.
    pub src_ip: String,
    /// Principal.
    pub principal: Option<String>,
    /// RFC 3339 time.
    pub ts: String,
    /// Explanation.
    #[serde(default)]
    pub explanation: String,
    /// `ts` in ns since the epoch (filled by [`Seen::parse`]).
    #[serde(skip)]
    pub ts_ns: u64,
}

impl Seen {
    /// One line of `--emit alerts`.
    pub fn parse(line: &str) -> anyhow::Result<Self> {
        let mut s: Seen = serde_json::from_str(line)?;
        let t = humantime::parse_rfc3339(&s.ts)
            .map_err(|e| anyhow::anyhow!("alert time {:?}: {e}", s.ts))?;
        s.ts_ns = t.duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
        Ok(s)
    }
}

impl From<&Alert> for Seen {
    fn from(a: &Alert) -> Self {
        Self {
            kind: a.kind,
            src_ip: a.src_ip.clone(),
            principal: a.principal.clone(),
            ts: a.ts.clone(),
            explanation: a.explanation.clone(),
            ts_ns: a.ts_ns,
        }
    }
}

/// One kind's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KindScore {
    /// Scenarios.
    pub scenarios: usize,
    /// Detected.
    pub detected: usize,
    /// Seconds from start to first alert, per detected scenario.
    pub delays_s: Vec<f64>,
    /// Attack requests up to and including the first alert, per detected scenario.
    pub attempts: Vec<usize>,
    /// Ids of the missed scenarios.
    pub missed: Vec<usize>,
}

/// The outcome of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Score {
    /// Per kind.
    pub kinds: BTreeMap<AlertKind, KindScore>,
    /// Benign principals (users and visitors).
    pub benign: usize,
    /// Flagged benign users and the kinds that flagged them.
    pub flagged: BTreeMap<String, Vec<AlertKind>>,
    /// Alerts in all.
    pub alerts: usize,
    /// Alerts that belong to no attack and name no benign user.
    pub stray: usize,
    /// Indexes (into the alerts scored) of the alerts that flagged benign users.
    pub false_alerts: Vec<usize>,
}

/// Scores `alerts` against the truth.
pub fn score(scenarios: &[Scenario], benign: &[BenignUser], alerts: &[Seen]) -> Score {
    let mut out = Score {
        benign: benign.len(),
        alerts: alerts.len(),
        ..Score::default()
    };
    for k in kinds() {
        out.kinds.entry(k).or_default();
    }
    let mut by_src: HashMap<&str, Vec<&Scenario>> = HashMap::new();
    let mut by_principal: HashMap<&str, Vec<&Scenario>> = HashMap::new();
    let mut by_tried: HashMap<&str, Vec<&Scenario>> = HashMap::new();
    for s in scenarios {
        for x in &s.sources {
            by_src.entry(x.as_str()).or_default().push(s);
        }
        for p in &s.principals {
            by_principal.entry(p.as_str()).or_default().push(s);
        }
        for p in &s.tried {
            by_tried.entry(p.as_str()).or_default().push(s);
        }
    }
    let mut first: HashMap<usize, &Seen> = HashMap::new();
    let mut explained = vec![false; alerts.len()];
    for (i, a) in alerts.iter().enumerate() {
        // An account the attack tried: the alert is the attack's while the account's failures
        // from it still count.
        explained[i] = a
            .principal
            .as_deref()
            .and_then(|p| by_tried.get(p))
            .into_iter()
            .flatten()
            .any(|s| a.ts_ns + NS >= s.first_ns && a.ts_ns <= s.end_ns + TRIED_ATTRIBUTION_NS);
        // The scenarios the alert names: by its source and by its principal (so every one of
        // them names it, as a detection must).
        let cands = by_src.get(a.src_ip.as_str()).into_iter().flatten().chain(
            a.principal
                .as_deref()
                .and_then(|p| by_principal.get(p))
                .into_iter()
                .flatten(),
        );
        for s in cands {
            if a.ts_ns + NS < s.first_ns {
                continue;
            }
            if a.ts_ns <= s.end_ns + ATTRIBUTION_NS {
                explained[i] = true;
            }
            if a.kind == s.kind
                && a.ts_ns + NS >= s.start_ns
                && a.ts_ns <= s.end_ns + DETECT_GRACE_NS
            {
                let e = first.entry(s.id).or_insert(a);
                if a.ts_ns < e.ts_ns {
                    *e = a;
                }
            }
        }
    }
    for s in scenarios {
        let k = out.kinds.entry(s.kind).or_default();
        k.scenarios += 1;
        match first.get(&s.id) {
            Some(a) => {
                k.detected += 1;
                k.delays_s
                    .push(a.ts_ns.saturating_sub(s.start_ns) as f64 / NS as f64);
                k.attempts.push(
                    s.attempts_ns
                        .iter()
                        .filter(|&&t| t <= a.ts_ns + CLOCK_SLACK_NS)
                        .count(),
                );
            }
            None => k.missed.push(s.id),
        }
    }
    let mut who_principal: HashMap<&str, &str> = HashMap::new();
    let mut who_addr: HashMap<&str, Vec<&str>> = HashMap::new();
    for u in benign {
        for p in &u.principals {
            who_principal.insert(p, &u.name);
        }
        for a in &u.addrs {
            who_addr.entry(a.as_str()).or_default().push(&u.name);
        }
    }
    for (i, a) in alerts.iter().enumerate() {
        if explained[i] {
            continue;
        }
        let by_p = a
            .principal
            .as_deref()
            .and_then(|p| who_principal.get(p).copied());
        let names: Vec<&str> = match by_p {
            Some(n) => vec![n],
            None if a.principal.as_deref().is_none_or(|p| p.starts_with("ip:")) => {
                who_addr.get(a.src_ip.as_str()).cloned().unwrap_or_default()
            }
            None => Vec::new(),
        };
        if names.is_empty() {
            out.stray += 1;
        } else {
            out.false_alerts.push(i);
        }
        for n in names {
            let kinds = out.flagged.entry(n.to_owned()).or_default();
            if !kinds.contains(&a.kind) {
                kinds.push(a.kind);
            }
        }
    }
    out
}

/// Median and maximum.
fn med_max(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some((s[s.len() / 2], s[s.len() - 1]))
}

/// Whether a kind met its targets: at least 99% detected, and for volumetric kinds the first
/// alert within a second (every detected scenario), for injection within five attempts.
pub fn kind_met(kind: AlertKind, k: &KindScore) -> bool {
    let detection = k.scenarios > 0 && k.detected * 100 >= k.scenarios * 99;
    let timely = if VOLUMETRIC.contains(&kind) {
        k.delays_s.iter().all(|&d| d <= 1.0)
    } else if INJECTION.contains(&kind) {
        k.attempts.iter().all(|&n| n <= 5)
    } else {
        true
    };
    detection && timely
}

/// Share of benign principals flagged.
pub fn flagged_share(s: &Score) -> f64 {
    s.flagged.len() as f64 / s.benign.max(1) as f64
}

/// A Markdown table of several runs: scenarios detected per seed, then the time (or attempts)
/// to the first alert over every seed's detected scenarios.
pub fn table(runs: &[(u64, Score)]) -> String {
    let mut o = String::from("| kind |");
    for (seed, _) in runs {
        o.push_str(&format!(" seed {seed} |"));
    }
    o.push_str(" first alert, median / max (all seeds) | target | met |\n|---|");
    o.push_str(&"---:|".repeat(runs.len()));
    o.push_str("---:|---|---|\n");
    for kind in kinds() {
        let target = if VOLUMETRIC.contains(&kind) {
            ">= 99%, <= 1 s"
        } else if INJECTION.contains(&kind) {
            ">= 99%, <= 5 attempts"
        } else {
            ">= 99%"
        };
        o.push_str(&format!("| {} |", kind.as_str()));
        let mut met = true;
        let (mut delays, mut attempts) = (Vec::new(), Vec::new());
        for (_, s) in runs {
            let k = &s.kinds[&kind];
            met &= kind_met(kind, k);
            delays.extend_from_slice(&k.delays_s);
            attempts.extend(k.attempts.iter().map(|&n| n as f64));
            o.push_str(&format!(" {}/{} |", k.detected, k.scenarios));
        }
        let first = if INJECTION.contains(&kind) {
            med_max(&attempts).map_or("-".into(), |(m, x)| format!("{m:.0} / {x:.0} attempts"))
        } else {
            med_max(&delays).map_or("-".into(), |(m, x)| format!("{m:.2} / {x:.2} s"))
        };
        o.push_str(&format!(
            " {first} | {target} | {} |\n",
            if met { "yes" } else { "**no**" }
        ));
    }
    o.push_str("| benign principals flagged |");
    let mut met = true;
    for (_, s) in runs {
        let share = flagged_share(s);
        met &= share <= 0.001;
        o.push_str(&format!(
            " {}/{} ({:.2}%) |",
            s.flagged.len(),
            s.benign,
            share * 100.0
        ));
    }
    o.push_str(&format!(
        " - | <= 0.1% | {} |\n",
        if met { "yes" } else { "**no**" }
    ));
    o
}

/// What flagged the benign principals and which scenarios were missed, for the text under the
/// table.
pub fn details(runs: &[(u64, Score)]) -> String {
    let mut o = String::new();
    for (seed, s) in runs {
        let mut by_kind: BTreeMap<AlertKind, usize> = BTreeMap::new();
        for kinds in s.flagged.values() {
            for k in kinds {
                *by_kind.entry(*k).or_default() += 1;
            }
        }
        let flagged: Vec<String> = by_kind
            .iter()
            .map(|(k, n)| format!("{} {n}", k.as_str()))
            .collect();
        let missed: Vec<String> = s
            .kinds
            .iter()
            .filter(|(_, k)| !k.missed.is_empty())
            .map(|(kind, k)| format!("{} {:?}", kind.as_str(), k.missed))
            .collect();
        o.push_str(&format!(
            "- seed {seed}: {} alerts; benign flagged by kind: {}; missed scenarios: {}; alerts on no known principal outside any attack: {}\n",
            s.alerts,
            if flagged.is_empty() { "none".into() } else { flagged.join(", ") },
            if missed.is_empty() { "none".into() } else { missed.join("; ") },
            s.stray
        ));
    }
    o
}

/// Writes the world's capture to `path`.
fn write_pcap(world: &World, path: &Path) -> anyhow::Result<()> {
    let f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut g = PcapGen::new(f)?;
    for e in &world.exchanges {
        g.exchange(e)?;
        g.close(e.client, e.server)?;
    }
    use std::io::Write as _;
    g.finish()?.flush()?;
    Ok(())
}

/// Where [`write_world`] put a world's files.
#[derive(Clone, Debug)]
pub struct WorldFiles {
    /// The capture, `traffic.pcap`.
    pub pcap: PathBuf,
    /// A GeoIP database of [`places`] (MaxMind layout), `geo.mmdb`.
    pub geo: PathBuf,
}

/// Writes the world's capture and the GeoIP database that places its addresses into `dir`.
pub fn write_world(world: &World, dir: &Path) -> anyhow::Result<WorldFiles> {
    let pcap = dir.join("traffic.pcap");
    write_pcap(world, &pcap)?;
    let geo = dir.join("geo.mmdb");
    std::fs::write(&geo, testdb::build(&places(), Layout::MaxMind)?)?;
    Ok(WorldFiles { pcap, geo })
}

/// Runs the world through the same pipeline and models as `sentinel replay --emit alerts`, in
/// this process: its files ([`write_world`]) are written into `dir`.
pub fn analyze(world: &World, dir: &Path) -> anyhow::Result<Vec<Seen>> {
    let files = write_world(world, dir)?;
    let cfg = crate::config::Config::default();
    let mut an = Analyzer::new(&cfg.enrich, &cfg.models, &[files.geo])?;
    let mut seen = Vec::new();
    replay::alerts(
        &files.pcap,
        PipelineSettings::default(),
        None,
        &mut an,
        |raised| {
            seen.extend(raised.iter().map(Seen::from));
            Ok(())
        },
    )?;
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scen(id: usize, kind: AlertKind, src: &str, start: u64) -> Scenario {
        Scenario {
            id,
            kind,
            variant: "t".into(),
            sources: vec![src.into()],
            principals: vec!["user:v".into()],
            tried: vec!["user:tried".into()],
            first_ns: start,
            start_ns: start,
            end_ns: start + 10 * NS,
            attempts_ns: (0..10).map(|i| start + i * NS).collect(),
        }
    }

    fn seen(kind: AlertKind, src: &str, principal: Option<&str>, ts_ns: u64) -> Seen {
        Seen {
            kind,
            src_ip: src.into(),
            principal: principal.map(Into::into),
            ts: String::new(),
            explanation: String::new(),
            ts_ns,
        }
    }

    #[test]
    fn detection_timing_and_benign_flags_are_scored() {
        let t = 1_000 * NS;
        let scenarios = vec![
            scen(0, AlertKind::BruteForce, "203.0.113.1", t),
            scen(1, AlertKind::SqlInjection, "203.0.113.2", t),
            scen(2, AlertKind::Scraping, "203.0.113.3", t),
        ];
        let benign = vec![
            BenignUser {
                name: "u1".into(),
                principals: vec!["jwt:u1".into()],
                addrs: vec!["198.18.0.2".into()],
            },
            BenignUser {
                name: "tried".into(),
                principals: vec!["user:tried".into()],
                addrs: vec!["198.18.0.3".into()],
            },
        ];
        let alerts = vec![
            // Wrong kind first, then the right one 2 s in.
            seen(AlertKind::RateAnomaly, "203.0.113.1", None, t + NS / 2),
            seen(
                AlertKind::BruteForce,
                "198.18.9.9",
                Some("user:v"),
                t + 2 * NS,
            ),
            // Injection at the third attempt.
            seen(AlertKind::SqlInjection, "203.0.113.2", None, t + 2 * NS),
            // Before the attack: neither detection nor attribution.
            seen(AlertKind::Scraping, "203.0.113.3", None, t - 5 * NS),
            // A benign user flagged twice, once by address.
            seen(AlertKind::BehaviorAnomaly, "198.18.0.7", Some("jwt:u1"), t),
            // An account the brute force only tried: its alert while the failures count is the
            // attack's; long after, it flags its owner.
            seen(
                AlertKind::BruteForce,
                "198.18.0.3",
                Some("user:tried"),
                t + 10 * NS + TRIED_ATTRIBUTION_NS,
            ),
            seen(
                AlertKind::NewCountry,
                "198.18.0.3",
                Some("user:tried"),
                t + 11 * NS + TRIED_ATTRIBUTION_NS,
            ),
            seen(
                AlertKind::RateAnomaly,
                "198.18.0.2",
                Some("ip:198.18.0.2"),
                t,
            ),
        ];
        let s = score(&scenarios, &benign, &alerts);
        let bf = &s.kinds[&AlertKind::BruteForce];
        assert_eq!((bf.detected, bf.delays_s.clone()), (1, vec![2.0]));
        assert!(!kind_met(AlertKind::BruteForce, bf), "2 s is too late");
        let sq = &s.kinds[&AlertKind::SqlInjection];
        assert_eq!(sq.attempts, [3]);
        assert!(kind_met(AlertKind::SqlInjection, sq));
        assert_eq!(s.kinds[&AlertKind::Scraping].missed, [2]);
        assert_eq!(
            s.flagged["u1"],
            [AlertKind::BehaviorAnomaly, AlertKind::RateAnomaly]
        );
        assert_eq!(s.flagged["tried"], [AlertKind::NewCountry]);
        assert_eq!(s.stray, 1, "the early scraping alert");
        let md = table(&[(1, s)]);
        assert!(
            md.contains("| brute_force | 1/1 | 2.00 / 2.00 s | >= 99%, <= 1 s | **no** |"),
            "{md}"
        );
        assert!(
            md.contains("| 2/2 (100.00%) | - | <= 0.1% | **no** |"),
            "{md}"
        );
    }
}

#[cfg(test)]
mod world_tests {
    use super::*;
    use crate::lab::sim::simulate;

    /// The whole evaluation on a small world: every kind detected in every scenario, in time,
    /// and at most one benign user flagged.
    #[test]
    fn a_small_world_is_detected_without_flagging_its_users() {
        let cfg = SimConfig {
            seed: 7,
            users: 300,
            per_kind: 4,
            ..SimConfig::default()
        };
        let world = simulate(&cfg);
        let dir = crate::lab::TempDir::new("sentinel-eval-test").unwrap();
        let alerts = analyze(&world, dir.path()).unwrap();
        let s = score(&world.scenarios, &world.benign, &alerts);
        // The reference case: layla's account, 500 attempts in 3 minutes from Hanoi.
        let rc = &world.scenarios[0];
        assert_eq!(rc.variant, "reference case");
        let first = alerts
            .iter()
            .filter(|a| a.kind == AlertKind::BruteForce && a.src_ip == rc.sources[0])
            .min_by_key(|a| a.ts_ns)
            .expect("the reference case is raised");
        assert!(first.ts_ns - rc.start_ns <= NS, "{first:?}");
        assert_eq!(first.principal.as_deref(), Some("user:layla"));
        assert!(
            first.explanation.contains("VN (Hanoi)") && first.explanation.contains("known: SA"),
            "{}",
            first.explanation
        );
        let runs = [(cfg.seed, s)];
        println!("{}\n{}", table(&runs), details(&runs));
        for (kind, k) in &runs[0].1.kinds {
            assert!(kind_met(*kind, k), "{kind:?}: {k:?}");
        }
        // 0.1% of this small world's 376 benign principals is under one; the share target is
        // measured by `cargo xtask eval` on worlds of 2,501. Here: at most one.
        assert!(runs[0].1.flagged.len() <= 1, "{:?}", runs[0].1.flagged);
    }
}
