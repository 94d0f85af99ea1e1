//! Message bodies: counted in full, kept up to a cap, and (for responses) decoded from gzip or
//! deflate content coding up to the same cap.

use std::io::Write;

use flate2::write::{DeflateDecoder, GzDecoder, ZlibDecoder};

/// A content coding the body is decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// As is.
    Identity,
    /// `gzip` / `x-gzip`.
    Gzip,
    /// `deflate` (zlib, or raw deflate as some servers send it).
    Deflate,
    /// Something else (or several codings): kept as is, not decoded.
    Other,
}

impl Coding {
    /// The coding named by the Content-Encoding fields.
    pub fn of<'a>(values: impl Iterator<Item = &'a str>) -> Self {
        let mut codings = values
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
        let (Some(first), None) = (codings.next(), codings.next()) else {
            return Self::Identity;
        };
        if first.eq_ignore_ascii_case("gzip") || first.eq_ignore_ascii_case("x-gzip") {
            Self::Gzip
        } else if first.eq_ignore_ascii_case("deflate") {
            Self::Deflate
        } else {
            Self::Other
        }
    }
}

/// Keeps what is written up to a cap and counts the rest.
#[derive(Debug, Default)]
struct Capped {
    kept: Vec<u8>,
    cap: usize,
    total: u64,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.cap.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&buf[..room.min(buf.len())]);
        self.total += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Decoder {
    Gzip(GzDecoder<Capped>),
    /// `deflate` before its first two bytes tell a zlib stream from raw deflate: those so far.
    DeflateStart(Capped, Vec<u8>),
    Deflate(ZlibDecoder<Capped>),
    /// `deflate` sent without the zlib wrapper RFC 9110 asks for, as some servers send it and
    /// browsers and curl read it.
    RawDeflate(DeflateDecoder<Capped>),
}

/// Whether two bytes open a zlib stream (RFC 1950: method 8, and a header check that is a
/// multiple of 31); raw deflate data almost never does.
fn zlib_header(b0: u8, b1: u8) -> bool {
    b0 & 0x0f == 8 && (u16::from(b0) << 8 | u16::from(b1)).is_multiple_of(31)
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decoder::Gzip(_) => "Gzip",
            Decoder::DeflateStart(..) | Decoder::Deflate(_) => "Deflate",
            Decoder::RawDeflate(_) => "RawDeflate",
        })
    }
}

impl Decoder {
    fn out(&self) -> &Capped {
        match self {
            Decoder::Gzip(d) => d.get_ref(),
            Decoder::DeflateStart(out, _) => out,
            Decoder::Deflate(d) => d.get_ref(),
            Decoder::RawDeflate(d) => d.get_ref(),
        }
    }
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Decoder::Gzip(d) => d.write_all(b),
            Decoder::DeflateStart(out, start) => {
                start.extend_from_slice(b);
                if let [b0, b1, ..] = start[..] {
                    let (out, start) = (std::mem::take(out), std::mem::take(start));
                    *self = if zlib_header(b0, b1) {
                        Decoder::Deflate(ZlibDecoder::new(out))
                    } else {
                        Decoder::RawDeflate(DeflateDecoder::new(out))
                    };
                    return self.write_all(&start);
                }
                Ok(())
            }
            Decoder::Deflate(d) => d.write_all(b),
            Decoder::RawDeflate(d) => d.write_all(b),
        }
    }
    /// Finishes the stream (true when it was complete and valid) and takes what decoded.
    fn finish(mut self) -> (bool, Vec<u8>) {
        let ok = match &mut self {
            Decoder::Gzip(d) => d.try_finish().is_ok(),
            Decoder::DeflateStart(..) => false,
            Decoder::Deflate(d) => d.try_finish().is_ok(),
            Decoder::RawDeflate(d) => d.try_finish().is_ok(),
        };
        (ok, self.take())
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(match self {
            Decoder::Gzip(d) => &mut d.get_mut().kept,
            Decoder::DeflateStart(out, _) => &mut out.kept,
            Decoder::Deflate(d) => &mut d.get_mut().kept,
            Decoder::RawDeflate(d) => &mut d.get_mut().kept,
        })
    }
}

/// Whether a body looks binary (an image, an archive, an office file: every such format
/// starts so): a NUL, or bytes that are not UTF-8, in its first KiB (a
/// character cut by the KiB's end is not counted).
pub fn looks_binary(content: &[u8]) -> bool {
    let head = &content[..content.len().min(1024)];
    memchr::memchr(0, head).is_some()
        || std::str::from_utf8(head).is_err_and(|e| e.error_len().is_some())
}

