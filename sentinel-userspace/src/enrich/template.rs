//! Endpoint templates learned from traffic: `/accounts/10231` -> `/accounts/{id}`.
//!
//! Two rules, applied per path segment:
//! 1. Shape: a segment that looks like an identifier (decimal number, UUID, long hex string,
//!    long opaque token, e-mail address) is replaced by a typed placeholder at once.
//! 2. Cardinality: under each template prefix the learner counts the distinct literal values it
//!    sees at the next position; once more than `max_literals` distinct values have appeared
//!    there, that position becomes `{param}` (this catches user names, slugs and the like).
//!
//! Memory is bounded: at most `max_nodes` trie nodes; past that, unseen literal segments are
//! folded into `{other}` so a scanner hitting random paths cannot grow the table.
//!
//! A path is read as most servers route it first ([`canonical`]): in lower case, unreserved
//! characters' escapes decoded, `;` parameters, empty and `.` segments dropped, `..` resolved.
//! Spellings of one endpoint are one template, so a client cannot multiply the limits learned
//! per endpoint by spelling it `/Balance`, `/BALANCE` and `/b%61lance`.

use std::{borrow::Cow, collections::HashMap, hash::BuildHasherDefault};

use crate::reassembly::FxHasher;

/// A node's map: at most `max_literals` entries, so a fast hash open to collision flooding costs
/// bounded time only.
type NodeMap<K> = HashMap<K, usize, BuildHasherDefault<FxHasher>>;

/// Bounds of the learner.
#[derive(Clone, Copy, Debug)]
pub struct TemplateLimits {
    /// Distinct literals at one position before it becomes `{param}`.
    pub max_literals: usize,
    /// Trie nodes (distinct template prefixes) kept at most.
    pub max_nodes: usize,
    /// Path segments considered (deeper ones are folded into the last).
    pub max_depth: usize,
}

impl Default for TemplateLimits {
    fn default() -> Self {
        Self {
            max_literals: 50,
            max_nodes: 20_000,
            max_depth: 12,
        }
    }
}

#[derive(Default)]
struct Node {
    /// Literal children.
    children: NodeMap<String>,
    /// Set once the position below this node is a parameter.
    param: Option<usize>,
    /// Typed placeholders seen below this node (`{id}`, `{uuid}`, ...).
    typed: NodeMap<&'static str>,
}

/// The learner: call [`Templates::template`] for every request path.
pub struct Templates {
    nodes: Vec<Node>,
    limits: TemplateLimits,
    /// Paths whose literals were folded into `{other}` because the node budget was spent.
    pub folded: u64,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new(TemplateLimits::default())
    }
}

/// The placeholder for a segment that is an identifier by its shape alone.
pub fn shape_placeholder(seg: &str) -> Option<&'static str> {
    let n = seg.len();
    if n == 0 {
        return None;
    }
    let all = |f: fn(u8) -> bool| seg.bytes().all(f);
    if all(|b| b.is_ascii_digit()) {
        return Some("{id}");
    }
    if n == 36
        && seg.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
    {
        return Some("{uuid}");
    }
    if n >= 16 && all(|b| b.is_ascii_hexdigit()) {
        return Some("{hash}");
    }
    if seg.contains('@') && seg.contains('.') {
        return Some("{email}");
    }
    // Long opaque tokens: mixed letters and digits, no separators a human would use.
    let has_digit = seg.bytes().any(|b| b.is_ascii_digit());
    let has_alpha = seg.bytes().any(|b| b.is_ascii_alphabetic());
    if n >= 20
        && has_digit
        && has_alpha
        && all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Some("{token}");
    }
    None
}

