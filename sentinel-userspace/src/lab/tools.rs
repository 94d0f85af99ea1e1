//! Attack tools that Sentinel's authors did not write, run against the demo bank while the
//! daemon captures: whether detection holds on traffic the simulator did not generate.
//!
//! - hydra guesses one account's password (`brute_force`) and tries one password over a list of
//!   user names (`credential_stuffing`), on the login form;
//! - sqlmap tests the login form for SQL injection (`sql_injection`);
//! - wfuzz sends its own XSS and path traversal payload lists in a query parameter (`xss`,
//!   `path_traversal`);
//! - ffuf walks account ids (`enumeration`).
//!
//! The word lists and payloads are the tools' own (wfuzz's package ships them); only the account
//! ids are ours. Each tool runs from its own address in the client namespace, is bounded by its
//! list and by `timeout`, and meets a daemon whose policy acts on nothing (the lab's default
//! configuration), so that no tool is cut off midway. A benign client (curl) logs in and reads its balance from another address.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::Stdio,
    time::{Duration, SystemTime},
};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;

use super::{
    Daemon, TempDir, Topology,
    bank::BankServer,
    netns::{CLIENT_V4, SERVER_V4},
};

/// Where Debian's wfuzz package keeps its word lists (installed by `cargo xtask setup`).
pub const WORDLISTS: &str = "/usr/share/wfuzz/wordlist";

/// The bank's port.
const PORT: u16 = 8080;

/// The longest any one tool may run.
const TOOL_LIMIT: Duration = Duration::from_secs(120);

/// One tool's run.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// The tool and what it was asked to do.
    pub tool: String,
    /// The alert kind its traffic should raise.
    pub expected: String,
    /// Its client address.
    pub source: Ipv4Addr,
    /// Requests the bank got from it.
    pub requests: usize,
    /// The tool's exit code (124: stopped by `timeout`).
    pub exit: Option<i32>,
    /// Alerts about its address, by kind, in the order first raised.
    pub kinds: Vec<String>,
    /// The first alert of the expected kind, if any.
    pub first: Option<First>,
    /// The end of what the tool printed (stdout and stderr), for a run that went wrong.
    pub output_tail: String,
}

/// When the first alert of the expected kind came.
#[derive(Clone, Debug, Serialize)]
pub struct First {
    /// The tool's request it came at: one more than the tool's requests that reached the bank
    /// before the alert's time (the time the alerting request was captured, just before the
    /// bank's handler stamps it).
    pub at_request: usize,
    /// Seconds from the tool's first request.
    pub after_s: f64,
}

/// What a run of every tool gave.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// One per tool, in the order they ran.
    pub runs: Vec<Run>,
    /// Requests from the benign client.
    pub benign_requests: usize,
    /// Alerts about the benign client (there should be none).
    pub benign_alerts: Vec<Value>,
}

impl Report {
    /// The markdown table of BENCHMARKS.md.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| tool | expected kind | requests | detected | first alert at | other kinds raised |\n\
             |---|---|---:|:---:|---|---|\n",
        );
        for r in &self.runs {
            let first = match &r.first {
                Some(f) => format!("request {}, {:.2} s", f.at_request, f.after_s),
                None => "-".into(),
            };
            let others: Vec<&str> = r
                .kinds
                .iter()
                .map(String::as_str)
                .filter(|k| *k != r.expected)
                .collect();
            s += &format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.tool,
                r.expected,
                r.requests,
                if r.first.is_some() { "yes" } else { "**no**" },
                first,
                if others.is_empty() {
                    "-".into()
                } else {
                    others.join(", ")
                },
            );
        }
        s
    }
}

/// A tool's command line, with `{server}` for the bank's `http://address:port`, `{lists}` for
/// [`WORDLISTS`], `{dir}` for the run's scratch directory and `{hydra-form}` for
/// [`HYDRA_FORM`].
struct Tool {
    tool: &'static str,
    expected: &'static str,
    argv: &'static [&'static str],
}

/// hydra's target: four tasks on the bank's login form, which says "invalid credentials" when a
/// guess fails.
const HYDRA_FORM: &[&str] = &[
    "-t",
    "4",
    "-I",
    "-s",
    "8080",
    "198.18.0.1",
    "http-post-form",
    "/login:username=^USER^&password=^PASS^:F=invalid credentials",
];

