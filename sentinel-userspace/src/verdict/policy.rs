//! The response policy: which alerts lead to which action, for how long, with escalation on
//! repeat and shadow mode per rule and globally.
//!
//! ```toml
//! mode = "enforce"            # or "shadow": decide and log, never act
//!
//! [escalation]
//! window = "1h"               # repeats within this window escalate
//! prefix_v4 = 24              # the "wider prefix" step
//! prefix_v6 = 64
//!
//! [allow]                     # never acted on (alerts are still raised)
//! addresses = ["192.0.2.0/28"]
//! principals = ["user:ops-monitor"]
//!
//! [[rule]]
//! kinds = ["brute_force", "credential_stuffing"]
//! min_severity = "medium"
//! actions = ["throttle", "block", "block_prefix"]   # 1st, 2nd, 3rd+ offence
//! rate = "learned"            # or packets per second, e.g. 20
//! ttl = "15m"
//! also = ["revoke_token"]     # taken with every step (kill_flow, revoke_token)
//! ```
//!
//! Rules are tried in order; the first whose kinds and severity match decides. A policy that does
//! not parse or validate is rejected with the line and the reason, and the running one is kept.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::{
    config::{
        TomlStep::{self, Index, Key},
        toml_line,
    },
    models::{Action, Alert, AlertKind, Severity},
};

/// Global mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Act.
    #[default]
    Enforce,
    /// Decide and record, but never act.
    Shadow,
}

/// A step of a rule's escalation ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Only alert.
    Alert,
    /// Throttle the source address.
    Throttle,
    /// Block the source address.
    Block,
    /// Block the source's wider prefix (escalation.prefix_v4 / prefix_v6).
    BlockPrefix,
    /// Kill the offending flow.
    KillFlow,
    /// Revoke the principal's token at the identity provider.
    RevokeToken,
}

impl Step {
    /// The step as a policy names it (`block_prefix`).
    pub fn name(self) -> &'static str {
        match self {
            Step::Alert => "alert",
            Step::Throttle => "throttle",
            Step::Block => "block",
            Step::BlockPrefix => "block_prefix",
            Step::KillFlow => "kill_flow",
            Step::RevokeToken => "revoke_token",
        }
    }

    /// The alert's `action` field for this step.
    pub fn action(self) -> Action {
        match self {
            Step::Alert => Action::Alert,
            Step::Throttle => Action::Throttle,
            Step::Block | Step::BlockPrefix => Action::Block,
            Step::KillFlow => Action::KillFlow,
            Step::RevokeToken => Action::RevokeToken,
        }
    }
}

/// Throttle rate of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Rate {
    /// The model's learned limit (falls back to `fallback_rate`).
    Learned(LearnedTag),
    /// Fixed packets per second.
    Fixed(u64),
}

/// The literal `"learned"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LearnedTag {
    /// Use the model's learned limit.
    Learned,
}

fn default_rate() -> Rate {
    Rate::Learned(LearnedTag::Learned)
}

fn default_ttl() -> String {
    "10m".into()
}

/// One rule as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    kinds: Vec<AlertKind>,
    #[serde(default = "min_sev_default")]
    min_severity: Severity,
    actions: Vec<Step>,
    #[serde(default = "default_rate")]
    rate: Rate,
    #[serde(default = "default_ttl")]
    ttl: String,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    also: Vec<Step>,
}

