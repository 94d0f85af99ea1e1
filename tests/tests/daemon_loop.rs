//! The daemon's response loop around the traffic: SIGHUP reloads the policy (an invalid one is
//! rejected with its line and reason and the running one stays), verdicts come back after a
//! restart from the verdict log, `--geoip-db` turns the geo models on, and `/metrics` answers.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use sentinel::{
    enrich::geo::testdb::{Layout, Place, build},
    lab::reference::{METRICS, http, policy},
};
use sentinel_tests::{Daemon, TempDir, Topology, output_within};

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn sighup_reloads_the_policy_restart_restores_verdicts_and_metrics_answer() {
    sentinel_tests::require_root();
    let topo = Topology::new().unwrap();
    let dir = TempDir::new("sentinel-loop").unwrap();
    let geo = dir.join("geo.mmdb");
    std::fs::write(
        &geo,
        build(
            &[Place {
                net: "203.0.113.0/24".parse().unwrap(),
                country: "VN",
                city: "Hanoi",
                lat: 21.0,
                lon: 105.8,
            }],
            Layout::DbIp,
        )
        .unwrap(),
    )
    .unwrap();
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, policy(false)).unwrap();
    let verdicts = dir.join("verdicts.jsonl");
    // A verdict from "before the restart", still in force for ten minutes.
    let now = sentinel::clock::unix_s();
    std::fs::write(
        &verdicts,
        format!(
            "{}\n{}\n",
            serde_json::json!({"applied_at": now - 10.0, "expires_at": now + 600.0,
                "target": "203.0.113.77/32", "list": "block", "rate_pps": null,
                "shadow": false, "reason": "brute_force user:layla"}),
            serde_json::json!({"applied_at": now - 900.0, "expires_at": now - 300.0,
                "target": "203.0.113.78/32", "list": "block", "rate_pps": null,
                "shadow": false, "reason": "expired"}),
        ),
    )
    .unwrap();
    let config = dir.join("sentinel.toml");
    std::fs::write(
        &config,
        format!(
            "[capture]\nhttp_ports = [8080]\n[alerts]\nlog = \"{}\"\n[verdicts]\npolicy = \"{}\"\nlog = \"{}\"\n[metrics]\nlisten = \"{METRICS}\"\n",
            dir.join("alerts.jsonl").display(),
            policy_path.display(),
            verdicts.display()
        ),
    )
    .unwrap();
    let geo_arg = geo.display().to_string();
    let config_arg = config.display().to_string();
    let mut d = Daemon::start(
        &topo.server,
        &[topo.server_if.as_str()],
        &["--config", &config_arg, "--geoip-db", &geo_arg],
    )
    .unwrap();

    // The live verdict was restored, the expired one not.
    let blocked = d.cli_ok(&["block", "list", "--json"]).unwrap();
    assert!(blocked.contains("203.0.113.77"), "{blocked}");
    assert!(!blocked.contains("203.0.113.78"), "{blocked}");

    let status = d.status().unwrap();
    assert_eq!(status["analysis"]["geo"]["on"], true, "{status}");
    let text = d.cli_ok(&["status"]).unwrap();
    eprintln!("{text}");
    for needle in [
        "models:",
        "geo: on",
        "principals tracked",
        "alerts: none",
        "policy: ",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert_eq!(status["policy"]["mode"], "enforce", "{status}");
    assert_eq!(status["policy"]["rules"], 2, "{status}");

    // An invalid policy is rejected with its line and reason; the running one stays.
    std::fs::write(
        &policy_path,
        "mode = \"enforce\"\n[[rule]]\nkinds = [\"brute_forse\"]\nactions = [\"block\"]\n",
    )
    .unwrap();
    let pid = d.pid().unwrap() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_for("the rejected reload in status", || {
        d.status().unwrap()["policy"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("line 3") && e.contains("brute_forse"))
    });
    assert_eq!(d.status().unwrap()["policy"]["mode"], "enforce");

    // A valid one replaces it.
    std::fs::write(&policy_path, policy(true)).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_for("the shadow policy in status", || {
        let s = d.status().unwrap();
        s["policy"]["mode"] == "shadow" && s["policy"]["last_error"].is_null()
    });

    // Metrics answer in the server namespace, with bounded labels.
    let text = topo
        .server
        .run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(http(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    METRICS.parse::<SocketAddr>().unwrap(),
                    "GET /metrics HTTP/1.1\r\n",
                    b"",
                    Duration::from_secs(5),
                ))
        })
        .unwrap()
        .unwrap();
    assert_eq!(text.0, 200);
    let text = String::from_utf8(text.1).unwrap();
    for needle in [
        "sentinel_packets_total{reason=\"drop_block\"}",
        "sentinel_bytes_total{reason=\"pass\"}",
        "sentinel_alerts_total{kind=\"impossible_travel\"} 0",
        "sentinel_actions_total{action=\"revoke_token\"} 0",
        "sentinel_verdicts_active{list=\"block\"} 1",
        "sentinel_ring_lost_total 0",
        "sentinel_defrag_events_total{event=\"overlaps\"} 0",
        "sentinel_defrag_pending_bytes 0",
        "sentinel_analysis_dropped_total 0",
        "sentinel_pipeline_lag_seconds_count",
        "# EOF",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(series < 120, "{series} series: labels must stay bounded");

    // After a crash the verdict comes back from the log (the pins also keep it).
    d.restart().unwrap();
    let blocked = d.cli_ok(&["block", "list", "--json"]).unwrap();
    assert!(blocked.contains("203.0.113.77"), "{blocked}");

    // An operator's unblock holds across the next restart: the log says it was removed.
    d.cli_ok(&["block", "del", "203.0.113.77"]).unwrap();
    d.restart().unwrap();
    let blocked = d.cli_ok(&["block", "list", "--json"]).unwrap();
    assert!(!blocked.contains("203.0.113.77"), "{blocked}");

    // Unloading the pins from under the running daemon is refused (it would go on enforcing
    // nothing); the daemon still answers afterwards.
    let pins = d.pin_path.display().to_string();
    let out = d.cli(&["unload", "--pin-path", &pins]).unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("stop it first"), "{said}");
    d.cli_ok(&["status", "--json"]).unwrap();
}