const TOOLS: &[Tool] = &[
    Tool {
        tool: "hydra: one account, wfuzz's common passwords",
        expected: "brute_force",
        argv: &[
            "hydra",
            "-l",
            "layla",
            "-P",
            "{dir}/passwords.txt",
            "{hydra-form}",
        ],
    },
    Tool {
        tool: "hydra: one password, 200 user names",
        expected: "credential_stuffing",
        argv: &[
            "hydra",
            "-L",
            "{dir}/users.txt",
            "-p",
            "Summer2024!",
            "{hydra-form}",
        ],
    },
    Tool {
        tool: "sqlmap: the login form",
        expected: "sql_injection",
        argv: &[
            "sqlmap",
            "--url",
            "{server}/login",
            "--data",
            "username=layla&password=x",
            "-p",
            "username",
            "--batch",
            "--flush-session",
            "--output-dir",
            "{dir}/sqlmap",
            "--level",
            "1",
            "--risk",
            "1",
            "--technique",
            "BEU",
            "--timeout",
            "5",
            "--retries",
            "0",
            "--disable-coloring",
            // A failed login answers 401, which sqlmap otherwise takes for "not authorized"
            // and stops at its first request.
            "--ignore-code",
            "401",
        ],
    },
    Tool {
        tool: "wfuzz: its XSS list in a query parameter",
        expected: "xss",
        argv: &[
            "wfuzz",
            "-z",
            "file,{lists}/Injections/XSS.txt,urlencode",
            "-t",
            "2",
            "{server}/accounts/1?q=FUZZ",
        ],
    },
    Tool {
        tool: "wfuzz: its traversal list in a query parameter",
        expected: "path_traversal",
        argv: &[
            "wfuzz",
            "-z",
            "file,{lists}/Injections/Traversal.txt,urlencode",
            "-t",
            "2",
            "{server}/accounts/1?file=FUZZ",
        ],
    },
    Tool {
        tool: "ffuf: 400 account ids in order",
        expected: "enumeration",
        argv: &[
            "ffuf",
            "-u",
            "{server}/accounts/FUZZ",
            "-w",
            "{dir}/ids.txt",
            "-t",
            "2",
            // 30 ms between a thread's requests: about 60 requests/s.
            "-p",
            "0.03",
            "-s",
            "-mc",
            "all",
        ],
    },
];

/// The programs the tools need.
pub const PROGRAMS: &[&str] = &["hydra", "sqlmap", "wfuzz", "ffuf", "curl", "timeout"];

/// Checks that the tools and word lists are installed.
pub fn check_installed() -> anyhow::Result<()> {
    super::require_programs(PROGRAMS)?;
    for list in [
        "Injections/XSS.txt",
        "Injections/Traversal.txt",
        "others/names.txt",
    ] {
        let p = Path::new(WORDLISTS).join(list);
        if !p.is_file() {
            bail!("{} is missing (the wfuzz package ships it)", p.display());
        }
    }
    Ok(())
}

/// The address the `i`th tool sends from.
fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 201 + i as u8)
}

/// The benign client's address.
const BENIGN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 250);

/// Makes `addr` the source of the client namespace's connections to the server.
fn send_from(topo: &Topology, addr: Ipv4Addr) -> anyhow::Result<()> {
    let src = addr.to_string();
    topo.client.ip(&[
        "route",
        "replace",
        "198.18.0.0/24",
        "dev",
        &topo.client_if,
        "proto",
        "kernel",
        "scope",
        "link",
        "src",
        &src,
    ])
}

