//! The response loop: every alert goes through the policy; decisions become kernel verdicts
//! (throttle, block, wider prefix), token revocations at the identity provider, and the alert
//! itself is written to the alert log and sent to the webhook with the action taken.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    enforce::{self, VerdictLog},
    policy::{Decider, Step},
};
use crate::{
    datapath::Maps,
    models::{Action, Alert, Severity},
    notify::{
        alerts::{AlertLog, send_webhook},
        http::RetryPolicy,
        revoke::{RevokeConfig, revoke},
    },
};

/// An alert and, for revocation, the raw bearer token of the request that raised it (kept in
/// memory only).
pub struct AlertEvent {
    /// The alert.
    pub alert: Alert,
    /// The bearer token, when the request carried one.
    pub bearer: Option<String>,
}

/// Where the responder sends things.
pub struct Responder {
    decider: Decider,
    maps: Arc<Mutex<Maps>>,
    verdict_log: VerdictLog,
    alert_log: AlertLog,
    webhook: Option<String>,
    revoke: Option<RevokeConfig>,
    retry: RetryPolicy,
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
        Self {
            decider,
            maps,
            verdict_log,
            alert_log,
            webhook,
            revoke,
            retry: RetryPolicy::default(),
            handled: 0,
        }
    }

    /// Replaces the policy (SIGHUP).
    pub fn decider_mut(&mut self) -> &mut Decider {
        &mut self.decider
    }

    /// Handles one alert: decide, enforce, revoke, record and notify. Failures to act are
    /// logged and raised as alerts themselves; they never stop the loop.
    pub async fn handle(&mut self, ev: AlertEvent) {
        let AlertEvent { mut alert, bearer } = ev;
        self.handled += 1;
        let decision = self.decider.decide(&alert);
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
            let reason = format!(
                "{} {}",
                alert.kind,
                alert.principal.as_deref().unwrap_or(&alert.src_ip)
            );
            // Shadow decisions are still written, flagged: the kernel counts would-drops.
            let applied = {
                let mut maps = self.maps.lock().expect("maps lock");
                enforce::apply(&mut maps, d, &reason)
            };
            match applied {
                Ok(Some(rec)) => {
                    info!(target = %rec.target, list = %rec.list, shadow = rec.shadow, "verdict applied");
                    if let Err(e) = self.verdict_log.append(&rec) {
                        warn!(error = %e, "writing the verdict log");
                    }
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "applying a verdict"),
            }
            if d.step == Step::RevokeToken && !d.shadow {
                self.revoke_token(&alert, bearer.as_deref()).await;
            }
        }
        self.emit(&alert).await;
    }

    async fn revoke_token(&mut self, alert: &Alert, bearer: Option<&str>) {
        let principal = alert.principal.clone().unwrap_or_default();
        let failure = match (&self.revoke, bearer) {
            (None, _) => Some("no [revoke] endpoint is configured".to_owned()),
            (Some(_), None) => Some("the request carried no bearer token".to_owned()),
            (Some(cfg), Some(tok)) => {
                match revoke(cfg, tok, &principal, alert.kind.as_str(), self.retry).await {
                    Ok(status) => {
                        info!(principal, status, "token revoked at the identity provider");
                        None
                    }
                    Err(e) => Some(e.to_string()),
                }
            }
        };
        if let Some(why) = failure {
            warn!(principal, reason = %why, "token revocation failed");
            let mut a = alert.clone();
            a.severity = Severity::High;
            a.action = Action::Alert;
            a.explanation = format!(
                "Revoking the token of {principal} after {} failed: {why}.",
                alert.kind
            );
            a.evidence
                .insert("revocation_failed".into(), serde_json::json!(true));
            self.emit(&a).await;
        }
    }

    async fn emit(&self, alert: &Alert) {
        if let Err(e) = self.alert_log.write(alert) {
            warn!(error = %e, "writing the alert log");
        }
        if let Some(url) = &self.webhook
            && let Err(e) = send_webhook(url, alert, self.retry).await
        {
            warn!(error = %e, "alert webhook");
        }
    }

    /// Runs until the channel closes.
    pub async fn run(mut self, mut rx: mpsc::Receiver<AlertEvent>) {
        while let Some(ev) = rx.recv().await {
            self.handle(ev).await;
        }
    }
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
    use super::*;
    use crate::{models::AlertKind, verdict::policy::Policy};

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
