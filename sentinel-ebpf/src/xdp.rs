//! The XDP enforcement program and its maps.

use core::{mem::MaybeUninit, ptr::NonNull};

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use sentinel_common::{
    AddrKey, BLOCKED_SLOTS, BlockedSlot, BucketKey, BucketState, CACHE_ALLOW, CACHE_BLOCK,
    CACHE_NONE, CACHE_PASS, CACHE_THROTTLE, CONFIG_FLAG_PRESENCE, CONFIG_FLAG_SHADOW, ClockCache,
    Config, Counter, FlowKey, HAS_ALL, HAS_ALLOW_HASH, HAS_ALLOW_LPM, HAS_BLOCK_HASH,
    HAS_BLOCK_LPM, HAS_FLOW_KILL, HAS_THROTTLE_HASH, HAS_THROTTLE_LPM, MAX_RATE_PPS,
    RULE_FLAG_SHADOW, Reason, ReasonText, RuleValue, STASH_UNIT_SHIFT, STASH_WINDOW, SourceStats,
    ThrottleRule, VerdictCache, bucket_new, bucket_take_n, defaults, rule_prefix_len, stash_size,
};

use crate::parse::{self, Packet};

/// Hash maps that only userspace writes are allocated per entry (`BPF_F_NO_PREALLOC`): memory
/// follows the lists' real size instead of their capacity, and lookups cost the same.
const BPF_F_NO_PREALLOC: u32 = 1;

// Map names are the statics' names; they must equal `sentinel_common::names` (checked by a test
// on the built object).
#[map]
static SN_SOURCES: LruPerCpuHashMap<AddrKey, SourceStats> =
    LruPerCpuHashMap::with_max_entries(defaults::SOURCES_MAX, 0);
#[map]
static SN_ALLOW_HASH: HashMap<AddrKey, RuleValue> =
    HashMap::with_max_entries(defaults::ALLOW_EXACT_MAX, BPF_F_NO_PREALLOC);
#[map]
static SN_ALLOW_LPM: LpmTrie<AddrKey, RuleValue> =
    LpmTrie::with_max_entries(defaults::PREFIX_MAX, 0);
#[map]
static SN_BLOCK_HASH: HashMap<AddrKey, RuleValue> =
    HashMap::with_max_entries(defaults::EXACT_MAX, BPF_F_NO_PREALLOC);
#[map]
static SN_BLOCK_LPM: LpmTrie<AddrKey, RuleValue> =
    LpmTrie::with_max_entries(defaults::PREFIX_MAX, 0);
#[map]
static SN_THR_HASH: HashMap<AddrKey, ThrottleRule> =
    HashMap::with_max_entries(defaults::THROTTLE_MAX, BPF_F_NO_PREALLOC);
#[map]
static SN_THR_LPM: LpmTrie<AddrKey, ThrottleRule> =
    LpmTrie::with_max_entries(defaults::THROTTLE_MAX, 0);
#[map]
static SN_BUCKETS: LruHashMap<BucketKey, BucketState> =
    LruHashMap::with_max_entries(defaults::BUCKETS_MAX, 0);
#[map]
static SN_FLOW_KILL: HashMap<FlowKey, RuleValue> =
    HashMap::with_max_entries(defaults::FLOW_KILL_MAX, BPF_F_NO_PREALLOC);
/// Not pinned: see [`coarse_now`].
#[map]
static SN_CLOCK: PerCpuArray<ClockCache> = PerCpuArray::with_max_entries(1, 0);
/// Not pinned (a new program starts with empty slots): see [`blocked_slot`].
#[map]
static SN_BLOCKED: PerCpuArray<BlockedSlot> = PerCpuArray::with_max_entries(BLOCKED_SLOTS, 0);
#[map]
static SN_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(Reason::COUNT, 0);
#[map]
static SN_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// Read and written by userspace only; declared here so it is created and pinned with the rest.
#[map]
static SN_REASONS: HashMap<u32, ReasonText> =
    HashMap::with_max_entries(defaults::REASONS_MAX, BPF_F_NO_PREALLOC);

