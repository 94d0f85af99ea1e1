//! The reference case of DESIGN.md end to end (`sentinel::lab::reference`): the demo bank
//! behind the daemon, a benign population, a user with a Riyadh history, then 500 login
//! attempts on her account from a Vietnam address; once enforcing, once with the policy in
//! shadow mode.

use sentinel::lab::reference::{self, Report, Settings};

/// The two runs take turns: each loads the 2 cores with a daemon, a bank and an attack.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(shadow: bool) -> Report {
    sentinel_tests::require_root();
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let r = reference::run(&Settings {
        shadow,
        ..Settings::default()
    })
    .expect("reference case");
    let mut shown = serde_json::to_value(&r).unwrap();
    shown["metrics"] = serde_json::json!("(scrape)");
    eprintln!("{}", serde_json::to_string_pretty(&shown).unwrap());
    r
}

fn common(r: &Report) {
    assert_eq!(r.attempts_sent, 500);
    assert_eq!(
        r.benign_errors, 0,
        "benign clients saw errors: {:?}",
        r.benign_error_samples
    );
    assert!(r.benign_requests > 50, "{}", r.benign_requests);
    let a = r
        .brute_force_alert()
        .expect("a brute_force alert about the attacker");
    assert_eq!(a["country"], "VN", "{a}");
    assert_eq!(a["principal"], "user:layla", "{a}");
    let explanation = a["explanation"].as_str().unwrap();
    assert!(
        explanation.contains("layla") && explanation.contains("VN"),
        "{explanation}"
    );
    assert!(
        a["severity"] == "high" || a["severity"] == "critical",
        "{a}"
    );
    assert!(r.webhook_alerts >= 1, "the webhook got no alert");
    assert_eq!(r.analysis["geo"]["on"], true, "{}", r.analysis);
    // The metrics carry the alert and the kernel's per-reason counters.
    assert!(
        r.metrics.lines().any(
            |l| l.starts_with("sentinel_alerts_total{kind=\"brute_force\"}") && !l.ends_with(" 0")
        ),
        "{}",
        r.metrics
    );
    assert!(
        r.metrics
            .contains("sentinel_packets_total{reason=\"pass\"}")
    );
    assert!(r.metrics.contains("sentinel_pipeline_lag_seconds_bucket"));
    // `sentinel explain user:layla`: her learned profile (Riyadh) and the alerts about her.
    let x = &r.explain_layla;
    assert_eq!(x["profile"]["countries"], serde_json::json!(["SA"]), "{x}");
    assert!(
        x["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["kind"] == "brute_force")),
        "{x}"
    );
}

#[test]
fn a_brute_force_from_vietnam_is_throttled_within_a_second_and_the_session_revoked() {
    let r = run(false);
    common(&r);
    let a = r.brute_force_alert().unwrap();
    assert_eq!(a["action"], "throttle", "{a}");
    let first = r.first_verdict_s.expect("a kernel verdict on the attacker");
    assert!(
        first < 1.0,
        "first verdict {first:.3} s after the attack started"
    );
    assert_eq!(r.verdicts[0]["list"], "throttle", "{:?}", r.verdicts);
    let pps = r.throttle_pps.expect("a throttle rate") as usize;
    // Each attempt costs at least three packets from the client (handshake, request, close):
    // once throttled, attempts reaching the server stay under a third of the packet rate,
    // whatever the attacker sends (100/s here).
    assert!(
        r.max_attempts_per_s_after_1s <= pps / 3,
        "{} attempts/s reached the server after 1 s; throttle {pps} packets/s; per second: {:?}",
        r.max_attempts_per_s_after_1s,
        r.arrivals_per_s
    );
    assert!(
        r.attempts_at_server < 100,
        "{} of 500 attempts reached the server",
        r.attempts_at_server
    );
    assert!(r.counter("drop_throttle") + r.counter("drop_block") > 0);
    // The identity provider was asked to revoke the Riyadh user's session tokens.
    assert!(!r.riyadh_tokens.is_empty());
    assert!(
        r.revoked.iter().any(|t| r.riyadh_tokens.contains(t)),
        "revoked {:?}, layla holds {:?}",
        r.revoked,
        r.riyadh_tokens
    );
}

#[test]
fn in_shadow_mode_the_same_attack_is_only_counted() {
    let r = run(true);
    common(&r);
    let a = r.brute_force_alert().unwrap();
    assert_eq!(a["action"], "alert", "{a}");
    assert_eq!(a["evidence"]["shadow_action"], "throttle", "{a}");
    assert!(r.first_verdict_s.is_some(), "shadow verdicts are written");
    assert!(r.verdicts.iter().all(|v| v["shadow"] == true));
    assert!(r.counter("shadow_throttle") + r.counter("shadow_block") > 0);
    for reason in ["drop_throttle", "drop_block", "drop_flow_kill"] {
        assert_eq!(r.counter(reason), 0, "{reason}");
    }
    assert_eq!(
        r.attempts_at_server, 500,
        "nothing is dropped in shadow mode"
    );
    assert!(r.revoked.is_empty(), "nothing is revoked in shadow mode");
}
