//! The `sentinel` command line: argument definitions and the commands that talk to the daemon.

pub mod output;

use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand};

use crate::{
    control::{
        DEFAULT_SOCKET,
        api::{
            AddRequest, AddResponse, DelRequest, DelResponse, Entry, ExplainReport, ListKind,
            StatusReport, ThrottleSpec,
        },
        client::{Client, ClientError},
    },
    daemon::Mode,
    datapath::DEFAULT_PIN_PATH,
    verdict::lists,
};

/// Sentinel: an eBPF/XDP traffic sentinel for API security.
#[derive(Debug, Parser)]
#[command(name = "sentinel", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A usage error from the argument parser as one line: what was wrong, with the names clap lists
/// on the lines after its first (missing arguments, valid values), or the subcommands a command
/// needs, and which `--help` to see.
pub fn usage_error<S: AsRef<std::ffi::OsStr>>(e: &clap::Error, args: &[S]) -> String {
    use clap::{CommandFactory as _, error::ErrorKind};
    let text = e.render().to_string();
    let lines: Vec<&str> = text.lines().collect();
    // The subcommands named on the command line, as far as they go (clap's value errors do not
    // say which command they belong to).
    let mut command = vec!["sentinel".to_owned()];
    let mut cmd = Cli::command();
    for a in args.iter().skip(1).map(|a| a.as_ref().to_string_lossy()) {
        match cmd.find_subcommand(a.as_ref()) {
            Some(sub) => {
                command.push(a.into_owned());
                cmd = sub.clone();
            }
            None if a.starts_with('-') => continue,
            None => break,
        }
    }
    let command = command.join(" ");
    // The indented lines right after `lines[i]`, trimmed.
    let listed = |i: usize| -> Vec<&str> {
        lines[i + 1..]
            .iter()
            .take_while(|l| l.starts_with(' ') && !l.trim().is_empty())
            .map(|l| l.trim())
            .collect()
    };
    let what = match e.kind() {
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            let names: Vec<&str> = cmd
                .get_subcommands()
                .map(|c| c.get_name())
                .filter(|n| *n != "help")
                .collect();
            format!(
                "'{}' needs a subcommand: {}",
                cmd.get_name(),
                names.join(", ")
            )
        }
        _ => match lines.iter().position(|l| !l.trim().is_empty()) {
            Some(i) => {
                let first = lines[i].trim_start_matches("error: ");
                match listed(i)[..] {
                    [] => first.to_string(),
                    ref more => format!("{first} {}", more.join(", ")),
                }
            }
            None => "bad usage".into(),
        },
    };
    // clap's tips, such as the flag or subcommand meant ("a similar argument exists: '--socket'"),
    // but not one that names a hidden flag (`unload --socket`, ignored, kept for old scripts).
    let hidden = |tip: &str| {
        cmd.get_arguments().any(|a| {
            a.is_hide_set()
                && a.get_long()
                    .is_some_and(|l| tip.contains(&format!("'--{l}'")))
        })
    };
    let tips: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.trim().strip_prefix("tip: "))
        .filter(|tip| !hidden(tip))
        .collect();
    let what = match tips[..] {
        [] => what,
        _ => format!("{what}; {}", tips.join("; ")),
    };
    format!("sentinel: {what} (see {command} --help)")
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach the XDP sentinel to the interfaces and serve the control socket.
    Run(RunArgs),
    /// Detach the programs and remove the pins (works without a running daemon).
    Unload {
        /// Directory of the pinned maps and links.
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
        /// Unload even when a running daemon holds these pins' lock (it would go on running,
        /// enforcing nothing, and take list changes into maps nothing reads).
        #[arg(long)]
        force: bool,
        /// Ignored: unload asks no daemon (the pins' lock says whether one serves them); kept so
        /// that scripts passing it still run.
        #[arg(long, hide = true)]
        socket: Option<PathBuf>,
    },
    /// Programs attached, map fill levels, counters per verdict reason, capture and ring buffer
    /// loss, model state, alerts per kind and the policy in force.
    Status {
        #[command(flatten)]
        conn: Conn,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The busiest sources with packets, bytes, rate and verdict.
    Top {
        #[command(flatten)]
        conn: Conn,
        /// How many sources to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        limit: u64,
        /// Print one JSON snapshot (rates measured over one second) instead of the live view.
        #[arg(long)]
        json: bool,
    },
    /// Drop sources in the kernel.
    Block {
        #[command(subcommand)]
        op: ListOp<Shadow>,
    },
    /// Never act on these sources (wins over every other list).
    Allow {
        #[command(subcommand)]
        op: ListOp<NoShadow>,
    },
    /// Rate-limit sources in the kernel with a token bucket.
    Throttle {
        #[command(subcommand)]
        op: ThrottleOp,
    },
    /// Show alerts from the daemon's alert log.
    Alerts {
        #[command(flatten)]
        conn: Conn,
        /// Keep printing new alerts as they arrive.
        #[arg(long)]
        follow: bool,
        /// Only alerts from this long ago on (e.g. 10m, 2h; 0s: only new ones).
        #[arg(long, allow_hyphen_values = true, value_parser = parse_since)]
        since: Option<Duration>,
        /// Print JSON lines instead of the human format.
        #[arg(long)]
        json: bool,
    },
    /// Run Sentinel's main job on an embedded default in network namespaces it creates (root).
    Demo,
    /// Run a pcap or pcapng file through the capture pipeline (TCP reassembly, HTTP) and, with
    /// `--emit alerts`, the detection models, without privileges; print one JSON object per line.
    Replay(ReplayArgs),
    /// Everything known about an address or a principal: list entries with their remaining TTL,
    /// kernel counters (packets dropped), alerts and verdicts.
    Explain {
        /// An IP address, or a principal as shown in alerts (e.g. `user:layla`, `jwt:42`).
        target: String,
        #[command(flatten)]
        conn: Conn,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// How to reach the daemon.
#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// What `sentinel replay` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// One HTTP transaction per line (request, response status, sizes, latency).
    Transactions,
    /// One alert per line, from the enrichment and detection models run over the transactions.
    Alerts,
}

/// `sentinel replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The capture file: pcap or pcapng, with Ethernet (802.1Q too), Linux cooked (v1, v2) or
    /// raw IP frames; `-` reads standard input.
    pub file: PathBuf,
    /// What to print.
    #[arg(long, value_enum, default_value = "transactions")]
    pub emit: Emit,
    /// GeoIP database (`.mmdb`, MaxMind City or DB-IP City Lite layout); may be repeated, searched
    /// in order; adds to `[geoip] files` of the config. Without one the geo models stay idle.
    #[arg(long = "geoip-db", value_name = "FILE")]
    pub geoip_db: Vec<PathBuf>,
    /// Configuration file (TOML): its `[enrich]`, `[geoip]` and `[models]` sections apply.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Body bytes kept per message (coded ones, gzip, deflate, br or zstd: after decoding);
    /// e.g. 64KiB.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub body_cap: usize,
    /// Cut every packet's TCP payload to this many bytes first, 1 to 8192 (what `run
    /// --snap-len` would leave of a segment on the wire; live capture splits packets the host
    /// coalesced into their wire segments first, which a file cannot tell); the rest counts as
    /// lost.
    #[arg(long, value_parser = parse_snap_len)]
    pub snap_len: Option<usize>,
    /// Memory for reassembly and HTTP state of all flows; beyond it the least recently active
    /// flows are evicted.
    #[arg(long, default_value = "512MiB", value_parser = parse_positive_size)]
    pub mem_cap: usize,
    /// Bytes one flow may buffer before holes in its streams are skipped as gaps.
    #[arg(long, default_value = "4MiB", value_parser = parse_positive_size)]
    pub flow_cap: usize,
    /// A flow without packets for this long (in capture time) is closed.
    #[arg(long, default_value = "120s", allow_hyphen_values = true, value_parser = parse_ttl)]
    pub idle_timeout: Duration,
    /// At the end, print the counters of every stage to stderr as one JSON object.
    #[arg(long)]
    pub stats: bool,
}

