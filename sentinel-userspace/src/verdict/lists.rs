//! The block, allow and throttle lists: where a verdict is written into the kernel maps.
//!
//! Exact addresses go to hash maps (one lookup per packet), real prefixes to LPM tries. Bulk adds
//! use `BPF_MAP_UPDATE_BATCH`. Every entry carries its expiry in `CLOCK_MONOTONIC` nanoseconds,
//! which the XDP program compares with `bpf_ktime_get_ns()`, so entries stop applying on time
//! without userspace; [`sweep_expired`] only reclaims their slots.

use std::{net::IpAddr, time::Instant};

use aya::maps::{IterableMap, MapData, MapError, lpm_trie::Key};
use sentinel_common::{
    AddrKey, FlowKey, HAS_ALLOW_HASH, HAS_ALLOW_LPM, HAS_BLOCK_HASH, HAS_BLOCK_LPM, HAS_FLOW_KILL,
    HAS_THROTTLE_HASH, HAS_THROTTLE_LPM, MAX_BURST, MAX_RATE_PPS, REASON_LEN, RULE_FLAG_SHADOW,
    ReasonText, RuleValue, ThrottleRule, names, rule_prefix_flags, rule_prefix_len,
};

use super::target::{MapKey, Target, TargetError};
use crate::{
    clock,
    control::api::{
        AddRequest, AddResponse, DelRequest, DelResponse, Entry, ListKind, ThrottleSpec,
    },
    datapath::{DatapathError, Maps, sys},
};

/// Errors of list operations.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// A target did not parse.
    #[error("target #{index}: {source}")]
    Target {
        /// 1-based position in the request.
        index: usize,
        /// The cause.
        #[source]
        source: TargetError,
    },
    /// The request is inconsistent.
    #[error("{0}")]
    BadRequest(String),
    /// The list would overflow its map.
    #[error(
        "{map} holds {have} of at most {max} entries; adding {adding} more does not fit (raise the size under [maps] in the config)"
    )]
    Full {
        /// The map.
        map: &'static str,
        /// Entries there now.
        have: usize,
        /// Its capacity.
        max: u32,
        /// New entries asked for.
        adding: usize,
    },
    /// A kernel map operation failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// A write failed part-way, and putting back what it had changed failed too.
    #[error(
        "{source}; {left} entries could not be put back as they were: the list is partly changed"
    )]
    NotRolledBack {
        /// Why the write failed.
        #[source]
        source: Box<ListError>,
        /// Entries left as the failed write made them.
        left: usize,
    },
}

impl ListError {
    /// True when the caller sent something invalid (exit status 2), not a runtime failure.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ListError::Target { .. } | ListError::BadRequest(_) | ListError::Full { .. }
        )
    }
}

fn map_err(name: &str) -> impl FnOnce(MapError) -> DatapathError + '_ {
    move |source| DatapathError::Map {
        name: name.to_owned(),
        source,
    }
}

/// Parses every target of a request, reporting the first bad one by position.
pub fn parse_targets(targets: &[String]) -> Result<Vec<Target>, ListError> {
    targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.parse().map_err(|source| ListError::Target {
                index: i + 1,
                source,
            })
        })
        .collect()
}

