use std::io::Write as _;

use flate2::{Compression, write::GzEncoder};
use proptest::prelude::*;

use super::*;
use crate::{
    capture::{Segment, synth::Conversation},
    pipeline::{Pipeline, PipelineSettings},
};

const MS: u64 = 1_000_000;
const T0: u64 = 1_700_000_000_000 * MS;

fn addrs() -> (std::net::SocketAddr, std::net::SocketAddr) {
    (
        "198.18.0.100:40000".parse().unwrap(),
        "198.18.0.1:8080".parse().unwrap(),
    )
}

fn run_with(
    segs: impl IntoIterator<Item = Segment>,
    settings: PipelineSettings,
) -> (Vec<Transaction>, crate::pipeline::PipelineStats) {
    let mut p = Pipeline::new(settings);
    let mut out = Vec::new();
    for s in segs {
        p.push(s);
        out.extend(p.drain());
    }
    p.finish();
    out.extend(p.drain());
    (out, p.stats())
}

fn run(segs: impl IntoIterator<Item = Segment>) -> Vec<Transaction> {
    run_with(segs, PipelineSettings::default()).0
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn json_body(n: usize) -> Vec<u8> {
    let mut s = String::from("{\"items\":[");
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"account-{i}\",\"balance\":{}}}",
            i * 37
        ));
    }
    s.push_str("]}");
    s.into_bytes()
}

/// One exchange of the property test, with what the transaction must say.
#[derive(Clone, Debug)]
struct Ex {
    req: Vec<u8>,
    /// Request body sent after a 100 Continue (100-continue exchanges only).
    req_late_body: Vec<u8>,
    interim: Option<Vec<u8>>,
    resp: Vec<u8>,
    method: &'static str,
    path: String,
    query: &'static str,
    status: u16,
    req_bytes: u64,
    resp_bytes: u64,
    req_body: Vec<u8>,
    resp_body: Vec<u8>,
}

fn exchange(kind: u8, i: usize, last_close: bool) -> Ex {
    let path = format!("/api/v1/accounts/{i}");
    let mut ex = Ex {
        req: Vec::new(),
        req_late_body: Vec::new(),
        interim: None,
        resp: Vec::new(),
        method: "GET",
        path: path.clone(),
        query: "",
        status: 200,
        req_bytes: 0,
        resp_bytes: 0,
        req_body: Vec::new(),
        resp_body: Vec::new(),
    };
    let body = json_body(3 + i % 4);
    match kind % 9 {
        // GET with a query, Content-Length response.
        0 => {
            ex.query = "page=2&size=10";
            ex.req = format!("GET {path}?page=2&size=10 HTTP/1.1\r\nHost: api.example\r\nAuthorization: Bearer t{i}\r\nAccept: application/json\r\n\r\n").into_bytes();
            ex.resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            ex.resp.extend_from_slice(&body);
            ex.resp_body = body.clone();
        }
        // POST with a JSON body.
        1 => {
            let rb = br#"{"username":"layla","password":"hunter2"}"#.to_vec();
            ex.method = "POST";
            ex.req = format!("POST {path} HTTP/1.1\r\nHost: api.example\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", rb.len()).into_bytes();
            ex.req.extend_from_slice(&rb);
            ex.req_body = rb;
            ex.status = 401;
            let e = br#"{"error":"invalid credentials"}"#;
            ex.resp = format!(
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\n\r\n",
                e.len()
            )
            .into_bytes();
            ex.resp.extend_from_slice(e);
            ex.resp_body = e.to_vec();
        }
        // Chunked response with a trailer.
        2 => {
            ex.req = format!("GET {path} HTTP/1.1\r\nHost: api.example\r\n\r\n").into_bytes();
            ex.resp =
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
                    .to_vec();
            for part in body.chunks(17) {
                ex.resp
                    .extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
                ex.resp.extend_from_slice(part);
                ex.resp.extend_from_slice(b"\r\n");
            }
            ex.resp.extend_from_slice(b"0\r\nX-Checksum: abc\r\n\r\n");
            ex.resp_body = body.clone();
        }
        // Chunked request.
        3 => {
            ex.method = "PUT";
            ex.req = format!(
                "PUT {path} HTTP/1.1\r\nHost: api.example\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .into_bytes();
            for part in body.chunks(40) {
                ex.req
                    .extend_from_slice(format!("{:X}\r\n", part.len()).as_bytes());
                ex.req.extend_from_slice(part);
                ex.req.extend_from_slice(b"\r\n");
            }
            ex.req.extend_from_slice(b"0\r\n\r\n");
            ex.req_body = body.clone();
            ex.status = 204;
            ex.resp = b"HTTP/1.1 204 No Content\r\n\r\n".to_vec();
        }
        // Gzip response.
        4 => {
            let z = gzip(&body);
            ex.req = format!(
                "GET {path} HTTP/1.1\r\nHost: api.example\r\nAccept-Encoding: gzip\r\n\r\n"
            )
            .into_bytes();
            ex.resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                z.len()
            )
            .into_bytes();
            ex.resp.extend_from_slice(&z);
            ex.resp_bytes = z.len() as u64;
            ex.resp_body = body.clone();
        }
        // 100-continue.
        5 => {
            let rb = body.clone();
            ex.method = "POST";
            ex.req = format!("POST {path} HTTP/1.1\r\nHost: api.example\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", rb.len()).into_bytes();
            ex.req_late_body = rb.clone();
            ex.req_body = rb;
            ex.interim = Some(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec());
            ex.status = 201;
            ex.resp = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}".to_vec();
            ex.resp_body = b"{}".to_vec();
        }
        // HEAD: a Content-Length but no body.
        6 => {
            ex.method = "HEAD";
            ex.req = format!("HEAD {path} HTTP/1.1\r\nHost: api.example\r\n\r\n").into_bytes();
            ex.resp = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec();
        }
        // 304.
        7 => {
            ex.req =
                format!("GET {path} HTTP/1.1\r\nHost: api.example\r\nIf-None-Match: \"x\"\r\n\r\n")
                    .into_bytes();
            ex.status = 304;
            ex.resp = b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".to_vec();
        }
        // DELETE with 204.
        _ => {
            ex.method = "DELETE";
            ex.req = format!("DELETE {path} HTTP/1.1\r\nHost: api.example\r\n\r\n").into_bytes();
            ex.status = 204;
            ex.resp = b"HTTP/1.1 204 No Content\r\n\r\n".to_vec();
        }
    }
    if last_close {
        // Close-delimited response: no length, the server's FIN ends it.
        ex.method = "GET";
        ex.status = 200;
        ex.req = format!("GET {path} HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n")
            .into_bytes();
        ex.req_late_body.clear();
        ex.req_body.clear();
        ex.interim = None;
        ex.query = "";
        ex.resp = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        ex.resp.extend_from_slice(&body);
        ex.resp_body = body.clone();
        ex.resp_bytes = 0;
    }
    ex.req_bytes = (ex.req_body.len()) as u64;
    if ex.resp_bytes == 0 {
        ex.resp_bytes = ex.resp_body.len() as u64;
    }
    ex
}

/// A tiny deterministic generator for segmentation and shuffling.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

struct Burst {
    to_server: bool,
    data: Vec<u8>,
    ts: u64,
}