/// [`parse_size`], more than zero (a cap or snap length of nothing would keep nothing, silently).
fn parse_positive_size(s: &str) -> Result<usize, String> {
    match parse_size(s)? {
        0 => Err(format!("{s:?}: must be more than zero")),
        n => Ok(n),
    }
}

/// A snap length for `replay`: [`parse_size`] in the range the kernel copies (`run --snap-len`).
fn parse_snap_len(s: &str) -> Result<usize, String> {
    let max = sentinel_common::MAX_SNAP_LEN as usize;
    match parse_size(s)? {
        n if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not in 1..={max} (bytes, the snap lengths live capture takes)"
        )),
    }
}

/// Parses a byte size: a number with an optional binary suffix (K, KiB, M, MiB, G, GiB).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?} is not a size; e.g. 65536, 64KiB, 4MiB")),
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size; e.g. 65536, 64KiB, 4MiB"))
}

/// `sentinel run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interfaces to attach to, comma separated.
    #[arg(long, value_delimiter = ',', required = true, value_parser = parse_iface)]
    pub iface: Vec<String>,
    /// Configuration file (TOML).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `enforce` drops and throttles; `shadow` counts would-drops and passes everything.
    #[arg(long, value_enum, default_value = "enforce")]
    pub mode: Mode,
    /// Control socket to serve.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Directory for the pinned maps and links (on bpffs).
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Capture HTTP on these TCP ports (either side of a connection), comma separated; overrides
    /// `[capture] http_ports` of the config.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub http_ports: Vec<u16>,
    /// Payload bytes copied to userspace per TCP segment on the wire, 1 to 8192 (a GSO or GRO
    /// packet is split back into its segments first); overrides `[capture] snap_len`.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(sentinel_common::MAX_SNAP_LEN)))]
    pub snap_len: Option<u32>,
    /// GeoIP database (.mmdb, MaxMind City or DB-IP City Lite layout); repeat for several,
    /// searched after the config's `[geoip] files`.
    #[arg(long = "geoip-db", value_name = "FILE")]
    pub geoip_db: Vec<PathBuf>,
}

