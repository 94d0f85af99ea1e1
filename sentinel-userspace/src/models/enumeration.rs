//! Object-id walks and scraping.
//!
//! - `enumeration`: one principal on one endpoint template with a numeric `{id}` or a hex
//!   `{hash}` (or an id query parameter: `id`, `account_id`, `accountId`; not cursors such as
//!   `afterId` nor correlations such as `requestId`) touches at least `min_distinct_ids`
//!   distinct ids within `window_s`, and either walks them in order (a run of `min_run` steps
//!   of 1 to `max_step`) or covers their range densely (distinct / (max - min + 1) >=
//!   `min_density`; the range counted on the grid the steps keep to, their greatest common
//!   divisor, so that every tenth id walked in any order is dense too; up to 16 for ids that
//!   read as epoch seconds or milliseconds, so that minute buckets are not). A customer opening their own accounts touches a handful of unrelated
//!   ids; a walker touches many neighbours.
//! - `scraping`: one principal makes at least `scrape_min_requests` requests within
//!   `scrape_window_s`, at least `scrape_min_distinct_ratio` of them to distinct resources, with
//!   no sign of a normal client flow (a login seen for its credential, or one of the
//!   `flow_endpoints`, in this window or the one before); with such a flow the request floor is
//!   `flow_factor` times higher. Twice the floor in distinct resources is scraping whatever the
//!   ratio (repeats between the fetches do not hide a crawl).

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    AlertKind, Severity,
    bounded::{BoundedMap, Distinct, STALE_NS, key_of, key2, ms_len, ms_since, ms32, secs},
    config::Checker,
    engine::{Ctx, Detection, Detector, ModelsError, evidence, r2, span_text, subject},
};

/// `[models.enumeration]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// On or off. Default on.
    pub enabled: bool,
    /// Window of an id walk, seconds (at most a day). Default 120.
    pub window_s: f64,
    /// Distinct ids needed. Default 12.
    pub min_distinct_ids: u32,
    /// Sequential steps needed (or density). Default 8.
    pub min_run: u16,
    /// Largest id step that still counts as sequential. Default 3.
    pub max_step: u64,
    /// Share of the id range covered that counts as dense. Default 0.5.
    pub min_density: f64,
    /// Scraping window, seconds (at most a day). Default 60.
    pub scrape_window_s: f64,
    /// Requests in that window. Default 25.
    pub scrape_min_requests: u32,
    /// Share of distinct resources among them. Default 0.8.
    pub scrape_min_distinct_ratio: f64,
    /// Request floor multiplier for principals with a normal client flow. Default 4.
    pub flow_factor: f64,
    /// Endpoint templates that belong to a normal client flow, in any case (templates are in
    /// lower case). Default `/login`, `/balance`.
    pub flow_endpoints: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            window_s: 120.0,
            min_distinct_ids: 12,
            min_run: 8,
            max_step: 3,
            min_density: 0.5,
            scrape_window_s: 60.0,
            scrape_min_requests: 25,
            scrape_min_distinct_ratio: 0.8,
            flow_factor: 4.0,
            flow_endpoints: vec!["/login".into(), "/balance".into()],
        }
    }
}

impl Config {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ModelsError> {
        Checker::new("enumeration")
            .positive("window_s", self.window_s)
            .check(
                "window_s",
                self.window_s <= 86_400.0,
                "must be at most 86400 (a day)",
            )
            .check(
                "min_distinct_ids",
                self.min_distinct_ids >= 2,
                "must be at least 2",
            )
            .check("min_run", self.min_run >= 2, "must be at least 2")
            .check("max_step", self.max_step >= 1, "must be at least 1")
            .unit("min_density", self.min_density)
            .positive("scrape_window_s", self.scrape_window_s)
            .check(
                "scrape_window_s",
                self.scrape_window_s <= 86_400.0,
                "must be at most 86400 (a day)",
            )
            .check(
                "scrape_min_requests",
                self.scrape_min_requests >= 2,
                "must be at least 2",
            )
            .unit("scrape_min_distinct_ratio", self.scrape_min_distinct_ratio)
            .check("flow_factor", self.flow_factor >= 1.0, "must be at least 1")
            .finish()
    }
}

