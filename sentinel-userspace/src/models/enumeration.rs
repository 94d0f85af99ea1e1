//! Object-id walks and scraping.
//!
//! - `enumeration`: one principal on one endpoint template with a numeric `{id}` or a hex
//!   `{hash}` (or an id query parameter: `id`, `account_id`, `accountId`; not cursors such as
//!   `afterId` nor correlations such as `requestId`) touches at least `min_distinct_ids`
//!   distinct ids within `window_s`, and either walks them in order (a run of `min_run` steps
//!   of 1 to `max_step` one way, or back onto an id not seen before, as a walk that swaps
//!   neighbours does; up to two other ids in a row between two of its steps do not end it) or
//!   covers a range densely: at least `min_distinct_ids` of its ids lie in a range
//!   that they fill to `min_density` or more, on the grid that most of its ids keep to (every
//!   tenth id walked in any order is dense too; a grid up to 16 for ids that read as epoch
//!   seconds or milliseconds, so that minute buckets are not). A customer opening their own
//!   accounts touches a handful of unrelated ids; a walker touches many neighbours.
//!
//!   Decoys (ids requested only to blur a walk) are a minority it is judged in spite of: the
//!   grid is voted by the ids (a candidate, proposed by the common divisor of two steps in a
//!   row, holds when more than three in four new ids lie on it), not the common divisor of every step,
//!   which one id off the grid brings down to 1; the range is a core that grows by the ids on
//!   its grid within reach of it (32 steps of the grid, or as far as it spans), not the
//!   lowest to the highest id, which one far id makes sparse, and it starts over when the ids
//!   left out of it outnumber it twice over (it began on a decoy). The core's ids are counted,
//!   not kept: when the grid widens, those still on it are estimated by the ids on the wider
//!   grid since it was proposed. Without decoys the whole range (the lowest to the highest
//!   id, on the common divisor of every step, as before) is the truer measure: the core, grown
//!   from its first id, leaves out the ids of a random-order walk that came before it reached
//!   them (of 40 shuffles of 110 of 160 ids, which fill the range to 0.69, the core was found
//!   dense in 16). A walk is dense when either is, and the alert names the range found dense
//!   (the core's when both are; evidence `range`). All of it is 120 bytes a walk, and nothing
//!   allocated per request.
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

/// One principal's id walk on one endpoint (120 bytes; the ids are 4-aligned so that the map's
/// slot, 136 bytes, is not padded further).
///
/// Each judgement is made so that a minority of decoys (ids requested only to blur the walk)
/// cannot sway it: the grid is the widest that most new ids keep to (not the common divisor of
/// every step, which one id off the grid brings down to 1), the range is a core that ids far
/// from it or off its grid do not widen (not the lowest to the highest id, which one far id
/// makes sparse), and an in-order run survives a decoy or two between its steps. The whole
/// range on the common divisor of the steps is kept as well (16 bytes), for walks without
/// decoys: there it is the truer measure.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
struct Walk {
    /// First request of the walk ([`ms32`]).
    start: u32,
    /// The ids seen: distinct ids are the bits set (an id on a bit already set counts once).
    ids: Distinct,
    /// The last id of the in-order run (of the last request when there is none).
    head: u64,
    /// The core: `core` distinct ids of the walk, in `lo..=hi` on the grid `lo + k * grid`.
    lo: u64,
    hi: u64,
    /// Candidate grids, each with the residue its ids leave, the new ids since it was
    /// proposed (`tries`) and those of them on it (`hits`), both halved at 255 so that the
    /// share follows the walk.
    grids: [u32; 2],
    residues: [u32; 2],
    hits: [u8; 2],
    tries: [u8; 2],
    /// The last new id's step from the id before it (from the run's last id during a run; 0
    /// before, or past `u32::MAX`).
    step: u32,
    /// The core's grid (0 before the first id).
    grid: u32,
    core: u16,
    /// New ids not taken into the core since it began: when they outnumber it twice over and
    /// by more than [`MAX_STRAYS`], the core starts over.
    strays: u16,
    run: u16,
    max_run: u16,
    errors: u16,
    requests: u16,
    /// Ids in a row that did not extend the run.
    misses: u8,
    /// The run goes down.
    down: bool,
    /// The whole range, as it was measured before decoys were thought of: every id of the walk
    /// lies on the grid `min + k * stride` (`stride` the greatest common divisor of the steps
    /// so far, 0 before the first, 1 when it would not fit), the highest `units` steps of it
    /// above `min` (`u32::MAX`: that many or more, a range no walk fills).
    min: u64,
    units: u32,
    stride: u32,
}

