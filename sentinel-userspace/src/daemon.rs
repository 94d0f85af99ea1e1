//! `sentinel run`: load and attach the datapath, serve the control socket, sweep expired entries,
//! and leave enforcement in place on exit (the pins keep programs and maps alive).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    analysis::{self, AnalysisQueue, AnalysisShared},
    analyze::Analyzer,
    capture::{
        live::CaptureControl,
        ringbuf::{self, RingStats},
    },
    config::Config,
    control::server::{self, CaptureState, ControlState},
    datapath::{Datapath, LoadOptions},
    notify::alerts::AlertLog,
    pipeline::{Pipeline, PipelineSettings},
    verdict::enforce::VerdictLog,
    verdict::lists,
    verdict::{
        policy::{Decider, Policy, PolicyMode},
        responder::{DEFAULT_POLICY, Responder},
    },
};

/// Global enforcement mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Drop and throttle.
    Enforce,
    /// Count would-drops, pass everything.
    Shadow,
}

/// What `sentinel run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Interfaces to attach to.
    pub ifaces: Vec<String>,
    /// Configuration.
    pub config: Config,
    /// Global mode.
    pub mode: Mode,
    /// Control socket.
    pub socket: PathBuf,
    /// Pin directory.
    pub pin_dir: PathBuf,
    /// The configuration file, re-read on SIGHUP for the policy (none: the built-in policy).
    pub config_path: Option<PathBuf>,
}

/// The live end of the capture: segments from the ring buffer through reassembly and HTTP into
/// transactions, which go to the transactions log when one is configured.
struct LivePipeline {
    pipeline: Pipeline,
    log: Option<std::io::BufWriter<std::fs::File>>,
    /// The configured API key parameters (`[models] api_key_params`), whose values the log
    /// redacts.
    api_key_params: Vec<String>,
    stats: Arc<Mutex<serde_json::Value>>,
    transactions: u64,
    last_advance_ns: u64,
    analysis: Option<AnalysisQueue>,
    /// The transactions log fails to be written (said once per streak).
    log_failing: bool,
    /// Failed writes to the log (each loses one transaction's line, or a buffer of them).
    log_errors: u64,
}

impl LivePipeline {
    fn new(
        log: Option<&Path>,
        api_key_params: Vec<String>,
        stats: Arc<Mutex<serde_json::Value>>,
        analysis: Option<AnalysisQueue>,
    ) -> anyhow::Result<Self> {
        let log = match log {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening the transactions log {}", p.display()))?;
                Some(std::io::BufWriter::new(f))
            }
            None => None,
        };
        Ok(Self {
            pipeline: Pipeline::new(PipelineSettings::default()),
            log,
            api_key_params,
            stats,
            transactions: 0,
            last_advance_ns: 0,
            analysis,
            log_failing: false,
            log_errors: 0,
        })
    }

    fn flush_transactions(&mut self) {
        use std::io::Write as _;
        let mut failed = None;
        for t in self.pipeline.drain() {
            self.transactions += 1;
            if let Some(w) = self.log.as_mut()
                && let Err(e) = writeln!(w, "{}", t.to_json(&self.api_key_params))
            {
                self.log_errors += 1;
                failed = Some(e);
            }
            if let Some(q) = &self.analysis {
                q.push(t);
            }
        }
        if let Some(w) = self.log.as_mut()
            && let Err(e) = w.flush()
        {
            self.log_errors += 1;
            failed = Some(e);
        }
        // Said once per failing streak (a full disk fails every write), and when it recovers.
        match failed {
            Some(e) if !self.log_failing => {
                self.log_failing = true;
                warn!(error = %e, "writing the transactions log failed; transactions still go to the analysis");
            }
            None if self.log_failing => {
                self.log_failing = false;
                info!(
                    errors = self.log_errors,
                    "the transactions log is written again"
                );
            }
            _ => {}
        }
    }
}

impl ringbuf::SegmentSink for LivePipeline {
    fn segment(&mut self, seg: crate::capture::Segment) {
        self.pipeline.push(seg);
    }

