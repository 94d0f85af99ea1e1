//! What the models see: one enriched HTTP transaction. Built by the enrichment stage from a
//! transaction (live or replayed); the models never care where it came from.

use std::{borrow::Cow, net::IpAddr, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::enrich::{
    geo::GeoInfo,
    principal::{JwtInfo, Principal},
};

/// A request header field (name, value), borrowed from the transaction or owned.
pub type Header<'a> = (Cow<'a, str>, Cow<'a, str>);

/// The value of the first field of `headers` named `name` (in any ASCII case).
pub fn header<'h, 'a>(headers: &'h [Header<'a>], name: &str) -> Option<&'h Cow<'a, str>> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// One enriched transaction. Its request and response parts borrow from the transaction it was
/// built from (`'a`); the models take what they keep as owned keys, never the observation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation<'a> {
    /// Request time, nanoseconds since the Unix epoch (stream time: replay uses capture time).
    pub ts_ns: u64,
    /// Client address (after trusted `X-Forwarded-For`); the unspecified address
    /// ([`crate::enrich::principal::UNKNOWN_CLIENT`]) when a trusted proxy named it with
    /// something that is not an address.
    pub client_ip: IpAddr,
    /// Who.
    pub principal: Principal,
    /// Where the client address is, when a GeoIP database knows.
    pub geo: Option<GeoInfo>,
    /// HTTP method.
    pub method: Cow<'a, str>,
    /// Raw path (without the query).
    pub path: Cow<'a, str>,
    /// Endpoint template (`/accounts/{id}`): the bounded label models key on.
    pub endpoint: String,
    /// Raw query string (without `?`), empty when none.
    pub query: Cow<'a, str>,
    /// Response status (0 when the response was not seen).
    pub status: u16,
    /// Request body bytes (after de-chunking).
    pub req_bytes: u64,
    /// Response body bytes (after de-chunking).
    pub resp_bytes: u64,
    /// Request to response latency in milliseconds.
    pub latency_ms: f64,
    /// `User-Agent`.
    pub user_agent: Option<Cow<'a, str>>,
    /// Request headers (name, value), in order. In memory only: they carry credentials.
    #[serde(skip)]
    pub req_headers: Vec<Header<'a>>,
    /// Request body, capped. In memory only: login bodies carry passwords.
    #[serde(skip)]
    pub req_body: Cow<'a, [u8]>,
    /// Response content type.
    pub resp_content_type: Option<Cow<'a, str>>,
    /// Response body (decoded, capped). In memory only.
    #[serde(skip)]
    pub resp_body: Cow<'a, [u8]>,
    /// A login attempt, when this request was one (the first, when it carried several).
    pub login: Option<LoginAttempt>,
    /// The request's further login attempts (GraphQL aliases and batches: one request, many
    /// guesses), each judged as an attempt of its own by the detectors that count logins.
    /// Their user names may be empty: an attempt whose account could not be read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_logins: Vec<LoginAttempt>,
    /// A refresh: the request presented a refresh credential and its answer issued new ones
    /// (hashes only), which belong to whichever account the refresh credential does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed: Option<Refresh>,
    /// The bearer token's claims, when it is a JWT.
    pub jwt: Option<JwtInfo>,
    /// Short hash of the credential (bearer token, API key or session), when one was sent
    /// (shared with the enricher's cache of decoded tokens).
    pub credential: Option<Arc<str>>,
    /// The raw bearer token, kept in memory only so that a `revoke_token` verdict can name it to
    /// the identity provider. Never serialised, never logged.
    #[serde(skip)]
    pub bearer: Option<Cow<'a, str>>,
    /// Client port.
    pub src_port: u16,
    /// Server address.
    pub dst_ip: Option<IpAddr>,
    /// Server port.
    pub dst_port: u16,
}

/// A refresh of credentials: the short hashes of the refresh credentials a request presented
/// (a `refresh_token` in its body or a cookie), and those of the credentials its answer issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refresh {
    /// The refresh credentials presented (body fields, cookies: a server reads one of them).
    pub presented: Vec<Arc<str>>,
    /// The credentials issued (tokens of the answer, session cookies it set).
    pub issued: Vec<Arc<str>>,
}

/// A login attempt and its outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginAttempt {
    /// Account name tried.
    pub username: String,
    /// Whether the server accepted it.
    pub success: bool,
    /// Short hashes of the credentials the answer issued to this attempt, when it succeeded: a
    /// token in the answer's document (the attempt's own result in a GraphQL answer) and the
    /// session cookies it set, each hashed as a request carrying it is named
    /// ([`Observation::credential`]), so that the engine links them to the account. Empty for
    /// every other request (nothing allocated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issued: Vec<Arc<str>>,
}
