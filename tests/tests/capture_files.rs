//! Capture files Sentinel did not write: tcpdump (pcap) and dumpcap (pcapng) record curl's
//! requests to the demo bank over veth, as an operator would record a host's traffic, and
//! `sentinel replay` must find every request the bank served, with its status, as tshark does in
//! the same files. The requests cover keep-alive, a login, a large response, a chunked one, an
//! upload with `Expect: 100-continue`, HEAD and 204, over IPv4 and IPv6.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
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

/// Waits until the recorder has written its file header (it is listening then).
fn wait_ready(file: &Path) {
    let start = Instant::now();
    while std::fs::metadata(file).map_or(0, |m| m.len()) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{} never started",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Headers are written when the capture opens; give the socket filter a moment.
    std::thread::sleep(Duration::from_millis(300));
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
    (
        t["method"].as_str().expect("method").to_owned(),
        t["path"].as_str().expect("path").to_owned(),
        t["status"].as_u64().expect("status") as u16,
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
    wait_ready(&pcap);
    wait_ready(&pcapng);

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
    // Let the last FINs reach the recorders.
    std::thread::sleep(Duration::from_millis(500));
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
