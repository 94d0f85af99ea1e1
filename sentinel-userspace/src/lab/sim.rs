//! The evaluation simulator, part one: the world and its benign population. A seed gives the
//! same world every time: the HTTP exchanges on the wire (written as pcap by
//! [`super::pcapgen`]), the ground truth, and the GeoIP rows ([`places`]) for a test database
//! built with `enrich::geo::testdb`.
//!
//! Benign users of the demo banking API have a home city, a device (a mobile app or a web
//! browser, each with its own version), one or two daily sessions at their own hours (login,
//! balance, their own account, transactions, sometimes a transfer, a statement or their cards),
//! make honest mistakes (a wrong password now and then, a forgotten one a few times in a row, an
//! expired token that the server refuses), travel at plausible speeds (a day in transit, the
//! same phone on arrival), switch between home and mobile networks, and some share an office NAT
//! address or use IPv6. A few are business users with long sessions. Anonymous visitors read the
//! public pages. Attack scenarios of every kind are written by [`super::attacks`].
//!
//! Every address is from the documentation and benchmarking ranges: cities own /24s of
//! 198.18.0.0/16 and /48s of 2001:db8::/32, attackers' cities own /24s of 198.19.0.0/16 and /48s
//! of 2001:db8::/32 too; the office NAT is 192.0.2.10 (Riyadh), the reference case's attacker is
//! in 203.0.113.0/24 (Hanoi).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine as _;
use serde::Serialize;

use super::{attacks, pcapgen::Exchange};
use crate::{enrich::geo::testdb::Place, models::AlertKind};

pub use crate::models::rng::Rng;

/// A city of the simulated world.
#[derive(Clone, Copy, Debug)]
pub struct City {
    /// Name.
    pub name: &'static str,
    /// ISO country code.
    pub country: &'static str,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
}

const fn city(name: &'static str, country: &'static str, lat: f64, lon: f64) -> City {
    City {
        name,
        country,
        lat,
        lon,
    }
}

/// Home cities of the benign population: city `c` owns the /24s 198.18.(16c..16c+16).0 and
/// 2001:db8:c::/48.
pub const CITIES: &[City] = &[
    city("Riyadh", "SA", 24.7136, 46.6753),
    city("Jeddah", "SA", 21.4858, 39.1925),
    city("Dammam", "SA", 26.4207, 50.0888),
    city("Dubai", "AE", 25.2048, 55.2708),
    city("Cairo", "EG", 30.0444, 31.2357),
    city("London", "GB", 51.5074, -0.1278),
    city("Paris", "FR", 48.8566, 2.3522),
    city("Berlin", "DE", 52.52, 13.405),
    city("New York", "US", 40.7128, -74.006),
    city("Mumbai", "IN", 19.076, 72.8777),
    city("Singapore", "SG", 1.3521, 103.8198),
    city("Tokyo", "JP", 35.6762, 139.6503),
];

/// /24s of 198.19.0.0/16 each attacker city owns: 10,000 addresses, so that no two scenarios
/// of a seed share an attacker address (six cities use 240 of the 256 /24s).
pub const ATTACKER_BLOCKS: u64 = 40;

/// Attackers' cities: city `a` owns the /24s 198.19.(40a..40a+40).0 ([`ATTACKER_BLOCKS`]) and
/// 2001:db8:100+a::/48. Hanoi also owns 203.0.113.0/24 and Lagos 198.51.100.0/24.
pub const ATTACKER_CITIES: &[City] = &[
    city("Hanoi", "VN", 21.0278, 105.8342),
    city("Lagos", "NG", 6.5244, 3.3792),
    city("Moscow", "RU", 55.7558, 37.6173),
    city("Sao Paulo", "BR", -23.5505, -46.6333),
    city("Jakarta", "ID", -6.2088, 106.8456),
    city("Bogota", "CO", 4.711, -74.0721),
];

/// Hanoi, the reference case's attacker.
pub const HANOI: City = ATTACKER_CITIES[0];
/// Lagos.
pub const LAGOS: City = ATTACKER_CITIES[1];

/// The office NAT address (Riyadh) shared by many users.
pub const OFFICE_NAT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

fn v4_in(base: Ipv4Addr, block: u64, host: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        u32::from(base) + (block as u32) * 256 + host as u32,
    ))
}

/// Who holds the host slots of a city's IPv4 space (16 /24s of 250 hosts: 4000 slots), in
/// disjoint ranges, so that no benign client shares an address with another by accident or with
/// an attacker (the office NAT is shared on purpose): the slot where each role's range starts
/// and how many it has.
pub mod slots {
    /// Users living in the city, in order (home networks).
    pub const HOME: (u64, u64) = (0, 1000);
    /// Their mobile networks.
    pub const MOBILE: (u64, u64) = (1000, 1000);
    /// Users of other cities travelling there (by user index).
    pub const TRAVEL: (u64, u64) = (2000, 1000);
    /// Anonymous readers of the public pages.
    pub const VISITOR: (u64, u64) = (3000, 500);
    /// Attackers inside the city (a script on the owner's city network, a stolen password used
    /// from another benign city).
    pub const ATTACK: (u64, u64) = (3500, 500);
}

