//! Behaviour profiles: what each principal normally does, learned from its own trusted traffic.
//!
//! A profile holds the principal's endpoint mix (top 8 endpoint templates by the space-saving
//! algorithm), hour-of-day histogram (UTC), request count per activity window (exponentially
//! weighted mean and variance), request and response sizes (weighted mean and variance of
//! `log2(1 + bytes)`), user-agent families (4 most recent), countries (4 most recent), last
//! location, error ratio and the window being filled. Everything is fixed-size: the profile is
//! [`Profile::BYTES`] bytes plus the display name (about 40 bytes on the heap), and it lives in a
//! [`BoundedMap`] (12 bytes of key and last use per slot, and 5.7 to 11.4 bytes of index per
//! entry).
//!
//! Only *trusted* observations teach a profile: requests carrying the principal's credential that
//! the server took as its holder's (anything but a 401; a 403 refuses the action, not the
//! credential), successful logins, and everything from an address-only principal. A burst of failed
//! logins naming an account says nothing about the account's owner, so it must not move the owner's
//! baseline (it is the credential detector's business).
//!
//! Activity windows: a window opens with the first request after a quiet period and closes
//! `window` later, or after `window_max_requests` requests (so a fast burst is judged at once).
//! A closed window becomes a [`WindowSummary`]: features relative to the principal's baseline,
//! each in `[0, 1]`, which the behaviour model scores.

use std::{cmp::Reverse, collections::BinaryHeap, hash::Hasher, net::IpAddr};

use super::{
    bounded::{BoundedMap, Ewm, Familiar, FastHasher, key_of},
    observation::Observation,
};

/// Feature names of a window summary, in vector order.
pub const FEATURES: [&str; 9] = [
    "rate",
    "new_endpoints",
    "hour_rarity",
    "request_size",
    "response_size",
    "new_user_agent",
    "new_country",
    "error_ratio",
    "distinct_endpoints",
];

/// Number of features.
pub const DIMS: usize = FEATURES.len();

/// Index of the country feature (geography is reported by the geo models; behaviour counts it
/// as context, not as a moved feature).
pub const COUNTRY_FEATURE: usize = 6;
/// Index of the distinct-endpoints feature: an absolute spread (a usual session already visits
/// four endpoints), context for the trees, never a moved feature on its own.
pub const SPREAD_FEATURE: usize = 8;

/// Settings of the profile store (part of `[models.behavior]`).
#[derive(Clone, Copy, Debug)]
pub struct ProfileSettings {
    /// Activity window length, ns.
    pub window_ns: u64,
    /// Requests that close a window early.
    pub window_max_requests: u16,
    /// Weight of a new sample in the weighted means.
    pub alpha: f64,
}

/// The family of a user agent: its text without digits and dots, hashed, so that a browser or
/// app update (`Chrome/130.0` -> `Chrome/131.0`) is not a new device.
pub fn ua_family(ua: Option<&str>) -> u32 {
    let Some(ua) = ua else { return 0 };
    let mut h = FastHasher::default();
    for b in ua.bytes() {
        if !b.is_ascii_digit() && b != b'.' && b != b'_' {
            h.write_u8(b);
        }
    }
    h.finish() as u32 | 1
}

/// Two-letter country code as bytes.
pub fn cc(country: Option<&str>) -> Option<[u8; 2]> {
    let b = country?.as_bytes();
    (b.len() == 2).then(|| [b[0], b[1]])
}

/// Country bytes back to text.
pub fn cc_str(c: [u8; 2]) -> String {
    String::from_utf8_lossy(&c).into_owned()
}

