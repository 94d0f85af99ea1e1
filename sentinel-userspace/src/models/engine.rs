//! The engine: runs every detector over each observation in stream order, keeps the shared
//! behaviour profiles, links credentials to the accounts that obtained them, and de-duplicates
//! repeated alerts.
//!
//! Use: [`Engine::new`] from the `[models]` section, [`Engine::observe`] for every observation
//! (in timestamp order; live capture and replay alike), [`Engine::tick`] now and then (every
//! second of stream time is plenty) so that time-driven state closes and expires without new
//! traffic. Every window and expiry is measured in observation time, so a replay of the same
//! file gives the same alerts.
//!
//! De-duplication: an alert of the same kind about the same subject (the principal, source,
//! credential or fingerprint the detector names) within `cooldown_s` is suppressed, unless it is
//! more severe than the one that went out.

use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;
use serde_json::{Value, json};

use super::{
    Action, Alert, AlertKind, LoginAttempt, Observation, Severity,
    alert::rfc3339,
    behavior::BehaviorDetector,
    bounded::{BoundedMap, key_of, key2, secs},
    config::ModelsConfig,
    credential::CredentialDetector,
    enumeration::EnumerationDetector,
    exposure::ExposureDetector,
    geo::GeoDetector,
    injection::InjectionDetector,
    profile::{Profile, ProfileSettings, Profiles, WindowSummary, ua_family},
    rate::RateDetector,
    token::TokenDetector,
};
use crate::enrich::principal::{LoginPaths, PrincipalKind, account_name};

/// Why a models configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// A setting is out of range.
    #[error("models.{field}: {message}")]
    Invalid {
        /// The setting (dotted path below `[models]`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// What a detector sees about one observation.
pub struct Ctx<'a> {
    /// The observation.
    pub obs: &'a Observation<'a>,
    /// The principal, display form.
    pub principal: &'a str,
    /// Key of the entity whose baseline applies: the account that obtained the credential (when
    /// a login issuing it was seen), else the principal.
    pub entity: u64,
    /// The account the credential belongs to, when linked (`user:layla`).
    pub account: Option<&'a str>,
    /// The observation is evidence of the entity's own behaviour (see [`super::profile`]).
    pub trusted: bool,
    /// A login request (parsed or on a login endpoint).
    pub is_login: bool,
    /// A failed login (the enricher's verdict, or 401/403 on a login endpoint).
    pub login_failed: bool,
    /// The entity's profile before this observation.
    pub profile: Option<&'a Profile>,
    /// Country of the client address.
    pub country: Option<&'a str>,
    /// User-agent family ([`ua_family`]).
    pub ua_family: u32,
    /// Alerts raised lately, for [`Ctx::is_repeat`].
    pub recent: &'a Recent,
    /// The principal is only the client's address, and a trusted proxy could not name it
    /// ([`crate::enrich::principal::UNKNOWN_CLIENT`]): every client so hidden shares it, so
    /// nothing is learned or counted per principal for it (no profile, rate or walk), while
    /// each request is still judged on its own (injection, exposure, credentials by account).
    pub unknown_client: bool,
}

/// Alerts raised lately (kind and subject -> when, severity): the one rule that suppresses
/// repeats, applied by the engine to what detectors raise and by detectors, through
/// [`Ctx::is_repeat`], before they build an alert at all.
pub struct Recent {
    map: BoundedMap<(u64, Severity)>,
    cooldown_ns: u64,
    /// Repeats dropped, by the engine or before they were built.
    suppressed: std::cell::Cell<u64>,
}

impl Recent {
    fn new(cap: usize, cooldown_ns: u64) -> Self {
        let mut map = BoundedMap::new(cap, cooldown_ns.max(1));
        // Only memory depends on forgetting old alerts: a cooldown late is soon enough.
        map.set_sweep_period(cooldown_ns);
        Self {
            map,
            cooldown_ns,
            suppressed: std::cell::Cell::new(0),
        }
    }