/// A request path as the templates read it, the spellings most servers route to one handler
/// made one: ASCII letters in lower case (IIS, ASP.NET and many Java and Windows stacks ignore
/// case; on a server that does not, paths differing only in case are one endpoint's misspellings
/// at most), `%XX` escapes of unreserved characters decoded (RFC 3986 §6.2.2.2: `/b%61lance` is
/// `/balance`; other escapes stay, their hex digits in lower case), a segment's `;` parameters
/// dropped (Tomcat and Spring route `/balance;jsessionid=x` to `/balance`), empty and `.`
/// segments dropped and `..` resolved (RFC 3986 §5.2.4), never above the root; the trailing
/// slash goes with the empty segments. Borrowed when there is nothing to change (nearly every
/// path): no allocation per request.
pub fn canonical(path: &str) -> Cow<'_, str> {
    let clean = !path
        .bytes()
        .any(|b| b.is_ascii_uppercase() || b == b'%' || b == b';')
        && !path.contains("/.");
    if clean {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    // Where each kept segment starts in `out`, for `..`.
    let mut starts: Vec<usize> = Vec::new();
    for raw in path.split('/') {
        let raw = raw.split(';').next().unwrap_or_default();
        let start = out.len();
        out.push('/');
        push_canonical_segment(&mut out, raw);
        match &out[start + 1..] {
            "" | "." => out.truncate(start),
            ".." => {
                out.truncate(starts.pop().unwrap_or(start));
            }
            _ => starts.push(start),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Appends `seg` to `out` in lower case, escapes of unreserved characters decoded.
fn push_canonical_segment(out: &mut String, seg: &str) {
    let b = seg.as_bytes();
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            let c = (h * 16 + l) as u8;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(c.to_ascii_lowercase()));
            } else {
                out.push('%');
                out.push(char::from(b[i + 1].to_ascii_lowercase()));
                out.push(char::from(b[i + 2].to_ascii_lowercase()));
            }
            i += 3;
            continue;
        }
        // Copy up to the next escape as it is, in lower case (UTF-8 stays whole).
        let next = b[i + 1..]
            .iter()
            .position(|&c| c == b'%')
            .map_or(b.len(), |p| i + 1 + p);
        out.push_str(&seg[i..next].to_ascii_lowercase());
        i = next;
    }
}

impl Templates {
    /// A learner with these bounds.
    pub fn new(limits: TemplateLimits) -> Self {
        Self {
            nodes: vec![Node::default()],
            limits,
            folded: 0,
        }
    }

