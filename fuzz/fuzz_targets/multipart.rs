//! Arbitrary bytes as a multipart/form-data body: the first byte picks the boundary's length
//! (taken from the start of the rest) and whether the body is whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel::http::multipart::FormData;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let n = (1 + (ctl & 0x3f) as usize).min(rest.len());
    let (boundary, body) = rest.split_at(n);
    if boundary.is_empty() {
        return;
    }
    for part in FormData::new(body, boundary, ctl & 0x80 != 0).parts() {
        let within = |s: &[u8]| body.as_ptr_range().contains(&s.as_ptr()) || s.is_empty();
        assert!(within(part.disposition));
        assert!(part.content.is_none_or(within));
        assert!(part.content_type.is_none_or(within));
        // Decoding never grows the content.
        for decoded in part.transfer_decodings() {
            assert!(decoded.len() <= part.content.map_or(0, <[u8]>::len));
        }
        let _ = (part.name(), part.is_binary_file(), part.params().count());
    }
});