/// The window being filled.
#[derive(Clone, Copy, Debug, Default)]
pub struct WindowAcc {
    /// Start (0: no open window).
    pub start_ns: u64,
    /// Requests.
    pub count: u16,
    /// Requests to endpoints outside the profile's mix.
    pub new_endpoints: u16,
    /// 4xx/5xx responses.
    pub errors: u16,
    /// Distinct endpoints (16-bit bitmap of endpoint hashes).
    pub endpoints: u16,
    /// Sum of hour rarity.
    pub hour_rarity: f32,
    /// Sum of request size deviations (|z|).
    pub req_dev: f32,
    /// Sum of response size deviations (|z|).
    pub resp_dev: f32,
    /// Sum of log2 request sizes.
    pub req_log: f32,
    /// Sum of log2 response sizes.
    pub resp_log: f32,
    /// A user-agent family the profile did not know.
    pub new_ua: bool,
    /// A country the profile did not know.
    pub new_country: bool,
    /// Endpoints of this window and their counts, merged into the mix when it closes (so that
    /// a burst on a new endpoint stays new for the whole window).
    pub endpoint_counts: [(u32, u16); 4],
}

/// One principal's profile.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Display name (`user:layla`).
    pub name: Box<str>,
    /// Last client address.
    pub last_ip: IpAddr,
    /// Last endpoint (hash).
    pub last_endpoint: u32,
    /// First trusted observation.
    pub first_ns: u64,
    /// Last trusted observation.
    pub last_ns: u64,
    /// Trusted requests.
    pub requests: u32,
    /// Closed activity windows.
    pub windows: u32,
    /// Requests per UTC hour of day (of closed windows).
    pub hours: [u16; 24],
    /// Top endpoints (hashes) and their counts.
    pub endpoints: [u32; 8],
    /// Counts of `endpoints`.
    pub endpoint_counts: [u16; 8],
    /// User-agent families: the first one seen, then the three most recently seen others.
    pub uas: Familiar<u32, 4>,
    /// Countries: the first one seen, then the three most recently seen others.
    pub countries: Familiar<[u8; 2], 4>,
    /// Last coordinates (lat, lon) and when; `loc_ns == 0`: none.
    pub loc: (f32, f32),
    /// When `loc` was seen.
    pub loc_ns: u64,
    /// Country of `loc`.
    pub loc_country: [u8; 2],
    /// Requests per window.
    pub rate: Ewm,
    /// log2(1 + request bytes).
    pub req_size: Ewm,
    /// log2(1 + response bytes).
    pub resp_size: Ewm,
    /// Error ratio per window.
    pub err: Ewm,
    /// The open window.
    pub win: WindowAcc,
}

impl Profile {
    /// Bytes of one profile (without the name's heap part).
    pub const BYTES: usize = size_of::<Profile>();

    fn new(name: &str, ip: IpAddr, now_ns: u64) -> Self {
        Self {
            name: name.into(),
            last_ip: ip,
            last_endpoint: 0,
            first_ns: now_ns,
            last_ns: now_ns,
            requests: 0,
            windows: 0,
            hours: [0; 24],
            endpoints: [0; 8],
            endpoint_counts: [0; 8],
            uas: Familiar::default(),
            countries: Familiar::default(),
            loc: (0.0, 0.0),
            loc_ns: 0,
            loc_country: [0; 2],
            rate: Ewm::default(),
            req_size: Ewm::default(),
            resp_size: Ewm::default(),
            err: Ewm::default(),
            win: WindowAcc::default(),
        }
    }

    /// True when the profile knows `country`.
    pub fn knows_country(&self, c: [u8; 2]) -> bool {
        self.countries.contains(c)
    }

    /// Known countries (for explanations).
    pub fn country_list(&self) -> Vec<String> {
        self.countries.iter().map(cc_str).collect()
    }

    /// When the profile last saw any country it knows (0: never; to the second).
    pub fn last_country_ns(&self) -> u64 {
        self.countries.last_seen_ns()
    }

    /// True when the endpoint hash is in the profile's mix.
    pub fn knows_endpoint(&self, ep: u32) -> bool {
        self.endpoints
            .iter()
            .zip(self.endpoint_counts)
            .any(|(e, c)| *e == ep && c > 0)
    }

