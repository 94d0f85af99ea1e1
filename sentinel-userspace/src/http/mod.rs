//! HTTP/1.x over reassembled TCP streams: requests and responses parsed per direction
//! ([`parser`]), paired per connection into [`Transaction`]s.
//!
//! - **Pairing.** The Nth final response of a connection answers its Nth request (keep-alive and
//!   pipelining). Interim responses (100 Continue, 102, 103) are skipped; 101 and a 2xx answer to
//!   CONNECT end HTTP on that connection. A response is parsed only once the request it answers is
//!   known (HEAD, 204, 304 and 1xx have no body), so the two directions may arrive in any order.
//! - **Bodies.** Content-Length, chunked (de-chunked, trailers kept) or, for responses, until the
//!   connection closes. Bodies are counted in full and kept up to `body_cap`; gzip and deflate
//!   bodies are decoded up to the same cap (and decoding stops there), requests' too (Express
//!   inflates them for the application).
//! - **Latency** is the capture time of the response's first byte minus that of the request's
//!   first byte (the same definition the lab's traffic generator uses).
//! - **Damage.** A gap inside a Content-Length or chunk body keeps the stream in sync (the body
//!   is marked incomplete); a gap or malformed bytes anywhere else drop the message in progress
//!   and the parser resynchronises on the next line that starts like a message. A request lost
//!   that way leaves a placeholder so its response is discarded instead of shifting the pairing.
//!   A direction that finds nothing HTTP-like for `max_resync` bytes is abandoned with its flow.
//!   Requests still unanswered when a flow ends are emitted without a response.

pub mod body;
pub mod head;
pub mod multipart;
pub mod parser;
pub mod transaction;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use serde::Serialize;

use self::parser::{Event, Parser, ParserCounts, ReqCtx, Side, Spare};
pub use self::{
    body::{Body, Decoded},
    head::Head,
    transaction::{Transaction, TransactionRecord},
};
use crate::reassembly::{CloseReason, Dir, FlowInfo, StreamHandler};

/// Limits of the HTTP layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// Body bytes kept per message (after decoding, for coded responses).
    pub body_cap: usize,
    /// Longest message head (and chunk trailer section).
    pub max_head: usize,
    /// Most header fields in a head. Servers take many (nginx has no limit, Node 2000 by
    /// default), so a request with more would be hidden from the models: the default is as many
    /// as a head of `max_head` bytes can hold (a field line takes at least 3 bytes, `a:\n`), which
    /// `max_head` already bounds. A head with more than 64 fields is parsed again with room for
    /// 4 times as many, up to this.
    pub max_fields: usize,
    /// Bytes skipped looking for a message start before the direction is abandoned.
    pub max_resync: usize,
    /// Decode gzip/deflate request and response bodies.
    pub decode: bool,
    /// Requests waiting for responses on one connection before the oldest is given up.
    pub max_pending: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            body_cap: 64 << 10,
            max_head: 64 << 10,
            max_fields: (64 << 10) / 3 + 1,
            max_resync: 64 << 10,
            decode: true,
            max_pending: 64,
        }
    }
}

/// HTTP counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HttpStats {
    /// Connections seen.
    pub connections: u64,
    /// Request heads parsed.
    pub requests: u64,
    /// Final response heads parsed.
    pub responses: u64,
    /// Transactions emitted.
    pub transactions: u64,
    /// Of those, without a response.
    pub unanswered: u64,
    /// Responses whose request was lost (discarded).
    pub unpaired_responses: u64,
    /// Messages lost before their head parsed (gaps, malformed bytes).
    pub lost_messages: u64,
    /// Messages with part of their body lost or cut short.
    pub incomplete_bodies: u64,
    /// Malformed heads or chunk framing.
    pub malformed: u64,
    /// Bytes skipped while resynchronising.
    pub skipped_bytes: u64,
    /// Interim (1xx) responses skipped.
    pub interim: u64,
    /// Connections that left HTTP (101 upgrade, CONNECT tunnel).
    pub upgrades: u64,
    /// Connections abandoned as not HTTP.
    pub abandoned: u64,
    /// Coded (gzip, deflate) request and response bodies decoded.
    pub decoded: u64,
    /// Coded request and response bodies that failed to decode.
    pub decode_failures: u64,
}

impl HttpStats {
    fn add(&mut self, c: ParserCounts) {
        self.malformed += c.malformed;
        self.skipped_bytes += c.skipped;
        self.interim += c.interim;
    }
}

