//! Map names, map keys and values, and verdict reasons: the contract between kernel and userspace.

use core::mem::size_of;

use crate::addr::AddrKey;

/// Map names, used by the kernel programs (`#[map(name = ...)]`) and by userspace to find and pin
/// them. BPF object names are limited to 15 characters.
pub mod names {
    /// LRU per-CPU hash: [`AddrKey`](crate::AddrKey) -> [`SourceStats`](crate::SourceStats).
    pub const SOURCES: &str = "SN_SOURCES";
    /// Hash: exact allowlisted addresses -> [`RuleValue`](crate::RuleValue).
    pub const ALLOW_HASH: &str = "SN_ALLOW_HASH";
    /// LPM trie: allowlisted prefixes -> [`RuleValue`](crate::RuleValue).
    pub const ALLOW_LPM: &str = "SN_ALLOW_LPM";
    /// Hash: exact blocked addresses -> [`RuleValue`](crate::RuleValue).
    pub const BLOCK_HASH: &str = "SN_BLOCK_HASH";
    /// LPM trie: blocked prefixes -> [`RuleValue`](crate::RuleValue).
    pub const BLOCK_LPM: &str = "SN_BLOCK_LPM";
    /// Hash: exact throttled addresses -> [`ThrottleRule`](crate::ThrottleRule).
    pub const THROTTLE_HASH: &str = "SN_THR_HASH";
    /// LPM trie: throttled prefixes -> [`ThrottleRule`](crate::ThrottleRule).
    pub const THROTTLE_LPM: &str = "SN_THR_LPM";
    /// LRU hash: [`BucketKey`](crate::BucketKey) -> [`BucketState`](crate::BucketState).
    pub const BUCKETS: &str = "SN_BUCKETS";
    /// Hash: [`FlowKey`](crate::FlowKey) -> [`RuleValue`](crate::RuleValue).
    pub const FLOW_KILL: &str = "SN_FLOW_KILL";
    /// Per-CPU array indexed by [`Reason`](crate::Reason) -> [`Counter`](crate::Counter).
    pub const COUNTERS: &str = "SN_COUNTERS";
    /// Array of one [`Config`](crate::Config).
    pub const CONFIG: &str = "SN_CONFIG";
    /// Hash: reason id -> [`ReasonText`](crate::ReasonText). Written and read by userspace only;
    /// kept in a pinned map so that reasons survive a daemon restart with the entries.
    pub const REASONS: &str = "SN_REASONS";

    /// Per-CPU array of one [`ClockCache`](crate::ClockCache): kernel-private, not pinned (a
    /// new program starts with an empty one), so not in [`ALL`].
    pub const CLOCK: &str = "SN_CLOCK";
    /// Per-CPU array of [`BLOCKED_SLOTS`](crate::BLOCKED_SLOTS)
    /// [`BlockedSlot`](crate::BlockedSlot)s: kernel-private, not pinned, not in [`ALL`].
    pub const BLOCKED: &str = "SN_BLOCKED";

    /// Every map of the XDP object, for pinning, status and tests.
    pub const ALL: &[&str] = &[
        SOURCES,
        ALLOW_HASH,
        ALLOW_LPM,
        BLOCK_HASH,
        BLOCK_LPM,
        THROTTLE_HASH,
        THROTTLE_LPM,
        BUCKETS,
        FLOW_KILL,
        COUNTERS,
        CONFIG,
        REASONS,
    ];
}

/// Program names inside the eBPF object.
pub mod programs {
    /// The XDP sentinel: count, allowlist, flow kill, blocklist, throttle.
    pub const XDP_SENTINEL: &str = "sentinel_xdp";
    /// A bare `XDP_DROP` program, the floor that benchmarks compare against.
    pub const XDP_DROP: &str = "sentinel_xdp_drop";
    /// A bare `XDP_PASS` program, for baseline arms that need XDP attached (it disables GSO).
    pub const XDP_PASS: &str = "sentinel_xdp_pass";
}