/// One principal's id walk on one endpoint (72 bytes; the ids are 4-aligned so that the map's
/// slot wastes nothing).
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
struct Walk {
    /// First request of the walk ([`ms32`]).
    start: u32,
    /// The ids seen: distinct ids are the bits set (an id on a bit already set counts once).
    ids: Distinct,
    last: u64,
    min: u64,
    max: u64,
    /// The greatest common divisor of the steps so far (0 before the first): every id of the
    /// walk lies on the grid `min + k * stride`. 1 when it would not fit.
    stride: u32,
    run: u16,
    max_run: u16,
    errors: u16,
    requests: u16,
}

const _: () = assert!(size_of::<Walk>() == 72);

impl Walk {
    fn new(now: u32, id: u64) -> Self {
        Self {
            start: now,
            ids: Distinct::default(),
            last: id,
            min: id,
            max: id,
            stride: 0,
            run: 0,
            max_run: 0,
            errors: 0,
            requests: 0,
        }
    }
}

/// One principal's requests in the scraping window (44 bytes).
#[derive(Clone, Copy)]
struct Crawl {
    /// First request of the window ([`ms32`]).
    start: u32,
    paths: Distinct,
    requests: u32,
    /// A normal client flow in this window.
    flow: bool,
    /// And in the window before (a flow vouches for the next window, not for good: one
    /// `/balance` must not lift the floor for as long as the crawl goes on).
    flow_before: bool,
}

const _: () = assert!(size_of::<Crawl>() == 44);

impl Crawl {
    fn new(now: u32, flow_before: bool) -> Self {
        Self {
            start: now,
            paths: Distinct::default(),
            requests: 0,
            flow: false,
            flow_before,
        }
    }
}

/// True when a window that started at `start` is over at `now` (or the key was idle so long
/// that its times are no longer comparable).
fn over(now: u32, start: u32, window: u32, idle_ns: u64) -> bool {
    idle_ns >= STALE_NS || ms_since(now, start).is_some_and(|a| a >= window)
}

/// The greatest common divisor (`gcd(0, b)` is `b`).
fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Seconds from `start` to `now` ([`ms32`] times).
fn secs_from(now: u32, start: u32) -> f64 {
    f64::from(ms_since(now, start).unwrap_or(0)) / 1e3
}

/// The detector.
pub struct EnumerationDetector {
    cfg: Config,
    /// Windows, milliseconds.
    window: u32,
    scrape_window: u32,
    walks: BoundedMap<Walk>,
    crawls: BoundedMap<Crawl>,
}

/// The numeric object id of a request: the path segment under the template's last `{id}` (else
/// its last `{hash}`: a hex identifier such as a MongoDB ObjectId, by its low 64 bits, where ids
/// made one after the other differ; `/accounts/{id}/files/{hash}` walks accounts), or an id
/// query parameter ([`is_id_key`]). The path is read as its template was
/// ([`crate::enrich::template::canonical`]), so that their segments line up.
pub fn object_id(path: &str, endpoint: &str, query: &str) -> Option<u64> {
    object_ids(path, endpoint, query)
        .as_slice()
        .first()
        .map(|(_, id)| *id)
}

/// Id query parameters read per request: each is walked on its own.
const MAX_ID_PARAMS: usize = 4;

