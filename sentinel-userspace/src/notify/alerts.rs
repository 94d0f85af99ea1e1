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
            // The log file has the alert: a closed or full stdout (a pipe whose reader went
            // away) must not stop the responder, as println!'s panic would.
            let mut out = std::io::stdout().lock();
            if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                tracing::debug!(error = %e, "alert not echoed to stdout");
            }
        }
        Ok(())
    }

    /// Alerts in the log, oldest first; lines that do not parse are skipped.
    pub fn read_all(&self) -> std::io::Result<Vec<serde_json::Value>> {
        self.last(usize::MAX, |_| true)
    }

    /// The last `limit` alerts that `keep` accepts, oldest first. The log is read line by line,
    /// so memory stays bounded by `limit` however long the log has grown; lines that do not
    /// parse (a torn last write) are skipped.
    pub fn last(
        &self,
        limit: usize,
        mut keep: impl FnMut(&serde_json::Value) -> bool,
    ) -> std::io::Result<Vec<serde_json::Value>> {
        use std::io::BufRead as _;
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = std::collections::VecDeque::new();
        for line in std::io::BufReader::new(f).split(b'\n') {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line?) else {
                continue;
            };
            if keep(&v) {
                if out.len() == limit {
                    out.pop_front();
                }
                if limit > 0 {
                    out.push_back(v);
                }
            }
        }
        Ok(out.into())
    }
}

/// Sends one alert to a webhook.
pub async fn send_webhook(url: &str, alert: &Alert, retry: RetryPolicy) -> Result<u16, PostError> {
    let body = serde_json::to_vec(alert).map_err(|e| PostError::Url(e.to_string()))?;
    post(url, "application/json", Bytes::from(body), retry).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_matching_alerts_are_read_line_by_line() {
        let dir = std::env::temp_dir().join(format!("sentinel-alertlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("alerts.jsonl");
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("{{\"n\":{i},\"even\":{}}}\n", i % 2 == 0));
        }
        text.push_str("{\"torn\":");
        std::fs::write(&path, text).unwrap();
        let log = AlertLog::new(&path, false);
        assert_eq!(log.read_all().unwrap().len(), 100);
        let last = log.last(3, |v| v["even"] == true).unwrap();
        let ns: Vec<_> = last.iter().map(|v| v["n"].as_u64().unwrap()).collect();
        assert_eq!(ns, vec![94, 96, 98]);
        assert!(log.last(0, |_| true).unwrap().is_empty());
        assert!(
            AlertLog::new(dir.join("none"), false)
                .read_all()
                .unwrap()
                .is_empty()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
