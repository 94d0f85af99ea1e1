//! Arbitrary bytes as a capture file, through the reader and the whole pipeline.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel::{
    capture::CaptureReader,
    pipeline::{Pipeline, PipelineSettings},
};

fuzz_target!(|data: &[u8]| {
    let Ok(mut r) = CaptureReader::new(data) else {
        return;
    };
    let mut p = Pipeline::new(PipelineSettings::default());
    let mut n = 0;
    while let Ok(Some(seg)) = r.next_segment() {
        p.push(seg);
        n += 1;
        assert!(n <= data.len(), "every segment comes from a record of the input");
    }
    p.finish();
    for t in p.drain() {
        let _ = t.to_json(&[]);
    }
});
