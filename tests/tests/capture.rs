//! Live capture end to end: a real HTTP server (the demo bank) and a client in namespaces,
//! exchanging keep-alive, pipelined, chunked and multi-megabyte requests and responses; the
//! transactions the daemon builds from the TC programs' ring buffer must match what the client
//! sent and got, field by field.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use sentinel_tests::{
    Daemon, TempDir, Topology,
    bank::BankServer,
    netns::{CLIENT_V4, SERVER_V4},
};

/// What the client saw of one exchange.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: String,
    path: String,
    query: String,
    status: u16,
    req_bytes: u64,
    resp_bytes: u64,
}

/// Reads one response; `head` tells that it has no body.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head: bool) -> (u16, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(hlen) = resp.parse(buf).expect("valid response") {
            let status = resp.code.unwrap();
            let get = |n: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(n))
                    .map(|h| String::from_utf8_lossy(h.value).to_string())
            };
            let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
            let clen: Option<usize> = get("content-length").and_then(|v| v.parse().ok());
            buf.drain(..hlen);
            if head || status == 204 || status == 304 {
                return (status, 0);
            }
            let body_len = if chunked {
                read_chunked(s, buf, deadline)
            } else {
                let n = clen.expect("content-length");
                fill(s, buf, n, deadline);
                buf.drain(..n);
                n as u64
            };
            return (status, body_len);
        }
        more(s, buf, deadline);
    }
}

fn more(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) {
    assert!(Instant::now() < deadline, "response timed out");
    let mut tmp = [0u8; 65536];
    let n = s.read(&mut tmp).expect("read");
    assert!(n > 0, "connection closed early");
    buf.extend_from_slice(&tmp[..n]);
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize, deadline: Instant) {
    while buf.len() < n {
        more(s, buf, deadline);
    }
}

fn read_chunked(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> u64 {
    let mut total = 0u64;
    loop {
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            more(s, buf, deadline);
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&buf[..line_end])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("chunk size");
        buf.drain(..line_end + 2);
        if size == 0 {
            fill(s, buf, 2, deadline);
            buf.drain(..2);
            return total;
        }
        fill(s, buf, size + 2, deadline);
        buf.drain(..size + 2);
        total += size as u64;
    }
}

fn request(method: &str, target: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut r =
        format!("{method} {target} HTTP/1.1\r\nHost: bank.test\r\nUser-Agent: sentinel-test\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut v = r.into_bytes();
    v.extend_from_slice(body);
    v
}

fn split(target: &str) -> (String, String) {
    match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target.to_owned(), String::new()),
    }
}

/// Runs the client side inside the client namespace and returns what it saw.
fn client_exchanges(server: SocketAddr) -> Vec<Seen> {
    let mut seen = Vec::new();
    // 1. Keep-alive: five requests on one connection.
    let mut s = TcpStream::connect(server).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    let login = br#"{"username":"alice","password":"correct horse"}"#;
    let steps: Vec<(&str, &str, Vec<u8>)> = vec![
        ("POST", "/login", login.to_vec()),
        ("GET", "/accounts/42", vec![]),
        ("HEAD", "/accounts/7", vec![]),
        ("GET", "/nocontent", vec![]),
        ("GET", "/accounts/43?fields=iban&x=1", vec![]),
    ];
    for (m, t, body) in &steps {
        let h = vec![("Content-Type", "application/json".to_owned())];
        s.write_all(&request(m, t, &h, body)).unwrap();
        let (status, n) = read_response(&mut s, &mut buf, *m == "HEAD");
        let (path, query) = split(t);
        seen.push(Seen {
            method: m.to_string(),
            path,
            query,
            status,
            req_bytes: body.len() as u64,
            resp_bytes: n,
        });
    }
    // 2. Pipelining: three requests written at once, then three responses.
    let mut s = TcpStream::connect(server).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let targets = ["/accounts/1", "/accounts/2", "/accounts/3"];
    let mut all = Vec::new();
    for t in targets {
        all.extend(request("GET", t, &[], b""));
    }
    s.write_all(&all).unwrap();
    let mut buf = Vec::new();
    for t in targets {
        let (status, n) = read_response(&mut s, &mut buf, false);
        seen.push(Seen {
            method: "GET".into(),
            path: t.into(),
            query: String::new(),
            status,
            req_bytes: 0,
            resp_bytes: n,
        });
    }
    // 3. Chunked response and 4. multi-megabyte request and response.
    let mut s = TcpStream::connect(server).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    s.write_all(&request("GET", "/chunked?chunks=50&size=1000", &[], b""))
        .unwrap();
    let (status, n) = read_response(&mut s, &mut buf, false);
    seen.push(Seen {
        method: "GET".into(),
        path: "/chunked".into(),
        query: "chunks=50&size=1000".into(),
        status,
        req_bytes: 0,
        resp_bytes: n,
    });
    let upload = vec![b'u'; 3_000_000];
    s.write_all(&request("POST", "/upload", &[], &upload))
        .unwrap();
    let (status, n) = read_response(&mut s, &mut buf, false);
    seen.push(Seen {
        method: "POST".into(),
        path: "/upload".into(),
        query: String::new(),
        status,
        req_bytes: upload.len() as u64,
        resp_bytes: n,
    });
    s.write_all(&request("GET", "/large?bytes=4000000", &[], b""))
        .unwrap();
    let (status, n) = read_response(&mut s, &mut buf, false);
    seen.push(Seen {
        method: "GET".into(),
        path: "/large".into(),
        query: "bytes=4000000".into(),
        status,
        req_bytes: 0,
        resp_bytes: n,
    });
    seen
}

