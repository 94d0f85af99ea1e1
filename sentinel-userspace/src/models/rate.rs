//! Learned rate limits: `rate_anomaly` when a principal's request rate on an endpoint (or a
//! source's rate over all endpoints) exceeds what the population and its own history make
//! plausible.
//!
//! Counts are kept per (entity, endpoint template) and per source address in sliding windows of
//! `window_s`. Each completed window with traffic is a sample: of the endpoint's population
//! (a log-spaced histogram, from which a high quantile is read) and of the key's own history (a
//! slowly decaying peak). The limit is
//! `max(min_limit, population, min(own_peak x own_margin, population x own_ceiling))`, where
//! `population` is `population_quantile x population_margin`; until an endpoint has
//! `warmup_samples` samples, `default_limit` stands in for it. Samples above the limit in force
//! are not learned, and a key's own history can lift its limit at most `own_ceiling` times
//! above what the population makes plausible: a client that ramps up a little under its limit
//! each window raises its own peak, but not past that.
//!
//! The limit is what a throttle should allow: alerts carry it as `recommended_rate` in packets per
//! second (requests per second x `packets_per_request`, because the kernel throttle counts
//! packets), and as `limit_rps` (requests per second) in the evidence.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    AlertKind, Severity,
    bounded::{BoundedMap, NS, STALE_NS, key_of, key2, ms_len, ms_since, ms32, secs},
    config::Checker,
    engine::{Ctx, Detection, Detector, ModelsError, evidence, r2, subject},
};

/// `[models.rate]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// On or off. Default on.
    pub enabled: bool,
    /// Counting window, seconds (at most a day). Default 10.
    pub window_s: f64,
    /// Requests per window never flagged. Default 20.
    pub min_limit: f64,
    /// Population term before an endpoint has enough samples, requests per window. Default 50.
    pub default_limit: f64,
    /// Samples an endpoint needs before its own population quantile is used. Default 100.
    pub warmup_samples: u32,
    /// Population quantile. Default 0.999.
    pub population_quantile: f64,
    /// Multiplier on the population quantile. Default 2.
    pub population_margin: f64,
    /// Multiplier on the key's own peak. Default 3.
    pub own_margin: f64,
    /// How far above the population term the own term may lift a key's limit, as a multiple of
    /// it. Default 10.
    pub own_ceiling: f64,
    /// Packets per request when converting the limit into a throttle rate. Default 6 (a request
    /// and its acknowledgements on a fresh connection: SYN, ACK, request, ACKs, FIN).
    pub packets_per_request: f64,
    /// Also watch each source address over all endpoints. Default on.
    pub per_source: bool,
    /// A burst is raised at once, without waiting for the window to fill: more requests within
    /// one second than this many times the learned per-second limit (and than `min_limit`).
    /// Default 5.
    pub burst_factor: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            window_s: 10.0,
            min_limit: 20.0,
            default_limit: 50.0,
            warmup_samples: 100,
            population_quantile: 0.999,
            population_margin: 2.0,
            own_margin: 3.0,
            own_ceiling: 10.0,
            packets_per_request: 6.0,
            per_source: true,
            burst_factor: 5.0,
        }
    }
}

impl Config {
    /// The limit for a counter `c` of keys whose population is `hist`.
    fn limit(&self, hist: Option<&Hist>, c: &Counter) -> Limit {
        let (population, learned) = match hist {
            Some(h) if h.total >= self.warmup_samples => (h.top * self.population_margin, true),
            _ => (self.default_limit, false),
        };
        let own = if c.samples >= 3 {
            f64::from(c.peak) * self.own_margin
        } else {
            0.0
        };
        Limit {
            limit: self
                .min_limit
                .max(population)
                .max(own.min(population * self.own_ceiling)),
            population,
            own,
            learned,
        }
    }

    /// Range checks.
    pub fn validate(&self) -> Result<(), ModelsError> {
        Checker::new("rate")
            .positive("window_s", self.window_s)
            .check(
                "window_s",
                self.window_s <= 86_400.0,
                "must be at most 86400 (a day)",
            )
            .positive("min_limit", self.min_limit)
            .positive("default_limit", self.default_limit)
            .positive("burst_factor", self.burst_factor)
            .unit("population_quantile", self.population_quantile)
            .positive("population_margin", self.population_margin)
            .positive("own_margin", self.own_margin)
            .check("own_ceiling", self.own_ceiling >= 1.0, "must be at least 1")
            .positive("packets_per_request", self.packets_per_request)
            .finish()
    }
}

const BUCKETS: usize = 32;