/// Options shared by `add` on every list.
#[derive(Debug, Args)]
pub struct AddOpts {
    /// Addresses or CIDR prefixes (IPv4 or IPv6).
    pub targets: Vec<String>,
    /// Read more targets from a file: one per line, `#` starts a comment.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Remove the entries after this long (e.g. 90s, 10m, 1h; at most 10 years); without it they
    /// stay until deleted.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
    /// Why (kept with the entry, shown by `list`): at most 64 bytes, the kernel's slot; a
    /// longer reason is cut there, with a warning.
    #[arg(long)]
    pub reason: Option<String>,
}

/// Shadow mode on `add` of the lists that drop (block, throttle).
#[derive(Debug, Args)]
pub struct Shadow {
    /// Count would-drops and pass instead of dropping.
    #[arg(long)]
    pub shadow: bool,
}

/// No shadow mode: the allowlist drops nothing, so it has nothing to count instead.
#[derive(Debug, Args)]
pub struct NoShadow {}

/// Whether an add's options ask for shadow mode.
pub trait ShadowFlag {
    /// The `--shadow` flag, `false` where there is none.
    fn shadow(&self) -> bool;
}

impl ShadowFlag for Shadow {
    fn shadow(&self) -> bool {
        self.shadow
    }
}

impl ShadowFlag for NoShadow {
    fn shadow(&self) -> bool {
        false
    }
}

/// `block` and `allow` operations; `M` is the list's shadow option ([`Shadow`] for block,
/// [`NoShadow`] for allow).
#[derive(Debug, Subcommand)]
pub enum ListOp<M: Args + ShadowFlag> {
    /// Add addresses or prefixes.
    Add {
        #[command(flatten)]
        opts: AddOpts,
        #[command(flatten)]
        mode: M,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove addresses or prefixes.
    Del {
        #[command(flatten)]
        targets: DelTargets,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the live entries.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON (one object per line).
        #[arg(long)]
        json: bool,
    },
}

/// `throttle` operations.
#[derive(Debug, Subcommand)]
pub enum ThrottleOp {
    /// Throttle addresses or prefixes.
    Add {
        #[command(flatten)]
        opts: AddOpts,
        #[command(flatten)]
        mode: Shadow,
        /// Packets per second let through (e.g. 100/s or 100; 1 to 536870912).
        #[arg(long, allow_hyphen_values = true, value_parser = parse_rate)]
        rate: u64,
        /// Packets that may pass at once after a quiet period (1 to 4294967296) [default: the rate, one second's worth].
        #[arg(long, allow_hyphen_values = true, value_parser = parse_burst)]
        burst: Option<u64>,
        /// Share one bucket per prefix of this length (e.g. /24 for IPv4, /64 for IPv6) instead of one per source.
        #[arg(long, value_parser = parse_aggregate)]
        aggregate: Option<u8>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove throttles.
    Del {
        #[command(flatten)]
        targets: DelTargets,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the live throttles.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON (one object per line).
        #[arg(long)]
        json: bool,
    },
}

/// Targets to remove.
#[derive(Debug, Args)]
pub struct DelTargets {
    /// Addresses or CIDR prefixes, as added.
    pub targets: Vec<String>,
    /// Read more targets from a file: one per line, `#` starts a comment.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

/// Escapes a path segment for the control API's URLs.
pub fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn parse_iface(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 15 || s.contains('/') || s.contains(char::is_whitespace) {
        return Err(format!("{s:?} is not a valid interface name"));
    }
    Ok(s.to_owned())
}

/// The longest TTL taken: ten years (an entry meant to stay is given no TTL at all).
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_since(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be longer than zero"));
    }
    if d > MAX_TTL {
        return Err(format!(
            "{s:?}: at most 10 years (for no expiry, give no --ttl)"
        ));
    }
    Ok(d)
}

fn parse_since(s: &str) -> Result<Duration, String> {
    if s.trim_start().starts_with('-') {
        return Err(format!("{s:?}: a duration cannot be negative"));
    }
    crate::clock::parse_duration(s)
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let n = s.strip_suffix("/s").unwrap_or(s);
    match n.parse::<u64>() {
        Ok(v) if (1..=sentinel_common::MAX_RATE_PPS).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a rate: give whole packets per second between 1 and {}, e.g. 100/s",
            sentinel_common::MAX_RATE_PPS
        )),
    }
}

