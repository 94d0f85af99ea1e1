//! Message bodies: counted in full, kept up to a cap, and decoded from gzip, deflate, brotli or
//! zstd content coding (up to [`MAX_CODINGS`] of them stacked) up to the same cap.

use std::io::Write;

use brotli_decompressor::DecompressorWriter;
use flate2::write::{DeflateDecoder, GzDecoder, ZlibDecoder};

/// Stacked content codings decoded at most (`gzip, gzip` is two): more are left as sent.
pub const MAX_CODINGS: usize = 3;

/// One content coding that is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// `gzip` / `x-gzip`.
    Gzip,
    /// `deflate` (zlib, or raw deflate as some servers send it).
    Deflate,
    /// `br` (RFC 7932), which browsers ask for and many servers send: a client can ask for it
    /// to get a response the scan of a gzip-only reader would not read.
    Brotli,
    /// `zstd` (RFC 8878), with the 8 MiB window RFC 9659 bounds HTTP encoders to.
    Zstd,
}

/// The content codings a body is decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// As is.
    Identity,
    /// One to [`MAX_CODINGS`] decoded codings in the order they were applied, as the
    /// fields list them (`deflate, gzip` is gzip over deflate): decoding undoes the last first.
    Coded([Option<Layer>; MAX_CODINGS]),
    /// Something else, or more codings than [`MAX_CODINGS`]: kept as is, not decoded.
    Other,
}

impl Coding {
    /// The codings named by the Content-Encoding fields (several fields are one list, in
    /// order); `identity` codes nothing. A coding not decoded anywhere in the list leaves the
    /// whole body undecoded.
    pub fn of<'a>(values: impl Iterator<Item = &'a str>) -> Self {
        let codings = values
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
        let mut layers = [None; MAX_CODINGS];
        let mut n = 0;
        for c in codings {
            let layer = if c.eq_ignore_ascii_case("gzip") || c.eq_ignore_ascii_case("x-gzip") {
                Layer::Gzip
            } else if c.eq_ignore_ascii_case("deflate") {
                Layer::Deflate
            } else if c.eq_ignore_ascii_case("br") {
                Layer::Brotli
            } else if c.eq_ignore_ascii_case("zstd") {
                Layer::Zstd
            } else {
                return Self::Other;
            };
            let Some(slot) = layers.get_mut(n) else {
                return Self::Other;
            };
            *slot = Some(layer);
            n += 1;
        }
        if n == 0 {
            Self::Identity
        } else {
            Self::Coded(layers)
        }
    }
}