/// Log-spaced histogram of per-window counts (bucket `i` holds counts up to `1.4142^i`).
#[derive(Clone, Copy, Debug, Default)]
struct Hist {
    counts: [u32; BUCKETS],
    total: u32,
    /// The population quantile as of the last [`Hist::add`]: every request asks for it, and
    /// it changes only when a window closes.
    top: f64,
}

fn bucket_of(x: f64) -> usize {
    if x <= 1.0 {
        0
    } else {
        ((x.log2() * 2.0).ceil() as usize).min(BUCKETS - 1)
    }
}

fn bucket_top(i: usize) -> f64 {
    (i as f64 / 2.0).exp2()
}

impl Hist {
    /// Counts `x` and updates [`Hist::top`], the quantile `q`.
    fn add(&mut self, x: f64, q: f64) {
        if self.total >= 1_000_000 {
            self.counts.iter_mut().for_each(|c| *c /= 2);
            self.total = self.counts.iter().sum();
        }
        self.counts[bucket_of(x)] += 1;
        self.total += 1;
        self.top = self.quantile(q);
    }

    fn quantile(&self, q: f64) -> f64 {
        let target = (q * f64::from(self.total)).ceil() as u32;
        let mut acc = 0;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            if acc >= target.max(1) {
                return bucket_top(i);
            }
        }
        bucket_top(BUCKETS - 1)
    }
}

/// Counts of one key in the current and previous window, and its own history (24 bytes: times
/// are [`ms32`] milliseconds).
#[derive(Clone, Copy, Debug)]
struct Counter {
    /// Start of the current window.
    start: u32,
    /// Start of the current second (for bursts).
    sec_start: u32,
    cur: u32,
    prev: u32,
    /// Decaying peak of completed windows.
    peak: f32,
    /// Requests in the current second (saturating: a burst needs more than `burst_factor` times
    /// the limit per second, far below 65,535 for any limit learned from the histogram).
    sec_cur: u16,
    /// Completed windows with traffic (saturating; only "3 or more" matters).
    samples: u16,
}

const _: () = assert!(size_of::<Counter>() == 24);

impl Counter {
    fn new(now: u32) -> Self {
        Self {
            start: now,
            sec_start: now,
            cur: 0,
            prev: 0,
            peak: 0.0,
            sec_cur: 0,
            samples: 0,
        }
    }

    /// Adds a request at `now` (`stale`: the key was idle for [`STALE_NS`] or more, so its
    /// times are no longer comparable); returns the count of a window that just completed, if
    /// any.
    fn add(&mut self, now: u32, w: u32, stale: bool) -> Option<u32> {
        let mut done = None;
        let age = if stale {
            Some(u32::MAX)
        } else {
            ms_since(now, self.start)
        };
        if let Some(age) = age.filter(|&a| a >= w) {
            let n = age / w;
            if self.cur > 0 {
                done = Some(self.cur);
            }
            self.prev = if n == 1 { self.cur } else { 0 };
            self.cur = 0;
            self.start = if stale {
                now
            } else {
                self.start.wrapping_add(n * w)
            };
        }
        self.cur = self.cur.saturating_add(1);
        if stale || ms_since(now, self.sec_start).is_some_and(|d| d >= 1000) {
            self.sec_start = now;
            self.sec_cur = 0;
        }
        self.sec_cur = self.sec_cur.saturating_add(1);
        done
    }

    fn count(&self, now: u32, w: u32) -> f64 {
        let into = (f64::from(ms_since(now, self.start).unwrap_or(0)) / f64::from(w)).min(1.0);
        f64::from(self.cur) + f64::from(self.prev) * (1.0 - into).max(0.0)
    }

    fn learn(&mut self, n: u32) {
        self.peak = (self.peak * 0.98).max(n as f32);
        self.samples = self.samples.saturating_add(1);
    }
}

/// Counts one request of `key` in `counters` (its population's histogram under `hist_key` in
/// `hists`): a window that closed under the limit teaches the key's peak and the population.
/// The counter as it now stands, and its limit.
fn count(
    counters: &mut BoundedMap<Counter>,
    hists: &mut BoundedMap<Hist>,
    cfg: &Config,
    (key, hist_key): (u64, u64),
    ts: u64,
    w: u32,
) -> (Counter, Limit) {
    let now = ms32(ts);
    let (c, idle) = counters.entry_idle(key, ts, || Counter::new(now));
    let done = c.add(now, w, idle >= STALE_NS);
    let limit = cfg.limit(hists.get(hist_key), c);
    if let Some(n) = done {
        if f64::from(n) <= limit.limit {
            c.learn(n);
        }
        // The population learns only what it already finds plausible, not what one key's own
        // history allows it: a key ramping up under its own limit would otherwise become the
        // top of a small population and lift everyone's limit with its own.
        if f64::from(n) <= limit.population.max(cfg.min_limit) {
            hists
                .entry(hist_key, ts, Hist::default)
                .add(f64::from(n), cfg.population_quantile);
        }
        // The key's own peak may have learned the window: its limit again.
        return (*c, cfg.limit(hists.get(hist_key), c));
    }
    (*c, limit)
}

