//! Typed handles on the XDP object's maps, opened from a loaded object or from the pins.

use std::path::Path;

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, IterableMap as _, LpmTrie, Map, MapData, MapError, PerCpuArray,
        PerCpuHashMap,
    },
};
use sentinel_common::{
    AddrKey, BucketKey, BucketState, CONFIG_FLAG_PRESENCE, CONFIG_FLAG_SHADOW, Config, Counter,
    FlowKey, HAS_ALL, HAS_ALLOW_HASH, HAS_ALLOW_LPM, HAS_BLOCK_HASH, HAS_BLOCK_LPM, HAS_FLOW_KILL,
    HAS_THROTTLE_HASH, HAS_THROTTLE_LPM, Reason, ReasonText, RuleValue, SourceStats, ThrottleRule,
    names,
};

use super::{DatapathError, sys};

/// Every map of the XDP sentinel.
pub struct Maps {
    /// Per-source counters (LRU, per CPU).
    pub sources: PerCpuHashMap<MapData, AddrKey, SourceStats>,
    /// Exact allowlisted addresses.
    pub allow_hash: HashMap<MapData, AddrKey, RuleValue>,
    /// Allowlisted prefixes.
    pub allow_lpm: LpmTrie<MapData, AddrKey, RuleValue>,
    /// Exact blocked addresses.
    pub block_hash: HashMap<MapData, AddrKey, RuleValue>,
    /// Blocked prefixes.
    pub block_lpm: LpmTrie<MapData, AddrKey, RuleValue>,
    /// Exact throttled addresses.
    pub throttle_hash: HashMap<MapData, AddrKey, ThrottleRule>,
    /// Throttled prefixes.
    pub throttle_lpm: LpmTrie<MapData, AddrKey, ThrottleRule>,
    /// Token buckets (LRU).
    pub buckets: HashMap<MapData, BucketKey, BucketState>,
    /// Killed flows.
    pub flow_kill: HashMap<MapData, FlowKey, RuleValue>,
    /// Per-reason counters (per CPU).
    pub counters: PerCpuArray<MapData, Counter>,
    /// Global configuration.
    pub config: Array<MapData, Config>,
    /// Reason texts.
    pub reasons: HashMap<MapData, u32, ReasonText>,
}

fn open_pinned(dir: &Path, name: &str) -> Result<Map, DatapathError> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| DatapathError::OpenPin {
        path: path.clone(),
        source,
    })?;
    Map::from_map_data(data).map_err(|source| DatapathError::Map {
        name: name.to_owned(),
        source,
    })
}

macro_rules! typed {
    ($take:expr, $name:expr) => {{
        let name = $name;
        let map = $take(name)?;
        map.try_into()
            .map_err(|source: MapError| DatapathError::Map {
                name: name.to_owned(),
                source,
            })?
    }};
}

impl Maps {
    fn build(
        mut take: impl FnMut(&str) -> Result<Map, DatapathError>,
    ) -> Result<Self, DatapathError> {
        Ok(Self {
            sources: typed!(take, names::SOURCES),
            allow_hash: typed!(take, names::ALLOW_HASH),
            allow_lpm: typed!(take, names::ALLOW_LPM),
            block_hash: typed!(take, names::BLOCK_HASH),
            block_lpm: typed!(take, names::BLOCK_LPM),
            throttle_hash: typed!(take, names::THROTTLE_HASH),
            throttle_lpm: typed!(take, names::THROTTLE_LPM),
            buckets: typed!(take, names::BUCKETS),
            flow_kill: typed!(take, names::FLOW_KILL),
            counters: typed!(take, names::COUNTERS),
            config: typed!(take, names::CONFIG),
            reasons: typed!(take, names::REASONS),
        })
    }