/// The sentinel. Maps the decision to an action through one fail policy: only the three drop
/// reasons drop; everything else, errors included, passes.
#[xdp]
pub fn sentinel_xdp(ctx: XdpContext) -> u32 {
    let data = ctx.data();
    let data_end = ctx.data_end();
    let len = (data_end - data) as u64;
    let reason = decide(data, data_end, len);
    count(reason, len);
    if reason.is_drop() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Drops everything: the floor the benchmarks measure against.
#[xdp]
pub fn sentinel_xdp_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Passes everything: the baseline arm for comparisons that need an XDP program attached.
#[xdp]
pub fn sentinel_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn decide(data: usize, data_end: usize, len: u64) -> Reason {
    let mut pkt = MaybeUninit::uninit();
    let pkt = Packet::zeroed_in(&mut pkt);
    match parse::parse_inline(data, data_end, pkt) {
        parse::PARSE_OK => {}
        parse::PARSE_NON_IP => return Reason::NonIp,
        _ => return Reason::Malformed,
    }
    if pkt.l4_truncated {
        count(Reason::TruncatedL4, len);
    }
    // The coarse clock (a tick's resolution, a few ms) serves expiries and last-seen stamps;
    // token buckets read the precise clock themselves.
    let now = coarse_now();
    let (mut flags, generation) = SN_CONFIG
        .get(0)
        .map(|c| (c.flags, c.generation))
        .unwrap_or((0, 0));
    // Presence flags only count when userspace maintains them; otherwise look everything up.
    if flags & CONFIG_FLAG_PRESENCE == 0 {
        flags |= HAS_ALL;
    }
    // A copy, so that the packet's fields can stay in registers (a helper needs the key in memory).
    let src_words = pkt.src;
    let src = parse::key(&src_words);
    // One lookup per packet for a known source: its counters and its cached list verdict live
    // in the same per-CPU entry; the lists are only looked up when that verdict is stale.
    match SN_SOURCES.get_ptr_mut(src) {
        Some(s) => {
            // SAFETY: per-CPU value from a successful lookup: no other CPU writes it, and it
            // stays valid for this program run.
            let s = unsafe { &mut *s };
            if !cache_valid(&s.cache, generation, now) {
                lookup_lists(src, flags, generation, now, &mut s.cache);
            }
            let reason = apply(pkt, &mut s.cache, flags, now);
            s.packets += 1;
            s.bytes += len;
            s.last_seen_ns = now;
            s.dropped += reason.is_drop() as u64;
            reason
        }
        None => untracked(pkt, &src_words, flags, generation, now, len),
    }
}

/// A source without an entry on this CPU: judged from its blocked-source slot when that holds
/// its verdict, else by looking the lists up; it then gets an entry, unless the blocklist drops
/// it.
///
/// A source that the blocklist drops gets no entry: its packets are counted under `drop_block`
/// in the per-CPU `SN_COUNTERS` only. A flood of random blocked sources would otherwise insert
/// (and evict) an LRU entry per packet, which costs more than the rest of the packet's work on
/// cold caches, and would push the passing sources, whose counts the models need, out of the
/// table. Sources already tracked when their block starts keep being counted in their entry.
/// The verdict goes to the source's slot in `SN_BLOCKED` instead, so that a hot blocked source
/// skips the list lookups.
#[inline(always)]
fn untracked(
    pkt: &Packet,
    src_words: &[u64; 2],
    flags: u32,
    generation: u32,
    now: u64,
    len: u64,
) -> Reason {
    let src = parse::key(src_words);
    // Only looked up while the blocklist may hold entries (no blocked source can have a slot
    // then).
    let slot = if flags & (HAS_BLOCK_HASH | HAS_BLOCK_LPM) != 0 {
        blocked_slot(src_words)
    } else {
        None
    };
    let mut s = MaybeUninit::uninit();
    // SAFETY: `SourceStats` is `repr(C)` words and a `VerdictCache` with explicit padding: no
    // implicit padding.
    let s = unsafe {
        parse::init_words(
            &mut s,
            &SourceStats {
                packets: 1,
                bytes: len,
                last_seen_ns: now,
                dropped: 0,
                cache: VerdictCache::default(),
            },
        )
    };
    // SAFETY: per-CPU slot; only this CPU writes it, valid for this program run.
    let cached = slot
        .map(|b| unsafe { &mut *b.as_ptr() })
        .filter(|b| b.key == *src_words && cache_valid(&b.cache, generation, now));
    let reason = match cached {
        Some(b) => {
            let reason = apply(pkt, &mut b.cache, flags, now);
            if reason == Reason::DropBlock {
                return reason;
            }
            // Anything else (a flow kill, checked before the block; shadow mode) is counted in
            // a per-source entry, as it would be without the slot.
            // SAFETY: a `VerdictCache` (explicit padding).
            unsafe { parse::store_words(&mut s.cache, &b.cache) };
            reason
        }
        None => {
            lookup_lists(src, flags, generation, now, &mut s.cache);
            let reason = apply(pkt, &mut s.cache, flags, now);
            if reason == Reason::DropBlock {
                if let Some(b) = slot {
                    // SAFETY: as above; two words, and a `VerdictCache` (explicit padding).
                    unsafe {
                        let b = &mut *b.as_ptr();
                        parse::store_words(&mut b.key, src_words);
                        parse::store_words(&mut b.cache, &s.cache);
                    }
                }
                return reason;
            }
            reason
        }
    };
    s.dropped = reason.is_drop() as u64;
    if SN_SOURCES.insert(src, s, 0).is_err() {
        count(Reason::SourceInsertFailed, len);
    }
    reason
}

/// The source's slot in the per-CPU, direct-mapped cache of untracked blocked sources: the
/// top bits of a multiplicative hash of its key words. A slot holds the last blocked source that
/// hashed there; a flood of random sources just overwrites slots (no eviction work), and the
/// table (192 KiB per CPU) stays in the L2 cache.
///
/// A `NonNull`, not the map's `Option<*mut _>`: that option is a (tag, pointer) pair whose
/// pointer is undefined when it is `None`, and LLVM may spill that undefined register on a path
/// where no lookup ran; the verifier rejects reading an uninitialised register ("R5 !read_ok").
/// `Option<NonNull<_>>` is one register, null for `None`, defined on every path.
#[inline(always)]
fn blocked_slot(src: &[u64; 2]) -> Option<NonNull<BlockedSlot>> {
    let h = (src[0] ^ src[1].rotate_left(31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    SN_BLOCKED
        .get_ptr_mut((h >> (64 - BLOCKED_SLOTS.trailing_zeros())) as u32)
        .and_then(NonNull::new)
}

/// `bpf_ktime_get_coarse_ns()`, read at most once per jiffy per CPU: the verifier inlines
/// `bpf_jiffies64` (a load) and the per-CPU array lookup, while a clock helper call costs about
/// 13 ns per packet here. The coarse clock only moves at ticks, when `jiffies` moves too, so the
/// value reused within a jiffy is the one a call would return (or, if the two are read across
/// the tick's update, one tick older: expiries already allow for a clock that lags by a tick).
#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: helpers without arguments or side effects.
    let jiffies = unsafe { bpf_jiffies64() };
    match SN_CLOCK.get_ptr_mut(0) {
        Some(c) => {
            // SAFETY: per-CPU slot; only this CPU writes it, valid for this program run.
            let c = unsafe { &mut *c };
            if c.jiffies != jiffies || c.coarse_ns == 0 {
                c.jiffies = jiffies;
                // SAFETY: as above.
                c.coarse_ns = unsafe { bpf_ktime_get_coarse_ns() };
            }
            c.coarse_ns
        }
        // SAFETY: as above.
        None => unsafe { bpf_ktime_get_coarse_ns() },
    }
}

/// A cached verdict holds while the lists are as they were when it was looked up and the entry
/// it found has not expired. Nothing else can change it: entries never come back to life by
/// themselves, and every write bumps the generation.
#[inline(always)]
fn cache_valid(c: &VerdictCache, generation: u32, now: u64) -> bool {
    c.kind != CACHE_NONE && c.generation == generation && live(c.until_ns, now)
}

/// The verdict for a packet from a cached (or just looked up) source verdict: allowlist (always
/// wins) -> flow kill (per 5-tuple, never cached) -> blocklist -> throttle -> pass.
#[inline(always)]
fn apply(pkt: &Packet, c: &mut VerdictCache, flags: u32, now: u64) -> Reason {
    let kind = c.kind;
    if kind == CACHE_ALLOW {
        return Reason::Allowlisted;
    }
    let shadow_all = flags & CONFIG_FLAG_SHADOW != 0;
    if flags & HAS_FLOW_KILL != 0 {
        // Only consulted while the flow-kill map may hold entries.
        // A `FlowKey` built with word stores (a struct literal with byte arrays compiles to
        // `memset`/`memcpy` calls): both addresses, then the ports, protocol and zero padding as
        // one little-endian word.
        let words: [u64; 5] = [
            pkt.src[0],
            pkt.src[1],
            pkt.dst[0],
            pkt.dst[1],
            pkt.src_port as u64 | (pkt.dst_port as u64) << 16 | (pkt.proto as u64) << 32,
        ];
        // SAFETY: `FlowKey` is 40 bytes of plain integers laid out as above (`src`, `dst`,
        // `src_port`, `dst_port`, `proto`, 3 bytes of padding), with an alignment (2) that the
        // words' (8) satisfies.
        let flow = unsafe { &*(&words as *const [u64; 5]).cast::<FlowKey>() };
        // SAFETY: the value is only read, and map values stay valid for the program run.
        if let Some(v) = unsafe { SN_FLOW_KILL.get(flow) }
            && live(v.expires_ns, now)
        {
            return if shadow_all || v.flags & RULE_FLAG_SHADOW != 0 {
                Reason::ShadowFlowKill
            } else {
                Reason::DropFlowKill
            };
        }
    }
    let shadow = shadow_all || c.rule_flags as u32 & RULE_FLAG_SHADOW != 0;
    if kind == CACHE_BLOCK {
        return if shadow {
            Reason::ShadowBlock
        } else {
            Reason::DropBlock
        };
    }
    if kind == CACHE_THROTTLE {
        return if take_token(&pkt.src, c, now) {
            Reason::ThrottlePass
        } else if shadow {
            Reason::ShadowThrottle
        } else {
            Reason::DropThrottle
        };
    }
    Reason::Pass
}

/// Looks the source up in the allow, block and throttle lists and records what applies, and
/// until when, in `out`.
///
/// Kept out of line: a separate BPF function gets its own stack frame, which keeps the entry
/// function under the 512-byte limit (the verifier checks the whole call chain), and it only
/// runs for a source's first packet on a CPU and after list changes.
#[inline(never)]
fn lookup_lists(src: &AddrKey, flags: u32, generation: u32, now: u64, out: &mut VerdictCache) {
    out.generation = generation;
    out.aggregate_prefix = 0;
    out.rate_pps = 0;
    out.burst = 0;
    // Tokens drawn under the previous verdict are dropped with it.
    out.stash = 0;
    out.stash_deadline = 0;
    if let Some((rule_flags, until)) = active_rule(
        &SN_ALLOW_HASH,
        &SN_ALLOW_LPM,
        flags & HAS_ALLOW_HASH != 0,
        flags & HAS_ALLOW_LPM != 0,
        src,
        now,
    ) {
        out.kind = CACHE_ALLOW;
        out.rule_flags = cache_flags(rule_flags);
        out.until_ns = until;
        return;
    }
    if let Some((rule_flags, until)) = active_rule(
        &SN_BLOCK_HASH,
        &SN_BLOCK_LPM,
        flags & HAS_BLOCK_HASH != 0,
        flags & HAS_BLOCK_LPM != 0,
        src,
        now,
    ) {
        out.kind = CACHE_BLOCK;
        out.rule_flags = cache_flags(rule_flags);
        out.until_ns = until;
        return;
    }
    if let Some(rule) = throttle_rule(
        flags & HAS_THROTTLE_HASH != 0,
        flags & HAS_THROTTLE_LPM != 0,
        src,
        now,
    ) {
        out.kind = CACHE_THROTTLE;
        out.rule_flags = cache_flags(rule.flags);
        out.until_ns = rule.expires_ns;
        out.aggregate_prefix = if rule.aggregate_prefix > 128 {
            128
        } else {
            rule.aggregate_prefix as u8
        };
        // Both fit: rates are at most MAX_RATE_PPS; a burst of exactly MAX_BURST loses one.
        out.rate_pps = if rule.rate_pps > MAX_RATE_PPS {
            MAX_RATE_PPS as u32
        } else {
            rule.rate_pps as u32
        };
        out.burst = if rule.burst > u32::MAX as u64 {
            u32::MAX
        } else {
            rule.burst as u32
        };
        return;
    }
    out.kind = CACHE_PASS;
    out.rule_flags = 0;
    out.until_ns = 0;
}

/// The rule flags a cached verdict keeps (the low byte: the prefix-length bits are only needed
/// during the lookup).
#[inline(always)]
fn cache_flags(rule_flags: u32) -> u16 {
    (rule_flags & 0xff) as u16
}

/// An entry applies while `now` is before its expiry (0: never expires). Expiry is judged here,
/// in the kernel, so an entry stops applying on time even if userspace is not running.
#[inline(always)]
fn live(expires_ns: u64, now: u64) -> bool {
    expires_ns == 0 || now < expires_ns
}

/// Looks a source up in an exact-address hash, then in a prefix trie; returns the live entry's
/// flags and expiry.
#[inline(always)]
fn active_rule(
    exact: &HashMap<AddrKey, RuleValue>,
    prefixes: &LpmTrie<AddrKey, RuleValue>,
    has_exact: bool,
    has_prefixes: bool,
    src: &AddrKey,
    now: u64,
) -> Option<(u32, u64)> {
    if has_exact {
        // SAFETY: read-only access to a value that stays valid for this program run.
        if let Some(v) = unsafe { exact.get(src) }
            && live(v.expires_ns, now)
        {
            return Some((v.flags, v.expires_ns));
        }
    }
    if !has_prefixes {
        return None;
    }
    live_prefix(prefixes, src, now).map(|v| (v.flags, v.expires_ns))
}

#[inline(always)]
fn throttle_rule(
    has_exact: bool,
    has_prefixes: bool,
    src: &AddrKey,
    now: u64,
) -> Option<&'static ThrottleRule> {
    if has_exact {
        // SAFETY: as in `active_rule`.
        if let Some(r) = unsafe { SN_THR_HASH.get(src) }
            && live(r.expires_ns, now)
        {
            return Some(r);
        }
    }
    if !has_prefixes {
        return None;
    }
    live_prefix(&SN_THR_LPM, src, now)
}

/// Expired prefix entries looked past per lookup (nested expired prefixes are rare: userspace
/// sweeps them every few seconds while it runs).
const MAX_EXPIRED_PREFIXES: u32 = 4;

/// What [`live_prefix`] needs of a prefix entry.
trait PrefixRule {
    fn expires_ns(&self) -> u64;
    fn flags(&self) -> u32;
}

impl PrefixRule for RuleValue {
    #[inline(always)]
    fn expires_ns(&self) -> u64 {
        self.expires_ns
    }
    #[inline(always)]
    fn flags(&self) -> u32 {
        self.flags
    }
}

impl PrefixRule for ThrottleRule {
    #[inline(always)]
    fn expires_ns(&self) -> u64 {
        self.expires_ns
    }
    #[inline(always)]
    fn flags(&self) -> u32 {
        self.flags
    }
}

/// The longest live prefix entry covering `src`. An LPM lookup returns only the longest match;
/// when it has expired, look again below its recorded length, so that an expired /24 does not
/// hide a live /16 around it while no userspace sweeps it away.
#[inline(always)]
fn live_prefix<'a, V: PrefixRule>(
    trie: &'a LpmTrie<AddrKey, V>,
    src: &AddrKey,
    now: u64,
) -> Option<&'a V> {
    let mut len = 128;
    let mut i = 0;
    while i < MAX_EXPIRED_PREFIXES {
        let v = trie.get(Key::new(len, *src))?;
        if live(v.expires_ns(), now) {
            return Some(v);
        }
        let own = rule_prefix_len(v.flags());
        if own == 0 || own > len {
            return None;
        }
        len = own - 1;
        i += 1;
    }
    None
}

