//! Detection on traffic Sentinel's authors did not write: hydra, sqlmap, wfuzz and ffuf against
//! the demo bank, with the daemon capturing live (`sentinel::lab::tools`).

#[test]
fn attack_tools_are_detected_and_a_customer_is_not() {
    sentinel_tests::require_root();
    let r = sentinel::lab::tools::run().expect("running the tools");
    eprintln!("{}", r.table());
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert!(r.benign_requests >= 4, "{}", r.benign_requests);
    assert!(
        r.benign_alerts.is_empty(),
        "alerts about the customer: {:?}",
        r.benign_alerts
    );
    for run in &r.runs {
        assert!(run.requests > 0, "{} sent nothing: {run:?}", run.tool);
        let first = run
            .first
            .as_ref()
            .unwrap_or_else(|| panic!("{} raised no {} alert: {run:?}", run.tool, run.expected));
        // The target for injection: within 5 attempts.
        if ["sql_injection", "xss", "path_traversal"].contains(&run.expected.as_str()) {
            assert!(first.at_request <= 5, "{}: {first:?}", run.tool);
        }
    }
}
