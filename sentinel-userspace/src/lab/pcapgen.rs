//! Writes synthetic HTTP traffic as a pcap file: TCP connections with handshake, MSS-sized data
//! segments, ACKs and FIN, over IPv4 or IPv6 in Ethernet frames. Used by the evaluation
//! simulator, replay tests and benchmarks, so that captures are generated, never downloaded.

use std::{collections::HashMap, io::Write, net::SocketAddr, time::Duration};

use pcap_file::pcap::{PcapPacket, PcapWriter};

/// Payload bytes per segment (Ethernet MTU 1500 minus IPv4 and TCP headers with timestamps).
pub const MSS: usize = 1448;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// One HTTP exchange on the wire.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// When the request's first byte leaves the client (ns since the epoch).
    pub ts_ns: u64,
    /// Client address.
    pub client: SocketAddr,
    /// Server address.
    pub server: SocketAddr,
    /// Request bytes (head and body).
    pub request: Vec<u8>,
    /// Response bytes (head and body).
    pub response: Vec<u8>,
    /// Time from the request's first byte to the response's first byte.
    pub latency_ns: u64,
}

struct Conn {
    client_seq: u32,
    server_seq: u32,
    last_ns: u64,
}

/// A pcap writer that keeps TCP state per connection.
pub struct PcapGen<W: Write> {
    w: PcapWriter<W>,
    conns: HashMap<(SocketAddr, SocketAddr), Conn>,
    /// Frames written.
    pub frames: u64,
}

fn mac(last: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, last]
}