const _: () = assert!(size_of::<Walk>() == 120);

/// Ids in a row between two steps of an in-order run that do not end it (decoys).
const MAX_MISSES: u8 = 2;

/// How far beyond the core's ends an id still joins it, in steps of its grid, while the core
/// spans fewer (then as far as it spans): farther ids are outliers. Random-order walks fill
/// their range from anywhere in it, so the core must reach some way before it is wide.
const MIN_REACH: u64 = 32;

/// The grid a walk's ids keep to ([`Walk::voted_grid`]).
#[derive(Clone, Copy)]
struct Voted {
    grid: u32,
    /// Of its ids.
    residue: u32,
    /// New ids on it since it was proposed.
    hits: u16,
}

impl Voted {
    /// Every id.
    const ANY: Self = Self {
        grid: 1,
        residue: 0,
        hits: 0,
    };
}

/// Strays a core outnumbered by them (twice over) may have before it starts over: a core begun
/// on a decoy goes soon, one begun in a random-order walk wider than it reaches gets the time
/// to reach farther.
const MAX_STRAYS: u32 = 4;

/// New ids a candidate grid is tried on before the walk is measured on it (a walk's steps
/// propose wide grids by chance: a shuffle of every tenth id by 170 at a time proposes 170).
const MIN_TRIES: u8 = 8;

impl Walk {
    fn new(now: u32, id: u64) -> Self {
        Self {
            start: now,
            ids: Distinct::default(),
            head: id,
            lo: id,
            hi: id,
            grids: [0; 2],
            residues: [0; 2],
            hits: [0; 2],
            tries: [0; 2],
            step: 0,
            grid: 0,
            core: 0,
            strays: 0,
            run: 0,
            max_run: 0,
            errors: 0,
            requests: 0,
            misses: 0,
            down: false,
            min: id,
            units: 0,
            stride: 0,
        }
    }

    /// One request's id in the whole range: the grid narrows to the common divisor of its
    /// step from the lowest id (every id seen lies on the grid, so that is the step from any
    /// of them), the range widens to it.
    fn widen(&mut self, id: u64) {
        let (min, units, stride) = (self.min, self.units, self.stride);
        let step = id.abs_diff(min);
        if step == 0 {
            return;
        }
        let narrow = u32::try_from(gcd(u64::from(stride), step)).unwrap_or(1);
        let units = if units == u32::MAX {
            units
        } else {
            // Exact: the highest id is `units` steps of the old grid above `min`.
            let max = (min + u64::from(units) * u64::from(stride)).max(id);
            u32::try_from((max - min.min(id)) / u64::from(narrow)).unwrap_or(u32::MAX)
        };
        (self.min, self.units, self.stride) = (min.min(id), units, narrow);
    }

    /// The whole range's grid (the steps' common divisor, up to [`MAX_GRID`] for ids that read
    /// as times, else 1), its highest id, and the ids of the range on that grid.
    fn whole(&self) -> (u64, u64, u64) {
        let (min, units, stride) = (self.min, u64::from(self.units), u64::from(self.stride));
        let grid = if self.stride <= MAX_GRID || !epoch_like(min) {
            stride.max(1)
        } else {
            1
        };
        // Saturating: a range past `u32::MAX` steps says so, and a walk may hold id 0 and
        // `u64::MAX`.
        let above = units * stride;
        (
            grid,
            min.saturating_add(above),
            (above / grid).saturating_add(1),
        )
    }

