//! `data_exposure`: responses that carry more than a client should get.
//!
//! - Secrets, raised on one occurrence: PEM private keys, AWS access key ids (`AKIA...`), GitHub
//!   tokens (`ghp_`, `gho_`, `ghs_`, `ghu_`, `ghr_`, `github_pat_`), Slack tokens (`xoxb-`...),
//!   Stripe live keys, and JSON fields named like a secret (`secret`, `api_key`, `client_secret`,
//!   `password`, ...) holding a long unmasked value.
//! - Personal data in bulk (one customer's own IBAN on their account page is normal; a page of
//!   them is not): distinct Luhn-valid card numbers (13-19 digits, issuer prefix 2-6), IBANs
//!   (mod-97), national identifiers (US SSN `ddd-dd-dddd` with valid area/group/serial, Saudi
//!   national or resident ids: 10 digits starting 1 or 2 with a valid check digit), and e-mail
//!   addresses, each against its own threshold.
//! - Size: a 2xx response far above its endpoint's learned size (weighted mean and deviation of
//!   `log2(bytes)`, after `size_warmup` responses): at least `size_min_bytes`, `size_ratio` times
//!   the usual size and `size_sigmas` deviations above it.

mod marks;
mod scan;

#[cfg(test)]
pub(crate) use scan::scan_bytewise;
pub use scan::{Findings, iban_valid, luhn, scan};
use scan::{NameFilter, scan_with};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    AlertKind, Severity,
    bounded::{BoundedMap, Ewm, key_of},
    config::Checker,
    engine::{Ctx, Detection, Detector, ModelsError, evidence, r2, subject},
    injection::contains_ci,
    observation::Observation,
};
use crate::http::body::looks_binary;

/// `[models.exposure]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// On or off. Default on.
    pub enabled: bool,
    /// Distinct card numbers in one response. Default 3.
    pub min_cards: usize,
    /// Distinct IBANs in one response. Default 5.
    pub min_ibans: usize,
    /// Distinct national identifiers in one response. Default 3.
    pub min_national_ids: usize,
    /// Distinct e-mail addresses in one response. Default 20.
    pub min_emails: usize,
    /// JSON field names whose long values are secrets, matched in any ASCII case and with or
    /// without `_` or `-` between words (`client_secret` is also `clientSecret`). Default
    /// `secret`, `client_secret`, `api_key`, `secret_key`, `access_key`, `private_key`,
    /// `password`, `password_hash`, `password_digest`, `encrypted_password`, `passwd`.
    pub secret_fields: Vec<String>,
    /// Length from which such a value counts. Default 12.
    pub secret_min_len: usize,
    /// Responses an endpoint needs before its size is judged. Default 50.
    pub size_warmup: u16,
    /// Never flag a size below this, bytes. Default 65,536.
    pub size_min_bytes: u64,
    /// Times the usual size. Default 10.
    pub size_ratio: f64,
    /// Deviations above the usual size. Default 4.
    pub size_sigmas: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            min_cards: 3,
            min_ibans: 5,
            min_national_ids: 3,
            min_emails: 20,
            secret_fields: [
                "secret",
                "client_secret",
                "api_key",
                "secret_key",
                "access_key",
                "private_key",
                "password",
                "password_hash",
                "password_digest",
                "encrypted_password",
                "passwd",
            ]
            .map(String::from)
            .to_vec(),
            secret_min_len: 12,
            size_warmup: 50,
            size_min_bytes: 65_536,
            size_ratio: 10.0,
            size_sigmas: 4.0,
        }
    }
}

impl Config {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ModelsError> {
        Checker::new("exposure")
            .check("min_cards", self.min_cards > 0, "must be at least 1")
            .check("min_ibans", self.min_ibans > 0, "must be at least 1")
            .check(
                "min_national_ids",
                self.min_national_ids > 0,
                "must be at least 1",
            )
            .check("min_emails", self.min_emails > 0, "must be at least 1")
            .positive("size_ratio", self.size_ratio)
            .positive("size_sigmas", self.size_sigmas)
            .finish()
    }
}

