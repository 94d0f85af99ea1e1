//! Token revocation at the identity provider: OAuth 2.0 token revocation (RFC 7009: a form POST
//! of `token` and `token_type_hint`, with optional client credentials) or a generic JSON webhook.

use bytes::Bytes;
use serde::Deserialize;

use super::http::{PostError, RetryPolicy, post};
use crate::enrich::principal::percent_decode;

/// How to reach the identity provider. Its `Debug` leaves the client secret out.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RevokeConfig {
    /// Endpoint URL (http://).
    pub url: String,
    /// `rfc7009` (form) or `webhook` (JSON).
    #[serde(default)]
    pub style: RevokeStyle,
    /// OAuth client id sent with RFC 7009 requests.
    #[serde(default)]
    pub client_id: Option<String>,
    /// OAuth client secret sent with RFC 7009 requests.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// A file holding the client secret instead (a mounted Kubernetes Secret, a file only root
    /// reads), read when `sentinel run` starts (not by `sentinel replay`, which never revokes);
    /// trailing whitespace is dropped.
    #[serde(default)]
    pub client_secret_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for RevokeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevokeConfig")
            .field(
                "url",
                &super::http::parse_url(&self.url)
                    .map_or_else(|_| "?".into(), |u| super::http::shown(&u)),
            )
            .field("style", &self.style)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "(set)"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .finish()
    }
}

impl RevokeConfig {
    /// Checks what can be checked without reading files: the URL, and at most one of
    /// `client_secret` and `client_secret_file`.
    pub fn validate(&self) -> Result<(), String> {
        crate::notify::http::parse_url(&self.url).map_err(|e| format!("revoke.url: {e}"))?;
        if self.client_secret.is_some() && self.client_secret_file.is_some() {
            return Err("revoke: give client_secret or client_secret_file, not both".into());
        }
        Ok(())
    }

    /// Reads `client_secret_file` into `client_secret` (giving both is an error).
    pub fn resolve_secret(&mut self) -> Result<(), String> {
        self.validate()?;
        let Some(path) = &self.client_secret_file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("revoke.client_secret_file {}: {e}", path.display()))?;
        self.client_secret = Some(text.trim_end().to_owned());
        Ok(())
    }
}

/// Request style.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RevokeStyle {
    /// `application/x-www-form-urlencoded`, RFC 7009 section 2.1.
    #[default]
    Rfc7009,
    /// `application/json`: `{"token": ..., "principal": ..., "reason": ...}`.
    Webhook,
}

fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The request body and content type for a revocation.
pub fn request_body(
    cfg: &RevokeConfig,
    token: &str,
    principal: &str,
    reason: &str,
) -> (&'static str, Bytes) {
    match cfg.style {
        RevokeStyle::Rfc7009 => {
            let mut body = format!("token={}&token_type_hint=access_token", form_escape(token));
            if let Some(id) = &cfg.client_id {
                body.push_str(&format!("&client_id={}", form_escape(id)));
            }
            if let Some(secret) = &cfg.client_secret {
                body.push_str(&format!("&client_secret={}", form_escape(secret)));
            }
            ("application/x-www-form-urlencoded", Bytes::from(body))
        }
        RevokeStyle::Webhook => {
            let v = serde_json::json!({"token": token, "principal": principal, "reason": reason});
            ("application/json", Bytes::from(v.to_string()))
        }
    }
}

/// Asks the identity provider to revoke `token`.
pub async fn revoke(
    cfg: &RevokeConfig,
    token: &str,
    principal: &str,
    reason: &str,
    retry: RetryPolicy,
) -> Result<u16, PostError> {
    let (ctype, body) = request_body(cfg, token, principal, reason);
    post(&cfg.url, ctype, body, retry).await
}

/// Decodes a form body back into pairs (for tests and test receivers).
pub fn parse_form(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_can_come_from_a_file_and_is_never_shown() {
        let dir = crate::lab::TempDir::new("sentinel-revoke-secret").unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "s3cr3t-from-file\n").unwrap();
        let mut cfg = RevokeConfig {
            url: "http://idp.test:8081/oauth2/revoke?key=PATHSECRET".into(),
            style: RevokeStyle::Rfc7009,
            client_id: Some("sentinel".into()),
            client_secret: None,
            client_secret_file: Some(file.clone()),
        };
        cfg.resolve_secret().unwrap();
        assert_eq!(cfg.client_secret.as_deref(), Some("s3cr3t-from-file"));
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("PATHSECRET"),
            "{shown}"
        );
        assert!(shown.contains("http://idp.test:8081"), "{shown}");
        // Both given: an error; a missing file: an error naming it.
        assert!(cfg.resolve_secret().unwrap_err().contains("not both"));
        cfg.client_secret = None;
        cfg.client_secret_file = Some(dir.join("none"));
        assert!(
            cfg.resolve_secret()
                .unwrap_err()
                .contains("client_secret_file")
        );
    }

    #[test]
    fn rfc7009_form_round_trips() {
        let cfg = RevokeConfig {
            url: "http://127.0.0.1/revoke".into(),
            style: RevokeStyle::Rfc7009,
            client_id: Some("sentinel".into()),
            client_secret: Some("s3cr&t".into()),
            client_secret_file: None,
        };
        let (ct, body) = request_body(&cfg, "eyJ.a+b/c=", "jwt:layla", "brute_force");
        assert_eq!(ct, "application/x-www-form-urlencoded");
        let pairs = parse_form(std::str::from_utf8(&body).unwrap());
        assert_eq!(pairs[0], ("token".into(), "eyJ.a+b/c=".into()));
        assert_eq!(pairs[1], ("token_type_hint".into(), "access_token".into()));
        assert_eq!(pairs[3], ("client_secret".into(), "s3cr&t".into()));
    }

    #[test]
    fn webhook_is_json() {
        let cfg = RevokeConfig {
            url: "http://127.0.0.1/hook".into(),
            style: RevokeStyle::Webhook,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
        };
        let (ct, body) = request_body(&cfg, "t", "jwt:layla", "impossible_travel");
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["principal"], "jwt:layla");
    }
}
