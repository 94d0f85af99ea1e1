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

use std::{collections::HashSet, sync::LazyLock};

use memchr::memmem::Finder;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    AlertKind, Severity,
    bounded::{BoundedMap, Ewm, key_of},
    config::Checker,
    engine::{Ctx, Detection, Detector, ModelsError, evidence, r2, subject},
    injection::contains_ci,
};

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
    /// JSON field names (lower case) whose long values are secrets. Default `secret`,
    /// `client_secret`, `api_key`, `apikey`, `secret_key`, `access_key`, `private_key`,
    /// `password`, `password_hash`, `passwd`.
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
                "apikey",
                "secret_key",
                "access_key",
                "private_key",
                "password",
                "password_hash",
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

/// Luhn check over ASCII digits.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// ISO 13616 check: move the first four characters to the end, letters to numbers, mod 97 = 1.
pub fn iban_valid(s: &[u8]) -> bool {
    if !(15..=34).contains(&s.len())
        || !s[..2].iter().all(u8::is_ascii_uppercase)
        || !s[2..4].iter().all(u8::is_ascii_digit)
        || !s
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    {
        return false;
    }
    let mut rem = 0u32;
    for &c in s[4..].iter().chain(&s[..4]) {
        if c.is_ascii_digit() {
            rem = (rem * 10 + u32::from(c - b'0')) % 97;
        } else {
            let v = u32::from(c - b'A') + 10;
            rem = (rem * 100 + v) % 97;
        }
    }
    rem == 1
}

fn ssn_valid(area: u32, group: u32, serial: u32) -> bool {
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// What one body holds.
#[derive(Debug, Default)]
pub struct Findings {
    /// Distinct card numbers.
    pub cards: HashSet<u64>,
    /// Distinct IBANs.
    pub ibans: HashSet<u64>,
    /// Distinct national identifiers.
    pub national_ids: HashSet<u64>,
    /// Distinct e-mail addresses.
    pub emails: HashSet<u64>,
    /// Secrets found (what, not the value).
    pub secrets: Vec<String>,
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

const SECRET_PREFIXES: [(&str, usize, &str); 11] = [
    ("AKIA", 16, "AWS access key id"),
    ("ASIA", 16, "AWS temporary access key id"),
    ("ghp_", 36, "GitHub token"),
    ("gho_", 36, "GitHub OAuth token"),
    ("ghs_", 36, "GitHub app token"),
    ("ghu_", 36, "GitHub user token"),
    ("ghr_", 36, "GitHub refresh token"),
    ("github_pat_", 40, "GitHub fine-grained token"),
    ("xoxb-", 20, "Slack bot token"),
    ("xoxp-", 20, "Slack user token"),
    ("sk_live_", 20, "Stripe live secret key"),
];

/// Byte classes of the pass in [`scan`]: a digit (continues both runs); a space or dash (keeps
/// the digit run); an upper-case letter (continues the upper-case run); `@`; a letter or digit;
/// the first letter of a secret prefix.
const DIGIT: u8 = 1;
const KEEP_DIGITS: u8 = 2;
const UPPER_OR_DIGIT: u8 = 4;
const AT: u8 = 8;
const WORD: u8 = 16;
/// `WORD << 1`: [`scan`] shifts the previous byte's `WORD` onto it.
const PREFIX: u8 = 32;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = b'0';
    while c <= b'9' {
        t[c as usize] = DIGIT | KEEP_DIGITS | UPPER_OR_DIGIT;
        c += 1;
    }
    c = b'A';
    while c <= b'Z' {
        t[c as usize] = UPPER_OR_DIGIT;
        c += 1;
    }
    c = 0;
    while c < 128 {
        if c.is_ascii_alphanumeric() {
            t[c as usize] |= WORD;
        }
        c += 1;
    }
    t[b' ' as usize] = KEEP_DIGITS;
    t[b'-' as usize] = KEEP_DIGITS;
    t[b'@' as usize] = AT;
    let mut p = 0;
    while p < SECRET_PREFIXES.len() {
        t[SECRET_PREFIXES[p].0.as_bytes()[0] as usize] |= PREFIX;
        p += 1;
    }
    t
};

static PEM: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"-----BEGIN "));

