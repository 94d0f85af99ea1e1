use super::*;
use crate::capture::synth::{Conversation, seg};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Stream {
    up: Vec<u8>,
    down: Vec<u8>,
    fins: Vec<Dir>,
}

#[derive(Default)]
struct Rec {
    closed: Vec<(FlowInfo, Stream, CloseReason)>,
}

impl StreamHandler for Rec {
    type Conn = Stream;
    fn open(&mut self, _: &FlowInfo, _: u64) -> Stream {
        Stream::default()
    }
    fn data(&mut self, c: &mut Stream, _: &FlowInfo, dir: Dir, _: u64, data: &[u8]) {
        match dir {
            Dir::ToServer => c.up.extend_from_slice(data),
            Dir::ToClient => c.down.extend_from_slice(data),
        }
    }
    fn gap(&mut self, c: &mut Stream, _: &FlowInfo, dir: Dir, _: u64, len: u64) {
        let m = format!("<gap {len}>");
        match dir {
            Dir::ToServer => c.up.extend_from_slice(m.as_bytes()),
            Dir::ToClient => c.down.extend_from_slice(m.as_bytes()),
        }
    }
    fn fin(&mut self, c: &mut Stream, _: &FlowInfo, dir: Dir, _: u64) {
        c.fins.push(dir);
    }
    fn close(&mut self, c: Stream, f: &FlowInfo, _: u64, r: CloseReason) {
        self.closed.push((*f, c, r));
    }
    fn mem(c: &Stream) -> usize {
        c.up.len() / 1000
    }
}

const C: &str = "198.18.0.100:40000";
const S: &str = "198.18.0.1:8080";
const MS: u64 = 1_000_000;

fn conv() -> Conversation {
    Conversation::open(C.parse().unwrap(), S.parse().unwrap(), 1_000 * MS)
}

fn run(
    segs: impl IntoIterator<Item = Segment>,
    settings: Settings,
) -> (Vec<(FlowInfo, Stream, CloseReason)>, ReassemblyStats) {
    let mut r = Reassembler::new(Rec::default(), settings);
    for s in segs {
        r.push(s);
    }
    r.finish();
    let st = r.stats();
    (std::mem::take(&mut r.handler().closed), st)
}

fn talk() -> Conversation {
    let mut c = conv();
    c.send(
        true,
        b"hello server, this is a request",
        &[5, 11, 20],
        1_001 * MS,
    );
    c.send(false, b"and this is the answer", &[3, 9], 1_002 * MS);
    c.fin(true, 1_003 * MS);
    c.fin(false, 1_003 * MS);
    c
}

#[test]
fn in_order_streams_close_on_fin() {
    let (closed, st) = run(talk().segments, Settings::default());
    assert_eq!(closed.len(), 1);
    let (info, s, reason) = &closed[0];
    assert_eq!(info.client, C.parse().unwrap());
    assert_eq!(s.up, b"hello server, this is a request");
    assert_eq!(s.down, b"and this is the answer");
    assert_eq!(s.fins, vec![Dir::ToServer, Dir::ToClient]);
    assert_eq!(*reason, CloseReason::Fin);
    assert_eq!((st.closed_fin, st.gaps, st.out_of_order), (1, 0, 0));
    assert_eq!(st.mem_current, 0, "{st:?}");
}

#[test]
fn reordered_duplicated_segments_give_the_same_streams() {
    let mut segs = talk().segments;
    let tail: Vec<Segment> = segs.split_off(3);
    let mut shuffled: Vec<Segment> = tail.iter().rev().cloned().collect();
    shuffled.push(tail[1].clone());
    shuffled.insert(2, tail[0].clone());
    segs.extend(shuffled);
    let (closed, st) = run(segs, Settings::default());
    assert_eq!(closed[0].1.up, b"hello server, this is a request");
    assert_eq!(closed[0].1.down, b"and this is the answer");
    // The duplicates after both FINs find a closed flow (a tombstone).
    assert!(
        st.out_of_order > 0 && st.retransmissions + st.late > 0,
        "{st:?}"
    );
}

