//! Kernel memory of the XDP maps, as the kernel accounts it: `bytes_memlock` from `bpftool map
//! show`, which on Linux 6.x is the map's own `map_mem_usage`. Preallocated maps (the LRU hashes,
//! arrays) are charged in full at their configured size; hashes created with
//! `BPF_F_NO_PREALLOC` are charged their bucket array plus each element present; LPM tries each
//! element present. Two snapshots, empty and filled, give the fixed part and the cost per entry.

use anyhow::Context as _;
use aya::maps::IterableMap as _;
use sentinel::datapath::{Datapath, Maps};
use sentinel_common::{AddrKey, RuleValue, ThrottleRule, names};

use super::run;

const BPF_F_NO_PREALLOC: u64 = 1;

/// One map's figures at one moment.
#[derive(Clone, Debug)]
pub struct MapMem {
    /// Map name.
    pub name: &'static str,
    /// Kernel map type.
    pub kind: String,
    /// Key bytes.
    pub key: u64,
    /// Value bytes (per CPU for per-CPU maps).
    pub value: u64,
    /// Configured capacity.
    pub max_entries: u64,
    /// Allocated at creation (not `BPF_F_NO_PREALLOC`, not an LPM trie).
    pub prealloc: bool,
    /// Entries present, where counted.
    pub entries: Option<u64>,
    /// Kernel-accounted bytes.
    pub memlock: u64,
}

fn count(dp: &Datapath, name: &str) -> anyhow::Result<Option<u64>> {
    let m = &dp.maps;
    Ok(Some(match name {
        names::BLOCK_HASH => {
            Maps::count_hash::<AddrKey>(m.block_hash.map(), size_of::<RuleValue>())? as u64
        }
        names::ALLOW_HASH => {
            Maps::count_hash::<AddrKey>(m.allow_hash.map(), size_of::<RuleValue>())? as u64
        }
        names::THROTTLE_HASH => {
            Maps::count_hash::<AddrKey>(m.throttle_hash.map(), size_of::<ThrottleRule>())? as u64
        }
        names::BLOCK_LPM => m.block_lpm.keys().count() as u64,
        names::ALLOW_LPM => m.allow_lpm.keys().count() as u64,
        names::THROTTLE_LPM => m.throttle_lpm.keys().count() as u64,
        _ => return Ok(None),
    }))
}

/// Reads every map of `dp` from its pins.
pub fn snapshot(dp: &Datapath) -> anyhow::Result<Vec<MapMem>> {
    let mut out = Vec::new();
    for name in names::ALL {
        let pin = dp.pin_dir().join(name);
        let j = run(std::process::Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(&pin))?;
        let v: serde_json::Value = serde_json::from_str(&j)?;
        let num = |k: &str| v[k].as_u64().with_context(|| format!("{name}: no {k}"));
        let kind = v["type"].as_str().unwrap_or("?").to_owned();
        let flags = v["flags"].as_u64().unwrap_or(0);
        out.push(MapMem {
            name,
            prealloc: flags & BPF_F_NO_PREALLOC == 0 && kind != "lpm_trie",
            kind,
            key: num("bytes_key")?,
            value: num("bytes_value")?,
            max_entries: num("max_entries")?,
            entries: count(dp, name)?,
            memlock: num("bytes_memlock")?,
        });
    }
    Ok(out)
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1024.0 * 1024.0))
}

/// The table for BENCHMARKS.md from an empty and a filled snapshot of the same maps.
pub fn table(empty: &[MapMem], filled: &[MapMem], cpus: usize) -> String {
    let mut t = format!(
        "### Kernel memory per map ({cpus} possible CPUs, default sizes)\n\n\
         `bytes_memlock` as the kernel accounts it (`bpftool map show`), read with the maps empty \
         and again filled (the per-packet cost run's lists). Preallocated maps cost their full \
         configured size from the start; per-entry maps (`BPF_F_NO_PREALLOC` hashes, LPM tries) \
         cost a fixed bucket array plus what each entry adds, measured as (filled - empty) / \
         entries. \"At capacity\" extrapolates to the configured maximum. Sizes are configurable \
         (`MapSizes`, `[maps]` in the config); per-CPU maps hold one value per possible CPU.\n\n\
         | map | type | key B | value B | max entries | allocation | fixed | bytes per entry | at capacity |\n\
         |---|---|---|---|---|---|---|---|---|\n"
    );
    let (mut now_total, mut cap_total) = (0.0, 0.0);
    let mut per_source = f64::NAN;
    let mut per_bucket = f64::NAN;
    for (e, f) in empty.iter().zip(filled) {
        let (fixed, per, cap, how) = if e.prealloc {
            let per = e.memlock as f64 / e.max_entries.max(1) as f64;
            (e.memlock as f64, per, e.memlock as f64, "preallocated")
        } else {
            let added = f
                .entries
                .unwrap_or(0)
                .saturating_sub(e.entries.unwrap_or(0));
            let per = if added >= 100 {
                (f.memlock as f64 - e.memlock as f64) / added as f64
            } else {
                f64::NAN
            };
            let cap = if per.is_nan() {
                f64::NAN
            } else {
                e.memlock as f64 + per * f.max_entries as f64
            };
            (e.memlock as f64, per, cap, "per entry")
        };
        if e.name == names::SOURCES {
            per_source = per;
        }
        if e.name == names::BUCKETS {
            per_bucket = per;
        }
        now_total += f.memlock as f64;
        if !cap.is_nan() {
            cap_total += cap;
        }
        let per_s = if per.is_nan() {
            "not measured (empty)".to_owned()
        } else {
            format!("{per:.0}")
        };
        let entries = match f.entries {
            Some(n) if !e.prealloc => format!("{} ({n} present)", f.max_entries),
            _ => f.max_entries.to_string(),
        };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {entries} | {how} | {} | {per_s} | {} |\n",
            e.name,
            e.kind,
            e.key,
            e.value,
            mib(fixed),
            if cap.is_nan() {
                "-".to_owned()
            } else {
                mib(cap)
            }
        ));
    }
    t.push_str(&format!(
        "| total | | | | | | | | {} (filled now: {}) |\n",
        mib(cap_total),
        mib(now_total)
    ));
    t.push_str(&format!(
        "\n**Per tracked source: {per_source:.0} bytes** (`{}`: LRU per-CPU hash, preallocated, \
         64 B per CPU: 32 of stats and 32 of cached verdict); a throttled source adds a token bucket ({per_bucket:.0} B in \
         `{}`).\n",
        names::SOURCES,
        names::BUCKETS,
    ));
    t
}
