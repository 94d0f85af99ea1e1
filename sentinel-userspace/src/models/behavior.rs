//! `behavior_anomaly`: an activity window far from the principal's own profile, in a way the
//! population's windows rarely are.
//!
//! Each closed window of an established principal (see [`super::profile`]) is a point of nine
//! features, each the window's *deviation from that principal's baseline* scaled to `[0, 1]`:
//! request rate against its usual rate, share of requests to endpoints outside its mix, rarity
//! of the hours used, request and response size deviations, a new user-agent family, a new
//! country, error ratio and endpoint spread. Normalising per principal first lets one model serve
//! everyone: a clerk and a batch client differ in absolute numbers, not in how they deviate from
//! themselves.
//!
//! The model is Half-Space Trees ([`super::hst`]) over those points, population-wide: streaming,
//! constant memory (25 trees of 2^9 nodes: about 0.5 MiB in all, nothing per principal), about a
//! microsecond per window, and it follows drift by swapping its reference window. A window is
//! raised when at least `min_moved` features (other than country, which the geo models report,
//! and the absolute endpoint spread, which a usual session already fills half of) moved by
//! `moved_level` or more, so that one odd feature (a new phone, a late night) is never enough on
//! its own, *and* the trees isolate it: `threshold` for `min_moved` features, proportionally less
//! for more (`threshold x min_moved / moved`). The two are evidence of one thing: the trees'
//! isolation depth is about how many of the window's moved dimensions a tree splits on before
//! its reference mass runs out, so with nine dimensions and nine levels a window that moved three
//! features (a new client at a rare hour on endpoints it never used: a hijacked session) scores
//! around 0.5 and would be raised or not by the reference window of the hour; the more features
//! moved against the principal's own baseline, the less population rarity is needed to confirm
//! it. The alert names the moved features, their values and the baselines.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    AlertKind, Severity,
    bounded::{NS, secs},
    config::Checker,
    engine::{Ctx, Detection, Detector, ModelsError, evidence, make_alert, r2, subject},
    hst::HalfSpaceTrees,
    profile::{COUNTRY_FEATURE, DIMS, FEATURES, Profile, SPREAD_FEATURE, WindowSummary, cc_str},
};

/// `[models.behavior]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// On or off (profiles are kept either way: the geo models use them). Default on.
    pub enabled: bool,
    /// Activity window, seconds. Default 300.
    pub window_s: f64,
    /// Requests that close a window early. Default 30.
    pub window_max_requests: u16,
    /// Weight of a new window in the profile's weighted means. Default 0.1.
    pub alpha: f64,
    /// Trusted requests before a principal is judged. Default 20.
    pub warmup_requests: u32,
    /// Closed windows before a principal is judged. Default 4.
    pub warmup_windows: u32,
    /// Profile age before a principal is judged, seconds. Default 43,200 (12 h).
    pub warmup_age_s: f64,
    /// Trees. Default 25.
    pub trees: usize,
    /// Tree height. Default 9.
    pub height: usize,
    /// Windows per reference window of the trees. Default 256.
    pub reference_windows: u32,
    /// Reference mass below which a region counts as empty. Default 3.
    pub size_limit: u32,
    /// Isolation score from which a window that moved `min_moved` features is anomalous; a
    /// window that moved more needs `threshold x min_moved / moved`. Default 0.5.
    pub threshold: f64,
    /// Features that must have moved. Default 2.
    pub min_moved: usize,
    /// Feature value that counts as moved. Default 0.5.
    pub moved_level: f64,
    /// Seed of the trees. Default 1.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            window_s: 300.0,
            window_max_requests: 30,
            alpha: 0.1,
            warmup_requests: 20,
            warmup_windows: 4,
            warmup_age_s: 43_200.0,
            trees: 25,
            height: 9,
            reference_windows: 256,
            size_limit: 3,
            threshold: 0.5,
            min_moved: 2,
            moved_level: 0.5,
            seed: 1,
        }
    }
}

impl Config {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ModelsError> {
        Checker::new("behavior")
            .positive("window_s", self.window_s)
            .check(
                "window_max_requests",
                self.window_max_requests >= 2,
                "must be at least 2",
            )
            .check(
                "alpha",
                self.alpha > 0.0 && self.alpha <= 1.0,
                "must be in (0, 1]",
            )
            .check(
                "trees",
                (1..=200).contains(&self.trees),
                "must be between 1 and 200",
            )
            .check(
                "height",
                (2..=16).contains(&self.height),
                "must be between 2 and 16",
            )
            .check(
                "reference_windows",
                self.reference_windows >= 16,
                "must be at least 16",
            )
            .unit("threshold", self.threshold)
            .check("min_moved", self.min_moved <= DIMS, "must be at most 9")
            .unit("moved_level", self.moved_level)
            .finish()
    }
}

