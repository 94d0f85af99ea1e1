//! Cookies as browsers and servers read them: a `name=value` pair of a `Cookie` list or of a
//! `Set-Cookie` field, and whether a `Set-Cookie` field sets a cookie at all or deletes one
//! (RFC 6265 §5.2, with its lenient date format, §5.1.1).
//!
//! The request side ([`super::principal::identify`]) and the response side (the session cookie
//! a login answer sets, linked to its account) read a pair through the same [`pair`], so that a
//! cookie set is named by the hash of the very value the browser sends back.

/// A cookie's name and value from its `name=value` text (an element of a `Cookie` list, or the
/// first part of a `Set-Cookie` field): blanks around each dropped, and one pair of double
/// quotes around the value, which browsers keep as they were set and send back, and which
/// servers drop as they read it (Go's `net/http`, Node's `cookie`, Python's `http.cookies`):
/// `SID="abc"` and `SID=abc` are one session. `None` without `=`.
pub fn pair(c: &str) -> Option<(&str, &str)> {
    let (name, value) = c.split_once('=')?;
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    Some((name.trim(), value))
}

/// The name and value of the cookie a `Set-Cookie` field sets, read as [`pair`] reads one;
/// `None` when it sets none a client would send back: no `=` or an empty name, an empty value,
/// or a deletion (`Max-Age` zero or less, else `Expires` before `now_s`, seconds since the
/// epoch; `Max-Age` wins over `Expires`, as in browsers). An attribute that does not parse is
/// ignored, as browsers ignore it.
pub fn set(field: &str, now_s: i64) -> Option<(&str, &str)> {
    let mut parts = field.split(';');
    let (name, value) = pair(parts.next()?)?;
    if name.is_empty() || value.is_empty() {
        return None;
    }
    let (mut max_age, mut expires) = (None, None);
    for attr in parts {
        let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("max-age") {
            // A leading `-` or digits only; anything else is no Max-Age (§5.2.2).
            let digits = v.strip_prefix('-').unwrap_or(v);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                max_age = Some(v.starts_with('-') || digits.bytes().all(|b| b == b'0'));
            }
        } else if k.eq_ignore_ascii_case("expires")
            && let Some(t) = date(v)
        {
            expires = Some(t < now_s);
        }
    }
    let deleted = max_age.or(expires).unwrap_or(false);
    (!deleted).then_some((name, value))
}

