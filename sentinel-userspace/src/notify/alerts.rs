//! Alert sinks: JSON lines to a file and stdout, and a webhook (the alert JSON as body, retried).

use std::{
    fs::OpenOptions,
    io::Write as _,
    path::{Path, PathBuf},
};

use bytes::Bytes;

use super::http::{PostError, RetryPolicy, post};
use crate::models::Alert;

/// The size past which an alert log is rotated unless configured (`[alerts] rotate_bytes`).
pub const ROTATE_BYTES: u64 = 64 << 20;

/// Appends alerts to a JSON-lines file (and optionally echoes them to stdout). Past
/// `rotate_bytes` the file is renamed with `.1` (replacing the one before) and a new one starts,
/// so the log stays bounded and reading its end stays cheap.
pub struct AlertLog {
    path: PathBuf,
    echo: bool,
    rotate_bytes: u64,
}

impl AlertLog {
    /// A log at `path`; `echo` also prints each line to stdout. Rotated past [`ROTATE_BYTES`]
    /// (see [`AlertLog::rotated_past`]).
    pub fn new(path: impl Into<PathBuf>, echo: bool) -> Self {
        Self {
            path: path.into(),
            echo,
            rotate_bytes: ROTATE_BYTES,
        }
    }

    /// The same log, rotated past `bytes`.
    pub fn rotated_past(mut self, bytes: u64) -> Self {
        self.rotate_bytes = bytes;
        self
    }

    /// The previous log (`alerts.jsonl.1`).
    fn previous(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".1");
        p.into()
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
        if f.metadata()?.len() > self.rotate_bytes {
            std::fs::rename(&self.path, self.previous())?;
        }
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
        let mut out = std::collections::VecDeque::new();
        // The rotated log first (older), then the current one.
        for path in [self.previous(), self.path.clone()] {
            let f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
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

    #[test]
    fn the_log_rotates_past_its_size_and_reads_across_the_rotation() {
        let dir = crate::lab::TempDir::new("sentinel-alertlog-rotate").unwrap();
        let path = dir.join("alerts.jsonl");
        let log = AlertLog::new(&path, false).rotated_past(8 << 10);
        let alert = |i: u64| Alert {
            explanation: format!("alert {i}"),
            ..crate::models::synth::alert(crate::models::AlertKind::Scraping, "203.0.113.5", i)
        };
        for i in 0..200 {
            log.write(&alert(i)).unwrap();
        }
        // Bounded: the current file and one rotated file, each about the limit.
        let cur = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.join("alerts.jsonl.1")).unwrap().len();
        assert!(
            cur <= 8 << 10 && old > 8 << 10 && old < 10 << 10,
            "{cur} {old}"
        );
        // The last alerts read in order across the two files.
        let n = |v: &serde_json::Value| v["explanation"].as_str().unwrap().to_owned();
        let all = log.read_all().unwrap();
        assert_eq!(n(all.last().unwrap()), "alert 199");
        let per_file = all.len();
        assert!(per_file < 200, "older ones went with the rotation before");
        let last = log.last(per_file, |_| true).unwrap();
        let want: Vec<String> = (200 - per_file as u64..200)
            .map(|i| format!("alert {i}"))
            .collect();
        assert_eq!(last.iter().map(n).collect::<Vec<_>>(), want);
    }
}