fn min_sev_default() -> Severity {
    Severity::Low
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEscalation {
    #[serde(default = "default_window")]
    window: String,
    #[serde(default = "default_v4")]
    prefix_v4: u8,
    #[serde(default = "default_v6")]
    prefix_v6: u8,
}

fn default_window() -> String {
    "1h".into()
}
fn default_v4() -> u8 {
    24
}
fn default_v6() -> u8 {
    64
}

impl Default for RawEscalation {
    fn default() -> Self {
        Self {
            window: default_window(),
            prefix_v4: default_v4(),
            prefix_v6: default_v6(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    principals: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    mode: PolicyMode,
    #[serde(default = "fallback_default")]
    fallback_rate: u64,
    #[serde(default)]
    escalation: RawEscalation,
    #[serde(default)]
    allow: RawAllow,
    #[serde(default, rename = "rule")]
    rules: Vec<RawRule>,
}

fn fallback_default() -> u64 {
    20
}

/// A validated rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Kinds it applies to.
    pub kinds: Vec<AlertKind>,
    /// Lowest severity it applies to.
    pub min_severity: Severity,
    /// Escalation ladder: the n-th offence in the window takes step n (the last repeats); at
    /// most [`MAX_STEPS`] steps.
    pub steps: Vec<Step>,
    /// Throttle rate.
    pub rate: Rate,
    /// How long a verdict lasts.
    pub ttl: Duration,
    /// Shadow mode for this rule.
    pub shadow: bool,
    /// Actions taken alongside every step of the ladder (`kill_flow`, `revoke_token`).
    pub also: Vec<Step>,
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Global mode.
    pub mode: PolicyMode,
    /// Throttle rate when a rule says `learned` but the alert has no learned limit.
    pub fallback_rate: u64,
    /// Repeats within this window escalate.
    pub window: Duration,
    /// Wider prefix for IPv4.
    pub prefix_v4: u8,
    /// Wider prefix for IPv6.
    pub prefix_v6: u8,
    /// Never acted on.
    pub allow_nets: Vec<IpNet>,
    /// Never acted on (display form, e.g. `user:ops`).
    pub allow_principals: Vec<String>,
    /// Rules in order.
    pub rules: Vec<Rule>,
}

/// Why a policy was rejected: where and what.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{}{}{}{message}",
    .file.as_ref().map(|f| format!("{f}: ")).unwrap_or_default(),
    .line.map(|l| format!("line {l}")).unwrap_or_default(),
    match (.line, .column) {
        (Some(_), Some(c)) => format!(", column {c}: "),
        (Some(_), None) => ": ".to_owned(),
        (None, _) => String::new(),
    }
)]
pub struct PolicyError {
    /// The policy file, when read from one.
    pub file: Option<String>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters), when known: for syntax and type errors.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl PolicyError {
    /// An error in policy text not (yet) tied to a file.
    fn in_text(line: Option<usize>, message: impl Into<String>) -> Self {
        Self {
            file: None,
            line,
            column: None,
            message: message.into(),
        }
    }
}

impl Policy {
    /// Parses and validates policy text.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let (place, message) = crate::config::toml_error(text, &e);
            PolicyError {
                column: place.map(|(_, c)| c),
                ..PolicyError::in_text(place.map(|(l, _)| l), message)
            }
        })?;
        let line = |path: &[TomlStep]| toml_line(text, path);
        let dur = |s: &str, what: &str, path: &[TomlStep]| {
            crate::clock::parse_duration(s)
                .map_err(|e| PolicyError::in_text(line(path), format!("{what}: {e}")))
        };
        let window = dur(
            &raw.escalation.window,
            "escalation.window",
            &[Key("escalation"), Key("window")],
        )?;
        // A block_prefix of a /0 would drop every source the allowlist does not name.
        for (field, len, range) in [
            ("prefix_v4", raw.escalation.prefix_v4, 8..=32),
            ("prefix_v6", raw.escalation.prefix_v6, 16..=128),
        ] {
            if !range.contains(&len) {
                return Err(PolicyError::in_text(
                    line(&[Key("escalation"), Key(field)]),
                    format!(
                        "escalation.{field} = {len}: must be /{} to /{}",
                        range.start(),
                        range.end()
                    ),
                ));
            }
        }
        let mut allow_nets = Vec::new();
        for (j, a) in raw.allow.addresses.iter().enumerate() {
            let t: crate::verdict::Target =
                a.parse()
                    .map_err(|e: crate::verdict::target::TargetError| {
                        PolicyError::in_text(
                            line(&[Key("allow"), Key("addresses"), Index(j)]),
                            format!("allow.addresses: {e}"),
                        )
                    })?;
            allow_nets.push(t.net());
        }
        let mut rules = Vec::new();
        for (i, r) in raw.rules.iter().enumerate() {
            // The rule's `[[rule]]` header.
            let at = || line(&[Key("rule"), Index(i)]);
            if r.kinds.is_empty() {
                return Err(PolicyError::in_text(
                    at(),
                    format!("rule {} has no kinds", i + 1),
                ));
            }
            if r.actions.is_empty() {
                return Err(PolicyError::in_text(
                    at(),
                    format!("rule {} has no actions", i + 1),
                ));
            }
            if r.actions.len() > MAX_STEPS {
                return Err(PolicyError::in_text(
                    at(),
                    format!(
                        "rule {} has {} actions: a ladder takes at most {MAX_STEPS} (its last step repeats)",
                        i + 1,
                        r.actions.len()
                    ),
                ));
            }
            if let Rate::Fixed(0) = r.rate {
                return Err(PolicyError::in_text(
                    at(),
                    format!("rule {}: rate must be at least 1 packet/s", i + 1),
                ));
            }
            let ttl = dur(&r.ttl, "ttl", &[Key("rule"), Index(i), Key("ttl")])?;
            if ttl.is_zero() {
                return Err(PolicyError::in_text(
                    at(),
                    format!("rule {}: ttl must be longer than zero", i + 1),
                ));
            }
            if let Some((j, bad)) = r
                .also
                .iter()
                .enumerate()
                .find(|(_, s)| !matches!(s, Step::KillFlow | Step::RevokeToken))
            {
                return Err(PolicyError::in_text(
                    line(&[Key("rule"), Index(i), Key("also"), Index(j)]),
                    format!(
                        "rule {}: also = [\"{}\"] is not allowed: `also` takes kill_flow and revoke_token (the ladder in `actions` decides the kernel verdict)",
                        i + 1,
                        bad.name()
                    ),
                ));
            }
            rules.push(Rule {
                kinds: r.kinds.clone(),
                min_severity: r.min_severity,
                steps: r.actions.clone(),
                rate: r.rate,
                ttl,
                shadow: r.shadow,
                also: r.also.clone(),
            });
        }
        Ok(Policy {
            mode: raw.mode,
            fallback_rate: raw.fallback_rate.max(1),
            window,
            prefix_v4: raw.escalation.prefix_v4,
            prefix_v6: raw.escalation.prefix_v6,
            allow_nets,
            allow_principals: raw.allow.principals,
            rules,
        })
    }

    /// Reads and validates a policy file.
    pub fn load(path: &std::path::Path) -> Result<Self, PolicyError> {
        let file = Some(path.display().to_string());
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: file.clone(),
            line: None,
            column: None,
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text).map_err(|e| PolicyError { file, ..e })
    }
}

