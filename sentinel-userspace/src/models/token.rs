//! Broken authentication: `token_reuse` (one credential used from many networks or countries at
//! once) and `jwt_weakness` (`alg: none`, or an expired token that the server still accepts).
//!
//! Reuse is judged per credential (bearer token, API key, another opaque token such as
//! `Authorization: Token` or `X-Auth-Token`, or session, by its short hash) over a
//! sliding `window_s`: at least `max_networks` distinct client networks (/24 for IPv4, /64 for
//! IPv6, so a phone hopping addresses inside its carrier's pool is one network), at least
//! `max_countries` distinct countries, or the credential going back and forth between two
//! countries (A, B, A): two parties using it at the same time.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    AlertKind, Severity,
    bounded::{BoundedMap, NS, key_of, secs},
    config::Checker,
    engine::{Ctx, Detection, Detector, ModelsError, evidence, span_text, subject},
    profile::{cc, cc_str},
};

/// `[models.token]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// On or off. Default on.
    pub enabled: bool,
    /// Sliding window, seconds (at most 43200, 12 hours). Default 600.
    pub window_s: f64,
    /// Distinct client networks for one credential within the window. Default 5.
    pub max_networks: usize,
    /// Distinct countries for one credential within the window. Default 3.
    pub max_countries: usize,
    /// Clock skew allowed on `exp`, seconds. Default 60.
    pub exp_leeway_s: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            window_s: 600.0,
            max_networks: 5,
            max_countries: 3,
            exp_leeway_s: 60.0,
        }
    }
}

impl Config {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ModelsError> {
        Checker::new("token")
            .positive("window_s", self.window_s)
            .check(
                "window_s",
                self.window_s <= 43_200.0,
                "must be at most 43200 (12 hours)",
            )
            .check(
                "max_networks",
                (2..=8).contains(&self.max_networks),
                "must be between 2 and 8",
            )
            .check(
                "max_countries",
                (2..=4).contains(&self.max_countries),
                "must be between 2 and 4",
            )
            .check(
                "exp_leeway_s",
                self.exp_leeway_s >= 0.0,
                "must be zero or more",
            )
            .finish()
    }
}

/// Recent networks and countries of one credential (76 bytes). Times are whole seconds after
/// `base`, in 16 bits; the base moves forward when they would no longer fit.
#[derive(Clone, Copy)]
struct Usage {
    base: u32,
    nets: [u32; 8],
    net_t: [u16; 8],
    countries: [[u8; 2]; 4],
    country_t: [u16; 4],
    last_country: [u8; 2],
    /// When the run of country changes started.
    switch_start: u16,
    /// Times the country changed.
    switches: u8,
}

const _: () = assert!(size_of::<Usage>() == 76);

fn network(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(v) => u32::from(v) >> 8,
        IpAddr::V6(v) => key_of(&(u128::from(v) >> 64)) as u32,
    }
}

impl Usage {
    fn new(now: u32) -> Self {
        Self {
            base: now,
            nets: [0; 8],
            net_t: [0; 8],
            countries: [[0; 2]; 4],
            country_t: [0; 4],
            last_country: [0; 2],
            switch_start: 0,
            switches: 0,
        }
    }

    /// `now` (seconds) as a time of this usage. When it no longer fits, the base moves to
    /// `w + 1` seconds before `now`; earlier times stop at the new base, which is more than the
    /// window `w` ago: what had expired stays expired, the rest keeps its exact age.
    fn at(&mut self, now: u32, w: u32) -> u16 {
        let d = now.saturating_sub(self.base);
        if let Ok(t) = u16::try_from(d) {
            return t;
        }
        let shift = d - (w + 1);
        for t in self
            .net_t
            .iter_mut()
            .chain(self.country_t.iter_mut())
            .chain(std::iter::once(&mut self.switch_start))
        {
            *t = u32::from(*t).saturating_sub(shift) as u16;
        }
        self.base += shift;
        (w + 1) as u16
    }

    fn note<T: Copy + PartialEq>(items: &mut [T], times: &mut [u16], x: T, now: u16, empty: T) {
        let i = items.iter().position(|s| *s == x).unwrap_or_else(|| {
            // An empty slot, else the oldest.
            (0..items.len())
                .min_by_key(|&i| {
                    if items[i] == empty {
                        0
                    } else {
                        u32::from(times[i]) + 1
                    }
                })
                .expect("slots")
        });
        items[i] = x;
        times[i] = now;
    }

