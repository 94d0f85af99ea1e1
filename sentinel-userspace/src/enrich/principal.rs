//! Who a request is from: the principal, by the strongest evidence present.
//!
//! Order: bearer token (the JWT `sub` when it is a JWT, else a hash of the token), API key
//! headers, session cookie, another opaque credential ([`opaque_credential`]: `Authorization:
//! Token`, `ApiKey` and the like, a token header holding no JWT), the `sub` of a JWT carried
//! elsewhere (a token header, any cookie, an `access_token` query parameter: [`jwt_elsewhere`]),
//! an API key in the query ([`query_api_key`]: `?api_key=`, `?key=`, ...), login username (JSON
//! or form body of a login endpoint), then the client address (the source IP, or the `X-Forwarded-For` client when the source is a trusted
//! proxy; `ip:unknown` when that client cannot be told). Secrets never appear in clear: tokens, keys and cookies are shown as a stable short
//! hash (`tok:3f9a1c0e2b7d`).

use std::{net::IpAddr, sync::Arc};

use base64::Engine as _;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::models::Header;

/// What kind of evidence identified the principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// JWT subject.
    Jwt,
    /// Opaque bearer token (hashed).
    Token,
    /// API key header (hashed).
    ApiKey,
    /// Session cookie (hashed).
    Session,
    /// Username from a login request.
    User,
    /// Client address.
    Ip,
}

/// A principal: kind and a display id that is safe to log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Principal {
    /// Evidence kind.
    pub kind: PrincipalKind,
    /// `sub`, username, address, or a short hash of a secret.
    pub id: String,
}

impl Principal {
    /// The display form's prefix.
    fn prefix(&self) -> &'static str {
        match self.kind {
            PrincipalKind::Jwt => "jwt",
            PrincipalKind::Token => "tok",
            PrincipalKind::ApiKey => "key",
            PrincipalKind::Session => "sess",
            PrincipalKind::User => "user",
            PrincipalKind::Ip => "ip",
        }
    }

    /// Writes the display form (`jwt:layla`) into `out`, replacing what it held: once per
    /// transaction, so without the formatting machinery.
    pub fn write_into(&self, out: &mut String) {
        out.clear();
        out.push_str(self.prefix());
        out.push(':');
        out.push_str(&self.id);
    }

    /// The display form in a new string.
    pub fn name(&self) -> String {
        let mut s = String::with_capacity(self.prefix().len() + 1 + self.id.len());
        self.write_into(&mut s);
        s
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.prefix(), self.id)
    }
}

/// An address as text, as `Display` writes it; IPv4 (nearly every client) without the
/// formatting machinery, which cost about 3% of the daemon's analysis when each transaction
/// made one.
pub fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut s = String::with_capacity(15);
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if o >= 100 {
            s.push(char::from(b'0' + o / 100));
        }
        if o >= 10 {
            s.push(char::from(b'0' + o / 10 % 10));
        }
        s.push(char::from(b'0' + o % 10));
    }
    s
}

