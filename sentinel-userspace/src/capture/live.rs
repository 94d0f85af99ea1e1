//! Live capture in the daemon: configures the TC programs (ports, snap length) and reports their
//! counters with the consumer's.

use std::{collections::BTreeMap, sync::atomic::Ordering};

use aya::maps::{Array, MapData, PerCpuArray};
use sentinel_common::{CaptureConfig, CaptureCounter, capture::names};

use super::ringbuf::RingStats;
use crate::{config::CaptureSettings, datapath::DatapathError};

/// The capture maps the daemon keeps after handing the ring buffer to the drain task.
pub struct CaptureControl {
    /// Ports to capture.
    pub ports: Array<MapData, u8>,
    /// Snap length.
    pub config: Array<MapData, CaptureConfig>,
    /// Kernel-side counters.
    pub counters: PerCpuArray<MapData, u64>,
    /// What is configured.
    pub settings: CaptureSettings,
}

fn map_err(name: &str) -> impl FnOnce(aya::maps::MapError) -> DatapathError + '_ {
    move |source| DatapathError::Map {
        name: name.to_owned(),
        source,
    }
}

impl CaptureControl {
    /// Writes the ports and the snap length into the kernel.
    pub fn apply(&mut self) -> Result<(), DatapathError> {
        for port in &self.settings.http_ports {
            self.ports
                .set(*port as u32, 1u8, 0)
                .map_err(map_err(names::PORTS))?;
        }
        self.config
            .set(
                0,
                CaptureConfig {
                    snap_len: self.settings.snap_len,
                    wakeup_shift: sentinel_common::wakeup_shift(
                        self.settings.ring_bytes,
                        aya::util::nr_cpus().map_or(1, |n| n as u32),
                    ),
                },
                0,
            )
            .map_err(map_err(names::CONFIG))
    }

    /// Kernel counters summed over CPUs, by label.
    pub fn kernel_counters(&self) -> Result<BTreeMap<String, u64>, DatapathError> {
        let mut out = BTreeMap::new();
        for c in CaptureCounter::ALL {
            let v = self
                .counters
                .get(&(c as u32), 0)
                .map_err(map_err(names::COUNTERS))?;
            out.insert(c.label().to_owned(), v.iter().sum());
        }
        Ok(out)
    }
}

/// The consumer's counters by label.
pub fn consumer_counters(stats: &RingStats) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::from([
        ("records".to_owned(), stats.records.load(Ordering::Relaxed)),
        (
            "decode_errors".to_owned(),
            stats.decode_errors.load(Ordering::Relaxed),
        ),
        ("wakeups".to_owned(), stats.wakeups.load(Ordering::Relaxed)),
    ]);
    let defrag = stats.defrag.lock().expect("defrag stats lock").by_name();
    out.extend(defrag.into_iter().map(|(k, v)| (defrag_key(&k), v)));
    out
}

/// The label of a [`super::defrag::DefragStats`] counter among the consumer's: its field name after `defrag_`.
pub fn defrag_key(field: &str) -> String {
    format!("defrag_{field}")
}