fn textual(ctype: Option<&str>) -> bool {
    ctype.is_none_or(|c| {
        [
            "json",
            "text",
            "xml",
            "html",
            "csv",
            "javascript",
            "yaml",
            "x-www-form",
        ]
        .iter()
        .any(|t| contains_ci(c.as_bytes(), t.as_bytes()))
    })
}

/// The detector.
pub struct ExposureDetector {
    cfg: Config,
    names: NameFilter,
    sizes: BoundedMap<Ewm>,
}

impl ExposureDetector {
    /// A detector.
    pub fn new(cfg: &Config) -> Self {
        Self {
            cfg: cfg.clone(),
            names: NameFilter::new(&cfg.secret_fields),
            sizes: BoundedMap::new(20_000, u64::MAX),
        }
    }
}

impl ExposureDetector {
    /// A successful response far above its endpoint's usual size, into `what` and `ev`; the
    /// endpoint's norm learns the sizes that are not.
    fn size(
        &mut self,
        o: &Observation<'_>,
        what: &mut Vec<String>,
        ev: &mut std::collections::BTreeMap<String, Value>,
        severity: &mut Severity,
    ) {
        let ep = key_of(o.endpoint.as_str());
        let size = (1.0 + o.resp_bytes as f64).log2();
        let norm = *self.sizes.entry(ep, o.ts_ns, Ewm::default);
        let usual = f64::from(norm.mean).exp2();
        let big = norm.n >= self.cfg.size_warmup
            && o.resp_bytes >= self.cfg.size_min_bytes
            && o.resp_bytes as f64 >= usual * self.cfg.size_ratio
            && size >= f64::from(norm.mean) + self.cfg.size_sigmas * norm.std().max(0.25);
        if big {
            what.push(format!(
                "{} bytes where {} usually returns about {:.0}",
                o.resp_bytes, o.endpoint, usual
            ));
            ev.insert("response_bytes".into(), json!(o.resp_bytes));
            ev.insert("usual_bytes".into(), json!(usual.round()));
            ev.insert(
                "ratio".into(),
                json!(r2(o.resp_bytes as f64 / usual.max(1.0))),
            );
            if what.len() == 1 {
                *severity = Severity::Medium;
            }
        } else if let Some(e) = self.sizes.get_mut(ep) {
            e.add(size, 0.02);
        }
    }
}