/// A cookie date (RFC 6265 §5.1.1) in seconds since the epoch: the lenient reading browsers
/// give `Expires` (`Wed, 21 Oct 2026 07:28:00 GMT`, `Thursday, 01-Jan-70 00:00:01 GMT`,
/// `Sun Nov  6 08:49:37 1994`, ...): a time, a day of the month, a month and a year in any
/// order among delimiters. `None` when one is missing or out of range.
pub fn date(s: &str) -> Option<i64> {
    // Delimiters: every byte but controls other than tab, digits, `:`, letters and non-ASCII.
    let delimiter =
        |b: u8| matches!(b, 0x09 | 0x20..=0x2F | 0x3B..=0x40 | 0x5B..=0x60 | 0x7B..=0x7E);
    let (mut time, mut day, mut month, mut year) = (None, None, None, None);
    for tok in s
        .as_bytes()
        .split(|b| delimiter(*b))
        .filter(|t| !t.is_empty())
    {
        if time.is_none()
            && let Some(t) = clock(tok)
        {
            time = Some(t);
        } else if day.is_none()
            && let Some(d) = leading_number(tok, 1, 2)
        {
            day = Some(d);
        } else if month.is_none()
            && let Some(m) = month_of(tok)
        {
            month = Some(m);
        } else if year.is_none()
            && let Some(y) = leading_number(tok, 2, 4)
        {
            year = Some(y);
        }
    }
    let (h, mi, sec) = time?;
    let (day, month, year) = (day?, month?, year?);
    let year = match year {
        70..=99 => year + 1900,
        0..=69 => year + 2000,
        y => y,
    };
    if year < 1601 || h > 23 || mi > 59 || sec > 59 || day < 1 || day > days_in(month, year) {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    Some(days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(sec))
}

/// `min..=max` digits at the start of `tok`, followed by nothing or by a byte that is no digit.
fn leading_number(tok: &[u8], min: usize, max: usize) -> Option<u32> {
    let n = tok.iter().take_while(|b| b.is_ascii_digit()).count();
    if n < min || n > max {
        return None;
    }
    tok[..n]
        .iter()
        .try_fold(0u32, |acc, b| Some(acc * 10 + u32::from(b - b'0')))
}

/// `h:m:s`, each one or two digits, anything but a digit after it.
fn clock(tok: &[u8]) -> Option<(u32, u32, u32)> {
    let mut parts = tok.splitn(3, |b| *b == b':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    let whole = |p: &[u8]| {
        (p.len() <= 2 && p.iter().all(u8::is_ascii_digit))
            .then(|| leading_number(p, 1, 2))
            .flatten()
    };
    Some((whole(h)?, whole(m)?, leading_number(s, 1, 2)?))
}

/// The month a token starts with (`jan`, `February`, `SEP`), 1 to 12.
fn month_of(tok: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    let head = tok.get(..3)?;
    MONTHS
        .iter()
        .position(|m| head.eq_ignore_ascii_case(*m))
        .map(|i| i as u32 + 1)
}

fn days_in(month: u32, year: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-01T00:00:00Z.
    const NOW: i64 = 1_793_491_200;

    #[test]
    fn cookie_dates_read_in_every_form_browsers_take() {
        for (text, want) in [
            ("Sun, 01 Nov 2026 00:00:00 GMT", Some(NOW)),
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(0)),
            // PHP's, with dashes; RFC 850's two-digit year; asctime's order.
            ("Thu, 01-Jan-1970 00:00:01 GMT", Some(1)),
            ("Thursday, 01-Jan-70 00:00:01 GMT", Some(1)),
            ("Sun Nov  6 08:49:37 1994", Some(784_111_777)),
            ("Wed, 21 Oct 2015 07:28:00 GMT", Some(1_445_412_480)),
            ("29 Feb 2028 12:00:00", Some(1_835_438_400)),
            ("Fri, 31 Dec 9999 23:59:59 GMT", Some(253_402_300_799)),
            // Missing parts, out of range, a day the month does not have.
            ("Sun, 01 Nov 2026", None),
            ("Sun, 01 Nov 2026 24:00:00 GMT", None),
            ("30 Feb 2026 00:00:00", None),
            ("01 Jan 1600 00:00:00", None),
            ("0", None),
            ("", None),
        ] {
            assert_eq!(date(text), want, "{text}");
        }
    }

    #[test]
    fn a_set_cookie_field_sets_its_cookie_unless_it_deletes_it() {
        for (field, want) in [
            ("SESSIONID=abc123", Some(("SESSIONID", "abc123"))),
            (
                "sid=abc; Path=/; HttpOnly; Secure; SameSite=Lax",
                Some(("sid", "abc")),
            ),
            (" sid = \"abc\" ; Path=/", Some(("sid", "abc"))),
            (
                "sid=abc; Expires=Wed, 21 Oct 2037 07:28:00 GMT",
                Some(("sid", "abc")),
            ),
            ("sid=abc; Max-Age=3600", Some(("sid", "abc"))),
            // Max-Age wins over a past Expires, and a Max-Age that does not parse is none.
            (
                "sid=abc; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=60",
                Some(("sid", "abc")),
            ),
            ("sid=abc; Max-Age=soon", Some(("sid", "abc"))),
            ("sid=abc; Expires=tomorrow", Some(("sid", "abc"))),
            // Deletions.
            ("sid=abc; Max-Age=0", None),
            ("sid=abc; max-age=-1", None),
            ("sid=abc; Max-Age=00", None),
            (
                "PHPSESSID=deleted; expires=Thu, 01-Jan-1970 00:00:01 GMT; Max-Age=0; path=/",
                None,
            ),
            ("sid=abc; Expires=Wed, 21 Oct 2015 07:28:00 GMT", None),
            (
                "sid=abc; Max-Age=0; Expires=Wed, 21 Oct 2037 07:28:00 GMT",
                None,
            ),
            ("sid=; Path=/", None),
            ("sid=\"\"", None),
            // No cookie.
            ("sid", None),
            ("=abc", None),
        ] {
            assert_eq!(set(field, NOW), want, "{field}");
        }
    }
}