fn parse_burst(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(v) if (1..=sentinel_common::MAX_BURST).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a burst: give whole packets between 1 and {}, e.g. 200",
            sentinel_common::MAX_BURST
        )),
    }
}

fn parse_aggregate(s: &str) -> Result<u8, String> {
    let n = s.strip_prefix('/').unwrap_or(s);
    match n.parse::<u8>() {
        Ok(v) if v <= 128 => Ok(v),
        _ => Err(format!("{s:?} is not a prefix length; e.g. /24 or /64")),
    }
}

/// A failed command: the message and the exit status (1 runtime, 2 bad usage or input).
#[derive(Debug)]
pub struct CliError {
    /// Exit status.
    pub code: i32,
    /// One line.
    pub message: String,
}

impl CliError {
    /// Bad input (exit 2).
    pub fn input(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }
    /// Runtime failure (exit 1).
    pub fn runtime(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Rejected(m) => CliError::input(m),
            other => CliError::runtime(other.to_string()),
        }
    }
}

/// Reads targets from a list file: one per line, blank lines and `#` comments skipped. A bad
/// line is reported with its number and nothing is loaded.
pub fn read_target_file(path: &Path) -> Result<Vec<String>, CliError> {
    if path.is_dir() {
        return Err(CliError::input(format!(
            "{}: is a directory, not a list file",
            path.display()
        )));
    }
    let f = std::fs::File::open(path)
        .map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line =
            line.map_err(|e| CliError::input(format!("{}:{}: {e}", path.display(), i + 1)))?;
        let t = line.split('#').next().unwrap_or("").trim();
        if t.is_empty() {
            continue;
        }
        if let Err(e) = t.parse::<crate::verdict::Target>() {
            return Err(CliError::input(format!(
                "{}:{}: {e}",
                path.display(),
                i + 1
            )));
        }
        out.push(t.to_owned());
    }
    Ok(out)
}

fn gather(targets: &[String], file: Option<&Path>) -> Result<Vec<String>, CliError> {
    lists::parse_targets(targets).map_err(|e| CliError::input(e.to_string()))?;
    let mut all = targets.to_vec();
    if let Some(f) = file {
        all.extend(read_target_file(f)?);
    }
    if all.is_empty() {
        return Err(CliError::input(match file {
            Some(f) => format!(
                "{}: no targets in it (only blank lines and comments)",
                f.display()
            ),
            None => "no targets given: name addresses or prefixes, or --file LIST".to_owned(),
        }));
    }
    Ok(all)
}

fn add_request(
    opts: &AddOpts,
    shadow: bool,
    throttle: Option<ThrottleSpec>,
) -> Result<AddRequest, CliError> {
    let targets = gather(&opts.targets, opts.file.as_deref())?;
    if let Some(agg) = throttle.and_then(|t| t.aggregate) {
        let parsed = lists::parse_targets(&targets).map_err(|e| CliError::input(e.to_string()))?;
        lists::check_aggregate(&parsed, agg).map_err(|e| CliError::input(e.to_string()))?;
    }
    if let Some(note) = opts.reason.as_deref().and_then(reason_note) {
        eprintln!("{note}");
    }
    Ok(AddRequest {
        targets,
        ttl_ms: opts.ttl.map(|d| d.as_millis().max(1) as u64),
        reason: opts.reason.clone(),
        shadow,
        throttle,
    })
}

/// The warning for a `--reason` longer than the kernel keeps, naming what it keeps.
fn reason_note(reason: &str) -> Option<String> {
    let kept = lists::truncate_reason(reason);
    (kept.len() < reason.len()).then(|| {
        format!(
            "warning: --reason is cut to the kernel's {} bytes: {kept:?}",
            sentinel_common::REASON_LEN
        )
    })
}

