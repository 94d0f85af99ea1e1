//! Network namespaces and the two-namespace topology the tests use.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::Command,
};

use anyhow::{Context as _, bail};

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NetNs {
    name: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl NetNs {
    /// Creates a namespace with loopback up and no routes to the outside.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the namespace handle.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs inside the namespace's network stack (and only that: the mount
    /// namespace stays the host's, so bpffs pins are shared).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `f` on a thread that has entered the namespace (sockets it opens live there).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = self.path();
        let handle = std::thread::spawn(move || -> anyhow::Result<T> {
            enter(&path)?;
            Ok(f())
        });
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
    }

    /// Like [`NetNs::run`], but returns the thread handle so the caller can do other work meanwhile.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<anyhow::Result<T>> {
        let path = self.path();
        std::thread::spawn(move || -> anyhow::Result<T> {
            enter(&path)?;
            Ok(f())
        })
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) -> anyhow::Result<()> {
    let f = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a valid namespace fd; setns only affects the calling thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end and with it the pair.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Two namespaces, `client` and `server`, joined by a veth pair.
///
/// Addressing (all benchmarking / documentation space):
/// - server: 198.18.0.1/24 and 2001:db8::1/64 on `server_if`;
/// - client: 198.18.0.100/24 and 2001:db8::100/64 on `client_if`, plus any extra addresses added
///   with [`Topology::add_client_addr`] (e.g. one per simulated source).
pub struct Topology {
    /// The client side (traffic sources).
    pub client: NetNs,
    /// The server side (where the sentinel runs).
    pub server: NetNs,
    /// Interface name in the client namespace.
    pub client_if: String,
    /// Interface name in the server namespace.
    pub server_if: String,
}

/// Server IPv4 address.
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Server IPv6 address.
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// Client's primary IPv4 address.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// Client's primary IPv6 address.
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);

impl Topology {
    /// Creates the namespaces and the veth pair, addresses them and brings the links up.
    pub fn new() -> anyhow::Result<Self> {
        let id = super::unique_id();
        let client = NetNs::new(&format!("snt-c-{id}"))?;
        let server = NetNs::new(&format!("snt-s-{id}"))?;
        let client_if = format!("sc{id}");
        let server_if = format!("ss{id}");
        ip(&[
            "link",
            "add",
            &client_if,
            "netns",
            client.name(),
            "type",
            "veth",
            "peer",
            "name",
            &server_if,
            "netns",
            server.name(),
        ])?;
        let topo = Self {
            client,
            server,
            client_if,
            server_if,
        };
        topo.server
            .ip(&["addr", "add", "198.18.0.1/24", "dev", &topo.server_if])?;
        topo.server.ip(&[
            "addr",
            "add",
            "2001:db8::1/64",
            "dev",
            &topo.server_if,
            "nodad",
        ])?;
        topo.client
            .ip(&["addr", "add", "198.18.0.100/24", "dev", &topo.client_if])?;
        topo.client.ip(&[
            "addr",
            "add",
            "2001:db8::100/64",
            "dev",
            &topo.client_if,
            "nodad",
        ])?;
        topo.server.ip(&["link", "set", &topo.server_if, "up"])?;
        topo.client.ip(&["link", "set", &topo.client_if, "up"])?;
        Ok(topo)
    }

    /// Adds a source address on the client side (198.18.0.0/24 or 2001:db8::/64).
    pub fn add_client_addr(&self, addr: IpAddr) -> anyhow::Result<()> {
        let cidr = match addr {
            IpAddr::V4(a) => format!("{a}/24"),
            IpAddr::V6(a) => format!("{a}/64"),
        };
        let mut args = vec!["addr", "add", cidr.as_str(), "dev", self.client_if.as_str()];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        self.client.ip(&args)
    }
}
