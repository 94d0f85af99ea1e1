//! Stages 4 and 5 of the data flow glued together: an HTTP [`Transaction`] (from live capture or
//! a replayed file, the analyzer cannot tell) is enriched into an [`Observation`] and run through
//! every detection model; what comes out are [`Alert`]s, with action `alert` (the response
//! policy in `verdict` decides what to do about them).
//!
//! Stream time is the transactions' own capture time: the models are ticked once per second of
//! it, so a replay of the same file gives the same alerts however fast it runs, and the live
//! daemon calls [`Analyzer::tick`] with the wall clock when traffic is quiet.

use std::path::PathBuf;

use serde::Serialize;

use crate::{
    enrich::{
        geo::GeoDb,
        pipeline::{EnrichSettings, Enricher, TransactionFacts},
    },
    http::Transaction,
    models::{Alert, Engine, EngineStats, ModelsConfig, Observation},
};

/// Stream time between two engine ticks.
const TICK_NS: u64 = 1_000_000_000;
/// Ticks at most run over a jump in stream time (see [`Analyzer::tick`]).
const CATCH_UP_TICKS: u64 = 60;

/// When to tick, catching up over a jump in stream time from `start` (when the next tick was
/// due) to `now_ns`, for a window that fell due at `due`: the end of the step it falls in, the
/// gap being cut into at most [`CATCH_UP_TICKS`] steps of at least [`TICK_NS`]. `None` when
/// that is not before `now_ns` (the tick at `now_ns` judges it).
fn catch_up_at(start: u64, now_ns: u64, due: u64) -> Option<u64> {
    let step = (now_ns.saturating_sub(start) / CATCH_UP_TICKS).max(TICK_NS);
    let t = start + due.saturating_sub(start).div_ceil(step) * step;
    (t < now_ns).then_some(t)
}

/// What the analyzer was given and how it went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AnalyzerStats {
    /// Transactions analysed.
    pub transactions: u64,
    /// Alerts raised (after de-duplication).
    pub alerts: u64,
    /// GeoIP files loaded (empty: the geo models are off).
    pub geoip_files: Vec<String>,
    /// Why geo models are off, when they are.
    pub geo_off_reason: Option<String>,
    /// GeoIP lookups whose record could not be read (a damaged database): those addresses had
    /// no location.
    pub geo_errors: u64,
    /// Endpoint templates learned.
    pub templates: usize,
}

/// Enrichment and models over a stream of transactions.
pub struct Analyzer {
    enricher: Enricher,
    engine: Engine,
    next_tick_ns: u64,
    stats: AnalyzerStats,
}

/// Why an analyzer cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzerError {
    /// A GeoIP file could not be opened or read.
    #[error("{0}")]
    Geo(String),
    /// The `[enrich]` or `[models]` settings are invalid.
    #[error("{0}")]
    Config(String),
}

impl Analyzer {
    /// An analyzer with the given settings. `geoip` lists `.mmdb` files (searched in order);
    /// none, and the geo models stay idle and [`AnalyzerStats::geo_off_reason`] says so.
    pub fn new(
        enrich: &EnrichSettings,
        models: &ModelsConfig,
        geoip: &[PathBuf],
    ) -> Result<Self, AnalyzerError> {
        let (geo, geo_off_reason) = if geoip.is_empty() {
            (None, Some("no GeoIP database configured".to_owned()))
        } else {
            let db = GeoDb::open(geoip).map_err(|e| AnalyzerError::Geo(e.to_string()))?;
            (Some(db), None)
        };
        let geoip_files = geo
            .as_ref()
            .map(|g| g.files().iter().map(|p| p.display().to_string()).collect())
            .unwrap_or_default();
        // The enricher reads user names where the models count logins.
        let enricher = Enricher::new(geo, enrich)
            .map_err(AnalyzerError::Config)?
            .with_login_paths(&models.login_endpoints)
            .with_graphql(&models.graphql_endpoints, &models.graphql_login_fields)
            .with_api_key_params(&models.api_key_params);
        let engine = Engine::new(models).map_err(|e| AnalyzerError::Config(e.to_string()))?;
        Ok(Self {
            enricher,
            engine,
            next_tick_ns: 0,
            stats: AnalyzerStats {
                geoip_files,
                geo_off_reason,
                ..AnalyzerStats::default()
            },
        })
    }

