//! One direction of an HTTP/1.x connection: a byte stream (with gaps and an end) in, message
//! heads and complete messages out. Heads are parsed with `httparse`; bodies are framed by
//! Content-Length, chunked transfer coding (de-chunked, trailers kept) or the end of the stream.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{
    HttpSettings,
    body::{Body, Coding},
    head::{Head, span},
};

/// Which side of the connection this parser reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Client to server.
    Request,
    /// Server to client.
    Response,
}

/// What a response parser needs to know about the request it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReqCtx {
    /// The request was HEAD (no response body).
    pub head: bool,
    /// The request was CONNECT (a 2xx response turns the connection into a tunnel).
    pub connect: bool,
}

/// A parser event.
#[derive(Debug)]
pub enum Event {
    /// A message head; `ts` is the capture time of its first byte.
    Head {
        /// The head.
        head: Box<Head>,
        /// Capture time of its first byte.
        ts: u64,
    },
    /// The message whose head came last is complete.
    Done {
        /// Its body (capped), with the byte count.
        body: Body,
        /// Chunked trailer fields.
        trailers: Option<Box<Head>>,
        /// Capture time of its last byte.
        ts: u64,
    },
    /// A message was lost before its head could be parsed (a gap or malformed bytes).
    Lost,
    /// The stream stopped being HTTP (upgrade, tunnel, or garbage): nothing more will come.
    Abandoned,
}

/// The buffers of a parser whose connection ended, kept for a new connection's parser: most
/// connections are short, and each new parser would allocate its byte buffer and time marks
/// again.
#[derive(Debug, Default)]
pub struct Spare {
    buf: Vec<u8>,
    marks: VecDeque<(u64, u64)>,
}

impl Spare {
    /// A byte buffer larger than this is freed rather than kept: a flow's memory counts its
    /// buffers' capacity (against the per-flow and global caps), so a new flow should not start
    /// out holding much.
    pub const MAX_BYTES: usize = 4 << 10;
}

/// Why a direction was given up or resynchronised; the connection counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParserCounts {
    /// Heads or chunk framing that did not parse.
    pub malformed: u64,
    /// Bytes skipped while looking for the next message.
    pub skipped: u64,
    /// Interim (1xx) responses skipped.
    pub interim: u64,
    /// Messages that ended in or were cut by a gap.
    pub gapped: u64,
}

#[derive(Debug)]
enum State {
    /// Waiting for a head.
    Idle,
    /// Content-Length body.
    Length(u64),
    /// Chunked body: the size line.
    ChunkSize,
    /// Chunked body: chunk data.
    ChunkData(u64),
    /// Chunked body: the CRLF after chunk data.
    ChunkEnd,
    /// Chunked body: trailer fields up to the empty line.
    Trailers,
    /// A body that runs to the end of the stream.
    UntilClose,
    /// Looking for the start of the next message.
    Resync,
    /// Not HTTP (any more).
    Dead,
}

enum Parsed {
    /// Consumed this many bytes; maybe an event.
    Progress(usize, Option<Event>),
    /// Needs more bytes.
    Need,
    /// A response head is complete but the request it answers is not known yet.
    Blocked,
}

/// One direction's parser.
pub struct Parser {
    side: Side,
    state: State,
    buf: Vec<u8>,
    start: usize,
    /// Stream offset of `buf[start]`.
    abs: u64,
    /// Stream offset of the end of what was pushed (bytes and gaps).
    tail: u64,
    /// (stream offset, capture time) where each pushed chunk began.
    marks: VecDeque<(u64, u64)>,
    /// (stream offset, length) of gaps not yet applied.
    gaps: VecDeque<(u64, u64)>,
    eof: bool,
    eof_done: bool,
    body: Option<Body>,
    trailer_bytes: Vec<u8>,
    skipped_in_resync: u64,
    /// Resync may match at the current position (after a gap), not only after a line end.
    resync_here: bool,
    /// Parsing waits (a request asked to leave HTTP; its response decides).
    paused: bool,
    /// A gap ended a message and ran on into the next one: its loss is told next.
    lost_next: bool,
    last_ts: u64,
    /// (stream offset of a head awaited, how many of its bytes hold no end of it yet).
    head_seen: (u64, usize),
    /// Counters.
    pub counts: ParserCounts,
    settings: HttpSettings,
}

/// Methods a request line may start with when resynchronising.
fn looks_like_request(p: &[u8]) -> Option<bool> {
    let n = p
        .iter()
        .take(20)
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    match p.get(n) {
        Some(b' ') if n >= 3 => Some(true),
        Some(_) => Some(false),
        None if n < 20 => None,
        None => Some(false),
    }
}

