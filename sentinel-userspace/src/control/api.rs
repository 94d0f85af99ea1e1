//! The control API's request and response bodies (JSON over HTTP on the Unix socket).

use serde::{Deserialize, Serialize};

use crate::datapath::Attachment;

/// The three address lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    /// Dropped in the kernel.
    Block,
    /// Never acted on; wins over every other list.
    Allow,
    /// Rate limited by a token bucket in the kernel.
    Throttle,
}

impl ListKind {
    /// Path segment and display name.
    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::Block => "block",
            ListKind::Allow => "allow",
            ListKind::Throttle => "throttle",
        }
    }
}

/// Throttle parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleSpec {
    /// Packets per second.
    pub rate_pps: u64,
    /// Bucket size in packets.
    pub burst: u64,
    /// Prefix length (in the target's family) that sources share a bucket by; none: per source.
    pub aggregate: Option<u8>,
}

/// Adds entries to a list. All targets share the options.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AddRequest {
    /// Addresses or CIDR prefixes.
    pub targets: Vec<String>,
    /// Time to live in milliseconds; none: until removed.
    pub ttl_ms: Option<u64>,
    /// Why (shown by `list`, kept across restarts).
    pub reason: Option<String>,
    /// Count would-drops and pass instead of dropping.
    #[serde(default)]
    pub shadow: bool,
    /// Throttle parameters (throttle list only).
    pub throttle: Option<ThrottleSpec>,
}

/// Result of an add.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddResponse {
    /// Entries written (new or replaced).
    pub added: usize,
    /// Of which exact addresses (hash map).
    pub exact: usize,
    /// Of which prefixes (LPM trie).
    pub prefixes: usize,
    /// Time spent writing the maps, in milliseconds.
    pub elapsed_ms: f64,
    /// Of the entries written, those that replaced a live one at the same target (its TTL and
    /// reason gave way to the new ones).
    #[serde(default)]
    pub replaced: usize,
    /// Block or throttle targets the allowlist covers, where the new entries do nothing (the
    /// allowlist wins); checked for adds of up to 1024 targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowlisted: Vec<String>,
}

/// Removes entries from a list.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DelRequest {
    /// Addresses or CIDR prefixes, exactly as added.
    pub targets: Vec<String>,
}

/// Result of a removal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DelResponse {
    /// Entries removed.
    pub removed: usize,
    /// Targets that were not in the list.
    pub not_found: Vec<String>,
}

/// One entry of a list.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// Address or prefix.
    pub target: String,
    /// Seconds until it expires; none: never.
    pub ttl_remaining_s: Option<f64>,
    /// Reason text.
    pub reason: Option<String>,
    /// Shadow mode for this entry.
    pub shadow: bool,
    /// Throttle parameters (throttle list only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle: Option<ThrottleSpec>,
}

/// Packets and bytes of one verdict reason.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterReport {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Fill level of a map.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapFill {
    /// Map name.
    pub name: String,
    /// Entries in use.
    pub entries: usize,
    /// Capacity.
    pub max_entries: u32,
}

/// `sentinel status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    /// Daemon version.
    pub version: String,
    /// `enforce` or `shadow` (global).
    pub mode: String,
    /// Pin directory.
    pub pin_path: String,
    /// Attached programs.
    pub programs: Vec<Attachment>,
    /// Map fill levels.
    pub maps: Vec<MapFill>,
    /// Counters per verdict reason (label -> counter).
    pub counters: std::collections::BTreeMap<String, CounterReport>,
    /// Seconds since the daemon started.
    pub uptime_s: f64,
    /// HTTP capture, when enabled (`--http-ports`).
    pub capture: Option<CaptureReport>,
    /// Model state (geo on or off and why, principals tracked, alerts per kind) and the
    /// analysis queue, when capture feeds the models.
    #[serde(default)]
    pub analysis: Option<serde_json::Value>,
    /// What the responder did: alerts per kind and action, verdicts, revocations.
    #[serde(default)]
    pub response: Option<serde_json::Value>,
    /// The response policy in force and the last reload's outcome.
    #[serde(default)]
    pub policy: Option<serde_json::Value>,
}

/// The capture half in `sentinel status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaptureReport {
    /// Captured ports.
    pub http_ports: Vec<u16>,
    /// Payload bytes copied per segment.
    pub snap_len: u32,
    /// Kernel counters: `captured`, `ring_full` (records lost to a full ring buffer),
    /// `truncated`, `malformed`, `load_failed`, `bytes`, `unfollowed`, `fragments`, `coalesced`
    /// (GSO/GRO packets split into wire segments).
    pub kernel: std::collections::BTreeMap<String, u64>,
    /// Consumer counters: `records`, `decode_errors`, `wakeups`.
    pub consumer: std::collections::BTreeMap<String, u64>,
    /// Reassembly and HTTP counters and the number of transactions built.
    #[serde(default)]
    pub pipeline: serde_json::Value,
}

/// One source in `sentinel top`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SourceReport {
    /// Source address.
    pub src_ip: String,
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen.
    pub bytes: u64,
    /// Packets dropped.
    pub dropped: u64,
    /// Seconds since the last packet.
    pub last_seen_s_ago: f64,
    /// Packets per second over the sampling interval (none for a single snapshot).
    pub pps: Option<f64>,
    /// Bits per second over the sampling interval.
    pub bps: Option<f64>,
    /// The list entry that applies: `allow`, `block`, `throttle` or `none`.
    pub verdict: String,
}

/// A snapshot of the sources map.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopReport {
    /// Monotonic time of the snapshot, nanoseconds.
    pub at_ns: u64,
    /// Sources, busiest first (by packets).
    pub sources: Vec<SourceReport>,
}

/// An error body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One line saying what was wrong.
    pub error: String,
}

/// `sentinel explain`: everything Sentinel knows about an address or a principal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExplainReport {
    /// What was asked about.
    pub target: String,
    /// List entries that cover it (address targets only): list name and entry.
    pub entries: Vec<(String, Entry)>,
    /// Kernel accounting of the address (packets, bytes, dropped, last seen).
    pub source: Option<SourceReport>,
    /// Recent alerts naming it (newest last).
    pub alerts: Vec<serde_json::Value>,
    /// Verdicts from the log that are still in force.
    pub verdicts: Vec<serde_json::Value>,
    /// The behaviour the models learned for it (a principal, or an address as `ip:ADDR`).
    #[serde(default)]
    pub profile: Option<serde_json::Value>,
}
