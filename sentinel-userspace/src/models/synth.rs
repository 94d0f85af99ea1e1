//! Synthetic observations for unit tests and benchmarks: a tiny world where 192.0.2.0/24 is
//! Riyadh, 203.0.113.0/24 Hanoi, 198.51.100.0/24 Lagos, 198.18.0.0/16 London and 198.19.0.0/16
//! New York, with a builder that fills every field an enricher would.

use std::net::IpAddr;

use super::{
    alert::{Action, Alert, AlertKind, Severity},
    observation::{LoginAttempt, Observation},
};
use crate::enrich::{
    geo::GeoInfo,
    principal::{JwtInfo, Principal, PrincipalKind, short_hash},
};

/// Nanoseconds per second.
pub const S: u64 = 1_000_000_000;
/// 2026-11-01T00:00:00Z.
pub const T0: u64 = 1_793_491_200 * S;

/// Where an address of the tiny world is.
pub fn geo_of(ip: IpAddr) -> Option<GeoInfo> {
    let s = ip.to_string();
    let (c, city, lat, lon) = if s.starts_with("192.0.2.") {
        ("SA", "Riyadh", 24.7136, 46.6753)
    } else if s.starts_with("203.0.113.") {
        ("VN", "Hanoi", 21.0278, 105.8342)
    } else if s.starts_with("198.51.100.") {
        ("NG", "Lagos", 6.5244, 3.3792)
    } else if s.starts_with("198.18.") {
        ("GB", "London", 51.5074, -0.1278)
    } else if s.starts_with("198.19.") {
        ("US", "New York", 40.7128, -74.006)
    } else {
        return None;
    };
    Some(GeoInfo {
        country: Some(c.into()),
        city: Some(city.into()),
        latitude: Some(lat),
        longitude: Some(lon),
    })
}

/// A `GET path` from `ip` at `ts_ns`, answered 200 with a small JSON body; the principal is the
/// address and the endpoint is the path (set `endpoint` for templates).
pub fn obs(ts_ns: u64, ip: &str, path: &str) -> Observation<'static> {
    let client_ip: IpAddr = ip.parse().expect("address");
    Observation {
        ts_ns,
        client_ip,
        principal: Principal {
            kind: PrincipalKind::Ip,
            id: client_ip.to_string(),
        },
        geo: geo_of(client_ip),
        method: "GET".into(),
        path: path.to_owned().into(),
        endpoint: path.into(),
        query: "".into(),
        status: 200,
        req_bytes: 0,
        resp_bytes: 40,
        latency_ms: 3.0,
        user_agent: Some("BankApp/4.2.1 (iPhone; iOS 18.1)".into()),
        req_headers: vec![
            ("Host".into(), "bank.test".into()),
            (
                "User-Agent".into(),
                "BankApp/4.2.1 (iPhone; iOS 18.1)".into(),
            ),
            ("Accept".into(), "application/json".into()),
        ],
        req_body: Default::default(),
        resp_content_type: Some("application/json".into()),
        resp_body: br#"{"balance":1200,"currency":"SAR"}"#[..].into(),
        login: None,
        more_logins: Vec::new(),
        refreshed: None,
        jwt: None,
        credential: None,
        bearer: None,
        src_port: 40000,
        dst_ip: Some("198.18.255.1".parse().expect("address")),
        dst_port: 8080,
    }
}

/// The same request made with bearer token `token` (an opaque token: principal `tok:<hash>`).
pub fn with_token<'a>(mut o: Observation<'a>, token: &str) -> Observation<'a> {
    let h = short_hash(token);
    o.principal = Principal {
        kind: PrincipalKind::Token,
        id: h.clone(),
    };
    o.credential = Some(h.into());
    o.bearer = Some(token.to_owned().into());
    o.req_headers
        .push(("Authorization".into(), format!("Bearer {token}").into()));
    o
}