    /// True (and counted) when an alert of `kind` about `subject` at `severity` at `now_ns` is
    /// a repeat: one as severe or more went out less than the cooldown ago.
    pub fn is_repeat(
        &self,
        kind: AlertKind,
        subject: u64,
        severity: Severity,
        now_ns: u64,
    ) -> bool {
        let repeat = self
            .map
            .get(key2(&kind, &subject))
            .is_some_and(|&(t, sev)| {
                now_ns.saturating_sub(t) < self.cooldown_ns && severity <= sev
            });
        if repeat {
            self.suppressed.set(self.suppressed.get() + 1);
        }
        repeat
    }

    fn note(&mut self, kind: AlertKind, subject: u64, severity: Severity, now_ns: u64) {
        *self
            .map
            .entry(key2(&kind, &subject), now_ns, || (now_ns, severity)) = (now_ns, severity);
    }
}

impl Ctx<'_> {
    /// True when an alert of `kind` about `subject` at `severity` would be dropped as a repeat.
    /// Detectors that keep firing through a sustained attack check this before building one:
    /// formatting an explanation for every request of a flood only to drop it was most of the
    /// analysis time under load.
    pub fn is_repeat(&self, kind: AlertKind, subject: u64, severity: Severity) -> bool {
        self.recent
            .is_repeat(kind, subject, severity, self.obs.ts_ns)
    }

    /// An alert about this observation (action `alert`; the policy decides later).
    pub fn alert(
        &self,
        kind: AlertKind,
        severity: Severity,
        score: f64,
        explanation: String,
        mut evidence: BTreeMap<String, Value>,
    ) -> Alert {
        if let Some(a) = self.account {
            evidence.entry("account".into()).or_insert(json!(a));
        }
        make_alert(
            self.obs.ts_ns,
            kind,
            severity,
            score,
            crate::enrich::principal::client_text(self.obs.client_ip),
            Some(self.principal.to_owned()),
            Some(self.obs.endpoint.clone()),
            self.country.map(str::to_owned),
            explanation,
            evidence,
        )
    }

    /// Where the client is, for explanations: `VN (Hanoi)`, or `an unknown country`.
    pub fn place(&self) -> String {
        match &self.obs.geo {
            Some(g) => match (&g.country, &g.city) {
                (Some(c), Some(city)) => format!("{c} ({city})"),
                (Some(c), None) => c.to_string(),
                _ => "an unknown country".into(),
            },
            None => "an unknown country".into(),
        }
    }
}

/// An alert (action `alert`; the policy decides later).
#[expect(clippy::too_many_arguments, reason = "one field per alert field")]
pub fn make_alert(
    ts_ns: u64,
    kind: AlertKind,
    severity: Severity,
    score: f64,
    src_ip: String,
    principal: Option<String>,
    endpoint: Option<String>,
    country: Option<String>,
    explanation: String,
    evidence: BTreeMap<String, Value>,
) -> Alert {
    Alert {
        ts: rfc3339(ts_ns),
        kind,
        severity,
        score: score.clamp(0.0, 1.0),
        src_ip,
        principal,
        endpoint,
        country,
        action: Action::Alert,
        explanation,
        evidence,
        ts_ns,
        recommended_rate: None,
    }
}

/// Evidence from name/value pairs.
pub fn evidence<const N: usize>(pairs: [(&str, Value); N]) -> BTreeMap<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Rounds for evidence (two decimals).
pub fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A time span in seconds as an explanation says it, in the unit a person would use:
/// milliseconds under a second (a script's attempts are 10 ms apart, and "0.0 s" says nothing),
/// seconds under two minutes, then minutes, hours and days.
pub fn span_text(secs: f64) -> String {
    match secs {
        s if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        s if s < 120.0 => format!("{s:.1} s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} days", s / 86_400.0),
    }
}

/// An alert and the subject it is about (for de-duplication).
#[derive(Clone, Debug)]
pub struct Detection {
    /// The alert.
    pub alert: Alert,
    /// Hash of what the alert is about (principal, source, credential, fingerprint).
    pub subject: u64,
}