/// Default map sizes; userspace can override each at load time.
pub mod defaults {
    /// Tracked sources (LRU: the least recently seen are evicted).
    pub const SOURCES_MAX: u32 = 262_144;
    /// Exact blocked addresses (a million-entry list fits).
    pub const EXACT_MAX: u32 = 1_100_000;
    /// Exact allowlisted addresses.
    pub const ALLOW_EXACT_MAX: u32 = 65_536;
    /// Prefix entries per LPM trie.
    pub const PREFIX_MAX: u32 = 262_144;
    /// Throttle rules (exact and prefix each).
    pub const THROTTLE_MAX: u32 = 65_536;
    /// Token buckets (LRU).
    pub const BUCKETS_MAX: u32 = 262_144;
    /// Killed flows.
    pub const FLOW_KILL_MAX: u32 = 65_536;
    /// Distinct reason texts.
    pub const REASONS_MAX: u32 = 65_536;
}

/// Per-source packet accounting, one value per CPU, with the kernel's cached verdict for the
/// source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Packets seen from this source.
    pub packets: u64,
    /// Bytes seen from this source (frame length).
    pub bytes: u64,
    /// `bpf_ktime_get_coarse_ns()` of the last packet.
    pub last_seen_ns: u64,
    /// Packets dropped (any drop reason).
    pub dropped: u64,
    /// What the source's last list lookups found (kernel-private; userspace ignores it).
    pub cache: VerdictCache,
}
const _: () = assert!(size_of::<SourceStats>() == 64);

/// [`VerdictCache::kind`]: nothing cached (a fresh entry); look the lists up.
pub const CACHE_NONE: u8 = 0;
/// [`VerdictCache::kind`]: no live allow, block or throttle entry covers the source.
pub const CACHE_PASS: u8 = 1;
/// [`VerdictCache::kind`]: a live allow entry covers the source.
pub const CACHE_ALLOW: u8 = 2;
/// [`VerdictCache::kind`]: a live block entry covers the source.
pub const CACHE_BLOCK: u8 = 3;
/// [`VerdictCache::kind`]: a live throttle entry covers the source (its bucket parameters are
/// cached; the bucket itself stays in `SN_BUCKETS`, shared by every CPU).
pub const CACHE_THROTTLE: u8 = 4;

/// The outcome of a source's allow, block and throttle lookups, cached in its per-CPU
/// [`SourceStats`] so that a known source costs one map lookup per packet instead of one per
/// list. It stays valid while the lists are unchanged ([`Config::generation`], which userspace
/// bumps after every list write) and the matched entry has not expired (`until_ns`); flow kills
/// are not cached (they depend on the 5-tuple). Entries only ever stop matching by expiring or
/// being written, so those two checks are all a cached verdict needs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCache {
    /// [`Config::generation`] the lookups ran under.
    pub generation: u32,
    /// `CACHE_*`.
    pub kind: u8,
    /// Throttle: the aggregate prefix length of the bucket.
    pub aggregate_prefix: u8,
    /// The matched entry's `RULE_FLAG_*` bits (the prefix-length bits dropped).
    pub rule_flags: u16,
    /// Expiry of the matched entry (0: never): the cached verdict is valid before it.
    pub until_ns: u64,
    /// Throttle: refill rate (at most [`MAX_RATE_PPS`], which fits).
    pub rate_pps: u32,
    /// Throttle: bucket capacity (clamped to `u32::MAX`, one packet short of [`MAX_BURST`]).
    pub burst: u32,
    /// Throttle: tokens this CPU drew from the shared bucket ahead of use (see [`stash_size`]).
    pub stash: u16,
    /// Explicit padding.
    pub _pad: u16,
    /// Throttle: the stash may be spent until this time, in units of [`STASH_UNIT_SHIFT`]
    /// (coarse clock nanoseconds shifted right); 0 before the first refill.
    pub stash_deadline: u32,
}
const _: () = assert!(size_of::<VerdictCache>() == 32);

/// Rule flag: count would-drops and pass instead of dropping.
pub const RULE_FLAG_SHADOW: u32 = 1;
/// Bits 8..16 of a prefix entry's `flags` hold the entry's own prefix length in the 128-bit key
/// space (0: not recorded). An LPM lookup returns only the longest matching entry; when that one
/// has expired, the kernel looks again below this length, so an expired long prefix does not hide
/// a live shorter one until userspace sweeps it.
pub const RULE_PREFIX_SHIFT: u32 = 8;

