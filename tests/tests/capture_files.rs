//! Capture files Sentinel did not write: tcpdump (pcap) and dumpcap (pcapng) record curl's
//! requests to the demo bank over veth, as an operator would record a host's traffic, and
//! `sentinel replay` must find every request the bank served, with its status, as tshark does in
//! the same files. The requests cover keep-alive, a login, a large response, a chunked one, an
//! upload with `Expect: 100-continue`, HEAD and 204, over IPv4 and IPv6.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, SocketAddrV4},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sentinel_tests::{
    NetNs, TempDir, Topology,
    bank::BankServer,
    netns::{SERVER_V4, SERVER_V6},
    output_within, sentinel_bin,
};

/// A request as (method, path, status).
type Request = (String, String, u16);

const PORT: u16 = 8080;

/// A recorder (`tcpdump` or `dumpcap`) writing what `iface` carries on the bank's port to `file`.
fn recorder(ns: &NetNs, iface: &str, program: &str, file: &Path) -> Recorder {
    let mut c = ns.command(program);
    c.args(["-i", iface]);
    if program == "tcpdump" {
        // Whole packets, each written as it comes; the filter as trailing words.
        c.args(["-s", "0", "-B", "32768", "-U", "-w"])
            .arg(file)
            .args(["tcp", "port", &PORT.to_string()]);
    } else {
        c.args(["-q", "-B", "32", "-w"])
            .arg(file)
            .args(["-f", &format!("tcp port {PORT}")]);
    }
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    Recorder(child)
}

/// A running recorder; killed when dropped (a failed assertion must not leave it running in
/// the namespace being removed).
struct Recorder(Child);

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Opens a TCP connection to `server` from local port `port` and resets it at once (no
/// TIME_WAIT, so the port serves again): nothing is sent, the bank serves nothing, no
/// transaction is built, but the recorders see its packets.
fn probe(port: u16, server: SocketAddrV4) -> std::io::Result<()> {
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: a socket of our own, plain structs passed by pointer with their sizes, closed on
    // every path.
    unsafe {
        let fd = check(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0))?;
        let result = (|| {
            let one: libc::c_int = 1;
            let opt = |name, v: *const libc::c_void, n: usize| {
                check(libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    name,
                    v,
                    n as libc::socklen_t,
                ))
            };
            opt(
                libc::SO_REUSEADDR,
                (&raw const one).cast(),
                size_of_val(&one),
            )?;
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            opt(
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of_val(&linger),
            )?;
            let local = sockaddr(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, port));
            check(libc::bind(fd, (&raw const local).cast(), len))?;
            let remote = sockaddr(server);
            check(libc::connect(fd, (&raw const remote).cast(), len))?;
            Ok(())
        })();
        libc::close(fd);
        result
    }
}

/// Whether `file` holds a TCP header from local port `port` to `server`'s (the ports' bytes,
/// as any capture format stores a packet's).
fn holds_probe(file: &Path, port: u16, server: SocketAddrV4) -> bool {
    let mut ports = port.to_be_bytes().to_vec();
    ports.extend_from_slice(&server.port().to_be_bytes());
    std::fs::read(file).is_ok_and(|b| b.windows(4).any(|w| w == ports))
}

/// Probes `server` from the client namespace from local port `port` (below Linux's ephemeral
/// range, 32768-60999, so that no curl of the test has it) until every recorder's file holds
/// the probe (at most 30 s). Before the traffic, it says that the recorders
/// capture (a file header comes before the socket filter is on); after it, that they have
/// written everything before the probe: a recorder starved by a loaded machine reads its
/// buffer late, and stopped then it loses what it had not read yet (the tail of a capture,
/// seen in a run beside a build).
fn wait_for_probe(client: &NetNs, server: SocketAddrV4, port: u16, files: &[&Path]) {
    let start = Instant::now();
    loop {
        client
            .run(move || probe(port, server))
            .expect("probe")
            .expect("probe connection");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if files.iter().all(|f| holds_probe(f, port, server)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the recorders never wrote the probe from port {port}"
        );
    }
}

