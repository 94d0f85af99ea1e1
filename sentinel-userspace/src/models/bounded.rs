//! Bounded state for the detectors: a map with a hard capacity and idle expiry, windows and
//! decaying counters driven by observation timestamps (never the wall clock, so a replay gives the
//! same alerts every time).
//!
//! [`BoundedMap`] keys are 64-bit hashes ([`key_of`]): a principal's name is hashed once per
//! observation and never stored by the map. An entry is a slot of `size_of::<V>() + 12` bytes
//! (the key and the last use in whole seconds, rounded up to 8 bytes) in a dense vector, plus a
//! `u32` slot number and a control byte in the index (`hashbrown`'s `HashTable`, at most 7/8
//! full, its bucket count a power of two: 5.7 to 11.4 bytes per entry). Values of alignment 4
//! whose size is 4 more than a multiple of 8 waste nothing. Collisions are negligible at the
//! sizes involved (1M keys of 64 bits: about 3e-8 for any pair to collide).
//!
//! Eviction when full is approximate LRU by sampling (as Redis does): five slots drawn by a seeded
//! generator, the least recently touched goes. It is O(1), needs no linked list (16 more bytes per
//! entry) and is deterministic for a given input.

use std::hash::{Hash, Hasher};

use hashbrown::HashTable;

/// Nanoseconds per second.
pub const NS: u64 = 1_000_000_000;

/// Seconds (configuration) to nanoseconds.
pub fn secs(s: f64) -> u64 {
    (s.max(0.0) * NS as f64) as u64
}

/// A fast, seedless 64-bit hasher (multiply-rotate over 8-byte words, avalanche at the end):
/// the same in every run, several times faster than SipHash on short keys. Keys are not chosen
/// by an attacker in a way that matters here: a collision merges two principals' counters, and
/// the maps are bounded whatever the keys.
#[derive(Clone, Copy, Default)]
pub struct FastHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl FastHasher {
    #[inline]
    fn mix(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(K).rotate_left(29);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        let mut z = self.0 ^ (self.0 >> 32);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.mix(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(b));
        }
        // The length as a word of its own: "ab" and "ab\0" must differ.
        self.mix(bytes.len() as u64 ^ 0xa076_1d64_78bd_642f);
    }
    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n) | 0x100);
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }
}

/// A stable 64-bit hash ([`FastHasher`]).
pub fn key_of<T: Hash + ?Sized>(t: &T) -> u64 {
    let mut h = FastHasher::default();
    t.hash(&mut h);
    h.finish()
}

/// A stable hash of two parts (for composite keys such as principal and endpoint).
pub fn key2<A: Hash + ?Sized, B: Hash + ?Sized>(a: &A, b: &B) -> u64 {
    let mut h = FastHasher::default();
    a.hash(&mut h);
    b.hash(&mut h);
    h.finish()
}

/// Milliseconds of an observation timestamp in 32 bits, wrapping every 49.7 days: compact
/// enough for per-key state that only compares times less than [`STALE_NS`] apart ([`ms_since`]).
/// State idle for longer must be restarted: [`BoundedMap::entry_idle`] tells.
pub fn ms32(ts_ns: u64) -> u32 {
    (ts_ns / 1_000_000) as u32
}

/// A duration in milliseconds for [`ms32`] times (at least 1, at most a day).
pub fn ms_len(ns: u64) -> u32 {
    (ns / 1_000_000).clamp(1, 86_400_000) as u32
}

/// Milliseconds from `then` to `now` ([`ms32`] times), or `None` when `then` is later (an
/// observation out of order).
pub fn ms_since(now: u32, then: u32) -> Option<u32> {
    let d = now.wrapping_sub(then);
    (d < 1 << 31).then_some(d)
}

/// Idle time after which [`ms32`] times kept in a value can no longer be trusted: 24 days.
pub const STALE_NS: u64 = 24 * 86_400 * NS;

/// Whole seconds, rounded up: the last use of a slot (never earlier than the truth, so an entry
/// expires at most a second late, never early).
fn secs_up(ns: u64) -> u32 {
    ns.div_ceil(NS).min(u64::from(u32::MAX)) as u32
}

