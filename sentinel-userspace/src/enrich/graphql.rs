//! Logins through GraphQL: on a GraphQL endpoint (`[models] graphql_endpoints`), each call of a
//! login mutation field (`[models] graphql_login_fields`) is one login attempt, however many a
//! request carries: aliases (`a1: login(username: "x", password: "p1") { token } a2: login(...)`)
//! and batches (a JSON array of operations) would otherwise make a hundred guesses one request.
//!
//! Not a GraphQL parser: a small scanner over the query text that knows strings (and block
//! strings), comments, commas and nesting, and finds `alias: field(args)` in the selections of
//! mutation operations (and of inline fragments and fragments on a mutation type within them),
//! and one level down under a namespace field (`mutation { auth { login(...) } }`); a call
//! under `@skip(if: true)` or `@include(if: false)` does not run and is no attempt.
//! It reads each byte at most a few times, recurses at most [`MAX_DEPTH`] levels (deeper
//! nesting is skipped by counting brackets), never panics on malformed text (it slices only at
//! ASCII delimiters, which are character boundaries), and reads at most [`MAX_ATTEMPTS`]
//! attempts per request: the rest of a larger batch is not counted (a hundred already raise
//! any detector's threshold many times over).
//!
//! The query comes as JSON (`{"query": ...}` or a batch array), as the body itself
//! (`application/graphql`) or as a form field (`query=...`, percent-encoded). With automatic
//! persisted queries (Apollo's clients' default) a request may carry only the query's SHA-256
//! (`extensions.persistedQuery.sha256Hash`): the query is the one a request registered with
//! that hash earlier (the client sends it once, when the server asks), kept in [`Persisted`]
//! when it holds a mutation and its hash checks out.
//!
//! A JSON body cut at the capture's body cap (padded with a large `extensions` member or a long
//! comment at the query's end) does not parse: its operations are then read as far as the
//! buffer goes, each query string decoded up to the cut, the variables when they are whole.
//!
//! The account of an attempt is an argument whose name is a login user-name field in any naming
//! style (`username`, `email`, `login`, ...), as a string or a `$variable`, also inside an input
//! object one or two levels down (`login(input: {email: $e})`, `login(input: $input)`). Its
//! outcome is in the response (under a namespace, `data.<ns>.<alias>`): `data.<alias>` null or
//! missing, or an `errors` entry whose `path`
//! starts with the alias, is a failure; a token anywhere within the result is a success; a
//! result that says it failed (`success: false`) is a failure; anything else a success.

use std::{borrow::Cow, sync::Arc};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::principal::{field_style, percent_decode, text_field};

/// Login attempts read from one request at most.
pub const MAX_ATTEMPTS: usize = 100;

/// Nesting levels the scanner descends (selections, arguments, values); deeper is skipped.
const MAX_DEPTH: usize = 24;

/// One call of a login field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The operation's index in a batch (0 for a single operation).
    pub op: usize,
    /// The key of its result in the response: the alias, else the field name.
    pub key: String,
    /// The key of the namespace field it was called under (`mutation { auth { login } }`),
    /// whose result holds its own: `data.<ns>.<key>`.
    pub ns: Option<String>,
    /// The account named, when one could be read.
    pub username: Option<String>,
}

/// Login calls found in a query: (namespace key, response key, arguments).
type Found<'t> = Vec<(Option<&'t str>, &'t str, Vec<(&'t str, Arg<'t>)>)>;

/// A value of an argument, as far as a user name needs it.
enum Arg<'t> {
    Text(String),
    Var(&'t str),
    Object(Vec<(&'t str, Arg<'t>)>),
    Bool(bool),
    Other,
}

struct Scanner<'t> {
    s: &'t str,
    i: usize,
}

impl<'t> Scanner<'t> {
    fn byte(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    /// The bytes from the cursor (which may sit inside a character after a stray byte: never
    /// sliced as text there).
    fn rest(&self) -> &'t [u8] {
        self.s.as_bytes().get(self.i..).unwrap_or_default()
    }

