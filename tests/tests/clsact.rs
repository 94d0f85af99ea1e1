//! The TC capture's `clsact` qdisc: a daemon with capture on a veth in a namespace, stopped and
//! unloaded, leaves no qdisc of its own behind, and keeps one that was there before with a
//! foreign filter on it. The record-and-release machinery of kernels before 6.6 (where the
//! capture needs the qdisc) is exercised directly, whatever the kernel.

use std::time::Duration;

use sentinel::datapath::qdisc::{claim_clsact, release_clsacts, tcx_supported};
use sentinel_tests::{Daemon, NetNs, TempDir, TempPins, Topology, output_within, sentinel_bin};

/// `tc ARGS` inside `ns`; stdout.
fn tc(ns: &NetNs, args: &[&str]) -> String {
    let out = output_within(ns.command("tc").args(args), Duration::from_secs(10)).unwrap();
    assert!(
        out.status.success(),
        "tc {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has_clsact(ns: &NetNs, iface: &str) -> bool {
    tc(ns, &["qdisc", "show", "dev", iface]).contains("clsact")
}

/// A filter that is not Sentinel's on the ingress hook (adds the clsact qdisc when missing).
fn add_foreign_filter(ns: &NetNs, iface: &str) {
    if !has_clsact(ns, iface) {
        tc(ns, &["qdisc", "add", "dev", iface, "clsact"]);
    }
    // A u32 filter matching everything, without an action (this kernel has no matchall and no
    // gact module): a filter that is not Sentinel's is all that matters.
    tc(
        ns,
        &[
            "filter", "add", "dev", iface, "ingress", "pref", "7", "protocol", "all", "u32",
            "match", "u32", "0", "0",
        ],
    );
}

fn has_foreign_filter(ns: &NetNs, iface: &str) -> bool {
    tc(ns, &["filter", "show", "dev", iface, "ingress"]).contains("u32")
}

/// Starts a capturing daemon on the server's veth, stops it with SIGTERM and unloads its pins
/// from inside the namespace, as an operator on that host would; `running` looks at the
/// interface while the daemon captures.
fn run_capture_then_unload(topo: &Topology, running: impl FnOnce()) {
    let mut d = Daemon::start_with(
        &topo.server,
        &[&topo.server_if],
        &[],
        "[capture]\nhttp_ports = [8080]\n",
    )
    .unwrap();
    let st = d.status().unwrap();
    assert!(!st["capture"].is_null(), "capture is on: {st}");
    running();
    d.kill(libc::SIGTERM).unwrap();
    let out = output_within(
        topo.server
            .command(sentinel_bin())
            .args(["unload", "--pin-path"])
            .arg(d.pins()),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.pins().exists(), "pins left behind");
}

#[test]
fn unload_leaves_no_clsact_of_its_own() {
    sentinel_tests::require_root();
    let topo = Topology::new().unwrap();
    assert!(!has_clsact(&topo.server, &topo.server_if));
    run_capture_then_unload(&topo, || {
        // From Linux 6.6 the capture attaches as TCX links, which need no qdisc.
        if tcx_supported() {
            assert!(!has_clsact(&topo.server, &topo.server_if));
        }
    });
    assert!(
        !has_clsact(&topo.server, &topo.server_if),
        "clsact left on {}: {}",
        topo.server_if,
        tc(&topo.server, &["qdisc", "show", "dev", &topo.server_if])
    );
}

#[test]
fn a_clsact_that_was_there_with_a_foreign_filter_is_kept() {
    sentinel_tests::require_root();
    let topo = Topology::new().unwrap();
    add_foreign_filter(&topo.server, &topo.server_if);
    run_capture_then_unload(&topo, || {});
    assert!(has_clsact(&topo.server, &topo.server_if), "clsact removed");
    assert!(
        has_foreign_filter(&topo.server, &topo.server_if),
        "the foreign filter is gone"
    );
}

#[test]
fn a_recorded_clsact_is_removed_only_when_no_filter_uses_it() {
    sentinel_tests::require_root();
    let topo = Topology::new().unwrap();
    let pins = TempPins::new("clsact");
    let (ns, iface) = (&topo.server, topo.server_if.clone());
    std::fs::create_dir_all(pins.path()).unwrap();
    let claim = |pins: std::path::PathBuf, iface: String| {
        ns.run(move || claim_clsact(&pins, &iface).unwrap())
            .unwrap()
    };
    let release =
        |pins: std::path::PathBuf| ns.run(move || release_clsacts(&pins).unwrap()).unwrap();
    let p = pins.path().to_path_buf();

    // Created by Sentinel, then released: gone.
    assert!(claim(p.clone(), iface.clone()), "created");
    assert!(has_clsact(ns, &iface));
    assert!(!claim(p.clone(), iface.clone()), "already there");
    assert_eq!(release(p.clone()), vec![iface.clone()]);
    assert!(!has_clsact(ns, &iface));

    // There before, with a foreign filter: not recorded, kept.
    add_foreign_filter(ns, &iface);
    assert!(!claim(p.clone(), iface.clone()), "was there");
    assert_eq!(release(p.clone()), Vec::<String>::new());
    assert!(has_clsact(ns, &iface) && has_foreign_filter(ns, &iface));
    tc(ns, &["qdisc", "del", "dev", &iface, "clsact"]);

    // Created by Sentinel, then someone else filters on it: kept.
    assert!(claim(p.clone(), iface.clone()), "created");
    add_foreign_filter(ns, &iface);
    assert_eq!(release(p.clone()), Vec::<String>::new());
    assert!(has_clsact(ns, &iface) && has_foreign_filter(ns, &iface));

    // A release from another network namespace (the host's) touches nothing there.
    tc(ns, &["qdisc", "del", "dev", &iface, "clsact"]);
    assert!(claim(p.clone(), iface.clone()), "created");
    assert_eq!(release_clsacts(&p).unwrap(), Vec::<String>::new());
    assert!(has_clsact(ns, &iface), "released from the wrong namespace");
    tc(ns, &["qdisc", "del", "dev", &iface, "clsact"]);
}

/// A daemon that stops on an error after its capture attached still removes the clsact qdisc
/// it recorded (kernels before 6.6; the record is made here as such a daemon makes it). Here
/// the transactions log is a directory, which the daemon cannot open once the capture is on.
/// Only a clean stop used to release the qdisc; after an error it stayed until `sentinel unload`.
#[test]
fn a_daemon_that_fails_after_attaching_releases_its_clsact() {
    sentinel_tests::require_root();
    let topo = Topology::new().unwrap();
    let pins = TempPins::new("clsact-fail");
    let dir = TempDir::new("clsact-fail").unwrap();
    let (ns, iface) = (&topo.server, topo.server_if.clone());
    std::fs::create_dir_all(pins.path()).unwrap();
    let (p, i) = (pins.path().to_path_buf(), iface.clone());
    assert!(ns.run(move || claim_clsact(&p, &i).unwrap()).unwrap());
    assert!(has_clsact(ns, &iface));
    let config = dir.join("sentinel.toml");
    std::fs::write(
        &config,
        format!(
            "[alerts]\nlog = {:?}\n[verdicts]\nlog = {:?}\n\
             [capture]\nhttp_ports = [8080]\ntransactions_log = {:?}\n",
            dir.join("alerts.jsonl"),
            dir.join("verdicts.jsonl"),
            dir.path(),
        ),
    )
    .unwrap();
    let out = output_within(
        ns.command(sentinel_bin())
            .args(["run", "--iface", &iface, "--socket"])
            .arg(dir.join("sentinel.sock"))
            .arg("--pin-path")
            .arg(pins.path())
            .arg("--config")
            .arg(&config),
        Duration::from_secs(60),
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the daemon ran: {stderr}");
    assert!(
        stderr.contains("opening the transactions log"),
        "failed for another reason: {stderr}"
    );
    assert!(
        !has_clsact(ns, &iface),
        "clsact left on {iface} after the daemon failed: {stderr}"
    );
}