struct Slot<V> {
    key: u64,
    /// Last use, seconds ([`secs_up`]).
    last_s: u32,
    value: V,
}

/// A map from hashed keys to `V` with at most `cap` entries; entries idle for longer than
/// `idle_ns` are dropped by [`BoundedMap::sweep`].
pub struct BoundedMap<V> {
    /// Slot numbers, found by the key in their slot.
    index: HashTable<u32>,
    slots: Vec<Slot<V>>,
    cap: usize,
    idle_ns: u64,
    rng: u64,
    cursor: usize,
    /// A sweep covers the whole map once per this much stream time (see [`BoundedMap::sweep`]).
    sweep_period_ns: u64,
    /// When the last sweep ran (0: never).
    last_sweep_ns: u64,
    /// Entries a sweep may still visit (fractions carried from one tick to the next).
    sweep_credit: f64,
    /// Entries dropped because the map was full.
    pub evicted: u64,
    /// Entries dropped because they were idle.
    pub expired: u64,
}

impl<V> BoundedMap<V> {
    /// A map of at most `cap` (at least 1) entries. Sweeps cover it once per `idle_ns / 8`
    /// (between 1 s and 10 min), so an idle entry goes at most an eighth of its idle time late
    /// (a sixty-fourth cost a replay of a sparse capture 4% more per transaction, in sweeps of
    /// maps whose entries live two minutes).
    pub fn new(cap: usize, idle_ns: u64) -> Self {
        Self {
            index: HashTable::new(),
            slots: Vec::new(),
            cap: cap.clamp(1, u32::MAX as usize),
            idle_ns,
            rng: 0x2545_f491_4f6c_dd1d,
            cursor: 0,
            sweep_period_ns: (idle_ns / 8).clamp(NS, 600 * NS),
            last_sweep_ns: 0,
            sweep_credit: 0.0,
            evicted: 0,
            expired: 0,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Capacity.
    pub fn cap(&self) -> usize {
        self.cap
    }

    fn find(&self, key: u64) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(key, |&i| slots[i as usize].key == key)
            .map(|&i| i as usize)
    }

    /// The value for `key`, without touching it.
    pub fn get(&self, key: u64) -> Option<&V> {
        self.find(key).map(|i| &self.slots[i].value)
    }

    /// The value for `key`, mutable, without touching it.
    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        let i = self.find(key)?;
        Some(&mut self.slots[i].value)
    }

    /// The value for `key`, created by `init` when absent (evicting an old entry when full);
    /// marks it used at `now_ns`.
    pub fn entry(&mut self, key: u64, now_ns: u64, init: impl FnOnce() -> V) -> &mut V {
        self.entry_idle(key, now_ns, init).0
    }

