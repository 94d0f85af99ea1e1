//! The evaluation simulator: a population of benign users of the demo banking API and attack
//! scenarios of every kind, as HTTP exchanges on the wire plus the ground truth, reproducible
//! from a seed.
//!
//! Benign users have a home city, a device (mobile app or web browser), one or two daily
//! sessions at their own hours (login, balance, own accounts, sometimes a transfer), make honest
//! mistakes (a wrong password now and then), travel at plausible speeds, and some share an office
//! NAT address. Attackers come from their own networks. Attack scenarios so far: brute force
//! (the reference case first), credential stuffing, SQL injection, XSS, path traversal and
//! enumeration; the other kinds are still to be written. Every address is from the documentation
//! and benchmarking ranges, and a GeoIP database over them is built with `enrich::geo::testdb`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;

use super::pcapgen::Exchange;
use crate::{enrich::geo::testdb::Place, models::AlertKind};

/// A deterministic PRNG (SplitMix64): the same seed gives the same world.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// From a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

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

/// Home cities of the benign population: each owns 16 /24s of 198.18.0.0/15.
pub const CITIES: &[City] = &[
    City {
        name: "Riyadh",
        country: "SA",
        lat: 24.7136,
        lon: 46.6753,
    },
    City {
        name: "Jeddah",
        country: "SA",
        lat: 21.4858,
        lon: 39.1925,
    },
    City {
        name: "Dammam",
        country: "SA",
        lat: 26.4207,
        lon: 50.0888,
    },
    City {
        name: "Dubai",
        country: "AE",
        lat: 25.2048,
        lon: 55.2708,
    },
    City {
        name: "Cairo",
        country: "EG",
        lat: 30.0444,
        lon: 31.2357,
    },
    City {
        name: "London",
        country: "GB",
        lat: 51.5074,
        lon: -0.1278,
    },
    City {
        name: "Paris",
        country: "FR",
        lat: 48.8566,
        lon: 2.3522,
    },
    City {
        name: "Berlin",
        country: "DE",
        lat: 52.52,
        lon: 13.405,
    },
    City {
        name: "New York",
        country: "US",
        lat: 40.7128,
        lon: -74.006,
    },
    City {
        name: "Mumbai",
        country: "IN",
        lat: 19.076,
        lon: 72.8777,
    },
    City {
        name: "Singapore",
        country: "SG",
        lat: 1.3521,
        lon: 103.8198,
    },
    City {
        name: "Tokyo",
        country: "JP",
        lat: 35.6762,
        lon: 139.6503,
    },
];

/// Attackers' networks: Hanoi (203.0.113.0/24, the reference case), Lagos (198.51.100.0/24).
pub const HANOI: City = City {
    name: "Hanoi",
    country: "VN",
    lat: 21.0278,
    lon: 105.8342,
};
/// Lagos.
pub const LAGOS: City = City {
    name: "Lagos",
    country: "NG",
    lat: 6.5244,
    lon: 3.3792,
};
/// The office NAT address (Riyadh) shared by many users.
pub const OFFICE_NAT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

/// The `k`-th address of city `c` (spread over its 16 /24s).
pub fn city_addr(c: usize, k: u64) -> IpAddr {
    let block = (c as u64) * 16 + (k / 250) % 16;
    let host = 2 + (k % 250);
    let n = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (block as u32) * 256 + host as u32;
    IpAddr::V4(Ipv4Addr::from(n))
}

/// The GeoIP rows of the simulated world.
pub fn places() -> Vec<Place> {
    let mut v = Vec::new();
    for (i, c) in CITIES.iter().enumerate() {
        for b in 0..16u32 {
            let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + ((i as u32) * 16 + b) * 256;
            v.push(Place {
                net: ipnet::IpNet::new(IpAddr::V4(Ipv4Addr::from(base)), 24).expect("/24"),
                country: c.country,
                city: c.name,
                lat: c.lat,
                lon: c.lon,
            });
        }
    }
    let riyadh = CITIES[0];
    v.push(Place {
        net: "192.0.2.0/24".parse().expect("net"),
        country: riyadh.country,
        city: riyadh.name,
        lat: riyadh.lat,
        lon: riyadh.lon,
    });
    v.push(Place {
        net: "203.0.113.0/24".parse().expect("net"),
        country: HANOI.country,
        city: HANOI.name,
        lat: HANOI.lat,
        lon: HANOI.lon,
    });
    v.push(Place {
        net: "198.51.100.0/24".parse().expect("net"),
        country: LAGOS.country,
        city: LAGOS.name,
        lat: LAGOS.lat,
        lon: LAGOS.lon,
    });
    v
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
    /// Attacking address.
    pub src_ip: String,
    /// Principal involved (display form), when the attack is tied to one.
    pub principal: Option<String>,
    /// First attack request (ns since the epoch).
    pub start_ns: u64,
    /// Last attack request.
    pub end_ns: u64,
    /// Attack requests.
    pub requests: usize,
}

