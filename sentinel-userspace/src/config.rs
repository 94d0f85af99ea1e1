//! The daemon's configuration file (TOML). Every field has a documented default; unknown keys are
//! rejected so that a typo is an error, not a silently ignored setting.

use std::path::Path;

use serde::Deserialize;

use crate::datapath::MapSizes;

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kernel map sizes.
    pub maps: MapSizes,
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

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))?;
        let m = &cfg.maps;
        for (name, v) in [
            ("maps.sources", m.sources),
            ("maps.exact", m.exact),
            ("maps.prefixes", m.prefixes),
            ("maps.throttles", m.throttles),
            ("maps.buckets", m.buckets),
            ("maps.flows", m.flows),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_all_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn sizes_are_read() {
        let c = Config::parse("[maps]\nsources = 1024\nexact = 2000000\n").unwrap();
        assert_eq!(c.maps.sources, 1024);
        assert_eq!(c.maps.exact, 2_000_000);
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
    }
}
