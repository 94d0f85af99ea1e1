//! The response loop against real kernel maps: alerts go through the policy and become
//! throttle/block entries (flagged shadow in shadow mode), logged verdicts and logged alerts;
//! failed revocations are alerts too.

use std::sync::{Arc, Mutex};

use sentinel::{
    control::api::ListKind,
    datapath::{Datapath, LoadOptions},
    lab::{TempDir, TempPins as Pins},
    models::{Alert, AlertKind},
    notify::alerts::AlertLog,
    verdict::{
        enforce::VerdictLog,
        lists,
        policy::{Decider, Policy},
        responder::{AlertEvent, DEFAULT_POLICY, Responder},
    },
};

fn alert(kind: AlertKind, ip: &str, ts_s: u64) -> Alert {
    Alert {
        score: 0.95,
        explanation: "500 login attempts in 3 minutes".into(),
        recommended_rate: Some(3.0),
        ..sentinel::models::synth::alert(kind, ip, ts_s * 1_000_000_000)
    }
}

type Setup = (
    Pins,
    Responder,
    Arc<Mutex<sentinel::datapath::Maps>>,
    TempDir,
);

fn setup(policy: &str) -> Setup {
    setup_with(policy, None)
}

fn setup_with(policy: &str, revoke: Option<sentinel::notify::revoke::RevokeConfig>) -> Setup {
    sentinel_tests::require_root();
    let pins = Pins::new("resp");
    let dp = Datapath::load(&LoadOptions::new(pins.path())).expect("load");
    let (maps, _obj) = dp.into_parts();
    let maps = Arc::new(Mutex::new(maps));
    let dir = TempDir::new("sentinel-resp").unwrap();
    let r = Responder::new(
        Decider::new(Policy::parse(policy).unwrap()),
        maps.clone(),
        VerdictLog::new(dir.join("verdicts.jsonl")),
        AlertLog::new(dir.join("alerts.jsonl"), false),
        None,
        revoke,
    );
    (pins, r, maps, dir)
}

#[tokio::test]
async fn brute_force_is_throttled_then_blocked_and_logged() {
    let (_pins, mut r, maps, dir) = setup(DEFAULT_POLICY);
    r.handle(AlertEvent {
        alert: alert(AlertKind::BruteForce, "203.0.113.9", 100),
        tokens: Vec::new(),
        flow: None,
    })
    .await;
    {
        let m = maps.lock().unwrap();
        let t = lists::list(&m, ListKind::Throttle).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].target, "203.0.113.9");
        assert_eq!(t[0].throttle.unwrap().rate_pps, 3, "the learned rate");
        assert!(!t[0].shadow);
        assert!(t[0].ttl_remaining_s.unwrap() > 800.0);
        assert!(lists::list(&m, ListKind::Block).unwrap().is_empty());
    }
    r.handle(AlertEvent {
        alert: alert(AlertKind::BruteForce, "203.0.113.9", 110),
        tokens: Vec::new(),
        flow: None,
    })
    .await;
    let blocked = lists::list(&maps.lock().unwrap(), ListKind::Block).unwrap();
    assert_eq!(blocked.len(), 1, "second offence escalates to a block");
    let alerts = AlertLog::new(dir.join("alerts.jsonl"), false)
        .read_all()
        .unwrap();
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[0]["action"], "throttle");
    assert_eq!(alerts[1]["action"], "block");
    let (live, _) = VerdictLog::new(dir.join("verdicts.jsonl"))
        .live(0.0)
        .unwrap();
    assert_eq!(live.len(), 2);
}

#[tokio::test]
async fn shadow_mode_writes_flagged_entries_and_says_what_it_would_have_done() {
    let shadow = DEFAULT_POLICY.replace("mode = \"enforce\"", "mode = \"shadow\"");
    let (_pins, mut r, maps, dir) = setup(&shadow);
    r.handle(AlertEvent {
        alert: alert(AlertKind::BruteForce, "203.0.113.10", 100),
        tokens: Vec::new(),
        flow: None,
    })
    .await;
    let t = lists::list(&maps.lock().unwrap(), ListKind::Throttle).unwrap();
    assert_eq!(t.len(), 1);
    assert!(t[0].shadow, "shadow verdicts only count would-drops");
    let alerts = AlertLog::new(dir.join("alerts.jsonl"), false)
        .read_all()
        .unwrap();
    assert_eq!(alerts[0]["action"], "alert");
    assert_eq!(alerts[0]["evidence"]["shadow_action"], "throttle");
}

