//! Loading, pinning, attaching, re-adopting and unloading the XDP sentinel.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/sentinel`):
//! - one pin per map, named as in `sentinel_common::names`;
//! - `links/xdp-<mode>-<iface>`: the pinned bpf_link of each attachment, which keeps the program
//!   attached when no daemon runs (after SIGKILL or SIGTERM alike).
//!
//! A starting daemon loads the object with every map bound to its pin (reused when it exists), then
//! for each interface either atomically replaces the program inside the existing pinned link
//! (`bpf_link_update`: no packet sees a moment without a program) or attaches afresh.

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, RingBuf},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use sentinel_common::{CaptureConfig, capture, defaults, names, programs};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{DatapathError, Maps};

/// The kernel object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sentinel"));

/// Returns the embedded eBPF object, or an error when the binary was built without it.
pub fn object() -> Result<&'static [u8], DatapathError> {
    if OBJECT.is_empty() {
        Err(DatapathError::NoObject)
    } else {
        Ok(OBJECT)
    }
}

/// Sizes of the kernel maps (entries). Bytes per entry are documented in the README.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MapSizes {
    /// Tracked sources (LRU).
    pub sources: u32,
    /// Exact blocked addresses.
    pub block_exact: u32,
    /// Exact allowlisted addresses.
    pub allow_exact: u32,
    /// Prefixes per list (block, allow).
    pub prefixes: u32,
    /// Throttle rules (exact and prefix each).
    pub throttles: u32,
    /// Token buckets (LRU).
    pub buckets: u32,
    /// Killed flows.
    pub flows: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            sources: defaults::SOURCES_MAX,
            block_exact: defaults::EXACT_MAX,
            allow_exact: defaults::ALLOW_EXACT_MAX,
            prefixes: defaults::PREFIX_MAX,
            throttles: defaults::THROTTLE_MAX,
            buckets: defaults::BUCKETS_MAX,
            flows: defaults::FLOW_KILL_MAX,
        }
    }
}

/// How to load the datapath.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Directory of the pins.
    pub pin_dir: PathBuf,
    /// Map sizes (used when the maps are created; existing pins keep their size).
    pub sizes: MapSizes,
    /// Capture ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: u32,
}

impl LoadOptions {
    /// Options with default sizes.
    pub fn new(pin_dir: impl Into<PathBuf>) -> Self {
        Self {
            pin_dir: pin_dir.into(),
            sizes: MapSizes::default(),
            ring_bytes: sentinel_common::DEFAULT_RING_BYTES,
        }
    }
}

/// The TC capture half, handed to the capture stage: its ring buffer, its configuration maps,
/// and the object that keeps its programs attached (TCX links detach when it is dropped).
pub struct CaptureHandles {
    /// Records of captured segments.
    pub ring: RingBuf<MapData>,
    /// Ports to capture.
    pub ports: Array<MapData, u8>,
    /// Snap length.
    pub config: Array<MapData, CaptureConfig>,
    /// Capture counters (per CPU).
    pub counters: aya::maps::PerCpuArray<MapData, u64>,
}

/// One interface the sentinel is attached to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    /// Interface name.
    pub iface: String,
    /// `driver` (native XDP) or `skb` (generic XDP).
    pub mode: String,
    /// The program attached.
    pub program: String,
    /// Kernel id of the program.
    pub program_id: u32,
    /// Kernel id of the bpf_link.
    pub link_id: u32,
    /// The link pin.
    pub pin: PathBuf,
}