impl Detector for ExposureDetector {
    fn name(&self) -> &'static str {
        "exposure"
    }

    fn observe(&mut self, ctx: &Ctx<'_>, out: &mut Vec<Detection>) {
        let o = ctx.obs;
        let mut what = Vec::new();
        let mut ev = evidence([]);
        let mut severity = Severity::High;
        // Any status: error pages that dump the environment or a record leak as well. A body
        // typed as something else (`application/octet-stream`) is read when it looks like text.
        if !o.resp_body.is_empty()
            && (textual(o.resp_content_type.as_deref()) || !looks_binary(&o.resp_body))
        {
            let f = scan_with(&o.resp_body, &self.cfg, &self.names);
            if !f.secrets.is_empty() {
                severity = Severity::Critical;
                what.push(f.secrets.join(", "));
                ev.insert("secrets".into(), json!(f.secrets));
            }
            for (n, min, label) in [
                (f.cards.len(), self.cfg.min_cards, "card numbers"),
                (f.ibans.len(), self.cfg.min_ibans, "IBANs"),
                (
                    f.national_ids.len(),
                    self.cfg.min_national_ids,
                    "national ids",
                ),
                (f.emails.len(), self.cfg.min_emails, "e-mail addresses"),
            ] {
                if n >= min {
                    what.push(format!("{n} {label}"));
                    ev.insert(label.replace(' ', "_").replace('-', ""), json!(n));
                    ev.insert(
                        format!("min_{}", label.replace(' ', "_").replace('-', "")),
                        json!(min),
                    );
                }
            }
        }
        // Size against the endpoint's norm, of its successful responses.
        if (200..300).contains(&o.status) {
            self.size(o, &mut what, &mut ev, &mut severity);
        }
        if what.is_empty() {
            return;
        }
        let alert = ctx.alert(
            AlertKind::DataExposure,
            severity,
            match severity {
                Severity::Critical => 0.95,
                Severity::High => 0.85,
                _ => 0.65,
            },
            format!(
                "Response to {} {} for {} carried {}.",
                o.method,
                o.endpoint,
                ctx.principal,
                what.join("; ")
            ),
            ev,
        );
        out.push(Detection {
            alert,
            subject: subject::entity(ctx.entity),
        });
    }

    fn tracked(&self) -> usize {
        self.sizes.len()
    }

    fn memory_bytes(&self) -> usize {
        self.sizes.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Engine, ModelsConfig, synth::*};

    fn body(e: &mut Engine, b: &str) -> Vec<crate::models::Alert> {
        let mut o = obs(T0, "198.18.0.5", "/export");
        o.resp_body = b.as_bytes().to_vec().into();
        o.resp_bytes = b.len() as u64;
        e.observe(&o)
    }

    #[test]
    fn secrets_are_raised_at_once() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        for b in [
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE...\n-----END RSA PRIVATE KEY-----",
            r#"{"aws":"AKIAIOSFODNN7EXAMPLE"}"#,
            r#"{"t":"ghp_abcdefghijklmnopqrstuvwxyz0123456789"}"#,
            r#"{"slack":"xoxb-123456789012-abcdefghijkl"}"#,
            r#"{"user":"x","api_key":"9f8e7d6c5b4a39281706"}"#,
            r#"{"id":3,"password_hash":"$2b$12$abcdefghijklmnopqrstuv"}"#,
        ] {
            let a = body(&mut e, b);
            assert_eq!(a.len(), 1, "{b}");
            assert_eq!(a[0].severity, Severity::Critical);
            e = Engine::new(&ModelsConfig::default()).unwrap();
        }
    }

    /// Secret fields as JavaScript and Jackson name them (camelCase), and in Rails's and
    /// Devise's names, are secrets too; a look-alike name is not.
    #[test]
    fn secret_fields_are_known_in_every_naming_style() {
        for b in [
            r#"{"clientSecret":"9f8e7d6c5b4a39281706"}"#,
            r#"{"secretKey":"9f8e7d6c5b4a39281706"}"#,
            r#"{"AccessKey":"9f8e7d6c5b4a39281706"}"#,
            r#"{"private-key":"9f8e7d6c5b4a39281706"}"#,
            r#"{"passwordHash":"$2b$12$abcdefghijklmnopqrstuv"}"#,
            r#"{"password_digest":"$2b$12$abcdefghijklmnopqrstuv"}"#,
            r#"{"encrypted_password":"$2b$12$abcdefghijklmnopqrstuv"}"#,
            r#"{"apiKey":"9f8e7d6c5b4a39281706"}"#,
        ] {
            let mut e = Engine::new(&ModelsConfig::default()).unwrap();
            let a = body(&mut e, b);
            assert_eq!(a.len(), 1, "{b}");
            assert_eq!(a[0].severity, Severity::Critical, "{b}");
        }
        for b in [
            r#"{"secretKeyHint":"9f8e7d6c5b4a39281706"}"#,
            r#"{"clientSecretLength":"9f8e7d6c5b4a39281706"}"#,
            r#"{"publicKey":"9f8e7d6c5b4a39281706"}"#,
        ] {
            let mut e = Engine::new(&ModelsConfig::default()).unwrap();
            assert!(body(&mut e, b).is_empty(), "{b}");
        }
    }

    /// A leak in an error page (a 500 that dumps the environment, a 404 that shows a record),
    /// or in a body typed as a download, is raised; a binary download is not read.
    #[test]
    fn leaks_are_found_whatever_the_status_and_a_text_body_s_type() {
        let leak = r#"{"env":{"AWS_ACCESS_KEY_ID":"AKIAIOSFODNN7EXAMPLE"}}"#;
        for (status, ctype) in [
            (500, Some("application/json")),
            (404, Some("text/html")),
            (302, None),
            (200, Some("application/octet-stream")),
        ] {
            let mut e = Engine::new(&ModelsConfig::default()).unwrap();
            let mut o = obs(T0, "198.18.0.5", "/export");
            o.status = status;
            o.resp_content_type = ctype.map(Into::into);
            o.resp_body = leak.as_bytes().to_vec().into();
            o.resp_bytes = leak.len() as u64;
            let a = e.observe(&o);
            assert!(
                a.iter().any(|a| a.kind == AlertKind::DataExposure),
                "{status} {ctype:?}: {a:?}"
            );
        }
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(leak.as_bytes());
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let mut o = obs(T0, "198.18.0.5", "/avatar");
        o.resp_content_type = Some("application/octet-stream".into());
        o.resp_bytes = png.len() as u64;
        o.resp_body = png.into();
        assert!(e.observe(&o).is_empty());
    }

    #[test]
    fn bulk_personal_data_is_raised_but_ones_own_is_not() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let own = r#"{"id":42,"iban":"SA0380000000608010167519","card":"4111 1111 1111 1111","email":"layla@example.com"}"#;
        assert!(body(&mut e, own).is_empty());
        let cards = r#"[{"pan":"4111111111111111"},{"pan":"5500-0000-0000-0004"},{"pan":"340000000000009"}]"#;
        let a = body(&mut e, cards);
        assert!(
            a[0].explanation.contains("3 card numbers"),
            "{}",
            a[0].explanation
        );
        let e2 = &mut Engine::new(&ModelsConfig::default()).unwrap();
        let ids = r#"{"a":"123-45-6789","b":"234-56-7890","c":"1000000008"}"#;
        assert!(body(e2, ids)[0].explanation.contains("3 national ids"));
        let e3 = &mut Engine::new(&ModelsConfig::default()).unwrap();
        let emails: Vec<String> = (0..25).map(|i| format!("\"u{i}@corp.example\"")).collect();
        assert!(!body(e3, &format!("[{}]", emails.join(","))).is_empty());
        // Look-alikes: timestamps, invalid SSNs, masked secrets, phone numbers.
        let e4 = &mut Engine::new(&ModelsConfig::default()).unwrap();
        let noise = r#"{"ts":1793491200000,"ssn":"000-12-3456","x":"666-12-3456","password":"********","phone":"+966 11 234 5678","n":"1111111111","secret":"short"}"#;
        assert!(body(e4, noise).is_empty(), "{:?}", body(e4, noise));
    }

    #[test]
    fn a_response_far_above_the_endpoint_norm_is_raised() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        for i in 0..200u64 {
            let mut o = obs(T0 + i * S, "198.18.0.5", "/accounts/{id}");
            o.resp_bytes = 300 + (i % 7) * 20;
            assert!(e.observe(&o).is_empty());
        }
        let mut o = obs(T0 + 300 * S, "198.18.0.6", "/accounts/{id}");
        o.resp_bytes = 2_000_000;
        let a = e.observe(&o);
        assert_eq!(a.len(), 1);
        assert!(
            a[0].explanation.contains("2000000 bytes"),
            "{}",
            a[0].explanation
        );
        // Not learned: the next one is still far above.
        let mut o = obs(T0 + 301 * S, "198.18.0.7", "/accounts/{id}");
        o.resp_bytes = 2_000_000;
        assert_eq!(e.observe(&o).len(), 1);
    }
}