/// The `k`-th slot of `role` (one of [`slots`]) in city `c`; `k` wraps within the role's range.
pub fn city_addr(c: usize, role: (u64, u64), k: u64) -> IpAddr {
    let slot = role.0 + k % role.1;
    v4_in(
        Ipv4Addr::new(198, 18, 0, 0),
        (c as u64) * 16 + slot / 250,
        2 + slot % 250,
    )
}

/// The address user `index` has when travelling in city `c`.
pub fn travel_addr(c: usize, index: usize) -> IpAddr {
    city_addr(c, slots::TRAVEL, index as u64)
}

/// The `k`-th IPv6 address of city `c` (its own /64 per `k`, in 2001:db8:c::/48).
pub fn city_addr6(c: usize, k: u64) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0xdb8,
        c as u16,
        (k % 0xffff) as u16,
        0,
        0,
        0,
        2,
    ))
}

/// Addresses Hanoi and Lagos use in their own /24 (203.0.113.0/24, 198.51.100.0/24) before
/// those of 198.19.0.0/16.
pub const OWN_NET_ADDRS: u64 = 240;

/// The /24 of its own that attacker city `a` uses first: 203.0.113.0/24 (Hanoi) and
/// 198.51.100.0/24 (Lagos); the others have none.
fn own_net(a: usize) -> Option<Ipv4Addr> {
    match a {
        0 => Some(Ipv4Addr::new(203, 0, 113, 0)),
        1 => Some(Ipv4Addr::new(198, 51, 100, 0)),
        _ => None,
    }
}

/// The first `k` from which [`attacker_addr`] of city `a` gives each next address in another
/// /24: past the city's own /24, if it has one.
pub fn first_in_separate_nets(a: usize) -> u64 {
    if own_net(a).is_some() {
        OWN_NET_ADDRS
    } else {
        0
    }
}

/// The `k`-th address of attacker city `a`: 203.0.113.0/24 (Hanoi) and 198.51.100.0/24 (Lagos)
/// first, then the city's /24s of 198.19.0.0/16, each next address in the next /24.
pub fn attacker_addr(a: usize, k: u64) -> IpAddr {
    let k = match own_net(a) {
        Some(net) if k < OWN_NET_ADDRS => return v4_in(net, 0, 10 + k),
        Some(_) => k - OWN_NET_ADDRS,
        None => k,
    };
    assert!(
        k < ATTACKER_BLOCKS * 250,
        "attacker city {} ran out of addresses: give the scenarios fewer sources",
        ATTACKER_CITIES[a].name
    );
    // Consecutive addresses fall in different /24s: a scenario's sources are different networks.
    v4_in(
        Ipv4Addr::new(198, 19, 0, 0),
        (a as u64) * ATTACKER_BLOCKS + k % ATTACKER_BLOCKS,
        2 + k / ATTACKER_BLOCKS,
    )
}

/// The `k`-th IPv6 address of attacker city `a`.
pub fn attacker_addr6(a: usize, k: u64) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0xdb8,
        0x100 + a as u16,
        (k % 0xffff) as u16,
        0,
        0,
        0,
        2,
    ))
}

fn place(net: &str, c: &City) -> Place {
    Place {
        net: net.parse().expect("network"),
        country: c.country,
        city: c.name,
        lat: c.lat,
        lon: c.lon,
    }
}

/// The GeoIP rows of the simulated world.
pub fn places() -> Vec<Place> {
    let mut v = Vec::new();
    for (i, c) in CITIES.iter().enumerate() {
        for b in 0..16 {
            v.push(place(&format!("198.18.{}.0/24", i * 16 + b), c));
        }
        v.push(place(&format!("2001:db8:{i:x}::/48"), c));
    }
    for (a, c) in ATTACKER_CITIES.iter().enumerate() {
        for b in 0..ATTACKER_BLOCKS as usize {
            v.push(place(
                &format!("198.19.{}.0/24", a * ATTACKER_BLOCKS as usize + b),
                c,
            ));
        }
        v.push(place(&format!("2001:db8:{:x}::/48", 0x100 + a), c));
    }
    v.push(place("192.0.2.0/24", &CITIES[0]));
    v.push(place("203.0.113.0/24", &HANOI));
    v.push(place("198.51.100.0/24", &LAGOS));
    v
}

/// Great-circle distance between two cities, km.
pub fn distance_km(a: &City, b: &City) -> f64 {
    crate::enrich::geo::distance_km((a.lat, a.lon), (b.lat, b.lon))
}

/// The server every client talks to.
pub fn server() -> SocketAddr {
    "198.18.255.1:8080".parse().expect("addr")
}

