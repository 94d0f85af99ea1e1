//! Injection in request input: `sql_injection` and `xss` (libinjection, through the
//! `libinjectionrs` port) and `path_traversal` (own rules).
//!
//! Inputs: decoded path segments, decoded query and form parameter names and values, JSON body
//! keys and string values, `multipart/form-data` field names (`name*` decoded), file names and
//! text contents (as sent, as decoded from a `base64` or `quoted-printable` transfer encoding,
//! and a JSON part's keys and strings), XML bodies' element texts and attribute values
//! (entities decoded), `text/plain` bodies (each line, and the whole), and the headers that
//! carry client input (`Referer`'s query, `User-Agent`, `Cookie` values, `X-Forwarded-*`,
//! `Forwarded` and the client-address headers applications log: `X-Real-IP`, `True-Client-IP`,
//! ...; `Host`, `Origin` and `Accept-Language`, which servers look tenants, allowlists and
//! locales up by). Values no check could flag are not collected at all. Each place judges all it holds
//! up to 8 times `max_values` worth judging, the most likely to be flagged first when there
//! are more than `max_values`, so that padding does not push a payload out; a place holding
//! more than it reads is flagged for what it may hide (see `settle`). Each value is decoded
//! (`%XX`, `+`, twice when still encoded) before it is judged; JSON and multipart values are
//! judged as sent.
//!
//! Cost: the port takes 2-6 µs per value, more than the whole budget per transaction, so a value
//! only reaches it when a cheap pre-filter finds characters or words an injection needs (quotes,
//! comment markers, parentheses, `=`, `<`, SQL keywords), and verdicts on recurring values (user
//! agents, cookies) are remembered in a small direct-mapped cache. The pre-filters read a value
//! once through a byte-class table and search words with automata built once, so an ordinary
//! value costs no allocation; an input's place (`query id`) is written only for an alert.
//!
//! Path traversal: a `..` path segment after decoding (including double encoding, `%c0%ae`-style
//! overlong UTF-8, `%u002e` and backslashes), or a known sensitive file (`/etc/passwd`,
//! `win.ini`, ...) named in the path or a parameter.

use std::{borrow::Cow, sync::LazyLock};

use aho_corasick::AhoCorasick;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    http::multipart::{self, FormData},
    redact::{self, redacted, secret_param},
};

use super::{
    AlertKind, Severity,
    bounded::key_of,
    config::Checker,
    engine::{Ctx, Detection, Detector, ModelsError, evidence, subject},
    observation::Observation,
};

/// `[models.injection]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// On or off. Default on.
    pub enabled: bool,
    /// Request headers scanned (lower case; a trailing `*` matches a prefix). Default
    /// `referer`, `user-agent`, `cookie`, `x-forwarded-*`, the client-address headers
    /// applications log (common SQL injection sinks): `forwarded`, `x-real-ip`,
    /// `true-client-ip`, `client-ip`, `x-client-ip`, `x-originating-ip`, and those servers
    /// look things up by: `host` (the tenant of a multi-tenant service), `origin` (a CORS
    /// allowlist) and `accept-language` (a locale table).
    pub headers: Vec<String>,
    /// Body bytes parsed at most. Default 65,536.
    pub max_body_bytes: usize,
    /// Values worth judging (a pre-filter finds them so) per place of a request (path, query,
    /// body, headers) judged in order; a place holding more is judged the most likely to be
    /// flagged first, up to 8 times as many, and one holding more than that is flagged as a
    /// possible evasion. Default 256.
    pub max_values: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            headers: [
                "referer",
                "user-agent",
                "cookie",
                "x-forwarded-*",
                "forwarded",
                "x-real-ip",
                "true-client-ip",
                "client-ip",
                "x-client-ip",
                "x-originating-ip",
                "host",
                "origin",
                "accept-language",
            ]
            .map(String::from)
            .to_vec(),
            max_body_bytes: 65_536,
            max_values: 256,
        }
    }
}

impl Config {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ModelsError> {
        Checker::new("injection")
            .check("max_values", self.max_values > 0, "must be at least 1")
            .finish()
    }
}

/// Decodes `%XX` (and `+` as space when `form`); `%uXXXX` too. Invalid escapes stay.
pub fn decode(s: &str, form: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    while i < b.len() {
        match b[i] {
            b'+' if form => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    out.push(h << 4 | l);
                    i += 2;
                } else if (b[i + 1] == b'u' || b[i + 1] == b'U')
                    && i + 5 < b.len()
                    && b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit)
                {
                    // Four ASCII hex digits (a `&str` slice here could cut a character).
                    let cp = b[i + 2..i + 6]
                        .iter()
                        .fold(0u32, |v, &c| v << 4 | u32::from(hex(c).unwrap_or(0)));
                    let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
                    let mut buf = [0; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    i += 5;
                } else {
                    out.push(b'%');
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn has_escape(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// Decodes until nothing changes (at most three rounds: double and triple encoding).
pub fn decode_fully(s: &str, form: bool) -> String {
    let mut v = decode(s, form);
    for _ in 0..2 {
        if !has_escape(&v) {
            break;
        }
        v = decode(&v, false);
    }
    v
}

const SQL_WORDS: [&str; 14] = [
    "union",
    "select",
    " or ",
    " and ",
    "sleep",
    "benchmark",
    "waitfor",
    "exec",
    "drop ",
    "insert ",
    "delete ",
    "update ",
    "having",
    "order by",
];

/// An automaton finding any of `patterns` regardless of ASCII case (what `contains` on a
/// lower-cased copy found, without the copy).
fn any_ci(patterns: &[&str]) -> AhoCorasick {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(patterns)
        .expect("constant patterns build")
}

/// What SQL reads as white space where [`SQL_WORDS`] have a space (MySQL and Postgres read
/// these as libinjection does), and U+FFFD, what an invalid byte decodes to: `%a0`, Latin-1's
/// no-break space, which MySQL and libinjection read as white space too.
const SQL_WHITE: [&str; 7] = [" ", "\t", "\n", "\x0b", "\x0c", "\r", "\u{fffd}"];

/// [`SQL_WORDS`] with each space any of [`SQL_WHITE`], regardless of ASCII case.
static SQL_WORDS_CI: LazyLock<AhoCorasick> = LazyLock::new(|| {
    let mut words: Vec<String> = Vec::new();
    for w in SQL_WORDS {
        let mut variants = vec![String::new()];
        for (i, part) in w.split(' ').enumerate() {
            if i > 0 {
                variants = variants
                    .iter()
                    .flat_map(|v| SQL_WHITE.iter().map(move |s| format!("{v}{s}")))
                    .collect();
            }
            variants.iter_mut().for_each(|v| v.push_str(part));
        }
        words.extend(variants);
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    any_ci(&words)
});

/// `needle` (ASCII) in `hay` regardless of ASCII case.
pub(crate) fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Which characters the pre-filters look for occur in a value: one pass over its bytes, no
/// allocation. The checks below ask it first and look closer only when it allows a match.
#[derive(Clone, Copy)]
struct Shape(u16);

/// `'` `"` `` ` `` `;` `#` `(` `=` `*`: could be SQL.
const SQL: u16 = 1;
/// `<` `>` `"` `'` `` ` ``: could be markup.
const XSS: u16 = 2;
const PERCENT: u16 = 4;
const DASH: u16 = 8;
const DOT: u16 = 16;
const COLON: u16 = 32;
/// Any white space SQL reads as such ([`SQL_WHITE`] but U+FFFD).
const SPACE: u16 = 64;
/// `\` or any non-ASCII byte: [`fold_overlong`] may change the value.
const FOLD: u16 = 128;
const SLASH: u16 = 256;

static CLASS: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0x80;
    while i < 256 {
        t[i] = FOLD;
        i += 1;
    }
    let classes: [(&[u8], u16); 10] = [
        (b"'\"`", SQL | XSS),
        (b";#(=*", SQL),
        (b"<>", XSS),
        (b"%", PERCENT),
        (b"-", DASH),
        (b".", DOT),
        (b":", COLON),
        (b" \t\n\x0b\x0c\r", SPACE),
        (b"\\", FOLD),
        (b"/", SLASH),
    ];
    let mut k = 0;
    while k < classes.len() {
        let (bytes, class) = classes[k];
        let mut j = 0;
        while j < bytes.len() {
            t[bytes[j] as usize] = class;
            j += 1;
        }
        k += 1;
    }
    t
};

impl Shape {
    fn of(v: &str) -> Self {
        Self(v.bytes().fold(0, |a, c| a | CLASS[c as usize]))
    }

    fn has(self, class: u16) -> bool {
        self.0 & class != 0
    }

    /// Could `v` (of this shape) be SQL injection? (Cheap; false negatives here are
    /// libinjection's too.)
    fn sql(self, v: &str) -> bool {
        self.has(SQL)
            || (self.has(DASH) && v.contains("--"))
            || ((self.has(SPACE) || (self.has(FOLD) && v.contains('\u{fffd}')))
                && SQL_WORDS_CI.is_match(v))
    }

    fn xss(self) -> bool {
        self.has(XSS)
    }

    fn script_url(self, v: &str) -> bool {
        self.has(COLON) && script_url(v)
    }

    /// Could [`traversal`] find something in `v`? (An escape to decode, a character
    /// [`fold_overlong`] folds, a `..`, or a sensitive file named outright: each name has a `/`
    /// or a `.`.)
    fn may_traverse(self, v: &str) -> bool {
        self.has(PERCENT)
            || (self.has(FOLD) && v.contains(['\\', '\u{ff0e}', '\u{2215}', '\u{fffd}']))
            || (self.has(DOT) && v.contains(".."))
            || (self.has(SLASH | DOT) && SENSITIVE_CI.is_match(v))
            // `/etc/./passwd`, `/etc//passwd`.
            || (self.has(SLASH) && (v.contains("//") || v.contains("/./")))
    }

    /// Worth handing to [`InjectionDetector::judge`]: libinjection could flag `v`, or it is a
    /// script URL.
    fn judged(self, v: &str) -> bool {
        self.sql(v) || self.xss() || self.script_url(v)
    }

    /// The traversal in `v`, looked for only where it could be (the full [`traversal`] runs
    /// only past [`Shape::may_traverse`]).
    fn traversal(self, v: &str) -> Option<&'static str> {
        if self.may_traverse(v) {
            traversal(v)
        } else {
            None
        }
    }
}

/// A traversal finding ([`traversal`]), carried with the value it was found in.
type Traversal = Option<&'static str>;

/// Whether `v` is worth judging at `place`, and with what traversal finding: `None` when no
/// check of the place could flag it; else `Some` with the traversal in `v` when the place is
/// judged for traversal ([`Place::parameter`]; elsewhere not looked for). Nothing else is
/// collected, so values no check would flag never take a place's budget from one that a check
/// could; the traversal is looked for once, here, and the finding carried on the [`Input`].
fn worth(place: Place, v: &str) -> Option<Traversal> {
    let shape = Shape::of(v);
    let found = if place.parameter() {
        shape.traversal(v)
    } else {
        None
    };
    (found.is_some() || shape.judged(v)).then_some(found)
}

/// `v` with `+` read as a space (a form value before decoding) handed to `f`; on the stack when
/// short.
fn plus_as_space<R>(v: &str, f: impl FnOnce(&str) -> R) -> R {
    let mut buf = [0u8; 256];
    if v.len() > buf.len() {
        return f(&v.replace('+', " "));
    }
    let b = &mut buf[..v.len()];
    b.copy_from_slice(v.as_bytes());
    for c in b.iter_mut().filter(|c| **c == b'+') {
        *c = b' ';
    }
    // Replacing one ASCII byte with another keeps the text UTF-8.
    f(std::str::from_utf8(b).expect("still UTF-8"))
}

/// `javascript:` and friends (libinjection judges markup, not bare URLs): the first 16
/// characters that are neither white space nor control characters, in any ASCII case.
fn script_url(v: &str) -> bool {
    let mut t = [0u8; 16];
    let mut n = 0;
    for c in v
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .take(t.len())
    {
        // Any other character fails the ASCII prefixes below, as its UTF-8 bytes would.
        t[n] = if c.is_ascii() {
            (c as u8).to_ascii_lowercase()
        } else {
            0xff
        };
        n += 1;
    }
    let t = &t[..n];
    [&b"javascript:"[..], b"vbscript:", b"data:text/html"]
        .iter()
        .any(|p| t.starts_with(p))
}

const SENSITIVE: [&str; 10] = [
    "/etc/passwd",
    "/etc/shadow",
    "/etc/hosts",
    "/proc/self/",
    "win.ini",
    "boot.ini",
    "/windows/system32",
    ".htpasswd",
    "/.ssh/",
    "/.aws/credentials",
];

static SENSITIVE_CI: LazyLock<AhoCorasick> = LazyLock::new(|| any_ci(&SENSITIVE));

/// Overlong UTF-8 encodings of `.`, `/` and `\` (they decode to invalid UTF-8: looked for raw).
const OVERLONG: [&str; 6] = [
    "%c0%ae",
    "%c0%af",
    "%e0%80%ae",
    "%c1%9c",
    "%c1%8s",
    "%25c0%25ae",
];

/// Normalises overlong UTF-8 encodings of `.`, `/` and `\` that some servers accept.
fn fold_overlong(s: &str) -> String {
    s.replace('\u{fffd}', "")
        .replace("\u{ff0e}", ".")
        .replace("\u{2215}", "/")
        .replace('\\', "/")
}

/// A path-traversal marker in `raw` (a path or a parameter value), if any.
///
/// Allocates only when `raw` has something to decode (`%`) or fold (`\`, non-ASCII): a value
/// without `%` decodes to itself, and one without `\` and non-ASCII characters folds to itself.
pub fn traversal(raw: &str) -> Option<&'static str> {
    let shape = Shape::of(raw);
    if shape.has(PERCENT)
        && let Some(m) = overlong(raw)
    {
        return Some(m);
    }
    let d = if shape.has(PERCENT) {
        Cow::Owned(decode_fully(raw, false))
    } else {
        Cow::Borrowed(raw)
    };
    let d = if Shape::of(&d).has(FOLD) {
        Cow::Owned(fold_overlong(&d))
    } else {
        d
    };
    if d.contains("..") && d.split('/').any(dot_dot) {
        return Some("../");
    }
    // `/etc/./passwd` and `/etc//passwd` name `/etc/passwd`.
    let mut d = d;
    while d.contains("//") || d.contains("/./") {
        d = Cow::Owned(d.replace("//", "/").replace("/./", "/"));
    }
    if !SENSITIVE_CI.is_match(d.as_ref()) {
        return None;
    }
    // In list order, as the detail names the first.
    SENSITIVE
        .iter()
        .find(|f| contains_ci(d.as_bytes(), f.as_bytes()))
        .copied()
}

/// A path segment that climbs: `..` (or `....`, which some servers collapse to it), with any
/// path parameter (`..;x=1`, `..;jsessionid=1`: Tomcat drops a segment's `;...`).
fn dot_dot(seg: &str) -> bool {
    let seg = seg.split(';').next().unwrap_or(seg);
    seg == ".." || seg == "...."
}

/// An overlong UTF-8 dot or slash (`%c0%ae`) in `raw`, still encoded: decoding turns it into
/// invalid UTF-8, so it is looked for before (the first in list order, as the detail names it).
fn overlong(raw: &str) -> Option<&'static str> {
    OVERLONG
        .iter()
        .find(|m| contains_ci(raw.as_bytes(), m.as_bytes()))
        .copied()
}

/// Where an input was read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Place {
    Path,
    Query,
    Form,
    Json,
    Cookie,
    Referer,
    RefererQuery,
    Header,
    /// What a server takes out of a credential and looks up with (a `Basic` user name, a JWT's
    /// `kid`), named by `name`: a parameter, judged for traversal too.
    Credential,
    Multipart,
    /// An XML body's element text or attribute value, named by the element (`user`) or as
    /// `element/@attribute`.
    Xml,
    /// A `text/plain` body, whole (`body`) or a line of it (`body line`).
    Text,
}

impl Place {
    fn label(self) -> &'static str {
        match self {
            Place::Path => "path",
            Place::Query => "query",
            Place::Form => "form",
            Place::Json => "json",
            Place::Cookie => "cookie",
            Place::Referer => "referer",
            Place::RefererQuery => "referer query",
            Place::Header => "header",
            Place::Credential => "credential",
            Place::Multipart => "multipart",
            Place::Xml => "xml",
            Place::Text => "text",
        }
    }

    /// Parameters are judged for traversal too.
    fn parameter(self) -> bool {
        matches!(
            self,
            Place::Query
                | Place::Form
                | Place::Json
                | Place::Multipart
                | Place::Credential
                | Place::Xml
                | Place::Text
        )
    }
}

/// What of a place an input is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    /// A value (of the parameter, field or key `name`).
    Value,
    /// A parameter's name or a JSON key: read by the application as much as a value is
    /// (`?id'--=1`, `{"x' OR '1'='1": 1}`).
    Name,
    /// A multipart file's name (of field `name`): where traversal goes in uploads.
    Filename,
}

/// One value to judge: where it came from (the name as sent, for named places) and the value,
/// decoded.
struct Input<'a> {
    place: Place,
    part: Part,
    name: Cow<'a, str>,
    value: Cow<'a, str>,
    /// The traversal in `value` where the place is judged for one ([`worth`]).
    traversal: Traversal,
}

impl<'a> Input<'a> {
    /// A value at `place`, under `name`.
    fn value(place: Place, name: impl Into<Cow<'a, str>>, value: Cow<'a, str>) -> Self {
        Self {
            place,
            part: Part::Value,
            name: name.into(),
            value,
            traversal: None,
        }
    }

