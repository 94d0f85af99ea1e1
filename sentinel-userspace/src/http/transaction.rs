//! An HTTP transaction (a request paired with its response) and its JSON line for
//! `sentinel replay --emit transactions` (format in DESIGN.md).

use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
    time::{Duration, UNIX_EPOCH},
};

use serde::Serialize;

use super::{body::Decoded, head::Head};

/// One request and (when seen) its response.
#[derive(Debug)]
pub struct Transaction {
    /// Capture time of the request's first byte, ns since the Unix epoch.
    pub ts_ns: u64,
    /// Client address.
    pub client: SocketAddr,
    /// Server address.
    pub server: SocketAddr,
    /// Request head (all fields, in order).
    pub request: Box<Head>,
    /// Request body (content-decoded when gzip/deflate, as Express reads it), capped.
    pub req_body: Vec<u8>,
    /// Request body length (after de-chunking, before content decoding), including bytes lost
    /// to gaps.
    pub req_bytes: u64,
    /// False when part of the request body was lost (gap) or cut by the end of the stream.
    pub req_complete: bool,
    /// Response head, when a response was seen.
    pub response: Option<Box<Head>>,
    /// Capture time of the response's first byte.
    pub resp_ts_ns: Option<u64>,
    /// Response body (content-decoded when gzip/deflate, see `resp_decoded`), capped.
    pub resp_body: Vec<u8>,
    /// Response body length (after de-chunking, before content decoding).
    pub resp_bytes: u64,
    /// How content decoding went.
    pub resp_decoded: Decoded,
    /// False when part of the response body was lost or cut short.
    pub resp_complete: bool,
    /// Chunked trailer fields of the response.
    pub resp_trailers: Option<Box<Head>>,
    /// Who sent the request (filled by enrichment; `None` until then).
    pub principal: Option<String>,
}

/// Path and query of a request target (origin, absolute, authority or asterisk form), and the
/// authority of an absolute-form target.
pub fn split_target(target: &str) -> (&str, &str, Option<&str>) {
    let (mut rest, mut authority) = (target, None);
    if !target.starts_with('/')
        && let Some(i) = target.find("://")
    {
        let after = &target[i + 3..];
        let end = after.find(['/', '?']).unwrap_or(after.len());
        authority = Some(&after[..end]);
        rest = &after[end..];
        if rest.is_empty() {
            rest = "/";
        }
    }
    match rest.split_once('?') {
        Some((p, q)) => (if p.is_empty() { "/" } else { p }, q, authority),
        None => (rest, "", authority),
    }
}

impl Transaction {
    /// Request method.
    pub fn method(&self) -> &str {
        self.request.method()
    }

    /// Request path (without the query), as sent.
    pub fn path(&self) -> &str {
        split_target(self.request.target()).0
    }

    /// Query string without `?` (empty when none).
    pub fn query(&self) -> &str {
        split_target(self.request.target()).1
    }

    /// The Host field (or the authority of an absolute-form target).
    pub fn host(&self) -> Option<&str> {
        self.request
            .header("host")
            .or_else(|| split_target(self.request.target()).2)
    }

    /// Response status, when a response was seen.
    pub fn status(&self) -> Option<u16> {
        self.response.as_ref().map(|r| r.status)
    }

    /// Response first byte minus request first byte, in nanoseconds.
    pub fn latency_ns(&self) -> Option<u64> {
        self.resp_ts_ns.map(|t| t.saturating_sub(self.ts_ns))
    }

    /// Latency in milliseconds (microsecond precision).
    pub fn latency_ms(&self) -> Option<f64> {
        self.latency_ns().map(|ns| (ns / 1000) as f64 / 1000.0)
    }

    /// The DESIGN.md transaction record, the values of secret-named query parameters and of
    /// `api_key_params` (the configured API key parameters, `[models] api_key_params`) redacted.
    pub fn record(&self, api_key_params: &[String]) -> TransactionRecord<'_> {
        TransactionRecord {
            ts: rfc3339(self.ts_ns),
            src_ip: self.client.ip(),
            src_port: self.client.port(),
            dst_ip: self.server.ip(),
            dst_port: self.server.port(),
            method: self.method(),
            path: self.path(),
            query: crate::redact::query(self.query(), api_key_params),
            host: self.host(),
            status: self.status(),
            req_bytes: self.req_bytes,
            resp_bytes: self.resp_bytes,
            latency_ms: self.latency_ms(),
            principal: self.principal.as_deref(),
        }
    }

    /// One JSON line (without the newline): [`Transaction::record`].
    pub fn to_json(&self, api_key_params: &[String]) -> String {
        serde_json::to_string(&self.record(api_key_params)).expect("serialisable")
    }

    /// Bytes held.
    pub fn mem(&self) -> usize {
        self.request.mem()
            + self.response.as_ref().map_or(0, |r| r.mem())
            + self.req_body.len()
            + self.resp_body.len()
    }
}

/// RFC 3339 with microseconds, UTC.
pub fn rfc3339(ts_ns: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_nanos(ts_ns)).to_string()
}

/// The transaction line of DESIGN.md.
#[derive(Debug, Serialize, PartialEq)]
pub struct TransactionRecord<'a> {
    /// Request time, RFC 3339.
    pub ts: String,
    /// Client address.
    pub src_ip: IpAddr,
    /// Client port.
    pub src_port: u16,
    /// Server address.
    pub dst_ip: IpAddr,
    /// Server port.
    pub dst_port: u16,
    /// Method.
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Query without `?` (empty when none), the values of secret-named parameters
    /// (`access_token`, `password`, ...) and API key parameters (`appid`, ...) redacted to their
    /// length and short hash.
    pub query: Cow<'a, str>,
    /// Host, when sent.
    pub host: Option<&'a str>,
    /// Response status; null when no response was seen.
    pub status: Option<u16>,
    /// Request body bytes after de-chunking.
    pub req_bytes: u64,
    /// Response body bytes after de-chunking.
    pub resp_bytes: u64,
    /// Response first byte minus request first byte; null without a response.
    pub latency_ms: Option<f64>,
    /// Who (null until enrichment fills it).
    pub principal: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_path_query_and_authority() {
        assert_eq!(split_target("/a/b?x=1&y"), ("/a/b", "x=1&y", None));
        assert_eq!(split_target("/a"), ("/a", "", None));
        assert_eq!(split_target("*"), ("*", "", None));
        assert_eq!(
            split_target("http://api.example:8080/v1?k=v"),
            ("/v1", "k=v", Some("api.example:8080"))
        );
        assert_eq!(
            split_target("https://api.example"),
            ("/", "", Some("api.example"))
        );
        assert_eq!(
            split_target("api.example:443"),
            ("api.example:443", "", None)
        );
        assert_eq!(split_target("/?q"), ("/", "q", None));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(
            rfc3339(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456Z"
        );
    }
}
