//! Prometheus metrics on `GET /metrics` (OpenMetrics text), served on the address of
//! `[metrics] listen` (off when unset).
//!
//! Every label is bounded: `reason` takes the kernel's verdict reasons, `kind` the fifteen alert
//! kinds, `action` the five actions, `list` the four lists. Kernel figures are read at scrape
//! time, so a scrape costs a few map reads and nothing when nobody scrapes.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `sentinel_packets_total`, `sentinel_bytes_total` | counter | `reason` |
//! | `sentinel_alerts_total` | counter | `kind` |
//! | `sentinel_actions_total` | counter | `action` |
//! | `sentinel_verdicts_active` | gauge | `list` (block, throttle, flow_kill, allow) |
//! | `sentinel_ring_lost_total` | counter | |
//! | `sentinel_capture_decode_errors_total` | counter | |
//! | `sentinel_defrag_events_total` | counter | `event` (the defragmenter's counters: fragments taken, datagrams reassembled, overlapping, timed out, refused...) |
//! | `sentinel_defrag_pending`, `sentinel_defrag_pending_bytes` | gauge | |
//! | `sentinel_analysis_dropped_total` | counter | |
//! | `sentinel_pipeline_lag_seconds` | histogram | |
//! | `sentinel_revocations_total` | counter | `result` (ok, failed) |
//! | `sentinel_webhook_failures_total` | counter | |

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, http::header, response::IntoResponse};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use sentinel_common::Reason;

use crate::{
    capture::{
        defrag::DefragStats,
        live::{consumer_counters, defrag_key},
    },
    control::server::{ControlState, map_fills_of},
    models::{Action, AlertKind},
};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads the daemon's state at scrape time.
#[derive(Clone)]
struct DaemonCollector(Arc<ControlState>);

impl std::fmt::Debug for DaemonCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DaemonCollector")
    }
}

fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl IntoIterator<Item = (String, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (v, n) in values {
        let labels = [(label, v)];
        ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    n: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(n).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn action_name(a: Action) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Collector for DaemonCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        use sentinel_common::names;
        let lists: [(&str, &[&str]); 4] = [
            ("block", &[names::BLOCK_HASH, names::BLOCK_LPM]),
            ("throttle", &[names::THROTTLE_HASH, names::THROTTLE_LPM]),
            ("flow_kill", &[names::FLOW_KILL]),
            ("allow", &[names::ALLOW_HASH, names::ALLOW_LPM]),
        ];
        let (kernel, fills) = {
            // Only the verdict maps are counted: the responder waits for this lock.
            let maps = s.maps.lock().expect("maps lock");
            let wanted = |n: &str| lists.iter().any(|(_, maps)| maps.contains(&n));
            (maps.counters().ok(), map_fills_of(&maps, wanted).ok())
        };
        if let Some(c) = kernel {
            let pairs: Vec<_> = Reason::ALL.iter().zip(c).collect();
            counter_family(
                &mut enc,
                "sentinel_packets",
                "Packets seen by the XDP program, per verdict reason",
                "reason",
                pairs.iter().map(|(r, c)| (r.label().to_owned(), c.packets)),
            )?;
            counter_family(
                &mut enc,
                "sentinel_bytes",
                "Bytes seen by the XDP program, per verdict reason",
                "reason",
                pairs.iter().map(|(r, c)| (r.label().to_owned(), c.bytes)),
            )?;
        }
        if let Some(fills) = fills {
            let mut m = enc.encode_descriptor(
                "sentinel_verdicts_active",
                "Entries in the kernel's verdict maps (expired ones are reclaimed every 2 s)",
                None,
                MetricType::Gauge,
            )?;
            let count = |names: &[&str]| -> i64 {
                fills
                    .iter()
                    .filter(|f| names.contains(&f.name.as_str()))
                    .map(|f| f.entries as i64)
                    .sum()
            };
            for (list, names) in lists {
                let labels = [("list", list)];
                ConstGauge::new(count(names)).encode(m.encode_family(&labels)?)?;
            }
        }
        let (ring_lost, consumer) = match &s.capture {
            Some(c) => {
                let kernel = c
                    .control
                    .lock()
                    .expect("capture lock")
                    .kernel_counters()
                    .unwrap_or_default();
                (
                    kernel.get("ring_full").copied().unwrap_or(0),
                    consumer_counters(&c.ring),
                )
            }
            None => (0, Default::default()),
        };
        let consumed = |key: &str| consumer.get(key).copied().unwrap_or(0);
        let decode_errors = consumed("decode_errors");
        counter(
            &mut enc,
            "sentinel_ring_lost",
            "Capture records lost to a full ring buffer",
            ring_lost,
        )?;
        counter(
            &mut enc,
            "sentinel_capture_decode_errors",
            "Capture records that could not be decoded",
            decode_errors,
        )?;
        // The IP defragmenter: what it did with fragments (evasion attempts show here), and
        // what it holds.
        let pending = |name: &str| name.starts_with("pending");
        counter_family(
            &mut enc,
            "sentinel_defrag_events",
            "IP fragments taken and datagrams reassembled, and those dropped, by what happened",
            "event",
            DefragStats::FIELDS
                .iter()
                .filter(|f| !pending(f.name))
                .map(|f| (f.name.to_owned(), consumed(&defrag_key(f.name)))),
        )?;
        for (name, help) in [
            ("pending", "IP datagrams being reassembled"),
            ("pending_bytes", "Bytes of fragments held for reassembly"),
        ] {
            let value = i64::try_from(consumed(&defrag_key(name))).unwrap_or(i64::MAX);
            ConstGauge::new(value).encode(enc.encode_descriptor(
                &format!("sentinel_defrag_{name}"),
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(a) = &s.analysis {
            counter(
                &mut enc,
                "sentinel_analysis_dropped",
                "HTTP transactions dropped because the analysis queue was full",
                a.dropped.load(Ordering::Relaxed),
            )?;
        }
        if let Some(r) = &s.response {
            let per_kind = r.per_kind();
            counter_family(
                &mut enc,
                "sentinel_alerts",
                "Alerts raised, per kind",
                "kind",
                AlertKind::ALL
                    .iter()
                    .map(|k| (k.as_str().to_owned(), per_kind.get(k).copied().unwrap_or(0))),
            )?;
            let mut per_action = std::collections::BTreeMap::new();
            for ((_, a), n) in r.alerts.lock().expect("stats lock").iter() {
                *per_action.entry(action_name(*a)).or_insert(0u64) += n;
            }
            counter_family(
                &mut enc,
                "sentinel_actions",
                "Alerts per action taken",
                "action",
                [
                    Action::Alert,
                    Action::Throttle,
                    Action::Block,
                    Action::KillFlow,
                    Action::RevokeToken,
                ]
                .into_iter()
                .map(|a| {
                    let n = action_name(a);
                    let v = per_action.get(&n).copied().unwrap_or(0);
                    (n, v)
                }),
            )?;
            counter_family(
                &mut enc,
                "sentinel_revocations",
                "Token revocations at the identity provider",
                "result",
                [
                    ("ok".to_owned(), r.revoked.load(Ordering::Relaxed)),
                    ("failed".to_owned(), r.revoke_failed.load(Ordering::Relaxed)),
                ],
            )?;
            counter(
                &mut enc,
                "sentinel_webhook_failures",
                "Alert webhook deliveries that failed after their retries",
                r.webhook_failed.load(Ordering::Relaxed),
            )?;
        }
        Ok(())
    }
}

/// The registry: the scrape-time collector and the pipeline lag histogram.
pub fn registry(state: Arc<ControlState>) -> Registry {
    let mut reg = Registry::default();
    if let Some(a) = &state.analysis {
        reg.register(
            "sentinel_pipeline_lag_seconds",
            "Seconds from a response's capture to its analysis",
            a.lag.clone(),
        );
    }
    reg.register_collector(Box::new(DaemonCollector(state)));
    reg
}

async fn metrics(State(reg): State<Arc<Registry>>) -> impl IntoResponse {
    let res = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).map(|_| text)
    })
    .await;
    match res {
        Ok(Ok(text)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
        }
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n",
        )
            .into_response(),
    }
}

/// Binds the metrics listener (before the daemon loads anything: an address in use stops the
/// start with nothing changed).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr}"))
}

/// Serves `/metrics` on `listener` until the task is aborted.
pub fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ControlState>,
) -> tokio::task::JoinHandle<()> {
    let reg = Arc::new(registry(state));
    let app = Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .with_state(reg);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    })
}