/// A stable short hash of a secret (first 12 hex digits of SHA-256).
pub fn short_hash(secret: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = Sha256::digest(secret.as_bytes());
    let mut s = String::with_capacity(12);
    for b in &d[..6] {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// What the extractor needs to know.
#[derive(Clone, Debug)]
pub struct PrincipalConfig {
    /// Headers that carry API keys (lower case).
    pub api_key_headers: Vec<String>,
    /// Query parameters that carry API keys and access tokens, matched in any case and naming
    /// style ([`same_field`]: `api_key` is also `apiKey`, `api-key`, `APIKEY`); the daemon's
    /// are `[models] api_key_params`.
    pub api_key_params: Vec<String>,
    /// Cookie names that carry sessions.
    pub session_cookies: Vec<String>,
    /// Login endpoints; the daemon's are `[models] login_endpoints`.
    pub login_paths: LoginPaths,
    /// Body fields that carry the login name, in lower case without separators: a field
    /// matches in any case and naming style ([`field_style`]: `user_name`, `userName`, `E-Mail`).
    pub username_fields: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl PrincipalConfig {
    /// True when `name` is one of the configured session cookies (in any case).
    pub fn is_session_cookie(&self, name: &str) -> bool {
        self.session_cookies
            .iter()
            .any(|s| s.eq_ignore_ascii_case(name))
            || session_cookie_by_convention(name)
    }

    /// True when `name` (decoded) is one of the configured API key parameters, in any case and
    /// naming style.
    pub fn is_api_key_param(&self, name: &str) -> bool {
        self.api_key_params.iter().any(|p| same_field(name, p))
    }
}

/// Session cookies frameworks name after the application or with a prefix: Rails'
/// `_myapp_session`, Laravel's `laravel_session`, Rails 8's `session_id`, ASP.NET's
/// `ASP.NET_SessionId`, `.ASPXAUTH` and `.AspNetCore.Identity.Application`.
/// Asked of every cookie of every request: compares in place, no lower-case copy.
fn session_cookie_by_convention(name: &str) -> bool {
    let n = name.trim().as_bytes();
    let ends =
        |s: &str| n.len() >= s.len() && n[n.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes());
    let starts = |s: &str| n.len() >= s.len() && n[..s.len()].eq_ignore_ascii_case(s.as_bytes());
    ends("_session")
        || ["session_id", "asp.net_sessionid", ".aspxauth"]
            .iter()
            .any(|s| n.eq_ignore_ascii_case(s.as_bytes()))
        || starts(".aspnetcore.identity.")
        || starts(".aspnetcore.session")
}

impl Default for PrincipalConfig {
    fn default() -> Self {
        Self {
            api_key_headers: vec!["x-api-key".into(), "api-key".into(), "x-api-token".into()],
            api_key_params: crate::models::ModelsConfig::default().api_key_params,
            session_cookies: vec![
                "session".into(),
                "sessionid".into(),
                "sid".into(),
                "jsessionid".into(),
                "phpsessid".into(),
                "connect.sid".into(),
            ],
            login_paths: LoginPaths::new(&crate::models::ModelsConfig::default().login_endpoints),
            username_fields: [
                "username",
                "user",
                "email",
                "login",
                "identifier",
                "loginname",
                "loginid",
                "userid",
                "emailaddress",
                "accountname",
            ]
            .map(String::from)
            .to_vec(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Claims Sentinel reads from a JWT (never verified: Sentinel observes, it does not authorise).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtInfo {
    /// `alg` of the header (shared, like `sub`: the enricher hands a cached decode to every
    /// request carrying the token).
    pub alg: Arc<str>,
    /// `sub` claim.
    pub sub: Option<Arc<str>>,
    /// `exp` claim (seconds since the epoch).
    pub exp: Option<i64>,
    /// `kid` of the header, when it is text: servers look keys up by it (in SQL, on disk).
    pub kid: Option<Arc<str>>,
}

/// Decodes the header and payload of a compact JWS; `None` when it is not one (or its header
/// has no string `alg`). Only `alg`, `sub` and `exp` are read, without building the documents:
/// every request with a bearer token comes through here. A repeated member counts by its last
/// occurrence; a `sub` that is neither a string nor a number, or an `exp` that is not a number,
/// reads as absent (a fractional `exp` is floored: [`numeric_date`]).
pub fn parse_jwt(token: &str) -> Option<JwtInfo> {
    let mut parts = token.split('.');
    let (h, p) = (parts.next()?, parts.next()?);
    let _sig = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    // Either base64 alphabet, or both mixed, with or without padding, as Node's `Buffer` and
    // PyJWT read them: a header written `+` and `/` is still the header the server reads.
    let dec = |s: &str| {
        let s = s.trim_end_matches('=');
        let url_safe: std::borrow::Cow<'_, str> = if s.contains(['+', '/']) {
            s.replace('+', "-").replace('/', "_").into()
        } else {
            s.into()
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(url_safe.as_bytes())
            .ok()
    };
    let header: Members = serde_json::from_slice(&dec(h)?).ok()?;
    // A payload that is JSON but not an object has no claims (and is still a JWT).
    let p = dec(p)?;
    let payload: Members = serde_json::from_slice(&p).ok().or_else(|| {
        serde_json::from_slice::<serde::de::IgnoredAny>(&p)
            .ok()
            .map(|_| Members::default())
    })?;
    let alg = match header.alg {
        Some(Claim::Str(a)) => a,
        _ => return None,
    };
    Some(JwtInfo {
        alg: alg.into(),
        sub: match payload.sub {
            Some(Claim::Str(s)) => Some(s.into()),
            Some(Claim::Num(n)) => Some(n.to_string().into()),
            _ => None,
        },
        exp: match payload.exp {
            Some(Claim::Num(n)) => numeric_date(&n),
            _ => None,
        },
        kid: match header.kid {
            Some(Claim::Str(k)) => Some(k.into()),
            _ => None,
        },
    })
}

/// A JWT NumericDate (RFC 7519: seconds since the epoch, fractions allowed) in whole seconds:
/// an integer as it is, a fraction floored (1600000000.5 is 1600000000), beyond the range of
/// `i64` the nearest end of it; not a date when not finite.
fn numeric_date(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite())
            // `as` saturates at the ends of the range.
            .map(|f| f.floor() as i64)
    })
}

/// The members of a JWT header or payload that matter, read from a JSON object.
#[derive(Default)]
struct Members {
    alg: Option<Claim>,
    sub: Option<Claim>,
    exp: Option<Claim>,
    kid: Option<Claim>,
}

/// One member's value: a string, a number, or anything else (skipped without being built).
enum Claim {
    Str(String),
    Num(serde_json::Number),
    Other,
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Members, A::Error> {
                let mut out = Members::default();
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    let slot = match &*k {
                        "alg" => &mut out.alg,
                        "sub" => &mut out.sub,
                        "exp" => &mut out.exp,
                        "kid" => &mut out.kid,
                        _ => {
                            m.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(m.next_value()?);
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Claim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Claim;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Claim, E> {
                Ok(Claim::Str(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Claim, E> {
                Ok(Claim::Num(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Claim, E> {
                Ok(Claim::Num(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Claim, E> {
                Ok(serde_json::Number::from_f64(v).map_or(Claim::Other, Claim::Num))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Claim, E> {
                Ok(Claim::Other)
            }
            fn visit_unit<E>(self) -> Result<Claim, E> {
                Ok(Claim::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Claim, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Claim::Other)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Claim, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Claim::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// The account a login names, as principals and profiles know it: the key its failures and
/// history are counted under. User names and e-mail addresses are told apart by neither case nor
/// surrounding blanks in practice, so `layla`, `Layla`, `LAYLA` and ` layla` are one account (a
/// thief logging in as `LAYLA` must meet `layla`'s history, not a blank one). Nor by what a
/// server normalising names reads as one, so that a guesser cannot spread guesses over spellings
/// of one name and stay under each spelling's count. The key is Unicode's identifier caseless
/// match (`toNFKC_Casefold`, Unicode §3.13, which IDNA's mapping builds on), but for `İ`:
/// - compatibility spellings, NFKC (as Django and many identity providers normalise names):
///   `ｌａｙｌａ`, `𝐥𝐚𝐲𝐥𝐚` and `ℓayla` are `layla`, and composed and decomposed accents are one;
/// - invisible characters dropped: every Default_Ignorable_Code_Point ([`ignorable`]: zero-width
///   space and joiners, soft hyphen, word joiner, BOM, bidi marks and isolates, variation
///   selectors, tags, Hangul fillers), so `ad\u{200B}min` and `ad\u{AD}min` are `admin`;
/// - full case folding (CaseFolding.txt, with the [`caseless`] crate) where lower case keeps
///   spellings apart: `straße` and `STRASSE` are `strasse`, `οδος` and `ΟΔΟΣ` are `οδοσ`;
/// - `İ` (U+0130) is `i`: its one-letter lower case (UnicodeData.txt), as Turkish, Java's
///   `equalsIgnoreCase` and MySQL's collations read it, rather than the full folding's `i` and
///   a combining dot above, which no one typing `admİn` means (the dotless `ı` stays itself:
///   `I` folds to `i` whatever the language).
///
/// Accents are kept: `josé` and `jose` are two people on most servers. An ASCII name is not
/// copied unless it has capitals; any other costs one pass and one string.
pub fn account_name(username: &str) -> std::borrow::Cow<'_, str> {
    use caseless::Caseless;
    use unicode_normalization::UnicodeNormalization;
    let name = username.trim();
    if name.is_ascii() {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return std::borrow::Cow::Owned(name.to_ascii_lowercase());
        }
        return std::borrow::Cow::Borrowed(name);
    }
    // NFKC, invisible characters dropped, folded, then NFKC again: a folded letter, or one an
    // invisible character stood between, may compose with what follows it.
    let folded: String = name
        .nfkc()
        .filter(|&c| !ignorable(c))
        .map(|c| if c == '\u{130}' { 'i' } else { c })
        .default_case_fold()
        .nfkc()
        .collect();
    // Blanks an invisible character, or NFKC (`¨` is a space and a diaeresis), left at an end.
    match folded.trim() {
        t if t.len() == folded.len() => std::borrow::Cow::Owned(folded),
        t => std::borrow::Cow::Owned(t.to_owned()),
    }
}

/// Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt, as of Unicode 14, checked
/// against Perl's tables): characters that render as nothing unless a font has a glyph for them,
/// which PRECIS user names refuse and identifier matching drops (`NFKC_Casefold`). Its ranges
/// hold code points not yet assigned (`U+FFF0..U+FFF8`, most of plane 14), so that characters
/// assigned there later are ignorable already.
fn ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{AD}'                       // soft hyphen
        | '\u{34F}'                    // combining grapheme joiner
        | '\u{61C}'                    // Arabic letter mark
        | '\u{115F}'..='\u{1160}'      // Hangul choseong and jungseong fillers
        | '\u{17B4}'..='\u{17B5}'      // Khmer inherent vowels
        | '\u{180B}'..='\u{180F}'      // Mongolian free variation selectors, vowel separator
        | '\u{200B}'..='\u{200F}'      // zero-width space, non-joiner, joiner; LRM, RLM
        | '\u{202A}'..='\u{202E}'      // bidi embeddings and overrides
        | '\u{2060}'..='\u{206F}'      // word joiner, invisible operators, bidi isolates
        | '\u{3164}'                   // Hangul filler
        | '\u{FE00}'..='\u{FE0F}'      // variation selectors 1-16
        | '\u{FEFF}'                   // zero-width no-break space (BOM)
        | '\u{FFA0}'                   // halfwidth Hangul filler
        | '\u{FFF0}'..='\u{FFF8}'      // unassigned, reserved as ignorable
        | '\u{1BCA0}'..='\u{1BCA3}'    // shorthand format controls
        | '\u{1D173}'..='\u{1D17A}'    // musical beam and phrase controls
        | '\u{E0000}'..='\u{E0FFF}'    // tags, variation selectors 17-256, reserved
    )
}

/// The request facts the extractor reads.
pub struct RequestView<'a> {
    /// Source address of the connection.
    pub src_ip: IpAddr,
    /// Path without the query.
    pub path: &'a str,
    /// Query without `?`, empty when none.
    pub query: &'a str,
    /// Headers, names in any case.
    pub headers: &'a [Header<'a>],
    /// Body (possibly capped).
    pub body: &'a [u8],
}

impl<'a> RequestView<'a> {
    fn header(&self, name: &str) -> Option<&'a str> {
        crate::models::header(self.headers, name).map(|v| &**v)
    }
}

/// The address that stands for a client that cannot be told (see [`client_ip`]): the
/// unspecified address, which is never a packet's source, so a verdict on it blocks no one.
pub const UNKNOWN_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// An observation's client address as alerts and explanations name it: `unknown` for
/// [`UNKNOWN_CLIENT`].
pub fn client_text(ip: IpAddr) -> String {
    if ip.is_unspecified() {
        "unknown".into()
    } else {
        ip_text(ip)
    }
}

/// The client address: the source, or the right-most `X-Forwarded-For` hop that is not a
/// trusted proxy when the source is one. Several `X-Forwarded-For` field lines are one list, in
/// order (a proxy that appends its own line, as HAProxy's `option forwardfor` does, must not
/// leave the client's own first line believed), and a hop may carry a port (`203.0.113.7:51234`,
/// `[2001:db8::7]:443`).
///
/// `None` when that hop is not an address (`unknown`, an obfuscated identifier such as
/// `_hidden` from RFC 7239, garbage): the client cannot be told. It is not the proxy either,
/// which only passed the request on: taking the proxy for it would aim alerts, and blocks, at
/// the proxy and with it at every user behind it.
pub fn client_ip(req: &RequestView<'_>, cfg: &PrincipalConfig) -> Option<IpAddr> {
    let trusted = |ip: &IpAddr| cfg.trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(&req.src_ip) {
        return Some(req.src_ip);
    }
    let lines: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
        .map(|(_, v)| &**v)
        .collect();
    // Walk from the nearest hop outwards, skipping our own proxies (and empty list elements).
    for hop in lines.iter().rev().flat_map(|l| l.rsplit(',')) {
        let hop = hop.trim();
        if hop.is_empty() {
            continue;
        }
        match hop_ip(hop) {
            Some(ip) if trusted(&ip) => continue,
            Some(ip) if ip.is_unspecified() => return None,
            Some(ip) => return Some(ip),
            None => return None,
        }
    }
    // No hop but trusted proxies: the request comes from them (a health check, say).
    Some(req.src_ip)
}

/// One `X-Forwarded-For` hop: an address, with or without a port (IPv6 in brackets then).
fn hop_ip(hop: &str) -> Option<IpAddr> {
    hop.parse()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// Login endpoints, split into segments once: every request is matched against them.
///
/// A path (a request path or an endpoint template) is a login path when it ends with one of
/// them, segment by segment, in any case (`/API/Login` is `/api/login` to many servers, and to
/// an attacker trying both), trailing slashes aside; a `{...}` segment of a configured path
/// matches any segment (`/tenants/{tenant}/login` matches `/tenants/acme/login` and the learned
/// template `/tenants/{param}/login`); an empty one (`/`) is the root only. The enricher (reading
/// user names) and the models (counting failures) both ask this.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoginPaths(Vec<LoginPath>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct LoginPath {
    /// Segments from the last one back; `None` is a placeholder. Empty for the root.
    segments: Vec<Option<Box<str>>>,
    /// The configured path starts with `/`: the match ends on a segment boundary.
    anchored: bool,
}

impl LoginPaths {
    /// Compiles configured paths.
    pub fn new(paths: &[String]) -> Self {
        Self(
            paths
                .iter()
                .map(|l| {
                    let l = l.trim_end_matches('/');
                    let mut segments = Vec::new();
                    let mut anchored = false;
                    for seg in l.rsplit('/') {
                        if seg.is_empty() {
                            anchored = true;
                            break;
                        }
                        let any = seg.len() > 2 && seg.starts_with('{') && seg.ends_with('}');
                        segments.push((!any).then(|| seg.into()));
                    }
                    LoginPath { segments, anchored }
                })
                .collect(),
        )
    }

    /// True when `path`, as servers route it ([`routed`]), ends with one of these paths.
    pub fn matches(&self, path: &str) -> bool {
        if path.contains(['%', ';']) || path.contains("/.") {
            return self.matches_routed(&routed(path));
        }
        self.matches_routed(path)
    }

    fn matches_routed(&self, path: &str) -> bool {
        let path = path.trim_end_matches('/');
        let last = path.rfind('/').map_or(path, |i| &path[i + 1..]);
        let seg_matches = |seg: &str, want: &Option<Box<str>>| match want {
            None => !seg.is_empty(),
            Some(w) => seg.eq_ignore_ascii_case(w),
        };
        self.0.iter().any(|l| {
            let Some(first) = l.segments.first() else {
                return path.is_empty();
            };
            // Most paths differ from every login path in their last segment: that is decided
            // before walking the others.
            seg_matches(last, first) && {
                let mut got = path.rsplit('/');
                l.segments
                    .iter()
                    .all(|want| got.next().is_some_and(|seg| seg_matches(seg, want)))
                    && (!l.anchored || got.next().is_some())
            }
        })
    }
}

/// The login username from a JSON or form body, on login endpoints only. Field names match in
/// any case and naming style (`Username`, `EMAIL`, `user_name`, `E-Mail`); form field names are
/// percent-decoded as their values are (`user%6eame=`); a JSON body's fields are looked for at
/// the top, then in its objects one level down (`{"credentials":{"username":...}}`), then two
/// (JSON:API's `{"data":{"attributes":{"email":...}}}`). An empty name is none.
pub fn login_username(req: &RequestView<'_>, cfg: &PrincipalConfig) -> Option<String> {
    if !cfg.login_paths.matches(req.path) {
        return None;
    }
    let ctype = req
        .header("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    // A byte order mark, which JSON parsers of servers skip (Express, Python, Jackson).
    let body = req.body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(req.body);
    // A form is a form whatever it starts with (`{=&username=...`): servers go by its type.
    let form = ctype.contains("x-www-form-urlencoded");
    if !form && (ctype.contains("json") || body.trim_ascii_start().first() == Some(&b'{')) {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let mut level = vec![v.as_object()?];
        for _ in 0..3 {
            if let Some(name) = level
                .iter()
                .find_map(|o| text_field(o, &cfg.username_fields))
            {
                return Some(name.to_owned());
            }
            level = level
                .iter()
                .flat_map(|o| o.values().filter_map(serde_json::Value::as_object))
                .collect();
        }
        return None;
    }
    if form {
        let body = String::from_utf8_lossy(body);
        let field = |k: &str| cfg.username_fields.contains(&field_style(k));
        for pair in body.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let matches = if k.contains(['%', '+']) {
                field(&percent_decode(k))
            } else {
                field(k)
            };
            if matches {
                let name = percent_decode(v);
                // `username=+` is a blank name: no account, as in JSON.
                if !name.trim().is_empty() {
                    return Some(name);
                }
            }
        }
    }
    None
}

/// The text of the first of `fields` (in their order) that `o` has, its name in any case and
/// naming style; empty text is none.
pub(crate) fn text_field<'v>(
    o: &'v serde_json::Map<String, serde_json::Value>,
    fields: &[String],
) -> Option<&'v str> {
    // Each key's style once (a login body may hold thousands of keys), and only of keys that
    // hold text: the first of `fields` in their order wins.
    let styled: Vec<(String, &str)> = o
        .iter()
        .filter_map(|(k, v)| Some((field_style(k), v.as_str()?)))
        .filter(|(_, v)| !v.trim().is_empty())
        .collect();
    fields
        .iter()
        .find_map(|f| styled.iter().find(|(k, _)| k == f).map(|(_, v)| *v))
}

/// A field name in lower case without the separators naming styles put in it: `user_name`,
/// `userName`, `User-Name` and `USERNAME` are `username`.
pub fn field_style(k: &str) -> String {
    styled(k).collect()
}

/// True when `a` and `b` name one field in [`field_style`] (`api_key` and `apiKey`), without
/// copying either: the query of every request is asked.
pub fn same_field(a: &str, b: &str) -> bool {
    styled(a).eq(styled(b))
}

/// The characters of [`field_style`].
fn styled(k: &str) -> impl Iterator<Item = char> + '_ {
    k.chars()
        .filter(|c| !matches!(c, '_' | '-' | '.' | ' '))
        .flat_map(char::to_lowercase)
}

/// A request path as servers route it: a segment's `;` parameters dropped (Tomcat and Spring
/// route `/login;jsessionid=x` to `/login`), escapes decoded (`/%6cogin` is `/login`), and
/// empty and `.` segments skipped (`/login/.`).
fn routed(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/') {
        let seg = seg.split(';').next().unwrap_or_default();
        for s in decode_escapes(seg, false).split('/') {
            if !s.is_empty() && s != "." {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    out
}

/// Decodes `%XX` escapes and `+` (form encoding); invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    decode_escapes(s, true)
}

/// Decodes `%XX` escapes, and `+` as a space when `plus` (form encoding, not paths).
fn decode_escapes(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' if plus => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The bearer token of a request (`Authorization: Bearer TOKEN`), trimmed.
pub fn bearer<'a>(req: &RequestView<'a>) -> Option<&'a str> {
    bearer_token(req.header("authorization")?)
}

/// The token of an `Authorization` value when its scheme is `Bearer`, trimmed.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    credentials(authorization, "bearer")
}

/// The credentials of an `Authorization` value when its scheme is `scheme` (any case), trimmed;
/// the scheme ends at any blank (`Bearer\tTOKEN`, which passport-jwt and others read).
pub fn credentials<'a>(authorization: &'a str, scheme: &str) -> Option<&'a str> {
    let (name, creds) = authorization
        .trim_start()
        .split_once(|c: char| c.is_ascii_whitespace())?;
    name.eq_ignore_ascii_case(scheme).then(|| creds.trim())
}

/// The user name of a `Basic` Authorization value (base64 of `user:password`).
pub fn basic_user(authorization: &str) -> Option<String> {
    basic_credentials(authorization).map(|(user, _)| user)
}

/// The user name and password of a `Basic` Authorization value (the password empty when there
/// is no `:`).
pub fn basic_credentials(authorization: &str) -> Option<(String, String)> {
    let creds = credentials(authorization, "basic")?;
    // Decoded as lenient servers decode it: Python's b64decode (Werkzeug, Django REST
    // Framework) drops what is not base64, Node's Buffer takes the URL-safe alphabet too; a
    // strict decoder would see no credentials where the server sees some.
    let kept: String = creds
        .chars()
        .filter_map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '+' | '/' => Some(c),
            '-' => Some('+'),
            '_' => Some('/'),
            _ => None,
        })
        .collect();
    // A stray last character (a length of 4n + 1) holds no whole byte: servers drop it.
    let usable = if kept.len() % 4 == 1 {
        &kept[..kept.len() - 1]
    } else {
        &kept[..]
    };
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(usable)
        .ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (user, password) = text.split_once(':').unwrap_or((&text, ""));
    Some((user.to_owned(), password.to_owned()))
}

/// `Authorization` schemes besides `Bearer` whose credentials are a token or key the server
/// looks up as it would a bearer token, in lower case without separators ([`field_style`]):
/// `Token` (Django REST Framework, Rails, GitHub), `ApiKey`, `Api-Key` or `API_KEY`
/// (Elasticsearch and many gateways) and `Key`. Schemes that sign each request (AWS SigV4,
/// `Digest`, OAuth 1.0) carry no credential that repeats, and `Basic` is a login.
const TOKEN_SCHEMES: [(&str, PrincipalKind); 3] = [
    ("token", PrincipalKind::Token),
    ("apikey", PrincipalKind::ApiKey),
    ("key", PrincipalKind::ApiKey),
];

/// An opaque credential a request carries outside `Authorization: Bearer` and the API key
/// headers, and the kind of principal it names: the credentials of an `Authorization` scheme
/// of [`TOKEN_SCHEMES`] (Rails' `Token token="..."` read for its token), an `Authorization`
/// value that is one word and not only letters (the key itself, without a scheme), else the value of a token
/// header ([`TOKEN_HEADERS`], `Bearer ` dropped) that is no JWT: a JWT there is
/// [`jwt_elsewhere`]'s, named by its subject.
pub fn opaque_credential<'a>(req: &RequestView<'a>) -> Option<(&'a str, PrincipalKind)> {
    if let Some(auth) = req.header("authorization").map(str::trim) {
        match auth.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((scheme, creds)) => {
                let scheme = field_style(scheme);
                if let Some((_, kind)) = TOKEN_SCHEMES.iter().find(|(s, _)| *s == scheme) {
                    let creds = creds.trim();
                    let named = creds
                        .get(..6)
                        .filter(|p| p.eq_ignore_ascii_case("token="))
                        .map(|_| {
                            let v = creds[6..].split(',').next().unwrap_or_default().trim();
                            v.strip_prefix('"')
                                .and_then(|v| v.strip_suffix('"'))
                                .unwrap_or(v)
                        });
                    let tok = named.unwrap_or(creds);
                    if secret_like(tok) {
                        return Some((tok, *kind));
                    }
                }
            }
            // A scheme's name alone (`Bearer` without its token) is no key, and a JWT without
            // a scheme (API Gateway's Cognito authorizer) is no opaque key: its hash changes at
            // every refresh.
            None if secret_like(auth) && !looks_like_jwt(auth) => {
                return Some((auth, PrincipalKind::Token));
            }
            None => {}
        }
    }
    req.headers.iter().find_map(|(name, value)| {
        if !TOKEN_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            return None;
        }
        let v = bearer_token(value).unwrap_or(value).trim();
        (secret_like(v) && !looks_like_jwt(v)).then_some((v, PrincipalKind::Token))
    })
}

/// Long enough to be a secret (16 characters: API keys and tokens are 20 to 64), which
/// placeholders a client sends while logged out are not (`null`, `undefined`, `[object
/// Object]`): every anonymous visitor sending one would be one principal.
fn secret_like(v: &str) -> bool {
    v.len() >= 16
}

/// Headers besides `Authorization` and the API key headers that APIs carry a JWT in (lower
/// case), a `Bearer ` before it or not.
const TOKEN_HEADERS: [&str; 8] = [
    "x-access-token",
    "x-auth-token",
    "access-token",
    "auth-token",
    "x-jwt",
    "x-jwt-assertion",
    "x-id-token",
    "x-token",
];

/// Query parameters that carry a JWT: `access_token` (RFC 6750 §2.3), and its like.
const TOKEN_PARAMS: [&str; 4] = ["access_token", "id_token", "token", "jwt"];

/// A cheap test before decoding: `s` could be a compact JWS as [`parse_jwt`] reads one, two dots
/// and a header that is a JSON object, which encodes to a first character `e` (`{`), or `I`,
/// `C` or `D` when blanks come before it (`eyJ` is the usual start, but JSON parsers, servers'
/// and ours, take `{ "alg"` too).
pub fn looks_like_jwt(s: &str) -> bool {
    matches!(s.as_bytes().first(), Some(b'e' | b'I' | b'C' | b'D'))
        && memchr::memchr_iter(b'.', s.as_bytes()).take(3).count() == 2
}

/// Calls `found` with each value a request may carry a JWT in besides `Authorization` that
/// [`looks_like_jwt`], in order: the API key and token headers ([`TOKEN_HEADERS`], `Bearer `
/// dropped), every cookie of every `Cookie` line (unquoted), then the query's token and API key
/// parameters ([`TOKEN_PARAMS`], [`PrincipalConfig::api_key_params`]; percent-decoded as servers
/// read them, [`query_fields`]), and whether the server surely
/// reads it ([`Carried::read`]). Nothing is allocated unless a parameter is escaped.
pub fn jwts_elsewhere(
    req: &RequestView<'_>,
    cfg: &PrincipalConfig,
    mut found: impl FnMut(&str, Carried),
) {
    let mut check = |v: &str, how: Carried| {
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        if looks_like_jwt(v) {
            found(v, how);
        }
    };
    let mut cookies = false;
    for (name, value) in req.headers {
        if name.eq_ignore_ascii_case("cookie") {
            cookies = true;
            continue;
        }
        let token_header = |h: &str| name.eq_ignore_ascii_case(h);
        if TOKEN_HEADERS.iter().any(|h| token_header(h))
            || cfg.api_key_headers.iter().any(|h| token_header(h))
        {
            check(bearer_token(value).unwrap_or(value), Carried { read: true });
        }
    }
    if cookies {
        for (_, line) in req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        {
            for c in line.split(';') {
                if let Some((k, v)) = c.split_once('=') {
                    let read = cfg.is_session_cookie(k.trim());
                    check(v, Carried { read });
                }
            }
        }
    }
    // Beside an API key in the query ([`query_api_key`]) the server authenticates by the key:
    // a JWT there (forged, naming anyone) is judged but names nobody, or it would take the
    // principal and the credential from the key (asked only when a JWT is found).
    let mut keyed = None;
    for (k, v) in query_fields(req.query) {
        if TOKEN_PARAMS.contains(&&*k) || cfg.is_api_key_param(&k) {
            let v = percent_decoded(v);
            let jwt = looks_like_jwt(v.trim().trim_matches('"'));
            let read = !jwt || !*keyed.get_or_insert_with(|| query_api_key(req, cfg).is_some());
            check(&v, Carried { read });
        }
    }
}

/// The fields of a query (without `?`) as servers read them, in order: separated by `&` or `;`
/// (as [`crate::redact::pairs`] separates them), each name percent-decoded ([`percent_decoded`]), its
/// value as sent.
fn query_fields(query: &str) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, &str)> {
    query
        .split(crate::redact::SEPARATORS)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decoded(k), v)
        })
}