/// The bursts of a connection carrying `exs`, with each exchange's request time and response
/// time.
fn bursts(exs: &[Ex], pipelined: bool) -> (Vec<Burst>, Vec<(u64, u64)>) {
    let mut out = Vec::new();
    let mut times = Vec::new();
    if pipelined {
        let t = T0 + 10 * MS;
        let mut reqs = Vec::new();
        let mut resps = Vec::new();
        for ex in exs {
            reqs.extend_from_slice(&ex.req);
            reqs.extend_from_slice(&ex.req_late_body);
            if let Some(i) = &ex.interim {
                resps.extend_from_slice(i);
            }
            resps.extend_from_slice(&ex.resp);
            times.push((t, t + MS));
        }
        out.push(Burst {
            to_server: true,
            data: reqs,
            ts: t,
        });
        out.push(Burst {
            to_server: false,
            data: resps,
            ts: t + MS,
        });
    } else {
        for (i, ex) in exs.iter().enumerate() {
            let t = T0 + (10 + 2 * i as u64) * MS;
            out.push(Burst {
                to_server: true,
                data: ex.req.clone(),
                ts: t,
            });
            if let Some(interim) = &ex.interim {
                out.push(Burst {
                    to_server: false,
                    data: interim.clone(),
                    ts: t + 100_000,
                });
            }
            if !ex.req_late_body.is_empty() {
                out.push(Burst {
                    to_server: true,
                    data: ex.req_late_body.clone(),
                    ts: t + 200_000,
                });
            }
            out.push(Burst {
                to_server: false,
                data: ex.resp.clone(),
                ts: t + 500_000,
            });
            times.push((t, t + 500_000));
        }
    }
    (out, times)
}

/// The segments of the connection: each burst cut at random points, plus random retransmitted
/// ranges; then (beyond the handshake) shuffled and with duplicates.
fn segments(
    bursts: &[Burst],
    close_by: Option<bool>,
    seed: u64,
    shuffle: bool,
    dups: usize,
) -> Vec<Segment> {
    let mut rng = Rng(seed | 1);
    let (c, s) = addrs();
    let mut conv = Conversation::open(c, s, T0);
    let mut extra = Vec::new();
    for b in bursts {
        let n = rng.below(6);
        let cuts: Vec<usize> = (0..n).map(|_| rng.below(b.data.len())).collect();
        let start = conv.segments.len();
        conv.send(b.to_server, &b.data, &cuts, b.ts);
        // A retransmission spanning two neighbouring segments.
        if conv.segments.len() - start >= 2 && rng.below(2) == 0 {
            let i = start + rng.below(conv.segments.len() - start - 1);
            let (a, b2) = (&conv.segments[i], &conv.segments[i + 1]);
            let mut merged = a.clone();
            let mut p = a.payload.to_vec();
            p.extend_from_slice(&b2.payload);
            merged.wire_len = p.len() as u32;
            merged.payload = p.into();
            extra.push(merged);
        }
    }
    let t_end = bursts.last().map_or(T0, |b| b.ts) + MS;
    if let Some(client_first) = close_by {
        conv.fin(client_first, t_end);
        conv.fin(!client_first, t_end);
    }
    let mut segs = conv.segments;
    let mut tail: Vec<Segment> = segs.split_off(3);
    tail.extend(extra);
    if shuffle {
        for i in (1..tail.len()).rev() {
            let j = rng.below(i + 1);
            tail.swap(i, j);
        }
    }
    for _ in 0..dups {
        if tail.is_empty() {
            break;
        }
        let from = rng.below(tail.len());
        let to = rng.below(tail.len() + 1);
        let d = tail[from].clone();
        tail.insert(to, d);
    }
    segs.extend(tail);
    segs
}

fn check(out: &[Transaction], exs: &[Ex], times: &[(u64, u64)]) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        out.len(),
        exs.len(),
        "transactions: {:?}",
        out.iter().map(|t| t.to_json(&[])).collect::<Vec<_>>()
    );
    for ((t, ex), (tq, tr)) in out.iter().zip(exs).zip(times) {
        prop_assert_eq!(t.method(), ex.method);
        prop_assert_eq!(t.path(), ex.path.as_str());
        prop_assert_eq!(t.query(), ex.query);
        prop_assert_eq!(t.host(), Some("api.example"));
        prop_assert_eq!(t.status(), Some(ex.status), "{}", t.to_json(&[]));
        prop_assert_eq!(t.req_bytes, ex.req_bytes);
        prop_assert_eq!(t.resp_bytes, ex.resp_bytes, "{}", t.to_json(&[]));
        prop_assert_eq!(&t.req_body, &ex.req_body);
        prop_assert_eq!(&t.resp_body, &ex.resp_body);
        prop_assert_eq!(t.ts_ns, *tq);
        prop_assert_eq!(t.resp_ts_ns, Some(*tr));
        prop_assert!(t.req_complete && t.resp_complete);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any segmentation, reordering and duplication of a connection's segments yields the same
    /// transactions.
    #[test]
    fn any_segmentation_reordering_and_duplication_gives_the_same_transactions(
        kinds in prop::collection::vec(0u8..9, 1..7),
        pipelined in any::<bool>(),
        close_delimited in any::<bool>(),
        client_fin_first in any::<bool>(),
        seed in any::<u64>(),
        shuffle in any::<bool>(),
        dups in 0usize..6,
    ) {
        let n = kinds.len();
        let exs: Vec<Ex> = kinds
            .iter()
            // Pipelined clients do not wait for 100 Continue.
            .map(|k| if pipelined && k % 9 == 5 { 1 } else { *k })
            .enumerate()
            .map(|(i, k)| exchange(k, i, close_delimited && i == n - 1))
            .collect();
        let (bs, times) = bursts(&exs, pipelined);
        let segs = segments(&bs, Some(client_fin_first), seed, shuffle, dups);
        let out = run(segs);
        check(&out, &exs, &times)?;
    }
}

#[test]
fn every_kind_in_order_and_one_segment_each() {
    let exs: Vec<Ex> = (0..9).map(|k| exchange(k, k as usize, k == 8)).collect();
    let (bs, times) = bursts(&exs, false);
    let segs = segments(&bs, Some(true), 7, false, 0);
    let out = run(segs);
    check(&out, &exs, &times).unwrap();
    let j: serde_json::Value = serde_json::from_str(&out[0].to_json(&[])).unwrap();
    assert_eq!(j["ts"], "2023-11-14T22:13:20.010000Z");
    assert_eq!(j["src_ip"], "198.18.0.100");
    assert_eq!(j["dst_port"], 8080);
    assert_eq!(j["query"], "page=2&size=10");
    assert_eq!(j["latency_ms"], 0.5);
    assert!(j["principal"].is_null());
    assert_eq!(out[4].resp_decoded, Decoded::Yes);
    assert_eq!(
        out[2].resp_trailers.as_ref().unwrap().header("x-checksum"),
        Some("abc")
    );
}

/// A token in the query (RFC 6750 §2.3) is not written to the transaction log in clear.
#[test]
fn the_transaction_record_redacts_tokens_in_the_query() {
    let mut c = conn();
    c.send(
        true,
        b"GET /balance?access_token=tok-layla-1&page=2 HTTP/1.1\r\n\r\n",
        &[],
        T0 + MS,
    );
    c.send(
        false,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        &[],
        T0 + 2 * MS,
    );
    let out = run(c.segments);
    let j: serde_json::Value = serde_json::from_str(&out[0].to_json(&[])).unwrap();
    let q = j["query"].as_str().unwrap();
    assert!(!q.contains("tok-layla-1") && q.ends_with("&page=2"), "{q}");
    // The transaction itself keeps it for the analysis.
    assert_eq!(out[0].query(), "access_token=tok-layla-1&page=2");
}