async fn add(conn: &Conn, kind: ListKind, req: AddRequest) -> Result<(), CliError> {
    lists::check_options(kind, &req).map_err(|e| CliError::input(e.to_string()))?;
    let resp: AddResponse = Client::new(&conn.socket)
        .post(&format!("/v1/lists/{}", kind.as_str()), &req)
        .await?;
    println!(
        "{}: {} entr{} added ({} addresses, {} prefixes) in {:.1} ms",
        kind.as_str(),
        resp.added,
        if resp.added == 1 { "y" } else { "ies" },
        resp.exact,
        resp.prefixes,
        resp.elapsed_ms
    );
    if resp.replaced > 0 {
        eprintln!(
            "note: {} of them replaced {} entr{} already there (TTL, reason and mode are now this add's)",
            resp.replaced,
            if resp.replaced == 1 { "an" } else { "the" },
            if resp.replaced == 1 { "y" } else { "ies" }
        );
    }
    if !resp.allowlisted.is_empty() {
        eprintln!(
            "note: the allowlist covers {}; it wins there, so these {} entries do nothing (sentinel allow del to lift it)",
            resp.allowlisted.join(", "),
            kind.as_str()
        );
    }
    Ok(())
}

async fn del(conn: &Conn, kind: ListKind, t: &DelTargets) -> Result<(), CliError> {
    let req = DelRequest {
        targets: gather(&t.targets, t.file.as_deref())?,
    };
    let resp: DelResponse = Client::new(&conn.socket)
        .post(&format!("/v1/lists/{}/delete", kind.as_str()), &req)
        .await?;
    println!("{}: {} removed", kind.as_str(), resp.removed);
    if !resp.not_found.is_empty() {
        let shown: Vec<_> = resp.not_found.iter().take(10).cloned().collect();
        return Err(CliError::input(format!(
            "{} target(s) were not in the {} list: {}{}",
            resp.not_found.len(),
            kind.as_str(),
            shown.join(", "),
            if resp.not_found.len() > 10 {
                ", ..."
            } else {
                ""
            }
        )));
    }
    Ok(())
}

async fn list(conn: &Conn, kind: ListKind, json: bool) -> Result<(), CliError> {
    let entries: Vec<Entry> = Client::new(&conn.socket)
        .get(&format!("/v1/lists/{}", kind.as_str()))
        .await?;
    output::entries(kind, &entries, json);
    Ok(())
}

/// Runs a command that talks to the daemon (everything but `run` and `unload`).
pub async fn client_command(cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::Status { conn, json } => {
            let s: StatusReport = Client::new(&conn.socket).get("/v1/status").await?;
            output::status(&s, json);
            Ok(())
        }
        Command::Top { conn, limit, json } => {
            output::top(&Client::new(&conn.socket), limit, json).await
        }
        Command::Alerts {
            conn,
            follow,
            since,
            json,
        } => output::alerts(&Client::new(&conn.socket), follow, since, json).await,
        Command::Explain { target, conn, json } => {
            if target.trim().is_empty() || target.contains('/') {
                return Err(CliError::input(format!(
                    "{target:?} is not an IP address or a principal (e.g. 192.0.2.7 or user:layla)"
                )));
            }
            let r: ExplainReport = Client::new(&conn.socket)
                .get(&format!("/v1/explain/{}", url_escape(&target)))
                .await?;
            output::explain(&r, json);
            Ok(())
        }
        Command::Block { op } => list_op(ListKind::Block, op).await,
        Command::Allow { op } => list_op(ListKind::Allow, op).await,
        Command::Throttle { op } => match op {
            ThrottleOp::Add {
                opts,
                mode,
                rate,
                burst,
                aggregate,
                conn,
            } => {
                let spec = ThrottleSpec {
                    rate_pps: rate,
                    burst: burst.unwrap_or(rate),
                    aggregate,
                };
                let req = add_request(&opts, mode.shadow, Some(spec))?;
                add(&conn, ListKind::Throttle, req).await
            }
            ThrottleOp::Del { targets, conn } => del(&conn, ListKind::Throttle, &targets).await,
            ThrottleOp::List { conn, json } => list(&conn, ListKind::Throttle, json).await,
        },
        Command::Run(_) | Command::Unload { .. } | Command::Demo | Command::Replay(_) => {
            unreachable!("handled by main")
        }
    }
}

