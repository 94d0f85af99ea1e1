//! Geography: `impossible_travel` and `new_country`, from the principal's trusted requests
//! (a failed login from abroad is an attack on the account, not the owner travelling; the
//! credential detector reports it). Off by itself when no GeoIP database is loaded: observations
//! then carry no location.
//!
//! - `impossible_travel`: the great-circle distance between the last located request and this
//!   one, over the time between them, is above `max_speed_kmh`, and the distance is at least
//!   `min_distance_km` (GeoIP places an address at a city centre or worse; nearby jumps are
//!   noise).
//! - `new_country`: an established principal (`min_requests` trusted requests over at least
//!   `min_age_s`) appears in a country it never used, *and* either with a device (user-agent
//!   family) it never used, or within `max_gap_s` of its last request from a known country.
//!   Someone who flies abroad and keeps using their phone a day later is not flagged; a stolen
//!   credential used from abroad by other software, or while the owner is still at home, is.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    AlertKind, Severity,
    bounded::{NS, secs},
    config::Checker,
    engine::{Ctx, Detection, Detector, ModelsError, evidence, r2, subject},
    profile::{cc, cc_str},
};
use crate::enrich::geo::distance_km;

/// `[models.geo]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// On or off. Default on.
    pub enabled: bool,
    /// Speed above which travel is impossible, km/h. Default 1000.
    pub max_speed_kmh: f64,
    /// Distances below this are GeoIP noise, km. Default 500.
    pub min_distance_km: f64,
    /// Trusted requests before a principal is established. Default 10.
    pub min_requests: u32,
    /// Age before a principal is established, seconds. Default 86,400.
    pub min_age_s: f64,
    /// A new country this soon after a request from a known one is suspicious even with a
    /// known device, seconds. Default 21,600 (6 h).
    pub max_gap_s: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            max_speed_kmh: 1000.0,
            min_distance_km: 500.0,
            min_requests: 10,
            min_age_s: 86_400.0,
            max_gap_s: 21_600.0,
        }
    }
}

impl Config {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ModelsError> {
        Checker::new("geo")
            .positive("max_speed_kmh", self.max_speed_kmh)
            .check(
                "min_distance_km",
                self.min_distance_km >= 0.0,
                "must be zero or more",
            )
            .check("min_age_s", self.min_age_s >= 0.0, "must be zero or more")
            .positive("max_gap_s", self.max_gap_s)
            .finish()
    }
}

/// The detector (its state is the shared profile).
pub struct GeoDetector {
    cfg: Config,
}

impl GeoDetector {
    /// A detector.
    pub fn new(cfg: &Config) -> Self {
        Self { cfg: cfg.clone() }
    }
}

fn hours(ns: u64) -> f64 {
    ns as f64 / 3600.0 / NS as f64
}

