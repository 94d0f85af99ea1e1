//! The response loop: every alert goes through the policy; decisions become kernel verdicts
//! (throttle, block, wider prefix, killed flow), token revocations at the identity provider, and
//! the alert itself is written to the alert log and sent to the webhook with the action taken.
//!
//! The kernel write and the alert log happen in [`Responder::handle`]; everything that talks to
//! another host (the webhook, the identity provider) runs in background tasks with retries, so
//! a slow receiver never delays the next verdict. [`Responder::flush`] waits for them.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Serialize;
use tokio::{sync::mpsc, task::JoinSet};
use tracing::{info, warn};

use super::{
    enforce::{self, VerdictLog},
    lists::{self, Flow},
    policy::{Decider, Policy},
    target::{MapKey, Target},
};
use crate::{
    datapath::Maps,
    models::{Action, Alert, AlertKind, Severity},
    notify::{
        alerts::{AlertLog, send_webhook},
        http::RetryPolicy,
        revoke::{RevokeConfig, revoke},
    },
};

/// An alert, with what the response may need from the request that raised it (kept in memory
/// only): the session tokens its subject holds, and the flow it came on. Its `Debug` shows
/// the tokens as their short hashes, never in clear.
#[derive(Clone)]
pub struct AlertEvent {
    /// The alert.
    pub alert: Alert,
    /// Tokens the alert's principal (or the account it names) holds, for `revoke_token`.
    pub tokens: Vec<String>,
    /// The client-to-server flow of the request that raised it, for `kill_flow`.
    pub flow: Option<Flow>,
}

impl std::fmt::Debug for AlertEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tokens: Vec<String> = self
            .tokens
            .iter()
            .map(|t| crate::enrich::principal::short_hash(t))
            .collect();
        f.debug_struct("AlertEvent")
            .field("alert", &self.alert)
            .field("tokens", &tokens)
            .field("flow", &self.flow)
            .finish()
    }
}

impl AlertEvent {
    /// An event with nothing but the alert.
    pub fn new(alert: Alert) -> Self {
        Self {
            alert,
            tokens: Vec::new(),
            flow: None,
        }
    }
}

/// Background notifications in flight at most; beyond, webhook deliveries are dropped (and
/// counted) rather than queued without bound.
const MAX_INFLIGHT: usize = 256;

/// Revoked tokens remembered at most.
const MAX_REMEMBERED: usize = 100_000;

/// What the responder did, for `sentinel status` and the metrics.
#[derive(Debug, Default)]
pub struct ResponseStats {
    /// Alerts handled, per kind and action taken.
    pub alerts: Mutex<std::collections::HashMap<(AlertKind, Action), u64>>,
    /// Kernel verdicts written (shadow ones included).
    pub verdicts: AtomicU64,
    /// Kernel writes that failed.
    pub verdict_errors: AtomicU64,
    /// Alerts not acted on because their address or principal is allowlisted.
    pub allowlisted: AtomicU64,
    /// Tokens revoked at the identity provider.
    pub revoked: AtomicU64,
    /// Revocations that failed (each one is an alert too).
    pub revoke_failed: AtomicU64,
    /// Webhook deliveries that failed after their retries.
    pub webhook_failed: AtomicU64,
    /// Notifications dropped because too many were in flight.
    pub notify_dropped: AtomicU64,
    /// Milliseconds from the capture of the request that raised the last verdict to the
    /// verdict in the kernel.
    pub last_verdict_ms: Mutex<Option<f64>>,
}

impl ResponseStats {
    fn count(&self, kind: AlertKind, action: Action) {
        *self
            .alerts
            .lock()
            .expect("stats lock")
            .entry((kind, action))
            .or_default() += 1;
    }

    /// Alerts per kind (every action).
    pub fn per_kind(&self) -> BTreeMap<AlertKind, u64> {
        let mut out = BTreeMap::new();
        for ((k, _), n) in self.alerts.lock().expect("stats lock").iter() {
            *out.entry(*k).or_default() += n;
        }
        out
    }