    /// Skips blanks, commas, a byte order mark and comments; returns the next byte.
    fn peek(&mut self) -> Option<u8> {
        while let Some(b) = self.byte() {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' | b',' => self.i += 1,
                b'#' => {
                    self.i += self
                        .rest()
                        .iter()
                        .position(|b| matches!(b, b'\n' | b'\r'))
                        .unwrap_or(self.rest().len());
                }
                0xEF if self.rest().starts_with(b"\xEF\xBB\xBF") => self.i += 3,
                _ => return Some(b),
            }
        }
        None
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.i += 1;
        }
        hit
    }

    /// A name (`[_A-Za-z][_0-9A-Za-z]*`), or `None` (nothing consumed).
    fn name(&mut self) -> Option<&'t str> {
        if !self
            .peek()
            .is_some_and(|b| b == b'_' || b.is_ascii_alphabetic())
        {
            return None;
        }
        // From an ASCII letter to the byte after the last ASCII one: character boundaries.
        let start = self.i;
        self.i += self.name_len();
        Some(&self.s[start..self.i])
    }

    /// Bytes of name characters from the cursor.
    fn name_len(&self) -> usize {
        self.rest()
            .iter()
            .take_while(|b| **b == b'_' || b.is_ascii_alphanumeric())
            .count()
    }

    /// A string or block string at the cursor (its opening quote next), its value.
    fn string(&mut self) -> String {
        if self.rest().starts_with(b"\"\"\"") {
            let body = self.i + 3;
            // `\"""` inside a block string is an escaped quote triple, not its end.
            let mut end = self.s.len();
            let mut from = body;
            while let Some(n) = self.s[from..].find("\"\"\"") {
                if self.s.as_bytes().get((from + n).wrapping_sub(1)) == Some(&b'\\')
                    && from + n > body
                {
                    from += n + 3;
                    continue;
                }
                end = from + n;
                break;
            }
            self.i = (end + 3).min(self.s.len());
            return self.s[body..end].trim().to_owned();
        }
        let start = self.i;
        let mut j = start + 1;
        let b = self.s.as_bytes();
        while j < b.len() && b[j] != b'"' && b[j] != b'\n' {
            j += if b[j] == b'\\' { 2 } else { 1 };
        }
        let end = j.min(b.len());
        self.i = (end + 1).min(b.len());
        // The escapes of GraphQL strings are JSON's.
        let raw = &self.s[start..end];
        serde_json::from_str(&format!("{raw}\""))
            .unwrap_or_else(|_| raw.trim_start_matches('"').to_owned())
    }

    /// Skips the bracketed group at the cursor (`{`, `(` or `[`), strings and comments within,
    /// without recursion.
    fn skip_group(&mut self) {
        let mut depth = 0usize;
        while let Some(b) = self.peek() {
            match b {
                b'{' | b'(' | b'[' => depth += 1,
                b'}' | b')' | b']' => depth = depth.saturating_sub(1),
                b'"' => {
                    self.string();
                    if depth == 0 {
                        return;
                    }
                    continue;
                }
                _ => {}
            }
            self.i += 1;
            if depth == 0 {
                return;
            }
        }
    }

    /// Directives (`@name(args)`): whether what they stand on runs, false under
    /// `@skip(if: true)` or `@include(if: false)` (a variable in the condition may be either:
    /// it runs).
    fn directives(&mut self, depth: usize) -> bool {
        let mut runs = true;
        while self.eat(b'@') {
            let name = self.name();
            if self.peek() != Some(b'(') {
                continue;
            }
            let cond = match name {
                Some("skip") => true,
                Some("include") => false,
                _ => {
                    self.skip_group();
                    continue;
                }
            };
            let args = self.fields(b')', depth);
            if args
                .iter()
                .any(|(k, v)| *k == "if" && matches!(v, Arg::Bool(b) if *b == cond))
            {
                runs = false;
            }
        }
        runs
    }

    /// A value (the cursor on it).
    fn value(&mut self, depth: usize) -> Arg<'t> {
        match self.peek() {
            Some(b'"') => Arg::Text(self.string()),
            Some(b'$') => {
                self.i += 1;
                self.name().map_or(Arg::Other, Arg::Var)
            }
            Some(b'{') if depth < MAX_DEPTH => Arg::Object(self.fields(b'}', depth)),
            Some(b'{' | b'[' | b'(') => {
                self.skip_group();
                Arg::Other
            }
            Some(_) => {
                // A number, a name (true, null, an enum value) or a stray byte.
                match self.name() {
                    Some("true") => Arg::Bool(true),
                    Some("false") => Arg::Bool(false),
                    Some(_) => Arg::Other,
                    None => {
                        self.i += 1 + self.name_len();
                        Arg::Other
                    }
                }
            }
            None => Arg::Other,
        }
    }

    /// `name: value` pairs up to `close` (the cursor on the opening bracket): arguments, or an
    /// input object's fields.
    fn fields(&mut self, close: u8, depth: usize) -> Vec<(&'t str, Arg<'t>)> {
        self.i += 1;
        let mut fields = Vec::new();
        while let Some(b) = self.peek() {
            if b == close {
                self.i += 1;
                break;
            }
            match self.name() {
                Some(k) if self.eat(b':') => fields.push((k, self.value(depth + 1))),
                Some(_) => {}
                None => self.i += 1,
            }
        }
        fields
    }

    /// The selections of a mutation (the cursor on `{`), or of a namespace field `ns` within
    /// it (one level: `mutation { auth { login(...) } }`): login fields go to `out`.
    fn selections(
        &mut self,
        depth: usize,
        ns: Option<&'t str>,
        is_login: &dyn Fn(&str) -> bool,
        out: &mut Found<'t>,
    ) {
        if depth >= MAX_DEPTH {
            self.skip_group();
            return;
        }
        self.i += 1;
        while let Some(b) = self.peek() {
            if b == b'}' {
                self.i += 1;
                return;
            }
            if self.rest().starts_with(b"...") {
                self.i += 3;
                // An inline fragment's fields are the mutation's own (`... on Mutation { }`);
                // a fragment spread is read where the fragment is defined.
                if self.name() == Some("on") {
                    self.name();
                }
                let runs = self.directives(depth);
                if self.peek() == Some(b'{') {
                    if runs {
                        self.selections(depth + 1, ns, is_login, out);
                    } else {
                        self.skip_group();
                    }
                }
                continue;
            }
            let Some(first) = self.name() else {
                self.i += 1;
                continue;
            };
            let (key, field) = if self.eat(b':') {
                (first, self.name().unwrap_or(""))
            } else {
                (first, first)
            };
            let has_args = self.peek() == Some(b'(');
            let args = if has_args {
                self.fields(b')', depth)
            } else {
                Vec::new()
            };
            let runs = self.directives(depth);
            if self.peek() == Some(b'{') {
                // A namespace field (`auth { login(...) }`) takes no arguments; a mutation that
                // does (`createUser(input: ...) { id login }`) selects its result, whose fields
                // named like a login field are no calls.
                if runs && ns.is_none() && !has_args && !is_login(field) {
                    self.selections(depth + 1, Some(key), is_login, out);
                } else {
                    self.skip_group();
                }
            }
            // Under a namespace, a login call passes its credentials.
            if runs && is_login(field) && (ns.is_none() || has_args) && out.len() < MAX_ATTEMPTS {
                out.push((ns, key, args));
            }
        }
    }

    /// The login calls of a document: of the operation named `op_name` (all of them without
    /// one), in mutations and fragments on a mutation type.
    fn document(
        &mut self,
        op_name: Option<&str>,
        is_login: &dyn Fn(&str) -> bool,
        out: &mut Found<'t>,
    ) {
        while let Some(b) = self.peek() {
            if b == b'{' {
                // An anonymous query.
                self.skip_group();
                continue;
            }
            let Some(keyword) = self.name() else {
                self.i += 1;
                continue;
            };
            let mut read = false;
            match keyword {
                "mutation" => {
                    let name = self.name();
                    read = op_name.is_none_or(|want| name == Some(want));
                }
                "fragment" => {
                    self.name();
                    if self.name() == Some("on") {
                        read = self
                            .name()
                            .is_some_and(|t| t.to_ascii_lowercase().contains("mutation"));
                    }
                }
                _ => {}
            }
            // Variable definitions, directives, up to the selections.
            while let Some(b) = self.peek() {
                match b {
                    b'{' => break,
                    b'(' => self.skip_group(),
                    b'"' => {
                        self.string();
                    }
                    _ => self.i += 1,
                }
            }
            if self.peek() == Some(b'{') {
                if read {
                    self.selections(0, None, is_login, out);
                } else {
                    self.skip_group();
                }
            }
        }
    }
}

