//! The enrichment stage: from the facts of one HTTP transaction to an [`Observation`] the models
//! can use (principal, GeoIP, endpoint template, login outcome, JWT claims, credential hash).

use std::{borrow::Cow, net::IpAddr, sync::Arc};

use serde::Deserialize;

use super::{
    cookie,
    geo::{GeoDb, GeoInfo},
    graphql,
    principal::{self, JwtInfo, PrincipalConfig, RequestView, parse_jwt, short_hash},
    template::Templates,
};
use crate::{
    http::head::Head,
    models::{Header, LoginAttempt, Observation, bounded::key_of, header},
};

/// The facts of one transaction the enricher reads, borrowed from whatever produced it (the live
/// pipeline or a replay); the observation borrows them in turn.
pub struct TransactionFacts<'a> {
    /// Request time, nanoseconds since the epoch.
    pub ts_ns: u64,
    /// Client address and port.
    pub src: (IpAddr, u16),
    /// Server address and port.
    pub dst: (IpAddr, u16),
    /// Method.
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Query without `?`.
    pub query: &'a str,
    /// Request headers.
    pub req_headers: Vec<Header<'a>>,
    /// Request body (capped).
    pub req_body: &'a [u8],
    /// Request body length.
    pub req_bytes: u64,
    /// Response status (0 when none was seen).
    pub status: u16,
    /// The response's `Content-Type`.
    pub resp_content_type: Option<&'a str>,
    /// The response head, when a response was seen: read only for the session cookies a
    /// successful login answer sets.
    pub resp_head: Option<&'a Head>,
    /// Response body (decoded, capped).
    pub resp_body: &'a [u8],
    /// Response body length.
    pub resp_bytes: u64,
    /// Latency in milliseconds.
    pub latency_ms: f64,
}

/// `[enrich]` settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichSettings {
    /// Substrings of a 2xx login response body that still mean failure (some APIs answer 200
    /// with an error document), in any case, blanks ignored (`"success": false` is
    /// `"success":false`). A JSON document that says so in its structure is a failure without
    /// one ([`json_says_failed`]).
    pub login_failure_markers: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed (CIDR).
    pub trusted_proxies: Vec<String>,
}

impl Default for EnrichSettings {
    fn default() -> Self {
        Self {
            login_failure_markers: vec![
                "invalid credentials".into(),
                "invalid password".into(),
                "login failed".into(),
                "\"success\":false".into(),
            ],
            trusted_proxies: Vec::new(),
        }
    }
}

/// How long the same `Basic` credentials with the same outcome count once
/// ([`Enricher::basic_guess`]): a day, the slow brute-force count's horizon, so that a job
/// retrying a stale password hourly tries one password a day, and a client sending its right
/// one on every request logs in once a day.
const RETRY_NS: u64 = 86_400_000_000_000;

/// User names under which services take a token as the `Basic` password (Mailgun's `api`,
/// GitHub's `x-access-token`, GitLab's `gitlab-ci-token`, Bitbucket's `x-token-auth`, `oauth2`):
/// a refused one is a revoked or mistyped key, not a guess at an account.
const TOKEN_USERS: [&str; 6] = [
    "api",
    "x-access-token",
    "gitlab-ci-token",
    "x-token-auth",
    "oauth2",
    "token",
];

/// A `Basic` request refused at an OAuth token endpoint with a grant: the client
/// authenticating (RFC 6749 §2.3.1), no user.
fn oauth_client(t: &TransactionFacts<'_>) -> bool {
    let path = t.path.trim_end_matches('/');
    path.rsplit('/')
        .next()
        .is_some_and(|last| last.eq_ignore_ascii_case("token"))
        && memchr::memmem::find(t.req_body, b"grant_type").is_some()
}

/// A user name or password shaped like an API key or token rather than a person's or a
/// service's name or a guessed password: a secret the exposure scan knows by its prefix
/// ([`crate::models::exposure::known_secret`]), or 20 characters and more of a key's alphabet
/// (letters, digits, `-`, `_`, `.`) with letters and digits mixed.
fn key_shaped(s: &str) -> bool {
    crate::models::exposure::known_secret(s)
        || (s.len() >= 20
            && s.bytes().any(|b| b.is_ascii_digit())
            && s.bytes().any(|b| b.is_ascii_alphabetic())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
}

/// Slots of each of the enricher's caches (a power of two).
const CACHE_SLOTS: usize = 4096;

/// Slots of each of the two tables of `Basic` credentials, lately refused and lately taken (a
/// power of two), in sets of two: 8 bytes a slot, 128 KiB a table.
const REFUSED_SLOTS: usize = 16_384;

/// Slots of the table of endpoints that refused `Basic` credentials (a power of two), in sets
/// of four: 4 bytes a slot, 16 KiB.
const PROTECTED_SLOTS: usize = 4096;

/// The mark of a protected endpoint that has also taken `Basic` credentials (a 2xx): kept before
/// the others when its set is full.
const CONFIRMED: u32 = 1 << 31;

/// What [`Enricher::basic_guess`] remembers, 272 KiB in all: `Basic` credentials lately refused
/// (by user and password) and lately taken (by user, password and client), with when, and the
/// endpoints that refused some (by virtual host, port, method and path). Every key is a
/// SipHash-1-3 under this process's random keys (the unkeyed [`key_of`] of a short password was
/// read back from a memory dump), and a slot keeps 16 bits of the hash besides the 13 of its
/// set (the endpoints', 31 besides 10): one who has the keys too, as a dump would, can test
/// guesses at user and password against 29 bits only, so that of 2^40 candidates (any seven
/// characters for a known user) some 2000 match each entry.
struct BasicSeen {
    /// The per-process keys.
    keys: std::hash::RandomState,
    /// Refused credentials: when (seconds, 32 bits) and their fingerprint (16 bits, never 0).
    refused: Box<[u64]>,
    /// Taken credentials, as `refused`.
    taken: Box<[u64]>,
    /// Protected endpoints: their fingerprint (31 bits, never 0) and [`CONFIRMED`].
    protected: Box<[u32]>,
}

/// Bytes fed to a hasher through a buffer on the stack: SipHash takes a slice far faster than
/// byte by byte, and the streams fed here are built a byte at a time.
struct Feed<'h, H: std::hash::Hasher> {
    hasher: &'h mut H,
    buf: [u8; 64],
    len: usize,
}

impl<'h, H: std::hash::Hasher> Feed<'h, H> {
    fn new(hasher: &'h mut H) -> Self {
        Self {
            hasher,
            buf: [0; 64],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        if self.len == self.buf.len() {
            self.hasher.write(&self.buf);
            self.len = 0;
        }
        self.buf[self.len] = b;
        self.len += 1;
    }
}

impl<H: std::hash::Hasher> Drop for Feed<'_, H> {
    fn drop(&mut self) {
        self.hasher.write(&self.buf[..self.len]);
    }
}

impl BasicSeen {
    fn new() -> Self {
        Self {
            keys: std::hash::RandomState::new(),
            refused: vec![0; REFUSED_SLOTS].into_boxed_slice(),
            taken: vec![0; REFUSED_SLOTS].into_boxed_slice(),
            protected: vec![0; PROTECTED_SLOTS].into_boxed_slice(),
        }
    }

    /// The key of `Basic` credentials (the value after the scheme), from `client` when given:
    /// the hash of the base64 text as [`principal::basic_credentials`] decodes it (characters
    /// out of the alphabet dropped, the URL-safe alphabet mapped, a stray last character
    /// dropped), which is one text for one user and password however they are spelled, read
    /// without decoding or allocating.
    fn credentials_key(&self, creds: &str, client: Option<IpAddr>) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let kept = |b: u8| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' => Some(b),
            b'-' => Some(b'+'),
            b'_' => Some(b'/'),
            _ => None,
        };
        let n = creds.bytes().filter_map(kept).count();
        let n = if n % 4 == 1 { n - 1 } else { n };
        let mut h = self.keys.build_hasher();
        {
            let mut feed = Feed::new(&mut h);
            creds
                .bytes()
                .filter_map(kept)
                .take(n)
                .for_each(|b| feed.push(b));
        }
        n.hash(&mut h);
        client.hash(&mut h);
        h.finish()
    }

    /// The key of the endpoint of `t`: its virtual host (`Host` in lower case, without its
    /// port), server port, method (`HEAD` as `GET`) and path as servers route it
    /// ([`canonical`](super::template::canonical)), its identifiers by their shape
    /// ([`shape_placeholder`](super::template::shape_placeholder): `/reports/7` is
    /// `/reports/{id}`). Not the learned template: a client answered on 50 made-up names under
    /// `/api/` (a server refusing bad credentials before it looks for the file) would make
    /// `/api/{param}` of `/api/reports` and `/api/status` alike.
    fn endpoint_key(&self, t: &TransactionFacts<'_>) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = self.keys.build_hasher();
        // The server's address, not the `Host` the client names: a made-up one made a
        // protected endpoint look new, and the guessed password's success no login.
        t.dst.hash(&mut h);
        let method = if t.method.eq_ignore_ascii_case("head") {
            "GET"
        } else {
            t.method
        };
        method.hash(&mut h);
        let path = super::template::canonical(t.path);
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            super::template::shape_placeholder(seg)
                .unwrap_or(seg)
                .hash(&mut h);
        }
        h.finish()
    }

    /// The set of four slots of an endpoint's key and its fingerprint.
    fn endpoint_slots(&mut self, key: u64) -> (&mut [u32], u32) {
        let set = (key as usize % (PROTECTED_SLOTS / 4)) * 4;
        let fp = ((key >> 33) as u32).max(1);
        (&mut self.protected[set..set + 4], fp)
    }

    /// Notes that the endpoint of `key` refused `Basic` credentials: written only when new, in
    /// an empty slot of its set, else over one that never took credentials (made-up paths
    /// refused by the thousand push out only their like), else over one picked by the key.
    fn refused_at(&mut self, key: u64) {
        let (ways, fp) = self.endpoint_slots(key);
        if ways.iter().any(|w| w & !CONFIRMED == fp) {
            return;
        }
        let i = ways
            .iter()
            .position(|w| *w == 0)
            .or_else(|| ways.iter().position(|w| w & CONFIRMED == 0))
            .unwrap_or((key >> 40) as usize % 4);
        ways[i] = fp;
    }

    /// True when the endpoint of `key` has refused `Basic` credentials; marked, the first
    /// time, as having taken some too.
    fn protected(&mut self, key: u64) -> bool {
        let (ways, fp) = self.endpoint_slots(key);
        match ways.iter_mut().find(|w| **w & !CONFIRMED == fp) {
            Some(w) => {
                if *w & CONFIRMED == 0 {
                    *w |= CONFIRMED;
                }
                true
            }
            None => false,
        }
    }
}

/// True when `key` was put in `table` ([`BasicSeen::refused`] or [`BasicSeen::taken`]) less
/// than [`RETRY_NS`] before `ts_ns`; else it is put there now, over its set's older slot. A
/// repeat writes nothing: the day runs from the first time.
fn seen_within(table: &mut [u64], key: u64, ts_ns: u64) -> bool {
    let now = u32::try_from(ts_ns / 1_000_000_000).unwrap_or(u32::MAX);
    let window = (RETRY_NS / 1_000_000_000) as u32;
    let set = (key as usize % (table.len() / 2)) * 2;
    let fp = u64::from(((key >> 48) as u16).max(1));
    let ways = &mut table[set..set + 2];
    let when = |slot: u64| (slot >> 16) as u32;
    let i = match ways.iter().position(|w| w & 0xffff == fp) {
        Some(i) if now.saturating_sub(when(ways[i])) < window => return true,
        Some(i) => i,
        // Empty slots are the oldest.
        None => usize::from(when(ways[1]) < when(ways[0])),
    };
    ways[i] = u64::from(now) << 16 | fp;
    false
}

/// A direct-mapped cache: a key's hash picks its one slot, which holds the last key that fell
/// there and its value. O(1), no eviction bookkeeping, bounded at [`CACHE_SLOTS`] entries.
struct DirectCache<K, V> {
    slots: Vec<Option<(K, V)>>,
}

impl<K: Clone, V: Clone> DirectCache<K, V> {
    fn new() -> Self {
        Self { slots: Vec::new() }
    }

    /// The value cached for `key` (compared whole), or `make`'s, cached; lent, so that the
    /// caller copies only the parts it keeps.
    fn get<Q>(&mut self, key: &Q, make: impl FnOnce() -> V) -> &V
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + PartialEq + ToOwned<Owned = K> + ?Sized,
    {
        if self.slots.is_empty() {
            self.slots.resize(CACHE_SLOTS, None);
        }
        let slot = &mut self.slots[key_of(key) as usize % CACHE_SLOTS];
        if !matches!(slot, Some((cached, _)) if cached.borrow() == key) {
            *slot = None;
        }
        &slot.get_or_insert_with(|| (key.to_owned(), make())).1
    }
}

/// Tokens longer than this are decoded each time, not cached: real ones (JWTs with their
/// claims, API keys, session ids) are far shorter, and a slot would otherwise hold up to a whole
/// header (4096 slots of 64 KiB).
const MAX_CACHED_TOKEN: usize = 4096;

/// What a token decodes to: its JWT claims and its short hash (shared: every request carrying
/// the token gets it as its credential).
type TokenFacts = (Option<JwtInfo>, Arc<str>);

/// A token's JWT claims and short hash, through `cache` (lent from it) when it is short enough.
fn token_facts<'c>(
    cache: &'c mut DirectCache<String, TokenFacts>,
    tok: &str,
) -> Cow<'c, TokenFacts> {
    let decode = || (parse_jwt(tok), short_hash(tok).into());
    if tok.len() > MAX_CACHED_TOKEN {
        Cow::Owned(decode())
    } else {
        Cow::Borrowed(cache.get(tok, decode))
    }
}

/// Builds observations.
pub struct Enricher {
    /// Recently seen bearer tokens, decoded: their JWT claims and short hash (a client repeats
    /// its token on every request, and decoding it and hashing it cost more than the rest of
    /// the enrichment).
    tokens: DirectCache<String, TokenFacts>,
    geo: Option<GeoDb>,
    /// Recent GeoIP answers by address: a client sends many requests, and a database lookup
    /// (tree walk and record decode) costs more than the rest of the enrichment together.
    geo_cache: DirectCache<IpAddr, Option<GeoInfo>>,
    templates: Templates,
    principal: PrincipalConfig,
    failure_markers: Vec<String>,
    /// GraphQL endpoints (`[models] graphql_endpoints`), where login mutations are read.
    graphql: principal::LoginPaths,
    /// Login mutation fields (`[models] graphql_login_fields`).
    graphql_fields: Vec<String>,
    /// `Basic` credentials lately refused or taken, and the endpoints that refused some
    /// ([`BasicSeen`]: a client retrying a stale password is no guesser; one sending its right
    /// one logs in once a day, where credentials are checked).
    basic_seen: BasicSeen,
    /// GraphQL mutations registered as automatic persisted queries, by hash.
    persisted: graphql::Persisted,
}

