//! The daemon's analysis stage: HTTP transactions from the live capture pipeline through the
//! [`Analyzer`] (enrichment and every model) on a thread of its own, and the alerts out to the
//! responder.
//!
//! The ring buffer consumer hands transactions over a bounded channel and never waits: when
//! the analysis falls behind, transactions are dropped and counted, so the capture keeps
//! draining the kernel's ring buffer. When traffic is quiet the models are ticked with the wall
//! clock, so windows close and idle state expires without new transactions.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::histogram::Histogram;
use serde_json::json;
use tokio::sync::mpsc;

use crate::{
    analyze::Analyzer,
    clock::unix_ns,
    http::Transaction,
    models::Alert,
    verdict::{lists::Flow, responder::AlertEvent, sessions::SessionBook},
};

/// Transactions waiting for analysis at most.
pub const QUEUE: usize = 8192;

/// Panics of the analysis logged one by one (the rest are counted).
const PANICS_LOGGED: u64 = 10;

/// How long the analysis waits for a transaction before ticking the models with the clock.
const QUIET: Duration = Duration::from_millis(250);
/// Transactions analysed between two looks at the clock, the explain requests and the snapshot.
const BATCH: usize = 64;

/// Counters shared with the capture side, the control API and the metrics.
#[derive(Debug)]
pub struct AnalysisShared {
    /// Transactions handed to the analysis.
    pub queued: AtomicU64,
    /// Transactions dropped because the analysis queue was full.
    pub dropped: AtomicU64,
    /// Transactions analysed.
    pub analysed: AtomicU64,
    /// Transactions whose analysis panicked (a defect the input found: the transaction is
    /// skipped, the analysis goes on, and the first ones are logged).
    pub panicked: AtomicU64,
    /// The analysis thread has ended (a panic while the daemon runs: nothing is analysed any
    /// more, every transaction is dropped).
    pub stopped: AtomicBool,
    /// Seconds from a response's capture to its analysis.
    pub lag: Histogram,
    /// The last lag, seconds.
    pub last_lag_s: Mutex<f64>,
    /// Model state as JSON (analyzer and engine figures), refreshed every second.
    pub snapshot: Mutex<serde_json::Value>,
    /// Profile requests for `sentinel explain`, answered by the analysis thread.
    explain: Mutex<Option<std::sync::mpsc::Sender<ExplainRequest>>>,
}

/// A principal's profile asked of the analysis thread, and where to answer.
type ExplainRequest = (String, std::sync::mpsc::Sender<Option<serde_json::Value>>);

impl Default for AnalysisShared {
    fn default() -> Self {
        Self {
            queued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            analysed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            lag: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            last_lag_s: Mutex::new(0.0),
            snapshot: Mutex::new(serde_json::Value::Null),
            explain: Mutex::new(None),
        }
    }
}

impl AnalysisShared {
    /// The learned profile of `principal` (display form, e.g. `user:layla` or
    /// `ip:203.0.113.7`), asked of the analysis thread; none when it has none or does not
    /// answer within `wait`.
    pub fn profile(&self, principal: &str, wait: Duration) -> Option<serde_json::Value> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.explain
            .lock()
            .expect("explain lock")
            .as_ref()?
            .send((principal.to_owned(), tx))
            .ok()?;
        rx.recv_timeout(wait).ok().flatten()
    }

    /// The status report: the model state plus the queue's figures.
    pub fn report(&self) -> serde_json::Value {
        let mut v = self.snapshot.lock().expect("snapshot lock").clone();
        if !v.is_object() {
            v = json!({});
        }
        v["queue"] = json!({
            "capacity": QUEUE,
            "queued": self.queued.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "analysed": self.analysed.load(Ordering::Relaxed),
            "panicked": self.panicked.load(Ordering::Relaxed),
            "last_lag_ms": *self.last_lag_s.lock().expect("lag lock") * 1e3,
            "stopped": self.stopped.load(Ordering::Relaxed),
        });
        v
    }
}

/// The capture side's end of the analysis queue.
#[derive(Clone)]
pub struct AnalysisQueue {
    tx: SyncSender<Transaction>,
    shared: Arc<AnalysisShared>,
}