#[test]
fn an_invalid_policy_or_geoip_db_stops_the_start_with_the_reason() {
    let dir = TempDir::new("sentinel-pre").unwrap();
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, "mode = \"enforce\"\n\n[[rule]]\nkinds = [\"xss\"]\nactions = [\"block\"]\nttl = \"soon\"\n").unwrap();
    let config = dir.join("sentinel.toml");
    std::fs::write(
        &config,
        format!(
            "[capture]\nhttp_ports = [8080]\n[verdicts]\npolicy = \"{}\"\n",
            policy_path.display()
        ),
    )
    .unwrap();
    // Should the check regress and the daemon start, it must neither pin under the host's
    // /sys/fs/bpf/sentinel, nor serve the host's socket, nor run on: its pin path is not on
    // bpffs (the load fails at once, nothing pinned) and it is killed after 30 s.
    let run = |extra: &[&str]| {
        output_within(
            std::process::Command::new(sentinel::lab::sentinel_bin())
                .args(["run", "--iface", "lo", "--config"])
                .arg(&config)
                .arg("--pin-path")
                .arg(dir.join("pins"))
                .arg("--socket")
                .arg(dir.join("sentinel.sock"))
                .args(extra),
            Duration::from_secs(30),
        )
        .unwrap()
    };
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 6") && err.contains("soon"), "{err}");
    std::fs::write(&policy_path, policy(false)).unwrap();
    let missing = dir.join("missing.mmdb");
    let out = run(&["--geoip-db", &missing.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("missing.mmdb"), "{err}");
}
