//! What never leaves Sentinel in clear: the values of fields named like secrets (passwords,
//! tokens, keys, one-time codes), which alerts and the transaction log show as their length and
//! short hash.

use std::borrow::Cow;

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
    let last = name.rsplit(['.', '[']).next().unwrap_or(name);
    let last = last.trim_end_matches(']').as_bytes();
    let has = |p: &str| {
        last.windows(p.len())
            .any(|w| w.eq_ignore_ascii_case(p.as_bytes()))
    };
    PARTS.iter().any(|p| has(p))
        || WHOLE
            .iter()
            .any(|w| last.eq_ignore_ascii_case(w.as_bytes()))
}

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
/// decoded by `name`, is a [`secret_name`] redacted; borrowed when there is none. Fields are
/// separated by `&` or `;` (which older CGI libraries, Python's before 3.9.2 and Go's before 1.17
/// read as `&`), and each separator is kept as it was.
pub fn pairs<'a>(raw: &'a str, name: impl Fn(&str) -> Cow<'_, str>) -> Cow<'a, str> {
    const SEPARATORS: [char; 2] = ['&', ';'];
    let secret = |p: &str| {
        p.split_once('=')
            .is_some_and(|(k, _)| secret_name(&name(k)))
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
/// as a server reads them (`access%5Ftoken` is `access_token`).
pub fn query(raw: &str) -> Cow<'_, str> {
    pairs(raw, |k| {
        if k.contains(['%', '+']) {
            Cow::Owned(crate::enrich::principal::percent_decode(k))
        } else {
            Cow::Borrowed(k)
        }
    })
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
            let shown = query(&raw);
            assert!(!shown.contains(tok), "{shown}");
            assert!(
                shown.contains(&crate::enrich::principal::short_hash(tok)),
                "{shown}"
            );
        }
        // A presigned URL's signature is what grants the access.
        let shown = query("X-Amz-Expires=300&X-Amz-Signature=5d672d79c15b13162d9279b0855cfba6");
        assert!(!shown.contains("5d672d79"), "{shown}");
        assert!(matches!(
            query("page=2&q=shoes"),
            Cow::Borrowed("page=2&q=shoes")
        ));
        assert_eq!(
            query("a=1&password=x&b"),
            format!("a=1&password={}&b", redacted("x"))
        );
        // `;` separates fields for servers that read it as `&`; separators are kept.
        assert_eq!(
            query("user=layla;password=hunter2&x=1;"),
            format!("user=layla;password={}&x=1;", redacted("hunter2"))
        );
    }
}