impl AnalysisQueue {
    /// Hands a transaction over without waiting; a full queue drops it (counted), and so does a
    /// stopped analysis thread (see [`AnalysisShared::stopped`]).
    pub fn push(&self, t: Transaction) {
        match self.tx.try_send(t) {
            Ok(()) => {
                self.shared.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Starts the analysis thread. Alerts go to `alerts` (waiting when the responder is behind:
/// alerts are never dropped, transactions are).
pub fn spawn(
    analyzer: Analyzer,
    alerts: mpsc::Sender<AlertEvent>,
    shared: Arc<AnalysisShared>,
) -> std::io::Result<(AnalysisQueue, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let (etx, erx) = std::sync::mpsc::channel();
    *shared.explain.lock().expect("explain lock") = Some(etx);
    let queue = AnalysisQueue {
        tx,
        shared: shared.clone(),
    };
    let handle = std::thread::Builder::new()
        .name("sentinel-analysis".into())
        .spawn(move || {
            // Marks the thread stopped however it ends, and says so when a panic ends it while
            // the daemon runs on.
            struct Stopped(Arc<AnalysisShared>);
            impl Drop for Stopped {
                fn drop(&mut self) {
                    self.0.stopped.store(true, Ordering::Relaxed);
                    if std::thread::panicking() {
                        tracing::error!(
                            "the analysis thread panicked: transactions are dropped and no alert is raised until sentinel run is restarted"
                        );
                    }
                }
            }
            let _stopped = Stopped(shared.clone());
            Worker::new(analyzer, alerts, shared).run(rx, erx)
        })?;
    Ok((queue, handle))
}

/// When `t` was complete on the wire.
fn done_ns(t: &Transaction) -> u64 {
    t.ts_ns
        .saturating_add((t.latency_ms().unwrap_or(0.0) * 1e6) as u64)
}

struct Worker {
    analyzer: Analyzer,
    book: SessionBook,
    alerts: mpsc::Sender<AlertEvent>,
    shared: Arc<AnalysisShared>,
    scratch: Vec<Alert>,
    /// When each transaction of the batch in hand was complete on the wire.
    done: Vec<u64>,
}

impl Worker {
    fn new(
        analyzer: Analyzer,
        alerts: mpsc::Sender<AlertEvent>,
        shared: Arc<AnalysisShared>,
    ) -> Self {
        Self {
            analyzer,
            book: SessionBook::new(100_000),
            alerts,
            shared,
            scratch: Vec::new(),
            done: Vec::with_capacity(BATCH),
        }
    }

    fn run(mut self, rx: Receiver<Transaction>, explain: Receiver<ExplainRequest>) {
        self.snapshot();
        let mut last_snapshot = Instant::now();
        loop {
            while let Ok((principal, answer)) = explain.try_recv() {
                let _ = answer.send(self.analyzer.explain(&principal));
            }
            match rx.recv_timeout(QUIET) {
                // What else is queued is taken without waiting, up to a batch, and the clock is
                // read once for the batch.
                Ok(first) => {
                    let mut next = Some(first);
                    let mut done = std::mem::take(&mut self.done);
                    while let Some(t) = next.take() {
                        done.push(done_ns(&t));
                        if !self.transaction(t) {
                            return;
                        }
                        if done.len() < BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    self.lag(&mut done);
                    self.done = done;
                }
                Err(RecvTimeoutError::Timeout) => {
                    let mut out = std::mem::take(&mut self.scratch);
                    self.analyzer.tick(unix_ns(), &mut out);
                    let ok = self.send(&mut out, None);
                    self.scratch = out;
                    if !ok {
                        return;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if last_snapshot.elapsed() >= Duration::from_secs(1) {
                last_snapshot = Instant::now();
                self.snapshot();
            }
        }
    }

    /// The pipeline lag of a batch's transactions (completed on the wire at `done`, emptied),
    /// as of now, the batch analysed.
    fn lag(&mut self, done: &mut Vec<u64>) {
        let now = unix_ns();
        let mut lag = 0.0;
        for d in done.drain(..) {
            lag = now.saturating_sub(d) as f64 / 1e9;
            self.shared.lag.observe(lag);
        }
        *self.shared.last_lag_s.lock().expect("lag lock") = lag;
    }

    /// Analyses one transaction; false when the responder is gone. A panic in the models (a
    /// defect some input found) skips the transaction instead of ending the analysis: one
    /// crafted request must not blind every detector until a restart.
    fn transaction(&mut self, t: Transaction) -> bool {
        self.guarded((t.client, t.server), |w| w.analyse(&t))
    }

    /// Runs `step` (the analysis of the transaction between `peers`), counting and logging a
    /// panic instead of passing it on.
    fn guarded(
        &mut self,
        peers: (SocketAddr, SocketAddr),
        step: impl FnOnce(&mut Self) -> bool,
    ) -> bool {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(self))) {
            Ok(ok) => ok,
            Err(cause) => {
                let n = self.shared.panicked.fetch_add(1, Ordering::Relaxed) + 1;
                if n <= PANICS_LOGGED {
                    let what = cause
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| cause.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(
                        client = %peers.0,
                        server = %peers.1,
                        panic = %what,
                        "the analysis of a transaction panicked; skipped it (a defect: please report it)"
                    );
                }
                self.scratch.clear();
                true
            }
        }
    }

    fn analyse(&mut self, t: &Transaction) -> bool {
        let obs = self.analyzer.observation(t);
        self.book.observe(&obs);
        let mut out = std::mem::take(&mut self.scratch);
        // Alerts of a tick are about no request in particular; those of the observation are
        // about this one (its flow, its tokens).
        self.analyzer.tick(obs.ts_ns, &mut out);
        let mut ok = self.send(&mut out, None);
        self.analyzer.observe(&obs, &mut out);
        let flow = Flow {
            src: t.client,
            dst: t.server,
            proto: 6,
        };
        ok &= self.send(&mut out, Some(flow));
        self.scratch = out;
        self.shared.analysed.fetch_add(1, Ordering::Relaxed);
        ok
    }

    fn send(&mut self, out: &mut Vec<Alert>, flow: Option<Flow>) -> bool {
        for alert in out.drain(..) {
            let tokens = self.book.tokens_for(&alert);
            let ev = AlertEvent {
                alert,
                tokens,
                flow,
            };
            if self.alerts.blocking_send(ev).is_err() {
                return false;
            }
        }
        true
    }

    fn snapshot(&self) {
        let a = self.analyzer.stats();
        let e = self.analyzer.engine_stats();
        let geo = if self.analyzer.has_geo() {
            json!({"on": true, "files": a.geoip_files, "errors": a.geo_errors})
        } else {
            json!({"on": false, "reason": a.geo_off_reason})
        };
        let v = json!({
            "geo": geo,
            "transactions": a.transactions,
            "alerts": e.alerts,
            "suppressed": e.suppressed,
            "principals": e.profiles,
            "linked_credentials": e.links,
            "sessions_tracked": self.book.len(),
            "sessions_bytes": self.book.bytes(),
            "templates": a.templates,
            "memory_bytes": e.memory_bytes,
        });
        *self.shared.snapshot.lock().expect("snapshot lock") = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A default analyzer, an alert channel (and its receiver, to keep) and fresh figures.
    fn parts() -> (
        Analyzer,
        mpsc::Sender<AlertEvent>,
        mpsc::Receiver<AlertEvent>,
        Arc<AnalysisShared>,
    ) {
        let config = crate::config::Config::default();
        let analyzer = Analyzer::new(&config.enrich, &config.models, &[]).unwrap();
        let (alerts, rx) = mpsc::channel(1);
        (analyzer, alerts, rx, Arc::new(AnalysisShared::default()))
    }

    #[test]
    fn the_status_tells_when_the_analysis_thread_has_ended() {
        let (analyzer, alerts, _rx, shared) = parts();
        let (queue, handle) = spawn(analyzer, alerts, shared.clone()).unwrap();
        assert_eq!(shared.report()["queue"]["stopped"], false);
        // The thread ends once the capture side's sender is gone.
        drop(queue);
        handle.join().unwrap();
        assert_eq!(shared.report()["queue"]["stopped"], true);
    }

    #[test]
    fn a_panic_in_one_transaction_skips_it_and_the_analysis_goes_on() {
        let (analyzer, alerts, _rx, shared) = parts();
        let mut w = Worker::new(analyzer, alerts, shared.clone());
        let peers = (
            "192.0.2.7:40000".parse().unwrap(),
            "198.51.100.1:80".parse().unwrap(),
        );
        assert!(w.guarded(peers, |_| panic!("a defect some input found")));
        assert!(w.guarded(peers, |_| panic!("another one")));
        assert_eq!(shared.report()["queue"]["panicked"], 2);
        // The worker is still whole: the next transaction's analysis runs and is counted.
        assert!(w.guarded(peers, |w| {
            w.shared.analysed.fetch_add(1, Ordering::Relaxed);
            true
        }));
        assert_eq!(shared.report()["queue"]["analysed"], 1);
    }
}
