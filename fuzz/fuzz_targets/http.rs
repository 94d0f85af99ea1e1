//! Arbitrary bytes as the two directions of one connection: the HTTP layer behind in-order
//! reassembly, with cuts, gaps and FINs chosen by the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel::{
    capture::synth::Conversation,
    pipeline::{Pipeline, PipelineSettings},
};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (ctl, rest) = data.split_at(4);
    let split = (u16::from_le_bytes([ctl[0], ctl[1]]) as usize).min(rest.len());
    let (req, resp) = rest.split_at(split);
    let step = 1 + (ctl[2] as usize % 64);
    let mut c = Conversation::open(
        "198.18.0.100:40000".parse().unwrap(),
        "198.18.0.1:8080".parse().unwrap(),
        1_000_000,
    );
    let mut t = 2_000_000;
    let (mut i, mut j) = (0, 0);
    while i < req.len() || j < resp.len() {
        if i < req.len() {
            let n = step.min(req.len() - i);
            c.send(true, &req[i..i + n], &[], t);
            i += n;
        }
        if ctl[3] & 1 != 0 && i % 7 == 0 {
            c.lose(true, 3);
        }
        if j < resp.len() {
            let n = (step * 2).min(resp.len() - j);
            c.send(false, &resp[j..j + n], &[], t + 500);
            j += n;
        }
        if ctl[3] & 2 != 0 && j % 11 == 0 {
            c.lose(false, 5);
        }
        t += 1_000;
    }
    if ctl[3] & 4 != 0 {
        c.fin(false, t);
        c.fin(true, t);
    }
    let mut settings = PipelineSettings::default();
    settings.http.body_cap = 256;
    let mut p = Pipeline::new(settings);
    for s in c.segments {
        p.push(s);
    }
    p.finish();
    for t in p.drain() {
        let _ = t.to_json(&[]);
        assert!(t.req_body.len() <= 256 && t.resp_body.len() <= 256);
    }
});