    /// [`BoundedMap::entry`], and how long the entry had been idle (0 when new; up to a second
    /// less than the truth).
    pub fn entry_idle(&mut self, key: u64, now_ns: u64, init: impl FnOnce() -> V) -> (&mut V, u64) {
        let now_s = secs_up(now_ns);
        let i = match self.find(key) {
            Some(i) => i,
            None => {
                if self.slots.len() >= self.cap {
                    self.evict_one();
                } else if self.slots.len() == self.slots.capacity() {
                    // Grow by an eighth, not double: at a million entries doubling would leave up
                    // to half the slots allocated and unused.
                    let more = (self.slots.len() / 8)
                        .max(64)
                        .min(self.cap - self.slots.len());
                    self.slots.reserve_exact(more);
                }
                self.slots.push(Slot {
                    key,
                    last_s: now_s,
                    value: init(),
                });
                let i = self.slots.len() - 1;
                let slots = &self.slots;
                self.index
                    .insert_unique(key, i as u32, |&j| slots[j as usize].key);
                i
            }
        };
        let s = &mut self.slots[i];
        let idle = now_ns.saturating_sub(u64::from(s.last_s) * NS);
        s.last_s = s.last_s.max(now_s);
        (&mut s.value, idle)
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn evict_one(&mut self) {
        let n = self.slots.len();
        if n == 0 {
            return;
        }
        let mut victim = (self.next_rand() % n as u64) as usize;
        for _ in 0..4 {
            let c = (self.next_rand() % n as u64) as usize;
            if self.slots[c].last_s < self.slots[victim].last_s {
                victim = c;
            }
        }
        self.remove_at(victim);
        self.evicted += 1;
    }

    /// Points the index entry of `key` that holds slot `from` at slot `to`, or drops it.
    fn reindex(&mut self, key: u64, from: usize, to: Option<usize>) {
        if let Ok(mut e) = self.index.find_entry(key, |&j| j as usize == from) {
            match to {
                Some(to) => *e.get_mut() = to as u32,
                None => {
                    e.remove();
                }
            }
        }
    }

    fn remove_at(&mut self, i: usize) -> V {
        let last = self.slots.len() - 1;
        let s = self.slots.swap_remove(i);
        self.reindex(s.key, i, None);
        if i < last {
            let moved = self.slots[i].key;
            self.reindex(moved, last, Some(i));
        }
        s.value
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: u64) -> Option<V> {
        let i = self.find(key)?;
        Some(self.remove_at(i))
    }

    /// Sets how much stream time a full pass of [`BoundedMap::sweep`] is spread over (at least
    /// 1 ns): what a sweep's `visit` looks for is found at most this late.
    pub fn set_sweep_period(&mut self, period_ns: u64) {
        self.sweep_period_ns = period_ns.max(1);
    }

    /// Drops the entries idle for longer than the idle time, looking at them from where the
    /// last sweep stopped; returns how many stayed of those looked at. Call it from a periodic
    /// tick: the visits are paced by stream time, so that the whole map is covered once per
    /// sweep period (see [`BoundedMap::set_sweep_period`]) however often it is called, and
    /// never more than `budget` entries per call. The first call covers the map.
    pub fn sweep(&mut self, now_ns: u64, budget: usize) -> usize {
        let len = self.slots.len() as f64;
        let share = if self.last_sweep_ns == 0 {
            1.0
        } else {
            now_ns.saturating_sub(self.last_sweep_ns) as f64 / self.sweep_period_ns as f64
        };
        if now_ns > self.last_sweep_ns {
            self.last_sweep_ns = now_ns;
        }
        self.sweep_credit = (self.sweep_credit + share * len).min(len.max(1.0));
        let budget = budget.min(self.slots.len()).min(self.sweep_credit as usize);
        self.sweep_credit -= budget as f64;
        let (mut seen, mut stayed) = (0, 0);
        while seen < budget && !self.slots.is_empty() {
            if self.cursor >= self.slots.len() {
                self.cursor = 0;
            }
            let i = self.cursor;
            let last_ns = u64::from(self.slots[i].last_s) * NS;
            if now_ns.saturating_sub(last_ns) > self.idle_ns {
                // The last slot moves into `i`: look at `i` again next.
                self.remove_at(i);
                self.expired += 1;
            } else {
                self.cursor += 1;
                stayed += 1;
            }
            seen += 1;
        }
        stayed
    }

    /// Iterates over (key, value).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.slots.iter().map(|s| (s.key, &s.value))
    }

    /// Bytes of one slot (a value, its key and last use).
    pub const SLOT_BYTES: usize = size_of::<Slot<V>>();

    /// Bytes held by the map itself (slots at their allocated capacity and the index's
    /// allocation); values' own heap allocations are not included.
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * Self::SLOT_BYTES + self.index.allocation_size()
    }
}

/// Two half windows of some count, `[previous, current]`, read together: they always cover
/// the last half window at least and the last whole window at most, so anything that happened
/// within any span up to half the window long is in them whole, wherever the span falls (a
/// tumbling window splits what straddles its boundary). For counts that cannot be weighted
/// the way [`Window`] weights its previous bucket, such as sets of distinct items.
#[derive(Clone, Copy, Debug, Default)]
pub struct Halves<T> {
    /// Start of the current half, seconds since the epoch (the previous one started a half
    /// before).
    start_s: u32,
    halves: [T; 2],
}