/// The object ids of a request, each with what names it: the path's id ([`object_id`]) with an
/// empty name, else each id query parameter (at most [`MAX_ID_PARAMS`]) with its name, so that
/// a decoy parameter sent first (`?xId=0&accountId=N`) does not hide the walk of another.
pub fn object_ids<'q>(path: &str, endpoint: &str, query: &'q str) -> ObjectIds<'q> {
    let mut ids = ObjectIds {
        ids: [("", 0); MAX_ID_PARAMS],
        n: 0,
    };
    let last = |ph: &str| {
        endpoint
            .split('/')
            .filter(|s| !s.is_empty())
            .enumerate()
            .filter(|(_, s)| *s == ph)
            .last()
            .map(|(pos, _)| pos)
    };
    let (id_at, hash_at) = (last("{id}"), last("{hash}"));
    if id_at.is_some() || hash_at.is_some() {
        // Read as the template was, so that their segments line up.
        let path = crate::enrich::template::canonical(path);
        let segment = |pos: usize| path.split('/').filter(|s| !s.is_empty()).nth(pos);
        let id = match (id_at, hash_at) {
            (Some(pos), _) => segment(pos).and_then(|s| s.parse().ok()),
            (None, Some(pos)) => segment(pos).and_then(|seg| {
                u64::from_str_radix(seg.get(seg.len().saturating_sub(16)..)?, 16).ok()
            }),
            (None, None) => None,
        };
        if let Some(id) = id {
            ids.push("", id);
        }
        return ids;
    }
    for p in query.split('&') {
        if let Some((k, v)) = p.split_once('=')
            && is_id_key(k)
            && let Ok(id) = v.parse()
        {
            ids.push(k, id);
        }
    }
    ids
}