#[test]
fn overlaps_keep_the_first_copy_and_count_conflicts() {
    let mut c = conv();
    let base = c.segments[2].seq;
    let (cl, sv) = (c.client, c.server);
    // "abcdef" in order, then an overlapping "XYZgh" at offset 3 (conflicting "def").
    c.segments
        .push(seg(1_001 * MS, cl, sv, base, 0, flags::ACK, b"abcdef"));
    c.segments.push(seg(
        1_002 * MS,
        cl,
        sv,
        base.wrapping_add(3),
        0,
        flags::ACK,
        b"XYZgh",
    ));
    // Held out of order, then overlapped before the hole fills.
    c.segments.push(seg(
        1_003 * MS,
        cl,
        sv,
        base.wrapping_add(10),
        0,
        flags::ACK,
        b"klm",
    ));
    c.segments.push(seg(
        1_004 * MS,
        cl,
        sv,
        base.wrapping_add(9),
        0,
        flags::ACK,
        b"jKLMn",
    ));
    c.segments.push(seg(
        1_005 * MS,
        cl,
        sv,
        base.wrapping_add(8),
        0,
        flags::ACK,
        b"i",
    ));
    let (closed, st) = run(c.segments, Settings::default());
    assert_eq!(closed[0].1.up, b"abcdefghijklmn");
    // Only buffered copies are compared: delivered bytes are not kept.
    assert_eq!(st.overlap_conflicts, 1, "{st:?}");
    assert_eq!(st.overlaps, 2, "{st:?}");
}

#[test]
fn a_lost_segment_becomes_a_gap_after_the_timeout() {
    let mut c = conv();
    c.send(true, b"first ", &[], 1_001 * MS);
    c.lose(true, 7);
    c.send(true, b"third", &[], 1_002 * MS);
    let mut r = Reassembler::new(Rec::default(), Settings::default());
    for s in c.segments {
        r.push(s);
    }
    r.advance(1_500 * MS);
    assert!(r.handler().closed.is_empty());
    assert_eq!(r.stats().gaps, 0, "not yet");
    r.advance(3_000 * MS);
    assert_eq!(r.stats().gaps, 1);
    assert_eq!(r.stats().gap_bytes, 7);
    r.finish();
    assert_eq!(r.handler().closed[0].1.up, b"first <gap 7>third");
}

/// A reassembler that took `segs` with each flow capped at 2000 bytes (and its overhead).
fn under_a_2000_byte_flow_cap(segs: Vec<Segment>) -> Reassembler<Rec> {
    let settings = Settings {
        flow_cap: 2000 + FLOW_OVERHEAD,
        ..Settings::default()
    };
    let mut r = Reassembler::new(Rec::default(), settings);
    for s in segs {
        r.push(s);
    }
    r
}

#[test]
fn the_flow_cap_forces_gaps() {
    let mut c = conv();
    c.send(true, b"x", &[], 1_001 * MS);
    c.lose(true, 10);
    let big = vec![b'y'; 3000];
    c.send(true, &big, &[1000, 2000], 1_002 * MS);
    let mut r = under_a_2000_byte_flow_cap(c.segments);
    assert_eq!(r.stats().gaps, 1, "{:?}", r.stats());
    r.finish();
    let up = &r.handler().closed[0].1.up;
    assert!(up.starts_with(b"x<gap 10>yyy"));
    assert_eq!(up.len(), 1 + "<gap 10>".len() + 3000);
}

#[test]
fn the_flow_cap_counts_both_directions() {
    let mut c = conv();
    // Each direction holds 1500 bytes past a hole: under a 2000-byte cap alone, over it
    // together.
    c.send(true, b"x", &[], 1_001 * MS);
    c.lose(true, 10);
    c.send(true, &[b'y'; 1500], &[], 1_002 * MS);
    c.send(false, b"a", &[], 1_003 * MS);
    c.lose(false, 10);
    c.send(false, &[b'b'; 1500], &[], 1_004 * MS);
    let r = under_a_2000_byte_flow_cap(c.segments);
    assert_eq!(r.stats().gaps, 1, "{:?}", r.stats());
}

#[test]
fn idle_flows_close_and_rst_closes_at_once() {
    let mut c = conv();
    c.send(true, b"GET / HTTP/1.1\r\n\r\n", &[], 1_001 * MS);
    let mut r = Reassembler::new(Rec::default(), Settings::default());
    for s in c.segments.clone() {
        r.push(s);
    }
    r.advance(200_000 * MS);
    assert_eq!(r.stats().closed_idle, 1);
    assert_eq!(r.handler().closed[0].2, CloseReason::Idle);

    let mut c = conv();
    c.send(true, b"abc", &[], 1_001 * MS);
    c.rst(false, 1_002 * MS);
    let (closed, st) = run(c.segments, Settings::default());
    assert_eq!(closed[0].2, CloseReason::Rst);
    assert_eq!(st.closed_rst, 1);
}