/// The flag bits recording a prefix entry's length (see [`RULE_PREFIX_SHIFT`]).
#[inline(always)]
pub const fn rule_prefix_flags(prefix_len: u32) -> u32 {
    (prefix_len & 0xff) << RULE_PREFIX_SHIFT
}

/// The prefix length recorded in a rule's flags (0: not recorded).
#[inline(always)]
pub const fn rule_prefix_len(flags: u32) -> u32 {
    (flags >> RULE_PREFIX_SHIFT) & 0xff
}

/// Value of an allowlist, blocklist or flow-kill entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleValue {
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`) after which the entry stops applying;
    /// 0 for never.
    pub expires_ns: u64,
    /// Id of the reason text in the reasons map (0: none).
    pub reason_id: u32,
    /// `RULE_FLAG_*` bits.
    pub flags: u32,
}
const _: () = assert!(size_of::<RuleValue>() == 16);

/// Value of a throttle entry: a token bucket definition.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleRule {
    /// Packets per second refilled into the bucket.
    pub rate_pps: u64,
    /// Bucket capacity in packets.
    pub burst: u64,
    /// Expiry as in [`RuleValue::expires_ns`].
    pub expires_ns: u64,
    /// Id of the reason text.
    pub reason_id: u32,
    /// `RULE_FLAG_*` bits.
    pub flags: u32,
    /// Prefix length (in the 128-bit key space) that sources share a bucket by: 128 gives each
    /// source its own bucket, 96+24 one bucket per IPv4 /24, 64 one per IPv6 /64.
    pub aggregate_prefix: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<ThrottleRule>() == 40);

/// Key of a token bucket: the source masked to the rule's aggregate prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    /// Masked source address.
    pub addr: AddrKey,
    /// The aggregate prefix the address was masked to.
    pub prefix_len: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<BucketKey>() == 24);

/// Token scale: one packet's token is this many units, so refills keep nanosecond precision.
pub const TOKEN_UNIT: u64 = 1_000_000_000;

/// State of a token bucket, kept in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketState {
    /// Available tokens in `TOKEN_UNIT`s.
    pub tokens: u64,
    /// Time of the last refill.
    pub last_ns: u64,
}
const _: () = assert!(size_of::<BucketState>() == 16);

/// Highest rate a throttle accepts, in packets per second (keeps the refill product below 2^63).
pub const MAX_RATE_PPS: u64 = 1 << 29;
/// Largest burst a throttle accepts, in packets (keeps `burst * TOKEN_UNIT` below 2^63).
pub const MAX_BURST: u64 = 1 << 32;
/// Refill time after which any bucket is full: `MAX_BURST` packets at 1 pps would take longer,
/// but a bucket idle this long is treated as full, which keeps `elapsed * rate` below 2^63.
const REFILL_CAP_NS: u64 = 1 << 34;

/// Refills a bucket for `now_ns` and takes one token when there is one; returns whether the
/// packet conforms. Shared by the kernel and the userspace tests so both use one arithmetic.
///
/// Written without 128-bit or checked multiplication, which the BPF backend cannot lower: the
/// operands are clamped so every product fits in 63 bits.
#[inline(always)]
pub fn bucket_take(state: &mut BucketState, rate_pps: u64, burst: u64, now_ns: u64) -> bool {
    let rate = if rate_pps > MAX_RATE_PPS {
        MAX_RATE_PPS
    } else {
        rate_pps
    };
    let burst = if burst > MAX_BURST { MAX_BURST } else { burst };
    let cap = burst * TOKEN_UNIT;
    let elapsed = now_ns.saturating_sub(state.last_ns);
    let refill = if elapsed > REFILL_CAP_NS {
        cap
    } else {
        elapsed * rate
    };
    let mut tokens = state.tokens.saturating_add(refill);
    if tokens > cap {
        tokens = cap;
    }
    state.last_ns = now_ns;
    if tokens >= TOKEN_UNIT {
        state.tokens = tokens - TOKEN_UNIT;
        true
    } else {
        state.tokens = tokens;
        false
    }
}

/// The clock unit of [`VerdictCache::stash_deadline`]: 2^20 ns, about a millisecond.
pub const STASH_UNIT_SHIFT: u32 = 20;
/// How long a CPU may hold tokens it drew ahead of use, in stash units (1-2 ms, plus the coarse
/// clock's tick). Unspent tokens are dropped after it (never passed later).
pub const STASH_WINDOW: u32 = 2;
/// Most tokens a CPU draws ahead of use.
pub const STASH_MAX: u64 = 8;

/// Tokens a CPU may draw ahead of use from a source's own bucket, besides the one for the
/// packet at hand: batching the shared bucket's lookup over a few packets is what keeps a hot
/// throttled source's per-packet cost near an unthrottled one's.
///
/// Every token passed is drawn from the shared bucket, so a source never gets more than the
/// bucket allows; drawn tokens are spent at most [`STASH_WINDOW`] later or dropped, so a CPU
/// can under-admit by at most this many packets per pause of its source. Only buckets of one
/// source (`aggregate_prefix` 128) with a burst of at least 16 batch: stranded tokens are then
/// few next to the burst, and the sources of an aggregate do not strand tokens of one another.
#[inline(always)]
pub const fn stash_size(aggregate_prefix: u8, burst: u64) -> u64 {
    if aggregate_prefix != 128 {
        return 0;
    }
    let k = burst / 8;
    if k < 2 {
        0
    } else if k > STASH_MAX {
        STASH_MAX
    } else {
        k
    }
}

/// [`bucket_take`] taking up to `1 + extra` tokens at once: returns how many it took (0: the
/// packet does not conform).
#[inline(always)]
pub fn bucket_take_n(
    state: &mut BucketState,
    rate_pps: u64,
    burst: u64,
    now_ns: u64,
    extra: u64,
) -> u64 {
    if !bucket_take(state, rate_pps, burst, now_ns) {
        return 0;
    }
    let mut n = state.tokens / TOKEN_UNIT;
    if n > extra {
        n = extra;
    }
    state.tokens -= n * TOKEN_UNIT;
    1 + n
}

/// The state of a bucket created by its first packet: full, minus that packet's token.
#[inline(always)]
pub fn bucket_new(burst: u64, now_ns: u64) -> BucketState {
    let burst = if burst > MAX_BURST { MAX_BURST } else { burst };
    BucketState {
        tokens: (burst * TOKEN_UNIT).saturating_sub(TOKEN_UNIT),
        last_ns: now_ns,
    }
}

/// A transport 5-tuple for the flow-kill list. Ports are 0 for protocols without ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: AddrKey,
    /// Destination address.
    pub dst: AddrKey,
    /// Source port, host byte order.
    pub src_port: u16,
    /// Destination port, host byte order.
    pub dst_port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// The XDP program's per-CPU copy of the coarse clock for the current jiffy: reading `jiffies`
/// is inlined by the verifier, a clock helper call is not (about 13 ns per packet here), so the
/// program calls `bpf_ktime_get_coarse_ns` once per tick per CPU and reuses the value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockCache {
    /// `bpf_jiffies64()` when `coarse_ns` was read.
    pub jiffies: u64,
    /// `bpf_ktime_get_coarse_ns()` read during that jiffy (0: never read).
    pub coarse_ns: u64,
}
const _: () = assert!(size_of::<ClockCache>() == 16);

/// Slots per CPU of [`names::BLOCKED`] (a power of two): 48 bytes each, so the table stays in a
/// core's L2 cache.
pub const BLOCKED_SLOTS: u32 = 4096;

/// A slot of the XDP program's per-CPU, direct-mapped cache of blocked sources that have no
/// `SN_SOURCES` entry: a hot blocked source is judged from it without the list lookups, and a
/// flood of random blocked sources overwrites slots instead of inserting and evicting LRU
/// entries. Kernel-private.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockedSlot {
    /// The source's key as two native words (see [`AddrKey`]).
    pub key: [u64; 2],
    /// The cached block verdict (valid as in `SN_SOURCES`: same generation, not expired).
    pub cache: VerdictCache,
}
const _: () = assert!(size_of::<BlockedSlot>() == 48);

/// Global configuration flag: shadow mode for every rule.
pub const CONFIG_FLAG_SHADOW: u32 = 1;
/// The presence flags below are maintained: without this bit (a fresh map, or a writer that
/// knows nothing of them) the XDP program looks every list up.
pub const CONFIG_FLAG_PRESENCE: u32 = 1 << 31;
/// Presence flags: the named map may hold entries. With [`CONFIG_FLAG_PRESENCE`] set, the XDP
/// program skips the lookup of a map whose flag is clear, so an empty list costs nothing per
/// packet. Userspace sets a flag before writing the first entry and clears it only after seeing
/// the map empty.
pub const HAS_ALLOW_HASH: u32 = 1 << 8;
/// See [`HAS_ALLOW_HASH`].
pub const HAS_ALLOW_LPM: u32 = 1 << 9;
/// See [`HAS_ALLOW_HASH`].
pub const HAS_BLOCK_HASH: u32 = 1 << 10;
/// See [`HAS_ALLOW_HASH`].
pub const HAS_BLOCK_LPM: u32 = 1 << 11;
/// See [`HAS_ALLOW_HASH`].
pub const HAS_THROTTLE_HASH: u32 = 1 << 12;
/// See [`HAS_ALLOW_HASH`].
pub const HAS_THROTTLE_LPM: u32 = 1 << 13;
/// See [`HAS_ALLOW_HASH`].
pub const HAS_FLOW_KILL: u32 = 1 << 14;
/// Every presence flag.
pub const HAS_ALL: u32 = HAS_ALLOW_HASH
    | HAS_ALLOW_LPM
    | HAS_BLOCK_HASH
    | HAS_BLOCK_LPM
    | HAS_THROTTLE_HASH
    | HAS_THROTTLE_LPM
    | HAS_FLOW_KILL;

/// Global configuration written by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `CONFIG_FLAG_*` bits.
    pub flags: u32,
    /// Bumped by userspace after every write to the allow, block or throttle lists: verdicts the
    /// kernel cached per source ([`VerdictCache`]) under another generation are looked up again.
    /// (This word was explicit padding, always 0, before the cache existed.)
    pub generation: u32,
}
const _: () = assert!(size_of::<Config>() == 8);

/// Packet and byte counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes (frame length).
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// Maximum length of a reason text, in bytes (UTF-8, zero padded).
pub const REASON_LEN: usize = 64;

/// A reason text as stored in the reasons map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReasonText {
    /// UTF-8 bytes, zero padded.
    pub text: [u8; REASON_LEN],
}
const _: () = assert!(size_of::<ReasonText>() == REASON_LEN);

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident = $val:expr, $label:expr;)*) => {
        /// Why the XDP program decided what it did; the index into the counters map.
        /// Every packet is counted under exactly one of the verdict reasons; the event reasons
        /// after [`Reason::COUNT_VERDICTS`] count conditions seen in addition.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason { $($(#[$doc])* $name = $val,)* }

        impl Reason {
            /// Every reason, in index order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// Stable label used in JSON and metrics.
            pub const fn label(self) -> &'static str {
                match self { $(Reason::$name => $label,)* }
            }
        }
    };
}

reasons! {
    /// Passed: no rule matched.
    Pass = 0, "pass";
    /// Passed: the source is allowlisted.
    Allowlisted = 1, "allowlisted";
    /// Passed: throttled source within its rate.
    ThrottlePass = 2, "throttle_pass";
    /// Dropped: the 5-tuple is on the flow-kill list.
    DropFlowKill = 3, "drop_flow_kill";
    /// Dropped: the source is blocklisted.
    DropBlock = 4, "drop_block";
    /// Dropped: the source is over its throttle rate.
    DropThrottle = 5, "drop_throttle";
    /// Passed in shadow mode; would have been dropped by the flow-kill list.
    ShadowFlowKill = 6, "shadow_flow_kill";
    /// Passed in shadow mode; would have been dropped by the blocklist.
    ShadowBlock = 7, "shadow_block";
    /// Passed in shadow mode; would have been dropped by a throttle.
    ShadowThrottle = 8, "shadow_throttle";
    /// Passed: not IPv4 or IPv6 (ARP, LLDP, ...).
    NonIp = 9, "non_ip";
    /// Passed: truncated or malformed Ethernet or IP header.
    Malformed = 10, "malformed";
    /// Passed: an internal error (map update failure); fail open.
    InternalError = 11, "internal_error";
    /// Event: the transport header was truncated (the packet was judged on addresses alone).
    TruncatedL4 = 12, "truncated_l4";
    /// Event: a new source could not be inserted into the sources map.
    SourceInsertFailed = 13, "source_insert_failed";
}

impl Reason {
    /// Number of verdict reasons (each packet is counted under exactly one of them).
    pub const COUNT_VERDICTS: u32 = 12;
    /// Size of the counters array.
    pub const COUNT: u32 = 14;

    /// True for reasons whose packets were dropped.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropFlowKill | Reason::DropBlock | Reason::DropThrottle
        )
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]` with explicit padding and only integer fields, so
    // every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for SourceStats {}
    unsafe impl aya::Pod for VerdictCache {}
    unsafe impl aya::Pod for RuleValue {}
    unsafe impl aya::Pod for ThrottleRule {}
    unsafe impl aya::Pod for BucketKey {}
    unsafe impl aya::Pod for BucketState {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for ReasonText {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for n in names::ALL {
            assert!(n.len() <= 15, "{n} is longer than BPF_OBJ_NAME_LEN - 1");
        }
    }

    #[test]
    fn reasons_are_dense_and_labelled() {
        assert_eq!(Reason::ALL.len() as u32, Reason::COUNT);
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32);
            assert!(!r.label().is_empty());
        }
        assert!(Reason::DropBlock.is_drop());
        assert!(!Reason::ShadowBlock.is_drop());
    }

    #[test]
    fn bucket_admits_burst_then_rate() {
        // A new bucket is full: its first packet and `burst - 1` more pass at once.
        let now = 100_000_000_000;
        let mut s = bucket_new(10, now);
        let passed = 1
            + (0..50)
                .filter(|_| bucket_take(&mut s, 100, 10, now))
                .count();
        assert_eq!(passed, 10);
        // Then 100 pps: over one second at 1 kpps offered, about 100 pass.
        let mut passed = 0;
        for i in 1..=1000u64 {
            if bucket_take(&mut s, 100, 10, now + i * 1_000_000) {
                passed += 1;
            }
        }
        assert_eq!(passed, 100);
    }

    #[test]
    fn batched_takes_never_exceed_the_bucket() {
        let now = 100_000_000_000;
        let mut s = bucket_new(20, now);
        let mut passed = 1;
        for _ in 0..10 {
            passed += bucket_take_n(&mut s, 1, 20, now, 8);
        }
        assert_eq!(passed, 20, "the burst, in batches");
        assert_eq!(bucket_take_n(&mut s, 1, 20, now, 8), 0);
        assert_eq!(stash_size(128, 20), 2);
        assert_eq!(stash_size(128, 1 << 20), STASH_MAX);
        assert_eq!(stash_size(128, 15), 0);
        assert_eq!(stash_size(120, 1 << 20), 0, "aggregates never batch");
    }

    #[test]
    fn prefix_lengths_round_trip_through_rule_flags() {
        for len in [0, 1, 64, 120, 128] {
            let flags = rule_prefix_flags(len) | RULE_FLAG_SHADOW;
            assert_eq!(rule_prefix_len(flags), len);
            assert_eq!(flags & RULE_FLAG_SHADOW, RULE_FLAG_SHADOW);
        }
    }

    #[test]
    fn bucket_never_overflows() {
        let mut s = BucketState::default();
        assert!(bucket_take(&mut s, u64::MAX, u64::MAX, u64::MAX));
        let mut s = BucketState {
            tokens: u64::MAX,
            last_ns: 0,
        };
        assert!(bucket_take(&mut s, 1, 1, 5));
    }
}