impl Enricher {
    /// An enricher; without a GeoIP database the geo fields stay empty (and geo models idle).
    pub fn new(geo: Option<GeoDb>, settings: &EnrichSettings) -> Result<Self, String> {
        let mut principal = PrincipalConfig::default();
        for p in &settings.trusted_proxies {
            let t: crate::verdict::Target = p
                .parse()
                .map_err(|e| format!("enrich.trusted_proxies: {e}"))?;
            principal.trusted_proxies.push(t.net());
        }
        let failure_markers: Vec<String> = settings
            .login_failure_markers
            .iter()
            .map(|m| squeezed(m.as_bytes()))
            .collect();
        // A marker of blanks only would be found in every answer: every login a failure.
        if let Some(i) = failure_markers.iter().position(String::is_empty) {
            return Err(format!(
                "enrich.login_failure_markers[{i}]: must hold a character other than blanks"
            ));
        }
        let models = crate::models::ModelsConfig::default();
        Ok(Self {
            graphql: principal::LoginPaths::new(&models.graphql_endpoints),
            graphql_fields: models.graphql_login_fields,
            geo,
            geo_cache: DirectCache::new(),
            tokens: DirectCache::new(),
            templates: Templates::default(),
            principal,
            failure_markers,
            basic_seen: BasicSeen::new(),
            persisted: graphql::Persisted::default(),
        })
    }

    /// The enricher reading user names on these login endpoints (`[models] login_endpoints`,
    /// the suffixes the models take for logins) instead of the default ones.
    pub fn with_login_paths(mut self, paths: &[String]) -> Self {
        self.principal.login_paths = principal::LoginPaths::new(paths);
        self
    }

    /// The enricher reading API keys in these query parameters (`[models] api_key_params`)
    /// instead of the default ones.
    pub fn with_api_key_params(mut self, params: &[String]) -> Self {
        self.principal.api_key_params = params.to_vec();
        self
    }

    /// The query parameters read for API keys ([`Enricher::with_api_key_params`]).
    pub fn api_key_params(&self) -> &[String] {
        &self.principal.api_key_params
    }

    /// The enricher reading login mutations on these GraphQL endpoints, for these fields
    /// (`[models] graphql_endpoints` and `graphql_login_fields`) instead of the default ones.
    pub fn with_graphql(mut self, paths: &[String], fields: &[String]) -> Self {
        self.graphql = principal::LoginPaths::new(paths);
        self.graphql_fields = fields.to_vec();
        self
    }

    /// The login attempts of a GraphQL request ([`graphql::login_calls`]), each with its
    /// outcome from the response, or, where the response says nothing readable about it, the
    /// transaction's (its status and failure markers). An attempt whose account could not be
    /// read has an empty user name.
    fn graphql_logins(&mut self, t: &TransactionFacts<'_>) -> Vec<LoginAttempt> {
        if self.graphql_fields.is_empty() || !self.graphql.matches(t.path) {
            return Vec::new();
        }
        // A query in the URL is the one express-graphql and graphql-http run, whatever the
        // body holds (mutations may be POSTed that way); else the body's.
        let form = Some("application/x-www-form-urlencoded");
        let mut calls = Vec::new();
        if t.query.contains("query=") {
            calls = graphql::login_calls(
                t.query.as_bytes(),
                form,
                &self.graphql_fields,
                &self.principal.username_fields,
            );
        }
        if calls.is_empty() {
            calls = graphql::login_calls_with(
                t.req_body,
                header(&t.req_headers, "content-type").map(|v| &**v),
                &self.graphql_fields,
                &self.principal.username_fields,
                Some(&mut self.persisted),
            );
        }
        if calls.is_empty() {
            return Vec::new();
        }
        // Where the answer says nothing readable about a call (cut at the body cap, a batch's
        // array), the transaction's outcome stands for a single call; several calls in one
        // request are no honest client's login, and each unreadable one is a failure (an
        // answer made to overflow the cap would otherwise turn every guess into a success).
        let whole = calls.len() == 1 && self.login_succeeded(t);
        let ok_status = (200..300).contains(&t.status);
        let mut attempts: Vec<LoginAttempt> = graphql::outcomes(&calls, t.resp_body)
            .into_iter()
            .zip(&mut calls)
            .map(|(outcome, call)| LoginAttempt {
                username: call.username.take().unwrap_or_default(),
                success: ok_status && outcome.unwrap_or(whole),
                issued: Vec::new(),
            })
            .collect();
        // What each successful call was issued: the tokens of its own result, and the session
        // cookies set when it alone succeeded (else they cannot be told apart: none).
        let linkable = |a: &LoginAttempt| a.success && !a.username.is_empty();
        if !attempts.iter().any(linkable) {
            return attempts;
        }
        let tokens = &mut self.tokens;
        graphql::issued(&calls, t.resp_body, |i, tok| {
            if linkable(&attempts[i]) {
                push_issued(&mut attempts[i].issued, tokens, tok);
            }
        });
        let mut winners = (0..attempts.len()).filter(|&i| linkable(&attempts[i]));
        if let (Some(i), None) = (winners.next(), winners.next()) {
            let mut issued = std::mem::take(&mut attempts[i].issued);
            self.issued_cookies(t, &mut issued);
            attempts[i].issued = issued;
        }
        attempts
    }

    /// The session cookies ([`PrincipalConfig::is_session_cookie`]) the answer of `t` sets,
    /// deletions aside ([`cookie::set`]), hashed as a request carrying one names it, into `out`.
    fn issued_cookies(&mut self, t: &TransactionFacts<'_>, out: &mut Vec<Arc<str>>) {
        let Some(head) = t.resp_head else { return };
        let now_s = i64::try_from(t.ts_ns / 1_000_000_000).unwrap_or(i64::MAX);
        for field in head.header_all("set-cookie") {
            if let Some((name, value)) = cookie::set(field, now_s)
                && (self.principal.is_session_cookie(name)
                    || matches!(
                        principal::field_style(name).as_str(),
                        "refreshtoken" | "refresh"
                    ))
            {
                push_issued(out, &mut self.tokens, value);
            }
        }
    }

