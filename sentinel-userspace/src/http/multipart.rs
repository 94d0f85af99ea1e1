//! `multipart/form-data` request bodies (RFC 7578), read as far as the injection detector needs:
//! each part's Content-Disposition parameters (field `name`, `filename`, `filename*`), its
//! Content-Type, Content-Transfer-Encoding and content, borrowed from the body (and the content
//! decoded from `base64` or `quoted-printable` on request).
//!
//! Hand-written rather than a crate: the one well-kept Rust parser (`multer`) is async over a
//! stream, and the detector needs a bounded, allocation-free pass over a byte slice that may be
//! cut at the capture's body cap, telling complete parts from the one the cut ends in.
//!
//! Lenient as servers are: a preamble before the first delimiter is skipped (that delimiter
//! need not start a line: Werkzeug finds it anywhere), lines may end in LF alone, white space may
//! follow a boundary, a body that is whole but lacks the closing delimiter ends its last part,
//! and parts after the close delimiter are read (PHP reads on to the next delimiter line). A
//! line that starts with the delimiter and goes on with other characters is content (a boundary
//! is never a prefix of a delimiter line, RFC 2046 5.1.1).

use std::borrow::Cow;

use super::body::looks_binary;
use memchr::memmem::Finder;

/// The boundaries a `multipart/form-data` content type may name, as servers read it: `None`
/// when it is not `multipart/form-data`, otherwise every distinct non-empty candidate (none when
/// it names no boundary). Two candidates mean servers disagree on where the parts are.
///
/// Candidates: the value of every parameter whose name holds `boundary` (case aside), a quoted
/// one with its quoted-pairs unescaped as busboy, Werkzeug and Python read it (`"B\X"` is
/// `BX`); and PHP's reading, which takes the text after the first `boundary` anywhere in the
/// field (`xboundary=EVIL; boundary=REAL` is `EVIL`) and keeps a quoted value as sent.
pub fn form_data_boundaries(content_type: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (media, rest) = match memchr::memchr(b';', content_type) {
        Some(i) => (&content_type[..i], &content_type[i..]),
        None => (content_type, &b""[..]),
    };
    if !media
        .trim_ascii()
        .eq_ignore_ascii_case(b"multipart/form-data")
    {
        return None;
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut add = |b: Vec<u8>| {
        if !b.is_empty() && !out.contains(&b) {
            out.push(b);
        }
    };
    let mut s = rest;
    while let Some((k, v)) = next_param(&mut s, b"\"") {
        if contains_boundary(k) {
            add(v.unquoted());
        }
    }
    if let Some(v) = php_boundary(content_type) {
        add(v.to_vec());
    }
    Some(out)
}

/// Whether a parameter name holds `boundary`, case aside.
fn contains_boundary(k: &[u8]) -> bool {
    k.windows(8).any(|w| w.eq_ignore_ascii_case(b"boundary"))
}

/// The boundary as PHP reads it (`rfc1867.c`): after the first `boundary` (as sent, else case
/// aside) and the `=` after it, to the closing quote or to a `,` or `;`.
fn php_boundary(ct: &[u8]) -> Option<&[u8]> {
    let at = memchr::memmem::find(ct, b"boundary").or_else(|| {
        ct.windows(8)
            .position(|w| w.eq_ignore_ascii_case(b"boundary"))
    })?;
    let eq = at + memchr::memchr(b'=', &ct[at..])?;
    let v = &ct[eq + 1..];
    Some(match v {
        [b'"', q @ ..] => &q[..memchr::memchr(b'"', q)?],
        _ => v[..v
            .iter()
            .position(|&c| c == b',' || c == b';')
            .unwrap_or(v.len())]
            .trim_ascii(),
    })
}

/// A parameter value: its bytes between the quotes (escapes kept, as sent) or unquoted.
#[derive(Clone, Copy)]
struct Value<'a> {
    bytes: &'a [u8],
    quoted: bool,
}

impl Value<'_> {
    /// The value with a quoted one's quoted-pairs (`\x`) unescaped.
    fn unquoted(self) -> Vec<u8> {
        if !self.quoted {
            return self.bytes.to_vec();
        }
        let mut out = Vec::with_capacity(self.bytes.len());
        let mut i = 0;
        while i < self.bytes.len() {
            if self.bytes[i] == b'\\' && i + 1 < self.bytes.len() {
                i += 1;
            }
            out.push(self.bytes[i]);
            i += 1;
        }
        out
    }
}

