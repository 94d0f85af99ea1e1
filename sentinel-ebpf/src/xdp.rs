//! The XDP enforcement program and its maps.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use sentinel_common::{
    AddrKey, BucketKey, BucketState, CONFIG_FLAG_PRESENCE, CONFIG_FLAG_SHADOW, Config, Counter,
    FlowKey, HAS_ALL, HAS_ALLOW_HASH, HAS_ALLOW_LPM, HAS_BLOCK_HASH, HAS_BLOCK_LPM, HAS_FLOW_KILL,
    HAS_THROTTLE_HASH, HAS_THROTTLE_LPM, RULE_FLAG_SHADOW, Reason, ReasonText, RuleValue,
    SourceStats, ThrottleRule, bucket_new, bucket_take, defaults, mask_prefix, rule_prefix_len,
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
    let mut pkt = Packet::default();
    match parse::parse_into(data, data_end, &mut pkt) {
        parse::PARSE_OK => {}
        parse::PARSE_NON_IP => return Reason::NonIp,
        _ => return Reason::Malformed,
    }
    if pkt.l4_truncated {
        count(Reason::TruncatedL4, len);
    }
    // The coarse clock (a tick's resolution, a few ms) serves expiries and last-seen stamps and
    // costs a load instead of a clock read; token buckets read the precise clock themselves.
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let reason = judge(&pkt, now);
    account_source(&pkt.src, len, now, reason.is_drop());
    reason
}

// Kept out of line: a separate BPF function gets its own stack frame, which keeps the entry
// function under the 512-byte limit (the verifier checks the whole call chain).
// Kept out of line: a separate BPF function gets its own stack frame, which keeps the entry
// function under the 512-byte limit (the verifier checks the whole call chain).
#[inline(never)]
fn judge(pkt: &Packet, now: u64) -> Reason {
    let mut flags = SN_CONFIG.get(0).map(|c| c.flags).unwrap_or(0);
    // Presence flags only count when userspace maintains them; otherwise look everything up.
    if flags & CONFIG_FLAG_PRESENCE == 0 {
        flags |= HAS_ALL;
    }
    if active_rule(
        &SN_ALLOW_HASH,
        &SN_ALLOW_LPM,
        flags & HAS_ALLOW_HASH != 0,
        flags & HAS_ALLOW_LPM != 0,
        &pkt.src,
        now,
    )
    .is_some()
    {
        return Reason::Allowlisted;
    }
    let shadow_all = flags & CONFIG_FLAG_SHADOW != 0;

    if flags & HAS_FLOW_KILL != 0 {
        let flow = FlowKey {
            src: pkt.src,
            dst: pkt.dst,
            src_port: pkt.src_port,
            dst_port: pkt.dst_port,
            proto: pkt.proto,
            _pad: [0; 3],
        };
        // SAFETY: the value is only read, and map values stay valid for the program run.
        if let Some(v) = unsafe { SN_FLOW_KILL.get(&flow) }
            && live(v.expires_ns, now)
        {
            return if shadow_all || v.flags & RULE_FLAG_SHADOW != 0 {
                Reason::ShadowFlowKill
            } else {
                Reason::DropFlowKill
            };
        }
    }

    if let Some(rule_flags) = active_rule(
        &SN_BLOCK_HASH,
        &SN_BLOCK_LPM,
        flags & HAS_BLOCK_HASH != 0,
        flags & HAS_BLOCK_LPM != 0,
        &pkt.src,
        now,
    ) {
        return if shadow_all || rule_flags & RULE_FLAG_SHADOW != 0 {
            Reason::ShadowBlock
        } else {
            Reason::DropBlock
        };
    }

    if let Some(rule) = throttle_rule(
        flags & HAS_THROTTLE_HASH != 0,
        flags & HAS_THROTTLE_LPM != 0,
        &pkt.src,
        now,
    ) {
        let conform = take_token(&pkt.src, rule);
        return if conform {
            Reason::ThrottlePass
        } else if shadow_all || rule.flags & RULE_FLAG_SHADOW != 0 {
            Reason::ShadowThrottle
        } else {
            Reason::DropThrottle
        };
    }
    Reason::Pass
}

/// An entry applies while `now` is before its expiry (0: never expires). Expiry is judged here,
/// in the kernel, so an entry stops applying on time even if userspace is not running.
#[inline(always)]
fn live(expires_ns: u64, now: u64) -> bool {
    expires_ns == 0 || now < expires_ns
}

/// Looks a source up in an exact-address hash, then in a prefix trie; returns the live entry's
/// flags.
#[inline(always)]
fn active_rule(
    exact: &HashMap<AddrKey, RuleValue>,
    prefixes: &LpmTrie<AddrKey, RuleValue>,
    has_exact: bool,
    has_prefixes: bool,
    src: &AddrKey,
    now: u64,
) -> Option<u32> {
    if has_exact {
        // SAFETY: read-only access to a value that stays valid for this program run.
        if let Some(v) = unsafe { exact.get(src) }
            && live(v.expires_ns, now)
        {
            return Some(v.flags);
        }
    }
    if !has_prefixes {
        return None;
    }
    live_prefix(prefixes, src, now).map(|v| v.flags)
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
#[inline(always)]
fn take_token(src: &AddrKey, rule: &ThrottleRule) -> bool {
    // Refills need the precise clock.
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = BucketKey {
        addr: mask_prefix(src, rule.aggregate_prefix),
        prefix_len: rule.aggregate_prefix,
        _pad: 0,
    };
    match SN_BUCKETS.get_ptr_mut(&key) {
        // SAFETY: the pointer comes from a successful lookup and is valid for this program run.
        Some(state) => bucket_take(unsafe { &mut *state }, rule.rate_pps, rule.burst, now),
        None => {
            if rule.burst == 0 {
                return false;
            }
            if SN_BUCKETS
                .insert(&key, &bucket_new(rule.burst, now), 0)
                .is_err()
            {
                count(Reason::InternalError, 0);
            }
            true
        }
    }
}

#[inline(never)]
fn account_source(src: &AddrKey, len: u64, now: u64, dropped: bool) {
    let drop = dropped as u64;
    match SN_SOURCES.get_ptr_mut(src) {
        Some(s) => {
            // SAFETY: per-CPU value from a successful lookup: no other CPU writes it.
            let s = unsafe { &mut *s };
            s.packets += 1;
            s.bytes += len;
            s.last_seen_ns = now;
            s.dropped += drop;
        }
        None => {
            let s = SourceStats {
                packets: 1,
                bytes: len,
                last_seen_ns: now,
                dropped: drop,
            };
            if SN_SOURCES.insert(src, &s, 0).is_err() {
                count(Reason::SourceInsertFailed, len);
            }
        }
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
