//! What a response body holds: secrets, and the personal data whose count matters (card
//! numbers, IBANs, national ids, e-mail addresses).
//!
//! The body is looked at in 32-byte chunks by bit masks ([`marks`]) of where something starts:
//! a secret prefix's first letter, a digit or upper-case letter starting a word, an `@`. Only
//! there are the prefixes compared and the tokens read (the digit run of a card or id, an
//! IBAN-shaped word, an e-mail address), with their checksums. A memmem finder finds PEM
//! headers, and only quotes followed by a secret field name's first byte are looked at.

use std::{collections::HashSet, sync::LazyLock};

use memchr::memmem::Finder;

use super::{
    Config,
    marks::{self, CHUNK, PREFIX_FIRSTS},
};
use crate::models::bounded::key_of;

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
    // The decimal number the rearranged IBAN spells (a letter as two digits, A = 10), reduced
    // mod 97 once per block of 7 characters rather than at each one: a chain of divisions was
    // most of what scanning a short body with an IBAN cost. A block adds at most 14 digits to a
    // value below 97, which stays below 10^16.
    let mut moved = [0u8; 34];
    moved[..s.len() - 4].copy_from_slice(&s[4..]);
    moved[s.len() - 4..s.len()].copy_from_slice(&s[..4]);
    let mut acc = 0u64;
    for block in moved[..s.len()].chunks(7) {
        for &c in block {
            acc = if c.is_ascii_digit() {
                acc * 10 + u64::from(c - b'0')
            } else {
                acc * 100 + u64::from(c - b'A') + 10
            };
        }
        acc %= 97;
    }
    acc == 1
}

fn ssn_valid(area: u32, group: u32, serial: u32) -> bool {
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// What one body holds.
#[derive(Debug, Default, PartialEq)]
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

impl Findings {
    /// True when the body holds a personal item of any kind.
    pub fn personal(&self) -> bool {
        !(self.cards.is_empty()
            && self.ibans.is_empty()
            && self.national_ids.is_empty()
            && self.emails.is_empty())
    }
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

const _: () = {
    let mut p = 0;
    while p < SECRET_PREFIXES.len() {
        let c = SECRET_PREFIXES[p].0.as_bytes()[0];
        let mut q = 0;
        while q < PREFIX_FIRSTS.len() && PREFIX_FIRSTS[q] != c {
            q += 1;
        }
        assert!(
            q < PREFIX_FIRSTS.len(),
            "a secret prefix's first letter is not in PREFIX_FIRSTS"
        );
        p += 1;
    }
};

/// Whether `s` starts as a known secret does ([`SECRET_PREFIXES`]: an AWS key id, a GitHub, Slack
/// or Stripe token) with its token characters after the prefix.
pub fn known_secret(s: &str) -> bool {
    SECRET_PREFIXES.iter().any(|(prefix, min, _)| {
        s.strip_prefix(prefix).is_some_and(|tail| {
            tail.bytes()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
                .count()
                >= *min
        })
    })
}

static PEM: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"-----BEGIN "));

/// Secrets found, by where they start, so that they are listed in the order of the body.
type Secrets = Vec<(usize, String)>;

/// Scans one body with `cfg`'s secret field names.
pub fn scan(b: &[u8], cfg: &Config) -> Findings {
    scan_with(b, cfg, &NameFilter::new(&cfg.secret_fields))
}

/// Scans one body: by chunks, only where a token or secret prefix starts.
pub(super) fn scan_with(b: &[u8], cfg: &Config, names: &NameFilter) -> Findings {
    let (mut f, mut secrets) = (Findings::default(), Secrets::new());
    let json = is_json(b);
    // A digit run read from a start covers the starts after its separators.
    let mut next = 0;
    for i in (0..b.len()).step_by(CHUNK) {
        let m = marks::marks_at(b, i);
        let mut prefixes = m.prefix;
        while prefixes != 0 {
            secret_prefix(b, i + prefixes.trailing_zeros() as usize, &mut secrets);
            prefixes &= prefixes - 1;
        }
        let mut starts = m.digit_starts | m.upper_starts | m.at;
        while starts != 0 {
            let j = i + starts.trailing_zeros() as usize;
            starts &= starts - 1;
            if j >= next {
                next = token_at(b, j, json, &mut f);
            }
        }
    }
    fields_and_keys(b, cfg, names, secrets, &mut f);
    f
}