/// The ids of a request ([`object_ids`]), kept without an allocation: one set per request.
pub struct ObjectIds<'q> {
    ids: [(&'q str, u64); MAX_ID_PARAMS],
    n: usize,
}

impl<'q> ObjectIds<'q> {
    /// Adds one, past the cap not.
    fn push(&mut self, name: &'q str, id: u64) {
        if self.n < MAX_ID_PARAMS {
            self.ids[self.n] = (name, id);
            self.n += 1;
        }
    }

    /// The ids, each with what names it.
    pub fn as_slice(&self) -> &[(&'q str, u64)] {
        &self.ids[..self.n]
    }
}

/// The widest grid a walk over ids that read as times is measured on: ids handed out in steps
/// of a few (sequences with a cache, shards) are walked by every step, while time buckets
/// (`/metrics/{id}` at epoch seconds a minute apart), which a dashboard reads densely by itself,
/// keep to wide grids. Other ids are measured on any grid: a walk 17 apart is a walk.
const MAX_GRID: u32 = 16;

/// An id in the range of epoch seconds or milliseconds (2001 to 2286).
fn epoch_like(id: u64) -> bool {
    (1_000_000_000..10_000_000_000).contains(&id)
        || (1_000_000_000_000..10_000_000_000_000).contains(&id)
}

/// First words of a query parameter ending in `id` that make it a cursor or bound of a listing
/// (`afterId`, `since_id`, `lastEventId`, `max_tweet_id`), whose values step through a feed as a
/// client pages or polls it, whatever noun follows them.
const CURSORS: [&str; 11] = [
    "since", "after", "before", "last", "max", "min", "until", "cursor", "next", "prev", "previous",
];

/// Whole names (before `id`) of parameters that correlate a request rather than name an object
/// (`requestId`, `trace_id`); and bare bounds (`fromId`, `toId`, `startId`), which
/// `fromAccountId` is not.
const CORRELATIONS: [&str; 11] = [
    "request",
    "trace",
    "span",
    "correlation",
    "idempotency",
    "seq",
    "sequence",
    "from",
    "start",
    "end",
    "to",
];

/// A query parameter that names an object by its id, in any naming style: `id`, `ID`,
/// `account_id`, `account-id`, `accountId`, `userID`; not a word that merely ends in `id`
/// (`paid`, `valid`), nor a cursor or a correlation ([`CURSORS`], [`CORRELATIONS`]).
fn is_id_key(k: &str) -> bool {
    let b = k.as_bytes();
    let n = b.len();
    if n < 2 || !b[n - 2..].eq_ignore_ascii_case(b"id") {
        return false;
    }
    let styled = n == 2
        || matches!(b[n - 3], b'_' | b'-')
        // camelCase: `Id` or `ID` after a lower-case letter or a digit.
        || (b[n - 2] == b'I'
            && (b[n - 3].is_ascii_lowercase() || b[n - 3].is_ascii_digit()));
    if !styled {
        return false;
    }
    let prefix = k[..n - 2].trim_end_matches(['_', '-']);
    // The first word: up to a separator or the next capital.
    let first = prefix
        .char_indices()
        .skip(1)
        .find(|(_, c)| c.is_ascii_uppercase() || matches!(c, '_' | '-'))
        .map_or(prefix, |(i, _)| &prefix[..i]);
    !(CURSORS.iter().any(|w| first.eq_ignore_ascii_case(w))
        || CORRELATIONS.iter().any(|w| prefix.eq_ignore_ascii_case(w)))
}

impl EnumerationDetector {
    /// A detector following at most `cap` (principal, endpoint) walks and principals.
    pub fn new(cfg: &Config, cap: usize) -> Self {
        Self {
            cfg: cfg.clone(),
            window: ms_len(secs(cfg.window_s)),
            scrape_window: ms_len(secs(cfg.scrape_window_s)),
            walks: BoundedMap::new(cap, 2 * secs(cfg.window_s)),
            crawls: BoundedMap::new(cap, 2 * secs(cfg.scrape_window_s)),
        }
    }

    /// One step of the walk over `param`'s ids (the path's when empty) of the principal on
    /// the endpoint.
    fn walk(&mut self, ctx: &Ctx<'_>, param: &str, id: u64, out: &mut Vec<Detection>) {
        let o = ctx.obs;
        let now = ms32(o.ts_ns);
        let key = key2(&(ctx.entity, param), o.endpoint.as_str());
        let (w, idle) = self.walks.entry_idle(key, o.ts_ns, || Walk::new(now, id));
        if w.requests == 0 || over(now, w.start, self.window, idle) {
            *w = Walk::new(now, id);
        }
        w.requests = w.requests.saturating_add(1);
        if o.status >= 400 {
            w.errors = w.errors.saturating_add(1);
        }
        w.ids.insert(key_of(&id));
        let distinct = w.ids.bits_set();
        let step = id.abs_diff(w.last);
        if w.requests > 1 && (1..=self.cfg.max_step).contains(&step) {
            w.run += 1;
            w.max_run = w.max_run.max(w.run);
        } else if w.requests > 1 && step != 0 {
            w.run = 0;
        }
        if step != 0 {
            w.stride = u32::try_from(gcd(u64::from(w.stride), step)).unwrap_or(1);
        }
        w.last = id;
        w.min = w.min.min(id);
        w.max = w.max.max(id);
        // The ids the walk could have touched: those of its range on the grid its steps keep
        // to (every tenth id, when ids are handed out in tens, is a walk over all of them).
        // Saturating: a walk may hold id 0 and u64::MAX.
        let grid = if w.stride <= MAX_GRID || !epoch_like(w.min) {
            u64::from(w.stride.max(1))
        } else {
            1
        };
        let span = ((w.max - w.min) / grid).saturating_add(1);
        let density = f64::from(distinct) / span as f64;
        if distinct < self.cfg.min_distinct_ids
            || !(w.max_run >= self.cfg.min_run || density >= self.cfg.min_density)
        {
            return;
        }
        // Copied out of the packed walk.
        let (start, min, max, max_run, errors) = (w.start, w.min, w.max, w.max_run, w.errors);
        let every = if grid > 1 {
            format!(", ids {grid} apart")
        } else {
            String::new()
        };
        // The bits set are a floor (ids that share a bit count once, about five of 50): the
        // decisions above keep to it, the alert says the estimate, which cannot exceed the
        // ids in the range.
        let shown = (w.ids.estimate().round() as u64)
            .clamp(u64::from(distinct), span.max(u64::from(distinct)));
        let shown_density = shown as f64 / span as f64;
        let secs_in = secs_from(now, start);
        let severity = if distinct >= 4 * self.cfg.min_distinct_ids {
            Severity::High
        } else {
            Severity::Medium
        };
        if ctx.is_repeat(
            AlertKind::Enumeration,
            subject::entity(ctx.entity),
            severity,
        ) {
            return;
        }
        let alert = ctx.alert(
            AlertKind::Enumeration,
            severity,
            (0.6 + f64::from(distinct) / 200.0).min(1.0),
            format!(
                "{} walked about {} distinct ids of {} ({}..{}{}, {:.0}% of the range, the longest in-order run {} requests) in {}; {} answers were errors.",
                ctx.principal,
                shown,
                o.endpoint,
                min,
                max,
                every,
                shown_density * 100.0,
                u32::from(max_run) + 1,
                span_text(secs_in),
                errors
            ),
            evidence([
                ("distinct_ids", json!(shown)),
                ("min_id", json!(min)),
                ("max_id", json!(max)),
                ("density", json!(r2(shown_density))),
                ("id_step", json!(grid)),
                ("sequential_run", json!(max_run)),
                ("errors", json!(errors)),
                ("window_s", json!(self.cfg.window_s)),
                ("min_distinct_ids", json!(self.cfg.min_distinct_ids)),
            ]),
        );
        out.push(Detection {
            alert,
            subject: subject::entity(ctx.entity),
        });
    }

    fn crawl(&mut self, ctx: &Ctx<'_>, out: &mut Vec<Detection>) {
        let o = ctx.obs;
        let now = ms32(o.ts_ns);
        let flow = ctx.account.is_some()
            || (ctx.is_login && !ctx.login_failed)
            || self
                .cfg
                .flow_endpoints
                .iter()
                .any(|f| f.eq_ignore_ascii_case(&o.endpoint));
        let (c, idle) = self
            .crawls
            .entry_idle(ctx.entity, o.ts_ns, || Crawl::new(now, false));
        if c.requests == 0 || over(now, c.start, self.scrape_window, idle) {
            // The flow carries into the window right after its own, not past a quiet spell.
            let next = idle < STALE_NS
                && ms_since(now, c.start).is_some_and(|a| a < 2 * self.scrape_window);
            *c = Crawl::new(now, c.flow && next);
        }
        c.flow |= flow;
        let flow = c.flow || c.flow_before;
        c.requests = c.requests.saturating_add(1);
        // Linear counting corrects the bitmap's collisions (counting new bits would lose about
        // one resource in twenty by 25, enough to sink the ratio under the threshold).
        c.paths.insert(key2(&o.path, &o.query));
        let distinct = (c.paths.estimate().round() as u32).min(c.requests);
        let floor = if flow {
            f64::from(self.cfg.scrape_min_requests) * self.cfg.flow_factor
        } else {
            f64::from(self.cfg.scrape_min_requests)
        };
        let ratio = f64::from(distinct) / f64::from(c.requests);
        // Twice the floor in distinct resources is a crawl whatever else is asked between
        // them (a constant URL between every two fetches keeps the ratio at one half).
        let crawled = f64::from(distinct) >= 2.0 * floor;
        if f64::from(c.requests) < floor || (ratio < self.cfg.scrape_min_distinct_ratio && !crawled)
        {
            return;
        }
        let c = *c;
        let secs_in = secs_from(now, c.start).max(0.001);
        let severity = if flow {
            Severity::Medium
        } else {
            Severity::High
        };
        if ctx.is_repeat(AlertKind::Scraping, subject::entity(ctx.entity), severity) {
            return;
        }
        let alert = ctx.alert(
            AlertKind::Scraping,
            severity,
            (0.6 + ratio * 0.3).min(1.0),
            format!(
                "{} fetched {} distinct resources in {} requests within {} ({:.1}/s){}.",
                ctx.principal,
                distinct,
                c.requests,
                span_text(secs_in),
                f64::from(c.requests) / secs_in,
                if flow {
                    ""
                } else {
                    " without any normal client flow (no login, no usual pages)"
                }
            ),
            evidence([
                ("requests", json!(c.requests)),
                ("distinct", json!(distinct)),
                ("distinct_ratio", json!(r2(ratio))),
                ("rate_rps", json!(r2(f64::from(c.requests) / secs_in))),
                ("normal_flow", json!(flow)),
                ("min_requests", json!(floor)),
                ("window_s", json!(self.cfg.scrape_window_s)),
            ]),
        );
        out.push(Detection {
            alert,
            subject: subject::entity(ctx.entity),
        });
    }
}

impl Detector for EnumerationDetector {
    fn name(&self) -> &'static str {
        "enumeration"
    }

    fn observe(&mut self, ctx: &Ctx<'_>, out: &mut Vec<Detection>) {
        // Clients a trusted proxy could not name walk and crawl together under one stand-in.
        if ctx.login_failed || ctx.unknown_client {
            return;
        }
        let o = ctx.obs;
        for &(param, id) in object_ids(&o.path, &o.endpoint, &o.query).as_slice() {
            self.walk(ctx, param, id, out);
        }
        self.crawl(ctx, out);
    }

    fn tick(&mut self, now_ns: u64, _out: &mut Vec<Detection>) {
        self.walks.sweep(now_ns, 4096);
        self.crawls.sweep(now_ns, 4096);
    }

    fn tracked(&self) -> usize {
        self.walks.len() + self.crawls.len()
    }

    fn memory_bytes(&self) -> usize {
        self.walks.memory_bytes() + self.crawls.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Engine, ModelsConfig, synth::*};

    const _: () = assert!(BoundedMap::<Walk>::SLOT_BYTES == 88);
    const _: () = assert!(BoundedMap::<Crawl>::SLOT_BYTES == 56);

    fn account(t: u64, ip: &str, tok: &str, id: u64) -> crate::models::Observation<'static> {
        let mut o = with_token(obs(t, ip, &format!("/accounts/{id}")), tok);
        o.endpoint = "/accounts/{id}".into();
        o
    }

    #[test]
    fn ids_are_read_from_the_template_position_or_the_query() {
        assert_eq!(
            object_id("/accounts/42/tx/7", "/accounts/{id}/tx/{id}", ""),
            Some(7)
        );
        assert_eq!(object_id("/accounts/42", "/accounts/{id}", ""), Some(42));
        assert_eq!(object_id("/items", "/items", "page=2&id=99"), Some(99));
        assert_eq!(object_id("/items", "/items", "q=x"), None);
    }

    #[test]
    fn ids_are_read_from_query_parameters_in_any_naming_style_and_hex_segments() {
        for q in [
            "accountId=42",
            "account-id=42",
            "ID=42",
            "userID=42",
            "x=1&Account_Id=42",
            "fromAccountId=42",
            "endpointId=42",
            "afterId=9001&accountId=42",
        ] {
            assert_eq!(object_id("/statement", "/statement", q), Some(42), "{q}");
        }
        // Words that merely end in "id" are no ids, nor are cursors and correlations.
        for q in [
            "paid=42",
            "valid=42",
            "grid=42",
            "android=42",
            "afterId=42",
            "since_id=42",
            "lastEventId=42",
            "max_tweet_id=42",
            "MaxId=42",
            "requestId=42",
            "trace-id=42",
            "fromId=42",
            "toId=42",
        ] {
            assert_eq!(object_id("/statement", "/statement", q), None, "{q}");
        }
        // A hex identifier (a MongoDB ObjectId) is read by its low 64 bits: ids made one after
        // the other are neighbours.
        let a = object_id("/docs/5f1d7a3b9c1e4a0012345678", "/docs/{hash}", "");
        let b = object_id("/docs/5f1d7a3b9c1e4a0012345679", "/docs/{hash}", "");
        assert_eq!(b.zip(a).map(|(b, a)| b - a), Some(1));
    }

    #[test]
    fn a_walk_over_a_camel_case_query_id_is_enumeration() {
        // Alone, and behind a decoy id parameter that never changes.
        for query in ["accountId={}&format=pdf", "xId=0&accountId={}"] {
            let mut e = Engine::new(&ModelsConfig::default()).unwrap();
            let mut hit = false;
            for i in 0..30u64 {
                let mut o = with_token(obs(T0 + i * S, "198.51.100.66", "/statement"), "tok-q");
                o.query = query.replace("{}", &(40_000 + i).to_string()).into();
                hit |= e
                    .observe(&o)
                    .iter()
                    .any(|a| a.kind == AlertKind::Enumeration);
            }
            assert!(hit, "{query}");
        }
    }

    #[test]
    fn a_sequential_walk_is_enumeration_within_a_few_seconds() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let mut first = None;
        let mut kinds = Vec::new();
        for i in 0..300u64 {
            let t = T0 + i * 200_000_000;
            for a in e.observe(&account(t, "198.51.100.60", "tok-enum", 200_000 + i)) {
                if a.kind == AlertKind::Enumeration {
                    first.get_or_insert(t - T0);
                }
                kinds.push(a.kind);
            }
        }
        assert!(first.expect("enumeration") <= 3 * S);
        assert!(kinds.contains(&AlertKind::Scraping), "{kinds:?}");
    }

    #[test]
    fn the_ids_an_alert_counts_fit_the_range_it_names() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let mut seen = 0;
        for i in 0..60u64 {
            let t = T0 + i * 20_000_000;
            for a in e.observe(&account(t, "198.51.100.62", "tok-walk", 300_000 + i)) {
                if a.kind != AlertKind::Enumeration {
                    continue;
                }
                seen += 1;
                let n = |k: &str| a.evidence[k].as_u64().unwrap();
                // Every id of the range was walked, in order.
                let span = n("max_id") - n("min_id") + 1;
                assert_eq!(span, i + 1);
                assert!(n("distinct_ids") <= span, "{a:?}");
                // The bits set alone said 48 of 50 here (two pairs of ids share a bit).
                assert!(n("distinct_ids") + 1 >= span, "{a:?}");
                assert_eq!(n("sequential_run"), i, "steps between the {span} ids");
                assert!(
                    a.explanation
                        .contains(&format!("in-order run {span} requests"))
                );
            }
        }
        assert!(seen >= 2, "a medium and a high alert");
    }

    #[test]
    fn ids_at_both_ends_of_the_range_do_not_stop_the_analysis() {
        // 0 and u64::MAX in one walk overflowed the span (a panic in debug builds, and a
        // clamp with min > max in release): a few crafted requests stopped every detector.
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let ids = [0, u64::MAX].into_iter().chain(1..=40);
        for (i, id) in ids.enumerate() {
            let t = T0 + i as u64 * 50_000_000;
            e.observe(&account(t, "198.51.100.63", "tok-ends", id));
        }
    }

    #[test]
    fn a_random_dense_walk_is_enumeration_too() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let mut hit = false;
        for i in 0..40u64 {
            let id = 5000 + (i * 37) % 40;
            for a in e.observe(&account(T0 + i * S, "198.51.100.61", "tok-x", id)) {
                hit |= a.kind == AlertKind::Enumeration;
            }
        }
        assert!(hit);
    }

    /// Enumeration alerts raised by `ids` on `/accounts/{id}` from `ip`, one a second.
    fn walked(ids: impl Iterator<Item = u64>, ip: &str) -> usize {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        ids.enumerate()
            .flat_map(|(i, id)| e.observe(&account(T0 + i as u64 * S, ip, "tok-w", id)))
            .filter(|a| a.kind == AlertKind::Enumeration)
            .count()
    }

    #[test]
    fn a_walk_in_steps_larger_than_max_step_is_enumeration() {
        // Ids handed out in steps of 10 (a sequence with a cache, ten shards): every tenth id
        // in order, and the same ids shuffled. Neither a run of small steps nor dense in the
        // range, but every id of the grid they lie on.
        assert!(walked((0..40).map(|i| 700_000 + 10 * i), "198.51.100.64") > 0);
        assert!(
            walked(
                (0..40).map(|i| 700_000 + 10 * ((i * 17) % 40)),
                "198.51.100.65"
            ) > 0
        );
        // Twelve unrelated ids, all even, are no grid: not enumeration.
        let sparse = [2, 9_998, 31_426, 77_000, 150_002, 222_222, 310_000, 400_404];
        let more = [512_000, 640_006, 777_778, 901_234];
        assert_eq!(walked(sparse.into_iter().chain(more), "198.18.0.64"), 0);
    }

    #[test]
    fn time_buckets_are_no_walk_but_wide_steps_over_ids_are() {
        // A dashboard reading twenty minutes of a metric by its minute buckets (epoch seconds,
        // or milliseconds).
        assert_eq!(
            walked((0..20).map(|i| 1_717_000_000 + 60 * i), "198.18.0.65"),
            0
        );
        assert_eq!(
            walked(
                (0..20).map(|i| 1_717_000_000_000 + 60_000 * i),
                "198.18.0.66"
            ),
            0
        );
        // Accounts 17 apart, in order and shuffled: a walk past any fixed widest grid.
        assert!(walked((0..40).map(|i| 700_000 + 17 * i), "198.51.100.67") > 0);
        assert!(
            walked(
                (0..40).map(|i| 700_000 + 17 * ((i * 13) % 40)),
                "198.51.100.68"
            ) > 0
        );
        // Under an account's files, the account is the object walked.
        let id = object_id(
            "/accounts/42/files/5f1d7a3b9c1e4a0012345678",
            "/accounts/{id}/files/{hash}",
            "",
        );
        assert_eq!(id, Some(42));
    }

    /// Scraping alerts raised by `reqs` (principal's token `tok`, one request per 300 ms).
    fn scraping<'a>(
        e: &mut Engine,
        t0: u64,
        tok: &str,
        reqs: impl Iterator<Item = &'a str>,
    ) -> usize {
        reqs.enumerate()
            .flat_map(|(i, p)| {
                let (path, query) = p.split_once('?').unwrap_or((p, ""));
                let mut o = with_token(obs(t0 + i as u64 * 300_000_000, "203.0.113.60", path), tok);
                o.query = query.into();
                e.observe(&o)
            })
            .filter(|a| a.kind == AlertKind::Scraping)
            .count()
    }

    #[test]
    fn repeats_between_the_fetches_do_not_hide_a_crawl() {
        // A constant page between every two fetches: the distinct ratio stays at one half.
        let pages: Vec<String> = (0..60)
            .flat_map(|i| [format!("/catalogue?page={i}"), "/home".to_owned()])
            .collect();
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        assert!(scraping(&mut e, T0, "tok-crawl", pages.iter().map(String::as_str)) > 0);
    }

    #[test]
    fn one_usual_page_does_not_vouch_for_a_crawl_forever() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        // One /balance, then nothing for two minutes: two windows later the flow is stale.
        scraping(&mut e, T0, "tok-once", ["/balance"].into_iter());
        let pages: Vec<String> = (0..40).map(|i| format!("/catalogue?page={i}")).collect();
        let n = scraping(
            &mut e,
            T0 + 130 * S,
            "tok-once",
            pages.iter().map(String::as_str),
        );
        assert!(n > 0, "40 distinct pages in 12 s were not scraping");
    }

    #[test]
    fn customers_with_a_few_accounts_and_normal_apps_are_not_flagged() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        for u in 0..50u64 {
            let tok = format!("tok-{u}");
            let t = T0 + u * 60 * S;
            e.observe(&with_token(obs(t, "198.18.0.9", "/balance"), &tok));
            for k in 0..30u64 {
                // Own three accounts (sparse ids), reloaded many times.
                let id = 100_000 + u * 1000 + (k % 3) * 97;
                let a = e.observe(&account(t + k * S, "198.18.0.9", &tok, id));
                assert!(a.is_empty(), "{a:?}");
            }
        }
    }
}
