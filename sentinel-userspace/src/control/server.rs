//! The daemon's control API: HTTP/JSON on a Unix socket with root-only permissions.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Path as UrlPath, Query, State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use sentinel_common::{Reason, names};
use serde::Deserialize;

use super::api::{
    AddRequest, CaptureReport, CounterReport, DelRequest, ErrorBody, ExplainReport, ListKind,
    MapFill, SourceReport, StatusReport, TopReport,
};
use crate::{
    capture::{
        live::{CaptureControl, consumer_counters},
        ringbuf::RingStats,
    },
    clock,
    datapath::{Maps, loader},
    notify::alerts::AlertLog,
    verdict::enforce::{VerdictLog, VerdictRecord},
    verdict::lists::{self, ListError},
};

/// What the API handlers share.
pub struct ControlState {
    /// The kernel maps (shared with the responder).
    pub maps: Arc<Mutex<Maps>>,
    /// Pin directory.
    pub pin_dir: PathBuf,
    /// Global mode label.
    pub mode: Mutex<String>,
    /// When the daemon started.
    pub started: Instant,
    /// Live capture, when enabled.
    pub capture: Option<CaptureState>,
    /// The alert log.
    pub alert_log: AlertLog,
    /// The verdict log.
    pub verdict_log: VerdictLog,
    /// The analysis stage, when capture feeds it.
    pub analysis: Option<Arc<crate::analysis::AnalysisShared>>,
    /// The responder's counters.
    pub response: Option<Arc<crate::verdict::responder::ResponseStats>>,
    /// The policy in force: where it came from, when it was loaded, the last reload's outcome.
    pub policy: Arc<Mutex<serde_json::Value>>,
}

/// Capture state shared with the API.
pub struct CaptureState {
    /// Kernel-side capture maps.
    pub control: Mutex<CaptureControl>,
    /// Ring buffer consumer counters.
    pub ring: Arc<RingStats>,
    /// Reassembly and HTTP counters, refreshed every second by the pipeline.
    pub pipeline: Arc<Mutex<serde_json::Value>>,
}

/// An API error: a status and one line.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<ListError> for ApiError {
    fn from(e: ListError) -> Self {
        let code = if e.is_bad_input() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError(code, e.to_string())
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

type Shared = Arc<ControlState>;

/// Runs blocking map work off the async threads.
async fn blocking<T: Send + 'static>(
    state: &Shared,
    f: impl FnOnce(&ControlState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state))
        .await
        .map_err(internal)?
}

/// The API routes.
pub fn router(state: Shared) -> Router {
    let max_targets = largest_list(&state.maps.lock().expect("maps lock"));
    let routes = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/lists/{kind}", get(list).post(add))
        .route("/v1/lists/{kind}/delete", post(del))
        .route("/v1/top", get(top))
        .route("/v1/alerts", get(alerts))
        .route("/v1/explain/{target}", get(explain));
    limit_bodies(routes, max_targets).with_state(state)
}

/// Bytes one target takes in a request body at most: the longest target text (an IPv6 address
/// written out in full with a prefix length, `ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128`, 43
/// bytes), its quotes and comma, and room for a line break and indentation.
const TARGET_JSON_BYTES: usize = 64;

/// Bytes of a request body besides its targets: the other fields, with a reason far longer
/// than the kernel keeps.
const BODY_OVERHEAD_BYTES: usize = 64 << 10;

/// The largest request body the API reads when no request names more than `max_targets`
/// targets. A larger one is answered 413 with the API's JSON error, before more than this is
/// buffered.
fn body_limit(max_targets: usize) -> usize {
    max_targets
        .saturating_mul(TARGET_JSON_BYTES)
        .saturating_add(BODY_OVERHEAD_BYTES)
}

fn limit_bodies<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    max_targets: usize,
) -> Router<S> {
    routes.layer(DefaultBodyLimit::max(body_limit(max_targets)))
}

/// The most targets a sensible add or delete names: as many as the largest list (its exact
/// and prefix maps together) holds. With the default map sizes that is the blocklist's
/// 1,100,000 addresses and 262,144 prefixes: bodies of up to 87,242,752 bytes (a million IPv4
/// addresses are about 15 MB as the CLI sends them). Larger maps in the config raise it.
fn largest_list(maps: &Maps) -> usize {
    use aya::maps::{IterableMap as _, MapData};
    let size = |m: &MapData| m.info().map(|i| i.max_entries() as usize);
    let lists = || -> Result<usize, aya::maps::MapError> {
        Ok([
            size(maps.block_hash.map())? + size(maps.block_lpm.map())?,
            size(maps.allow_hash.map())? + size(maps.allow_lpm.map())?,
            size(maps.throttle_hash.map())? + size(maps.throttle_lpm.map())?,
        ]
        .into_iter()
        .max()
        .unwrap_or(0))
    };
    lists().unwrap_or_else(|e| {
        let d = loader::MapSizes::default();
        tracing::warn!(error = %e, "reading the list sizes: request bodies are limited as for the default sizes");
        (d.block_exact + d.prefixes) as usize
    })
}