/// Stable id of a reason text (FNV-1a, never 0, which means "no reason").
pub fn reason_id(text: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

/// What the kernel's reason slot keeps of `text`: its first [`REASON_LEN`] bytes, cut back to a
/// character boundary.
pub fn truncate_reason(text: &str) -> &str {
    let mut end = text.len().min(REASON_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn store_reason(maps: &mut Maps, text: Option<&str>) -> Result<u32, ListError> {
    let Some(text) = text.map(truncate_reason).filter(|t| !t.is_empty()) else {
        return Ok(0);
    };
    let id = reason_id(text);
    let mut value = ReasonText {
        text: [0; REASON_LEN],
    };
    value.text[..text.len()].copy_from_slice(text.as_bytes());
    if maps.reasons.insert(id, value, 0).is_ok() {
        return Ok(id);
    }
    // Full (nothing deletes a reason when its entries go): drop the reasons no live entry
    // names, and try again. Every attacker address and account gives a reason of its own, so
    // a long-running daemon fills the map; a verdict must not fail for want of its label.
    let dropped = prune_reasons(maps)?;
    match maps.reasons.insert(id, value, 0) {
        Ok(()) => Ok(id),
        Err(e) => {
            tracing::warn!(error = %e, dropped, "the reasons map is full of reasons in use: the entry is written without its reason");
            Ok(0)
        }
    }
}

/// Deletes the reason texts that no list entry names any more. Returns how many.
fn prune_reasons(maps: &mut Maps) -> Result<usize, ListError> {
    fn ids_in<K: Copy + Default, V: aya::Pod>(
        map: &MapData,
        reason: impl Fn(&V) -> u32,
        used: &mut std::collections::HashSet<u32>,
    ) -> Result<(), ListError> {
        sys::lookup_all::<K>(map.fd(), size_of::<V>(), |_, v| {
            // SAFETY: the kernel wrote one `V` (a plain-integer Pod) into `v`.
            let v: V = unsafe { std::ptr::read_unaligned(v.as_ptr().cast()) };
            used.insert(reason(&v));
        })
        .map_err(|e| ListError::from(DatapathError::Io(e)))
    }
    let mut used = std::collections::HashSet::new();
    let rule = |v: &RuleValue| v.reason_id;
    let throttle = |v: &ThrottleRule| v.reason_id;
    ids_in::<AddrKey, RuleValue>(maps.block_hash.map(), rule, &mut used)?;
    ids_in::<AddrKey, RuleValue>(maps.allow_hash.map(), rule, &mut used)?;
    ids_in::<FlowKey, RuleValue>(maps.flow_kill.map(), rule, &mut used)?;
    ids_in::<AddrKey, ThrottleRule>(maps.throttle_hash.map(), throttle, &mut used)?;
    used.extend(
        maps.block_lpm
            .iter()
            .filter_map(Result::ok)
            .map(|(_, v)| v.reason_id),
    );
    used.extend(
        maps.allow_lpm
            .iter()
            .filter_map(Result::ok)
            .map(|(_, v)| v.reason_id),
    );
    used.extend(
        maps.throttle_lpm
            .iter()
            .filter_map(Result::ok)
            .map(|(_, v)| v.reason_id),
    );
    let unused: Vec<u32> = maps
        .reasons
        .keys()
        .filter_map(Result::ok)
        .filter(|id| !used.contains(id))
        .collect();
    for id in &unused {
        let _ = maps.reasons.remove(id);
    }
    Ok(unused.len())
}

fn reason_text(maps: &Maps, id: u32) -> Option<String> {
    if id == 0 {
        return None;
    }
    let v = maps.reasons.get(&id, 0).ok()?;
    let end = v.text.iter().position(|b| *b == 0).unwrap_or(REASON_LEN);
    Some(String::from_utf8_lossy(&v.text[..end]).into_owned())
}

fn expiry(ttl_ms: Option<u64>) -> Result<u64, ListError> {
    match ttl_ms {
        None => Ok(0),
        Some(0) => Err(ListError::BadRequest(
            "a TTL must be longer than zero".into(),
        )),
        Some(ms) => Ok(clock::monotonic_ns().saturating_add(ms.saturating_mul(1_000_000))),
    }
}

fn remaining_s(expires_ns: u64, now: u64) -> Option<f64> {
    (expires_ns != 0).then(|| expires_ns.saturating_sub(now) as f64 / 1e9)
}

fn live(expires_ns: u64, now: u64) -> bool {
    expires_ns == 0 || now < expires_ns
}

/// Checks an add request's options against its list before anything is written (the CLI runs
/// it too, so bad options are bad input with or without a daemon): a throttle needs a valid rate
/// and burst and only a throttle takes them; `shadow` applies to the lists that drop.
pub fn check_options(kind: ListKind, req: &AddRequest) -> Result<Option<ThrottleSpec>, ListError> {
    if kind == ListKind::Allow && req.shadow {
        return Err(ListError::BadRequest(
            "--shadow applies to block and throttle entries; an allow entry never drops anything"
                .into(),
        ));
    }
    check_throttle(req.throttle, kind)
}

/// Checks a throttle's aggregate prefix length against each target's address family and own
/// prefix (the CLI runs it too, so that a /33 on an IPv4 address is bad input without a daemon).
pub fn check_aggregate(targets: &[Target], agg: u8) -> Result<(), ListError> {
    for t in targets {
        let (family, max) = if t.is_v4() {
            ("IPv4", 32)
        } else {
            ("IPv6", 128)
        };
        let own = t.net().prefix_len();
        if agg > max || agg < own {
            let range = match own == max {
                true => format!("a single address takes only /{max}"),
                false => format!("it must be between the target's prefix length /{own} and /{max}"),
            };
            return Err(ListError::BadRequest(format!(
                "aggregate /{agg} does not fit {t} ({family}): {range}"
            )));
        }
    }
    Ok(())
}

fn check_throttle(
    spec: Option<ThrottleSpec>,
    kind: ListKind,
) -> Result<Option<ThrottleSpec>, ListError> {
    match (kind, spec) {
        (ListKind::Throttle, None) => Err(ListError::BadRequest(
            "a throttle needs a rate (--rate N/s)".into(),
        )),
        (ListKind::Throttle, Some(s)) => {
            if s.rate_pps == 0 || s.rate_pps > MAX_RATE_PPS {
                return Err(ListError::BadRequest(format!(
                    "rate must be between 1 and {MAX_RATE_PPS} packets/s, got {}",
                    s.rate_pps
                )));
            }
            if s.burst == 0 || s.burst > MAX_BURST {
                return Err(ListError::BadRequest(format!(
                    "burst must be between 1 and {MAX_BURST} packets, got {}",
                    s.burst
                )));
            }
            Ok(Some(s))
        }
        (_, Some(_)) => Err(ListError::BadRequest(format!(
            "rate and burst apply to the throttle list, not to {}",
            kind.as_str()
        ))),
        (_, None) => Ok(None),
    }
}

fn capacity(map: &MapData) -> Result<u32, DatapathError> {
    map.info()
        .map(|i| i.max_entries())
        .map_err(|source| DatapathError::Map {
            name: "info".into(),
            source,
        })
}

/// Adds (or replaces) entries. Either every target is written or none is: bad input and lack of
/// room are refused before anything is written, and a write that fails part-way is undone.
pub fn add(maps: &mut Maps, kind: ListKind, req: &AddRequest) -> Result<AddResponse, ListError> {
    let targets = parse_targets(&req.targets)?;
    let throttle = check_options(kind, req)?;
    if let (Some(_), Some(agg)) = (throttle, req.throttle.and_then(|t| t.aggregate)) {
        check_aggregate(&targets, agg)?;
    }
    let expires_ns = expiry(req.ttl_ms)?;
    let mut split = Split::default();
    for t in &targets {
        match t.map_key() {
            MapKey::Exact(k) => {
                split.exact.push(k);
                split.exact_targets.push(t);
            }
            MapKey::Prefix(p, k) => split.prefixes.push((p, k, t)),
        }
    }
    // A bulk add checks for room first, so that it is written whole or not at all. One target
    // (every verdict the daemon writes) is all or nothing by itself, and counting a map of a
    // million entries for it would cost more than the write: a full map refuses it, and the
    // count then only explains the refusal.
    let one = targets.len() == 1;
    if !one {
        check_room(maps, kind, &split.exact, &split.prefixes)?;
    }
    let written = write_entries(maps, kind, req, expires_ns, throttle, &split);
    match written {
        Err(e) if one => {
            check_room(maps, kind, &split.exact, &split.prefixes)?;
            Err(e)
        }
        other => other.map(|(elapsed_ms, replaced)| AddResponse {
            added: targets.len(),
            exact: split.exact.len(),
            prefixes: split.prefixes.len(),
            elapsed_ms,
            replaced,
            allowlisted: allowlisted(maps, kind, &targets),
        }),
    }
}

/// Adds of at most this many targets are checked against the allowlist (an interactive add;
/// a bulk load of a million entries is not slowed by a lookup each).
const ALLOW_CHECKED: usize = 1024;

/// The block or throttle targets the allowlist covers (at their first address): it wins, so
/// the new entries do nothing there, which the operator should be told.
fn allowlisted(maps: &Maps, kind: ListKind, targets: &[Target]) -> Vec<String> {
    if kind == ListKind::Allow || targets.len() > ALLOW_CHECKED {
        return Vec::new();
    }
    targets
        .iter()
        .filter(|t| {
            let key = match t.map_key() {
                MapKey::Exact(k) | MapKey::Prefix(_, k) => k,
            };
            allowed(maps, &key)
        })
        .map(Target::to_string)
        .collect()
}

/// An add's targets by where they go: exact addresses (keys, and the targets they came from)
/// and prefixes (length in the 128-bit space, key, target).
#[derive(Default)]
struct Split<'t> {
    exact: Vec<AddrKey>,
    exact_targets: Vec<&'t Target>,
    prefixes: Vec<(u32, AddrKey, &'t Target)>,
}

/// Writes checked entries (see [`add`]); returns how long the writes took, in ms, and how many
/// targets held a live entry the add replaced (its TTL and reason with it, which an operator
/// re-adding should be told).
fn write_entries(
    maps: &mut Maps,
    kind: ListKind,
    req: &AddRequest,
    expires_ns: u64,
    throttle: Option<ThrottleSpec>,
    split: &Split<'_>,
) -> Result<(f64, usize), ListError> {
    let Split {
        exact,
        exact_targets,
        prefixes,
    } = split;
    let flags = if req.shadow { RULE_FLAG_SHADOW } else { 0 };
    let reason_id = store_reason(maps, req.reason.as_deref())?;
    // Make the kernel look these maps up before the first entry lands in them.
    let (hash_flag, lpm_flag) = match kind {
        ListKind::Block => (HAS_BLOCK_HASH, HAS_BLOCK_LPM),
        ListKind::Allow => (HAS_ALLOW_HASH, HAS_ALLOW_LPM),
        ListKind::Throttle => (HAS_THROTTLE_HASH, HAS_THROTTLE_LPM),
    };
    let mut present = 0;
    if !exact.is_empty() {
        present |= hash_flag;
    }
    if !prefixes.is_empty() {
        present |= lpm_flag;
    }
    maps.mark_present(present)?;
    let started = Instant::now();
    // The kernel reads a prefix entry's length to look past it once it expires.
    let prefix_flags = |p: u32| flags | rule_prefix_flags(p);
    let replaced = match throttle {
        None => {
            let value = RuleValue {
                expires_ns,
                reason_id,
                flags,
            };
            let prefixed: Vec<_> = prefixes
                .iter()
                .map(|(p, k, _)| {
                    let v = RuleValue {
                        flags: prefix_flags(*p),
                        ..value
                    };
                    (*p, *k, v)
                })
                .collect();
            write_list(maps, kind, exact, &vec![value; exact.len()], &prefixed)?
        }
        Some(spec) => {
            let rule_for = |t: &Target| ThrottleRule {
                rate_pps: spec.rate_pps,
                burst: spec.burst,
                expires_ns,
                reason_id,
                flags,
                aggregate_prefix: t.aggregate_prefix(spec.aggregate),
                _pad: 0,
            };
            let values: Vec<ThrottleRule> = exact_targets.iter().map(|t| rule_for(t)).collect();
            let prefixed: Vec<_> = prefixes
                .iter()
                .map(|(p, k, t)| {
                    let v = ThrottleRule {
                        flags: prefix_flags(*p),
                        ..rule_for(t)
                    };
                    (*p, *k, v)
                })
                .collect();
            write_list(maps, kind, exact, &values, &prefixed)?
        }
    };
    Ok((started.elapsed().as_secs_f64() * 1e3, replaced))
}

/// A list's two maps: exact addresses in a hash, prefixes in a trie (with their names).
struct ListMaps<'m, V: aya::Pod> {
    hash: &'m mut aya::maps::HashMap<MapData, AddrKey, V>,
    lpm: &'m mut aya::maps::LpmTrie<MapData, AddrKey, V>,
    hname: &'static str,
    lname: &'static str,
}

/// The value type of a list's entries: block and allow entries share one, throttles have theirs.
trait ListValue: aya::Pod {
    /// The maps of list `kind`, whose entries are of this type.
    fn list(maps: &mut Maps, kind: ListKind) -> ListMaps<'_, Self>;
    /// The entry's `RULE_FLAG_*` bits and recorded prefix length.
    fn flags(&self) -> u32;
    /// When the entry expires (monotonic ns; 0: never).
    fn expires_ns(&self) -> u64;
}

impl ListValue for RuleValue {
    fn list(maps: &mut Maps, kind: ListKind) -> ListMaps<'_, Self> {
        match kind {
            ListKind::Block => ListMaps {
                hash: &mut maps.block_hash,
                lpm: &mut maps.block_lpm,
                hname: names::BLOCK_HASH,
                lname: names::BLOCK_LPM,
            },
            _ => ListMaps {
                hash: &mut maps.allow_hash,
                lpm: &mut maps.allow_lpm,
                hname: names::ALLOW_HASH,
                lname: names::ALLOW_LPM,
            },
        }
    }

    fn flags(&self) -> u32 {
        self.flags
    }

    fn expires_ns(&self) -> u64 {
        self.expires_ns
    }
}

impl ListValue for ThrottleRule {
    fn list(maps: &mut Maps, _: ListKind) -> ListMaps<'_, Self> {
        ListMaps {
            hash: &mut maps.throttle_hash,
            lpm: &mut maps.throttle_lpm,
            hname: names::THROTTLE_HASH,
            lname: names::THROTTLE_LPM,
        }
    }

    fn flags(&self) -> u32 {
        self.flags
    }

    fn expires_ns(&self) -> u64 {
        self.expires_ns
    }
}