/// The loaded XDP object with its maps.
pub struct Datapath {
    ebpf: Ebpf,
    /// The maps, bound to their pins.
    pub maps: Maps,
    pin_dir: PathBuf,
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path; `st` is written by the kernel.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Makes sure `pin_dir` lives on a bpffs, mounting one at `/sys/fs/bpf` when none is there, and
/// creates the directory and its `links/` subdirectory.
pub fn ensure_pin_dir(pin_dir: &Path) -> Result<(), DatapathError> {
    // The nearest existing ancestor decides which filesystem the pins would land on.
    let mut probe = pin_dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if !is_bpffs(&probe)? {
        let root = Path::new("/sys/fs/bpf");
        if !pin_dir.starts_with(root) {
            return Err(DatapathError::Io(io::Error::other(format!(
                "{} is not on a bpf filesystem",
                pin_dir.display()
            ))));
        }
        info!("mounting bpffs at {}", root.display());
        let src = CString::new("bpf").expect("no NUL");
        let dst = CString::new("/sys/fs/bpf").expect("no NUL");
        // SAFETY: valid NUL-terminated strings; a plain mount without data.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(DatapathError::Io(io::Error::other(format!(
                "mounting bpffs at /sys/fs/bpf: {}",
                io::Error::last_os_error()
            ))));
        }
    }
    fs::create_dir_all(pin_dir.join("links"))?;
    Ok(())
}

fn link_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

fn link_pin_name(mode: &str, iface: &str) -> String {
    format!("xdp-{mode}-{iface}")
}

/// Parses a link pin name back into `(mode, iface)`.
fn parse_link_pin_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("xdp-")?;
    let (mode, iface) = rest.split_once('-')?;
    Some((mode, iface))
}

fn program_error(
    what: impl Into<String>,
) -> impl FnOnce(aya::programs::ProgramError) -> DatapathError {
    let what = what.into();
    move |e| DatapathError::Program {
        what,
        source: Box::new(e),
    }
}

fn link_error<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> DatapathError {
    let what = what.into();
    move |e| DatapathError::Link {
        what,
        source: Box::new(e),
    }
}