/// [`scan`] a byte at a time, as it used to be (a pass that looks for runs long enough for an
/// id, card or IBAN, or an `@`, then, if there is one, a token read tried at every byte): the
/// oracle of the tests, and what the chunks save is measured against it.
#[cfg(test)]
pub(crate) fn scan_bytewise(b: &[u8], cfg: &Config) -> Findings {
    let (mut f, mut secrets) = (Findings::default(), Secrets::new());
    let json = is_json(b);
    let (mut digits, mut upper, mut worth_reading) = (0, 0, false);
    for (i, &c) in b.iter().enumerate() {
        digits = match c {
            b'0'..=b'9' => digits + 1,
            b' ' | b'-' => digits,
            _ => 0,
        };
        upper = if c.is_ascii_uppercase() || c.is_ascii_digit() {
            upper + 1
        } else {
            0
        };
        worth_reading |= digits >= 9 || upper >= 15 || c == b'@';
        if SECRET_PREFIXES.iter().any(|p| p.0.as_bytes()[0] == c) && (i == 0 || !is_word(b[i - 1]))
        {
            secret_prefix(b, i, &mut secrets);
        }
    }
    if worth_reading {
        let mut i = 0;
        while i < b.len() {
            i = token_at(b, i, json, &mut f);
        }
    }
    fields_and_keys(
        b,
        cfg,
        &NameFilter::new(&cfg.secret_fields),
        secrets,
        &mut f,
    );
    f
}