    /// A JSON summary.
    pub fn report(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Report {
            alerts: BTreeMap<String, u64>,
            actions: BTreeMap<String, u64>,
            verdicts: u64,
            verdict_errors: u64,
            allowlisted: u64,
            tokens_revoked: u64,
            revocations_failed: u64,
            webhook_failed: u64,
            notifications_dropped: u64,
            last_verdict_ms: Option<f64>,
        }
        let mut actions = BTreeMap::new();
        for ((_, a), n) in self.alerts.lock().expect("stats lock").iter() {
            let name = serde_json::to_value(a)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *actions.entry(name).or_default() += n;
        }
        let r = Report {
            alerts: self
                .per_kind()
                .into_iter()
                .map(|(k, n)| (k.as_str().to_owned(), n))
                .collect(),
            actions,
            verdicts: self.verdicts.load(Ordering::Relaxed),
            verdict_errors: self.verdict_errors.load(Ordering::Relaxed),
            allowlisted: self.allowlisted.load(Ordering::Relaxed),
            tokens_revoked: self.revoked.load(Ordering::Relaxed),
            revocations_failed: self.revoke_failed.load(Ordering::Relaxed),
            webhook_failed: self.webhook_failed.load(Ordering::Relaxed),
            notifications_dropped: self.notify_dropped.load(Ordering::Relaxed),
            last_verdict_ms: *self.last_verdict_ms.lock().expect("stats lock"),
        };
        serde_json::to_value(r).expect("serialisable")
    }
}

/// Where alerts go once decided: the log (and stdout), the webhook.
struct Sinks {
    alert_log: AlertLog,
    webhook: Option<String>,
    retry: RetryPolicy,
    stats: Arc<ResponseStats>,
}

impl Sinks {
    fn write(&self, alert: &Alert) {
        if let Err(e) = self.alert_log.write(alert) {
            warn!(error = %e, "writing the alert log");
        }
    }

    async fn deliver(&self, alert: &Alert) {
        if let Some(url) = &self.webhook
            && let Err(e) = send_webhook(url, alert, self.retry).await
        {
            self.stats.webhook_failed.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "alert webhook");
        }
    }
}

/// Decides, enforces and notifies.
pub struct Responder {
    decider: Decider,
    maps: Arc<Mutex<Maps>>,
    verdict_log: VerdictLog,
    sinks: Arc<Sinks>,
    revoke: Option<RevokeConfig>,
    tasks: JoinSet<()>,
    stats: Arc<ResponseStats>,
    /// The tokens revoked or being revoked.
    revoked: Revoked,
    /// Alerts handled.
    pub handled: u64,
}

impl Responder {
    /// A responder.
    pub fn new(
        decider: Decider,
        maps: Arc<Mutex<Maps>>,
        verdict_log: VerdictLog,
        alert_log: AlertLog,
        webhook: Option<String>,
        revoke: Option<RevokeConfig>,
    ) -> Self {
        let stats = Arc::new(ResponseStats::default());
        Self {
            decider,
            maps,
            verdict_log,
            sinks: Arc::new(Sinks {
                alert_log,
                webhook,
                retry: RetryPolicy::default(),
                stats: stats.clone(),
            }),
            revoke,
            tasks: JoinSet::new(),
            stats,
            revoked: Revoked::default(),
            handled: 0,
        }
    }