/// The account an argument names (a user-name field, as text or a variable; inside an input
/// object or a variable holding one, up to two levels down).
fn account(
    args: &[(&str, Arg<'_>)],
    vars: Option<&Map<String, Value>>,
    username_fields: &[String],
    depth: u32,
) -> Option<String> {
    let var = |name: &str| vars.and_then(|v| v.get(name));
    for (k, v) in args {
        if !username_fields.contains(&field_style(k)) {
            continue;
        }
        let text = match v {
            Arg::Text(t) => Some(t.as_str()),
            Arg::Var(name) => var(name).and_then(Value::as_str),
            _ => None,
        };
        if let Some(t) = text.filter(|t| !t.trim().is_empty()) {
            return Some(t.to_owned());
        }
    }
    if depth == 0 {
        return None;
    }
    args.iter().find_map(|(_, v)| match v {
        Arg::Object(fields) => account(fields, vars, username_fields, depth - 1),
        Arg::Var(name) => var(name)
            .and_then(Value::as_object)
            .and_then(|o| object_account(o, username_fields, depth - 1)),
        _ => None,
    })
}

/// The account named in a variable's object (or one level further down).
fn object_account(
    o: &Map<String, Value>,
    username_fields: &[String],
    depth: u32,
) -> Option<String> {
    text_field(o, username_fields)
        .map(str::to_owned)
        .or_else(|| {
            (depth > 0)
                .then(|| {
                    o.values()
                        .filter_map(Value::as_object)
                        .find_map(|inner| object_account(inner, username_fields, depth - 1))
                })
                .flatten()
        })
}

/// One operation of a request: its query, operation name and variables.
struct Op<'v> {
    query: Cow<'v, str>,
    op_name: Option<Cow<'v, str>>,
    vars: Option<Cow<'v, Map<String, Value>>>,
}

/// A JSON string literal at `b[*i]` (its opening quote), decoded as far as the buffer goes (a
/// body cut at the capture's cap ends inside one); the cursor after its closing quote.
/// Malformed escapes and bytes become U+FFFD, never a panic.
fn cut_json_string(b: &[u8], i: &mut usize) -> String {
    let mut out = Vec::new();
    *i += 1;
    while let Some(&c) = b.get(*i) {
        *i += 1;
        match c {
            b'"' => break,
            b'\\' => {
                let Some(&e) = b.get(*i) else { break };
                *i += 1;
                let ch = match e {
                    b'n' => '\n',
                    b't' => '\t',
                    b'r' => '\r',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'u' => {
                        let hex = |at: usize| {
                            b.get(at..at + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                        };
                        let Some(hi) = hex(*i) else { break };
                        *i += 4;
                        let lo = (0xD800..0xDC00).contains(&hi)
                            && b.get(*i..*i + 2) == Some(b"\\u")
                            && hex(*i + 2).is_some_and(|lo| (0xDC00..0xE000).contains(&lo));
                        let code = if lo {
                            let lo = hex(*i + 2).unwrap_or(0xDC00);
                            *i += 6;
                            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                        } else {
                            hi
                        };
                        char::from_u32(code).unwrap_or('\u{FFFD}')
                    }
                    other => char::from(other),
                };
                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
            }
            c => out.push(c),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Skips blanks at `b[*i]`.
fn skip_blanks(b: &[u8], i: &mut usize) {
    while b.get(*i).is_some_and(u8::is_ascii_whitespace) {
        *i += 1;
    }
}

/// Skips the JSON value at `b[*i]`, strings within it read by their escapes; whether it
/// ended within the buffer.
fn skip_json_value(b: &[u8], i: &mut usize) -> bool {
    let mut depth = 0usize;
    while let Some(&c) = b.get(*i) {
        match c {
            b'"' => {
                // To its closing quote, escapes skipped.
                *i += 1;
                loop {
                    match b.get(*i) {
                        None => return false,
                        Some(b'\\') => *i += 2,
                        Some(b'"') => break,
                        Some(_) => *i += 1,
                    }
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return true,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    *i += 1;
                    return true;
                }
            }
            b',' if depth == 0 => return true,
            _ => {}
        }
        *i += 1;
    }
    false
}

/// An operation object at `b[*i]` (its `{`) of a body cut short, read as far as it goes: its
/// query (cut where the buffer ends), operation name, and variables when they are whole.
fn cut_json_op(b: &[u8], i: &mut usize) -> Option<Op<'static>> {
    *i += 1;
    let (mut query, mut op_name, mut vars) = (None, None, None);
    loop {
        skip_blanks(b, i);
        match b.get(*i) {
            Some(b'"') => {}
            Some(b',') => {
                *i += 1;
                continue;
            }
            Some(b'}') => {
                *i += 1;
                break;
            }
            _ => break,
        }
        let key = cut_json_string(b, i);
        skip_blanks(b, i);
        if b.get(*i) != Some(&b':') {
            break;
        }
        *i += 1;
        skip_blanks(b, i);
        let start = *i;
        match (key.as_str(), b.get(*i)) {
            ("query", Some(b'"')) => query = Some(cut_json_string(b, i)),
            ("operationName", Some(b'"')) => op_name = Some(cut_json_string(b, i)),
            _ => {
                let whole = skip_json_value(b, i);
                if key == "variables" && whole {
                    vars = serde_json::from_slice::<Map<String, Value>>(&b[start..*i]).ok();
                }
            }
        }
    }
    Some(Op {
        query: Cow::Owned(query?),
        op_name: op_name.map(Cow::Owned),
        vars: vars.map(Cow::Owned),
    })
}

/// The operations of a JSON body that does not parse (cut at the capture's body cap: padded
/// with a large `extensions` member or a long comment at the query's end), read as far as the
/// buffer goes: one object, or the objects of a batch array.
fn cut_json_ops(b: &[u8]) -> Vec<Option<Op<'static>>> {
    let mut i = 0;
    skip_blanks(b, &mut i);
    match b.get(i) {
        Some(b'{') => vec![cut_json_op(b, &mut i)],
        Some(b'[') => {
            i += 1;
            let mut ops = Vec::new();
            loop {
                skip_blanks(b, &mut i);
                match b.get(i) {
                    Some(b',') => i += 1,
                    // Each object an operation, one without a query too (the response's
                    // array answers each).
                    Some(b'{') => ops.push(cut_json_op(b, &mut i)),
                    None | Some(b']') => break,
                    // Anything else in a batch is no operation, but keeps its place.
                    Some(_) => {
                        let at = i;
                        if !skip_json_value(b, &mut i) || i == at {
                            break;
                        }
                        ops.push(None);
                    }
                }
            }
            ops
        }
        _ => Vec::new(),
    }
}

/// The login calls of a GraphQL request body, by its `Content-Type`: a JSON object with `query`
/// (and `variables`, `operationName`), or an array of them, read as far as it goes when cut at
/// the capture's cap; the query itself (`application/graphql`); or a form with a `query` field
/// (`application/x-www-form-urlencoded`), as express-graphql takes them. At most
/// [`MAX_ATTEMPTS`].
pub fn login_calls(
    body: &[u8],
    content_type: Option<&str>,
    login_fields: &[String],
    username_fields: &[String],
) -> Vec<Call> {
    login_calls_with(body, content_type, login_fields, username_fields, None)
}

/// [`login_calls`], with the persisted queries that JSON operations may name by hash only (and
/// that those carrying query and hash register).
pub fn login_calls_with(
    body: &[u8],
    content_type: Option<&str>,
    login_fields: &[String],
    username_fields: &[String],
    mut persisted: Option<&mut Persisted>,
) -> Vec<Call> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    // The media type alone, as servers compare it (a parameter naming another type changes
    // nothing); when its reader finds no call, the JSON reader still tries.
    let media = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let read = match media.as_str() {
        "application/x-www-form-urlencoded" => {
            op_calls(&[form_op(body)], login_fields, username_fields)
        }
        "application/graphql" => {
            let op = Op {
                query: String::from_utf8_lossy(body),
                op_name: None,
                vars: None,
            };
            op_calls(&[Some(op)], login_fields, username_fields)
        }
        _ => Vec::new(),
    };
    if !read.is_empty() {
        return read;
    }
    // The cheap test before parsing: most GraphQL requests are queries. JSON may escape a
    // letter of `mutation` (`\u006d`), so a body with escapes is parsed anyway, and one naming
    // a persisted query by its hash too.
    let by_hash = persisted.is_some() && memchr::memmem::find(body, b"sha256Hash").is_some();
    if !by_hash
        && memchr::memmem::find(body, b"mutation").is_none()
        && memchr::memchr(b'\\', body).is_none()
    {
        return Vec::new();
    }
    let doc = serde_json::from_slice::<Value>(body).ok();
    // Every element of a batch keeps its place, an operation or not: the answer's array
    // answers each in place, and a call matched to another's result would be linked to its
    // token (`[null, login(mallory), login(victim)]`).
    let objects: Vec<Option<&Map<String, Value>>> = match &doc {
        Some(Value::Object(o)) => vec![Some(o)],
        Some(Value::Array(a)) => a.iter().map(Value::as_object).collect(),
        Some(_) => return Vec::new(),
        None => Vec::new(),
    };
    let ops: Vec<Option<Op<'_>>> = if doc.is_none() {
        cut_json_ops(body)
    } else {
        objects
            .iter()
            .map(|o| {
                let o = (*o)?;
                let op = json_op(o);
                let Some(store) = persisted.as_deref_mut() else {
                    return op;
                };
                match (op, persisted_hash(o)) {
                    (Some(op), Some(hash)) => {
                        store.register(hash, &op.query);
                        Some(op)
                    }
                    (None, Some(hash)) => {
                        let query = store.get(hash)?;
                        let mut op = json_op_without_query(o);
                        op.query = Cow::Owned(query.to_string());
                        Some(op)
                    }
                    (op, None) => op,
                }
            })
            .collect()
    };
    op_calls(&ops, login_fields, username_fields)
}

/// The operation of a form body: its `query`, `operationName` and `variables` fields,
/// percent-decoded (the first of each).
fn form_op(body: &[u8]) -> Option<Op<'static>> {
    let text = String::from_utf8_lossy(body);
    let (mut query, mut op_name, mut vars) = (None, None, None);
    for pair in text.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(k).as_str() {
            "query" if query.is_none() => query = Some(percent_decode(v)),
            "operationName" if op_name.is_none() => op_name = Some(percent_decode(v)),
            "variables" if vars.is_none() => {
                vars = serde_json::from_str::<Map<String, Value>>(&percent_decode(v)).ok();
            }
            _ => {}
        }
    }
    Some(Op {
        query: Cow::Owned(query?),
        op_name: op_name.map(Cow::Owned),
        vars: vars.map(Cow::Owned),
    })
}