/// The `name=value` parameters of a header field value after its first item
/// (`; name="a"; filename=b.png`): names trimmed, values without their quotes (a `\` inside
/// quotes escapes the next byte and is kept, as sent). Parameters without `=` are skipped.
pub fn params(mut s: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    std::iter::from_fn(move || next_param(&mut s, b"\"").map(|(k, v)| (k, v.bytes)))
}

/// The parameters as PHP reads them (`php_ap_getword_conf`): as [`params`], but a value may
/// be quoted in single quotes too (`name='q; filename=x'` is the name `q; filename=x`).
pub fn php_params(mut s: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    std::iter::from_fn(move || next_param(&mut s, b"\"'").map(|(k, v)| (k, v.bytes)))
}

/// The next parameter of `s` (see [`params`]), a value quoted in any of `quotes`.
fn next_param<'a>(s: &mut &'a [u8], quotes: &[u8]) -> Option<(&'a [u8], Value<'a>)> {
    loop {
        *s = s.trim_ascii_start();
        while let [b';', rest @ ..] = *s {
            *s = rest.trim_ascii_start();
        }
        if s.is_empty() {
            return None;
        }
        let end = s
            .iter()
            .position(|&c| c == b'=' || c == b';')
            .unwrap_or(s.len());
        let name = s[..end].trim_ascii();
        if s.get(end) != Some(&b'=') {
            *s = &s[end..];
            continue;
        }
        *s = s[end + 1..].trim_ascii_start();
        let value = match *s {
            [q, rest @ ..] if quotes.contains(q) => {
                let mut i = 0;
                while i < rest.len() && rest[i] != *q {
                    i += if rest[i] == b'\\' { 2 } else { 1 };
                }
                let i = i.min(rest.len());
                *s = &rest[(i + 1).min(rest.len())..];
                Value {
                    bytes: &rest[..i],
                    quoted: true,
                }
            }
            _ => {
                let i = memchr::memchr(b';', s).unwrap_or(s.len());
                let v = s[..i].trim_ascii();
                *s = &s[i..];
                Value {
                    bytes: v,
                    quoted: false,
                }
            }
        };
        // Anything between a closing quote and the next `;` is not part of the value.
        *s = &s[memchr::memchr(b';', s).unwrap_or(s.len())..];
        return Some((name, value));
    }
}

/// A `multipart/form-data` body: its parts, in order, through [`FormData::parts`].
#[derive(Clone)]
pub struct FormData<'a> {
    body: &'a [u8],
    boundary: Cow<'a, [u8]>,
    whole: bool,
}

impl<'a> FormData<'a> {
    /// `body` delimited by `boundary`; `whole` when nothing of it was cut off (the last part
    /// of a cut body has no content).
    pub fn new(body: &'a [u8], boundary: impl Into<Cow<'a, [u8]>>, whole: bool) -> Self {
        Self {
            body,
            boundary: boundary.into(),
            whole,
        }
    }

    /// The parts.
    pub fn parts(&self) -> Parts<'a> {
        Parts {
            body: self.body,
            boundary: Finder::new(&self.boundary).into_owned(),
            whole: self.whole,
            next: None,
            seek: Some(0),
        }
    }
}

/// One part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part<'a> {
    /// The Content-Disposition field's value after its type (`; name="a"; filename="b"`),
    /// empty when there is none.
    pub disposition: &'a [u8],
    /// The Content-Type field's value, trimmed.
    pub content_type: Option<&'a [u8]>,
    /// The content; `None` when the body was cut before the part ended.
    pub content: Option<&'a [u8]>,
    /// The transfer encodings the part's Content-Transfer-Encoding fields name (RFC 7578 4.7
    /// deprecates them, and some servers still decode `base64` and `quoted-printable` parts).
    pub transfer: Encodings,
}