    /// A refresh: the refresh credentials the request presents (a `refresh_token` member of its
    /// JSON body, read without parsing it, so that padding cannot hide it; a form field; a
    /// cookie named `refresh_token` or `refresh` in any style: every one of them, duplicates
    /// too, at most [`MAX_PRESENTED`]) and what its answer issued. Only on a request that can be
    /// a refresh (its path names a refresh or a token, or its body holds `refresh_token`), and
    /// the answer is parsed only when it can hold a token: a refresh cookie scoped to `/` is
    /// sent with every request.
    fn refresh(&mut self, t: &TransactionFacts<'_>) -> Option<crate::models::observation::Refresh> {
        const MAX_PRESENTED: usize = 64;
        // Asked of every 2xx request that is no login: no copy of the path.
        use crate::models::injection::contains_ci;
        let in_body = memchr::memmem::find(t.req_body, b"efresh").is_some();
        let path = t.path.as_bytes();
        if !(in_body || contains_ci(path, b"refresh") || contains_ci(path, b"token")) {
            return None;
        }
        let named = |k: &str| {
            matches!(
                principal::field_style(k).as_str(),
                "refreshtoken" | "refresh"
            )
        };
        let mut found: Vec<String> = Vec::new();
        if in_body {
            for key in [
                &b"\"refresh_token\""[..],
                b"\"refreshToken\"",
                b"\"refresh-token\"",
            ] {
                for at in memchr::memmem::find_iter(t.req_body, key) {
                    if let Some(v) = json_string_at(&t.req_body[at + key.len()..]) {
                        found.push(v);
                    }
                }
            }
            if t.req_body.first() != Some(&b'{') {
                found.extend(
                    String::from_utf8_lossy(t.req_body)
                        .split(crate::redact::SEPARATORS)
                        .filter_map(|p| p.split_once('='))
                        .filter(|(k, _)| named(&principal::percent_decoded(k)))
                        .map(|(_, v)| principal::percent_decoded(v).into_owned()),
                );
            }
        }
        found.extend(
            t.req_headers
                .iter()
                .filter(|(n, v)| n.eq_ignore_ascii_case("cookie") && v.contains("efresh"))
                .flat_map(|(_, line)| line.split(';'))
                .filter_map(cookie::pair)
                .filter(|(k, _)| named(k))
                .map(|(_, v)| v.to_owned()),
        );
        let mut presented: Vec<Arc<str>> = Vec::new();
        for v in found.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
            let h = Arc::clone(&token_facts(&mut self.tokens, v).1);
            if !presented.contains(&h) && presented.len() < MAX_PRESENTED {
                presented.push(h);
            }
        }
        if presented.is_empty() {
            return None;
        }
        let mut issued = Vec::new();
        let body = t.resp_body;
        if (memchr::memmem::find(body, b"oken").is_some()
            || memchr::memmem::find(body, b"jwt").is_some())
            && let Some(doc) = outcome_doc(body)
        {
            let tokens = &mut self.tokens;
            issued_tokens(&doc, &mut |tok| push_issued(&mut issued, tokens, tok));
        }
        self.issued_cookies(t, &mut issued);
        issued.retain(|c| !presented.contains(c));
        (!issued.is_empty()).then_some(crate::models::observation::Refresh { presented, issued })
    }

    /// A `Basic` password the server refused (401) without a login body: a guess at the
    /// user's password, so that guessing on an API that takes `Basic` credentials on every
    /// endpoint is a brute force; and one it took (2xx) on an endpoint that has refused `Basic`
    /// credentials before, once a day per user, password and client (`client`, the address the
    /// models count by): a success, so that a password found by guessing is said to be, and so
    /// that an office of `Basic` users who mistype now and then has the logins that tell it from
    /// a guesser. The success issues nothing (nothing to link). Neither counts:
    /// - a 403 (authorisation, the password was right) or any other status;
    /// - a 2xx from an endpoint never seen refusing `Basic` credentials
    ///   ([`BasicSeen::endpoint_key`]): one that ignores them (a health check, static files, a
    ///   location without `auth_basic`) answers any password, and a stuffer sending every pair
    ///   there as well would have every account logged in (its success ratio a client's, a
    ///   guessed password raised for each account it had guessed at). A client cannot make such
    ///   an endpoint look protected: it never answers 401 to credentials;
    /// - an OAuth client authenticating to a token endpoint (`grant_type` in the body, RFC 6749
    ///   §2.3.1): the client is no user;
    /// - an API key sent as the user name (an empty password, or a user name shaped like a key),
    ///   which would be printed as an account;
    /// - the same user and password refused again within a day, from anywhere: a client
    ///   retrying a stale password (a monitor, a backup job) tries one password however often;
    /// - the same user and password taken again within a day from the same client: a client
    ///   sending its right one on every request logs in once a day (the requests after it are
    ///   no logins: they stay in the enumeration and scraping counts). Another client's login
    ///   with them is one of its own: the owner's job logging in at 08:00 hides nothing of a
    ///   guesser's success at 10:00.
    ///
    /// The common case costs two keyed hashes and two lookups, without decoding, allocating or
    /// writing: a repeat, or a 2xx on an endpoint that does not check credentials (one hash).
    fn basic_guess(&mut self, t: &TransactionFacts<'_>, client: IpAddr) -> Option<LoginAttempt> {
        let success = (200..300).contains(&t.status);
        if !(success || t.status == 401) {
            return None;
        }
        let authorization = header(&t.req_headers, "authorization")?;
        let creds = principal::credentials(authorization, "basic")?;
        if oauth_client(t) {
            return None;
        }
        let seen = &mut self.basic_seen;
        let endpoint = seen.endpoint_key(t);
        let repeat = if success {
            // Taken where `Basic` was refused before, and by `Basic` alone: a request that
            // carries another credential (an API key, a session) may have been let in by it.
            if !seen.protected(endpoint) {
                return None;
            }
            let key = seen.credentials_key(creds, Some(client));
            seen_within(&mut seen.taken, key, t.ts_ns)
        } else {
            // An endpoint is protected by `Basic` when its 401 asks for it: one that refuses a
            // missing API key with a bare 401 is not (a client could make it look protected).
            let challenged = t.resp_head.is_some_and(|h| {
                h.header_all("www-authenticate").any(|field| {
                    field.split(',').any(|c| {
                        let c = c.trim_start();
                        c.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("basic"))
                            && c[5..]
                                .chars()
                                .next()
                                .is_none_or(|ch| ch == ' ' || ch == '\t')
                    })
                })
            });
            if challenged {
                seen.refused_at(endpoint);
            }
            let key = seen.credentials_key(creds, None);
            seen_within(&mut seen.refused, key, t.ts_ns)
        };
        if repeat {
            return None;
        }
        let (user, password) = principal::basic_credentials(authorization)?;
        if user.trim().is_empty()
            || password.is_empty()
            || key_shaped(&user)
            || key_shaped(&password)
            || TOKEN_USERS.iter().any(|u| user.eq_ignore_ascii_case(u))
        {
            return None;
        }
        Some(LoginAttempt {
            username: user,
            success,
            issued: Vec::new(),
        })
    }

    /// True when a GeoIP database is loaded.
    pub fn has_geo(&self) -> bool {
        self.geo.is_some()
    }

    /// GeoIP lookups whose record could not be read ([`GeoDb::errors`]).
    pub fn geo_errors(&self) -> u64 {
        self.geo.as_ref().map_or(0, |g| g.errors())
    }

    /// Endpoint templates learned so far.
    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// The GeoIP answer for `ip`, from the cache or the database.
    fn locate(&mut self, ip: IpAddr) -> Option<GeoInfo> {
        let db = self.geo.as_ref()?;
        self.geo_cache.get(&ip, || db.lookup(ip)).clone()
    }

    /// Enriches one transaction.
    pub fn enrich<'a>(&mut self, t: TransactionFacts<'a>) -> Observation<'a> {
        let view = RequestView {
            src_ip: t.src.0,
            path: t.path,
            query: t.query,
            headers: &t.req_headers,
            body: t.req_body,
        };
        let mut username = principal::login_username(&view, &self.principal);
        // A GraphQL request may carry many login calls: the first that names an account names
        // the principal; each is an attempt.
        let mut calls = Vec::new();
        if username.is_none() {
            calls = self.graphql_logins(&t);
            username = calls
                .iter()
                .find(|a| !a.username.is_empty())
                .map(|a| a.username.clone());
        }
        // The token borrowed from the transaction when its header is (the observation keeps
        // it for revocation, and a copy per request is what it would cost otherwise).
        let bearer: Option<Cow<'a, str>> = match header(&t.req_headers, "authorization") {
            Some(Cow::Borrowed(v)) => principal::bearer_token(v).map(Cow::Borrowed),
            Some(Cow::Owned(v)) => principal::bearer_token(v).map(|t| Cow::Owned(t.to_owned())),
            None => None,
        };
        let (jwt, bearer_hash) = match bearer.as_deref() {
            Some(tok) => {
                let (jwt, hash) = token_facts(&mut self.tokens, tok).into_owned();
                (jwt, Some(hash))
            }
            None => (None, None),
        };
        // Without one, a JWT in a token header, a cookie or the query (decoded through the
        // cache: a client repeats it as it would a bearer token).
        let tokens = &mut self.tokens;
        let elsewhere = if bearer.is_none() {
            principal::jwt_elsewhere(&view, &self.principal, |tok, how| {
                let facts = token_facts(tokens, tok);
                // Kept for a revocation only where the server reads it: another
                // application's token in a cookie is not this principal's to revoke.
                let keep = how.read.then(|| tok.to_owned());
                Some((facts.0.clone()?, (Arc::clone(&facts.1), keep)))
            })
        } else {
            None
        };
        let client_ip =
            principal::client_ip(&view, &self.principal).unwrap_or(principal::UNKNOWN_CLIENT);
        let decoded = principal::Decoded {
            bearer: bearer_hash.as_deref().map(|h| (jwt.as_ref(), h)),
            elsewhere: elsewhere.as_ref().map(|(j, _)| j),
            login: username.as_deref(),
            client: client_ip,
        };
        // API keys and session cookies repeat as tokens do: their hashes come from the cache
        // too (decoded as a JWT as well, so that a secret seen first here and later as a
        // bearer token is cached as the token would be). The hash names the principal, and is
        // its credential, shared with the cache.
        let mut secret_hash = None;
        let principal = principal::identify(&view, &self.principal, &decoded, |secret| {
            let hash = Arc::clone(&token_facts(tokens, secret).1);
            let id = (*hash).to_owned();
            secret_hash = Some(hash);
            id
        });
        // The credential is what named the principal (a JWT carried elsewhere when nothing
        // else did, or when it has no subject to name it by): the one reuse is judged on.
        let credential = bearer_hash
            .or_else(|| {
                matches!(
                    principal.kind,
                    principal::PrincipalKind::ApiKey
                        | principal::PrincipalKind::Session
                        | principal::PrincipalKind::Token
                )
                .then_some(secret_hash)
                .flatten()
            })
            .or_else(|| elsewhere.as_ref().map(|(_, (hash, _))| Arc::clone(hash)));
        // The claims judged and the token a revocation names: the bearer token's, else those
        // of the JWT carried elsewhere.
        let (jwt, bearer) = match elsewhere {
            Some((j, (_, tok))) if bearer.is_none() => (Some(j), tok.map(Cow::Owned)),
            _ => (jwt, bearer),
        };
        // A login body (or a GraphQL login call) names the account a login tries; without one,
        // a `Basic` password refused, or taken where one was refused before
        // ([`Enricher::basic_guess`]: not an OAuth client's, not an API key's, not a retry
        // within a day; nothing issued, so nothing is linked to a `Basic` user).
        let login = match username {
            _ if !calls.is_empty() => Some(calls.remove(0)),
            Some(username) => {
                // A redirect that says nothing of how the login went (it sets no session and
                // goes neither back to a login page nor to an error) is no attempt: neither a
                // failure (an office's every login would be one) nor a success.
                let (outcome, doc) = self.login_outcome(&t);
                if let Some(success) = outcome {
                    // What a successful login was issued: the tokens of its answer and the
                    // session cookies it set (the answer of a failed one issues nothing, nor
                    // that of a step that proved nothing: an identifier-first step names an
                    // account, and whoever sent it gets a session of its own).
                    let mut issued = Vec::new();
                    if success && !username.trim().is_empty() && proves_holder(t.req_body) {
                        if let Some(doc) = &doc {
                            let tokens = &mut self.tokens;
                            issued_tokens(doc, &mut |tok| push_issued(&mut issued, tokens, tok));
                        }
                        self.issued_cookies(&t, &mut issued);
                    }
                    Some(LoginAttempt {
                        username,
                        success,
                        issued,
                    })
                } else {
                    None
                }
            }
            None => self.basic_guess(&t, client_ip),
        };
        let refreshed = if login.is_none() && (200..300).contains(&t.status) {
            self.refresh(&t)
        } else {
            None
        };
        let user_agent = header(&t.req_headers, "user-agent").cloned();
        Observation {
            ts_ns: t.ts_ns,
            client_ip,
            geo: self.locate(client_ip),
            method: t.method.into(),
            path: t.path.into(),
            endpoint: self.templates.template_for(t.path, t.status),
            query: t.query.into(),
            status: t.status,
            req_bytes: t.req_bytes,
            resp_bytes: t.resp_bytes,
            latency_ms: t.latency_ms,
            user_agent,
            req_headers: t.req_headers,
            req_body: t.req_body.into(),
            resp_content_type: t.resp_content_type.map(Cow::Borrowed),
            resp_body: t.resp_body.into(),
            login,
            more_logins: calls,
            refreshed,
            jwt,
            credential,
            bearer,
            principal,
            src_port: t.src.1,
            dst_ip: Some(t.dst.0),
            dst_port: t.dst.1,
        }
    }

    fn login_succeeded(&self, t: &TransactionFacts<'_>) -> bool {
        self.login_outcome(t).0 == Some(true)
    }

    /// How a login answered with a redirect went: a failure when it goes back to a login page
    /// (the request's own path or one under it, as Rails' `/session` to `/session/new`) or to a
    /// page named for an error; else a success when it sets a session (a session cookie that is
    /// no deletion); else, when it goes back to the page the client says it came from
    /// (Laravel's `back()`), a failure; else unknown (`None`): a redirect to `/` that sets no
    /// cookie the configuration names is an app keeping its session id, or one whose session
    /// cookie is not named, as likely as a failure.
    fn redirected_in(&self, t: &TransactionFacts<'_>) -> Option<bool> {
        let head = t.resp_head?;
        let Some(location) = head.header("location") else {
            return Some(false);
        };
        let lower = location.trim().to_ascii_lowercase();
        let path_of = |r: &str| -> String {
            let after_scheme = r
                .split_once("://")
                .map_or(r, |(_, r)| r.find('/').map_or("/", |i| &r[i..]));
            let p = after_scheme.split(['?', '#']).next().unwrap_or_default();
            // A relative reference, resolved against the request's directory.
            let p = if p.starts_with('/') {
                p.to_owned()
            } else {
                let dir = t.path.rsplit_once('/').map_or("", |(d, _)| d);
                format!("{}/{p}", dir.to_ascii_lowercase())
            };
            let p = p.trim_end_matches('/');
            if p.is_empty() {
                "/".to_owned()
            } else {
                p.to_owned()
            }
        };
        let path = path_of(&lower);
        let own = t.path.to_ascii_lowercase();
        let own = own.trim_end_matches('/');
        // Error words as whole words of the path or query (not `/badges`).
        let named_error = lower.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| {
            [
                "error",
                "errors",
                "fail",
                "failed",
                "failure",
                "invalid",
                "denied",
                "retry",
                "unauthorized",
                "unauthorised",
            ]
            .contains(&w)
        });
        let under_own =
            own.len() > 1 && path.starts_with(own) && path.as_bytes().get(own.len()) == Some(&b'/');
        if named_error || self.principal.login_paths.matches(&path) || path == own || under_own {
            return Some(false);
        }
        let now_s = i64::try_from(t.ts_ns / 1_000_000_000).unwrap_or(i64::MAX);
        let sets_session = head.header_all("set-cookie").any(|f| {
            cookie::set(f, now_s).is_some_and(|(name, _)| self.principal.is_session_cookie(name))
        });
        if sets_session {
            return Some(true);
        }
        let referer = header(&t.req_headers, "referer").map(|r| path_of(&r.to_ascii_lowercase()));
        if referer.as_deref() == Some(path.as_str()) {
            return Some(false);
        }
        None
    }

    /// Whether the login of `t` succeeded (`None`: a redirect that says nothing, [`Self::redirected_in`]), and its answer's document when that is a JSON
    /// object read for it ([`outcome_doc`]: the tokens a success issued are read from it, not
    /// parsed again).
    fn login_outcome(
        &self,
        t: &TransactionFacts<'_>,
    ) -> (
        Option<bool>,
        Option<serde_json::Map<String, serde_json::Value>>,
    ) {
        // A form login answered by a redirect (Post/Redirect/Get): where it sends the browser
        // says how it went.
        if (300..400).contains(&t.status) {
            return (self.redirected_in(t), None);
        }
        if !(200..300).contains(&t.status) {
            return (Some(false), None);
        }
        // A page that asks for the password again is the form re-rendered with its error,
        // whatever words it uses (and a fresh anonymous session it sets is nobody's).
        if asks_password(t.resp_body) {
            return (Some(false), None);
        }
        let doc = outcome_doc(t.resp_body);
        if let Some(top) = &doc {
            // A second factor asked for: the password was right.
            if asks_second_factor(top, 1) {
                return (Some(true), doc);
            }
            if flag_false(top) {
                return (Some(false), doc);
            }
            // A token issued is a success, whatever else the answer mentions (a banner's
            // `"lastLogin":{"success":false}` matches the default marker).
            if carries_token(top, 3) {
                return (Some(true), doc);
            }
        }
        // Markers are looked for in the answer's own words: in a JSON answer, its members but
        // objects other than its wrappers and errors (a banner's `"lastLogin":{"success":
        // false}` reports an earlier attempt).
        let body = match &doc {
            Some(top) => {
                let own: serde_json::Map<String, serde_json::Value> = top
                    .iter()
                    .filter(|(k, v)| {
                        !v.is_object() || {
                            let k = principal::field_style(k);
                            WRAPPERS.contains(&k.as_str()) || k == "error" || k == "errors"
                        }
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                squeezed(serde_json::Value::Object(own).to_string().as_bytes())
            }
            None => squeezed(t.resp_body),
        };
        let success = !self
            .failure_markers
            .iter()
            .any(|m| body.contains(m.as_str()))
            && !doc.as_ref().is_some_and(json_says_failed);
        (Some(success), doc)
    }
}

/// The JSON string value after a member's key (`b` starts right after the key's closing
/// quote: blanks, `:`, blanks, the string), unescaped as far as simple escapes go; none when
/// the value is no string.
fn json_string_at(b: &[u8]) -> Option<String> {
    let mut i = 0;
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    if b.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let mut j = start;
    while let Some(&c) = b.get(j) {
        match c {
            b'"' => return serde_json::from_slice::<String>(&b[start - 1..=j]).ok(),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
    None
}

/// True when a login request carried something only its holder knows: a field named like a
/// password, secret or one-time code ([`crate::redact::secret_name`], or `code`) with a value,
/// in a JSON body (up to three objects deep) or a form. An identifier-first step
/// (`{"email": ...}`) names an account and proves nothing.
fn proves_holder(body: &[u8]) -> bool {
    // Not any secret-looking name: a form's CSRF token (`authenticity_token`, `_token`,
    // `csrfmiddlewaretoken`), `authMethod`, `sessionId` or `countryCode` prove nothing.
    fn secret_field(k: &str) -> bool {
        let k = principal::field_style(k);
        ["pass", "pwd", "secret"].iter().any(|p| k.contains(p))
            || [
                "p",
                "pw",
                "pword",
                "pin",
                "otp",
                "totp",
                "code",
                "mfacode",
                "verificationcode",
                "onetimecode",
                "twofactorcode",
                "authcode",
                "credential",
                "credentials",
            ]
            .contains(&k.as_str())
    }
    fn in_json(v: &serde_json::Value, depth: u32) -> bool {
        v.as_object().is_some_and(|o| {
            o.iter().any(|(k, v)| {
                (secret_field(k) && !matches!(v, serde_json::Value::Null) && v != "")
                    || (depth > 0 && in_json(v, depth - 1))
            })
        })
    }
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        return in_json(&v, 3);
    }
    String::from_utf8_lossy(body)
        .split(crate::redact::SEPARATORS)
        .any(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            !v.is_empty() && secret_field(&principal::percent_decoded(k))
        })
}

/// True when an answer is a page with a password field: a login form (re-rendered with its
/// error, whatever words the error uses).
fn asks_password(body: &[u8]) -> bool {
    use crate::models::injection::contains_ci;
    // A page that asks for a new password (expired, to be changed) or a second factor comes
    // after a right password.
    const AFTER: [&[u8]; 9] = [
        b"new_password",
        b"newpassword",
        b"new-password",
        b"password_confirmation",
        b"confirm_password",
        b"confirmpassword",
        b"one-time-code",
        b"name=\"otp",
        b"name=\"code",
    ];
    contains_ci(body, b"<form")
        && !AFTER.iter().any(|w| contains_ci(body, w))
        && [
            &b"type=\"password\""[..],
            b"type='password'",
            b"type=password",
        ]
        .iter()
        .any(|p| contains_ci(body, p))
}

/// Names (in [`principal::field_style`]) of the members of a login answer that hold the
/// credential it issues (`token`, `access_token`, `accessToken`, `id_token`, `session_token`,
/// `authToken`, Strapi's `jwt`), and the `refresh_token` that renews them.
const ISSUED_FIELDS: [&str; 7] = [
    "token",
    "refreshtoken",
    "accesstoken",
    "idtoken",
    "sessiontoken",
    "authtoken",
    "jwt",
];

/// Calls `found` with each credential a successful login's answer `o` issues: the text of a
/// member named in [`ISSUED_FIELDS`] at its top, or one level under one of its [`WRAPPERS`]
/// (`{"data":{"access_token":...}}`, `{"session":{"token":...}}`).
pub(crate) fn issued_tokens<'v>(
    o: &'v serde_json::Map<String, serde_json::Value>,
    found: &mut impl FnMut(&'v str),
) {
    use serde_json::Value;
    let named = |k: &str, names: &[&str]| names.contains(&principal::field_style(k).as_str());
    for (k, v) in o {
        match v {
            Value::String(s) if !s.is_empty() && named(k, &ISSUED_FIELDS) => found(s),
            Value::Object(inner) if named(k, &WRAPPERS) => {
                for (k, v) in inner {
                    if let Value::String(s) = v
                        && !s.is_empty()
                        && named(k, &ISSUED_FIELDS)
                    {
                        found(s);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Adds the hash of credential `secret` to `issued` (once), through the token cache: the very
/// hash a request carrying it is named by (as a bearer token, an API key or a session cookie,
/// [`token_facts`]), and which that request then finds cached.
fn push_issued(
    issued: &mut Vec<Arc<str>>,
    tokens: &mut DirectCache<String, TokenFacts>,
    secret: &str,
) {
    let hash = &token_facts(tokens, secret).1;
    if !issued.contains(hash) {
        issued.push(Arc::clone(hash));
    }
}

/// `b` as text in lower case without blanks: what failure markers are matched in, so that a
/// marker written `"success":false` also finds `"success": false` (Python's `json.dumps`).
fn squeezed(b: &[u8]) -> String {
    let kept: Vec<u8> = b
        .iter()
        .filter(|c| !c.is_ascii_whitespace())
        .map(u8::to_ascii_lowercase)
        .collect();
    String::from_utf8_lossy(&kept).into_owned()
}

/// Flags of a login response that say whether it worked (compared in any case and naming
/// style: `logged_in` is `loggedIn`).
const OUTCOME_FLAGS: [&str; 7] = [
    "success",
    "succeeded",
    "successful",
    "ok",
    "authenticated",
    "loggedin",
    "valid",
];

/// `status` values of a login response that say it did not work (JSend's `fail` and `error`).
const FAILED_STATUSES: [&str; 6] = [
    "fail",
    "failed",
    "failure",
    "error",
    "denied",
    "unauthorized",
];

/// Login responses larger than this are not parsed for an outcome (a login answer is small).
const MAX_OUTCOME_DOC: usize = 64 * 1024;

/// A 2xx login response whose JSON document (one that carries no token and asks for no second
/// factor: [`Enricher::login_succeeded`] looks first) says the login failed: a `status` among
/// [`FAILED_STATUSES`], one of the [`OUTCOME_FLAGS`] false under one of the [`WRAPPERS`], or an
/// `error` or `errors` member that holds something (not null, false, 0 or empty): GraphQL
/// answers a failed mutation with 200, `errors` and a null result.
fn json_says_failed(top: &serde_json::Map<String, serde_json::Value>) -> bool {
    use serde_json::Value;
    let named = |k: &str, n: &str| k.eq_ignore_ascii_case(n);
    let failed_status = top.iter().any(|(k, v)| {
        named(k, "status")
            && v.as_str()
                .is_some_and(|s| FAILED_STATUSES.iter().any(|f| s.eq_ignore_ascii_case(f)))
    });
    // `"error": 0` is the absence of one (PHP and C-style APIs).
    let holds = |v: &Value| match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::Bool(true) => true,
    };
    let error = top
        .iter()
        .any(|(k, v)| (named(k, "error") || named(k, "errors")) && holds(v));
    // A flag one level down counts under a wrapper of the answer only: `"lastLogin":
    // {"success":false}` on a success page reports an earlier attempt.
    let nested_flag = top.iter().any(|(k, v)| {
        WRAPPERS.contains(&principal::field_style(k).as_str())
            && v.as_object().is_some_and(flag_false)
    });
    failed_status || error || nested_flag
}

/// The members an answer wraps its result in (`{"data":{"success":false}}`).
const WRAPPERS: [&str; 8] = [
    "data", "result", "response", "payload", "body", "auth", "login", "session",
];

/// A login answer as a JSON object, when it is one of at most [`MAX_OUTCOME_DOC`] bytes.
fn outcome_doc(body: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    let body = body.trim_ascii_start();
    if body.first() != Some(&b'{') || body.len() > MAX_OUTCOME_DOC {
        return None;
    }
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(top)) => Some(top),
        _ => None,
    }
}

/// Names (in [`principal::field_style`]) that say a second factor is asked for: the password
/// was right and the login goes on (`"mfa_required": true`, `"challengeName": "SMS_MFA"`).
const SECOND_FACTOR: [&str; 7] = [
    "mfa",
    "2fa",
    "otp",
    "twofactor",
    "challenge",
    "totp",
    "secondfactor",
];

/// True when `o` (or an object `depth` levels below it) has a member named like a second factor
/// that holds something (`true`, a non-empty string or object).
fn asks_second_factor(o: &serde_json::Map<String, serde_json::Value>, depth: u32) -> bool {
    use serde_json::Value;
    o.iter().any(|(k, v)| {
        let named = {
            let k = principal::field_style(k);
            SECOND_FACTOR.iter().any(|w| k.contains(w))
        };
        match v {
            Value::Bool(b) => named && *b,
            Value::String(s) => named && !s.is_empty(),
            Value::Object(inner) => {
                (named && !inner.is_empty()) || (depth > 0 && asks_second_factor(inner, depth - 1))
            }
            _ => false,
        }
    })
}

/// True when one of [`OUTCOME_FLAGS`] is false in `o` (`success: false`).
pub(super) fn flag_false(o: &serde_json::Map<String, serde_json::Value>) -> bool {
    o.iter().any(|(k, v)| {
        *v == serde_json::Value::Bool(false)
            && OUTCOME_FLAGS.contains(&principal::field_style(k).as_str())
    })
}

/// True when `o`, or an object within `depth` levels below it, has a member whose name holds
/// `token` (any case) with text in it.
pub(super) fn carries_token(o: &serde_json::Map<String, serde_json::Value>, depth: u32) -> bool {
    o.iter().any(|(k, v)| match v {
        // Not a form's anti-forgery token, which failure pages carry too.
        serde_json::Value::String(s) => {
            let k = k.to_ascii_lowercase();
            !s.is_empty() && k.contains("token") && !k.contains("csrf") && !k.contains("xsrf")
        }
        serde_json::Value::Object(inner) => depth > 0 && carries_token(inner, depth - 1),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::principal::PrincipalKind;

    fn facts<'a>(
        path: &'a str,
        headers: &'a [(String, String)],
        body: &'a [u8],
        status: u16,
        resp: &'a [u8],
    ) -> TransactionFacts<'a> {
        TransactionFacts {
            ts_ns: 1,
            src: ("203.0.113.7".parse().unwrap(), 40000),
            dst: ("198.18.0.1".parse().unwrap(), 8080),
            method: "POST",
            path,
            query: "",
            req_headers: headers
                .iter()
                .map(|(n, v)| (n.as_str().into(), v.as_str().into()))
                .collect(),
            req_body: body,
            req_bytes: body.len() as u64,
            status,
            resp_content_type: None,
            // A 401 asks for `Basic` credentials, as servers taking them do.
            resp_head: (status == 401).then(|| &*CHALLENGE),
            resp_body: resp,
            resp_bytes: resp.len() as u64,
            latency_ms: 1.0,
        }
    }

    static CHALLENGE: std::sync::LazyLock<Head> = std::sync::LazyLock::new(|| {
        Head::response(401, &[("WWW-Authenticate", "Basic realm=\"api\"")])
    });

    #[test]
    fn geoip_answers_are_the_databases_through_the_cache() {
        use crate::enrich::geo::testdb::{Layout, Place, build};
        let dir = crate::lab::TempDir::new("sentinel-geo-cache").unwrap();
        let places: Vec<Place> = (0..64u32)
            .map(|i| Place {
                net: format!("198.18.{i}.0/24").parse().unwrap(),
                country: ["SA", "VN", "DE", "BR"][i as usize % 4],
                city: ["Riyadh", "Hanoi", "Berlin", "Recife"][i as usize % 4],
                lat: f64::from(i),
                lon: -f64::from(i),
            })
            .collect();
        let path = dir.join("geo.mmdb");
        std::fs::write(&path, build(&places, Layout::MaxMind).unwrap()).unwrap();
        let db = || GeoDb::open(std::slice::from_ref(&path)).unwrap();
        let (direct, mut e) = (
            db(),
            Enricher::new(Some(db()), &EnrichSettings::default()).unwrap(),
        );
        // More addresses than slots, twice over, and some outside the database.
        for round in 0..2 {
            for i in 0..(2 * CACHE_SLOTS as u32 + 300) {
                let ip = IpAddr::from([198, 18 + (i >> 14) as u8, (i >> 6) as u8 % 70, i as u8]);
                assert_eq!(e.locate(ip), direct.lookup(ip), "{ip} round {round}");
            }
        }
    }

    #[test]
    fn login_outcomes_follow_status_and_markers() {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let h = vec![("Content-Type".to_string(), "application/json".to_string())];
        let body = br#"{"username":"layla","password":"x"}"#;
        let o = e.enrich(facts(
            "/login",
            &h,
            body,
            401,
            b"{\"error\":\"invalid credentials\"}",
        ));
        assert_eq!(
            o.login,
            Some(LoginAttempt {
                username: "layla".into(),
                success: false,
                issued: Vec::new(),
            })
        );
        assert_eq!(o.principal.kind, PrincipalKind::User);
        let o = e.enrich(facts("/login", &h, body, 200, b"{\"success\":false}"));
        assert!(!o.login.unwrap().success);
        let o = e.enrich(facts("/login", &h, body, 200, b"{\"token\":\"t\"}"));
        assert!(o.login.unwrap().success);
        let o = e.enrich(facts("/accounts/42", &h, b"", 200, b"{}"));
        assert!(o.login.is_none());
        assert_eq!(o.endpoint, "/accounts/{id}");
    }

    /// One request for [`kinds_of`]: path, extra headers, body, client address, status.
    type Req<'a> = (&'a str, Vec<(String, String)>, String, &'a str, u16);

    /// The alert kinds the models raise over `reqs` (a second apart, with a JSON content type
    /// and okhttp's user agent besides their own headers) after enrichment.
    fn kinds_of(reqs: &[Req<'_>]) -> Vec<crate::models::AlertKind> {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let mut m = crate::models::Engine::new(&Default::default()).unwrap();
        let mut kinds = Vec::new();
        for (i, (path, extra, body, ip, status)) in reqs.iter().enumerate() {
            let mut h = vec![
                ("Content-Type".to_string(), "application/json".to_string()),
                ("User-Agent".to_string(), "okhttp/4.9".to_string()),
            ];
            h.extend(extra.iter().cloned());
            let mut f = facts(path, &h, body.as_bytes(), *status, b"{}");
            f.ts_ns = 1_793_491_200_000_000_000 + i as u64 * 1_000_000_000;
            f.src.0 = ip.parse().unwrap();
            kinds.extend(m.observe(&e.enrich(f)).into_iter().map(|a| a.kind));
        }
        kinds
    }

    #[test]
    fn a_blank_failure_marker_is_refused_and_a_blank_form_name_is_no_account() {
        let settings = EnrichSettings {
            login_failure_markers: vec!["login failed".into(), " \t".into()],
            ..EnrichSettings::default()
        };
        let e = Enricher::new(None, &settings).err().unwrap();
        assert!(e.contains("login_failure_markers[1]"), "{e}");
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let h = vec![(
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        )];
        for body in [&b"username=+&password=x"[..], b"username=%20&password=x"] {
            let f = facts("/login", &h, body, 401, b"");
            assert!(
                e.enrich(f).login.is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// `Basic` credentials for `user` and `pw`.
    fn basic(user: &str, pw: &str) -> Vec<(String, String)> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        vec![("Authorization".to_string(), format!("Basic {b64}"))]
    }

    #[test]
    fn refused_basic_passwords_are_guesses_but_a_stale_retry_is_not() {
        // Twenty passwords for admin on an API that takes Basic credentials on every request.
        let guesses: Vec<Req<'_>> = (0..20)
            .map(|i| {
                let h = basic("admin", &format!("pw{i}"));
                ("/api/reports", h, String::new(), "203.0.113.70", 401)
            })
            .collect();
        let kinds = kinds_of(&guesses);
        assert!(
            kinds.contains(&crate::models::AlertKind::BruteForce),
            "{kinds:?}"
        );
        // A monitor with a password since changed, retrying the same one every second, and a
        // client of that API using its right password all day, mistyping it once.
        let stale: Vec<Req<'_>> = (0..60)
            .map(|_| {
                let h = basic("monitor", "old-password");
                ("/api/health", h, String::new(), "198.18.0.71", 401)
            })
            .collect();
        assert_eq!(kinds_of(&stale), []);
        let mut client: Vec<Req<'_>> = (0..100)
            .map(|_| {
                (
                    "/api/reports",
                    basic("reporter", "right"),
                    String::new(),
                    "198.18.0.70",
                    200,
                )
            })
            .collect();
        client[50].1 = basic("reporter", "wrong");
        client[50].4 = 401;
        assert_eq!(kinds_of(&client), []);
        // An OAuth client refused at the token endpoint is no user; a key as the user name,
        // with a password or without, is no account.
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let h = basic("mobile-app", "wrong-secret");
        let f = facts(
            "/oauth/token",
            &h,
            b"grant_type=client_credentials",
            401,
            b"{}",
        );
        assert!(e.enrich(f).login.is_none());
        for (user, pw) in [
            ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "x"),
            ("a1b2c3d4e5f6a7b8c9d0e1f2", "x"),
            // A token as the password under a service's token user, or under anyone.
            ("x-access-token", "hunter2"),
            ("layla@corp.example", "glpat-3f9a8b7c6d5e4f3a2b1c"),
        ] {
            let h = basic(user, pw);
            let f = facts("/v1/charges", &h, b"", 401, b"{}");
            assert!(e.enrich(f).login.is_none(), "{user}");
        }
        // After a review: `grant_type` off a token endpoint is no OAuth client; a header a
        // lenient server decodes (a `.` inserted: Python's b64decode drops it) is read.
        let h = basic("admin", "pw1");
        let f = facts("/api/reports", &h, b"grant_type", 401, b"{}");
        assert_eq!(e.enrich(f).login.map(|l| l.username), Some("admin".into()));
        let h = vec![(
            "Authorization".to_string(),
            "Basic YWRt.aW46cHcy".to_string(),
        )];
        let f = facts("/api/reports", &h, b"", 401, b"{}");
        assert_eq!(e.enrich(f).login.map(|l| l.username), Some("admin".into()));
        // A cron job retrying a stale password hourly tries one password a day.
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let h = basic("backup", "old-password");
        let tried = (0..24u64)
            .filter(|i| {
                let mut f = facts("/api/backup", &h, b"", 401, b"{}");
                f.ts_ns = 1_793_491_200_000_000_000 + i * 3_601_000_000_000;
                e.enrich(f).login.is_some()
            })
            .count();
        assert_eq!(tried, 1);
    }

    #[test]
    fn a_basic_password_taken_after_guesses_is_guessed_and_mistyping_offices_are_not_guessers() {
        // Twenty refused passwords for admin, then the one the server takes.
        let mut guesses: Vec<Req<'_>> = (0..21)
            .map(|i| {
                let h = basic("admin", &format!("pw{i}"));
                ("/api/reports", h, String::new(), "203.0.113.70", 401)
            })
            .collect();
        guesses[20].4 = 200;
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let mut m = crate::models::Engine::new(&Default::default()).unwrap();
        let mut last = Vec::new();
        for (i, (path, h, _, ip, status)) in guesses.iter().enumerate() {
            let mut f = facts(path, h, b"", *status, b"{}");
            f.ts_ns = 1_793_491_200_000_000_000 + i as u64 * 1_000_000_000;
            f.src.0 = ip.parse().unwrap();
            let o = e.enrich(f);
            last = m.observe(&o);
        }
        assert!(
            last.iter()
                .any(|a| a.kind == crate::models::AlertKind::BruteForce
                    && a.severity == crate::models::Severity::Critical
                    && a.explanation.contains("guessed")),
            "{last:?}"
        );
        // An office of thirty Basic users behind one address, each mistyping once, then
        // working with the right password: no guesser (the logins that worked tell).
        let mut office: Vec<Req<'_>> = Vec::new();
        for u in 0..30 {
            let user = format!("clerk{u}");
            office.push((
                "/api/reports",
                basic(&user, "typo"),
                String::new(),
                "192.0.2.10",
                401,
            ));
            for _ in 0..3 {
                office.push((
                    "/api/reports",
                    basic(&user, "right"),
                    String::new(),
                    "192.0.2.10",
                    200,
                ));
            }
        }
        assert_eq!(kinds_of(&office), []);
        // A client sending its right password on every request logs in once a day (on an
        // endpoint seen refusing a password).
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let h = basic("someone", "wrong");
        assert!(
            e.enrich(facts("/api/reports", &h, b"", 401, b"{}"))
                .login
                .is_some()
        );
        let h = basic("reporter", "right");
        let logins = (0..50u64)
            .filter(|i| {
                let mut f = facts("/api/reports", &h, b"", 200, b"{}");
                f.ts_ns = 1_793_491_200_000_000_000 + i * 60_000_000_000;
                e.enrich(f).login.is_some_and(|l| l.success)
            })
            .count();
        assert_eq!(logins, 1);
    }

    /// The alerts the engine raises on `reqs` ([`kinds_of`]'s requests), after a fresh
    /// enricher, one second apart.
    fn alerts_of(reqs: &[Req<'_>]) -> Vec<crate::models::Alert> {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let mut m = crate::models::Engine::new(&Default::default()).unwrap();
        let mut alerts = Vec::new();
        for (i, (path, h, body, ip, status)) in reqs.iter().enumerate() {
            let mut f = facts(path, h, body.as_bytes(), *status, b"{}");
            f.ts_ns = 1_793_491_200_000_000_000 + i as u64 * 1_000_000_000;
            f.src.0 = ip.parse().unwrap();
            alerts.extend(m.observe(&e.enrich(f)));
        }
        alerts
    }

    #[test]
    fn a_basic_password_its_owner_used_that_day_is_still_guessed_from_elsewhere() {
        // Midnight, and an hour.
        let day = 1_793_491_200_000_000_000u64;
        let hour = 3_600_000_000_000u64;
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let mut m = crate::models::Engine::new(&Default::default()).unwrap();
        let mut send = |ts: u64, ip: &str, user: &str, pw: &str, status: u16| {
            let h = basic(user, pw);
            let mut f = facts("/api/reports", &h, b"", status, b"{}");
            f.ts_ns = ts;
            f.src.0 = ip.parse().unwrap();
            let o = e.enrich(f);
            (o.login.as_ref().map(|l| l.success), m.observe(&o))
        };
        // A clerk mistypes at 07:00; the owner's job logs in at 08:00 from its host.
        assert_eq!(
            send(day + 7 * hour, "192.0.2.11", "clerk", "typo", 401).0,
            Some(false)
        );
        let owner = send(day + 8 * hour, "192.0.2.10", "admin", "S3cret!", 200);
        assert_eq!(owner.0, Some(true));
        // At 10:00, twenty wrong guesses from elsewhere, then the right password: a login of
        // its own, a password likely guessed.
        for i in 0..20 {
            let ts = day + 10 * hour + i * 1_000_000_000;
            let pw = format!("pw{i}");
            assert_eq!(send(ts, "203.0.113.70", "admin", &pw, 401).0, Some(false));
        }
        let (login, alerts) = send(
            day + 10 * hour + 20_000_000_000,
            "203.0.113.70",
            "admin",
            "S3cret!",
            200,
        );
        assert_eq!(login, Some(true));
        assert!(
            alerts
                .iter()
                .any(|a| a.kind == crate::models::AlertKind::BruteForce
                    && a.severity == crate::models::Severity::Critical
                    && a.explanation.contains("guessed")),
            "{alerts:?}"
        );
        // The owner's job again from its host: its login of the day was counted.
        let again = send(day + 11 * hour, "192.0.2.10", "admin", "S3cret!", 200);
        assert_eq!(again.0, None);
    }

    /// After a second review: a bare 401 (an endpoint refusing a missing API key) makes no
    /// endpoint protected, so a client cannot mark one to earn logins there; a challenge among
    /// others (`Negotiate,Basic realm=...`) is read.
    #[test]
    fn only_a_basic_challenge_marks_an_endpoint_and_a_decoy_credential_hides_no_login() {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let bare = Head::response(401, &[]);
        let h = basic("fay", "guess");
        let mut f = facts("/api/items", &h, b"", 401, b"{}");
        f.resp_head = Some(&bare);
        assert_eq!(e.enrich(f).login.map(|l| l.success), Some(false));
        let f = facts("/api/items", &h, b"", 200, b"{}");
        assert_eq!(e.enrich(f).login.map(|l| l.success), None);
        // Challenged: a 2xx is a login, beside an API key too (after a fourth review: a decoy
        // cookie or key sent with every guess hid the guessed password); the same user and
        // password again the same day from the same client is none.
        let gus = basic("gus", "guess");
        let f = facts("/api/reports", &gus, b"", 401, b"{}");
        assert_eq!(e.enrich(f).login.map(|l| l.success), Some(false));
        let mut keyed = basic("hal", "pw");
        keyed.push(("X-API-Key".into(), "k-7f3a9c2e5b8d41aa".into()));
        let f = facts("/api/reports", &keyed, b"", 200, b"{}");
        assert_eq!(e.enrich(f).login.map(|l| l.success), Some(true));
        let hal = basic("hal", "pw");
        let f = facts("/api/reports", &hal, b"", 200, b"{}");
        assert_eq!(e.enrich(f).login.map(|l| l.success), None);
        // A challenge among others, without a blank after the comma (RFC 7235 allows it).
        let both = Head::response(401, &[("WWW-Authenticate", "Negotiate,Basic realm=\"x\"")]);
        let ivy = basic("ivy", "guess");
        let mut f = facts("/api/neg", &ivy, b"", 401, b"{}");
        f.resp_head = Some(&both);
        assert_eq!(e.enrich(f).login.map(|l| l.success), Some(false));
        let ivy2 = basic("ivy", "right");
        let f = facts("/api/neg", &ivy2, b"", 200, b"{}");
        assert_eq!(e.enrich(f).login.map(|l| l.success), Some(true));
    }

    #[test]
    fn basic_credentials_taken_where_none_are_checked_are_no_login() {
        // A stuffer sends each pair where credentials are checked (401) and to a status
        // endpoint that ignores them (200): still stuffing, with no account logged in.
        let mut stuffing: Vec<Req<'_>> = Vec::new();
        for u in 0..40 {
            let user = format!("user{u}@corp.example");
            for (path, status) in [("/api/reports", 401), ("/api/status", 200)] {
                let h = basic(&user, "Summer2024!");
                stuffing.push((path, h, String::new(), "203.0.113.80", status));
            }
        }
        let kinds = kinds_of(&stuffing);
        assert!(
            kinds.contains(&crate::models::AlertKind::CredentialStuffing),
            "{kinds:?}"
        );
        // A guesser doing the same to one account: a brute force, and no password guessed.
        let mut guesses: Vec<Req<'_>> = Vec::new();
        for i in 0..20 {
            for (path, status) in [("/api/reports", 401), ("/api/status", 200)] {
                let h = basic("admin", &format!("pw{i}"));
                guesses.push((path, h, String::new(), "203.0.113.70", status));
            }
        }
        let alerts = alerts_of(&guesses);
        assert!(
            alerts
                .iter()
                .any(|a| a.kind == crate::models::AlertKind::BruteForce),
            "{alerts:?}"
        );
        assert!(
            !alerts.iter().any(|a| a.explanation.contains("guessed")),
            "{alerts:?}"
        );
        // What makes an endpoint one that checks: a 401 asking for Basic credentials at the
        // same server address and port, method and path, identifiers by their shape.
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        // Each check with a user of its own (the same credentials taken again the same day
        // from the same client are no login).
        let mut send = |method: &str, host: &str, path: &str, user: &str, status: u16| {
            let mut h = basic(user, "hunter22");
            h.push(("Host".into(), host.into()));
            let mut f = facts(path, &h, b"", status, b"{}");
            f.method = method;
            e.enrich(f).login.map(|l| l.success)
        };
        let api = "api.corp.example";
        // Never refused: no login; nor where only another method was refused.
        assert_eq!(send("GET", api, "/api/items", "ann", 200), None);
        assert_eq!(send("POST", api, "/api/items", "bob", 401), Some(false));
        assert_eq!(send("GET", api, "/api/items", "ann", 200), None);
        assert_eq!(send("POST", api, "/api/items", "ann", 200), Some(true));
        // The server's address, not the `Host` a client names (after a second review: a
        // made-up `Host` hid the guessed password's success), and the path in any spelling.
        assert_eq!(send("GET", api, "/admin", "cid", 401), Some(false));
        assert_eq!(send("GET", "zz-unseen", "/admin", "dan", 200), Some(true));
        let spelt = send("GET", "API.corp.example:8080", "/Admin/", "eli", 200);
        assert_eq!(spelt, Some(true));
        // Another report than the one refused: one endpoint.
        assert_eq!(send("GET", api, "/api/reports/7", "eve", 401), Some(false));
        assert_eq!(send("GET", api, "/api/reports/8", "fay", 200), Some(true));
        // Sixty made-up names under /api/ refused (the learned template is now /api/{param})
        // do not make /api/status one that checks.
        for i in 0..60 {
            send("GET", api, &format!("/api/nothing-{i}"), "gus", 401);
        }
        assert_eq!(send("GET", api, "/api/status", "hal", 200), None);
        // Nor can made-up paths refused by the thousand push out an endpoint that has taken
        // credentials: its next login is still one.
        for i in 0..20_000 {
            send("GET", api, &format!("/made-up-{i}"), "gus", 401);
        }
        assert_eq!(send("GET", api, "/api/reports/9", "ivy", 200), Some(true));
    }

    /// The slots [`BasicSeen`] holds, by table and place.
    fn basic_words(e: &Enricher) -> Vec<(usize, usize, u64)> {
        let s = &e.basic_seen;
        let protected: Vec<u64> = s.protected.iter().map(|&w| u64::from(w)).collect();
        [&s.refused[..], &s.taken[..], &protected[..]]
            .iter()
            .enumerate()
            .flat_map(|(t, words)| {
                words
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| **w != 0)
                    .map(move |(i, w)| (t, i, *w))
            })
            .collect()
    }

    #[test]
    fn basic_tables_hold_no_password_a_memory_dump_gives_back() {
        let feed = |e: &mut Enricher| {
            for status in [401, 200] {
                let h = basic("admin", "S3cret!");
                e.enrich(facts("/api/reports", &h, b"", status, b"{}"));
            }
        };
        let mut a = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let mut b = Enricher::new(None, &EnrichSettings::default()).unwrap();
        feed(&mut a);
        feed(&mut b);
        let (wa, wb) = (basic_words(&a), basic_words(&b));
        assert!(!wa.is_empty());
        // Keyed at random: the same credentials leave other words in another process (here,
        // another enricher), so that none can be inverted or looked up in a table made offline.
        assert!(wa.iter().all(|w| !wb.contains(w)), "{wa:?} {wb:?}");
        let unkeyed = [
            key_of(&("admin", "S3cret!")),
            key_of(&("admin", "S3cret!", false)),
            key_of(&("admin", "S3cret!", true)),
        ];
        assert!(wa.iter().all(|(_, _, w)| !unkeyed.contains(w)));
    }

    #[test]
    fn basic_repeats_write_nothing_and_logins_push_out_no_refusal() {
        let day = 1_793_491_200_000_000_000u64;
        let hour = 3_600_000_000_000u64;
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let send = |e: &mut Enricher, ts: u64, user: &str, pw: &str, status: u16| {
            let h = basic(user, pw);
            let mut f = facts("/api/reports", &h, b"", status, b"{}");
            f.ts_ns = ts;
            e.enrich(f).login.map(|l| l.success)
        };
        assert_eq!(send(&mut e, day, "reporter", "typo", 401), Some(false));
        assert_eq!(send(&mut e, day + 1, "reporter", "right", 200), Some(true));
        // A repeat, refused or taken, is read and nothing written.
        let before = basic_words(&e);
        assert_eq!(send(&mut e, day + hour, "reporter", "typo", 401), None);
        assert_eq!(send(&mut e, day + hour, "reporter", "right", 200), None);
        assert_eq!(basic_words(&e), before);
        // The day runs from the first login: a client sending its password every hour for two
        // days logs in again on the second, not once for as long as it keeps sending it.
        let logins = (1..48u64)
            .filter(|i| send(&mut e, day + i * hour + 2, "reporter", "right", 200) == Some(true))
            .count();
        assert_eq!(logins, 1);
        // The same credentials spelled otherwise (padding dropped, a character lenient
        // servers skip, the URL-safe alphabet) are the same credentials.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode("auditor:ab??>~~~");
        assert_eq!(b64, "YXVkaXRvcjphYj8/Pn5+fg==");
        let spellings = [
            b64.clone(),
            b64.trim_end_matches('=').to_string(),
            format!("{}.{}", &b64[..4], &b64[4..]),
            b64.replace('+', "-").replace('/', "_"),
        ];
        let logins: Vec<_> = spellings
            .iter()
            .map(|v| {
                let h = vec![("Authorization".to_string(), format!("Basic {v}"))];
                let mut f = facts("/api/reports", &h, b"", 200, b"{}");
                f.ts_ns = day + 30 * hour;
                e.enrich(f).login.map(|l| l.success)
            })
            .collect();
        assert_eq!(logins, [Some(true), None, None, None]);
        // A cron job refused hourly with a stale password, among thousands of Basic users
        // logging in each hour: still one password a day (logins do not push it out).
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let mut tried = 0;
        for hr in 0..24u64 {
            if send(&mut e, day + hr * hour, "backup", "old-password", 401).is_some() {
                tried += 1;
            }
            for u in 0..3000u64 {
                let user = format!("user{}", hr * 3000 + u);
                send(&mut e, day + hr * hour + 1 + u, &user, "pw-of-theirs", 200);
            }
        }
        assert_eq!(tried, 1);
    }

    #[test]
    fn basic_credentials_that_guess_nothing_are_no_login() {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        // An OAuth client authenticating to the token endpoint for a user's refresh: the
        // client is no account, and the token issued is the user's, not the client's.
        let mut h = basic("mobile-app", "client-secret");
        h.push((
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        ));
        let f = facts(
            "/oauth/token",
            &h,
            b"grant_type=refresh_token&refresh_token=r1",
            200,
            br#"{"access_token":"opaque-1","token_type":"Bearer"}"#,
        );
        assert!(e.enrich(f).login.is_none());
        // An API key as the user name; a 403 for a resource the user may not read.
        for (user, pw, status) in [
            ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "", 401),
            ("layla", "pw", 403),
        ] {
            let h = basic(user, pw);
            let f = facts("/accounts/7", &h, b"", status, b"{}");
            assert!(e.enrich(f).login.is_none(), "{user}");
        }
    }

    #[test]
    fn stuffing_naming_its_accounts_in_another_field_style_is_still_stuffing() {
        // Distributed over 100 addresses, two guesses each: only the accounts tried tell, and
        // they must be read whatever the body calls the field and however deep it puts it.
        let ips: Vec<String> = (0..100).map(|i| format!("198.51.100.{}", i + 10)).collect();
        for field in [
            r#"{"user_name":"U","password":"x"}"#,
            r#"{"identifier":"U","password":"x"}"#,
            r#"{"data":{"attributes":{"E-Mail":"U","password":"x"}}}"#,
        ] {
            let logins: Vec<Req<'_>> = (0..200)
                .map(|i| {
                    let body = field.replace('U', &format!("victim{i}"));
                    ("/login", vec![], body, ips[i / 2].as_str(), 401)
                })
                .collect();
            let kinds = kinds_of(&logins);
            assert!(
                kinds.contains(&crate::models::AlertKind::CredentialStuffing),
                "{field}: {kinds:?}"
            );
        }
    }

    /// GraphQL requests through the enricher and the engine, a second apart from one address
    /// with a browser: (request body, response body) each; the alert kinds raised.
    fn graphql_kinds(
        e: &mut Enricher,
        exchanges: &[(String, String)],
    ) -> Vec<crate::models::AlertKind> {
        let mut m = crate::models::Engine::new(&Default::default()).unwrap();
        let h = vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            (
                "User-Agent".to_string(),
                "Mozilla/5.0 Chrome/130.0".to_string(),
            ),
        ];
        let mut kinds = Vec::new();
        for (i, (req, resp)) in exchanges.iter().enumerate() {
            let mut f = facts("/graphql", &h, req.as_bytes(), 200, resp.as_bytes());
            f.ts_ns = 1_793_491_200_000_000_000 + i as u64 * 1_000_000_000;
            kinds.extend(m.observe(&e.enrich(f)).into_iter().map(|a| a.kind));
        }
        kinds
    }

    /// `n` aliased login calls in one mutation, on `user(i)`, and the answer failing them all.
    fn aliased(n: usize, user: impl Fn(usize) -> String) -> (String, String) {
        let calls: String = (0..n)
            .map(|i| {
                format!(
                    "a{i}: login(username: \"{}\", password: \"p{i}\") {{ token }} ",
                    user(i)
                )
            })
            .collect();
        let data: Vec<String> = (0..n).map(|i| format!("\"a{i}\":null")).collect();
        let errors: Vec<String> = (0..n)
            .map(|i| format!("{{\"message\":\"Invalid credentials\",\"path\":[\"a{i}\"]}}"))
            .collect();
        (
            serde_json::json!({ "query": format!("mutation {{ {calls}}}") }).to_string(),
            format!(
                "{{\"data\":{{{}}},\"errors\":[{}]}}",
                data.join(","),
                errors.join(",")
            ),
        )
    }

    #[test]
    fn graphql_aliases_and_batches_are_an_attempt_each() {
        use crate::models::AlertKind;
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        // Twenty passwords for one account in one request, through aliases.
        let one = aliased(20, |_| "layla".into());
        let kinds = graphql_kinds(&mut e, std::slice::from_ref(&one));
        assert!(kinds.contains(&AlertKind::BruteForce), "{kinds:?}");
        let h = vec![("Content-Type".to_string(), "application/json".to_string())];
        let o = e.enrich(facts(
            "/graphql",
            &h,
            one.0.as_bytes(),
            200,
            one.1.as_bytes(),
        ));
        let login = o.login.clone().expect("a login");
        assert_eq!((login.username.as_str(), login.success), ("layla", false));
        assert_eq!(o.more_logins.len(), 19);
        assert!(
            o.more_logins
                .iter()
                .all(|l| l.username == "layla" && !l.success)
        );
        assert_eq!(o.principal.kind, PrincipalKind::User);
        // Thirty accounts in one request, as a batch of operations with variables.
        let ops: Vec<serde_json::Value> = (0..30)
            .map(|i| {
                serde_json::json!({
                    "query": "mutation L($u: String!, $p: String!) { signIn(email: $u, password: $p) { token } }",
                    "variables": { "u": format!("victim{i}@mail.test"), "p": "Summer2024!" }
                })
            })
            .collect();
        let answers: Vec<serde_json::Value> = (0..30)
            .map(|_| serde_json::json!({"data": {"signIn": null}, "errors": [{"message": "Unauthorized", "path": ["signIn"]}]}))
            .collect();
        let batch = (
            serde_json::Value::from(ops).to_string(),
            serde_json::Value::from(answers).to_string(),
        );
        let kinds = graphql_kinds(&mut e, &[batch]);
        assert!(kinds.contains(&AlertKind::CredentialStuffing), "{kinds:?}");
    }

    #[test]
    fn a_graphql_mutation_in_the_url_of_a_post_is_read() {
        // express-graphql runs the URL's query first: a harmless body beside it.
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let h = vec![("Content-Type".to_string(), "application/json".to_string())];
        let q = "query=mutation%7Ba1%3Alogin(username%3A%22victim%22%2Cpassword%3A%22p1%22)%7Btoken%7Da2%3Alogin(username%3A%22victim%22%2Cpassword%3A%22p2%22)%7Btoken%7D%7D";
        let mut f = facts(
            "/graphql",
            &h,
            br#"{"query":"{ me { id } }"}"#,
            200,
            br#"{"data":{"a1":null,"a2":null}}"#,
        );
        f.query = q;
        let o = e.enrich(f);
        let attempts: Vec<(String, bool)> = o
            .login
            .iter()
            .chain(&o.more_logins)
            .map(|l| (l.username.clone(), l.success))
            .collect();
        assert_eq!(
            attempts,
            [("victim".to_string(), false), ("victim".to_string(), false)]
        );
    }

    #[test]
    fn graphql_guesses_whose_answer_cannot_be_read_are_failures() {
        // Twenty guesses in one request, answered with a document cut at the body cap (or an
        // array the outcome reader cannot place): every unreadable call is a failure.
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let (req, _) = aliased(20, |_| "victim".into());
        let h = vec![("Content-Type".to_string(), "application/json".to_string())];
        let cut = br#"{"data":{"a0":null,"a1":null,"a2"#;
        let o = e.enrich(facts("/graphql", &h, req.as_bytes(), 200, cut));
        let attempts: Vec<bool> = o
            .login
            .iter()
            .chain(&o.more_logins)
            .map(|l| l.success)
            .collect();
        assert_eq!(attempts.len(), 20);
        assert!(attempts.iter().all(|s| !s), "{attempts:?}");
    }

    #[test]
    fn graphql_users_logging_in_are_not_attacks() {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        // A user mistyping once, then logging in, with a query in the same request; and many
        // users logging in once each through one office address.
        let mistyped = aliased(1, |_| "omar".into());
        let ok = |u: &str| {
            (
                serde_json::json!({"query": format!("mutation {{ login(username: \"{u}\", password: \"right\") {{ token user {{ id }} }} }}")}).to_string(),
                r#"{"data":{"login":{"token":"t","user":{"id":1}}}}"#.to_string(),
            )
        };
        let mut exchanges = vec![mistyped, ok("omar")];
        exchanges.extend((0..40).map(|i| ok(&format!("staff{i}"))));
        let kinds = graphql_kinds(&mut e, &exchanges);
        assert!(kinds.is_empty(), "{kinds:?}");
        // Other GraphQL requests are not logins.
        let h = vec![("Content-Type".to_string(), "application/json".to_string())];
        let q = br#"{"query":"mutation { transfer(amount: 5, to: \"login\") { id } }"}"#;
        assert!(
            e.enrich(facts("/graphql", &h, q, 200, b"{}"))
                .login
                .is_none()
        );
    }

    #[test]
    fn a_200_that_says_the_login_failed_in_its_own_words_is_a_failure() {
        // APIs answer a failed login with 200 and an error document in many shapes: spaced
        // JSON (Python's json.dumps), other flags, JSend, GraphQL errors.
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let h = vec![("Content-Type".to_string(), "application/json".to_string())];
        let body = br#"{"username":"layla","password":"x"}"#;
        let outcome = |e: &mut Enricher, resp: &[u8]| {
            e.enrich(facts("/login", &h, body, 200, resp))
                .login
                .map(|l| l.success)
        };
        for failed in [
            &br#"{"success": false, "message": "Wrong password"}"#[..],
            br#"{ "success" : false }"#,
            br#"{"ok":false,"reason":"bad password"}"#,
            br#"{"authenticated": false}"#,
            br#"{"status": "fail", "data": {"password": "incorrect"}}"#,
            br#"{"status":"error","message":"Bad credentials"}"#,
            br#"{"error": "Bad credentials"}"#,
            br#"{"data":{"login":null},"errors":[{"message":"Unauthorized"}]}"#,
            br#"{"result":{"success":false}}"#,
            br#"{"error":"Bad credentials","csrfToken":"c1"}"#,
            br#"{"error":1}"#,
        ] {
            assert_eq!(
                outcome(&mut e, failed),
                Some(false),
                "{}",
                String::from_utf8_lossy(failed)
            );
        }
        for ok in [
            &br#"{"token":"t"}"#[..],
            br#"{"success": true, "token": "t"}"#,
            br#"{"access_token":"x","error":null}"#,
            br#"{"status":"ok","user":{"id":1}}"#,
            br#"{"user":{"id":1},"errors":[]}"#,
            br#"{"data":{"login":{"token":"t"}}}"#,
            br#"{"token":"t","mfa":{"valid":false}}"#,
            b"welcome",
            // After a review: an error code of 0, a second factor asked for, a banner about
            // an earlier attempt beside a cookie session or a token.
            br#"{"error":0,"msg":"ok","user":{"id":1}}"#,
            br#"{"authenticated":false,"mfa_required":true,"mfa_token":"m1"}"#,
            br#"{"challengeName":"SOFTWARE_TOKEN_MFA","session":"s1"}"#,
            br#"{"user":{"id":1},"lastLogin":{"success":false,"at":"2026-11-29"}}"#,
            br#"{"token":"t","lastLogin":{"success":false}}"#,
        ] {
            assert_eq!(
                outcome(&mut e, ok),
                Some(true),
                "{}",
                String::from_utf8_lossy(ok)
            );
        }
    }

    #[test]
    fn bearer_tokens_are_hashed_but_kept_for_revocation() {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let h = vec![(
            "Authorization".to_string(),
            "Bearer tok-layla-1".to_string(),
        )];
        let o = e.enrich(facts("/balance", &h, b"", 200, b"{}"));
        assert_eq!(
            o.credential.as_deref(),
            Some(short_hash("tok-layla-1").as_str())
        );
        assert_eq!(o.bearer.as_deref(), Some("tok-layla-1"));
        let json = serde_json::to_string(&o).unwrap();
        assert!(
            !json.contains("tok-layla-1"),
            "the raw token must never be serialised"
        );
    }

    #[test]
    fn cached_tokens_decode_as_fresh_ones() {
        use base64::Engine as _;
        let b64 = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        // More tokens than slots, twice over: JWTs of many subjects and opaque tokens.
        for round in 0..2 {
            for i in 0..(CACHE_SLOTS + 500) {
                let tok = if i % 3 == 0 {
                    format!("opaque-{i}")
                } else {
                    format!(
                        "{}.{}.sig",
                        b64(r#"{"alg":"HS256"}"#.into()),
                        b64(format!(r#"{{"sub":"u{i}","exp":{}}}"#, 1_900_000_000 + i))
                    )
                };
                let h = vec![("Authorization".to_string(), format!("Bearer {tok}"))];
                let o = e.enrich(facts("/balance", &h, b"", 200, b"{}"));
                assert_eq!(o.jwt, parse_jwt(&tok), "{tok} round {round}");
                assert_eq!(o.credential.as_deref(), Some(short_hash(&tok).as_str()));
                let want = match &o.jwt {
                    Some(j) => (PrincipalKind::Jwt, j.sub.as_deref().unwrap().to_string()),
                    None => (PrincipalKind::Token, short_hash(&tok)),
                };
                assert_eq!((o.principal.kind, o.principal.id), want);
            }
        }
    }

    #[test]
    fn long_tokens_are_not_cached() {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        for i in 0..8 {
            let tok = format!("{i}{}", "x".repeat(60_000));
            let h = vec![("Authorization".to_string(), format!("Bearer {tok}"))];
            let o = e.enrich(facts("/balance", &h, b"", 200, b"{}"));
            assert_eq!(o.credential.as_deref(), Some(short_hash(&tok).as_str()));
        }
        let held: usize = e.tokens.slots.iter().flatten().map(|(k, _)| k.len()).sum();
        assert_eq!(held, 0, "bytes of tokens held by the cache");
    }

    #[test]
    fn api_keys_and_session_cookies_are_named_by_their_hash_through_the_cache() {
        use base64::Engine as _;
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        for round in 0..2 {
            for i in 0..(CACHE_SLOTS + 500) {
                let (h, kind, secret) = if i % 2 == 0 {
                    let k = format!("key-{i}");
                    (("X-Api-Key", k.clone()), PrincipalKind::ApiKey, k)
                } else {
                    let v = format!("s{i}");
                    (
                        ("Cookie", format!("theme=dark; SID={v}")),
                        PrincipalKind::Session,
                        v,
                    )
                };
                let h = vec![(h.0.to_string(), h.1)];
                let o = e.enrich(facts("/balance", &h, b"", 200, b"{}"));
                assert_eq!(o.principal.kind, kind, "round {round}");
                assert_eq!(o.principal.id, short_hash(&secret), "round {round}");
                assert_eq!(o.credential.as_deref(), Some(short_hash(&secret).as_str()));
            }
        }
        // A JWT seen first as an API key, then as a bearer token: the cache decoded it.
        let jwt = format!(
            "{}.{}.sig",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"sub":"nadia"}"#)
        );
        let key = vec![("X-Api-Key".to_string(), jwt.clone())];
        assert_eq!(
            e.enrich(facts("/balance", &key, b"", 200, b"{}"))
                .principal
                .kind,
            PrincipalKind::ApiKey
        );
        let bearer = vec![("Authorization".to_string(), format!("Bearer {jwt}"))];
        let o = e.enrich(facts("/balance", &bearer, b"", 200, b"{}"));
        assert_eq!(
            (o.principal.kind, o.principal.id.as_str()),
            (PrincipalKind::Jwt, "nadia")
        );
    }

    #[test]
    fn a_key_in_the_query_is_hashed_once_through_the_cache_and_is_the_credential() {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let key = "b1946ac92492d2347c6235b4d2611184";
        let enrich = |e: &mut Enricher, query: &str, headers: &[(String, String)]| {
            let mut f = facts("/weather", headers, b"", 200, b"{}");
            f.query = query;
            let o = e.enrich(f);
            assert_eq!(
                (o.principal.kind, o.principal.id.as_str()),
                (PrincipalKind::ApiKey, short_hash(key).as_str()),
                "{query}"
            );
            o.credential.expect("the key is the credential")
        };
        let first = enrich(&mut e, &format!("q=London&appid={key}"), &[]);
        // The same key again, escaped, or in the header: the cached hash, not a new one.
        let again = enrich(&mut e, &format!("appid={key}&units=metric"), &[]);
        let escaped = enrich(&mut e, &format!("app%5Fid=%62{}", &key[1..]), &[]);
        let header = vec![("X-Api-Key".to_string(), key.to_string())];
        let by_header = enrich(&mut e, "", &header);
        for other in [&again, &escaped, &by_header] {
            assert!(Arc::ptr_eq(&first, other), "{first} {other}");
        }
        // The configured names are the enricher's.
        let mut e = Enricher::new(None, &EnrichSettings::default())
            .unwrap()
            .with_api_key_params(&["subscription-key".into()]);
        enrich(&mut e, &format!("subscriptionKey={key}"), &[]);
        assert_eq!(e.api_key_params(), ["subscription-key"]);
    }

    #[test]
    fn jwts_outside_authorization_are_judged_and_never_shown() {
        use crate::models::{AlertKind, Engine, ModelsConfig};
        use base64::Engine as _;
        let e64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        // One token per place (an alert is not repeated for the same credential).
        let forged = |i: u8| {
            format!(
                "{}.{}.",
                e64(r#"{"alg":"none"}"#),
                e64(&format!(r#"{{"sub":"u{i}"}}"#))
            )
        };
        let expired = |i: u8| {
            format!(
                "{}.{}.c2ln",
                e64(r#"{"alg":"HS256"}"#),
                e64(&format!(r#"{{"sub":"u{i}","exp":1000}}"#))
            )
        };
        let (f0, f1, x2, x3, x4) = (forged(0), forged(1), expired(2), expired(3), expired(4));
        let mut engine = Engine::new(&ModelsConfig::default()).unwrap();
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let ts = 2_000_000_000 * 1_000_000_000;
        for (i, (tok, name, value, query)) in [
            (&f0, "Cookie", format!("lang=en; auth={f0}"), String::new()),
            (&f1, "X-Access-Token", f1.clone(), String::new()),
            (&x2, "Accept", "*/*".into(), format!("access_token={x2}")),
            (&x3, "X-Auth-Token", format!("Bearer {x3}"), String::new()),
            (&x4, "Cookie", format!("session={x4}"), String::new()),
        ]
        .into_iter()
        .enumerate()
        {
            // A cookie the server may not read (`auth` is no session cookie) gives its claims
            // to be judged, but no subject, and its token is not one to revoke.
            let read = !value.contains("auth=");
            let h = vec![(name.to_string(), value)];
            let mut f = facts("/balance", &h, b"", 200, b"{}");
            f.query = &query;
            f.ts_ns = ts + i as u64;
            f.src.0 = IpAddr::from([198, 51, 100, i as u8]);
            let o = e.enrich(f);
            let mut claims = parse_jwt(tok);
            if !read && let Some(c) = claims.as_mut() {
                c.sub = None;
            }
            assert_eq!(o.jwt, claims, "{name} {query}");
            assert_eq!(o.credential.as_deref(), Some(short_hash(tok).as_str()));
            // Kept (in memory only) for a revocation to name, as a bearer token is.
            let kept = read.then_some(tok.as_str());
            assert_eq!(o.bearer.as_deref(), kept, "{name} {query}");
            let alerts = engine.observe(&o);
            assert!(
                alerts.iter().any(|a| a.kind == AlertKind::JwtWeakness),
                "{name} {query}: {alerts:?}"
            );
            let shown = serde_json::to_string(&alerts).unwrap();
            let shown = shown + &serde_json::to_string(&o.principal).unwrap();
            assert!(!shown.contains(tok.as_str()), "{shown}");
        }
        // An expired JWT in a cookie the server need not read (a browser's stale access token
        // beside the refresh token a server renews it with) answered 2xx is no finding.
        let stale = expired(5);
        let h = vec![("Cookie".to_string(), format!("access={stale}; refresh=r-1"))];
        let mut f = facts("/balance", &h, b"", 200, b"{}");
        f.ts_ns = ts + 10;
        let o = e.enrich(f);
        // Nor does its subject name the principal (the client's address does).
        assert_eq!(o.principal.kind, PrincipalKind::Ip);
        let alerts = engine.observe(&o);
        assert!(
            !alerts.iter().any(|a| a.kind == AlertKind::JwtWeakness),
            "{alerts:?}"
        );
    }

    /// 2026-11-01T00:00:00Z, for answers whose cookies expire.
    const NOV_2026: u64 = 1_793_491_200_000_000_000;

    /// The models' view of the account `user` after `o` and the requests before it: its
    /// profile's request count (0 when it has none).
    fn account_requests(m: &crate::models::Engine, user: &str) -> u64 {
        m.explain(&format!("user:{user}"))
            .and_then(|x| x["requests"].as_u64())
            .unwrap_or(0)
    }

    /// After a review: what a login answer sets is linked only when the login proved its
    /// holder, and a form login's outcome is read from where it redirects to and from whether
    /// it asks for the password again.
    #[test]
    fn only_a_login_that_proved_its_holder_links_and_form_answers_are_read_as_browsers_see_them() {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let json = vec![("Content-Type".to_string(), "application/json".to_string())];
        let form = vec![(
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        )];
        let mut login = |h: &[(String, String)], body: &[u8], status, resp: &[u8], head: &Head| {
            let mut f = facts("/login", h, body, status, resp);
            f.ts_ns = NOV_2026;
            f.resp_head = Some(head);
            e.enrich(f).login.map(|l| (l.success, l.issued.len()))
        };
        let sets = |status, extra: &[(&str, &str)]| {
            let mut fields = vec![("Set-Cookie", "session=s-9d2e7f41; Path=/; HttpOnly")];
            fields.extend_from_slice(extra);
            Head::response(status, &fields)
        };
        // Identifier first: the account named, a flow's session set, nothing proved.
        let first = login(
            &json,
            br#"{"email":"ceo@corp.test"}"#,
            200,
            br#"{"next":"password"}"#,
            &sets(200, &[]),
        );
        assert_eq!(first, Some((true, 0)));
        let unknown = login(
            &json,
            br#"{"email":"nobody@corp.test"}"#,
            404,
            b"{}",
            &Head::response(404, &[]),
        );
        assert_eq!(unknown, Some((false, 0)));
        let second = login(
            &json,
            br#"{"email":"ceo@corp.test","password":"right"}"#,
            200,
            b"{}",
            &sets(200, &[]),
        );
        assert_eq!(second, Some((true, 1)));
        // Post/Redirect/Get: on to the dashboard is a success, back to the form a failure.
        let body = b"username=layla&password=right";
        let on = sets(302, &[("Location", "/dashboard")]);
        assert_eq!(login(&form, body, 302, b"", &on), Some((true, 1)));
        let abs = sets(303, &[("Location", "https://bank.example/home?welcome=1")]);
        assert_eq!(login(&form, body, 303, b"", &abs), Some((true, 1)));
        for back in [
            "/login?error=1",
            "/login",
            "https://bank.example/signin/failed",
        ] {
            let h = sets(302, &[("Location", back)]);
            assert_eq!(login(&form, body, 302, b"", &h), Some((false, 0)), "{back}");
        }
        assert_eq!(
            login(&form, body, 302, b"", &sets(302, &[])),
            Some((false, 0))
        );
        // Framework session cookies by their conventions (ASP.NET Identity, Rails, Laravel).
        for cookie in [
            ".AspNetCore.Identity.Application=CfDJ8abc; path=/; httponly",
            "_bank_session=9d2e7f41; path=/",
            "laravel_session=eyJpdiI6; path=/",
        ] {
            let h = Head::response(302, &[("Location", "/"), ("Set-Cookie", cookie)]);
            assert_eq!(
                login(&form, body, 302, b"", &h),
                Some((true, 1)),
                "{cookie}"
            );
        }
        // The form again, with an error no marker names, and a fresh anonymous session.
        let page = br#"<html><p class="err">Incorrect username or password.</p><form method="post"><input name="username"><input type="password" name="password"></form></html>"#;
        assert_eq!(
            login(&form, body, 200, page, &sets(200, &[])),
            Some((false, 0))
        );
        // After the reviews: back under the login's own path (Rails 8's failed login goes
        // from `/session` to `/session/new`) or to a relative `login` is a failure, session or
        // not; a redirect elsewhere that sets no session says nothing (an app keeping its
        // session id: no attempt, rather than a failure for each of an office's logins),
        // unless it goes back to the page the client says it came from (Laravel's `back()`).
        let mut rails = facts("/session", &form, body, 302, b"");
        let h = Head::response(302, &[("Location", "/session/new")]);
        rails.resp_head = Some(&h);
        let mut e2 = Enricher::new(None, &EnrichSettings::default()).unwrap();
        assert_eq!(e2.enrich(rails).login.map(|l| l.success), Some(false));
        let h = sets(302, &[("Location", "login?e=1")]);
        assert_eq!(login(&form, body, 302, b"", &h), Some((false, 0)));
        for to in ["/", "/dashboard", "/badges"] {
            let h = Head::response(302, &[("Location", to)]);
            assert_eq!(login(&form, body, 302, b"", &h), None, "{to}");
        }
        let mut referred = form.clone();
        referred.push(("Referer".into(), "https://bank.example/dashboard".into()));
        let h = Head::response(302, &[("Location", "/dashboard")]);
        assert_eq!(login(&referred, body, 302, b"", &h), Some((false, 0)));
        // A session set wins over a Referer a guesser may send.
        let h = sets(302, &[("Location", "/dashboard")]);
        assert_eq!(login(&referred, body, 302, b"", &h), Some((true, 1)));
        // A CSRF token, a session id or a country code proves nothing.
        for step in [
            &b"authenticity_token=Zx81kq&email=ceo%40corp.test"[..],
            br#"{"email":"ceo@corp.test","sessionId":"abc","countryCode":"SA","authMethod":"pw"}"#,
        ] {
            let h = if step[0] == b'{' { &json } else { &form };
            assert_eq!(login(h, step, 200, b"{}", &sets(200, &[])), Some((true, 0)));
        }
        // A page asking for a new password, or a one-time code, comes after a right one.
        let change = br#"<form><input type="password" name="new_password"><input type="password" name="confirm"></form>"#;
        assert_eq!(
            login(&form, body, 200, change, &sets(200, &[])),
            Some((true, 1))
        );
    }

    /// After a review: an access token refreshed (OAuth's refresh grant, a SPA's /refresh) is
    /// its account's as the one it replaces was, down a chain of rotated refresh tokens; a
    /// refresh token nobody's login issued links nothing.
    #[test]
    fn refreshed_credentials_stay_the_accounts() {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let mut m = crate::models::Engine::new(&Default::default()).unwrap();
        let json = vec![("Content-Type".to_string(), "application/json".to_string())];
        let form = vec![(
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        )];
        let none = Head::response(200, &[]);
        let mut at = NOV_2026;
        let mut send = |e: &mut Enricher,
                        m: &mut crate::models::Engine,
                        path: &str,
                        h: &[(String, String)],
                        body: &[u8],
                        resp: &[u8]| {
            let mut f = facts(path, h, body, 200, resp);
            at += 60_000_000_000;
            f.ts_ns = at;
            f.resp_head = Some(&none);
            m.observe(&e.enrich(f));
        };
        send(
            &mut e,
            &mut m,
            "/login",
            &json,
            br#"{"username":"layla","password":"right"}"#,
            br#"{"access_token":"at-1-9d2e7f41c3b5","refresh_token":"rt-1-9d2e7f41c3b5"}"#,
        );
        // The form refresh grant, then a JSON refresh with the rotated refresh token.
        send(
            &mut e,
            &mut m,
            "/oauth/token",
            &form,
            b"grant_type=refresh_token&refresh_token=rt-1-9d2e7f41c3b5",
            br#"{"access_token":"at-2-9d2e7f41c3b5","refresh_token":"rt-2-9d2e7f41c3b5"}"#,
        );
        send(
            &mut e,
            &mut m,
            "/auth/refresh",
            &json,
            br#"{"refreshToken":"rt-2-9d2e7f41c3b5"}"#,
            br#"{"data":{"accessToken":"at-3-9d2e7f41c3b5"}}"#,
        );
        // Someone else's refresh token, never issued at a login seen.
        send(
            &mut e,
            &mut m,
            "/auth/refresh",
            &json,
            br#"{"refreshToken":"rt-x-0000000000000"}"#,
            br#"{"accessToken":"at-x-0000000000000"}"#,
        );
        let before = account_requests(&m, "layla");
        for tok in [
            "at-2-9d2e7f41c3b5",
            "at-3-9d2e7f41c3b5",
            "at-x-0000000000000",
        ] {
            let h = vec![("Authorization".to_string(), format!("Bearer {tok}"))];
            send(&mut e, &mut m, "/balance", &h, b"", br#"{"balance":1}"#);
        }
        assert_eq!(account_requests(&m, "layla"), before + 2);
    }

    /// After a second review: the httpOnly refresh cookie of SPAs (set at the login, rotated
    /// at each refresh) keeps the chain; a decoy cookie or padding does not hide the refresh
    /// token; a refresh presenting tokens of two accounts links nothing; an answer's token
    /// already another account's stays so.
    #[test]
    fn refresh_cookies_chain_and_ambiguous_refreshes_link_nothing() {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let mut m = crate::models::Engine::new(&Default::default()).unwrap();
        let json = |cookie: &str| {
            let mut h = vec![("Content-Type".to_string(), "application/json".to_string())];
            if !cookie.is_empty() {
                h.push(("Cookie".to_string(), cookie.to_string()));
            }
            h
        };
        let mut at = NOV_2026;
        let mut send = |m: &mut crate::models::Engine,
                        path: &str,
                        h: &[(String, String)],
                        body: &[u8],
                        resp: &[u8],
                        set: &str| {
            let head = if set.is_empty() {
                Head::response(200, &[])
            } else {
                Head::response(200, &[("Set-Cookie", set)])
            };
            let mut f = facts(path, h, body, 200, resp);
            at += 60_000_000_000;
            f.ts_ns = at;
            f.resp_head = Some(&head);
            m.observe(&e.enrich(f));
        };
        let login = br#"{"username":"layla","password":"right"}"#;
        send(
            &mut m,
            "/login",
            &json(""),
            login,
            br#"{"accessToken":"at-c1-9d2e7f41"}"#,
            "refresh_token=rc-1-9d2e7f41; HttpOnly; Path=/",
        );
        send(
            &mut m,
            "/auth/refresh",
            &json("autoRefresh=1; refresh_token=rc-1-9d2e7f41"),
            b"",
            br#"{"accessToken":"at-c2-9d2e7f41"}"#,
            "refresh_token=rc-2-9d2e7f41; HttpOnly",
        );
        let padded = format!(
            r#"{{"refresh_token":"rc-2-9d2e7f41","pad":"{}"}}"#,
            "A".repeat(70_000)
        );
        send(
            &mut m,
            "/auth/refresh",
            &json(""),
            padded.as_bytes(),
            br#"{"accessToken":"at-c3-9d2e7f41"}"#,
            "",
        );
        // Mallory's own login, then a refresh with her token and layla's beside it.
        let own = br#"{"username":"mallory","password":"hers"}"#;
        send(
            &mut m,
            "/login",
            &json(""),
            own,
            br#"{"accessToken":"at-m1-0000","refresh_token":"rm-1-0000"}"#,
            "",
        );
        send(
            &mut m,
            "/auth/refresh",
            &json("refresh_token=rc-2-9d2e7f41"),
            br#"{"refresh_token":"rm-1-0000"}"#,
            br#"{"accessToken":"at-x-0000"}"#,
            "",
        );
        // A refresh of layla's whose answer carries mallory's token.
        send(
            &mut m,
            "/auth/refresh",
            &json("refresh_token=rc-2-9d2e7f41"),
            b"",
            br#"{"accessToken":"at-m1-0000"}"#,
            "",
        );
        let layla = account_requests(&m, "layla");
        let mallory = account_requests(&m, "mallory");
        for tok in [
            "at-c2-9d2e7f41",
            "at-c3-9d2e7f41",
            "at-x-0000",
            "at-m1-0000",
        ] {
            let h = vec![("Authorization".to_string(), format!("Bearer {tok}"))];
            send(&mut m, "/balance", &h, b"", br#"{"balance":1}"#, "");
        }
        assert_eq!(account_requests(&m, "layla"), layla + 2);
        assert_eq!(account_requests(&m, "mallory"), mallory + 1);
    }

    #[test]
    fn a_session_cookie_set_by_a_login_is_the_account_of_the_requests_carrying_it() {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let mut m = crate::models::Engine::new(&Default::default()).unwrap();
        let h = vec![("Content-Type".to_string(), "application/json".to_string())];
        let body = br#"{"username":"layla","password":"x"}"#;
        // The old session deleted (PHP's way), another cookie, the new session (its name in
        // another case, quoted, with attributes), a cookie deleted by Max-Age, one expired.
        let head = Head::response(
            200,
            &[
                (
                    "Set-Cookie",
                    "SESSIONID=deleted; expires=Thu, 01-Jan-1970 00:00:01 GMT; Max-Age=0",
                ),
                ("Set-Cookie", "theme=dark; Path=/"),
                (
                    "set-cookie",
                    "SessionId=\"s-7f3a9c\"; Path=/; HttpOnly; Secure; SameSite=Lax",
                ),
                ("Set-Cookie", "sid=old-1; Max-Age=0"),
                (
                    "Set-Cookie",
                    "sid=old-2; Expires=Wed, 21 Oct 2015 07:28:00 GMT",
                ),
                ("Set-Cookie", "session=; Path=/"),
            ],
        );
        let mut f = facts("/login", &h, body, 200, br#"{"user":{"id":7}}"#);
        f.ts_ns = NOV_2026;
        f.resp_head = Some(&head);
        let o = e.enrich(f);
        m.observe(&o);
        let login = o.login.unwrap();
        assert!(login.success);
        // A browser sends the cookie back as it was set, quotes and all; another client
        // without them, the name in its own case: one session, one credential.
        let mut creds = Vec::new();
        for (i, cookie) in ["lang=en; SessionId=\"s-7f3a9c\"", "SESSIONID=s-7f3a9c"]
            .into_iter()
            .enumerate()
        {
            let h = vec![("Cookie".to_string(), cookie.to_string())];
            let mut f = facts("/balance", &h, b"", 200, b"{}");
            f.ts_ns = NOV_2026 + (i as u64 + 1) * 1_000_000_000;
            let o = e.enrich(f);
            assert_eq!(o.principal.kind, PrincipalKind::Session, "{cookie}");
            m.observe(&o);
            creds.push(o.credential.unwrap());
        }
        assert_eq!(creds[0], creds[1]);
        assert_eq!(
            login.issued,
            [Arc::clone(&creds[0])],
            "deletions issue nothing"
        );
        assert_eq!(m.stats().links, 1);
        assert_eq!(
            account_requests(&m, "layla"),
            3,
            "the login and both requests"
        );
        // The cookies deleted or emptied are no one's.
        for cookie in ["SESSIONID=deleted", "sid=old-1", "sid=old-2"] {
            let h = vec![("Cookie".to_string(), cookie.to_string())];
            let o = e.enrich(facts("/balance", &h, b"", 200, b"{}"));
            assert!(!login.issued.contains(&o.credential.unwrap()), "{cookie}");
        }
    }

    #[test]
    fn tokens_nested_under_a_wrapper_are_issued_and_failed_logins_issue_nothing() {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let mut m = crate::models::Engine::new(&Default::default()).unwrap();
        let h = vec![("Content-Type".to_string(), "application/json".to_string())];
        // (status, answer, the token it issues when the login succeeded).
        let cases = [
            (
                200,
                r#"{"data":{"access_token":"t-0","expires_in":3600}}"#,
                Some("t-0"),
            ),
            (
                200,
                r#"{"result":{"token":"t-1","user":{"id":1}}}"#,
                Some("t-1"),
            ),
            (200, r#"{"accessToken":"t-2"}"#, Some("t-2")),
            (200, r#"{"jwt":"t-3","user":{"id":3}}"#, Some("t-3")),
            (200, r#"{"session":{"sessionToken":"t-4"}}"#, Some("t-4")),
            // A token of something else than the answer, or two wrappers down: not read.
            (200, r#"{"user":{"id":5,"token":"t-5"}}"#, None),
            (200, r#"{"data":{"data":{"token":"t-6"}}}"#, None),
            // Failed logins, whatever they hold.
            (401, r#"{"token":"t-7"}"#, None),
            (403, r#"{"data":{"token":"t-8"}}"#, None),
            (200, r#"{"success":false,"data":{"token":"t-9"}}"#, None),
        ];
        for (i, (status, answer, token)) in cases.into_iter().enumerate() {
            let user = format!("u{i}");
            let body = format!(r#"{{"username":"{user}","password":"x"}}"#);
            let cookie = format!("sid=c-{i}; Path=/; HttpOnly");
            let head = Head::response(status, &[("Set-Cookie", &cookie)]);
            let mut f = facts("/login", &h, body.as_bytes(), status, answer.as_bytes());
            f.ts_ns = NOV_2026 + i as u64 * 60_000_000_000;
            f.resp_head = Some(&head);
            let o = e.enrich(f);
            let login = o.login.as_ref().unwrap();
            let ok = login.success;
            assert_eq!(ok, status == 200 && i < 9, "{answer}");
            // A success was issued at least its cookie; a failure nothing.
            assert_eq!(!login.issued.is_empty(), ok, "{answer}");
            m.observe(&o);
            let before = account_requests(&m, &user);
            // The token as a bearer token, the cookie as a browser sends it.
            let tok = format!("t-{i}");
            for (name, value) in [
                ("Authorization", format!("Bearer {tok}")),
                ("Cookie", format!("sid=c-{i}")),
            ] {
                let h = vec![(name.to_string(), value)];
                let mut f = facts("/balance", &h, b"", 200, b"{}");
                f.ts_ns = NOV_2026 + i as u64 * 60_000_000_000 + 1_000_000_000;
                m.observe(&e.enrich(f));
            }
            let linked = account_requests(&m, &user) - before;
            let want = u64::from(token.is_some()) + u64::from(ok);
            assert_eq!(linked, want, "{answer}: requests judged as {user}");
        }
    }

    #[test]
    fn an_oauth_client_is_issued_no_users_token() {
        // The client authenticating at the token endpoint for a grant that names no user: the
        // token issued is the user's (or the client's own), never to be judged as an account.
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let mut m = crate::models::Engine::new(&Default::default()).unwrap();
        let mut h = basic("mobile-app", "client-secret");
        h.push((
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        ));
        let head = Head::response(200, &[("Set-Cookie", "session=s-client; Path=/")]);
        let answer = br#"{"access_token":"opaque-1","token_type":"Bearer"}"#;
        for grant in [
            &b"grant_type=client_credentials"[..],
            b"grant_type=refresh_token&refresh_token=r1",
            b"grant_type=authorization_code&code=c1&redirect_uri=https%3A%2F%2Fapp.test%2Fcb",
        ] {
            let mut f = facts("/oauth/token", &h, grant, 200, answer);
            f.resp_head = Some(&head);
            let o = e.enrich(f);
            assert!(o.login.is_none(), "{}", String::from_utf8_lossy(grant));
            m.observe(&o);
        }
        assert_eq!(m.stats().links, 0);
        // The password grant names its user: the token is hers.
        let grant = b"grant_type=password&username=layla&password=pw";
        let mut f = facts("/oauth/token", &h, grant, 200, answer);
        f.resp_head = Some(&head);
        let login = e.enrich(f).login.unwrap();
        assert_eq!(login.username, "layla");
        assert_eq!(login.issued.len(), 2);
        assert_eq!(&*login.issued[0], short_hash("opaque-1"));
    }

    /// One GraphQL exchange (request and answer bodies, answer head) through the enricher,
    /// then the models: what each login attempt was issued, (account, hashes).
    fn graphql_login(
        e: &mut Enricher,
        m: &mut crate::models::Engine,
        req: &str,
        resp: &str,
        head: &Head,
    ) -> Vec<(String, Vec<Arc<str>>)> {
        let h = vec![("Content-Type".to_string(), "application/json".to_string())];
        let mut f = facts("/graphql", &h, req.as_bytes(), 200, resp.as_bytes());
        f.ts_ns = NOV_2026;
        f.resp_head = Some(head);
        let o = e.enrich(f);
        m.observe(&o);
        o.login
            .iter()
            .chain(&o.more_logins)
            .map(|l| (l.username.clone(), l.issued.clone()))
            .collect()
    }

    /// Automatic persisted queries (Apollo's default): the login mutation travels once with
    /// its hash, then as the hash alone with new variables each time; each such request is a
    /// login attempt on its own variables' account. A hash that does not match its query
    /// registers nothing.
    #[test]
    fn a_persisted_login_mutation_named_by_its_hash_is_a_login() {
        use sha2::{Digest, Sha256};
        let hex = |q: &str| -> String {
            Sha256::digest(q.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let q = "mutation Login($u: String!, $p: String!) { login(username: $u, password: $p) { token } }";
        let h = hex(q);
        let ext = |hash: &str| {
            format!(r#""extensions":{{"persistedQuery":{{"version":1,"sha256Hash":"{hash}"}}}}"#)
        };
        let ct = vec![("Content-Type".to_string(), "application/json".to_string())];
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let login = |e: &mut Enricher, body: String| {
            let f = facts(
                "/graphql",
                &ct,
                body.as_bytes(),
                200,
                br#"{"data":{"login":null}}"#,
            );
            e.enrich(f).login.map(|l| (l.username, l.success))
        };
        // Before it is registered, the hash alone is nothing to read.
        let only = |u: &str, hash: &str| {
            format!(
                r#"{{"operationName":"Login","variables":{{"u":"{u}","p":"x"}},{}}}"#,
                ext(hash)
            )
        };
        assert_eq!(login(&mut e, only("early", &h)), None);
        let q_json = serde_json::to_string(q).unwrap();
        let full = format!(
            r#"{{"query":{q_json},"variables":{{"u":"layla","p":"x"}},{}}}"#,
            ext(&h)
        );
        assert_eq!(login(&mut e, full), Some(("layla".into(), false)));
        for i in 0..3 {
            let u = format!("victim{i}");
            assert_eq!(login(&mut e, only(&u, &h)), Some((u, false)));
        }
        // Upper-case hex is the same hash; a batch of hash-only operations is a call each.
        let batch = format!("[{},{}]", only("a1", &h.to_uppercase()), only("a2", &h));
        let f = facts("/graphql", &ct, batch.as_bytes(), 200, b"[]");
        let o = e.enrich(f);
        assert_eq!(o.login.map(|l| l.username), Some("a1".into()));
        assert_eq!(o.more_logins.len(), 1);
        // A query registered under another query's hash is not kept.
        let q2 = q.replace("Login", "Login2");
        let forged = format!(r#"{{"query":"mutation {{ ping }}",{}}}"#, ext(&hex(&q2)));
        assert_eq!(login(&mut e, forged), None);
        assert_eq!(login(&mut e, only("x", &hex(&q2))), None);
    }

    #[test]
    fn graphql_logins_issue_each_call_its_own_token() {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let mut m = crate::models::Engine::new(&Default::default()).unwrap();
        let none = Head::response(200, &[]);
        let hashed = |t: &str| -> Arc<str> { short_hash(t).into() };
        // One login mutation.
        let o = graphql_login(
            &mut e,
            &mut m,
            r#"{"query":"mutation { login(username: \"omar\", password: \"pw\") { token user { id } } }"}"#,
            r#"{"data":{"login":{"token":"g-omar","user":{"id":1}}}}"#,
            &none,
        );
        assert_eq!(o, [("omar".into(), vec![hashed("g-omar")])]);
        // Aliased calls, one failing, one under a namespace, one returning its token as text.
        let o = graphql_login(
            &mut e,
            &mut m,
            r#"{"query":"mutation { a: login(username: \"nadia\", password: \"pw\") { accessToken } b: login(username: \"huda\", password: \"bad\") { token } auth { c: login(username: \"yusuf\", password: \"pw\") { session { token } } } d: login(username: \"rami\", password: \"pw\") }"}"#,
            r#"{"data":{"a":{"accessToken":"g-nadia"},"b":null,"auth":{"c":{"session":{"token":"g-yusuf"}}},"d":"g-rami"},"errors":[{"message":"Invalid credentials","path":["b"]}]}"#,
            &none,
        );
        assert_eq!(
            o,
            [
                ("nadia".into(), vec![hashed("g-nadia")]),
                ("huda".into(), vec![]),
                ("yusuf".into(), vec![hashed("g-yusuf")]),
                ("rami".into(), vec![hashed("g-rami")]),
            ]
        );
        // A batch.
        let o = graphql_login(
            &mut e,
            &mut m,
            r#"[{"query":"mutation { login(username: \"sara\", password: \"pw\") { token } }"},{"query":"mutation { login(username: \"ali\", password: \"pw\") { token } }"}]"#,
            r#"[{"data":{"login":{"token":"g-sara"}}},{"data":{"login":{"token":"g-ali"}}}]"#,
            &none,
        );
        assert_eq!(
            o,
            [
                ("sara".into(), vec![hashed("g-sara")]),
                ("ali".into(), vec![hashed("g-ali")]),
            ]
        );
        // Each token's requests are judged as its own call's account, the first call's and
        // the others' alike.
        for (i, user) in ["omar", "nadia", "yusuf", "rami", "sara", "ali"]
            .into_iter()
            .enumerate()
        {
            let before = account_requests(&m, user);
            let h = vec![("Authorization".to_string(), format!("Bearer g-{user}"))];
            let mut f = facts("/balance", &h, b"", 200, b"{}");
            f.ts_ns = NOV_2026 + (i as u64 + 1) * 1_000_000_000;
            m.observe(&e.enrich(f));
            assert_eq!(account_requests(&m, user), before + 1, "{user}");
        }
        assert_eq!(m.stats().links, 6);
    }

    #[test]
    fn graphql_answers_that_cannot_be_told_apart_issue_nothing() {
        let mut e = Enricher::new(None, &EnrichSettings::default()).unwrap();
        let mut m = crate::models::Engine::new(&Default::default()).unwrap();
        let none = Head::response(200, &[]);
        let cookie = Head::response(200, &[("Set-Cookie", "sid=g-s1; Path=/; HttpOnly")]);
        let sid: Arc<str> = short_hash("g-s1").into();
        // Two calls under one key: whose is the token?
        let o = graphql_login(
            &mut e,
            &mut m,
            r#"{"query":"mutation { login(username: \"a\", password: \"pw\") { token } login(username: \"b\", password: \"pw\") { token } }"}"#,
            r#"{"data":{"login":{"token":"g-ab"}}}"#,
            &none,
        );
        assert!(o.iter().all(|(_, i)| i.is_empty()), "{o:?}");
        // A batch answered with one object: the second operation's result is not there.
        let o = graphql_login(
            &mut e,
            &mut m,
            r#"[{"query":"mutation { login(username: \"c\", password: \"pw\") { token } }"},{"query":"mutation { login(username: \"d\", password: \"pw\") { token } }"}]"#,
            r#"{"data":{"login":{"token":"g-c"}}}"#,
            &none,
        );
        assert!(o.iter().all(|(_, i)| i.is_empty()), "{o:?}");
        // A session cookie set beside two successful calls is neither's; beside one success
        // and a failure, it is the success's.
        let two = r#"{"query":"mutation { a: login(username: \"e\", password: \"pw\") { ok } b: login(username: \"f\", password: \"pw\") { ok } }"}"#;
        let o = graphql_login(
            &mut e,
            &mut m,
            two,
            r#"{"data":{"a":{"ok":true},"b":{"ok":true}}}"#,
            &cookie,
        );
        assert_eq!(o, [("e".into(), vec![]), ("f".into(), vec![])]);
        let o = graphql_login(
            &mut e,
            &mut m,
            two,
            r#"{"data":{"a":null,"b":{"ok":true}},"errors":[{"message":"Invalid","path":["a"]}]}"#,
            &cookie,
        );
        assert_eq!(o, [("e".into(), vec![]), ("f".into(), vec![sid])]);
        // After a review: an element of a batch that is no operation keeps its place, so the
        // calls after it are matched to their own results (each call's token was the next's).
        let o = graphql_login(
            &mut e,
            &mut m,
            r#"[null,{"query":"mutation { login(username: \"mallory\", password: \"right\") { token } }"},{"query":"mutation { login(username: \"victim\", password: \"guess\") { token } }"}]"#,
            r#"[{"errors":[{"message":"bad"}]},{"data":{"login":{"token":"g-m"}}},{"data":{"login":null}}]"#,
            &none,
        );
        assert_eq!(
            o,
            [
                ("mallory".into(), vec![short_hash("g-m").into()]),
                ("victim".into(), vec![])
            ]
        );
    }

    #[test]
    fn bad_trusted_proxies_are_rejected() {
        let s = EnrichSettings {
            trusted_proxies: vec!["not-a-net".into()],
            ..Default::default()
        };
        let Err(e) = Enricher::new(None, &s) else {
            panic!("accepted a bad proxy")
        };
        assert!(e.contains("trusted_proxies"), "{e}");
    }
}