fn stop(mut r: Recorder, what: &str) {
    // SIGINT: both flush and close their file.
    unsafe { libc::kill(r.0.id() as i32, libc::SIGINT) };
    let start = Instant::now();
    while r.0.try_wait().expect("waiting").is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            panic!("{what} did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// curl from the client namespace; `args` end with the URLs.
fn curl(ns: &NetNs, args: &[&str]) {
    let out = output_within(
        ns.command("curl")
            .args(["-sS", "--max-time", "20", "-o", "/dev/null"])
            .args(args),
        Duration::from_secs(30),
    )
    .expect("running curl");
    assert!(out.status.success(), "curl {args:?}: {out:?}");
}

/// The transactions `sentinel replay` finds in `file`.
fn replayed(file: &Path) -> Vec<serde_json::Value> {
    let out = output_within(
        Command::new(sentinel_bin())
            .arg("replay")
            .arg(file)
            .args(["--emit", "transactions"]),
        Duration::from_secs(60),
    )
    .expect("running sentinel replay");
    assert!(out.status.success(), "replay {}: {out:?}", file.display());
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON transaction"))
        .collect()
}

fn request(t: &serde_json::Value) -> Request {
    let field = |name: &str| t[name].clone();
    (
        field("method")
            .as_str()
            .unwrap_or_else(|| panic!("no method: {t}"))
            .to_owned(),
        field("path")
            .as_str()
            .unwrap_or_else(|| panic!("no path: {t}"))
            .to_owned(),
        field("status")
            .as_u64()
            .unwrap_or_else(|| panic!("no status: {t}")) as u16,
    )
}

/// The requests tshark finds in `file` (its HTTP dissector, on port 8080 by default), paired
/// with their responses' status.
fn tshark(file: &Path) -> Vec<Request> {
    let out = output_within(
        Command::new("tshark").arg("-r").arg(file).args([
            // Packets recorded on a veth can be out of order in the file (several CPUs).
            "-o",
            "tcp.reassemble_out_of_order:TRUE",
            "-Y",
            "http.response",
            "-T",
            "fields",
            "-e",
            "http.response.code",
            "-e",
            "http.response_for.uri",
        ]),
        Duration::from_secs(60),
    )
    .expect("running tshark");
    assert!(out.status.success(), "tshark {}: {out:?}", file.display());
    let mut got = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        // 100 Continue is an interim response, not the request's.
        if f[0] == "100" {
            continue;
        }
        let uri = f.get(1).copied().unwrap_or("");
        // `http.response_for.uri` is absolute: keep the path, without the query.
        let path = uri
            .split_once("://")
            .map_or(uri, |(_, rest)| rest.find('/').map_or("/", |i| &rest[i..]));
        let path = path.split('?').next().unwrap_or(path);
        got.push((
            String::new(),
            path.to_owned(),
            f[0].parse().expect("status"),
        ));
    }
    got
}

/// Counts by (path, status): tshark does not give the method of a response.
fn by_path(r: &[Request]) -> BTreeMap<(String, u16), usize> {
    let mut m = BTreeMap::new();
    for (_, p, s) in r {
        *m.entry((p.clone(), *s)).or_default() += 1;
    }
    m
}

#[test]
fn files_from_tcpdump_and_dumpcap_replay_every_request() {
    sentinel_tests::require_root();
    sentinel_tests::require_programs(&["tcpdump", "dumpcap", "tshark", "curl"]).unwrap();
    let topo = Topology::new().expect("namespaces");
    let v4 = BankServer::start(&topo.server, SocketAddr::new(SERVER_V4.into(), PORT))
        .expect("bank on IPv4");
    let v6 = BankServer::start(&topo.server, SocketAddr::new(SERVER_V6.into(), PORT))
        .expect("bank on IPv6");
    let dir = TempDir::new("capture-files").expect("temp dir");
    let (pcap, pcapng) = (dir.join("curl.pcap"), dir.join("curl.pcapng"));
    let tcpdump = recorder(&topo.server, &topo.server_if, "tcpdump", &pcap);
    let dumpcap = recorder(&topo.server, &topo.server_if, "dumpcap", &pcapng);
    let bank4 = SocketAddrV4::new(SERVER_V4, PORT);
    wait_for_probe(&topo.client, bank4, 20901, &[&pcap, &pcapng]);

    let base = format!("http://{SERVER_V4}:{PORT}");
    let base6 = format!("http://[{SERVER_V6}]:{PORT}");
    let upload = dir.join("upload.bin");
    std::fs::write(&upload, vec![b'u'; 300_000]).expect("upload file");
    // One connection, three requests (keep-alive), one of them 204.
    curl(
        &topo.client,
        &[
            &format!("{base}/accounts/7"),
            &format!("{base}/nocontent"),
            &format!("{base}/accounts/8"),
        ],
    );
    curl(
        &topo.client,
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"username":"layla","password":"wrong"}"#,
            &format!("{base}/login"),
        ],
    );
    curl(&topo.client, &[&format!("{base}/large?bytes=2000000")]);
    curl(
        &topo.client,
        &[&format!("{base}/chunked?chunks=40&size=3000")],
    );
    // A body over 1 MiB: curl asks `Expect: 100-continue` first.
    let big = dir.join("big.bin");
    std::fs::write(&big, vec![b'b'; 1_500_000]).expect("big file");
    curl(
        &topo.client,
        &[
            "--data-binary",
            &format!("@{}", upload.display()),
            &format!("{base}/upload"),
        ],
    );
    curl(
        &topo.client,
        &[
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &format!("@{}", big.display()),
            &format!("{base}/upload"),
        ],
    );
    curl(&topo.client, &["-I", &format!("{base}/accounts/9")]);
    curl(
        &topo.client,
        &[
            "-g",
            &format!("{base6}/accounts/10"),
            &format!("{base6}/nocontent"),
        ],
    );
    // Everything before a last probe is in the files once it is.
    wait_for_probe(&topo.client, bank4, 20902, &[&pcap, &pcapng]);
    stop(tcpdump, "tcpdump");
    stop(dumpcap, "dumpcap");

    let mut served: Vec<Request> = v4
        .accesses()
        .into_iter()
        .chain(v6.accesses())
        .map(|a| (a.method, a.path, a.status))
        .collect();
    served.sort();
    assert_eq!(served.len(), 11, "{served:?}");
    for file in [&pcap, &pcapng] {
        let transactions = replayed(file);
        let mut got: Vec<Request> = transactions.iter().map(request).collect();
        got.sort();
        assert_eq!(
            got,
            served,
            "sentinel replay {} against what the bank served",
            file.display()
        );
        // tshark is the peer, not the truth (the bank's log is): whatever it finds, replay
        // finds too. It missed a 2 MB response in one run of many; it must find most.
        let (ours, theirs) = (by_path(&got), by_path(&tshark(file)));
        for (key, n) in &theirs {
            assert!(
                ours.get(key).is_some_and(|m| m >= n),
                "tshark finds {n} x {key:?} in {}, replay {ours:?}",
                file.display()
            );
        }
        let found: usize = theirs.values().sum();
        assert!(
            found + 2 >= served.len(),
            "tshark found only {found} of {} in {}: {theirs:?}",
            served.len(),
            file.display()
        );
        // The bodies came whole: 2 MB down, 300 kB and 1.5 MB up.
        let mut sizes: Vec<(u64, u64)> = transactions
            .iter()
            .filter(|t| ["/large", "/upload"].contains(&t["path"].as_str().unwrap_or("")))
            .map(|t| {
                let n = |k: &str| t[k].as_u64().expect("a byte count");
                (n("req_bytes"), n("resp_bytes"))
            })
            .collect();
        sizes.sort();
        let lens: Vec<(u64, bool)> = sizes.iter().map(|(q, r)| (*q, *r >= 2_000_000)).collect();
        assert_eq!(
            lens,
            [(0, true), (300_000, false), (1_500_000, false)],
            "{sizes:?} in {}",
            file.display()
        );
    }
}