/// Keeps what is written up to a cap and counts the rest. As a decoder's output (`refuse`),
/// it refuses what comes past the cap, which stops the decoder there: brotli and zstd can
/// code gigabytes in a few bytes, and a decoder runs a whole write before the body sees its
/// output.
#[derive(Debug, Default)]
struct Capped {
    kept: Vec<u8>,
    cap: usize,
    total: u64,
    refuse: bool,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.cap.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&buf[..room.min(buf.len())]);
        self.total += buf.len() as u64;
        if self.refuse && self.total > self.cap as u64 {
            return Err(std::io::Error::other("past the body cap"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where a decoder's output goes: the decoded body, or the decoder of the coding applied before
/// (a stacked coding), with the bytes handed to it.
enum Sink {
    Out(Capped),
    Next(Box<Decoder>, u64),
}

impl Default for Sink {
    fn default() -> Self {
        Sink::Out(Capped::default())
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Out(out) => out.write(buf),
            Sink::Next(d, fed) => {
                *fed += buf.len() as u64;
                d.write_all(buf)?;
                d.flush()?;
                if *fed > d.sink().out().cap as u64 {
                    // An inner stream past the cap is enough (of empty blocks, it would decode
                    // to nothing however much of it an outer coding makes).
                    return Err(std::io::Error::other("past the body cap"));
                }
                Ok(buf.len())
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    /// The most bytes any coding below decoded: the cap bounds each (an inner stream of empty
    /// deflate blocks decodes to nothing, however much of it an outer coding makes).
    fn produced(&self) -> u64 {
        match self {
            Sink::Out(out) => out.total,
            Sink::Next(d, fed) => (*fed).max(d.sink().produced()),
        }
    }

    fn out(&self) -> &Capped {
        match self {
            Sink::Out(out) => out,
            Sink::Next(d, _) => d.sink().out(),
        }
    }

    fn out_mut(&mut self) -> &mut Capped {
        match self {
            Sink::Out(out) => out,
            Sink::Next(d, _) => d.sink_mut().out_mut(),
        }
    }
}

enum Decoder {
    Gzip(GzDecoder<Sink>),
    /// `deflate` before its first two bytes tell a zlib stream from raw deflate: those so far.
    DeflateStart(Sink, Vec<u8>),
    Deflate(ZlibDecoder<Sink>),
    /// `deflate` sent without the zlib wrapper RFC 9110 asks for, as some servers send it and
    /// browsers and curl read it.
    RawDeflate(DeflateDecoder<Sink>),
    /// `br`, and the window its stream header asks for (the most its decoder allocates).
    Brotli(Box<DecompressorWriter<Sink>>, Window),
    /// `zstd`, and the window of its frame header.
    Zstd(Box<zstd::stream::write::Decoder<'static, Sink>>, Window),
}

/// The window a brotli or zstd stream declares, in bytes, once its first bytes came: what its
/// decoder may allocate, counted by [`Body::reserved`] so that the global memory cap sees it.
#[derive(Debug, Default)]
struct Window {
    /// The stream's first bytes, until they tell.
    head: Vec<u8>,
    bytes: Option<u64>,
}

/// RFC 9659: zstd encoders for HTTP use at most an 8 MiB window; larger frames are refused.
const ZSTD_MAX_WINDOW_LOG: u32 = 23;

impl Window {
    /// Feeds the stream's next bytes; `of` reads a window from a stream's start, `None` until
    /// there are enough bytes.
    fn learn(&mut self, b: &[u8], of: fn(&[u8]) -> Option<u64>) {
        // A zstd frame header is 18 bytes at most; brotli's window is in its first byte.
        const HEAD: usize = 18;
        if self.bytes.is_some() || self.head.len() >= HEAD {
            return;
        }
        let more = HEAD - self.head.len();
        self.head.extend_from_slice(&b[..b.len().min(more)]);
        self.bytes = of(&self.head);
        if self.bytes.is_some() {
            self.head = Vec::new();
        }
    }
}

/// A brotli stream's window (RFC 7932 §9.1: WBITS in its first bits).
fn brotli_window(head: &[u8]) -> Option<u64> {
    let b = *head.first()?;
    let bits = if b & 1 == 0 {
        16
    } else if (b >> 1) & 7 != 0 {
        17 + ((b >> 1) & 7)
    } else if (b >> 4) & 7 != 0 {
        8 + ((b >> 4) & 7)
    } else {
        17
    };
    Some((1u64 << bits) - 16)
}

/// A zstd frame's window (RFC 8878 §3.1.1.1: the Window_Descriptor, or the content size of a
/// single-segment frame), at most the 8 MiB a decoder here accepts.
fn zstd_window(head: &[u8]) -> Option<u64> {
    let largest = 1u64 << ZSTD_MAX_WINDOW_LOG;
    if head.len() < 6 {
        return None;
    }
    if head[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
        // Not a zstd frame (a skippable one, or garbage the decoder refuses): its largest.
        return Some(largest);
    }
    let fhd = head[4];
    if fhd & 0x20 == 0 {
        let wd = head[5];
        let base = 1u64 << (10 + (wd >> 3));
        return Some((base + base / 8 * u64::from(wd & 7)).min(largest));
    }
    let did = [0, 1, 2, 4][usize::from(fhd & 3)];
    let fcs = [1, 2, 4, 8][usize::from(fhd >> 6)];
    let at = 5 + did;
    let field = head.get(at..at + fcs)?;
    let mut v = [0u8; 8];
    v[..fcs].copy_from_slice(field);
    let size = u64::from_le_bytes(v) + if fcs == 2 { 256 } else { 0 };
    Some(size.min(largest))
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
            Decoder::Brotli(..) => "Brotli",
            Decoder::Zstd(..) => "Zstd",
        })?;
        if let Sink::Next(d, _) = self.sink() {
            write!(f, " of {d:?}")?;
        }
        Ok(())
    }
}

impl Decoder {
    /// Decoders undoing `codings` (applied in that order) into a body kept up to `cap`.
    fn new(codings: &[Option<Layer>], cap: usize) -> Option<Self> {
        let mut top: Option<Self> = None;
        for layer in codings.iter().flatten() {
            let sink = match top.take() {
                None => Sink::Out(Capped {
                    kept: Vec::new(),
                    cap,
                    total: 0,
                    refuse: true,
                }),
                Some(d) => Sink::Next(Box::new(d), 0),
            };
            top = Some(match layer {
                Layer::Gzip => Decoder::Gzip(GzDecoder::new(sink)),
                Layer::Deflate => Decoder::DeflateStart(sink, Vec::new()),
                Layer::Brotli => Decoder::Brotli(
                    Box::new(DecompressorWriter::new(sink, 4096)),
                    Window::default(),
                ),
                Layer::Zstd => {
                    let mut d = zstd::stream::write::Decoder::new(sink).ok()?;
                    d.window_log_max(ZSTD_MAX_WINDOW_LOG).ok()?;
                    Decoder::Zstd(Box::new(d), Window::default())
                }
            });
        }
        top
    }

    fn sink(&self) -> &Sink {
        match self {
            Decoder::Gzip(d) => d.get_ref(),
            Decoder::DeflateStart(out, _) => out,
            Decoder::Deflate(d) => d.get_ref(),
            Decoder::RawDeflate(d) => d.get_ref(),
            Decoder::Brotli(d, _) => d.get_ref(),
            Decoder::Zstd(d, _) => d.get_ref(),
        }
    }

    fn sink_mut(&mut self) -> &mut Sink {
        match self {
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::DeflateStart(out, _) => out,
            Decoder::Deflate(d) => d.get_mut(),
            Decoder::RawDeflate(d) => d.get_mut(),
            Decoder::Brotli(d, _) => d.get_mut(),
            Decoder::Zstd(d, _) => d.get_mut(),
        }
    }

    /// Codings undone, this one included.
    fn layers(&self) -> usize {
        match self.sink() {
            Sink::Out(_) => 1,
            Sink::Next(d, _) => 1 + d.layers(),
        }
    }

    /// The windows the brotli and zstd streams of this coding and those below declared, as far
    /// as their headers came ([`Body::reserved`]).
    fn windows(&self) -> u64 {
        let own = match self {
            Decoder::Brotli(_, w) | Decoder::Zstd(_, w) => w.bytes.unwrap_or(0),
            _ => 0,
        };
        own + match self.sink() {
            Sink::Out(_) => 0,
            Sink::Next(d, _) => d.windows(),
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
            Decoder::Brotli(d, w) => {
                w.learn(b, brotli_window);
                d.write_all(b)
            }
            Decoder::Zstd(d, w) => {
                w.learn(b, zstd_window);
                d.write_all(b)
            }
        }
    }

    /// Whether what this decoder decoded may wait in it until a flush: brotli's and zstd's
    /// output buffers, and any coding over another (held back, the inner ones would decode it
    /// only at the end, past the cap).
    fn holds_output(&self) -> bool {
        matches!(self.sink(), Sink::Next(..))
            || matches!(self, Decoder::Brotli(..) | Decoder::Zstd(..))
    }

    /// Hands what decoded so far on: a decoder keeps its output until its next write, and
    /// the cap is judged on what came out of the last coding.
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Decoder::Gzip(d) => d.flush(),
            Decoder::DeflateStart(..) => Ok(()),
            Decoder::Deflate(d) => d.flush(),
            Decoder::RawDeflate(d) => d.flush(),
            Decoder::Brotli(d, _) => d.flush(),
            Decoder::Zstd(d, _) => d.flush(),
        }
    }

    /// Finishes the streams, this one first (its last output goes to the next), and takes
    /// what decoded; true when every one was complete and valid; and the most bytes a coding
    /// decoded ([`Sink::produced`]).
    fn finish(mut self) -> (bool, Vec<u8>, u64) {
        let ok = self.finish_all();
        (ok, self.take(), self.sink().produced())
    }

    fn finish_all(&mut self) -> bool {
        let ok = match self {
            Decoder::Gzip(d) => d.try_finish().is_ok(),
            Decoder::DeflateStart(..) => false,
            Decoder::Deflate(d) => d.try_finish().is_ok(),
            Decoder::RawDeflate(d) => d.try_finish().is_ok(),
            Decoder::Brotli(d, _) => d.close().is_ok(),
            Decoder::Zstd(d, _) => d.do_finish().is_ok(),
        };
        let next_ok = match self.sink_mut() {
            Sink::Out(_) => true,
            Sink::Next(d, _) => d.finish_all(),
        };
        ok && next_ok
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.sink_mut().out_mut().kept)
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

    /// A body that keeps up to `cap` bytes and decodes `coding` (gzip, deflate, stacked) up to
    /// `cap`.
    pub fn new(cap: usize, coding: Coding) -> Self {
        let decoder = match coding {
            Coding::Coded(layers) => Decoder::new(&layers, cap).map(Box::new),
            Coding::Identity | Coding::Other => None,
        };
        Self {
            raw: Capped {
                kept: Vec::new(),
                cap: if decoder.is_some() { 0 } else { cap },
                total: 0,
                refuse: false,
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
            let hold = d.holds_output();
            let failed = d.write_all(b).is_err() || (hold && d.flush().is_err());
            if d.sink().produced() > self.cap as u64 {
                // Enough decoded (the output refused the rest, which is what stopped a write
                // that failed); stop spending time on the rest (and on decompression bombs,
                // stacked ones included).
                self.stop(Decoded::Capped);
            } else if failed {
                self.stop(Decoded::Failed);
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
            + self.decoder.as_ref().map_or(0, |d| {
                d.sink().out().kept.capacity() + d.layers() * (64 << 10)
            })
    }

    /// What the decoders may hold beyond [`mem`](Self::mem): the window a brotli stream or zstd
    /// frame declared, once its header came (a decoder allocates nothing before its first
    /// bytes). Counted against the global memory cap only: a flow's own cap turns held
    /// segments into gaps to free memory, which would only end the decoding (a brotli window
    /// of 4 MiB, the encoders' default, is past the 4 MiB flow cap by itself).
    pub fn reserved(&self) -> usize {
        self.decoder.as_ref().map_or(0, |d| d.windows() as usize)
    }

    /// Finishes decoding; returns the kept bytes (decoded when coded) and how decoding went.
    pub fn finish(mut self) -> (Vec<u8>, Decoded, u64) {
        let total = self.raw.total;
        if let Some(d) = self.decoder.take() {
            let complete = self.gap_bytes == 0 && !self.cut_short;
            let (ok, kept, produced) = d.finish();
            let how = if produced > self.cap as u64 {
                Decoded::Capped
            } else if ok && complete {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder stops where its output passes the cap, inside the write that got it there: a
    /// few kilobytes of brotli or zstd code megabytes (gigabytes, crafted), which a decoder
    /// would otherwise decode whole before the body saw its output.
    #[test]
    fn a_decoder_stops_inside_the_write_that_passes_the_cap() {
        let zeros = vec![0u8; 50_000_000];
        let mut br = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
        br.write_all(&zeros).unwrap();
        let br = br.into_inner();
        let zstd = zstd::encode_all(&zeros[..], 3).unwrap();
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&zeros).unwrap();
            e.finish().unwrap()
        };
        for (layer, coded) in [(Layer::Brotli, br), (Layer::Zstd, zstd), (Layer::Gzip, gz)] {
            let mut d = Decoder::new(&[Some(layer)], 1000).unwrap();
            let r = d.write_all(&coded).and_then(|()| d.flush());
            assert!(r.is_err(), "{layer:?}: the write ran to its end");
            let produced = d.sink().produced();
            assert!(produced <= 1000 + (256 << 10), "{layer:?}: {produced}");
        }
    }

    #[test]
    fn declared_windows_are_read_from_the_stream_headers() {
        for lgwin in [16, 18, 22, 24] {
            let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, 5, lgwin);
            w.write_all(&[7u8; 100_000]).unwrap();
            let b = w.into_inner();
            assert_eq!(
                brotli_window(&b),
                Some((1u64 << lgwin) - 16),
                "lgwin {lgwin}"
            );
        }
        for log in [10, 17, 20, 23] {
            let mut e = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
            e.window_log(log).unwrap();
            e.include_contentsize(false).unwrap();
            e.write_all(&[7u8; 10_000]).unwrap();
            let z = e.finish().unwrap();
            assert_eq!(zstd_window(&z), Some(1u64 << log), "window log {log}");
        }
        // A single-segment frame: its content size.
        let z = zstd::encode_all(&[7u8; 300][..], 3).unwrap();
        assert_eq!(zstd_window(&z), Some(300));
        assert_eq!(zstd_window(&z[..5]), None);
        // Not zstd: the largest window counts.
        assert_eq!(zstd_window(b"garbage!"), Some(1 << ZSTD_MAX_WINDOW_LOG));
    }
}