/// Binds the control socket: refuses to steal it from a live daemon, replaces a stale one, and
/// restricts it to root.
pub async fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use anyhow::Context as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another sentinel daemon is serving {}; stop it first or pass --socket",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

async fn status(State(state): State<Shared>) -> Result<Json<StatusReport>, ApiError> {
    blocking(&state, |s| {
        let maps = s.maps.lock().expect("maps lock");
        let counters = maps.counters().map_err(internal)?;
        let counters = Reason::ALL
            .iter()
            .zip(counters)
            .map(|(r, c)| {
                (
                    r.label().to_owned(),
                    CounterReport {
                        packets: c.packets,
                        bytes: c.bytes,
                    },
                )
            })
            .collect();
        Ok(Json(StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            mode: s.mode.lock().expect("mode lock").clone(),
            pin_path: s.pin_dir.display().to_string(),
            programs: loader::attachments(&s.pin_dir).map_err(internal)?,
            maps: map_fills(&maps).map_err(internal)?,
            counters,
            uptime_s: s.started.elapsed().as_secs_f64(),
            capture: s.capture.as_ref().map(capture_report).transpose()?,
            analysis: s.analysis.as_ref().map(|a| a.report()),
            response: s.response.as_ref().map(|r| r.report()),
            policy: Some(s.policy.lock().expect("policy lock").clone()),
        }))
    })
    .await
}

fn capture_report(c: &CaptureState) -> Result<CaptureReport, ApiError> {
    let control = c.control.lock().expect("capture lock");
    Ok(CaptureReport {
        http_ports: control.settings.http_ports.clone(),
        snap_len: control.settings.snap_len,
        kernel: control.kernel_counters().map_err(internal)?,
        consumer: consumer_counters(&c.ring),
        pipeline: c.pipeline.lock().expect("pipeline stats lock").clone(),
    })
}

/// Entries and capacity of every map.
pub fn map_fills(maps: &Maps) -> Result<Vec<MapFill>, crate::datapath::DatapathError> {
    map_fills_of(maps, |_| true)
}

/// Entries and capacity of the maps whose names `want` accepts. Counting walks a map's entries,
/// so a caller that holds the maps lock counts only what it shows (the metrics skip the sources
/// and buckets, a few hundred thousand entries each).
pub fn map_fills_of(
    maps: &Maps,
    want: impl Fn(&str) -> bool,
) -> Result<Vec<MapFill>, crate::datapath::DatapathError> {
    use aya::maps::IterableMap;
    use sentinel_common::{AddrKey, BucketKey, BucketState, FlowKey, RuleValue, ThrottleRule};
    type Count<'a> = &'a dyn Fn() -> Result<usize, crate::datapath::DatapathError>;
    let rv = size_of::<RuleValue>();
    let table: [(&str, &aya::maps::MapData, Count<'_>); 9] = [
        (names::SOURCES, maps.sources.map(), &|| {
            Ok(maps.sources.keys().count())
        }),
        (names::ALLOW_HASH, maps.allow_hash.map(), &|| {
            Maps::count_hash::<AddrKey>(maps.allow_hash.map(), rv)
        }),
        (names::ALLOW_LPM, maps.allow_lpm.map(), &|| {
            Ok(maps.allow_lpm.keys().count())
        }),
        (names::BLOCK_HASH, maps.block_hash.map(), &|| {
            Maps::count_hash::<AddrKey>(maps.block_hash.map(), rv)
        }),
        (names::BLOCK_LPM, maps.block_lpm.map(), &|| {
            Ok(maps.block_lpm.keys().count())
        }),
        (names::THROTTLE_HASH, maps.throttle_hash.map(), &|| {
            Maps::count_hash::<AddrKey>(maps.throttle_hash.map(), size_of::<ThrottleRule>())
        }),
        (names::THROTTLE_LPM, maps.throttle_lpm.map(), &|| {
            Ok(maps.throttle_lpm.keys().count())
        }),
        (names::BUCKETS, maps.buckets.map(), &|| {
            Maps::count_hash::<BucketKey>(maps.buckets.map(), size_of::<BucketState>())
        }),
        (names::FLOW_KILL, maps.flow_kill.map(), &|| {
            Maps::count_hash::<FlowKey>(maps.flow_kill.map(), rv)
        }),
    ];
    let mut out = Vec::new();
    for (name, data, count) in table {
        if !want(name) {
            continue;
        }
        let max = data
            .info()
            .map_err(|source| crate::datapath::DatapathError::Map {
                name: name.to_owned(),
                source,
            })?
            .max_entries();
        out.push(MapFill {
            name: name.to_owned(),
            entries: count()?,
            max_entries: max,
        });
    }
    Ok(out)
}

fn list_kind(kind: &str) -> Result<ListKind, ApiError> {
    match kind {
        "block" => Ok(ListKind::Block),
        "allow" => Ok(ListKind::Allow),
        "throttle" => Ok(ListKind::Throttle),
        other => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no list named {other:?} (block, allow, throttle)"),
        )),
    }
}