/// Scans one body with `cfg`'s secret field names.
pub fn scan(b: &[u8], cfg: &Config) -> Findings {
    scan_with(b, cfg, &NameFilter::new(&cfg.secret_fields))
}

/// Scans one body. A table-driven pass measures the digit runs (spaces and dashes allowed) and
/// upper-case-or-digit runs and notes any `@` and any secret prefix's first letter starting a
/// word; only then are the prefixes compared there. A memmem finder finds PEM headers, and only
/// quotes followed by a secret field name's first byte are looked at. The checksum work runs
/// only where something can be found.
fn scan_with(b: &[u8], cfg: &Config, names: &NameFilter) -> Findings {
    let mut f = Findings::default();
    let (mut digits, mut max_digits) = (0u32, 0u32);
    let (mut upper, mut max_upper) = (0u32, 0u32);
    let (mut seen, mut after) = (0u8, 0u8);
    // Secrets, by where they start, so that they are listed in the order of the body.
    let mut secrets: Vec<(usize, String)> = Vec::new();
    for &c in b {
        // Without branches or calls (the counts stay in registers): JSON alternates digits and
        // letters too often to predict.
        let k = CLASS[c as usize];
        let bit = |class: u8| u32::from(k & class != 0);
        digits = (digits + bit(DIGIT)) & bit(KEEP_DIGITS).wrapping_neg();
        upper = (upper + bit(UPPER_OR_DIGIT)) & bit(UPPER_OR_DIGIT).wrapping_neg();
        max_digits = max_digits.max(digits);
        max_upper = max_upper.max(upper);
        // A prefix's first letter counts only where no letter or digit comes before it.
        seen |= k & !((after & WORD) << 1);
        after = k;
    }
    if seen & PREFIX != 0 {
        let mut after_word = false;
        for (i, &c) in b.iter().enumerate() {
            let k = CLASS[c as usize];
            if k & PREFIX != 0 && !after_word {
                secret_prefix(b, i, &mut secrets);
            }
            after_word = k & WORD != 0;
        }
    }
    let at = seen & AT != 0;
    for i in PEM.find_iter(b) {
        let head = &b[i..(i + 60).min(b.len())];
        if head.windows(11).any(|w| w == b"PRIVATE KEY") {
            // Each PEM block is listed.
            secrets.push((i, "PEM private key".into()));
        }
    }
    for q in memchr::memchr_iter(b'"', b) {
        if let Some(what) = names.secret_field(b, q, cfg)
            && !secrets.iter().any(|(_, s)| *s == what)
        {
            secrets.push((q, what));
        }
    }
    secrets.sort_by_key(|(i, _)| *i);
    f.secrets = secrets.into_iter().map(|(_, s)| s).collect();
    let (max_digits, max_upper) = (max_digits as usize, max_upper as usize);
    if max_digits < 9 && max_upper < 15 && !at {
        return f;
    }
    // Tokens: digit runs (cards, ids), IBAN-shaped words, e-mail addresses.
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let boundary = i == 0 || !is_word(b[i - 1]);
        if c.is_ascii_digit() && boundary && max_digits >= 9 {
            let (end, digits, raw_dashes) = digit_run(b, i);
            let after_ok = end >= b.len() || !is_word(b[end]);
            if after_ok {
                classify_digits(&digits, &b[i..end], raw_dashes, &mut f);
            }
            i = end.max(i + 1);
            continue;
        }
        if c.is_ascii_uppercase() && boundary && max_upper >= 15 {
            let end = i + b[i..]
                .iter()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                .count();
            if (end >= b.len() || !is_word(b[end])) && iban_valid(&b[i..end]) {
                f.ibans.insert(key_of(&b[i..end]));
            }
        }
        if c == b'@' {
            let local = b[..i]
                .iter()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'+' | b'-'))
                .count();
            let domain = b[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-'))
                .count();
            let d = &b[i + 1..i + 1 + domain];
            if local > 0 && d.contains(&b'.') && !d.ends_with(b".") {
                f.emails.insert(key_of(&b[i - local..i + 1 + domain]));
            }
        }
        i += 1;
    }
    f
}