/// The word lists the tools read that are not wfuzz's files as they are: its common passwords
/// with the right one last (so that every guess is tried), the first 200 of its names in lower
/// case, and 400 consecutive account ids.
fn write_lists(dir: &Path) -> anyhow::Result<()> {
    let read = |list: &str| {
        let p = Path::new(WORDLISTS).join(list);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let mut passwords: Vec<String> = read("others/common_pass.txt")?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    passwords.push("riyadh-2024".into());
    std::fs::write(dir.join("passwords.txt"), passwords.join("\n") + "\n")?;
    let users: Vec<String> = read("others/names.txt")?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(200)
        .map(str::to_lowercase)
        .collect();
    std::fs::write(dir.join("users.txt"), users.join("\n") + "\n")?;
    let ids: Vec<String> = (100_001..=100_400).map(|i: u32| i.to_string()).collect();
    std::fs::write(dir.join("ids.txt"), ids.join("\n") + "\n")?;
    Ok(())
}

fn expand(arg: &str, dir: &Path) -> String {
    arg.replace("{server}", &format!("http://{SERVER_V4}:{PORT}"))
        .replace("{lists}", WORDLISTS)
        .replace("{dir}", &dir.display().to_string())
}

fn alert_time(a: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339(a["ts"].as_str()?).ok()
}

/// Runs every tool once against a fresh bank and daemon.
pub fn run() -> anyhow::Result<Report> {
    check_installed()?;
    let topo = Topology::new().context("creating namespaces (iproute2)")?;
    for i in 0..TOOLS.len() {
        topo.add_client_addr(source(i).into())?;
    }
    topo.add_client_addr(BENIGN.into())?;
    let dir = TempDir::new("sentinel-tools")?;
    write_lists(dir.path())?;
    let bank = BankServer::start(&topo.server, SocketAddr::new(SERVER_V4.into(), PORT))?;
    // Its default configuration: alerts only, no rule acts.
    let daemon = Daemon::start(
        &topo.server,
        &[topo.server_if.as_str()],
        &["--http-ports", &PORT.to_string()],
    )?;

    benign(&topo)?;
    let mut exits = Vec::new();
    for (i, t) in TOOLS.iter().enumerate() {
        send_from(&topo, source(i))?;
        let argv: Vec<String> = t
            .argv
            .iter()
            .flat_map(|a| match *a {
                "{hydra-form}" => HYDRA_FORM,
                _ => std::slice::from_ref(a),
            })
            .map(|a| expand(a, dir.path()))
            .collect();
        let log = dir.join(format!("tool-{i}.log"));
        let out = std::fs::File::create(&log)?;
        let status = topo
            .client
            .command("timeout")
            .arg(TOOL_LIMIT.as_secs().to_string())
            .args(&argv)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .with_context(|| format!("running {}", argv[0]))?;
        let printed = std::fs::read_to_string(&log).unwrap_or_default();
        let tail_at = printed.floor_char_boundary(printed.len().saturating_sub(800));
        exits.push((status.code(), printed[tail_at..].to_owned()));
    }
    send_from(&topo, CLIENT_V4)?;
    // The daemon judges a request when its response is seen; give the last ones a moment.
    std::thread::sleep(Duration::from_secs(2));
    let alerts = super::read_jsonl(&daemon.alert_log());
    drop(daemon);
    let accesses = bank.accesses();

    let of = |ip: Ipv4Addr| -> Vec<&Value> {
        alerts
            .iter()
            .filter(|a| a["src_ip"].as_str() == Some(ip.to_string().as_str()))
            .collect()
    };
    let runs = TOOLS
        .iter()
        .zip(exits)
        .enumerate()
        .map(|(i, (t, (exit, output_tail)))| {
            let ip = source(i);
            let arrivals: Vec<SystemTime> = accesses
                .iter()
                .filter(|a| a.client == IpAddr::V4(ip))
                .map(|a| a.at)
                .collect();
            let mine = of(ip);
            let mut kinds: Vec<String> = Vec::new();
            for a in &mine {
                if let Some(k) = a["kind"].as_str()
                    && !kinds.iter().any(|x| x == k)
                {
                    kinds.push(k.to_owned());
                }
            }
            let first = mine
                .iter()
                .filter(|a| a["kind"] == t.expected)
                .filter_map(|a| alert_time(a))
                .min()
                .map(|at| First {
                    at_request: arrivals.iter().filter(|t| **t < at).count() + 1,
                    after_s: arrivals.iter().min().map_or(0.0, |t0| {
                        at.duration_since(*t0).unwrap_or_default().as_secs_f64()
                    }),
                });
            Run {
                tool: t.tool.into(),
                expected: t.expected.into(),
                source: ip,
                requests: arrivals.len(),
                exit,
                kinds,
                first,
                output_tail,
            }
        })
        .collect();
    Ok(Report {
        runs,
        benign_requests: accesses
            .iter()
            .filter(|a| a.client == IpAddr::V4(BENIGN))
            .count(),
        benign_alerts: of(BENIGN).into_iter().cloned().collect(),
    })
}

/// A customer's visit with curl: log in, read the balance and an account, at a human pace.
fn benign(topo: &Topology) -> anyhow::Result<()> {
    send_from(topo, BENIGN)?;
    let server = format!("http://{SERVER_V4}:{PORT}");
    let login = topo
        .client
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-d", r#"{"username":"layla","password":"riyadh-2024"}"#])
        .arg(format!("{server}/login"))
        .output()
        .context("running curl")?;
    let body: Value = serde_json::from_slice(&login.stdout)
        .with_context(|| format!("login answer {:?}", String::from_utf8_lossy(&login.stdout)))?;
    let token = body["token"]
        .as_str()
        .context("the benign login got no token")?
        .to_owned();
    for path in ["/balance", "/accounts/4242", "/balance"] {
        std::thread::sleep(Duration::from_millis(300));
        let out = topo
            .client
            .command("curl")
            .args(["-sS", "--max-time", "5", "-o", "/dev/null", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("{server}{path}"))
            .status()
            .context("running curl")?;
        if !out.success() {
            bail!("benign curl {path}: {out}");
        }
    }
    Ok(())
}
