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

/// Longer tokens are not remembered: no identity provider issues them, and a client could
/// otherwise make each entry cost what its request headers may hold.
const MAX_TOKEN: usize = 8 * 1024;

/// Bytes the book may hold (keys and tokens, plus a per-entry overhead), whatever the principals
/// and tokens clients send: 100 000 principals of four 8 KiB tokens would be 3 GiB.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

/// What an entry costs besides its key and tokens (map slot, `Held`, string headers).
const ENTRY_OVERHEAD: usize = 96;

/// JSON fields of a login response that carry the issued credential.
const TOKEN_FIELDS: [&str; 4] = ["token", "access_token", "session_token", "sessionToken"];

#[derive(Default)]
struct Held {
    tokens: VecDeque<String>,
    last_ns: u64,
}

impl Held {
    fn cost(&self, principal: &str) -> usize {
        ENTRY_OVERHEAD + principal.len() + self.tokens.iter().map(String::len).sum::<usize>()
    }
}

/// Tokens per principal, at most `cap` principals and `max_bytes` bytes (the least recently
/// seen are forgotten).
pub struct SessionBook {
    held: HashMap<String, Held>,
    cap: usize,
    max_bytes: usize,
    bytes: usize,
}

impl SessionBook {
    /// A book of at most `cap` principals and [`MAX_BYTES`].
    pub fn new(cap: usize) -> Self {
        Self::with_budget(cap, MAX_BYTES)
    }

    /// A book of at most `cap` principals and `max_bytes` bytes.
    pub fn with_budget(cap: usize, max_bytes: usize) -> Self {
        Self {
            held: HashMap::new(),
            cap: cap.max(1),
            max_bytes,
            bytes: 0,
        }
    }

    /// Bytes held (keys, tokens and a per-entry overhead).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Principals tracked.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when no principal is tracked.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Forgets the older half in one pass: amortised O(1) per insert.
    fn forget_older_half(&mut self) {
        let mut ages: Vec<u64> = self.held.values().map(|h| h.last_ns).collect();
        let mid = ages.len() / 2;
        let (_, cut, _) = ages.select_nth_unstable(mid);
        let cut = *cut;
        self.held.retain(|_, h| h.last_ns > cut);
        self.bytes = self.held.iter().map(|(p, h)| h.cost(p)).sum();
    }

    fn record(&mut self, principal: &str, token: &str, now_ns: u64) {
        if token.is_empty() || token.len() > MAX_TOKEN {
            return;
        }
        let new = !self.held.contains_key(principal);
        if new && self.held.len() >= self.cap {
            self.forget_older_half();
        }
        let h = self.held.entry(principal.to_owned()).or_default();
        if new {
            self.bytes += ENTRY_OVERHEAD + principal.len();
        }
        h.last_ns = h.last_ns.max(now_ns);
        if h.tokens.iter().any(|t| t == token) {
            return;
        }
        if h.tokens.len() >= PER_PRINCIPAL
            && let Some(old) = h.tokens.pop_front()
        {
            self.bytes -= old.len();
        }
        h.tokens.push_back(token.to_owned());
        self.bytes += token.len();
        while self.bytes > self.max_bytes && self.held.len() > 1 {
            self.forget_older_half();
        }
    }

    /// Learns from one observation.
    pub fn observe(&mut self, obs: &Observation) {
        if let Some(b) = &obs.bearer {
            self.record(&obs.principal.name(), b, obs.ts_ns);
        }
        let Some(login) = &obs.login else { return };
        if login.username.is_empty() || !login.success || !(200..300).contains(&obs.status) {
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

    fn obs(principal: Principal, ts_ns: u64) -> Observation<'static> {
        Observation {
            ts_ns,
            client_ip: "192.0.2.10".parse().unwrap(),
            principal,
            geo: None,
            method: "POST".into(),
            path: "/login".into(),
            endpoint: "/login".into(),
            query: "".into(),
            status: 200,
            req_bytes: 0,
            resp_bytes: 0,
            latency_ms: 0.0,
            user_agent: None,
            req_headers: Vec::new(),
            req_body: Default::default(),
            resp_content_type: None,
            resp_body: Default::default(),
            login: None,
            more_logins: Vec::new(),
            refreshed: None,
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
            ..Default::default()
        });
        login.resp_body = br#"{"token":"tok-layla-1"}"#.to_vec().into();
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
            ..Default::default()
        });
        failed.status = 401;
        failed.resp_body = br#"{"token":"nope"}"#.to_vec().into();
        b.observe(&failed);
        assert!(b.tokens_for(&alert("user:bob", None)).is_empty());
    }

    #[test]
    fn the_book_is_bounded() {
        let mut b = SessionBook::new(8);
        for i in 0..100u64 {
            let mut o = obs(user(&format!("u{i}")), i);
            o.bearer = Some(format!("t{i}").into());
            b.observe(&o);
            assert!(b.len() <= 8);
        }
        let p = obs(user("u99"), 0).principal.to_string();
        assert_eq!(b.tokens_for(&alert(&p, None)), vec!["t99"]);
        let mut o = obs(user("x"), 1000);
        for i in 0..10 {
            o.bearer = Some(format!("x{i}").into());
            b.observe(&o);
        }
        assert_eq!(b.tokens_for(&alert("user:x", None)).len(), PER_PRINCIPAL);
    }

    #[test]
    fn the_book_is_bounded_in_bytes_whatever_the_tokens() {
        let mut b = SessionBook::with_budget(1_000_000, 64 * 1024);
        for i in 0..2000u64 {
            let mut o = obs(user(&format!("u{i}")), i);
            o.bearer = Some(format!("{i:0>2000}").into());
            b.observe(&o);
            assert!(b.bytes() <= 64 * 1024, "{} bytes after {i}", b.bytes());
        }
        let newest = obs(user("u1999"), 0).principal.to_string();
        assert_eq!(b.tokens_for(&alert(&newest, None)).len(), 1);
        let expected: usize = b.held.iter().map(|(p, h)| h.cost(p)).sum();
        assert_eq!(b.bytes(), expected, "the running count matches");
        // A token longer than any identity provider issues is not remembered.
        let mut o = obs(user("huge"), 5000);
        o.bearer = Some("x".repeat(MAX_TOKEN + 1).into());
        b.observe(&o);
        assert!(b.tokens_for(&alert("user:huge", None)).is_empty());
    }
}