    /// Uses `retry` for webhooks and revocations (tests shorten it).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.sinks) {
            s.retry = retry;
        }
        self
    }

    /// The counters this responder keeps.
    pub fn stats(&self) -> Arc<ResponseStats> {
        self.stats.clone()
    }

    /// Replaces the policy (SIGHUP).
    pub fn decider_mut(&mut self) -> &mut Decider {
        &mut self.decider
    }

    /// True when the kernel's allowlist covers `ip` (the operator's `sentinel allow add`).
    fn kernel_allowlisted(&self, ip: IpAddr) -> bool {
        let key = match Target::from(ip).map_key() {
            MapKey::Exact(k) | MapKey::Prefix(_, k) => k,
        };
        let maps = self.maps.lock().expect("maps lock");
        lists::allowed(&maps, &key)
    }

    /// Handles one alert: decide, enforce, record, and start the notifications. Failures to act
    /// are logged and raised as alerts themselves; they never stop the loop.
    pub async fn handle(&mut self, ev: AlertEvent) {
        while self.tasks.try_join_next().is_some() {}
        let AlertEvent {
            mut alert,
            tokens,
            flow,
        } = ev;
        self.handled += 1;
        let ip: Option<IpAddr> = alert.src_ip.parse().ok();
        let allowed =
            self.decider.allowlisted(&alert) || ip.is_some_and(|ip| self.kernel_allowlisted(ip));
        let decision = if allowed {
            self.stats.allowlisted.fetch_add(1, Ordering::Relaxed);
            alert
                .evidence
                .insert("allowlisted".into(), serde_json::json!(true));
            None
        } else {
            self.decider.decide(&alert)
        };
        let mut revoke_tokens = None;
        if let Some(d) = &decision {
            alert.action = if d.shadow {
                Action::Alert
            } else {
                d.step.action()
            };
            alert
                .evidence
                .insert("offence".into(), serde_json::json!(d.offence));
            if d.shadow {
                alert
                    .evidence
                    .insert("shadow_action".into(), serde_json::json!(d.step.action()));
            }
            if let Some(r) = d.rate_pps {
                alert
                    .evidence
                    .insert("throttle_pps".into(), serde_json::json!(r));
            }
            if let Some(t) = d.target {
                alert
                    .evidence
                    .insert("verdict_target".into(), serde_json::json!(t.to_string()));
            }
            let also: Vec<Action> = d.also.iter().map(|s| s.action()).collect();
            if !also.is_empty() {
                alert.evidence.insert(
                    if d.shadow { "shadow_also" } else { "also" }.into(),
                    serde_json::json!(also),
                );
            }
            if d.kills_flow()
                && let Some(f) = &flow
            {
                alert
                    .evidence
                    .insert("flow".into(), serde_json::json!(f.to_string()));
            }
            let reason = format!(
                "{} {}",
                alert.kind,
                alert.principal.as_deref().unwrap_or(&alert.src_ip)
            );
            // Shadow decisions are still written, flagged: the kernel counts would-drops.
            let applied = {
                let mut maps = self.maps.lock().expect("maps lock");
                enforce::apply(&mut maps, d, &reason, flow.as_ref())
            };
            match applied {
                Ok(records) => {
                    if !records.is_empty() && alert.ts_ns > 0 {
                        let ms = crate::clock::unix_ns().saturating_sub(alert.ts_ns) as f64 / 1e6;
                        *self.stats.last_verdict_ms.lock().expect("stats lock") = Some(ms);
                    }
                    for rec in records {
                        self.stats.verdicts.fetch_add(1, Ordering::Relaxed);
                        info!(target = %rec.target, list = %rec.list, rate_pps = ?rec.rate_pps, shadow = rec.shadow, reason = %rec.reason, "verdict applied");
                        if let Err(e) = self.verdict_log.append(&rec) {
                            warn!(error = %e, "writing the verdict log");
                        }
                    }
                }
                Err(e) => {
                    self.stats.verdict_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "applying a verdict");
                    // The alert says what was done: nothing, and why.
                    if !d.shadow {
                        alert
                            .evidence
                            .insert("failed_action".into(), serde_json::json!(alert.action));
                        alert.action = Action::Alert;
                    }
                    alert
                        .evidence
                        .insert("verdict_error".into(), serde_json::json!(e.to_string()));
                }
            }
            if d.revokes_token() && !d.shadow {
                revoke_tokens = Some(tokens);
            }
        }
        self.stats.count(alert.kind, alert.action);
        self.sinks.write(&alert);
        if let Some(tokens) = revoke_tokens {
            self.revoke_tokens(&alert, tokens);
        }
        self.notify(alert);
    }

    fn notify(&mut self, alert: Alert) {
        if self.sinks.webhook.is_none() {
            return;
        }
        if self.tasks.len() >= MAX_INFLIGHT {
            self.stats.notify_dropped.fetch_add(1, Ordering::Relaxed);
            warn!(kind = %alert.kind, "too many notifications in flight: webhook delivery dropped");
            return;
        }
        let sinks = self.sinks.clone();
        self.tasks.spawn(async move { sinks.deliver(&alert).await });
    }

    fn revoke_tokens(&mut self, alert: &Alert, tokens: Vec<String>) {
        let principal = alert.principal.clone().unwrap_or_default();
        let cfg = match (&self.revoke, tokens.is_empty()) {
            (None, _) => {
                let a = revocation_failed(alert, &principal, "no [revoke] endpoint is configured");
                self.failed_revocation(a);
                return;
            }
            (Some(_), true) => {
                let a = revocation_failed(
                    alert,
                    &principal,
                    "no session token of it was seen (no bearer token, no login issuing one)",
                );
                self.failed_revocation(a);
                return;
            }
            (Some(cfg), false) => cfg.clone(),
        };
        let tokens = self.revoked.claim(tokens);
        if tokens.is_empty() {
            return;
        }
        let sinks = self.sinks.clone();
        let stats = self.stats.clone();
        let revoked = self.revoked.clone();
        let alert = alert.clone();
        self.tasks.spawn(async move {
            for (hash, tok) in tokens {
                match revoke(&cfg, &tok, &principal, alert.kind.as_str(), sinks.retry).await {
                    Ok(status) => {
                        stats.revoked.fetch_add(1, Ordering::Relaxed);
                        info!(principal, status, "token revoked at the identity provider");
                    }
                    Err(e) => {
                        revoked.release(&hash);
                        stats.revoke_failed.fetch_add(1, Ordering::Relaxed);
                        let a = revocation_failed(&alert, &principal, &e.to_string());
                        stats.count(a.kind, a.action);
                        sinks.write(&a);
                        sinks.deliver(&a).await;
                    }
                }
            }
        });
    }

    fn failed_revocation(&mut self, a: Alert) {
        self.stats.revoke_failed.fetch_add(1, Ordering::Relaxed);
        self.stats.count(a.kind, a.action);
        self.sinks.write(&a);
        self.notify(a);
    }

    /// Waits for every notification and revocation in flight.
    pub async fn flush(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    /// Runs until the alert channel closes, taking new policies from `policies` between alerts.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<AlertEvent>,
        mut policies: mpsc::Receiver<Policy>,
    ) {
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => self.handle(ev).await,
                    None => break,
                },
                Some(p) = policies.recv() => {
                    info!(rules = p.rules.len(), mode = ?p.mode, "policy replaced");
                    self.decider.set_policy(p);
                }
            }
        }
        self.flush().await;
    }
}

