//! Turning decisions into kernel verdicts, and the durable verdict log.
//!
//! Every applied decision is written into the kernel maps (with its TTL, which the kernel
//! enforces by itself, and the shadow flag when the policy or rule is in shadow mode) and
//! appended to a JSON-lines verdict log. On start, the daemon replays the log: verdicts that have
//! not expired are written again, so a reboot or an `unload` does not forget them.

use std::{
    fs::OpenOptions,
    io::{BufRead as _, Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    lists::{self, Flow, ListError},
    policy::{Decision, Step},
};
use crate::{
    control::api::{AddRequest, ListKind, ThrottleSpec},
    datapath::Maps,
};

/// One applied verdict, as logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerdictRecord {
    /// When it was applied (seconds since the epoch).
    pub applied_at: f64,
    /// When it expires (seconds since the epoch).
    pub expires_at: f64,
    /// Address or prefix.
    pub target: String,
    /// `throttle`, `block` or `flow_kill`.
    pub list: String,
    /// Throttle rate, packets per second.
    pub rate_pps: Option<u64>,
    /// Recorded in shadow mode (would-drop counting only).
    pub shadow: bool,
    /// Why (alert kind and principal).
    pub reason: String,
    /// The killed flow (`flow_kill` records only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<Flow>,
    /// An operator removed `target` from `list` (`sentinel block del`) at `applied_at`: the
    /// records of it before this one are not restored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

impl VerdictRecord {
    /// The record of an operator's removal of `target` from `list` at `now` (seconds).
    pub fn removal(list: ListKind, target: &str, now: f64) -> Self {
        Self {
            applied_at: now,
            expires_at: now,
            target: target.to_owned(),
            list: list.as_str().to_owned(),
            rate_pps: None,
            shadow: false,
            reason: "removed by the operator".into(),
            flow: None,
            removed: true,
        }
    }
}

/// A target as the kernel keys it (`203.0.113.9` and `203.0.113.9/32` are one), for matching a
/// removal with the records it cancels.
fn same_target(a: &str, b: &str) -> bool {
    let norm = |t: &str| {
        t.parse::<crate::verdict::Target>()
            .map(|t| t.net().trunc().to_string())
            .unwrap_or_else(|_| t.to_owned())
    };
    a == b || norm(a) == norm(b)
}

/// Writes a decision into the kernel maps: the step's address verdict (throttle, block, wider
/// prefix) and, when the decision kills the flow and the flow is known, the 5-tuple. Returns the
/// records to log (none for alert-only and token revocation).
pub fn apply(
    maps: &mut Maps,
    decision: &Decision,
    reason: &str,
    flow: Option<&Flow>,
) -> Result<Vec<VerdictRecord>, ListError> {
    let now = crate::clock::unix_s();
    let mut out = Vec::new();
    let record =
        |list: &str, target: String, rate_pps, ttl: Duration, flow: Option<Flow>| VerdictRecord {
            applied_at: now,
            expires_at: now + ttl.as_secs_f64(),
            target,
            list: list.to_owned(),
            rate_pps,
            shadow: decision.shadow,
            reason: reason.to_owned(),
            flow,
            removed: false,
        };
    let list = match decision.step {
        Step::Throttle => Some(ListKind::Throttle),
        Step::Block | Step::BlockPrefix => Some(ListKind::Block),
        _ => None,
    };
    if let (Some(list), Some(target)) = (list, decision.target)
        && let Some(ttl) = write(
            maps,
            list,
            target,
            decision.rate_pps,
            decision.ttl,
            decision.shadow,
            reason,
        )?
    {
        out.push(record(
            list.as_str(),
            target.to_string(),
            decision.rate_pps,
            ttl,
            None,
        ));
    }
    if decision.kills_flow()
        && let Some(flow) = flow
    {
        lists::kill_flow(
            maps,
            flow,
            decision.ttl.as_millis().max(1) as u64,
            Some(reason),
            decision.shadow,
        )?;
        out.push(record(
            FLOW_KILL,
            flow.src.ip().to_string(),
            None,
            decision.ttl,
            Some(*flow),
        ));
    }
    Ok(out)
}

/// The verdict log's list name of killed flows.
pub const FLOW_KILL: &str = "flow_kill";

fn write(
    maps: &mut Maps,
    list: ListKind,
    target: IpNet,
    rate_pps: Option<u64>,
    ttl: Duration,
    shadow: bool,
    reason: &str,
) -> Result<Option<Duration>, ListError> {
    let target: crate::verdict::Target = target
        .to_string()
        .parse()
        .map_err(|source| ListError::Target { index: 1, source })?;
    // A target (address or prefix) already in this list keeps what it has when the new
    // verdict would weaken it: an enforcing entry is not turned into a shadow one (a shadow
    // rule's verdict would let a blocked source through), and no entry is shortened (a
    // permanent entry, which an operator set, stays as it is).
    let mut ttl = ttl;
    if let Some((expires_ns, held_shadow)) = lists::held(maps, list, &target) {
        if expires_ns == 0 || (!held_shadow && shadow) {
            return Ok(None);
        }
        if !held_shadow || shadow {
            let left = expires_ns.saturating_sub(crate::clock::monotonic_ns());
            ttl = ttl.max(Duration::from_nanos(left));
        }
    }
    let throttle = (list == ListKind::Throttle).then(|| {
        let rate = rate_pps.unwrap_or(1).max(1);
        ThrottleSpec {
            rate_pps: rate,
            // One second's worth: a conforming client never notices, a flood is cut at once.
            burst: rate,
            aggregate: None,
        }
    });
    lists::add(
        maps,
        list,
        &AddRequest {
            targets: vec![target.to_string()],
            ttl_ms: Some(ttl.as_millis().max(1) as u64),
            reason: Some(reason.to_owned()),
            shadow,
            throttle,
        },
    )?;
    Ok(Some(ttl))
}

/// The append-only verdict log.
pub struct VerdictLog {
    path: PathBuf,
    /// Its size after the last compaction.
    compacted_bytes: std::sync::atomic::AtomicU64,
}

/// Appends to and compactions of verdict logs take turns (the responder and the control API
/// append, the sweeper compacts): a record appended while the log is rewritten would be lost.
static TURNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A log is compacted while the daemon runs once it is this large and twice its size after the
/// last compaction (so that a log of many live verdicts is not rewritten over and over).
const COMPACT_FROM_BYTES: u64 = 4 << 20;

impl VerdictLog {
    /// A log at `path` (created on first append, with its directory).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            compacted_bytes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Rewrites the log with its live records when it has grown past [`COMPACT_FROM_BYTES`]
    /// and twice its size after the last compaction; returns how many records it kept, if it
    /// compacted. Expired records, removals and what they removed go.
    pub fn compact_if_grown(&self) -> std::io::Result<Option<usize>> {
        self.compact_past(COMPACT_FROM_BYTES)
    }

    fn compact_past(&self, from_bytes: u64) -> std::io::Result<Option<usize>> {
        use std::sync::atomic::Ordering;
        let size = match std::fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let last = self.compacted_bytes.load(Ordering::Relaxed);
        if size < from_bytes || size < 2 * last {
            return Ok(None);
        }
        let _turn = TURNS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (live, _) = self.live(crate::clock::unix_s())?;
        self.rewrite(&live)?;
        let after = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        self.compacted_bytes.store(after, Ordering::Relaxed);
        Ok(Some(live.len()))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record (one JSON line, flushed).
    pub fn append(&self, rec: &VerdictRecord) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let _turn = TURNS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&line)?;
        f.flush()
    }

    /// Records that are still in force at `now` (seconds since the epoch). Unreadable lines
    /// (a torn last write) are skipped and counted.
    pub fn live(&self, now: f64) -> std::io::Result<(Vec<VerdictRecord>, usize)> {
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e),
        };
        let mut live = Vec::new();
        let mut bad = 0;
        for line in std::io::BufReader::new(f).lines() {
            match serde_json::from_str::<VerdictRecord>(&line?) {
                Ok(r) if r.removed => {
                    live.retain(|x: &VerdictRecord| {
                        !(x.list == r.list && same_target(&x.target, &r.target))
                    });
                }
                Ok(r) if r.expires_at > now => live.push(r),
                Ok(_) => {}
                Err(_) => bad += 1,
            }
        }
        Ok((live, bad))
    }

    /// Writes every live verdict back into the maps (remaining TTL only). Returns how many.
    pub fn restore(
        &self,
        maps: &mut Maps,
    ) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let now = crate::clock::unix_s();
        let (live, unreadable) = self.live(now)?;
        let mut n = 0;
        for r in &live {
            let ttl = Duration::from_secs_f64((r.expires_at - now).max(0.001));
            let written = if let Some(flow) = &r.flow {
                lists::kill_flow(
                    maps,
                    flow,
                    ttl.as_millis().max(1) as u64,
                    Some(&r.reason),
                    r.shadow,
                )
            } else {
                let list = if r.list == "throttle" {
                    ListKind::Throttle
                } else {
                    ListKind::Block
                };
                let target: IpNet = match r.target.parse() {
                    Ok(t) => t,
                    Err(_) => continue,
                };
                write(maps, list, target, r.rate_pps, ttl, r.shadow, &r.reason).map(|_| ())
            };
            // One verdict that cannot be written again (a map full since) costs that verdict,
            // not the daemon's start.
            match written {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!(
                    error = %e,
                    target = %r.target,
                    list = %r.list,
                    "a verdict of the log could not be restored"
                ),
            }
        }
        if unreadable > 0 {
            // The compaction below leaves them out: keep the file as it was beside it, after
            // what earlier restarts kept there.
            let kept = self.path.with_extension("jsonl.unreadable");
            let mut to = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&kept)?;
            // A torn last write ends without a newline: the copy starts on a line of its own.
            if to.metadata()?.len() > 0 {
                let mut last = [0u8];
                to.seek(SeekFrom::End(-1))?;
                to.read_exact(&mut last)?;
                if last[0] != b'\n' {
                    to.write_all(b"\n")?;
                }
            }
            std::io::copy(&mut std::fs::File::open(&self.path)?, &mut to)?;
            tracing::warn!(
                unreadable,
                log = %self.path.display(),
                kept = %kept.display(),
                "verdict log lines that do not parse are left out of the compacted log; the log as it was is kept"
            );
        }
        self.compact(&live)?;
        Ok(n)
    }

    /// Rewrites the log with only `live` records (atomically: a new file renamed over it), so
    /// that it does not grow without end across restarts.
    fn compact(&self, live: &[VerdictRecord]) -> std::io::Result<()> {
        let _turn = TURNS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.rewrite(live)
    }

    /// [`VerdictLog::compact`] with the turn held.
    fn rewrite(&self, live: &[VerdictRecord]) -> std::io::Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut text = Vec::new();
        for r in live {
            serde_json::to_writer(&mut text, r).map_err(std::io::Error::other)?;
            text.push(b'\n');
        }
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(target: &str, expires_at: f64) -> VerdictRecord {
        VerdictRecord {
            applied_at: 0.0,
            expires_at,
            target: target.into(),
            list: "block".into(),
            rate_pps: None,
            shadow: false,
            reason: "brute_force user:layla".into(),
            flow: None,
            removed: false,
        }
    }

    #[test]
    fn a_grown_log_is_compacted_while_the_daemon_runs() {
        let dir = crate::lab::TempDir::new("sentinel-vlog-compact").unwrap();
        let log = VerdictLog::new(dir.join("verdicts.jsonl"));
        let now = crate::clock::unix_s();
        // 300 expired verdicts and 3 live ones.
        for i in 0..300 {
            log.append(&rec(&format!("198.51.100.{}/32", i % 250), now - 10.0))
                .unwrap();
        }
        for i in 0..3 {
            log.append(&rec(&format!("203.0.113.{i}/32"), now + 600.0))
                .unwrap();
        }
        assert_eq!(
            log.compact_past(u64::MAX).unwrap(),
            None,
            "not grown enough"
        );
        assert_eq!(log.compact_past(1024).unwrap(), Some(3));
        let (live, _) = log.live(now).unwrap();
        assert_eq!(live.len(), 3);
        // Small again: left alone until it has grown again.
        log.append(&rec("203.0.113.9/32", now + 600.0)).unwrap();
        assert_eq!(log.compact_past(1024).unwrap(), None);
        for _ in 0..10 {
            log.append(&rec("192.0.2.1/32", now - 1.0)).unwrap();
        }
        assert_eq!(log.compact_past(1024).unwrap(), Some(4));
    }

    #[test]
    fn an_operators_removal_cancels_the_records_before_it() {
        let dir = crate::lab::TempDir::new("sentinel-vlog-del").unwrap();
        let log = VerdictLog::new(dir.join("verdicts.jsonl"));
        log.append(&rec("203.0.113.9/32", 500.0)).unwrap();
        log.append(&rec("198.51.100.0/24", 500.0)).unwrap();
        // `sentinel block del 203.0.113.9` (as typed: without the /32).
        log.append(&VerdictRecord::removal(
            ListKind::Block,
            "203.0.113.9",
            150.0,
        ))
        .unwrap();
        // A throttle of the same address is another list: it stays.
        let mut throttle = rec("203.0.113.9/32", 500.0);
        throttle.list = "throttle".into();
        log.append(&throttle).unwrap();
        let (live, _) = log.live(200.0).unwrap();
        assert_eq!(live, vec![rec("198.51.100.0/24", 500.0), throttle.clone()]);
        // A verdict after the removal is in force again.
        log.append(&rec("203.0.113.9/32", 600.0)).unwrap();
        let (live, _) = log.live(200.0).unwrap();
        assert_eq!(live.len(), 3);
        assert_eq!(live[2], rec("203.0.113.9/32", 600.0));
        // The removal record reads back (the field is written only when true).
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert_eq!(text.matches("\"removed\":true").count(), 1, "{text}");
    }

    #[test]
    fn the_log_keeps_what_has_not_expired_and_survives_torn_lines() {
        let dir = std::env::temp_dir().join(format!("sentinel-vlog-{}", std::process::id()));
        let log = VerdictLog::new(dir.join("verdicts.jsonl"));
        log.append(&rec("203.0.113.9/32", 100.0)).unwrap();
        log.append(&rec("198.51.100.0/24", 300.0)).unwrap();
        OpenOptions::new()
            .append(true)
            .open(log.path())
            .unwrap()
            .write_all(b"{\"applied_at\": 1, \"expi")
            .unwrap();
        let (live, bad) = log.live(200.0).unwrap();
        assert_eq!(live, vec![rec("198.51.100.0/24", 300.0)]);
        assert_eq!(bad, 1);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            VerdictLog::new("/nonexistent/x")
                .live(0.0)
                .unwrap()
                .0
                .is_empty()
        );
    }
}
