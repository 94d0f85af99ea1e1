//! Arbitrary bytes as a TC ring buffer record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel::capture::ringbuf::{Clock, Record, decode};

fuzz_target!(|data: &[u8]| {
    if let Ok(Record::Segment(seg)) = decode(data, &Clock::with_offset(0)) {
        assert!(seg.payload.len() <= data.len());
        assert!(seg.wire_len as usize >= seg.payload.len());
    }
});