/// Subject keys.
pub mod subject {
    use std::net::IpAddr;

    use super::key2;

    /// A client address.
    pub fn source(ip: IpAddr) -> u64 {
        key2("src", &ip)
    }
    /// An entity (principal or linked account) key.
    pub fn entity(key: u64) -> u64 {
        key2("ent", &key)
    }
    /// Any other named thing (credential hash, fingerprint, endpoint).
    pub fn named(kind: &str, id: u64) -> u64 {
        key2(kind, &id)
    }
}

/// A streaming detector.
pub trait Detector: Send {
    /// Short name (for statistics).
    fn name(&self) -> &'static str;
    /// Looks at one observation (stream order) and pushes what it concludes.
    fn observe(&mut self, ctx: &Ctx<'_>, out: &mut Vec<Detection>);
    /// A principal's activity window closed (judged against its profile as it was).
    fn on_window(
        &mut self,
        _summary: &WindowSummary,
        _profile: &Profile,
        _now_ns: u64,
        _out: &mut Vec<Detection>,
    ) {
    }
    /// Whether the detector also judges each further login attempt of a request that carries
    /// several ([`Observation::more_logins`]: GraphQL aliases and batches), each as a request
    /// of its own with that attempt as its login.
    fn judges_each_login(&self) -> bool {
        false
    }
    /// Time passed without observations: expire state, raise time-driven alerts.
    fn tick(&mut self, _now_ns: u64, _out: &mut Vec<Detection>) {}
    /// Entries of per-key state held.
    fn tracked(&self) -> usize;
    /// Bytes of state held (estimate: allocated map capacity and fixed-size values).
    fn memory_bytes(&self) -> usize;
}

/// Per-detector figures.
#[derive(Clone, Debug, Serialize)]
pub struct DetectorStats {
    /// Detector.
    pub name: &'static str,
    /// Entries held.
    pub tracked: usize,
    /// Bytes held.
    pub memory_bytes: usize,
}

/// Engine figures (for `sentinel status` and the benchmark).
#[derive(Clone, Debug, Serialize)]
pub struct EngineStats {
    /// Observations seen.
    pub observations: u64,
    /// Alerts emitted per kind.
    pub alerts: BTreeMap<String, u64>,
    /// Alerts suppressed as repeats.
    pub suppressed: u64,
    /// Profiles held.
    pub profiles: usize,
    /// Profiles evicted because the store was full, and because they were idle.
    pub profile_evictions: (u64, u64),
    /// Credentials linked to accounts.
    pub links: usize,
    /// Detectors.
    pub detectors: Vec<DetectorStats>,
    /// Bytes held by the engine in total (estimate).
    pub memory_bytes: usize,
}

/// The engine.
pub struct Engine {
    cfg: ModelsConfig,
    /// `cfg.login_endpoints`, compiled.
    login: LoginPaths,
    profiles: Profiles,
    /// Credential -> the account that obtained it (shared: read for every observation).
    links: BoundedMap<Arc<str>>,
    /// Endpoint templates that have served a request without any credential: a JWT they
    /// answer proves nothing about its subject.
    public: BoundedMap<()>,
    /// Scratch for the principal's display form.
    principal_buf: String,
    detectors: Vec<Box<dyn Detector>>,
    recent: Recent,
    scratch: Vec<Detection>,
    swept: Vec<(WindowSummary, Profile)>,
    observations: u64,
    emitted: BTreeMap<AlertKind, u64>,
    last_tick_ns: u64,
}

/// Most entries one tick visits in one map (a tick after a long quiet spell, or in a map of a
/// million entries, does not stall the stream).
pub const SWEEP_BUDGET: usize = 65_536;

/// Endpoint templates remembered as public, at most (the learner keeps at most 20,000
/// templates).
const PUBLIC_ENDPOINTS: usize = 20_000;

impl Engine {
    /// An engine with every enabled detector of `cfg`.
    pub fn new(cfg: &ModelsConfig) -> Result<Self, ModelsError> {
        cfg.validate()?;
        let idle = secs(cfg.idle_s);
        let cap = cfg.max_principals;
        let mut detectors: Vec<Box<dyn Detector>> = Vec::new();
        if cfg.credential.enabled {
            detectors.push(Box::new(CredentialDetector::new(&cfg.credential, cap)));
        }
        if cfg.rate.enabled {
            detectors.push(Box::new(RateDetector::new(&cfg.rate, cap, idle)));
        }
        if cfg.geo.enabled {
            detectors.push(Box::new(GeoDetector::new(&cfg.geo)));
        }
        if cfg.injection.enabled {
            detectors.push(Box::new(InjectionDetector::new(
                &cfg.injection,
                &cfg.api_key_params,
            )));
        }
        if cfg.exposure.enabled {
            detectors.push(Box::new(ExposureDetector::new(&cfg.exposure, cap)));
        }
        if cfg.token.enabled {
            detectors.push(Box::new(TokenDetector::new(&cfg.token, cap)));
        }
        if cfg.enumeration.enabled {
            detectors.push(Box::new(EnumerationDetector::new(&cfg.enumeration, cap)));
        }
        if cfg.behavior.enabled {
            detectors.push(Box::new(BehaviorDetector::new(&cfg.behavior)));
        }
        Ok(Self {
            profiles: Profiles::new(
                cap,
                idle,
                ProfileSettings {
                    window_ns: secs(cfg.behavior.window_s),
                    window_max_requests: cfg.behavior.window_max_requests,
                    alpha: cfg.behavior.alpha,
                },
            ),
            links: BoundedMap::new(cap, idle),
            public: BoundedMap::new(PUBLIC_ENDPOINTS, u64::MAX),
            principal_buf: String::new(),
            detectors,
            recent: Recent::new(cap, secs(cfg.cooldown_s)),
            scratch: Vec::new(),
            swept: Vec::new(),
            observations: 0,
            emitted: BTreeMap::new(),
            last_tick_ns: 0,
            login: LoginPaths::new(&cfg.login_endpoints),
            cfg: cfg.clone(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &ModelsConfig {
        &self.cfg
    }

    fn is_login_endpoint(&self, endpoint: &str) -> bool {
        self.login.matches(endpoint)
    }

    /// Runs every detector over `o` and returns the alerts that are not repeats.
    pub fn observe(&mut self, o: &Observation) -> Vec<Alert> {
        let mut out = Vec::new();
        self.observe_into(o, &mut out);
        out
    }

    /// [`Engine::observe`] appending to `out` (no allocation when nothing is raised).
    pub fn observe_into(&mut self, o: &Observation, out: &mut Vec<Alert>) {
        self.observations += 1;
        // The principal's display form, written into a buffer kept between calls.
        let mut principal = std::mem::take(&mut self.principal_buf);
        o.principal.write_into(&mut principal);
        let account: Option<Arc<str>> = o
            .credential
            .as_deref()
            .and_then(|c| self.links.get(key_of(c)).cloned());
        let entity = key_of(account.as_deref().unwrap_or(&principal));
        let is_login = o.login.is_some() || self.is_login_endpoint(&o.endpoint);
        let refused = matches!(o.status, 401 | 403);
        let login_failed = is_login && (refused || o.login.as_ref().is_some_and(|l| !l.success));
        // A 401 says the server did not take the credential as its holder's (forged, expired,
        // revoked): nothing about the holder. A 403 took it and refused the action: the
        // holder's own doing, so a hijacker probing what the account may not do shows in its
        // window's error ratio.
        // A JWT is not verified here: anyone can write one naming any subject. On an endpoint
        // that serves requests without any credential, the server's answer says nothing about
        // the token, so there a JWT's requests teach its subject's profile (and are judged as
        // the subject's) only when the token was issued at a login seen (linked). A forged
        // token on a public page neither poisons nor blames its subject.
        let anonymous_ok = o.credential.is_none() && (200..300).contains(&o.status) && !is_login;
        let unlinked_jwt = o.principal.kind == PrincipalKind::Jwt && account.is_none();
        let mut vouched = true;
        // Only these two need the endpoint's key: most requests hash nothing more here.
        if anonymous_ok || unlinked_jwt {
            let endpoint_key = key_of(&*o.endpoint);
            if anonymous_ok {
                self.public.entry(endpoint_key, o.ts_ns, || ());
            }
            vouched = !unlinked_jwt || self.public.get(endpoint_key).is_none();
        }
        let unknown_client = o.principal.kind == PrincipalKind::Ip && o.client_ip.is_unspecified();
        let trusted = match o.principal.kind {
            PrincipalKind::Ip => !login_failed && !unknown_client,
            PrincipalKind::User => o.login.as_ref().is_some_and(|l| l.success) && !refused,
            _ => o.status != 401 && !login_failed && vouched,
        };
        let mut dets = std::mem::take(&mut self.scratch);
        dets.clear();
        let closed = if trusted {
            self.profiles.close_if_due(entity, o.ts_ns)
        } else {
            None
        };
        let ua = ua_family(o.user_agent.as_deref());
        {
            let ctx = Ctx {
                obs: o,
                principal: &principal,
                entity,
                account: account.as_deref(),
                trusted,
                is_login,
                login_failed,
                profile: self.profiles.get(entity),
                country: o.geo.as_ref().and_then(|g| g.country.as_deref()),
                ua_family: ua,
                recent: &self.recent,
                unknown_client,
            };
            if let (Some(s), Some(p)) = (&closed, ctx.profile) {
                for d in &mut self.detectors {
                    d.on_window(s, p, o.ts_ns, &mut dets);
                }
            }
            for d in &mut self.detectors {
                d.observe(&ctx, &mut dets);
            }
        }
        if !o.more_logins.is_empty() {
            self.each_login(o, &principal, refused, unknown_client, ua, &mut dets);
        }
        if trusted {
            let name = account.as_deref().unwrap_or(&principal);
            self.profiles.absorb(entity, &|| name.to_owned(), o, ua);
        }
        if !refused {
            for l in o.login.iter().chain(&o.more_logins) {
                self.link(o.ts_ns, l);
            }
            if let Some(r) = &o.refreshed
                && (200..300).contains(&o.status)
            {
                self.relink(o.ts_ns, r);
            }
        }
        self.emit(&mut dets, out);
        self.scratch = dets;
        self.principal_buf = principal;
    }

    /// Runs the detectors that judge each login over the further attempts of `o`, each as the
    /// request it would have been alone: its account's principal and profile, its outcome.
    /// They teach no profile (no honest client logs in many times in one request); the
    /// credentials each was issued are linked to its own account by [`Engine::link`].
    fn each_login(
        &mut self,
        o: &Observation,
        principal: &str,
        refused: bool,
        unknown_client: bool,
        ua: u32,
        dets: &mut Vec<Detection>,
    ) {
        let mut each = Observation {
            more_logins: Vec::new(),
            refreshed: None,
            login: None,
            ..o.clone()
        };
        let mut name = String::new();
        for attempt in &o.more_logins {
            name.clear();
            if attempt.username.is_empty() {
                name.push_str(principal);
            } else {
                name.push_str("user:");
                name.push_str(&account_name(&attempt.username));
            }
            each.login = Some(attempt.clone());
            let entity = key_of(name.as_str());
            let ctx = Ctx {
                obs: &each,
                principal: &name,
                entity,
                account: None,
                trusted: false,
                is_login: true,
                login_failed: refused || !attempt.success,
                profile: self.profiles.get(entity),
                country: o.geo.as_ref().and_then(|g| g.country.as_deref()),
                ua_family: ua,
                recent: &self.recent,
                unknown_client,
            };
            for d in self.detectors.iter_mut().filter(|d| d.judges_each_login()) {
                d.observe(&ctx, dets);
            }
        }
    }

    /// Remembers which account the credentials a successful login attempt was issued belong
    /// to ([`LoginAttempt::issued`], found by the enricher: tokens of the answer, session
    /// cookies it set), so that the requests carrying them are judged as the account.
    fn link(&mut self, now_ns: u64, l: &LoginAttempt) {
        if !l.success || l.issued.is_empty() || l.username.is_empty() {
            return;
        }
        let account: Arc<str> = format!("user:{}", account_name(&l.username)).into();
        for credential in &l.issued {
            *self
                .links
                .entry(key_of(&**credential), now_ns, || Arc::clone(&account)) =
                Arc::clone(&account);
        }
    }

    /// Links the credentials a refresh issued to the account its refresh credential belongs
    /// to (linked at a login, or at an earlier refresh: tokens rotate), so that a session stays
    /// its account's past the first access token's lifetime, and a stolen credential is not
    /// laundered into an unlinked one by refreshing it.
    fn relink(&mut self, now_ns: u64, r: &super::observation::Refresh) {
        // The account of every credential presented that is linked: one, or nothing is
        // linked (a stolen refresh token beside the attacker's own, a decoy).
        let mut account: Option<Arc<str>> = None;
        for p in &r.presented {
            if let Some(a) = self.links.get(key_of(&**p)) {
                match &account {
                    Some(b) if b != a => return,
                    _ => account = Some(Arc::clone(a)),
                }
            }
        }
        let Some(account) = account else {
            return;
        };
        for credential in &r.issued {
            // A credential already another account's stays so (a token an answer carries
            // for someone else: an invitation, a service account's key).
            let slot = self
                .links
                .entry(key_of(&**credential), now_ns, || Arc::clone(&account));
            if *slot == account || slot.is_empty() {
                *slot = Arc::clone(&account);
            }
        }
    }

    fn emit(&mut self, dets: &mut Vec<Detection>, out: &mut Vec<Alert>) {
        for d in dets.drain(..) {
            let (kind, severity, now) = (d.alert.kind, d.alert.severity, d.alert.ts_ns);
            if self.recent.is_repeat(kind, d.subject, severity, now) {
                continue;
            }
            self.recent.note(kind, d.subject, severity, now);
            *self.emitted.entry(d.alert.kind).or_default() += 1;
            out.push(d.alert);
        }
    }

    /// Advances stream time to `now_ns` without an observation: closes activity windows that
    /// are over (a burst that stopped is still judged), expires idle state, and returns what
    /// that raised. Cheap to call often: the maps' sweeps are paced by stream time (each covers
    /// its map once per sweep period, see [`BoundedMap::sweep`]), and one call visits at most
    /// [`SWEEP_BUDGET`] entries of a map.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Alert> {
        let mut out = Vec::new();
        if now_ns < self.last_tick_ns {
            return out;
        }
        self.last_tick_ns = now_ns;
        let mut dets = std::mem::take(&mut self.scratch);
        dets.clear();
        let budget = SWEEP_BUDGET;
        let mut swept = std::mem::take(&mut self.swept);
        self.profiles.sweep(now_ns, budget, &mut swept);
        for (s, p) in swept.drain(..) {
            for d in &mut self.detectors {
                d.on_window(&s, &p, now_ns, &mut dets);
            }
        }
        self.swept = swept;
        for d in &mut self.detectors {
            d.tick(now_ns, &mut dets);
        }
        self.links.sweep(now_ns, budget);
        self.recent.map.sweep(now_ns, budget);
        self.emit(&mut dets, &mut out);
        self.scratch = dets;
        out
    }

    /// When the next activity window falls due, if one is open: the only work of a tick that
    /// must happen at its time (the rest, expiring idle state, is paced by stream time and
    /// catches up by itself).
    pub fn next_due_ns(&self) -> Option<u64> {
        self.profiles.next_due_ns()
    }

    /// The profile of a principal (display form, or a linked account such as `user:layla`),
    /// as JSON for `sentinel explain`.
    pub fn explain(&self, principal: &str) -> Option<Value> {
        let p = self.profiles.get(key_of(principal))?;
        let top: Vec<usize> = {
            let mut h: Vec<usize> = (0..24).collect();
            h.sort_by_key(|i| std::cmp::Reverse(p.hours[*i]));
            h.into_iter().take(3).filter(|i| p.hours[*i] > 0).collect()
        };
        Some(json!({
            "principal": &*p.name,
            "first_seen": rfc3339(p.first_ns),
            "last_seen": rfc3339(p.last_ns),
            "requests": p.requests,
            "windows": p.windows,
            "requests_per_window": r2(f64::from(p.rate.mean)),
            "busiest_hours_utc": top,
            "countries": p.country_list(),
            "user_agents": p.uas.len(),
            "last_ip": p.last_ip.to_string(),
            "request_bytes": r2(f64::from(p.req_size.mean).exp2() - 1.0),
            "response_bytes": r2(f64::from(p.resp_size.mean).exp2() - 1.0),
        }))
    }

    /// Figures about the engine.
    pub fn stats(&self) -> EngineStats {
        let detectors: Vec<DetectorStats> = self
            .detectors
            .iter()
            .map(|d| DetectorStats {
                name: d.name(),
                tracked: d.tracked(),
                memory_bytes: d.memory_bytes(),
            })
            .collect();
        let links_bytes =
            self.links.memory_bytes() + self.links.iter().map(|(_, a)| a.len()).sum::<usize>();
        EngineStats {
            observations: self.observations,
            alerts: self
                .emitted
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), *v))
                .collect(),
            suppressed: self.recent.suppressed.get(),
            profiles: self.profiles.len(),
            profile_evictions: self.profiles.evictions(),
            links: self.links.len(),
            memory_bytes: self.profiles.memory_bytes()
                + links_bytes
                + self.public.memory_bytes()
                + self.recent.map.memory_bytes()
                + detectors.iter().map(|d| d.memory_bytes).sum::<usize>(),
            detectors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_in_the_unit_a_person_would_use() {
        assert_eq!(span_text(0.0243), "24 ms");
        assert_eq!(span_text(0.0), "0 ms");
        assert_eq!(span_text(2.0), "2.0 s");
        assert_eq!(span_text(119.94), "119.9 s");
        assert_eq!(span_text(430.14), "7.2 min");
        assert_eq!(span_text(3600.0), "60.0 min");
        assert_eq!(span_text(86_400.0), "24.0 h");
        assert_eq!(span_text(3.0 * 86_400.0), "3.0 days");
    }
    use crate::models::synth::*;

    #[test]
    fn repeats_are_suppressed_within_the_cooldown_unless_more_severe() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let mut n = 0;
        for i in 0..10u64 {
            let mut o = obs(T0 + i * S, "203.0.113.5", "/search");
            o.query = "q=1%27%20OR%20%271%27%3D%271".into();
            n += e
                .observe(&o)
                .iter()
                .filter(|a| a.kind == AlertKind::SqlInjection)
                .count();
        }
        assert_eq!(n, 1, "one alert per source within the cooldown");
        assert!(e.stats().suppressed >= 9);
        let mut o = obs(T0 + 400 * S, "203.0.113.5", "/search");
        o.query = "q=1%27%20OR%20%271%27%3D%271".into();
        assert_eq!(e.observe(&o).len(), 1, "after the cooldown it alerts again");
    }

    #[test]
    fn a_credential_refused_as_unknown_teaches_nothing_but_a_forbidden_action_counts() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let at = |i: u64, status: u16| {
            let mut o = with_token(obs(T0 + i * S, "192.0.2.5", "/accounts/7/limits"), "tok-a");
            o.status = status;
            o
        };
        e.observe(&at(0, 200));
        let key = key_of(e.principal_buf.as_str());
        let seen = |e: &Engine| {
            let p = e.profiles.get(key).expect("a profile");
            (p.requests, p.win.count, p.win.errors)
        };
        assert_eq!(seen(&e), (1, 1, 0));
        e.observe(&at(1, 401));
        assert_eq!(seen(&e), (1, 1, 0), "a 401 is not the holder's doing");
        e.observe(&at(2, 403));
        assert_eq!(seen(&e), (2, 2, 1), "a 403 is, and shows as an error");
    }