async fn list(
    State(state): State<Shared>,
    UrlPath(kind): UrlPath<String>,
) -> Result<Response, ApiError> {
    let kind = list_kind(&kind)?;
    blocking(&state, move |s| {
        let maps = s.maps.lock().expect("maps lock");
        Ok(Json(lists::list(&maps, kind)?).into_response())
    })
    .await
}

/// A request body that is not the JSON asked for: the error in the API's own form (axum's
/// answer is plain text), with its status (400, 413, 415 or 422).
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|r| ApiError(r.status(), r.body_text()))
}

async fn add(
    State(state): State<Shared>,
    UrlPath(kind): UrlPath<String>,
    req: Result<Json<AddRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let kind = list_kind(&kind)?;
    let req = body(req)?;
    blocking(&state, move |s| {
        let mut maps = s.maps.lock().expect("maps lock");
        let resp = lists::add(&mut maps, kind, &req)?;
        tracing::info!(list = kind.as_str(), added = resp.added, reason = ?req.reason, "list entries added");
        Ok(Json(resp).into_response())
    })
    .await
}

async fn del(
    State(state): State<Shared>,
    UrlPath(kind): UrlPath<String>,
    req: Result<Json<DelRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let kind = list_kind(&kind)?;
    let req = body(req)?;
    blocking(&state, move |s| {
        let mut maps = s.maps.lock().expect("maps lock");
        let resp = lists::remove(&mut maps, kind, &req)?;
        tracing::info!(
            list = kind.as_str(),
            removed = resp.removed,
            "list entries removed"
        );
        // Verdicts the daemon wrote are restored at its next start from its log: the log says
        // they were removed, so that an operator's unblock holds across a restart.
        if kind != ListKind::Allow {
            let now = clock::unix_s();
            for t in &req.targets {
                if let Err(e) = s
                    .verdict_log
                    .append(&VerdictRecord::removal(kind, t, now))
                {
                    tracing::warn!(error = %e, target = %t, "writing a removal to the verdict log: the verdict may come back at the next start");
                }
            }
        }
        Ok(Json(resp).into_response())
    })
    .await
}

#[derive(Deserialize)]
struct TopQuery {
    limit: Option<usize>,
}

async fn top(
    State(state): State<Shared>,
    Query(q): Query<TopQuery>,
) -> Result<Json<TopReport>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    blocking(&state, move |s| {
        let maps = s.maps.lock().expect("maps lock");
        let now = clock::monotonic_ns();
        let mut sources = maps.sources().map_err(internal)?;
        sources.sort_by_key(|s| std::cmp::Reverse(s.1.packets));
        sources.truncate(limit);
        let sources = sources
            .into_iter()
            .map(|(k, s)| SourceReport {
                src_ip: lists::source_ip(&k).to_string(),
                packets: s.packets,
                bytes: s.bytes,
                dropped: s.dropped,
                last_seen_s_ago: now.saturating_sub(s.last_seen_ns) as f64 / 1e9,
                pps: None,
                bps: None,
                verdict: lists::verdict_of(&maps, &k).to_owned(),
            })
            .collect();
        Ok(Json(TopReport {
            at_ns: now,
            sources,
        }))
    })
    .await
}

#[derive(Deserialize)]
struct AlertsQuery {
    /// Only alerts at or after this RFC 3339 time.
    since: Option<String>,
    /// At most this many (the newest).
    limit: Option<usize>,
}

async fn alerts(
    State(state): State<Shared>,
    Query(q): Query<AlertsQuery>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    blocking(&state, move |s| {
        let limit = q.limit.unwrap_or(1000);
        let since = q.since.as_deref();
        // RFC 3339 UTC stamps of one fixed format sort as strings.
        let recent = s
            .alert_log
            .last(limit, |a| {
                since.is_none_or(|since| a["ts"].as_str().is_some_and(|t| t >= since))
            })
            .map_err(internal)?;
        Ok(Json(recent))
    })
    .await
}