    fn idle(&mut self, now_unix_ns: u64) {
        // Idle timeouts and stale holes move with the clock, once a second is plenty.
        if now_unix_ns.saturating_sub(self.last_advance_ns) >= 1_000_000_000 {
            self.pipeline.advance(now_unix_ns);
            self.last_advance_ns = now_unix_ns;
            let mut st = serde_json::to_value(self.pipeline.stats()).unwrap_or_default();
            st["transactions"] = serde_json::json!(self.transactions);
            st["transactions_log_errors"] = serde_json::json!(self.log_errors);
            *self.stats.lock().expect("stats lock") = st;
        }
        if self.pipeline.has_output() {
            self.flush_transactions();
        }
    }
}

/// The control socket's file, removed when the daemon stops or fails to start.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Removes, when dropped, the clsact qdiscs the TC capture added (kernels before 6.6) that
/// nothing uses any more: on every way out of [`run`] once it holds the pins, an error's
/// (a failed attachment, the analysis thread or the transactions log not starting, the control
/// socket failing) as well as a clean stop's. It is declared before the eBPF object, so it drops
/// after the object, whose capture filters go with it.
struct AddedQdiscs(PathBuf);

impl Drop for AddedQdiscs {
    fn drop(&mut self) {
        if let Err(e) = crate::datapath::qdisc::release_clsacts(&self.0) {
            warn!(error = %e, "removing the clsact qdiscs added for the TC capture");
        }
    }
}

/// How often expired list entries are reclaimed (the kernel ignores them from their expiry on).
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// The policy a configuration names (its `[verdicts] policy` file), or the built-in one; in
/// shadow mode (`sentinel run --mode shadow`) the policy is in shadow mode whatever its file
/// says: verdicts are written flagged shadow and no token is revoked.
fn load_policy(config: &Config, mode: Mode) -> anyhow::Result<(Policy, String)> {
    let (mut policy, mut source) = match &config.verdicts.policy {
        Some(p) => (
            Policy::load(p).map_err(|e| anyhow::anyhow!("invalid policy: {e}"))?,
            p.display().to_string(),
        ),
        None => (
            Policy::parse(DEFAULT_POLICY).expect("the built-in policy is valid"),
            "built-in default".to_owned(),
        ),
    };
    if mode == Mode::Shadow && policy.mode != PolicyMode::Shadow {
        policy.mode = PolicyMode::Shadow;
        source.push_str(", in shadow mode (sentinel run --mode shadow)");
    }
    Ok((policy, source))
}

/// What [`preflight`] checked and loaded, handed to [`run`] so that nothing is read twice.
pub struct Prepared {
    policy: Policy,
    policy_source: String,
    /// The enrichment and models, when capture feeds them.
    analyzer: Option<Analyzer>,
}

/// Checks what the user gave before anything is loaded: every interface exists (a misspelt one
/// would otherwise fail only after the maps were created and pinned), the policy file parses and
/// validates, and the GeoIP databases open (only read when capture feeds the models). The error
/// says which interface, or which file, line and reason.
pub fn preflight(
    ifaces: &[String],
    config: &Config,
    mode: Mode,
    geoip: &[PathBuf],
) -> Result<Prepared, String> {
    for iface in ifaces {
        let name = std::ffi::CString::new(iface.as_str())
            .map_err(|_| format!("{iface:?} is not a valid interface name"))?;
        // SAFETY: a valid NUL-terminated string; if_nametoindex only reads it.
        if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
            return Err(format!(
                "interface {iface} does not exist (in this network namespace)"
            ));
        }
    }
    check_log_path("alerts.log", &config.alerts.log)?;
    check_log_path("verdicts.log", &config.verdicts.log)?;
    let (policy, policy_source) = load_policy(config, mode).map_err(|e| format!("{e:#}"))?;
    let mut files = config.geoip.files.clone();
    files.extend(geoip.iter().cloned());
    let analyzer = if config.capture.http_ports.is_empty() || !config.models.enabled {
        // Nothing is analysed without capture (or with the models off), but a database named
        // and missing is still a mistake to say now, not when analysis is turned on.
        if !files.is_empty() {
            crate::enrich::geo::GeoDb::open(&files).map_err(|e| e.to_string())?;
        }
        None
    } else {
        Some(Analyzer::new(&config.enrich, &config.models, &files).map_err(|e| e.to_string())?)
    };
    Ok(Prepared {
        policy,
        policy_source,
        analyzer,
    })
}