/// The transfer encodings named by a part's Content-Transfer-Encoding fields: by any of them,
/// since servers disagree on which counts when there are several (Django takes the last,
/// others the first), each read as Django reads it (case aside, parameters, quotes and white
/// space dropped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Encodings {
    /// `base64`.
    pub base64: bool,
    /// `quoted-printable`.
    pub quoted_printable: bool,
}

impl Encodings {
    /// Notes the encoding a Content-Transfer-Encoding field's value names.
    fn note(&mut self, value: &[u8]) {
        let token = value[..memchr::memchr(b';', value).unwrap_or(value.len())].trim_ascii();
        let token = token.strip_prefix(b"\"").unwrap_or(token);
        let token = token.strip_suffix(b"\"").unwrap_or(token).trim_ascii();
        self.base64 |= token.eq_ignore_ascii_case(b"base64");
        self.quoted_printable |= token.eq_ignore_ascii_case(b"quoted-printable");
    }
}

impl<'a> Part<'a> {
    /// The Content-Disposition parameters.
    pub fn params(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + use<'a> {
        params(self.disposition)
    }

    /// The field name (the first `name` parameter).
    pub fn name(&self) -> Option<&'a [u8]> {
        self.params()
            .find(|(k, _)| k.eq_ignore_ascii_case(b"name"))
            .map(|(_, v)| v)
    }

    /// The content as servers that honour the part's Content-Transfer-Encoding read it, for
    /// each encoding its fields name ([`Encodings`]): `base64` and `quoted-printable` decoded
    /// as leniently as any of them decodes. None when no field names either, or the body was
    /// cut in the part.
    pub fn transfer_decodings(&self) -> impl Iterator<Item = Vec<u8>> + use<'a> {
        let (t, content) = (self.transfer, self.content.unwrap_or_default());
        let base64 = (t.base64 && self.content.is_some()).then(|| base64_lenient(content));
        let qp = (t.quoted_printable && self.content.is_some()).then(|| quoted_printable(content));
        base64.into_iter().chain(qp)
    }

    /// Whether the part is clearly a binary file upload, whose content is not worth judging as
    /// text: every server reads it as a file (a `filename` parameter, in the common reading
    /// and in PHP's, which knows no `filename*` and honours single quotes), its type is not
    /// `text/*` (a file sent without one is a blob, `application/octet-stream` to servers), and
    /// its content looks binary (a NUL, or bytes that are not UTF-8, in its first KiB: every
    /// image, archive and office format starts so). A part without a filename is a form field
    /// to every server whatever its type, and text under a file's name is read as text by the
    /// applications that take it; both are judged.
    pub fn is_binary_file(&self) -> bool {
        self.content.is_some_and(|c| self.holds_binary_file(c))
    }

    /// [`Self::is_binary_file`] with `content` as the part's content (its transfer decoding).
    pub fn holds_binary_file(&self, content: &[u8]) -> bool {
        let filename = |(k, _): (&[u8], &[u8])| k.eq_ignore_ascii_case(b"filename");
        let text = self
            .content_type
            .is_some_and(|t| t.len() >= 5 && t[..5].eq_ignore_ascii_case(b"text/"));
        self.params().any(filename)
            && php_params(self.disposition).any(filename)
            && !text
            && looks_binary(content)
    }
}

/// `b` decoded from base64 as lenient servers decode it (Python's `b64decode`, which Django
/// uses; Perl's `decode_base64`): characters outside the alphabet skipped, the URL-safe `-` and
/// `_` read as `+` and `/` (Node reads both alphabets), everything from the first `=` on
/// ignored, and a last lone character (no whole byte) dropped.
fn base64_lenient(b: &[u8]) -> Vec<u8> {
    use base64::{
        Engine as _,
        engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    };
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let mut packed: Vec<u8> = Vec::with_capacity(b.len());
    for &c in b {
        match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' => packed.push(c),
            b'-' => packed.push(b'+'),
            b'_' => packed.push(b'/'),
            b'=' => break,
            _ => {}
        }
    }
    if packed.len() % 4 == 1 {
        packed.pop();
    }
    LENIENT
        .decode(&packed)
        .expect("only alphabet characters, and never a lone last one")
}

