//! BPF_PROG_TEST_RUN tier for the TC capture programs: where a record's timestamp comes from.
//! An skb that carries a timestamp gives it (flagged when it is the realtime clock, the only
//! one BPF_PROG_TEST_RUN can set); one without gets the monotonic clock at the time of the run.
//! And IP fragments: captured whole when their datagram's first fragment was, for userspace to
//! reassemble.

use aya::programs::{TestRun, TestRunOptions};
use sentinel::{
    capture::{
        Segment,
        pcap::Link,
        ringbuf::{Clock, Consumer, RingStats},
        synth,
    },
    clock::monotonic_ns,
    datapath::{Datapath, LoadOptions},
};
use sentinel_common::{
    CAP_FLAG_EGRESS, CAP_FLAG_IP_PACKET, CAP_FLAG_TS_REALTIME, CaptureCounter, CaptureHeader,
    capture::names,
};
use sentinel_tests::{
    packets::{Ext, Packet, addr_key},
    tc::{capture_port, capture_port_snap, skb_ctx_coalesced, skb_ctx_with_tstamp},
};

const PORT: u16 = 8080;

/// Runs `prog` once on a 100-byte request segment and returns the record's header.
fn run_once(pin: &str, prog: &str, ctx_in: Option<&[u8]>) -> anyhow::Result<CaptureHeader> {
    let p = Packet::tcp("198.18.0.100", "198.18.0.1").ports(40000, PORT);
    run_frame(pin, prog, &p, ctx_in)
}

/// Runs `prog` once on `p` with a 100-byte payload and returns the record's header.
fn run_frame(
    pin: &str,
    prog: &str,
    p: &Packet,
    ctx_in: Option<&[u8]>,
) -> anyhow::Result<CaptureHeader> {
    let mut dp = Datapath::load(&LoadOptions::new(pin))?;
    let mut cap = dp.take_capture()?;
    capture_port(&mut cap, PORT)?;
    let frame = p.clone().payload(100).build();
    let r = dp.tc(prog)?.test_run(TestRunOptions {
        data_in: Some(&frame.bytes),
        ctx_in,
        ..Default::default()
    })?;
    anyhow::ensure!(
        r.return_value == 0,
        "TC_ACT_OK expected, got {}",
        r.return_value
    );
    let rec = cap
        .ring
        .next()
        .ok_or_else(|| anyhow::anyhow!("no record"))?;
    let hdr = header_of(&rec);
    anyhow::ensure!(
        hdr.cap_len == 100 && hdr.dst_port == PORT,
        "record: {hdr:?}"
    );
    Ok(hdr)
}

/// The header at the start of a ring buffer record; fails the test on a record too short to
/// hold one.
fn header_of(rec: &[u8]) -> CaptureHeader {
    assert!(
        rec.len() >= size_of::<CaptureHeader>(),
        "a record of {} bytes, shorter than a capture header ({} bytes)",
        rec.len(),
        size_of::<CaptureHeader>()
    );
    // SAFETY: at least one header's bytes (checked above); plain integers; unaligned read.
    unsafe { std::ptr::read_unaligned(rec.as_ptr().cast()) }
}

/// Runs `f` with a pin directory of its own, unloaded afterwards (also when `f` panics).
fn with_pin<T>(tag: &str, f: impl FnOnce(&str) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let pins = sentinel::lab::TempPins::new(&format!("tc-{tag}"));
    f(&pins.path().to_string_lossy())
}

#[test]
fn a_segment_without_an_skb_timestamp_gets_the_monotonic_clock() -> anyhow::Result<()> {
    sentinel_tests::require_root();
    let before = monotonic_ns();
    let hdr = with_pin("clock", |pin| run_once(pin, names::PROG_INGRESS, None))?;
    let after = monotonic_ns();
    assert!(
        (before..=after).contains(&hdr.ts_ns),
        "{} not in {before}..={after}",
        hdr.ts_ns
    );
    assert_eq!(hdr.cap_flags, 0);
    Ok(())
}