/// A query field's name or value percent-decoded ([`percent_decode`]), borrowed when it holds no
/// escape.
pub fn percent_decoded(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['%', '+']) {
        std::borrow::Cow::Owned(percent_decode(s))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// An API key or access token sent in the query: the value of the first configured parameter
/// ([`PrincipalConfig::api_key_params`], in any case and naming style) that is [`secret_like`]
/// and no JWT, percent-decoded and trimmed as servers read it. A JWT there is
/// [`jwt_elsewhere`]'s, named by its subject. A value too short to be a secret (`?key=name`,
/// `?token=null`) is none: every anonymous visitor sending it would be one principal. Nothing is
/// allocated unless the value is escaped.
pub fn query_api_key<'q>(
    req: &RequestView<'q>,
    cfg: &PrincipalConfig,
) -> Option<std::borrow::Cow<'q, str>> {
    use std::borrow::Cow;
    if req.query.is_empty() || cfg.api_key_params.is_empty() {
        return None;
    }
    query_fields(req.query)
        .filter(|(k, _)| cfg.is_api_key_param(k))
        .find_map(|(_, v)| {
            let v = percent_decoded(v);
            let t = v.trim();
            if !secret_like(t) || looks_like_jwt(t) {
                return None;
            }
            Some(match v {
                Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
                Cow::Owned(o) => Cow::Owned(o.trim().to_owned()),
            })
        })
}

