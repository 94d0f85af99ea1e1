//! Alerts: what a model concluded, in the JSON format of DESIGN.md (one object per line in the
//! alert log, `--emit alerts` and the webhook body).

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

/// Alert kinds (the DESIGN.md vocabulary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Many failed logins for one account or from one source.
    BruteForce,
    /// Many accounts tried from one source or fingerprint, few successes.
    CredentialStuffing,
    /// A principal far above its learned rate.
    RateAnomaly,
    /// Two places too far apart for the time between them.
    ImpossibleTravel,
    /// An established principal from a country it never used.
    NewCountry,
    /// Behaviour far from the principal's learned profile.
    BehaviorAnomaly,
    /// SQL injection in request input.
    SqlInjection,
    /// Cross-site scripting in request input.
    Xss,
    /// Path traversal in request input.
    PathTraversal,
    /// Sensitive data or unusually large responses.
    DataExposure,
    /// One token used from many sources or countries at once.
    TokenReuse,
    /// Weak or abused JWTs (alg none, expired but accepted).
    JwtWeakness,
    /// Sequential or dense walks over object ids.
    Enumeration,
    /// High distinct-resource ratio at high rate.
    Scraping,
    /// Floods from spoofed sources. Reserved: no detector raises it yet.
    SpoofedFlood,
}

impl AlertKind {
    /// Every kind.
    pub const ALL: [AlertKind; 15] = [
        AlertKind::BruteForce,
        AlertKind::CredentialStuffing,
        AlertKind::RateAnomaly,
        AlertKind::ImpossibleTravel,
        AlertKind::NewCountry,
        AlertKind::BehaviorAnomaly,
        AlertKind::SqlInjection,
        AlertKind::Xss,
        AlertKind::PathTraversal,
        AlertKind::DataExposure,
        AlertKind::TokenReuse,
        AlertKind::JwtWeakness,
        AlertKind::Enumeration,
        AlertKind::Scraping,
        AlertKind::SpoofedFlood,
    ];

    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::BruteForce => "brute_force",
            AlertKind::CredentialStuffing => "credential_stuffing",
            AlertKind::RateAnomaly => "rate_anomaly",
            AlertKind::ImpossibleTravel => "impossible_travel",
            AlertKind::NewCountry => "new_country",
            AlertKind::BehaviorAnomaly => "behavior_anomaly",
            AlertKind::SqlInjection => "sql_injection",
            AlertKind::Xss => "xss",
            AlertKind::PathTraversal => "path_traversal",
            AlertKind::DataExposure => "data_exposure",
            AlertKind::TokenReuse => "token_reuse",
            AlertKind::JwtWeakness => "jwt_weakness",
            AlertKind::Enumeration => "enumeration",
            AlertKind::Scraping => "scraping",
            AlertKind::SpoofedFlood => "spoofed_flood",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Likely abuse.
    Medium,
    /// Abuse.
    High,
    /// Abuse with immediate damage (account takeover, data leaving).
    Critical,
}

/// The response an alert led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Only told.
    Alert,
    /// Rate-limited in the kernel.
    Throttle,
    /// Dropped in the kernel.
    Block,
    /// The flow was killed.
    KillFlow,
    /// The token was revoked at the identity provider.
    RevokeToken,
}

/// One alert (DESIGN.md format).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// RFC 3339 time of the observation that raised it.
    pub ts: String,
    /// Kind.
    pub kind: AlertKind,
    /// Severity.
    pub severity: Severity,
    /// 0..1.
    pub score: f64,
    /// Client address.
    pub src_ip: String,
    /// Principal (display form, secrets hashed).
    pub principal: Option<String>,
    /// Endpoint template.
    pub endpoint: Option<String>,
    /// Country of the client address.
    pub country: Option<String>,
    /// What was done.
    pub action: Action,
    /// One sentence a person can read.
    pub explanation: String,
    /// The features behind it and the baselines they were compared with.
    pub evidence: BTreeMap<String, serde_json::Value>,
    /// Stream time in nanoseconds (not serialised; for ordering and latency measurements).
    #[serde(skip)]
    pub ts_ns: u64,
    /// Recommended throttle rate (packets/s) from a learned limit, when the model has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub recommended_rate: Option<f64>,
}

/// Formats nanoseconds since the epoch as RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ts_ns: u64) -> String {
    let secs = (ts_ns / 1_000_000_000) as i64;
    let ms = (ts_ns / 1_000_000) % 1000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_serialise_to_the_design_vocabulary() {
        for k in AlertKind::ALL {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
        assert_eq!(
            serde_json::to_value(Severity::Critical).unwrap(),
            "critical"
        );
        assert_eq!(
            serde_json::to_value(Action::RevokeToken).unwrap(),
            "revoke_token"
        );
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(1_795_867_200_123_000_000),
            "2026-11-28T12:00:00.123Z"
        );
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
    }
}