/// What to do about one alert.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The step taken.
    pub step: Step,
    /// Address or prefix the verdict applies to (none for alert-only and token revocation).
    pub target: Option<IpNet>,
    /// Throttle rate (packets/s) for throttle steps.
    pub rate_pps: Option<u64>,
    /// How long it lasts.
    pub ttl: Duration,
    /// Recorded but not acted on (global or rule shadow mode).
    pub shadow: bool,
    /// Which offence this was within the window (1-based), counted up to [`MAX_STEPS`] (any
    /// later one is reported as that).
    pub offence: usize,
    /// Actions taken alongside the step (`kill_flow`, `revoke_token`).
    pub also: Vec<Step>,
}

impl Decision {
    /// True when the decision kills the offending flow (as its step or alongside it).
    pub fn kills_flow(&self) -> bool {
        self.step == Step::KillFlow || self.also.contains(&Step::KillFlow)
    }

    /// True when the decision revokes the principal's token (as its step or alongside it).
    pub fn revokes_token(&self) -> bool {
        self.step == Step::RevokeToken || self.also.contains(&Step::RevokeToken)
    }
}

/// Most steps a rule's ladder may have. Offences are counted up to this many: no ladder tells
/// more apart, so each source keeps at most this many timestamps.
pub const MAX_STEPS: usize = 16;

/// Most sources whose offences are remembered at once.
const MAX_TRACKED: usize = 1_000_000;