/// An API key in the query (`?appid=`, or a configured parameter in another naming style) is
/// not written to the transaction log in clear.
#[test]
fn the_transaction_record_redacts_api_keys_in_the_query() {
    let key = "b1946ac92492d2347c6235b4d2611184";
    let mut c = conn();
    let req = format!(
        "GET /weather?q=London&appid={key} HTTP/1.1\r\n\r\nGET /search?subscriptionKey={key}&q=x HTTP/1.1\r\n\r\n"
    );
    c.send(true, req.as_bytes(), &[], T0 + MS);
    c.send(false, TWO_EMPTY_OKS, &[], T0 + 2 * MS);
    let out = run(c.segments);
    let mut params = crate::models::ModelsConfig::default().api_key_params;
    params.push("subscription-key".into());
    for t in &out {
        let j: serde_json::Value = serde_json::from_str(&t.to_json(&params)).unwrap();
        let q = j["query"].as_str().unwrap();
        assert!(!q.contains(key), "{q}");
        assert!(
            q.contains(&crate::enrich::principal::short_hash(key)),
            "{q}"
        );
    }
    let shown = |t: &Transaction| t.record(&params).query.into_owned();
    assert!(shown(&out[0]).starts_with("q=London&appid=<redacted"));
    assert!(shown(&out[1]).ends_with("&q=x"));
}

/// Two empty 200 responses, back to back.
const TWO_EMPTY_OKS: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

fn conn() -> Conversation {
    let (c, s) = addrs();
    Conversation::open(c, s, T0)
}

#[test]
fn malformed_requests_resync_on_the_next_request_line() {
    let mut c = conn();
    c.send(true, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\x01\x02 nonsense\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n", &[], T0 + MS);
    c.send(false, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", &[], T0 + 2 * MS);
    let (out, st) = run_with(c.segments, PipelineSettings::default());
    let got: Vec<(&str, Option<u16>)> = out.iter().map(|t| (t.path(), t.status())).collect();
    // The garbage's 400 pairs with the placeholder of the lost request and is discarded.
    assert_eq!(got, vec![("/a", Some(200)), ("/b", Some(200))]);
    assert_eq!(st.http.malformed, 1);
    assert_eq!(st.http.unpaired_responses, 1);
}

#[test]
fn a_gap_inside_a_body_keeps_the_stream_in_sync() {
    let mut c = conn();
    c.send(
        true,
        b"POST /up HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789",
        &[],
        T0 + MS,
    );
    c.lose(true, 80);
    c.send(
        true,
        b"0123456789GET /next HTTP/1.1\r\n\r\n",
        &[],
        T0 + 2 * MS,
    );
    c.send(false, TWO_EMPTY_OKS, &[], T0 + 3 * MS);
    let (out, st) = run_with(c.segments, PipelineSettings::default());
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].req_bytes, 100);
    assert!(!out[0].req_complete);
    assert_eq!(out[0].req_body, b"0123456789");
    assert_eq!(out[1].path(), "/next");
    assert!(out[1].req_complete);
    assert_eq!(st.reassembly.gaps, 1);
}

#[test]
fn a_gap_in_a_head_loses_that_message_only() {
    let mut c = conn();
    c.send(true, b"GET /one HTTP/1.1\r\n\r\nGET /tw", &[], T0 + MS);
    c.lose(true, 20);
    c.send(true, b"\r\nGET /three HTTP/1.1\r\n\r\n", &[], T0 + 2 * MS);
    c.send(false, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 201 OK\r\nContent-Length: 1\r\n\r\n2HTTP/1.1 202 OK\r\nContent-Length: 1\r\n\r\n3", &[], T0 + 3 * MS);
    let (out, st) = run_with(c.segments, PipelineSettings::default());
    let got: Vec<(&str, Option<u16>)> = out.iter().map(|t| (t.path(), t.status())).collect();
    assert_eq!(got, vec![("/one", Some(200)), ("/three", Some(202))]);
    assert_eq!(st.http.lost_messages, 1);
}

#[test]
fn responses_wait_for_their_requests() {
    let mut c = conn();
    c.send(
        false,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        &[],
        T0 + 2 * MS,
    );
    c.send(true, b"HEAD /h HTTP/1.1\r\n\r\n", &[], T0 + MS);
    c.send(
        false,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        &[],
        T0 + 3 * MS,
    );
    // The HEAD request's response has no body, though it says 5: the next response follows.
    let mut segs = c.segments.clone();
    segs.swap(3, 4);
    c.send(true, b"GET /g HTTP/1.1\r\n\r\n", &[], T0 + 2 * MS);
    segs.push(c.segments.last().unwrap().clone());
    let out = run(segs);
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].method(), out[0].resp_bytes), ("HEAD", 0));
    assert_eq!(
        (out[1].path(), out[1].resp_body.as_slice()),
        ("/g", &b"ok"[..])
    );
}

#[test]
fn unanswered_requests_are_emitted_when_the_flow_ends() {
    let mut c = conn();
    c.send(
        true,
        b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        &[],
        T0 + MS,
    );
    c.send(
        false,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf",
        &[],
        T0 + 2 * MS,
    );
    c.rst(false, T0 + 3 * MS);
    let (out, st) = run_with(c.segments, PipelineSettings::default());
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].status(), Some(200));
    assert!(!out[0].resp_complete);
    assert_eq!(out[0].resp_bytes, 4);
    assert_eq!(out[1].status(), None);
    assert_eq!(out[1].latency_ms(), None);
    assert_eq!(st.http.unanswered, 1);
    let j: serde_json::Value = serde_json::from_str(&out[1].to_json(&[])).unwrap();
    assert!(j["status"].is_null() && j["latency_ms"].is_null());
}

#[test]
fn upgrades_end_http_on_the_connection() {
    let mut c = conn();
    c.send(
        true,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello",
        &[],
        T0 + MS,
    );
    c.send(
        false,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
        &[],
        T0 + 2 * MS,
    );
    let (out, st) = run_with(c.segments, PipelineSettings::default());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].status(), Some(101));
    assert_eq!(st.http.upgrades, 1);
    assert_eq!(st.http.malformed, 0);
}

#[test]
fn non_http_flows_are_abandoned() {
    let mut c = conn();
    let tls: Vec<u8> = (0..200_000u32)
        .map(|i| (i * 7 % 251) as u8 | 0x80)
        .collect();
    c.send_mss(true, &tls, 1448, T0 + MS);
    let (out, st) = run_with(c.segments, PipelineSettings::default());
    assert!(out.is_empty());
    assert_eq!(st.http.abandoned, 1);
}