    /// The API key parameters the enricher reads (`[models] api_key_params`), whose values the
    /// transaction log redacts.
    pub fn api_key_params(&self) -> &[String] {
        self.enricher.api_key_params()
    }

    /// Enriches one transaction (sets its principal) and runs the models; alerts are appended
    /// to `out`.
    pub fn transaction(&mut self, t: &mut Transaction, out: &mut Vec<Alert>) {
        let obs = self.observation(t);
        let name = obs.principal.name();
        self.observe(&obs, out);
        t.principal = Some(name);
    }

    /// The observation the models would see for `t`.
    pub fn observation<'t>(&mut self, t: &'t Transaction) -> Observation<'t> {
        let facts = TransactionFacts {
            ts_ns: t.ts_ns,
            src: (t.client.ip(), t.client.port()),
            dst: (t.server.ip(), t.server.port()),
            method: t.method(),
            path: t.path(),
            query: t.query(),
            req_headers: t
                .request
                .headers()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
            req_body: &t.req_body,
            req_bytes: t.req_bytes,
            status: t.status().unwrap_or(0),
            resp_content_type: t.response.as_ref().and_then(|r| r.header("content-type")),
            resp_head: t.response.as_deref(),
            resp_body: &t.resp_body,
            resp_bytes: t.resp_bytes,
            latency_ms: t.latency_ms().unwrap_or(0.0),
        };
        self.enricher.enrich(facts)
    }

    /// Runs the models over one observation (ticking them first when a second of stream time
    /// has passed); alerts are appended to `out`.
    pub fn observe(&mut self, obs: &Observation, out: &mut Vec<Alert>) {
        self.stats.transactions += 1;
        self.tick(obs.ts_ns, out);
        let before = out.len();
        self.engine.observe_into(obs, out);
        self.stats.alerts += (out.len() - before) as u64;
    }

    /// Advances stream time to `now_ns` without traffic: windows that are over are judged and
    /// idle state expires. Does nothing until a second has passed since the last tick.
    ///
    /// When stream time jumps (quiet traffic in a capture), the gap is divided into up to
    /// [`CATCH_UP_TICKS`] steps (a second each when it is short enough), and the models are
    /// first ticked at the end of each step in which an activity window fell due, so that the
    /// window is judged, and stamped, close to when a live daemon (ticked by the wall clock)
    /// would have judged it, not at the next request. Steps in which nothing falls due are
    /// skipped: what else a tick does is paced by stream time and catches up by itself.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Alert>) {
        if now_ns < self.next_tick_ns {
            return;
        }
        if self.next_tick_ns > 0 && now_ns > self.next_tick_ns + TICK_NS {
            let start = self.next_tick_ns;
            // A tick closes every window due by its time, so each one is at a later step.
            for _ in 0..CATCH_UP_TICKS {
                let Some(t) = self
                    .engine
                    .next_due_ns()
                    .and_then(|due| catch_up_at(start, now_ns, due))
                else {
                    break;
                };
                self.engine_tick(t, out);
            }
        }
        self.next_tick_ns = now_ns.saturating_add(TICK_NS);
        self.engine_tick(now_ns, out);
    }

    fn engine_tick(&mut self, now_ns: u64, out: &mut Vec<Alert>) {
        let alerts = self.engine.tick(now_ns);
        self.stats.alerts += alerts.len() as u64;
        out.extend(alerts);
    }

    /// The end of the stream: the windows still open are judged as of `now_ns`.
    pub fn finish(&mut self, now_ns: u64, out: &mut Vec<Alert>) {
        self.next_tick_ns = 0;
        self.tick(now_ns, out);
    }

    /// Figures for `status` and `--stats`.
    pub fn stats(&self) -> AnalyzerStats {
        AnalyzerStats {
            templates: self.enricher.templates().len(),
            geo_errors: self.enricher.geo_errors(),
            ..self.stats.clone()
        }
    }

    /// The models' own figures.
    pub fn engine_stats(&self) -> EngineStats {
        self.engine.stats()
    }

    /// A principal's profile as JSON, for `sentinel explain`.
    pub fn explain(&self, principal: &str) -> Option<serde_json::Value> {
        self.engine.explain(principal)
    }

    /// True when GeoIP is loaded.
    pub fn has_geo(&self) -> bool {
        self.enricher.has_geo()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = TICK_NS;

    #[test]
    fn user_names_are_read_on_the_configured_login_endpoints() {
        let models = ModelsConfig {
            login_endpoints: vec!["/v2/customer/authenticate".into()],
            ..ModelsConfig::default()
        };
        let mut a = Analyzer::new(&EnrichSettings::default(), &models, &[]).unwrap();
        let body = br#"{"username":"layla","password":"x"}"#;
        let mut user = |path| {
            let facts = TransactionFacts {
                ts_ns: 1_000 * S,
                src: ("203.0.113.7".parse().unwrap(), 40000),
                dst: ("198.18.0.1".parse().unwrap(), 8080),
                method: "POST",
                path,
                query: "",
                req_headers: vec![("Content-Type".into(), "application/json".into())],
                req_body: body,
                req_bytes: body.len() as u64,
                status: 401,
                resp_content_type: None,
                resp_head: None,
                resp_body: b"{}",
                resp_bytes: 2,
                latency_ms: 1.0,
            };
            a.enricher.enrich(facts).login.map(|l| l.username)
        };
        assert_eq!(user("/v2/customer/authenticate").as_deref(), Some("layla"));
        assert_eq!(user("/login"), None, "not a login endpoint here");
    }

    /// One exchange on a connection of its own from `client` at `ts_ns`, through reassembly
    /// and the HTTP parser: the transaction a capture of it gives.
    fn exchange(client: &str, ts_ns: u64, req: &str, resp: &str) -> Transaction {
        use crate::{
            capture::synth::Conversation,
            pipeline::{Pipeline, PipelineSettings},
        };
        let mut c = Conversation::open(
            format!("{client}:40000").parse().unwrap(),
            "198.18.255.1:443".parse().unwrap(),
            ts_ns,
        );
        c.send(true, req.as_bytes(), &[], ts_ns + 1_000_000);
        c.send(false, resp.as_bytes(), &[], ts_ns + 2_000_000);
        let mut p = Pipeline::new(PipelineSettings::default());
        let mut out = Vec::new();
        for s in c.segments {
            p.push(s);
            out.extend(p.drain());
        }
        p.finish();
        out.extend(p.drain());
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    #[test]
    fn a_cookie_users_later_sessions_are_judged_as_the_account() {
        use crate::{
            enrich::geo::testdb::{Layout, Place, build},
            models::AlertKind,
        };
        let dir = crate::lab::TempDir::new("sentinel-cookie-sessions").unwrap();
        let geo = dir.join("geo.mmdb");
        let places = [
            ("192.0.2.0/24", "SA", "Riyadh", 24.7136, 46.6753),
            ("203.0.113.0/24", "VN", "Hanoi", 21.0278, 105.8342),
        ]
        .map(|(net, country, city, lat, lon)| Place {
            net: net.parse().unwrap(),
            country,
            city,
            lat,
            lon,
        });
        std::fs::write(&geo, build(&places, Layout::MaxMind).unwrap()).unwrap();
        let mut a =
            Analyzer::new(&EnrichSettings::default(), &ModelsConfig::default(), &[geo]).unwrap();
        let ua =
            "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
        // A web login: the session in a cookie, nothing in the answer's body.
        let login = |cookie: &str, sid: &str| {
            let body = r#"{"username":"layla","password":"pw"}"#;
            let answer = r#"{"user":{"id":7,"name":"Layla"}}"#;
            (
                format!(
                    "POST /login HTTP/1.1\r\nHost: bank.test\r\n{ua}\r\n{cookie}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
                format!(
                    "HTTP/1.1 200 OK\r\nSet-Cookie: SESSIONID={sid}; Path=/; Secure; HttpOnly; SameSite=Lax\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                ),
            )
        };
        let get = |sid: &str| {
            (
                format!(
                    "GET /balance HTTP/1.1\r\nHost: bank.test\r\n{ua}\r\nCookie: theme=dark; SESSIONID={sid}\r\n\r\n"
                ),
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"balance\":1200}"
                    .to_string(),
            )
        };
        let t0 = 1_793_491_200 * S;
        let mut run = |ip: &str, ts: u64, (req, resp): (String, String)| {
            let mut t = exchange(ip, ts, &req, &resp);
            let mut alerts = Vec::new();
            a.transaction(&mut t, &mut alerts);
            (t.principal.unwrap(), alerts)
        };
        // Day one from Riyadh: a login, then a dozen requests over the day.
        run("192.0.2.10", t0, login("", "s-day-one"));
        for i in 1..=12 {
            run("192.0.2.10", t0 + i * 1_800 * S, get("s-day-one"));
        }
        // Day two: she logs in again (her browser still sending yesterday's cookie), and her
        // new session's cookie is used ten minutes later from Hanoi.
        let day2 = t0 + 26 * 3_600 * S;
        run(
            "192.0.2.10",
            day2,
            login("Cookie: SESSIONID=s-day-one\r\n", "s-day-two"),
        );
        let (principal, alerts) = run("203.0.113.9", day2 + 600 * S, get("s-day-two"));
        assert!(principal.starts_with("sess:"), "{principal}");
        let travel = alerts
            .iter()
            .find(|al| al.kind == AlertKind::ImpossibleTravel)
            .unwrap_or_else(|| panic!("{alerts:?}"));
        assert_eq!(travel.principal.as_deref(), Some(principal.as_str()));
        assert_eq!(travel.evidence["account"], "user:layla");
        assert_eq!(travel.evidence["previous_country"], "SA");
        assert_eq!(a.engine_stats().links, 2);
        // Both logins and both sessions' requests (12 and 1) are the account's.
        assert_eq!(a.explain("user:layla").unwrap()["requests"], 15);
    }

    #[test]
    fn a_window_due_in_a_gap_is_judged_at_the_end_of_its_step() {
        let start = 1_000 * S;
        // A short gap: one-second steps, as a live daemon ticks.
        assert_eq!(
            catch_up_at(start, start + 30 * S, start + 4 * S + 300),
            Some(start + 5 * S)
        );
        assert_eq!(
            catch_up_at(start, start + 30 * S, start + 4 * S),
            Some(start + 4 * S)
        );
        // Due before the gap began: at its start.
        assert_eq!(
            catch_up_at(start, start + 30 * S, start - S / 2),
            Some(start)
        );
        // In the last step: the tick at `now_ns` judges it.
        assert_eq!(catch_up_at(start, start + 30 * S, start + 29 * S + 1), None);
        assert_eq!(catch_up_at(start, start + 30 * S, start + 40 * S), None);
        // A two-hour gap: 60 steps of two minutes.
        let now = start + 7_200 * S;
        assert_eq!(
            catch_up_at(start, now, start + 61 * S),
            Some(start + 120 * S)
        );
        assert_eq!(catch_up_at(start, now, start + 7_081 * S), None);
        assert_eq!(
            catch_up_at(start, now, start + 7_079 * S),
            Some(start + 7_080 * S)
        );
    }
}