/// Slots of the table of persisted queries (a power of two).
const PERSISTED_SLOTS: usize = 1024;

/// The longest persisted query kept, bytes (a login mutation is a few hundred).
const PERSISTED_MAX: usize = 4096;

/// Mutations registered by automatic persisted queries (Apollo's APQ: a request with the query
/// and its SHA-256 in `extensions.persistedQuery.sha256Hash`; later ones carry the hash only),
/// by hash: a direct-mapped table of [`PERSISTED_SLOTS`], each at most [`PERSISTED_MAX`] bytes
/// of query (at most about 4 MiB). Only a query whose hash checks out is kept, as the server
/// keeps it: a request naming a login's hash beside another query cannot make the login's
/// later calls read as that query.
pub struct Persisted {
    slots: Vec<Option<(Box<str>, Arc<str>)>>,
}

impl Default for Persisted {
    fn default() -> Self {
        Self {
            slots: vec![None; PERSISTED_SLOTS],
        }
    }
}

impl Persisted {
    fn slot(hash: &str) -> usize {
        crate::models::bounded::key_of(hash) as usize % PERSISTED_SLOTS
    }

    /// Keeps `query` under `hash` when it holds a mutation and `hash` is its SHA-256 in hex.
    fn register(&mut self, hash: &str, query: &str) {
        if query.len() > PERSISTED_MAX || !query.contains("mutation") || hash.len() != 64 {
            return;
        }
        let digest = Sha256::digest(query.as_bytes());
        let hex: String = digest.iter().fold(String::with_capacity(64), |mut h, b| {
            use std::fmt::Write as _;
            let _ = write!(h, "{b:02x}");
            h
        });
        if !hex.eq_ignore_ascii_case(hash) {
            return;
        }
        let slot = Self::slot(&hex);
        self.slots[slot] = Some((hex.into(), Arc::from(query)));
    }