/// The entry at exactly prefix `p` of `k`, not a shorter prefix holding it: a trie answers with
/// the longest prefix holding the key, the same entry only when its recorded length is `p`.
fn prefix_entry<V: ListValue>(
    lpm: &aya::maps::LpmTrie<MapData, AddrKey, V>,
    p: u32,
    k: AddrKey,
) -> Result<Option<V>, MapError> {
    match lpm.get(&Key::new(p, k), 0) {
        Ok(v) => Ok((rule_prefix_len(v.flags()) == p).then_some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes one list's entries (exact keys with their values, then prefixes) and has the kernel
/// look its cached verdicts up again. When a write fails part-way, or telling the kernel fails
/// after every entry is in, what this call changed is put back (new entries removed, replaced
/// ones restored), so that a failed add leaves the list as it was: an add that reports an error
/// has changed nothing, one target or a million. Returns how many of the keys and prefixes held
/// a live entry (see [`Before::live`]).
fn write_list<V: ListValue>(
    maps: &mut Maps,
    kind: ListKind,
    exact: &[AddrKey],
    values: &[V],
    prefixes: &[(u32, AddrKey, V)],
) -> Result<usize, ListError> {
    // Even one entry, which the kernel writes whole or not at all, is put back when the
    // generation bump after it fails (the kernel would go on serving cached verdicts that
    // ignore it): one or two lookups, which also say what the add replaces.
    let before = Before::read(&V::list(maps, kind), exact, prefixes)?;
    let replaced = before.live(exact);
    let mut prefixes_written = 0;
    let written = write_raw(
        V::list(maps, kind),
        exact,
        values,
        prefixes,
        &mut prefixes_written,
    )
    // Sources whose verdict the kernel cached while the entries were written look again.
    .and_then(|()| Ok(maps.bump_generation()?));
    let Err(e) = written else {
        return Ok(replaced);
    };
    let left = before.restore(V::list(maps, kind), exact, prefixes, prefixes_written);
    // Presence flags raised for the entries, and verdicts the kernel cached meanwhile, follow
    // the lists as they are again.
    if let Err(e) = maps.refresh_presence() {
        tracing::warn!(error = %e, "refreshing the list presence flags after a failed add");
    }
    if left > 0 {
        return Err(ListError::NotRolledBack {
            source: Box::new(e),
            left,
        });
    }
    Err(e)
}

fn write_raw<V: ListValue>(
    list: ListMaps<'_, V>,
    exact: &[AddrKey],
    values: &[V],
    prefixes: &[(u32, AddrKey, V)],
    prefixes_written: &mut usize,
) -> Result<(), ListError> {
    sys::update_batch(list.hash.map().fd(), exact, values, 65_536).map_err(|e| {
        DatapathError::Io(std::io::Error::other(format!(
            "{}: batch update: {e}",
            list.hname
        )))
    })?;
    for (p, k, v) in prefixes {
        list.lpm
            .insert(&Key::new(*p, *k), *v, 0)
            .map_err(map_err(list.lname))?;
        *prefixes_written += 1;
    }
    Ok(())
}

/// What a bulk add is about to replace: the entries at its exact keys and at its prefixes as
/// they were before it wrote anything.
struct Before<V> {
    /// The exact keys that held an entry, with it (the others are new).
    exact: std::collections::HashMap<AddrKey, V>,
    /// The entry at each prefix of the add, in its order (`None`: new).
    prefixes: Vec<Option<V>>,
}

/// From this many exact keys on, the entries they replace are found by scanning the map in
/// batches (one syscall per 4096 entries it holds) rather than by one lookup per key.
const SCAN_FROM: usize = 4096;

impl<V: ListValue> Before<V> {
    fn read(
        list: &ListMaps<'_, V>,
        exact: &[AddrKey],
        prefixes: &[(u32, AddrKey, V)],
    ) -> Result<Self, ListError> {
        let mut held = std::collections::HashMap::new();
        if exact.len() < SCAN_FROM {
            for k in exact {
                match list.hash.get(k, 0) {
                    Ok(v) => {
                        held.insert(*k, v);
                    }
                    Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(list.hname)(e).into()),
                }
            }
        } else {
            // The set of keys is built only if the map holds anything (a first load does not).
            let mut wanted = None;
            sys::lookup_all::<AddrKey>(list.hash.map().fd(), size_of::<V>(), |k, v| {
                let wanted = wanted
                    .get_or_insert_with(|| exact.iter().collect::<std::collections::HashSet<_>>());
                if wanted.contains(k) {
                    // SAFETY: the kernel wrote one `V` (a plain-integer Pod) into `v`.
                    held.insert(*k, unsafe { std::ptr::read_unaligned(v.as_ptr().cast()) });
                }
            })
            .map_err(DatapathError::Io)?;
        }
        let prefixes = if list.lpm.keys().next().is_none() {
            vec![None; prefixes.len()]
        } else {
            prefixes
                .iter()
                .map(|(p, k, _)| prefix_entry(list.lpm, *p, *k))
                .collect::<Result<_, _>>()
                .map_err(map_err(list.lname))?
        };
        Ok(Self {
            exact: held,
            prefixes,
        })
    }

    /// How many of `exact` (as given, a key twice counting twice) and of the add's prefixes
    /// held an entry that has not expired.
    fn live(&self, exact: &[AddrKey]) -> usize {
        let now = clock::monotonic_ns();
        let is_live = |v: &V| live(v.expires_ns(), now);
        exact
            .iter()
            .filter(|k| self.exact.get(*k).is_some_and(is_live))
            .count()
            + self
                .prefixes
                .iter()
                .flatten()
                .filter(|v| is_live(v))
                .count()
    }

    /// Puts back what a failed write changed: every exact key (the batch may have written any
    /// of them) and the first `prefixes_written` prefixes. New entries go first, so that the
    /// replaced ones find their room again. Returns how many entries it could not put back.
    fn restore(
        self,
        list: ListMaps<'_, V>,
        exact: &[AddrKey],
        prefixes: &[(u32, AddrKey, V)],
        prefixes_written: usize,
    ) -> usize {
        // An entry the write never reached is already gone.
        let gone = |r: Result<(), MapError>| match r {
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            r => r,
        };
        let written = prefixes.iter().zip(&self.prefixes).take(prefixes_written);
        let mut failed = 0;
        for ((p, k, _), _) in written.clone().filter(|(_, old)| old.is_none()) {
            failed += usize::from(gone(list.lpm.remove(&Key::new(*p, *k))).is_err());
        }
        for k in exact.iter().filter(|k| !self.exact.contains_key(*k)) {
            failed += usize::from(gone(list.hash.remove(k)).is_err());
        }
        for ((p, k, _), old) in written {
            if let Some(v) = old {
                failed += usize::from(list.lpm.insert(&Key::new(*p, *k), *v, 0).is_err());
            }
        }
        let (keys, values): (Vec<AddrKey>, Vec<V>) = self.exact.into_iter().unzip();
        if let Err(e) = sys::update_batch(list.hash.map().fd(), &keys, &values, 65_536) {
            tracing::warn!(error = %e, list = list.hname, "restoring replaced entries");
            failed += keys.len();
        }
        failed
    }
}

/// The (prefix length, address) keys of a prefix trie; a key that cannot be read is an error,
/// not a key fewer.
fn trie_keys<V: aya::Pod>(
    trie: &aya::maps::LpmTrie<MapData, AddrKey, V>,
) -> Result<std::collections::HashSet<(u32, AddrKey)>, MapError> {
    trie.keys()
        .map(|k| k.map(|k| (k.prefix_len(), k.data())))
        .collect()
}

/// Refuses an add whose new entries do not fit their maps. Entries it replaces (keys already in
/// the map, live or expired) take no room, and a key given twice counts once.
fn check_room(
    maps: &Maps,
    kind: ListKind,
    exact: &[AddrKey],
    prefixes: &[(u32, AddrKey, &Target)],
) -> Result<(), ListError> {
    use std::collections::HashSet;
    let (hash, hname, hval, lpm_map, lname) = match kind {
        ListKind::Block => (
            maps.block_hash.map(),
            names::BLOCK_HASH,
            size_of::<RuleValue>(),
            maps.block_lpm.map(),
            names::BLOCK_LPM,
        ),
        ListKind::Allow => (
            maps.allow_hash.map(),
            names::ALLOW_HASH,
            size_of::<RuleValue>(),
            maps.allow_lpm.map(),
            names::ALLOW_LPM,
        ),
        ListKind::Throttle => (
            maps.throttle_hash.map(),
            names::THROTTLE_HASH,
            size_of::<ThrottleRule>(),
            maps.throttle_lpm.map(),
            names::THROTTLE_LPM,
        ),
    };
    if !exact.is_empty() {
        let max = capacity(hash)?;
        let have = Maps::count_hash::<AddrKey>(hash, hval)?;
        if have + exact.len() > max as usize {
            // Replacing existing entries takes no room: count only the new ones.
            let mut present = HashSet::with_capacity(have);
            sys::lookup_all::<AddrKey>(hash.fd(), hval, |k, _| {
                present.insert(*k);
            })
            .map_err(DatapathError::Io)?;
            let new = exact.iter().filter(|k| present.insert(**k)).count();
            if have + new > max as usize {
                return Err(ListError::Full {
                    map: hname,
                    have,
                    max,
                    adding: new,
                });
            }
        }
    }
    if prefixes.is_empty() {
        return Ok(());
    }
    // A trie is read key by key: only when prefixes are added to it.
    let mut present = match kind {
        ListKind::Block => trie_keys(&maps.block_lpm),
        ListKind::Allow => trie_keys(&maps.allow_lpm),
        ListKind::Throttle => trie_keys(&maps.throttle_lpm),
    }
    .map_err(map_err(lname))?;
    let have = present.len();
    let new = prefixes
        .iter()
        .filter(|(p, k, _)| present.insert((*p, *k)))
        .count();
    let lmax = capacity(lpm_map)?;
    if have + new > lmax as usize {
        return Err(ListError::Full {
            map: lname,
            have,
            max: lmax,
            adding: new,
        });
    }
    Ok(())
}

/// Removes entries; targets not in the list are reported, not treated as errors.
pub fn remove(maps: &mut Maps, kind: ListKind, req: &DelRequest) -> Result<DelResponse, ListError> {
    let targets = parse_targets(&req.targets)?;
    let mut removed = 0;
    let mut not_found = Vec::new();
    for t in &targets {
        let found = match (kind, t.map_key()) {
            (ListKind::Block, MapKey::Exact(k)) => remove_key(&mut maps.block_hash, &k)?,
            (ListKind::Allow, MapKey::Exact(k)) => remove_key(&mut maps.allow_hash, &k)?,
            (ListKind::Throttle, MapKey::Exact(k)) => remove_key(&mut maps.throttle_hash, &k)?,
            (ListKind::Block, MapKey::Prefix(p, k)) => remove_prefix(&mut maps.block_lpm, p, k)?,
            (ListKind::Allow, MapKey::Prefix(p, k)) => remove_prefix(&mut maps.allow_lpm, p, k)?,
            (ListKind::Throttle, MapKey::Prefix(p, k)) => {
                remove_prefix(&mut maps.throttle_lpm, p, k)?
            }
        };
        if found {
            removed += 1;
        } else {
            not_found.push(t.to_string());
        }
    }
    maps.refresh_presence()?;
    Ok(DelResponse { removed, not_found })
}

fn remove_key<V: aya::Pod>(
    map: &mut aya::maps::HashMap<MapData, AddrKey, V>,
    key: &AddrKey,
) -> Result<bool, DatapathError> {
    match map.get(key, 0) {
        Ok(_) => {
            map.remove(key).map_err(map_err("hash"))?;
            Ok(true)
        }
        Err(MapError::KeyNotFound) => Ok(false),
        Err(e) => Err(map_err("hash")(e)),
    }
}

fn remove_prefix<V: aya::Pod>(
    map: &mut aya::maps::LpmTrie<MapData, AddrKey, V>,
    prefix: u32,
    key: AddrKey,
) -> Result<bool, DatapathError> {
    let key = Key::new(prefix, key);
    // An LPM lookup returns the longest match, not necessarily this exact prefix: compare.
    let exists = map
        .keys()
        .flatten()
        .any(|k| k.prefix_len() == prefix && k.data() == key.data());
    if exists {
        map.remove(&key).map_err(map_err("lpm"))?;
    }
    Ok(exists)
}

/// Lists the live entries of a list (expired ones still waiting for the sweep are left out).
pub fn list(maps: &Maps, kind: ListKind) -> Result<Vec<Entry>, ListError> {
    list_where(maps, kind, |_| true)
}

/// The live entries of a list that cover `ip` (what `explain` shows): only those are decoded
/// and kept, so memory stays small however long the list is.
pub fn list_covering(maps: &Maps, kind: ListKind, ip: IpAddr) -> Result<Vec<Entry>, ListError> {
    list_where(maps, kind, |k| Target::from_map_key(*k).net().contains(&ip))
}

fn list_where(
    maps: &Maps,
    kind: ListKind,
    keep: impl Fn(&MapKey) -> bool,
) -> Result<Vec<Entry>, ListError> {
    let now = clock::monotonic_ns();
    let mut out = Vec::new();
    match kind {
        ListKind::Block | ListKind::Allow => {
            let (hash, lpm) = if kind == ListKind::Block {
                (&maps.block_hash, &maps.block_lpm)
            } else {
                (&maps.allow_hash, &maps.allow_lpm)
            };
            let mut rows = Vec::new();
            sys::lookup_all::<AddrKey>(hash.map().fd(), size_of::<RuleValue>(), |k, v| {
                // SAFETY: the kernel wrote one `RuleValue` (plain integers) into `v`.
                let v: RuleValue = unsafe { std::ptr::read_unaligned(v.as_ptr().cast()) };
                if keep(&MapKey::Exact(*k)) {
                    rows.push((MapKey::Exact(*k), v));
                }
            })
            .map_err(DatapathError::Io)?;
            for item in lpm.iter() {
                let (k, v) = item.map_err(map_err("lpm"))?;
                let k = MapKey::Prefix(k.prefix_len(), k.data());
                if keep(&k) {
                    rows.push((k, v));
                }
            }
            for (k, v) in rows.into_iter().filter(|(_, v)| live(v.expires_ns, now)) {
                out.push(Entry {
                    target: Target::from_map_key(k).to_string(),
                    ttl_remaining_s: remaining_s(v.expires_ns, now),
                    reason: reason_text(maps, v.reason_id),
                    shadow: v.flags & RULE_FLAG_SHADOW != 0,
                    throttle: None,
                });
            }
        }
        ListKind::Throttle => {
            let mut rows = Vec::new();
            sys::lookup_all::<AddrKey>(
                maps.throttle_hash.map().fd(),
                size_of::<ThrottleRule>(),
                |k, v| {
                    // SAFETY: the kernel wrote one `ThrottleRule` (plain integers) into `v`.
                    let v: ThrottleRule = unsafe { std::ptr::read_unaligned(v.as_ptr().cast()) };
                    if keep(&MapKey::Exact(*k)) {
                        rows.push((MapKey::Exact(*k), v));
                    }
                },
            )
            .map_err(DatapathError::Io)?;
            for item in maps.throttle_lpm.iter() {
                let (k, v) = item.map_err(map_err("lpm"))?;
                let k = MapKey::Prefix(k.prefix_len(), k.data());
                if keep(&k) {
                    rows.push((k, v));
                }
            }
            for (k, v) in rows.into_iter().filter(|(_, v)| live(v.expires_ns, now)) {
                let target = Target::from_map_key(k);
                let aggregate = (v.aggregate_prefix < 128).then(|| {
                    if target.is_v4() {
                        (v.aggregate_prefix - 96) as u8
                    } else {
                        v.aggregate_prefix as u8
                    }
                });
                out.push(Entry {
                    target: target.to_string(),
                    ttl_remaining_s: remaining_s(v.expires_ns, now),
                    reason: reason_text(maps, v.reason_id),
                    shadow: v.flags & RULE_FLAG_SHADOW != 0,
                    throttle: Some(ThrottleSpec {
                        rate_pps: v.rate_pps,
                        burst: v.burst,
                        aggregate,
                    }),
                });
            }
        }
    }
    out.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(out)
}

/// A TCP or UDP flow as the XDP program sees it arriving: client to server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Flow {
    /// Client (source) address and port.
    pub src: std::net::SocketAddr,
    /// Server (destination) address and port.
    pub dst: std::net::SocketAddr,
    /// IP protocol (6 TCP, 17 UDP).
    pub proto: u8,
}

impl Flow {
    /// The flow-kill map key.
    pub fn key(&self) -> FlowKey {
        let addr = |ip: IpAddr| match Target::from(ip).map_key() {
            MapKey::Exact(k) | MapKey::Prefix(_, k) => k,
        };
        FlowKey {
            src: addr(self.src.ip()),
            dst: addr(self.dst.ip()),
            src_port: self.src.port(),
            dst_port: self.dst.port(),
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            6 => "tcp",
            17 => "udp",
            _ => "ip",
        };
        write!(f, "{proto} {} -> {}", self.src, self.dst)
    }
}

/// Puts a flow on the kill list: the XDP program drops its packets (or, with `shadow`, counts
/// them as would-drops) until `ttl_ms` has passed.
pub fn kill_flow(
    maps: &mut Maps,
    flow: &Flow,
    ttl_ms: u64,
    reason: Option<&str>,
    shadow: bool,
) -> Result<(), ListError> {
    let expires_ns = expiry(Some(ttl_ms))?;
    let reason_id = store_reason(maps, reason)?;
    maps.mark_present(HAS_FLOW_KILL)?;
    let value = RuleValue {
        expires_ns,
        reason_id,
        flags: if shadow { RULE_FLAG_SHADOW } else { 0 },
    };
    maps.flow_kill
        .insert(flow.key(), value, 0)
        .map_err(map_err(names::FLOW_KILL))?;
    Ok(())
}

/// Deletes expired entries from every list (the kernel already ignores them). Returns how many.
pub fn sweep_expired(maps: &mut Maps) -> Result<usize, ListError> {
    let now = clock::monotonic_ns();
    let mut n = 0;
    n += sweep_hash(&mut maps.block_hash, now, |v: &RuleValue| v.expires_ns)?;
    n += sweep_hash(&mut maps.allow_hash, now, |v: &RuleValue| v.expires_ns)?;
    n += sweep_hash(&mut maps.throttle_hash, now, |v: &ThrottleRule| {
        v.expires_ns
    })?;
    n += sweep_hash(&mut maps.flow_kill, now, |v: &RuleValue| v.expires_ns)?;
    n += sweep_lpm(&mut maps.block_lpm, now, |v: &RuleValue| v.expires_ns)?;
    n += sweep_lpm(&mut maps.allow_lpm, now, |v: &RuleValue| v.expires_ns)?;
    n += sweep_lpm(&mut maps.throttle_lpm, now, |v: &ThrottleRule| v.expires_ns)?;
    if n > 0 {
        maps.refresh_presence()?;
    }
    Ok(n)
}

fn sweep_hash<K: aya::Pod + Default, V: aya::Pod>(
    map: &mut aya::maps::HashMap<MapData, K, V>,
    now: u64,
    expires: impl Fn(&V) -> u64,
) -> Result<usize, DatapathError> {
    let mut dead = Vec::new();
    sys::lookup_all::<K>(map.map().fd(), size_of::<V>(), |k, v| {
        // SAFETY: the kernel wrote one `V` (a plain-integer Pod) into `v`.
        let v: V = unsafe { std::ptr::read_unaligned(v.as_ptr().cast()) };
        if !live(expires(&v), now) {
            dead.push(*k);
        }
    })
    .map_err(DatapathError::Io)?;
    for k in &dead {
        // Already gone (removed concurrently) is fine.
        let _ = map.remove(k);
    }
    Ok(dead.len())
}

fn sweep_lpm<V: aya::Pod>(
    map: &mut aya::maps::LpmTrie<MapData, AddrKey, V>,
    now: u64,
    expires: impl Fn(&V) -> u64,
) -> Result<usize, DatapathError> {
    let dead: Vec<Key<AddrKey>> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| !live(expires(v), now))
        .map(|(k, _)| k)
        .collect();
    for k in &dead {
        let _ = map.remove(k);
    }
    Ok(dead.len())
}