/// A finished response: kept body, body length, decoding, complete, trailers.
type RespDone = (Vec<u8>, u64, Decoded, bool, Option<Box<Head>>);

struct Pending {
    /// A request lost to a gap: its response is discarded.
    lost: bool,
    head: Option<Box<Head>>,
    ts: u64,
    ctx: ReqCtx,
    req: Option<(Vec<u8>, u64, bool)>,
    resp_head: Option<(Box<Head>, u64)>,
    /// Body, trailers, complete.
    resp: Option<RespDone>,
    /// The response was lost (its part of the pairing is consumed).
    resp_lost: bool,
    /// The request asked to leave HTTP (Upgrade, CONNECT): requests after it wait for this
    /// response.
    upgrade: bool,
}

impl Pending {
    /// Bytes it holds: its heads and kept bodies, and the entry itself.
    fn mem(&self) -> usize {
        let head = |h: &Option<Box<Head>>| h.as_ref().map_or(0, |h| h.mem());
        256 + head(&self.head)
            + self.req.as_ref().map_or(0, |(b, _, _)| b.capacity())
            + self.resp_head.as_ref().map_or(0, |(h, _)| h.mem())
            + self
                .resp
                .as_ref()
                .map_or(0, |(b, _, _, _, trailers)| b.capacity() + head(trailers))
    }

    fn answered(&self) -> bool {
        self.resp.is_some() || self.resp_lost
    }
    fn ready(&self) -> bool {
        self.req.is_some() && self.answered()
    }
}

/// One connection's HTTP state.
pub struct HttpConn {
    req: Parser,
    resp: Parser,
    pending: VecDeque<Pending>,
    /// Entries at the front of `pending` whose response is complete or lost.
    answered: usize,
    /// Requests given up unanswered (beyond `max_pending`), oldest first: their responses,
    /// when they come, are read (framed by these) and dropped, so that the pairing of the
    /// later ones holds.
    given_up: VecDeque<ReqCtx>,
    dead: bool,
}

/// Requests given up unanswered whose responses a connection still expects, at most.
const MAX_GIVEN_UP: usize = 4096;

impl HttpConn {
    fn new(settings: HttpSettings, spares: &mut Vec<Spare>) -> Self {
        let mut spare = || spares.pop().unwrap_or_default();
        Self {
            req: Parser::with_spare(Side::Request, settings, spare()),
            resp: Parser::with_spare(Side::Response, settings, spare()),
            pending: VecDeque::new(),
            answered: 0,
            given_up: VecDeque::new(),
            dead: false,
        }
    }
}

/// The HTTP layer as a reassembly [`StreamHandler`]: collects transactions in `out`.
pub struct HttpHandler {
    settings: HttpSettings,
    stats: HttpStats,
    /// Transactions completed and not yet taken.
    pub out: Vec<Transaction>,
    /// Parser buffers of ended connections, for new ones (at most [`MAX_SPARES`]).
    spares: Vec<Spare>,
}

/// Spare parser buffers kept (each at most [`Spare::MAX_BYTES`]): 256 KiB at most.
const MAX_SPARES: usize = 64;