    /// Share of requests at `hour` with add-one smoothing.
    pub fn hour_share(&self, hour: usize) -> f64 {
        let total: u32 = self.hours.iter().map(|h| u32::from(*h)).sum();
        (f64::from(self.hours[hour % 24]) + 0.1) / (f64::from(total) + 2.4)
    }

    fn add_endpoint(&mut self, ep: u32, n: u16) {
        if let Some(i) = self.endpoints.iter().position(|e| *e == ep) {
            self.endpoint_counts[i] = self.endpoint_counts[i].saturating_add(n);
            return;
        }
        // Space-saving: replace the least counted, inheriting its count.
        let (i, _) = self
            .endpoint_counts
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| **c)
            .expect("eight slots");
        self.endpoints[i] = ep;
        self.endpoint_counts[i] = self.endpoint_counts[i].saturating_add(n);
    }
}

/// A closed activity window, judged against the profile as it was.
#[derive(Clone, Debug)]
pub struct WindowSummary {
    /// Principal key.
    pub key: u64,
    /// Features in `[0, 1]`, see [`FEATURES`].
    pub features: [f64; DIMS],
    /// Requests in the window.
    pub count: u16,
    /// The principal's usual requests per window.
    pub baseline_count: f64,
    /// Windows the principal had before this one.
    pub history_windows: u32,
    /// Trusted requests the principal had before this one.
    pub history_requests: u32,
    /// Age of the profile at the window's start, ns.
    pub age_ns: u64,
    /// Requests to endpoints outside the usual mix.
    pub new_endpoints: u16,
    /// Mean request size in the window vs the usual (bytes).
    pub req_bytes: (f64, f64),
    /// Mean response size in the window vs the usual (bytes).
    pub resp_bytes: (f64, f64),
    /// When the window started.
    pub start_ns: u64,
}

/// The profile store.
pub struct Profiles {
    map: BoundedMap<Profile>,
    settings: ProfileSettings,
    /// When each open window falls due (due time, profile key), earliest first: a window of a
    /// principal gone quiet is closed by [`Profiles::sweep`] from here, without visiting the
    /// profiles whose windows are not due. An entry whose window was closed otherwise (by the
    /// principal's next request, by its request count, or with the profile) is dropped when it
    /// comes up, so the queue holds at most the windows opened in the last window length.
    due: BinaryHeap<Reverse<(u64, u64)>>,
}

fn hour_of(ts_ns: u64) -> usize {
    ((ts_ns / 1_000_000_000 / 3600) % 24) as usize
}

fn log_size(b: u64) -> f64 {
    (1.0 + b as f64).log2()
}

impl Profiles {
    /// A store of at most `cap` profiles, each dropped after `idle_ns` without traffic.
    pub fn new(cap: usize, idle_ns: u64, settings: ProfileSettings) -> Self {
        Self {
            map: BoundedMap::new(cap, idle_ns),
            settings,
            due: BinaryHeap::new(),
        }
    }

    /// The profile of `key`.
    pub fn get(&self, key: u64) -> Option<&Profile> {
        self.map.get(key)
    }

    /// Profiles held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes held (map, profiles and names).
    pub fn memory_bytes(&self) -> usize {
        self.map.memory_bytes()
            + self.map.iter().map(|(_, p)| p.name.len()).sum::<usize>()
            + self.due.capacity() * size_of::<Reverse<(u64, u64)>>()
    }

    /// Evictions (full, idle).
    pub fn evictions(&self) -> (u64, u64) {
        (self.map.evicted, self.map.expired)
    }