/// Whether a body is JSON (its first byte after white space opens an object or an array).
fn is_json(b: &[u8]) -> bool {
    matches!(
        b.iter().find(|c| !c.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// Whether `b[i..end]` is a bare JSON number (a member's or an element's value, not a string,
/// as far as its neighbouring bytes tell): for 10-digit runs, epoch seconds
/// (`"created":1717000123`; every 10-digit number from 2001 to 2033 starts with 1) pass the
/// Saudi id's Luhn check one time in ten, and a day of them would read as national ids in bulk.
/// Identity numbers are sent as strings. Card numbers are read as numbers too (they fit a JSON
/// number, and a numeric column of them is as much a leak).
fn bare_json_number(b: &[u8], i: usize, end: usize) -> bool {
    let before = b[..i].iter().rev().find(|c| !c.is_ascii_whitespace());
    let after = b[end..].iter().find(|c| !c.is_ascii_whitespace());
    matches!(before, Some(b':' | b'[' | b',' | b'-'))
        && matches!(after, None | Some(b',' | b'}' | b']' | b'.' | b'e' | b'E'))
}

/// The token at `i`, if one starts there (the digit run of a card or id, an IBAN-shaped word,
/// an e-mail address around an `@`), into `f`; where to look next. In a JSON body (`json`), a
/// 10-digit run that is a bare number is no national id (it is epoch seconds as often).
fn token_at(b: &[u8], i: usize, json: bool, f: &mut Findings) -> usize {
    let c = b[i];
    let boundary = i == 0 || !is_word(b[i - 1]);
    if c.is_ascii_digit() && boundary {
        let (end, run) = digit_run(b, i);
        let epoch_like = json
            && run.digits().len() == 10
            && run.seps().is_empty()
            && bare_json_number(b, i, end);
        if (end >= b.len() || !is_word(b[end])) && !epoch_like {
            classify_digits(&run, &b[i..end], f);
        }
        return end.max(i + 1);
    }
    if c.is_ascii_uppercase() && boundary {
        let end = i + b[i..]
            .iter()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            .count();
        if (end >= b.len() || !is_word(b[end])) && iban_valid(&b[i..end]) {
            f.ibans.insert(key_of(&b[i..end]));
        } else if let Some((iban, stop)) = iban_print_form(b, i, end) {
            // Its digit groups are not read again as a card or an id.
            f.ibans.insert(key_of(&iban));
            return stop;
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
    i + 1
}

/// A valid IBAN in its print form (ISO 13616: groups of four separated by single spaces,
/// `DE89 3704 0044 0532 0130 00`) whose first group is `b[i..first_end]`: the IBAN without its
/// spaces, and where it ends.
fn iban_print_form(b: &[u8], i: usize, first_end: usize) -> Option<(Vec<u8>, usize)> {
    let first = &b[i..first_end];
    if first.len() != 4 || !first[2..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut iban = first.to_vec();
    let mut at = first_end;
    while b.get(at) == Some(&b' ') && iban.len() < 34 {
        let group = b[at + 1..]
            .iter()
            .take(5)
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            .count();
        if group == 0 || group > 4 {
            break;
        }
        iban.extend_from_slice(&b[at + 1..at + 1 + group]);
        at += 1 + group;
        if group < 4 {
            break;
        }
    }
    let ends = at >= b.len() || !is_word(b[at]);
    (ends && iban_valid(&iban)).then_some((iban, at))
}

/// PEM private keys and JSON fields named like a secret, then the secrets in body order.
fn fields_and_keys(
    b: &[u8],
    cfg: &Config,
    names: &NameFilter,
    mut secrets: Secrets,
    f: &mut Findings,
) {
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
}

/// A secret prefix (at a word boundary) at `i`, followed by enough token characters.
fn secret_prefix(b: &[u8], i: usize, secrets: &mut Secrets) {
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

/// What may stand between the words of a field name.
const SEPARATORS: [u8; 2] = [b'_', b'-'];

/// A field name's letters, lower case, without separators: two names are the same when these
/// are, whatever their ASCII case and separators (`client_secret` is `clientSecret`,
/// JavaScript's and Jackson's default, `client-secret` and `CLIENT_SECRET`).
fn letters(s: &[u8]) -> impl Iterator<Item = u8> + '_ {
    s.iter()
        .filter(|c| !SEPARATORS.contains(c))
        .map(u8::to_ascii_lowercase)
}

/// What the secret field names can be told by at a glance: their first letters (in either ASCII
/// case) and their lengths without separators (all lengths from 63 up), so that most quotes are
/// passed over without comparing names; and the names' [`letters`].
pub(super) struct NameFilter {
    firsts: [bool; 256],
    lengths: u64,
    /// The longest a name can be written (a separator between each two letters).
    longest: usize,
    /// Each configured name's letters, lower case, without separators.
    letters: Vec<Vec<u8>>,
}

impl NameFilter {
    pub(super) fn new(names: &[String]) -> Self {
        let mut f = Self {
            firsts: [false; 256],
            lengths: 0,
            longest: 0,
            letters: Vec::with_capacity(names.len()),
        };
        for n in names {
            let letters: Vec<u8> = letters(n.as_bytes()).collect();
            match letters.first() {
                Some(c) => {
                    f.firsts[c.to_ascii_lowercase() as usize] = true;
                    f.firsts[c.to_ascii_uppercase() as usize] = true;
                }
                // A name of separators only matches any such: any byte may follow the quote.
                None => f.firsts = [true; 256],
            }
            f.lengths |= 1 << letters.len().min(63);
            f.longest = f
                .longest
                .max((2 * letters.len()).saturating_sub(1).max(n.len()));
            f.letters.push(letters);
        }
        f
    }

    /// A JSON field named like a secret (a whole name between quotes, the same [`letters`] as a
    /// configured one) opening at the quote `q`, holding a long unmasked value:
    /// what to list.
    fn secret_field(&self, b: &[u8], q: usize, cfg: &Config) -> Option<String> {
        let rest = &b[q + 1..];
        if !rest.first().is_some_and(|c| self.firsts[*c as usize]) {
            return None;
        }
        let len = memchr::memchr(b'"', &rest[..rest.len().min(self.longest + 1)])?;
        let field = &rest[..len];
        let n = letters(field).count();
        if self.lengths & 1 << n.min(63) == 0 {
            return None;
        }
        let i = self
            .letters
            .iter()
            .position(|l| l.len() == n && l.iter().copied().eq(letters(field)))?;
        let name = &cfg.secret_fields[i];
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

/// At most this many digits are gathered from a run: more than any card number.
const MAX_RUN: usize = 21;

/// A run of digits from [`digit_run`]: the digits, and the digit counts before each separator.
struct DigitRun {
    digits: [u8; MAX_RUN],
    len: usize,
    seps: [u8; MAX_RUN],
    nseps: usize,
}

impl DigitRun {
    fn digits(&self) -> &[u8] {
        &self.digits[..self.len]
    }

    fn seps(&self) -> &[u8] {
        &self.seps[..self.nseps]
    }
}

/// Digits from `i`, allowing single spaces or dashes between digits, and where the run ends.
fn digit_run(b: &[u8], start: usize) -> (usize, DigitRun) {
    let mut run = DigitRun {
        digits: [0; MAX_RUN],
        len: 0,
        seps: [0; MAX_RUN],
        nseps: 0,
    };
    let mut i = start;
    while i < b.len() && run.len < MAX_RUN {
        if b[i].is_ascii_digit() {
            run.digits[run.len] = b[i];
            run.len += 1;
            i += 1;
        } else if matches!(b[i], b' ' | b'-') && i + 1 < b.len() && b[i + 1].is_ascii_digit() {
            run.seps[run.nseps] = run.len as u8;
            run.nseps += 1;
            i += 1;
        } else {
            break;
        }
    }
    (i, run)
}

fn classify_digits(run: &DigitRun, raw: &[u8], f: &mut Findings) {
    let (d, seps) = (run.digits(), run.seps());
    if d.len() < 9 {
        return;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_iban_check_reduces_in_blocks_as_a_digit_at_a_time_would() {
        // The ISO 13616 check a digit at a time, as the standard states it.
        fn mod97(s: &[u8]) -> u32 {
            s[4..].iter().chain(&s[..4]).fold(0, |rem, &c| {
                if c.is_ascii_digit() {
                    (rem * 10 + u32::from(c - b'0')) % 97
                } else {
                    (rem * 100 + u32::from(c - b'A') + 10) % 97
                }
            })
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let alnum = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let (mut valid, mut checked) = (0, 0);
        for _ in 0..20_000 {
            let len = 15 + next(20) as usize;
            let mut s: Vec<u8> = (0..len)
                .map(|i| match i {
                    0 | 1 => b'A' + next(26) as u8,
                    2 | 3 => b'0' + next(10) as u8,
                    // Letter-heavy bodies too: each letter is two digits of the number.
                    _ => alnum[next(if len.is_multiple_of(2) { 26 } else { 36 }) as usize],
                })
                .collect();
            if next(2) == 0 {
                // Check digits that make it valid: 98 - (the number with 00) mod 97.
                s[2] = b'0';
                s[3] = b'0';
                let check = 98 - mod97(&s);
                s[2] = b'0' + (check / 10) as u8;
                s[3] = b'0' + (check % 10) as u8;
            }
            let expected = mod97(&s) == 1;
            assert_eq!(iban_valid(&s), expected, "{}", String::from_utf8_lossy(&s));
            valid += usize::from(expected);
            checked += 1;
        }
        assert!(
            valid > checked / 3 && valid < checked * 2 / 3,
            "{valid} of {checked} valid"
        );
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

    /// IBANs as statements print them (groups of four, ISO 13616's paper form) count as
    /// IBANs, the same ones as their electronic form, and their digit groups are not read as a
    /// card or an id; a look-alike with a bad check, or groups run into a word, is not one.
    #[test]
    fn ibans_in_their_print_form_count() {
        let cfg = Config::default();
        let f = scan(
            b"DE89 3704 0044 0532 0130 00, DE89370400440532013000; GB82 WEST 1234 5698 7654 32\nSA03 8000 0000 6080 1016 7519",
            &cfg,
        );
        assert_eq!(f.ibans.len(), 3, "{f:?}");
        assert!(f.cards.is_empty() && f.national_ids.is_empty(), "{f:?}");
        for no in [
            &b"DE89 3704 0044 0532 0130 01"[..],
            b"DE89 3704 0044 0532 0130 00x",
            b"DE89 3704 0044 0532 0130 00000",
            b"AB12 rest of a sentence",
        ] {
            assert!(
                scan(no, &cfg).ibans.is_empty(),
                "{}",
                String::from_utf8_lossy(no)
            );
        }
    }

    #[test]
    fn tokens_are_found_at_every_place_against_the_chunks() {
        let cfg = Config::default();
        for at in 0..2 * CHUNK + 2 {
            for (token, what) in [
                ("AKIAIOSFODNN7EXAMPLE", "secret"),
                ("ghp_0123456789abcdefghijklmnopqrstuvwxyz", "secret"),
                ("DE89370400440532013000", "iban"),
                ("DE89 3704 0044 0532 0130 00", "iban"),
                ("4111 1111 1111 1111", "card"),
                ("123-45-6789", "id"),
                ("ann@example.com", "email"),
            ] {
                let body = format!("{}{token} x", " ".repeat(at));
                let f = scan(body.as_bytes(), &cfg);
                let found = match what {
                    "secret" => f.secrets.len(),
                    "iban" => f.ibans.len(),
                    "card" => f.cards.len(),
                    "id" => f.national_ids.len(),
                    _ => f.emails.len(),
                };
                assert_eq!(found, 1, "{token} at {at}: {f:?}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
        /// The chunked scan finds what looking at every byte finds, wherever the tokens fall
        /// against the chunks: tokens between runs of filler (lower-case text, separators) so
        /// that some chunks hold nothing and some do.
        #[test]
        fn chunks_find_what_every_byte_finds(
            parts in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["x", "s", "q", " ", "-", " -", "\u{e9}", "7 "]),
                    0usize..48,
                    proptest::sample::select(vec![
                        "", "a", "s", "g", "@", ".", "\"", ":", "_", "0", "7", "12", "Z",
                        "4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111",
                        "123-45-6789", "1000000008", "DE89370400440532013000",
                        "SA0380000000608010167519", "AKIAIOSFODNN7EXAMPLE", "ghp_", "sk_live_",
                        "xoxb-", "0123456789abcdefghijklmnopqrstuvwxyz",
                        "\"password\":\"hunter2hunter2\"", "-----BEGIN RSA PRIVATE KEY-----",
                        "ann@example.com", "@example.org",
                    ]),
                ),
                0..40,
            ),
        ) {
            let body: String = parts
                .iter()
                .map(|(filler, n, token)| filler.repeat(*n) + token)
                .collect();
            let cfg = Config::default();
            proptest::prop_assert_eq!(
                scan(body.as_bytes(), &cfg),
                scan_bytewise(body.as_bytes(), &cfg),
                "{}", body
            );
        }
    }
}
