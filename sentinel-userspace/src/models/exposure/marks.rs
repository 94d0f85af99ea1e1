//! Where the exposure scan reads a body, 32 bytes at a time: bit masks of the bytes where
//! something it looks for starts, by vector compares (SSE2, part of every x86-64; elsewhere a
//! byte at a time). A byte-wise pass over JSON cost about 4 ns a byte here.

/// Bytes judged at once; bit `j` of a mask stands for byte `j` of the chunk.
pub(super) const CHUNK: usize = 32;

/// First letters of the secret prefixes ([`super::scan`] checks that each prefix's is here).
pub(super) const PREFIX_FIRSTS: [u8; 4] = [b'A', b'g', b'x', b's'];

/// Where things start in a chunk, as bit masks. A byte starts a word when no ASCII letter or
/// digit comes right before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Marks {
    /// Digits starting a word: where a card number or id can start.
    pub digit_starts: u32,
    /// Upper-case letters starting a word: where an IBAN can start.
    pub upper_starts: u32,
    /// `@`.
    pub at: u32,
    /// A secret prefix's first letter starting a word.
    pub prefix: u32,
}

/// The marks of the chunk of `b` at `i`; past the end of `b` are zeros, which mark nothing, and
/// nothing comes before the body.
#[inline]
pub(super) fn marks_at(b: &[u8], i: usize) -> Marks {
    if i >= 1
        && let Some(chunk) = b.get(i..i + CHUNK)
    {
        let prev = &b[i - 1..i - 1 + CHUNK];
        return marks(
            chunk.try_into().expect("CHUNK bytes"),
            prev.try_into().expect("CHUNK bytes"),
        );
    }
    let n = (b.len() - i).min(CHUNK);
    let (mut chunk, mut prev) = ([0u8; CHUNK], [0u8; CHUNK]);
    chunk[..n].copy_from_slice(&b[i..i + n]);
    match i {
        0 => prev[1..n].copy_from_slice(&b[..n - 1]),
        _ => prev[..n].copy_from_slice(&b[i - 1..i - 1 + n]),
    }
    marks(&chunk, &prev)
}

/// The marks of `chunk`, whose bytes are each preceded by the same byte of `prev`.
#[inline(always)]
pub(super) fn marks(chunk: &[u8; CHUNK], prev: &[u8; CHUNK]) -> Marks {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::marks(chunk, prev)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        marks_bytewise(chunk, prev)
    }
}

/// [`marks`] a byte at a time.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub(super) fn marks_bytewise(chunk: &[u8; CHUNK], prev: &[u8; CHUNK]) -> Marks {
    let mut m = Marks::default();
    for (j, (&c, &p)) in chunk.iter().zip(prev).enumerate() {
        let bit = |on: bool| u32::from(on) << j;
        let starts = !p.is_ascii_alphanumeric();
        m.digit_starts |= bit(c.is_ascii_digit() && starts);
        m.upper_starts |= bit(c.is_ascii_uppercase() && starts);
        m.at |= bit(c == b'@');
        m.prefix |= bit(PREFIX_FIRSTS.contains(&c) && starts);
    }
    m
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_andnot_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_sub_epi8,
    };

    use super::{CHUNK, Marks, PREFIX_FIRSTS};

    // SAFETY (every `unsafe` below): SSE2 is part of every x86-64, and the loads read 16 bytes
    // that are there without needing alignment.

    #[inline(always)]
    fn halves(chunk: &[u8; CHUNK]) -> [__m128i; 2] {
        let (lo, hi) = chunk.split_at(16);
        unsafe {
            [
                _mm_loadu_si128(lo.as_ptr().cast()),
                _mm_loadu_si128(hi.as_ptr().cast()),
            ]
        }
    }

    /// All ones in the bytes of `v` within `lo..=lo + span`.
    #[inline(always)]
    fn within(v: __m128i, lo: u8, span: u8) -> __m128i {
        unsafe {
            let d = _mm_sub_epi8(v, _mm_set1_epi8(lo as i8));
            _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(span as i8)), d)
        }
    }

    #[inline(always)]
    fn eq(v: __m128i, c: u8) -> __m128i {
        unsafe { _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8)) }
    }

    #[inline(always)]
    fn or(a: __m128i, b: __m128i) -> __m128i {
        unsafe { _mm_or_si128(a, b) }
    }

    /// `a` and not `b`.
    #[inline(always)]
    fn and_not(a: __m128i, b: __m128i) -> __m128i {
        unsafe { _mm_andnot_si128(b, a) }
    }

    #[inline(always)]
    fn bits(v: __m128i) -> u32 {
        unsafe { _mm_movemask_epi8(v) as u32 }
    }

    pub(super) fn marks(chunk: &[u8; CHUNK], prev: &[u8; CHUNK]) -> Marks {
        let mut m = Marks::default();
        for (half, (c, p)) in halves(chunk).into_iter().zip(halves(prev)).enumerate() {
            let shift = 16 * half;
            let lower = or(p, unsafe { _mm_set1_epi8(0x20) });
            let p_word = or(within(p, b'0', 9), within(lower, b'a', 25));
            let [a, g, x, s] = PREFIX_FIRSTS;
            let first = or(or(eq(c, a), eq(c, g)), or(eq(c, x), eq(c, s)));
            m.digit_starts |= bits(and_not(within(c, b'0', 9), p_word)) << shift;
            m.upper_starts |= bits(and_not(within(c, b'A', 25), p_word)) << shift;
            m.at |= bits(eq(c, b'@')) << shift;
            m.prefix |= bits(and_not(first, p_word)) << shift;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn vector_marks_are_the_bytewise_marks(
            chunk in proptest::array::uniform32(proptest::sample::select(
                b" -@0195AZgxsaq_.\"\x7f\xc3\xe9\x00`[{/:".to_vec(),
            )),
            prev in proptest::array::uniform32(proptest::sample::select(
                b" -@0195AZgxsaq_.\"\x7f\xc3\xe9\x00`[{/:".to_vec(),
            )),
        ) {
            prop_assert_eq!(marks(&chunk, &prev), marks_bytewise(&chunk, &prev));
        }
    }

    #[test]
    fn marks_at_pads_the_ends_with_nothing() {
        let b = b"AKIA x@y 4111-1111";
        let m = marks_at(b, 0);
        assert_eq!(
            m.prefix,
            1 | 1 << 5,
            "the body's first byte starts a word, as does `x` after a space"
        );
        assert_eq!(m.upper_starts, 1);
        assert_eq!(m.at, 1 << 6);
        assert_eq!(m.digit_starts, 1 << 9 | 1 << 14, "after a space and a dash");
        // A chunk that starts inside a word.
        let long = [b"x".repeat(40).as_slice(), b"sk".as_slice()].concat();
        assert_eq!(marks_at(&long, 33).prefix, 0);
        assert_eq!(marks_at(&long, 40).prefix, 0, "`s` follows an `x`");
    }
}