fn looks_like_response(p: &[u8]) -> Option<bool> {
    const PFX: &[u8] = b"HTTP/1.";
    let n = p.len().min(PFX.len());
    if p[..n] != PFX[..n] {
        Some(false)
    } else if n < PFX.len() {
        None
    } else {
        Some(true)
    }
}

impl Parser {
    /// A parser for one side.
    pub fn new(side: Side, settings: HttpSettings) -> Self {
        Self::with_spare(side, settings, Spare::default())
    }

    /// A parser that starts with the (empty) buffers of one that ended.
    pub fn with_spare(side: Side, settings: HttpSettings, spare: Spare) -> Self {
        Self {
            side,
            state: State::Idle,
            buf: spare.buf,
            start: 0,
            abs: 0,
            tail: 0,
            marks: spare.marks,
            gaps: VecDeque::new(),
            eof: false,
            eof_done: false,
            body: None,
            trailer_bytes: Vec::new(),
            skipped_in_resync: 0,
            resync_here: true,
            paused: false,
            lost_next: false,
            last_ts: 0,
            head_seen: (u64::MAX, 0),
            counts: ParserCounts::default(),
            settings,
        }
    }

    /// The parser's buffers, emptied, for the next connection's parser (see [`Spare`]); `None`
    /// when the byte buffer grew beyond [`Spare::MAX_BYTES`].
    pub fn into_spare(mut self) -> Option<Spare> {
        if self.buf.capacity() > Spare::MAX_BYTES {
            return None;
        }
        self.buf.clear();
        self.marks.clear();
        Some(Spare {
            buf: self.buf,
            marks: self.marks,
        })
    }

    /// Bytes held.
    pub fn mem(&self) -> usize {
        self.buf.capacity() + self.body.as_ref().map_or(0, Body::mem) + self.trailer_bytes.len()
    }

    /// What the body's decoders may hold beyond [`mem`](Self::mem) ([`Body::reserved`]).
    pub fn reserved(&self) -> usize {
        self.body.as_ref().map_or(0, Body::reserved)
    }