/// The live entry of `kind` at exactly `target` (an address, or that very prefix, not a
/// wider one holding it): when it expires (`CLOCK_MONOTONIC` ns, 0: never) and whether it is
/// in shadow mode.
pub fn held(maps: &Maps, kind: ListKind, target: &Target) -> Option<(u64, bool)> {
    fn exact<V: aya::Pod>(
        m: &aya::maps::HashMap<MapData, AddrKey, V>,
        k: AddrKey,
        of: fn(&V) -> (u64, u32),
    ) -> Option<(u64, u32)> {
        m.get(&k, 0).ok().map(|v| of(&v))
    }
    fn prefix<V: ListValue>(
        m: &aya::maps::LpmTrie<MapData, AddrKey, V>,
        (p, k): (u32, AddrKey),
        of: fn(&V) -> (u64, u32),
    ) -> Option<(u64, u32)> {
        prefix_entry(m, p, k).ok().flatten().map(|v| of(&v))
    }
    let rule: fn(&RuleValue) -> (u64, u32) = |v| (v.expires_ns, v.flags);
    let throttle: fn(&ThrottleRule) -> (u64, u32) = |v| (v.expires_ns, v.flags);
    let (expires_ns, flags) = match (kind, target.map_key()) {
        (ListKind::Block, MapKey::Exact(k)) => exact(&maps.block_hash, k, rule),
        (ListKind::Allow, MapKey::Exact(k)) => exact(&maps.allow_hash, k, rule),
        (ListKind::Throttle, MapKey::Exact(k)) => exact(&maps.throttle_hash, k, throttle),
        (ListKind::Block, MapKey::Prefix(p, k)) => prefix(&maps.block_lpm, (p, k), rule),
        (ListKind::Allow, MapKey::Prefix(p, k)) => prefix(&maps.allow_lpm, (p, k), rule),
        (ListKind::Throttle, MapKey::Prefix(p, k)) => prefix(&maps.throttle_lpm, (p, k), throttle),
    }?;
    live(expires_ns, clock::monotonic_ns()).then_some((expires_ns, flags & RULE_FLAG_SHADOW != 0))
}