/// One labelled attack.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// Id.
    pub id: usize,
    /// The kind a detector should report.
    pub kind: AlertKind,
    /// How this one is done (e.g. `single source`, `distributed`, `alg none`).
    pub variant: String,
    /// Attacking addresses.
    pub sources: Vec<String>,
    /// Principals (display form) the attack acts as or against.
    pub principals: Vec<String>,
    /// Accounts (display form) the attack only tried and failed on, such as the real user
    /// names in a stuffing list: alerts about them while it runs, and up to the window a
    /// detector keeps its failures after, belong to it, but they are not its principals (their
    /// owners' own traffic later is theirs).
    pub tried: Vec<String>,
    /// First request of the attack, preparation (a login, a look around) included: alerts
    /// about its sources and principals from then on belong to it.
    pub first_ns: u64,
    /// First attack request (ns since the epoch): time to the first alert counts from here.
    pub start_ns: u64,
    /// Last attack request.
    pub end_ns: u64,
    /// When each attack request was sent (for injection: the requests carrying a payload).
    pub attempts_ns: Vec<u64>,
}

/// A benign principal of the truth: a user (or an anonymous visitor) and what identifies them.
#[derive(Clone, Debug, Serialize)]
pub struct BenignUser {
    /// Name (`user00042`, `anon-7`).
    pub name: String,
    /// Principals (display form) their requests carry.
    pub principals: Vec<String>,
    /// Addresses they used (the office NAT included for its users).
    pub addrs: Vec<String>,
}

/// The simulated traffic and its truth.
pub struct World {
    /// Exchanges in time order.
    pub exchanges: Vec<Exchange>,
    /// Attacks.
    pub scenarios: Vec<Scenario>,
    /// Benign users and visitors.
    pub benign: Vec<BenignUser>,
}

/// What to simulate.
#[derive(Clone, Debug, Serialize)]
pub struct SimConfig {
    /// Seed.
    pub seed: u64,
    /// Benign users.
    pub users: usize,
    /// Days simulated; attacks happen in the last `attack_days` of them.
    pub days: u64,
    /// Days at the end during which attacks happen.
    pub attack_days: u64,
    /// Scenarios per attack kind.
    pub per_kind: usize,
    /// Start of the simulated time (ns since the epoch).
    pub start_ns: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            users: 2000,
            days: 8,
            attack_days: 3,
            per_kind: 100,
            // 2026-11-01T00:00:00Z
            start_ns: 1_793_491_200_000_000_000,
        }
    }
}

/// Nanoseconds per second.
pub const NS: u64 = 1_000_000_000;
/// Nanoseconds per hour.
pub const HOUR: u64 = 3600 * NS;
/// Nanoseconds per day.
pub const DAY: u64 = 24 * HOUR;

/// One benign session, as the attack scenarios need to know it.
#[derive(Clone, Copy, Debug)]
pub struct Session {
    /// First request.
    pub start_ns: u64,
    /// Last request.
    pub end_ns: u64,
    /// City the user was in.
    pub city: usize,
    /// Requests in it.
    pub requests: u64,
}

/// A benign user of the bank.
#[derive(Clone, Debug)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password.
    pub password: String,
    /// Home city (index into [`CITIES`]).
    pub home: usize,
    /// Where the user is now.
    pub city: usize,
    /// Home address.
    pub addr: IpAddr,
    /// Mobile network address (for mobile users: sometimes used instead of home).
    pub alt: Option<IpAddr>,
    /// User agent.
    pub ua: &'static str,
    /// Session hours (UTC).
    pub hours: Vec<u64>,
    /// Own account number.
    pub account: u64,
    /// A business user: long sessions.
    pub business: bool,
    /// Sessions so far, in time order.
    pub sessions: Vec<Session>,
    /// Requests so far.
    pub requests: u64,
    /// Every address used.
    pub used: Vec<IpAddr>,
    /// The latest token issued and its expiry (seconds).
    pub token: Option<(String, u64)>,
    /// What `/cards` answers them ([`cards_of`]).
    pub cards: String,
}

/// The `/cards` answer of account `account` in the world of `seed`: an active card and a
/// blocked one, masked. Drawn from the account, not per request: a customer's cards do not
/// change from one call to the next.
pub fn cards_of(seed: u64, account: u64) -> String {
    let mut rng = Rng::new(seed ^ account.wrapping_mul(0xca4d_5eed_0000_0001));
    let card = card_number(4, &mut rng);
    format!(
        "{{\"cards\":[{{\"number\":\"{card}\",\"expiry\":\"09/29\",\"status\":\"active\"}},{{\"number\":\"5***********{:04}\",\"status\":\"blocked\"}}]}}",
        rng.below(10_000)
    )
}

/// Mobile app user agents.
pub const APP_UAS: &[&str] = &[
    "BankApp/4.2.1 (iPhone; iOS 18.1)",
    "BankApp/4.2.0 (iPhone; iOS 17.6)",
    "BankApp/4.1.9 (Android 14; Pixel 8)",
    "BankApp/4.2.1 (Android 15; SM-S921B)",
];
/// Browser user agents.
pub const WEB_UAS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0",
];