    /// A name (a parameter's, a JSON key) at `place`, decoded.
    fn name(place: Place, name: Cow<'a, str>) -> Self {
        Self {
            place,
            part: Part::Name,
            name: Cow::Borrowed(""),
            value: name,
            traversal: None,
        }
    }

    /// With the traversal [`worth`] found in the value.
    fn traversing(self, traversal: Traversal) -> Self {
        Self { traversal, ..self }
    }

    /// The place as an alert names it (`query id`, `header user-agent`, `query parameter
    /// name`); built only for an alert.
    fn describe(&self) -> String {
        let label = self.place.label();
        match (self.part, self.place) {
            (Part::Name, Place::Json) => return "json key".to_owned(),
            (Part::Name, Place::Multipart) if self.name.is_empty() => {
                return "multipart field name".to_owned();
            }
            (Part::Name, Place::Multipart) => return format!("multipart {} json key", self.name),
            (Part::Name, _) => return format!("{label} parameter name"),
            (Part::Filename, _) if self.name.is_empty() => return "multipart filename".to_owned(),
            (Part::Filename, _) => return format!("multipart filename of {}", self.name),
            (Part::Value, _) => {}
        }
        match self.place {
            Place::Path | Place::Referer => label.to_owned(),
            Place::Query | Place::Form | Place::RefererQuery => {
                format!("{label} {}", decoded(&self.name, true))
            }
            Place::Json if self.name.is_empty() => "json .".to_owned(),
            // A cookie without a name (no `=`).
            Place::Cookie if self.name.is_empty() => label.to_owned(),
            Place::Json | Place::Cookie | Place::Multipart | Place::Text => {
                format!("{label} {}", self.name)
            }
            Place::Xml if self.name.is_empty() => label.to_owned(),
            Place::Xml => format!("{label} {}", self.name),
            Place::Header | Place::Credential => {
                format!("{label} {}", self.name.to_ascii_lowercase())
            }
        }
    }

    /// The value as an alert may show it: a secret's (a password, a token, a cookie, a key; see
    /// [`secret_param`], the configured API key parameters `also` among them) is never shown,
    /// only its length and short hash.
    fn shown(&self, also: &[String]) -> String {
        let secret_name = |n: &str| secret_param(n, also);
        // A name is the field's, not the secret it holds.
        let secret = self.part == Part::Value
            && match self.place {
                Place::Cookie => true,
                Place::Query | Place::Form | Place::RefererQuery => {
                    secret_name(&decoded(&self.name, true))
                }
                Place::Json | Place::Header | Place::Multipart => secret_name(&self.name),
                // `password`, `user/@password`, `ns:pin`: the local name.
                Place::Xml => {
                    let local = self.name.rsplit('@').next().unwrap_or_default();
                    secret_name(local.rsplit(':').next().unwrap_or_default())
                }
                Place::Path | Place::Referer | Place::Credential | Place::Text => false,
            };
        if secret {
            redacted(&self.value)
        } else {
            shorten(&self.value)
        }
    }
}

/// `raw` (a query string or form body, still encoded) with the values of secret fields and of
/// the API key parameters `also` redacted ([`redact::pairs`], names decoded as the detector
/// decodes them).
fn redact_pairs(raw: &str, also: &[String]) -> String {
    redact::pairs(raw, |k| decoded(k, true), also).into_owned()
}

/// [`decode_fully`] without a copy when there is nothing to decode.
fn decoded(s: &str, form: bool) -> Cow<'_, str> {
    if s.contains('%') || (form && s.contains('+')) {
        Cow::Owned(decode_fully(s, form))
    } else {
        Cow::Borrowed(s)
    }
}

/// A request body, parsed as far as judging needs.
enum Body<'a> {
    None,
    Json(Value),
    /// A JSON text that does not parse: its whole strings are read ([`json_strings`]).
    Strings(Cow<'a, [u8]>),
    Form(Cow<'a, str>),
    FormData(FormData<'a>),
    /// A multipart body whose parts servers may not read as Sentinel does: its lines.
    Lines(&'a [u8]),
    /// An XML body (`application/xml`, `text/xml`, `application/*+xml`): its element texts and
    /// attribute values ([`xml_values`]).
    Xml(Cow<'a, str>),
    /// A `text/plain` body: whole, and its lines.
    Text(Cow<'a, str>),
}

/// A complete string of a JSON text that does not parse.
#[derive(Debug, PartialEq)]
enum Lenient {
    /// A string followed by `:`.
    Key(String),
    /// Any other (under the last key before it).
    Value(String),
}

/// The complete strings of a JSON text that does not parse (cut at the body cap, malformed, or
/// not UTF-8), keys and values, in order, each built only when asked for (a place stops asking
/// at its budget). A string cut by the end of the text is left out.
fn json_strings(b: &[u8]) -> impl Iterator<Item = Lenient> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        loop {
            let open = i + memchr::memchr(b'"', &b[i..])?;
            let mut end = open + 1;
            while end < b.len() && b[end] != b'"' {
                end += if b[end] == b'\\' { 2 } else { 1 };
            }
            if end >= b.len() {
                i = b.len();
                return None;
            }
            i = end + 1;
            // A string with bytes that are not UTF-8 is read as servers decode it, with
            // replacement characters (Express's body-parser, Python's `errors="replace"`).
            let raw = &b[open..=end];
            let text = match std::str::from_utf8(raw) {
                Ok(s) => serde_json::from_str::<String>(s),
                Err(_) => serde_json::from_str::<String>(&String::from_utf8_lossy(raw)),
            };
            let Ok(text) = text else {
                continue;
            };
            return Some(
                if b[i..].iter().find(|c| !c.is_ascii_whitespace()) == Some(&b':') {
                    Lenient::Key(text)
                } else {
                    Lenient::Value(text)
                },
            );
        }
    })
}

struct Finding {
    kind: AlertKind,
    place: String,
    /// As the alert shows it: shortened, a secret's redacted.
    value: String,
    detail: String,
    /// The place held more values worth judging than are read ([`Overflow`]): nothing was
    /// found, something may be hidden.
    overflow: bool,
}

/// Remembered verdicts for recurring values: 1 = SQLi, 2 = XSS, 4 = judged.
struct VerdictCache {
    slots: Vec<(u64, u8)>,
}

impl VerdictCache {
    fn get(&self, h: u64) -> Option<u8> {
        let s = self.slots[(h as usize) & (self.slots.len() - 1)];
        (s.0 == h && s.1 & 4 != 0).then_some(s.1)
    }
    fn put(&mut self, h: u64, v: u8) {
        let n = self.slots.len();
        self.slots[(h as usize) & (n - 1)] = (h, v | 4);
    }
}

/// The detector.
pub struct InjectionDetector {
    cfg: Config,
    /// The API key parameters (`[models] api_key_params`), whose values alerts never show.
    api_key_params: Vec<String>,
    cache: VerdictCache,
    /// Values handed to libinjection (for statistics).
    pub judged: u64,
}

impl InjectionDetector {
    /// A detector; the values of `api_key_params` (`[models] api_key_params`) are redacted as
    /// secrets' are.
    pub fn new(cfg: &Config, api_key_params: &[String]) -> Self {
        Self {
            cfg: cfg.clone(),
            api_key_params: api_key_params.to_vec(),
            cache: VerdictCache {
                slots: vec![(0, 0); 4096],
            },
            judged: 0,
        }
    }

    fn header_scanned(&self, name: &str) -> bool {
        let n = name.as_bytes();
        self.cfg.headers.iter().any(|h| match h.strip_suffix('*') {
            Some(p) => n.len() >= p.len() && n[..p.len()].eq_ignore_ascii_case(p.as_bytes()),
            None => name.eq_ignore_ascii_case(h),
        })
    }

    /// libinjection's verdict on one value (bit 1: SQLi, bit 2: XSS).
    fn judge(&mut self, v: &str) -> (u8, String) {
        let shape = Shape::of(v);
        let sql = shape.sql(v);
        let xss = shape.xss();
        let mut verdict = 0u8;
        if shape.script_url(v) {
            verdict |= 2;
        }
        if !sql && !xss {
            return (verdict, String::new());
        }
        let h = key_of(v);
        if let Some(c) = self.cache.get(h) {
            // Cached fingerprints are not kept; name the class only.
            return (c & 3 | verdict, String::new());
        }
        self.judged += 1;
        let mut fp = String::new();
        if sql {
            let mut r = libinjectionrs::detect_sqli(v.as_bytes());
            // An invalid byte decodes to U+FFFD, `%a0` (white space to MySQL and libinjection)
            // among them: read it as a space too.
            if !r.is_injection() && shape.has(FOLD) && v.contains('\u{fffd}') {
                r = libinjectionrs::detect_sqli(v.replace('\u{fffd}', " ").as_bytes());
            }
            if r.is_injection() {
                verdict |= 1;
                fp = r
                    .fingerprint
                    .map(|f| f.as_str().to_owned())
                    .unwrap_or_default();
            }
        }
        if xss && libinjectionrs::detect_xss(v.as_bytes()).is_injection() {
            verdict |= 2;
        }
        self.cache.put(h, verdict);
        (verdict, fp)
    }

    /// The body, parsed when it is JSON or a form (JSON only when something in it could be an
    /// injection at all).
    fn body<'a>(&self, o: &'a Observation) -> Body<'a> {
        let body = &o.req_body[..o.req_body.len().min(self.cfg.max_body_bytes)];
        if body.is_empty() {
            return Body::None;
        }
        let ctype =
            super::header(&o.req_headers, "content-type").map_or(&b""[..], |v| v.as_bytes());
        // First: a boundary may say `json` or `x-www-form-urlencoded`.
        if let Some(mut boundaries) = multipart::form_data_boundaries(ctype) {
            // Whole when the capture kept all of it and so does the cap above.
            let whole = o.req_body.len() as u64 >= o.req_bytes && body.len() == o.req_body.len();
            if let (Some(boundary), 1) = (boundaries.pop(), boundaries.len() + 1) {
                let form = FormData::new(body, boundary, whole);
                if form.parts().next().is_some() {
                    return Body::FormData(form);
                }
            }
            // No part, or servers disagree on the boundary (PHP finds it in `xboundary=`): a
            // server may still read parts in it, so its lines are judged as text.
            return Body::Lines(body);
        }
        // Servers parse by the media type (before any parameter: `; x=json` names none); the
        // text is looked at only when the type is neither JSON nor a form.
        let media = ctype[..memchr::memchr(b';', ctype).unwrap_or(ctype.len())].trim_ascii();
        let json = contains_ci(media, b"json");
        let form = media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded");
        // In UTF-16 or UTF-32, read as UTF-8 (the NULs of a JSON text's start tell).
        let wide = wide_encoding(body, ctype, json || !form).map(|w| transcode(body, w));
        let text = wide.as_deref().map_or(body, str::as_bytes);
        let first = text.iter().find(|c| !c.is_ascii_whitespace()).copied();
        if json || (!form && matches!(first, Some(b'{' | b'['))) {
            match body_candidate(text).then(|| serde_json::from_slice::<Value>(text)) {
                Some(Ok(j)) => Body::Json(j),
                // Cut at the cap (a large body padded before its payload) or malformed: the
                // strings that are whole are still judged.
                Some(Err(_)) => {
                    Body::Strings(wide.map_or(Cow::Borrowed(body), |s| Cow::Owned(s.into_bytes())))
                }
                None => Body::None,
            }
        } else if form {
            Body::Form(wide.map_or_else(|| String::from_utf8_lossy(body), Cow::Owned))
        } else if xml_media(media) {
            Body::Xml(wide.map_or_else(|| String::from_utf8_lossy(body), Cow::Owned))
        } else if media.eq_ignore_ascii_case(b"text/plain") {
            Body::Text(wide.map_or_else(|| String::from_utf8_lossy(body), Cow::Owned))
        } else {
            Body::None
        }
    }

    /// The values of `o` worth judging, place by place, and the places that held more than
    /// are read ([`settle`]).
    fn inputs<'a>(
        &self,
        o: &'a Observation,
        body: &'a Body<'_>,
        with_path: bool,
    ) -> (Vec<Input<'a>>, Vec<Overflow>) {
        // Each place (path, query, body, headers) has its own budget of values: many values
        // in one must not keep another's from being judged. Each reads up to `read` values
        // worth judging, and one more to tell whether there were more ([`settle`]).
        let max = self.cfg.max_values;
        let read = max.saturating_mul(COLLECT);
        let mut v = Vec::new();
        let mut over = Vec::new();
        if with_path {
            for seg in o.path.split('/').filter(|s| !s.is_empty()) {
                if v.len() > read {
                    break;
                }
                let seg = decoded(seg, false);
                if worth(Place::Path, &seg).is_some() {
                    v.push(Input::value(Place::Path, "", seg));
                }
            }
        }
        over.extend(settle(&mut v, 0, max, read, "path"));
        let start = v.len();
        let limit = start + read + 1;
        pairs(&o.query, Place::Query, &mut v, limit);
        over.extend(settle(&mut v, start, max, read, "query"));
        let start = v.len();
        let limit = start + read + 1;
        match body {
            Body::Json(j) => json_values(j, "", &mut v, limit),
            Body::Strings(text) => lenient_values(text, &mut v, limit),
            Body::Form(text) => pairs(text, Place::Form, &mut v, limit),
            Body::FormData(form) => form_data(form, &mut v, limit),
            Body::Lines(body) => {
                body_lines(body, Place::Multipart, "body line", &mut v, limit);
            }
            Body::Xml(text) => xml_values(text, &mut v, limit),
            Body::Text(text) => {
                // Each line (libinjection reads an SQL statement's first tokens only), then the
                // whole, as an application reads it (a payload over several lines).
                let whole = text.trim();
                let lines = whole.contains('\n');
                let name = if lines { "body line" } else { "body" };
                body_lines(whole.as_bytes(), Place::Text, name, &mut v, limit);
                if lines
                    && v.len() < limit
                    && let Some(t) = worth(Place::Text, whole)
                {
                    v.push(Input::value(Place::Text, "body", Cow::Borrowed(whole)).traversing(t));
                }
            }
            Body::None => {}
        }
        over.extend(settle(&mut v, start, max, read, "body"));
        let start = v.len();
        let limit = start + read + 1;
        // What servers take out of the credential and look up with: a Basic user name and a
        // JWT's `kid` (common SQL and file-path sinks). The password and the token are secrets.
        if let Some(user) = super::header(&o.req_headers, "authorization")
            .and_then(|a| crate::enrich::principal::basic_user(a))
            && let Some(t) = worth(Place::Credential, &user)
        {
            v.push(Input::value(Place::Credential, "basic user", Cow::Owned(user)).traversing(t));
        }
        if let Some(kid) = o.jwt.as_ref().and_then(|j| j.kid.as_deref())
            && let Some(t) = worth(Place::Credential, kid)
        {
            v.push(
                Input::value(Place::Credential, "jwt kid", Cow::Owned(kid.to_owned()))
                    .traversing(t),
            );
        }
        for (name, value) in &o.req_headers {
            if v.len() >= limit {
                break;
            }
            if !self.header_scanned(name) || !header_worth(name, value) {
                continue;
            }
            if name.eq_ignore_ascii_case("cookie") {
                for c in value.split(';') {
                    if v.len() >= limit {
                        break;
                    }
                    let (k, raw) = c.trim().split_once('=').unwrap_or(("", c.trim()));
                    let val = decoded(raw, false);
                    // PHP's `$_COOKIE` reads `+` as a space: that reading is judged too.
                    let plus = raw
                        .contains('+')
                        .then(|| decoded(raw, true))
                        .filter(|p| *p != val && worth(Place::Cookie, p).is_some());
                    if worth(Place::Cookie, &val).is_some() {
                        v.push(Input::value(Place::Cookie, k, val));
                    }
                    if let Some(p) = plus {
                        v.push(Input::value(Place::Cookie, k, p));
                    }
                }
            } else if name.eq_ignore_ascii_case("referer") {
                let path = match value.split_once('?') {
                    Some((path, q)) => {
                        pairs(q, Place::RefererQuery, &mut v, limit);
                        path
                    }
                    None => value,
                };
                v.push(Input::value(Place::Referer, "", decoded(path, false)));
            } else if name.eq_ignore_ascii_case("forwarded") {
                // `for=_hidden;proto=http, for=...` (RFC 7239), which libinjection may flag
                // whole: applications read each parameter's value, judged alone (an element
                // that is not `token=value`, whole).
                for el in value.split([',', ';']).map(str::trim) {
                    if v.len() >= limit {
                        break;
                    }
                    let val = match el.split_once('=') {
                        Some((k, val))
                            if !k.is_empty()
                                && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') =>
                        {
                            val.trim_matches('"')
                        }
                        _ => el,
                    };
                    if worth(Place::Header, val).is_some() {
                        v.push(Input::value(Place::Header, &**name, Cow::Borrowed(val)));
                    }
                }
            } else {
                v.push(Input::value(Place::Header, &**name, Cow::Borrowed(value)));
            }
        }
        over.extend(settle(&mut v, start, max, read, "headers"));
        (v, over)
    }
}

/// Whether a scanned header's value (`value`, whole, as sent) is read further: when it is worth
/// judging as a header ([`worth`]: a traversal does not count there), and a `Cookie` or
/// `Referer` with an escape, whose parts are judged decoded (a part may be worth judging once
/// decoded when the whole is not: `%27%20OR%201%3D1--` as a bare cookie, or as a Referer's
/// path). Without an escape a part decodes to what the whole holds, so nothing more could be
/// found.
fn header_worth(name: &str, value: &str) -> bool {
    let shape = Shape::of(value);
    shape.judged(value)
        || (shape.has(PERCENT)
            && (name.eq_ignore_ascii_case("cookie") || name.eq_ignore_ascii_case("referer")))
}