async fn list_op<M: Args + ShadowFlag>(kind: ListKind, op: ListOp<M>) -> Result<(), CliError> {
    match op {
        ListOp::Add { opts, mode, conn } => {
            add(&conn, kind, add_request(&opts, mode.shadow(), None)?).await
        }
        ListOp::Del { targets, conn } => del(&conn, kind, &targets).await,
        ListOp::List { conn, json } => list(&conn, kind, json).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn usage_errors_are_one_line_that_names_what_is_missing() {
        let err = |args: &[&str]| {
            let e = Cli::try_parse_from(args).expect_err("a usage error");
            usage_error(&e, args)
        };
        // An argument that is not UTF-8 is shown lossily, not a panic.
        use std::os::unix::ffi::OsStrExt as _;
        let odd = [
            std::ffi::OsStr::new("sentinel"),
            std::ffi::OsStr::new("frob"),
            std::ffi::OsStr::from_bytes(b"\xff"),
        ];
        let e = Cli::try_parse_from(odd).expect_err("a usage error");
        assert!(usage_error(&e, &odd).contains("'frob'"));
        let e = err(&["sentinel", "replay"]);
        assert!(e.contains("<FILE>"), "{e}");
        assert!(e.ends_with("(see sentinel replay --help)"), "{e}");
        let e = err(&["sentinel", "block"]);
        assert!(e.contains("'block' needs a subcommand: add, del"), "{e}");
        let e = err(&["sentinel", "throttle", "add", "192.0.2.1"]);
        assert!(e.contains("--rate <RATE>"), "{e}");
        assert!(e.ends_with("(see sentinel throttle add --help)"), "{e}");
        let e = err(&["sentinel", "replay", "x.pcap", "--emit", "nothing"]);
        assert!(e.contains("'nothing'") && e.contains("alerts"), "{e}");
        assert!(e.ends_with("(see sentinel replay --help)"), "{e}");
        for args in [
            &["sentinel", "replay"][..],
            &["sentinel", "block"],
            &["sentinel", "frob"],
        ] {
            let e = err(args);
            assert_eq!(e.lines().count(), 1, "{e}");
            assert!(e.starts_with("sentinel: "), "{e}");
        }
    }

    #[test]
    fn a_mistyped_flag_keeps_clap_s_suggestion() {
        let args = ["sentinel", "status", "--sock", "/x"];
        let e = usage_error(&Cli::try_parse_from(args).unwrap_err(), &args);
        assert!(e.contains("a similar argument exists: '--socket'"), "{e}");
        assert!(e.ends_with("(see sentinel status --help)"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        // Not to a flag that help does not show and that does nothing.
        let args = ["sentinel", "unload", "--sock", "/x"];
        let e = usage_error(&Cli::try_parse_from(args).unwrap_err(), &args);
        assert!(!e.contains("--socket"), "{e}");
        let help = Cli::command()
            .find_subcommand_mut("unload")
            .unwrap()
            .render_help()
            .to_string();
        assert!(!help.contains("--socket"), "{help}");
    }

    #[test]
    fn replay_takes_the_snap_lengths_run_takes() {
        let parse = |argv: &[&str]| Cli::try_parse_from(argv).map(|c| c.command);
        for len in ["1", "8192", "2KiB"] {
            let Ok(Command::Replay(r)) =
                parse(&["sentinel", "replay", "x.pcap", "--snap-len", len])
            else {
                panic!("replay --snap-len {len}");
            };
            assert!(r.snap_len.is_some());
            parse(&["sentinel", "run", "--iface", "lo", "--snap-len", "8192"]).unwrap();
        }
        for len in ["0", "8193", "100000", "9KiB"] {
            let e = parse(&["sentinel", "replay", "x.pcap", "--snap-len", len]).unwrap_err();
            assert!(e.to_string().contains("1..=8192"), "{len}: {e}");
        }
        let e = parse(&["sentinel", "run", "--iface", "lo", "--snap-len", "9000"]).unwrap_err();
        assert!(e.to_string().contains("1..=8192"), "{e}");
    }

    #[test]
    fn durations_are_refused_in_our_words() {
        let e = Cli::try_parse_from(["sentinel", "block", "add", "192.0.2.1", "--ttl", "10x"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid duration \"10x\": use a number with s, m, h, d or w"),
            "{e}"
        );
        assert!(!e.contains("supported units"), "{e}");
        for ok in ["90s", "12h", "7d", "7days", "1h30m", "2w"] {
            parse_ttl(ok).unwrap();
        }
        assert!(
            parse_ttl("99999999999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
    }

    /// The request `throttle add` builds from `argv`, or why it refuses.
    fn throttle_request(argv: &[&str]) -> Result<AddRequest, CliError> {
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Throttle {
            op:
                ThrottleOp::Add {
                    opts,
                    mode,
                    rate,
                    aggregate,
                    ..
                },
        } = cli.command
        else {
            panic!("not throttle add");
        };
        let spec = ThrottleSpec {
            rate_pps: rate,
            burst: rate,
            aggregate,
        };
        add_request(&opts, mode.shadow, Some(spec))
    }

    #[test]
    fn an_aggregate_that_does_not_fit_the_family_is_bad_input_before_any_daemon() {
        let add = ["sentinel", "throttle", "add"];
        for (target, agg) in [
            ("203.0.113.7", "/33"),
            ("203.0.113.7", "/64"),
            ("198.51.100.0/24", "/16"),
            ("2001:db8::7", "/24"),
        ] {
            let argv = [&add[..], &[target, "--rate", "5", "--aggregate", agg]].concat();
            let e = throttle_request(&argv).expect_err(target);
            assert_eq!(e.code, 2, "{}", e.message);
            assert!(e.message.contains("does not fit"), "{}", e.message);
        }
        let v6 = throttle_request(
            &[
                &add[..],
                &["2001:db8::7", "--rate", "5", "--aggregate", "/24"],
            ]
            .concat(),
        )
        .unwrap_err();
        assert!(
            v6.message.contains("IPv6") && v6.message.contains("/128"),
            "{}",
            v6.message
        );
        for (target, agg) in [("198.51.100.0/24", "/28"), ("2001:db8::/48", "/64")] {
            throttle_request(&[&add[..], &[target, "--rate", "5", "--aggregate", agg]].concat())
                .unwrap();
        }
        // Past any family: clap's own check.
        let argv = [
            &add[..],
            &["2001:db8::7", "--rate", "5", "--aggregate", "/130"],
        ]
        .concat();
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn a_reason_longer_than_the_kernel_keeps_is_warned_about() {
        assert_eq!(reason_note("credential stuffing from a botnet"), None);
        assert_eq!(reason_note(&"x".repeat(64)), None);
        let long = format!("{}é and more", "x".repeat(63));
        let note = reason_note(&long).unwrap();
        assert!(
            note.starts_with("warning: --reason is cut to the kernel's 64 bytes"),
            "{note}"
        );
        assert!(note.ends_with(&format!("{:?}", "x".repeat(63))), "{note}");
    }

    /// The `sentinel run` that a deployment file starts, parsed as the binary would.
    fn run_args(argv: Vec<String>, file: &str) -> RunArgs {
        match Cli::try_parse_from(&argv) {
            Ok(Cli {
                command: Command::Run(r),
            }) => r,
            Ok(other) => panic!("{file}: {argv:?} is not sentinel run: {other:?}"),
            Err(e) => panic!("{file}: {argv:?}: {}", usage_error(&e, &argv)),
        }
    }

    /// A JSON list on the line of `key` (the flow style the manifest and Dockerfile use).
    fn json_list(text: &str, key: &str) -> Vec<String> {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}"));
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{key} {line}: {e}"))
    }

    #[test]
    fn the_deployment_files_start_a_valid_daemon() {
        use crate::config::Config;
        let manifest = include_str!("../../../deploy/kubernetes/daemonset.yaml");
        // The ConfigMap's configuration: the block under `sentinel.toml: |`, unindented.
        let mut lines = manifest
            .lines()
            .skip_while(|l| l.trim() != "sentinel.toml: |");
        lines.next().expect("a sentinel.toml key in the ConfigMap");
        let block: Vec<&str> = lines.take_while(|l| l.starts_with("    ")).collect();
        let toml: String = block.iter().map(|l| format!("{}\n", &l[4..])).collect();
        let cfg = Config::parse(&toml).unwrap_or_else(|e| panic!("the ConfigMap: {e}"));
        assert!(
            !cfg.capture.http_ports.is_empty(),
            "the DaemonSet captures HTTP"
        );
        // Its metrics port is the one the pod declares, probes and has scraped.
        let port = cfg
            .metrics
            .listen
            .expect("metrics on in the DaemonSet")
            .port();
        for want in [
            format!("containerPort: {port}"),
            format!("prometheus.io/port: \"{port}\""),
        ] {
            assert!(manifest.contains(&want), "the manifest lacks {want}");
        }
        assert_eq!(manifest.matches("port: metrics}").count(), 2, "two probes");
        // The container's arguments, with the environment substituted as the kubelet does.
        let iface = manifest
            .lines()
            .skip_while(|l| l.trim() != "- name: SENTINEL_IFACE")
            .nth(1)
            .and_then(|l| l.trim().strip_prefix("value: "))
            .expect("SENTINEL_IFACE's value");
        let mut argv = vec!["sentinel".to_owned()];
        argv.extend(
            json_list(manifest, "args:")
                .into_iter()
                .map(|a| a.replace("$(SENTINEL_IFACE)", iface)),
        );
        let run = run_args(argv, "daemonset.yaml");
        assert_eq!(run.iface, [iface]);
        // The ConfigMap is mounted where the arguments look for it.
        let config = run.config.expect("--config");
        assert!(
            manifest.contains(&format!(
                "{{name: config, mountPath: {}}}",
                config.parent().unwrap().display()
            )),
            "{config:?} is not where the ConfigMap is mounted"
        );
        assert_eq!(config.file_name().unwrap(), "sentinel.toml");

        // The image's default command, and the systemd unit's.
        let dockerfile = include_str!("../../../deploy/Dockerfile");
        let mut argv = vec!["sentinel".to_owned()];
        argv.extend(json_list(dockerfile, "CMD"));
        run_args(argv, "Dockerfile");
        let unit = include_str!("../../../deploy/sentinel.service");
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart");
        let run = run_args(
            exec.split_whitespace().map(str::to_owned).collect(),
            "sentinel.service",
        );
        assert!(!run.http_ports.is_empty());
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn shadow_is_offered_by_the_lists_that_drop_and_not_by_allow() {
        let add_flags = |list: &str| -> Vec<String> {
            let mut cli = Cli::command();
            let add = cli
                .find_subcommand_mut(list)
                .and_then(|c| c.find_subcommand_mut("add"))
                .unwrap_or_else(|| panic!("{list} add"));
            add.get_arguments()
                .filter_map(|a| a.get_long().map(str::to_owned))
                .collect()
        };
        for list in ["block", "throttle"] {
            assert!(add_flags(list).iter().any(|f| f == "shadow"), "{list} add");
        }
        let allow = add_flags("allow");
        assert!(!allow.iter().any(|f| f == "shadow"), "{allow:?}");
        assert!(allow.iter().any(|f| f == "ttl"), "{allow:?}");
        // And the parse follows: allow refuses the flag as a usage error, block takes it.
        let e = Cli::try_parse_from(["sentinel", "allow", "add", "192.0.2.1", "--shadow"])
            .expect_err("allow has no --shadow");
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        let Cli {
            command: Command::Block {
                op: ListOp::Add { mode, .. },
            },
            ..
        } = Cli::try_parse_from(["sentinel", "block", "add", "192.0.2.1", "--shadow"]).unwrap()
        else {
            panic!("block add");
        };
        assert!(mode.shadow());
    }

    #[test]
    fn value_parsers_accept_and_reject() {
        assert_eq!(parse_rate("100/s"), Ok(100));
        assert_eq!(parse_rate("7"), Ok(7));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_aggregate("/24"), Ok(24));
        assert_eq!(parse_since("0s"), Ok(Duration::ZERO));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_since("soon").is_err());
        assert!(parse_aggregate("/129").is_err());
        assert_eq!(parse_ttl("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("-5m").unwrap_err().contains("negative"));
        assert!(
            parse_ttl("99999999999999h")
                .unwrap_err()
                .contains("10 years")
        );
        assert!(
            parse_rate("99999999999999999999/s")
                .unwrap_err()
                .contains("536870912")
        );
        assert!(parse_rate("-5/s").is_err());
        assert_eq!(parse_burst("200"), Ok(200));
        assert!(parse_burst("0").is_err());
        assert!(
            parse_burst("4294967297")
                .unwrap_err()
                .contains("4294967296")
        );
        let e = Cli::try_parse_from([
            "sentinel",
            "throttle",
            "add",
            "192.0.2.1",
            "--rate",
            "10",
            "--burst",
            "-1",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a burst"), "{e}");
        // A negative value reaches the parser (clap took it for an unknown flag).
        let e = Cli::try_parse_from(["sentinel", "block", "add", "192.0.2.1", "--ttl", "-5m"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("negative"), "{e}");
        assert!(parse_iface("veth0").is_ok());
        assert!(parse_iface("a/b").is_err());
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(
            parse_positive_size("0")
                .unwrap_err()
                .contains("more than zero")
        );
        assert_eq!(parse_positive_size("1KiB"), Ok(1024));
    }

    #[test]
    fn list_files_skip_comments_and_name_bad_lines() {
        let dir = std::env::temp_dir().join(format!("sentinel-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.txt");
        std::fs::write(
            &good,
            "# header\n192.0.2.1\n\n198.51.100.0/24 # office\n2001:db8::1\n",
        )
        .unwrap();
        assert_eq!(
            read_target_file(&good).unwrap(),
            vec!["192.0.2.1", "198.51.100.0/24", "2001:db8::1"]
        );
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "192.0.2.1\n192.0.2.300\n").unwrap();
        let e = read_target_file(&bad).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.message.contains("bad.txt:2:"), "{}", e.message);
        // A directory is said to be one (it read as line 1 failing).
        let e = read_target_file(&dir).unwrap_err();
        assert!(
            e.message.contains("is a directory") && !e.message.contains(":1:"),
            "{}",
            e.message
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
