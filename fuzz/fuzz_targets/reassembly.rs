//! Arbitrary segments through TCP reassembly and HTTP, with caps small enough that gaps,
//! evictions and timeouts happen.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel::{
    capture::Segment,
    pipeline::{Pipeline, PipelineSettings},
};

const PIECES: [&[u8]; 8] = [
    b"GET /a?b=c HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /login HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HEAD / HTTP/1.1\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"\r\n",
];

fuzz_target!(|data: &[u8]| {
    let mut settings = PipelineSettings::default();
    settings.reassembly.flow_cap = 4096;
    settings.reassembly.mem_cap = 16 * 1024;
    settings.reassembly.max_flows = 8;
    settings.reassembly.gap_timeout_ns = 1_000;
    settings.reassembly.idle_timeout_ns = 100_000;
    settings.reassembly.hold_bytes = 512;
    settings.http.body_cap = 64;
    settings.http.max_head = 512;
    settings.http.max_resync = 1024;
    settings.http.max_pending = 4;
    let mut p = Pipeline::new(settings);
    let hosts = ["198.18.0.1:80", "198.18.0.2:40000", "[2001:db8::1]:80", "198.18.0.3:40001"];
    let mut ts = 0u64;
    // Each segment: 8 bytes of header, then a payload chosen from pieces or raw bytes.
    for rec in data.chunks(12) {
        if rec.len() < 8 {
            break;
        }
        let src = hosts[(rec[0] & 3) as usize].parse().unwrap();
        let dst = hosts[((rec[0] >> 2) & 3) as usize].parse().unwrap();
        let seq = u32::from_le_bytes([rec[1], rec[2], 0, 0]).wrapping_sub(rec[3] as u32 * 7);
        let flags = rec[4];
        ts += rec[5] as u64 * 37;
        let payload: Vec<u8> = match rec[6] >> 5 {
            0..=3 => PIECES[(rec[6] & 7) as usize].to_vec(),
            _ => rec[8..].to_vec(),
        };
        let wire_len = payload.len() as u32 + (rec[7] & 0x0f) as u32;
        if rec[7] & 0x80 != 0 {
            p.advance(ts + 1_000_000);
        }
        p.push(Segment {
            ts_ns: ts,
            src,
            dst,
            seq,
            ack: 0,
            flags,
            payload: payload.into(),
            wire_len,
        });
        for t in p.drain() {
            let _ = t.to_json(&[]);
        }
    }
    p.finish();
    for t in p.drain() {
        let _ = t.to_json(&[]);
    }
    let st = p.stats();
    assert_eq!(st.reassembly.mem_current, 0, "finish releases every flow");
});