#[tokio::test]
async fn revocation_without_an_endpoint_is_an_alert_too() {
    let (_pins, mut r, _maps, dir) = setup(DEFAULT_POLICY);
    r.handle(AlertEvent {
        alert: alert(AlertKind::ImpossibleTravel, "203.0.113.11", 100),
        tokens: vec!["tok-layla-1".into()],
        flow: None,
    })
    .await;
    let alerts = AlertLog::new(dir.join("alerts.jsonl"), false)
        .read_all()
        .unwrap();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(alerts[0]["action"], "revoke_token");
    assert_eq!(alerts[1]["evidence"]["revocation_failed"], true);
    assert!(
        alerts[1]["explanation"]
            .as_str()
            .unwrap()
            .contains("no [revoke] endpoint")
    );
    let text = std::fs::read_to_string(dir.join("alerts.jsonl")).unwrap();
    assert!(
        !text.contains("tok-layla-1"),
        "raw tokens never reach the log"
    );
}

/// A loopback receiver that answers 200 and hands each request body over.
async fn receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            // Read the head and the Content-Length body.
            loop {
                let n = s.read(&mut tmp).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&tmp[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        let _ = tx.send(body.to_owned());
                        break;
                    }
                }
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    (format!("http://{addr}/revoke"), rx)
}

#[tokio::test]
async fn brute_force_throttles_kills_the_flow_and_revokes_the_sessions() {
    use sentinel::{
        notify::revoke::{RevokeConfig, RevokeStyle, parse_form},
        verdict::lists::Flow,
    };
    sentinel_tests::require_root();
    let (url, mut bodies) = receiver().await;
    let policy = DEFAULT_POLICY.replace(
        "ttl = \"15m\"",
        "ttl = \"15m\"\nalso = [\"kill_flow\", \"revoke_token\"]",
    );
    let (pins, mut r, maps, dir) = setup_with(
        &policy,
        Some(RevokeConfig {
            url,
            style: RevokeStyle::Rfc7009,
            client_id: Some("sentinel".into()),
            client_secret: None,
            client_secret_file: None,
        }),
    );
    let flow = Flow {
        src: "203.0.113.66:40001".parse().unwrap(),
        dst: "198.18.0.1:8080".parse().unwrap(),
        proto: 6,
    };
    r.handle(AlertEvent {
        alert: alert(AlertKind::BruteForce, "203.0.113.66", 100),
        tokens: vec!["tok-layla-1".into()],
        flow: Some(flow),
    })
    .await;
    r.flush().await;
    let body = bodies.recv().await.expect("a revocation request");
    let form = parse_form(&body);
    assert!(
        form.contains(&("token".into(), "tok-layla-1".into())),
        "{form:?}"
    );
    {
        let m = maps.lock().unwrap();
        assert_eq!(lists::list(&m, ListKind::Throttle).unwrap().len(), 1);
        let killed: Vec<_> = m.flow_kill.keys().filter_map(Result::ok).collect();
        assert_eq!(killed, vec![flow.key()]);
    }
    let stats = r.stats().report();
    assert_eq!(stats["tokens_revoked"], 1, "{stats}");
    // The verdict log restores the throttle and the killed flow into fresh maps.
    drop(r);
    drop(maps);
    drop(pins);
    let pins2 = Pins::new("resp2");
    let dp = Datapath::load(&LoadOptions::new(pins2.path())).expect("load");
    let (mut maps, _obj) = dp.into_parts();
    // A torn last write: left out of the compacted log, kept beside it.
    let log_path = dir.join("verdicts.jsonl");
    let mut text = std::fs::read_to_string(&log_path).unwrap();
    text.push_str("{\"applied_at\": 1, \"expi");
    std::fs::write(&log_path, &text).unwrap();
    let n = VerdictLog::new(&log_path).restore(&mut maps).unwrap();
    assert_eq!(n, 2);
    let kept = std::fs::read_to_string(dir.join("verdicts.jsonl.unreadable")).unwrap();
    assert_eq!(kept, text, "the log as it was");
    assert_eq!(
        std::fs::read_to_string(&log_path).unwrap().lines().count(),
        2
    );
    assert_eq!(lists::list(&maps, ListKind::Throttle).unwrap().len(), 1);
    assert_eq!(maps.flow_kill.keys().count(), 1);
    // A second restart after another torn write keeps that log too, after the first, each
    // starting on a line of its own.
    let mut text2 = std::fs::read_to_string(&log_path).unwrap();
    text2.push_str("{\"applied_at\": 2");
    std::fs::write(&log_path, &text2).unwrap();
    assert_eq!(VerdictLog::new(&log_path).restore(&mut maps).unwrap(), 2);
    let kept = std::fs::read_to_string(dir.join("verdicts.jsonl.unreadable")).unwrap();
    assert_eq!(kept, format!("{text}\n{text2}"), "both logs as they were");
}