/// Takes a token from the bucket of the source's aggregate; a new aggregate starts full.
/// Buckets are shared across CPUs without a lock: concurrent packets of one aggregate on two
/// CPUs can both take the last token, which errs on the side of passing.
///
/// A source sending fast (its previous refill was within [`STASH_WINDOW`]) draws a few tokens
/// ahead of use into this CPU's stash ([`stash_size`]) and spends them without the bucket lookup
/// or the precise clock; `now` is the coarse clock.
#[inline(always)]
fn take_token(src: &[u64; 2], c: &mut VerdictCache, now: u64) -> bool {
    let unit = (now >> STASH_UNIT_SHIFT) as u32;
    if c.stash > 0 && unit <= c.stash_deadline {
        c.stash -= 1;
        return true;
    }
    let hot = c.stash_deadline != 0 && unit <= c.stash_deadline;
    c.stash = 0;
    c.stash_deadline = unit.wrapping_add(STASH_WINDOW);
    let extra = if hot {
        stash_size(c.aggregate_prefix, c.burst as u64)
    } else {
        0
    };
    // Refills need the precise clock.
    // SAFETY: a helper without arguments or side effects.
    let precise = unsafe { bpf_ktime_get_ns() };
    let prefix = c.aggregate_prefix as u32;
    // A `BucketKey` built with word stores: the masked address, then `prefix_len` and the zero
    // padding as one little-endian word.
    let words: [u64; 3] = [
        mask_word(src[0], prefix),
        mask_word(src[1], prefix.saturating_sub(64)),
        prefix as u64,
    ];
    // SAFETY: `BucketKey` is 24 bytes of plain integers laid out as above, with an alignment
    // (4) that the words' (8) satisfies.
    let key = unsafe { &*(&words as *const [u64; 3]).cast::<BucketKey>() };
    let (rate, burst) = (c.rate_pps as u64, c.burst as u64);
    match SN_BUCKETS.get_ptr_mut(key) {
        Some(state) => {
            // SAFETY: the pointer comes from a successful lookup and is valid for this run.
            let taken = bucket_take_n(unsafe { &mut *state }, rate, burst, precise, extra);
            if taken > 1 {
                c.stash = (taken - 1) as u16;
            }
            taken > 0
        }
        None => {
            if burst == 0 {
                return false;
            }
            if SN_BUCKETS
                .insert(key, &bucket_new(burst, precise), 0)
                .is_err()
            {
                count(Reason::InternalError, 0);
            }
            true
        }
    }
}

// The word layouts `apply` and `take_token` build keys with.
const _: () = assert!(
    core::mem::offset_of!(FlowKey, dst) == 16
        && core::mem::offset_of!(FlowKey, src_port) == 32
        && core::mem::offset_of!(FlowKey, dst_port) == 34
        && core::mem::offset_of!(FlowKey, proto) == 36
        && core::mem::size_of::<FlowKey>() == 40
        && core::mem::offset_of!(BucketKey, prefix_len) == 16
        && core::mem::size_of::<BucketKey>() == 24
);

/// Keeps the first `bits` bits (in network order) of a key word read in native (little-endian)
/// order.
#[inline(always)]
fn mask_word(word: u64, bits: u32) -> u64 {
    if bits >= 64 {
        word
    } else if bits == 0 {
        0
    } else {
        word & (u64::MAX << (64 - bits)).to_be()
    }
}

#[inline(always)]
fn count(reason: Reason, len: u64) {
    if let Some(c) = SN_COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU array slot; only this CPU writes it.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += len;
    }
}