/// `b` with its quoted-printable escapes decoded (RFC 2045 6.7): `=XX` is the byte `XX`, `=` at
/// a line's end a soft line break; an `=` that is neither stays, as lenient decoders keep it.
fn quoted_printable(b: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
            let rest = &b[i + 1..];
            let blank = rest
                .iter()
                .take_while(|c| matches!(c, b' ' | b'\t'))
                .count();
            match &rest[blank..] {
                [b'\r', b'\n', ..] => {
                    i += 1 + blank + 2;
                    continue;
                }
                [b'\n', ..] => {
                    i += 1 + blank + 1;
                    continue;
                }
                _ => {}
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The parts of a [`FormData`] body, in order.
pub struct Parts<'a> {
    body: &'a [u8],
    boundary: Finder<'a>,
    whole: bool,
    /// Where the next part starts (after its delimiter line), once a delimiter was found.
    next: Option<usize>,
    /// Where to look for a delimiter that opens a part, when none follows: at the start, and
    /// after a close delimiter (PHP reads parts after it).
    seek: Option<usize>,
}

/// What follows a delimiter.
enum After {
    /// A part, starting here.
    Part(usize),
    /// The close delimiter (`--boundary--`), its line going on after this.
    Close(usize),
    /// The end of the body.
    End,
}

impl Parts<'_> {
    /// The first delimiter line at or after `from`: where its `--` starts and what follows it.
    /// `anywhere`: the delimiter need not start a line (Werkzeug finds the first one so).
    fn delimiter(&self, from: usize, anywhere: bool) -> Option<(usize, After)> {
        let b = self.body;
        let blen = self.boundary.needle().len();
        let mut at = from;
        while let Some(i) = self.boundary.find(b.get(at..)?).map(|i| at + i) {
            at = i + 1;
            // `--` before the boundary, at the start of a line (at or after `from`).
            if i < from + 2 || &b[i - 2..i] != b"--" || (!anywhere && i > 2 && b[i - 3] != b'\n') {
                continue;
            }
            let rest = &b[i + blen..];
            if rest.starts_with(b"--") {
                return Some((i - 2, After::Close(i + blen + 2)));
            }
            // Transport padding, then the line's end (or the end of a cut body).
            let pad = rest
                .iter()
                .take_while(|c| matches!(c, b' ' | b'\t'))
                .count();
            match &rest[pad..] {
                [b'\n', ..] => return Some((i - 2, After::Part(i + blen + pad + 1))),
                [b'\r', b'\n', ..] => return Some((i - 2, After::Part(i + blen + pad + 2))),
                // A whole body may end with a delimiter line; in a cut one, what follows the
                // boundary is unknown (it may not be a delimiter at all).
                [] | [b'\r'] if self.whole => return Some((i - 2, After::End)),
                [] | [b'\r'] => return None,
                _ => {}
            }
        }
        None
    }
}

impl<'a> Iterator for Parts<'a> {
    type Item = Part<'a>;

    fn next(&mut self) -> Option<Part<'a>> {
        let start = match self.next.take() {
            Some(start) => start,
            // The first part, or one after a close delimiter: the first delimiter line that
            // opens a part, wherever it is.
            None => {
                let mut from = self.seek.take()?;
                loop {
                    match self.delimiter(from, true)? {
                        (_, After::Part(p)) => break p,
                        (_, After::Close(after)) => from = after,
                        (_, After::End) => return None,
                    }
                }
            }
        };
        let b = self.body;
        let (end, content_ends) = match self.delimiter(start, false) {
            Some((dashes, after)) => {
                match after {
                    After::Part(p) => self.next = Some(p),
                    After::Close(after) => self.seek = Some(after),
                    After::End => {}
                }
                // The line break before the delimiter belongs to it.
                let mut end = dashes;
                if end > start && b[end - 1] == b'\n' {
                    end -= 1;
                    if end > start && b[end - 1] == b'\r' {
                        end -= 1;
                    }
                }
                (end, true)
            }
            // No delimiter after it: the part runs to the end of the body, which ends it only
            // when the body is whole.
            None => (b.len(), self.whole),
        };
        let raw = &b[start..end];
        let (mut head, content) = split_head(raw);
        if content.is_none() && !content_ends {
            // Cut in the header block: its last line may be cut too.
            head = &head[..memchr::memrchr(b'\n', head).unwrap_or(0)];
        }
        let mut part = Part {
            disposition: b"",
            content_type: None,
            content: content.filter(|_| content_ends),
            transfer: Encodings::default(),
        };
        for line in head.split(|&c| c == b'\n') {
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-disposition") && part.disposition.is_empty() {
                part.disposition = &value[memchr::memchr(b';', value).unwrap_or(value.len())..];
            } else if name.eq_ignore_ascii_case(b"content-type") && part.content_type.is_none() {
                part.content_type = Some(value);
            } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
                part.transfer.note(value);
            }
        }
        Some(part)
    }
}

