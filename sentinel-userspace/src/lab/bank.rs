//! A demo banking API (HTTP/1.1, JSON) for the root tests, benchmarks and the demo: login,
//! balance, transfer, accounts, plus endpoints that exercise the capture pipeline (large,
//! chunked and empty bodies, uploads). It runs inside a network namespace on its own thread.
//!
//! Every request is recorded (arrival time, client address, method, path, status) in memory,
//! and optionally appended to an access log file in the Common Log Format, which log-based
//! tools such as fail2ban read.

use std::{
    collections::HashMap,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Path, Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::json;

use super::NetNs;

/// Users and passwords the demo bank knows.
pub const USERS: &[(&str, &str)] = &[
    ("alice", "correct horse"),
    ("bob", "battery staple"),
    ("layla", "riyadh-2024"),
    ("omar", "desert rose"),
    ("sara", "palm grove"),
    ("yusuf", "red sea"),
];

#[derive(Default)]
struct Bank {
    tokens: HashMap<String, String>,
    balances: HashMap<String, i64>,
}

type Shared = Arc<Mutex<Bank>>;

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// When the request reached the handler.
    pub at: SystemTime,
    /// Client address.
    pub client: IpAddr,
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Response status.
    pub status: u16,
}

/// Requests recorded at most in memory.
const MAX_ACCESSES: usize = 1_000_000;

#[derive(Clone, Default)]
struct AccessLog {
    entries: Arc<Mutex<Vec<Access>>>,
    file: Option<Arc<Mutex<std::fs::File>>>,
}

/// Common Log Format time: `28/Nov/2026:19:50:00 +0000`.
fn clf_time(at: SystemTime) -> String {
    let ns = crate::clock::unix_ns_at(at);
    // 2026-11-28T19:50:00.123Z
    let iso = crate::models::alert::rfc3339(ns);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month: usize = iso[5..7].parse().unwrap_or(1);
    format!(
        "{}/{}/{}:{} +0000",
        &iso[8..10],
        MONTHS[month.clamp(1, 12) - 1],
        &iso[0..4],
        &iso[11..19]
    )
}

async fn access_log(
    State(log): State<AccessLog>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let at = SystemTime::now();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    if let Some(f) = &log.file {
        let line = format!(
            "{} - - [{}] \"{method} {path} HTTP/1.1\" {status} -\n",
            client.ip(),
            clf_time(at)
        );
        let _ = f.lock().expect("log lock").write_all(line.as_bytes());
    }
    let mut e = log.entries.lock().expect("log lock");
    if e.len() < MAX_ACCESSES {
        e.push(Access {
            at,
            client: client.ip(),
            method,
            path,
            status,
        });
    }
    resp
}

/// A running bank server; stops when dropped.
pub struct BankServer {
    /// Where it listens.
    pub addr: SocketAddr,
    log: AccessLog,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<anyhow::Result<()>>>>,
}

impl BankServer {
    /// Starts the server on `addr` inside `ns`.
    pub fn start(ns: &NetNs, addr: SocketAddr) -> anyhow::Result<Self> {
        Self::start_logged(ns, addr, None)
    }

    /// Starts the server on `addr` inside `ns`, appending every request to `access_log` (Common
    /// Log Format) when given.
    pub fn start_logged(
        ns: &NetNs,
        addr: SocketAddr,
        access_log_file: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let bank: Shared = Arc::new(Mutex::new(Bank::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let log = AccessLog {
            entries: Arc::default(),
            file: match access_log_file {
                Some(p) => Some(Arc::new(Mutex::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&p)
                        .map_err(|e| anyhow::anyhow!("opening {}: {e}", p.display()))?,
                ))),
                None => None,
            },
        };
        let app = router(bank).layer(axum::middleware::from_fn_with_state(
            log.clone(),
            access_log,
        ));
        let thread = ns.spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Err(e.into());
                    }
                };
                let _ = ready_tx.send(Ok(()));
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await?;
                Ok(())
            })
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("bank server on {addr}: {e}"),
            Err(_) => anyhow::bail!("bank server on {addr} did not start"),
        }
        Ok(Self {
            addr,
            log,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl BankServer {
    /// Every request so far, in arrival order.
    pub fn accesses(&self) -> Vec<Access> {
        self.log.entries.lock().expect("log lock").clone()
    }
}

impl Drop for BankServer {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn router(bank: Shared) -> Router {
    Router::new()
        .route("/login", post(login))
        .route("/balance", get(balance))
        .route("/transfer", post(transfer))
        .route("/accounts/{id}", get(account))
        .route("/large", get(large))
        .route("/chunked", get(chunked))
        .route("/export", get(export))
        // Uploads exercise multi-megabyte requests: lift axum's 2 MB default for this route.
        .route(
            "/upload",
            post(upload).layer(axum::extract::DefaultBodyLimit::max(64 << 20)),
        )
        .route("/nocontent", get(|| async { StatusCode::NO_CONTENT }))
        .with_state(bank)
}

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

/// A form login (`username=...&password=...`, as a login page, or a tool such as hydra, sends
/// it) rather than the API's JSON.
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// A login body: JSON, or a form.
fn login_body(headers: &HeaderMap, body: &[u8]) -> Option<LoginBody> {
    if !is_form(headers) {
        return serde_json::from_slice(body).ok();
    }
    let pairs = crate::notify::revoke::parse_form(std::str::from_utf8(body).ok()?);
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    Some(LoginBody {
        username: field("username")?,
        password: field("password")?,
    })
}

async fn login(State(bank): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(req) = login_body(&headers, &body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "bad request"})),
        )
            .into_response();
    };
    let ok = USERS
        .iter()
        .any(|(u, p)| *u == req.username && *p == req.password);
    let mut b = bank.lock().expect("bank lock");
    if ok {
        let token = format!("tok-{}-{}", req.username, b.tokens.len() + 1);
        b.tokens.insert(token.clone(), req.username.clone());
        b.balances.entry(req.username).or_insert(10_000);
        (StatusCode::OK, Json(json!({"token": token}))).into_response()
    } else if is_form(&headers) {
        // A login page shows the form again with the error, as 200.
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            "<p class=\"error\">Login failed: invalid credentials</p><form method=\"post\">",
        )
            .into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid credentials"})),
        )
            .into_response()
    }
}

