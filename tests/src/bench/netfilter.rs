//! The netfilter peers: an nftables set matched in a netdev ingress chain, and iptables raw
//! PREROUTING matching an ipset (`iptables` as Debian installs it, i.e. the nf_tables backend
//! unless the alternative was switched). Everything runs inside the server namespace.

use std::{
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use sentinel::lab::NetNs;

use super::run_in;

/// nftables table (netdev family) holding the set and, during the nft arm, the ingress chain.
pub const NFT_TABLE: &str = "snt_bench";
/// Name of the set in both nftables and ipset.
pub const SET: &str = "snt_blocked";

fn is_v6(list: &[IpAddr]) -> bool {
    list.first().is_some_and(IpAddr::is_ipv6)
}

/// Writes an `nft -f` file that creates the table with a set of `list` (sized for it).
pub fn write_nft_file(path: &Path, list: &[IpAddr]) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let ty = if is_v6(list) {
        "ipv6_addr"
    } else {
        "ipv4_addr"
    };
    writeln!(f, "table netdev {NFT_TABLE} {{")?;
    writeln!(f, "  set {SET} {{")?;
    writeln!(f, "    type {ty}; size {};", list.len().max(1024))?;
    writeln!(f, "    elements = {{")?;
    for (i, a) in list.iter().enumerate() {
        let sep = if i + 1 == list.len() { "" } else { "," };
        writeln!(f, "      {a}{sep}")?;
    }
    writeln!(f, "    }}\n  }}\n}}")?;
    f.flush()?;
    Ok(())
}

/// Writes an `ipset restore` file that creates the set with `list` (hash sized for it).
pub fn write_ipset_file(path: &Path, list: &[IpAddr]) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let family = if is_v6(list) { "inet6" } else { "inet" };
    let hashsize = list.len().next_power_of_two().max(1024);
    let maxelem = list.len().max(65_536);
    writeln!(
        f,
        "create {SET} hash:ip family {family} hashsize {hashsize} maxelem {maxelem}"
    )?;
    for a in list {
        writeln!(f, "add {SET} {a}")?;
    }
    f.flush()?;
    Ok(())
}

/// The set loaded in both frameworks, with the iptables rule in place, for one list.
pub struct Peers<'a> {
    ns: &'a NetNs,
    iface: String,
    v6: bool,
    files: Vec<PathBuf>,
}

impl<'a> Peers<'a> {
    /// Loads `list` into an nftables set and an ipset inside `ns`, and adds the iptables raw
    /// rule matching the ipset. The nft chain is added per arm ([`Peers::nft_on`]).
    pub fn setup(ns: &'a NetNs, iface: &str, list: &[IpAddr], dir: &Path) -> anyhow::Result<Self> {
        let mut p = Self {
            ns,
            iface: iface.to_owned(),
            v6: is_v6(list),
            files: Vec::new(),
        };
        let nft = dir.join("peers.nft");
        let ips = dir.join("peers.ipset");
        write_nft_file(&nft, list)?;
        write_ipset_file(&ips, list)?;
        p.files = vec![nft.clone(), ips.clone()];
        run_in(ns, "nft", &["-f", &nft.to_string_lossy()]).context("loading the nft set")?;
        run_in(ns, "ipset", &["restore", "-f", &ips.to_string_lossy()])
            .context("loading the ipset")?;
        run_in(
            ns,
            p.iptables(),
            &[
                "-t",
                "raw",
                "-A",
                "PREROUTING",
                "-m",
                "set",
                "--match-set",
                SET,
                "src",
                "-j",
                "DROP",
            ],
        )?;
        Ok(p)
    }

    fn iptables(&self) -> &'static str {
        if self.v6 { "ip6tables" } else { "iptables" }
    }

    /// Adds the netdev ingress chain dropping sources in the set (the nft arm).
    pub fn nft_on(&self) -> anyhow::Result<()> {
        let chain = format!(
            "{{ type filter hook ingress device \"{}\" priority 0; }}",
            self.iface
        );
        run_in(
            self.ns,
            "nft",
            &["add", "chain", "netdev", NFT_TABLE, "ingress", &chain],
        )?;
        let family = if self.v6 { "ip6" } else { "ip" };
        run_in(
            self.ns,
            "nft",
            &[
                "add",
                "rule",
                "netdev",
                NFT_TABLE,
                "ingress",
                family,
                "saddr",
                &format!("@{SET}"),
                "counter",
                "drop",
            ],
        )?;
        Ok(())
    }

    /// Packets the nft rule dropped since [`Peers::nft_on`].
    pub fn nft_count(&self) -> anyhow::Result<u64> {
        let out = run_in(
            self.ns,
            "nft",
            &["-j", "list", "chain", "netdev", NFT_TABLE, "ingress"],
        )?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        find_counter(&v).context("no counter in the nft chain")
    }

    /// Removes the ingress chain (the set stays).
    pub fn nft_off(&self) -> anyhow::Result<()> {
        run_in(
            self.ns,
            "nft",
            &["flush", "chain", "netdev", NFT_TABLE, "ingress"],
        )?;
        run_in(
            self.ns,
            "nft",
            &["delete", "chain", "netdev", NFT_TABLE, "ingress"],
        )?;
        Ok(())
    }

    /// Packets the iptables rule has dropped so far.
    pub fn iptables_count(&self) -> anyhow::Result<u64> {
        let out = run_in(
            self.ns,
            self.iptables(),
            &["-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"],
        )?;
        // Header lines, then "pkts bytes target ..." rows; ours is the only rule.
        out.lines()
            .skip(2)
            .find(|l| l.contains(SET))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .context("no iptables rule counter")
    }
}

impl Drop for Peers<'_> {
    fn drop(&mut self) {
        let _ = run_in(self.ns, "nft", &["delete", "table", "netdev", NFT_TABLE]);
        let _ = run_in(self.ns, self.iptables(), &["-t", "raw", "-F", "PREROUTING"]);
        let _ = run_in(self.ns, "ipset", &["destroy", SET]);
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn find_counter(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(c) = m.get("counter")
                && let Some(p) = c.get("packets").and_then(|p| p.as_u64())
            {
                return Some(p);
            }
            m.values().find_map(find_counter)
        }
        serde_json::Value::Array(a) => a.iter().find_map(find_counter),
        _ => None,
    }
}