/// Whether a live allowlist entry covers `addr` (the kernel's first check, which wins over the
/// others): the allowlist's maps only.
pub fn allowed(maps: &Maps, addr: &AddrKey) -> bool {
    allowed_at(maps, addr, clock::monotonic_ns())
}

fn allowed_at(maps: &Maps, addr: &AddrKey, now: u64) -> bool {
    let live_at = |v: RuleValue| live(v.expires_ns, now);
    maps.allow_hash.get(addr, 0).is_ok_and(live_at)
        || maps
            .allow_lpm
            .get(&Key::new(128, *addr), 0)
            .is_ok_and(live_at)
}

/// Which list applies to a source right now: `allow`, `block`, `throttle` or `none` (the same
/// order of precedence as the kernel).
pub fn verdict_of(maps: &Maps, addr: &AddrKey) -> &'static str {
    let now = clock::monotonic_ns();
    let key = Key::new(128, *addr);
    let hit = |h: Option<u64>, l: Option<u64>| {
        h.is_some_and(|e| live(e, now)) || l.is_some_and(|e| live(e, now))
    };
    if allowed_at(maps, addr, now) {
        "allow"
    } else if hit(
        maps.block_hash.get(addr, 0).ok().map(|v| v.expires_ns),
        maps.block_lpm.get(&key, 0).ok().map(|v| v.expires_ns),
    ) {
        "block"
    } else if hit(
        maps.throttle_hash.get(addr, 0).ok().map(|v| v.expires_ns),
        maps.throttle_lpm.get(&key, 0).ok().map(|v| v.expires_ns),
    ) {
        "throttle"
    } else {
        "none"
    }
}