/// Base64url without padding.
pub fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// A JWT for `sub` (signature bytes are random-looking; `alg = "none"` leaves it empty).
pub fn jwt(alg: &str, sub: &str, iat_s: u64, exp_s: u64, rng: &mut Rng) -> String {
    let head = b64(format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}").as_bytes());
    let body = b64(format!(
        "{{\"sub\":\"{sub}\",\"iss\":\"https://id.bank.test\",\"iat\":{iat_s},\"exp\":{exp_s},\"scope\":\"accounts transfers\"}}"
    )
    .as_bytes());
    let sig = if alg == "none" {
        String::new()
    } else {
        let bytes: Vec<u8> = (0..32).map(|_| rng.below(256) as u8).collect();
        b64(&bytes)
    };
    format!("{head}.{body}.{sig}")
}

/// A request: method, target, user agent, extra headers, and an optional body with its type.
pub fn req(
    method: &str,
    target: &str,
    ua: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut r = format!(
        "{method} {target} HTTP/1.1\r\nHost: bank.test\r\nUser-Agent: {ua}\r\nAccept: application/json\r\n"
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    match body {
        Some((ctype, b)) => r.push_str(&format!(
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => r.push_str("\r\n"),
    }
    r.into_bytes()
}

/// A JSON POST.
pub fn post_json(target: &str, ua: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    req(
        "POST",
        target,
        ua,
        headers,
        Some(("application/json", body)),
    )
}

/// A JSON response.
pub fn resp(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        _ => "Status",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `Authorization: Bearer` with `tok`.
pub fn bearer(tok: &str) -> String {
    format!("Bearer {tok}")
}

/// A Luhn-valid number of `len` digits starting with `prefix` (cards, Saudi national ids).
pub fn luhn_number(prefix: u64, len: usize, rng: &mut Rng) -> String {
    let mut d: Vec<u8> = prefix.to_string().bytes().map(|c| c - b'0').collect();
    while d.len() < len - 1 {
        d.push(rng.below(10) as u8);
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 0 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    d.push(((10 - sum % 10) % 10) as u8);
    d.iter().map(|x| char::from(b'0' + x)).collect()
}

/// A Luhn-valid card number of 16 digits starting with `prefix`.
pub fn card_number(prefix: u64, rng: &mut Rng) -> String {
    luhn_number(prefix, 16, rng)
}

/// A mod-97-valid Saudi IBAN for account `n`.
pub fn iban(n: u64) -> String {
    let bban = format!("80000{n:017}");
    // Move "SA00" to the end: S=28, A=10.
    let s = format!("{bban}281000");
    let rem = s
        .bytes()
        .fold(0u64, |r, c| (r * 10 + u64::from(c - b'0')) % 97);
    format!("SA{:02}{bban}", 98 - rem)
}

/// The exchanges being written, with a fresh client port per exchange.
pub struct Builder {
    /// Latencies come from here.
    pub rng: Rng,
    /// Exchanges so far (any order; sorted at the end).
    pub ex: Vec<Exchange>,
    port: u16,
}

impl Builder {
    /// Empty.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed ^ 0x5eed),
            ex: Vec::new(),
            port: 20000,
        }
    }

    /// One exchange from `ip` at `ts`.
    pub fn push(&mut self, ts: u64, ip: IpAddr, request: Vec<u8>, response: Vec<u8>) {
        self.port = if self.port >= 60999 {
            20000
        } else {
            self.port + 1
        };
        let latency = 2_000_000 + self.rng.below(8_000_000);
        self.ex.push(Exchange {
            ts_ns: ts,
            client: SocketAddr::new(ip, self.port),
            server: server(),
            request,
            response,
            latency_ns: latency,
        });
    }
}

fn txn_list(rng: &mut Rng, account: u64, n: usize) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{\"ref\":\"TX{:012}\",\"date\":\"2026-11-{:02}\",\"amount\":{}.{:02},\"currency\":\"SAR\",\"counterparty\":\"{}\"}}",
                rng.below(1_000_000_000_000),
                1 + i % 28,
                rng.below(5000),
                rng.below(100),
                rng.pick(&["Grocery", "Fuel", "Salary", "Rent", "Pharmacy", "Online shop"])
            )
        })
        .collect();
    format!("{{\"account\":{account},\"items\":[{}]}}", items.join(","))
}

/// A user's history before some time ([`User::history_before`]).
#[derive(Clone, Copy, Debug)]
pub struct History {
    /// Trusted requests in sessions that ended before the time.
    pub requests: u64,
    /// Sessions that ended before the time.
    pub sessions: usize,
    /// When the user's first session started (`None`: they have none).
    pub first_ns: Option<u64>,
}

/// Where a user is at some time ([`User::whereabouts`]).
#[derive(Clone, Copy, Debug)]
pub struct Whereabouts {
    /// The city (index into [`CITIES`]).
    pub city: usize,
    /// The address they use there.
    pub addr: IpAddr,
}

