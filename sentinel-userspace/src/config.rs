//! The daemon's configuration file (TOML). Every field has a documented default; unknown keys are
//! rejected so that a typo is an error, not a silently ignored setting.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{datapath::MapSizes, enrich::pipeline::EnrichSettings, notify::revoke::RevokeConfig};

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kernel map sizes.
    pub maps: MapSizes,
    /// HTTP capture.
    pub capture: CaptureSettings,
    /// Enrichment (login failure markers, trusted proxies).
    pub enrich: EnrichSettings,
    /// GeoIP databases.
    pub geoip: GeoSettings,
    /// Where alerts go.
    pub alerts: AlertSettings,
    /// The response policy and the verdict log.
    pub verdicts: VerdictSettings,
    /// Token revocation at the identity provider (none: `revoke_token` verdicts only alert).
    pub revoke: Option<RevokeConfig>,
    /// The detection models.
    pub models: crate::models::ModelsConfig,
    /// Prometheus metrics.
    pub metrics: MetricsSettings,
}

/// `[metrics]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Address serving `GET /metrics` (e.g. `127.0.0.1:9464`); none: no metrics endpoint.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[geoip]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GeoSettings {
    /// `.mmdb` files (MaxMind City or DB-IP City Lite layout), searched in order.
    pub files: Vec<PathBuf>,
}

/// `[alerts]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    /// JSON-lines alert log.
    pub log: PathBuf,
    /// Also print each alert to stdout.
    pub stdout: bool,
    /// Webhook receiving each alert as a JSON body (http://).
    pub webhook: Option<String>,
    /// The log is rotated past this size: renamed with `.1` (replacing the previous one), and
    /// a new one started. Default 64 MiB.
    pub rotate_bytes: u64,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            log: PathBuf::from("/var/lib/sentinel/alerts.jsonl"),
            stdout: false,
            webhook: None,
            rotate_bytes: crate::notify::alerts::ROTATE_BYTES,
        }
    }
}

/// `[verdicts]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct VerdictSettings {
    /// Policy file (TOML); none: the built-in default policy.
    pub policy: Option<PathBuf>,
    /// JSON-lines verdict log, replayed on start.
    pub log: PathBuf,
}

impl Default for VerdictSettings {
    fn default() -> Self {
        Self {
            policy: None,
            log: PathBuf::from("/var/lib/sentinel/verdicts.jsonl"),
        }
    }
}

/// `[capture]`: what the TC programs copy to userspace.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSettings {
    /// TCP ports carrying HTTP (either side of a connection); empty: no capture.
    pub http_ports: Vec<u16>,
    /// Payload bytes copied per segment (1..=8192).
    pub snap_len: u32,
    /// Ring buffer size in bytes (a power of two, at least 4096).
    pub ring_bytes: u32,
    /// Write every HTTP transaction the pipeline builds to this JSON-lines file (the format of
    /// `sentinel replay --emit transactions`).
    pub transactions_log: Option<PathBuf>,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        Self {
            http_ports: Vec::new(),
            snap_len: sentinel_common::DEFAULT_SNAP_LEN,
            ring_bytes: sentinel_common::DEFAULT_RING_BYTES,
            transactions_log: None,
        }
    }
}

impl CaptureSettings {
    /// Checks the values the kernel depends on.
    pub fn validate(&self) -> Result<(), String> {
        if self.snap_len == 0 || self.snap_len > sentinel_common::MAX_SNAP_LEN {
            return Err(format!(
                "capture.snap_len must be between 1 and {}, got {}",
                sentinel_common::MAX_SNAP_LEN,
                self.snap_len
            ));
        }
        if self.ring_bytes < 4096 || !self.ring_bytes.is_power_of_two() {
            return Err(format!(
                "capture.ring_bytes must be a power of two of at least 4096, got {}",
                self.ring_bytes
            ));
        }
        if self.http_ports.contains(&0) {
            return Err("capture.http_ports cannot contain port 0".into());
        }
        Ok(())
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// File.
        path: String,
        /// What is wrong and where (line, column).
        message: String,
    },
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// What only `sentinel run` needs read from other files: `[revoke] client_secret_file`
    /// (so that `sentinel replay` takes the daemon's configuration where the secret is not
    /// mounted).
    pub fn resolve_secrets(&mut self) -> Result<(), String> {
        match &mut self.revoke {
            Some(r) => r.resolve_secret(),
            None => Ok(()),
        }
    }

