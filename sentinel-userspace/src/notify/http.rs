//! A small HTTP/1.1 POST client with a timeout and retries, for webhooks and token revocation.
//! Plain `http://` only: TLS termination is expected from a local relay or sidecar.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;

/// Why a POST failed after its retries.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The URL is not a usable `http://` URL.
    #[error("{0}")]
    Url(String),
    /// Every attempt failed; the last reason.
    #[error("POST {url} failed after {attempts} attempt(s): {last}")]
    Failed {
        /// Target.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Last error or status.
        last: String,
    },
}

/// Retry and timeout settings.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Timeout of one attempt (connect + response).
    pub timeout: Duration,
    /// Delay before the second attempt; doubles each time.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            timeout: Duration::from_secs(2),
            backoff: Duration::from_millis(200),
        }
    }
}

/// Checks that `url` is an `http://host[:port]/path` URL.
pub fn parse_url(url: &str) -> Result<Uri, PostError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| PostError::Url(format!("{url:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(PostError::Url(format!(
                "{url:?}: only http:// is supported (got {other}://); terminate TLS in a local relay"
            )));
        }
        None => {
            return Err(PostError::Url(format!(
                "{url:?} has no scheme (http://...)"
            )));
        }
    }
    if uri.host().is_none() {
        return Err(PostError::Url(format!("{url:?} has no host")));
    }
    Ok(uri)
}

async fn post_once(uri: &Uri, content_type: &str, body: &Bytes) -> Result<u16, String> {
    let host = uri.host().ok_or("no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::post(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", host_port(uri))
        .header("content-type", content_type)
        .header(
            "user-agent",
            concat!("sentinel/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body.clone()))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    // Drain the body so the connection closes cleanly.
    let _ = resp.into_body().collect().await;
    Ok(status)
}

/// `host[:port]` of a URL, without any `user:password@` (which must not travel in a header).
fn host_port(uri: &Uri) -> String {
    let host = uri.host().unwrap_or("");
    match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

/// A URL as errors and alerts show it: `http://host[:port]` only. A webhook's path or query
/// often is its secret (a chat service's hook token), and alerts about failures travel to the
/// alert log and the webhook.
pub fn shown(uri: &Uri) -> String {
    format!("http://{}", host_port(uri))
}

/// POSTs `body`, retrying on connection errors, timeouts and 5xx/429 answers. Returns the final
/// status (2xx, or a 4xx that retrying would not fix).
pub async fn post(
    url: &str,
    content_type: &str,
    body: Bytes,
    retry: RetryPolicy,
) -> Result<u16, PostError> {
    let uri = parse_url(url)?;
    let attempts = retry.attempts.max(1);
    let mut delay = retry.backoff;
    let mut last = String::new();
    for attempt in 1..=attempts {
        match tokio::time::timeout(retry.timeout, post_once(&uri, content_type, &body)).await {
            Ok(Ok(s)) if (200..300).contains(&s) => return Ok(s),
            Ok(Ok(s)) if s == 429 || s >= 500 => last = format!("HTTP {s}"),
            Ok(Ok(s)) => {
                return Err(PostError::Failed {
                    url: shown(&uri),
                    attempts: attempt,
                    last: format!("HTTP {s}"),
                });
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("timed out after {:?}", retry.timeout),
        }
        if attempt < attempts {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    Err(PostError::Failed {
        url: shown(&uri),
        attempts,
        last,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    /// A loopback server answering with the given statuses in turn; counts requests.
    async fn server(statuses: Vec<u16>) -> (String, Arc<AtomicU32>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for status in statuses {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                h.fetch_add(1, Ordering::SeqCst);
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (format!("http://{addr}/hook"), hits)
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            timeout: Duration::from_secs(2),
            backoff: Duration::from_millis(10),
        }
    }

    #[tokio::test]
    async fn retries_server_errors_then_succeeds() {
        let (url, hits) = server(vec![503, 500, 200]).await;
        assert_eq!(
            post(&url, "application/json", Bytes::from_static(b"{}"), fast())
                .await
                .unwrap(),
            200
        );
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let (url, hits) = server(vec![400, 200]).await;
        let e = post(&url, "application/json", Bytes::new(), fast())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("HTTP 400"), "{e}");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn unreachable_targets_fail_after_the_retries() {
        // Port 9 on loopback: nothing listens.
        let e = post("http://127.0.0.1:9/x", "text/plain", Bytes::new(), fast())
            .await
            .unwrap_err();
        assert!(matches!(e, PostError::Failed { attempts: 3, .. }), "{e}");
    }

    #[tokio::test]
    async fn failures_name_the_host_only_and_no_credentials_travel_in_the_host_header() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let _ = s
                .write_all(b"HTTP/1.1 403 X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let url = format!("http://bot:pw@{addr}/services/T0/B0/SECRETHOOK?token=SECRETQ");
        let e = post(&url, "application/json", Bytes::new(), fast())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("http://{addr}")) && e.contains("HTTP 403"),
            "{e}"
        );
        for secret in ["SECRETHOOK", "SECRETQ", "pw"] {
            assert!(!e.contains(secret), "{e}");
        }
        let request = seen.await.unwrap().to_ascii_lowercase();
        assert!(request.contains(&format!("host: {addr}\r\n")), "{request}");
        assert!(!request.contains("bot:pw"), "{request}");
    }

    #[test]
    fn urls_are_checked() {
        assert!(parse_url("https://idp.example/revoke").is_err());
        assert!(parse_url("idp/revoke").is_err());
        assert!(parse_url("http://127.0.0.1:8080/revoke").is_ok());
    }
}