#[test]
fn a_segment_with_an_skb_timestamp_keeps_it_and_its_clock() -> anyhow::Result<()> {
    sentinel_tests::require_root();
    let ts = 1_795_000_000_123_456_789u64;
    let ctx = skb_ctx_with_tstamp(ts);
    let hdr = with_pin("stamp", |pin| run_once(pin, names::PROG_EGRESS, Some(&ctx)))?;
    assert_eq!(hdr.ts_ns, ts);
    assert_eq!(hdr.cap_flags, CAP_FLAG_EGRESS | CAP_FLAG_TS_REALTIME);
    Ok(())
}

#[test]
fn segments_the_fast_path_leaves_to_the_full_parser_are_captured() -> anyhow::Result<()> {
    // The fast path takes only untagged IPv4 without options; everything else goes through the
    // full parser on a zeroed packet.
    sentinel_tests::require_root();
    for (what, src, p) in [
        (
            "IPv6",
            "2001:db8::100",
            Packet::tcp("2001:db8::100", "2001:db8::1"),
        ),
        (
            "IPv6 with extension headers",
            "2001:db8::100",
            Packet::tcp("2001:db8::100", "2001:db8::1")
                .ext(Ext::HopByHop)
                .ext(Ext::DestOpts { units: 2 }),
        ),
        (
            "VLAN-tagged IPv4 with options",
            "198.18.0.100",
            Packet::tcp("198.18.0.100", "198.18.0.1")
                .vlan(100)
                .ipv4_options(8),
        ),
    ] {
        let p = p.ports(40000, PORT);
        let hdr = with_pin("slow", |pin| run_frame(pin, names::PROG_INGRESS, &p, None))?;
        assert_eq!(hdr.src, addr_key(src.parse()?), "{what}");
        assert_eq!((hdr.src_port, hdr.wire_len), (40000, 100), "{what}");
    }
    Ok(())
}

#[test]
fn ethernet_padding_is_not_payload() -> anyhow::Result<()> {
    // A pure ACK without TCP options is 54 bytes and reaches the wire padded to 60: the six
    // bytes of padding were captured as payload at the connection's next sequence number, and
    // the request that came with that number lost its first six bytes to them.
    sentinel_tests::require_root();
    with_pin("pad", |pin| {
        let mut dp = Datapath::load(&LoadOptions::new(pin))?;
        let mut cap = dp.take_capture()?;
        capture_port(&mut cap, PORT)?;
        let mut frame = Packet::tcp("198.18.0.100", "198.18.0.1")
            .ports(40000, PORT)
            .payload(0)
            .build()
            .bytes;
        assert_eq!(frame.len(), 54);
        frame[54 - 7] = 0x10; // ACK alone (the builder sets PSH|ACK)
        frame.resize(60, 0);
        let r = dp.tc(names::PROG_INGRESS)?.test_run(TestRunOptions {
            data_in: Some(&frame),
            ..Default::default()
        })?;
        assert_eq!(r.return_value, 0);
        let rec = cap.ring.next().map(|r| r.to_vec());
        assert!(rec.is_none(), "a record for a pure ACK: {rec:?}");
        Ok(())
    })
}