    /// True once the stream is not HTTP any more.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, State::Dead)
    }

    /// True when no message is in progress and nothing is buffered.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle) && self.start == self.buf.len() && self.gaps.is_empty()
    }

    /// Stops parsing after the current message until [`Parser::resume`] (a request asked for an
    /// upgrade or a tunnel: what follows it may not be HTTP).
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Parses on after [`Parser::pause`].
    pub fn resume(&mut self) {
        self.paused = false;
    }

    /// Gives the stream up (the other direction was upgraded or died).
    pub fn kill(&mut self) {
        self.state = State::Dead;
        self.buf = Vec::new();
        self.start = 0;
        self.gaps.clear();
        self.marks.clear();
        self.body = None;
    }

    /// Appends in-order bytes captured at `ts`.
    pub fn push(&mut self, ts: u64, mut data: &[u8]) {
        if self.is_dead() || self.eof {
            return;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.gaps.is_empty() {
                // Fast path: body bytes with nothing buffered before them go straight to the
                // body, without a copy into the buffer.
                let n = self.take_body(data);
                if n > 0 {
                    self.tail += n as u64;
                    self.abs += n as u64;
                    self.marks.clear();
                    self.marks.push_back((self.abs, ts));
                    self.last_ts = ts;
                    data = &data[n..];
                    if data.is_empty() {
                        return;
                    }
                }
            }
        }
        let at = self.tail;
        self.tail += data.len() as u64;
        if self.marks.back().is_none_or(|m| m.1 != ts) {
            self.marks.push_back((at, ts));
        }
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
        self.last_ts = ts;
    }

    /// Feeds body bytes from the front of `data` to the body in progress; returns how many.
    fn take_body(&mut self, data: &[u8]) -> usize {
        let n = match self.state {
            State::Length(left) | State::ChunkData(left) => left.min(data.len() as u64) as usize,
            State::UntilClose => data.len(),
            _ => 0,
        };
        if n == 0 {
            return 0;
        }
        if let Some(b) = self.body.as_mut() {
            b.push(&data[..n]);
        }
        self.state = match self.state {
            State::Length(left) => State::Length(left - n as u64),
            State::ChunkData(left) if left == n as u64 => State::ChunkEnd,
            State::ChunkData(left) => State::ChunkData(left - n as u64),
            State::UntilClose => State::UntilClose,
            _ => unreachable!("only body states take bytes"),
        };
        n
    }

    /// Records `len` missing bytes at the current end of the stream.
    pub fn gap(&mut self, ts: u64, len: u64) {
        if self.is_dead() || self.eof || len == 0 {
            return;
        }
        let at = self.tail;
        self.tail += len;
        self.gaps.push_back((at, len));
        // Stream offsets after the gap move on by its length.
        self.marks.push_back((at, ts));
        self.last_ts = ts;
    }

    /// The stream ended.
    pub fn eof(&mut self) {
        self.eof = true;
    }

    fn ts_at(&self, abs: u64) -> u64 {
        let i = self.marks.partition_point(|m| m.0 <= abs);
        if i == 0 {
            self.marks.front().map_or(self.last_ts, |m| m.1)
        } else {
            self.marks[i - 1].1
        }
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.abs += n as u64;
        // Keep the mark that covers the new position.
        while self.marks.len() > 1 && self.marks[1].0 <= self.abs {
            self.marks.pop_front();
        }
    }

    /// The next event, if the bytes so far allow one. `ctx` describes the request the next
    /// response answers (`None`: not known yet; responses wait for it).
    pub fn next_event(&mut self, ctx: Option<ReqCtx>) -> Option<Event> {
        if std::mem::take(&mut self.lost_next) {
            return Some(Event::Lost);
        }
        loop {
            if self.is_dead() || (self.paused && matches!(self.state, State::Idle)) {
                return None;
            }
            let limit = match self.gaps.front() {
                Some(&(at, _)) => (at - self.abs) as usize,
                None => self.buf.len() - self.start,
            };
            match self.parse(limit, ctx) {
                Parsed::Progress(n, ev) => {
                    self.consume(n);
                    if ev.is_some() {
                        return ev;
                    }
                    if n == 0 {
                        // A state change without bytes: go round again.
                        continue;
                    }
                }
                Parsed::Blocked => return None,
                Parsed::Need => {
                    if let Some(&(at, len)) = self.gaps.front()
                        && at == self.abs + limit as u64
                    {
                        // Everything before the gap is in; the rest of it is unusable.
                        self.consume(limit);
                        self.gaps.pop_front();
                        self.abs += len;
                        if let Some(ev) = self.apply_gap(len) {
                            return Some(ev);
                        }
                        continue;
                    }
                    if self.eof && !self.eof_done && self.gaps.is_empty() {
                        self.eof_done = true;
                        return self.apply_eof();
                    }
                    return None;
                }
            }
        }
    }

    fn done(&mut self) -> Event {
        let body = self.body.take().unwrap_or_else(|| Body::empty(0));
        let trailers = if self.trailer_bytes.is_empty() {
            None
        } else {
            let raw = std::mem::take(&mut self.trailer_bytes);
            parse_trailers(raw)
        };
        self.state = State::Idle;
        Event::Done {
            body,
            trailers,
            ts: self.last_ts,
        }
    }

    fn apply_gap(&mut self, len: u64) -> Option<Event> {
        match self.state {
            State::Length(left) | State::ChunkData(left) if len <= left => {
                if let Some(b) = self.body.as_mut() {
                    b.skip(len);
                }
                self.state = match self.state {
                    State::Length(_) => State::Length(left - len),
                    // The chunk's data ends with the gap: its CRLF comes next.
                    _ if len == left => State::ChunkEnd,
                    _ => State::ChunkData(left - len),
                };
                if matches!(self.state, State::Length(0)) {
                    self.counts.gapped += 1;
                    return Some(self.done());
                }
                None
            }
            State::UntilClose => {
                if let Some(b) = self.body.as_mut() {
                    b.skip(len);
                }
                None
            }
            State::Idle => {
                // Between messages (or within a head): the gap holds the start of at least one
                // message, lost, whether or not some of its bytes came before it (a ring that
                // drops one segment holding one whole response is the common case).
                self.state = State::Resync;
                self.skipped_in_resync = 0;
                self.resync_here = true;
                self.counts.gapped += 1;
                Some(Event::Lost)
            }
            State::Resync | State::Dead => None,
            _ => {
                // Inside a body but the gap runs past it: the message ends here, incomplete.
                // Past a Content-Length body's end the next message starts, so its start is
                // lost too (the end of a chunked body's framing may be all the gap held).
                if let Some(b) = self.body.as_mut() {
                    b.skip(0);
                }
                self.lost_next = matches!(self.state, State::Length(left) if len > left);
                self.counts.gapped += 1;
                let ev = self.done();
                self.state = State::Resync;
                self.skipped_in_resync = 0;
                self.resync_here = true;
                Some(ev)
            }
        }
    }

    fn apply_eof(&mut self) -> Option<Event> {
        match self.state {
            State::UntilClose => Some(self.done()),
            State::Length(_)
            | State::ChunkData(_)
            | State::ChunkSize
            | State::ChunkEnd
            | State::Trailers => {
                // Cut short by the end of the stream.
                if let Some(b) = self.body.as_mut() {
                    b.truncated_by_end();
                }
                Some(self.done())
            }
            State::Idle if self.start < self.buf.len() => {
                self.state = State::Resync;
                Some(Event::Lost)
            }
            _ => None,
        }
    }

    fn malformed(&mut self) -> Parsed {
        self.counts.malformed += 1;
        self.state = State::Resync;
        self.skipped_in_resync = 0;
        self.resync_here = false;
        self.body = None;
        self.trailer_bytes.clear();
        // Skip at least the first byte so the same start is not found again.
        Parsed::Progress(1, Some(Event::Lost))
    }

    fn parse(&mut self, limit: usize, ctx: Option<ReqCtx>) -> Parsed {
        let avail_start = self.start;
        match self.state {
            State::Dead => Parsed::Need,
            State::Idle => {
                if limit == 0 {
                    return Parsed::Need;
                }
                self.parse_head(avail_start, limit, ctx)
            }
            State::Resync => self.resync(avail_start, limit),
            State::Length(left) => {
                let n = (left.min(limit as u64)) as usize;
                if n == 0 {
                    return if left == 0 {
                        Parsed::Progress(0, Some(self.done()))
                    } else {
                        Parsed::Need
                    };
                }
                self.body
                    .as_mut()
                    .expect("body")
                    .push(&self.buf[avail_start..avail_start + n]);
                let left = left - n as u64;
                self.state = State::Length(left);
                if left == 0 {
                    self.last_ts = self.ts_at(self.abs + n as u64 - 1);
                    Parsed::Progress(n, Some(self.done()))
                } else {
                    Parsed::Progress(n, None)
                }
            }
            State::UntilClose => {
                if limit == 0 {
                    return Parsed::Need;
                }
                self.body
                    .as_mut()
                    .expect("body")
                    .push(&self.buf[avail_start..avail_start + limit]);
                Parsed::Progress(limit, None)
            }
            State::ChunkSize => {
                let avail = &self.buf[avail_start..avail_start + limit];
                let Some(nl) = memchr_nl(avail) else {
                    return if avail.len() > 4096 {
                        self.malformed()
                    } else {
                        Parsed::Need
                    };
                };
                let line = &avail[..nl];
                let hex_len = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                // Leading zeros are taken: nginx, Apache and Node refuse only a size that
                // overflows.
                let size = line[..hex_len]
                    .iter()
                    .try_fold(0u64, |n, b| {
                        let digit = (*b as char).to_digit(16).expect("a hex digit");
                        n.checked_mul(16)?.checked_add(u64::from(digit))
                    })
                    .filter(|_| hex_len > 0);
                let Some(size) = size else {
                    return self.malformed();
                };
                let rest = &line[hex_len..];
                if !rest
                    .first()
                    .is_none_or(|b| matches!(b, b';' | b'\r' | b' ' | b'\t'))
                {
                    return self.malformed();
                }
                self.state = if size == 0 {
                    State::Trailers
                } else {
                    State::ChunkData(size)
                };
                Parsed::Progress(nl + 1, None)
            }
            State::ChunkData(left) => {
                let n = (left.min(limit as u64)) as usize;
                if n == 0 {
                    return Parsed::Need;
                }
                self.body
                    .as_mut()
                    .expect("body")
                    .push(&self.buf[avail_start..avail_start + n]);
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::ChunkEnd
                } else {
                    State::ChunkData(left)
                };
                Parsed::Progress(n, None)
            }
            State::ChunkEnd => {
                let avail = &self.buf[avail_start..avail_start + limit];
                match avail {
                    [b'\r', b'\n', ..] => {
                        self.state = State::ChunkSize;
                        Parsed::Progress(2, None)
                    }
                    [b'\n', ..] => {
                        self.state = State::ChunkSize;
                        Parsed::Progress(1, None)
                    }
                    [] | [b'\r'] => Parsed::Need,
                    _ => self.malformed(),
                }
            }
            State::Trailers => {
                let avail = &self.buf[avail_start..avail_start + limit];
                let Some(nl) = memchr_nl(avail) else {
                    return if avail.len() + self.trailer_bytes.len() > self.settings.max_head {
                        self.malformed()
                    } else {
                        Parsed::Need
                    };
                };
                let line = &avail[..nl + 1];
                if line == b"\r\n" || line == b"\n" {
                    self.last_ts = self.ts_at(self.abs + nl as u64);
                    if !self.trailer_bytes.is_empty() {
                        self.trailer_bytes.extend_from_slice(b"\r\n");
                    }
                    return Parsed::Progress(nl + 1, Some(self.done()));
                }
                if self.trailer_bytes.len() + line.len() > self.settings.max_head {
                    return self.malformed();
                }
                self.trailer_bytes.extend_from_slice(line);
                Parsed::Progress(nl + 1, None)
            }
        }
    }

    /// Skips `n` bytes while resynchronising; abandons the stream past `max_resync`.
    fn skip(&mut self, n: usize, then: Parsed) -> Parsed {
        self.counts.skipped += n as u64;
        self.skipped_in_resync += n as u64;
        if self.skipped_in_resync > self.settings.max_resync as u64 {
            self.kill();
            return Parsed::Progress(0, Some(Event::Abandoned));
        }
        match then {
            Parsed::Need if n > 0 => Parsed::Progress(n, None),
            other => other,
        }
    }

    /// Looks for the next line that starts like a message of this side (or, right after a gap,
    /// for one starting here).
    fn resync(&mut self, at: usize, limit: usize) -> Parsed {
        let avail = &self.buf[at..at + limit];
        let mut pos = 0;
        if !self.resync_here {
            let Some(i) = memchr_nl(avail) else {
                return self.skip(avail.len(), Parsed::Need);
            };
            self.resync_here = true;
            return self.skip(i + 1, Parsed::Progress(i + 1, None));
        }
        loop {
            let cand = &avail[pos..];
            let verdict = match self.side {
                Side::Request => looks_like_request(cand),
                Side::Response => looks_like_response(cand),
            };
            match verdict {
                Some(true) => {
                    self.state = State::Idle;
                    return self.skip(pos, Parsed::Progress(pos, None));
                }
                // Too short to tell: wait for more.
                None => return self.skip(pos, Parsed::Need),
                Some(false) => {}
            }
            match memchr_nl(cand) {
                Some(i) => pos += i + 1,
                None => return self.skip(avail.len(), Parsed::Need),
            }
        }
    }

    fn parse_head(&mut self, at: usize, limit: usize, ctx: Option<ReqCtx>) -> Parsed {
        let avail = &self.buf[at..at + limit];
        // Tolerate empty lines between messages (RFC 9112 section 2.2).
        let lead = avail
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        if lead > 0 {
            return Parsed::Progress(lead, None);
        }
        // A head is parsed once its empty line has come: one sent a few bytes at a time would
        // otherwise be parsed again at every segment (and grown into its field array each time),
        // which a client could use to burn the daemon's time. Its bytes are looked through once.
        let seen = match self.head_seen {
            (at, n) if at == self.abs => n,
            _ => 0,
        };
        if !has_head_end(&avail[seen.saturating_sub(2)..]) {
            if avail.len() > self.settings.max_head {
                return self.malformed();
            }
            self.head_seen = (self.abs, avail.len());
            return Parsed::Need;
        }
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut big: Vec<httparse::Header<'_>>;
        let mut n_fields = fields.len();
        loop {
            let hdrs: &mut [httparse::Header<'_>] = if n_fields <= 64 {
                &mut fields[..]
            } else {
                big = vec![httparse::EMPTY_HEADER; n_fields];
                &mut big[..]
            };
            let r = match self.side {
                Side::Request => parse_request(avail, hdrs),
                Side::Response => parse_response(avail, hdrs),
            };
            match r {
                Err(httparse::Error::TooManyHeaders) if n_fields < self.settings.max_fields => {
                    n_fields = (n_fields * 4).min(self.settings.max_fields);
                    continue;
                }
                Err(_) => return self.malformed(),
                Ok(None) => {
                    return if avail.len() > self.settings.max_head {
                        self.malformed()
                    } else {
                        Parsed::Need
                    };
                }
                Ok(Some(h)) => {
                    let len = h.len;
                    let rewritten = h.rewritten;
                    // Interim responses (100 Continue, 102, 103) are skipped; 101 is final.
                    if self.side == Side::Response
                        && (100..200).contains(&h.status)
                        && h.status != 101
                    {
                        self.counts.interim += 1;
                        return Parsed::Progress(len, None);
                    }
                    if self.side == Side::Response && ctx.is_none() {
                        return Parsed::Blocked;
                    }
                    let raw = match rewritten {
                        Some(r) => Bytes::from(r),
                        None => Bytes::copy_from_slice(&avail[..len]),
                    };
                    let head = Head {
                        raw,
                        method: h.method,
                        target: h.target,
                        reason: h.reason,
                        status: h.status,
                        version: h.version,
                        fields: h.fields,
                    };
                    let ts = self.ts_at(self.abs);
                    self.last_ts = self.ts_at(self.abs + len as u64 - 1);
                    let Some(framing) = framing(self.side, &head, ctx) else {
                        return self.malformed();
                    };
                    // Requests too: Express inflates a gzip or deflate request body by default,
                    // so what it hands the application is the decoded body.
                    let coding = if self.settings.decode {
                        Coding::of(head.header_all("content-encoding"))
                    } else {
                        Coding::Identity
                    };
                    let mut body = Body::new(self.settings.body_cap, coding);
                    if let Framing::Length(n) = framing {
                        body.reserve(n);
                    }
                    self.body = Some(body);
                    self.state = match framing {
                        Framing::None => State::Length(0),
                        Framing::Length(n) => State::Length(n),
                        Framing::Chunked => State::ChunkSize,
                        Framing::UntilClose => State::UntilClose,
                        Framing::Opaque => State::Length(0),
                    };
                    if matches!(framing, Framing::Opaque) {
                        // Upgrade or tunnel: the message ends here; the connection does not
                        // speak HTTP after it. The connection kills both sides after `Done`.
                        self.state = State::Length(0);
                    }
                    return Parsed::Progress(
                        len,
                        Some(Event::Head {
                            head: Box::new(head),
                            ts,
                        }),
                    );
                }
            }
        }
    }
}

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Content-Length.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the end of the stream (responses only).
    UntilClose,
    /// The connection leaves HTTP after this message (101, CONNECT 2xx).
    Opaque,
}