#[test]
fn ambiguous_lengths_are_malformed() {
    let mut c = conn();
    c.send(true, b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!\r\nGET /b HTTP/1.1\r\n\r\n", &[], T0 + MS);
    c.send(false, b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", &[], T0 + 2 * MS);
    let (out, st) = run_with(c.segments, PipelineSettings::default());
    assert_eq!(st.http.malformed, 1);
    assert_eq!(out.iter().map(|t| t.path()).collect::<Vec<_>>(), vec!["/b"]);
    // Transfer-Encoding wins over Content-Length.
    let mut c = conn();
    c.send(true, b"POST /c HTTP/1.1\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", &[], T0 + MS);
    c.send(
        false,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        &[],
        T0 + 2 * MS,
    );
    let out = run(c.segments);
    assert_eq!(out[0].req_body, b"abc");
}

#[test]
fn bodies_are_capped_and_decoding_stops_at_the_cap() {
    let big = vec![b'a'; 5_000_000];
    let z = gzip(&big);
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        z.len()
    )
    .into_bytes();
    resp.extend_from_slice(&z);
    let mut c = conn();
    c.send(true, b"GET /bomb HTTP/1.1\r\n\r\n", &[], T0 + MS);
    c.send_mss(false, &resp, 1448, T0 + 2 * MS);
    let mut settings = PipelineSettings::default();
    settings.http.body_cap = 1000;
    let out = run_with(c.segments, settings).0;
    assert_eq!(out[0].resp_body.len(), 1000);
    assert_eq!(out[0].resp_decoded, Decoded::Capped);
    assert_eq!(out[0].resp_bytes, z.len() as u64);
    assert!(out[0].resp_complete);
}

#[test]
fn deflate_and_broken_gzip() {
    let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
    zl.write_all(b"{\"ok\":true}").unwrap();
    let zl = zl.finish().unwrap();
    let mut c = conn();
    c.send(
        true,
        b"GET /d HTTP/1.1\r\n\r\nGET /e HTTP/1.1\r\n\r\n",
        &[],
        T0 + MS,
    );
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: {}\r\n\r\n",
        zl.len()
    )
    .into_bytes();
    r.extend_from_slice(&zl);
    r.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope",
    );
    c.send(false, &r, &[], T0 + 2 * MS);
    let (out, st) = run_with(c.segments, PipelineSettings::default());
    assert_eq!(out[0].resp_body, b"{\"ok\":true}");
    assert_eq!(out[1].resp_decoded, Decoded::Failed);
    assert_eq!(st.http.decode_failures, 1);
}

/// `deflate` without its zlib wrapper (some servers send it so; browsers and curl read it), cut
/// into one-byte segments so that the first two bytes come apart, is decoded; and a request
/// body in gzip or deflate is decoded too (Express inflates it for the application).
#[test]
fn raw_deflate_and_coded_request_bodies_are_decoded() {
    let secret = b"{\"aws\":\"AKIAIOSFODNN7EXAMPLE\"}";
    let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
    raw.write_all(secret).unwrap();
    let raw = raw.finish().unwrap();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(b"{\"q\":\"1' OR '1'='1\"}").unwrap();
    let gz = gz.finish().unwrap();
    let mut c = conn();
    let mut req = format!(
        "POST /search HTTP/1.1\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    req.extend_from_slice(&gz);
    req.extend_from_slice(b"GET /export HTTP/1.1\r\n\r\n");
    c.send(true, &req, &[], T0 + MS);
    let mut r = b"HTTP/1.1 204 No Content\r\n\r\n".to_vec();
    r.extend_from_slice(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: {}\r\n\r\n",
            raw.len()
        )
        .as_bytes(),
    );
    let head = r.len();
    r.extend_from_slice(&raw);
    let cuts: Vec<usize> = (head + 1..head + 4).collect();
    c.send(false, &r, &cuts, T0 + 2 * MS);
    let (out, st) = run_with(c.segments, PipelineSettings::default());
    assert_eq!(out[0].req_body, b"{\"q\":\"1' OR '1'='1\"}");
    assert_eq!(out[0].req_bytes, gz.len() as u64);
    assert_eq!(out[1].resp_body, secret);
    assert_eq!(out[1].resp_decoded, Decoded::Yes);
    assert_eq!((st.http.decoded, st.http.decode_failures), (2, 0));
}

#[test]
fn absolute_targets_give_host_and_path() {
    let mut c = conn();
    c.send(
        true,
        b"GET http://api.example:8080/v1/x?y=1 HTTP/1.1\r\n\r\n",
        &[],
        T0 + MS,
    );
    c.send(
        false,
        b"HTTP/1.0 200 OK\r\n\r\nbody until close",
        &[],
        T0 + 2 * MS,
    );
    c.fin(false, T0 + 3 * MS);
    let out = run(c.segments);
    assert_eq!(
        (out[0].host(), out[0].path(), out[0].query()),
        (Some("api.example:8080"), "/v1/x", "y=1")
    );
    assert_eq!(out[0].resp_body, b"body until close");
}

/// Bytes outside ASCII in a request target (nginx and Apache take them as they come) do not
/// make the request malformed: it is read with them percent-encoded, with its whole length, so
/// the request after it on the connection is read as well. Its head is split in the middle of
/// the target. A method with such a byte is still malformed.
#[test]
fn targets_with_bytes_outside_ascii_are_read_percent_encoded() {
    let mut c = conn();
    c.send(true, b"GET /search?z=\xff&q=1'%20OR", &[], T0 + MS);
    c.send(
        true,
        b"%201=1--%20 HTTP/1.1\r\nHost: x\r\n\r\nGET /caf\xc3\xa9/\xff/../x HTTP/1.1\r\n\r\nG\xffT /m HTTP/1.1\r\n\r\n",
        &[],
        T0 + 2 * MS,
    );
    c.send(false, TWO_EMPTY_OKS, &[], T0 + 3 * MS);
    c.send(
        false,
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        &[],
        T0 + 4 * MS,
    );
    let (out, st) = run_with(c.segments, PipelineSettings::default());
    let got: Vec<(&str, &str, Option<u16>)> = out
        .iter()
        .map(|t| (t.path(), t.query(), t.status()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/search", "z=%FF&q=1'%20OR%201=1--%20", Some(200)),
            ("/caf%C3%A9/%FF/../x", "", Some(200)),
        ]
    );
    assert_eq!(out[0].host(), Some("x"));
    assert_eq!(st.http.malformed, 1);
}

#[test]
fn too_many_pending_requests_give_the_oldest_up() {
    let mut c = conn();
    let mut reqs = Vec::new();
    for i in 0..100 {
        reqs.extend_from_slice(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes());
    }
    c.send(true, &reqs, &[], T0 + MS);
    let mut settings = PipelineSettings::default();
    settings.http.max_pending = 10;
    let mut p = Pipeline::new(settings);
    for s in c.segments {
        p.push(s);
    }
    assert_eq!(p.drain().count(), 90);
    p.finish();
    assert_eq!(p.drain().count(), 10);
}

#[test]
fn head_text_reads_utf8_fields_and_empties_only_the_fields_that_are_not() {
    let mut c = conn();
    c.send(
        true,
        "GET /caf\u{e9} HTTP/1.1\r\nHost: x\r\nX-Name: J\u{fc}rgen\r\n\r\n".as_bytes(),
        &[],
        T0 + MS,
    );
    c.send(
        true,
        b"GET /b HTTP/1.1\r\nHost: y\r\nX-Name: J\xfcrgen\r\nUser-Agent: ok\r\n\r\n",
        &[],
        T0 + 2 * MS,
    );
    c.send(false, TWO_EMPTY_OKS, &[], T0 + 3 * MS);
    let out = run(c.segments);
    let fields = |t: &Transaction| -> Vec<(String, String)> {
        t.request
            .headers()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    };
    // A head that is UTF-8 as a whole, multi-byte characters included.
    assert_eq!(out[0].path(), "/caf\u{e9}");
    assert_eq!(out[0].request.header("x-name"), Some("J\u{fc}rgen"));
    // One field that is not: it reads as empty, the rest of the head as sent.
    assert_eq!(out[1].path(), "/b");
    assert_eq!(
        fields(&out[1]),
        [("Host", "y"), ("X-Name", ""), ("User-Agent", "ok")]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
    );
}

