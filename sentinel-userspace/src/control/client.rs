//! The CLI's side of the control API.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};

use super::api::ErrorBody;

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket cannot be reached.
    #[error(
        "cannot reach the sentinel daemon at {path}: {source} (is `sentinel run` running? see --socket)"
    )]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The daemon rejected the request (bad input).
    #[error("{0}")]
    Rejected(String),
    /// The daemon failed.
    #[error("daemon error: {0}")]
    Daemon(String),
    /// Transport failure.
    #[error("control API: {0}")]
    Transport(String),
}

/// A client bound to a socket path.
pub struct Client {
    path: PathBuf,
}

impl Client {
    /// A client for the daemon at `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.path)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.path.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "sentinel")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Transport(e.to_string()))
        } else {
            let msg = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            if status.is_client_error() && status != StatusCode::NOT_FOUND {
                Err(ClientError::Rejected(msg))
            } else {
                Err(ClientError::Daemon(msg))
            }
        }
    }

    /// GET a resource.
    pub async fn get<T: DeserializeOwned>(&self, uri: &str) -> Result<T, ClientError> {
        self.call(Method::GET, uri, None).await
    }

    /// POST a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        uri: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Transport(e.to_string()))?;
        self.call(Method::POST, uri, Some(body)).await
    }
}