/// The body framing of a message (RFC 9112 section 6.3); `None` when it is ambiguous or invalid
/// (the message is malformed).
pub fn framing(side: Side, head: &Head, ctx: Option<ReqCtx>) -> Option<Framing> {
    if side == Side::Response {
        let ctx = ctx.unwrap_or(ReqCtx {
            head: false,
            connect: false,
        });
        if head.status == 101 || (ctx.connect && (200..300).contains(&head.status)) {
            return Some(Framing::Opaque);
        }
        if ctx.head || head.status < 200 || head.status == 204 || head.status == 304 {
            return Some(Framing::None);
        }
    }
    let mut te_chunked = None;
    for v in head.header_all("transfer-encoding") {
        for coding in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            te_chunked = Some(coding.eq_ignore_ascii_case("chunked"));
        }
    }
    match te_chunked {
        Some(true) => return Some(Framing::Chunked),
        // A transfer coding other than chunked last: a response runs to the end; a request
        // cannot be framed (RFC 9112 section 6.3, item 4).
        Some(false) => {
            return match side {
                Side::Response => Some(Framing::UntilClose),
                Side::Request => None,
            };
        }
        None => {}
    }
    let mut len: Option<u64> = None;
    for v in head.header_all("content-length") {
        for part in v.split(',').map(str::trim) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) || part.len() > 18 {
                return None;
            }
            let n: u64 = part.parse().ok()?;
            if len.is_some_and(|l| l != n) {
                return None;
            }
            len = Some(n);
        }
    }
    Some(match (len, side) {
        (Some(n), _) => Framing::Length(n),
        (None, Side::Request) => Framing::None,
        (None, Side::Response) => Framing::UntilClose,
    })
}

