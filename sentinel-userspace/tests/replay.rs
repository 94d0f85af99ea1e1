//! `sentinel replay` end to end: generated captures in, JSON lines and exit statuses out.

use std::{path::PathBuf, process::Command};

use sentinel::capture::{
    Segment,
    pcap::Link,
    synth::{Conversation, write_pcap, write_pcapng},
};

const T: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "sentinel-replay-test-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Three keep-alive exchanges on one connection, then a second connection over IPv6.
fn traffic() -> Vec<Segment> {
    let mut a = Conversation::open(
        "198.18.0.100:40000".parse().unwrap(),
        "198.18.0.1:8080".parse().unwrap(),
        T,
    );
    for i in 0..3u64 {
        let t = T + (i + 1) * 10 * MS;
        a.send(
            true,
            format!("GET /accounts/{i}?v=1 HTTP/1.1\r\nHost: bank.example\r\n\r\n").as_bytes(),
            &[7],
            t,
        );
        a.send(
            false,
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}",
            &[20],
            t + 2 * MS,
        );
    }
    a.fin(true, T + 50 * MS);
    a.fin(false, T + 50 * MS);
    let mut b = Conversation::open(
        "[2001:db8::7]:50000".parse().unwrap(),
        "[2001:db8::1]:80".parse().unwrap(),
        T + 60 * MS,
    );
    b.send(
        true,
        b"POST /login HTTP/1.1\r\nHost: bank.example\r\nContent-Length: 4\r\n\r\nuser",
        &[],
        T + 61 * MS,
    );
    b.send(
        false,
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
        &[],
        T + 64 * MS,
    );
    let mut segs = a.segments;
    segs.extend(b.segments);
    segs
}