impl HttpHandler {
    /// A handler with these limits.
    pub fn new(settings: HttpSettings) -> Self {
        Self {
            settings,
            stats: HttpStats::default(),
            out: Vec::new(),
            spares: Vec::new(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &HttpStats {
        &self.stats
    }

    fn pump(&mut self, c: &mut HttpConn, flow: &FlowInfo) {
        loop {
            let mut progress = false;
            while let Some(ev) = c.req.next_event(None) {
                progress = true;
                self.on_request(c, ev);
            }
            loop {
                let ctx = match c.given_up.front() {
                    Some(&ctx) => Some(ctx),
                    None => c.pending.get(c.answered).map(|p| p.ctx),
                };
                let Some(ev) = c.resp.next_event(ctx) else {
                    break;
                };
                progress = true;
                self.on_response(c, ev);
            }
            self.stats.add(std::mem::take(&mut c.req.counts));
            self.stats.add(std::mem::take(&mut c.resp.counts));
            self.emit_ready(c, flow);
            if !progress {
                break;
            }
        }
    }

    fn on_request(&mut self, c: &mut HttpConn, ev: Event) {
        match ev {
            Event::Head { head, ts } => {
                self.stats.requests += 1;
                let m = head.method();
                let ctx = ReqCtx {
                    head: m.eq_ignore_ascii_case("HEAD"),
                    connect: m.eq_ignore_ascii_case("CONNECT"),
                };
                let upgrade = ctx.connect || head.header("upgrade").is_some();
                if upgrade {
                    c.req.pause();
                }
                c.pending.push_back(Pending {
                    lost: false,
                    head: Some(head),
                    ts,
                    ctx,
                    req: None,
                    resp_head: None,
                    resp: None,
                    resp_lost: false,
                    upgrade,
                });
            }
            Event::Done { body, .. } => {
                if let Some(p) = c.pending.iter_mut().rev().find(|p| p.req.is_none()) {
                    let complete = body.gap_bytes == 0 && !body.cut_short;
                    if !complete {
                        self.stats.incomplete_bodies += 1;
                    }
                    let (kept, decoded, len) = body.finish();
                    self.count_decoding(decoded, complete);
                    p.req = Some((kept, len, complete));
                }
            }
            Event::Lost => {
                self.stats.lost_messages += 1;
                // If a head was parsed but its body was not complete, that request stays; the
                // placeholder stands for a request whose head was lost.
                c.pending.push_back(Pending {
                    lost: true,
                    head: None,
                    ts: 0,
                    ctx: ReqCtx {
                        head: false,
                        connect: false,
                    },
                    req: Some((Vec::new(), 0, false)),
                    resp_head: None,
                    resp: None,
                    resp_lost: false,
                    upgrade: false,
                });
            }
            Event::Abandoned => self.abandon(c),
        }
    }

    /// Counts how decoding a coded body went (a body cut short is not a failure of its coding).
    fn count_decoding(&mut self, decoded: Decoded, complete: bool) {
        match decoded {
            Decoded::Yes | Decoded::Capped => self.stats.decoded += 1,
            Decoded::Failed if complete => self.stats.decode_failures += 1,
            _ => {}
        }
    }

    fn on_response(&mut self, c: &mut HttpConn, ev: Event) {
        if !c.given_up.is_empty() && !matches!(ev, Event::Abandoned) {
            // The response of a request given up: dropped when it ends.
            if matches!(ev, Event::Head { .. }) {
                self.stats.responses += 1;
                self.stats.unpaired_responses += 1;
            } else {
                c.given_up.pop_front();
                if matches!(ev, Event::Lost) {
                    self.stats.lost_messages += 1;
                }
            }
            return;
        }
        match ev {
            Event::Head { head, ts } => {
                self.stats.responses += 1;
                let leaves_http = head.status == 101
                    || (c.pending.get(c.answered).is_some_and(|p| p.ctx.connect)
                        && (200..300).contains(&head.status));
                if leaves_http {
                    self.stats.upgrades += 1;
                }
                if let Some(p) = c.pending.get_mut(c.answered) {
                    p.resp_head = Some((head, ts));
                }
            }
            Event::Done { body, trailers, .. } => {
                let complete = body.gap_bytes == 0 && !body.cut_short;
                if !complete {
                    self.stats.incomplete_bodies += 1;
                }
                let (kept, decoded, len) = body.finish();
                self.count_decoding(decoded, complete);
                let mut upgrade = false;
                if let Some(p) = c.pending.get_mut(c.answered) {
                    upgrade = p.resp_head.as_ref().is_some_and(|(h, _)| {
                        h.status == 101 || (p.ctx.connect && (200..300).contains(&h.status))
                    });
                    if p.upgrade && !upgrade {
                        // Refused: the connection stays HTTP.
                        c.req.resume();
                    }
                    p.resp = Some((kept, len, decoded, complete, trailers));
                    c.answered += 1;
                }
                if upgrade {
                    c.req.kill();
                    c.resp.kill();
                    c.dead = true;
                }
            }
            Event::Lost => {
                self.stats.lost_messages += 1;
                if let Some(p) = c.pending.get_mut(c.answered) {
                    p.resp_lost = true;
                    if p.upgrade {
                        c.req.resume();
                    }
                    c.answered += 1;
                }
            }
            Event::Abandoned => self.abandon(c),
        }
    }

    fn abandon(&mut self, c: &mut HttpConn) {
        if !c.dead {
            self.stats.abandoned += 1;
        }
        c.req.kill();
        c.resp.kill();
        c.dead = true;
    }

    /// Emits the front transactions that are complete (and, with `all`, every one left).
    fn emit_ready(&mut self, c: &mut HttpConn, flow: &FlowInfo) {
        while c.pending.front().is_some_and(Pending::ready) {
            let p = c.pending.pop_front().expect("front");
            c.answered = c.answered.saturating_sub(1);
            self.emit(p, flow);
        }
        // Too many requests without responses: give the oldest up.
        while c.pending.len() > self.settings.max_pending && c.answered == 0 {
            let Some(front) = c.pending.front() else {
                break;
            };
            if front.resp_head.is_some() {
                break;
            }
            let mut p = c.pending.pop_front().expect("front");
            if p.req.is_none() {
                p.req = Some((Vec::new(), 0, false));
            }
            if c.given_up.len() >= MAX_GIVEN_UP {
                // A server that answers nothing: past this many, pairing is lost anyway.
                c.given_up.pop_front();
            }
            c.given_up.push_back(p.ctx);
            self.emit(p, flow);
        }
    }

    fn emit(&mut self, p: Pending, flow: &FlowInfo) {
        if p.lost {
            if p.resp.is_some() || p.resp_head.is_some() {
                self.stats.unpaired_responses += 1;
            }
            return;
        }
        let Some(request) = p.head else {
            return;
        };
        let (req_body, req_bytes, req_complete) = p.req.unwrap_or((Vec::new(), 0, false));
        let (response, resp_ts_ns) = match p.resp_head {
            Some((h, ts)) => (Some(h), Some(ts)),
            None => (None, None),
        };
        let (resp_body, resp_bytes, resp_decoded, resp_complete, resp_trailers) =
            p.resp.unwrap_or((Vec::new(), 0, Decoded::No, false, None));
        if response.is_none() {
            self.stats.unanswered += 1;
        }
        self.stats.transactions += 1;
        self.out.push(Transaction {
            ts_ns: p.ts,
            client: flow.client,
            server: flow.server,
            request,
            req_body,
            req_bytes,
            req_complete,
            response,
            resp_ts_ns,
            resp_body,
            resp_bytes,
            resp_decoded,
            resp_complete: resp_complete && resp_ts_ns.is_some(),
            resp_trailers,
            principal: None,
        });
    }
}

impl StreamHandler for HttpHandler {
    type Conn = HttpConn;

    fn open(&mut self, _flow: &FlowInfo, _ts_ns: u64) -> HttpConn {
        self.stats.connections += 1;
        HttpConn::new(self.settings, &mut self.spares)
    }

    fn data(&mut self, c: &mut HttpConn, flow: &FlowInfo, dir: Dir, ts_ns: u64, data: &[u8]) {
        if c.dead {
            return;
        }
        match dir {
            Dir::ToServer => c.req.push(ts_ns, data),
            Dir::ToClient => c.resp.push(ts_ns, data),
        }
        self.pump(c, flow);
    }

    fn gap(&mut self, c: &mut HttpConn, flow: &FlowInfo, dir: Dir, ts_ns: u64, len: u64) {
        if c.dead {
            return;
        }
        match dir {
            Dir::ToServer => c.req.gap(ts_ns, len),
            Dir::ToClient => c.resp.gap(ts_ns, len),
        }
        self.pump(c, flow);
    }

    fn fin(&mut self, c: &mut HttpConn, flow: &FlowInfo, dir: Dir, _ts_ns: u64) {
        if c.dead {
            return;
        }
        match dir {
            Dir::ToServer => c.req.eof(),
            Dir::ToClient => c.resp.eof(),
        }
        self.pump(c, flow);
    }

    fn close(&mut self, mut c: HttpConn, flow: &FlowInfo, _ts_ns: u64, _reason: CloseReason) {
        if !c.dead {
            c.req.eof();
            c.resp.eof();
            self.pump(&mut c, flow);
        }
        // Whatever is left: requests without (complete) responses.
        while let Some(mut p) = c.pending.pop_front() {
            if p.req.is_none() {
                p.req = Some((Vec::new(), 0, false));
            }
            self.emit(p, flow);
        }
        for spare in [c.req.into_spare(), c.resp.into_spare()]
            .into_iter()
            .flatten()
        {
            if self.spares.len() < MAX_SPARES {
                self.spares.push(spare);
            }
        }
    }

    fn mem(c: &HttpConn) -> usize {
        // What pending exchanges hold counts against the flow and global caps: pipelined
        // requests with large bodies, waiting for their responses, hold their bodies here.
        c.req.mem() + c.resp.mem() + c.pending.iter().map(Pending::mem).sum::<usize>()
    }

    fn reserved(c: &HttpConn) -> usize {
        c.req.reserved() + c.resp.reserved()
    }
}