    /// Before absorbing an observation at `now_ns`: closes the principal's window when it is
    /// over (time or request count) and returns its summary.
    pub fn close_if_due(&mut self, key: u64, now_ns: u64) -> Option<WindowSummary> {
        let s = self.settings;
        let p = self.map.get_mut(key)?;
        let w = &p.win;
        let due =
            w.count > 0 && (now_ns >= w.start_ns + s.window_ns || w.count >= s.window_max_requests);
        due.then(|| close(key, p, s.alpha))
    }

    /// When the earliest open window falls due (or a closed one would have: the queue is
    /// lazy), if any.
    pub fn next_due_ns(&self) -> Option<u64> {
        self.due.peek().map(|&Reverse((due, _))| due)
    }

    /// Closes the windows that fell due by `now_ns` without a new observation (in due order),
    /// and forgets idle profiles (at most `budget` visited per call, paced by stream time).
    pub fn sweep(&mut self, now_ns: u64, budget: usize, out: &mut Vec<(WindowSummary, Profile)>) {
        let s = self.settings;
        while let Some(&Reverse((due, key))) = self.due.peek() {
            if due > now_ns {
                break;
            }
            self.due.pop();
            if let Some(p) = self.map.get_mut(key)
                && p.win.count > 0
                && now_ns >= p.win.start_ns + s.window_ns
            {
                let snapshot = p.clone();
                out.push((close(key, p, s.alpha), snapshot));
            }
        }
        self.map.sweep(now_ns, budget);
    }

    /// Teaches the principal's profile one trusted observation, whose user-agent family
    /// ([`ua_family`]) the caller has already worked out.
    pub fn absorb(&mut self, key: u64, name: &dyn Fn() -> String, o: &Observation, ua: u32) {
        let now = o.ts_ns;
        let s = self.settings;
        let p = self
            .map
            .entry(key, now, || Profile::new(&name(), o.client_ip, now));
        p.last_ns = p.last_ns.max(now);
        p.last_ip = o.client_ip;
        p.requests = p.requests.saturating_add(1);
        let ep = key_of(o.endpoint.as_str()) as u32;
        p.last_endpoint = ep;
        let hour = hour_of(now);
        if p.win.count == 0 {
            p.win = WindowAcc {
                start_ns: now,
                ..WindowAcc::default()
            };
            self.due
                .push(Reverse((now.saturating_add(s.window_ns), key)));
        }
        let established = p.requests > 1;
        let mut w = p.win;
        w.count = w.count.saturating_add(1);
        if established && !p.knows_endpoint(ep) {
            w.new_endpoints += 1;
        }
        w.endpoints |= 1 << (ep % 16);
        if o.status >= 400 {
            w.errors += 1;
        }
        // Rarity 1/(1 + 12 share): a never-used hour is about 1, an hour with half the traffic 0.14.
        w.hour_rarity += (1.0 / (1.0 + 12.0 * p.hour_share(hour))) as f32;
        let (rq, rs) = (log_size(o.req_bytes), log_size(o.resp_bytes));
        let z = |e: &Ewm, x: f64| {
            if e.n < 3 {
                0.0
            } else {
                (x - f64::from(e.mean)).abs() / e.std().max(0.75)
            }
        };
        w.req_dev += z(&p.req_size, rq) as f32;
        w.resp_dev += z(&p.resp_size, rs) as f32;
        w.req_log += rq as f32;
        w.resp_log += rs as f32;
        if established && ua != 0 && !p.uas.contains(ua) {
            w.new_ua = true;
        }
        let country = cc(o.geo.as_ref().and_then(|g| g.country.as_deref()));
        if let Some(c) = country {
            if established && !p.knows_country(c) && p.last_country_ns() > 0 {
                w.new_country = true;
            }
            p.countries.see(c, now);
        }
        p.win = w;
        if let Some((lat, lon)) = o.geo.as_ref().and_then(|g| g.coordinates()) {
            p.loc = (lat as f32, lon as f32);
            p.loc_ns = now;
            p.loc_country = country.unwrap_or([0; 2]);
        }
        if ua != 0 {
            p.uas.see(ua, now);
        }
        p.req_size.add(rq, s.alpha);
        p.resp_size.add(rs, s.alpha);
        if let Some(slot) = p
            .win
            .endpoint_counts
            .iter_mut()
            .find(|(e, c)| *e == ep && *c > 0)
        {
            slot.1 = slot.1.saturating_add(1);
        } else if let Some(slot) = p.win.endpoint_counts.iter_mut().find(|(_, c)| *c == 0) {
            *slot = (ep, 1);
        } else {
            p.add_endpoint(ep, 1);
        }
    }
}