    #[test]
    fn credentials_are_linked_to_the_account_that_logged_in() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        e.observe(&login(T0, "192.0.2.5", "layla", true, "BankApp/4.2"));
        let tok = issued_token("layla", T0);
        e.observe(&with_token(obs(T0 + S, "192.0.2.5", "/balance"), &tok));
        let x = e.explain("user:layla").expect("profile under the account");
        assert_eq!(x["requests"], 2);
        assert_eq!(x["countries"], json!(["SA"]));
        assert_eq!(e.stats().links, 1);
    }

    #[test]
    fn failed_logins_do_not_teach_the_account_profile() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        e.observe(&login(T0, "192.0.2.5", "layla", true, "BankApp/4.2"));
        for i in 0..20 {
            e.observe(&login(T0 + i * S, "203.0.113.9", "layla", false, "curl/8"));
        }
        let x = e.explain("user:layla").unwrap();
        assert_eq!(x["countries"], json!(["SA"]));
        assert_eq!(x["requests"], 1);
    }

    #[test]
    fn refusals_on_a_login_endpoint_in_any_case_are_failed_logins() {
        // No user name could be read: the endpoint alone makes these logins.
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let mut alerts = Vec::new();
        for (i, path) in ["/LOGIN", "/Login/", "/api/LOGIN"].into_iter().enumerate() {
            let mut o = login(T0 + i as u64 * S, "203.0.113.9", "x", false, "curl/8");
            o.login = None;
            o.endpoint = path.into();
            alerts.extend(e.observe(&o));
        }
        assert!(
            alerts.iter().any(|a| a.kind == AlertKind::BruteForce),
            "{alerts:?}"
        );
    }

    #[test]
    fn clients_a_proxy_could_not_name_are_not_one_principal() {
        // The same walk over 400 accounts, 20 a second, from one address and from clients a
        // trusted proxy named `unknown` (the enricher's 0.0.0.0 stand-in): the address is an
        // enumerating principal; the hidden clients share no profile, rate or walk.
        use crate::models::bounded::NS;
        let kinds = |ip: &str| {
            let mut e = Engine::new(&ModelsConfig::default()).unwrap();
            let mut kinds = std::collections::BTreeSet::new();
            for i in 0..400u64 {
                let mut o = obs(T0 + i * NS / 20, ip, &format!("/accounts/{}", 10_000 + i));
                o.endpoint = "/accounts/{id}".into();
                kinds.extend(e.observe(&o).into_iter().map(|a| a.kind));
            }
            let mut o = obs(T0 + 30 * NS, ip, "/search");
            o.query = "q=1%27%20UNION%20SELECT%20password%20FROM%20users--".into();
            kinds.extend(e.observe(&o).into_iter().map(|a| a.kind));
            (kinds, e.stats().profiles)
        };
        let (named, profiles) = kinds("198.18.0.5");
        assert!(named.contains(&AlertKind::Enumeration), "{named:?}");
        assert!(named.contains(&AlertKind::SqlInjection), "{named:?}");
        assert_eq!(profiles, 1);
        let (hidden, profiles) = kinds("0.0.0.0");
        assert_eq!(
            hidden.into_iter().collect::<Vec<_>>(),
            [AlertKind::SqlInjection],
            "each request is still judged on its own"
        );
        assert_eq!(profiles, 0);
    }

    #[test]
    fn bad_settings_are_rejected_with_their_name() {
        let cfg: ModelsConfig = toml::from_str("cooldown_s = -1").unwrap();
        let Err(e) = Engine::new(&cfg) else {
            panic!("accepted")
        };
        assert!(e.to_string().contains("cooldown_s"), "{e}");
        assert!(toml::from_str::<ModelsConfig>("coldown_s = 1").is_err());
        let cfg: ModelsConfig = toml::from_str("[geo]\nmax_speed_kmh = 800\n").unwrap();
        assert_eq!(cfg.geo.max_speed_kmh, 800.0);
    }
}