/// Whether the daemon will be able to append to the log at `path` (`name` in the config), so
/// that a bad path is said at start, not when the first alert is written. Nothing is created:
/// an existing file must open for appending; otherwise the nearest existing directory above it
/// must be writable (the daemon creates the rest).
fn check_log_path(name: &str, path: &Path) -> Result<(), String> {
    let bad = |why: String| Err(format!("{name} {}: {why}", path.display()));
    if path.is_dir() {
        return bad("is a directory".into());
    }
    if path.exists() {
        return match std::fs::OpenOptions::new().append(true).open(path) {
            Ok(_) => Ok(()),
            Err(e) => bad(e.to_string()),
        };
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d.as_os_str().is_empty() {
            break;
        }
        if d.exists() {
            if !d.is_dir() {
                return bad(format!("{} is not a directory", d.display()));
            }
            let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes())
                .map_err(|_| format!("{name}: a NUL in the path"))?;
            // SAFETY: a valid NUL-terminated path; access only reads it.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
                return bad(format!(
                    "{} is not writable: {}",
                    d.display(),
                    std::io::Error::last_os_error()
                ));
            }
            return Ok(());
        }
        dir = d.parent();
    }
    Ok(())
}

/// Where the daemons' pin locks live (beside the default control socket).
const PIN_LOCKS: &str = "/run/sentinel/locks";

/// Held for the daemon's life (and by `sentinel unload` while it removes the pins): an
/// exclusive lock on a file named after its pin directory, in `dir`. The kernel drops it when
/// the process ends, however it ends; a clean end also removes the file.
#[derive(Debug)]
pub struct PinLock {
    /// Holds the lock while open.
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for PinLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The lock file of the daemon serving `pin_dir`.
pub fn pin_lock_path(pin_dir: &Path) -> PathBuf {
    lock_file(Path::new(PIN_LOCKS), pin_dir)
}

fn lock_file(dir: &Path, pin_dir: &Path) -> PathBuf {
    let pin_dir = canonical(pin_dir);
    let shown = pin_dir.to_string_lossy();
    dir.join(format!(
        "{:016x}.lock",
        crate::models::bounded::key_of(shown.trim_end_matches('/'))
    ))
}

/// `path` with its symbolic links, `.` and `..` resolved as far as it exists (a daemon locks
/// its pin directory before creating it), so that every spelling of one directory names one
/// lock: `./pins` from `/srv`, `/srv/pins/`, `/srv/x/../pins`, a link to it.
fn canonical(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    let mut at = path.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(at) {
            return rest.iter().rev().fold(real, |p, name| p.join(name));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                at = parent;
            }
            _ => return path,
        }
    }
}

/// Who holds a pin lock, as its file says (`PIN_DIR PID ROLE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Its pid.
    pub pid: u32,
    /// `daemon`, or `unload` while one removes the pins.
    pub role: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sentinel {} (pid {})", self.role, self.pid)
    }
}

/// Takes the pin lock of `pin_dir` in `dir` as `role` (its file created), and writes who holds
/// it; or says who does.
fn take(dir: &Path, pin_dir: &Path, role: &str) -> std::io::Result<PinLockState> {
    use std::{io::Write as _, os::fd::AsRawFd as _};
    std::fs::create_dir_all(dir)?;
    let path = lock_file(dir, pin_dir);
    for _ in 0..RELOCK_TRIES {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        // SAFETY: a valid open descriptor; flock takes no pointers.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e);
            }
            let holder = holder(&path);
            return Ok(PinLockState::Held { path, holder });
        }
        if !still_at(&f, &path) {
            // Its holder removed the file between our open and our lock: that lock guards
            // nothing now, and another process may already hold the file at the path.
            continue;
        }
        f.set_len(0)?;
        writeln!(
            f,
            "{} {} {role}",
            pin_dir.to_string_lossy(),
            std::process::id()
        )?;
        return Ok(PinLockState::Free(PinLock { _file: f, path }));
    }
    Err(std::io::Error::other(format!(
        "the pin lock {} kept being removed while it was taken; try again",
        path.display()
    )))
}

/// How often a lock is taken again when the file it was taken on had been removed meanwhile.
const RELOCK_TRIES: usize = 16;