    /// The slots of `items` used within `w` of `now`.
    fn live<T: Copy + PartialEq>(
        items: &[T],
        times: &[u16],
        now: u16,
        w: u32,
        empty: T,
    ) -> impl Iterator<Item = T> {
        items
            .iter()
            .zip(times)
            .filter(move |(x, t)| **x != empty && u32::from(now.saturating_sub(**t)) <= w)
            .map(|(x, _)| *x)
    }
}

/// The detector.
pub struct TokenDetector {
    cfg: Config,
    window_s: u32,
    usage: BoundedMap<Usage>,
}

impl TokenDetector {
    /// A detector following at most `cap` credentials.
    pub fn new(cfg: &Config, cap: usize) -> Self {
        Self {
            cfg: cfg.clone(),
            window_s: cfg.window_s.ceil() as u32,
            usage: BoundedMap::new(cap, 2 * secs(cfg.window_s)),
        }
    }

    fn jwt(&self, ctx: &Ctx<'_>, cred: u64, out: &mut Vec<Detection>) {
        let o = ctx.obs;
        let Some(j) = &o.jwt else { return };
        let ok = (200..300).contains(&o.status);
        if j.alg.eq_ignore_ascii_case("none") {
            let alert = ctx.alert(
                AlertKind::JwtWeakness,
                if ok {
                    Severity::Critical
                } else {
                    Severity::Medium
                },
                if ok { 1.0 } else { 0.7 },
                format!(
                    "Unsigned JWT (alg \"{}\") for subject {} sent to {} {} and answered {}{}.",
                    j.alg,
                    j.sub.as_deref().unwrap_or("?"),
                    o.method,
                    o.endpoint,
                    o.status,
                    if ok {
                        ": the server accepts forged tokens"
                    } else {
                        ""
                    }
                ),
                evidence([
                    ("alg", json!(j.alg)),
                    ("status", json!(o.status)),
                    ("accepted", json!(ok)),
                ]),
            );
            out.push(Detection {
                alert,
                subject: subject::named("credential", cred),
            });
        }
        if let Some(exp) = j.exp {
            // `exp` is whatever the client sent: i64::MIN must not wrap to "not expired".
            let now_s = (o.ts_ns / NS) as i64;
            let late = now_s.saturating_sub(exp);
            if ok && late as f64 > self.cfg.exp_leeway_s {
                let alert = ctx.alert(
                    AlertKind::JwtWeakness,
                    Severity::High,
                    0.9,
                    format!(
                        "A JWT for subject {} that expired {} ago was accepted ({} on {} {}).",
                        j.sub.as_deref().unwrap_or("?"),
                        span_text(late as f64),
                        o.status,
                        o.method,
                        o.endpoint
                    ),
                    evidence([
                        ("exp", json!(exp)),
                        ("expired_s", json!(late)),
                        ("leeway_s", json!(self.cfg.exp_leeway_s)),
                        ("status", json!(o.status)),
                    ]),
                );
                out.push(Detection {
                    alert,
                    subject: subject::named("credential", cred),
                });
            }
        }
    }
}