/// A source's offences within the escalation window, as a ladder counts them, in bounded
/// memory: the last `MAX_STEPS - 1` timestamps in the order they came, and the latest of the
/// ones before them.
///
/// It counts as the list of every timestamp would, up to [`MAX_STEPS`]: that list forgets its
/// first timestamps while they are out of the window and stops at the first one inside. The
/// older ones kept here as their latest are either all out (then all are forgotten, and the
/// recent ones are looked at as before) or not (then the list stops among them and still holds
/// them and the `MAX_STEPS - 1` recent ones: [`MAX_STEPS`] or more). Timestamps need not come in
/// order.
#[derive(Debug, Default)]
struct Offences {
    /// The latest timestamp of the offences before `recent`, while any of them is held.
    older: Option<u64>,
    /// The last offences, oldest first; at most `MAX_STEPS - 1`.
    recent: VecDeque<u64>,
}

impl Offences {
    /// Forgets the first offences while they are outside the window ending at `now`.
    fn expire(&mut self, now: u64, window_ns: u64) {
        let out = |t: u64| now.saturating_sub(t) >= window_ns;
        match self.older {
            Some(t) if !out(t) => return,
            Some(_) => self.older = None,
            None => {}
        }
        while self.recent.front().is_some_and(|t| out(*t)) {
            self.recent.pop_front();
        }
    }

    fn push(&mut self, t: u64) {
        self.recent.push_back(t);
        if self.recent.len() == MAX_STEPS {
            let first = self.recent.pop_front().expect("full");
            self.older = Some(self.older.map_or(first, |o| o.max(first)));
        }
    }

    /// Offences held, up to [`MAX_STEPS`].
    fn count(&self) -> usize {
        self.recent.len() + usize::from(self.older.is_some())
    }

    /// The last offence that came.
    fn last(&self) -> Option<u64> {
        self.recent.back().copied()
    }
}

/// Applies a policy to alerts, remembering offences per source for escalation.
pub struct Decider {
    policy: Policy,
    offences: HashMap<IpAddr, Offences>,
    max_tracked: usize,
    /// Alert time before which sweeping `offences` frees nothing (no source's last offence
    /// leaves the window sooner).
    next_sweep_ns: u64,
}