/// How a JWT outside `Authorization` was carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Carried {
    /// The server reads it: a token header or query parameter, which a client sends on
    /// purpose, or a configured session cookie. Not so any other cookie: a browser sends every
    /// cookie of the site, stale ones too (an expired access token beside the refresh token a
    /// server renews it with, or another application's `id_token`), which the server may well
    /// ignore; so only an unsigned one is judged there, never its expiry.
    pub read: bool,
}

/// Of the JWTs a request carries besides `Authorization` ([`jwts_elsewhere`]) the one to judge
/// and name the principal by, with what `decode` gives with it (its hash): an unsigned one
/// before a signed one, then the one expiring first, then the first. A decoy of a good token
/// placed first does not hide the forged one a server reads. The expiry of a JWT the server
/// may not read ([`Carried::read`]) is dropped: it ranks after every other and cannot be judged
/// expired. `None` when none is a JWT.
pub fn jwt_elsewhere<H>(
    req: &RequestView<'_>,
    cfg: &PrincipalConfig,
    mut decode: impl FnMut(&str, Carried) -> Option<(JwtInfo, H)>,
) -> Option<(JwtInfo, H)> {
    let rank = |j: &JwtInfo| {
        (
            !j.alg.eq_ignore_ascii_case("none"),
            j.exp.unwrap_or(i64::MAX),
        )
    };
    let mut best: Option<(JwtInfo, H)> = None;
    jwts_elsewhere(req, cfg, |tok, how| {
        if let Some(mut c) = decode(tok, how) {
            if !how.read {
                // Judged for `alg: none` only, and naming nobody: a client could rotate
                // subjects in a cookie the server never reads to split its traffic.
                c.0.exp = None;
                c.0.sub = None;
            }
            if best.as_ref().is_none_or(|b| rank(&c.0) < rank(&b.0)) {
                best = Some(c);
            }
        }
    });
    best
}

/// Identifies the principal of a request.
pub fn principal(req: &RequestView<'_>, cfg: &PrincipalConfig) -> Principal {
    let tok = bearer(req);
    let jwt = tok.and_then(parse_jwt);
    let hash = tok.map(short_hash);
    let elsewhere = if tok.is_none() {
        jwt_elsewhere(req, cfg, |t, _| Some((parse_jwt(t)?, short_hash(t))))
    } else {
        None
    };
    let login = login_username(req, cfg);
    let decoded = Decoded {
        bearer: hash.as_deref().map(|h| (jwt.as_ref(), h)),
        elsewhere: elsewhere.as_ref().map(|(j, _)| j),
        login: login.as_deref(),
        client: client_ip(req, cfg).unwrap_or(UNKNOWN_CLIENT),
    };
    identify(req, cfg, &decoded, short_hash)
}

/// What a request's credentials decoded to, worked out once per request by the caller of
/// [`identify`] (the enricher keeps them in a cache, and needs them itself).
pub struct Decoded<'a> {
    /// The bearer token's claims when it is a JWT ([`parse_jwt`]), and its [`short_hash`].
    pub bearer: Option<(Option<&'a JwtInfo>, &'a str)>,
    /// Without a bearer token, the claims of a JWT carried elsewhere ([`jwt_elsewhere`]).
    pub elsewhere: Option<&'a JwtInfo>,
    /// The user name of a login request ([`login_username`]).
    pub login: Option<&'a str>,
    /// The client's address ([`client_ip`], or [`UNKNOWN_CLIENT`]).
    pub client: IpAddr,
}

