//! `cargo xtask bench capture` (kernel part): cost of the TC capture program per packet by
//! BPF_PROG_TEST_RUN for 64, 512 and 1500-byte payloads, against a reference program that only
//! reserves, copies and submits the same bytes. Ratios in one run, interleaved, medians.
//!
//! The ring buffer is drained between batches so that every run really reserves and copies
//! (a full ring would make both programs cheaper and the comparison meaningless).

use std::{path::Path, time::Duration};

use aya::programs::{TestRun, TestRunOptions};
use sentinel::{
    datapath::{Datapath, LoadOptions},
    lab::TempPins,
};
use sentinel_common::capture::names;
use sentinel_tests::bench::{median, median_ratio};

const PORT: u16 = 8080;

/// Ethernet + IPv4 + TCP (no options, PSH|ACK) to port 8080 with `payload` bytes.
fn frame(payload: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + payload);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
    let tot = (20 + 20 + payload) as u16;
    f.extend_from_slice(&[
        0x45,
        0,
        (tot >> 8) as u8,
        tot as u8,
        0,
        0,
        0x40,
        0,
        64,
        6,
        0,
        0,
    ]);
    f.extend_from_slice(&[198, 18, 0, 100, 198, 18, 0, 1]);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&PORT.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes());
    f.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend((0..payload).map(|i| b'a' + (i % 26) as u8));
    f
}

fn main() -> anyhow::Result<()> {
    sentinel_tests::require_root();
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 5 } else { 15 };
    // Unloaded on drop, also on an error or a panic.
    let pins = TempPins::new("bench-tc");
    let table = run(pins.path(), rounds)?;
    drop(pins);
    println!("{table}");
    sentinel_tests::bench_report::write_section("capture-tc", &table)?;
    Ok(())
}

fn run(pin: &Path, rounds: usize) -> anyhow::Result<String> {
    let mut dp = Datapath::load(&LoadOptions::new(pin))?;
    let mut cap = dp.take_capture()?;
    sentinel_tests::tc::capture_port(&mut cap, PORT)?;
    // Load both programs up front.
    dp.tc(names::PROG_INGRESS)?;
    dp.tc(names::PROG_REFERENCE)?;
    // Our program runs twice per round: on an skb without a timestamp (it reads the clock,
    // as on ingress from a NIC without RX timestamps) and on one that carries a timestamp
    // (TCP's departure time on egress and across a veth; BPF_PROG_TEST_RUN can only give it
    // the realtime clock, which takes the same path but for the clock's flag).
    let stamped = sentinel_tests::tc::skb_ctx_with_tstamp(1_795_000_000_000_000_000);
    let mut rows = Vec::new();
    for payload in [64usize, 512, 1500] {
        let pkt = frame(payload);
        // A batch must fit the 16 MiB ring: records are at most 72 + 2048 bytes.
        let repeat = 4000u32;
        let arms: [(&str, Option<&[u8]>); 3] = [
            (names::PROG_INGRESS, None),
            (names::PROG_INGRESS, Some(&stamped)),
            (names::PROG_REFERENCE, None),
        ];
        let mut ns = [Vec::new(), Vec::new(), Vec::new()];
        for round in 0..rounds {
            // Interleave, rotating which arm goes first.
            for k in 0..arms.len() {
                let i = (round + k) % arms.len();
                let (name, ctx_in) = arms[i];
                let prog = dp.tc(name)?;
                let r = prog.test_run(TestRunOptions {
                    data_in: Some(&pkt),
                    ctx_in,
                    repeat,
                    ..Default::default()
                })?;
                ns[i].push(r.duration.as_nanos() as f64);
                let mut drained = 0u32;
                while cap.ring.next().is_some() {
                    drained += 1;
                }
                anyhow::ensure!(
                    drained == repeat,
                    "{name} produced {drained} records for {repeat} runs at {payload} B"
                );
            }
        }
        // The ratio is the median of the per-round ratios: the arms of a round ran back to
        // back, so a slow phase of the machine cancels out.
        rows.push((
            payload,
            median(&ns[0]),
            median(&ns[1]),
            median(&ns[2]),
            median_ratio(&ns[0], &ns[2]),
            median_ratio(&ns[1], &ns[2]),
        ));
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut t = String::from(
        "### TC capture program cost (BPF_PROG_TEST_RUN, ns per packet, median of rounds)\n\n\
         `sentinel_tc_ingress` on a segment to port 8080, without and with a timestamp in the skb \
         (without one it reads the clock, `bpf_ktime_get_ns`; with one it uses it: TCP's departure \
         time on egress and over veth). Reference: reserves, copies and submits the same bytes \
         (header and payload) and nothing else.\n\n\
         | payload | sentinel, skb without timestamp | sentinel, skb with timestamp | reference (reserve+copy+submit) | ratio without | ratio with | target |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (p, o, s, r, ratio, ratio_s) in rows {
        t.push_str(&format!(
            "| {p} B | {o:.0} | {s:.0} | {r:.0} | {ratio:.2}x | {ratio_s:.2}x | <= 1.20x |\n"
        ));
    }
    Ok(t)
}