fn user_of(bank: &Shared, headers: &HeaderMap) -> Option<String> {
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    bank.lock().expect("bank lock").tokens.get(token).cloned()
}

async fn balance(State(bank): State<Shared>, headers: HeaderMap) -> Response {
    match user_of(&bank, &headers) {
        Some(u) => {
            let bal = *bank
                .lock()
                .expect("bank lock")
                .balances
                .get(&u)
                .unwrap_or(&0);
            Json(json!({"user": u, "balance": bal, "currency": "SAR"})).into_response()
        }
        None => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "no session"})),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct TransferBody {
    to: String,
    amount: i64,
}

async fn transfer(State(bank): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(user) = user_of(&bank, &headers) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "no session"})),
        )
            .into_response();
    };
    let Ok(t) = serde_json::from_slice::<TransferBody>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "bad request"})),
        )
            .into_response();
    };
    let mut b = bank.lock().expect("bank lock");
    let from = b.balances.entry(user).or_insert(0);
    if t.amount <= 0 || *from < t.amount {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "insufficient funds"})),
        )
            .into_response();
    }
    *from -= t.amount;
    *b.balances.entry(t.to.clone()).or_insert(0) += t.amount;
    Json(json!({"status": "ok", "to": t.to, "amount": t.amount})).into_response()
}

async fn account(Path(id): Path<u64>) -> Response {
    if id > 1_000_000 {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such account"})),
        )
            .into_response();
    }
    Json(json!({
        "id": id,
        "owner": format!("customer-{id}"),
        "iban": format!("SA03800000006080{:08}", id % 100_000_000),
        "balance": (id * 7919) % 100_000,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct SizeQuery {
    bytes: Option<usize>,
    chunks: Option<usize>,
    size: Option<usize>,
}

/// A body of exactly `bytes` bytes (at most 64 MiB) with Content-Length.
async fn large(Query(q): Query<SizeQuery>) -> Response {
    let n = q.bytes.unwrap_or(1 << 20).min(64 << 20);
    let body: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
    ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
}

/// `chunks` chunks of `size` bytes, streamed (chunked transfer encoding).
async fn chunked(Query(q): Query<SizeQuery>) -> Response {
    let chunks = q.chunks.unwrap_or(4).min(10_000);
    let size = q.size.unwrap_or(1000).min(1 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        for i in 0..chunks {
            let byte = b'0' + (i % 10) as u8;
            if tx.send(Ok(Bytes::from(vec![byte; size]))).await.is_err() {
                break;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("valid response")
}

#[derive(Deserialize)]
struct ExportQuery {
    rows: Option<usize>,
    #[serde(default)]
    leak: bool,
}

/// A statement export: `rows` transactions (at most 100000) as a JSON array of about 58 bytes a
/// row. With `leak`, the last row carries an AWS access key id, as a debugging field left in
/// an export would: a leak as deep in a large response as the rows make it.
async fn export(Query(q): Query<ExportQuery>) -> Response {
    let rows = q.rows.unwrap_or(100).min(100_000);
    let mut v: Vec<serde_json::Value> = (0..rows)
        .map(|i| json!({"id": i, "memo": "card payment, groceries", "amount": (i * 7919) % 10_000}))
        .collect();
    if q.leak
        && let Some(serde_json::Value::Object(last)) = v.last_mut()
    {
        last.insert("debug_key".into(), json!("AKIAIOSFODNN7EXAMPLE"));
    }
    Json(v).into_response()
}

/// Accepts a request body of any size and answers with its length.
async fn upload(body: Bytes) -> Response {
    Json(json!({"received": body.len()})).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn clf_time_is_common_log_format() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_867_200);
        assert_eq!(super::clf_time(t), "28/Nov/2026:12:00:00 +0000");
    }
}
