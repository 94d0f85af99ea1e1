//! Alert sinks: JSON lines to a file and stdout, and a webhook (the alert JSON as body, retried).

use std::{
    fs::OpenOptions,
    io::Write as _,
    path::{Path, PathBuf},
};

use bytes::Bytes;

use super::http::{PostError, RetryPolicy, post};
use crate::models::Alert;

/// Appends alerts to a JSON-lines file (and optionally echoes them to stdout).
pub struct AlertLog {
    path: PathBuf,
    echo: bool,
}

impl AlertLog {
    /// A log at `path`; `echo` also prints each line to stdout.
    pub fn new(path: impl Into<PathBuf>, echo: bool) -> Self {
        Self {
            path: path.into(),
            echo,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one alert as one line.
    pub fn write(&self, alert: &Alert) -> std::io::Result<()> {
        let line = serde_json::to_string(alert).map_err(std::io::Error::other)?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(line.as_bytes())?;
        f.write_all(b"\n")?;
        if self.echo {
            println!("{line}");
        }
        Ok(())
    }

    /// Alerts in the log, oldest first; lines that do not parse are skipped.
    pub fn read_all(&self) -> std::io::Result<Vec<serde_json::Value>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

/// Sends one alert to a webhook.
pub async fn send_webhook(url: &str, alert: &Alert, retry: RetryPolicy) -> Result<u16, PostError> {
    let body = serde_json::to_vec(alert).map_err(|e| PostError::Url(e.to_string()))?;
    post(url, "application/json", Bytes::from(body), retry).await
}