/// The simulated traffic and its truth.
pub struct World {
    /// Exchanges in time order.
    pub exchanges: Vec<Exchange>,
    /// Attacks.
    pub scenarios: Vec<Scenario>,
    /// Benign principals (display form) and addresses.
    pub benign_principals: Vec<String>,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed.
    pub seed: u64,
    /// Benign users.
    pub users: usize,
    /// Days of benign history before the attacks.
    pub days: u64,
    /// Scenarios per attack kind.
    pub per_kind: usize,
    /// Start of the simulated time (ns since the epoch).
    pub start_ns: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            users: 500,
            days: 3,
            per_kind: 5,
            // 2026-11-01T00:00:00Z
            start_ns: 1_793_491_200_000_000_000,
        }
    }
}

const NS: u64 = 1_000_000_000;
const HOUR: u64 = 3600 * NS;
const DAY: u64 = 24 * HOUR;

struct User {
    name: String,
    password: String,
    city: usize,
    addr: IpAddr,
    mobile: bool,
    hours: Vec<u64>,
    account: u64,
}

const WEB_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36";
const APP_UA: &str = "BankApp/4.2.1 (iPhone; iOS 18.1)";

fn req(method: &str, target: &str, ua: &str, token: Option<&str>, body: Option<&str>) -> Vec<u8> {
    let mut r = format!(
        "{method} {target} HTTP/1.1\r\nHost: bank.test\r\nUser-Agent: {ua}\r\nAccept: application/json\r\n"
    );
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    match body {
        Some(b) => r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => r.push_str("\r\n"),
    }
    r.into_bytes()
}