#[test]
fn tcp_the_capture_cannot_follow_is_counted() -> anyhow::Result<()> {
    // Seven IPv6 extension headers hide TCP from the parser: no record, but a count, so that
    // such a request does not go unseen without a trace. (IP fragments, which carry no TCP
    // header after the first, are captured whole: see the fragment tests.)
    sentinel_tests::require_root();
    with_pin("frag", |pin| {
        let mut dp = Datapath::load(&LoadOptions::new(pin))?;
        let mut cap = dp.take_capture()?;
        capture_port(&mut cap, PORT)?;
        let mut seven = Packet::tcp("2001:db8::100", "2001:db8::1").ports(40000, PORT);
        for _ in 0..7 {
            seven = seven.ext(Ext::DestOpts { units: 1 });
        }
        // More IPv6 extension headers than the parser walks (Linux takes them).
        let frame = seven.build().bytes;
        let r = dp.tc(names::PROG_INGRESS)?.test_run(TestRunOptions {
            data_in: Some(&frame),
            ..Default::default()
        })?;
        assert_eq!(r.return_value, 0);
        assert!(
            cap.ring.next().is_none(),
            "a record for a packet not followed"
        );
        let unfollowed: u64 = cap
            .counters
            .get(&(CaptureCounter::Unfollowed as u32), 0)?
            .iter()
            .sum();
        assert_eq!(unfollowed, 1);
        Ok(())
    })
}

/// The frames of `ip` split into fragments (Ethernet, IPv4 or IPv6 by `ip`'s version).
fn fragment_frames(ip: &[u8], id: u16, starts: &[usize]) -> Vec<Vec<u8>> {
    synth::fragments(ip, id, starts)
        .iter()
        .map(|f| synth::wrap(Link::Ethernet, f, false))
        .collect()
}

/// Runs the ingress program on each frame; returns the records it wrote.
fn ingress_records(
    dp: &mut Datapath,
    cap: &mut sentinel::datapath::loader::CaptureHandles,
    frames: &[Vec<u8>],
) -> anyhow::Result<Vec<Vec<u8>>> {
    for frame in frames {
        let r = dp.tc(names::PROG_INGRESS)?.test_run(TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        })?;
        anyhow::ensure!(r.return_value == 0, "TC_ACT_OK expected");
    }
    let mut out = Vec::new();
    while let Some(rec) = cap.ring.next() {
        out.push(rec.to_vec());
    }
    Ok(out)
}

fn counter(
    cap: &sentinel::datapath::loader::CaptureHandles,
    c: CaptureCounter,
) -> anyhow::Result<u64> {
    Ok(cap.counters.get(&(c as u32), 0)?.iter().sum())
}

/// The records the egress program writes for one response segment of `payload` (seq 5000,
/// ACK|PSH|FIN) under `snap_len`, given `ctx_in`, decoded by the daemon's consumer; and the
/// `Coalesced` and `Truncated` counters.
fn egress_segments(
    payload: &[u8],
    snap_len: u32,
    ctx_in: &[u8],
) -> anyhow::Result<(Vec<Segment>, u64, u64)> {
    let resp = synth::seg(
        0,
        "198.18.0.1:8080".parse()?,
        "198.18.0.100:40000".parse()?,
        5000,
        9000,
        0x19,
        payload,
    );
    let frame = synth::wrap(Link::Ethernet, &synth::ip_packet(&resp), false);
    with_pin("gso", |pin| {
        let mut dp = Datapath::load(&LoadOptions::new(pin))?;
        let mut cap = dp.take_capture()?;
        capture_port_snap(&mut cap, PORT, snap_len)?;
        let r = dp.tc(names::PROG_EGRESS)?.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(ctx_in),
            ..Default::default()
        })?;
        anyhow::ensure!(r.return_value == 0, "TC_ACT_OK expected");
        let (mut sink, stats, mut consumer) =
            (Vec::new(), RingStats::default(), Consumer::default());
        while let Some(rec) = cap.ring.next() {
            consumer.record(&rec, &Clock::with_offset(0), &stats, &mut sink);
        }
        Ok((
            sink,
            counter(&cap, CaptureCounter::Coalesced)?,
            counter(&cap, CaptureCounter::Truncated)?,
        ))
    })
}