struct ParsedHead {
    /// Bytes of the stream the head takes.
    len: usize,
    /// The head as read, when it is not the stream's bytes (see [`normalise_request`]); the spans
    /// are within it.
    rewritten: Option<Vec<u8>>,
    method: std::ops::Range<u32>,
    target: std::ops::Range<u32>,
    reason: std::ops::Range<u32>,
    status: u16,
    version: u8,
    fields: Vec<(std::ops::Range<u32>, std::ops::Range<u32>)>,
}

fn collect_fields(
    base: &[u8],
    hdrs: &[httparse::Header<'_>],
) -> Vec<(std::ops::Range<u32>, std::ops::Range<u32>)> {
    hdrs.iter()
        .map(|h| (span(base, h.name.as_bytes()), span(base, h.value)))
        .collect()
}

/// A request head. httparse is stricter than the servers that take requests: nginx, Apache and
/// Node read heads it refuses, and one refused head would hide the whole request (and an attack
/// in it) from the models. A head httparse refuses is read again as those servers read it
/// ([`normalise_request`]): the rewritten head is kept, with the length of the original.
fn parse_request<'b>(
    buf: &'b [u8],
    hdrs: &mut [httparse::Header<'b>],
) -> Result<Option<ParsedHead>, httparse::Error> {
    match parse_request_as_sent(buf, hdrs) {
        Err(e) if e != httparse::Error::TooManyHeaders => {
            let Some(norm) = normalise_request(buf) else {
                return Err(e);
            };
            let mut fields = vec![httparse::EMPTY_HEADER; hdrs.len()];
            match parse_request_as_sent(&norm.raw, &mut fields)? {
                Some(mut h) if h.len == norm.raw.len() => {
                    h.len = norm.len;
                    h.rewritten = Some(norm.raw);
                    Ok(Some(h))
                }
                // The rewritten head ends elsewhere than the original: read neither.
                _ => Err(e),
            }
        }
        other => other,
    }
}

/// A request head rewritten as lenient servers read it.
struct Normalised {
    /// The rewritten head.
    raw: Vec<u8>,
    /// The length of the original head in the stream.
    len: usize,
}

/// SP or HTAB.
fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ws(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s
        && is_ws(*first)
    {
        s = rest;
    }
    while let [rest @ .., last] = s
        && is_ws(*last)
    {
        s = rest;
    }
    s
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A field that frames the request's body: a line naming one is never dropped or rewritten.
fn is_framing_name(name: &[u8]) -> bool {
    let name = trim_ws(name).to_ascii_lowercase();
    [&b"content-length"[..], b"transfer-encoding"]
        .iter()
        .any(|f| memchr::memmem::find(&name, f).is_some())
}

/// The request line rewritten, or `None` when servers refuse it too: the target's bytes outside
/// ASCII percent-encoded (servers decode them to the same bytes), and any `HTTP/1.x` version
/// (nginx and Apache take `HTTP/1.2` or `HTTP/1.10`) read as `HTTP/1.1` (`HTTP/1.0` when the
/// minor digits are all zero).
fn normalise_request_line(line: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let method_len = line.iter().take_while(|b| is_tchar(**b)).count();
    if method_len == 0 {
        return None;
    }
    let (method, rest) = line.split_at(method_len);
    if rest.first().is_some_and(|b| *b != b' ') {
        return None;
    }
    let sp = rest.iter().take_while(|b| **b == b' ').count();
    let rest = &rest[sp..];
    let target_len = memchr::memchr(b' ', rest).unwrap_or(rest.len());
    let (target, rest) = rest.split_at(target_len);
    out.extend_from_slice(method);
    out.push(b' ');
    for &c in target {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.extend_from_slice(format!("%{c:02X}").as_bytes());
        }
    }
    let version = &rest[rest.iter().take_while(|b| **b == b' ').count()..];
    out.push(b' ');
    match version.strip_prefix(b"HTTP/1.") {
        Some(minor) if !minor.is_empty() && minor.iter().all(u8::is_ascii_digit) => {
            let zero = minor.iter().all(|b| *b == b'0');
            out.extend_from_slice(if zero { b"HTTP/1.0" } else { b"HTTP/1.1" });
        }
        _ => out.extend_from_slice(version),
    }
    out.extend_from_slice(b"\r\n");
    Some(())
}

/// A field value with its control bytes (nginx takes all but NUL, CR and LF) read as spaces.
fn value_of(v: &[u8]) -> Vec<u8> {
    v.iter()
        .map(|&b| {
            if (b < 0x20 && b != b'\t') || b == 0x7f {
                b' '
            } else {
                b
            }
        })
        .collect()
}

/// The head at the start of `buf` as lenient servers read it, for one httparse refuses; `None`
/// when servers refuse it too (or might read its framing differently). Besides the request line
/// ([`normalise_request_line`]):
/// - A field line whose name is empty or has bytes outside tchar, or that has no colon, is
///   dropped, as nginx does (`ignore_invalid_headers on`, its default); one that names
///   Content-Length or Transfer-Encoding makes the head unreadable instead.
/// - Control bytes in a value (nginx refuses NUL, CR and LF only) are read as spaces.
/// - A line folded onto the one before (obs-fold) is joined to it with one space, as Apache does.
///
/// `buf` holds the whole head (the parser waits for its empty line: [`has_head_end`]); what
/// follows it (a body, pipelined requests) is not copied.
fn normalise_request(buf: &[u8]) -> Option<Normalised> {
    let mut out = Vec::with_capacity(buf.len().min(4096) + 16);
    let nl = memchr_nl(buf)?;
    let line = &buf[..nl];
    normalise_request_line(line.strip_suffix(b"\r").unwrap_or(line), &mut out)?;
    let mut pos = nl + 1;
    // Kept field lines, without their line ends.
    let mut lines: Vec<Vec<u8>> = Vec::new();
    // The line before was kept (a line folded onto a dropped one is dropped with it).
    let mut kept = false;
    let len = loop {
        let i = memchr_nl(&buf[pos..])?;
        let line = &buf[pos..pos + i];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += i + 1;
        if line.is_empty() {
            break pos;
        }
        if line.iter().any(|b| *b == 0 || *b == b'\r') {
            return None;
        }
        if is_ws(line[0]) {
            if !kept {
                continue;
            }
            let last = lines.last_mut().expect("a kept line");
            let colon = memchr::memchr(b':', last).expect("a kept line has a colon");
            if is_framing_name(&last[..colon]) {
                return None;
            }
            while last.len() > colon + 1 && last.last().is_some_and(|b| is_ws(*b)) {
                last.pop();
            }
            let cont = trim_ws(line);
            if !cont.is_empty() {
                last.push(b' ');
                last.extend(value_of(cont));
            }
            continue;
        }
        let colon = memchr::memchr(b':', line);
        let name = &line[..colon.unwrap_or(line.len())];
        let Some(colon) = colon.filter(|_| !name.is_empty() && name.iter().all(|b| is_tchar(*b)))
        else {
            if is_framing_name(name) {
                return None;
            }
            kept = false;
            continue;
        };
        let value = &line[colon + 1..];
        let clean = value_of(value);
        if clean != value && is_framing_name(name) {
            return None;
        }
        let mut l = name.to_vec();
        l.push(b':');
        l.extend(clean);
        lines.push(l);
        kept = true;
    };
    for l in &lines {
        out.extend_from_slice(l);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some(Normalised { raw: out, len })
}

fn parse_request_as_sent<'b>(
    buf: &'b [u8],
    hdrs: &mut [httparse::Header<'b>],
) -> Result<Option<ParsedHead>, httparse::Error> {
    let mut req = httparse::Request::new(hdrs);
    let mut cfg = httparse::ParserConfig::default();
    cfg.allow_multiple_spaces_in_request_line_delimiters(true);
    match cfg.parse_request(&mut req, buf)? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(len) => Ok(Some(ParsedHead {
            len,
            rewritten: None,
            method: span(buf, req.method.unwrap_or("").as_bytes()),
            target: span(buf, req.path.unwrap_or("").as_bytes()),
            reason: 0..0,
            status: 0,
            version: req.version.unwrap_or(1),
            fields: collect_fields(buf, req.headers),
        })),
    }
}

fn parse_response<'b>(
    buf: &'b [u8],
    hdrs: &mut [httparse::Header<'b>],
) -> Result<Option<ParsedHead>, httparse::Error> {
    let mut resp = httparse::Response::new(hdrs);
    let mut cfg = httparse::ParserConfig::default();
    cfg.allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_multiple_spaces_in_response_status_delimiters(true);
    match cfg.parse_response(&mut resp, buf)? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(len) => Ok(Some(ParsedHead {
            len,
            rewritten: None,
            method: 0..0,
            target: 0..0,
            reason: span(buf, resp.reason.unwrap_or("").as_bytes()),
            status: resp.code.unwrap_or(0),
            version: resp.version.unwrap_or(1),
            fields: collect_fields(buf, resp.headers),
        })),
    }
}

fn parse_trailers(mut raw: Vec<u8>) -> Option<Box<Head>> {
    if !raw.ends_with(b"\r\n\r\n") {
        raw.extend_from_slice(b"\r\n");
    }
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let fields = match httparse::parse_headers(&raw, &mut hdrs) {
        Ok(httparse::Status::Complete((_, h))) => collect_fields(&raw, h),
        _ => return None,
    };
    Some(Box::new(Head {
        raw: Bytes::from(raw),
        method: 0..0,
        target: 0..0,
        reason: 0..0,
        status: 0,
        version: 1,
        fields,
    }))
}

/// Whether `b` holds the empty line that ends a head (after a line end, a CRLF or a bare LF).
fn has_head_end(b: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', b).any(|i| matches!(&b[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', b)
}