/// A text encoding wider than UTF-8: JSON on the wire must be UTF-8 (RFC 8259), but Jackson
/// and Python's `json.loads` on bytes read these too, as RFC 4627 section 3 detects them.
#[derive(Clone, Copy)]
enum Wide {
    Utf16 { be: bool },
    Utf32 { be: bool },
}

/// The wide encoding a body of type `ctype` is in, if any: as its `charset` names it, else as
/// a byte order mark says, else (when `sniff`: a JSON text) as the NULs of its first four bytes
/// show (`00 00 00 xx` is UTF-32BE, `xx 00 xx 00` UTF-16LE, ...). EBCDIC and UTF-7 are not read.
fn wide_encoding(body: &[u8], ctype: &[u8], sniff: bool) -> Option<Wide> {
    let params = &ctype[memchr::memchr(b';', ctype).unwrap_or(ctype.len())..];
    let charset = multipart::params(params)
        .find(|(k, _)| k.eq_ignore_ascii_case(b"charset"))
        .map(|(_, v)| v.to_ascii_lowercase());
    let named = match charset.as_deref() {
        Some(b"utf-16le") => return Some(Wide::Utf16 { be: false }),
        Some(b"utf-16be") => return Some(Wide::Utf16 { be: true }),
        Some(b"utf-32le") => return Some(Wide::Utf32 { be: false }),
        Some(b"utf-32be") => return Some(Wide::Utf32 { be: true }),
        // Big-endian unless a mark says otherwise.
        Some(b"utf-16") => Some(Wide::Utf16 { be: true }),
        Some(b"utf-32") => Some(Wide::Utf32 { be: true }),
        _ => None,
    };
    match *body {
        [0, 0, 0xfe, 0xff, ..] => Some(Wide::Utf32 { be: true }),
        [0xff, 0xfe, 0, 0, ..] => Some(Wide::Utf32 { be: false }),
        [0xfe, 0xff, ..] => Some(Wide::Utf16 { be: true }),
        [0xff, 0xfe, ..] => Some(Wide::Utf16 { be: false }),
        _ if named.is_some() => named,
        [0, 0, 0, x, ..] if sniff && x != 0 => Some(Wide::Utf32 { be: true }),
        [x, 0, 0, 0, ..] if sniff && x != 0 => Some(Wide::Utf32 { be: false }),
        [0, x, 0, y, ..] if sniff && x != 0 && y != 0 => Some(Wide::Utf16 { be: true }),
        [x, 0, y, 0, ..] if sniff && x != 0 && y != 0 => Some(Wide::Utf16 { be: false }),
        _ => None,
    }
}

/// `body` in encoding `w` as UTF-8, without a byte order mark (invalid units replaced, as
/// lenient decoders do). At most twice as long as `body`, which the body cap bounds.
fn transcode(body: &[u8], w: Wide) -> String {
    let s: String = match w {
        Wide::Utf16 { be } => char::decode_utf16(body.chunks_exact(2).map(|c| {
            let c = [c[0], c[1]];
            if be {
                u16::from_be_bytes(c)
            } else {
                u16::from_le_bytes(c)
            }
        }))
        .map(|c| c.unwrap_or('\u{fffd}'))
        .collect(),
        Wide::Utf32 { be } => body
            .chunks_exact(4)
            .map(|c| {
                let c = [c[0], c[1], c[2], c[3]];
                char::from_u32(if be {
                    u32::from_be_bytes(c)
                } else {
                    u32::from_le_bytes(c)
                })
                .unwrap_or('\u{fffd}')
            })
            .collect(),
    };
    match s.strip_prefix('\u{feff}') {
        Some(t) => t.to_owned(),
        None => s,
    }
}

/// How many times a place's budget of values worth judging ([`Config::max_values`]) it reads
/// and judges at most; a place holding more is flagged ([`settle`]).
const COLLECT: usize = 8;

/// The characters libinjection's tokenizers key on, a bit each (for [`suspicion`]): quotes,
/// `;`, `#`, `(`, `=`, `*`, `<`, `>`, and SQL white space as one.
static MARK: [u16; 256] = {
    let mut t = [0u16; 256];
    let marks = b"'\"`;#(=*<>";
    let mut k = 0;
    while k < marks.len() {
        t[marks[k] as usize] = 1 << k;
        k += 1;
    }
    let white = b" \t\n\x0b\x0c\r";
    let mut k = 0;
    while k < white.len() {
        t[white[k] as usize] = 1 << marks.len();
        k += 1;
    }
    t
};

/// How likely a value worth judging is to be flagged, for ranking: a definite finding of the
/// cheap checks (a script URL, a traversal in a parameter) first; then, for what libinjection
/// judges, how many of the things it keys on the value holds (each kind of quote, `;`, `#`, `(`,
/// `=`, `*`, `<`, `>`, white space, a comment marker, an SQL word, a tag); nothing for the rest
/// (a `..` in a cookie), which no check of its place flags. Dots, dashes, colons, slashes and
/// bytes outside ASCII count for nothing: padding made of them ranks below any payload.
fn suspicion(i: &Input<'_>) -> u32 {
    let v = &*i.value;
    let shape = Shape::of(v);
    if shape.script_url(v) || i.traversal.is_some() {
        return u32::MAX;
    }
    if !(shape.sql(v) || shape.xss()) {
        return 0;
    }
    let marks = v
        .bytes()
        .fold(0u16, |a, c| a | MARK[c as usize])
        .count_ones();
    let comment = shape.has(DASH | SLASH) && (v.contains("--") || v.contains("/*"));
    let word = SQL_WORDS_CI.is_match(v);
    let tag = memchr::memchr_iter(b'<', v.as_bytes()).any(|at| {
        v.as_bytes()
            .get(at + 1)
            .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, b'/' | b'!'))
    });
    marks + u32::from(comment) + u32::from(word) + u32::from(tag)
}

/// A place that held more values worth judging than it reads: what a payload hides behind.
struct Overflow {
    /// `path`, `query`, `body` or `headers`.
    place: &'static str,
    /// What most of the values read could be ([`settle`]).
    kind: AlertKind,
}

/// Settles the values one place read (from `start` on; at most `read + 1`) for judging. Within
/// the budget (`max`), all of them, in order. Over it, all of them still, the most likely to be
/// flagged ([`suspicion`]) first (in their order among equals), so that the alert names the
/// likeliest: a cut-off at the budget let padding that outranks a payload (values with more
/// quotes, parentheses and `=` than it, which libinjection passes) push it out unjudged. Over
/// `read`, the `read` most likely are kept and the place is an [`Overflow`]: a payload may hide
/// past them, and no ordinary request holds thousands of values with quotes, parentheses or
/// markup in one place. (Sampling instead would only make an evasion succeed most of the time,
/// not never; judging everything would make the detector's cost the sender's to choose.)
fn settle(
    v: &mut Vec<Input<'_>>,
    start: usize,
    max: usize,
    read: usize,
    place: &'static str,
) -> Option<Overflow> {
    let n = v.len() - start;
    if n > max {
        v[start..].sort_by_cached_key(|i| std::cmp::Reverse(suspicion(i)));
    }
    if n <= read {
        return None;
    }
    v.truncate(start + read);
    // Named after the check most of what was read is shaped for (a quote counts for both).
    let (mut sql, mut xss) = (0usize, 0usize);
    for i in &v[start..] {
        let shape = Shape::of(&i.value);
        sql += usize::from(shape.sql(&i.value));
        xss += usize::from(shape.xss());
    }
    let kind = if sql == 0 && xss == 0 {
        AlertKind::PathTraversal
    } else if sql >= xss {
        AlertKind::SqlInjection
    } else {
        AlertKind::Xss
    };
    Some(Overflow { place, kind })
}

/// The lines of `body` worth judging at `place`, trimmed, each under `name`, into `out` up to
/// `max`.
fn body_lines<'a>(
    body: &'a [u8],
    place: Place,
    name: &'static str,
    out: &mut Vec<Input<'a>>,
    max: usize,
) {
    for line in body.split(|&c| c == b'\n') {
        if out.len() >= max {
            break;
        }
        let text = String::from_utf8_lossy(line.trim_ascii());
        if let Some(t) = worth(place, &text) {
            out.push(Input::value(place, name, text).traversing(t));
        }
    }
}

/// Whether a media type (lower or upper case, without parameters) is XML's: `application/xml`,
/// `text/xml` or a `+xml` type (`application/soap+xml`, `application/atom+xml`).
fn xml_media(media: &[u8]) -> bool {
    media.eq_ignore_ascii_case(b"application/xml")
        || media.eq_ignore_ascii_case(b"text/xml")
        || (media.len() > 4 && media[media.len() - 4..].eq_ignore_ascii_case(b"+xml"))
}

/// Could a JSON body hold an injection or a traversal? (Its structure has quotes, so look for
/// the rest: percent escapes, which JSON strings are judged with, included.)
fn body_candidate(b: &[u8]) -> bool {
    b.iter().any(|c| {
        matches!(
            c,
            b'\'' | b'<' | b'>' | b';' | b'(' | b'#' | b'\\' | b'`' | b'=' | b'%'
        )
    }) || b.windows(2).any(|w| w == b"--" || w == b"/*" || w == b"..")
        // On the bytes: an invalid UTF-8 sequence never makes or breaks an ASCII word.
        || SQL_WORDS_CI.is_match(b)
        || SENSITIVE_CI.is_match(b)
}

/// The names and values of `q` (a query or form body, still encoded) worth judging, into `out`
/// up to `max`.
fn pairs<'a>(q: &'a str, place: Place, out: &mut Vec<Input<'a>>, max: usize) {
    if q.is_empty() {
        return;
    }
    for p in q.split('&') {
        if out.len() >= max {
            return;
        }
        let (k, val) = p.split_once('=').unwrap_or(("", p));
        // The value first: where both trip the same check, the alert names the value.
        if let Some((value, t)) = worth_decoded(place, val) {
            out.push(Input::value(place, k, value).traversing(t));
        }
        if let Some((name, t)) = worth_decoded(place, k) {
            out.push(Input::name(place, name).traversing(t));
        }
    }
}

/// A form name or value (`raw`, as sent) at `place` decoded, with its traversal ([`worth`]),
/// when it is worth judging. Escaped ones are judged worth it decoded: `%41` is an `A`, and a
/// few hundred of them must not use up the values judged before the one that matters. Only what
/// has escapes or is worth judging is copied.
fn worth_decoded(place: Place, raw: &str) -> Option<(Cow<'_, str>, Traversal)> {
    if raw.contains('%') {
        let d = decoded(raw, true);
        let t = worth(place, &d)?;
        return Some((d, t));
    }
    // Without escapes, decoding only reads `+` as a space, which no traversal holds: the
    // traversal in `raw` is the one in the value judged.
    let shape = Shape::of(raw);
    let t = if place.parameter() {
        shape.traversal(raw)
    } else {
        None
    };
    (t.is_some()
        || shape.judged(raw)
        || (raw.contains('+') && plus_as_space(raw, |p| Shape::of(p).judged(p))))
    .then(|| (decoded(raw, true), t))
}

/// The field names, file names and text contents of a multipart body that are worth judging,
/// up to `out` holding `max`. The contents of clearly binary files (an image, a PDF: see
/// [`multipart::Part::is_binary_file`]) are skipped, and so is the content of a part the body's
/// cut ends in. Names and file names are judged as every server reads them: PHP's reading
/// (single quotes, no `filename*`) too, where it differs.
fn form_data<'a>(form: &FormData<'a>, out: &mut Vec<Input<'a>>, max: usize) {
    for part in form.parts() {
        if out.len() >= max {
            return;
        }
        let field = String::from_utf8_lossy(part.name().unwrap_or_default());
        // PHP honours single quotes (`name='q; filename=x'` is the field `q; filename=x`): the
        // names and file names it reads otherwise are judged too.
        let quoted = memchr::memchr(b'\'', part.disposition).is_some();
        let php = multipart::php_params(part.disposition)
            .filter(|_| quoted)
            .filter(|(k, v)| {
                (k.eq_ignore_ascii_case(b"name") || k.eq_ignore_ascii_case(b"filename"))
                    && !part
                        .params()
                        .any(|(k2, v2)| k2.eq_ignore_ascii_case(k) && v2 == *v)
            });
        for (k, v) in part.params().chain(php) {
            // RFC 8187 extended values (`filename*=UTF-8''%e2%82%ac.txt`), which some servers
            // read for `name*` as well.
            let (k, v) = match k.strip_suffix(b"*") {
                Some(k) => {
                    let v = String::from_utf8_lossy(v);
                    let encoded = v.splitn(3, '\'').nth(2).unwrap_or(&v);
                    (k, Cow::Owned(decode_fully(encoded, false)))
                }
                None => (k, String::from_utf8_lossy(v)),
            };
            let Some(t) = worth(Place::Multipart, &v) else {
                continue;
            };
            if k.eq_ignore_ascii_case(b"name") {
                out.push(Input::name(Place::Multipart, v).traversing(t));
            } else if k.eq_ignore_ascii_case(b"filename") {
                out.push(Input {
                    place: Place::Multipart,
                    part: Part::Filename,
                    name: field.clone(),
                    value: v,
                    traversal: t,
                });
            }
        }
        let Some(content) = part.content.filter(|_| !part.is_binary_file()) else {
            continue;
        };
        // As sent, then as servers that honour the part's transfer encoding read it.
        let decoded: Vec<Vec<u8>> = part
            .transfer_decodings()
            .filter(|d| d[..] != *content && !part.holds_binary_file(d))
            .collect();
        for content in std::iter::once(content).chain(decoded.iter().map(Vec::as_slice)) {
            if out.len() >= max {
                return;
            }
            let text = String::from_utf8_lossy(content);
            if let Some(t) = worth(Place::Multipart, &text) {
                out.push(
                    Input::value(
                        Place::Multipart,
                        field.clone(),
                        Cow::Owned(text.into_owned()),
                    )
                    .traversing(t),
                );
            }
            json_part(part.content_type, content, &field, out, max);
        }
    }
}

/// A JSON part's keys and strings, as an application that parses it reads them (`\u003c` is
/// `<`), into `out` up to `max`, named under the part's `field`. A part is JSON when its type
/// says so or its text opens like JSON (after a byte order mark, which lenient parsers skip); one
/// that does not parse (nested deeper than the parser goes, cut, malformed) gives its complete
/// strings, as a JSON body does.
fn json_part(
    content_type: Option<&[u8]>,
    content: &[u8],
    field: &str,
    out: &mut Vec<Input<'_>>,
    max: usize,
) {
    let content = content.strip_prefix(b"\xef\xbb\xbf").unwrap_or(content);
    let first = content.iter().find(|c| !c.is_ascii_whitespace());
    if !(contains_ci(content_type.unwrap_or_default(), b"json")
        || matches!(first, Some(b'{' | b'[' | b'"')))
        || !body_candidate(content)
    {
        return;
    }
    let parsed = serde_json::from_slice::<Value>(content);
    let mut found = Vec::new();
    let room = max.saturating_sub(out.len());
    match &parsed {
        Ok(j) => json_values(j, "", &mut found, room),
        Err(_) => lenient_values(content, &mut found, room),
    }
    out.extend(found.into_iter().map(|i| Input {
        place: Place::Multipart,
        part: i.part,
        name: match i.part {
            Part::Value if !i.name.is_empty() => Cow::Owned(format!("{field}.{}", i.name)),
            // A key: the alert names the field it is in (`""` for a part without a name).
            _ if field.is_empty() => Cow::Borrowed("\"\""),
            _ => Cow::Owned(field.to_string()),
        },
        value: Cow::Owned(i.value.into_owned()),
        // Judged for traversal as a JSON value is: a multipart part is a parameter too.
        traversal: i.traversal,
    }));
}

/// The complete strings of a JSON text that does not parse ([`json_strings`]) that are worth
/// judging, keys and values, into `out` up to `max`.
fn lenient_values(text: &[u8], out: &mut Vec<Input<'_>>, max: usize) {
    let mut key = String::new();
    for s in json_strings(text) {
        if out.len() >= max {
            break;
        }
        match s {
            Lenient::Key(k) => {
                if let Some(t) = worth(Place::Json, &k) {
                    out.push(Input::name(Place::Json, Cow::Owned(k.clone())).traversing(t));
                }
                key = k;
            }
            Lenient::Value(s) => {
                if let Some(t) = worth(Place::Json, &s) {
                    out.push(Input::value(Place::Json, key.clone(), Cow::Owned(s)).traversing(t));
                }
            }
        }
    }
}

/// The string values and keys of `j` that are worth judging, up to `out` holding `max`.
fn json_values<'a>(j: &'a Value, path: &'a str, out: &mut Vec<Input<'a>>, max: usize) {
    if out.len() >= max {
        return;
    }
    match j {
        Value::String(s) => {
            if let Some(t) = worth(Place::Json, s) {
                out.push(Input::value(Place::Json, path, Cow::Borrowed(s)).traversing(t));
            }
        }
        Value::Array(a) => {
            for x in a {
                json_values(x, path, out, max);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                if out.len() >= max {
                    return;
                }
                if let Some(t) = worth(Place::Json, k) {
                    out.push(Input::name(Place::Json, Cow::Borrowed(k)).traversing(t));
                }
                json_values(x, k, out, max);
            }
        }
        _ => {}
    }
}

/// Element nesting an XML body is read to with every name kept; deeper elements' text is named
/// after the deepest kept.
const XML_DEPTH: usize = 64;