/// Whether the open file `f` is still the file at `path` (a lock's holder removes the file when
/// it ends, so a lock taken on a file opened just before is a lock on a file no one else sees).
fn still_at(f: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Takes the lock of `pin_dir` for a daemon, or says who holds it.
fn lock_pins(dir: &Path, pin_dir: &Path) -> anyhow::Result<PinLock> {
    let shown = pin_dir.to_string_lossy();
    match take(dir, pin_dir, "daemon")
        .with_context(|| format!("taking the pin lock in {}", dir.display()))?
    {
        PinLockState::Free(lock) => Ok(lock),
        PinLockState::Held { holder, .. } => anyhow::bail!(
            "{} holds the pins under {shown}; stop it first or pass --pin-path",
            holder.map_or("another sentinel daemon".to_owned(), |h| format!(
                "another {h}"
            ))
        ),
    }
}

/// Who a pin lock's file names (`PIN_DIR PID ROLE`, written by [`take`]; `PIN_DIR PID`, a
/// daemon, before roles were written); `None` when the file is gone or not yet written.
fn holder(path: &Path) -> Option<Holder> {
    let text = std::fs::read_to_string(path).ok()?;
    let (rest, last) = text.trim_end().rsplit_once(' ')?;
    if let Ok(pid) = last.parse() {
        return Some(Holder {
            pid,
            role: "daemon".to_owned(),
        });
    }
    let pid = rest.rsplit_once(' ')?.1.parse().ok()?;
    Some(Holder {
        pid,
        role: last.to_owned(),
    })
}

/// What the pin lock of a pin directory tells `sentinel unload`.
#[derive(Debug)]
pub enum PinLockState {
    /// No process held it: it is held until this drops, so no daemon starts on the pins while
    /// they are removed, and dropping it removes its file (a killed daemon's too).
    Free(PinLock),
    /// A running daemon holds it, whichever control socket it listens on (or another unload).
    Held {
        /// The lock file.
        path: PathBuf,
        /// Who, from the file (`None` while it is still being written).
        holder: Option<Holder>,
    },
}

/// Takes the pin lock of `pin_dir` for `sentinel unload`, or says which daemon holds it (a
/// non-blocking `flock`, which the kernel gives only when no open file holds it).
pub fn check_pin_lock(pin_dir: &Path) -> std::io::Result<PinLockState> {
    probe_pin_lock(Path::new(PIN_LOCKS), pin_dir)
}

fn probe_pin_lock(dir: &Path, pin_dir: &Path) -> std::io::Result<PinLockState> {
    take(dir, pin_dir, "unload")
}

fn policy_info(policy: &Policy, source: &str) -> serde_json::Value {
    serde_json::json!({
        "source": source,
        "mode": match policy.mode {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Shadow => "shadow",
        },
        "rules": policy.rules.len(),
        "loaded_at": crate::models::alert::rfc3339(crate::clock::unix_ns()),
        "last_error": null,
    })
}

/// Runs the daemon until SIGTERM or SIGINT, with what [`preflight`] checked and loaded from the
/// same options (everything that can be wrong with the input is found before the kernel is
/// touched).
pub async fn run(opts: RunOptions, prepared: Prepared) -> anyhow::Result<()> {
    let started = Instant::now();
    let Prepared {
        policy,
        policy_source,
        analyzer,
    } = prepared;
    let load = LoadOptions {
        sizes: opts.config.maps.clone(),
        ring_bytes: opts.config.capture.ring_bytes,
        ..LoadOptions::new(&opts.pin_dir)
    };
    // The control socket (and the metrics address) first: a second daemon given the same socket
    // must find the first one before it re-adopts (and reconfigures) the maps and programs that
    // one runs. The socket file is removed on every way out of here.
    let listener = server::bind(&opts.socket).await?;
    let _socket_file = SocketFile(opts.socket.clone());
    // And a second daemon given the same pins with another socket: both would restore, sweep
    // and write the same maps.
    let _pins = lock_pins(Path::new(PIN_LOCKS), &opts.pin_dir)?;
    let qdiscs = AddedQdiscs(opts.pin_dir.clone());
    let metrics_listener = match opts.config.metrics.listen {
        Some(addr) => Some((crate::metrics::bind(addr).await?, addr)),
        None => None,
    };
    let ifaces = opts.ifaces.clone();
    let mode = opts.mode;
    let capture_settings = opts.config.capture.clone();
    let verdict_log_path = opts.config.verdicts.log.clone();
    // Loading runs the verifier and may take a while: keep it off the async threads.
    let (datapath, capture, restored) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut dp = Datapath::load(&load).context("loading the XDP sentinel")?;
            dp.maps
                .set_shadow(mode == Mode::Shadow)
                .context("writing the global mode")?;
            // Re-adopted maps keep their entries: tell the kernel which lists hold some.
            dp.maps
                .refresh_presence()
                .context("reading which lists hold entries")?;
            // Verdicts from before a restart (or a reboot, or an unload) are written again with
            // what remains of their TTL.
            let restored = VerdictLog::new(&verdict_log_path)
                .restore(&mut dp.maps)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "restoring verdicts from {}: {e}",
                        verdict_log_path.display()
                    )
                })?;
            for iface in &ifaces {
                dp.attach(iface)
                    .with_context(|| format!("attaching to {iface}"))?;
            }
            let capture = if capture_settings.http_ports.is_empty() {
                None
            } else {
                let handles = dp.take_capture().context("opening the capture maps")?;
                let mut control = CaptureControl {
                    ports: handles.ports,
                    config: handles.config,
                    counters: handles.counters,
                    settings: capture_settings,
                };
                control.apply().context("configuring capture")?;
                for iface in &ifaces {
                    dp.attach_capture(iface)
                        .with_context(|| format!("attaching capture to {iface}"))?;
                }
                Some((control, handles.ring))
            };
            Ok((dp, capture, restored))
        })
        .await??;
    if restored > 0 {
        info!(restored, "verdicts restored from the verdict log");
    }
    // The XDP program stays attached through its pinned links; the object lives on for TC.
    let (maps, object) = datapath.into_parts();
    let maps = Arc::new(Mutex::new(maps));

    // The response loop: alerts in, verdicts and notifications out.
    let responder = Responder::new(
        Decider::new(policy.clone()),
        maps.clone(),
        VerdictLog::new(&opts.config.verdicts.log),
        AlertLog::new(&opts.config.alerts.log, opts.config.alerts.stdout)
            .rotated_past(opts.config.alerts.rotate_bytes),
        opts.config.alerts.webhook.clone(),
        opts.config.revoke.clone(),
    );
    let response_stats = responder.stats();
    let (alert_tx, alert_rx) = tokio::sync::mpsc::channel(1024);
    let (policy_tx, policy_rx) = tokio::sync::mpsc::channel(4);
    let responder_task = tokio::spawn(responder.run(alert_rx, policy_rx));

    let (capture_state, ring) = match capture {
        Some((control, ring)) => (
            Some(CaptureState {
                control: Mutex::new(control),
                ring: Arc::new(RingStats::default()),
                pipeline: Arc::new(Mutex::new(serde_json::Value::Null)),
            }),
            Some(ring),
        ),
        None => (None, None),
    };
    let analysis_shared = analyzer
        .as_ref()
        .map(|_| Arc::new(AnalysisShared::default()));
    let mut analysis_thread = None;
    let queue = match (analyzer, &analysis_shared) {
        (Some(analyzer), Some(shared)) => {
            let (q, h) = analysis::spawn(analyzer, alert_tx.clone(), shared.clone())
                .context("starting the analysis thread")?;
            analysis_thread = Some(h);
            Some(q)
        }
        _ => None,
    };
    drop(alert_tx);
    let drain = match (ring, &capture_state) {
        (Some(ring), Some(cs)) => {
            let stats = cs.ring.clone();
            let mut pipeline = LivePipeline::new(
                opts.config.capture.transactions_log.as_deref(),
                opts.config.models.api_key_params.clone(),
                cs.pipeline.clone(),
                queue,
            )?;
            Some(tokio::spawn(async move {
                if let Err(e) = ringbuf::drain(ring, &stats, &mut pipeline).await {
                    warn!(error = %e, "capture ring buffer consumer stopped");
                }
            }))
        }
        _ => None,
    };
    let policy_state = Arc::new(Mutex::new(policy_info(&policy, &policy_source)));
    let state = Arc::new(ControlState {
        maps,
        pin_dir: opts.pin_dir.clone(),
        mode: Mutex::new(match opts.mode {
            Mode::Enforce => "enforce".into(),
            Mode::Shadow => "shadow".into(),
        }),
        started,
        capture: capture_state,
        alert_log: AlertLog::new(&opts.config.alerts.log, opts.config.alerts.stdout)
            .rotated_past(opts.config.alerts.rotate_bytes),
        verdict_log: VerdictLog::new(&opts.config.verdicts.log),
        analysis: analysis_shared,
        response: Some(response_stats),
        policy: policy_state.clone(),
    });
    let metrics = metrics_listener.map(|(listener, addr)| {
        info!(%addr, "serving Prometheus metrics on /metrics");
        crate::metrics::serve(listener, state.clone())
    });
    info!(
        ifaces = ?opts.ifaces,
        socket = %opts.socket.display(),
        pins = %opts.pin_dir.display(),
        policy = %policy_source,
        models = state.analysis.is_some(),
        "sentinel running"
    );

    let reloader = {
        let config_path = opts.config_path.clone();
        let fallback = opts.config.clone();
        tokio::spawn(async move {
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                warn!("no SIGHUP handler: policy reloads are off");
                return;
            };
            while hup.recv().await.is_some() {
                let loaded = match &config_path {
                    Some(p) => Config::load(p).map_err(|e| anyhow::anyhow!("{e}")),
                    None => Ok(fallback.clone()),
                }
                .and_then(|c| load_policy(&c, mode));
                match loaded {
                    Ok((p, source)) => {
                        info!(source = %source, rules = p.rules.len(), "SIGHUP: policy reloaded");
                        *policy_state.lock().expect("policy lock") = policy_info(&p, &source);
                        if policy_tx.send(p).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "SIGHUP: reload rejected, the running policy stays");
                        policy_state.lock().expect("policy lock")["last_error"] =
                            serde_json::json!(format!("{e:#}"));
                    }
                }
            }
        })
    };

    let sweeper = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                let s = state.clone();
                let res = tokio::task::spawn_blocking(move || {
                    // The verdict log drops what expired once it has grown (it was only
                    // compacted at start, and `explain` reads it whole).
                    match s.verdict_log.compact_if_grown() {
                        Ok(Some(kept)) => info!(kept, "verdict log compacted"),
                        Ok(None) => {}
                        Err(e) => warn!(error = %e, "compacting the verdict log"),
                    }
                    let mut maps = s.maps.lock().expect("maps lock");
                    lists::sweep_expired(&mut maps)
                })
                .await;
                match res {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => info!(removed = n, "expired entries reclaimed"),
                    Ok(Err(e)) => warn!(error = %e, "sweeping expired entries"),
                    Err(e) => warn!(error = %e, "sweeper task"),
                }
            }
        })
    };

    let app = server::router(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving the control socket")?;
    sweeper.abort();
    reloader.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    if let Some(d) = drain {
        // Dropping the consumer drops the analysis queue's sender: the analysis thread ends,
        // then the responder finishes what it holds.
        d.abort();
        let _ = d.await;
    }
    if let Some(h) = analysis_thread {
        let _ = tokio::task::spawn_blocking(move || h.join()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), responder_task).await;
    // The TC capture ends with the daemon: its attachments go with the object, then a clsact
    // qdisc Sentinel added for them (kernels before 6.6) goes when nothing else uses it.
    drop(object);
    drop(qdiscs);
    info!(
        "sentinel stopped; programs and maps stay pinned and keep enforcing (`sentinel unload` removes them)"
    );
    Ok(())
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default configuration with its logs in `dir` (a test never writes the host's).
    fn logging_into(dir: &crate::lab::TempDir) -> Config {
        let mut config = Config::default();
        config.alerts.log = dir.join("alerts.jsonl");
        config.verdicts.log = dir.join("verdicts.jsonl");
        config
    }

    #[test]
    fn preflight_names_a_missing_interface_before_anything_is_loaded() {
        let dir = crate::lab::TempDir::new("sentinel-preflight-if").unwrap();
        let config = logging_into(&dir);
        assert!(preflight(&["lo".into()], &config, Mode::Enforce, &[]).is_ok());
        let Err(err) = preflight(
            &["lo".into(), "snt-nosuch0".into()],
            &config,
            Mode::Enforce,
            &[],
        ) else {
            panic!("a missing interface passed");
        };
        assert!(
            err.contains("snt-nosuch0") && err.contains("does not exist"),
            "{err}"
        );
    }

    #[test]
    fn captured_transactions_are_analysed_unless_the_models_are_off() {
        let dir = crate::lab::TempDir::new("sentinel-preflight-models").unwrap();
        let mut config = logging_into(&dir);
        let analysed = |config: &Config| {
            let Ok(prepared) = preflight(&["lo".into()], config, Mode::Enforce, &[]) else {
                panic!("preflight refused");
            };
            prepared.analyzer.is_some()
        };
        assert!(!analysed(&config), "nothing is captured");
        config.capture.http_ports = vec![8080];
        assert!(analysed(&config));
        config.models.enabled = false;
        assert!(!analysed(&config), "capture only");
        let parsed = Config::parse("[capture]\nhttp_ports = [8080]\n[models]\nenabled = false\n");
        assert_eq!(parsed.unwrap().models, config.models);
    }

    #[test]
    fn a_second_daemon_on_the_same_pins_is_refused() {
        let dir = crate::lab::TempDir::new("sentinel-pin-locks").unwrap();
        let pins = Path::new("/sys/fs/bpf/sentinel-test-locks");
        let first = lock_pins(dir.path(), pins).unwrap();
        let e = lock_pins(dir.path(), Path::new("/sys/fs/bpf/sentinel-test-locks/"))
            .expect_err("a second lock on the same pins");
        assert!(e.to_string().contains("another sentinel daemon"), "{e}");
        // Other pins are another daemon's business; the first one's end frees its pins.
        let _other = lock_pins(dir.path(), Path::new("/sys/fs/bpf/other")).unwrap();
        drop(first);
        lock_pins(dir.path(), pins).unwrap();
        // The same pins named relative to the working directory.
        let cwd = std::env::current_dir().unwrap();
        let _held = lock_pins(dir.path(), &cwd.join("sentinel-test-pins")).unwrap();
        for relative in [
            "sentinel-test-pins",
            "./sentinel-test-pins/",
            "./sentinel-test-pins/.",
        ] {
            assert!(
                lock_pins(dir.path(), Path::new(relative)).is_err(),
                "{relative} is another lock"
            );
        }
    }

    #[test]
    fn unload_finds_a_held_pin_lock_and_takes_a_free_one() {
        let dir = crate::lab::TempDir::new("sentinel-pin-probe").unwrap();
        let pins = Path::new("/sys/fs/bpf/sentinel-test-probe");
        let path = lock_file(dir.path(), pins);
        // No file: unload still holds the lock while it works (a daemon starting meanwhile is
        // refused, naming the unload), and removes the file after.
        let PinLockState::Free(unload) = probe_pin_lock(dir.path(), pins).unwrap() else {
            panic!("a free lock read as held");
        };
        let e = lock_pins(dir.path(), pins).expect_err("unload holds it");
        let me = std::process::id();
        assert!(
            e.to_string()
                .contains(&format!("sentinel unload (pid {me})")),
            "{e}"
        );
        drop(unload);
        assert!(!path.exists(), "unload left its file");
        // flock conflicts between open files, even in one process: this stands for the daemon.
        let daemon = lock_pins(dir.path(), pins).unwrap();
        match probe_pin_lock(dir.path(), pins).unwrap() {
            PinLockState::Held { path: held, holder } => {
                assert_eq!(held, path);
                let daemon = "daemon".to_owned();
                assert_eq!(
                    holder,
                    Some(Holder {
                        pid: me,
                        role: daemon
                    })
                );
            }
            other => panic!("a held lock read as {other:?}"),
        }
        drop(daemon);
        // A daemon killed with SIGKILL leaves the file (in the format before roles) and no
        // lock: unload takes it, writes itself in, and removes the file.
        std::fs::write(&path, format!("{} 4194305\n", pins.display())).unwrap();
        assert_eq!(holder(&path).map(|h| h.pid), Some(4194305));
        let PinLockState::Free(held) = probe_pin_lock(dir.path(), pins).unwrap() else {
            panic!("a stale lock file was not taken");
        };
        assert_eq!(
            holder(&path).map(|h| (h.pid, h.role)),
            Some((me, "unload".into()))
        );
        drop(held);
        assert!(!path.exists(), "the stale file stays");
        lock_pins(dir.path(), pins).unwrap();
    }

    #[test]
    fn a_lock_on_a_file_removed_meanwhile_guards_nothing() {
        let dir = crate::lab::TempDir::new("sentinel-pin-gone").unwrap();
        let pins = Path::new("/sys/fs/bpf/sentinel-test-gone");
        let path = lock_file(dir.path(), pins);
        std::fs::write(&path, "").unwrap();
        let opened = std::fs::File::open(&path).unwrap();
        assert!(still_at(&opened, &path));
        // Its holder ends and removes it; a new daemon creates the file again.
        std::fs::remove_file(&path).unwrap();
        assert!(!still_at(&opened, &path));
        let _daemon = lock_pins(dir.path(), pins).unwrap();
        assert!(!still_at(&opened, &path), "another file at the path");
        assert!(matches!(
            probe_pin_lock(dir.path(), pins).unwrap(),
            PinLockState::Held { .. }
        ));
    }

    #[test]
    fn every_spelling_of_a_pin_directory_names_one_lock() {
        let dir = crate::lab::TempDir::new("sentinel-pin-names").unwrap();
        let real = dir.join("pins");
        std::fs::create_dir_all(dir.join("x")).unwrap();
        std::os::unix::fs::symlink(&real, dir.join("link")).unwrap();
        let lock = lock_file(dir.path(), &real);
        // Before the directory exists (a daemon locks first) and after.
        for exists in [false, true] {
            if exists {
                std::fs::create_dir(&real).unwrap();
            }
            for other in [
                dir.join("x/../pins"),
                dir.join("./pins/"),
                dir.join("pins/."),
            ] {
                assert_eq!(lock_file(dir.path(), &other), lock, "{}", other.display());
            }
        }
        assert_eq!(lock_file(dir.path(), &dir.join("link")), lock, "a link");
        assert_ne!(lock_file(dir.path(), &dir.join("x")), lock);
    }

    /// What `preflight` refused, or a panic when it accepted.
    fn refused(config: &Config, geoip: &[PathBuf]) -> String {
        match preflight(&["lo".into()], config, Mode::Enforce, geoip) {
            Ok(_) => panic!("preflight accepted it"),
            Err(e) => e,
        }
    }

    #[test]
    fn preflight_names_a_log_it_could_not_write_and_a_missing_geoip_database() {
        let dir = crate::lab::TempDir::new("sentinel-preflight").unwrap();
        let mut config = Config::default();
        config.alerts.log = dir.join("new/sub/alerts.jsonl");
        config.verdicts.log = dir.join("verdicts.jsonl");
        assert!(preflight(&["lo".into()], &config, Mode::Enforce, &[]).is_ok());
        assert!(!dir.join("new").exists(), "preflight created something");
        config.alerts.log = dir.path().to_path_buf();
        let err = refused(&config, &[]);
        assert!(
            err.contains("alerts.log") && err.contains("directory"),
            "{err}"
        );
        std::fs::write(dir.join("file"), "").unwrap();
        config.alerts.log = dir.join("file/alerts.jsonl");
        let err = refused(&config, &[]);
        assert!(err.contains("not a directory"), "{err}");
        // A GeoIP database named and missing is said even without capture.
        config.alerts.log = dir.join("alerts.jsonl");
        let missing = [dir.join("nosuch.mmdb")];
        let err = refused(&config, &missing);
        assert!(err.contains("nosuch.mmdb"), "{err}");
    }

    #[test]
    fn shadow_mode_puts_the_policy_in_shadow_whatever_its_file_says() {
        let config = Config::default();
        let (p, source) = load_policy(&config, Mode::Shadow).unwrap();
        assert_eq!(p.mode, PolicyMode::Shadow);
        assert!(source.contains("--mode shadow"), "{source}");
        let (p, _) = load_policy(&config, Mode::Enforce).unwrap();
        assert_eq!(p.mode, PolicyMode::Enforce);
        // So the decisions it makes are shadow ones: nothing is acted on, nothing revoked.
        let mut d = Decider::new(load_policy(&config, Mode::Shadow).unwrap().0);
        let a = crate::models::synth::alert(
            crate::models::AlertKind::BruteForce,
            "203.0.113.9",
            1_000_000_000,
        );
        let decision = d
            .decide(&a)
            .expect("the built-in policy acts on a brute force");
        assert!(decision.shadow);
    }
}