#[test]
fn daemon_transactions_match_what_the_client_saw() {
    sentinel_tests::require_root();
    let topo = Topology::new().unwrap();
    // Offloads are left as a host has them: the server's TCP hands TC segments of up to 64 KiB
    // (GSO), which the capture splits back into wire-sized records, so the default snap length
    // keeps every payload byte, chunk framing included.
    let server = SocketAddr::new(SERVER_V4.into(), 8080);
    let _bank = BankServer::start(&topo.server, server).unwrap();
    let dir = TempDir::new("sentinel-capture").unwrap();
    let log = dir.join("transactions.jsonl");
    // Its alert and verdict logs stay in the daemon's own directory.
    let daemon = Daemon::start_with(
        &topo.server,
        &[&topo.server_if],
        &[],
        &format!("[capture]\nhttp_ports = [8080]\ntransactions_log = {log:?}\n"),
    )
    .unwrap();
    let seen = topo.client.run(move || client_exchanges(server)).unwrap();
    assert_eq!(seen.len(), 11);
    assert!(seen.iter().all(|s| s.status < 400), "{seen:?}");

    // The pipeline reports a transaction once its response is complete.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = sentinel_tests::read_jsonl(&log);
    while got.len() < seen.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        got = sentinel_tests::read_jsonl(&log);
    }
    assert_eq!(got.len(), seen.len(), "daemon log: {}", daemon.log_text());
    for (s, t) in seen.iter().zip(&got) {
        let ctx = format!("client saw {s:?}, daemon built {t}");
        assert_eq!(t["method"], s.method.as_str(), "{ctx}");
        assert_eq!(t["path"], s.path.as_str(), "{ctx}");
        assert_eq!(t["query"].as_str().unwrap_or(""), s.query, "{ctx}");
        assert_eq!(t["status"], s.status, "{ctx}");
        assert_eq!(t["req_bytes"], s.req_bytes, "{ctx}");
        assert_eq!(t["resp_bytes"], s.resp_bytes, "{ctx}");
        assert_eq!(t["src_ip"], CLIENT_V4.to_string(), "{ctx}");
        assert_eq!(t["dst_ip"], SERVER_V4.to_string(), "{ctx}");
        assert_eq!(t["dst_port"], 8080, "{ctx}");
        assert_eq!(t["host"], "bank.test", "{ctx}");
        // Request and response stamps in one clock (over the veth both are TCP's departure
        // times, taken from the skbs): a positive latency well under the run's length.
        let latency = t["latency_ms"].as_f64().unwrap();
        assert!(latency > 0.0 && latency < 10_000.0, "{ctx}");
    }
    let st = daemon.status().unwrap();
    let kernel = &st["capture"]["kernel"];
    assert_eq!(kernel["ring_full"], 0, "{kernel}");
    // The run did hand TC coalesced packets (else this test would not test them), and no byte
    // of them was cut.
    assert!(kernel["coalesced"].as_u64().unwrap() > 0, "{kernel}");
    assert_eq!(kernel["truncated"], 0, "{kernel}");
}

#[test]
fn a_secret_deep_in_a_large_response_is_seen_live() {
    // A response much larger than the snap length, sent as the server's TCP sends it (GSO
    // packets of up to 64 KiB on the host's offloads): its last row, some 34 KB in, leaks a
    // key. The exposure scan must see it, as it would in a capture on the wire.
    sentinel_tests::require_root();
    let topo = Topology::new().unwrap();
    let server = SocketAddr::new(SERVER_V4.into(), 8080);
    let _bank = BankServer::start(&topo.server, server).unwrap();
    let daemon = Daemon::start_with(
        &topo.server,
        &[&topo.server_if],
        &[],
        "[capture]\nhttp_ports = [8080]\n",
    )
    .unwrap();
    let body = topo
        .client
        .run(move || {
            let mut s = TcpStream::connect(server).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let close = [("Connection", "close".to_owned())];
            s.write_all(&request("GET", "/export?rows=600&leak=true", &close, b""))
                .unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            assert!(got.starts_with(b"HTTP/1.1 200 "));
            let head = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            got.split_off(head + 4)
        })
        .unwrap();
    let at = body
        .windows(4)
        .position(|w| w == b"AKIA")
        .expect("the export leaks its key");
    assert!(at > 30_000, "the key is {at} bytes in");

    let deadline = Instant::now() + Duration::from_secs(20);
    let leak = loop {
        let alerts = sentinel_tests::read_jsonl(&daemon.alert_log());
        if let Some(a) = alerts.into_iter().find(|a| a["kind"] == "data_exposure") {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no data_exposure alert; status: {}; daemon log: {}",
            daemon.status().unwrap()["capture"],
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(leak.to_string().contains("AWS access key id"), "{leak}");
    let kernel = &daemon.status().unwrap()["capture"]["kernel"];
    assert!(kernel["coalesced"].as_u64().unwrap() > 0, "{kernel}");
}