/// The detector.
pub struct BehaviorDetector {
    cfg: Config,
    hst: HalfSpaceTrees,
    /// Windows scored.
    pub scored: u64,
}

impl BehaviorDetector {
    /// A detector.
    pub fn new(cfg: &Config) -> Self {
        Self {
            cfg: cfg.clone(),
            hst: HalfSpaceTrees::new(
                DIMS,
                cfg.trees,
                cfg.height,
                cfg.reference_windows,
                cfg.size_limit,
                cfg.seed,
            ),
            scored: 0,
        }
    }

    /// The features of `s` that moved (at least `moved_level`), but for geography and spread.
    fn moved(&self, s: &WindowSummary) -> Vec<(usize, f64)> {
        s.features
            .iter()
            .enumerate()
            .filter(|(i, v)| {
                *i != COUNTRY_FEATURE && *i != SPREAD_FEATURE && **v >= self.cfg.moved_level
            })
            .map(|(i, v)| (i, *v))
            .collect()
    }

    /// The isolation asked of a window that moved `moved` features: `threshold` at `min_moved`,
    /// and proportionally less for each feature more (a window that moved twice as many features
    /// needs half the isolation).
    pub fn threshold(&self, moved: usize) -> f64 {
        if self.cfg.min_moved == 0 || moved <= self.cfg.min_moved {
            self.cfg.threshold
        } else {
            self.cfg.threshold * self.cfg.min_moved as f64 / moved as f64
        }
    }

    fn describe(&self, s: &WindowSummary, i: usize) -> String {
        let f = s.features[i];
        match FEATURES[i] {
            "rate" => format!(
                "{} requests where it usually makes {:.1} per window ({:.1}x)",
                s.count,
                s.baseline_count,
                f64::from(s.count) / s.baseline_count.max(1.0)
            ),
            "new_endpoints" => format!(
                "{} of {} requests to endpoints it never used",
                s.new_endpoints, s.count
            ),
            "hour_rarity" => format!("active at hours it rarely uses (rarity {})", r2(f)),
            "request_size" => format!(
                "requests of {:.0} bytes where it usually sends {:.0}",
                s.req_bytes.0, s.req_bytes.1
            ),
            "response_size" => format!(
                "responses of {:.0} bytes where it usually gets {:.0}",
                s.resp_bytes.0, s.resp_bytes.1
            ),
            "new_user_agent" => "a client it never used".into(),
            "new_country" => "a country it never used".into(),
            "error_ratio" => format!("{:.0}% errors", f * 100.0),
            _ => format!("{:.0}+ distinct endpoints", f * 8.0),
        }
    }
}