/// A secret prefix (at a word boundary) at `i`, followed by enough token characters.
fn secret_prefix(b: &[u8], i: usize, secrets: &mut Vec<(usize, String)>) {
    for (prefix, min, what) in SECRET_PREFIXES {
        if b[i..].starts_with(prefix.as_bytes()) {
            let n = b[i + prefix.len()..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_' || **c == b'-')
                .count();
            if n >= min && !secrets.iter().any(|(_, s)| s == what) {
                secrets.push((i, what.into()));
            }
        }
    }
}

/// What the secret field names can be told by at a glance: their first bytes (in either ASCII
/// case) and lengths (all lengths from 64 up), so that most quotes are passed over without
/// comparing names.
struct NameFilter {
    firsts: [bool; 256],
    lengths: u64,
    longest: usize,
}

impl NameFilter {
    fn new(names: &[String]) -> Self {
        let mut f = Self {
            firsts: [false; 256],
            lengths: 0,
            longest: 0,
        };
        for n in names {
            match n.bytes().next() {
                Some(c) => {
                    f.firsts[c.to_ascii_lowercase() as usize] = true;
                    f.firsts[c.to_ascii_uppercase() as usize] = true;
                }
                // An empty name matches `""`: any byte may follow the quote.
                None => f.firsts = [true; 256],
            }
            f.lengths |= if n.len() < 64 { 1 << n.len() } else { u64::MAX };
            f.longest = f.longest.max(n.len());
        }
        f
    }

    /// A JSON field named like a secret (a whole name between quotes, in any ASCII case) opening
    /// at the quote `q`, holding a long unmasked value: what to list.
    fn secret_field(&self, b: &[u8], q: usize, cfg: &Config) -> Option<String> {
        let rest = &b[q + 1..];
        if !rest.first().is_some_and(|c| self.firsts[*c as usize]) {
            return None;
        }
        let len = memchr::memchr(b'"', &rest[..rest.len().min(self.longest + 1)])?;
        if self.lengths & 1 << len.min(63) == 0 {
            return None;
        }
        let name = cfg
            .secret_fields
            .iter()
            .find(|n| n.as_bytes().eq_ignore_ascii_case(&rest[..len]))?;
        let mut j = len + 1;
        while rest.get(j).is_some_and(|c| c.is_ascii_whitespace()) {
            j += 1;
        }
        if rest.get(j) != Some(&b':') {
            return None;
        }
        j += 1;
        while rest.get(j).is_some_and(|c| c.is_ascii_whitespace()) {
            j += 1;
        }
        if rest.get(j) != Some(&b'"') {
            return None;
        }
        let val: &[u8] = &rest[j + 1..];
        let val = &val[..val.iter().position(|c| *c == b'"').unwrap_or(val.len())];
        let masked = val.contains(&b'*') || val.iter().all(|c| Some(c) == val.first());
        (val.len() >= cfg.secret_min_len && !masked).then(|| format!("field \"{name}\""))
    }
}

/// Digits from `i`, allowing single spaces or dashes between digits.
fn digit_run(b: &[u8], start: usize) -> (usize, Vec<u8>, Vec<usize>) {
    let mut digits = Vec::new();
    let mut seps = Vec::new();
    let mut i = start;
    while i < b.len() && digits.len() <= 20 {
        if b[i].is_ascii_digit() {
            digits.push(b[i]);
            i += 1;
        } else if matches!(b[i], b' ' | b'-') && i + 1 < b.len() && b[i + 1].is_ascii_digit() {
            seps.push(digits.len());
            i += 1;
        } else {
            break;
        }
    }
    (i, digits, seps)
}

fn classify_digits(d: &[u8], raw: &[u8], seps: Vec<usize>, f: &mut Findings) {
    let all_same = d.iter().all(|x| *x == d[0]);
    if all_same {
        return;
    }
    // US SSN: exactly ddd-dd-dddd.
    if d.len() == 9 && seps == [3, 5] && raw[3] == b'-' && raw[6] == b'-' {
        let n = |s: &[u8]| {
            std::str::from_utf8(s)
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
        };
        if let (Some(a), Some(g), Some(s)) = (n(&d[..3]), n(&d[3..5]), n(&d[5..]))
            && ssn_valid(a, g, s)
        {
            f.national_ids.insert(key_of(d));
        }
        return;
    }
    if (13..=19).contains(&d.len()) && (b'2'..=b'6').contains(&d[0]) && luhn(d) {
        // Separators only in card-like groups (4s, or Amex 4-6-5).
        let grouped = seps.is_empty()
            || seps.iter().all(|s| s % 4 == 0)
            || (d.len() == 15 && seps == [4, 10]);
        if grouped {
            f.cards.insert(key_of(d));
        }
        return;
    }
    // Saudi national (1...) or resident (2...) id: 10 digits with a Luhn check digit.
    if d.len() == 10 && seps.is_empty() && matches!(d[0], b'1' | b'2') && luhn(d) {
        f.national_ids.insert(key_of(d));
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

impl Detector for ExposureDetector {
    fn name(&self) -> &'static str {
        "exposure"
    }

    fn observe(&mut self, ctx: &Ctx<'_>, out: &mut Vec<Detection>) {
        let o = ctx.obs;
        if !(200..300).contains(&o.status) {
            return;
        }
        let mut what = Vec::new();
        let mut ev = evidence([]);
        let mut severity = Severity::High;
        if !o.resp_body.is_empty() && textual(o.resp_content_type.as_deref()) {
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
        // Size against the endpoint's norm.
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
                severity = Severity::Medium;
            }
        } else if let Some(e) = self.sizes.get_mut(ep) {
            e.add(size, 0.02);
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
        o.resp_body = b.as_bytes().to_vec();
        o.resp_bytes = b.len() as u64;
        e.observe(&o)
    }

    #[test]
    fn checksums() {
        assert!(luhn(b"4111111111111111"));
        assert!(!luhn(b"4111111111111112"));
        assert!(iban_valid(b"GB82WEST12345698765432"));
        assert!(iban_valid(b"SA0380000000608010167519"));
        assert!(!iban_valid(b"SA0380000000608010167518"));
        assert!(
            luhn(b"1000000008"),
            "a Saudi-shaped id with a valid check digit"
        );
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
    fn the_scan_finds_secrets_wherever_they_stand_and_lists_them_in_order() {
        let cfg = Config::default();
        let f = scan(
            br#"{"API_Key" :  "9f8e7d6c5b4a39281706","k":"x AKIAIOSFODNN7EXAMPLE","pem":"-----BEGIN EC PRIVATE KEY-----"}"#,
            &cfg,
        );
        assert_eq!(
            f.secrets,
            ["field \"api_key\"", "AWS access key id", "PEM private key"]
        );
        // Prefixes count at a word boundary only; a PEM header right after a token's dash counts.
        let f = scan(
            b"xAKIAIOSFODNN7EXAMPLE xoxb------BEGIN RSA PRIVATE KEY",
            &cfg,
        );
        assert_eq!(f.secrets, ["PEM private key"]);
        let f = scan(
            b"token=github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz sk_live_0123456789abcdefghij",
            &cfg,
        );
        assert_eq!(
            f.secrets,
            ["GitHub fine-grained token", "Stripe live secret key"]
        );
        // Look-alike names and values: longer or shorter names, masked or short values.
        let f = scan(
            br#"{"secrets":"abcdefghijklmnop","passwd":"************","password":"short","apikey_hint":"abcdefghijklmnop","passwor":"abcdefghijklmnop"}"#,
            &cfg,
        );
        assert!(f.secrets.is_empty(), "{:?}", f.secrets);
        // A configured name in any case, however long.
        let long = "x".repeat(80);
        let cfg = Config {
            secret_fields: vec![long.clone()],
            ..Config::default()
        };
        let body = format!(r#"{{"{}":"abcdefghijklmnop"}}"#, long.to_uppercase());
        assert_eq!(
            scan(body.as_bytes(), &cfg).secrets,
            [format!("field \"{long}\"")]
        );
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