/// [`principal`] with the request's bearer token and login decoded already, and `hash` giving
/// the [`short_hash`] of an API key or session cookie.
pub fn identify(
    req: &RequestView<'_>,
    cfg: &PrincipalConfig,
    decoded: &Decoded<'_>,
    mut hash: impl FnMut(&str) -> String,
) -> Principal {
    if let Some((jwt, token_hash)) = decoded.bearer {
        if let Some(sub) = jwt.and_then(|j| j.sub.as_deref()) {
            return Principal {
                kind: PrincipalKind::Jwt,
                id: sub.to_owned(),
            };
        }
        return Principal {
            kind: PrincipalKind::Token,
            id: token_hash.to_owned(),
        };
    }
    for h in &cfg.api_key_headers {
        if let Some(k) = req.header(h) {
            return Principal {
                kind: PrincipalKind::ApiKey,
                id: hash(k.trim()),
            };
        }
    }
    // Every `Cookie` line: HTTP/2 (and a proxy translating it) sends one per cookie.
    for (_, cookies) in req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
    {
        for c in cookies.split(';') {
            // Read as the session cookie a login answer sets is ([`super::cookie::pair`]):
            // its hash is the credential linked to the account that logged in.
            let Some((k, v)) = super::cookie::pair(c) else {
                continue;
            };
            if !v.is_empty() && cfg.is_session_cookie(k) {
                return Principal {
                    kind: PrincipalKind::Session,
                    id: hash(v),
                };
            }
        }
    }
    // A key sent as `Authorization: ApiKey k` is the principal `X-API-Key: k` is. After the
    // session cookie: a key the whole app sends (in `X-Token`, say) would make every user one.
    if let Some((secret, kind)) = opaque_credential(req) {
        return Principal {
            kind,
            id: hash(secret),
        };
    }
    // A JWT in a token header, a cookie or the query names its subject when no credential above
    // named the principal: an API key or session stays named by its hash, as it always was.
    if let Some(sub) = decoded.elsewhere.and_then(|j| j.sub.as_deref()) {
        return Principal {
            kind: PrincipalKind::Jwt,
            id: sub.to_owned(),
        };
    }
    // A login names its account before a key in the query: an application may send its key
    // in every URL, the login's too, and an attacker may put any key in the login's URL; the
    // guesses are the account's either way (a key chosen by the guesser would have them judged
    // against the key's own profile: its client and country look familiar).
    if let Some(user) = decoded.login {
        return Principal {
            kind: PrincipalKind::User,
            id: account_name(user).into_owned(),
        };
    }
    // A key in the query comes after every other credential: the query is where the key an
    // application embeds in its pages travels (a maps or weather key every visitor's browser
    // sends), which would make every user one, as a key the whole app sends in a header would;
    // a user's session cookie or JWT names the user. Named as the same key in `X-API-Key` is.
    if let Some(key) = query_api_key(req, cfg) {
        return Principal {
            kind: PrincipalKind::ApiKey,
            id: hash(&key),
        };
    }
    Principal {
        kind: PrincipalKind::Ip,
        id: client_text(decoded.client),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<Header<'static>> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string().into(), b.to_string().into()))
            .collect()
    }

    fn jwt(header: &str, payload: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.c2ln", e(header), e(payload))
    }

    fn view<'a>(path: &'a str, headers: &'a [Header<'a>], body: &'a [u8]) -> RequestView<'a> {
        RequestView {
            src_ip: "192.0.2.10".parse().unwrap(),
            path,
            query: "",
            headers,
            body,
        }
    }

    #[test]
    fn addresses_and_principals_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "198.18.0.5",
            "203.0.113.255",
            "10.20.100.9",
            "2001:db8::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
        for o in 0..=255u8 {
            let ip = IpAddr::from([o, 255 - o, o / 3, 7]);
            assert_eq!(ip_text(ip), ip.to_string());
        }
        let p = Principal {
            kind: PrincipalKind::Session,
            id: "abc".into(),
        };
        let mut buf = "old".to_string();
        p.write_into(&mut buf);
        assert_eq!((buf.as_str(), p.name()), ("sess:abc", p.to_string()));
    }

    #[test]
    fn jwt_subject_wins() {
        let t = jwt(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"sub":"layla","exp":1900000000}"#,
        );
        let hs = h(&[("Authorization", &format!("Bearer {t}"))]);
        let p = principal(&view("/balance", &hs, b""), &PrincipalConfig::default());
        assert_eq!(
            p,
            Principal {
                kind: PrincipalKind::Jwt,
                id: "layla".into()
            }
        );
        let j = parse_jwt(&t).unwrap();
        assert_eq!((&*j.alg, j.exp), ("HS256", Some(1_900_000_000)));
        assert!(parse_jwt("not.a.jwt").is_none());
        // The scheme ends at any blank; the other base64 alphabet (`+`, `/`) and padding are
        // read as Node's Buffer and PyJWT read them.
        let tab = h(&[("Authorization", &format!("Bearer\t{t}"))]);
        assert_eq!(
            principal(&view("/balance", &tab, b""), &PrincipalConfig::default()),
            p
        );
        let std = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let header = std(r#"{"alg":"none","x":"?>"}"#);
        assert!(header.contains('+') && header.ends_with('='), "{header}");
        let j = parse_jwt(&format!("{header}.{}.", std(r#"{"sub":"u?>?"}"#))).unwrap();
        assert_eq!((&*j.alg, j.sub.as_deref()), ("none", Some("u?>?")));
        // Numbers as subjects, the last of repeated members, odd types read as absent.
        let j = parse_jwt(&jwt(
            r#"{"alg":"none","kid":{"a":[1,2]}}"#,
            r#"{"sub":12,"sub":1234567890123,"exp":true,"roles":["a",{"b":null}]}"#,
        ))
        .unwrap();
        assert_eq!(
            (&*j.alg, j.sub.as_deref(), j.exp),
            ("none", Some("1234567890123"), None)
        );
        let j = parse_jwt(&jwt(r#"{"alg":"HS256"}"#, r#"{"sub":["x"],"exp":"soon"}"#)).unwrap();
        assert_eq!((j.sub, j.exp), (None, None));
        assert!(
            parse_jwt(&jwt(r#"{"alg":7}"#, r#"{}"#)).is_none(),
            "alg must be text"
        );
        assert_eq!(
            parse_jwt(&jwt(r#"{"alg":"HS256"}"#, r#"[1]"#)).map(|j| j.sub),
            Some(None),
            "a payload that is not an object has no claims"
        );
        assert!(parse_jwt(&jwt(r#"{"alg":"HS256"}"#, r#"{"sub""#)).is_none());
        assert_eq!(
            short_hash("abc123"),
            "6ca13d52ca70",
            "first 12 hex digits of SHA-256"
        );
        assert!(parse_jwt("abc").is_none());
    }

    #[test]
    fn a_jwt_outside_authorization_names_its_subject_when_nothing_configured_does() {
        let cfg = PrincipalConfig::default();
        let t = jwt(r#"{"alg":"HS256"}"#, r#"{"sub":"layla","exp":1900000000}"#);
        let layla = Principal {
            kind: PrincipalKind::Jwt,
            id: "layla".into(),
        };
        let quoted = format!("\"{t}\"");
        for (name, value) in [
            ("X-Access-Token", t.as_str()),
            ("x-auth-token", &format!("Bearer {t}")),
        ] {
            let hs = h(&[("Accept", "*/*"), (name, value)]);
            assert_eq!(
                principal(&view("/balance", &hs, b""), &cfg),
                layla,
                "{name}: {value}"
            );
        }
        // A cookie that is no session cookie may be one the server never reads: it is found
        // (quoted, on a second `Cookie` line as HTTP/2 sends them) but names nobody, or a
        // client could rotate subjects in it to split its traffic.
        for cookies in [
            vec![("Cookie", format!("theme=dark; access={t}"))],
            vec![("Cookie", format!("jwt={quoted}"))],
            vec![
                ("Cookie", "theme=dark".to_owned()),
                ("cookie", format!("t={t}")),
            ],
        ] {
            let hs: Vec<(&str, &str)> = cookies.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let hs = h(&hs);
            let v = view("/", &hs, b"");
            let found = jwt_elsewhere(&v, &cfg, |t, how| Some((parse_jwt(t)?, how.read)));
            assert_eq!(
                found.map(|(j, read)| (j.alg.to_string(), j.sub, read)),
                Some(("HS256".into(), None, false)),
                "{cookies:?}"
            );
            assert_eq!(principal(&v, &cfg).kind, PrincipalKind::Ip, "{cookies:?}");
        }
        // The query, percent-encoded or not.
        let escaped = t.replacen('e', "%65", 1);
        for query in [
            format!("a=1&access_token={t}"),
            format!("access%5Ftoken={escaped}"),
        ] {
            let v = RequestView {
                query: &query,
                ..view("/balance", &[], b"")
            };
            assert_eq!(principal(&v, &cfg), layla, "{query}");
        }
        // Authorization wins; the configured API key and session cookie keep their names.
        let hs = h(&[
            ("Cookie", &format!("access={t}")),
            ("Authorization", "Bearer opaque-1"),
        ]);
        assert_eq!(
            principal(&view("/", &hs, b""), &cfg).kind,
            PrincipalKind::Token
        );
        let hs = h(&[("Cookie", &format!("access={t}")), ("X-Api-Key", "k-1")]);
        assert_eq!(
            principal(&view("/", &hs, b""), &cfg).kind,
            PrincipalKind::ApiKey
        );
        let hs = h(&[("Cookie", &format!("sid={t}"))]);
        let p = principal(&view("/", &hs, b""), &cfg);
        assert_eq!((p.kind, p.id), (PrincipalKind::Session, short_hash(&t)));
        // Without a subject it names nothing: a login's user name still does.
        let json = h(&[
            ("Content-Type", "application/json"),
            ("X-Auth-Token", &jwt(r#"{"alg":"HS256"}"#, r#"{"exp":1}"#)),
        ]);
        let p = principal(&view("/login", &json, br#"{"username":"bob"}"#), &cfg);
        assert_eq!((p.kind, p.id.as_str()), (PrincipalKind::User, "bob"));
        // Cookies that are no JWT, two dots or not, name nothing; a token header's value that
        // is none is an opaque token, named by its hash.
        let hs = h(&[("Cookie", "_ga=GA1.2.3; v=eyJhIjoxfQ.a.b; n=e.x.y")]);
        assert_eq!(
            principal(&view("/", &hs, b""), &cfg).kind,
            PrincipalKind::Ip
        );
        let hs = h(&[("X-Auth-Token", "abcdefgh.ijklmnop.qrstuvwx")]);
        let p = principal(&view("/", &hs, b""), &cfg);
        assert_eq!(
            (p.kind, p.id),
            (
                PrincipalKind::Token,
                short_hash("abcdefgh.ijklmnop.qrstuvwx")
            )
        );
        // Placeholders name nobody; a session cookie wins over a key the whole app sends.
        for (name, value) in [("X-Access-Token", "null"), ("X-Auth-Token", "undefined")] {
            let hs = h(&[(name, value)]);
            assert_eq!(
                principal(&view("/", &hs, b""), &cfg).kind,
                PrincipalKind::Ip
            );
        }
        let hs = h(&[
            ("X-Token", "app-wide-key-0123456789"),
            ("Cookie", "sessionid=s-4f2a9c1e"),
        ]);
        assert_eq!(
            principal(&view("/", &hs, b""), &cfg).kind,
            PrincipalKind::Session
        );
    }

    #[test]
    fn of_several_jwts_elsewhere_the_unsigned_then_the_first_expiring_a_server_reads_is_judged() {
        let cfg = PrincipalConfig::default();
        let good = jwt(r#"{"alg":"HS256"}"#, r#"{"sub":"a","exp":1900000000}"#);
        let old = jwt(r#"{"alg":"HS256"}"#, r#"{"sub":"b","exp":1600000000}"#);
        // A header with a blank before it is still a JWT to servers (and to parse_jwt).
        let none = jwt(r#" {"alg":"none"}"#, r#"{"sub":"c"}"#);
        assert!(looks_like_jwt(&none) && !none.starts_with("eyJ"), "{none}");
        let pick = |headers: &[(&str, &str)]| {
            let hs = h(headers);
            jwt_elsewhere(&view("/", &hs, b""), &cfg, |t, _| Some((parse_jwt(t)?, ())))
                .map(|(j, ())| (j.sub.as_deref().unwrap_or("").to_owned(), j.exp))
        };
        let cookies = |c: &str| pick(&[("Cookie", c)]);
        // Where the server reads it (a token header, a session cookie): the first to expire.
        let session = format!("a={good}; sid={old}");
        let got = pick(&[("X-Auth-Token", &good), ("Cookie", &session)]);
        assert_eq!(got, Some(("b".into(), Some(1_600_000_000))));
        // Any other cookie may be a stale one a browser still sends: its expiry is not judged
        // (nor ranked), so the first is taken, and its subject names nobody.
        let got = cookies(&format!("a={good}; b={old}"));
        assert_eq!(got, Some(("".into(), None)));
        // An unsigned one before all, wherever it is.
        let got = pick(&[
            ("X-Auth-Token", &old),
            ("Cookie", &format!("a={good}; b={old}; sid={none}")),
        ]);
        assert_eq!(got, Some(("c".into(), None)));
        let got = cookies(&format!("a={good}; c={none}"));
        assert_eq!(got, Some(("".into(), None)));
        assert_eq!(cookies("a=1"), None);
    }

    /// The principal of a request with `query` and `headers` (and `body`, on `/login`).
    fn with_query(query: &str, headers: &[(&str, &str)], cfg: &PrincipalConfig) -> Principal {
        let hs = h(headers);
        let v = RequestView {
            query,
            ..view("/v1/data", &hs, b"")
        };
        principal(&v, cfg)
    }

    /// The default API key parameters and `key` and `token`, which are no defaults.
    fn with_key_and_token() -> PrincipalConfig {
        let mut cfg = PrincipalConfig::default();
        cfg.api_key_params.extend(["key".into(), "token".into()]);
        cfg
    }

    #[test]
    fn an_api_key_in_the_query_names_the_principal_as_its_header_would() {
        let cfg = with_key_and_token();
        let k = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY";
        // By default `key` and `token` name nobody: a maps key every visitor's page sends, a
        // shared link's token.
        for query in [format!("key={k}"), format!("token={k}")] {
            let p = with_query(&query, &[], &PrincipalConfig::default());
            assert_eq!(p.kind, PrincipalKind::Ip, "{query}");
        }
        let by_header = with_query("", &[("X-API-Key", k)], &cfg);
        assert_eq!(
            by_header,
            Principal {
                kind: PrincipalKind::ApiKey,
                id: short_hash(k)
            }
        );
        // Each default name, in any case and naming style, escaped or not, after `&` or `;`.
        let escaped = k.replace('-', "%2D");
        for query in [
            format!("api_key={k}"),
            format!("apikey={k}"),
            format!("api-key={k}"),
            format!("apiKey={k}"),
            format!("q=maps&key={k}"),
            format!("KEY={escaped}"),
            format!("access_token={k}"),
            format!("token={k}"),
            format!("units=metric;appid={k}"),
            format!("app%5Fid={k}&lang=en"),
            format!("key= {k} "),
            // A placeholder first does not hide the key after it.
            format!("key=null&api_key={k}"),
        ] {
            assert_eq!(with_query(&query, &[], &cfg), by_header, "{query}");
        }
        // Configured names only: the defaults are replaced, not added to.
        let custom = PrincipalConfig {
            api_key_params: vec!["subscription-key".into()],
            ..PrincipalConfig::default()
        };
        assert_eq!(
            with_query(&format!("Subscription_Key={k}"), &[], &custom),
            by_header
        );
        let q = format!("key={k}");
        assert_eq!(with_query(&q, &[], &custom).kind, PrincipalKind::Ip);
        // Any other parameter, however long its value, is no key.
        for query in [
            format!("q={k}"),
            format!("page_token={k}"),
            format!("keyword={k}"),
        ] {
            assert_eq!(
                with_query(&query, &[], &cfg).kind,
                PrincipalKind::Ip,
                "{query}"
            );
        }
    }

    /// After a review: a forged JWT beside the key took the principal and the credential from
    /// it, so a stolen key used from many places with a new JWT each time was never reused.
    #[test]
    fn a_jwt_beside_a_key_in_the_query_names_nobody() {
        let cfg = PrincipalConfig::default();
        let k = "9f8e7d6c5b4a32100123456789abcdef";
        let jwt = jwt(r#"{"alg":"HS256"}"#, r#"{"sub":"nobody"}"#);
        for query in [
            format!("api_key={k}&access_token={jwt}"),
            format!("access_token={jwt}&api_key={k}"),
        ] {
            let p = with_query(&query, &[], &cfg);
            assert_eq!(
                (p.kind, p.id),
                (PrincipalKind::ApiKey, short_hash(k)),
                "{query}"
            );
        }
        // Alone, it names its subject.
        let p = with_query(&format!("access_token={jwt}"), &[], &cfg);
        assert_eq!((p.kind, p.id.as_str()), (PrincipalKind::Jwt, "nobody"));
    }

    #[test]
    fn placeholders_in_the_query_are_no_credentials() {
        let cfg = with_key_and_token();
        let named = |query: &str| {
            let v = RequestView {
                query,
                ..view("/", &[], b"")
            };
            let p = principal(&v, &cfg);
            (p.kind, p.id)
        };
        let nobody = (PrincipalKind::Ip, "192.0.2.10".to_owned());
        for query in [
            "key=name",
            "token=null",
            "api_key=undefined",
            "access_token=",
            "apikey",
            "appid=%5Bobject%20Object%5D",
            "key=name-0123456789",
            "key=+++++++++++++++++++",
            "token=%20%20%20%20%20%20%20%20%20%20%20%20%20%20%20%20%20",
        ] {
            assert_eq!(named(query), nobody, "{query}");
        }
        // From 16 characters on, a value is a key.
        assert_eq!(
            named("key=name-0123456789a"),
            (PrincipalKind::ApiKey, short_hash("name-0123456789a"))
        );
    }

    #[test]
    fn a_jwt_in_a_key_parameter_is_read_as_a_jwt() {
        let cfg = PrincipalConfig::default();
        let t = jwt(r#"{"alg":"HS256"}"#, r#"{"sub":"layla"}"#);
        let layla = Principal {
            kind: PrincipalKind::Jwt,
            id: "layla".into(),
        };
        for query in [
            format!("access_token={t}"),
            format!("api_key={t}"),
            format!("apiKey={t}&key=AIzaSyD-9tSrke72PouQMnMX"),
        ] {
            assert_eq!(with_query(&query, &[], &cfg), layla, "{query}");
        }
        // Without a subject it names nobody: neither is it a key.
        let anonymous = jwt(r#"{"alg":"HS256"}"#, r#"{"exp":1900000000}"#);
        let q = format!("api_key={anonymous}");
        assert_eq!(with_query(&q, &[], &cfg).kind, PrincipalKind::Ip);
    }

    #[test]
    fn a_key_in_the_query_ranks_after_every_other_credential() {
        let cfg = PrincipalConfig::default();
        let key = "q-3f9a1c0e2b7d4a6b";
        let query = format!("api_key={key}");
        let named = |headers: &[(&str, &str)]| {
            let p = with_query(&query, headers, &cfg);
            (p.kind, p.id)
        };
        let t = jwt(r#"{"alg":"HS256"}"#, r#"{"sub":"nadia"}"#);
        for (headers, want) in [
            (
                vec![("Authorization", "Bearer b-3f9a1c0e2b7d4a6b")],
                (PrincipalKind::Token, short_hash("b-3f9a1c0e2b7d4a6b")),
            ),
            (
                vec![("Authorization", &*format!("Bearer {t}"))],
                (PrincipalKind::Jwt, "nadia".into()),
            ),
            (
                vec![("X-API-Key", "h-3f9a1c0e2b7d4a6b")],
                (PrincipalKind::ApiKey, short_hash("h-3f9a1c0e2b7d4a6b")),
            ),
            // A user's session outranks a key the application's pages embed, as it outranks
            // one the whole app sends in a header.
            (
                vec![("Cookie", "sessionid=s-4f2a9c1e")],
                (PrincipalKind::Session, short_hash("s-4f2a9c1e")),
            ),
            (
                vec![("Authorization", "ApiKey a-3f9a1c0e2b7d4a6b")],
                (PrincipalKind::ApiKey, short_hash("a-3f9a1c0e2b7d4a6b")),
            ),
            (
                vec![("X-Auth-Token", &*t)],
                (PrincipalKind::Jwt, "nadia".into()),
            ),
            // Before the address.
            (
                vec![("Content-Type", "application/json")],
                (PrincipalKind::ApiKey, short_hash(key)),
            ),
            (
                vec![("Cookie", "theme=dark; sessionid=")],
                (PrincipalKind::ApiKey, short_hash(key)),
            ),
        ] {
            assert_eq!(named(&headers), want, "{headers:?}");
        }
        // After a login's user name (after a review: a key the guesser put in the login's URL
        // had the guesses judged against the key's profile, not the account's).
        let body = br#"{"username":"layla","password":"x"}"#;
        let v = RequestView {
            query: &query,
            ..view("/login", &[], body)
        };
        let p = principal(&v, &cfg);
        assert_eq!((p.kind, p.id.as_str()), (PrincipalKind::User, "layla"));
    }

    #[test]
    fn a_session_cookie_is_found_on_any_cookie_line() {
        // HTTP/2 sends each cookie as a field of its own.
        let cfg = PrincipalConfig::default();
        let hs = h(&[("Cookie", "theme=dark"), ("cookie", "sid=s-1")]);
        let p = principal(&view("/", &hs, b""), &cfg);
        assert_eq!((p.kind, p.id), (PrincipalKind::Session, short_hash("s-1")));
    }

    #[test]
    fn a_fractional_exp_is_a_numeric_date() {
        // RFC 7519 NumericDate may carry fractions: floored, not read as absent.
        let exp = |e: &str| {
            parse_jwt(&jwt(r#"{"alg":"HS256"}"#, &format!(r#"{{"exp":{e}}}"#)))
                .expect("a JWT")
                .exp
        };
        assert_eq!(exp("1600000000.5"), Some(1_600_000_000));
        assert_eq!(exp("1.6e9"), Some(1_600_000_000));
        assert_eq!(exp("-1.5"), Some(-2));
        assert_eq!(exp("1e300"), Some(i64::MAX));
        assert_eq!(exp("18446744073709551615"), Some(i64::MAX));
        assert_eq!(exp("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(exp("\"1600000000\""), None);
    }

    #[test]
    fn opaque_tokens_keys_and_cookies_are_hashed() {
        let cfg = PrincipalConfig::default();
        let hs = h(&[("authorization", "Bearer tok-alice-1")]);
        let p = principal(&view("/balance", &hs, b""), &cfg);
        assert_eq!(p.kind, PrincipalKind::Token);
        assert_eq!(p.id.len(), 12);
        assert!(!p.to_string().contains("alice"));
        assert_eq!(p, principal(&view("/x", &hs, b""), &cfg), "stable");
        let hs = h(&[("X-API-Key", "k-123")]);
        assert_eq!(
            principal(&view("/", &hs, b""), &cfg).kind,
            PrincipalKind::ApiKey
        );
        let hs = h(&[("Cookie", "theme=dark; sessionid=abc123")]);
        let p = principal(&view("/", &hs, b""), &cfg);
        assert_eq!(p.kind, PrincipalKind::Session);
        assert_eq!(p.id, short_hash("abc123"));
    }

    #[test]
    fn opaque_credentials_outside_bearer_name_one_principal_by_their_hash() {
        let cfg = PrincipalConfig::default();
        let named = |pairs: &[(&str, &str)]| {
            let hs = h(pairs);
            let p = principal(&view("/", &hs, b""), &cfg);
            (p.kind, p.id)
        };
        let key = (PrincipalKind::ApiKey, short_hash("k-1-7f3a9c2e5b8d41"));
        // One key, however it is sent, is one principal (and one credential: its hash).
        for auth in [
            "ApiKey k-1-7f3a9c2e5b8d41",
            "Api-Key k-1-7f3a9c2e5b8d41",
            "API_KEY  k-1-7f3a9c2e5b8d41 ",
            "key k-1-7f3a9c2e5b8d41",
        ] {
            assert_eq!(named(&[("Authorization", auth)]), key, "{auth}");
        }
        assert_eq!(named(&[("X-API-Key", "k-1-7f3a9c2e5b8d41")]), key);
        let tok = (PrincipalKind::Token, short_hash("t-1-7f3a9c2e5b8d41"));
        for (name, value) in [
            ("Authorization", "Token t-1-7f3a9c2e5b8d41"),
            (
                "Authorization",
                r#"Token token="t-1-7f3a9c2e5b8d41", nonce="x""#,
            ),
            ("Authorization", "t-1-7f3a9c2e5b8d41"),
            ("X-Auth-Token", "t-1-7f3a9c2e5b8d41"),
            ("x-access-token", "Bearer t-1-7f3a9c2e5b8d41"),
            ("X-Token", " t-1-7f3a9c2e5b8d41 "),
        ] {
            assert_eq!(named(&[(name, value)]), tok, "{name}: {value}");
        }
        // Not a credential that repeats: a login, signatures, a scheme without its token.
        for auth in [
            "Basic YWxpY2U6cHc=",
            "Digest username=\"a\", nonce=\"n\"",
            "AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=ab12",
            "Bearer",
            "Token ",
            // Placeholders a logged-out client sends, and a JWT without a scheme.
            "Token undefined",
            "null",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        ] {
            assert_eq!(
                named(&[("Authorization", auth)]).0,
                PrincipalKind::Ip,
                "{auth}"
            );
        }
        // A JWT in a token header stays named by its subject.
        let t = jwt(r#"{"alg":"HS256"}"#, r#"{"sub":"nadia"}"#);
        assert_eq!(
            named(&[("X-Auth-Token", &t)]),
            (PrincipalKind::Jwt, "nadia".into())
        );
    }

    #[test]
    fn login_bodies_name_the_user_only_on_login_endpoints() {
        let cfg = PrincipalConfig::default();
        let json = h(&[("Content-Type", "application/json")]);
        let body = br#"{"username":"alice","password":"x"}"#;
        assert_eq!(
            principal(&view("/login", &json, body), &cfg),
            Principal {
                kind: PrincipalKind::User,
                id: "alice".into()
            }
        );
        assert_eq!(
            principal(&view("/transfer", &json, body), &cfg).kind,
            PrincipalKind::Ip
        );
        let form = h(&[("Content-Type", "application/x-www-form-urlencoded")]);
        let p = principal(
            &view("/api/login", &form, b"email=bob%40example.com&password=p"),
            &cfg,
        );
        assert_eq!(p.id, "bob@example.com");
    }

    #[test]
    fn login_fields_are_found_in_any_case_encoding_or_one_level_down() {
        let cfg = PrincipalConfig::default();
        let json = h(&[("Content-Type", "Application/JSON")]);
        let form = h(&[("Content-Type", "application/x-www-form-urlencoded")]);
        let user = |hs: &[Header<'_>], body: &str| {
            login_username(&view("/login", hs, body.as_bytes()), &cfg)
        };
        for body in [
            r#"{"Username":"layla","password":"x"}"#,
            r#"{"USERNAME":"layla"}"#,
            r#"{"credentials":{"username":"layla","password":"x"}}"#,
            r#"{"client":"web","auth":{"Email":"layla"}}"#,
        ] {
            assert_eq!(user(&json, body).as_deref(), Some("layla"), "{body}");
        }
        // The top level first, then the configured fields in their order.
        assert_eq!(
            user(&json, r#"{"auth":{"username":"inner"},"email":"top"}"#).as_deref(),
            Some("top")
        );
        // Two levels down (JSON:API) still; three, or not text: not a user name.
        assert_eq!(
            user(&json, r#"{"a":{"b":{"username":"deep"}}}"#).as_deref(),
            Some("deep")
        );
        assert_eq!(user(&json, r#"{"a":{"b":{"c":{"username":"x"}}}}"#), None);
        assert_eq!(user(&json, r#"{"username":7}"#), None);
        for body in [
            "user%6eame=layla&password=x",
            "USERNAME=layla",
            "password=x&Email=layla",
            "%75sername=layla",
            // Starting like JSON, a form still (servers go by its type).
            "{=&username=layla",
        ] {
            assert_eq!(user(&form, body).as_deref(), Some("layla"), "{body}");
        }
        // After a byte order mark, which servers' JSON parsers skip.
        assert_eq!(
            user(&json, "\u{feff}{\"username\":\"layla\"}").as_deref(),
            Some("layla")
        );
        assert_eq!(
            user(&[], "\u{feff} {\"username\":\"layla\"}").as_deref(),
            Some("layla")
        );
    }

    #[test]
    fn login_paths_match_in_any_case_and_the_configured_ones_only() {
        let json = h(&[("Content-Type", "application/json")]);
        let body = br#"{"username":"layla"}"#;
        let mut cfg = PrincipalConfig::default();
        for path in ["/LOGIN", "/Api/Login/", "/v1/auth/LogIn", "/oauth/TOKEN"] {
            assert_eq!(
                login_username(&view(path, &json, body), &cfg).as_deref(),
                Some("layla"),
                "{path}"
            );
        }
        for path in ["/logins", "/blogin", "/", "/transfer"] {
            assert_eq!(
                login_username(&view(path, &json, body), &cfg),
                None,
                "{path}"
            );
        }
        cfg.login_paths = LoginPaths::new(&["/v2/customer/authenticate/".into(), "/".into()]);
        assert!(login_username(&view("/V2/Customer/Authenticate", &json, body), &cfg).is_some());
        assert!(login_username(&view("/", &json, body), &cfg).is_some());
        assert!(login_username(&view("/login", &json, body), &cfg).is_none());
        // A placeholder segment matches any segment, in a path or a learned template.
        cfg.login_paths = LoginPaths::new(&["/tenants/{tenant}/login".into()]);
        for path in ["/tenants/acme/login", "/v1/tenants/ACME/Login/"] {
            assert!(
                login_username(&view(path, &json, body), &cfg).is_some(),
                "{path}"
            );
        }
        for path in ["/tenants//login", "/login", "/tenants/acme/logins"] {
            assert!(
                login_username(&view(path, &json, body), &cfg).is_none(),
                "{path}"
            );
        }
        assert!(cfg.login_paths.matches("/tenants/{param}/login"));
        // As servers route them: path parameters, escapes, `.` segments.
        let cfg = PrincipalConfig::default();
        for path in [
            "/%6cogin",
            "/login;jsessionid=x",
            "/api/login;x=1/",
            "/login%2f",
            "/login/.",
            "/api;v=2/%4C%4F%47%49%4E",
        ] {
            assert!(cfg.login_paths.matches(path), "{path}");
        }
        for path in ["/%6cogins", "/login;x/more", "/log%20in", "/login+"] {
            assert!(!cfg.login_paths.matches(path), "{path}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let mut cfg = PrincipalConfig::default();
        let hs = h(&[("X-Forwarded-For", "203.0.113.5, 198.51.100.2")]);
        let v = view("/", &hs, b"");
        assert_eq!(principal(&v, &cfg).id, "192.0.2.10");
        cfg.trusted_proxies = vec![
            "192.0.2.0/24".parse().unwrap(),
            "198.51.100.2/32".parse().unwrap(),
        ];
        assert_eq!(principal(&v, &cfg).id, "203.0.113.5");
        // A client's own line, then the proxy's: the proxy's line is the nearer one.
        let hs = h(&[
            ("X-Forwarded-For", "198.51.100.77"),
            ("x-forwarded-for", "203.0.113.6"),
        ]);
        assert_eq!(principal(&view("/", &hs, b""), &cfg).id, "203.0.113.6");
        // Hops with ports, IPv4 and IPv6.
        for (xff, want) in [
            ("203.0.113.7:51234", "203.0.113.7"),
            ("[2001:db8::7]:443, 198.51.100.2", "2001:db8::7"),
            ("[2001:db8::8]", "2001:db8::8"),
            ("2001:db8::9", "2001:db8::9"),
        ] {
            let hs = h(&[("X-Forwarded-For", xff)]);
            assert_eq!(principal(&view("/", &hs, b""), &cfg).id, want, "{xff}");
        }
    }

    #[test]
    fn an_unreadable_hop_behind_a_trusted_proxy_is_an_unknown_client_not_the_proxy() {
        let mut cfg = PrincipalConfig {
            trusted_proxies: vec![
                "192.0.2.0/24".parse().unwrap(),
                "198.51.100.2/32".parse().unwrap(),
            ],
            ..Default::default()
        };
        for xff in [
            "unknown",
            "_hidden",
            "_SEVKISEK, 198.51.100.2",
            "203.0.113.5, unknown",
            "203.0.113.5, not an address",
            "0.0.0.0",
            "203.0.113.5:99999",
        ] {
            let hs = h(&[("X-Forwarded-For", xff)]);
            let v = view("/", &hs, b"");
            assert_eq!(client_ip(&v, &cfg), None, "{xff}");
            let p = principal(&v, &cfg);
            assert_eq!((p.kind, p.name()), (PrincipalKind::Ip, "ip:unknown".into()));
        }
        // Empty list elements are no hops; no hop but trusted ones is the proxy itself.
        let hs = h(&[("X-Forwarded-For", "203.0.113.5, , 198.51.100.2")]);
        let ip = client_ip(&view("/", &hs, b""), &cfg);
        assert_eq!(ip, Some("203.0.113.5".parse().unwrap()));
        for xff in ["", "198.51.100.2"] {
            let hs = h(&[("X-Forwarded-For", xff)]);
            let ip = client_ip(&view("/", &hs, b""), &cfg);
            assert_eq!(ip, Some("192.0.2.10".parse().unwrap()), "{xff:?}");
        }
        // From an untrusted source the header is not read at all.
        cfg.trusted_proxies.clear();
        let hs = h(&[("X-Forwarded-For", "unknown")]);
        let ip = client_ip(&view("/", &hs, b""), &cfg);
        assert_eq!(ip, Some("192.0.2.10".parse().unwrap()));
        assert_eq!(client_text(UNKNOWN_CLIENT), "unknown");
    }

    #[test]
    fn a_login_names_its_account_whatever_the_case_and_blanks() {
        let cfg = PrincipalConfig::default();
        let hs = h(&[("Content-Type", "application/json")]);
        let body = br#"{"username":" Layla@Bank.Test ","password":"x"}"#;
        let v = view("/login", &hs, body);
        let p = principal(&v, &cfg);
        assert_eq!(
            (p.kind, p.id.as_str()),
            (PrincipalKind::User, "layla@bank.test")
        );
        assert!(matches!(
            account_name("layla"),
            std::borrow::Cow::Borrowed("layla")
        ));
    }

    #[test]
    fn an_account_name_drops_invisible_code_points_and_folds_case_fully() {
        // Default_Ignorable_Code_Point characters render as nothing: a name written with them
        // is the name without them (zero-width space, joiners, soft hyphen, word joiner, BOM,
        // variation selectors, Mongolian vowel separator, a tag character, combining grapheme
        // joiner, bidi marks and isolates), wherever they stand.
        for v in [
            "ad\u{200B}min",
            "ad\u{AD}min",
            "ad\u{200C}min",
            "ad\u{200D}min",
            "adm\u{2060}in",
            "\u{FEFF}admin",
            "admin\u{FE0F}",
            "a\u{180E}dmin",
            "admin\u{E0061}",
            "ad\u{34F}min",
            "\u{200E}admin\u{2069}",
            "ADM\u{200B}IN",
            "\u{200B} admin",
            "ad\u{E0100}min",
        ] {
            assert_eq!(account_name(v), "admin", "{v:?}");
        }
        // One dropped between a letter and its accent leaves them composed.
        assert_eq!(
            account_name("jose\u{200B}\u{301}"),
            account_name("jos\u{e9}")
        );
        // Full case folding, where lower case keeps two spellings of one name apart.
        for (a, b) in [
            ("stra\u{df}e", "STRASSE"),
            ("STRA\u{1E9E}E", "strasse"),
            (
                "\u{3bf}\u{3b4}\u{3bf}\u{3c2}",
                "\u{39f}\u{394}\u{39f}\u{3a3}",
            ),
            ("\u{1F88}", "\u{1F00}\u{3b9}"),
            ("\u{1C80}", "\u{432}"),
            ("\u{3c3}\u{345}", "\u{3c3}\u{3b9}"),
        ] {
            assert_eq!(account_name(a), account_name(b), "{a:?} {b:?}");
        }
        // U+0130 takes its one-letter lower case, `i` (as Turkish, Java's equalsIgnoreCase and
        // MySQL's collations read it), not `i` with a combining dot above.
        for v in ["adm\u{130}n", "ADM\u{130}N", "admI\u{307}n"] {
            assert_eq!(account_name(v), "admin", "{v:?}");
        }
        // Accents are kept: josé and jose are two people, and so are i with a dot above it
        // and the dotless ı.
        assert_ne!(account_name("jos\u{e9}"), account_name("jose"));
        assert_ne!(account_name("admi\u{307}n"), account_name("admin"));
        assert_ne!(account_name("adm\u{131}n"), account_name("admin"));
        // The key is a fixed point: folding it again changes nothing, for every code point
        // of the first two planes alone and after a letter.
        for c in (0..0x2_0000).filter_map(char::from_u32) {
            for s in [c.to_string(), format!("a{c}")] {
                let once = account_name(&s).into_owned();
                assert_eq!(account_name(&once), once, "U+{:04X}", u32::from(c));
            }
        }
        assert!(matches!(
            account_name("admin"),
            std::borrow::Cow::Borrowed("admin")
        ));
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(percent_decode("a+b%20c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