impl Detector for BehaviorDetector {
    fn name(&self) -> &'static str {
        "behavior"
    }

    fn observe(&mut self, _ctx: &Ctx<'_>, _out: &mut Vec<Detection>) {}

    fn on_window(&mut self, s: &WindowSummary, p: &Profile, now_ns: u64, out: &mut Vec<Detection>) {
        let established = s.history_requests >= self.cfg.warmup_requests
            && s.history_windows >= self.cfg.warmup_windows
            && s.age_ns >= secs(self.cfg.warmup_age_s);
        if !established {
            return;
        }
        self.scored += 1;
        // The trees learn what the population's windows look like from windows that moved
        // fewer than `min_moved` features: drift in any one feature (a new app version for
        // everyone) is learned, but attacks that stayed under the threshold do not teach the
        // trees that attacks are normal. (Such a window is never raised.)
        let moved = self.moved(s);
        let ready = self.hst.ready();
        let score = self
            .hst
            .score_and_learn(&s.features, moved.len() < self.cfg.min_moved);
        let threshold = self.threshold(moved.len());
        let raise = ready && score >= threshold && moved.len() >= self.cfg.min_moved;
        if !raise {
            return;
        }
        let mut parts: Vec<String> = moved.iter().map(|(i, _)| self.describe(s, *i)).collect();
        if s.features[COUNTRY_FEATURE] >= 1.0 {
            parts.push(self.describe(s, COUNTRY_FEATURE));
        }
        let mut ev = evidence([
            ("isolation_score", json!(r2(score))),
            ("threshold", json!(r2(threshold))),
            ("window_start", json!(super::alert::rfc3339(s.start_ns))),
            ("requests", json!(s.count)),
            ("baseline_requests_per_window", json!(r2(s.baseline_count))),
            ("history_windows", json!(s.history_windows)),
            (
                "request_bytes",
                json!([r2(s.req_bytes.0), r2(s.req_bytes.1)]),
            ),
            (
                "response_bytes",
                json!([r2(s.resp_bytes.0), r2(s.resp_bytes.1)]),
            ),
            (
                "model",
                json!("half-space trees over per-principal window deviations"),
            ),
        ]);
        ev.insert(
            "features".into(),
            json!(
                FEATURES
                    .iter()
                    .zip(s.features)
                    .map(|(n, v)| (n.to_string(), json!(r2(v))))
                    .collect::<serde_json::Map<_, _>>()
            ),
        );
        ev.insert(
            "moved".into(),
            json!(moved.iter().map(|(i, _)| FEATURES[*i]).collect::<Vec<_>>()),
        );
        let country = (p.loc_country != [0; 2]).then(|| cc_str(p.loc_country));
        let alert = make_alert(
            now_ns,
            AlertKind::BehaviorAnomaly,
            if moved.len() >= 4 {
                Severity::High
            } else {
                Severity::Medium
            },
            score,
            crate::enrich::principal::client_text(p.last_ip),
            Some(p.name.to_string()),
            None,
            country,
            format!(
                "{} behaved unlike itself in the {:.0} s from {}: {}.",
                p.name,
                (now_ns.saturating_sub(s.start_ns) as f64 / NS as f64).max(1.0),
                super::alert::rfc3339(s.start_ns),
                parts.join("; ")
            ),
            ev,
        );
        out.push(Detection {
            alert,
            subject: subject::entity(s.key),
        });
    }

    fn tracked(&self) -> usize {
        0
    }

    fn memory_bytes(&self) -> usize {
        self.hst.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use crate::models::{Alert, AlertKind, Engine, ModelsConfig, Observation, rng::Rng, synth::*};

    const UAS: [&str; 2] = [
        "BankApp/4.2.1 (iPhone; iOS 18.1)",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36",
    ];
    const ENDPOINTS: [&str; 5] = [
        "/balance",
        "/accounts/{id}",
        "/transactions",
        "/cards",
        "/transfer",
    ];

    /// Benign users with daily routines and honest variation, for `days` days.
    fn population(seed: u64, users: u64, days: u64) -> Vec<Observation<'static>> {
        let mut r = Rng::from_state(seed);
        let mut out = Vec::new();
        for u in 0..users {
            let hours: Vec<u64> = (0..1 + r.below(2)).map(|_| 6 + r.below(16)).collect();
            let mut ua = UAS[r.below(2) as usize];
            let ip = format!("198.18.{}.{}", u / 250, u % 250 + 2);
            let mix = 2 + r.below(3) as usize;
            for d in 0..days {
                if r.chance(0.02) {
                    // A new phone.
                    ua = "BankApp/5.0 (Android 15; Pixel 9)";
                }
                for &h in &hours {
                    let h = if r.chance(0.05) { r.below(24) } else { h };
                    let mut t = T0 + d * 86_400 * S + h * 3600 * S + r.below(3600) * S;
                    let tok = format!("tok-{u}-{d}-{h}");
                    let n = 3 + r.below(5);
                    for _ in 0..n {
                        let ep = if r.chance(0.05) {
                            ENDPOINTS[r.below(5) as usize]
                        } else {
                            ENDPOINTS[r.below(mix as u64) as usize]
                        };
                        let mut o = with_jwt(obs(t, &ip, ep), &format!("u{u}"), "RS256", None);
                        o.principal.id = format!("u{u}");
                        o.credential = Some(tok.as_str().into());
                        o.user_agent = Some(ua.into());
                        o.resp_bytes = 200 + r.below(400);
                        out.push(o);
                        t += (1 + r.below(20)) * S;
                    }
                }
            }
        }
        out.sort_by_key(|o| o.ts_ns);
        out
    }

    fn run(e: &mut Engine, stream: &[Observation]) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let mut last_tick = 0;
        for o in stream {
            alerts.extend(e.observe(o));
            if o.ts_ns >= last_tick + 10 * S {
                alerts.extend(e.tick(o.ts_ns));
                last_tick = o.ts_ns;
            }
        }
        alerts
    }

    /// An engine that learned 8 days of 600 users, and the midnight after.
    fn established(seed: u64) -> (Engine, u64) {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let stream = population(seed, 600, 8);
        let end = stream.last().unwrap().ts_ns;
        run(&mut e, &stream);
        (e, (end / (86_400 * S) + 1) * 86_400 * S)
    }

    /// A request with u7's JWT from u7's address.
    fn u7(t: u64, ep: &str, credential: &str, ua: &str, resp_bytes: u64) -> Observation<'static> {
        let mut o = with_jwt(obs(t, "198.18.0.9", ep), "u7", "RS256", None);
        o.credential = Some(credential.into());
        o.user_agent = Some(ua.to_owned().into());
        o.resp_bytes = resp_bytes;
        o
    }

    /// The first behaviour anomaly of `session`, its window closed by ticks from `close_at` on
    /// (a tick sweeps the profiles a budget at a time).
    fn anomaly(
        e: &mut Engine,
        session: impl Iterator<Item = Observation<'static>>,
        close_at: u64,
    ) -> Alert {
        let mut alerts = Vec::new();
        for o in session {
            alerts.extend(e.observe(&o));
        }
        for k in 0..100 {
            alerts.extend(e.tick(close_at + k * 10 * S));
        }
        alerts
            .into_iter()
            .find(|a| a.kind == AlertKind::BehaviorAnomaly)
            .expect("behavior anomaly")
    }

    #[test]
    fn more_moved_features_need_less_isolation() {
        use super::{BehaviorDetector, Config};
        let d = BehaviorDetector::new(&Config::default());
        // 0.5 for two moved features, a third less for three, half for four.
        assert_eq!(d.threshold(0), 0.5);
        assert_eq!(d.threshold(2), 0.5);
        assert!((d.threshold(3) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(d.threshold(4), 0.25);
        let d = BehaviorDetector::new(&Config {
            min_moved: 0,
            ..Config::default()
        });
        assert_eq!(d.threshold(5), 0.5);
    }

    #[test]
    fn a_hijacked_session_on_the_owners_network_is_anomalous() {
        // u7's token used from its own address at 02:00 by another kind of client, at an
        // unhurried pace, on account-changing endpoints it never used: no geography; a new
        // client, a rare hour, new endpoints and a few times its usual requests.
        let (mut e, midnight) = established(4);
        let t0 = midnight + 2 * 3600 * S;
        let session = (0..22u64).map(|i| {
            let ep = ["/beneficiaries", "/transfer", "/profile/contact"][i as usize % 3];
            u7(
                t0 + i * 9 * S,
                ep,
                "tok-hijacked",
                "curl/8.4.0",
                200 + i * 10,
            )
        });
        let a = anomaly(&mut e, session, t0 + 400 * S);
        assert!(
            a.evidence["moved"].as_array().unwrap().len() >= 3,
            "{:?}",
            a.evidence
        );
        assert!(a.evidence["isolation_score"].as_f64() >= a.evidence["threshold"].as_f64());
    }

    #[test]
    fn routine_variation_is_not_anomalous() {
        for seed in [1, 2] {
            let mut e = Engine::new(&ModelsConfig::default()).unwrap();
            let alerts = run(&mut e, &population(seed, 600, 8));
            let flagged: std::collections::BTreeSet<_> = alerts
                .iter()
                .filter(|a| a.kind == AlertKind::BehaviorAnomaly)
                .filter_map(|a| a.principal.clone())
                .collect();
            assert!(flagged.len() <= 1, "seed {seed}: {flagged:?}");
            let s = e.stats();
            assert!(s.profiles >= 600);
        }
    }

    #[test]
    fn a_taken_over_account_is_anomalous_and_explained() {
        let (mut e, midnight) = established(3);
        // u7 at 03:00 the next day: a script pulling exports and user lists, fast.
        let t0 = midnight + 3 * 3600 * S;
        let session = (0..40u64).map(|i| {
            let ep = if i % 2 == 0 {
                "/admin/users"
            } else {
                "/export/{id}"
            };
            u7(t0 + i * S, ep, "tok-stolen", "python-requests/2.31", 50_000)
        });
        let a = anomaly(&mut e, session, t0 + 3600 * S);
        assert_eq!(a.principal.as_deref(), Some("jwt:u7"));
        for word in [
            "requests where it usually makes",
            "endpoints it never used",
            "a client it never used",
        ] {
            assert!(a.explanation.contains(word), "{}", a.explanation);
        }
        assert!(a.evidence["moved"].as_array().unwrap().len() >= 3);
    }
}