impl User {
    /// Principals this user's requests carry.
    pub fn principals(&self) -> Vec<String> {
        vec![format!("user:{}", self.name), format!("jwt:{}", self.name)]
    }

    /// What the user did before `t`.
    pub fn history_before(&self, t: u64) -> History {
        let before = self.sessions.iter().filter(|s| s.end_ns < t);
        let (requests, sessions) = before.fold((0, 0), |(n, k), s| (n + s.requests, k + 1));
        History {
            requests,
            sessions,
            first_ns: self.sessions.first().map(|s| s.start_ns),
        }
    }

    /// Where the user is at `t` (the city of their last session) and the address they use
    /// there; `index` is the user's position in the population.
    pub fn whereabouts(&self, t: u64, index: usize) -> Whereabouts {
        let city = self.last_session_before(t).map_or(self.home, |s| s.city);
        let addr = if city == self.home {
            self.addr
        } else {
            travel_addr(city, index)
        };
        Whereabouts { city, addr }
    }

    /// The last session that ended before `t`.
    pub fn last_session_before(&self, t: u64) -> Option<Session> {
        self.sessions.iter().rev().find(|s| s.end_ns < t).copied()
    }
}

/// One session of `u` starting at `ts` from `ip`. Returns the last request's
/// time.
fn session(b: &mut Builder, rng: &mut Rng, u: &mut User, ts: u64, ip: IpAddr) -> u64 {
    let ua = u.ua;
    let mut t = ts;
    let mut n = 0u64;
    let gap = |rng: &mut Rng, lo: u64, hi: u64| rng.range(lo, hi) * NS / 10;
    // An app that kept yesterday's token: the server refuses it, the app logs in again.
    if let Some((old, exp)) = u.token.clone()
        && exp < t / NS
        && rng.chance(0.1)
    {
        b.push(
            t,
            ip,
            req(
                "GET",
                "/balance",
                ua,
                &[("Authorization", &bearer(&old))],
                None,
            ),
            resp(401, "{\"error\":\"token expired\"}"),
        );
        t += gap(rng, 5, 20);
        n += 1;
    }
    // Honest mistakes: a mistyped password, rarely a forgotten one.
    let wrong = if rng.chance(0.003) {
        rng.range(2, 4)
    } else if rng.chance(0.03) {
        1
    } else {
        0
    };
    for _ in 0..wrong {
        let body = format!("{{\"username\":\"{}\",\"password\":\"wrong\"}}", u.name);
        b.push(
            t,
            ip,
            req("POST", "/login", ua, &[], Some(("application/json", &body))),
            resp(401, "{\"error\":\"invalid credentials\"}"),
        );
        t += gap(rng, 40, 300);
        n += 1;
    }
    let iat = t / NS;
    let tok = jwt("RS256", &u.name, iat, iat + 3600, rng);
    u.token = Some((tok.clone(), iat + 3600));
    let body = format!(
        "{{\"username\":\"{}\",\"password\":\"{}\"}}",
        u.name, u.password
    );
    b.push(
        t,
        ip,
        req("POST", "/login", ua, &[], Some(("application/json", &body))),
        resp(
            200,
            &format!("{{\"token\":\"{tok}\",\"token_type\":\"Bearer\",\"expires_in\":3600}}"),
        ),
    );
    n += 1;
    let auth = bearer(&tok);
    let h = [("Authorization", auth.as_str())];
    let mut get = |b: &mut Builder, rng: &mut Rng, t: &mut u64, path: &str, body: String| {
        *t += gap(rng, 8, 60);
        b.push(*t, ip, req("GET", path, ua, &h, None), resp(200, &body));
        n += 1;
    };
    let body = format!(
        "{{\"balance\":{}.{:02},\"currency\":\"SAR\"}}",
        rng.below(50_000),
        rng.below(100)
    );
    get(b, rng, &mut t, "/balance", body);
    let acc = format!("/accounts/{}", u.account);
    let body = format!(
        "{{\"id\":{},\"iban\":\"{}\",\"holder\":\"{}\",\"balance\":{}}}",
        u.account,
        iban(u.account),
        u.name,
        rng.below(50_000)
    );
    get(b, rng, &mut t, &acc, body);
    let pages = if u.business {
        rng.range(5, 20)
    } else if rng.chance(0.5) {
        rng.range(1, 3)
    } else {
        0
    };
    for p in 1..=pages {
        let body = txn_list(rng, u.account, 10);
        get(
            b,
            rng,
            &mut t,
            &format!("/accounts/{}/transactions?page={p}", u.account),
            body,
        );
    }
    if ua.starts_with("BankApp") {
        for _ in 0..rng.below(3) {
            get(
                b,
                rng,
                &mut t,
                "/notifications",
                "{\"items\":[{\"text\":\"Your card was used\"}]}".into(),
            );
        }
    }
    if rng.chance(0.1) {
        get(b, rng, &mut t, "/cards", u.cards.clone());
    }
    if rng.chance(if u.business { 0.5 } else { 0.05 }) {
        let size = rng.range(8_000, 40_000) as usize;
        let body = format!("{{\"statement\":\"{}\"}}", "x".repeat(size));
        get(
            b,
            rng,
            &mut t,
            &format!("/accounts/{}/statement?month=2026-10", u.account),
            body,
        );
    }
    let transfers = if u.business {
        rng.range(1, 8)
    } else if rng.chance(0.2) {
        1
    } else {
        0
    };
    for _ in 0..transfers {
        t += gap(rng, 50, 300);
        let body = format!(
            "{{\"to_iban\":\"{}\",\"amount\":{}}}",
            iban(100_000 + rng.below(900_000)),
            rng.range(10, 3000)
        );
        b.push(
            t,
            ip,
            post_json("/transfer", ua, &h, &body),
            resp(200, "{\"status\":\"ok\"}"),
        );
        n += 1;
    }
    u.requests += n;
    t
}