#[test]
fn coalesced_packets_are_split_back_into_wire_segments() -> anyhow::Result<()> {
    // A server's TCP hands TC segments of up to 64 KiB (GSO; GRO does the same on ingress),
    // which a snap length meant for wire segments would cut: a chunked response lost its
    // framing after the first 2 KiB of each. The snap length applies per wire segment.
    sentinel_tests::require_root();
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();

    // Three segments of 1000 bytes, a snap length that holds one: every byte, in one record
    // (the largest class holds them), flags as they were.
    let (segs, coalesced, cut) = egress_segments(&payload, 2048, &skb_ctx_coalesced(3, 1000))?;
    assert_eq!((coalesced, cut), (1, 0));
    assert_eq!(segs.len(), 1, "{segs:?}");
    assert_eq!(
        (segs[0].seq, segs[0].flags, segs[0].wire_len),
        (5000, 0x19, 3000)
    );
    assert_eq!(&segs[0].payload[..], &payload[..]);

    // A snap length shorter than a wire segment: each of the three keeps its first 512 bytes
    // at its own sequence number; FIN and PSH stay on the last.
    let (segs, coalesced, cut) = egress_segments(&payload, 512, &skb_ctx_coalesced(3, 1000))?;
    assert_eq!((coalesced, cut), (1, 1));
    let got: Vec<(u32, u8, u32)> = segs.iter().map(|s| (s.seq, s.flags, s.wire_len)).collect();
    assert_eq!(
        got,
        [(5000, 0x10, 1000), (6000, 0x10, 1000), (7000, 0x19, 1000)]
    );
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(
            &s.payload[..],
            &payload[i * 1000..i * 1000 + 512],
            "segment {i}"
        );
    }

    // A segment count of 0 with a segment size: a packet from a virtio or tap header (a VM's
    // TSO), whose count the kernel fills in later, is split all the same.
    let (segs, coalesced, cut) = egress_segments(&payload, 512, &skb_ctx_coalesced(0, 1000))?;
    assert_eq!((coalesced, cut, segs.len()), (1, 1, 3), "{segs:?}");

    // An skb of one segment longer than the snap length is cut as before.
    let (segs, coalesced, cut) = egress_segments(&payload, 2048, &[0u8; 192])?;
    assert_eq!((coalesced, cut), (0, 1));
    assert_eq!(segs.len(), 1);
    assert_eq!((segs[0].wire_len, segs[0].payload.len()), (3000, 2048));
    Ok(())
}

#[test]
fn the_fragments_of_a_request_are_captured_whole_and_reassemble_into_it() -> anyhow::Result<()> {
    // The server's kernel reassembles fragments after TC: a request split over IP fragments
    // (an SQL injection cut in two, here) must reach the reassembler all the same. The first
    // fragment names the ports, so it is remembered; the later ones are captured by its key.
    sentinel_tests::require_root();
    for (c, s, starts) in [
        // IPv4: the first fragment carries 8 bytes of TCP (ports only), as Linux accepts.
        (
            "198.18.0.100:40000",
            "198.18.0.1:8080",
            &[0usize, 8, 64][..],
        ),
        // IPv6: destination options and the whole TCP header first (RFC 8200 wants it).
        (
            "[2001:db8::100]:40000",
            "[2001:db8::1]:8080",
            &[0, 32, 64][..],
        ),
    ] {
        let body = b"GET /accounts?id=1%27%20UNION%20SELECT%20password%20FROM%20users-- HTTP/1.1\r\nHost: bank.test\r\n\r\n";
        let want = synth::seg(0, c.parse()?, s.parse()?, 1000, 2000, 0x18, body);
        let frames = fragment_frames(&synth::ip_packet(&want), 0x4242, starts);
        with_pin("frags", |pin| {
            let mut dp = Datapath::load(&LoadOptions::new(pin))?;
            let mut cap = dp.take_capture()?;
            capture_port(&mut cap, PORT)?;
            let recs = ingress_records(&mut dp, &mut cap, &frames)?;
            assert_eq!(recs.len(), 3, "{c}: one record per fragment");
            let mut sink: Vec<Segment> = Vec::new();
            let stats = RingStats::default();
            let mut consumer = Consumer::default();
            for (i, rec) in recs.iter().enumerate() {
                let hdr = header_of(rec);
                assert_ne!(hdr.cap_flags & CAP_FLAG_IP_PACKET, 0, "{c}: record {i}");
                // The IP packet's length (a frame may carry Ethernet padding after it).
                let ip_len = u16::from_be_bytes(if c.starts_with('[') {
                    [frames[i][18], frames[i][19]]
                } else {
                    [frames[i][16], frames[i][17]]
                }) as usize;
                let ip_len = if c.starts_with('[') {
                    ip_len + 40
                } else {
                    ip_len
                };
                assert_eq!(hdr.wire_len as usize, ip_len, "{c}: record {i}");
                assert_eq!(hdr.cap_len, hdr.wire_len, "{c}: record {i}");
                consumer.record(rec, &Clock::with_offset(0), &stats, &mut sink);
            }
            assert_eq!(sink.len(), 1, "{c}");
            let got = &sink[0];
            assert_eq!((got.src, got.dst), (want.src, want.dst), "{c}");
            assert_eq!((got.seq, got.ack, got.flags), (1000, 2000, 0x18), "{c}");
            assert_eq!(&got.payload[..], &body[..], "{c}");
            assert_eq!(counter(&cap, CaptureCounter::Fragments)?, 3);
            assert_eq!(counter(&cap, CaptureCounter::Unfollowed)?, 0);
            Ok(())
        })?;
    }
    Ok(())
}