/// `s` (XML text or an attribute value) with the predefined entities (`&lt;`, `&amp;`, ...) and
/// character references (`&#39;`, `&#x3c;`) replaced, as a parser hands it to an application;
/// others (`&custom;`) stay. Copies only when there is a `&`.
fn xml_unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        // Within the longest reference read (`&#x10ffff;`); `;` is ASCII, a boundary.
        let end = memchr::memchr(b';', &rest.as_bytes()[..rest.len().min(12)]);
        let ch = end.and_then(|end| match &rest[1..end] {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            r => {
                let r = r.strip_prefix('#')?;
                let n = match r.strip_prefix(['x', 'X']) {
                    Some(h) => u32::from_str_radix(h, 16),
                    None => r.parse(),
                };
                char::from_u32(n.ok()?)
            }
        });
        match (ch, end) {
            (Some(c), Some(end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            _ => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// An element's text as read so far: its runs between comments, CDATA sections and
/// processing instructions joined (a DOM's text content), copied only when there are several.
#[derive(Default)]
enum XmlText<'a> {
    #[default]
    Empty,
    One(Cow<'a, str>),
    Joined(String),
}

impl<'a> XmlText<'a> {
    fn add(&mut self, run: Cow<'a, str>) {
        if run.is_empty() {
            return;
        }
        *self = match std::mem::take(self) {
            XmlText::Empty => XmlText::One(run),
            XmlText::One(first) => XmlText::Joined(first.into_owned() + &run),
            XmlText::Joined(mut s) => {
                s.push_str(&run);
                XmlText::Joined(s)
            }
        };
    }

    /// The text so far, trimmed, leaving this empty.
    fn take(&mut self) -> Option<Cow<'a, str>> {
        let t = match std::mem::take(self) {
            XmlText::Empty => return None,
            XmlText::One(Cow::Borrowed(s)) => Cow::Borrowed(s.trim()),
            XmlText::One(Cow::Owned(s)) => Cow::Owned(s.trim().to_owned()),
            XmlText::Joined(s) => Cow::Owned(s.trim().to_owned()),
        };
        (!t.is_empty()).then_some(t)
    }
}

/// The element texts and attribute values of an XML body (a SOAP envelope, an
/// `application/*+xml` document) that are worth judging, into `out` up to `max`, each named by
/// its element (`user`) or as `element/@attribute`. Read in one pass, leniently (a document cut
/// at the body cap or malformed gives what it has): entities decoded, CDATA as it is, comments,
/// processing instructions, the DOCTYPE and namespace declarations skipped. Namespace prefixes
/// stay in the names. No crate: a parser would refuse what is cut or malformed, and this needs
/// no tree, only the texts and the names they are under.
fn xml_values<'a>(x: &'a str, out: &mut Vec<Input<'a>>, max: usize) {
    let b = x.as_bytes();
    // Open elements (at most `XML_DEPTH` kept; `deep` counts those past it).
    let mut open: Vec<&'a str> = Vec::new();
    let mut deep = 0usize;
    let mut text = XmlText::Empty;
    let mut i = 0;
    let flush = |text: &mut XmlText<'a>, open: &[&'a str], out: &mut Vec<Input<'a>>| {
        if let Some(v) = text.take()
            && let Some(t) = worth(Place::Xml, &v)
        {
            let name = open.last().copied().unwrap_or_default();
            out.push(Input::value(Place::Xml, name, v).traversing(t));
        }
    };
    let find = |from: usize, what: &str| memchr::memmem::find(&b[from..], what.as_bytes());
    while i < b.len() && out.len() < max {
        let Some(lt) = memchr::memchr(b'<', &b[i..]) else {
            text.add(xml_unescape(&x[i..]));
            break;
        };
        text.add(xml_unescape(&x[i..i + lt]));
        i += lt;
        let rest = &b[i..];
        if rest.starts_with(b"<!--") {
            i = find(i + 4, "-->").map_or(b.len(), |e| i + 4 + e + 3);
            continue;
        }
        if rest.starts_with(b"<![CDATA[") {
            let end = find(i + 9, "]]>").map_or(b.len(), |e| i + 9 + e);
            text.add(Cow::Borrowed(&x[i + 9..end]));
            i = (end + 3).min(b.len());
            continue;
        }
        if rest.starts_with(b"<?") {
            i = find(i + 2, "?>").map_or(b.len(), |e| i + 2 + e + 2);
            continue;
        }
        if rest.starts_with(b"<!") {
            // A DOCTYPE, with its internal subset in brackets.
            let mut depth = 0i32;
            let end = rest.iter().position(|&c| {
                depth += i32::from(c == b'[') - i32::from(c == b']');
                c == b'>' && depth <= 0
            });
            i = end.map_or(b.len(), |e| i + e + 1);
            continue;
        }
        // A tag: the text before it is its element's.
        flush(&mut text, &open, out);
        if rest.starts_with(b"</") {
            if deep > 0 {
                deep -= 1;
            } else {
                open.pop();
            }
            i = memchr::memchr(b'>', rest).map_or(b.len(), |e| i + e + 1);
            continue;
        }
        let name_end = rest[1..]
            .iter()
            .position(|&c| c.is_ascii_whitespace() || c == b'/' || c == b'>')
            .map_or(rest.len(), |e| e + 1);
        let name = &x[i + 1..i + name_end];
        let mut j = i + name_end;
        let mut closed = false;
        // Attributes, up to the end of the tag.
        while j < b.len() && out.len() < max {
            match b[j] {
                c if c.is_ascii_whitespace() => j += 1,
                b'>' => {
                    j += 1;
                    break;
                }
                b'/' => {
                    closed = true;
                    j += 1;
                }
                _ => {
                    let at = j;
                    while j < b.len()
                        && !matches!(b[j], b'=' | b'>' | b'/')
                        && !b[j].is_ascii_whitespace()
                    {
                        j += 1;
                    }
                    let attr = &x[at..j];
                    while j < b.len() && b[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    if b.get(j) != Some(&b'=') {
                        continue;
                    }
                    j += 1;
                    while j < b.len() && b[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    // Quoted (the next `j` past the closing quote), or not (lenient).
                    let (from, to, next) = match b.get(j) {
                        Some(&q @ (b'"' | b'\'')) => match memchr::memchr(q, &b[j + 1..]) {
                            Some(e) => (j + 1, j + 1 + e, j + 2 + e),
                            None => (j + 1, b.len(), b.len()),
                        },
                        _ => {
                            let to = b[j..]
                                .iter()
                                .position(|&c| c.is_ascii_whitespace() || c == b'>')
                                .map_or(b.len(), |e| j + e);
                            (j, to, to)
                        }
                    };
                    j = next;
                    // Namespace declarations are the parser's, never the application's.
                    if attr == "xmlns" || attr.starts_with("xmlns:") {
                        continue;
                    }
                    let v = xml_unescape(&x[from..to]);
                    if let Some(t) = worth(Place::Xml, &v) {
                        out.push(
                            Input::value(Place::Xml, format!("{name}/@{attr}"), v).traversing(t),
                        );
                    }
                }
            }
        }
        i = j;
        if !closed {
            if open.len() < XML_DEPTH {
                open.push(name);
            } else {
                deep += 1;
            }
        }
    }
    if out.len() < max {
        flush(&mut text, &open, out);
    }
}

fn shorten(v: &str) -> String {
    if v.chars().count() > 120 {
        format!("{}...", v.chars().take(120).collect::<String>())
    } else {
        v.to_owned()
    }
}

impl Detector for InjectionDetector {
    fn name(&self) -> &'static str {
        "injection"
    }

    fn observe(&mut self, ctx: &Ctx<'_>, out: &mut Vec<Detection>) {
        let o = ctx.obs;
        let mut findings: Vec<Finding> = Vec::new();
        let push = |f: Finding, findings: &mut Vec<Finding>| {
            if !findings.iter().any(|x| x.kind == f.kind) {
                findings.push(f);
            }
        };
        // Traversal on the path as sent (encoded forms matter) and on parameters.
        if let Some(m) = traversal(&o.path) {
            push(
                Finding {
                    kind: AlertKind::PathTraversal,
                    place: "path".into(),
                    value: shorten(&o.path),
                    detail: m.to_owned(),
                    overflow: false,
                },
                &mut findings,
            );
        }
        // Path segments are skipped when no byte in the path could make one worth judging
        // (`:` for a script URL: `/go/javascript:alert(1)`).
        let fast_clean = o.query.is_empty()
            && o.req_body.is_empty()
            && !o
                .path
                .bytes()
                .any(|c| CLASS[c as usize] & (SQL | XSS | PERCENT | COLON) != 0);
        let body = if fast_clean { Body::None } else { self.body(o) };
        // Parameters are judged decoded, which loses overlong encodings: look at them raw.
        let raw_params = [
            ("query", &*o.query),
            (
                "form",
                match &body {
                    Body::Form(text) => text.as_ref(),
                    _ => "",
                },
            ),
        ];
        for (place, raw) in raw_params {
            if raw.contains('%')
                && let Some(m) = overlong(raw)
            {
                push(
                    Finding {
                        kind: AlertKind::PathTraversal,
                        place: place.into(),
                        value: shorten(&redact_pairs(raw, &self.api_key_params)),
                        detail: m.to_owned(),
                        overflow: false,
                    },
                    &mut findings,
                );
            }
        }
        let (inputs, overflows) = self.inputs(o, &body, !fast_clean);
        for i in inputs {
            if let Some(m) = i.traversal {
                push(
                    Finding {
                        kind: AlertKind::PathTraversal,
                        place: i.describe(),
                        value: i.shown(&self.api_key_params),
                        detail: m.to_owned(),
                        overflow: false,
                    },
                    &mut findings,
                );
            }
            let (verdict, fp) = self.judge(&i.value);
            if verdict & 1 != 0 {
                push(
                    Finding {
                        kind: AlertKind::SqlInjection,
                        place: i.describe(),
                        value: i.shown(&self.api_key_params),
                        detail: fp,
                        overflow: false,
                    },
                    &mut findings,
                );
            }
            if verdict & 2 != 0 {
                push(
                    Finding {
                        kind: AlertKind::Xss,
                        place: i.describe(),
                        value: i.shown(&self.api_key_params),
                        detail: String::new(),
                        overflow: false,
                    },
                    &mut findings,
                );
            }
        }
        // A place that held more than is read may hide a payload past what was judged: said
        // when nothing of the kind was found.
        let read = self.cfg.max_values.saturating_mul(COLLECT);
        for of in overflows {
            push(
                Finding {
                    kind: of.kind,
                    place: of.place.into(),
                    value: String::new(),
                    detail: format!("more than {read} values worth judging"),
                    overflow: true,
                },
                &mut findings,
            );
        }
        for f in findings {
            let what = match f.kind {
                AlertKind::SqlInjection => "SQL injection",
                AlertKind::Xss => "Cross-site scripting",
                _ => "Path traversal",
            };
            let answered = if (200..300).contains(&o.status) {
                format!(
                    ", and the server answered {} (it may have worked)",
                    o.status
                )
            } else {
                format!(", answered {}", o.status)
            };
            let how = match (f.kind, f.detail.is_empty()) {
                (AlertKind::SqlInjection, false) => {
                    format!(" (libinjection fingerprint {})", f.detail)
                }
                (AlertKind::PathTraversal, _) => format!(" ({})", f.detail),
                _ => String::new(),
            };
            let client = crate::enrich::principal::client_text(o.client_ip);
            let (severity, confidence, explanation) = if f.overflow {
                (
                    Severity::Medium,
                    0.6,
                    format!(
                        "Possible {} hidden in the {} of {} {} from {client} in {}: it held \
                         {}, more than Sentinel reads, so a payload may lie past the {read} \
                         most likely, which were judged and not flagged (padding to evade the \
                         check){answered}.",
                        match f.kind {
                            AlertKind::SqlInjection => "SQL injection",
                            AlertKind::Xss => "cross-site scripting",
                            _ => "path traversal",
                        },
                        f.place,
                        o.method,
                        o.endpoint,
                        ctx.place(),
                        f.detail,
                    ),
                )
            } else {
                (
                    if (200..300).contains(&o.status) {
                        Severity::Critical
                    } else {
                        Severity::High
                    },
                    0.95,
                    format!(
                        "{what} in {} of {} {} from {client} in {}{how}: {:?}{answered}.",
                        f.place,
                        o.method,
                        o.endpoint,
                        ctx.place(),
                        f.value
                    ),
                )
            };
            let alert = ctx.alert(
                f.kind,
                severity,
                confidence,
                explanation,
                evidence([
                    ("input", json!(f.place)),
                    ("value", json!(f.value)),
                    ("detail", json!(f.detail)),
                    ("status", json!(o.status)),
                    ("method", json!(o.method)),
                    ("user_agent", json!(o.user_agent)),
                ]),
            );
            out.push(Detection {
                alert,
                subject: subject::source(o.client_ip),
            });
        }
    }

    fn tracked(&self) -> usize {
        0
    }

    fn memory_bytes(&self) -> usize {
        self.cache.slots.len() * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Engine, ModelsConfig, synth::*};

    fn kinds(e: &mut Engine, o: &Observation) -> Vec<AlertKind> {
        e.observe(o).into_iter().map(|a| a.kind).collect()
    }

    fn get(target: &str, n: u64) -> Observation<'_> {
        let (p, q) = target.split_once('?').unwrap_or((target, ""));
        let mut o = obs(T0 + n * S, "203.0.113.40", p);
        o.query = q.into();
        o.status = 404;
        o
    }

    /// What servers take out of a credential and look keys or users up with: a `Basic` user
    /// name and a JWT's `kid`; ordinary ones raise nothing.
    #[test]
    fn credential_parts_servers_look_up_are_judged() {
        use base64::Engine as _;
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        let url = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let with = |auth: Option<String>, kid: Option<&str>| {
            let mut o = obs(T0, "203.0.113.70", "/balance");
            if let Some(a) = auth {
                o.req_headers.push(("Authorization".into(), a.into()));
            }
            if let Some(k) = kid {
                let header = format!(r#"{{"alg":"HS256","kid":{}}}"#, json!(k));
                let t = format!("{}.{}.c2ln", url(&header), url(r#"{"sub":"u"}"#));
                o.jwt = crate::enrich::principal::parse_jwt(&t);
                assert!(o.jwt.is_some());
            }
            kinds(&mut Engine::new(&ModelsConfig::default()).unwrap(), &o)
        };
        assert!(
            with(Some(basic("admin' OR '1'='1'--:pw")), None).contains(&AlertKind::SqlInjection)
        );
        assert!(with(None, Some("x' UNION SELECT 'key'--")).contains(&AlertKind::SqlInjection));
        assert!(with(None, Some("../../../../etc/passwd")).contains(&AlertKind::PathTraversal));
        assert_eq!(with(Some(basic("layla.h@bank.test:S3cr3t'pw")), None), []);
        assert_eq!(with(None, Some("2024-11-key-1")), []);
        assert_eq!(with(Some("Bearer abc.def.ghi".into()), None), []);
    }

    #[test]
    fn the_simulators_payloads_are_caught_at_the_first_request() {
        let cases = [
            (
                "/accounts?id=1%27%20OR%20%271%27%3D%271",
                AlertKind::SqlInjection,
            ),
            (
                "/accounts?id=1%20UNION%20SELECT%20username,password%20FROM%20users--",
                AlertKind::SqlInjection,
            ),
            (
                "/search?q=%27%3B%20DROP%20TABLE%20accounts%3B--",
                AlertKind::SqlInjection,
            ),
            ("/items?id=-1+union+select+1,2,3", AlertKind::SqlInjection),
            (
                "/search?q=%3Cscript%3Ealert(document.cookie)%3C%2Fscript%3E",
                AlertKind::Xss,
            ),
            (
                "/profile?name=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E",
                AlertKind::Xss,
            ),
            ("/go?next=javascript:alert(1)", AlertKind::Xss),
            (
                "/static/..%2f..%2f..%2fetc%2fpasswd",
                AlertKind::PathTraversal,
            ),
            // Targets sent with bytes outside ASCII, as the HTTP layer reads them.
            (
                "/search?z=%FF&q=1'%20OR%201=1--%20",
                AlertKind::SqlInjection,
            ),
            ("/static/%FF/../../etc/passwd", AlertKind::PathTraversal),
            ("/search?q=%FF1'%20OR%201=1--%20", AlertKind::SqlInjection),
            (
                "/files?name=../../../../etc/shadow",
                AlertKind::PathTraversal,
            ),
            (
                "/files?name=%252e%252e%252fboot.ini",
                AlertKind::PathTraversal,
            ),
            (
                "/static/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
                AlertKind::PathTraversal,
            ),
            (
                "/static/..%5c..%5cwindows%5cwin.ini",
                AlertKind::PathTraversal,
            ),
            (
                "/files?name=%c0%ae%c0%ae/%c0%ae%c0%ae/x.txt",
                AlertKind::PathTraversal,
            ),
            // A sensitive file named outright, without any traversal or encoding.
            ("/download?file=/etc/passwd", AlertKind::PathTraversal),
            ("/download?f=C:/boot.ini&x=1", AlertKind::PathTraversal),
        ];
        for (i, (target, want)) in cases.iter().enumerate() {
            let mut e = Engine::new(&ModelsConfig::default()).unwrap();
            let k = kinds(&mut e, &get(target, i as u64));
            assert!(k.contains(want), "{target}: {k:?}");
        }
    }

    #[test]
    fn padding_does_not_push_the_payload_out_of_the_values_judged() {
        let payload = "id=1%27%20OR%20%271%27%3D%271";
        // Escaped harmless values before it, in the same query.
        let padded: Vec<String> = (0..300).map(|i| format!("p%{i:02}={i}%41")).collect();
        let q = format!("{}&{payload}", padded.join("&"));
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let k = kinds(&mut e, &get(&format!("/items?{q}"), 0));
        assert!(k.contains(&AlertKind::SqlInjection), "{k:?}");
        // Harmless JSON strings under keys that come first.
        let mut body = String::from("{");
        for i in 0..300 {
            body += &format!("\"a{i:03}\":\"value {i}\",");
        }
        body += r#""z":"1' UNION SELECT username,password FROM users--"}"#;
        let mut o = obs(T0 + S, "203.0.113.50", "/search");
        o.method = "POST".into();
        o.req_headers
            .push(("Content-Type".into(), "application/json".into()));
        o.req_body = body.into_bytes().into();
        let k = kinds(&mut Engine::new(&ModelsConfig::default()).unwrap(), &o);
        assert!(k.contains(&AlertKind::SqlInjection), "{k:?}");
        // Values worth judging in the query do not use up the body's budget.
        let quoted: Vec<String> = (0..300).map(|i| format!("n{i}=O'Brien{i}")).collect();
        let mut o = obs(T0 + 2 * S, "203.0.113.51", "/search");
        o.query = quoted.join("&").into();
        o.method = "POST".into();
        o.req_headers
            .push(("Content-Type".into(), "application/json".into()));
        o.req_body = br#"{"q":"<script>alert(document.cookie)</script>"}"#.to_vec().into();
        let k = kinds(&mut Engine::new(&ModelsConfig::default()).unwrap(), &o);
        assert!(k.contains(&AlertKind::Xss), "{k:?}");
        // Padding worth judging itself (an `=` or a quote each), more values than the budget,
        // before the payload: in a form, and as multipart parts.
        let mut form: Vec<String> = (0..300).map(|i| format!("p{i}=O'Brien{i}")).collect();
        form.push("q=1%27%20UNION%20SELECT%20password%20FROM%20users--".into());
        let o = post(
            "203.0.113.52",
            "application/x-www-form-urlencoded",
            form.join("&").as_bytes(),
        );
        let k = kinds(&mut Engine::new(&ModelsConfig::default()).unwrap(), &o);
        assert!(k.contains(&AlertKind::SqlInjection), "{k:?}");
        let mut parts = Vec::new();
        for i in 0..260 {
            parts.push(format!(
                "--B\r\nContent-Disposition: form-data; name=\"p{i}\"\r\n\r\na=b"
            ));
        }
        let body = format!(
            "{}\r\n--B\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n1' UNION SELECT \
             password FROM users--\r\n--B--\r\n",
            parts.join("\r\n")
        );
        let o = post(
            "203.0.113.53",
            "multipart/form-data; boundary=B",
            body.as_bytes(),
        );
        let k = kinds(&mut Engine::new(&ModelsConfig::default()).unwrap(), &o);
        assert!(k.contains(&AlertKind::SqlInjection), "{k:?}");
    }

    #[test]
    fn padding_that_outranks_or_outnumbers_the_payload_does_not_hide_it() {
        // Padding libinjection passes that ranks above the payload (a quote, parentheses and
        // white space against a quote and a comment marker), more of it than the budget.
        let pad = |i: usize| format!("O'Brien (Jr.) {i}");
        let engine = || Engine::new(&ModelsConfig::default()).unwrap();
        let query = |payload: bool| {
            let mut q: Vec<String> = (0..300)
                .map(|i| format!("p{i}={}", pad(i).replace(' ', "+")))
                .collect();
            if payload {
                q.push("user=admin'--".into());
            }
            let mut o = obs(T0, "203.0.113.69", "/login");
            o.query = q.join("&").into();
            o
        };
        let k = kinds(&mut engine(), &query(true));
        assert!(k.contains(&AlertKind::SqlInjection), "{k:?}");
        // Over the budget, ordinary values alone raise nothing.
        let k = kinds(&mut engine(), &query(false));
        assert!(k.is_empty(), "{k:?}");
        let json = |n: usize, payload: Option<usize>| {
            let mut fields: Vec<String> =
                (0..n).map(|i| format!("\"p{i}\":\"{}\"", pad(i))).collect();
            if let Some(at) = payload {
                fields.insert(at, r#""user":"admin'--""#.into());
            }
            post(
                "203.0.113.70",
                "application/json",
                format!("{{{}}}", fields.join(",")).as_bytes(),
            )
        };
        for o in [json(300, Some(300)), json(2_000, Some(1_999))] {
            let a = engine().observe(&o);
            assert!(
                a.iter().any(|a| a.kind == AlertKind::SqlInjection
                    && a.evidence["input"] == "json user"
                    && a.severity == Severity::Critical),
                "{a:?}"
            );
        }
        let k = kinds(&mut engine(), &json(2_000, None));
        assert!(k.is_empty(), "{k:?}");
        // More than a place reads (8 times the budget): the payload past them is not judged,
        // and the place is flagged for what it may hide.
        let a = engine().observe(&json(2_100, Some(2_100)));
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].kind, AlertKind::SqlInjection);
        assert_eq!(a[0].severity, Severity::Medium);
        assert_eq!(a[0].evidence["input"], "body");
        assert!(
            a[0].explanation
                .starts_with("Possible SQL injection hidden in the body of POST"),
            "{}",
            a[0].explanation
        );
    }

    #[test]
    fn padding_that_is_never_judged_does_not_take_the_payloads_place() {
        // Dots, dashes, colons, slashes, spaces and non-ASCII bytes in each pad: characters the
        // old ranking counted, in values no check flags, payload first and last.
        let pads: Vec<String> = (0..300).map(|i| format!("p{i}=%C3%A9..-:%20/a")).collect();
        let json_pads: Vec<String> = (0..300)
            .map(|i| format!("\"p{i}\":\"\u{e9}..-: /a\""))
            .collect();
        for (payload, json_payload, kind) in [
            (
                "id=1%27%20OR%20%271%27%3D%271",
                r#""id":"1' OR '1'='1""#,
                AlertKind::SqlInjection,
            ),
            (
                "q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
                r#""q":"<script>alert(1)</script>""#,
                AlertKind::Xss,
            ),
        ] {
            for first in [true, false] {
                let (q, j) = if first {
                    (
                        format!("{payload}&{}", pads.join("&")),
                        format!("{{{json_payload},{}}}", json_pads.join(",")),
                    )
                } else {
                    (
                        format!("{}&{payload}", pads.join("&")),
                        format!("{{{},{json_payload}}}", json_pads.join(",")),
                    )
                };
                let k = kinds(
                    &mut Engine::new(&ModelsConfig::default()).unwrap(),
                    &get(&format!("/items?{q}"), 0),
                );
                assert!(k.contains(&kind), "query, first {first}: {k:?}");
                let o = post(
                    "203.0.113.54",
                    "application/x-www-form-urlencoded",
                    q.as_bytes(),
                );
                let k = kinds(&mut Engine::new(&ModelsConfig::default()).unwrap(), &o);
                assert!(k.contains(&kind), "form, first {first}: {k:?}");
                let o = post("203.0.113.55", "application/json", j.as_bytes());
                let k = kinds(&mut Engine::new(&ModelsConfig::default()).unwrap(), &o);
                assert!(k.contains(&kind), "json, first {first}: {k:?}");
            }
        }
    }

    /// Asserts that each of `targets`, requested by an attacker's address, raises `want` (from
    /// a fresh engine, as alerts are not repeated); or (`None`), requested by an ordinary
    /// client, raises nothing.
    fn assert_targets(targets: &[&str], want: Option<AlertKind>) {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        for (i, target) in targets.iter().enumerate() {
            let mut o = get(target, i as u64);
            if want.is_none() {
                o.client_ip = "198.18.0.9".parse().unwrap();
            } else {
                e = Engine::new(&ModelsConfig::default()).unwrap();
            }
            let k = kinds(&mut e, &o);
            match want {
                Some(kind) => assert!(k.contains(&kind), "{target}: {k:?}"),
                None => assert!(k.is_empty(), "{target}: {k:?}"),
            }
        }
    }

    #[test]
    fn sql_white_space_other_than_a_space_does_not_hide_sql() {
        assert_targets(
            &[
                "/items?id=-1%09union%09select%09username,password%09from%09users",
                "/items?id=-1%0aunion%0aselect%0ausername,password%0afrom%0ausers",
                "/items?id=-1%0bunion%0bselect%0busername,password%0bfrom%0busers",
                "/items?id=-1%0cunion%0cselect%0cusername,password%0cfrom%0cusers",
                "/items?id=-1%0dunion%0dselect%0dusername,password%0dfrom%0dusers",
                "/items?id=-1%a0union%a0select%a0username,password%a0from%a0users",
                "/items?id=1%09and%09sleep(5)",
                "/items?id=1%0band%0bsleep(5)",
                "/items/-1%09union%09select%09username,password%09from%09users",
            ],
            Some(AlertKind::SqlInjection),
        );
        // Ordinary text over lines, and Latin-1 text.
        assert_targets(
            &[
                "/notes?text=Please%0Aupdate%0Amy%0Aaddress%0Aand%0Aphone",
                "/search?q=caf%E9%A0or%A0th%E9",
            ],
            None,
        );
    }

    #[test]
    fn a_form_body_is_read_as_its_media_type_says_whatever_it_starts_with() {
        for (ctype, body) in [
            ("application/x-www-form-urlencoded", "{=1&id=1' OR '1'='1"),
            ("application/x-www-form-urlencoded", "[x]=1&id=1' OR '1'='1"),
            (
                "application/x-www-form-urlencoded; x=json",
                "id=1' OR '1'='1",
            ),
            (
                " Application/X-WWW-Form-Urlencoded ;charset=utf-8",
                "[x]=1&id=1' OR '1'='1",
            ),
        ] {
            let p = places(&post("203.0.113.56", ctype, body.as_bytes()));
            assert!(
                p.contains(&(AlertKind::SqlInjection, "form id".to_owned())),
                "{ctype} {body}: {p:?}"
            );
        }
        // Without a type that says so, a text that opens like JSON is still read as JSON.
        for ctype in ["", "text/plain"] {
            let p = places(&post("203.0.113.57", ctype, br#"{"id":"1' OR '1'='1"}"#));
            assert!(
                p.contains(&(AlertKind::SqlInjection, "json id".to_owned())),
                "{ctype}: {p:?}"
            );
        }
    }

    #[test]
    fn traversal_is_caught_through_path_parameters_and_unnormalised_paths() {
        assert_targets(
            &[
                "/public/..;x=1/manager/html",
                "/public/..;jsessionid=1/actuator/env",
                "/public/%2e%2e;x/manager/html",
                "/download?f=/etc/./passwd",
                "/download?f=/etc//passwd",
                "/download?f=/etc/.//./passwd",
                "/static/etc//shadow",
            ],
            Some(AlertKind::PathTraversal),
        );
        // Ordinary path parameters and URLs.
        assert_targets(
            &[
                "/shop/cart;jsessionid=0A1B2C/items",
                "/go?next=https://bank.test/./accounts//100231",
            ],
            None,
        );
    }

    #[test]
    fn a_cookie_is_judged_with_plus_read_as_a_space_too() {
        let cookie = |ip: &str, v: &str| header_places(ip, "Cookie", v);
        let p = cookie(
            "203.0.113.58",
            "theme=dark; id=-1+union+select+username,password+from+users",
        );
        assert!(
            p.contains(&(AlertKind::SqlInjection, "cookie id".to_owned())),
            "{p:?}"
        );
        // Base64 values and ordinary text with `+`.
        let p = cookie(
            "198.18.0.9",
            "tok=aGVsbG8+d29ybGQ=; pref=a+b+c; q=select+a+plan",
        );
        assert_eq!(p, []);
    }

    #[test]
    fn escaped_payloads_in_a_bare_cookie_or_a_referer_path_are_judged() {
        let header = header_places;
        // A cookie without `=` and a Referer without a query: the whole value holds nothing
        // libinjection could flag until its escapes are decoded.
        let p = header("203.0.113.61", "Cookie", "%27%20OR%20%271%27%3D%271");
        assert!(
            p.contains(&(AlertKind::SqlInjection, "cookie".to_owned())),
            "{p:?}"
        );
        let p = header(
            "203.0.113.62",
            "Referer",
            "https://bank.test/%3Cscript%3Ealert(1)%3C/script%3E",
        );
        assert!(p.contains(&(AlertKind::Xss, "referer".to_owned())), "{p:?}");
        // Ordinary escaped ones stay quiet.
        let p = header(
            "198.18.0.10",
            "Referer",
            "https://bank.test/search/caf%C3%A9%20au%20lait",
        );
        assert_eq!(p, []);
        let p = header(
            "198.18.0.11",
            "Cookie",
            "lang=fr%2DCA; last=%2Faccounts%2F42",
        );
        assert_eq!(p, []);
    }

    #[test]
    fn json_and_forms_in_utf16_or_utf32_are_read() {
        let json = r#"{"id":"1' OR '1'='1"}"#;
        let utf16 = |s: &str, be: bool, bom: bool| -> Vec<u8> {
            (bom.then_some(0xfeff))
                .into_iter()
                .chain(s.encode_utf16())
                .flat_map(|u| if be { u.to_be_bytes() } else { u.to_le_bytes() })
                .collect()
        };
        let utf32 = |s: &str, be: bool, bom: bool| -> Vec<u8> {
            (bom.then_some('\u{feff}'))
                .into_iter()
                .chain(s.chars())
                .flat_map(|c| {
                    let c = u32::from(c);
                    if be { c.to_be_bytes() } else { c.to_le_bytes() }
                })
                .collect()
        };
        for (ctype, body, place) in [
            ("application/json", utf16(json, false, true), "json id"),
            ("application/json", utf16(json, false, false), "json id"),
            ("application/json", utf16(json, true, false), "json id"),
            ("", utf16(json, true, true), "json id"),
            ("application/json", utf32(json, false, false), "json id"),
            ("application/json", utf32(json, true, true), "json id"),
            ("text/plain", utf32(json, true, false), "json id"),
            (
                "application/json; charset=utf-16le",
                utf16(json, false, false),
                "json id",
            ),
            (
                "application/x-www-form-urlencoded; charset=utf-16le",
                utf16("a=1&id=1' OR '1'='1", false, false),
                "form id",
            ),
            (
                "application/x-www-form-urlencoded; charset=UTF-16",
                utf16("a=1&id=1' OR '1'='1", false, true),
                "form id",
            ),
        ] {
            let p = places(&post("203.0.113.59", ctype, &body));
            assert!(
                p.contains(&(AlertKind::SqlInjection, place.to_owned())),
                "{ctype} {body:?}: {p:?}"
            );
        }
        let benign = utf16(r#"{"to":"bob","memo":"rent, 50% paid"}"#, false, true);
        assert_eq!(places(&post("198.18.0.9", "application/json", &benign)), []);
    }

    #[test]
    fn client_address_headers_are_judged() {
        let with = header_places;
        let ips = [
            "198.51.100.7",
            "2001:db8:cafe::17",
            "[2001:db8::1]:4711",
            "unknown",
        ];
        for name in [
            "X-Real-IP",
            "True-Client-IP",
            "Client-IP",
            "Forwarded",
            "X-Client-IP",
            "X-Originating-IP",
        ] {
            let place = format!("header {}", name.to_ascii_lowercase());
            for v in ["1' OR '1'='1", "for=\"1' OR '1'='1\";proto=http"] {
                let p = with("203.0.113.61", name, v);
                assert!(
                    p.contains(&(AlertKind::SqlInjection, place.clone())),
                    "{name}: {v}: {p:?}"
                );
            }
            for v in ips {
                assert_eq!(with("198.18.0.9", name, v), [], "{name}: {v}");
            }
        }
        // What proxies send in `Forwarded` (RFC 7239), obfuscated identifiers included.
        for v in [
            "for=192.0.2.60;proto=http;by=203.0.113.43",
            r#"for="[2001:db8:cafe::17]:4711";proto=https, for=198.51.100.17"#,
            "for=_hidden, for=unknown;host=bank.test",
            "for=_SEVKISEK;by=_hidden;proto=https",
        ] {
            assert_eq!(with("198.18.0.9", "Forwarded", v), [], "{v}");
        }
    }

    #[test]
    fn host_origin_and_accept_language_are_judged() {
        // What servers look things up by: a multi-tenant service's tenant by `Host`, a CORS
        // allowlist by `Origin`, a locale table by `Accept-Language`.
        let with = header_places;
        for (name, v, kind) in [
            ("Host", "bank.test' OR '1'='1", AlertKind::SqlInjection),
            (
                "Origin",
                "https://x.test\"><script>alert(1)</script>",
                AlertKind::Xss,
            ),
            (
                "Accept-Language",
                "en' UNION SELECT password FROM users--",
                AlertKind::SqlInjection,
            ),
        ] {
            let place = format!("header {}", name.to_ascii_lowercase());
            let p = with("203.0.113.63", name, v);
            assert!(p.contains(&(kind, place)), "{name}: {v}: {p:?}");
        }
        for (name, v) in [
            ("Host", "bank.test:8443"),
            ("Host", "[2001:db8::1]:8080"),
            ("Origin", "https://app.bank.test"),
            ("Origin", "null"),
            ("Accept-Language", "en-US,en;q=0.9,ar-SA;q=0.8"),
            ("Accept-Language", "*"),
        ] {
            assert_eq!(with("198.18.0.9", name, v), [], "{name}: {v}");
        }
    }

    #[test]
    fn a_script_url_in_a_path_segment_is_caught_without_a_query() {
        assert_targets(
            &["/go/javascript:alert`1`", "/go/JavaScript:alert`1`/x"],
            Some(AlertKind::Xss),
        );
        assert_targets(
            &[
                "/v1/projects/p1:run",
                "/docs/v1.2/index.html",
                "/time/12:30",
            ],
            None,
        );
    }

    /// Posts `body` as `ctype` to `/submit` from `ip`.
    fn post(ip: &str, ctype: &str, body: &[u8]) -> Observation<'static> {
        let mut o = obs(T0, ip, "/submit");
        o.method = "POST".into();
        o.req_headers
            .push(("Content-Type".into(), ctype.to_owned().into()));
        o.req_bytes = body.len() as u64;
        o.req_body = body.to_vec().into();
        o
    }

    /// The first alert's `(kind, input)` for each kind raised on `o`.
    /// [`places`] of a GET of `/balance` from `ip` with one header more.
    fn header_places(ip: &str, name: &str, v: &str) -> Vec<(AlertKind, String)> {
        let mut o = obs(T0, ip, "/balance");
        o.req_headers
            .push((name.to_owned().into(), v.to_owned().into()));
        places(&o)
    }

    fn places(o: &Observation) -> Vec<(AlertKind, String)> {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        e.observe(o)
            .into_iter()
            .map(|a| {
                (
                    a.kind,
                    a.evidence["input"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn xml_and_text_bodies_are_judged() {
        let soap = r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="urn:bank">
  <soap:Header><m:Session>abc123</m:Session></soap:Header>
  <soap:Body><m:GetAccount><m:Id>1' OR '1'='1</m:Id></m:GetAccount></soap:Body>
</soap:Envelope>"#;
        let xss = "<script>alert(document.cookie)</script>";
        let cases: [(&str, String, AlertKind, &str); 9] = [
            (
                "application/soap+xml; charset=utf-8",
                soap.to_owned(),
                AlertKind::SqlInjection,
                "xml m:Id",
            ),
            // Attribute values and text read as a parser hands them over: entities decoded,
            // CDATA as it is, text runs around a comment joined.
            (
                "text/xml",
                r#"<search lang="en" q="&lt;script&gt;alert(document.cookie)&lt;/script&gt;"/>"#
                    .to_owned(),
                AlertKind::Xss,
                "xml search/@q",
            ),
            (
                "application/xml",
                format!("<r><note><![CDATA[{xss}]]></note></r>"),
                AlertKind::Xss,
                "xml note",
            ),
            (
                "application/xml",
                "<r><q>1&#39; UNION<!-- x --> SELECT password FROM users--</q></r>".to_owned(),
                AlertKind::SqlInjection,
                "xml q",
            ),
            (
                "application/atom+xml",
                "<feed><entry><file>../../../etc/passwd</file></entry></feed>".to_owned(),
                AlertKind::PathTraversal,
                "xml file",
            ),
            // Cut at the cap: what was read is judged.
            (
                "application/xml",
                "<r><a>&lt;svg onload=alert(1)&gt;</a><b>unfinished".to_owned(),
                AlertKind::Xss,
                "xml a",
            ),
            // text/plain: whole when on one line, else each line and the whole.
            ("text/plain", xss.to_owned(), AlertKind::Xss, "text body"),
            (
                "text/plain; charset=utf-8",
                "Dear team,\nsee 1' UNION SELECT password FROM users--\nJane".to_owned(),
                AlertKind::SqlInjection,
                "text body line",
            ),
            (
                "text/plain",
                "1'\nOR '1'='1".to_owned(),
                AlertKind::SqlInjection,
                "text body",
            ),
        ];
        for (ctype, body, kind, place) in cases {
            let got = places(&post("203.0.113.60", ctype, body.as_bytes()));
            assert!(
                got.iter().any(|(k, p)| *k == kind && p == place),
                "{ctype} {body}: {got:?}"
            );
        }
        // A secret element's value is not quoted.
        let o = post(
            "203.0.113.61",
            "application/xml",
            b"<login><user>jane</user><password>x' OR '1'='1</password></login>",
        );
        let a = Engine::new(&ModelsConfig::default()).unwrap().observe(&o);
        let a = a
            .iter()
            .find(|a| a.kind == AlertKind::SqlInjection)
            .unwrap();
        assert_eq!(a.evidence["input"], "xml password");
        assert!(!a.explanation.contains("OR '1'"), "{}", a.explanation);
        // Ordinary documents and text raise nothing.
        for (ctype, body) in [
            ("application/soap+xml", soap.replace("1' OR '1'='1", "100231")),
            (
                "application/xml",
                r#"<!DOCTYPE note [<!ENTITY x "y">]><note xml:lang="en" href="https://bank.test/a?b=1&amp;c=2"><to>O&apos;Brien</to><body>Rent, 50% (May) &amp; fees</body></note>"#.to_owned(),
            ),
            (
                "text/plain",
                "Dear team,\nplease find the May statement attached (PDF).\nThanks, Jane".to_owned(),
            ),
        ] {
            let got = places(&post("203.0.113.62", ctype, body.as_bytes()));
            assert!(got.is_empty(), "{ctype} {body}: {got:?}");
        }
        assert_eq!(
            xml_unescape("a&lt;b&#x3C;&#60;&amp;lt;&bogus;&"),
            "a<b<<&lt;&bogus;&"
        );
        // Cut anywhere, a document is read without a panic.
        let doc = "<?xml?><!DOCTYPE d [<!ENTITY e \"&#233;\">]><d a='é&#xFFFFFFFF;' b=x c>\
                   <!-- é --><![CDATA[é]]>&#233;é<e/><f g = \"1' OR 1=1\" /></d>";
        for cut in (0..=doc.len()).filter(|&i| doc.is_char_boundary(i)) {
            let mut out = Vec::new();
            xml_values(&doc[..cut], &mut out, 8);
        }
        let mut out = Vec::new();
        xml_values(doc, &mut out, 8);
        let got: Vec<(&str, &str)> = out.iter().map(|i| (&*i.name, &*i.value)).collect();
        // (An invalid reference stays, its `;` worth judging.)
        assert_eq!(got, [("d/@a", "é&#xFFFFFFFF;"), ("f/@g", "1' OR 1=1")]);
    }

    #[test]
    fn parameter_names_are_judged() {
        let cases: [(&str, &[u8], AlertKind, &str); 5] = [
            // (`?id'%20OR%201=1--=x` splits at its first `=`: its value, `1--=x`, was judged.)
            (
                "/items?id'%20OR%20'1'%3D'1=x",
                b"",
                AlertKind::SqlInjection,
                "query parameter name",
            ),
            (
                "/search?a<script>alert(1)</script>=1",
                b"",
                AlertKind::Xss,
                "query parameter name",
            ),
            (
                "/search?q=1&%3Cimg+src%3Dx+onerror%3Dalert(1)%3E=",
                b"",
                AlertKind::Xss,
                "query parameter name",
            ),
            (
                "/submit",
                b"user=jane&1'+UNION+SELECT+password+FROM+users--=1",
                AlertKind::SqlInjection,
                "form parameter name",
            ),
            (
                "/submit",
                b"%2e%2e%2f%2e%2e%2fetc%2fpasswd=1",
                AlertKind::PathTraversal,
                "form parameter name",
            ),
        ];
        for (target, body, kind, place) in cases {
            let mut o = get(target, 0);
            if !body.is_empty() {
                o = post("203.0.113.60", "application/x-www-form-urlencoded", body);
            }
            let p = places(&o);
            assert!(
                p.contains(&(kind, place.to_owned())),
                "{target} {body:?}: {p:?}"
            );
        }
        // Names that are ordinary, as frameworks write them.
        let o = get(
            "/items?page[size]=20&page[number]=3&filter[status]=active&sort=-created_at&fields[items]=id,name&q[]=a+b&utm_source=mail",
            0,
        );
        assert_eq!(places(&o), []);
        let o = post(
            "198.18.0.9",
            "application/x-www-form-urlencoded",
            b"user[email]=jane%40bank.test&user[address][city]=Riyadh&items[0][qty]=2&accept_terms=on",
        );
        assert_eq!(places(&o), []);
    }

    /// A multipart body of `parts` (`(Content-Disposition parameters, Content-Type, content)`).
    fn form_data(parts: &[(&str, &str, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (disposition, ctype, content) in parts {
            b.extend_from_slice(b"--b0uNd\r\nContent-Disposition: form-data; ");
            b.extend_from_slice(disposition.as_bytes());
            if !ctype.is_empty() {
                b.extend_from_slice(format!("\r\nContent-Type: {ctype}").as_bytes());
            }
            b.extend_from_slice(b"\r\n\r\n");
            b.extend_from_slice(content);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--b0uNd--\r\n");
        b
    }

    const FORM_DATA: &str = "multipart/form-data; boundary=b0uNd";

    #[test]
    fn multipart_bodies_are_judged() {
        let png: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR'<\"--;(=";
        let cases: [(Vec<u8>, AlertKind, &str); 6] = [
            (
                form_data(&[
                    (r#"name="title""#, "", b"Holiday"),
                    (r#"name="q""#, "", b"1' UNION SELECT password FROM users--"),
                ]),
                AlertKind::SqlInjection,
                "multipart q",
            ),
            (
                form_data(&[(
                    r#"name="avatar"; filename="../../../etc/passwd""#,
                    "image/png",
                    png,
                )]),
                AlertKind::PathTraversal,
                "multipart filename of avatar",
            ),
            (
                form_data(&[(
                    r#"name="avatar"; filename*=UTF-8''%2e%2e%2f%2e%2e%2fboot.ini"#,
                    "image/png",
                    png,
                )]),
                AlertKind::PathTraversal,
                "multipart filename of avatar",
            ),
            (
                form_data(&[(r#"name="<script>alert(1)</script>""#, "", b"x")]),
                AlertKind::Xss,
                "multipart field name",
            ),
            (
                form_data(&[(
                    r#"name="doc"; filename="note.txt""#,
                    "text/plain; charset=utf-8",
                    b"<svg/onload=alert(1)>",
                )]),
                AlertKind::Xss,
                "multipart doc",
            ),
            // Cut by the capture in a file after it: the complete part is judged.
            (
                {
                    let mut b = form_data(&[
                        (r#"name="q""#, "", b"<img src=x onerror=alert(1)>"),
                        (
                            r#"name="f"; filename="a.bin""#,
                            "application/octet-stream",
                            &[b'\''; 70_000],
                        ),
                    ]);
                    b.truncate(65_536);
                    b
                },
                AlertKind::Xss,
                "multipart q",
            ),
        ];
        for (i, (body, kind, place)) in cases.into_iter().enumerate() {
            let mut o = post("203.0.113.62", FORM_DATA, &body);
            if body.len() == 65_536 {
                // What the capture counted of the body it cut.
                o.req_bytes = 70_200;
            }
            let p = places(&o);
            assert!(p.contains(&(kind, place.to_owned())), "case {i}: {p:?}");
        }
        // A secret field's value is never quoted.
        let o = post(
            "203.0.113.63",
            FORM_DATA,
            &form_data(&[(r#"name="password""#, "", b"hunter2'--")]),
        );
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let shown = serde_json::to_string(&e.observe(&o)).unwrap();
        assert!(
            shown.contains("multipart password") && shown.contains("redacted"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn multipart_parts_are_read_as_servers_decode_them() {
        // (part headers after Content-Disposition's `form-data; `, content, kind, place): each
        // payload is invisible to a reading of the part as sent.
        let deep = format!(
            "{}{{\"a\": \"\\u003cscript\\u003ealert(1)\\u003c/script\\u003e\"}}{}",
            "[".repeat(130),
            "]".repeat(130)
        );
        let cases: [(&str, &[u8], AlertKind, &str); 13] = [
            (
                "name=\"q\"\r\nContent-Transfer-Encoding: base64",
                // `<script>alert(1)</script>`, wrapped as mail encoders wrap.
                b"PHNjcmlwdD5hbGVy\r\ndCgxKTwvc2NyaXB0Pg",
                AlertKind::Xss,
                "multipart q",
            ),
            (
                "name=\"q\"\r\nContent-Transfer-Encoding: Quoted-Printable",
                b"=3Cscript=3Ealert(1)=3C/scr=\r\nipt=3E",
                AlertKind::Xss,
                "multipart q",
            ),
            (
                "name=\"data\"\r\nContent-Type: application/json",
                br#"{"note": "\u003cscript\u003ealert(1)\u003c/script\u003e"}"#,
                AlertKind::Xss,
                "multipart data.note",
            ),
            (
                "name=\"data\"",
                br#"[{"x\u0027 UNION SELECT password FROM users--": 1}]"#,
                AlertKind::SqlInjection,
                "multipart data json key",
            ),
            (
                // JSON sent as base64.
                "name=\"data\"\r\nContent-Type: application/json\r\n\
                 Content-Transfer-Encoding: base64",
                b"eyJpZCI6ICIuLlx1MDAyZi4uXHUwMDJmLi5cdTAwMmZldGNcdTAwMmZwYXNzd2QifQ==",
                AlertKind::PathTraversal,
                "multipart data.id",
            ),
            (
                "name*=UTF-8''%3Cscript%3Ealert(1)%3C%2Fscript%3E",
                b"x",
                AlertKind::Xss,
                "multipart field name",
            ),
            // Junk among the base64 and after its padding, which Python's decoder skips.
            (
                "name=\"q\"\r\nContent-Transfer-Encoding: base64",
                b"PHNjcmlwdD5hbGVy!dCgxKTwvc2NyaXB0Pg==AAAA",
                AlertKind::Xss,
                "multipart q",
            ),
            // A second field naming the encoding (Django takes the last), or one with a
            // parameter.
            (
                "name=\"q\"\r\nContent-Transfer-Encoding: 7bit\r\n\
                 Content-Transfer-Encoding: base64",
                b"PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
                AlertKind::Xss,
                "multipart q",
            ),
            (
                "name=\"q\"\r\nContent-Transfer-Encoding: base64; x=1",
                b"PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
                AlertKind::Xss,
                "multipart q",
            ),
            // JSON nested deeper than the parser goes; after a byte order mark; a lone string.
            (
                "name=\"data\"\r\nContent-Type: application/json",
                deep.as_bytes(),
                AlertKind::Xss,
                "multipart data.a",
            ),
            (
                "name=\"data\"",
                b"\xef\xbb\xbf{\"a\": \"\\u003cscript\\u003ealert(1)\\u003c/script\\u003e\"}",
                AlertKind::Xss,
                "multipart data.a",
            ),
            (
                "name=\"data\"",
                br#""\u003cscript\u003ealert(1)\u003c/script\u003e""#,
                AlertKind::Xss,
                "multipart data",
            ),
            // A JSON key in a part without a name.
            (
                "filename=\"a.json\"",
                br#"{"x\u0027 UNION SELECT password FROM users--": 1}"#,
                AlertKind::SqlInjection,
                "multipart \"\" json key",
            ),
        ];
        for (i, (headers, content, kind, place)) in cases.into_iter().enumerate() {
            let mut body = format!("--b0uNd\r\nContent-Disposition: form-data; {headers}\r\n\r\n")
                .into_bytes();
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n--b0uNd--\r\n");
            let p = places(&post("203.0.113.64", FORM_DATA, &body));
            assert!(p.contains(&(kind, place.to_owned())), "case {i}: {p:?}");
        }
    }

    #[test]
    fn ordinary_uploads_are_not_injection() {
        // A PNG whose bytes hold quotes, markup and dashes, with form fields around it.
        let png: Vec<u8> = b"\x89PNG\r\n\x1a\n"
            .iter()
            .copied()
            .chain((0..4096u32).map(|i| b"'<\"--;(=/..%"[(i % 12) as usize]))
            .collect();
        let png64 = {
            use base64::Engine as _;
            let text = base64::engine::general_purpose::STANDARD.encode(&png);
            let lines: Vec<&[u8]> = text.as_bytes().chunks(76).collect();
            lines.join(&b"\r\n"[..])
        };
        let body = form_data(&[
            (r#"name="title""#, "", b"My holiday in Al-Ula (2026)"),
            (r#"name="album[id]""#, "", b"100231"),
            (r#"name="avatar"; filename="avatar.png""#, "image/png", &png),
            (
                r#"name="scan"; filename="my scan (1).pdf""#,
                "application/pdf",
                &png,
            ),
            (r#"name="blob"; filename="blob""#, "", &png),
            (
                r#"name="notes"; filename="notes.txt""#,
                "text/plain",
                b"Shopping list:\n- milk\n- eggs (2 dozen)\nO'Brien's party, 50% off\n",
            ),
            (r#"name="meta""#, "application/json", br#"{"a":"'<--"}"#),
            (
                r#"name="album""#,
                "application/json",
                br#"{"title": "O'Brien's party (2026)", "tags": ["50% off", "a-b"], "n": 3}"#,
            ),
            // Sent base64-encoded, as mail clients send files: decoded, still binary.
            (
                r#"name="photo"; filename="photo.png""#,
                "image/png\r\nContent-Transfer-Encoding: base64",
                &png64,
            ),
        ]);
        let o = post("198.18.0.9", FORM_DATA, &body);
        assert_eq!(places(&o), []);
    }

    /// A multipart body: `head` (a delimiter line, then a part's header lines), then a part's
    /// content that is SQL injection and the close delimiter of boundary `B`.
    fn sqli_form(head: &[&[u8]]) -> Vec<u8> {
        let tail: [&[u8]; 4] = [b"", b"1' UNION SELECT password FROM users--", b"--B--", b""];
        head.iter()
            .chain(&tail)
            .copied()
            .collect::<Vec<_>>()
            .join(&b"\r\n"[..])
    }

    /// A field `q` of [`sqli_form`], after `first` (its delimiter line).
    fn sqli_field(first: &[u8]) -> Vec<u8> {
        sqli_form(&[first, b"Content-Disposition: form-data; name=\"q\""])
    }

    /// Asserts that a multipart body raises `kind` at `place` (of boundary `B` when `ctype` is
    /// empty).
    fn assert_multipart(ctype: &str, body: &[u8], kind: AlertKind, place: &str) {
        let ctype = if ctype.is_empty() {
            "multipart/form-data; boundary=B"
        } else {
            ctype
        };
        let p = places(&post("203.0.113.77", ctype, body));
        assert!(
            p.contains(&(kind, place.to_owned())),
            "{ctype} {}: {p:?}",
            String::from_utf8_lossy(body)
        );
    }

    #[test]
    fn a_multipart_field_of_any_type_is_judged() {
        // Every server (busboy/multer, PHP, Werkzeug, python-multipart) makes a part without a
        // filename a form field, whatever its type.
        for ct in [
            &b"Content-Type: application/octet-stream"[..],
            b"Content-Type: application/json",
            b"Content-Type:",
        ] {
            let b = sqli_form(&[b"--B", b"Content-Disposition: form-data; name=\"q\"", ct]);
            assert_multipart("", &b, AlertKind::SqlInjection, "multipart q");
        }
    }

    #[test]
    fn a_multipart_part_that_some_servers_read_as_a_field_is_judged() {
        // PHP knows no `filename*` (the part is a $_POST field) and reads a value in single
        // quotes whole (the field `q; filename=x`); text under a file's name is judged too.
        for (cd, place) in [
            (
                &b"Content-Disposition: form-data; name=\"q\"; filename*=UTF-8''x"[..],
                "multipart q",
            ),
            (
                b"Content-Disposition: form-data; name='q; filename=x'",
                "multipart 'q",
            ),
            (
                b"Content-Disposition: form-data; name=\"q\"; filename=\"x.png\"\r\nContent-Type: image/png",
                "multipart q",
            ),
        ] {
            let b = sqli_form(&[b"--B", cd]);
            assert_multipart("", &b, AlertKind::SqlInjection, place);
        }
    }

    #[test]
    fn multipart_names_are_judged_as_php_reads_them() {
        // PHP honours single quotes: its names are whole only in its reading (the common one
        // keeps the quotes, or cuts the value at a `;` inside them).
        let b = sqli_form(&[
            b"--B",
            b"Content-Disposition: form-data; name='<script>alert(1)</script>'; filename=\"a\"",
        ]);
        assert_multipart("", &b, AlertKind::Xss, "multipart field name");
        let b = sqli_form(&[
            b"--B",
            b"Content-Disposition: form-data; name=\"a\"; filename='x; y=\"../../../etc/passwd'",
        ]);
        assert_multipart("", &b, AlertKind::PathTraversal, "multipart filename of a");
    }

    #[test]
    fn a_multipart_body_with_a_boundary_servers_disagree_on_is_judged() {
        for (ctype, first) in [
            // A quoted-pair: busboy, Werkzeug and Python split on `BX`, PHP on `B\X`.
            (r#"multipart/form-data; boundary="B\X""#, &b"--BX"[..]),
            // PHP takes the first `boundary` anywhere in the field.
            (
                "multipart/form-data; xboundary=EVIL; boundary=REAL",
                b"--EVIL",
            ),
            // No boundary, and a boundary that delimits nothing.
            ("multipart/form-data", b"--B"),
            ("multipart/form-data; boundary=Z", b"--B"),
        ] {
            let b = sqli_field(first);
            assert_multipart(ctype, &b, AlertKind::SqlInjection, "multipart body line");
        }
        // A quoted boundary is read unquoted.
        let b = sqli_field(b"--B");
        let ctype = r#"multipart/form-data; boundary="B""#;
        assert_multipart(ctype, &b, AlertKind::SqlInjection, "multipart q");
    }

    #[test]
    fn multipart_parts_after_the_close_delimiter_are_judged() {
        // PHP reads on to the next delimiter line after `--B--`.
        let b = sqli_field(
            b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--B--\r\n--B",
        );
        assert_multipart("", &b, AlertKind::SqlInjection, "multipart q");
    }

    #[test]
    fn a_multipart_first_delimiter_mid_line_is_found() {
        // Werkzeug (Flask) takes a first delimiter that does not start a line.
        let b = sqli_field(b"x--B");
        assert_multipart("", &b, AlertKind::SqlInjection, "multipart q");
    }

    #[test]
    fn a_json_body_cut_at_the_cap_is_still_judged() {
        let pad = "A".repeat(70_000);
        let body =
            format!(r#"{{"q":"1' UNION SELECT username,password FROM users--","pad":"{pad}"}}"#);
        let mut o = obs(T0, "203.0.113.52", "/search");
        o.method = "POST".into();
        o.req_headers
            .push(("Content-Type".into(), "application/json".into()));
        o.req_body = body.into_bytes().into();
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let a = e.observe(&o);
        let sql = a.iter().find(|a| a.kind == AlertKind::SqlInjection);
        assert!(
            sql.is_some_and(|a| a.explanation.contains("json q")),
            "{a:?}"
        );
        assert_eq!(
            json_strings(br#"{"a":"x\"y","b":["c","d"],"e":{"f":"g"},"h":"cut"#)
                .collect::<Vec<_>>(),
            [
                Lenient::Key("a".into()),
                Lenient::Value("x\"y".into()),
                Lenient::Key("b".into()),
                Lenient::Value("c".into()),
                Lenient::Value("d".into()),
                Lenient::Key("e".into()),
                Lenient::Key("f".into()),
                Lenient::Value("g".into()),
                Lenient::Key("h".into()),
            ]
        );
    }

    #[test]
    fn json_keys_are_judged() {
        let pad = "A".repeat(70_000);
        let cases: [(String, AlertKind); 4] = [
            (r#"{"x' OR '1'='1": 1}"#.into(), AlertKind::SqlInjection),
            (
                r#"{"user":{"<img src=x onerror=alert(1)>":"a"}}"#.into(),
                AlertKind::Xss,
            ),
            (
                r#"{"files":{"../../../etc/passwd":true}}"#.into(),
                AlertKind::PathTraversal,
            ),
            // Cut at the cap: read leniently, keys too.
            (
                format!(r#"{{"1 UNION SELECT password FROM users--":1,"pad":"{pad}"}}"#),
                AlertKind::SqlInjection,
            ),
        ];
        for (body, kind) in cases {
            let p = places(&post("203.0.113.61", "application/json", body.as_bytes()));
            assert!(
                p.contains(&(kind, "json key".to_owned())),
                "{}: {p:?}",
                &body[..body.len().min(80)]
            );
        }
        // A byte that is not UTF-8 (which servers replace) leaves the body's strings judged.
        for body in [
            &b"{\"q\":\"\xff1' OR 1=1-- \"}"[..],
            b"{\"\xffx' OR '1'='1\": 1}",
        ] {
            let p = places(&post("203.0.113.62", "application/json", body));
            assert!(
                p.iter().any(|(k, _)| *k == AlertKind::SqlInjection),
                "{}: {p:?}",
                String::from_utf8_lossy(body)
            );
        }
        // Keys as APIs write them, in a body worth parsing (its values hold `%`, `'`, `..`).
        let o = post(
            "198.18.0.9",
            "application/json",
            br##"{"account_id":100231,"memo":"50% of O'Brien's rent","@context":"https://schema.org","$ref":"#/defs/a","#text":"x","odata.etag":"W/\"1\"","x-request-id":"ab-12","First Name":"Jane","filter[status]":"active","range":"1..10","items":[{"sku":"A-1","qty":2}]}"##,
        );
        assert_eq!(places(&o), []);
    }

    #[test]
    fn secrets_that_trip_a_check_are_never_quoted() {
        // Passwords, cookies and token parameters are someone's secrets even when they look
        // like an attack; the alert says where and how long, with a short hash.
        let cases: [(&str, &[u8], &str); 4] = [
            (
                "application/json",
                br#"{"username":"layla","password":"hunter2'--"}"#,
                "hunter2",
            ),
            (
                "application/x-www-form-urlencoded",
                b"username=layla&passwd=P4ss%27+or+%27x",
                "P4ss",
            ),
            (
                "application/json",
                br#"{"user":{"name":"x","api_key":"<script>alert(1)</script>k3y"}}"#,
                "k3y",
            ),
            (
                "application/x-www-form-urlencoded",
                b"user=x&password=%C0%AE%C0%AE%C0%AFs3cr3t",
                "s3cr3t",
            ),
        ];
        for (i, (ctype, body, secret)) in cases.into_iter().enumerate() {
            let mut e = Engine::new(&ModelsConfig::default()).unwrap();
            let mut o = obs(T0 + i as u64 * S, "203.0.113.48", "/login");
            o.method = "POST".into();
            o.req_headers.push(("Content-Type".into(), ctype.into()));
            o.req_body = body.to_vec().into();
            let alerts = e.observe(&o);
            assert!(!alerts.is_empty(), "case {i}: no alert");
            for a in alerts {
                let shown = serde_json::to_string(&a).unwrap();
                assert!(!shown.contains(secret), "case {i}: {shown}");
                assert!(shown.contains("redacted"), "case {i}: {shown}");
            }
        }
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let mut o = obs(T0, "203.0.113.49", "/account");
        o.req_headers
            .push(("Cookie".into(), "sid=abc' OR '1'='1' --".into()));
        let alerts = e.observe(&o);
        assert!(!alerts.is_empty());
        assert!(!serde_json::to_string(&alerts).unwrap().contains("abc'"));
        // Other values are still quoted, for the analyst.
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let a = e.observe(&get("/search?q=%27%3B%20DROP%20TABLE%20accounts%3B--", 0));
        assert!(
            a[0].explanation.contains("DROP TABLE"),
            "{}",
            a[0].explanation
        );
    }

    #[test]
    fn api_keys_in_the_query_are_never_quoted() {
        // A key in a default API key parameter (OpenWeather's `appid`) or a configured one,
        // whether the payload is in it or beside it in a query the alert shows whole (an
        // overlong encoding).
        let key = "b1946ac92492d2347c6235b4d2611184";
        let custom = ModelsConfig {
            api_key_params: vec!["subscription-key".into()],
            ..ModelsConfig::default()
        };
        let cases = [
            (
                ModelsConfig::default(),
                format!("/weather?appid={key}%27%20OR%20%271%27%3D%271"),
            ),
            (
                ModelsConfig::default(),
                format!("/files?app_id={key}&f=%C0%AE%C0%AE%C0%AFetc%C0%AFpasswd"),
            ),
            (
                custom.clone(),
                format!("/search?SubscriptionKey={key}%27%20OR%20%271%27%3D%271"),
            ),
            (
                custom,
                format!("/files?f=%C0%AE%C0%AE%C0%AFetc%C0%AFpasswd;subscription_key={key}"),
            ),
        ];
        for (i, (cfg, target)) in cases.iter().enumerate() {
            let mut e = Engine::new(cfg).unwrap();
            let alerts = e.observe(&get(target, i as u64));
            assert!(!alerts.is_empty(), "{target}: no alert");
            let shown = serde_json::to_string(&alerts).unwrap();
            assert!(!shown.contains(&key[..12]), "{target}: {shown}");
            assert!(shown.contains("redacted"), "{target}: {shown}");
        }
    }

    #[test]
    fn bodies_and_headers_are_judged() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let mut o = login(T0, "203.0.113.41", "admin'--", false, "curl/8.4");
        o.req_body = br#"{"username":"admin' OR 1=1--","password":"x"}"#.to_vec().into();
        assert!(kinds(&mut e, &o).contains(&AlertKind::SqlInjection));
        let mut o = obs(T0, "203.0.113.42", "/comment");
        o.method = "POST".into();
        o.req_headers.push((
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        ));
        o.req_body = b"text=%3Csvg%2Fonload%3Dalert(1)%3E&x=1".to_vec().into();
        assert!(kinds(&mut e, &o).contains(&AlertKind::Xss));
        o.client_ip = "203.0.113.46".parse().unwrap();
        o.req_body = b"file=%C0%AE%C0%AE%C0%AF%C0%AE%C0%AE%C0%AFnotes"
            .to_vec()
            .into();
        assert!(kinds(&mut e, &o).contains(&AlertKind::PathTraversal));
        // The same overlong dots in a JSON string, which is judged as sent (not decoded).
        let mut o = obs(T0, "203.0.113.47", "/files");
        o.method = "POST".into();
        o.req_headers
            .push(("Content-Type".into(), "application/json".into()));
        for (i, body) in [
            &br#"{"file":"%C0%AE%C0%AE%C0%AF%C0%AE%C0%AE%C0%AFnotes"}"#[..],
            br#"{"doc":{"path":"%2e%2e%2f%2e%2e%2fsecrets"}}"#,
            br#"{"attachments":["/etc/passwd"]}"#,
        ]
        .into_iter()
        .enumerate()
        {
            o.client_ip = format!("203.0.113.{}", 50 + i).parse().unwrap();
            o.req_body = body.into();
            let k = kinds(&mut e, &o);
            assert!(
                k.contains(&AlertKind::PathTraversal),
                "{}: {k:?}",
                String::from_utf8_lossy(body)
            );
        }
        let mut o = obs(T0, "203.0.113.43", "/balance");
        o.req_headers
            .push(("Referer".into(), "https://x.test/?q=1' OR '1'='1".into()));
        assert!(kinds(&mut e, &o).contains(&AlertKind::SqlInjection));
        let mut o = obs(T0, "203.0.113.44", "/balance");
        o.req_headers.push((
            "Cookie".into(),
            "theme=dark; pref=<script>alert(1)</script>".into(),
        ));
        assert!(kinds(&mut e, &o).contains(&AlertKind::Xss));
        let mut o = obs(T0, "203.0.113.45", "/balance");
        o.req_headers
            .push(("User-Agent".into(), "Mozilla' AND SLEEP(5)-- ".into()));
        assert!(kinds(&mut e, &o).contains(&AlertKind::SqlInjection));
    }

    #[test]
    fn ordinary_input_is_not_injection() {
        let mut e = Engine::new(&ModelsConfig::default()).unwrap();
        let benign = [
            "/search?q=O%27Brien",
            "/search?q=it%27s+fine&page=2",
            "/search?q=rock+%26+roll",
            "/search?q=a+%3C+b",
            "/files?name=report..final.pdf",
            "/accounts/100231",
            "/search?q=(555)+123-4567",
            "/search?q=C%23+and+F%23",
            "/docs/v1.2/index.html",
            "/search?q=select+a+plan&sort=price",
            "/transfer?memo=rent%20for%20May%3B%20thanks",
            "/i18n?lang=en-US,en;q=0.9",
        ];
        for (i, t) in benign.iter().enumerate() {
            let mut o = get(t, i as u64);
            o.client_ip = "198.18.0.9".parse().unwrap();
            o.status = 200;
            let k = kinds(&mut e, &o);
            assert!(k.is_empty(), "{t}: {k:?}");
        }
        for ua in [
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
        ] {
            let mut o = obs(T0, "198.18.0.9", "/balance");
            o.req_headers.push(("User-Agent".into(), ua.into()));
            o.req_headers
                .push(("Cookie".into(), "sid=abc123; theme=dark".into()));
            o.req_headers.push((
                "Referer".into(),
                "https://bank.test/accounts?id=5&tab=all".into(),
            ));
            let k = kinds(&mut e, &o);
            assert!(k.is_empty(), "{ua}: {k:?}");
        }
        let mut o = login(T0, "198.18.0.9", "jane", true, "BankApp/4.2");
        o.req_body = br#"{"username":"jane","password":"Summer2024!"}"#.to_vec().into();
        assert!(kinds(&mut e, &o).is_empty());
        // Percent signs and paths in JSON strings, judged now that they make a body a candidate.
        let mut o = obs(T0, "198.18.0.9", "/transfer");
        o.method = "POST".into();
        o.req_headers
            .push(("Content-Type".into(), "application/json".into()));
        o.req_body = br#"{"memo":"rent, 50% paid","link":"https://x.test/a%20b/c.pdf","dir":"/home/jane/docs"}"#[..].into();
        let k = kinds(&mut e, &o);
        assert!(k.is_empty(), "{k:?}");
    }

    /// The pre-filters' answers are what the lower-case-and-search code they replaced gave
    /// (kept here as the reference), on attacks in every encoding and on ordinary values.
    mod reference {
        use super::super::{OVERLONG, SENSITIVE, SQL_WORDS, decode_fully, fold_overlong};

        pub fn traversal(raw: &str) -> Option<String> {
            let lower = raw.to_ascii_lowercase();
            if let Some(m) = OVERLONG.iter().find(|m| lower.contains(*m)) {
                return Some((*m).to_owned());
            }
            let d = fold_overlong(&decode_fully(raw, false));
            if d.split('/')
                .any(|seg| matches!(seg.split(';').next(), Some(".." | "....")))
            {
                return Some("../".to_owned());
            }
            let mut dl = d.to_ascii_lowercase();
            while dl.contains("//") || dl.contains("/./") {
                dl = dl.replace("//", "/").replace("/./", "/");
            }
            SENSITIVE
                .iter()
                .find(|f| dl.contains(*f))
                .map(|f| (*f).to_owned())
        }

        /// SQL white space of every kind read as a space.
        pub fn sql(v: &str) -> bool {
            let v = v.replace(['\t', '\n', '\x0b', '\x0c', '\r', '\u{fffd}'], " ");
            v.bytes()
                .any(|c| matches!(c, b'\'' | b'"' | b'`' | b';' | b'#' | b'(' | b'=' | b'*'))
                || v.contains("--")
                || (v.contains(' ') && {
                    let l = v.to_ascii_lowercase();
                    SQL_WORDS.iter().any(|w| l.contains(w))
                })
        }

        pub fn script_url(v: &str) -> bool {
            let t: String = v
                .chars()
                .filter(|c| !c.is_whitespace() && !c.is_control())
                .take(16)
                .collect::<String>()
                .to_ascii_lowercase();
            t.starts_with("javascript:")
                || t.starts_with("vbscript:")
                || t.starts_with("data:text/html")
        }

        /// Only what some check could flag: a traversal only when there is one.
        pub fn candidate(v: &str) -> bool {
            sql(v)
                || v.bytes()
                    .any(|c| matches!(c, b'<' | b'>' | b'"' | b'\'' | b'`'))
                || script_url(v)
                || traversal(v).is_some()
        }
    }

    /// Attacks and look-alikes, each also in upper case, percent-encoded (all but letters and
    /// digits, then everything), double-encoded and with `+` for spaces.
    fn corpus() -> Vec<String> {
        let base = [
            "../../../../etc/passwd",
            "..\\..\\windows\\win.ini",
            "....//....//etc/hosts",
            "..;/admin",
            "/proc/self/environ",
            "C:\\Windows\\System32\\drivers\\etc",
            "/home/u/.ssh/id_rsa",
            "/var/www/.htpasswd",
            "~/.aws/credentials",
            "%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
            "%C0%AF..%e0%80%ae%c1%9c%c1%8s",
            "%25c0%25ae%25c0%25ae/boot.ini",
            "%u002e%u002e%u2215etc%u2215shadow",
            "\u{ff0e}\u{ff0e}/\u{ff0e}\u{ff0e}/etc/passwd",
            "..\u{2215}..\u{2215}boot.ini",
            "/et\u{fffd}c/passwd",
            "1' OR '1'='1",
            "1 union select username,password from users",
            "x or 1 between 1 and 2",
            "1;waitfor delay '0:0:5'--",
            "admin'-- ",
            "1 ORDER BY 3",
            "<script>alert(1)</script>",
            "<img src=x onerror=alert(1)>",
            "javascript:alert(1)",
            " \tJaVaScRiPt:alert`1`",
            "vbscript:msgbox",
            "data:text/html;base64,PHNjcmlwdD4=",
            "java\u{0}script:x",
            "report..final.pdf",
            "select a plan",
            "O'Brien",
            "rock & roll",
            "Mozilla/5.0 (X11; Linux x86_64)",
            "100231",
            "en-US,en;q=0.9",
            "/docs/v1.2/index.html",
            "https://bank.test/accounts",
            "caf\u{e9} cr\u{e8}me",
        ];
        let pct = |s: &str, all: bool| -> String {
            s.bytes()
                .map(|c| {
                    if !all && c.is_ascii_alphanumeric() {
                        (c as char).to_string()
                    } else {
                        format!("%{c:02X}")
                    }
                })
                .collect()
        };
        let mut v = Vec::new();
        for b in base {
            v.push(b.to_owned());
            v.push(b.to_uppercase());
            v.push(pct(b, false));
            v.push(pct(b, true));
            v.push(pct(&pct(b, false), false).to_lowercase());
            v.push(b.replace(' ', "+"));
        }
        v
    }

    #[test]
    fn the_prefilters_answer_as_the_lowered_copies_did() {
        for v in corpus() {
            assert_eq!(
                traversal(&v),
                reference::traversal(&v).as_deref(),
                "traversal of {v:?}"
            );
            let shape = Shape::of(&v);
            assert_eq!(shape.sql(&v), reference::sql(&v), "sql of {v:?}");
            assert_eq!(
                shape.script_url(&v),
                reference::script_url(&v),
                "script url {v:?}"
            );
            // Where a traversal counts (a parameter), and where it does not (a header).
            let trav = reference::traversal(&v);
            assert_eq!(
                worth(Place::Query, &v),
                reference::candidate(&v).then_some(trav.as_deref()),
                "candidate {v:?}"
            );
            assert_eq!(
                worth(Place::Header, &v).is_some(),
                reference::candidate(&v) && (trav.is_none() || shape.judged(&v)),
                "candidate header {v:?}"
            );
            assert_eq!(
                plus_as_space(&v, |p| worth(Place::Query, p).is_some()),
                reference::candidate(&v.replace('+', " ")),
                "plus as space {v:?}"
            );
        }
        let long = format!("{}+union+select+1", "a".repeat(300));
        assert!(plus_as_space(&long, |p| Shape::of(p).judged(p)));
        assert!(body_candidate(br#"{"q":"1 UnIoN SeLeCt 2"}"#));
        assert!(!body_candidate(br#"{"to":"bob","amount":50}"#));
        assert!(body_candidate(br#"{"f":"/ETC/passwd"}"#));
        assert!(body_candidate(br#"{"f":"%2e%2e%2f"}"#));
    }

    #[test]
    fn attacks_are_caught_in_every_place_and_named_there() {
        let cases: [(&str, &str, &str, &str, AlertKind, &str); 8] = [
            // (query, header, content type, body, kind, place in the explanation)
            (
                "Id=1%2520UnIoN%2520SeLeCt%2520password%2520FROM%2520users--",
                "",
                "",
                "",
                AlertKind::SqlInjection,
                "in query Id of",
            ),
            (
                "f%69le=%252E%252E%252F%252E%252E%252FETC%252FPASSWD",
                "",
                "",
                "",
                AlertKind::PathTraversal,
                "in query file of",
            ),
            (
                "next=+javascript:document.location",
                "",
                "",
                "",
                AlertKind::Xss,
                "in query next of",
            ),
            (
                "",
                "X-Forwarded-For: 1' OR '1'='1",
                "",
                "",
                AlertKind::SqlInjection,
                "in header x-forwarded-for of",
            ),
            (
                "",
                "Cookie: theme=dark; Pref=%3CScRiPt%3Ealert(1)%3C%2FScRiPt%3E",
                "",
                "",
                AlertKind::Xss,
                "in cookie Pref of",
            ),
            (
                "",
                "",
                "Application/JSON",
                r#"{"user":{"name":"..\\..\\Windows\\Win.ini"}}"#,
                AlertKind::PathTraversal,
                "in json name of",
            ),
            (
                "",
                "",
                "application/x-www-form-urlencoded; charset=UTF-8",
                "a=1&path=%252E%252E%255C%252E%252E%255CBoot.ini",
                AlertKind::PathTraversal,
                "in form path of",
            ),
            (
                "",
                "",
                "APPLICATION/X-WWW-FORM-URLENCODED",
                "q=1+UNION+SELECT+card+FROM+cards",
                AlertKind::SqlInjection,
                "in form q of",
            ),
        ];
        for (i, (query, header, ctype, body, kind, place)) in cases.into_iter().enumerate() {
            let mut e = Engine::new(&ModelsConfig::default()).unwrap();
            let mut o = get("/search", i as u64);
            o.query = query.into();
            if let Some((n, v)) = header.split_once(": ") {
                o.req_headers.push((n.into(), v.into()));
            }
            if !body.is_empty() {
                o.method = "POST".into();
                o.req_headers.push(("Content-Type".into(), ctype.into()));
                o.req_body = body.as_bytes().to_vec().into();
            }
            let a = e.observe(&o);
            let hit = a.iter().find(|a| a.kind == kind);
            assert!(
                hit.is_some_and(|a| a.explanation.contains(place)),
                "case {i}: {a:?}"
            );
        }
    }

    /// Cost of the injection and exposure detectors on `bench detect`'s kind of traffic
    /// (printed, not asserted): `cargo test --release -p sentinel-userspace --lib
    /// injection_and_exposure_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn injection_and_exposure_cost() {
        let uas = [
            "BankApp/4.2.1 (iPhone; iOS 18.1)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36",
            "BankApp/5.0 (Android 15; Pixel 9)",
        ];
        let n = 50_000u64;
        let traffic: Vec<_> = (0..n)
            .map(|i| {
                let u = (i * 7919) % 5000;
                let ip = format!("198.18.{}.{}", u / 250, u % 250 + 2);
                let ua = uas[(u % 3) as usize];
                match i % 100 {
                    0..=3 => login(T0 + i * S, &ip, &format!("user{u}"), i % 20 != 0, ua),
                    4 => get("/search?q=1%27%20OR%20%271%27%3D%271", i),
                    k => {
                        let path = match k % 4 {
                            0 => "/balance".to_string(),
                            1 => format!("/accounts/{}", 100_000 + u),
                            2 => "/transactions".to_string(),
                            _ => "/transfer".to_string(),
                        };
                        let mut o =
                            with_token(obs(T0 + i * S, &ip, &path), &format!("tok-user{u}"));
                        o.req_headers[1].1 = ua.into();
                        if k % 4 == 3 {
                            o.method = "POST".into();
                            o.req_headers
                                .push(("Content-Type".into(), "application/json".into()));
                            o.req_body = br#"{"to":"bob","amount":50}"#.to_vec().into();
                        }
                        o
                    }
                }
            })
            .collect();
        let only = |injection: bool, exposure: bool| {
            let mut c = ModelsConfig::default();
            c.behavior.enabled = false;
            c.rate.enabled = false;
            c.credential.enabled = false;
            c.geo.enabled = false;
            c.token.enabled = false;
            c.enumeration.enabled = false;
            c.injection.enabled = injection;
            c.exposure.enabled = exposure;
            Engine::new(&c).unwrap()
        };
        let time = |e: &mut Engine, traffic: &[Observation]| {
            for o in traffic {
                e.observe(o);
            }
            let mut best = f64::MAX;
            for _ in 0..7 {
                let t = std::time::Instant::now();
                let mut out = Vec::new();
                for o in traffic {
                    e.observe_into(o, &mut out);
                }
                best = best.min(t.elapsed().as_secs_f64() * 1e9 / traffic.len() as f64);
            }
            best
        };
        // The exposure scan alone, on these response bodies and on a page of accounts.
        let page = (0..40)
            .map(|i| {
                format!(
                    r#"{{"id":{},"name":"Account {i}","balance":{}.50,"currency":"SAR","status":"active"}}"#,
                    100_000 + i,
                    i * 37
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        // The simulator's statement download and page of transactions.
        let statement = format!("{{\"statement\":\"{}\"}}", "x".repeat(20_000));
        let txns = (0..10)
            .map(|i| {
                format!(
                    r#"{{"ref":"TX{:012}","date":"2026-11-{:02}","amount":{}.{:02},"currency":"SAR","counterparty":"Grocery"}}"#,
                    i * 7_919_111,
                    1 + i,
                    i * 37,
                    i
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        // The demo bank's account document (`lab::bank`), what the live bench's server returns.
        let accounts: Vec<String> = (0..2_000u64)
            .map(|id| {
                format!(
                    r#"{{"balance":{},"iban":"SA03800000006080{:08}","id":{id},"owner":"customer-{id}"}}"#,
                    (id * 7919) % 100_000,
                    id
                )
            })
            .collect();
        let cfg = super::super::exposure::Config::default();
        for (what, bodies) in [
            (
                "responses",
                traffic.iter().map(|o| &*o.resp_body).collect::<Vec<_>>(),
            ),
            ("pages", vec![page.as_bytes(); 2_000]),
            (
                "account documents",
                accounts.iter().map(|a| a.as_bytes()).collect(),
            ),
            ("statements", vec![statement.as_bytes(); 200]),
            ("transaction lists", vec![txns.as_bytes(); 2_000]),
        ] {
            // Against the same scan looking at every byte, interleaved.
            let (mut best, mut every) = (f64::MAX, f64::MAX);
            for _ in 0..7 {
                for (chunks, best) in [(true, &mut best), (false, &mut every)] {
                    let t = std::time::Instant::now();
                    for b in &bodies {
                        std::hint::black_box(match chunks {
                            true => super::super::exposure::scan(b, &cfg),
                            false => super::super::exposure::scan_bytewise(b, &cfg),
                        });
                    }
                    *best = best.min(t.elapsed().as_secs_f64() * 1e9 / bodies.len() as f64);
                }
            }
            println!(
                "exposure scan of {what}: {best:.0} ns each ({every:.0} ns looking at every byte)"
            );
        }
        let none = time(&mut only(false, false), &traffic);
        let inj = time(&mut only(true, false), &traffic);
        let exp = time(&mut only(false, true), &traffic);
        println!(
            "per transaction: engine alone {none:.0} ns, injection {:.0} ns, exposure {:.0} ns",
            inj - none,
            exp - none
        );
        // The injection detector on ordinary requests of one shape each: parameter names, JSON
        // keys and multipart parts to read, none worth an alert.
        let post = |ctype: &str, body: Vec<u8>| {
            let mut o = obs(T0, "198.18.1.2", "/upload");
            o.method = "POST".into();
            o.req_headers
                .push(("Content-Type".into(), ctype.to_owned().into()));
            o.req_bytes = body.len() as u64;
            o.req_body = body.into();
            o
        };
        let png: Vec<u8> = (0..16_384u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let mut upload =
            b"------WebKitFormBoundary7MA4YWxkTrZu0gW\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nMy holiday\r\n\
            ------WebKitFormBoundary7MA4YWxkTrZu0gW\r\nContent-Disposition: form-data; name=\"album_id\"\r\n\r\n100231\r\n\
            ------WebKitFormBoundary7MA4YWxkTrZu0gW\r\nContent-Disposition: form-data; name=\"avatar\"; filename=\"avatar.png\"\r\n\
            Content-Type: image/png\r\n\r\n"
                .to_vec();
        upload.extend_from_slice(&png);
        upload.extend_from_slice(b"\r\n------WebKitFormBoundary7MA4YWxkTrZu0gW--\r\n");
        let with_referer = |mut o: Observation<'static>| {
            o.req_headers
                .push(("Referer".into(), "https://bank.test/docs/".into()));
            o.req_headers.push((
                "Cookie".into(),
                "sid=5f2c9a; theme=dark; last=%2Fdocs%2Fannual%20report.pdf".into(),
            ));
            o
        };
        let shapes = [
            (
                "query of 8 parameters",
                get(
                    "/search?q=shoes&page=2&size=20&sort=price&order=asc&color=red&brand=acme&in_stock=1",
                    0,
                ),
            ),
            (
                "query of bracketed names",
                get(
                    "/items?page[size]=20&page[number]=3&filter[status]=active&fields[items]=id,name",
                    0,
                ),
            ),
            (
                "form of 6 fields",
                post(
                    "application/x-www-form-urlencoded",
                    b"username=jane&remember=1&redirect=%2Fhome&lang=en-US&tz=Asia%2FRiyadh&csrf=abc123".to_vec(),
                ),
            ),
            (
                "JSON of 12 keys, parsed",
                post(
                    "application/json",
                    br#"{"account_id":100231,"memo":"rent, 50% paid","currency":"SAR","amount":1200.5,"to_iban":"SA0380000000608010167519","reference":"May rent","category":"housing","scheduled":false,"tags":["rent","monthly"],"device":{"os":"iOS","app_version":"4.2.1"},"channel":"mobile"}"#.to_vec(),
                ),
            ),
            (
                "browser GET with a Referer (no query) and cookies",
                with_referer(get("/docs/annual%20report.pdf", 0)),
            ),
            (
                "SOAP request of 6 elements",
                post(
                    "text/xml; charset=utf-8",
                    br#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="urn:bank"><soap:Header><m:Session>5f2c9a</m:Session></soap:Header><soap:Body><m:Transfer><m:From>100231</m:From><m:To>SA0380000000608010167519</m:To><m:Amount currency="SAR">1200.50</m:Amount><m:Memo>May rent &amp; fees</m:Memo></m:Transfer></soap:Body></soap:Envelope>"#.to_vec(),
                ),
            ),
            (
                "multipart upload (2 fields, 16 KiB PNG)",
                post("multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW", upload),
            ),
        ];
        for (what, shape) in shapes {
            let traffic: Vec<_> = (0..5_000)
                .map(|i| Observation {
                    ts_ns: T0 + i * S,
                    ..shape.clone()
                })
                .collect();
            let none = time(&mut only(false, false), &traffic);
            let inj = time(&mut only(true, false), &traffic);
            println!("injection on a {what}: {:.0} ns", inj - none);
        }
        // The worst a place costs: a JSON body of 2,000 strings worth judging, each different
        // (no verdict cached), none flagged: padding.
        let traffic: Vec<_> = (0..20u64)
            .map(|k| {
                let fields: Vec<String> = (0..2_000u64)
                    .map(|i| format!("\"p{i}\":\"O'Brien (Jr.) {}\"", k * 10_000 + i))
                    .collect();
                Observation {
                    ts_ns: T0 + k * S,
                    ..post(
                        "application/json",
                        format!("{{{}}}", fields.join(",")).into_bytes(),
                    )
                }
            })
            .collect();
        let none = time(&mut only(false, false), &traffic);
        let inj = time(&mut only(true, false), &traffic);
        println!(
            "injection on a JSON of 2,000 padding strings: {:.0} us",
            (inj - none) / 1e3
        );
    }

    #[test]
    fn decoding_handles_double_and_unicode_escapes() {
        assert_eq!(decode_fully("%252e%252e%252f", false), "../");
        assert_eq!(decode("%u002e%u002e/", false), "../");
        assert_eq!(decode("a+b%zz%", true), "a b%zz%");
        // A `%u` whose four bytes hold a multi-byte character is not an escape (slicing the
        // text there panicked: one crafted query stopped the analysis), nor are non-hex digits.
        assert_eq!(decode("%u12\u{20ac}%41", false), "%u12\u{20ac}A");
        assert_eq!(decode_fully("%25u12%E2%82%AC%2541", false), "%u12\u{20ac}A");
        assert_eq!(decode("%u+1ab", false), "%u+1ab");
    }
}