/// The alert saying that revoking `principal`'s token after `alert` failed, and why.
/// The tokens (by hash) whose revocation is under way or done: a repeat alert does not send
/// them again, a failed one is released so that the next alert tries again. Shared between the
/// responder and its revocation tasks; forgotten wholesale beyond [`MAX_REMEMBERED`].
#[derive(Clone, Default)]
struct Revoked(Arc<Mutex<std::collections::HashSet<String>>>);

impl Revoked {
    /// The tokens of `tokens` not claimed yet, with their hashes, claimed now.
    fn claim(&self, tokens: Vec<String>) -> Vec<(String, String)> {
        let mut held = self.0.lock().expect("revoked lock");
        if held.len() + tokens.len() > MAX_REMEMBERED {
            held.clear();
        }
        tokens
            .into_iter()
            .map(|t| (crate::enrich::principal::short_hash(&t), t))
            .filter(|(h, _)| held.insert(h.clone()))
            .collect()
    }

    /// Gives a claim up (its revocation failed).
    fn release(&self, hash: &str) {
        self.0.lock().expect("revoked lock").remove(hash);
    }
}

fn revocation_failed(alert: &Alert, principal: &str, why: &str) -> Alert {
    warn!(principal, reason = %why, "token revocation failed");
    let mut a = alert.clone();
    // Stamped when it is known (retries take seconds): `sentinel alerts --follow` asks for
    // what came after the last alert it showed.
    a.ts_ns = crate::clock::unix_ns();
    a.ts = crate::models::alert::rfc3339(a.ts_ns);
    a.evidence
        .insert("alert_ts".into(), serde_json::json!(alert.ts));
    a.severity = Severity::High;
    a.action = Action::Alert;
    a.explanation = format!(
        "Revoking the token of {principal} after {} failed: {why}.",
        alert.kind
    );
    a.evidence
        .insert("revocation_failed".into(), serde_json::json!(true));
    a
}