#[test]
fn later_fragments_are_captured_whether_or_not_their_first_came() -> anyhow::Result<()> {
    // Later fragments that come before their first, which names the ports (Linux reassembles
    // a datagram sent last fragment first), are captured; so are the later fragments of a
    // datagram to another port, whose first fragment is not (userspace times them out).
    sentinel_tests::require_root();
    let want = synth::seg(
        0,
        "198.18.0.100:40000".parse()?,
        "198.18.0.1:8080".parse()?,
        1,
        1,
        0x18,
        &[b'a'; 200],
    );
    let early = fragment_frames(&synth::ip_packet(&want), 7, &[0, 64, 128]);
    let other_port = synth::seg(
        0,
        "198.18.0.100:40000".parse()?,
        "198.18.0.1:9999".parse()?,
        1,
        1,
        0x18,
        &[b'a'; 200],
    );
    let other = fragment_frames(&synth::ip_packet(&other_port), 8, &[0, 64, 128]);
    with_pin("frags-unmatched", |pin| {
        let mut dp = Datapath::load(&LoadOptions::new(pin))?;
        let mut cap = dp.take_capture()?;
        capture_port(&mut cap, PORT)?;
        let frames = [
            early[1].clone(),
            early[2].clone(),
            other[0].clone(),
            other[1].clone(),
            other[2].clone(),
        ];
        let recs = ingress_records(&mut dp, &mut cap, &frames)?;
        assert_eq!(recs.len(), 4, "every later fragment of TCP");
        for rec in &recs {
            let hdr = header_of(rec);
            assert_ne!(hdr.cap_flags & CAP_FLAG_IP_PACKET, 0);
            assert_eq!((hdr.src_port, hdr.dst_port), (0, 0), "ports unknown");
        }
        assert_eq!(counter(&cap, CaptureCounter::Unfollowed)?, 0);
        assert_eq!(counter(&cap, CaptureCounter::Fragments)?, 4);
        // The first fragment, arriving last, is captured with its ports.
        let recs = ingress_records(&mut dp, &mut cap, &early[..1])?;
        assert_eq!(recs.len(), 1);
        let hdr = header_of(&recs[0]);
        assert_eq!((hdr.src_port, hdr.dst_port), (40000, 8080));
        assert_eq!(counter(&cap, CaptureCounter::Fragments)?, 5);
        Ok(())
    })
}