    /// The query registered under `hash`.
    fn get(&self, hash: &str) -> Option<Arc<str>> {
        let hash = hash.to_ascii_lowercase();
        match &self.slots[Self::slot(&hash)] {
            Some((h, q)) if **h == *hash => Some(Arc::clone(q)),
            _ => None,
        }
    }
}

/// The `extensions.persistedQuery.sha256Hash` of an operation object.
fn persisted_hash(o: &Map<String, Value>) -> Option<&str> {
    o.get("extensions")?
        .get("persistedQuery")?
        .get("sha256Hash")?
        .as_str()
}

/// An operation of a parsed JSON body (none without a query).
fn json_op(o: &Map<String, Value>) -> Option<Op<'_>> {
    Some(Op {
        query: Cow::Borrowed(o.get("query")?.as_str()?),
        ..json_op_without_query(o)
    })
}

/// An operation object's operation name and variables, its query empty (a persisted query's).
fn json_op_without_query(o: &Map<String, Value>) -> Op<'_> {
    Op {
        query: Cow::Borrowed(""),
        op_name: o
            .get("operationName")
            .and_then(Value::as_str)
            .map(Cow::Borrowed),
        vars: o
            .get("variables")
            .and_then(Value::as_object)
            .map(Cow::Borrowed),
    }
}