    /// Parses and validates configuration text (files it names are read by
    /// [`Config::resolve_secrets`]). A value out of range is reported with the line of its key,
    /// as the parser reports a syntax error or a value of the wrong type.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| match toml_error(text, &e) {
            (Some((line, column)), message) => format!("line {line}, column {column}: {message}"),
            (None, message) => message,
        })?;
        cfg.validate().map_err(|e| match key_line(text, &e) {
            Some(line) => format!("line {line}: {e}"),
            None => e,
        })?;
        Ok(cfg)
    }

    /// The checks after deserialisation; each error starts with the dotted key it is about.
    fn validate(&self) -> Result<(), String> {
        let cfg = self;
        let m = &cfg.maps;
        for (name, v) in [
            ("maps.sources", m.sources),
            ("maps.block_exact", m.block_exact),
            ("maps.allow_exact", m.allow_exact),
            ("maps.prefixes", m.prefixes),
            ("maps.throttles", m.throttles),
            ("maps.buckets", m.buckets),
            ("maps.flows", m.flows),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        cfg.capture.validate()?;
        if cfg.alerts.rotate_bytes < 4096 {
            return Err("alerts.rotate_bytes: at least 4096".into());
        }
        if let Some(url) = &cfg.alerts.webhook {
            crate::notify::http::parse_url(url).map_err(|e| format!("alerts.webhook: {e}"))?;
        }
        if let Some(r) = &cfg.revoke {
            r.validate()?;
        }
        crate::enrich::pipeline::Enricher::new(None, &cfg.enrich)?;
        cfg.models.validate().map_err(|e| e.to_string())
    }
}

/// The line (from 1) of the key a validation message starts with (`maps.flows must ...`,
/// `models.rate.k: ...`), or of the nearest enclosing table the document names when the key
/// itself is not in it (a default that conflicts with another key).
fn key_line(text: &str, message: &str) -> Option<usize> {
    let path = message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .next()?
        .trim_end_matches('.');
    let path: Vec<TomlStep> = path.split('.').map(TomlStep::Key).collect();
    toml_line(text, &path)
}

/// A TOML parse error as its place, line and column (from 1, the column in characters), and
/// its message on one line: the parser's own rendering quotes the line over several.
pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> (Option<(usize, usize)>, String) {
    let place = e.span().and_then(|span| {
        let before = text.get(..span.start)?;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Some((
            before.matches('\n').count() + 1,
            before[line_start..].chars().count() + 1,
        ))
    });
    let message: Vec<&str> = e.message().lines().map(str::trim).collect();
    (place, message.join("; "))
}

/// One step of a path into a TOML document.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TomlStep<'a> {
    /// A key of a table or inline table.
    Key(&'a str),
    /// An element of an array, or a table of an array of tables (`[[rule]]`).
    Index(usize),
}