    /// One request's id on the in-order run: a step of 1 to `max_step` from the run's last id,
    /// the way the run goes or back onto a `new` id, extends it (a walk may swap neighbours,
    /// while a client going back and forth between two ids it has seen is no walk); up to
    /// [`MAX_MISSES`] other ids in a row between two of its steps are let be, one more ends
    /// it. The same id again changes nothing.
    fn extend_run(&mut self, id: u64, new: bool, max_step: u64) {
        let (head, run) = (self.head, self.run);
        let step = id.abs_diff(head);
        let down = id < head;
        if (1..=max_step).contains(&step) && (run == 0 || down == self.down || new) {
            self.run = run.saturating_add(1);
            self.max_run = self.max_run.max(self.run);
            self.down = down;
            self.head = id;
            self.misses = 0;
        } else if step == 0 {
        } else if run == 0 || self.misses >= MAX_MISSES {
            self.run = 0;
            self.head = id;
            self.misses = 0;
        } else {
            self.misses += 1;
        }
    }

    /// Whether more than `num / den` of the new ids since candidate `k` was proposed lie on it.
    fn share_over(&self, k: usize, num: u16, den: u16) -> bool {
        den * u16::from(self.hits[k]) > num * u16::from(self.tries[k])
    }

    /// Whether candidate `k` holds: once it is the core's grid, more than three in five of the
    /// new ids since it was proposed lie on it; before, more than three in four of at least
    /// [`MIN_TRIES`], and of at least as many as the core holds unless the core is sparse (a
    /// grid of 2 holds half the ids of any walk, and by chance more for a while: a dense core
    /// is not given up for it).
    fn holds(&self, k: usize) -> bool {
        let (grid, tries) = (self.grids[k], u64::from(self.tries[k]));
        grid != 0
            && if grid == self.grid {
                self.share_over(k, 3, 5)
            } else {
                tries >= u64::from(MIN_TRIES)
                    && (tries >= u64::from(self.core) || 4 * u64::from(self.core) < self.span())
                    && self.share_over(k, 3, 4)
            }
    }

    /// The ids of the core's range on its grid.
    fn span(&self) -> u64 {
        ((self.hi - self.lo) / u64::from(self.grid.max(1))).saturating_add(1)
    }

    /// The share of new ids on candidate `k` since it was proposed, as a fraction to compare:
    /// `a` beats `b` when `hits_a * tries_b > hits_b * tries_a`.
    fn share(&self, k: usize) -> (u16, u16) {
        (u16::from(self.hits[k]), u16::from(self.tries[k]))
    }

    /// A new id's vote on the grid: it counts for the candidates it lies on, and proposes the
    /// one its step and the step before keep to (their greatest common divisor: a multiple of
    /// the walk's grid when the three ids are the walk's; a decoy's steps propose grids that
    /// few of its ids lie on).
    fn vote(&mut self, id: u64) {
        for k in 0..2 {
            if self.grids[k] == 0 {
                continue;
            }
            if self.tries[k] == u8::MAX {
                self.tries[k] /= 2;
                self.hits[k] /= 2;
            }
            self.tries[k] += 1;
            if (id % u64::from(self.grids[k])) as u32 == self.residues[k] {
                self.hits[k] += 1;
            }
        }
        let (step, before) = (id.abs_diff(self.head), self.step);
        self.step = u32::try_from(step).unwrap_or(0);
        if before == 0 {
            return;
        }
        let Ok(p) = u32::try_from(gcd(step, u64::from(before))) else {
            return;
        };
        if p < 2 || self.grids.contains(&p) {
            return;
        }
        // An empty slot, else the weaker candidate if it fails (three in five ids or fewer on
        // it).
        let ((h0, t0), (h1, t1)) = (self.share(0), self.share(1));
        let weak = usize::from(self.grids[0] != 0 && (self.grids[1] == 0 || h1 * t0 < h0 * t1));
        let wide = usize::from(self.grids[1] > self.grids[0]);
        let slot = if self.grids[weak] == 0 || !self.share_over(weak, 3, 5) {
            Some(weak)
        } else {
            // Both hold: a multiple of the wider, when that holds as well as the narrower,
            // takes the narrower's place (a decoy's step may have proposed a divisor of the
            // grid, which then holds as well as the grid does).
            let (hw, tw, hn, tn) = if wide == 0 {
                (h0, t0, h1, t1)
            } else {
                (h1, t1, h0, t0)
            };
            (p.is_multiple_of(self.grids[wide]) && self.holds(wide) && hw * tn >= hn * tw)
                .then_some(1 - wide)
        };
        if let Some(k) = slot {
            self.grids[k] = p;
            self.residues[k] = (id % u64::from(p)) as u32;
            // This id and the one before lie on it.
            self.hits[k] = 2;
            self.tries[k] = 2;
        }
    }

