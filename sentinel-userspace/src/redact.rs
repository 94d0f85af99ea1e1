//! What never leaves Sentinel in clear: the values of fields named like secrets (passwords,
//! tokens, keys, one-time codes) or like a configured API key parameter (`[models]
//! api_key_params`), which alerts and the transaction log show as their length and short hash.

use std::borrow::Cow;

use crate::enrich::principal::{percent_decoded, same_field};

/// Names of fields that hold secrets (passwords, tokens, keys, one-time codes, the signatures
/// of presigned URLs), which alerts never quote: a password that trips the SQL check (`hunter2'--`) is still someone's password,
/// and a stuffing list's are real victims'. Matched case-insensitively, as a part of the name
/// (the last segment of a JSON path).
pub fn secret_name(name: &str) -> bool {
    const PARTS: [&str; 11] = [
        "pass",
        "pwd",
        "secret",
        "token",
        "apikey",
        "api_key",
        "api-key",
        "auth",
        "session",
        "credential",
        // What makes a presigned URL a capability: `X-Amz-Signature`, GCS `Signature`.
        "signature",
    ];
    // `sig`: an Azure SAS signature.
    const WHOLE: [&str; 7] = ["pin", "otp", "cvv", "cvc", "key", "jwt", "sig"];
    // Without a lower-case copy: the transaction log asks this of every query parameter.
    let last = last_segment(name).as_bytes();
    let has = |p: &str| {
        last.windows(p.len())
            .any(|w| w.eq_ignore_ascii_case(p.as_bytes()))
    };
    PARTS.iter().any(|p| has(p))
        || WHOLE
            .iter()
            .any(|w| last.eq_ignore_ascii_case(w.as_bytes()))
}

/// [`secret_name`], or one of `also` (the configured API key parameters, `[models]
/// api_key_params`) in any case and naming style ([`same_field`]: `appId` is `appid`), matched
/// as [`secret_name`] matches, on the last segment of a JSON path (`user[appid]`).
pub fn secret_param(name: &str, also: &[String]) -> bool {
    secret_name(name) || {
        let last = last_segment(name);
        also.iter().any(|a| same_field(last, a))
    }
}

/// The last segment of a JSON path or bracketed name (`user.password`, `user[password]`) that
/// names something: not empty, not an index (`key[]` and `key[0]` are `key`, as PHP, Rails and
/// Express's qs read them).
fn last_segment(name: &str) -> &str {
    name.rsplit(['.', '['])
        .map(|s| s.trim_end_matches(']'))
        .find(|s| !s.is_empty() && !s.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or(name)
}

/// What separates the fields of a query or form: `&`, or `;`, which older CGI libraries,
/// Python's before 3.9.2 and Go's before 1.17 read as `&`.
pub const SEPARATORS: [char; 2] = ['&', ';'];

/// What is shown of a secret value: its length and short hash (the same value gives the same
/// hash, so two records can be told apart or matched without the value).
pub fn redacted(value: &str) -> String {
    format!(
        "<redacted: {} chars, sha256 {}>",
        value.chars().count(),
        crate::enrich::principal::short_hash(value)
    )
}

/// `raw` (a query string or form body, still encoded) with the values of fields whose name,
/// decoded by `name`, is a [`secret_param`] (of `also`) redacted; borrowed when there is none.
/// Fields are separated by one of [`SEPARATORS`], and each separator is kept as it was.
pub fn pairs<'a>(
    raw: &'a str,
    name: impl Fn(&str) -> Cow<'_, str>,
    also: &[String],
) -> Cow<'a, str> {
    let secret = |p: &str| {
        p.split_once('=')
            .is_some_and(|(k, _)| secret_param(&name(k), also))
    };
    if !raw.split(SEPARATORS).any(secret) {
        return Cow::Borrowed(raw);
    }
    let mut shown = String::with_capacity(raw.len() + 64);
    for p in raw.split_inclusive(SEPARATORS) {
        let (p, sep) = match p.strip_suffix(SEPARATORS) {
            Some(field) => (field, &p[field.len()..]),
            None => (p, ""),
        };
        match p.split_once('=') {
            Some((k, v)) if secret(p) => {
                shown.push_str(k);
                shown.push('=');
                shown.push_str(&redacted(v));
            }
            _ => shown.push_str(p),
        }
        shown.push_str(sep);
    }
    Cow::Owned(shown)
}