/// A connection that ends with bytes still buffered leaves its parser buffers to the next
/// connection's parsers, emptied: the next connection reads as if it were the first.
#[test]
fn a_new_connection_reuses_an_ended_ones_buffers_without_its_bytes() {
    let (c, s) = addrs();
    let mut first = Conversation::open(c, s, T0);
    first.send(
        true,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /half HTTP/1.1\r\nHo",
        &[],
        T0 + MS,
    );
    first.send(
        false,
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab",
        &[],
        T0 + 2 * MS,
    );
    first.rst(true, T0 + 3 * MS);
    let mut next = Conversation::open("198.18.0.100:40001".parse().unwrap(), s, T0 + 4 * MS);
    next.send(
        true,
        b"GET /b HTTP/1.1\r\nHost: y\r\n\r\n",
        &[],
        T0 + 5 * MS,
    );
    next.send(false, b"HTTP/1.1 204 No Content\r\n\r\n", &[], T0 + 6 * MS);
    next.fin(true, T0 + 7 * MS);
    next.fin(false, T0 + 7 * MS);
    let (out, _) = run_with(
        first.segments.into_iter().chain(next.segments),
        PipelineSettings::default(),
    );
    let b: Vec<&Transaction> = out.iter().filter(|t| t.path() == "/b").collect();
    assert_eq!(
        b.len(),
        1,
        "{:?}",
        out.iter().map(|t| t.path()).collect::<Vec<_>>()
    );
    assert_eq!(b[0].status(), Some(204));
    assert_eq!(b[0].request.header("host"), Some("y"));
    assert!(b[0].resp_body.is_empty() && b[0].resp_complete);
    assert!(out.iter().all(|t| t.path() != "/half"));
}

/// Paths and statuses of transactions, in order.
fn paired(ts: &[Transaction]) -> Vec<(String, Option<u16>)> {
    ts.iter()
        .map(|t| (t.path().to_string(), t.status()))
        .collect()
}