/// The detector.
pub struct RateDetector {
    cfg: Config,
    /// Window, milliseconds.
    window: u32,
    pairs: BoundedMap<Counter>,
    sources: BoundedMap<Counter>,
    endpoints: BoundedMap<Hist>,
}

/// The limit and its parts, requests per window.
struct Limit {
    limit: f64,
    population: f64,
    own: f64,
    learned: bool,
}

impl RateDetector {
    /// A detector keeping at most `cap` (entity, endpoint) pairs and sources.
    pub fn new(cfg: &Config, cap: usize, idle_ns: u64) -> Self {
        let window = ms_len(secs(cfg.window_s));
        let idle = idle_ns.min(30 * 86_400 * NS);
        Self {
            cfg: cfg.clone(),
            window,
            pairs: BoundedMap::new(cap, idle),
            sources: BoundedMap::new(cap, idle),
            endpoints: BoundedMap::new(20_000, u64::MAX),
        }
    }

    fn judge(
        &self,
        ctx: &Ctx<'_>,
        what: &dyn Fn() -> String,
        (count, burst): (f64, u32),
        l: &Limit,
        subject: u64,
        out: &mut Vec<Detection>,
    ) {
        let ws = self.cfg.window_s;
        let limit_rps = l.limit / ws;
        let burst = f64::from(burst);
        let bursting = burst > self.cfg.min_limit && burst > self.cfg.burst_factor * limit_rps;
        if count <= l.limit && !bursting {
            return;
        }
        // A burst is judged on its own second; a full window on the window.
        let (count, span) = if count <= l.limit {
            (burst, 1.0)
        } else {
            (count, ws)
        };
        let rps = count / span;
        let ratio = rps / limit_rps;
        let severity = if ratio >= 10.0 {
            Severity::High
        } else {
            Severity::Medium
        };
        if ctx.is_repeat(AlertKind::RateAnomaly, subject, severity) {
            return;
        }
        let mut alert = ctx.alert(
            AlertKind::RateAnomaly,
            severity,
            (0.5 + ratio.log2() / 8.0).min(1.0),
            format!(
                "{} made {:.0} requests in {span} s ({:.1}/s), {:.1}x the learned limit of {:.1}/s (population {:.1}/s{}, {}).",
                what(),
                count,
                rps,
                ratio,
                limit_rps,
                l.population / ws,
                if l.learned { "" } else { ", default while learning" },
                if l.own > 0.0 {
                    format!("own peak {:.1}/s", l.own / self.cfg.own_margin / ws)
                } else {
                    "no history of its own".to_owned()
                },
            ),
            evidence([
                ("requests", json!(count.round())),
                ("window_s", json!(span)),
                ("rate_rps", json!(r2(rps))),
                ("limit_rps", json!(r2(limit_rps))),
                ("population_limit_rps", json!(r2(l.population / ws))),
                ("own_peak_rps", json!(r2(l.own / self.cfg.own_margin / ws))),
                ("population_learned", json!(l.learned)),
                ("ratio", json!(r2(ratio))),
            ]),
        );
        alert.recommended_rate = Some(limit_rps * self.cfg.packets_per_request);
        out.push(Detection { alert, subject });
    }
}