fn sentinel(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

#[test]
fn replay_prints_one_transaction_per_line() {
    let d = dir("ok");
    for (name, bytes) in [
        (
            "eth.pcap",
            write_pcap(Vec::new(), Link::Ethernet, &traffic(), true).unwrap(),
        ),
        (
            "sll2.pcapng",
            write_pcapng(Vec::new(), Link::LinuxSll2, &traffic(), false).unwrap(),
        ),
    ] {
        let f = d.join(name);
        std::fs::write(&f, bytes).unwrap();
        let (code, out, err) = sentinel(&[
            "replay",
            f.to_str().unwrap(),
            "--emit",
            "transactions",
            "--stats",
        ]);
        assert_eq!(code, 0, "{err}");
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[0]["path"], "/accounts/0");
        assert_eq!(lines[0]["query"], "v=1");
        assert_eq!(lines[0]["host"], "bank.example");
        assert_eq!(lines[0]["status"], 200);
        assert_eq!(lines[0]["resp_bytes"], 11);
        assert_eq!(lines[0]["latency_ms"], 2.0);
        assert_eq!(lines[0]["ts"], "2023-11-14T22:13:20.010000Z");
        assert!(lines[0]["principal"].is_null());
        assert_eq!(lines[3]["src_ip"], "2001:db8::7");
        assert_eq!(lines[3]["method"], "POST");
        assert_eq!(lines[3]["req_bytes"], 4);
        assert_eq!(lines[3]["status"], 401);
        let stats: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
        assert_eq!(stats["http"]["transactions"], 4);
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_truncated_capture_prints_what_it_held_then_fails_with_the_offset() {
    let d = dir("trunc");
    let bytes = write_pcap(Vec::new(), Link::Ethernet, &traffic(), false).unwrap();
    let f = d.join("cut.pcap");
    // Cut 30 bytes into the last frame's record.
    std::fs::write(&f, &bytes[..bytes.len() - 40]).unwrap();
    let (code, out, err) = sentinel(&["replay", f.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        out.lines().count(),
        4,
        "flows are flushed before the error: {out}"
    );
    assert!(
        err.contains("truncated") && err.contains("byte offset"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_truncated_capture_says_what_was_printed_before_it() {
    let d = dir("trunc-emit");
    let bytes = write_pcap(Vec::new(), Link::Ethernet, &traffic(), false).unwrap();
    let f = d.join("cut.pcap");
    std::fs::write(&f, &bytes[..bytes.len() - 40]).unwrap();
    let file = f.to_str().unwrap();
    let (code, _, err) = sentinel(&["replay", file, "--emit", "transactions"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("; the 4 transaction(s) before it were printed"),
        "{err}"
    );
    // With --emit alerts, alerts were printed, not transactions; and --stats comes with its
    // keys sorted, as after a replay that ends well.
    let (code, out, err) = sentinel(&["replay", file, "--emit", "alerts", "--stats"]);
    assert_eq!(code, 2, "{err}");
    let want = format!(
        "; the {} alert(s) raised by the 4 transaction(s) before it were printed",
        out.lines().count()
    );
    let (stats, message) = err
        .trim_end()
        .split_once('\n')
        .expect("stats, then the error");
    assert!(message.ends_with(&want), "{message}");
    let parsed: serde_json::Value = serde_json::from_str(stats).unwrap();
    assert_eq!(parsed.to_string(), stats, "the keys are sorted");
    assert!(parsed["models"].is_object(), "{stats}");
    // Cut inside the file header, which is not a record.
    std::fs::write(&f, &bytes[..10]).unwrap();
    let (code, _, err) = sentinel(&["replay", file]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("truncated capture: the file header is cut short"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).ok();
}

/// A GeoIP database whose record for the client cannot be read: the replay says so on stderr
/// (the geo models are quiet for that address) and still prints its alerts; `--stats` counts
/// the failed lookups. An intact database gives no warning.
#[test]
fn a_damaged_geoip_database_is_reported() {
    use sentinel::enrich::geo::testdb::{Layout, Place, build};
    let d = dir("damaged-geo");
    let f = d.join("t.pcap");
    std::fs::write(
        &f,
        write_pcap(Vec::new(), Link::Ethernet, &traffic(), false).unwrap(),
    )
    .unwrap();
    let places = [Place {
        net: "198.18.0.0/24".parse().unwrap(),
        country: "SA",
        city: "Riyadh",
        lat: 24.7136,
        lon: 46.6753,
    }];
    let good = build(&places, Layout::MaxMind).unwrap();
    let mut bad = good.clone();
    let at = bad.windows(6).position(|w| w == b"Riyadh").unwrap();
    bad[at - 24..at + 6].fill(0xff);
    let (good_path, bad_path) = (d.join("good.mmdb"), d.join("bad.mmdb"));
    std::fs::write(&good_path, good).unwrap();
    std::fs::write(&bad_path, bad).unwrap();
    let run = |db: &PathBuf| {
        sentinel(&[
            "replay",
            f.to_str().unwrap(),
            "--emit",
            "alerts",
            "--stats",
            "--geoip-db",
            db.to_str().unwrap(),
        ])
    };
    let (code, _, err) = run(&good_path);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
    assert!(err.contains(r#""geo_errors":0"#), "{err}");
    let (code, _, err) = run(&bad_path);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: 1 GeoIP lookup(s) found a record that cannot be read"),
        "{err}"
    );
    assert!(err.contains(r#""geo_errors":1"#), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn bad_paths_and_foreign_files_are_bad_input() {
    let (code, _, err) = sentinel(&["replay", "/nonexistent/x.pcap"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/x.pcap"), "{err}");
    let d = dir("foreign");
    let f = d.join("notes.txt");
    std::fs::write(&f, "hello, not a capture\n").unwrap();
    let (code, _, err) = sentinel(&["replay", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("not a pcap or pcapng file"), "{err}");
    assert_eq!(err.lines().count(), 1);
    let (code, _, _) = sentinel(&["replay", f.to_str().unwrap(), "--emit", "everything"]);
    assert_eq!(code, 2);
    std::fs::remove_dir_all(&d).ok();
}