/// Key and value sizes of every pinned map of this version.
fn map_layouts() -> [(&'static str, usize, usize); 12] {
    use std::mem::size_of;

    use sentinel_common::{
        AddrKey, BucketKey, BucketState, Config, Counter, FlowKey, ReasonText, RuleValue,
        SourceStats, ThrottleRule,
    };
    // LPM trie keys carry a 4-byte prefix length before the address.
    let lpm = 4 + size_of::<AddrKey>();
    [
        (
            names::SOURCES,
            size_of::<AddrKey>(),
            size_of::<SourceStats>(),
        ),
        (
            names::ALLOW_HASH,
            size_of::<AddrKey>(),
            size_of::<RuleValue>(),
        ),
        (names::ALLOW_LPM, lpm, size_of::<RuleValue>()),
        (
            names::BLOCK_HASH,
            size_of::<AddrKey>(),
            size_of::<RuleValue>(),
        ),
        (names::BLOCK_LPM, lpm, size_of::<RuleValue>()),
        (
            names::THROTTLE_HASH,
            size_of::<AddrKey>(),
            size_of::<ThrottleRule>(),
        ),
        (names::THROTTLE_LPM, lpm, size_of::<ThrottleRule>()),
        (
            names::BUCKETS,
            size_of::<BucketKey>(),
            size_of::<BucketState>(),
        ),
        (
            names::FLOW_KILL,
            size_of::<FlowKey>(),
            size_of::<RuleValue>(),
        ),
        (names::COUNTERS, size_of::<u32>(), size_of::<Counter>()),
        (names::CONFIG, size_of::<u32>(), size_of::<Config>()),
        (names::REASONS, size_of::<u32>(), size_of::<ReasonText>()),
    ]
}

/// Checks the maps a previous daemon pinned under `pin_dir` against this version's layouts
/// before the loader reuses them (it would reuse any map of the right name, and the verifier
/// would then reject the program with an obscure error).
///
/// `SN_SOURCES` holds only statistics and the kernel's verdict cache, so an old layout (32-byte
/// values before the cache) is migrated by replacing it: the pin is removed and the load creates
/// a new map; the program still attached keeps the old map until the new program replaces it,
/// so enforcement never stops. Every other map holds list entries or counters that must not be
/// lost: a mismatch there is an error that names the pin.
pub fn check_pins(pin_dir: &Path) -> Result<(), DatapathError> {
    for (name, key, value) in map_layouts() {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info =
            aya::maps::MapInfo::from_pin(&path).map_err(|source| DatapathError::OpenPin {
                path: path.clone(),
                source,
            })?;
        let (k, v) = (info.key_size() as usize, info.value_size() as usize);
        if (k, v) == (key, value) {
            continue;
        }
        if name == names::SOURCES {
            warn!(
                pin = %path.display(),
                old_value = v,
                new_value = value,
                "per-source map left by an older version: replacing it (per-source counters restart)"
            );
            fs::remove_file(&path)?;
            continue;
        }
        return Err(DatapathError::IncompatiblePin {
            path,
            found: format!("{k}-byte keys and {v}-byte values"),
            expected: format!("{key} and {value}"),
        });
    }
    Ok(())
}

impl Datapath {
    /// Loads the object with every map bound to its pin under `opts.pin_dir` (created, or reused
    /// with its entries when a previous daemon left it, see [`check_pins`]), and loads the XDP
    /// program.
    pub fn load(opts: &LoadOptions) -> Result<Self, DatapathError> {
        ensure_pin_dir(&opts.pin_dir)?;
        check_pins(&opts.pin_dir)?;
        let pins: Vec<(&str, PathBuf)> = names::ALL
            .iter()
            .map(|n| (*n, opts.pin_dir.join(n)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let s = &opts.sizes;
        loader
            .map_max_entries(capture::names::RING, opts.ring_bytes)
            .map_max_entries(names::SOURCES, s.sources)
            .map_max_entries(names::ALLOW_HASH, s.allow_exact)
            .map_max_entries(names::BLOCK_HASH, s.block_exact)
            .map_max_entries(names::ALLOW_LPM, s.prefixes)
            .map_max_entries(names::BLOCK_LPM, s.prefixes)
            .map_max_entries(names::THROTTLE_HASH, s.throttles)
            .map_max_entries(names::THROTTLE_LPM, s.throttles)
            .map_max_entries(names::BUCKETS, s.buckets)
            .map_max_entries(names::FLOW_KILL, s.flows);
        let mut ebpf = loader
            .load(object()?)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        let maps = Maps::take_from(&mut ebpf)?;
        let prog = xdp_program(&mut ebpf, programs::XDP_SENTINEL)?;
        prog.load()
            .map_err(program_error(format!("loading {}", programs::XDP_SENTINEL)))?;
        Ok(Self {
            ebpf,
            maps,
            pin_dir: opts.pin_dir.clone(),
        })
    }

    /// Splits into the maps and the object. The XDP program stays attached through its pinned
    /// links whatever happens to the object; TC programs stay attached while the object lives.
    pub fn into_parts(self) -> (Maps, Ebpf) {
        (self.maps, self.ebpf)
    }

    /// Takes the capture maps out of the object (once) for the capture stage.
    pub fn take_capture(&mut self) -> Result<CaptureHandles, DatapathError> {
        fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
            ebpf: &mut Ebpf,
            name: &str,
        ) -> Result<T, DatapathError> {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| DatapathError::MissingMap(name.to_owned()))?;
            map.try_into().map_err(|source| DatapathError::Map {
                name: name.to_owned(),
                source,
            })
        }
        Ok(CaptureHandles {
            ring: take(&mut self.ebpf, capture::names::RING)?,
            ports: take(&mut self.ebpf, capture::names::PORTS)?,
            config: take(&mut self.ebpf, capture::names::CONFIG)?,
            counters: take(&mut self.ebpf, capture::names::COUNTERS)?,
        })
    }

    /// Attaches the TC capture programs to ingress and egress of `iface` (TCX links, which
    /// detach when this object is dropped: capture only runs while a daemon consumes it).
    pub fn attach_capture(&mut self, iface: &str) -> Result<(), DatapathError> {
        // TCX links (Linux 6.6+) need no qdisc: leave the interface's alone. The netlink path
        // of older kernels needs a clsact qdisc; one Sentinel adds is recorded, to be removed.
        if !super::qdisc::tcx_supported()
            && let Err(e) = super::qdisc::claim_clsact(&self.pin_dir, iface)
        {
            warn!(iface, error = %e, "adding the clsact qdisc for the TC capture");
        }
        for (name, kind) in [
            (capture::names::PROG_INGRESS, TcAttachType::Ingress),
            (capture::names::PROG_EGRESS, TcAttachType::Egress),
        ] {
            let prog = self.tc(name)?;
            prog.attach(iface, kind)
                .map_err(program_error(format!("attaching {name} to {iface}")))?;
        }
        info!(iface, "attached TC capture (ingress, egress)");
        Ok(())
    }

    /// One of the object's TC programs, loaded on first use.
    pub fn tc(&mut self, name: &str) -> Result<&mut SchedClassifier, DatapathError> {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| DatapathError::MissingMap(format!("program {name}")))?;
        let prog: &mut SchedClassifier = prog
            .try_into()
            .map_err(program_error(format!("{name} is not a TC program")))?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(program_error(format!("loading {name}")))?;
        }
        Ok(prog)
    }

    /// One of the object's XDP programs (`sentinel_common::programs`), loaded on first use; for
    /// tests (BPF_PROG_TEST_RUN) and benchmarks (the bare drop and pass floors).
    pub fn xdp(&mut self, name: &str) -> Result<&mut Xdp, DatapathError> {
        let prog = xdp_program(&mut self.ebpf, name)?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(program_error(format!("loading {name}")))?;
        }
        Ok(prog)
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches the sentinel to `iface`: re-adopts a pinned link when one exists (replacing its
    /// program atomically), else attaches in native mode, falling back to generic mode with a
    /// warning, and pins the new link.
    pub fn attach(&mut self, iface: &str) -> Result<Attachment, DatapathError> {
        let links = link_dir(&self.pin_dir);
        if let Some((mode, pin)) = find_link_pin(&links, iface)? {
            match self.adopt(&pin) {
                Ok(()) => {
                    info!(iface, mode, "re-adopted pinned XDP link");
                    return attachment(iface, &mode, &pin);
                }
                Err(e) => {
                    // The interface went away and came back, or the link is defunct: start over.
                    warn!(iface, error = %e, "pinned XDP link cannot be re-adopted; attaching afresh");
                    let _ = fs::remove_file(&pin);
                }
            }
        }
        let prog = xdp_program(&mut self.ebpf, programs::XDP_SENTINEL)?;
        let (link_id, mode) = match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, "driver"),
            Err(aya::programs::ProgramError::UnknownInterface { .. }) => {
                return Err(DatapathError::NoSuchInterface(iface.to_owned()));
            }
            Err(e) => {
                warn!(iface, error = %e, "native XDP attach failed; falling back to generic (skb) mode, which is slower");
                let id = prog
                    .attach(iface, XdpMode::Skb)
                    .map_err(program_error(format!("attaching XDP to {iface}")))?;
                (id, "skb")
            }
        };
        let link = prog
            .take_link(link_id)
            .map_err(program_error("taking the XDP link"))?;
        let fd_link: FdLink = link.try_into().map_err(link_error(
            "XDP link is not a bpf_link (kernel too old to pin)",
        ))?;
        let pin = links.join(link_pin_name(mode, iface));
        fd_link
            .pin(&pin)
            .map_err(link_error(format!("pinning {}", pin.display())))?;
        info!(iface, mode, "attached XDP sentinel");
        attachment(iface, mode, &pin)
    }

    fn adopt(&mut self, pin: &Path) -> Result<(), DatapathError> {
        let pinned =
            PinnedLink::from_pin(pin).map_err(link_error(format!("opening {}", pin.display())))?;
        let fd_link: FdLink = pinned.into();
        let xdp_link = XdpLink::try_from(fd_link).map_err(link_error("pinned link is not XDP"))?;
        let prog = xdp_program(&mut self.ebpf, programs::XDP_SENTINEL)?;
        let id = prog
            .attach_to_link(xdp_link)
            .map_err(program_error("replacing the program of the pinned link"))?;
        // Drop our handle: the pin keeps the link (and now the new program) in place.
        drop(prog.take_link(id));
        Ok(())
    }
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, DatapathError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| DatapathError::MissingMap(format!("program {name}")))?;
    prog.try_into()
        .map_err(program_error(format!("{name} is not an XDP program")))
}