/// The same request made as JWT subject `sub` with claims `alg` and `exp`.
pub fn with_jwt<'a>(
    mut o: Observation<'a>,
    sub: &str,
    alg: &str,
    exp: Option<i64>,
) -> Observation<'a> {
    let raw = format!("jwt-{sub}-{alg}-{exp:?}");
    o = with_token(o, &raw);
    o.principal = Principal {
        kind: PrincipalKind::Jwt,
        id: sub.into(),
    };
    o.jwt = Some(JwtInfo {
        alg: alg.into(),
        sub: Some(sub.into()),
        exp,
        kid: None,
    });
    o
}

/// A login attempt for `user` from `ip`: 200 with a token when `ok`, else 401.
pub fn login(ts_ns: u64, ip: &str, user: &str, ok: bool, ua: &str) -> Observation<'static> {
    let mut o = obs(ts_ns, ip, "/login");
    o.method = "POST".into();
    o.principal = Principal {
        kind: PrincipalKind::User,
        id: user.into(),
    };
    o.user_agent = Some(ua.to_owned().into());
    o.req_headers = vec![
        ("Host".into(), "bank.test".into()),
        ("User-Agent".into(), ua.to_owned().into()),
        ("Content-Type".into(), "application/json".into()),
    ];
    o.req_body = format!(r#"{{"username":"{user}","password":"pw"}}"#)
        .into_bytes()
        .into();
    o.req_bytes = o.req_body.len() as u64;
    o.status = if ok { 200 } else { 401 };
    o.resp_body = if ok {
        format!(r#"{{"token":"tok-{user}-{ts_ns:x}"}}"#)
            .into_bytes()
            .into()
    } else {
        br#"{"error":"invalid credentials"}"#[..].into()
    };
    o.resp_bytes = o.resp_body.len() as u64;
    o.login = Some(LoginAttempt {
        username: user.into(),
        success: ok,
        // As the enricher finds it in the answer.
        issued: if ok {
            vec![short_hash(&issued_token(user, ts_ns)).into()]
        } else {
            Vec::new()
        },
    });
    o
}

/// The token a successful [`login`] at `ts_ns` issued.
pub fn issued_token(user: &str, ts_ns: u64) -> String {
    format!("tok-{user}-{ts_ns:x}")
}

/// An alert of `kind` from `src_ip` at `ts_ns` about `user:layla` at `/login` from VN, high,
/// acted on by nobody yet: what the responder and the logs are tested with (set the rest).
pub fn alert(kind: AlertKind, src_ip: &str, ts_ns: u64) -> Alert {
    Alert {
        ts: super::alert::rfc3339(ts_ns),
        kind,
        severity: Severity::High,
        score: 0.9,
        src_ip: src_ip.into(),
        principal: Some("user:layla".into()),
        endpoint: Some("/login".into()),
        country: Some("VN".into()),
        action: Action::Alert,
        explanation: String::new(),
        evidence: Default::default(),
        ts_ns,
        recommended_rate: None,
    }
}

/// A `GET path` from `ip` at `ts_ns` with `headers`, answered 200 with `{}`: the facts of a
/// transaction for the enricher (which names its principal and endpoint as the daemon would).
pub fn get_facts<'a>(
    ts_ns: u64,
    ip: IpAddr,
    path: &'a str,
    headers: &[(&'a str, &'a str)],
) -> crate::enrich::pipeline::TransactionFacts<'a> {
    crate::enrich::pipeline::TransactionFacts {
        ts_ns,
        src: (ip, 40000),
        dst: ("198.18.255.1".parse().expect("address"), 8080),
        method: "GET",
        path,
        query: "",
        req_headers: headers
            .iter()
            .map(|(n, v)| ((*n).into(), (*v).into()))
            .collect(),
        req_body: b"",
        req_bytes: 0,
        status: 200,
        resp_content_type: Some("application/json"),
        resp_head: None,
        resp_body: b"{}",
        resp_bytes: 2,
        latency_ms: 3.0,
    }
}