/// The address of a source key, for display.
pub fn source_ip(addr: &AddrKey) -> IpAddr {
    super::target::addr_of(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_ids_are_stable_and_nonzero() {
        assert_eq!(reason_id("brute force"), reason_id("brute force"));
        assert_ne!(reason_id("a"), reason_id("b"));
        assert_ne!(reason_id(""), 0);
    }

    #[test]
    fn reasons_truncate_on_char_boundaries() {
        let long = "é".repeat(40);
        let t = truncate_reason(&long);
        assert!(t.len() <= REASON_LEN);
        assert!(t.chars().all(|c| c == 'é'));
    }

    #[test]
    fn throttle_parameters_are_validated() {
        let ok = ThrottleSpec {
            rate_pps: 100,
            burst: 10,
            aggregate: None,
        };
        assert!(check_throttle(Some(ok), ListKind::Throttle).is_ok());
        assert!(check_throttle(None, ListKind::Throttle).is_err());
        assert!(check_throttle(Some(ok), ListKind::Block).is_err());
        let zero = ThrottleSpec { rate_pps: 0, ..ok };
        assert!(check_throttle(Some(zero), ListKind::Throttle).is_err());
        let no_burst = ThrottleSpec { burst: 0, ..ok };
        assert!(check_throttle(Some(no_burst), ListKind::Throttle).is_err());
        let shadow = AddRequest {
            shadow: true,
            ..Default::default()
        };
        assert!(check_options(ListKind::Allow, &shadow).is_err());
        assert!(check_options(ListKind::Block, &shadow).is_ok());
    }

    #[test]
    fn parse_targets_names_the_bad_one() {
        let err = parse_targets(&["192.0.2.1".into(), "nope".into()]).unwrap_err();
        assert!(err.to_string().starts_with("target #2:"), "{err}");
    }
}