fn find_link_pin(links: &Path, iface: &str) -> Result<Option<(String, PathBuf)>, DatapathError> {
    if !links.exists() {
        return Ok(None);
    }
    for entry in fs::read_dir(links)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some((mode, ifc)) = parse_link_pin_name(&name)
            && ifc == iface
        {
            return Ok(Some((mode.to_owned(), entry.path())));
        }
    }
    Ok(None)
}

fn attachment(iface: &str, mode: &str, pin: &Path) -> Result<Attachment, DatapathError> {
    let link =
        PinnedLink::from_pin(pin).map_err(link_error(format!("opening {}", pin.display())))?;
    let fd_link: FdLink = link.into();
    let info = fd_link.info().map_err(link_error(format!(
        "reading link info of {}",
        pin.display()
    )))?;
    Ok(Attachment {
        iface: iface.to_owned(),
        mode: mode.to_owned(),
        program: programs::XDP_SENTINEL.to_owned(),
        program_id: info.program_id(),
        link_id: info.id(),
        pin: pin.to_path_buf(),
    })
}

/// Lists the attachments pinned under `pin_dir`.
pub fn attachments(pin_dir: &Path) -> Result<Vec<Attachment>, DatapathError> {
    let links = link_dir(pin_dir);
    let mut out = Vec::new();
    if !links.exists() {
        return Ok(out);
    }
    for entry in fs::read_dir(&links)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some((mode, iface)) = parse_link_pin_name(&name) {
            out.push(attachment(iface, mode, &entry.path())?);
        }
    }
    out.sort_by(|a, b| a.iface.cmp(&b.iface));
    Ok(out)
}

