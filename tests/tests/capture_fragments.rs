//! Live capture of a request sent as IP fragments (the classic IDS evasion: an SQL injection
//! split over fragments, which the server's kernel reassembles and serves). The client opens a
//! real TCP connection to the demo bank in the server namespace, queues its request in the
//! socket without sending it (TCP_REPAIR: the kernel takes the bytes as sent, so it accepts the
//! server's answer), and sends the same bytes itself as IP fragments through a raw socket. The
//! daemon must build the transaction from the fragments and raise the injection alert.

use std::{
    io::Read,
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use sentinel::capture::synth;
use sentinel_tests::{
    Daemon, TempDir, Topology,
    bank::BankServer,
    netns::{CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
};

const TCP_REPAIR: libc::c_int = 19;
const TCP_REPAIR_QUEUE: libc::c_int = 20;
const TCP_QUEUE_SEQ: libc::c_int = 21;
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_SEND_QUEUE: libc::c_int = 2;
/// Leaves repair mode without sending a window probe.
const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;

fn setsockopt(fd: libc::c_int, opt: libc::c_int, v: libc::c_int) -> std::io::Result<()> {
    // SAFETY: a valid socket and a c_int option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            opt,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn queue_seq(fd: libc::c_int, queue: libc::c_int) -> std::io::Result<u32> {
    setsockopt(fd, TCP_REPAIR_QUEUE, queue)?;
    let mut v: u32 = 0;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: a valid socket and a u32 buffer of the size given.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            TCP_QUEUE_SEQ,
            (&mut v as *mut u32).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(v)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Queues `data` in the connection as sent without sending it; returns the sequence number of
/// its first byte and the acknowledgment number the connection is at.
fn queue_unsent(s: &TcpStream, data: &[u8]) -> std::io::Result<(u32, u32)> {
    let fd = s.as_raw_fd();
    setsockopt(fd, TCP_REPAIR, 1)?;
    let seq = queue_seq(fd, TCP_SEND_QUEUE)?;
    let ack = queue_seq(fd, TCP_RECV_QUEUE)?;
    setsockopt(fd, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    // In repair mode, data written to the send queue is taken as sent, not transmitted.
    // SAFETY: a valid socket and buffer.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), 0) };
    if n != data.len() as isize {
        return Err(std::io::Error::last_os_error());
    }
    setsockopt(fd, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)?;
    Ok((seq, ack))
}

/// The IP packet of the segment, with its TCP checksum right (`synth::fragments` sets each
/// IPv4 fragment's header checksum).
fn packet(src: SocketAddr, dst: SocketAddr, seq: u32, ack: u32, data: &[u8]) -> Vec<u8> {
    let seg = synth::seg(0, src, dst, seq, ack, 0x18, data);
    let mut ip = synth::ip_packet(&seg);
    synth::set_tcp_checksum(&mut ip);
    ip
}

/// Sends each fragment through a raw socket (the kernel routes it and, for IPv4, fills the
/// header checksum in; fragment fields are left as given).
fn send_raw(dst: IpAddr, frags: &[Vec<u8>]) -> std::io::Result<()> {
    let (family, addr, len) = match dst {
        IpAddr::V4(a) => {
            // SAFETY: all-zero is a valid sockaddr_in.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            let mut st: libc::sockaddr_storage =
                // SAFETY: all-zero is a valid sockaddr_storage.
                unsafe { std::mem::zeroed() };
            // SAFETY: sockaddr_storage is larger than sockaddr_in.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sa) };
            (libc::AF_INET, st, size_of::<libc::sockaddr_in>())
        }
        IpAddr::V6(a) => {
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = a.octets();
            let mut st: libc::sockaddr_storage =
                // SAFETY: all-zero is a valid sockaddr_storage.
                unsafe { std::mem::zeroed() };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sa) };
            (libc::AF_INET6, st, size_of::<libc::sockaddr_in6>())
        }
    };
    // SAFETY: plain socket call; IPPROTO_RAW sockets take the IP header from the caller.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut result = Ok(());
    for f in frags {
        // SAFETY: a valid socket, buffer and address of the length given.
        let n = unsafe {
            libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&addr as *const libc::sockaddr_storage).cast(),
                len as libc::socklen_t,
            )
        };
        if n != f.len() as isize {
            result = Err(std::io::Error::last_os_error());
            break;
        }
    }
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    result
}

