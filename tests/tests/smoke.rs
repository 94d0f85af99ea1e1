//! Smoke test of the harness itself: a blocked source is dropped over a real veth.
use sentinel_tests::{Daemon, Topology, netns::*, traffic::*};
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

#[test]
fn blocked_source_is_dropped_and_others_pass() {
    sentinel_tests::require_root();
    let topo = Topology::new().unwrap();
    let blocked: IpAddr = "198.18.0.11".parse().unwrap();
    topo.add_client_addr(blocked).unwrap();
    let d = Daemon::start(&topo.server, &[&topo.server_if], &[]).unwrap();
    d.cli_ok(&["block", "add", "198.18.0.11"]).unwrap();
    let sink = Sink::start(&topo.server, SocketAddr::new(SERVER_V4.into(), 7000)).unwrap();
    let dst = SocketAddr::new(SERVER_V4.into(), 7000);
    send_udp(
        &topo.client,
        blocked,
        dst,
        200,
        3000,
        Duration::from_secs(5),
    )
    .unwrap();
    send_udp(
        &topo.client,
        CLIENT_V4.into(),
        dst,
        200,
        3000,
        Duration::from_secs(5),
    )
    .unwrap();
    sink.settle(Duration::from_millis(200), Duration::from_secs(3));
    assert_eq!(sink.from(blocked), 0);
    assert_eq!(sink.from(CLIENT_V4.into()), 200);
    assert!(d.counter("drop_block").unwrap() >= 200);
}