#[test]
fn the_memory_cap_evicts_the_oldest_flows() {
    let settings = Settings {
        mem_cap: 10 * FLOW_OVERHEAD,
        ..Settings::default()
    };
    let mut r = Reassembler::new(Rec::default(), settings);
    for i in 0..30u16 {
        let client: SocketAddr = format!("198.18.0.{}:{}", 10 + i, 40000 + i)
            .parse()
            .unwrap();
        let mut c = Conversation::open(client, S.parse().unwrap(), (1_000 + i as u64) * MS);
        c.send(true, b"data", &[], (1_000 + i as u64) * MS);
        for s in c.segments {
            r.push(s);
        }
    }
    let st = r.stats();
    assert!(st.evicted >= 20, "{st:?}");
    assert!(st.mem_current <= 10 * FLOW_OVERHEAD as u64);
    // The survivors are the newest flows.
    let evicted: Vec<u16> = r
        .handler()
        .closed
        .iter()
        .map(|(f, ..)| f.client.port())
        .collect();
    assert!(evicted.iter().all(|p| *p < 40000 + 20), "{evicted:?}");
    assert!(
        r.handler()
            .closed
            .iter()
            .all(|c| c.2 == CloseReason::Evicted)
    );
}

#[test]
fn mid_stream_flows_judge_roles_and_hold_until_sure() {
    let (cl, sv) = (C.parse().unwrap(), S.parse().unwrap());
    let mut c = Conversation::mid_stream(cl, sv, 5000, 9000);
    c.send(false, b"HTTP/1.1 200 OK\r\n\r\n", &[], 1_000 * MS);
    c.send(true, b"GET /b HTTP/1.1\r\n\r\n", &[4], 1_001 * MS);
    // Response first: its sender is the server.
    let (closed, st) = run(c.segments.clone(), Settings::default());
    assert_eq!(closed[0].0.client, cl);
    assert_eq!(closed[0].1.up, b"GET /b HTTP/1.1\r\n\r\n");
    assert_eq!(st.gaps, 0);
    // Reordered before the start: held, then started at the lowest sequence number.
    let mut segs = c.segments.clone();
    segs.swap(1, 2);
    let (closed, _) = run(segs, Settings::default());
    assert_eq!(closed[0].1.up, b"GET /b HTTP/1.1\r\n\r\n");
}

#[test]
fn a_late_syn_still_sets_the_start() {
    let mut c = talk();
    let syn = c.segments.remove(0);
    c.segments.insert(4, syn);
    let (closed, _) = run(c.segments, Settings::default());
    assert_eq!(closed[0].1.up, b"hello server, this is a request");
    assert_eq!(closed[0].0.client, C.parse().unwrap());
}

#[test]
fn snap_length_cuts_become_gaps() {
    let mut c = conv();
    c.send(true, b"0123456789", &[], 1_001 * MS);
    c.send(true, b"tail", &[], 1_002 * MS);
    let s = &mut c.segments[3];
    s.payload = s.payload.slice(..4);
    let (closed, st) = run(c.segments, Settings::default());
    assert_eq!(closed[0].1.up, b"0123<gap 6>tail");
    assert_eq!(st.truncated_segments, 1);
}

#[test]
fn closed_flows_ignore_late_segments_and_reopen_on_syn() {
    let c = talk();
    let mut segs = c.segments.clone();
    segs.push(c.segments[4].clone());
    let (closed, st) = run(segs, Settings::default());
    assert_eq!(closed.len(), 1);
    assert_eq!(st.late, 1);
    let mut segs = c.segments.clone();
    let mut again = Conversation::open(c.client, c.server, 2_000 * MS);
    again.send(true, b"second", &[], 2_001 * MS);
    segs.extend(again.segments);
    let (closed, _) = run(segs, Settings::default());
    assert_eq!(closed.len(), 2);
    assert_eq!(closed[1].1.up, b"second");
}

#[test]
fn the_ack_of_the_last_fin_is_not_late() {
    let mut c = talk();
    c.ack(true, 1_004 * MS);
    let (closed, st) = run(c.segments.clone(), Settings::default());
    assert_eq!(closed.len(), 1);
    assert_eq!(st.late, 0, "{st:?}");
    assert_eq!(st.ignored, 1, "{st:?}");
    // A FIN sent again is still late.
    let fin = c.segments[c.segments.len() - 2].clone();
    c.segments.push(fin);
    let (_, st) = run(c.segments, Settings::default());
    assert_eq!(st.late, 1, "{st:?}");
}

#[test]
fn sequence_numbers_wrap() {
    let mut c = conv();
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    c.send_mss(true, &big, 1448, 1_001 * MS);
    let mut segs = c.segments;
    segs[3..].reverse();
    let (closed, st) = run(segs, Settings::default());
    assert_eq!(closed[0].1.up, big);
    assert_eq!(st.gaps, 0);
}