/// What `unload` removed.
#[derive(Debug, Default, Serialize)]
pub struct UnloadReport {
    /// Interfaces detached.
    pub detached: Vec<String>,
    /// Map pins removed.
    pub maps_removed: usize,
    /// Interfaces whose clsact qdisc, added by Sentinel for the TC capture, was removed.
    pub qdiscs_removed: Vec<String>,
}

/// Detaches every pinned link and removes every pin under `pin_dir`, and the clsact qdiscs
/// Sentinel added that nothing else uses (see [`super::qdisc`]). Works without a daemon.
pub fn unload(pin_dir: &Path) -> Result<UnloadReport, DatapathError> {
    let mut report = UnloadReport::default();
    if !pin_dir.exists() {
        return Ok(report);
    }
    let links = link_dir(pin_dir);
    if links.exists() {
        for entry in fs::read_dir(&links)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let pinned = PinnedLink::from_pin(entry.path())
                .map_err(link_error(format!("opening {}", entry.path().display())))?;
            // Unpinning drops the last reference: the kernel destroys the link, detaching XDP.
            let link = pinned.unpin()?;
            drop(link);
            if let Some((_, iface)) = parse_link_pin_name(&name) {
                report.detached.push(iface.to_owned());
            }
        }
        fs::remove_dir(&links)?;
    }
    report.qdiscs_removed = super::qdisc::release_clsacts(pin_dir)?;
    for name in names::ALL {
        match fs::remove_file(pin_dir.join(name)) {
            Ok(()) => report.maps_removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    match fs::remove_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(dir = %pin_dir.display(), error = %e, "pin directory not removed (not empty?)");
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_round_trip() {
        let n = link_pin_name("driver", "veth-a_1");
        assert_eq!(parse_link_pin_name(&n), Some(("driver", "veth-a_1")));
        assert_eq!(parse_link_pin_name("SN_SOURCES"), None);
    }
}