impl<T: Copy + Default> Halves<T> {
    /// Empty halves, the current one starting at `now_s`.
    pub fn new(now_s: u32) -> Self {
        Self {
            start_s: now_s,
            halves: [T::default(); 2],
        }
    }

    /// Moves on to `now_s` with halves of `half` seconds: the current half becomes the
    /// previous one once it is `half` old. False when both are over: nothing is left.
    pub fn advance(&mut self, now_s: u32, half: u32) -> bool {
        let age = now_s.saturating_sub(self.start_s);
        if age < half {
            return true;
        }
        if age >= half.saturating_mul(2) {
            return false;
        }
        self.halves = [self.halves[1], T::default()];
        self.start_s += half;
        true
    }

    /// The current half.
    pub fn current(&mut self) -> &mut T {
        &mut self.halves[1]
    }

    /// The previous half and the current one.
    pub fn both(&self) -> (&T, &T) {
        (&self.halves[0], &self.halves[1])
    }
}

/// A sliding-window count over two tumbling buckets: the estimate for "the last `w`" is the
/// current bucket plus the previous one weighted by how much of it still overlaps the window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    start_ns: u64,
    cur: u32,
    prev: u32,
}

impl Window {
    fn roll(&mut self, now_ns: u64, w: u64) {
        if now_ns < self.start_ns + w {
            return;
        }
        let buckets = (now_ns - self.start_ns) / w;
        self.prev = if buckets == 1 { self.cur } else { 0 };
        self.cur = 0;
        self.start_ns += buckets * w;
    }

    /// Adds `n` at `now_ns`; `w` is the window length.
    pub fn add(&mut self, now_ns: u64, w: u64, n: u32) {
        if self.start_ns == 0 {
            self.start_ns = now_ns;
        }
        self.roll(now_ns, w);
        self.cur = self.cur.saturating_add(n);
    }

    /// The count over the last `w` at `now_ns`.
    pub fn count(&self, now_ns: u64, w: u64) -> f64 {
        let mut c = *self;
        c.roll(now_ns, w);
        let into = (now_ns.saturating_sub(c.start_ns) as f64 / w.max(1) as f64).min(1.0);
        c.cur as f64 + c.prev as f64 * (1.0 - into).max(0.0)
    }

    /// Where the current bucket started (0 before the first add).
    pub fn start_ns(&self) -> u64 {
        self.start_ns
    }
}

/// An exponentially decaying sum: every `half_life` the past weighs half as much.
#[derive(Clone, Copy, Debug, Default)]
pub struct Decay {
    v: f32,
    t_ns: u64,
}

impl Decay {
    /// The value at `now_ns`.
    pub fn value(&self, now_ns: u64, half_life_ns: u64) -> f64 {
        let dt = now_ns.saturating_sub(self.t_ns) as f64;
        f64::from(self.v) * (-dt / half_life_ns.max(1) as f64 * std::f64::consts::LN_2).exp()
    }

    /// Adds `x` at `now_ns` and returns the new value.
    pub fn add(&mut self, now_ns: u64, half_life_ns: u64, x: f64) -> f64 {
        let v = self.value(now_ns, half_life_ns) + x;
        self.v = v as f32;
        self.t_ns = self.t_ns.max(now_ns);
        v
    }
}

/// Exponentially weighted mean and variance.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ewm {
    /// Mean.
    pub mean: f32,
    /// Variance.
    pub var: f32,
    /// Samples seen (saturating).
    pub n: u16,
}

impl Ewm {
    /// Adds a sample; the first `1/alpha` samples are averaged plainly so the start is unbiased.
    pub fn add(&mut self, x: f64, alpha: f64) {
        self.n = self.n.saturating_add(1);
        let a = alpha.max(1.0 / f64::from(self.n));
        let d = x - f64::from(self.mean);
        let mean = f64::from(self.mean) + a * d;
        let var = (1.0 - a) * (f64::from(self.var) + a * d * d);
        self.mean = mean as f32;
        self.var = var as f32;
    }

    /// Standard deviation.
    pub fn std(&self) -> f64 {
        f64::from(self.var).max(0.0).sqrt()
    }
}

