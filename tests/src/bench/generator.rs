//! The traffic generator: a private copy of Sentinel's eBPF object (unpinned, its big maps shrunk
//! to nothing) whose `sentinel_bench_gen` program is run with `BPF_PROG_RUN` live frames in the
//! client namespace. The same copy carries the reference blocklist program (`sentinel_bench_ref`)
//! with its own hash, sized like the sentinel's blocklist. Each frame gets a random source from the sources table and leaves the client
//! veth by `XDP_TX`, towards the server veth, whose XDP program is the arm under test.
//!
//! The generator and the receiver share one CPU: each batch of frames is transmitted, then the
//! receiver's NAPI poll runs when the batch ends (`local_bh_enable`), still inside the syscall.
//! The kernel's per-frame time (`duration`) therefore covers generating *and* receiving, and
//! excludes time the thread spent preempted (the test-run timer stops around `cond_resched`).

use std::{net::IpAddr, time::Instant};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use sentinel::datapath::sys;
use sentinel_common::{
    AddrKey, RuleValue,
    bench::{GenConfig, names},
    capture, names as xdp_names,
};

use super::addrs;

/// Frames per `BPF_PROG_RUN` batch (the NAPI budget).
pub const BATCH: u32 = 64;

/// A loaded generator.
pub struct Generator {
    ebpf: Ebpf,
    config: Array<MapData, GenConfig>,
    sources: MapData,
    reference: MapData,
    capacity: u32,
}

/// One generator run.
#[derive(Clone, Copy, Debug)]
pub struct GenRun {
    /// Frames generated.
    pub frames: u32,
    /// Kernel time per frame, generation plus reception (ns).
    pub kernel_ns: f64,
    /// Wall time of the whole run (s), preemption included.
    pub wall_s: f64,
}

impl Generator {
    /// Loads the generator with room for `capacity` sources, and the reference program with a
    /// blocklist of `ref_capacity` slots (give it the sentinel's blocklist size).
    pub fn load(capacity: u32, ref_capacity: u32) -> anyhow::Result<Self> {
        let object = sentinel::datapath::loader::object()?;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::SOURCES, capacity.max(1))
            .map_max_entries(names::REF_BLOCKLIST, ref_capacity.max(1));
        // This copy only needs the generator: shrink the sentinel's maps (prealloc'd hashes of
        // a million entries otherwise) and the capture ring.
        for n in [
            xdp_names::ALLOW_HASH,
            xdp_names::ALLOW_LPM,
            xdp_names::BLOCK_HASH,
            xdp_names::BLOCK_LPM,
            xdp_names::THROTTLE_HASH,
            xdp_names::THROTTLE_LPM,
            xdp_names::FLOW_KILL,
            xdp_names::REASONS,
        ] {
            loader.map_max_entries(n, 1);
        }
        loader
            .map_max_entries(xdp_names::SOURCES, 1024)
            .map_max_entries(xdp_names::BUCKETS, 1024)
            .map_max_entries(capture::names::RING, 4096);
        let mut ebpf = loader
            .load(object)
            .context("loading the generator object")?;
        let config: Array<MapData, GenConfig> = ebpf
            .take_map(names::CONFIG)
            .context("generator config map missing")?
            .try_into()?;
        let sources = match ebpf
            .take_map(names::SOURCES)
            .context("generator sources map missing")?
        {
            aya::maps::Map::Array(m) => m,
            other => bail!("{} is not an array: {other:?}", names::SOURCES),
        };
        let reference = match ebpf
            .take_map(names::REF_BLOCKLIST)
            .context("reference blocklist map missing")?
        {
            aya::maps::Map::HashMap(m) => m,
            other => bail!("{} is not a hash: {other:?}", names::REF_BLOCKLIST),
        };
        for name in [names::PROG_GENERATOR, names::PROG_REFERENCE] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()?;
            prog.load().with_context(|| format!("loading {name}"))?;
        }
        Ok(Self {
            ebpf,
            config,
            sources,
            reference,
            capacity: capacity.max(1),
        })
    }

    /// Fills the reference program's blocklist.
    pub fn set_reference_list(&mut self, list: &[IpAddr]) -> anyhow::Result<()> {
        let keys: Vec<AddrKey> = list.iter().map(|a| addrs::key(*a)).collect();
        let values = vec![RuleValue::default(); keys.len()];
        sys::update_batch(self.reference.fd(), &keys, &values, 65_536)
            .context("filling the reference blocklist")?;
        Ok(())
    }

    /// The reference blocklist program (loaded), to attach to the receiving interface.
    pub fn reference(&mut self) -> anyhow::Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(names::PROG_REFERENCE)
            .context("reference program missing")?
            .try_into()?)
    }

    /// Sets the sources frames are given (drawn uniformly at random per frame).
    pub fn set_sources(&mut self, list: &[IpAddr]) -> anyhow::Result<()> {
        anyhow::ensure!(
            !list.is_empty() && list.len() <= self.capacity as usize,
            "{} sources for a table of {}",
            list.len(),
            self.capacity
        );
        let keys: Vec<u32> = (0..list.len() as u32).collect();
        let values: Vec<AddrKey> = list.iter().map(|a| addrs::key(*a)).collect();
        sys::update_batch(self.sources.fd(), &keys, &values, 65_536)
            .context("filling the generator's sources")?;
        self.config.set(
            0,
            GenConfig {
                count: list.len() as u32,
                _pad: 0,
            },
            0,
        )?;
        Ok(())
    }

    /// Sends `frames` copies of `frame` (sources rewritten) out of the interface `ifindex`.
    /// Must be called on a thread inside the namespace of that interface.
    pub fn run(&self, frame: &[u8], ifindex: u32, frames: u32) -> anyhow::Result<GenRun> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. Live frames want data 0 and data_end the frame length.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let prog: &Xdp = self
            .ebpf
            .program(names::PROG_GENERATOR)
            .context("generator program missing")?
            .try_into()?;
        let start = Instant::now();
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat: frames,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..TestRunOptions::new()
            })
            .context("BPF_PROG_RUN (live frames)")?;
        let wall_s = start.elapsed().as_secs_f64();
        Ok(GenRun {
            frames,
            kernel_ns: r.duration.as_nanos() as f64,
            wall_s,
        })
    }
}