    /// Number of template prefixes known.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True before any path was seen.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    fn alloc(&mut self) -> Option<usize> {
        if self.nodes.len() >= self.limits.max_nodes {
            return None;
        }
        self.nodes.push(Node::default());
        Some(self.nodes.len() - 1)
    }

    /// Learns from `path` (without the query) and returns its template.
    pub fn template(&mut self, path: &str) -> String {
        self.template_of(path, true)
    }

    /// The template of `path` as a request answered `status` (0: no answer) shows it. Only
    /// paths the server knows teach: a scanner's 404s (a directory list of a few hundred
    /// names) would turn the first position into `{param}`, and `/login` into `/{param}`, for
    /// good. A path that does not teach is read with what was learned; from its first segment
    /// the learner does not know on, segments stay literal (identifiers still by shape).
    pub fn template_for(&mut self, path: &str, status: u16) -> String {
        self.template_of(path, !matches!(status, 0 | 404))
    }

    fn template_of(&mut self, path: &str, learn: bool) -> String {
        let path = canonical(path);
        let mut out = String::with_capacity(path.len());
        let mut node = 0usize;
        let mut segs = path.split('/').filter(|s| !s.is_empty()).peekable();
        if segs.peek().is_none() {
            return "/".into();
        }
        let mut folded = false;
        // Not learning, past what was learned: the rest is read by shape alone.
        let mut detached = false;
        for (depth, seg) in segs.enumerate() {
            out.push('/');
            if depth >= self.limits.max_depth {
                out.push_str("{rest}");
                break;
            }
            if detached {
                out.push_str(shape_placeholder(seg).unwrap_or(seg));
                continue;
            }
            if let Some(ph) = shape_placeholder(seg) {
                out.push_str(ph);
                let next = match self.nodes[node].typed.get(ph) {
                    Some(n) => *n,
                    None if !learn => {
                        detached = true;
                        continue;
                    }
                    None => match self.alloc() {
                        Some(n) => {
                            self.nodes[node].typed.insert(ph, n);
                            n
                        }
                        None => {
                            folded = true;
                            break;
                        }
                    },
                };
                node = next;
                continue;
            }
            if let Some(p) = self.nodes[node].param {
                out.push_str("{param}");
                node = p;
                continue;
            }
            if let Some(n) = self.nodes[node].children.get(seg) {
                out.push_str(seg);
                node = *n;
                continue;
            }
            if !learn {
                out.push_str(seg);
                detached = true;
                continue;
            }
            // A new literal here: too many already means this position is a parameter.
            if self.nodes[node].children.len() >= self.limits.max_literals {
                let p = match self.alloc() {
                    Some(p) => p,
                    None => {
                        out.push_str("{other}");
                        folded = true;
                        break;
                    }
                };
                self.nodes[node].param = Some(p);
                // The literals learned so far are now just values of the parameter.
                self.nodes[node].children.clear();
                out.push_str("{param}");
                node = p;
                continue;
            }
            match self.alloc() {
                Some(n) => {
                    self.nodes[node].children.insert(seg.to_owned(), n);
                    out.push_str(seg);
                    node = n;
                }
                None => {
                    out.push_str("{other}");
                    folded = true;
                    break;
                }
            }
        }
        if folded {
            self.folded += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_recognised_by_shape() {
        let mut t = Templates::default();
        assert_eq!(t.template("/accounts/10231"), "/accounts/{id}");
        assert_eq!(
            t.template("/accounts/7/transactions"),
            "/accounts/{id}/transactions"
        );
        assert_eq!(
            t.template("/orders/123e4567-e89b-12d3-a456-426614174000"),
            "/orders/{uuid}"
        );
        assert_eq!(t.template("/blobs/0123456789abcdef0123"), "/blobs/{hash}");
        assert_eq!(t.template("/users/jane.doe@example.com"), "/users/{email}");
        assert_eq!(t.template("/reset/aZ81kLmn02pQrs7TuvWx9"), "/reset/{token}");
        assert_eq!(t.template("/"), "/");
        assert_eq!(t.template("/login"), "/login");
        assert_eq!(t.template("/login/"), "/login");
    }

    #[test]
    fn spellings_servers_route_alike_are_one_template() {
        let mut t = Templates::default();
        for path in [
            "/balance",
            "/Balance",
            "/BALANCE/",
            "//balance",
            "/b%61lance",
            "/%62%41LANCE",
            "/balance;jsessionid=0A1B",
            "/./balance/.",
            "/%2e/balance",
            "/x/../balance",
            "/../../balance",
        ] {
            assert_eq!(t.template(path), "/balance", "{path}");
        }
        assert_eq!(t.len(), 2, "one node besides the root");
        assert_eq!(t.template("/Accounts/42/TX/7"), "/accounts/{id}/tx/{id}");
        assert_eq!(t.template("/accounts/%34%32"), "/accounts/{id}");
        // Reserved characters' escapes stay escaped (only their case is one).
        assert_eq!(t.template("/a%2Fb"), "/a%2fb");
        assert_eq!(t.template("/a%2fb"), "/a%2fb");
        assert_eq!(canonical("/r%C3%A9sum%C3%A9"), "/r%c3%a9sum%c3%a9");
        assert_eq!(canonical("/Ünï/%zz/%4"), "/Ünï/%zz/%4");
        assert_eq!(canonical("/.."), "/");
        assert!(matches!(canonical("/accounts/42/"), Cow::Borrowed(_)));
        // The object id under a template's `{id}` is read from the same segments.
        let ep = t.template("/./Accounts/%34%32");
        assert_eq!(
            crate::models::enumeration::object_id("/./Accounts/%34%32", &ep, ""),
            Some(42)
        );
    }

    #[test]
    fn a_scanners_404s_teach_nothing() {
        let mut t = Templates::default();
        assert_eq!(t.template_for("/login", 401), "/login");
        assert_eq!(t.template_for("/accounts/7", 200), "/accounts/{id}");
        // A directory scan: hundreds of names the server does not have.
        for i in 0..300 {
            let path = format!("/admin{i}/config.php");
            assert_eq!(t.template_for(&path, 404), path);
        }
        let nodes = t.len();
        assert_eq!(t.template_for("/login", 200), "/login");
        assert_eq!(t.template_for("/balance", 200), "/balance");
        assert_eq!(t.template_for("/accounts/8", 200), "/accounts/{id}");
        // Known prefixes still read as learned; unknown tails by shape.
        assert_eq!(
            t.template_for("/accounts/9/x/12", 404),
            "/accounts/{id}/x/{id}"
        );
        assert_eq!(t.template_for("/nothing", 0), "/nothing");
        assert_eq!(t.len(), nodes + 1, "only /balance was learned");
    }

    #[test]
    fn many_distinct_literals_become_a_parameter() {
        let mut t = Templates::new(TemplateLimits {
            max_literals: 5,
            ..Default::default()
        });
        for name in ["ann", "bob", "cid", "dan", "eve"] {
            assert_eq!(
                t.template(&format!("/users/{name}/profile")),
                format!("/users/{name}/profile")
            );
        }
        assert_eq!(t.template("/users/fay/profile"), "/users/{param}/profile");
        assert_eq!(t.template("/users/ann/profile"), "/users/{param}/profile");
        // Other positions keep their literals.
        assert_eq!(t.template("/health"), "/health");
    }

    #[test]
    fn memory_is_bounded_against_random_paths() {
        let mut t = Templates::new(TemplateLimits {
            max_literals: 1_000_000,
            max_nodes: 100,
            max_depth: 12,
        });
        for i in 0..10_000 {
            t.template(&format!("/scan-{i}/x{i}"));
        }
        assert!(t.len() <= 100);
        assert!(t.folded > 0);
        assert!(t.template("/scan-99999/z").contains("{other}"));
    }

    #[test]
    fn depth_is_bounded() {
        let mut t = Templates::new(TemplateLimits {
            max_depth: 3,
            ..Default::default()
        });
        assert_eq!(t.template("/a/b/c/d/e"), "/a/b/c/{rest}");
    }
}