/// A query string as the transaction log shows it: [`pairs`] with names percent-decoded once,
/// as a server reads them (`access%5Ftoken` is `access_token`), the values of `also` (the
/// configured API key parameters) redacted too.
pub fn query<'a>(raw: &'a str, also: &[String]) -> Cow<'a, str> {
    pairs(raw, percent_decoded, also)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        assert!(secret_name("password") && secret_name("user.Password") && secret_name("PIN"));
        assert!(secret_name("access_token") && secret_name("jwt") && secret_name("id_token"));
        assert!(secret_name("X-Amz-Signature") && secret_name("Signature") && secret_name("sig"));
        assert!(!secret_name("signup") && !secret_name("design"));
        assert!(!secret_name("q") && !secret_name("shipping") && !secret_name("keyword"));
    }

    #[test]
    fn the_transaction_log_shows_no_token_of_a_query() {
        let tok = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJsYXlsYSJ9.c2ln";
        for raw in [
            format!("a=1&access_token={tok}&b=2"),
            format!("access%5Ftoken={tok}"),
            format!("jwt={tok}"),
        ] {
            let shown = query(&raw, &[]);
            assert!(!shown.contains(tok), "{shown}");
            assert!(
                shown.contains(&crate::enrich::principal::short_hash(tok)),
                "{shown}"
            );
        }
        // A presigned URL's signature is what grants the access.
        let shown = query(
            "X-Amz-Expires=300&X-Amz-Signature=5d672d79c15b13162d9279b0855cfba6",
            &[],
        );
        assert!(!shown.contains("5d672d79"), "{shown}");
        assert!(matches!(
            query("page=2&q=shoes", &[]),
            Cow::Borrowed("page=2&q=shoes")
        ));
        assert_eq!(
            query("a=1&password=x&b", &[]),
            format!("a=1&password={}&b", redacted("x"))
        );
        // `;` separates fields for servers that read it as `&`; separators are kept.
        assert_eq!(
            query("user=layla;password=hunter2&x=1;", &[]),
            format!("user=layla;password={}&x=1;", redacted("hunter2"))
        );
    }

    #[test]
    fn bracketed_names_are_their_last_named_segment() {
        let key = "b1946ac92492d2347c6235b4d2611184";
        let also = crate::models::ModelsConfig::default().api_key_params;
        for raw in [
            format!("api_key[]={key}"),
            format!("key[0]={key}"),
            format!("password[]={key}"),
            format!("appid[]={key}"),
            format!("user[password][1]={key}"),
        ] {
            assert!(!query(&raw, &also).contains(key), "{raw}");
        }
        assert!(!secret_name("page[0]"));
    }

    #[test]
    fn api_keys_in_the_query_are_redacted_in_any_naming_style() {
        let key = "b1946ac92492d2347c6235b4d2611184";
        let hash = crate::enrich::principal::short_hash(key);
        // The default API key parameters (OpenWeather's `appid` among them), however written,
        // and a name configured instead, in another naming style.
        let defaults = crate::models::ModelsConfig::default().api_key_params;
        let custom = vec!["subscription-key".to_owned()];
        for (raw, also) in [
            (format!("q=London&appid={key}"), &defaults),
            (format!("APPID={key}"), &defaults),
            (format!("units=metric;app_Id={key};lang=en"), &defaults),
            (format!("api%2Dkey={key}"), &defaults),
            (format!("apiKey={key}"), &defaults),
            (format!("key={key}"), &defaults),
            (format!("subscriptionKey={key}&q=1"), &custom),
            (format!("Subscription_Key={key}"), &custom),
        ] {
            let shown = query(&raw, also);
            assert!(
                !shown.contains(key) && shown.contains(&hash),
                "{raw}: {shown}"
            );
        }
        assert_eq!(
            query("q=London&units=metric", &defaults),
            "q=London&units=metric"
        );
        // Not secret unless configured.
        let raw = format!("subscriptionKey={key}");
        assert!(query(&raw, &[]).contains(key));
        assert!(!pairs(&raw, |k: &str| Cow::Borrowed(k), &custom).contains(key));
    }
}