/// Where a TOML document's parser put an item, read through [`toml_line`].
enum TomlNode<'a> {
    Table(&'a dyn toml_edit::TableLike),
    Tables(&'a toml_edit::ArrayOfTables),
    Array(&'a toml_edit::Array),
    Leaf,
}

impl<'a> TomlNode<'a> {
    fn of_item(item: &'a toml_edit::Item) -> Self {
        if let Some(t) = item.as_table_like() {
            Self::Table(t)
        } else if let Some(a) = item.as_array_of_tables() {
            Self::Tables(a)
        } else if let Some(a) = item.as_array() {
            Self::Array(a)
        } else {
            Self::Leaf
        }
    }

    fn of_value(value: &'a toml_edit::Value) -> Self {
        match value {
            toml_edit::Value::InlineTable(t) => Self::Table(t),
            toml_edit::Value::Array(a) => Self::Array(a),
            _ => Self::Leaf,
        }
    }
}

/// The line (from 1) where `text` has the deepest part of `path` it holds: the key, the array
/// element, or the `[[table]]` header an index names (so the nearest enclosing one when the
/// last steps are absent, e.g. a default). From the parser's spans, so a key's name written in a
/// comment or a value earlier does not count. `None` when the text does not parse or has not
/// even the first step.
pub(crate) fn toml_line(text: &str, path: &[TomlStep]) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut node = TomlNode::Table(doc.as_table());
    let mut at = None;
    for step in path {
        let (span, next) = match (node, *step) {
            (TomlNode::Table(t), TomlStep::Key(k)) => {
                let Some((key, item)) = t.get_key_value(k) else {
                    break;
                };
                (key.span().or_else(|| item.span()), TomlNode::of_item(item))
            }
            (TomlNode::Tables(a), TomlStep::Index(i)) => {
                let Some(t) = a.get(i) else { break };
                (t.span(), TomlNode::Table(t))
            }
            (TomlNode::Array(a), TomlStep::Index(i)) => {
                let Some(v) = a.get(i) else { break };
                (v.span(), TomlNode::of_value(v))
            }
            _ => break,
        };
        at = span.map(|s| s.start).or(at);
        node = next;
    }
    Some(text[..at?].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_is_valid_and_says_the_defaults() {
        let example = include_str!("../../deploy/sentinel.toml");
        assert_eq!(Config::parse(example).unwrap(), Config::default());
        let policy = include_str!("../../deploy/policy.toml");
        crate::verdict::policy::Policy::parse(policy).unwrap();
    }

    /// The dotted paths of every key below `prefix` that holds a value, read from serde's own
    /// complaint about a key no table has (every table denies unknown keys, so it lists its
    /// fields).
    fn leaf_keys(prefix: &str, out: &mut Vec<String>) {
        const PROBE: &str = "no_such_key_";
        let doc = match prefix {
            "" => format!("{PROBE} = 0\n"),
            p => format!("[{p}]\n{PROBE} = 0\n"),
        };
        let e = toml::from_str::<Config>(&doc)
            .expect_err("a table that accepts any key cannot be listed: deny unknown keys");
        let Some(fields) = e
            .message()
            .strip_prefix(&format!("unknown field `{PROBE}`, "))
        else {
            // Not a table (a number, a string, a list): a key of its own.
            out.push(prefix.to_owned());
            return;
        };
        for field in fields.split('`').skip(1).step_by(2) {
            match prefix {
                "" => leaf_keys(field, out),
                p => leaf_keys(&format!("{p}.{field}"), out),
            }
        }
    }

    /// Whether `doc` sets the dotted `path`.
    fn sets(doc: &toml_edit::Item, path: &str) -> bool {
        let mut item = doc;
        path.split('.').all(|k| match item.get(k) {
            Some(i) => {
                item = i;
                true
            }
            None => false,
        })
    }

    #[test]
    fn the_documented_example_names_every_key() {
        let example = include_str!("../../deploy/sentinel.toml");
        // The keys without a default value (`webhook`, `[revoke]`) are shown commented out:
        // read them too, and check that they are valid as shown.
        let uncommented: String = example
            .lines()
            .map(|l| {
                let bare = l.trim_start().trim_start_matches('#').trim_start();
                let is_key = bare.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                });
                let is_table = bare.starts_with('[') && bare.ends_with(']');
                match l.trim_start().starts_with('#') && (is_key || is_table) {
                    true => format!("{bare}\n"),
                    false => format!("{l}\n"),
                }
            })
            .collect();
        toml::from_str::<Config>(&uncommented)
            .unwrap_or_else(|e| panic!("the example's commented-out keys: {e}"));
        let shown = toml_edit::ImDocument::parse(uncommented).unwrap();
        let mut keys = Vec::new();
        leaf_keys("", &mut keys);
        assert!(keys.len() > 100, "the key listing broke: {keys:?}");
        assert!(keys.contains(&"models.rate.burst_factor".to_owned()));
        let missing: Vec<&String> = keys.iter().filter(|k| !sets(shown.as_item(), k)).collect();
        assert!(
            missing.is_empty(),
            "deploy/sentinel.toml leaves out {missing:?}"
        );
        // What is set, not commented out, is the default: the whole of `[models]`, which has
        // no key without one.
        let set = toml_edit::ImDocument::parse(example).unwrap();
        let models = toml::Value::try_from(crate::models::ModelsConfig::default()).unwrap();
        let mut leaves = Vec::new();
        flatten("models", &models, &mut leaves);
        let commented: Vec<&String> = leaves.iter().filter(|k| !sets(set.as_item(), k)).collect();
        assert!(
            commented.is_empty(),
            "commented out, not set: {commented:?}"
        );
    }

    /// The dotted paths of the values below `v`.
    fn flatten(path: &str, v: &toml::Value, out: &mut Vec<String>) {
        match v.as_table() {
            Some(t) => t
                .iter()
                .for_each(|(k, v)| flatten(&format!("{path}.{k}"), v, out)),
            None => out.push(path.to_owned()),
        }
    }

    #[test]
    fn metrics_listen_is_read() {
        let c = Config::parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        let e = Config::parse("[metrics]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn the_revoke_secret_file_is_read_only_when_asked() {
        let dir = crate::lab::TempDir::new("sentinel-config-secret").unwrap();
        let file = dir.join("client_secret");
        let text = format!(
            "[revoke]\nurl = \"http://idp.test/revoke\"\nclient_secret_file = {:?}\n",
            file.display().to_string()
        );
        // Not mounted (replay on another machine): the configuration is still valid...
        let mut cfg = Config::parse(&text).unwrap();
        // ...and `run`, which revokes, says what is missing.
        let e = cfg.resolve_secrets().unwrap_err();
        assert!(
            e.contains("client_secret_file") && e.contains("client_secret"),
            "{e}"
        );
        std::fs::write(&file, "from-the-secret\n").unwrap();
        cfg.resolve_secrets().unwrap();
        let r = cfg.revoke.as_ref().unwrap();
        assert_eq!(r.client_secret.as_deref(), Some("from-the-secret"));
        // Both ways at once is a mistake in the file itself.
        let both = format!("{text}client_secret = \"inline\"\n");
        assert!(Config::parse(&both).unwrap_err().contains("not both"));
    }

    #[test]
    fn empty_config_is_all_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn capture_settings_are_read() {
        let c = Config::parse("[capture]\nhttp_ports = [80, 8080]\nsnap_len = 512\n").unwrap();
        assert_eq!(c.capture.http_ports, vec![80, 8080]);
        assert_eq!(c.capture.snap_len, 512);
    }

    #[test]
    fn sizes_are_read() {
        let c = Config::parse("[maps]\nsources = 1024\nblock_exact = 2000000\n").unwrap();
        assert_eq!(c.maps.sources, 1024);
        assert_eq!(c.maps.block_exact, 2_000_000);
        assert_eq!(c.maps.buckets, MapSizes::default().buckets);
    }

    #[test]
    fn mistakes_are_reported_with_their_place() {
        let e = Config::parse("[maps]\nsourcez = 1\n").unwrap_err();
        assert!(e.contains("sourcez") && e.contains("line 2"), "{e}");
        let e = Config::parse("[maps]\nsources = -1\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = Config::parse("[maps]\nflows = 0\n").unwrap_err();
        assert!(e.contains("maps.flows"), "{e}");
        let e = Config::parse("[capture]\nsnap_len = 100000\n").unwrap_err();
        assert!(e.contains("capture.snap_len"), "{e}");
        let e = Config::parse("[capture]\nring_bytes = 5000\n").unwrap_err();
        assert!(e.contains("power of two"), "{e}");
        let e = Config::parse("[capture]\nhttp_ports = [80, 70000]\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn syntax_and_type_errors_are_one_line_with_their_place() {
        for (text, want) in [
            (
                "[maps]\nsources = \"many\"\n",
                "line 2, column 11: invalid type: string \"many\", expected u32",
            ),
            ("[maps\n", "line 1, column 6: "),
            ("# é\n[alerts]\nstdout = yes\n", "line 3, column 10: "),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
            assert!(!e.contains(" | "), "no quoted source line: {e}");
        }
    }

    #[test]
    fn values_out_of_range_are_reported_with_their_line() {
        for (text, want) in [
            ("[maps]\nflows = 5\nsources = 0\n", "line 3: maps.sources"),
            (
                "# sizes\n\n[maps]\n\nprefixes = 0\n",
                "line 5: maps.prefixes",
            ),
            // Dotted keys and inline tables point at their own line too.
            ("maps.buckets = 0\n", "line 1: maps.buckets"),
            (
                "[alerts]\nstdout = true\n\n[capture]\nsnap_len = 0\n",
                "line 5: capture.snap_len",
            ),
            (
                "# capture\ncapture = { http_ports = [80], ring_bytes = 5000 }\n",
                "line 2: capture.ring_bytes",
            ),
            (
                "[alerts]\nrotate_bytes = 10\n",
                "line 2: alerts.rotate_bytes",
            ),
            (
                "[alerts]\nwebhook = \"ftp://x\"\n",
                "line 2: alerts.webhook",
            ),
            // A model's setting, two tables down.
            (
                "[models]\nidle_s = 60\n[models.behavior]\nalpha = 2.0\n",
                "line 4: models.behavior.alpha",
            ),
            (
                "[models.rate]\n\n[models.behavior]\ntrees = 0\n",
                "line 4: models.behavior.trees",
            ),
            // Two keys that conflict: the line of their table.
            (
                "[alerts]\nstdout = true\n[revoke]\nurl = \"http://idp.test/r\"\nclient_secret = \"a\"\nclient_secret_file = \"/b\"\n",
                "line 3: revoke: give client_secret or client_secret_file, not both",
            ),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }
}