/// A part's header block and its content (`None` when the header block does not end).
fn split_head(raw: &[u8]) -> (&[u8], Option<&[u8]>) {
    match raw {
        [b'\n', rest @ ..] | [b'\r', b'\n', rest @ ..] => return (b"", Some(rest)),
        _ => {}
    }
    for nl in memchr::memchr_iter(b'\n', raw) {
        match &raw[nl + 1..] {
            [b'\n', ..] => return (&raw[..nl], Some(&raw[nl + 2..])),
            [b'\r', b'\n', ..] => return (&raw[..nl], Some(&raw[nl + 3..])),
            _ => {}
        }
    }
    (raw, None)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `(name, filename, content type, content)` of a part, as text.
    type Read = (String, Option<String>, Option<String>, Option<String>);

    /// Each part, read.
    fn read(body: &[u8], whole: bool) -> Vec<Read> {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        FormData::new(body, b"XyZ", whole)
            .parts()
            .map(|p| {
                let filename = p
                    .params()
                    .find(|(k, _)| k.eq_ignore_ascii_case(b"filename"))
                    .map(|(_, v)| s(v));
                (
                    p.name().map(s).unwrap_or_default(),
                    filename,
                    p.content_type.map(s),
                    p.content.map(s),
                )
            })
            .collect()
    }

    const UPLOAD: &[u8] = b"preamble\r\n--XyZ\r\n\
        Content-Disposition: form-data; name=\"title\"\r\n\r\n\
        My holiday\r\n--XyZ-not-a-delimiter\r\n--XyZ\r\n\
        content-disposition: form-data; name=\"avatar\"; filename=\"a;b \\\"c\\\".png\"\r\n\
        Content-Type:  image/png \r\n\r\n\
        \x89PNG\r\n--XyZ \t\r\n\
        Content-Disposition: form-data; name=empty\r\n\r\n\
        \r\n--XyZ--\r\nepilogue";

    #[test]
    fn parts_are_read_with_their_names_files_and_contents() {
        let own = |v: &str| Some(v.to_owned());
        assert_eq!(
            read(UPLOAD, true),
            [
                (
                    "title".to_owned(),
                    None,
                    None,
                    own("My holiday\r\n--XyZ-not-a-delimiter")
                ),
                (
                    "avatar".to_owned(),
                    own("a;b \\\"c\\\".png"),
                    own("image/png"),
                    own("\u{fffd}PNG")
                ),
                ("empty".to_owned(), None, None, own("")),
            ]
        );
        // LF line ends, no preamble, no close delimiter in a whole body.
        assert_eq!(
            read(
                b"--XyZ\nContent-Disposition: form-data; name=q\n\nx\n",
                true
            ),
            [("q".to_owned(), None, None, own("x\n"))]
        );
        let one = Some(vec![b"XyZ".to_vec()]);
        assert_eq!(
            form_data_boundaries(b"Multipart/Form-Data ; charset=utf-8; BOUNDARY=\"XyZ\""),
            one
        );
        assert_eq!(
            form_data_boundaries(b"multipart/form-data; boundary=XyZ"),
            one
        );
        assert_eq!(form_data_boundaries(b"multipart/form-data"), Some(vec![]));
        assert_eq!(
            form_data_boundaries(b"multipart/form-data; boundary=\"\""),
            Some(vec![])
        );
        assert_eq!(
            form_data_boundaries(b"application/json; boundary=XyZ"),
            None
        );
    }

    #[test]
    fn a_cut_body_gives_its_complete_parts_and_the_last_ones_head() {
        // Cut inside the PNG: the title is whole, the avatar's head too, its content is not.
        let cut = &UPLOAD[..UPLOAD.iter().position(|&c| c == 0x89).unwrap() + 2];
        let parts = read(cut, false);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert_eq!(
            parts[0].3.as_deref(),
            Some("My holiday\r\n--XyZ-not-a-delimiter")
        );
        assert_eq!(parts[1].1.as_deref(), Some("a;b \\\"c\\\".png"));
        assert_eq!(parts[1].3, None);
        // The same bytes, whole: the last part ends with the body.
        assert!(read(cut, true)[1].3.is_some());
        // Cut in a head (its cut line, `name="tit`, is not read), in a delimiter line, before
        // any delimiter.
        assert_eq!(
            read(&UPLOAD[..60], false),
            [(String::new(), None, None, None)]
        );
        assert_eq!(read(&UPLOAD[..UPLOAD.len() - 20], false).len(), 3);
        assert!(read(b"prea", false).is_empty());
    }

    #[test]
    fn boundaries_are_read_as_every_server_reads_them() {
        let got = |ct: &[u8]| form_data_boundaries(ct).unwrap();
        // busboy, Werkzeug and Python unescape a quoted-pair; PHP keeps the backslash.
        assert_eq!(
            got(br#"multipart/form-data; boundary="B\X""#),
            [b"BX".to_vec(), b"B\\X".to_vec()]
        );
        // PHP finds `boundary` anywhere: in `xboundary`, in another parameter's value (to the
        // `;`, the quote kept).
        assert_eq!(
            got(b"multipart/form-data; xboundary=EVIL; boundary=REAL"),
            [b"EVIL".to_vec(), b"REAL".to_vec()]
        );
        assert_eq!(
            got(b"multipart/form-data; charset=\"boundary=EVIL\"; boundary=REAL"),
            [b"REAL".to_vec(), b"EVIL\"".to_vec()]
        );
    }

    #[test]
    fn parts_after_the_close_delimiter_are_read() {
        // PHP goes on to the next delimiter line after `--XyZ--`.
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--XyZ--\r\n\
            --XyZ\r\nContent-Disposition: form-data; name=q\r\n\r\ny\r\n--XyZ--\r\n";
        let names: Vec<_> = read(body, true).into_iter().map(|p| p.0).collect();
        assert_eq!(names, ["a", "q"]);
    }

    #[test]
    fn the_first_delimiter_need_not_start_a_line() {
        // Werkzeug takes `x--XyZ` as the first delimiter; later ones must start a line.
        let body = b"x--XyZ\r\nContent-Disposition: form-data; name=q\r\n\r\ny --XyZ\r\n--XyZ--";
        assert_eq!(
            read(body, true),
            [("q".to_owned(), None, None, Some("y --XyZ".to_owned()))]
        );
    }

    #[test]
    fn transfer_encodings_are_decoded_as_lenient_servers_decode_them() {
        /// The decodings of a part with `headers` (after its Content-Disposition) and `content`.
        fn decodings(headers: &str, content: &str) -> Vec<String> {
            let body = format!(
                "--B\r\nContent-Disposition: form-data; name=\"q\"\r\n{headers}\r\n\r\n{content}\r\n--B--\r\n"
            );
            let parts: Vec<_> = FormData::new(body.as_bytes(), &b"B"[..], true)
                .parts()
                .collect();
            assert_eq!(parts.len(), 1, "{body}");
            parts[0]
                .transfer_decodings()
                .map(|d| String::from_utf8_lossy(&d).into_owned())
                .collect()
        }
        let b64 = |content| decodings("Content-Transfer-Encoding: base64", content);
        let want = ["it's <b>".to_owned()];
        // White space, line breaks, junk and what follows the padding are skipped, padding is
        // optional, the URL-safe alphabet is read: as Python's b64decode (Django) reads it.
        for content in [
            "aXQncyA8Yj4=",
            " aXQn\r\ncyA8\nYj4 ",
            "aXQncyA8Yj4",
            "aXQn!cyA8*Yj4=",
            "aXQncyA8Yj4=AAAA",
            "aXQncyA8Yj4=x",
        ] {
            assert_eq!(b64(content), want, "{content}");
        }
        assert_eq!(b64("Pz8_"), ["???".to_owned()]);
        assert_eq!(b64("Pz8/"), ["???".to_owned()]);
        // A lone last character holds no whole byte.
        assert_eq!(b64("aXQncyA8Yj4AB"), ["it's <b>\0".to_owned()]);
        assert_eq!(b64(""), [String::new()]);
        let qp = |content| decodings("Content-Transfer-Encoding: quoted-printable", content);
        assert_eq!(qp("it=27s =3cb=3E"), want);
        // Soft line breaks (trailing blanks allowed), and an `=` that escapes nothing stays.
        assert_eq!(qp("it's =\r\n<b=  \n>"), want);
        assert_eq!(qp("a=b =4 c="), ["a=b =4 c=".to_owned()]);
        // The field in any case, with parameters or quotes; several fields: each encoding
        // named (servers take the first or the last).
        for headers in [
            "content-transfer-encoding:  BASE64 ",
            "Content-Transfer-Encoding: base64; x=1",
            "Content-Transfer-Encoding: \"base64\"",
            "Content-Transfer-Encoding: 7bit\r\nContent-Transfer-Encoding: base64",
            "Content-Transfer-Encoding: base64\r\nContent-Transfer-Encoding: 7bit",
        ] {
            assert_eq!(decodings(headers, "aXQncyA8Yj4="), want, "{headers}");
        }
        assert_eq!(
            decodings(
                "Content-Transfer-Encoding: quoted-printable\r\nContent-Transfer-Encoding: base64",
                "aXQncyA8Yj4="
            ),
            ["it's <b>".to_owned(), "aXQncyA8Yj4=".to_owned()]
        );
        for headers in [
            "Content-Transfer-Encoding: 7bit",
            "Content-Type: text/plain",
        ] {
            assert_eq!(decodings(headers, "aXQncyA8Yj4="), Vec::<String>::new());
        }
    }

    #[test]
    fn only_clearly_binary_files_are_binary() {
        let part =
            |disposition: &'static str, ctype: Option<&'static str>, content: &'static [u8]| Part {
                disposition: disposition.as_bytes(),
                content_type: ctype.map(str::as_bytes),
                content: Some(content),
                transfer: Encodings::default(),
            };
        let png: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert!(part(r#"; name="a"; filename="a.png""#, Some("image/png"), png).is_binary_file());
        assert!(part(r#"; name="a"; filename="blob""#, None, png).is_binary_file());
        for (disposition, ctype, content) in [
            // A field, whatever its type.
            (r#"; name="q""#, Some("application/octet-stream"), png),
            (r#"; name="q""#, Some(""), png),
            // A file that PHP reads as a field.
            (r#"; name="q"; filename*=UTF-8''x"#, Some("image/png"), png),
            (r#"; name='q; filename=x'"#, Some("image/png"), png),
            // Text, whatever its name or type.
            (
                r#"; name="a"; filename="a.png""#,
                Some("image/png"),
                b"1' OR 1=1--",
            ),
            (r#"; name="a"; filename="a.txt""#, Some("text/plain"), png),
        ] {
            assert!(
                !part(disposition, ctype, content).is_binary_file(),
                "{disposition} {ctype:?}"
            );
        }
    }

    proptest! {
        /// Any cut of a body gives a prefix of its parts, each as whole or with no content,
        /// and never panics.
        #[test]
        fn any_cut_gives_complete_parts_only(cut in 0..UPLOAD.len()) {
            let whole = read(UPLOAD, true);
            let parts = read(&UPLOAD[..cut], false);
            prop_assert!(parts.len() <= whole.len());
            for (p, w) in parts.iter().zip(&whole) {
                prop_assert!(p.3.is_none() || p.3 == w.3, "{p:?} vs {w:?}");
            }
        }

        #[test]
        fn arbitrary_bytes_do_not_panic(body in proptest::collection::vec(
            prop_oneof![Just(b'-'), Just(b'X'), Just(b'y'), Just(b'Z'), Just(b'\r'), Just(b'\n'),
                        Just(b';'), Just(b'"'), Just(b'='), Just(b':'), any::<u8>()],
            0..200,
        ), whole in any::<bool>()) {
            for p in FormData::new(&body, b"XyZ", whole).parts() {
                let _ = (p.name(), p.is_binary_file(), p.params().count());
            }
        }
    }
}