/// Builds the world: the benign population over `days`, then attack scenarios of every kind in
/// the last `attack_days`.
pub fn simulate(cfg: &SimConfig) -> World {
    simulate_with_users(cfg).0
}

/// [`simulate`], with the benign users as generated (their sessions, for the tests).
fn simulate_with_users(cfg: &SimConfig) -> (World, Vec<User>) {
    let mut rng = Rng::new(cfg.seed);
    let mut b = Builder::new(cfg.seed);
    let mut users = Vec::new();
    let mut living = [0u64; CITIES.len()];
    for i in 0..cfg.users {
        let home = rng.below(CITIES.len() as u64) as usize;
        let mobile = rng.chance(0.6);
        living[home] += 1;
        let addr = if home == 0 && rng.chance(0.3) {
            IpAddr::V4(OFFICE_NAT)
        } else if rng.chance(0.1) {
            city_addr6(home, i as u64)
        } else {
            city_addr(home, slots::HOME, living[home])
        };
        users.push(User {
            name: format!("user{i:05}"),
            password: format!("pw-{:x}", rng.next_u64() & 0xffff_ffff),
            home,
            city: home,
            addr,
            alt: mobile.then(|| city_addr(home, slots::MOBILE, rng.below(slots::MOBILE.1))),
            ua: rng.pick::<&str>(if mobile { APP_UAS } else { WEB_UAS }),
            hours: {
                let n = 1 + rng.below(2);
                (0..n).map(|_| 6 + rng.below(16)).collect()
            },
            account: 100_000 + i as u64,
            business: rng.chance(0.05),
            sessions: Vec::new(),
            requests: 0,
            used: Vec::new(),
            token: None,
            cards: cards_of(cfg.seed, 100_000 + i as u64),
        });
    }
    // The reference-case user: logs in from Riyadh twice a day.
    users.push(User {
        name: "layla".into(),
        password: "riyadh-2024".into(),
        home: 0,
        city: 0,
        // The home network's slot 0, which no other Riyadh user gets (they count from 1).
        addr: city_addr(0, slots::HOME, 0),
        alt: None,
        ua: APP_UAS[0],
        hours: vec![5, 17],
        account: 42,
        business: false,
        sessions: Vec::new(),
        requests: 0,
        used: Vec::new(),
        token: None,
        cards: cards_of(cfg.seed, 42),
    });
    // Benign history: sessions at each user's hours; travellers spend a day in transit.
    for day in 0..cfg.days {
        for (ui, u) in users.iter_mut().enumerate() {
            if day > 0 && rng.chance(0.01) {
                // Off to another city (or back home): no session today.
                u.city = if u.city != u.home {
                    u.home
                } else {
                    rng.below(CITIES.len() as u64) as usize
                };
                continue;
            }
            for hi in 0..u.hours.len() {
                let h = u.hours[hi];
                if rng.chance(0.1) {
                    continue; // not every day
                }
                let ts = cfg.start_ns + day * DAY + h * HOUR + rng.below(HOUR);
                let ip = if u.city != u.home {
                    travel_addr(u.city, ui)
                } else if let Some(alt) = u.alt
                    && rng.chance(0.3)
                {
                    alt
                } else {
                    u.addr
                };
                let before = u.requests;
                let end = session(&mut b, &mut rng, u, ts, ip);
                if !u.used.contains(&ip) {
                    u.used.push(ip);
                }
                u.sessions.push(Session {
                    start_ns: ts,
                    end_ns: end,
                    city: u.city,
                    requests: u.requests - before,
                });
            }
        }
    }
    for u in &mut users {
        u.sessions.sort_by_key(|s| s.start_ns);
    }
    let mut benign: Vec<BenignUser> = users
        .iter()
        .map(|u| BenignUser {
            name: u.name.clone(),
            principals: u.principals(),
            addrs: u.used.iter().map(ToString::to_string).collect(),
        })
        .collect();
    // Anonymous visitors of the public pages.
    let visitors = cfg.users / 4;
    for v in 0..visitors {
        let c = rng.below(CITIES.len() as u64) as usize;
        let ip = city_addr(c, slots::VISITOR, v as u64);
        let ua = rng.pick(WEB_UAS);
        let mut t = cfg.start_ns + rng.below(cfg.days * DAY);
        for _ in 0..rng.range(1, 4) {
            let page = match rng.below(3) {
                0 => "/rates".to_owned(),
                1 => format!("/branches?city={}", CITIES[c].name.replace(' ', "+")),
                _ => format!("/news/{}", rng.below(40)),
            };
            b.push(
                t,
                ip,
                req("GET", &page, ua, &[], None),
                resp(200, "{\"items\":[]}"),
            );
            t += rng.range(3, 60) * NS;
        }
        benign.push(BenignUser {
            name: format!("anon-{v}"),
            principals: vec![format!("ip:{ip}")],
            addrs: vec![ip.to_string()],
        });
    }
    let attack_from = cfg.start_ns + cfg.days.saturating_sub(cfg.attack_days) * DAY;
    let attack_to = cfg.start_ns + cfg.days * DAY;
    let scenarios = attacks::generate(
        &mut attacks::Stage {
            b: &mut b,
            rng: &mut rng,
            users: &users,
            from_ns: attack_from,
            to_ns: attack_to,
            next_addr: vec![0; ATTACKER_CITIES.len()],
            next_local: vec![0; CITIES.len()],
            victims: vec![false; users.len()],
        },
        cfg.per_kind,
    );
    b.ex.sort_by_key(|e| e.ts_ns);
    let world = World {
        exchanges: b.ex,
        scenarios,
        benign,
    };
    (world, users)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::exposure::{iban_valid, luhn};

    fn small() -> SimConfig {
        SimConfig {
            users: 60,
            days: 6,
            per_kind: 2,
            ..Default::default()
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_world_and_another_seed_another() {
        let a = simulate(&small());
        let b = simulate(&small());
        assert_eq!(a.exchanges.len(), b.exchanges.len());
        assert_eq!(a.exchanges[10].request, b.exchanges[10].request);
        let c = simulate(&SimConfig { seed: 2, ..small() });
        let digest = |w: &World| {
            w.exchanges
                .iter()
                .fold(0u64, |h, e| h.wrapping_mul(31).wrapping_add(e.ts_ns))
        };
        assert_ne!(digest(&a), digest(&c));
        assert!(a.exchanges.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
    }

    #[test]
    fn every_kind_has_its_scenarios_and_the_reference_case_comes_first() {
        let w = simulate(&small());
        for k in attacks::kinds() {
            assert_eq!(
                w.scenarios.iter().filter(|s| s.kind == k).count(),
                2,
                "{k:?}"
            );
        }
        let bf = w
            .scenarios
            .iter()
            .find(|s| s.kind == AlertKind::BruteForce)
            .unwrap();
        assert_eq!(bf.principals, ["user:layla"]);
        assert_eq!(bf.attempts_ns.len(), 500);
        assert!(bf.end_ns - bf.start_ns <= 180 * NS);
        assert!(bf.sources[0].starts_with("203.0.113."));
        let ip: IpAddr = bf.sources[0].parse().unwrap();
        assert!(
            places()
                .iter()
                .any(|p| p.country == "VN" && p.net.contains(&ip))
        );
    }

    #[test]
    fn behaviour_anomaly_victims_have_the_models_warm_up_behind_them_at_the_hijack() {
        // A short history (attacks from the third day on), so that an account without the
        // warm-up is easy to draw: without the check at the hijack, seed 1 draws one.
        let warmup = crate::models::behavior::Config::default().warmup_windows as usize;
        for seed in 1..=3 {
            let (w, users) = simulate_with_users(&SimConfig {
                seed,
                users: 400,
                days: 4,
                attack_days: 2,
                per_kind: 10,
                ..Default::default()
            });
            let hijacks = w
                .scenarios
                .iter()
                .filter(|s| s.kind == AlertKind::BehaviorAnomaly);
            assert_eq!(hijacks.clone().count(), 10);
            for s in hijacks {
                let u = users
                    .iter()
                    .find(|u| s.principals.contains(&format!("user:{}", u.name)))
                    .unwrap_or_else(|| panic!("no victim among {:?}", s.principals));
                let sessions = u.history_before(s.first_ns).sessions;
                assert!(sessions >= warmup, "seed {seed}, {}: {sessions}", u.name);
            }
        }
    }

    #[test]
    fn addresses_past_the_own_net_are_each_in_another_network() {
        let net = |ip: IpAddr| match ip {
            IpAddr::V4(v) => u32::from(v) >> 8,
            IpAddr::V6(_) => unreachable!(),
        };
        for (a, city) in ATTACKER_CITIES.iter().enumerate() {
            let first = first_in_separate_nets(a);
            assert_eq!(first > 0, own_net(a).is_some(), "{}", city.name);
            let nets: Vec<u32> = (first..first + 20)
                .map(|k| net(attacker_addr(a, k)))
                .collect();
            let mut distinct = nets.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), nets.len(), "{}", city.name);
            if first > 0 {
                // Before it, the city's own /24.
                assert!((0..first).all(|k| net(attacker_addr(a, k)) == net(attacker_addr(a, 0))));
            }
        }
    }

    #[test]
    fn attackers_never_share_an_address_with_a_benign_client() {
        let w = simulate(&SimConfig {
            users: 400,
            per_kind: 10,
            ..Default::default()
        });
        let benign: std::collections::HashSet<&str> = w
            .benign
            .iter()
            .flat_map(|u| u.addrs.iter().map(String::as_str))
            .collect();
        for s in &w.scenarios {
            // The attacks run from the owner's own network on purpose (a script on their
            // machine, a hijacked session at home) are the ones from a benign address.
            if s.variant.contains("owner's") {
                continue;
            }
            for src in &s.sources {
                assert!(!benign.contains(src.as_str()), "{:?} {src}", s.kind);
            }
        }
    }

    #[test]
    fn no_two_scenarios_share_an_attacker_address() {
        // A full seed: the scoring credits an alert to the scenarios that used its address.
        let w = simulate(&SimConfig::default());
        let mut owner = std::collections::HashMap::new();
        for s in &w.scenarios {
            if s.variant.contains("owner's address") || s.variant.contains("owner's network") {
                continue;
            }
            for src in &s.sources {
                if let Some(other) = owner.insert(src.clone(), s.id)
                    && other != s.id
                {
                    panic!("{src}: scenarios {other} and {} ({:?})", s.id, s.kind);
                }
            }
        }
        assert!(owner.len() > 1_000, "{} addresses", owner.len());
    }

    #[test]
    fn a_population_too_small_for_its_scenarios_is_a_clear_error() {
        let r = std::panic::catch_unwind(|| {
            simulate(&SimConfig {
                users: 20,
                per_kind: 10,
                ..Default::default()
            })
        });
        let Err(e) = r else {
            panic!("20 users cannot give 10 scenarios of each kind a victim");
        };
        let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("give more users"), "{msg}");
    }

    #[test]
    fn generated_cards_and_ibans_pass_their_checksums() {
        let mut rng = Rng::new(3);
        for _ in 0..100 {
            let c = card_number(4, &mut rng);
            assert_eq!(c.len(), 16);
            assert!(luhn(c.as_bytes()), "{c}");
        }
        for n in [42, 100_000, 999_999] {
            assert!(iban_valid(iban(n).as_bytes()), "{}", iban(n));
        }
    }

    /// A user's cards are theirs: the same answer on every call, and no two users' cards
    /// alike (a count of the distinct cards a principal receives would otherwise take the
    /// population for thieves); the world stays the same for a seed.
    #[test]
    fn a_users_cards_are_the_same_on_every_call() {
        let cards = |seed: u64| {
            let w = simulate(&SimConfig {
                seed,
                users: 300,
                ..small()
            });
            let mut by_user = std::collections::BTreeMap::<String, Vec<String>>::new();
            for x in &w.exchanges {
                let req = String::from_utf8_lossy(&x.request);
                if !req.starts_with("GET /cards ") {
                    continue;
                }
                let payload = req
                    .split("Bearer ")
                    .nth(1)
                    .and_then(|t| t.split(['.', '\r']).nth(1))
                    .expect("a JWT");
                let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(payload)
                    .unwrap();
                let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
                let resp = String::from_utf8_lossy(&x.response);
                let body = resp.split_once("\r\n\r\n").unwrap().1.to_owned();
                by_user
                    .entry(claims["sub"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(body);
            }
            by_user
        };
        let by_user = cards(1);
        assert!(by_user.values().filter(|b| b.len() > 1).count() >= 10);
        let mut seen = std::collections::HashSet::new();
        for (user, bodies) in &by_user {
            assert!(bodies.iter().all(|b| *b == bodies[0]), "{user}: {bodies:?}");
            assert!(seen.insert(bodies[0].clone()), "{user} has another's cards");
        }
        assert_eq!(cards(1), by_user);
        assert_ne!(cards(2), by_user);
    }

    #[test]
    fn every_address_is_located_and_in_the_allowed_ranges() {
        let p = places();
        let allowed: Vec<ipnet::IpNet> = [
            "198.18.0.0/15",
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "2001:db8::/32",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let w = simulate(&small());
        for e in &w.exchanges {
            let ip = e.client.ip();
            assert!(allowed.iter().any(|n| n.contains(&ip)), "{ip}");
            assert!(p.iter().any(|pl| pl.net.contains(&ip)), "{ip} not located");
        }
        assert!(allowed.iter().any(|n| n.contains(&server().ip())));
    }
}