fn close(key: u64, p: &mut Profile, alpha: f64) -> WindowSummary {
    let w = p.win;
    let n = f64::from(w.count.max(1));
    let baseline_count = if p.rate.n == 0 {
        n
    } else {
        f64::from(p.rate.mean).max(1.0)
    };
    let ratio = n / baseline_count;
    let features = [
        ((1.0 + ratio).log2() / 5.0).min(1.0),
        f64::from(w.new_endpoints) / n,
        f64::from(w.hour_rarity) / n,
        (f64::from(w.req_dev) / n / 6.0).min(1.0),
        (f64::from(w.resp_dev) / n / 6.0).min(1.0),
        f64::from(u8::from(w.new_ua)),
        f64::from(u8::from(w.new_country)),
        f64::from(w.errors) / n,
        (f64::from(w.endpoints.count_ones()) / 8.0).min(1.0),
    ];
    let summary = WindowSummary {
        key,
        features,
        count: w.count,
        baseline_count,
        history_windows: p.windows,
        history_requests: p.requests.saturating_sub(u32::from(w.count)),
        age_ns: w.start_ns.saturating_sub(p.first_ns),
        new_endpoints: w.new_endpoints,
        req_bytes: (
            f64::from(w.req_log / n as f32).exp2() - 1.0,
            f64::from(p.req_size.mean).exp2() - 1.0,
        ),
        resp_bytes: (
            f64::from(w.resp_log / n as f32).exp2() - 1.0,
            f64::from(p.resp_size.mean).exp2() - 1.0,
        ),
        start_ns: w.start_ns,
    };
    // Hours and endpoints are learned when the window closes, so a burst stays unusual for the
    // whole window.
    let hour = hour_of(w.start_ns);
    if u32::from(p.hours[hour]) + u32::from(w.count) > u32::from(u16::MAX) {
        p.hours.iter_mut().for_each(|h| *h /= 2);
    }
    p.hours[hour] = p.hours[hour].saturating_add(w.count);
    for (ep, c) in w.endpoint_counts {
        if c > 0 {
            p.add_endpoint(ep, c);
        }
    }
    p.rate.add(n, alpha);
    p.err.add(f64::from(w.errors) / n, alpha);
    p.windows = p.windows.saturating_add(1);
    p.win = WindowAcc::default();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::synth::obs;

    fn settings() -> ProfileSettings {
        ProfileSettings {
            window_ns: 300 * 1_000_000_000,
            window_max_requests: 30,
            alpha: 0.1,
        }
    }

    #[test]
    fn quiet_windows_close_when_due_once() {
        const S: u64 = 1_000_000_000;
        let mut ps = Profiles::new(10, u64::MAX, settings());
        let name = || "user:layla".to_string();
        let mut out = Vec::new();
        // Key 1 goes quiet after two requests; key 2 keeps going and its window is closed by
        // its own next request; key 3 fills its window by count (30) and opens another.
        ps.absorb(1, &name, &obs(10 * S, "192.0.2.5", "/balance"), 0);
        ps.absorb(1, &name, &obs(20 * S, "192.0.2.5", "/balance"), 0);
        ps.absorb(2, &name, &obs(15 * S, "192.0.2.6", "/balance"), 0);
        for i in 0..31 {
            let t = 12 * S + i * S / 10;
            if let Some(s) = ps.close_if_due(3, t) {
                assert_eq!(s.count, 30);
            }
            ps.absorb(3, &name, &obs(t, "192.0.2.7", "/balance"), 0);
        }
        assert!(
            ps.close_if_due(2, 400 * S).is_some(),
            "closed by its next request"
        );
        ps.absorb(2, &name, &obs(400 * S, "192.0.2.6", "/balance"), 0);
        ps.sweep(309 * S, usize::MAX, &mut out);
        assert!(out.is_empty(), "nothing due before 310 s");
        ps.sweep(312 * S, usize::MAX, &mut out);
        let closed: Vec<(u32, u16)> = out.iter().map(|(s, p)| (p.requests, s.count)).collect();
        // Key 1 (due at 310) and key 3's second window (one request, due at 315) are not
        // both due yet: only key 1 is.
        assert_eq!(closed, [(2, 2)]);
        out.clear();
        ps.sweep(700 * S, usize::MAX, &mut out);
        let closed: Vec<(u32, u16)> = out.iter().map(|(s, p)| (p.requests, s.count)).collect();
        // Both due by 700 and closed once each, in due order: key 2's window opened at 400
        // (through its first window's entry, which comes up first, at 315 with key 2 < 3),
        // then key 3's second window; the entries left close nothing.
        assert_eq!(closed, [(2, 1), (31, 1)]);
        out.clear();
        ps.sweep(2_000 * S, usize::MAX, &mut out);
        assert!(out.is_empty() && ps.due.is_empty());
    }

    #[test]
    fn profiles_learn_and_windows_summarise_against_the_past() {
        let mut ps = Profiles::new(10, u64::MAX, settings());
        let key = 7;
        let name = || "user:layla".to_string();
        let day = 86_400 * 1_000_000_000u64;
        let mut t = day;
        for d in 0..5 {
            for k in 0..4 {
                t = day * (d + 1) + 8 * 3600 * 1_000_000_000 + k * 2_000_000_000;
                assert!(ps.close_if_due(key, t).is_none() || k == 0);
                let o = obs(t, "192.0.2.5", "/balance");
                ps.absorb(key, &name, &o, ua_family(o.user_agent.as_deref()));
            }
        }
        let p = ps.get(key).unwrap();
        assert_eq!(p.requests, 20);
        assert_eq!(p.windows, 4);
        assert!(p.knows_country(*b"SA"));
        assert!((f64::from(p.rate.mean) - 4.0).abs() < 1e-3);
        // A burst at 3am from a new address in another country, on new endpoints.
        let t0 = t + day - 5 * 3600 * 1_000_000_000;
        ps.close_if_due(key, t0);
        for i in 0..30 {
            let mut o = obs(t0 + i * 100_000_000, "203.0.113.9", &format!("/export/{i}"));
            o.endpoint = "/export/{id}".into();
            o.user_agent = Some("python-requests/2.31".into());
            ps.absorb(key, &name, &o, ua_family(o.user_agent.as_deref()));
        }
        let s = ps
            .close_if_due(key, t0 + 4_000_000_000)
            .expect("closed by count");
        assert_eq!(s.count, 30);
        assert!(s.features[0] > 0.5, "{:?}", s.features);
        assert!(s.features[1] > 0.9);
        assert!(s.features[2] > 0.9);
        assert_eq!(s.features[5], 1.0);
        assert_eq!(s.features[6], 1.0);
    }

    #[test]
    fn ua_families_ignore_versions() {
        assert_eq!(
            ua_family(Some("Mozilla/5.0 Chrome/130.0.1 Safari/537.36")),
            ua_family(Some("Mozilla/5.0 Chrome/131.0.7 Safari/537.36"))
        );
        assert_ne!(ua_family(Some("curl/8.4")), ua_family(Some("BankApp/4.2")));
        assert_eq!(ua_family(None), 0);
    }
}