impl Detector for RateDetector {
    fn name(&self) -> &'static str {
        "rate"
    }

    fn observe(&mut self, ctx: &Ctx<'_>, out: &mut Vec<Detection>) {
        if ctx.unknown_client {
            // Not one principal, and not one source either.
            return;
        }
        let ts = ctx.obs.ts_ns;
        let now = ms32(ts);
        let w = self.window;
        let ep = key_of(ctx.obs.endpoint.as_str());
        let pair_key = key2(&ctx.entity, &ep);

        let (c, l) = count(
            &mut self.pairs,
            &mut self.endpoints,
            &self.cfg,
            (pair_key, ep),
            ts,
            w,
        );
        let what = || format!("{} on {}", ctx.principal, ctx.obs.endpoint);
        self.judge(
            ctx,
            &what,
            (c.count(now, w), u32::from(c.sec_cur)),
            &l,
            subject::entity(ctx.entity),
            out,
        );

        // Clients a trusted proxy could not name are not one source: no per-source rate for them.
        if self.cfg.per_source && !ctx.obs.client_ip.is_unspecified() {
            let sk = subject::source(ctx.obs.client_ip);
            let (s, mut l) = count(
                &mut self.sources,
                &mut self.endpoints,
                &self.cfg,
                (sk, key_of("*sources")),
                ts,
                w,
            );
            // A source carries many principals (NAT, proxies): never below the per-pair bar.
            l.limit = l.limit.max(self.cfg.default_limit);
            let what = || format!("Address {}", ctx.obs.client_ip);
            self.judge(
                ctx,
                &what,
                (s.count(now, w), u32::from(s.sec_cur)),
                &l,
                sk,
                out,
            );
        }
    }

    fn tick(&mut self, now_ns: u64, _out: &mut Vec<Detection>) {
        self.pairs.sweep(now_ns, 4096);
        self.sources.sweep(now_ns, 4096);
    }

    fn tracked(&self) -> usize {
        self.pairs.len() + self.sources.len()
    }

    fn memory_bytes(&self) -> usize {
        self.pairs.memory_bytes() + self.sources.memory_bytes() + self.endpoints.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        enrich::principal::short_hash,
        models::{Engine, ModelsConfig, synth::*},
    };

    const _: () = assert!(BoundedMap::<Counter>::SLOT_BYTES == 40);

    #[test]
    fn counters_roll_across_the_wrap_of_their_millisecond_times() {
        let w = 10_000;
        let t0 = u32::MAX - 4_000;
        let mut c = Counter::new(t0);
        for i in 0..5 {
            assert_eq!(c.add(t0.wrapping_add(i * 1_000), w, false), None);
        }
        assert_eq!(c.sec_cur, 1);
        // 12 s later, past the wrap: the window of 5 completed and 2 s of the next went by.
        let now = t0.wrapping_add(12_000);
        assert_eq!(c.add(now, w, false), Some(5));
        assert_eq!((c.cur, c.prev, c.start), (1, 5, t0.wrapping_add(w)));
        assert!((c.count(now, w) - (1.0 + 5.0 * 0.8)).abs() < 1e-9);
        // An observation out of order does not roll anything.
        assert_eq!(c.add(now - 500, w, false), None);
        assert_eq!(c.sec_cur, 2);
        // After a long idle the times restart; the window in progress is reported.
        assert_eq!(c.add(7, w, true), Some(2));
        assert_eq!((c.cur, c.prev, c.start, c.sec_cur), (1, 0, 7, 1));
    }

    #[test]
    fn histograms_give_quantiles() {
        let mut h = Hist::default();
        for i in 0..1000 {
            h.add(f64::from(i % 10 + 1), 0.999);
        }
        assert!(
            (8.0..=16.0).contains(&h.quantile(0.999)),
            "{}",
            h.quantile(0.999)
        );
        assert!(h.quantile(0.5) <= 8.0);
        assert_eq!(
            h.top,
            h.quantile(0.999),
            "the cached quantile is the last add's"
        );
    }

    fn population(e: &mut Engine, users: u64, days: u64) {
        for d in 0..days {
            for u in 0..users {
                let t = T0 + d * 86_400 * S + (8 + u % 12) * 3600 * S + u * 7 * S;
                let tok = format!("t-{u}");
                let ip = format!("198.18.{}.{}", u / 200, u % 200 + 2);
                for k in 0..4 {
                    e.observe(&with_token(obs(t + k * 3 * S, &ip, "/balance"), &tok));
                }
            }
        }
    }

    /// The rate alerts on `tok:<hash of token>` over `n` requests 200 ms apart from one
    /// address, through the enricher (which names the endpoint), after the population of
    /// `/balance` was learned; the path of each is the next of `spellings`.
    fn rate_alerts_over_spellings(token: &str, n: usize, spellings: &[&str]) -> Vec<String> {
        use crate::enrich::pipeline::{EnrichSettings, Enricher};
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        population(&mut e, 200, 2);
        let mut enricher = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let auth = format!("Bearer {token}");
        let start = T0 + 3 * 86_400 * S;
        let mut alerts = Vec::new();
        for i in 0..n {
            let o = enricher.enrich(get_facts(
                start + i as u64 * 200_000_000,
                "198.18.250.9".parse().unwrap(),
                spellings[i % spellings.len()],
                &[("Authorization", &auth)],
            ));
            let who = o.principal.name();
            alerts.extend(
                e.observe(&o)
                    .into_iter()
                    .filter(|a| a.kind == AlertKind::RateAnomaly)
                    .map(|a| format!("{who}: {}", a.explanation)),
            );
        }
        alerts
    }

    #[test]
    fn spellings_of_one_path_share_its_learned_limit() {
        // Servers that ignore case (IIS, ASP.NET, many Java stacks), decode unreserved escapes
        // and resolve `.` segments and `;` parameters route all of these to /balance: 48
        // requests in 10 s against a limit of 20 are 48, not six times 8.
        let spellings = [
            "/balance",
            "/Balance",
            "/BALANCE",
            "/b%61lance",
            "/./balance/",
            "/balance;jsessionid=0A1B",
        ];
        let alerts = rate_alerts_over_spellings("spread-1", 48, &spellings);
        assert!(
            alerts
                .iter()
                .any(|a| a.starts_with(&format!("tok:{}", short_hash("spread-1")))),
            "{alerts:?}"
        );
        // A client within its limit, whatever it spells, is not flagged.
        assert_eq!(
            rate_alerts_over_spellings("calm-1", 16, &spellings),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_flood_is_flagged_within_a_second_with_a_learned_limit() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        population(&mut e, 200, 2);
        let start = T0 + 3 * 86_400 * S;
        let mut first = None;
        for i in 0..1000u64 {
            let t = start + i * 10_000_000; // 100/s
            let o = with_token(obs(t, "203.0.113.50", "/balance"), "t-7");
            for a in e.observe(&o) {
                if a.kind == AlertKind::RateAnomaly {
                    first.get_or_insert((t - start, a));
                }
            }
        }
        let (dt, a) = first.expect("rate anomaly");
        assert!(dt < S, "after {} ms", dt / 1_000_000);
        assert_eq!(a.evidence["population_learned"], json!(true));
        // A token never seen before: no peak of its own to quote.
        assert_eq!(a.evidence["own_peak_rps"], json!(0.0));
        assert!(
            a.explanation.ends_with("no history of its own)."),
            "{}",
            a.explanation
        );
        let pps = a.recommended_rate.unwrap();
        let rps = a.evidence["limit_rps"].as_f64().unwrap();
        assert!(
            (pps - rps * 6.0).abs() < 0.1 && (2.0..10.0).contains(&rps),
            "{rps}"
        );
    }

    #[test]
    fn a_client_cannot_ramp_its_own_limit_up_without_end() {
        // Each 10 s window 2.5 times the last, always under the limit its own peak set: the
        // peak rose with it and nothing was raised up to ~47k requests/s.
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        population(&mut e, 200, 2);
        let mut t = T0 + 3 * 86_400 * S;
        let (mut n, mut flagged_at) = (15.0f64, None);
        for window in 0..10 {
            let count = if window < 3 { 15 } else { n as u64 };
            for i in 0..count {
                let o = with_token(
                    obs(t + i * 10 * S / count, "203.0.113.55", "/balance"),
                    "t-9",
                );
                if e.observe(&o)
                    .iter()
                    .any(|a| a.kind == AlertKind::RateAnomaly)
                {
                    flagged_at.get_or_insert(count);
                }
            }
            if window >= 3 {
                n *= 2.5;
            }
            t += 10 * S;
        }
        let at = flagged_at.expect("the ramp is never flagged");
        // The population's limit here is a few requests per window; the ceiling is ten times
        // it (and min_limit 20), so the ramp is caught within its first few steps.
        assert!(at < 600, "flagged only at {at} requests per window");
    }

    #[test]
    fn steady_benign_traffic_is_not_flagged() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let mut stream = Vec::new();
        for d in 0..3 {
            for u in 0..300u64 {
                let t = T0 + d * 86_400 * S + (7 + u % 14) * 3600 * S + u * 11 * S;
                let tok = format!("t-{u}");
                let ip = if u % 5 == 0 {
                    "192.0.2.10".to_string()
                } else {
                    format!("198.18.{}.{}", u / 200, u % 200 + 2)
                };
                for k in 0..6 {
                    // A page load: a few requests in the same second.
                    let o = with_token(obs(t + k * 200_000_000, &ip, "/accounts/{id}"), &tok);
                    stream.push(o);
                }
            }
        }
        stream.sort_by_key(|o| o.ts_ns);
        let n = stream
            .iter()
            .flat_map(|o| e.observe(o))
            .filter(|a| a.kind == AlertKind::RateAnomaly)
            .count();
        assert_eq!(n, 0);
    }
}