    /// The grid the walk keeps to and the residue of its ids: of the candidates that hold, the
    /// wider, unless its share of the ids falls short of the other's by more than one in
    /// four (every id on a grid of 10 lies on one of 5 as well, while only half of them lie
    /// on one of 20: when 20 holds by chance, 10 holds better; decoys on 5 and off 10 make the
    /// difference, up to their share); else every id.
    fn voted_grid(&self) -> Voted {
        let pick = |k: usize| Voted {
            grid: self.grids[k],
            residue: self.residues[k],
            hits: u16::from(self.hits[k]),
        };
        match (self.holds(0), self.holds(1)) {
            (true, true) => {
                let wide = usize::from(self.grids[1] > self.grids[0]);
                let ((hw, tw), (hn, tn)) = (self.share(wide), self.share(1 - wide));
                // hw / tw >= hn / tn - 1 / 4
                if 4 * u32::from(hw) * u32::from(tn) + u32::from(tw) * u32::from(tn)
                    >= 4 * u32::from(hn) * u32::from(tw)
                {
                    pick(wide)
                } else {
                    pick(1 - wide)
                }
            }
            (true, false) => pick(0),
            (false, true) => pick(1),
            (false, false) => Voted::ANY,
        }
    }

    /// A new id joins the core when it lies on `grid` (the core's residue) within reach of the
    /// core's range, else counts as a stray. The core starts over when the grid widens (its
    /// ids may not lie on the wider one) and when strays outnumber it twice over and by more
    /// than [`MAX_STRAYS`] (it began on a decoy).
    fn join(&mut self, id: u64, voted: Voted) {
        let Voted {
            grid,
            residue,
            hits,
        } = voted;
        if self.core > 0 && grid != self.grid {
            let g = u64::from(grid);
            if self.grid.is_multiple_of(grid) {
                // A narrower grid holds every id of the core.
                self.grid = grid;
            } else if grid.is_multiple_of(self.grid.max(1)) {
                // A wider one: the core keeps the part of its range on it, and of its ids no
                // more than lie on the grid since it was proposed (an estimate: the ids of the
                // core are not kept).
                let (lo, hi, r) = (self.lo, self.hi, u64::from(residue));
                let lo = lo.saturating_add((r + g - lo % g) % g);
                let hi = hi.saturating_sub((hi % g + g - r) % g);
                if lo % g == r && hi % g == r && lo <= hi {
                    (self.lo, self.hi, self.grid) = (lo, hi, grid);
                    self.core = self.core.min(hits.saturating_sub(1)).max(1);
                } else {
                    self.core = 0;
                }
            } else {
                self.core = 0;
            }
        }
        if self.core > 0 {
            let (lo, hi, g) = (self.lo, self.hi, u64::from(self.grid.max(1)));
            let reach = ((hi - lo) / g).max(MIN_REACH).saturating_mul(g);
            let near = id >= lo.saturating_sub(reach) && id <= hi.saturating_add(reach);
            if near && id.abs_diff(lo).is_multiple_of(g) {
                self.lo = lo.min(id);
                self.hi = hi.max(id);
                self.core = self.core.saturating_add(1);
                return;
            }
            self.strays = self.strays.saturating_add(1);
            if u32::from(self.strays) <= 2 * u32::from(self.core) + MAX_STRAYS {
                return;
            }
        }
        // Begun (again) on an id of the grid.
        self.core = 0;
        if (id % u64::from(grid.max(1))) as u32 == residue {
            (self.lo, self.hi, self.grid, self.core, self.strays) = (id, id, grid, 1, 0);
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
        let new = w.ids.insert(key_of(&id));
        let distinct = w.ids.bits_set();
        // Only new ids vote and join (a decoy asked again weighs no more than once).
        if new {
            w.vote(id);
        }
        w.extend_run(id, new, self.cfg.max_step);
        // Every request, as before: an id on a bit already set may be another id.
        w.widen(id);
        if new {
            // Time buckets (`/metrics/{id}` at epoch seconds a minute apart) keep to wide
            // grids and are read densely by dashboards: measured on every id.
            let voted = w.voted_grid();
            let grid = if voted.grid <= MAX_GRID || !epoch_like(id) {
                voted
            } else {
                Voted::ANY
            };
            w.join(id, grid);
        }
        // The ids the core could have held: those of its range on its grid (every tenth id,
        // when ids are handed out in tens, is a walk over all of them).
        let span = w.span();
        let density = f64::from(w.core) / span as f64;
        let dense =
            u32::from(w.core) >= self.cfg.min_distinct_ids && density >= self.cfg.min_density;
        // And all the ids over the whole range, on the common divisor of their steps, as
        // before decoys were thought of: the core, grown from its first id, leaves out those
        // of a random-order walk that came before it reached them, and without decoys the
        // whole range is the truer measure (of 40 shuffles of 110 of 160 ids, which fill it to
        // 0.69, the core was found dense in 16).
        let (whole_grid, max, whole_span) = w.whole();
        let whole_dense = distinct >= self.cfg.min_distinct_ids
            && f64::from(distinct) / whole_span as f64 >= self.cfg.min_density;
        let ordered = distinct >= self.cfg.min_distinct_ids && w.max_run >= self.cfg.min_run;
        if !(dense || whole_dense || ordered) {
            return;
        }
        // The alert names the range that was found dense: the whole one when only it was.
        let whole = whole_dense && !dense;
        // Copied out of the packed walk.
        let (start, max_run, errors) = (w.start, w.max_run, w.errors);
        let (lo, hi, grid, span, core) = if whole {
            (w.min, max, whole_grid, whole_span, distinct)
        } else {
            (
                w.lo,
                w.hi,
                u64::from(w.grid.max(1)),
                span,
                u32::from(w.core),
            )
        };
        let every = if grid > 1 {
            format!(", ids {grid} apart")
        } else {
            String::new()
        };
        // Ids of the walk the core does not count (decoys, and those before it last started
        // over or its grid widened); none outside the whole range.
        let outside = distinct.saturating_sub(core);
        let elsewhere = if outside > 0 {
            format!("; {outside} other ids not counted in it")
        } else {
            String::new()
        };
        // The bits set are a floor (ids that share a bit count once, about five of 50): the
        // decisions above keep to it, the alert says the estimate, which cannot exceed the
        // ids the range holds and those outside it.
        let shown = (w.ids.estimate().round() as u64).clamp(
            u64::from(distinct),
            span.saturating_add(u64::from(outside))
                .max(u64::from(distinct)),
        );
        // In the whole range: all the ids, by the estimate, as before; in the core: those it
        // counted.
        let (in_range, density) = if whole {
            (shown, shown as f64 / span as f64)
        } else {
            (u64::from(core), density)
        };
        let counted = if whole {
            format!("all {in_range}")
        } else {
            format!("about {in_range}")
        };
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
                "{} walked about {} distinct ids of {} ({} of them in {}..{}{}, {:.0}% of that range{}; the longest in-order run {} ids) in {}; {} answers were errors.",
                ctx.principal,
                shown,
                o.endpoint,
                counted,
                lo,
                hi,
                every,
                density * 100.0,
                elsewhere,
                u32::from(max_run) + 1,
                span_text(secs_in),
                errors
            ),
            evidence([
                ("distinct_ids", json!(shown)),
                ("min_id", json!(lo)),
                ("max_id", json!(hi)),
                ("ids_in_range", json!(in_range)),
                // Which range the three above and the density are of.
                ("range", json!(if whole { "all ids" } else { "core" })),
                ("other_ids", json!(outside)),
                ("density", json!(r2(density))),
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

    const _: () = assert!(BoundedMap::<Walk>::SLOT_BYTES == 136);
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
                assert!(a.explanation.contains(&format!("in-order run {span} ids")));
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
    fn walk_alerts(ids: impl Iterator<Item = u64>, ip: &str) -> Vec<crate::models::Alert> {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        ids.enumerate()
            .flat_map(|(i, id)| e.observe(&account(T0 + i as u64 * S, ip, "tok-w", id)))
            .filter(|a| a.kind == AlertKind::Enumeration)
            .collect()
    }

    /// How many [`walk_alerts`].
    fn walked(ids: impl Iterator<Item = u64>, ip: &str) -> usize {
        walk_alerts(ids, ip).len()
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

    /// A pseudo-random number generator for decoys (xorshift), so that tests are repeatable.
    fn decoys(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// `walk` with one of `decoy()` after every `every`-th id.
    fn sprinkled(walk: &[u64], every: usize, mut decoy: impl FnMut() -> u64) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, &id) in walk.iter().enumerate() {
            out.push(id);
            if i % every == every - 1 {
                out.push(decoy());
            }
        }
        out
    }

    #[test]
    fn ids_off_the_grid_do_not_hide_a_walk_in_tens() {
        // Every tenth account, shuffled, with one request in five to an id off their grid:
        // 15 or 7 past one of them (the steps' common divisor falls to 5 or 1, so the range
        // counted grew ten times), or a random id below.
        let walk: Vec<u64> = (0..40).map(|i| 700_000 + 10 * ((i * 17) % 40)).collect();
        let mut rnd = decoys(7);
        let mut k = 0;
        let ids = sprinkled(&walk, 4, || {
            k += 1;
            match k % 3 {
                0 => 700_015 + 10 * (rnd() % 38),
                1 => 700_007 + 10 * (rnd() % 38),
                _ => rnd() % 700_000,
            }
        });
        assert!(walked(ids.into_iter(), "198.51.100.70") > 0);
    }

    #[test]
    fn far_ids_do_not_hide_a_dense_walk() {
        // Every account of 1000..=1060 in a shuffled order, with one request in five to a far
        // id (1, 9999999, or anywhere): the range from the lowest to the highest id is sparse.
        let walk: Vec<u64> = (0..61).map(|i| 1000 + (i * 17) % 61).collect();
        let mut rnd = decoys(11);
        let mut k = 0;
        let ids = sprinkled(&walk, 4, || {
            k += 1;
            match k % 3 {
                0 => 1,
                1 => 9_999_999,
                _ => rnd() % 100_000_000,
            }
        });
        let alerts = walk_alerts(ids.into_iter(), "198.51.100.71");
        // The range it names is the walk's, the far ids counted apart.
        let a = alerts.first().expect("enumeration");
        let n = |k: &str| a.evidence[k].as_u64().unwrap();
        assert!(n("min_id") >= 1000 && n("max_id") <= 1060, "{a:?}");
        assert!(n("other_ids") > 0 && a.explanation.contains("other ids not counted"));
    }

    #[test]
    fn ids_between_the_steps_do_not_break_an_in_order_walk() {
        // Accounts one after the other, with a random id after every third (twice in a row
        // now and then): every run of small steps broke, and the range was sparse.
        let walk: Vec<u64> = (0..40).map(|i| 200_000 + i).collect();
        let mut rnd = decoys(3);
        let mut ids = Vec::new();
        for (k, id) in sprinkled(&walk, 3, || rnd() % 10_000_000)
            .into_iter()
            .enumerate()
        {
            ids.push(id);
            // A second decoy after every fifth request that is one.
            if k % 5 == 4 && !(200_000..200_040).contains(&id) {
                ids.push(id ^ 0x5a5a);
            }
        }
        let alerts = walk_alerts(ids.into_iter(), "198.51.100.72");
        let a = alerts.first().expect("enumeration");
        assert!(a.evidence["sequential_run"].as_u64().unwrap() >= 8, "{a:?}");
    }

    /// `k` of the `n` ids `base + step * i`, in an order shuffled by `seed`.
    fn shuffled(seed: u64, base: u64, n: u64, k: usize, step: u64) -> Vec<u64> {
        let mut rnd = decoys(seed);
        let mut ids: Vec<u64> = (0..n).map(|i| base + step * i).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, (rnd() % (i as u64 + 1)) as usize);
        }
        ids.truncate(k);
        ids
    }

    #[test]
    fn a_random_dense_walk_without_decoys_is_caught_as_before() {
        // Random-order walks with no decoys that fill their range to 0.6 or more (the bits
        // set count fewer: ids that share a bit count once), caught by the whole range as
        // before decoys were thought of. The core grows from its first id and leaves out those
        // that came before it reached them: it found none of these dense.
        for (seed, n, k, step) in [
            (40, 200, 120, 1),
            (2, 160, 110, 1),
            (24, 60, 40, 1),
            (1, 100, 60, 10),
        ] {
            let ids = shuffled(seed, 40_000, n, k, step);
            let alerts = walk_alerts(ids.into_iter(), "198.51.100.73");
            let a = alerts
                .first()
                .unwrap_or_else(|| panic!("{k} of {n} ids {step} apart"));
            // It names the whole range, all the ids in it, and its grid.
            let n_ = |k: &str| a.evidence[k].as_u64().unwrap();
            assert_eq!(a.evidence["range"], "all ids", "{a:?}");
            assert!(
                n_("min_id") >= 40_000 && n_("max_id") < 40_000 + step * n,
                "{a:?}"
            );
            assert_eq!((n_("id_step"), n_("other_ids")), (step, 0), "{a:?}");
            assert_eq!(n_("ids_in_range"), n_("distinct_ids"), "{a:?}");
            assert!(a.evidence["density"].as_f64().unwrap() >= 0.5, "{a:?}");
            let named = format!(
                "all {} of them in {}..{}",
                n_("ids_in_range"),
                n_("min_id"),
                n_("max_id")
            );
            assert!(a.explanation.contains(&named), "{}", a.explanation);
        }
    }

    #[test]
    fn a_walk_that_swaps_neighbours_is_a_run() {
        // Ten unrelated ids, then twelve neighbours two by two the wrong way round (1, 0, 3,
        // 2, ...): every step turns back, onto an id not seen before. The whole range is
        // sparse, and a run that must go one way ended at each step.
        let mut rnd = decoys(9);
        let mut ids: Vec<u64> = (0..10).map(|_| 5_000_000 + rnd() % 4_000_000).collect();
        ids.extend((0..12).map(|i| 300_000 + (i ^ 1)));
        let alerts = walk_alerts(ids.into_iter(), "198.51.100.74");
        let a = alerts.first().expect("enumeration");
        assert!(a.evidence["sequential_run"].as_u64().unwrap() >= 8, "{a:?}");
    }

    #[test]
    fn going_back_and_forth_between_two_ids_is_no_run() {
        // A client switching between two neighbouring accounts of its own, after ten others:
        // the steps turn back onto ids it has seen (before decoys were thought of, any step
        // of 1 to 3 made a run, and this was a walk).
        let mut rnd = decoys(13);
        let mut ids: Vec<u64> = (0..10).map(|_| 5_000_000 + rnd() % 4_000_000).collect();
        ids.extend((0..20).map(|i| 300_000 + i % 2));
        assert_eq!(walked(ids.into_iter(), "198.18.0.71"), 0);
    }

    #[test]
    fn a_sparse_set_of_ids_with_a_few_neighbours_is_no_walk() {
        // A client fetching the ids of a transaction list, each a few times over, in any
        // order: distinct, sparse, a few of them neighbours (and a few of them even, or
        // multiples of ten, as ids are).
        let mut rnd = decoys(5);
        let mut ids: Vec<u64> = (0..40).map(|_| 5_000_000 + rnd() % 4_000_000).collect();
        ids.extend([
            6_000_001, 6_000_002, 6_000_004, 7_000_010, 7_000_020, 7_000_030,
        ]);
        ids.extend((0..8).map(|i| 8_000_000 + 1000 * i + rnd() % 10 * 10));
        let n = ids.len();
        let order = (0..3 * n).map(|i| ids[(i * 7 + rnd() as usize % 3) % n]);
        assert_eq!(walked(order, "198.18.0.70"), 0);
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