fn pipelined_gets(c: &mut Conversation, paths: &[&str]) {
    let reqs: String = paths
        .iter()
        .map(|p| format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n"))
        .collect();
    c.send(true, reqs.as_bytes(), &[], T0 + MS);
}

/// Three pipelined GETs; the first response's head and `first` body bytes arrive, then `lost`
/// bytes go missing (what is left of the first body and the whole second response), then the
/// third response: the second request comes out unanswered and the others keep their own.
fn the_pairing_survives_a_loss(first: &[u8], lost: u32) {
    let (cl, sv) = addrs();
    let mut c = Conversation::open(cl, sv, T0);
    pipelined_gets(&mut c, &["/1", "/2", "/3"]);
    c.send(false, first, &[], T0 + 2 * MS);
    c.lose(false, lost);
    c.send(
        false,
        b"HTTP/1.1 202 OK\r\nContent-Length: 1\r\n\r\nc",
        &[],
        T0 + 3 * MS,
    );
    // Time passes: the hole becomes a gap.
    c.ack(true, T0 + 2_000 * MS);
    assert_eq!(
        paired(&run(c.segments)),
        [
            ("/1".into(), Some(200)),
            ("/2".into(), None),
            ("/3".into(), Some(202))
        ]
    );
}

const SECOND: &[u8] = b"HTTP/1.1 201 OK\r\nContent-Length: 1\r\n\r\nb";

#[test]
fn a_whole_response_lost_between_messages_keeps_the_pairing() {
    // The ring lost the one segment that held the second response whole.
    the_pairing_survives_a_loss(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
        SECOND.len() as u32,
    );
}

#[test]
fn a_gap_from_a_body_into_the_next_response_keeps_the_pairing() {
    // Lost: the last 5 bytes of the first body and all of the second response.
    the_pairing_survives_a_loss(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234",
        5 + SECOND.len() as u32,
    );
}

#[test]
fn a_gap_ending_with_a_chunks_data_does_not_stall_the_stream() {
    let (cl, sv) = addrs();
    let mut c = Conversation::open(cl, sv, T0);
    pipelined_gets(&mut c, &["/c", "/d"]);
    c.send(
        false,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n",
        &[],
        T0 + 2 * MS,
    );
    c.send(false, &[b'x'; 4096], &[], T0 + 2 * MS);
    // The snap length cut this segment: the chunk's last 2048 bytes are a gap.
    c.segments.last_mut().unwrap().payload.truncate(2048);
    c.send(
        false,
        b"\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        &[],
        T0 + 3 * MS,
    );
    c.ack(true, T0 + 5_000 * MS);
    // Both exchanges come out while the connection is still open.
    let mut p = Pipeline::new(PipelineSettings::default());
    let mut out = Vec::new();
    for s in c.segments {
        p.push(s);
        out.extend(p.drain());
    }
    assert_eq!(
        paired(&out),
        [("/c".into(), Some(200)), ("/d".into(), Some(200))]
    );
}

/// A connection with one exchange: GET /a, 200.
fn answered_get_a() -> Conversation {
    let (cl, sv) = addrs();
    let mut c = Conversation::open(cl, sv, T0);
    c.send(true, b"GET /a HTTP/1.1\r\n\r\n", &[], T0 + MS);
    c.send(
        false,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        &[],
        T0 + 2 * MS,
    );
    c
}

#[test]
fn a_keep_alive_connection_speaking_after_its_idle_close_is_seen() {
    let mut c = answered_get_a();
    // Past the idle timeout (120 s): the flow was closed as idle, the client had kept it.
    let later = T0 + 121_000 * MS;
    c.send(true, b"GET /b HTTP/1.1\r\n\r\n", &[], later);
    c.send(
        false,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        &[],
        later + MS,
    );
    let got = paired(&run(c.segments));
    assert!(got.contains(&("/b".into(), Some(200))), "{got:?}");
}

#[test]
fn a_second_hole_waits_its_own_time_before_it_is_a_gap() {
    let (cl, sv) = addrs();
    let mut c = Conversation::open(cl, sv, T0);
    c.send(true, b"GET /1 HTTP/1.1\r\n\r\n", &[], T0 + MS);
    let base = c.segments.len();
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n0123456789abcdefghij";
    c.send(false, resp, &[10, 20, 30, 40], T0 + MS);
    let parts: Vec<Segment> = c.segments.split_off(base);
    let at = |i: usize, ms: u64| {
        let mut s = parts[i].clone();
        s.ts_ns = T0 + ms * MS;
        s
    };
    // Hole 1 (bytes 0..10) opens at 10 ms and fills at 900 ms; hole 2 (20..30) opens at
    // 800 ms and fills at 1100 ms: 300 ms, well within the gap timeout.
    let mut segs = c.segments.clone();
    segs.extend([
        at(1, 10),
        at(3, 800),
        at(0, 900),
        at(4, 1_050),
        at(2, 1_100),
    ]);
    let (out, stats) = run_with(segs, PipelineSettings::default());
    assert_eq!(stats.reassembly.gaps, 0);
    assert_eq!(paired(&out), [("/1".into(), Some(200))]);
}

#[test]
fn a_forged_rst_out_of_sequence_does_not_blind_the_flow() {
    use crate::capture::{segment::flags, synth::seg};
    let (cl, sv) = addrs();
    let mut c = answered_get_a();
    // The client sends an RST 1 MiB past its next byte: the server's kernel ignores it, and
    // the injection that follows on the same connection must still be seen.
    let next = c.segments.iter().rfind(|s| s.src == cl).unwrap().seq + 19;
    c.segments.push(seg(
        T0 + 3 * MS,
        cl,
        sv,
        next.wrapping_add(1 << 20),
        0,
        flags::RST,
        &[],
    ));
    c.send(
        true,
        b"GET /b?id=1%27%20OR%201=1 HTTP/1.1\r\n\r\n",
        &[],
        T0 + 4 * MS,
    );
    c.send(
        false,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        &[],
        T0 + 5 * MS,
    );
    // An RST at the next byte does close it.
    let next = next + b"GET /b?id=1%27%20OR%201=1 HTTP/1.1\r\n\r\n".len() as u32;
    c.segments
        .push(seg(T0 + 6 * MS, cl, sv, next, 0, flags::RST, &[]));
    let (out, stats) = run_with(c.segments, PipelineSettings::default());
    assert_eq!(
        paired(&out),
        [("/a".into(), Some(200)), ("/b".into(), Some(200))]
    );
    assert_eq!(stats.reassembly.rst_ignored, 1);
    assert_eq!(stats.reassembly.closed_rst, 1);
}

#[test]
fn what_pipelined_requests_hold_counts_against_the_memory_caps() {
    let (cl, sv) = addrs();
    let body = vec![b'a'; 60 << 10];
    let mut c = Conversation::open(cl, sv, T0);
    for i in 0..60 {
        let mut r = format!(
            "POST /{i} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(&body);
        c.send_mss(true, &r, 1448, T0 + MS);
    }
    let held = 60 * body.len() as u64;
    // Unanswered, the 60 requests' kept bodies are held, and counted.
    let mut p = Pipeline::new(PipelineSettings::default());
    for s in c.segments.clone() {
        p.push(s);
    }
    assert!(p.stats().reassembly.mem_current >= held);
    // Under a 1 MiB cap the flow is evicted rather than holding 3.6 MB uncounted.
    let mut settings = PipelineSettings::default();
    settings.reassembly.mem_cap = 1 << 20;
    let mut p = Pipeline::new(settings);
    for s in c.segments {
        p.push(s);
    }
    let st = p.stats().reassembly;
    assert!(st.evicted >= 1, "{st:?}");
    assert!(st.mem_peak < 2 << 20, "{st:?}");
}

#[test]
fn requests_given_up_unanswered_keep_the_pairing_of_the_later_ones() {
    let (cl, sv) = addrs();
    let mut c = Conversation::open(cl, sv, T0);
    pipelined_gets(&mut c, &["/0", "/1", "/2"]);
    c.send(
        false,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\
          HTTP/1.1 201 OK\r\nContent-Length: 0\r\n\r\n\
          HTTP/1.1 202 OK\r\nContent-Length: 0\r\n\r\n",
        &[],
        T0 + 2 * MS,
    );
    // Two pending at most: /0 is given up before its response comes.
    let mut settings = PipelineSettings::default();
    settings.http.max_pending = 2;
    let (out, stats) = run_with(c.segments, settings);
    assert_eq!(
        paired(&out),
        [
            ("/0".into(), None),
            ("/1".into(), Some(201)),
            ("/2".into(), Some(202))
        ]
    );
    assert_eq!(stats.http.unpaired_responses, 1);
}

#[test]
fn a_stamp_in_the_future_or_a_clock_stepped_back_does_not_stop_the_timers() {
    use crate::capture::{segment::flags, synth::seg};
    // Transactions out 60 s after a response whose body lost 3 bytes (the hole becomes a gap,
    // the exchange completes), with or without one stray segment stamped 10 h ahead first.
    let complete_after_a_minute = |stray: bool| {
        let mut p = Pipeline::new(PipelineSettings::default());
        let (cl, sv) = addrs();
        if stray {
            let other: std::net::SocketAddr = "198.18.0.7:5555".parse().unwrap();
            p.push(seg(T0 + 36_000_000 * MS, other, sv, 1, 0, flags::SYN, &[]));
        }
        let mut c = Conversation::open(cl, sv, T0);
        pipelined_gets(&mut c, &["/1", "/2"]);
        c.send(
            false,
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            &[],
            T0 + 2 * MS,
        );
        c.lose(false, 3);
        c.send(
            false,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            &[],
            T0 + 3 * MS,
        );
        for s in c.segments {
            p.push(s);
        }
        p.advance(T0 + 60_000 * MS);
        (p.drain().count(), p.stats().reassembly.clock_steps)
    };
    assert_eq!(complete_after_a_minute(false), (2, 0));
    assert_eq!(complete_after_a_minute(true), (2, 1));
}

#[test]
fn a_new_connection_on_the_same_ports_is_taken_up_when_the_old_ones_end_was_lost() {
    use crate::capture::{segment::flags, synth::seg};
    let (cl, sv) = addrs();
    let mut c = answered_get_a();
    // The client closes; the server's FIN is lost by the ring. Ten seconds later the client
    // reuses its port for a new connection (another initial sequence number).
    c.fin(true, T0 + 3 * MS);
    let mut segs = c.segments;
    let (ci, si) = (0x1000_0000u32, 0x2000_0000u32);
    segs.push(seg(T0 + 10_000 * MS, cl, sv, ci, 0, flags::SYN, &[]));
    segs.push(seg(
        T0 + 10_000 * MS,
        sv,
        cl,
        si,
        ci + 1,
        flags::SYN | flags::ACK,
        &[],
    ));
    let mut again = Conversation::mid_stream(cl, sv, ci + 1, si + 1);
    again.send(true, b"GET /b HTTP/1.1\r\n\r\n", &[], T0 + 10_001 * MS);
    again.send(
        false,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        &[],
        T0 + 10_002 * MS,
    );
    segs.extend(again.segments);
    let (out, stats) = run_with(segs, PipelineSettings::default());
    assert_eq!(
        paired(&out),
        [("/a".into(), Some(200)), ("/b".into(), Some(200))]
    );
    assert_eq!(stats.reassembly.closed_reused, 1);
}

#[test]
fn a_status_line_without_a_reason_phrase_parses() {
    let (cl, sv) = addrs();
    let mut c = Conversation::open(cl, sv, T0);
    c.send(true, b"GET /r HTTP/1.1\r\n\r\n", &[], T0 + MS);
    c.send(false, b"HTTP/1.1 204\r\n\r\n", &[], T0 + 2 * MS);
    let out = run(c.segments);
    assert_eq!(paired(&out), [("/r".into(), Some(204))]);
    assert_eq!(out[0].response.as_ref().unwrap().reason(), "");
}

/// What a request's transaction says: path, query, header fields, body.
type Seen = (String, String, Vec<(String, String)>, Vec<u8>);

/// Sends `reqs` and then `GET /next` on one connection, cut every `step` bytes, without
/// responses; the requests as read, and the count of malformed heads.
fn requests_read(reqs: &[u8], step: usize) -> (Vec<Seen>, u64) {
    let mut c = conn();
    let mut all = reqs.to_vec();
    all.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    for (i, part) in all.chunks(step).enumerate() {
        c.send(true, part, &[], T0 + (i as u64 + 1) * MS);
    }
    let (out, st) = run_with(c.segments, PipelineSettings::default());
    let seen = out
        .iter()
        .map(|t| {
            let fields = t.request.headers();
            (
                t.path().to_owned(),
                t.query().to_owned(),
                fields.map(|(n, v)| (n.into(), v.into())).collect(),
                t.req_body.clone(),
            )
        })
        .collect();
    (seen, st.http.malformed)
}

/// `reqs` read the same whole and cut in small pieces (in segments of an Ethernet MSS when
/// long: each piece parses the head again), with no head malformed; the requests before
/// `/next`, which must come last.
fn read_leniently(reqs: &[u8]) -> Vec<Seen> {
    let (mut whole, malformed) = requests_read(reqs, reqs.len() + 64);
    assert_eq!(malformed, 0);
    // A head is parsed once whole, so even a large one costs little a byte at a time.
    let steps: &[usize] = if reqs.len() < 1000 {
        &[1, 5, 13]
    } else {
        &[1, 1460]
    };
    for &step in steps {
        assert_eq!(
            requests_read(reqs, step),
            (whole.clone(), 0),
            "cut every {step}"
        );
    }
    let next = whole.pop().expect("GET /next");
    assert_eq!(next.0, "/next");
    whole
}

fn fields(f: &[(&str, &str)]) -> Vec<(String, String)> {
    f.iter().map(|(n, v)| ((*n).into(), (*v).into())).collect()
}

/// nginx (`ignore_invalid_headers on`, its default) drops a field line whose name has bytes
/// outside tchar or is empty, or that has no colon, and serves the request: so are they dropped
/// here, and the request (with its body) is read.
#[test]
fn invalid_header_lines_are_dropped_as_nginx_drops_them() {
    let got = read_leniently(
        b"POST /login?u=admin'-- HTTP/1.1\r\nHost: x\r\nX@Foo: 1\r\nX(a): 2\r\n: empty\r\n\
          no colon here\r\nContent-Length: 3\r\nX-Ok: yes\r\n\r\nabc",
    );
    assert_eq!(
        got,
        [(
            "/login".into(),
            "u=admin'--".into(),
            fields(&[("Host", "x"), ("Content-Length", "3"), ("X-Ok", "yes")]),
            b"abc".to_vec(),
        )]
    );
}

/// nginx takes control bytes other than NUL, CR and LF in a value: the field is kept, with
/// each read as a space.
#[test]
fn control_bytes_in_header_values_read_as_spaces() {
    let got = read_leniently(
        b"GET /q?id=1 HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\x7fc\r\nUser-Agent: sqlmap\x0b/1.8\r\n\r\n",
    );
    assert_eq!(
        got,
        [(
            "/q".into(),
            "id=1".into(),
            fields(&[
                ("Host", "x"),
                ("X-A", "a b c"),
                ("User-Agent", "sqlmap /1.8")
            ]),
            vec![],
        )]
    );
}

/// Apache joins a line folded onto the one before (obs-fold) with one space.
#[test]
fn folded_header_lines_are_joined_with_a_space() {
    let got = read_leniently(b"GET /f HTTP/1.1\r\nX-Foo: a \r\n  b\r\n\tc\r\nHost: x\r\n\r\n");
    assert_eq!(
        got,
        [(
            "/f".into(),
            "".into(),
            fields(&[("X-Foo", "a b c"), ("Host", "x")]),
            vec![],
        )]
    );
}

/// nginx and Apache take any `HTTP/1.x`: read as HTTP/1.1.
#[test]
fn any_http_1_minor_version_is_read_as_1_1() {
    let got = read_leniently(
        b"GET /v?a=1 HTTP/1.2\r\nHost: x\r\n\r\nPOST /w HTTP/1.10\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert_eq!(
        got,
        [
            ("/v".into(), "a=1".into(), fields(&[("Host", "x")]), vec![]),
            (
                "/w".into(),
                "".into(),
                fields(&[("Content-Length", "2")]),
                b"hi".to_vec()
            ),
        ]
    );
    let mut c = conn();
    c.send(true, b"GET /v HTTP/1.2\r\n\r\n", &[], T0 + MS);
    assert_eq!(run(c.segments)[0].request.version, 1);
}

/// Node takes 2000 fields by default and nginx any number: a head with 2000 is read (within the
/// head size cap), the last field too.
#[test]
fn a_head_with_2000_fields_is_read() {
    let mut req = b"GET /many?x=1 HTTP/1.1\r\n".to_vec();
    for i in 0..1999 {
        req.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
    }
    req.extend_from_slice(b"X-Last: ' OR 1=1--\r\n\r\n");
    let got = read_leniently(&req);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.as_str(), got[0].1.as_str()), ("/many", "x=1"));
    assert_eq!(got[0].2.len(), 2000);
    assert_eq!(got[0].2[1999], ("X-Last".into(), "' OR 1=1--".into()));
}