async fn explain(
    State(state): State<Shared>,
    UrlPath(target): UrlPath<String>,
) -> Result<Json<ExplainReport>, ApiError> {
    blocking(&state, move |s| {
        // `ip:198.18.0.2` (an address principal, as alerts name it) is the address.
        let ip: Option<std::net::IpAddr> =
            target.strip_prefix("ip:").unwrap_or(&target).parse().ok();
        let mut entries = Vec::new();
        let mut source = None;
        if let Some(ip) = ip {
            let maps = s.maps.lock().expect("maps lock");
            for kind in [ListKind::Allow, ListKind::Block, ListKind::Throttle] {
                for e in lists::list_covering(&maps, kind, ip)? {
                    entries.push((kind.as_str().to_owned(), e));
                }
            }
            let key = match crate::verdict::Target::from(ip).map_key() {
                crate::verdict::target::MapKey::Exact(k) => k,
                crate::verdict::target::MapKey::Prefix(_, k) => k,
            };
            let now = clock::monotonic_ns();
            source = maps
                .sources()
                .map_err(internal)?
                .into_iter()
                .find(|(k, _)| *k == key)
                .map(|(k, st)| SourceReport {
                    src_ip: lists::source_ip(&k).to_string(),
                    packets: st.packets,
                    bytes: st.bytes,
                    dropped: st.dropped,
                    last_seen_s_ago: now.saturating_sub(st.last_seen_ns) as f64 / 1e9,
                    pps: None,
                    bps: None,
                    verdict: lists::verdict_of(&maps, &k).to_owned(),
                });
        }
        let ip_text = ip.map(|ip| ip.to_string());
        let alerts = s
            .alert_log
            .last(20, |a| {
                a["src_ip"] == target.as_str()
                    || a["principal"] == target.as_str()
                    || ip_text.as_deref().is_some_and(|ip| a["src_ip"] == ip)
            })
            .map_err(internal)?;
        let now = clock::unix_s();
        let verdicts = s
            .verdict_log
            .live(now)
            .map_err(internal)?
            .0
            .into_iter()
            .filter(|v| {
                v.reason.contains(target.as_str())
                    || ip.is_some_and(|ip| {
                        v.target
                            .parse::<ipnet::IpNet>()
                            .is_ok_and(|n| n.contains(&ip))
                    })
            })
            .map(|v| serde_json::to_value(v).expect("serialisable"))
            .collect();
        let profile = s.analysis.as_ref().and_then(|a| {
            let wait = std::time::Duration::from_secs(1);
            a.profile(&target, wait)
                .or_else(|| ip.and_then(|ip| a.profile(&format!("ip:{ip}"), wait)))
        });
        Ok(Json(ExplainReport {
            target,
            entries,
            source,
            alerts,
            verdicts,
            profile,
        }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use axum::extract::FromRequest as _;

    use super::*;

    /// What the API answers for `text` sent as an add request's body.
    async fn answer(content_type: &str, text: &'static str) -> (StatusCode, String) {
        let req = axum::http::Request::post("/v1/lists/block")
            .header("content-type", content_type)
            .body(axum::body::Body::from(text))
            .unwrap();
        let got = Json::<AddRequest>::from_request(req, &()).await;
        let e = body(got).map(|_| ()).expect_err("a bad body");
        let resp = e.into_response();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON error body");
        (status, v["error"].as_str().unwrap().to_owned())
    }

    /// What the API's body limit for lists of `max_targets` answers to an add request of
    /// `len` bytes: its status and JSON body.
    async fn answer_to_size(max_targets: usize, len: usize) -> (StatusCode, serde_json::Value) {
        use tower::ServiceExt as _;
        let echo = |req: Result<Json<AddRequest>, JsonRejection>| async move {
            body(req).map(|r| Json(serde_json::json!({ "targets": r.targets.len() })))
        };
        let app = limit_bodies(
            Router::new().route("/v1/lists/{kind}", post(echo)),
            max_targets,
        );
        // A valid request padded with spaces (JSON allows them) to `len` bytes.
        let mut text = serde_json::to_vec(&AddRequest {
            targets: vec!["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128".into(); max_targets],
            ..Default::default()
        })
        .unwrap();
        assert!(text.len() <= len, "{} bytes of JSON", text.len());
        text.resize(len, b' ');
        let req = axum::http::Request::post("/v1/lists/block")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(text))
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).expect("a JSON body"))
    }

    #[tokio::test]
    async fn bodies_past_the_limit_get_413_and_the_apis_json_error() {
        let limit = body_limit(1000);
        let (status, v) = answer_to_size(1000, limit + 1).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
        let e = v["error"].as_str().expect("an error message");
        assert!(e.contains("length limit"), "{e}");
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        // A body of the limit, the largest list's targets each as long as a target gets: read.
        let (status, v) = answer_to_size(1000, limit).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["targets"], 1000);
    }

    #[tokio::test]
    async fn bad_bodies_get_the_apis_json_errors() {
        let (status, e) = answer("application/json", "{\"targets\": [").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        let (status, e) = answer("application/json", "{\"targets\": 7}").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.contains("targets"), "{e}");
        let (status, _) = answer("text/plain", "{}").await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
