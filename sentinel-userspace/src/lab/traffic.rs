//! Bounded UDP traffic: a sender that stops after a count or a deadline, and a counting sink.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::NetNs;

/// What a sender did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    /// Datagrams handed to the kernel.
    pub packets: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// Sends `count` datagrams from `src` to `dst` inside `ns`, at most `pps` per second (0: as fast
/// as possible), and never for longer than `max_time`.
pub fn send_udp(
    ns: &NetNs,
    src: IpAddr,
    dst: SocketAddr,
    count: u64,
    pps: u64,
    max_time: Duration,
) -> anyhow::Result<Sent> {
    ns.run(move || send_paced(src, dst, count, pps, max_time))?
}

/// Like [`send_udp`], from the calling thread's current network namespace.
pub fn send_paced(
    src: IpAddr,
    dst: SocketAddr,
    count: u64,
    pps: u64,
    max_time: Duration,
) -> anyhow::Result<Sent> {
    let sock = UdpSocket::bind(SocketAddr::new(src, 0))?;
    let payload = [0x5au8; 64];
    let start = Instant::now();
    let mut sent = 0;
    while sent < count && start.elapsed() < max_time {
        if pps > 0 {
            let due = start + Duration::from_secs_f64(sent as f64 / pps as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        // ENOBUFS or a refused neighbour are not fatal for a flood: count what went out.
        if sock.send_to(&payload, dst).is_ok() {
            sent += 1;
        }
    }
    Ok(Sent {
        packets: sent,
        elapsed: start.elapsed(),
    })
}

/// A UDP socket in a namespace counting what it receives per source address, until dropped.
pub struct Sink {
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
    by_source: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, u64>>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<anyhow::Result<()>>>>,
}

impl Sink {
    /// Binds `addr` inside `ns` and starts counting.
    pub fn start(ns: &NetNs, addr: SocketAddr) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let by_source = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, total, by_source) = (stop.clone(), total.clone(), by_source.clone());
            ns.spawn(move || -> anyhow::Result<()> {
                let sock = match UdpSocket::bind(addr) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Err(e.into());
                    }
                };
                sock.set_read_timeout(Some(Duration::from_millis(50)))?;
                let _ = ready_tx.send(Ok(()));
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = sock.recv_from(&mut buf) {
                        total.fetch_add(1, Ordering::Relaxed);
                        *by_source
                            .lock()
                            .expect("lock")
                            .entry(from.ip())
                            .or_default() += 1;
                    }
                }
                Ok(())
            })
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("binding sink {addr}: {e}"),
            Err(_) => {
                // Should it bind late, it must not count forever in the namespace.
                stop.store(true, Ordering::Relaxed);
                anyhow::bail!("sink {addr} did not start")
            }
        }
        Ok(Self {
            stop,
            total,
            by_source,
            thread: Some(thread),
        })
    }

    /// Datagrams received so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Datagrams received so far from `src`.
    pub fn from(&self, src: IpAddr) -> u64 {
        self.by_source
            .lock()
            .expect("lock")
            .get(&src)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until no datagram has arrived for `quiet` (at most `max`), so in-flight packets are
    /// counted before a test reads the figures.
    pub fn settle(&self, quiet: Duration, max: Duration) {
        let start = Instant::now();
        let mut last = self.total();
        let mut last_change = Instant::now();
        while start.elapsed() < max {
            std::thread::sleep(Duration::from_millis(10));
            let now = self.total();
            if now != last {
                last = now;
                last_change = Instant::now();
            } else if last_change.elapsed() >= quiet {
                return;
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