/// nginx, Apache and Node take a chunk size with leading zeros (16 digits and more) and refuse
/// only one that overflows.
#[test]
fn chunk_sizes_with_leading_zeros_are_read() {
    let got = read_leniently(
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n000000000000000f\r\n\
          ' OR 1=1--     \r\n00000000000000000000003\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].3, b"' OR 1=1--     abc");
    let mut c = conn();
    c.send(
        true,
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nabc\r\n0\r\n\r\n",
        &[],
        T0 + MS,
    );
    let (_, st) = run_with(c.segments, PipelineSettings::default());
    assert_eq!(st.http.malformed, 1);
}

/// Heads servers refuse too, or whose framing they might read differently, stay malformed; the
/// request after each is read.
#[test]
fn heads_servers_refuse_or_might_frame_differently_stay_malformed() {
    for bad in [
        &b"GARBAGE\x01\x02 nonsense\r\n\r\n"[..],
        b"GET /a HTTP/2.0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
        b"GET /a HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
        b"POST /a HTTP/1.1\r\nTransfer-Encoding@: chunked\r\n\r\n",
        b"POST /a HTTP/1.1\r\nContent-Length : 3\r\n\r\n",
        b"POST /a HTTP/1.1\r\nContent-Length: 3\x01\r\n\r\n",
        b"POST /a HTTP/1.1\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
    ] {
        let (got, malformed) = requests_read(bad, bad.len() + 64);
        let paths: Vec<&str> = got.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            (paths, malformed),
            (vec!["/next"], 1),
            "{}",
            bad.escape_ascii()
        );
    }
}