/// A small set of 32-bit fingerprints with a fixed number of slots; when full the oldest entry
/// is replaced (ring order).
#[derive(Clone, Copy, Debug)]
pub struct SmallSet<const N: usize> {
    items: [u32; N],
    len: u8,
    next: u8,
}

impl<const N: usize> Default for SmallSet<N> {
    fn default() -> Self {
        Self {
            items: [0; N],
            len: 0,
            next: 0,
        }
    }
}

impl<const N: usize> SmallSet<N> {
    /// True when present.
    pub fn contains(&self, x: u32) -> bool {
        self.items[..self.len as usize].contains(&x)
    }

    /// Inserts; returns true when it was new.
    pub fn insert(&mut self, x: u32) -> bool {
        if self.contains(x) {
            return false;
        }
        if (self.len as usize) < N {
            self.items[self.len as usize] = x;
            self.len += 1;
        } else {
            self.items[self.next as usize] = x;
            self.next = ((self.next as usize + 1) % N) as u8;
        }
        true
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The values a profile knows of one kind (its countries, its clients), at most `N`: the first
/// one ever seen, which stays (the account's home, its owner's own client: however many others
/// an attacker brings, the owner's next request is not taken for something new), and the most
/// recently seen others; a value not held replaces the least recently seen of those.
#[derive(Clone, Copy, Debug)]
pub struct Familiar<T, const N: usize> {
    items: [T; N],
    /// When each was last seen, seconds since the epoch.
    last_s: [u32; N],
    len: u8,
}

impl<T: Copy + Default, const N: usize> Default for Familiar<T, N> {
    fn default() -> Self {
        Self {
            items: [T::default(); N],
            last_s: [0; N],
            len: 0,
        }
    }
}

impl<T: Copy + PartialEq, const N: usize> Familiar<T, N> {
    /// True when `x` is known.
    pub fn contains(&self, x: T) -> bool {
        self.items[..self.len as usize].contains(&x)
    }

    /// `x` seen at `now_ns`: remembered, or its last sighting moved to now.
    pub fn see(&mut self, x: T, now_ns: u64) {
        let now = (now_ns / NS) as u32;
        let held = self.len as usize;
        let i = match self.items[..held].iter().position(|y| *y == x) {
            Some(i) => i,
            None if held < N => {
                self.len += 1;
                held
            }
            // Slot 0 holds the first value ever seen and is never replaced.
            None => (1..N).min_by_key(|&i| self.last_s[i]).unwrap_or(0),
        };
        self.items[i] = x;
        self.last_s[i] = now;
    }

    /// The values, the first ever seen first.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.items[..self.len as usize].iter().copied()
    }

    /// When any of them was last seen (ns since the epoch, to the second; 0: none yet).
    pub fn last_seen_ns(&self) -> u64 {
        u64::from(self.last_s.iter().copied().max().unwrap_or(0)) * NS
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Distinct-count estimate by linear counting over a bitmap of `W` 32-bit words (`W` a power of
/// two; 8 by default: 256 bits, 32 bytes of alignment 4). With `m = 32 W` bits, `n` items are
/// estimated within a standard error of `sqrt(m (e^t - t - 1)) / n`, `t = n / m`: exact-ish up
/// to a few dozen and within about 10% up to a few hundred at 256 bits, within about 10% up to
/// 64 items at 64 bits.
#[derive(Clone, Copy, Debug)]
pub struct Distinct<const W: usize = 8> {
    bits: [u32; W],
}

impl<const W: usize> Default for Distinct<W> {
    fn default() -> Self {
        Self { bits: [0; W] }
    }
}

impl<const W: usize> Distinct<W> {
    /// Bits in the bitmap.
    const M: u32 = {
        assert!(W.is_power_of_two(), "a bitmap of a power of two words");
        32 * W as u32
    };

    /// Adds a hashed item; returns true when its bit was new (the item was surely not seen).
    pub fn insert(&mut self, h: u64) -> bool {
        // Mix so that hashes differing only in high bits spread; the top bits pick the bit.
        let b =
            (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) >> (64 - Self::M.trailing_zeros());
        let (w, bit) = ((b >> 5) as usize, 1u32 << (b & 31));
        let new = self.bits[w] & bit == 0;
        self.bits[w] |= bit;
        new
    }

    /// Bits set: the items inserted, less those that fell on a bit already set.
    pub fn bits_set(&self) -> u32 {
        self.bits.iter().map(|w| w.count_ones()).sum()
    }

    /// Estimated distinct items.
    pub fn estimate(&self) -> f64 {
        let m = f64::from(Self::M);
        let zero = Self::M - self.bits_set();
        if zero == 0 {
            // Saturated: at least this many.
            return m * m.ln();
        }
        -m * (f64::from(zero) / m).ln()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.bits = [0; W];
    }

    /// The items of `self` and `other` together (a bitmap of either's bits).
    pub fn union(&self, other: &Self) -> Self {
        let mut bits = self.bits;
        for (b, o) in bits.iter_mut().zip(&other.bits) {
            *b |= o;
        }
        Self { bits }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_value_stays_and_the_least_recently_seen_other_goes() {
        let mut f = Familiar::<u32, 4>::default();
        assert!(f.is_empty() && f.last_seen_ns() == 0);
        for (x, t) in [(1, 10), (2, 11), (3, 12), (4, 13)] {
            f.see(x, t * NS);
        }
        // 2 is seen again: 3 is now the least recently seen of the others.
        f.see(2, 20 * NS);
        f.see(5, 21 * NS);
        assert_eq!(f.iter().collect::<Vec<_>>(), [1, 2, 5, 4]);
        // However many new ones come, the first stays: the others are the most recent.
        for x in 6..=20 {
            f.see(x, (30 + u64::from(x)) * NS);
        }
        assert_eq!(f.iter().collect::<Vec<_>>()[0], 1);
        assert!((18..=20).all(|x| f.contains(x)), "{f:?}");
        assert_eq!(f.len(), 4);
        assert_eq!(f.last_seen_ns(), 50 * NS);
        // A plain ring set forgets the first.
        let mut r = SmallSet::<4>::default();
        for x in 1..=10 {
            r.insert(x);
        }
        assert!(!r.contains(1), "plain insert is a ring");
    }

    #[test]
    fn keys_of_similar_strings_differ() {
        let mut seen = std::collections::HashSet::new();
        for u in 0..100_000 {
            assert!(seen.insert(key_of(format!("jwt:u{u}").as_str())), "{u}");
            assert!(seen.insert(key_of(format!("u{u}\0").as_str())), "{u}");
        }
        assert_ne!(key_of("ab"), key_of("ab\0"));
    }

    #[test]
    fn the_map_never_exceeds_its_capacity_and_keeps_recent_entries() {
        let mut m = BoundedMap::new(100, u64::MAX);
        for i in 0..10_000u64 {
            *m.entry(i, i * NS, || 0u32) += 1;
            // A hot key touched all the time survives.
            *m.entry(u64::MAX, i * NS, || 0u32) += 1;
        }
        assert_eq!(m.len(), 100);
        assert_eq!(m.evicted, 9_901);
        assert_eq!(*m.get(u64::MAX).unwrap(), 10_000);
        // Recent keys are mostly there, old ones mostly gone.
        let recent = (9_950..10_000).filter(|k| m.get(*k).is_some()).count();
        let old = (0..5_000).filter(|k| m.get(*k).is_some()).count();
        assert!(recent > 25 && old < 5, "recent {recent} old {old}");
        for (k, _) in m.iter() {
            assert_eq!(
                m.find(k).unwrap(),
                m.iter().position(|(x, _)| x == k).unwrap()
            );
        }
        // Removing entries keeps every other one findable at its slot.
        let held: Vec<u64> = m
            .iter()
            .map(|(k, _)| k)
            .filter(|&k| k != u64::MAX)
            .collect();
        for (n, k) in held.iter().enumerate() {
            assert!(m.remove(*k).is_some() && m.get(*k).is_none());
            assert!(held[n + 1..].iter().all(|&k| m.get(k).is_some()));
        }
        assert_eq!(m.len(), 1);
        assert_eq!(*m.get(u64::MAX).unwrap(), 10_000);
    }

    // A 4-aligned value of 20 bytes fills its slot: 8 bytes of key, 4 of last use.
    const _: () = assert!(BoundedMap::<[u32; 5]>::SLOT_BYTES == 32);

    #[test]
    fn entries_tell_how_long_they_were_idle() {
        let mut m = BoundedMap::new(10, u64::MAX);
        assert_eq!(m.entry_idle(1, 5 * NS + 1, || 0u8).1, 0);
        // The last use is kept in whole seconds, rounded up.
        assert_eq!(m.entry_idle(1, 9 * NS, || 0u8).1, 3 * NS);
        assert_eq!(m.entry_idle(1, 9 * NS, || 0u8).1, 0);
        assert!(ms_since(5, u32::MAX - 4) == Some(10) && ms_since(5, 6).is_none());
    }

    #[test]
    fn idle_entries_are_swept() {
        let mut m = BoundedMap::new(1000, 10 * NS);
        for i in 0..50u64 {
            m.entry(i, i * NS, || ());
        }
        let visited = m.sweep(55 * NS, 1000);
        // Keys 0..=44 were idle for more than 10.
        assert_eq!(m.len(), 5);
        assert_eq!(visited, 5);
        assert_eq!(m.expired, 45);
        assert!(m.get(49).is_some() && m.get(3).is_none());
    }

    #[test]
    fn sweeps_are_paced_by_stream_time() {
        let mut m = BoundedMap::new(1000, 1_000 * NS);
        m.set_sweep_period(100 * NS);
        for i in 0..100u64 {
            m.entry(i, NS, || ());
        }
        assert_eq!(m.sweep(2 * NS, 1000), 100, "the first sweep covers the map");
        // One second of a 100 s period: a hundredth of the map per call, however often called.
        let visited: usize = (0..10).map(|_| m.sweep(3 * NS, 1000)).sum();
        assert_eq!(visited, 1);
        let visited: usize = (4..103u64).map(|t| m.sweep(t * NS, 1000)).sum();
        assert_eq!(visited + 1, 100, "a whole pass per period");
        // The budget caps a call after a long quiet spell, and idle entries still go.
        assert_eq!((m.sweep(5_000 * NS, 30), m.len()), (0, 70));
    }

    #[test]
    fn windows_slide_and_decays_halve() {
        let w = 10 * NS;
        let mut c = Window::default();
        for i in 0..10 {
            c.add(NS + i * NS, w, 1);
        }
        assert!((c.count(10 * NS, w) - 10.0).abs() < 1e-9);
        // Half-way into the next bucket half the previous one counts.
        assert!((c.count(16 * NS, w) - 5.0).abs() < 1e-9);
        assert_eq!(c.count(40 * NS, w), 0.0);
        let mut d = Decay::default();
        d.add(0, NS, 8.0);
        assert!((d.value(NS, NS) - 4.0).abs() < 1e-4);
        assert!((d.add(2 * NS, NS, 1.0) - 3.0).abs() < 1e-4);
    }

    #[test]
    fn small_sets_and_distinct_counts() {
        let mut s = SmallSet::<3>::default();
        assert!(s.insert(1) && s.insert(2) && !s.insert(1) && s.insert(3));
        assert!(s.insert(4));
        assert!(!s.contains(1) && s.contains(4) && s.len() == 3);
        let mut d: Distinct = Distinct::default();
        for i in 0..100u64 {
            d.insert(key_of(&i));
        }
        let e = d.estimate();
        assert!((85.0..115.0).contains(&e), "{e}");
        // A narrower bitmap, over the range it is meant for, and a repeat adds nothing.
        let mut d = Distinct::<2>::default();
        for i in 0..40u64 {
            d.insert(key_of(&i));
        }
        assert!(!d.insert(key_of(&0u64)));
        let e = d.estimate();
        assert!((34.0..46.0).contains(&e), "{e}");
        let mut e1 = Ewm::default();
        for x in [1.0, 2.0, 3.0] {
            e1.add(x, 0.01);
        }
        assert!((e1.mean - 2.0).abs() < 1e-6, "{}", e1.mean);
    }
}