#[tokio::test]
async fn the_kernel_allowlist_is_never_acted_on() {
    let (_pins, mut r, maps, dir) = setup(DEFAULT_POLICY);
    lists::add(
        &mut maps.lock().unwrap(),
        ListKind::Allow,
        &sentinel::control::api::AddRequest {
            targets: vec!["203.0.113.0/24".into()],
            ..Default::default()
        },
    )
    .unwrap();
    r.handle(AlertEvent::new(alert(
        AlertKind::BruteForce,
        "203.0.113.12",
        100,
    )))
    .await;
    assert!(
        lists::list(&maps.lock().unwrap(), ListKind::Throttle)
            .unwrap()
            .is_empty()
    );
    let alerts = AlertLog::new(dir.join("alerts.jsonl"), false)
        .read_all()
        .unwrap();
    assert_eq!(alerts[0]["action"], "alert");
    assert_eq!(alerts[0]["evidence"]["allowlisted"], true);
}

/// An injection from `first` blocked with `action` for an hour, then an enumeration from
/// `second` that a shadow rule blocks with `action` for a minute: the block list after both,
/// and the verdicts the log would restore.
async fn enforcing_then_shadow(
    action: &str,
    first: &str,
    second: &str,
) -> (
    Vec<sentinel::control::api::Entry>,
    Vec<sentinel::verdict::enforce::VerdictRecord>,
) {
    let policy = format!(
        "[escalation]\nprefix_v4 = 24\n\n\
         [[rule]]\nkinds = [\"sql_injection\"]\nactions = [\"{action}\"]\nttl = \"1h\"\n\n\
         [[rule]]\nkinds = [\"enumeration\"]\nactions = [\"{action}\"]\nttl = \"1m\"\nshadow = true\n"
    );
    let (_pins, mut r, maps, dir) = setup(&policy);
    for (kind, ip, t) in [
        (AlertKind::SqlInjection, first, 100),
        (AlertKind::Enumeration, second, 110),
    ] {
        r.handle(AlertEvent {
            alert: alert(kind, ip, t),
            tokens: Vec::new(),
            flow: None,
        })
        .await;
    }
    let blocked = lists::list(&maps.lock().unwrap(), ListKind::Block).unwrap();
    let (live, _) = VerdictLog::new(dir.join("verdicts.jsonl"))
        .live(sentinel::clock::unix_s())
        .unwrap();
    (blocked, live)
}

#[tokio::test]
async fn a_shadow_rule_does_not_weaken_an_enforcing_verdict() {
    // An address blocked for an hour; then a prefix.
    for (action, second, target) in [
        ("block", "203.0.113.44", "203.0.113.44"),
        ("block_prefix", "203.0.113.45", "203.0.113.0/24"),
    ] {
        let (blocked, live) = enforcing_then_shadow(action, "203.0.113.44", second).await;
        assert_eq!(blocked.len(), 1, "{blocked:?}");
        assert_eq!(blocked[0].target, target);
        // Still enforcing, for the hour.
        assert!(!blocked[0].shadow, "{blocked:?}");
        assert!(blocked[0].ttl_remaining_s.unwrap() > 3000.0, "{blocked:?}");
        // Only the enforcing verdict is logged: a restart restores it, not the shadow one.
        assert_eq!(live.len(), 1, "{live:?}");
        assert!(!live[0].shadow);
    }
}