/// Connects to `server`, sends `request` as IP fragments starting at `starts`, in reverse
/// order, and returns the response's status line.
fn fragmented_exchange(
    client: IpAddr,
    server: SocketAddr,
    request: Vec<u8>,
    starts: Vec<usize>,
) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let local = s.local_addr()?;
    anyhow::ensure!(local.ip() == client, "connected from {local}");
    let (seq, ack) = queue_unsent(&s, &request)?;
    let ip = packet(local, server, seq, ack, &request);
    let mut frags = synth::fragments(&ip, 0x5eed, &starts);
    // The last first, and the first (the only one that names the ports) last: Linux
    // reassembles the datagram all the same.
    frags.reverse();
    send_raw(server.ip(), &frags)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        anyhow::ensure!(Instant::now() < deadline, "no response");
        let n = s.read(&mut tmp)?;
        anyhow::ensure!(n > 0, "connection closed");
        buf.extend_from_slice(&tmp[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[test]
fn a_request_sent_as_ip_fragments_is_captured_and_its_injection_alerted() {
    sentinel_tests::require_root();
    let topo = Topology::new().unwrap();
    // No TCP timestamps from the client: the hand-made segment carries no options.
    // (A net sysctl is per namespace: written from a thread inside the client's; no sysctl
    // program needed.)
    topo.client
        .run(|| std::fs::write("/proc/sys/net/ipv4/tcp_timestamps", "0"))
        .unwrap()
        .unwrap();
    let v4 = SocketAddr::new(SERVER_V4.into(), 8080);
    let v6 = SocketAddr::new(SERVER_V6.into(), 8080);
    let _bank4 = BankServer::start(&topo.server, v4).unwrap();
    let _bank6 = BankServer::start(&topo.server, v6).unwrap();
    let dir = TempDir::new("sentinel-frag").unwrap();
    let tx_log = dir.join("transactions.jsonl");
    // The lab daemon's policy raises alerts and acts on none; its logs stay in its directory.
    let daemon = Daemon::start_with(
        &topo.server,
        &[&topo.server_if],
        &[],
        &format!("[capture]\nhttp_ports = [8080]\ntransactions_log = {tx_log:?}\n"),
    )
    .unwrap();
    let alert_log = daemon.alert_log();

    let target = "/accounts/7?filter=1%27%20OR%20%271%27%3D%271%27%20--";
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: bank.test\r\nUser-Agent: sentinel-test\r\n\r\n")
            .into_bytes();
    // IPv4: the first fragment holds 8 bytes of TCP (its ports) and nothing else; the
    // injection is cut between the later fragments. IPv6: the first fragment holds the
    // destination options and the TCP header, as Linux requires.
    for (client, server, starts) in [
        (IpAddr::from(CLIENT_V4), v4, vec![0, 8, 56, 72]),
        (IpAddr::from(CLIENT_V6), v6, vec![0, 32, 56, 72]),
    ] {
        let req = request.clone();
        let status = topo
            .client
            .run(move || fragmented_exchange(client, server, req, starts))
            .unwrap()
            .unwrap_or_else(|e| panic!("{server}: {e:#}"));
        assert!(status.starts_with("HTTP/1.1 200"), "{server}: {status}");
    }

    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut txs, mut alerts) = (
        sentinel_tests::read_jsonl(&tx_log),
        sentinel_tests::read_jsonl(&alert_log),
    );
    let injections = |a: &[serde_json::Value]| {
        a.iter()
            .filter(|a| a["kind"] == "sql_injection")
            .map(|a| a["src_ip"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    while (txs.len() < 2 || injections(&alerts).len() < 2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        txs = sentinel_tests::read_jsonl(&tx_log);
        alerts = sentinel_tests::read_jsonl(&alert_log);
    }
    let st = daemon.status().unwrap();
    let ctx = format!(
        "transactions {txs:?}\nalerts {alerts:?}\ncapture {}\ndaemon log: {}",
        st["capture"],
        daemon.log_text()
    );
    assert_eq!(txs.len(), 2, "{ctx}");
    for (t, client) in txs
        .iter()
        .zip([CLIENT_V4.to_string(), CLIENT_V6.to_string()])
    {
        assert_eq!(t["src_ip"], client.as_str(), "{ctx}");
        assert_eq!(t["path"], "/accounts/7", "{ctx}");
        assert_eq!(
            t["query"], "filter=1%27%20OR%20%271%27%3D%271%27%20--",
            "{ctx}"
        );
        assert_eq!(t["status"], 200, "{ctx}");
    }
    let mut inj = injections(&alerts);
    inj.sort();
    assert_eq!(inj, [CLIENT_V4.to_string(), CLIENT_V6.to_string()], "{ctx}");
    let cap = &st["capture"];
    assert_eq!(cap["kernel"]["fragments"], 8, "{ctx}");
    assert_eq!(cap["consumer"]["defrag_reassembled"], 2, "{ctx}");
    assert_eq!(cap["kernel"]["unfollowed"], 0, "{ctx}");
}