/// Builds an Ethernet + IP + TCP frame (IPv4 header checksum set; TCP checksum left 0, which
/// capture tools treat as offloaded).
pub fn tcp_frame(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(74 + payload.len());
    f.extend_from_slice(&mac(2));
    f.extend_from_slice(&mac(1));
    let tcp_len = 20 + payload.len();
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = (20 + tcp_len) as u16;
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[6] = 0x40; // DF
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&s.ip().octets());
            ip[16..20].copy_from_slice(&d.ip().octets());
            crate::capture::defrag::set_ipv4_header_checksum(&mut ip);
            f.extend_from_slice(&ip);
        }
        _ => {
            let (s6, d6) = (to_v6(src), to_v6(dst));
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            ip[6] = 6;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s6);
            ip[24..40].copy_from_slice(&d6);
            f.extend_from_slice(&ip);
        }
    }
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&ack.to_be_bytes());
    f.push(0x50);
    f.push(flags);
    f.extend_from_slice(&65535u16.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

fn to_v6(a: SocketAddr) -> [u8; 16] {
    match a {
        SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped().octets(),
        SocketAddr::V6(v6) => v6.ip().octets(),
    }
}

impl<W: Write> PcapGen<W> {
    /// A generator writing an Ethernet pcap to `out`.
    pub fn new(out: W) -> anyhow::Result<Self> {
        Ok(Self {
            w: PcapWriter::new(out)?,
            conns: HashMap::new(),
            frames: 0,
        })
    }

    fn frame(&mut self, ts_ns: u64, f: &[u8]) -> anyhow::Result<()> {
        self.w.write_packet(&PcapPacket::new(
            Duration::from_nanos(ts_ns),
            f.len() as u32,
            f,
        ))?;
        self.frames += 1;
        Ok(())
    }

    fn open(&mut self, ex: &Exchange) -> anyhow::Result<()> {
        let key = (ex.client, ex.server);
        if self.conns.contains_key(&key) {
            return Ok(());
        }
        // Deterministic initial sequence numbers from the endpoints.
        let isn = |a: SocketAddr| {
            let mut h: u32 = 0x811c_9dc5;
            for b in a.to_string().bytes() {
                h = (h ^ b as u32).wrapping_mul(0x0100_0193);
            }
            h
        };
        let (c, s) = (isn(ex.client), isn(ex.server) ^ 0x5a5a_5a5a);
        let t = ex.ts_ns.saturating_sub(300_000);
        self.frame(t, &tcp_frame(ex.client, ex.server, c, 0, SYN, &[]))?;
        self.frame(
            t + 100_000,
            &tcp_frame(ex.server, ex.client, s, c.wrapping_add(1), SYN | ACK, &[]),
        )?;
        self.frame(
            t + 200_000,
            &tcp_frame(
                ex.client,
                ex.server,
                c.wrapping_add(1),
                s.wrapping_add(1),
                ACK,
                &[],
            ),
        )?;
        self.conns.insert(
            key,
            Conn {
                client_seq: c.wrapping_add(1),
                server_seq: s.wrapping_add(1),
                last_ns: t + 200_000,
            },
        );
        Ok(())
    }

    /// Writes one exchange on its connection (opened on first use; kept open for keep-alive).
    pub fn exchange(&mut self, ex: &Exchange) -> anyhow::Result<()> {
        self.open(ex)?;
        let key = (ex.client, ex.server);
        let (mut cseq, mut sseq) = {
            let c = &self.conns[&key];
            (c.client_seq, c.server_seq)
        };
        let mut t = ex.ts_ns;
        for chunk in ex.request.chunks(MSS) {
            self.frame(
                t,
                &tcp_frame(ex.client, ex.server, cseq, sseq, PSH | ACK, chunk),
            )?;
            cseq = cseq.wrapping_add(chunk.len() as u32);
            t += 2_000;
        }
        let mut t = ex.ts_ns + ex.latency_ns.max(t - ex.ts_ns);
        for (i, chunk) in ex.response.chunks(MSS).enumerate() {
            self.frame(
                t,
                &tcp_frame(ex.server, ex.client, sseq, cseq, PSH | ACK, chunk),
            )?;
            sseq = sseq.wrapping_add(chunk.len() as u32);
            t += 2_000;
            if i % 2 == 1 {
                self.frame(t, &tcp_frame(ex.client, ex.server, cseq, sseq, ACK, &[]))?;
            }
        }
        self.frame(t, &tcp_frame(ex.client, ex.server, cseq, sseq, ACK, &[]))?;
        let c = self.conns.get_mut(&key).expect("opened above");
        c.client_seq = cseq;
        c.server_seq = sseq;
        c.last_ns = t;
        Ok(())
    }

    /// Closes one connection with FIN/ACK from both sides.
    pub fn close(&mut self, client: SocketAddr, server: SocketAddr) -> anyhow::Result<()> {
        if let Some(c) = self.conns.remove(&(client, server)) {
            let t = c.last_ns + 1_000;
            self.frame(
                t,
                &tcp_frame(client, server, c.client_seq, c.server_seq, FIN | ACK, &[]),
            )?;
            self.frame(
                t + 100_000,
                &tcp_frame(
                    server,
                    client,
                    c.server_seq,
                    c.client_seq.wrapping_add(1),
                    FIN | ACK,
                    &[],
                ),
            )?;
            self.frame(
                t + 200_000,
                &tcp_frame(
                    client,
                    server,
                    c.client_seq.wrapping_add(1),
                    c.server_seq.wrapping_add(1),
                    ACK,
                    &[],
                ),
            )?;
        }
        Ok(())
    }

    /// Closes every open connection and flushes.
    pub fn finish(mut self) -> anyhow::Result<W> {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for (c, s) in keys {
            self.close(c, s)?;
        }
        Ok(self.w.into_writer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_readable_capture() {
        let mut g = PcapGen::new(Vec::new()).unwrap();
        let client: SocketAddr = "198.18.0.100:40000".parse().unwrap();
        let server: SocketAddr = "198.18.0.1:8080".parse().unwrap();
        let body = vec![b'x'; 4000];
        let mut resp = b"HTTP/1.1 200 OK\r\nContent-Length: 4000\r\n\r\n".to_vec();
        resp.extend_from_slice(&body);
        g.exchange(&Exchange {
            ts_ns: 1_700_000_000_000_000_000,
            client,
            server,
            request: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            response: resp,
            latency_ns: 1_000_000,
        })
        .unwrap();
        let frames = g.frames;
        let bytes = g.finish().unwrap();
        let mut r = pcap_file::pcap::PcapReader::new(&bytes[..]).unwrap();
        let mut n = 0;
        while let Some(p) = r.next_packet() {
            let p = p.unwrap();
            assert!(p.data.len() >= 54);
            n += 1;
        }
        assert_eq!(n, frames + 3, "handshake, data, ACKs and the closing FINs");
        // IPv4 header checksum verifies.
        let f = tcp_frame(client, server, 1, 2, ACK, b"hi");
        assert_eq!(crate::capture::defrag::internet_checksum(&f[14..34]), 0);
    }
}