impl Detector for GeoDetector {
    fn name(&self) -> &'static str {
        "geo"
    }

    fn observe(&mut self, ctx: &Ctx<'_>, out: &mut Vec<Detection>) {
        let (Some(p), Some(g)) = (ctx.profile, &ctx.obs.geo) else {
            return;
        };
        if !ctx.trusted {
            return;
        }
        let now = ctx.obs.ts_ns;
        let who = ctx.account.unwrap_or(ctx.principal);
        if let Some(here) = g.coordinates()
            && p.loc_ns > 0
        {
            let there = (f64::from(p.loc.0), f64::from(p.loc.1));
            let d = distance_km(there, here);
            let dt = now.saturating_sub(p.loc_ns);
            let speed = d / hours(dt).max(1.0 / 3600.0);
            if d >= self.cfg.min_distance_km && speed > self.cfg.max_speed_kmh {
                let from = cc_str(p.loc_country);
                let alert = ctx.alert(
                    AlertKind::ImpossibleTravel,
                    Severity::High,
                    (0.6 + (speed / self.cfg.max_speed_kmh).log10() / 5.0).min(1.0),
                    format!(
                        "{who} was in {from} {:.0} min ago and is now in {}, {:.0} km away: {:.0} km/h, above the {:.0} km/h anyone can travel.",
                        hours(dt) * 60.0,
                        ctx.place(),
                        d,
                        speed,
                        self.cfg.max_speed_kmh
                    ),
                    evidence([
                        ("distance_km", json!(d.round())),
                        ("elapsed_s", json!(r2(dt as f64 / NS as f64))),
                        ("speed_kmh", json!(speed.round())),
                        ("max_speed_kmh", json!(self.cfg.max_speed_kmh)),
                        ("previous_country", json!(from)),
                        ("previous_ip", json!(p.last_ip.to_string())),
                        ("previous_location", json!([p.loc.0, p.loc.1])),
                    ]),
                );
                out.push(Detection {
                    alert,
                    subject: subject::entity(ctx.entity),
                });
            }
        }
        let Some(c) = cc(g.country.as_deref()) else {
            return;
        };
        let established = p.requests >= self.cfg.min_requests
            && now.saturating_sub(p.first_ns) >= secs(self.cfg.min_age_s);
        if !established || p.knows_country(c) || p.last_country_ns() == 0 {
            return;
        }
        let new_device = ctx.ua_family != 0 && !p.uas.contains(ctx.ua_family);
        let gap = now.saturating_sub(p.last_country_ns());
        let quick = gap < secs(self.cfg.max_gap_s);
        if !(new_device || quick) {
            return;
        }
        let known = p.country_list();
        let mut why = Vec::new();
        if new_device {
            why.push(format!(
                "with a client it never used ({})",
                ctx.obs.user_agent.as_deref().unwrap_or("none")
            ));
        }
        if quick {
            why.push(format!(
                "{:.1} h after a request from {}",
                hours(gap),
                known.join(", ")
            ));
        }
        let alert = ctx.alert(
            AlertKind::NewCountry,
            if new_device && quick {
                Severity::High
            } else {
                Severity::Medium
            },
            if new_device && quick { 0.85 } else { 0.65 },
            format!(
                "{who}, established with {} requests from {}, is now in {} {}.",
                p.requests,
                known.join(", "),
                ctx.place(),
                why.join(" and ")
            ),
            evidence([
                ("country", json!(cc_str(c))),
                ("known_countries", json!(known)),
                ("history_requests", json!(p.requests)),
                ("new_device", json!(new_device)),
                ("hours_since_known_country", json!(r2(hours(gap)))),
                ("max_gap_h", json!(r2(self.cfg.max_gap_s / 3600.0))),
            ]),
        );
        out.push(Detection {
            alert,
            subject: subject::entity(ctx.entity),
        });
    }

    fn tracked(&self) -> usize {
        0
    }

    fn memory_bytes(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use crate::models::{Alert, AlertKind, Engine, ModelsConfig, synth::*};

    const APP: &str = "BankApp/4.2.1 (iPhone; iOS 18.1)";

    /// Layla: 5 days in Riyadh, two sessions a day with the app.
    fn layla(e: &mut Engine) -> u64 {
        for d in 0..5u64 {
            for h in [8u64, 20] {
                let t = T0 + d * 86_400 * S + h * 3600 * S;
                e.observe(&login(t, "192.0.2.44", "layla", true, APP));
                let tok = issued_token("layla", t);
                for k in 1..4 {
                    e.observe(&with_token(obs(t + k * S, "192.0.2.44", "/balance"), &tok));
                }
            }
        }
        T0 + 4 * 86_400 * S + 20 * 3600 * S
    }

    fn session(e: &mut Engine, t: u64, ip: &str, ua: &str) -> Vec<Alert> {
        let mut l = login(t, ip, "layla", true, ua);
        l.user_agent = Some(ua.into());
        let mut a = e.observe(&l);
        let tok = issued_token("layla", t);
        let mut o = with_token(obs(t + S, ip, "/balance"), &tok);
        o.user_agent = Some(ua.into());
        a.extend(e.observe(&o));
        a
    }

    #[test]
    fn a_jump_to_hanoi_an_hour_later_is_impossible_travel() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let last = layla(&mut e);
        let a = session(&mut e, last + 3600 * S, "203.0.113.8", APP);
        let it = a
            .iter()
            .find(|a| a.kind == AlertKind::ImpossibleTravel)
            .expect("impossible travel");
        assert!(it.explanation.contains("VN (Hanoi)"), "{}", it.explanation);
        assert!(it.evidence["speed_kmh"].as_f64().unwrap() > 5000.0);
        // Same device, but one hour after Riyadh: also a new country.
        assert!(a.iter().any(|a| a.kind == AlertKind::NewCountry));
    }

    #[test]
    fn plausible_travel_with_the_same_phone_is_not_flagged() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let last = layla(&mut e);
        // London 20 hours later (4,900 km: 245 km/h).
        let a = session(&mut e, last + 20 * 3600 * S, "198.18.3.9", APP);
        assert!(a.is_empty(), "{a:?}");
        // And short hops inside GeoIP error are never travel.
        let a = session(&mut e, last + 21 * 3600 * S, "198.18.77.1", APP);
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn a_new_country_with_a_new_client_is_flagged_even_days_later() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let last = layla(&mut e);
        let a = session(
            &mut e,
            last + 3 * 86_400 * S,
            "198.51.100.7",
            "python-requests/2.31",
        );
        let nc = a
            .iter()
            .find(|a| a.kind == AlertKind::NewCountry)
            .expect("new country");
        assert!(nc.explanation.contains("NG (Lagos)"), "{}", nc.explanation);
        assert!(nc.explanation.contains("SA"), "{}", nc.explanation);
        assert!(!a.iter().any(|a| a.kind == AlertKind::ImpossibleTravel));
    }

    #[test]
    fn a_thief_logging_in_as_layla_in_capitals_meets_her_history() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let last = layla(&mut e);
        // The server takes the name in any case; the profile must too.
        let t = last + 3 * 86_400 * S;
        let mut l = login(t, "198.51.100.7", " LAYLA", true, "python-requests/2.31");
        if let Some(x) = l.login.as_mut() {
            x.username = " LAYLA".into();
        }
        // As the enricher names it (`principal::identify`).
        l.principal.id = crate::enrich::principal::account_name(" LAYLA").into_owned();
        let a = e.observe(&l);
        let nc = a.iter().find(|a| a.kind == AlertKind::NewCountry);
        assert!(
            nc.is_some_and(|a| a.principal.as_deref() == Some("user:layla")),
            "{a:?}"
        );
        // The token that login was issued is hers too: its requests count in her profile.
        let requests = |e: &Engine| e.explain("user:layla").unwrap()["requests"].as_u64();
        let before = requests(&e);
        let tok = issued_token(" LAYLA", t);
        let mut o = with_token(obs(t + S, "198.51.100.7", "/balance"), &tok);
        o.user_agent = Some("python-requests/2.31".into());
        e.observe(&o);
        assert_eq!(requests(&e), before.map(|n| n + 1));
    }

    #[test]
    fn a_forged_jwt_on_a_public_page_neither_poisons_nor_blames_its_subject() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        // Layla's app, with a JWT issued before the capture began (no login seen), from Riyadh
        // over five days; anonymous visitors read the public catalogue.
        for d in 0..5u64 {
            for k in 0..6 {
                let t = T0 + d * 86_400 * S + 8 * 3600 * S + k * S;
                let o = with_jwt(obs(t, "192.0.2.44", "/balance"), "layla", "RS256", None);
                e.observe(&o);
                e.observe(&obs(t, "198.51.100.90", "/products"));
            }
        }
        let countries = |e: &Engine| e.explain("jwt:layla").unwrap()["countries"].clone();
        assert_eq!(countries(&e), serde_json::json!(["SA"]));
        // A token anyone could write (sub=layla, any signature) from Hanoi, on the public page.
        let t = T0 + 5 * 86_400 * S;
        let mut forged = with_jwt(obs(t, "203.0.113.8", "/products"), "layla", "RS256", None);
        forged.user_agent = Some("python-requests/2.31".into());
        let a = e.observe(&forged);
        assert!(!a.iter().any(|a| a.kind == AlertKind::NewCountry), "{a:?}");
        assert_eq!(
            countries(&e),
            serde_json::json!(["SA"]),
            "her profile learned VN"
        );
        // Where the answer needs the token (never served without one), it still counts.
        let mut stolen = with_jwt(
            obs(t + S, "203.0.113.8", "/balance"),
            "layla",
            "RS256",
            None,
        );
        stolen.user_agent = Some("python-requests/2.31".into());
        let a = e.observe(&stolen);
        assert!(a.iter().any(|a| a.kind == AlertKind::NewCountry), "{a:?}");
    }

    #[test]
    fn newcomers_and_failed_logins_do_not_count() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        // A new principal: no history, nothing to compare.
        let a = session(&mut e, T0, "203.0.113.8", APP);
        assert!(a.is_empty(), "{a:?}");
        let last = layla(&mut e);
        let mut out = Vec::new();
        for i in 0..3 {
            out.extend(e.observe(&login(
                last + 600 * S + i * 10 * S,
                "203.0.113.9",
                "layla",
                false,
                APP,
            )));
        }
        assert!(
            !out.iter()
                .any(|a| matches!(a.kind, AlertKind::ImpossibleTravel | AlertKind::NewCountry)),
            "{out:?}"
        );
    }
}