/// How decoding a coded body went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decoded {
    /// Not coded (or coded with something not decoded): the kept bytes are the body as sent.
    No,
    /// Decoded completely (the kept bytes are the decoded body, maybe capped).
    Yes,
    /// The decoded body was longer than the cap: the kept bytes are its start.
    Capped,
    /// The coded data was broken or cut short: the kept bytes are what decoded before that.
    Failed,
}

/// A body as it arrived: its length (after de-chunking) and its first bytes.
#[derive(Debug)]
pub struct Body {
    raw: Capped,
    /// Boxed: a decoder holds about 250 bytes of inflate state, and bodies without a coding
    /// (nearly all) move through the parser's events by value.
    decoder: Option<Box<Decoder>>,
    decoded: Option<Vec<u8>>,
    decode_state: Decoded,
    cap: usize,
    /// Body bytes lost to gaps (counted in the length, absent from the kept bytes).
    pub gap_bytes: u64,
    /// The stream ended before the body did.
    pub cut_short: bool,
}

impl Body {
    /// An empty body that keeps up to `cap` bytes.
    pub fn empty(cap: usize) -> Self {
        Self::new(cap, Coding::Identity)
    }

    /// A body that keeps up to `cap` bytes and decodes `coding` (gzip, deflate) up to `cap`.
    pub fn new(cap: usize, coding: Coding) -> Self {
        let out = || Capped {
            kept: Vec::new(),
            cap,
            total: 0,
        };
        let decoder = match coding {
            Coding::Gzip => Some(Box::new(Decoder::Gzip(GzDecoder::new(out())))),
            Coding::Deflate => Some(Box::new(Decoder::DeflateStart(out(), Vec::new()))),
            _ => None,
        };
        Self {
            raw: Capped {
                kept: Vec::new(),
                cap: if decoder.is_some() { 0 } else { cap },
                total: 0,
            },
            decoder,
            decoded: None,
            decode_state: Decoded::No,
            cap,
            gap_bytes: 0,
            cut_short: false,
        }
    }

    /// Makes room for a body of `len` bytes (as far as it is kept).
    pub fn reserve(&mut self, len: u64) {
        let room = (self.raw.cap as u64).min(len) as usize;
        self.raw.kept.reserve_exact(room);
    }

    /// Appends body bytes.
    pub fn push(&mut self, b: &[u8]) {
        if self.gap_bytes == 0 {
            self.raw.write_all(b).expect("in memory");
        } else {
            self.raw.total += b.len() as u64;
        }
        if let Some(d) = self.decoder.as_mut() {
            if d.write_all(b).is_err() {
                self.stop(Decoded::Failed);
            } else if d.out().total > self.cap as u64 {
                // Enough decoded; stop spending time on the rest (and on decompression bombs).
                self.stop(Decoded::Capped);
            }
        }
    }

    fn stop(&mut self, how: Decoded) {
        if let Some(mut d) = self.decoder.take() {
            self.decoded = Some(d.take());
            self.decode_state = how;
        }
    }

    /// `n` body bytes were lost; what follows is not kept (it would not be contiguous).
    pub fn skip(&mut self, n: u64) {
        self.raw.total += n;
        self.gap_bytes += n;
        if self.decoder.is_some() {
            self.stop(Decoded::Failed);
        }
    }

    /// The stream ended inside the body.
    pub fn truncated_by_end(&mut self) {
        self.cut_short = true;
    }

    /// Body length in bytes (after de-chunking, before content decoding), gaps included.
    pub fn len(&self) -> u64 {
        self.raw.total
    }

    /// True for an empty body.
    pub fn is_empty(&self) -> bool {
        self.raw.total == 0
    }

    /// Bytes held.
    pub fn mem(&self) -> usize {
        self.raw.kept.capacity()
            + self.decoded.as_ref().map_or(0, Vec::capacity)
            + self
                .decoder
                .as_ref()
                .map_or(0, |d| d.out().kept.capacity() + (64 << 10))
    }

    /// Finishes decoding; returns the kept bytes (decoded when coded) and how decoding went.
    pub fn finish(mut self) -> (Vec<u8>, Decoded, u64) {
        let total = self.raw.total;
        if let Some(d) = self.decoder.take() {
            let complete = self.gap_bytes == 0 && !self.cut_short;
            let (ok, kept) = d.finish();
            let how = if ok && complete {
                Decoded::Yes
            } else {
                Decoded::Failed
            };
            return (kept, how, total);
        }
        if let Some(d) = self.decoded.take() {
            return (d, self.decode_state, total);
        }
        (self.raw.kept, Decoded::No, total)
    }
}