/// The policy used when none is configured: throttle credential attacks and abuse at the
/// learned rate, block on repeat, block injection and traversal, revoke tokens that travel
/// impossibly or are reused, and only alert on the rest.
pub const DEFAULT_POLICY: &str = r#"
mode = "enforce"

[escalation]
window = "1h"
prefix_v4 = 24
prefix_v6 = 64

[[rule]]
kinds = ["brute_force", "credential_stuffing", "rate_anomaly", "scraping", "enumeration"]
min_severity = "medium"
actions = ["throttle", "block", "block_prefix"]
rate = "learned"
ttl = "15m"

[[rule]]
kinds = ["sql_injection", "xss", "path_traversal"]
min_severity = "medium"
actions = ["block"]
ttl = "1h"

[[rule]]
kinds = ["impossible_travel", "token_reuse", "jwt_weakness"]
min_severity = "high"
actions = ["revoke_token"]
ttl = "1h"
"#;

#[cfg(test)]
mod tests {

    #[test]
    fn an_events_debug_shows_no_token_in_clear() {
        let mut e = AlertEvent::new(crate::models::synth::alert(
            crate::models::AlertKind::BruteForce,
            "203.0.113.7",
            1,
        ));
        e.tokens = vec!["at-secret-9d2e7f41c3b5".into()];
        let shown = format!("{e:?}");
        assert!(!shown.contains("at-secret"), "{shown}");
        assert!(
            shown.contains(&crate::enrich::principal::short_hash(
                "at-secret-9d2e7f41c3b5"
            )),
            "{shown}"
        );
    }

    use super::*;
    use crate::{models::AlertKind, verdict::policy::Policy};

    #[test]
    fn a_failed_revocation_is_tried_again_and_a_done_one_not() {
        let r = Revoked::default();
        let toks = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let first = r.claim(toks(&["tok-a", "tok-b"]));
        assert_eq!(first.len(), 2);
        // A repeat alert while they are under way, or after they were revoked: nothing.
        assert!(r.claim(toks(&["tok-a", "tok-b"])).is_empty());
        // tok-a's revocation failed: the next alert sends it again, and only it.
        r.release(&first[0].0);
        let again = r.claim(toks(&["tok-a", "tok-b"]));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1, "tok-a");
        assert_eq!(again[0].0, crate::enrich::principal::short_hash("tok-a"));
    }

    #[test]
    fn the_default_policy_is_valid_and_covers_the_volumetric_kinds() {
        let p = Policy::parse(DEFAULT_POLICY).unwrap();
        for k in [
            AlertKind::BruteForce,
            AlertKind::CredentialStuffing,
            AlertKind::SqlInjection,
        ] {
            assert!(p.rules.iter().any(|r| r.kinds.contains(&k)), "{k}");
        }
    }
}