fn resp(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Status",
    };
    format!("HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

fn token_of(user: &str, n: u64) -> String {
    format!("tok-{user}-{n:x}")
}

struct Builder {
    rng: Rng,
    ex: Vec<Exchange>,
    port: u16,
}

impl Builder {
    fn push(&mut self, ts: u64, ip: IpAddr, request: Vec<u8>, response: Vec<u8>) {
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

/// Builds the world.
pub fn simulate(cfg: &SimConfig) -> World {
    let mut rng = Rng::new(cfg.seed);
    let mut users = Vec::new();
    for i in 0..cfg.users {
        let city = rng.below(CITIES.len() as u64) as usize;
        let nat = city == 0 && rng.chance(0.3);
        users.push(User {
            name: format!("user{i:05}"),
            password: format!("pw-{:x}", rng.next_u64() & 0xffff_ffff),
            city,
            addr: if nat {
                IpAddr::V4(OFFICE_NAT)
            } else {
                city_addr(city, i as u64)
            },
            mobile: rng.chance(0.6),
            hours: {
                let n = 1 + rng.below(2);
                (0..n).map(|_| 7 + rng.below(15)).collect()
            },
            account: 100_000 + i as u64,
        });
    }
    // The reference-case user: logs in from Riyadh twice a day.
    users.push(User {
        name: "layla".into(),
        password: "riyadh-2024".into(),
        city: 0,
        addr: city_addr(0, 4242),
        mobile: true,
        hours: vec![8, 20],
        account: 42,
    });
    let mut b = Builder {
        rng: rng.clone(),
        ex: Vec::new(),
        port: 20000,
    };
    let benign_principals: Vec<String> = users.iter().map(|u| format!("user:{}", u.name)).collect();
    // Benign history.
    for day in 0..cfg.days + 1 {
        for (ui, u) in users.iter_mut().enumerate() {
            // Plausible travel: a few users move to another city, with more than a day between.
            if day > 0 && rng.chance(0.01) {
                u.city = rng.below(CITIES.len() as u64) as usize;
                u.addr = city_addr(u.city, ui as u64 + 7);
            }
            for &h in &u.hours {
                let ts = cfg.start_ns + day * DAY + h * HOUR + rng.below(HOUR);
                let ua = if u.mobile { APP_UA } else { WEB_UA };
                let mut t = ts;
                if rng.chance(0.03) {
                    let body = format!("{{\"username\":\"{}\",\"password\":\"wrong\"}}", u.name);
                    b.push(
                        t,
                        u.addr,
                        req("POST", "/login", ua, None, Some(&body)),
                        resp(401, "{\"error\":\"invalid credentials\"}"),
                    );
                    t += 5 * NS + rng.below(10 * NS);
                }
                let tok = token_of(&u.name, day * 10 + h);
                let body = format!(
                    "{{\"username\":\"{}\",\"password\":\"{}\"}}",
                    u.name, u.password
                );
                b.push(
                    t,
                    u.addr,
                    req("POST", "/login", ua, None, Some(&body)),
                    resp(200, &format!("{{\"token\":\"{tok}\"}}")),
                );
                t += NS + rng.below(3 * NS);
                b.push(
                    t,
                    u.addr,
                    req("GET", "/balance", ua, Some(&tok), None),
                    resp(200, "{\"balance\":1200,\"currency\":\"SAR\"}"),
                );
                t += NS + rng.below(5 * NS);
                let acc = format!("/accounts/{}", u.account);
                b.push(
                    t,
                    u.addr,
                    req("GET", &acc, ua, Some(&tok), None),
                    resp(
                        200,
                        &format!(
                            "{{\"id\":{},\"iban\":\"SA03...\",\"balance\":1200}}",
                            u.account
                        ),
                    ),
                );
                if rng.chance(0.2) {
                    t += 5 * NS + rng.below(20 * NS);
                    b.push(
                        t,
                        u.addr,
                        req(
                            "POST",
                            "/transfer",
                            ua,
                            Some(&tok),
                            Some("{\"to\":\"bob\",\"amount\":50}"),
                        ),
                        resp(200, "{\"status\":\"ok\"}"),
                    );
                }
            }
        }
    }
    let attack_start = cfg.start_ns + cfg.days * DAY + 23 * HOUR;
    let mut scenarios = Vec::new();
    let mut sid = 0;
    let mut at = attack_start;
    for k in 0..cfg.per_kind {
        // The reference case first: 500 login attempts in 3 minutes from Hanoi on layla.
        let victim = if k == 0 {
            users.len() - 1
        } else {
            rng.below(cfg.users as u64) as usize
        };
        let attacker = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10 + k as u8));
        let start = at;
        let n = 500;
        for i in 0..n {
            let body = format!(
                "{{\"username\":\"{}\",\"password\":\"guess{i}\"}}",
                users[victim].name
            );
            b.push(
                start + i * (180 * NS / n),
                attacker,
                req("POST", "/login", "python-requests/2.31", None, Some(&body)),
                resp(401, "{\"error\":\"invalid credentials\"}"),
            );
        }
        scenarios.push(Scenario {
            id: sid,
            kind: AlertKind::BruteForce,
            src_ip: attacker.to_string(),
            principal: Some(format!("user:{}", users[victim].name)),
            start_ns: start,
            end_ns: start + 180 * NS,
            requests: n as usize,
        });
        sid += 1;
        at += 10 * 60 * NS;
    }
    for k in 0..cfg.per_kind {
        let attacker = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20 + k as u8));
        let start = at;
        let n = 300u64;
        for i in 0..n {
            let body = format!("{{\"username\":\"victim{k}-{i}\",\"password\":\"Summer2024!\"}}");
            b.push(
                start + i * 400_000_000,
                attacker,
                req("POST", "/login", "Mozilla/5.0", None, Some(&body)),
                resp(401, "{\"error\":\"invalid credentials\"}"),
            );
        }
        scenarios.push(Scenario {
            id: sid,
            kind: AlertKind::CredentialStuffing,
            src_ip: attacker.to_string(),
            principal: None,
            start_ns: start,
            end_ns: start + n * 400_000_000,
            requests: n as usize,
        });
        sid += 1;
        at += 10 * 60 * NS;
    }
    for k in 0..cfg.per_kind {
        let attacker = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 40 + k as u8));
        let start = at;
        let payloads = [
            "/accounts?id=1%27%20OR%20%271%27%3D%271",
            "/accounts?id=1%20UNION%20SELECT%20username,password%20FROM%20users--",
            "/search?q=%27%3B%20DROP%20TABLE%20accounts%3B--",
        ];
        for (i, p) in payloads.iter().enumerate() {
            b.push(
                start + i as u64 * NS,
                attacker,
                req("GET", p, "sqlmap/1.8", None, None),
                resp(404, "{}"),
            );
        }
        scenarios.push(Scenario {
            id: sid,
            kind: AlertKind::SqlInjection,
            src_ip: attacker.to_string(),
            principal: None,
            start_ns: start,
            end_ns: start + 3 * NS,
            requests: 3,
        });
        sid += 1;
        at += 5 * 60 * NS;
        let start = at;
        let xss = [
            "/search?q=%3Cscript%3Ealert(document.cookie)%3C%2Fscript%3E",
            "/profile?name=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E",
        ];
        for (i, p) in xss.iter().enumerate() {
            b.push(
                start + i as u64 * NS,
                attacker,
                req("GET", p, "Mozilla/5.0", None, None),
                resp(404, "{}"),
            );
        }
        scenarios.push(Scenario {
            id: sid,
            kind: AlertKind::Xss,
            src_ip: attacker.to_string(),
            principal: None,
            start_ns: start,
            end_ns: start + 2 * NS,
            requests: 2,
        });
        sid += 1;
        at += 5 * 60 * NS;
        let start = at;
        let trav = [
            "/static/..%2f..%2f..%2fetc%2fpasswd",
            "/files?name=../../../../etc/shadow",
        ];
        for (i, p) in trav.iter().enumerate() {
            b.push(
                start + i as u64 * NS,
                attacker,
                req("GET", p, "curl/8.4", None, None),
                resp(404, "{}"),
            );
        }
        scenarios.push(Scenario {
            id: sid,
            kind: AlertKind::PathTraversal,
            src_ip: attacker.to_string(),
            principal: None,
            start_ns: start,
            end_ns: start + 2 * NS,
            requests: 2,
        });
        sid += 1;
        at += 5 * 60 * NS;
    }
    for k in 0..cfg.per_kind {
        // Enumeration: a logged-in user walks other customers' accounts in order.
        let u = &users[rng.below(cfg.users as u64) as usize];
        let tok = format!("tok-enum-{k}");
        let attacker = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 60 + k as u8));
        let start = at;
        for i in 0..300u64 {
            let p = format!("/accounts/{}", 200_000 + i);
            b.push(
                start + i * 200_000_000,
                attacker,
                req("GET", &p, APP_UA, Some(&tok), None),
                resp(
                    200,
                    &format!("{{\"id\":{},\"iban\":\"SA03...\"}}", 200_000 + i),
                ),
            );
        }
        let _ = u;
        scenarios.push(Scenario {
            id: sid,
            kind: AlertKind::Enumeration,
            src_ip: attacker.to_string(),
            principal: None,
            start_ns: start,
            end_ns: start + 60 * NS,
            requests: 300,
        });
        sid += 1;
        at += 10 * 60 * NS;
    }
    b.ex.sort_by_key(|e| e.ts_ns);
    World {
        exchanges: b.ex,
        scenarios,
        benign_principals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_world_and_another_seed_another() {
        let cfg = SimConfig {
            users: 50,
            days: 1,
            per_kind: 2,
            ..Default::default()
        };
        let a = simulate(&cfg);
        let b = simulate(&cfg);
        assert_eq!(a.exchanges.len(), b.exchanges.len());
        assert_eq!(a.exchanges[10].request, b.exchanges[10].request);
        let c = simulate(&SimConfig { seed: 2, ..cfg });
        let digest = |w: &World| {
            w.exchanges
                .iter()
                .fold(0u64, |h, e| h.wrapping_mul(31).wrapping_add(e.ts_ns))
        };
        assert_ne!(digest(&a), digest(&c));
        assert!(a.exchanges.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
    }

    #[test]
    fn the_reference_case_is_there() {
        let w = simulate(&SimConfig {
            users: 20,
            days: 1,
            per_kind: 1,
            ..Default::default()
        });
        let bf = w
            .scenarios
            .iter()
            .find(|s| s.kind == AlertKind::BruteForce)
            .unwrap();
        assert_eq!(bf.principal.as_deref(), Some("user:layla"));
        assert_eq!(bf.requests, 500);
        assert!(bf.end_ns - bf.start_ns <= 180 * NS);
        assert!(bf.src_ip.starts_with("203.0.113."));
        let places = places();
        assert!(places.iter().any(|p| p.country == "VN" && p.net.contains(&bf.src_ip.parse::<IpAddr>().unwrap())));
    }
}