    /// Takes the maps out of a loaded object (the object keeps its programs).
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Self::build(|name| {
            ebpf.take_map(name)
                .ok_or_else(|| DatapathError::MissingMap(name.to_owned()))
        })
    }

    /// Opens the maps pinned under `dir` (no program needs to be loaded).
    pub fn open_pinned(dir: &Path) -> Result<Self, DatapathError> {
        Self::build(|name| open_pinned(dir, name))
    }

    /// Sum of the per-CPU counters, indexed by [`Reason`].
    pub fn counters(&self) -> Result<Vec<Counter>, DatapathError> {
        let mut out = Vec::with_capacity(Reason::COUNT as usize);
        for r in Reason::ALL {
            let per_cpu =
                self.counters
                    .get(&(*r as u32), 0)
                    .map_err(|source| DatapathError::Map {
                        name: names::COUNTERS.to_owned(),
                        source,
                    })?;
            let mut sum = Counter::default();
            for c in per_cpu.iter() {
                sum.packets += c.packets;
                sum.bytes += c.bytes;
            }
            out.push(sum);
        }
        Ok(out)
    }

    /// Every tracked source with its per-CPU stats summed (last seen: the latest of the CPUs).
    pub fn sources(&self) -> Result<Vec<(AddrKey, SourceStats)>, DatapathError> {
        let cpus = sys::possible_cpus().map_err(DatapathError::Io)?;
        let stride = size_of::<SourceStats>().next_multiple_of(8);
        let mut out = Vec::new();
        sys::lookup_all::<AddrKey>(self.sources.map().fd(), stride * cpus, |k, v| {
            let mut sum = SourceStats::default();
            for cpu in 0..cpus {
                let bytes = &v[cpu * stride..cpu * stride + size_of::<SourceStats>()];
                // SAFETY: `bytes` holds exactly one `SourceStats` as the kernel wrote it;
                // `SourceStats` is plain integers, valid for any bit pattern.
                let s: SourceStats =
                    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<SourceStats>()) };
                sum.packets += s.packets;
                sum.bytes += s.bytes;
                sum.dropped += s.dropped;
                sum.last_seen_ns = sum.last_seen_ns.max(s.last_seen_ns);
            }
            out.push((*k, sum));
        })
        .map_err(DatapathError::Io)?;
        Ok(out)
    }

    /// Number of entries of a hash-type map, by batch lookups.
    pub fn count_hash<K: Copy + Default>(
        map: &MapData,
        value_size: usize,
    ) -> Result<usize, DatapathError> {
        let mut n = 0;
        sys::lookup_all::<K>(map.fd(), value_size, |_, _| n += 1).map_err(DatapathError::Io)?;
        Ok(n)
    }

    /// Reads the global configuration.
    pub fn config(&self) -> Result<Config, DatapathError> {
        self.config.get(&0, 0).map_err(|source| DatapathError::Map {
            name: names::CONFIG.to_owned(),
            source,
        })
    }

    /// Sets or clears global shadow mode, keeping the presence flags.
    pub fn set_shadow(&mut self, shadow: bool) -> Result<(), DatapathError> {
        let mut c = self.config()?;
        c.flags = (c.flags & !CONFIG_FLAG_SHADOW) | if shadow { CONFIG_FLAG_SHADOW } else { 0 };
        self.set_config(c)
    }

    /// Marks maps as possibly non-empty before entries are written into them, so the XDP
    /// program starts looking them up. Also bumps the list generation (see
    /// [`Maps::bump_generation`]), which is enough for a writer that sends no packet between
    /// this call and its writes (tests); writers racing live traffic bump again after writing.
    pub fn mark_present(&mut self, flags: u32) -> Result<(), DatapathError> {
        let mut c = self.config()?;
        if c.flags & CONFIG_FLAG_PRESENCE == 0 {
            // Not maintained yet: start from what the maps hold.
            c.flags = (c.flags & !HAS_ALL) | self.present()? | CONFIG_FLAG_PRESENCE;
        }
        c.flags |= flags;
        c.generation = c.generation.wrapping_add(1);
        self.set_config(c)
    }

    /// Tells the kernel that the allow, block or throttle lists changed: every verdict it cached
    /// per source is looked up again on the source's next packet. Call it after writing entries
    /// (adding, replacing or deleting them); until then packets from sources seen before may
    /// still get the verdict from before the write.
    pub fn bump_generation(&mut self) -> Result<(), DatapathError> {
        let mut c = self.config()?;
        c.generation = c.generation.wrapping_add(1);
        self.set_config(c)
    }

    fn present(&self) -> Result<u32, DatapathError> {
        // An error reading a key counts as "may have entries": never skip a map by mistake.
        let mut present = 0;
        for (flag, has) in [
            (HAS_ALLOW_HASH, self.allow_hash.keys().next().is_some()),
            (HAS_ALLOW_LPM, self.allow_lpm.keys().next().is_some()),
            (HAS_BLOCK_HASH, self.block_hash.keys().next().is_some()),
            (HAS_BLOCK_LPM, self.block_lpm.keys().next().is_some()),
            (
                HAS_THROTTLE_HASH,
                self.throttle_hash.keys().next().is_some(),
            ),
            (HAS_THROTTLE_LPM, self.throttle_lpm.keys().next().is_some()),
            (HAS_FLOW_KILL, self.flow_kill.keys().next().is_some()),
        ] {
            if has {
                present |= flag;
            }
        }
        Ok(present)
    }

    /// Recomputes every presence flag from the maps' contents (one `get_next_key` per map):
    /// flags of empty maps are cleared, of non-empty ones set, and bumps the list generation
    /// (callers run it after deleting entries). Returns the flags written.
    pub fn refresh_presence(&mut self) -> Result<u32, DatapathError> {
        let present = self.present()?;
        let mut c = self.config()?;
        c.flags = (c.flags & !HAS_ALL) | present | CONFIG_FLAG_PRESENCE;
        c.generation = c.generation.wrapping_add(1);
        self.set_config(c)?;
        Ok(present)
    }

    /// Writes the global configuration as given. A value without [`CONFIG_FLAG_PRESENCE`] makes
    /// the kernel look every list up until the presence flags are maintained again.
    pub fn set_config(&mut self, config: Config) -> Result<(), DatapathError> {
        self.config
            .set(0, config, 0)
            .map_err(|source| DatapathError::Map {
                name: names::CONFIG.to_owned(),
                source,
            })
    }
}