fn deflate_raw(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// A message: `head` (its fields, without the empty line), a Content-Length for `body`, and
/// `body`.
fn with_length(head: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{head}Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    m.extend_from_slice(body);
    m
}

/// One request and its response, each with a head and body, through the pipeline.
fn coded_exchange(
    req_head: &str,
    req_body: &[u8],
    resp_head: &str,
    resp_body: &[u8],
) -> Transaction {
    let mut c = conn();
    c.send(true, &with_length(req_head, req_body), &[], T0 + MS);
    c.send_mss(false, &with_length(resp_head, resp_body), 7, T0 + 2 * MS);
    let mut out = run(c.segments);
    assert_eq!(out.len(), 1);
    out.remove(0)
}

/// Stacked codings (`gzip, gzip`, `deflate, gzip`, or over two fields) are undone in turn, the
/// last listed first, in requests and responses; an unknown coding anywhere in the list, or
/// more than three, leaves the body as sent.
#[test]
fn stacked_codings_are_decoded_and_unknown_ones_leave_the_body_as_sent() {
    let secret = b"{\"aws\":\"AKIAIOSFODNN7EXAMPLE\"}";
    let sqli = b"{\"q\":\"1' OR '1'='1\"}";
    let t = coded_exchange(
        "POST /search HTTP/1.1\r\nContent-Type: application/json\r\nContent-Encoding: deflate, gzip\r\n",
        &gzip(&deflate_raw(sqli)),
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip, gzip\r\n",
        &gzip(&gzip(secret)),
    );
    assert_eq!(&t.req_body[..], &sqli[..]);
    assert_eq!(
        (&t.resp_body[..], t.resp_decoded),
        (&secret[..], Decoded::Yes)
    );
    let three = gzip(&deflate_raw(&gzip(secret)));
    let t = coded_exchange(
        "GET /a HTTP/1.1\r\n",
        b"",
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\ncontent-encoding: identity, deflate ,GZIP\r\n",
        &three,
    );
    assert_eq!(
        (&t.resp_body[..], t.resp_decoded),
        (&secret[..], Decoded::Yes)
    );
    for coding in [
        "gzip, compress",
        "x-compress, gzip",
        "gzip, gzip, gzip, gzip",
        "gzip, x",
    ] {
        let t = coded_exchange(
            "GET /a HTTP/1.1\r\n",
            b"",
            &format!("HTTP/1.1 200 OK\r\nContent-Encoding: {coding}\r\n"),
            &three,
        );
        assert_eq!(
            (&t.resp_body, t.resp_decoded),
            (&three, Decoded::No),
            "{coding}"
        );
    }
    // An inner stream that is not what its coding says is a failed decode.
    let t = coded_exchange(
        "GET /a HTTP/1.1\r\n",
        b"",
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip, gzip\r\n",
        &gzip(b"not gzip"),
    );
    assert_eq!(t.resp_decoded, Decoded::Failed);
}

/// The cap bounds every coding, stacked ones each: an outer gzip of megabytes of empty deflate
/// blocks (decoding to nothing) stops at the cap, as a plain bomb does, and so do brotli and
/// zstd ones (20 MB of zeros in a few kilobytes).
#[test]
fn bombs_stop_at_the_cap() {
    let mut empty_blocks = [0u8, 0, 0, 0xff, 0xff].repeat(1_000_000);
    empty_blocks.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    let mut settings = PipelineSettings::default();
    settings.http.body_cap = 1000;
    for (coding, body) in [
        ("deflate, gzip", gzip(&empty_blocks)),
        ("gzip, gzip", gzip(&gzip(&vec![b'a'; 5_000_000]))),
        ("br", brotli(&vec![0; 20_000_000])),
        ("zstd", zstd(&vec![0; 20_000_000])),
    ] {
        let mut c = conn();
        c.send(true, b"GET /bomb HTTP/1.1\r\n\r\n", &[], T0 + MS);
        let head = format!("HTTP/1.1 200 OK\r\nContent-Encoding: {coding}\r\n");
        c.send_mss(false, &with_length(&head, &body), 1448, T0 + 2 * MS);
        let out = run_with(c.segments, settings.clone()).0;
        assert_eq!(out[0].resp_decoded, Decoded::Capped, "{coding}");
        assert!(out[0].resp_body.len() <= 1000, "{coding}");
    }
}

fn brotli(b: &[u8]) -> Vec<u8> {
    let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
    w.write_all(b).unwrap();
    w.into_inner()
}

fn zstd(b: &[u8]) -> Vec<u8> {
    zstd::encode_all(b, 3).unwrap()
}

/// End to end: a secret in a doubly gzipped, a brotli or a zstd response is reported, as in a
/// plain one (a client asking for `br` or `zstd` must not get a leak past the scan).
#[test]
fn a_leak_in_a_coded_response_is_reported() {
    // Padding of few letters in no order, so that every coding compresses the text around the
    // key rather than storing it as it is (zstd keeps literals raw when coding them gains
    // nothing).
    let mut x = 1u32;
    let pad: String = (0..3000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            char::from(b'a' + (x >> 16) as u8 % 5)
        })
        .collect();
    let leak = format!(r#"{{"pad":"{pad}","env":{{"AWS_ACCESS_KEY_ID":"AKIAIOSFODNN7EXAMPLE"}}}}"#);
    for (coding, coded) in [
        ("gzip, gzip", gzip(&gzip(leak.as_bytes()))),
        ("br", brotli(leak.as_bytes())),
        ("zstd", zstd(leak.as_bytes())),
    ] {
        // Compressed for real: a short text can go into stored blocks, as it is.
        assert!(!coded.windows(4).any(|w| w == b"AKIA"), "{coding}");
        let mut t = coded_exchange(
            "GET /debug/config HTTP/1.1\r\nHost: api.example\r\nAccept-Encoding: gzip, br, zstd\r\n",
            b"",
            &format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: {coding}\r\n"
            ),
            &coded,
        );
        let mut a = crate::analyze::Analyzer::new(
            &crate::enrich::pipeline::EnrichSettings::default(),
            &crate::models::ModelsConfig::default(),
            &[],
        )
        .unwrap();
        let mut alerts = Vec::new();
        a.transaction(&mut t, &mut alerts);
        assert!(
            alerts
                .iter()
                .any(|a| a.kind == crate::models::AlertKind::DataExposure),
            "{coding}: {alerts:?}"
        );
    }
}

/// A brotli stream's window (4 MiB, encoders' default) is not held against the flow's cap of
/// 4 MiB: counted there, a segment that came out of order turned into a gap at once, and the
/// decoding ended.
#[test]
fn a_brotli_response_survives_reordering() {
    // Letters in no order, so that the coded body spans several segments.
    let mut x = 7u32;
    let text: Vec<u8> = (0..30_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            b'a' + (x >> 16) as u8 % 5
        })
        .collect();
    let coded = brotli(&text);
    assert!(coded.len() > 3 * 1448, "{} bytes coded", coded.len());
    let mut c = conn();
    c.send(true, b"GET /rows HTTP/1.1\r\n\r\n", &[], T0 + MS);
    let resp = with_length("HTTP/1.1 200 OK\r\nContent-Encoding: br\r\n", &coded);
    c.send_mss(false, &resp, 1448, T0 + 2 * MS);
    // The response's third and fourth segments swap places.
    let n = c.segments.len();
    let at = n - c
        .segments
        .iter()
        .rev()
        .take_while(|s| s.src.port() == 8080)
        .count();
    c.segments.swap(at + 2, at + 3);
    let out = run(c.segments);
    assert_eq!(out[0].resp_decoded, Decoded::Yes);
    assert_eq!(out[0].resp_body, text[..out[0].resp_body.len()]);
}

/// `br` and `zstd` bodies (cut into 7-byte segments), alone and stacked with gzip, in responses
/// and requests, are decoded; zstd's several frames too; a zstd frame asking for a window
/// beyond RFC 9659's 8 MiB, and a cut or broken stream, fail.
#[test]
fn brotli_and_zstd_bodies_are_decoded() {
    let text = br#"{"q":"1' OR '1'='1","rows":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}"#;
    let mut two_frames = zstd(&text[..10]);
    two_frames.extend_from_slice(&zstd(&text[10..]));
    for (coding, coded) in [
        ("br", brotli(text)),
        ("zstd", zstd(text)),
        ("zstd", two_frames),
        ("br, gzip", gzip(&brotli(text))),
        ("gzip, zstd", zstd(&gzip(text))),
    ] {
        let t = coded_exchange(
            &format!("POST /search HTTP/1.1\r\nContent-Encoding: {coding}\r\n"),
            &coded,
            &format!("HTTP/1.1 200 OK\r\nContent-Encoding: {coding}\r\n"),
            &coded,
        );
        assert_eq!(&t.req_body[..], &text[..], "{coding}");
        assert_eq!(
            (&t.resp_body[..], t.resp_decoded),
            (&text[..], Decoded::Yes),
            "{coding}"
        );
    }
    // A 16 MiB window (window log 24) is refused; so are a cut stream and garbage.
    let mut big_window = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    big_window.window_log(24).unwrap();
    big_window.include_contentsize(false).unwrap();
    big_window.write_all(text).unwrap();
    let big_window = big_window.finish().unwrap();
    let br = brotli(text);
    for (coding, coded) in [
        ("zstd", big_window),
        ("br", br[..br.len() - 2].to_vec()),
        ("zstd", b"not zstd at all".to_vec()),
        ("br", b"\xff\xff\xff not brotli".to_vec()),
    ] {
        let t = coded_exchange(
            "GET /a HTTP/1.1\r\n",
            b"",
            &format!("HTTP/1.1 200 OK\r\nContent-Encoding: {coding}\r\n"),
            &coded,
        );
        assert_eq!(t.resp_decoded, Decoded::Failed, "{coding} {coded:?}");
    }
}