impl Decider {
    /// A decider for `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            offences: HashMap::new(),
            max_tracked: MAX_TRACKED,
            next_sweep_ns: 0,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy (offence history is kept).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
        // Its window may be shorter.
        self.next_sweep_ns = 0;
    }

    /// True when the alert's address or principal is allowlisted.
    pub fn allowlisted(&self, alert: &Alert) -> bool {
        let ip_ok = alert
            .src_ip
            .parse::<IpAddr>()
            .map(|ip| self.policy.allow_nets.iter().any(|n| n.contains(&ip)))
            .unwrap_or(false);
        let p_ok = alert
            .principal
            .as_ref()
            .is_some_and(|p| self.policy.allow_principals.iter().any(|a| a == p));
        ip_ok || p_ok
    }

    /// Decides what to do about `alert`; `None` when no rule matches or it is allowlisted.
    pub fn decide(&mut self, alert: &Alert) -> Option<Decision> {
        if self.allowlisted(alert) {
            return None;
        }
        let rule = self
            .policy
            .rules
            .iter()
            .find(|r| r.kinds.contains(&alert.kind) && alert.severity >= r.min_severity)?
            .clone();
        // No address (`unknown`: a client a trusted proxy could not name), nothing to act on
        // in the kernel; the unspecified address is no source either.
        let ip: Option<IpAddr> = alert
            .src_ip
            .parse()
            .ok()
            .filter(|ip: &IpAddr| !ip.is_unspecified());
        let shadow = self.policy.mode == PolicyMode::Shadow || rule.shadow;
        // Offences that escalate are the ones acted on in the kernel: an alert-only or token
        // rule, or a rule in shadow, does not push a source up another rule's ladder.
        let counts = !shadow
            && rule.steps.iter().any(|s| {
                matches!(
                    s,
                    Step::Throttle | Step::Block | Step::BlockPrefix | Step::KillFlow
                )
            });
        let offence = match ip {
            Some(ip) => self.offence(ip, alert.ts_ns, counts),
            None => 1,
        };
        let step = rule.steps[(offence - 1).min(rule.steps.len() - 1)];
        let target = match (step, ip) {
            (Step::Throttle | Step::Block | Step::KillFlow, Some(ip)) => Some(IpNet::from(ip)),
            (Step::BlockPrefix, Some(ip)) => {
                let len = if ip.is_ipv4() {
                    self.policy.prefix_v4
                } else {
                    self.policy.prefix_v6
                };
                IpNet::new(ip, len).ok().map(|n| n.trunc())
            }
            _ => None,
        };
        let rate_pps = (step == Step::Throttle).then(|| match rule.rate {
            Rate::Fixed(r) => r,
            Rate::Learned(_) => alert
                .recommended_rate
                .map(|r| r.ceil().max(1.0) as u64)
                .unwrap_or(self.policy.fallback_rate),
        });
        Some(Decision {
            step,
            target,
            rate_pps,
            ttl: rule.ttl,
            shadow,
            offence,
            also: rule.also,
        })
    }

    /// Which offence of `ip` within the window one at `now` is, up to [`MAX_STEPS`]; remembered
    /// when it `counts`. A source that cannot be remembered (every slot holds a source with an
    /// offence in the window) is on its first.
    fn offence(&mut self, ip: IpAddr, now: u64, counts: bool) -> usize {
        let window_ns = self.policy.window.as_nanos() as u64;
        if !self.offences.contains_key(&ip)
            && (!counts || (self.offences.len() >= self.max_tracked && !self.sweep(now)))
        {
            return 1;
        }
        let q = self.offences.entry(ip).or_default();
        q.expire(now, window_ns);
        if counts {
            q.push(now);
            q.count()
        } else {
            (q.count() + 1).min(MAX_STEPS)
        }
    }

    /// Forgets the sources whose last offence is outside the window; true when that made room
    /// for another. A sweep walks every source: it runs only once one can have left the window.
    fn sweep(&mut self, now: u64) -> bool {
        if now < self.next_sweep_ns {
            return false;
        }
        let window_ns = self.policy.window.as_nanos() as u64;
        let mut next = u64::MAX;
        self.offences.retain(|_, q| {
            let Some(last) = q.last().filter(|t| now.saturating_sub(*t) < window_ns) else {
                return false;
            };
            next = next.min(last.saturating_add(window_ns));
            true
        });
        self.next_sweep_ns = next;
        let room = self.offences.len() < self.max_tracked;
        if !room {
            tracing::warn!(
                sources = self.offences.len(),
                "every offence slot holds a source with an offence in the escalation window: new sources are not escalated until one leaves it"
            );
        }
        room
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
mode = "enforce"

[escalation]
window = "1h"
prefix_v4 = 24

[allow]
addresses = ["192.0.2.0/28"]
principals = ["user:ops"]

[[rule]]
kinds = ["brute_force", "credential_stuffing"]
min_severity = "medium"
actions = ["throttle", "block", "block_prefix"]
rate = "learned"
ttl = "15m"

[[rule]]
kinds = ["sql_injection"]
actions = ["block"]
ttl = "1h"
shadow = true
"#;

    fn alert(kind: AlertKind, sev: Severity, ip: &str, ts_s: u64) -> Alert {
        Alert {
            severity: sev,
            recommended_rate: Some(4.2),
            ..crate::models::synth::alert(kind, ip, ts_s * 1_000_000_000)
        }
    }

    #[test]
    fn only_offences_acted_on_escalate() {
        let policy = r#"
[[rule]]
kinds = ["scraping"]
actions = ["block"]
shadow = true

[[rule]]
kinds = ["new_country"]
actions = ["alert"]

[[rule]]
kinds = ["brute_force"]
actions = ["throttle", "block", "block_prefix"]
"#;
        let mut d = Decider::new(Policy::parse(policy).unwrap());
        let ip = "203.0.113.9";
        for (k, t) in [
            (AlertKind::Scraping, 0),
            (AlertKind::Scraping, 1),
            (AlertKind::NewCountry, 2),
        ] {
            d.decide(&alert(k, Severity::High, ip, t)).unwrap();
        }
        // The first brute force acted on is the source's first offence.
        let first = d
            .decide(&alert(AlertKind::BruteForce, Severity::High, ip, 3))
            .unwrap();
        assert_eq!((first.step, first.offence), (Step::Throttle, 1));
        let second = d
            .decide(&alert(AlertKind::BruteForce, Severity::High, ip, 4))
            .unwrap();
        assert_eq!((second.step, second.offence), (Step::Block, 2));
    }

    #[test]
    fn an_alert_about_an_unknown_client_blocks_no_address() {
        // A client a trusted proxy could not name: never the proxy, never the unspecified
        // address; the rule's other actions (a token to revoke, the alert) still go.
        let mut d = Decider::new(Policy::parse(POLICY).unwrap());
        let unknown =
            crate::enrich::principal::client_text(crate::enrich::principal::UNKNOWN_CLIENT);
        for src in [unknown.as_str(), "0.0.0.0", "::"] {
            for t in 0..3 {
                let got = d.decide(&alert(AlertKind::BruteForce, Severity::High, src, t));
                let got = got.expect("the rule matches");
                assert_eq!(got.target, None, "{src}: {got:?}");
            }
        }
    }

    #[test]
    fn escalates_throttle_block_prefix() {
        let mut d = Decider::new(Policy::parse(POLICY).unwrap());
        let a = |t| alert(AlertKind::BruteForce, Severity::High, "203.0.113.9", t);
        let d1 = d.decide(&a(0)).unwrap();
        assert_eq!(
            (d1.step, d1.rate_pps, d1.offence),
            (Step::Throttle, Some(5), 1)
        );
        assert_eq!(d1.target, Some("203.0.113.9/32".parse().unwrap()));
        assert_eq!(d1.ttl, Duration::from_secs(900));
        assert_eq!(d.decide(&a(10)).unwrap().step, Step::Block);
        let d3 = d.decide(&a(20)).unwrap();
        assert_eq!(d3.step, Step::BlockPrefix);
        assert_eq!(d3.target, Some("203.0.113.0/24".parse().unwrap()));
        assert_eq!(
            d.decide(&a(30)).unwrap().step,
            Step::BlockPrefix,
            "last step repeats"
        );
        // After the window, it starts over.
        assert_eq!(d.decide(&a(30 + 3601)).unwrap().step, Step::Throttle);
    }

    #[test]
    fn a_flood_of_offences_keeps_a_bounded_queue_and_escalates_as_before() {
        let mut d = Decider::new(Policy::parse(POLICY).unwrap());
        let ip = "203.0.113.9";
        let a = |ms: u64| Alert {
            ts_ns: ms * 1_000_000,
            ..alert(AlertKind::BruteForce, Severity::High, ip, 0)
        };
        let held = |d: &Decider| d.offences[&ip.parse::<IpAddr>().unwrap()].recent.len();
        for ms in 0..10_000 {
            let got = d.decide(&a(ms)).unwrap();
            let want = match ms {
                0 => Step::Throttle,
                1 => Step::Block,
                _ => Step::BlockPrefix,
            };
            assert_eq!(got.step, want, "offence {}", ms + 1);
            assert_eq!(got.offence, (ms as usize + 1).min(MAX_STEPS));
            assert!(held(&d) < MAX_STEPS, "{} held", held(&d));
        }
        // An hour after the first: the first is out, 9,999 (more than any ladder) are in.
        assert_eq!(d.decide(&a(3_600_000)).unwrap().step, Step::BlockPrefix);
        // An hour after the last: it starts over.
        assert_eq!(d.decide(&a(7_200_000)).unwrap().step, Step::Throttle);
        assert_eq!(d.decide(&a(7_200_001)).unwrap().step, Step::Block);
    }

    #[test]
    fn bounded_offences_count_as_every_timestamp_would() {
        // What escalation counted when every timestamp was kept.
        fn unbounded(q: &mut VecDeque<u64>, now: u64, window_ns: u64) -> usize {
            while q
                .front()
                .is_some_and(|t| now.saturating_sub(*t) >= window_ns)
            {
                q.pop_front();
            }
            q.push_back(now);
            q.len()
        }
        // A ladder as long as allowed: offences 1 to 15 throttle, the 16th and later block.
        let mut ladder = vec!["\"throttle\""; MAX_STEPS - 1];
        ladder.push("\"block\"");
        let policy = format!(
            "[escalation]\nwindow = \"10s\"\n[[rule]]\nkinds = [\"brute_force\"]\nactions = [{}]\n",
            ladder.join(", ")
        );
        let mut d = Decider::new(Policy::parse(&policy).unwrap());
        let window_ns = 10_000_000_000;
        let ip = "198.51.100.7";
        let mut all = VecDeque::new();
        let mut most = 0;
        // Bursts, lulls longer than the window, and timestamps out of order.
        let mut seed = 7u64;
        let mut now = 0u64;
        for i in 0..20_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = seed >> 33;
            now = match r % 100 {
                0 => now + 2 * window_ns,
                1..=9 => now.saturating_sub(r % window_ns),
                _ => now + r % (window_ns / 200),
            };
            let want = unbounded(&mut all, now, window_ns);
            most = most.max(want);
            let got = d
                .decide(&Alert {
                    ts_ns: now,
                    ..alert(AlertKind::BruteForce, Severity::High, ip, 0)
                })
                .unwrap();
            assert_eq!(
                got.offence,
                want.min(MAX_STEPS),
                "alert {i} of {want} in the window"
            );
            let step = if want < MAX_STEPS {
                Step::Throttle
            } else {
                Step::Block
            };
            assert_eq!(got.step, step, "alert {i}");
        }
        assert!(most > 10 * MAX_STEPS, "the full list held at most {most}");
        assert!(d.offences[&ip.parse::<IpAddr>().unwrap()].recent.len() < MAX_STEPS);
    }

    #[test]
    fn tracked_sources_are_bounded_and_freed_once_out_of_the_window() {
        let mut d = Decider::new(Policy::parse(POLICY).unwrap());
        d.max_tracked = 4;
        let at = |d: &mut Decider, ip: &str, t: u64| {
            d.decide(&alert(AlertKind::BruteForce, Severity::High, ip, t))
                .unwrap()
                .offence
        };
        for i in 1..=4 {
            assert_eq!(at(&mut d, &format!("198.51.100.{i}"), 0), 1);
        }
        // Every slot holds a source within the window: a fifth is not remembered.
        assert_eq!(at(&mut d, "198.51.100.5", 1), 1);
        assert_eq!(at(&mut d, "198.51.100.5", 2), 1);
        assert_eq!(d.offences.len(), 4);
        // The tracked ones still escalate.
        assert_eq!(at(&mut d, "198.51.100.1", 3), 2);
        // Once the other three are out of the window, their slots are free.
        assert_eq!(at(&mut d, "198.51.100.5", 3601), 1);
        assert_eq!(at(&mut d, "198.51.100.5", 3602), 2);
        assert_eq!(d.offences.len(), 2);
    }

    #[test]
    fn also_actions_go_with_every_step() {
        let p = POLICY.replace(
            "ttl = \"15m\"",
            "ttl = \"15m\"\nalso = [\"revoke_token\", \"kill_flow\"]",
        );
        let mut d = Decider::new(Policy::parse(&p).unwrap());
        let d1 = d
            .decide(&alert(
                AlertKind::BruteForce,
                Severity::High,
                "203.0.113.9",
                0,
            ))
            .unwrap();
        assert_eq!(d1.step, Step::Throttle);
        assert!(d1.revokes_token() && d1.kills_flow());
        let d2 = d
            .decide(&alert(
                AlertKind::BruteForce,
                Severity::High,
                "203.0.113.9",
                1,
            ))
            .unwrap();
        assert_eq!(d2.step, Step::Block);
        assert!(d2.revokes_token());
    }

    #[test]
    fn severity_allowlists_and_shadow() {
        let mut d = Decider::new(Policy::parse(POLICY).unwrap());
        assert!(
            d.decide(&alert(
                AlertKind::BruteForce,
                Severity::Low,
                "203.0.113.9",
                0
            ))
            .is_none()
        );
        assert!(
            d.decide(&alert(
                AlertKind::BruteForce,
                Severity::High,
                "192.0.2.5",
                0
            ))
            .is_none()
        );
        let mut a = alert(AlertKind::BruteForce, Severity::High, "198.51.100.1", 0);
        a.principal = Some("user:ops".into());
        assert!(d.decide(&a).is_none());
        let s = d
            .decide(&alert(
                AlertKind::SqlInjection,
                Severity::Low,
                "198.51.100.1",
                0,
            ))
            .unwrap();
        assert!(s.shadow);
        assert!(
            d.decide(&alert(AlertKind::Xss, Severity::High, "198.51.100.1", 0))
                .is_none()
        );
        let mut p = Policy::parse(POLICY).unwrap();
        p.mode = PolicyMode::Shadow;
        let mut d = Decider::new(p);
        assert!(
            d.decide(&alert(
                AlertKind::BruteForce,
                Severity::High,
                "203.0.113.9",
                0
            ))
            .unwrap()
            .shadow
        );
    }

    #[test]
    fn bad_policies_name_the_line_and_the_reason() {
        for (text, want) in [
            (
                "[escalation]\nprefix_v4 = 0\n",
                "prefix_v4 = 0: must be /8 to /32",
            ),
            ("[escalation]\nprefix_v4 = 33\n", "prefix_v4 = 33"),
            (
                "[escalation]\nprefix_v6 = 2\n",
                "prefix_v6 = 2: must be /16 to /128",
            ),
        ] {
            let e = Policy::parse(text).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("line 2"), "{e}");
        }
        let e = Policy::parse("mode = \"loud\"\n").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        // Syntax and type errors: one line, with the column, as the configuration's.
        let e = Policy::parse("[escalation]\nprefix_v4 = \"wide\"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("line 2, column 13: invalid type: string \"wide\""),
            "{e}"
        );
        let e = Policy::parse("[[rule]]\nkinds = [\"brute_forse\"]\nactions = [\"block\"]\n")
            .unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(
            e.message.contains("brute_forse") || e.message.contains("unknown variant"),
            "{e}"
        );
        let e =
            Policy::parse("[[rule]]\nkinds = [\"xss\"]\nactions = [\"block\"]\nttl = \"soon\"\n")
                .unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        let e = Policy::parse("\n[[rule]]\nkinds = [\"xss\"]\nactions = []\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let long = vec!["\"block\""; MAX_STEPS + 1].join(", ");
        let e = Policy::parse(&format!(
            "[[rule]]\nkinds = [\"xss\"]\nactions = [{long}]\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("at most 16"), "{e}");
        let e = Policy::parse("[allow]\naddresses = [\"10.0.0.300\"]\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = Policy::parse("[[rule]]\nkinds = [\"xss\"]\nactions = [\"block\"]\nrate = 0\n")
            .unwrap_err();
        assert!(e.message.contains("rate"), "{e}");
        let e = Policy::parse(
            "# also\n[[rule]]\nkinds = [\"xss\"]\nactions = [\"block\"]\nalso = [\"block\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(
            e.message.contains("also = [\"block\"] is not allowed"),
            "{e}"
        );
        let e = Policy::parse(
            "[[rule]]\nkinds = [\"xss\"]\nactions = [\"block\"]\nalso = [\"block_prefix\"]\n",
        )
        .unwrap_err();
        assert!(e.message.contains("also = [\"block_prefix\"]"), "{e}");
    }

    #[test]
    fn a_key_or_value_named_earlier_in_a_comment_or_string_is_not_the_error_line() {
        // Each error's key or value appears in a comment (or another value) above the real one.
        for (text, line) in [
            (
                "# prefix_v4 = 24 is the usual\n[escalation]\nprefix_v4 = 0\n",
                3,
            ),
            (
                "# window: e.g. 10m, not soon\n[escalation]\nwindow = \"soon\"\n",
                3,
            ),
            (
                "[allow]\nprincipals = [\"10.0.0.300\"]\naddresses = [\n  \"10.0.0.1\",\n  \"10.0.0.300\",\n]\n",
                5,
            ),
            (
                "# [[rule]] tables are read in order\n\n[[rule]]\nkinds = [\"xss\"]\nactions = []\n",
                3,
            ),
            (
                "[[rule]]\nkinds = [\"xss\"]\nactions = [\"block\"]\n# ttl = \"soon\" would fail\n\n[[rule]]\nkinds = [\"sql_injection\"]\nactions = [\"block\"]\nttl = \"soon\"\n",
                9,
            ),
            (
                "[[rule]]\nkinds = [\"xss\"]\nactions = [\"block\"]\nalso = [\n  \"kill_flow\",\n  \"block\",\n]\n",
                6,
            ),
        ] {
            let e = Policy::parse(text).unwrap_err();
            assert_eq!(e.line, Some(line), "{e}\n{text}");
        }
    }
}