impl Detector for TokenDetector {
    fn name(&self) -> &'static str {
        "token"
    }

    fn observe(&mut self, ctx: &Ctx<'_>, out: &mut Vec<Detection>) {
        let o = ctx.obs;
        let Some(cred) = o.credential.as_deref() else {
            return;
        };
        let key = key_of(cred);
        self.jwt(ctx, key, out);
        if matches!(o.status, 401 | 403) {
            // Refused: whoever sent it did not get in with it.
            return;
        }
        let w = self.window_s;
        let now_s = (o.ts_ns / NS) as u32;
        let u = self.usage.entry(key, o.ts_ns, || Usage::new(now_s));
        let now = u.at(now_s, w);
        let net = network(o.client_ip).wrapping_add(1).max(1);
        Usage::note(&mut u.nets, &mut u.net_t, net, now, 0);
        let mut switched = false;
        if let Some(c) = cc(ctx.country) {
            Usage::note(&mut u.countries, &mut u.country_t, c, now, [0; 2]);
            if u.last_country != [0; 2] && u.last_country != c {
                if u.switches == 0 || u32::from(now.saturating_sub(u.switch_start)) > w {
                    u.switches = 0;
                    u.switch_start = now;
                }
                u.switches = u.switches.saturating_add(1);
                switched = true;
            }
            u.last_country = c;
        }
        let nets = Usage::live(&u.nets, &u.net_t, now, w, 0).count();
        let live_countries = || Usage::live(&u.countries, &u.country_t, now, w, [0; 2]);
        let back_and_forth = switched && u.switches >= 2;
        let many_nets = nets >= self.cfg.max_networks;
        let many_countries = live_countries().count() >= self.cfg.max_countries;
        if !(many_nets || many_countries || back_and_forth) {
            return;
        }
        let countries: Vec<String> = live_countries().map(cc_str).collect();
        let why = if back_and_forth {
            format!(
                "switched countries {} times within {} s ({}), so two parties hold it",
                u.switches,
                now.saturating_sub(u.switch_start),
                countries.join(", ")
            )
        } else if many_countries {
            format!(
                "was used from {} countries ({})",
                countries.len(),
                countries.join(", ")
            )
        } else {
            format!("was used from {nets} different networks")
        };
        let alert = ctx.alert(
            AlertKind::TokenReuse,
            if back_and_forth || many_countries {
                Severity::High
            } else {
                Severity::Medium
            },
            if back_and_forth || many_countries {
                0.9
            } else {
                0.7
            },
            format!(
                "The credential of {} {why} in the last {} s; now from {} in {}.",
                ctx.principal,
                self.cfg.window_s,
                crate::enrich::principal::client_text(o.client_ip),
                ctx.place()
            ),
            evidence([
                ("networks", json!(nets)),
                ("countries", json!(countries)),
                ("country_switches", json!(u.switches)),
                ("max_networks", json!(self.cfg.max_networks)),
                ("max_countries", json!(self.cfg.max_countries)),
                ("window_s", json!(self.cfg.window_s)),
            ]),
        );
        out.push(Detection {
            alert,
            subject: subject::named("credential", key),
        });
    }

    fn tick(&mut self, now_ns: u64, _out: &mut Vec<Detection>) {
        self.usage.sweep(now_ns, 4096);
    }

    fn tracked(&self) -> usize {
        self.usage.len()
    }

    fn memory_bytes(&self) -> usize {
        self.usage.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::{BoundedMap, Usage};
    use crate::enrich::principal::short_hash;
    use crate::models::{AlertKind, Engine, ModelsConfig, Severity, synth::*};

    const _: () = assert!(BoundedMap::<Usage>::SLOT_BYTES == 88);

    #[test]
    fn usage_times_keep_their_age_when_the_base_moves() {
        let w = 600;
        let mut u = Usage::new(0);
        let t = u.at(100, w);
        Usage::note(&mut u.nets, &mut u.net_t, 1, t, 0);
        let t = u.at(65_500, w);
        Usage::note(&mut u.nets, &mut u.net_t, 2, t, 0);
        // 65,900 s after the base no longer fits in 16 bits: the base moves.
        let now = u.at(65_900, w);
        assert_eq!(u.base, 65_900 - 601);
        let live: Vec<u32> = Usage::live(&u.nets, &u.net_t, now, w, 0).collect();
        assert_eq!(
            live,
            [2],
            "the net of 400 s ago is live, the one of 65,800 s ago is not"
        );
        assert_eq!(now - u.net_t[1], 400);
        // A new net takes an empty slot first, even one at time 0 of the base.
        Usage::note(&mut u.nets, &mut u.net_t, 3, now, 0);
        assert_eq!(u.nets[..3], [1, 2, 3]);
    }

    #[test]
    fn a_token_alternating_between_countries_is_reused() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let mut kinds = Vec::new();
        for i in 0..6u64 {
            let ip = if i % 2 == 0 {
                "192.0.2.7"
            } else {
                "198.51.100.3"
            };
            let o = with_token(obs(T0 + i * 20 * S, ip, "/balance"), "stolen-1");
            kinds.extend(e.observe(&o).into_iter().map(|a| a.kind));
        }
        assert!(kinds.contains(&AlertKind::TokenReuse), "{kinds:?}");
    }

    #[test]
    fn a_token_from_many_networks_is_reused_but_a_phone_switching_networks_is_not() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let mut kinds = Vec::new();
        for i in 0..8u64 {
            let ip = format!("198.18.{}.7", 10 + i);
            let o = with_token(obs(T0 + i * 10 * S, &ip, "/balance"), "shared");
            kinds.extend(e.observe(&o).into_iter().map(|a| a.kind));
        }
        assert!(kinds.contains(&AlertKind::TokenReuse));
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        for i in 0..40u64 {
            // Wi-fi at home and a carrier pool, alternating; same country.
            let ip = if i % 3 == 0 {
                "198.18.1.20".to_string()
            } else {
                format!("198.18.200.{}", i)
            };
            let o = with_token(obs(T0 + i * 30 * S, &ip, "/balance"), "phone");
            assert!(e.observe(&o).is_empty());
        }
    }

    /// The alerts over requests carrying `headers`, one from each address of `ips` (ten
    /// seconds apart, answered 200), through the enricher as the daemon sees them, located by
    /// the tiny world of [`geo_of`].
    fn through_enricher(headers: &[(&str, &str)], ips: &[String]) -> Vec<crate::models::Alert> {
        query_through_enricher("", headers, ips)
    }

    /// [`through_enricher`] with `query` on every request.
    fn query_through_enricher(
        query: &str,
        headers: &[(&str, &str)],
        ips: &[String],
    ) -> Vec<crate::models::Alert> {
        use crate::enrich::pipeline::{EnrichSettings, Enricher};
        let mut enricher = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let mut alerts = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            let src: std::net::IpAddr = ip.parse().unwrap();
            let mut facts = get_facts(T0 + i as u64 * 10 * S, src, "/balance", headers);
            facts.query = query;
            let mut o = enricher.enrich(facts);
            o.geo = geo_of(src);
            alerts.extend(e.observe(&o));
        }
        alerts
    }

    /// Where APIs carry an opaque credential besides `Authorization: Bearer`, with the secret
    /// in it.
    const OPAQUE_CREDENTIALS: [(&str, &str, &str); 11] = [
        (
            "X-Auth-Token",
            "gAAAAABk-opaque-keystone",
            "gAAAAABk-opaque-keystone",
        ),
        (
            "X-Access-Token",
            "at-9f8e7d6c5b4a3210",
            "at-9f8e7d6c5b4a3210",
        ),
        ("X-API-Key", "sk_live_51HxYz", "sk_live_51HxYz"),
        ("Api-Key", "ak-123456", "ak-123456"),
        ("X-Api-Token", "xt-123456", "xt-123456"),
        (
            "Authorization",
            "Token 9944b09199c62bcf9418ad846dd0e4bb",
            "9944b09199c62bcf9418ad846dd0e4bb",
        ),
        (
            "Authorization",
            "token ghp_16C7e42F292c6912E7710c838347Ae178B4a",
            "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        ),
        (
            "Authorization",
            "ApiKey key-abc-123-456-789",
            "key-abc-123-456-789",
        ),
        (
            "Authorization",
            "Api-Key key-def-456-789-012",
            "key-def-456-789-012",
        ),
        (
            "Authorization",
            "Token token=\"rails-tok-1-5f8e2a9c\"",
            "rails-tok-1-5f8e2a9c",
        ),
        (
            "Authorization",
            "sk_4f2a9c1e7b3d5a6b",
            "sk_4f2a9c1e7b3d5a6b",
        ),
    ];

    #[test]
    fn an_opaque_credential_outside_bearer_is_judged_for_reuse() {
        // One leaked key or token, used at once from eight networks of one country, and from
        // three countries: as a bearer token would be.
        let networks: Vec<String> = (0..8).map(|i| format!("198.18.{}.7", 10 + i)).collect();
        let countries: Vec<String> = ["198.18.1.7", "192.0.2.7", "203.0.113.7"]
            .map(String::from)
            .to_vec();
        let mut unseen = Vec::new();
        for (name, value, secret) in OPAQUE_CREDENTIALS {
            for (ips, how) in [(&networks, "networks"), (&countries, "countries")] {
                let alerts = through_enricher(&[(name, value)], ips);
                let reuse: Vec<_> = alerts
                    .iter()
                    .filter(|a| a.kind == AlertKind::TokenReuse)
                    .collect();
                if reuse.is_empty() {
                    unseen.push(format!("{name}: {value} ({how})"));
                    continue;
                }
                // Named by the stable short hash of the secret, never in clear.
                let who = reuse[0].principal.as_deref().unwrap_or("");
                assert!(who.ends_with(&short_hash(secret)), "{name}: {value}: {who}");
                let shown = serde_json::to_string(&alerts).unwrap();
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        assert!(unseen.is_empty(), "no token_reuse: {unseen:#?}");
    }

    #[test]
    fn a_key_in_the_query_used_from_many_addresses_is_reused() {
        // A leaked `?api_key=` used at once from eight networks, and from three countries: as
        // the same key in `X-API-Key` would be, and named by its hash, never in clear.
        let key = "9f8e7d6c5b4a32100123456789abcdef";
        let networks: Vec<String> = (0..8).map(|i| format!("198.18.{}.7", 10 + i)).collect();
        let countries: Vec<String> = ["198.18.1.7", "192.0.2.7", "203.0.113.7"]
            .map(String::from)
            .to_vec();
        for query in [format!("api_key={key}&page=2"), format!("APPID={key}")] {
            for ips in [&networks, &countries] {
                let alerts = query_through_enricher(&query, &[], ips);
                let reuse = alerts
                    .iter()
                    .find(|a| a.kind == AlertKind::TokenReuse)
                    .unwrap_or_else(|| panic!("no token_reuse: {query} {ips:?} {alerts:?}"));
                assert_eq!(
                    reuse.principal.as_deref(),
                    Some(format!("key:{}", short_hash(key)).as_str())
                );
                let shown = serde_json::to_string(&alerts).unwrap();
                assert!(!shown.contains(key), "{shown}");
            }
        }
        // A service's hosts in one network calling with it all day are not.
        let hosts: Vec<String> = (0..60).map(|i| format!("198.18.5.{}", 10 + i)).collect();
        let alerts = query_through_enricher(&format!("key={key}"), &[], &hosts);
        assert!(
            !alerts.iter().any(|a| a.kind == AlertKind::TokenReuse),
            "{alerts:?}"
        );
    }

    #[test]
    fn a_key_a_service_uses_from_its_hosts_is_not_reused() {
        // A service's hosts in one data centre (one network), or in four networks of one
        // country, calling with one key all day: the bar a bearer token has, not a lower one.
        let hosts: Vec<String> = (0..60).map(|i| format!("198.18.5.{}", 10 + i)).collect();
        let four: Vec<String> = (0..60)
            .map(|i| format!("198.18.{}.9", 20 + i % 4))
            .collect();
        for (name, value, _) in OPAQUE_CREDENTIALS {
            for ips in [&hosts, &four] {
                let alerts = through_enricher(&[(name, value)], ips);
                assert!(
                    !alerts.iter().any(|a| a.kind == AlertKind::TokenReuse),
                    "{name}: {value}: {alerts:?}"
                );
            }
        }
    }

    #[test]
    fn unsigned_and_expired_jwts() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let o = with_jwt(obs(T0, "198.18.0.4", "/balance"), "mallory", "none", None);
        let a = e.observe(&o);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, AlertKind::JwtWeakness);
        assert_eq!(a[0].severity, Severity::Critical);
        let exp = (T0 / S) as i64 - 3600;
        let o = with_jwt(obs(T0, "198.18.0.5", "/balance"), "bob", "HS256", Some(exp));
        let a = e.observe(&o);
        assert!(
            a[0].explanation.contains("expired 60.0 min ago"),
            "{}",
            a[0].explanation
        );
        // Refused expired tokens are the server doing its job; fresh ones are fine.
        let mut o = with_jwt(
            obs(T0, "198.18.0.6", "/balance"),
            "carl",
            "HS256",
            Some(exp),
        );
        o.status = 401;
        assert!(e.observe(&o).is_empty());
        let o = with_jwt(
            obs(T0, "198.18.0.7", "/balance"),
            "dina",
            "RS256",
            Some(exp + 7200),
        );
        assert!(e.observe(&o).is_empty());
    }

    #[test]
    fn an_exp_at_the_ends_of_the_range_neither_wraps_nor_panics() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let o = with_jwt(
            obs(T0, "198.18.0.8", "/balance"),
            "eve",
            "HS256",
            Some(i64::MIN),
        );
        let a = e.observe(&o);
        assert!(
            a.iter()
                .any(|a| a.kind == AlertKind::JwtWeakness && a.evidence["expired_s"] == i64::MAX),
            "{a:?}"
        );
        let o = with_jwt(
            obs(T0, "198.18.0.9", "/balance"),
            "finn",
            "HS256",
            Some(i64::MAX),
        );
        assert!(e.observe(&o).is_empty());
    }
}
