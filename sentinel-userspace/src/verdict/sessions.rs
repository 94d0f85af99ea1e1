//! Which session tokens a principal holds, so that a `revoke_token` verdict can name them to the
//! identity provider. Kept in memory only, bounded, never logged or serialised (no `Debug`, no
//! `Serialize`: only [`SessionBook::tokens_for`] hands a token out, to the revocation).
//!
//! What it holds, raw, as the identity provider must be sent them:
//! - the token a request carried ([`Observation::bearer`]: an `Authorization: Bearer` token, or
//!   a JWT elsewhere that the server reads), under the request's principal (`tok:…`, `jwt:…`);
//! - each token a successful login's answer issued, under the account it logged in to, named as
//!   alerts name it (`user:` and [`account_name`], so a login as `Layla` and a brute force on
//!   `user:layla` meet): exactly the tokens the enricher linked to that login
//!   ([`LoginAttempt::issued`], which the engine links too), read from the answer by the
//!   enricher's own walker ([`issued_tokens`]: its fields, such as `token`, `accessToken`,
//!   Strapi's `jwt` and `refresh_token`, whose revocation ends the grant, at the top or one
//!   level under a wrapper such as `data`), and in a GraphQL answer each successful call's
//!   token from its own result only, so that a batch's or an aliased mutation's tokens go to
//!   their own accounts (a token another call's result holds is not this call's).
//!
//! Not the session cookies a login sets, though the engine links them to the account too: a
//! server's session cookie is its own session, which no identity provider issued or can revoke,
//! and posting it to one would hand a live session to a third party. Nor, yet, the tokens a
//! refresh issues ([`Observation::refreshed`], which the engine links to the refresh token's
//! account): the book does not know whose refresh token was presented.
//!
//! An alert about an account (a brute force on `user:layla`) thus revokes the tokens that
//! account was issued, and an alert about a token revokes that token.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

