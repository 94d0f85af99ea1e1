//! The response loop against real kernel maps: alerts go through the policy and become
//! throttle/block entries (flagged shadow in shadow mode), logged verdicts and logged alerts;
//! failed revocations are alerts too.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use sentinel::{
    control::api::ListKind,
    datapath::{Datapath, LoadOptions, unload},
    models::{Action, Alert, AlertKind, Severity},
    notify::alerts::AlertLog,
    verdict::{
        enforce::VerdictLog,
        lists,
        policy::{Decider, Policy},
        responder::{AlertEvent, DEFAULT_POLICY, Responder},
    },
};

struct Pins(PathBuf);
impl Drop for Pins {
    fn drop(&mut self) {
        let _ = unload(&self.0);
    }
}

fn alert(kind: AlertKind, ip: &str, ts_s: u64) -> Alert {
    Alert {
        ts: sentinel::models::alert::rfc3339(ts_s * 1_000_000_000),
        kind,
        severity: Severity::High,
        score: 0.95,
        src_ip: ip.into(),
        principal: Some("user:layla".into()),
        endpoint: Some("/login".into()),
        country: Some("VN".into()),
        action: Action::Alert,
        explanation: "500 login attempts in 3 minutes".into(),
        evidence: Default::default(),
        ts_ns: ts_s * 1_000_000_000,
        recommended_rate: Some(3.0),
    }
}

fn setup(
    policy: &str,
) -> (
    Pins,
    Responder,
    Arc<Mutex<sentinel::datapath::Maps>>,
    PathBuf,
) {
    sentinel_tests::require_root();
    let id = sentinel_tests::unique_id();
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/sentinel-test-resp-{id}"
    )));
    let dp = Datapath::load(&LoadOptions::new(&pins.0)).expect("load");
    let (maps, _obj) = dp.into_parts();
    let maps = Arc::new(Mutex::new(maps));
    let dir = std::env::temp_dir().join(format!("sentinel-resp-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let r = Responder::new(
        Decider::new(Policy::parse(policy).unwrap()),
        maps.clone(),
        VerdictLog::new(dir.join("verdicts.jsonl")),
        AlertLog::new(dir.join("alerts.jsonl"), false),
        None,
        None,
    );
    (pins, r, maps, dir)
}

#[tokio::test]
async fn brute_force_is_throttled_then_blocked_and_logged() {
    let (_pins, mut r, maps, dir) = setup(DEFAULT_POLICY);
    r.handle(AlertEvent {
        alert: alert(AlertKind::BruteForce, "203.0.113.9", 100),
        bearer: None,
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
        bearer: None,
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
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn shadow_mode_writes_flagged_entries_and_says_what_it_would_have_done() {
    let shadow = DEFAULT_POLICY.replace("mode = \"enforce\"", "mode = \"shadow\"");
    let (_pins, mut r, maps, dir) = setup(&shadow);
    r.handle(AlertEvent {
        alert: alert(AlertKind::BruteForce, "203.0.113.10", 100),
        bearer: None,
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
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn revocation_without_an_endpoint_is_an_alert_too() {
    let (_pins, mut r, _maps, dir) = setup(DEFAULT_POLICY);
    r.handle(AlertEvent {
        alert: alert(AlertKind::ImpossibleTravel, "203.0.113.11", 100),
        bearer: Some("tok-layla-1".into()),
    })
    .await;
    let alerts = AlertLog::new(dir.join("alerts.jsonl"), false)
        .read_all()
        .unwrap();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(alerts[0]["evidence"]["revocation_failed"], true);
    assert!(
        alerts[0]["explanation"]
            .as_str()
            .unwrap()
            .contains("no [revoke] endpoint")
    );
    assert_eq!(alerts[1]["action"], "revoke_token");
    let text = std::fs::read_to_string(dir.join("alerts.jsonl")).unwrap();
    assert!(
        !text.contains("tok-layla-1"),
        "raw tokens never reach the log"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