/// The login calls of a request's operations, at most [`MAX_ATTEMPTS`].
fn op_calls(
    ops: &[Option<Op<'_>>],
    login_fields: &[String],
    username_fields: &[String],
) -> Vec<Call> {
    let is_login = |f: &str| login_fields.iter().any(|l| l.eq_ignore_ascii_case(f));
    let mut calls = Vec::new();
    for (op, o) in ops.iter().enumerate() {
        let Some(o) = o else { continue };
        // The cheap test first: most GraphQL requests are queries.
        if !o.query.contains("mutation") {
            continue;
        }
        let mut found = Vec::new();
        Scanner { s: &o.query, i: 0 }.document(o.op_name.as_deref(), &is_login, &mut found);
        for (ns, key, args) in found {
            if calls.len() >= MAX_ATTEMPTS {
                return calls;
            }
            calls.push(Call {
                op,
                key: key.to_owned(),
                ns: ns.map(str::to_owned),
                username: account(&args, o.vars.as_deref(), username_fields, 2),
            });
        }
    }
    calls
}

/// Whether each call succeeded, from the response body (an object, or an array for a batch);
/// `None` where the response says nothing readable about it.
pub fn outcomes(calls: &[Call], resp_body: &[u8]) -> Vec<Option<bool>> {
    let resp = serde_json::from_slice::<Value>(resp_body).ok();
    calls
        .iter()
        .map(|c| {
            let r = match &resp {
                Some(Value::Array(a)) => a.get(c.op)?.as_object()?,
                Some(Value::Object(o)) if c.op == 0 => o,
                _ => return None,
            };
            outcome(r, c.ns.as_deref(), &c.key)
        })
        .collect()
}

/// Calls `found` with each credential a call's own result issued (the call's index in `calls`,
/// the token): a token member of its result object, at its top or one level under a wrapper
/// ([`super::pipeline::issued_tokens`]), or the result itself when it is text (`login(...):
/// String`). Results are found as [`outcomes`] finds them (`data.<key>`, `data.<ns>.<key>`, a
/// batch's by operation); a call whose result cannot be told from another's (the same key in
/// the same operation and namespace, or a batch answered with one object) issues nothing, so
/// that no token is linked to the wrong account. The caller takes only those of the calls that
/// succeeded.
pub fn issued(calls: &[Call], resp_body: &[u8], mut found: impl FnMut(usize, &str)) {
    let Ok(resp) = serde_json::from_slice::<Value>(resp_body) else {
        return;
    };
    let same_place = |a: &Call, b: &Call| a.op == b.op && a.ns == b.ns && a.key == b.key;
    // A batch's calls answered with one object: which operation's is it?
    let batch = calls.iter().any(|c| c.op > 0);
    for (i, c) in calls.iter().enumerate() {
        if calls.iter().filter(|o| same_place(o, c)).count() > 1 {
            continue;
        }
        let r = match &resp {
            Value::Array(a) => a.get(c.op).and_then(Value::as_object),
            Value::Object(o) if !batch => Some(o),
            _ => None,
        };
        let mut data = r.and_then(|r| r.get("data")).and_then(Value::as_object);
        if let Some(ns) = &c.ns {
            data = data.and_then(|d| d.get(ns)).and_then(Value::as_object);
        }
        match data.and_then(|d| d.get(&c.key)) {
            Some(Value::Object(o)) => super::pipeline::issued_tokens(o, &mut |t| found(i, t)),
            Some(Value::String(s)) if !s.is_empty() => found(i, s),
            _ => {}
        }
    }
}

/// One call's outcome in one operation's result: its result first (a token in it is a
/// success, whatever error a field below it had: a partial error is no failed login), then the
/// errors at its path (`<key>`, or `<ns>.<key>` under a namespace field).
fn outcome(r: &Map<String, Value>, ns: Option<&str>, key: &str) -> Option<bool> {
    let errors = r.get("errors").and_then(Value::as_array);
    let path: Vec<&str> = ns.into_iter().chain([key]).collect();
    // An error at the call itself (`["login"]`), not at a field of its result.
    let errored_at = |whole: bool| {
        errors.is_some_and(|errs| {
            errs.iter().any(|e| {
                e.get("path").and_then(Value::as_array).is_some_and(|p| {
                    p.len() >= path.len()
                        && p.iter().zip(&path).all(|(a, b)| a.as_str() == Some(b))
                        && (!whole || p.len() == path.len())
                })
            })
        })
    };
    let mut data = match r.get("data") {
        Some(Value::Object(d)) => d,
        // No data at all: a request error (errors without a path) fails every call.
        Some(Value::Null) => return Some(false),
        _ => return r.contains_key("errors").then_some(false),
    };
    if let Some(ns) = ns {
        // The namespace's result null or missing: as the call's own would be.
        match data.get(ns) {
            Some(Value::Object(d)) => data = d,
            // A list is no namespace's result: nothing to say about the call.
            Some(Value::Array(_)) => return None,
            _ => return Some(false),
        }
    }
    match data.get(key) {
        None | Some(Value::Null) => Some(false),
        Some(Value::Object(o)) => {
            if super::pipeline::carries_token(o, 3) {
                return Some(true);
            }
            // Errors in the result itself (`userErrors`, `errors`: Saleor, Shopify), a token
            // member left null, a failure type of a union result (`InvalidCredentials`).
            let held = |v: &Value| match v {
                Value::Array(a) => !a.is_empty(),
                Value::Object(m) => !m.is_empty(),
                Value::String(s) => !s.is_empty(),
                _ => false,
            };
            let failed_member = o.iter().any(|(k, v)| {
                let k = field_style(k);
                (k.ends_with("errors") || k == "error") && held(v)
                    || k.contains("token") && v.is_null()
            });
            let failed_type = o
                .get("__typename")
                .and_then(Value::as_str)
                .is_some_and(|t| {
                    ["error", "invalid", "fail", "denied", "unauthori"]
                        .iter()
                        .any(|w| t.to_ascii_lowercase().contains(w))
                });
            Some(
                !(failed_member
                    || failed_type
                    || super::pipeline::flag_false(o)
                    || errored_at(true)),
            )
        }
        Some(Value::Bool(ok)) => Some(*ok && !errored_at(false)),
        Some(Value::String(s)) => Some(!s.is_empty() && !errored_at(false)),
        Some(_) => Some(!errored_at(false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> (Vec<String>, Vec<String>) {
        let m = crate::models::ModelsConfig::default();
        let p = super::super::principal::PrincipalConfig::default();
        (m.graphql_login_fields, p.username_fields)
    }

    fn calls(body: &str) -> Vec<Call> {
        let (l, u) = fields();
        login_calls(body.as_bytes(), None, &l, &u)
    }

    fn names(c: &[Call]) -> Vec<(String, Option<String>)> {
        c.iter()
            .map(|c| (c.key.clone(), c.username.clone()))
            .collect()
    }

    #[test]
    fn aliases_batches_and_variables_are_each_an_attempt() {
        let q = r#"{"query":"mutation { a1: login(username:\"x\", password:\"p1\") {token} a2: login(username: \"x\" password: \"p2\") { token } me { id } }"}"#;
        let c = calls(q);
        assert_eq!(
            names(&c),
            [
                ("a1".into(), Some("x".into())),
                ("a2".into(), Some("x".into()))
            ]
        );
        // A batch, with variables, another field name and an input object.
        let q = r#"[
          {"query":"mutation L($u: String!, $p: String!) { signIn(email: $u, password: $p) { accessToken } }","variables":{"u":"bob@x.test","p":"1"}},
          {"query":"mutation { tokenAuth(input: {userName: \"carol\", password: \"2\"}) { token } }"},
          {"query":"mutation M($in: LoginInput!) { authenticate(input: $in) { jwt } }","variables":{"in":{"login":"dave"}}},
          {"query":"query { me { id } }"}
        ]"#;
        let c = calls(q);
        assert_eq!(
            names(&c),
            [
                ("signIn".into(), Some("bob@x.test".into())),
                ("tokenAuth".into(), Some("carol".into())),
                ("authenticate".into(), Some("dave".into())),
            ]
        );
        assert_eq!(c.iter().map(|c| c.op).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn strings_comments_fragments_and_other_operations_do_not_fool_it() {
        let q = r##"{"query":"# login(username:\"no\")\nquery Q { login(username: \"q\") { x } }\nmutation Do { ... on Mutation { b: logIn(username: \"}{ \\\" #\") { token } } c: transfer(note: \"login(username:\\\"z\\\")\") { id } }\nfragment F on Mutation { d: loginUser(username: \"\"\"e\"\"\") { token } }","operationName":"Do"}"##;
        assert_eq!(
            names(&calls(q)),
            [
                ("b".into(), Some("}{ \" #".into())),
                ("d".into(), Some("e".into())),
            ]
        );
        // Another operation named: this one's fields do not run.
        let q = r#"{"query":"mutation A { login(username:\"a\") { token } } mutation B { logout }","operationName":"B"}"#;
        assert!(calls(q).is_empty());
    }

    #[test]
    fn hostile_input_never_panics_and_is_capped() {
        let many: String = (0..500)
            .map(|i| format!("a{i}: login(username: \"u{i}\", password: \"p\") {{ token }} "))
            .collect();
        let body = serde_json::json!({ "query": format!("mutation {{ {many} }}") }).to_string();
        assert_eq!(calls(&body).len(), MAX_ATTEMPTS);
        let deep = format!(
            "mutation {{ {} login(username: \"x\") }}",
            "{".repeat(10_000)
        );
        let body = serde_json::json!({ "query": deep }).to_string();
        let _ = calls(&body);
        for q in [
            "mutation",
            "mutation {",
            "mutation { a: ",
            "mutation { a: login(",
            "mutation { a: login(username: \"ééé",
            "mutation { a: login(username: \"\"\"é",
            "mutation { login(username: $",
            "mutation { login(input: {username: {username: [\"x\"",
            "mutation { ... on",
            "mutation { ...",
            "mutation {é: login(usernamé: \"x\\",
            "mutation \u{feff}{ # é",
            "mutation{login(username:\"\\u12\")}",
        ] {
            let body = serde_json::json!({ "query": q }).to_string();
            let _ = calls(&body);
            for cut in 0..q.len() {
                if q.is_char_boundary(cut) {
                    let body = serde_json::json!({ "query": &q[..cut] }).to_string();
                    let _ = calls(&body);
                }
            }
        }
    }

    #[test]
    fn outcomes_come_from_the_alias_in_the_response() {
        let c = calls(
            r#"{"query":"mutation { a1: login(username:\"x\") {token} a2: login(username:\"x\") {token} a3: login(username:\"x\") {token} a4: login(username:\"x\") {ok} }"}"#,
        );
        let resp =
            br#"{"data":{"a1":null,"a2":{"token":"t"},"a3":{"token":null},"a4":{"success":false}},
            "errors":[{"message":"bad","path":["a3"]}]}"#;
        assert_eq!(
            outcomes(&c, resp),
            [Some(false), Some(true), Some(false), Some(false)]
        );
        assert_eq!(outcomes(&c, b"not json"), [None, None, None, None]);
        assert_eq!(
            outcomes(&c, br#"{"data":null,"errors":[{"message":"rate"}]}"#),
            [Some(false); 4]
        );
        // After a review: a partial error under a result with a token is a success; errors
        // inside the result, a null token, a failure type of a union are failures.
        let resp = br#"{"data":{"a1":{"token":"t","user":{"plan":null}},
            "a2":{"token":null,"userErrors":[{"field":"password","message":"Wrong password"}]},
            "a3":{"__typename":"InvalidCredentials","message":"no"},
            "a4":{"user":{"id":1},"errors":[]}},
            "errors":[{"message":"billing down","path":["a1","user","plan"]}]}"#;
        assert_eq!(
            outcomes(&c, resp),
            [Some(true), Some(false), Some(false), Some(true)]
        );
    }

    #[test]
    fn an_escaped_quote_triple_does_not_end_a_block_string() {
        // `\"""` inside a block string is the spec's escape, after which the string goes on.
        let query = r#"mutation { a0: login(username: """ \""" x: """, password: "p0") { token } a1: login(username: "v", password: "p1") { token } a2: login(username: "v", password: """p2""") { token } }"#;
        let body = serde_json::json!({ "query": query }).to_string();
        assert_eq!(calls(&body).len(), 3, "{body}");
    }

    #[test]
    fn a_body_cut_at_the_cap_is_read_as_far_as_it_goes() {
        // Padded past the capture's cap with extensions after the query, or a comment at its
        // end: the JSON does not parse, the calls before the cut are still attempts.
        let guesses: String = (0..5)
            .map(|i| format!("a{i}: login(username: \"x\", password: \"p{i}\") {{ token }} "))
            .collect();
        let query =
            format!("mutation L($u: String) {{ {guesses} v: signIn(email: $u) {{ token }} }}");
        // Keys in the order a client sends them (`json!` would sort them).
        let body = format!(
            r#"{{"operationName":"L","variables":{{"u":"bob@x.test"}},"query":{},"extensions":{{"pad":"{}"}}}}"#,
            Value::from(query),
            "x".repeat(70_000)
        );
        let cut = &body[..64 * 1024];
        let c = calls(cut);
        assert_eq!(c.len(), 6, "{}", &cut[..300]);
        assert_eq!(c[5].username.as_deref(), Some("bob@x.test"));
        // A long comment at the query's end, with escapes before it.
        let query = format!(
            "mutation {{ {guesses} b: login(username: \"é\\\"\") }} #{}",
            "c".repeat(70_000)
        );
        let body = serde_json::json!({ "query": query }).to_string();
        let c = calls(&body[..64 * 1024]);
        assert_eq!(c.len(), 6);
        assert_eq!(c[5].username.as_deref(), Some("é\""));
        // A batch: each object as far as the buffer goes (the second cut in its query).
        let one = serde_json::json!({ "query": format!("mutation {{ {guesses} }}") }).to_string();
        let last = Value::from(format!("mutation {{ {guesses} }} #{}", "c".repeat(70_000)));
        let body = format!(
            "[{{\"extensions\":[1,{{}}],\"query\":\"query {{ me }}\"}}, {one},{one}, {{\"query\":{last}}}]"
        );
        let c = calls(&body[..64 * 1024]);
        assert_eq!(c.len(), 15);
        assert_eq!(
            c.iter().map(|c| c.op).collect::<Vec<_>>()[..11],
            [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3]
        );
        // Any cut of a hostile body: never a panic.
        let hostile = r#"[{"query":"mutation{a:login(username:\"\ud83d\ude00\u12\u00e9é\\\""},"variables":{"x":[1,"]"]},{"operationName":"\u"#;
        let (l, u) = fields();
        for cut in 0..=hostile.len() {
            let _ = login_calls(&hostile.as_bytes()[..cut], None, &l, &u);
        }
        let _ = calls("[}");
        let _ = calls("{\"query\": }");
    }

    #[test]
    fn raw_graphql_and_form_bodies_are_read() {
        let (l, u) = fields();
        let query = r#"mutation L($u: String) { a: login(username: "x", password: "p1") { token } b: signIn(email: $u) { token } }"#;
        let raw = login_calls(query.as_bytes(), Some("application/graphql"), &l, &u);
        assert_eq!(
            names(&raw),
            [("a".into(), Some("x".into())), ("b".into(), None)]
        );
        // A form: percent-encoded, `+` a space, variables as JSON.
        let form = format!(
            "operationName=L&query={}&variables=%7B%22u%22%3A%22bob%40x.test%22%7D",
            query
                .replace(' ', "+")
                .replace('"', "%22")
                .replace('$', "%24")
                .replace("mutation", "%6Dutation")
        );
        let c = login_calls(
            form.as_bytes(),
            Some("Application/X-WWW-Form-Urlencoded; charset=utf-8"),
            &l,
            &u,
        );
        assert_eq!(
            names(&c),
            [
                ("a".into(), Some("x".into())),
                ("b".into(), Some("bob@x.test".into()))
            ]
        );
        // Cut anywhere: never a panic.
        for cut in 0..=form.len() {
            let ct = Some("application/x-www-form-urlencoded");
            let _ = login_calls(&form.as_bytes()[..cut], ct, &l, &u);
            let _ = login_calls(
                &"é".repeat(9).as_bytes()[..cut.min(18)],
                Some("application/graphql"),
                &l,
                &u,
            );
        }
    }

    #[test]
    fn calls_skipped_by_a_literal_condition_are_no_attempts() {
        let q = r#"{"query":"mutation M($v: Boolean!) { a: login(username: \"x\") @skip(if: true) { token } b: login(username: \"x\") @include(if: false) { token } c: login(username: \"x\") @skip(if: false) @include(if: true) { token } d: login(username: \"x\") @skip(if: $v) { token } ... on Mutation @include(if: false) { e: login(username: \"x\") { token } } ... @skip(if: $v) { f: login(username: \"x\") { token } } }"}"#;
        let keys: Vec<String> = calls(q).into_iter().map(|c| c.key).collect();
        assert_eq!(keys, ["c", "d", "f"]);
    }

    #[test]
    fn login_fields_under_a_namespace_field_are_calls() {
        let c = calls(
            r#"{"query":"mutation { auth { a1: login(username: \"x\", password: \"p1\") { token } ... on AuthMutations { a2: login(username: \"y\") { token } } me { login(username: \"deeper\") { token } } } a3: login(username: \"z\") { token } }"}"#,
        );
        assert_eq!(
            c.iter()
                .map(|c| (c.ns.as_deref(), c.key.as_str(), c.username.as_deref()))
                .collect::<Vec<_>>(),
            [
                (Some("auth"), "a1", Some("x")),
                (Some("auth"), "a2", Some("y")),
                (None, "a3", Some("z")),
            ]
        );
        let resp =
            br#"{"data":{"auth":{"a1":{"token":"t"},"a2":{"user":{"id":1}}},"a3":{"token":"v"}},
            "errors":[{"message":"bad","path":["auth","a2"]}]}"#;
        assert_eq!(outcomes(&c, resp), [Some(true), Some(false), Some(true)]);
        let resp = br#"{"data":{"auth":null,"a3":null}}"#;
        assert_eq!(outcomes(&c, resp), [Some(false); 3]);
    }

    #[test]
    fn the_media_type_alone_chooses_the_reader() {
        // A parameter naming another type changes nothing for servers, nor for the reader.
        let (l, u) = fields();
        let body = r#"{"query":"mutation { a: login(username:\"x\", password:\"p\") { token } b: login(username:\"y\", password:\"q\") { token } }"}"#;
        for ct in [
            "application/json; x=x-www-form-urlencoded",
            "application/x-www-form-urlencoded",
            "Application/JSON",
        ] {
            assert_eq!(
                login_calls(body.as_bytes(), Some(ct), &l, &u).len(),
                2,
                "{ct}"
            );
        }
    }

    #[test]
    fn a_mutation_selecting_a_login_field_of_its_result_makes_no_call() {
        // `login` as a user's field in the result of a mutation taking arguments, and a login
        // field without arguments under a namespace: no calls.
        for q in [
            r#"{"query":"mutation { createUser(input: {name: \"x\"}) { id login } }"}"#,
            r#"{"query":"mutation { auth { login { id } } }"}"#,
        ] {
            assert!(calls(q).is_empty(), "{q}");
        }
        assert_eq!(
            calls(r#"{"query":"mutation { auth { login(username: \"x\", password: \"p\") { token } } }"}"#).len(),
            1
        );
    }
}
