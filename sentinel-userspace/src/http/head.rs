//! A parsed HTTP/1.x message head, kept as its raw bytes plus offsets (one allocation per head,
//! headers kept in full, in order, as sent).

use std::ops::Range;

use bytes::Bytes;

/// A byte range within [`Head::raw`].
pub type Span = Range<u32>;

/// A request or response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The head's bytes as received (start line, fields, terminating empty line). A request head
    /// that httparse refuses but servers read leniently is kept as they read it (normalised:
    /// target bytes outside ASCII percent-encoded, invalid field lines dropped, control bytes in
    /// values as spaces, folded lines joined, any `HTTP/1.x` as `HTTP/1.1`), so its length may
    /// differ from that of the bytes in the stream.
    pub raw: Bytes,
    /// Request method (empty for responses).
    pub method: Span,
    /// Request target (empty for responses).
    pub target: Span,
    /// Response reason phrase (empty for requests).
    pub reason: Span,
    /// Response status (0 for requests).
    pub status: u16,
    /// Minor version: `HTTP/1.0` is 0, `HTTP/1.1` is 1.
    pub version: u8,
    /// Header fields (name, value) in order.
    pub fields: Vec<(Span, Span)>,
}

fn text<'a>(raw: &'a [u8], s: &Span) -> &'a str {
    std::str::from_utf8(&raw[s.start as usize..s.end as usize]).unwrap_or("")
}

impl Head {
    /// Request method.
    pub fn method(&self) -> &str {
        text(&self.raw, &self.method)
    }

    /// Request target as sent.
    pub fn target(&self) -> &str {
        text(&self.raw, &self.target)
    }

    /// Reason phrase.
    pub fn reason(&self) -> &str {
        text(&self.raw, &self.reason)
    }

    /// Header fields as text (values that are not UTF-8 read as empty).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .map(|(n, v)| (text(&self.raw, n), text(&self.raw, v)))
    }

    /// Header fields as raw bytes.
    pub fn headers_raw(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|(n, v)| {
            (
                &self.raw[n.start as usize..n.end as usize],
                &self.raw[v.start as usize..v.end as usize],
            )
        })
    }

    /// The first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| {
                self.raw[n.start as usize..n.end as usize].eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|(_, v)| text(&self.raw, v))
    }

    /// Every value of the fields named `name` (compared as bytes: no UTF-8 check of the names,
    /// only of the values returned).
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| {
                self.raw[n.start as usize..n.end as usize].eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|(_, v)| text(&self.raw, v))
    }

    /// A response head with `status` and these fields, as the parser keeps one: for synthetic
    /// transactions (tests, benchmarks).
    pub fn response(status: u16, fields: &[(&str, &str)]) -> Self {
        let mut raw = format!("HTTP/1.1 {status} \r\n").into_bytes();
        let mut spans = Vec::with_capacity(fields.len());
        let push = |raw: &mut Vec<u8>, b: &[u8]| {
            let start = raw.len() as u32;
            raw.extend_from_slice(b);
            start..raw.len() as u32
        };
        for (n, v) in fields {
            let name = push(&mut raw, n.as_bytes());
            raw.extend_from_slice(b": ");
            let value = push(&mut raw, v.as_bytes());
            raw.extend_from_slice(b"\r\n");
            spans.push((name, value));
        }
        raw.extend_from_slice(b"\r\n");
        Self {
            raw: Bytes::from(raw),
            method: 0..0,
            target: 0..0,
            reason: 0..0,
            status,
            version: 1,
            fields: spans,
        }
    }

    /// Bytes held.
    pub fn mem(&self) -> usize {
        self.raw.len() + self.fields.len() * 16
    }
}

/// Offset of `part` (a sub-slice of `base`) within `base`; an empty range for an empty part or
/// one that is not within `base` (httparse gives a status line without a reason phrase a
/// static empty reason, which is not).
pub(crate) fn span(base: &[u8], part: &[u8]) -> Span {
    let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    if part.is_empty() || start > base.len() || base.len() - start < part.len() {
        return 0..0;
    }
    start as u32..(start + part.len()) as u32
}
