//! Which session tokens a principal holds, so that a `revoke_token` verdict can name them to the
//! identity provider. Kept in memory only, bounded, never logged or serialised.
//!
//! Two sources: a request carrying a bearer token records it under the request's principal
//! (`tok:…`, `jwt:…`), and a successful login whose JSON response issues a token records it under
//! the account (`user:layla`). An alert about an account (a brute force on `user:layla`) thus
//! revokes the sessions that account holds, and an alert about a token revokes that token.

use std::collections::{HashMap, VecDeque};

use crate::models::{Alert, Observation};

/// Tokens remembered per principal.
const PER_PRINCIPAL: usize = 4;

/// JSON fields of a login response that carry the issued credential.
const TOKEN_FIELDS: [&str; 4] = ["token", "access_token", "session_token", "sessionToken"];

#[derive(Default)]
struct Held {
    tokens: VecDeque<String>,
    last_ns: u64,
}

/// Tokens per principal, at most `cap` principals (the least recently seen are forgotten).
pub struct SessionBook {
    held: HashMap<String, Held>,
    cap: usize,
}

impl SessionBook {
    /// A book of at most `cap` principals.
    pub fn new(cap: usize) -> Self {
        Self {
            held: HashMap::new(),
            cap: cap.max(1),
        }
    }

    /// Principals tracked.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when no principal is tracked.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn record(&mut self, principal: &str, token: &str, now_ns: u64) {
        if !self.held.contains_key(principal) && self.held.len() >= self.cap {
            // Forget the older half in one pass: amortised O(1) per insert.
            let mut ages: Vec<u64> = self.held.values().map(|h| h.last_ns).collect();
            let mid = ages.len() / 2;
            let (_, cut, _) = ages.select_nth_unstable(mid);
            let cut = *cut;
            self.held.retain(|_, h| h.last_ns > cut);
        }
        let h = self.held.entry(principal.to_owned()).or_default();
        h.last_ns = h.last_ns.max(now_ns);
        if h.tokens.iter().any(|t| t == token) {
            return;
        }
        if h.tokens.len() >= PER_PRINCIPAL {
            h.tokens.pop_front();
        }
        h.tokens.push_back(token.to_owned());
    }

    /// Learns from one observation.
    pub fn observe(&mut self, obs: &Observation) {
        if let Some(b) = &obs.bearer {
            self.record(&obs.principal.to_string(), b, obs.ts_ns);
        }
        let Some(login) = &obs.login else { return };
        if !login.success || !(200..300).contains(&obs.status) {
            return;
        }
        let body = &obs.resp_body;
        if body.first() != Some(&b'{') || body.len() > 16 * 1024 {
            return;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return;
        };
        let account = format!("user:{}", login.username);
        for f in TOKEN_FIELDS {
            if let Some(tok) = v.get(f).and_then(|t| t.as_str()) {
                self.record(&account, tok, obs.ts_ns);
            }
        }
    }

    /// The tokens an alert's subject holds: those of its principal and of the account it names
    /// in its evidence, newest last, without repeats.
    pub fn tokens_for(&self, alert: &Alert) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let account = alert.evidence.get("account").and_then(|a| a.as_str());
        for p in alert.principal.as_deref().into_iter().chain(account) {
            if let Some(h) = self.held.get(p) {
                for t in &h.tokens {
                    if !out.contains(t) {
                        out.push(t.clone());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        enrich::principal::{Principal, PrincipalKind},
        models::{Action, AlertKind, LoginAttempt, Severity},
    };

    fn obs(principal: Principal, ts_ns: u64) -> Observation {
        Observation {
            ts_ns,
            client_ip: "192.0.2.10".parse().unwrap(),
            principal,
            geo: None,
            method: "POST".into(),
            path: "/login".into(),
            endpoint: "/login".into(),
            query: String::new(),
            status: 200,
            req_bytes: 0,
            resp_bytes: 0,
            latency_ms: 0.0,
            user_agent: None,
            req_headers: Vec::new(),
            req_body: Vec::new(),
            resp_content_type: None,
            resp_body: Vec::new(),
            login: None,
            jwt: None,
            credential: None,
            bearer: None,
            src_port: 40000,
            dst_ip: None,
            dst_port: 8080,
        }
    }

    fn alert(principal: &str, account: Option<&str>) -> Alert {
        let mut evidence = std::collections::BTreeMap::new();
        if let Some(a) = account {
            evidence.insert("account".to_owned(), serde_json::json!(a));
        }
        Alert {
            ts: String::new(),
            kind: AlertKind::BruteForce,
            severity: Severity::High,
            score: 1.0,
            src_ip: "203.0.113.66".into(),
            principal: Some(principal.into()),
            endpoint: None,
            country: None,
            action: Action::Alert,
            explanation: String::new(),
            evidence,
            ts_ns: 0,
            recommended_rate: None,
        }
    }

    fn user(name: &str) -> Principal {
        Principal {
            kind: PrincipalKind::User,
            id: name.into(),
        }
    }

    #[test]
    fn logins_and_bearers_are_remembered_per_principal() {
        let mut b = SessionBook::new(10);
        let mut login = obs(user("layla"), 1);
        login.login = Some(LoginAttempt {
            username: "layla".into(),
            success: true,
        });
        login.resp_body = br#"{"token":"tok-layla-1"}"#.to_vec();
        b.observe(&login);
        let tok = Principal {
            kind: PrincipalKind::Token,
            id: "abcd".into(),
        };
        let mut req = obs(tok.clone(), 2);
        req.bearer = Some("tok-layla-1".into());
        b.observe(&req);
        assert_eq!(
            b.tokens_for(&alert("user:layla", None)),
            vec!["tok-layla-1"]
        );
        assert_eq!(
            b.tokens_for(&alert(&tok.to_string(), Some("user:layla"))),
            vec!["tok-layla-1"],
            "no repeats"
        );
        // A failed login issues nothing.
        let mut failed = obs(user("bob"), 3);
        failed.login = Some(LoginAttempt {
            username: "bob".into(),
            success: false,
        });
        failed.status = 401;
        failed.resp_body = br#"{"token":"nope"}"#.to_vec();
        b.observe(&failed);
        assert!(b.tokens_for(&alert("user:bob", None)).is_empty());
    }

    #[test]
    fn the_book_is_bounded() {
        let mut b = SessionBook::new(8);
        for i in 0..100u64 {
            let mut o = obs(user(&format!("u{i}")), i);
            o.bearer = Some(format!("t{i}"));
            b.observe(&o);
            assert!(b.len() <= 8);
        }
        let p = obs(user("u99"), 0).principal.to_string();
        assert_eq!(b.tokens_for(&alert(&p, None)), vec!["t99"]);
        let mut o = obs(user("x"), 1000);
        for i in 0..10 {
            o.bearer = Some(format!("x{i}"));
            b.observe(&o);
        }
        assert_eq!(b.tokens_for(&alert("user:x", None)).len(), PER_PRINCIPAL);
    }
}