use crate::{
    enrich::{
        pipeline::issued_tokens,
        principal::{account_name, short_hash},
    },
    models::{Alert, LoginAttempt, Observation},
};

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
        // The logins the enricher found issued something (a successful one, with a name).
        let issued =
            |l: &&LoginAttempt| l.success && !l.issued.is_empty() && !l.username.trim().is_empty();
        let mut logins = obs.login.iter().chain(&obs.more_logins).filter(issued);
        let Some(first) = logins.next() else { return };
        // The answer is read again only for such a login (at most the body cap, which the
        // enricher read too); its tokens are matched to each login's by their hashes.
        let Ok(answer) = serde_json::from_slice::<Value>(&obs.resp_body) else {
            return;
        };
        let mut found: Vec<(&str, String)> = Vec::new();
        answer_tokens(&answer, &mut |t| {
            if t.len() <= MAX_TOKEN && !found.iter().any(|(f, _)| *f == t) {
                found.push((t, short_hash(t)));
            }
        });
        for l in std::iter::once(first).chain(logins) {
            let account = format!("user:{}", account_name(&l.username));
            for (tok, hash) in &found {
                if l.issued.iter().any(|i| **i == **hash) {
                    self.record(&account, tok, obs.ts_ns);
                }
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

/// Calls `found` with each token a login's answer may have issued, by the enricher's walker
/// ([`issued_tokens`]): in the answer (an object), and in each GraphQL result in it or in each
/// operation's of a batch (`data.<key>`, `data.<ns>.<key>`), a result that is text being a
/// token itself. Which call, if any, each was issued to is told by the hashes the enricher linked
/// ([`LoginAttempt::issued`]): this finds their raw text, and no token the enricher did not link
/// is kept.
fn answer_tokens<'v>(answer: &'v Value, found: &mut impl FnMut(&'v str)) {
    fn result<'v>(r: &'v Value, namespace: bool, found: &mut impl FnMut(&'v str)) {
        match r {
            Value::String(s) if !s.is_empty() => found(s),
            Value::Object(o) => {
                issued_tokens(o, found);
                if namespace {
                    o.values().for_each(|r| result(r, false, found));
                }
            }
            _ => {}
        }
    }
    let operations = match answer {
        Value::Array(batch) => batch.as_slice(),
        one => std::slice::from_ref(one),
    };
    for op in operations {
        let Value::Object(o) = op else { continue };
        issued_tokens(o, found);
        if let Some(Value::Object(data)) = o.get("data") {
            data.values().for_each(|r| result(r, true, found));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        enrich::{
            pipeline::{EnrichSettings, Enricher, TransactionFacts},
            principal::{Principal, PrincipalKind},
        },
        http::head::Head,
        models::{Action, AlertKind, Severity},
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
            issued: vec![short_hash("tok-layla-1").into()],
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
            issued: vec![short_hash("nope").into()],
        });
        failed.status = 401;
        failed.resp_body = br#"{"token":"nope"}"#.to_vec().into();
        b.observe(&failed);
        assert!(b.tokens_for(&alert("user:bob", None)).is_empty());
    }

    /// One exchange through the enricher (JSON request and answer bodies, answer head), the
    /// book learning from its observation.
    fn exchange(
        e: &mut Enricher,
        b: &mut SessionBook,
        path: &str,
        req: &str,
        resp: &str,
        head: &Head,
    ) {
        let headers = [("Content-Type".into(), "application/json".into())];
        let facts = TransactionFacts {
            ts_ns: 1_794_000_000_000_000_000,
            src: ("203.0.113.7".parse().unwrap(), 40000),
            dst: ("198.18.0.1".parse().unwrap(), 8080),
            method: "POST",
            path,
            query: "",
            req_headers: headers.to_vec(),
            req_body: req.as_bytes(),
            req_bytes: req.len() as u64,
            status: 200,
            resp_content_type: Some("application/json"),
            resp_head: Some(head),
            resp_body: resp.as_bytes(),
            resp_bytes: resp.len() as u64,
            latency_ms: 1.0,
        };
        b.observe(&e.enrich(facts));
    }

    fn enricher() -> Enricher {
        Enricher::new(None, &EnrichSettings::default()).unwrap()
    }

    #[test]
    fn a_login_holds_what_the_engine_links_under_the_account_alerts_name() {
        let mut e = enricher();
        let mut b = SessionBook::new(100);
        let cookie = Head::response(200, &[("Set-Cookie", "sessionid=c-layla; HttpOnly")]);
        // A login as `Layla` (an alert names `user:layla`), answered with tokens nested under
        // a wrapper and in fields the enricher reads, and a session cookie; and another login's
        // answer with the other fields.
        let mut held = |user: &str, answer: &str| {
            let req = format!(r#"{{"username":"{user}","password":"pw"}}"#);
            exchange(&mut e, &mut b, "/login", &req, answer, &cookie);
            let key = format!("user:{}", user.trim().to_lowercase());
            let mut held = b.tokens_for(&alert(&key, None));
            held.sort();
            held
        };
        assert_eq!(
            held(
                " Layla",
                r#"{"data":{"access_token":"t-data","refresh_token":"r-data"},"accessToken":"t-camel","user":{"token":"t-banner"}}"#
            ),
            ["r-data", "t-camel", "t-data"],
            "what the engine links, raw; no banner's token, no session cookie"
        );
        assert_eq!(
            held(
                "NADIA",
                r#"{"id_token":"t-id","result":{"authToken":"t-auth"},"jwt":"t-strapi"}"#
            ),
            ["t-auth", "t-id", "t-strapi"]
        );
        // The key is the engine's account name: invisible characters and case folded away.
        exchange(
            &mut e,
            &mut b,
            "/login",
            r#"{"username":"STRA\u00dfE\u200b","password":"pw"}"#,
            r#"{"session":{"token":"t-strasse"}}"#,
            &Head::response(200, &[]),
        );
        assert_eq!(
            b.tokens_for(&alert("tok:000000000000", Some("user:strasse"))),
            ["t-strasse"]
        );
        // A failed login is issued nothing.
        exchange(
            &mut e,
            &mut b,
            "/login",
            r#"{"username":"omar","password":"bad"}"#,
            r#"{"success":false,"token":"t-omar"}"#,
            &Head::response(200, &[]),
        );
        assert!(b.tokens_for(&alert("user:omar", None)).is_empty());
    }

    #[test]
    fn graphql_logins_hold_each_calls_own_token_under_its_account() {
        let mut e = enricher();
        let mut b = SessionBook::new(100);
        let none = Head::response(200, &[]);
        // Aliased calls, one failing, one under a namespace, one returning its token as text.
        exchange(
            &mut e,
            &mut b,
            "/graphql",
            r#"{"query":"mutation { a: login(username: \"Nadia\", password: \"pw\") { accessToken } b: login(username: \"huda\", password: \"bad\") { token } auth { c: login(username: \"yusuf\", password: \"pw\") { session { token } } } d: login(username: \"rami\", password: \"pw\") }"}"#,
            r#"{"data":{"a":{"accessToken":"g-nadia"},"b":null,"auth":{"c":{"session":{"token":"g-yusuf"}}},"d":"g-rami"},"errors":[{"message":"Invalid credentials","path":["b"]}]}"#,
            &none,
        );
        for (user, held) in [
            ("nadia", &["g-nadia"][..]),
            ("huda", &[]),
            ("yusuf", &["g-yusuf"]),
            ("rami", &["g-rami"]),
        ] {
            assert_eq!(
                b.tokens_for(&alert(&format!("user:{user}"), None)),
                held,
                "{user}"
            );
        }
        // A batch whose first element is no operation: mallory's token is hers, not the
        // victim's, whose guess failed.
        exchange(
            &mut e,
            &mut b,
            "/graphql",
            r#"[null,{"query":"mutation { login(username: \"mallory\", password: \"right\") { token } }"},{"query":"mutation { login(username: \"victim\", password: \"guess\") { token } }"}]"#,
            r#"[{"errors":[{"message":"bad"}]},{"data":{"login":{"token":"g-m"}}},{"data":{"login":null}}]"#,
            &none,
        );
        assert_eq!(b.tokens_for(&alert("user:mallory", None)), ["g-m"]);
        assert!(b.tokens_for(&alert("user:victim", None)).is_empty());
        // Two calls under one key: the token cannot be told to be either's, and is neither's.
        exchange(
            &mut e,
            &mut b,
            "/graphql",
            r#"{"query":"mutation { login(username: \"sami\", password: \"pw\") { token } login(username: \"tala\", password: \"pw\") { token } }"}"#,
            r#"{"data":{"login":{"token":"g-st"}}}"#,
            &none,
        );
        assert!(b.tokens_for(&alert("user:sami", None)).is_empty());
        assert!(b.tokens_for(&alert("user:tala", None)).is_empty());
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
