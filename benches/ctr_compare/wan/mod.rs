//! W5's emulated WAN: a network namespace holding a second docker-registry on the bench
//! registry's storage, joined to the root namespace by a link with delay and rate in both
//! directions (`tc netem` on a veth pair, or `tc tbf` on TUN devices with a forwarder where the
//! kernel has no `sch_netem`), and its removal, including what a killed run left behind.

mod registry;
mod tun;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::command::{find_in_path, run_checked, run_quiet};
use tun::{open_tun, open_tun_in, TunWire};

/// The emulated link between the node and the registry.
#[derive(Clone, Copy, Debug)]
pub struct LinkSpec {
    /// Round trip: half of it is added in each direction.
    pub rtt_ms: u32,
    /// Rate in each direction, in Mbit/s (10^6 bits per second).
    pub rate_mbit: u64,
    /// MTU of the TUN wire (the netem veth keeps its default and its offloads).
    tun_mtu: u32,
}

impl LinkSpec {
    /// What W5 emulates: a registry in the same region, over a fast link.
    ///
    /// The TUN wire's 64 KB packets stand for what TSO/GRO hand the TCP stack on a real NIC: at
    /// 9000 bytes the userspace forwarder alone burnt 0.8 CPU-s per W5 run (registry side),
    /// which on 2 cores decided the result more than the link did. The cost in realism: slow
    /// start reaches a bandwidth-delay product (2.5 MB) in about 2 round trips instead of 7.
    pub const W5: LinkSpec = LinkSpec {
        rtt_ms: 20,
        rate_mbit: 1000,
        tun_mtu: 65000,
    };

    /// The link's rate in 10^6 bytes per second.
    pub fn mbytes_per_sec(self) -> f64 {
        self.rate_mbit as f64 / 8.0
    }

    pub fn describe(self) -> String {
        format!(
            "{} ms RTT, {} Mbit/s ({:.0} MB/s)",
            self.rtt_ms,
            self.rate_mbit,
            self.mbytes_per_sec()
        )
    }
}

/// What the report says about W5's link once it is gone.
#[derive(Clone, Debug)]
pub struct LinkInfo {
    pub spec: LinkSpec,
    /// Median of a few HTTP round trips over the link before the runs.
    pub measured_rtt: Option<Duration>,
    /// How the link was emulated.
    pub emulation: String,
    /// [`crate::floor::wire_floor`] runs over the link, before the tools' runs.
    pub wire: Vec<Duration>,
}

/// Network namespace and interface names start with these, followed by the bench's pid, so a
/// later run can tell (and remove) what a killed run left behind.
const NETNS_PREFIX: &str = "prepull-bench-";
const VETH_PREFIX: &str = "ppb";

/// How [`Wan`] delays and paces packets.
enum Emulation {
    /// A veth pair with `tc netem delay RTT/2 rate R` on both ends (kernel `sch_netem`).
    Netem,
    /// Kernels without `sch_netem` (e.g. small VM kernels): a TUN device in each namespace, `tc
    /// tbf rate R` on both, and a forwarder in this process that moves every IP packet from one
    /// TUN to the other after RTT/2.
    // Held for its Drop, which stops the forwarder and removes the devices.
    TunWire(#[allow(dead_code)] TunWire),
}

/// An emulated WAN: docker-registry serving the bench registry's storage inside its own network
/// namespace, joined to the root namespace by a link with delay and rate in both directions
/// (see [`Emulation`]). Both clients reach it at the namespace end's address. Drop kills the
/// registry, stops the forwarder and deletes the namespace and the interfaces (with their
/// qdiscs), whatever state setup reached.
pub struct Wan {
    pub netns: String,
    /// The root namespace's interface; its peer lives in `netns`.
    if_root: String,
    if_peer: String,
    /// `10.231.N.1` (root end) and `.2` (the registry's end).
    addr_root: String,
    addr_registry: String,
    port: u16,
    pub link: LinkSpec,
    emulation: Option<Emulation>,
    registry: Option<std::process::Child>,
    pub registry_pid: Option<u32>,
    pub measured_rtt: Option<Duration>,
    dir: tempfile::TempDir,
}

impl Wan {
    /// Removes namespaces and links that an earlier, killed bench run left behind (their pid no
    /// longer runs).
    fn remove_stale() {
        let dead = |name: &str, prefix: &str| {
            name.strip_prefix(prefix)
                .and_then(|rest| {
                    rest.trim_end_matches(|c: char| !c.is_ascii_digit())
                        .parse::<u32>()
                        .ok()
                })
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        };
        if let Ok(list) = run_checked("ip", &["netns", "list"]) {
            for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
                if dead(name, NETNS_PREFIX) {
                    eprintln!("removing network namespace {name} left by an earlier run");
                    run_quiet("ip", &["netns", "delete", name]);
                }
            }
        }
        if let Ok(list) = run_checked("ip", &["-o", "link", "show"]) {
            for line in list.lines() {
                // `7: ppb1234r@if6: <...>`
                let Some(name) = line
                    .split(':')
                    .nth(1)
                    .map(|n| n.trim().split('@').next().unwrap_or(""))
                else {
                    continue;
                };
                if dead(name, VETH_PREFIX) {
                    eprintln!("removing link {name} left by an earlier run");
                    run_quiet("ip", &["link", "delete", name]);
                }
            }
        }
    }

    /// A /24 in 10.231.0.0/16 that no interface or route of this machine uses yet.
    fn free_subnet() -> anyhow::Result<String> {
        let addrs = run_checked("ip", &["-o", "addr", "show"])?;
        let routes = run_checked("ip", &["route", "show", "table", "all"])?;
        for third in 0..=255u32 {
            let prefix = format!("10.231.{third}.");
            if !addrs.contains(&prefix) && !routes.contains(&prefix) {
                return Ok(format!("10.231.{third}"));
            }
        }
        bail!("no free /24 in 10.231.0.0/16 for the emulated WAN")
    }

    /// Whether this kernel has `sch_netem` (tried on a throwaway dummy-free target: a qdisc on
    /// the namespace's loopback).
    fn has_netem(netns: &str) -> bool {
        let ok = run_checked(
            "ip",
            &[
                "netns", "exec", netns, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                "delay", "1ms",
            ],
        )
        .is_ok();
        run_quiet(
            "ip",
            &[
                "netns", "exec", netns, "tc", "qdisc", "del", "dev", "lo", "root",
            ],
        );
        ok
    }

    /// Sets up the namespace and the link, and starts a registry on `storage`.
    pub async fn start(storage: &Path, link: LinkSpec) -> anyhow::Result<Wan> {
        for tool in ["ip", "tc"] {
            if find_in_path(tool).is_none() {
                bail!("W5 needs `{tool}` (package iproute2; scripts/setup.sh installs it)");
            }
        }
        Wan::remove_stale();
        let pid = std::process::id();
        let subnet = Wan::free_subnet()?;
        let dir = tempfile::Builder::new()
            .prefix("bench-wan-")
            .tempdir()
            .context("create the WAN registry's dir")?;
        let mut wan = Wan {
            netns: format!("{NETNS_PREFIX}{pid}"),
            if_root: format!("{VETH_PREFIX}{pid}r"),
            if_peer: format!("{VETH_PREFIX}{pid}n"),
            addr_root: format!("{subnet}.1"),
            addr_registry: format!("{subnet}.2"),
            port: 5000,
            link,
            emulation: None,
            registry: None,
            registry_pid: None,
            measured_rtt: None,
            dir,
        };
        // From here on, Drop removes whatever was set up.
        run_checked("ip", &["netns", "add", &wan.netns])?;
        wan.in_ns(&["ip", "link", "set", "lo", "up"])?;
        wan.emulation = Some(if Wan::has_netem(&wan.netns) {
            wan.setup_netem()?;
            Emulation::Netem
        } else {
            Emulation::TunWire(wan.setup_tun_wire()?)
        });
        wan.start_registry(storage).await?;
        wan.measured_rtt = Some(wan.measure_rtt().await?);
        Ok(wan)
    }

    fn in_ns(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["netns", "exec", self.netns.as_str()];
        all.extend_from_slice(args);
        run_checked("ip", &all)
    }

    /// Addresses, MTU and up on both ends, then `qdisc` (e.g. `netem …`) on both.
    fn configure_ends(&self, mtu: Option<u32>, qdisc: &[&str]) -> anyhow::Result<()> {
        let (root, peer) = (self.if_root.as_str(), self.if_peer.as_str());
        let root_cidr = format!("{}/24", self.addr_root);
        let peer_cidr = format!("{}/24", self.addr_registry);
        run_checked("ip", &["addr", "add", &root_cidr, "dev", root])?;
        self.in_ns(&["ip", "addr", "add", &peer_cidr, "dev", peer])?;
        if let Some(mtu) = mtu {
            let mtu = mtu.to_string();
            run_checked("ip", &["link", "set", root, "mtu", &mtu])?;
            self.in_ns(&["ip", "link", "set", peer, "mtu", &mtu])?;
        }
        run_checked("ip", &["link", "set", root, "up"])?;
        self.in_ns(&["ip", "link", "set", peer, "up"])?;
        let mut on_root = vec!["qdisc", "add", "dev", root, "root"];
        on_root.extend_from_slice(qdisc);
        run_checked("tc", &on_root)?;
        let mut on_peer = vec!["tc", "qdisc", "add", "dev", peer, "root"];
        on_peer.extend_from_slice(qdisc);
        self.in_ns(&on_peer)?;
        Ok(())
    }

    fn setup_netem(&self) -> anyhow::Result<()> {
        run_checked(
            "ip",
            &[
                "link",
                "add",
                &self.if_root,
                "type",
                "veth",
                "peer",
                "name",
                &self.if_peer,
            ],
        )?;
        run_checked("ip", &["link", "set", &self.if_peer, "netns", &self.netns])?;
        let half_delay = format!("{}ms", f64::from(self.link.rtt_ms) / 2.0);
        let rate = format!("{}mbit", self.link.rate_mbit);
        // netem holds every packet in flight for half the RTT: its queue must take a
        // bandwidth-delay product (1 Gbit/s x 10 ms = 1.25 MB) with room to spare.
        self.configure_ends(
            None,
            &[
                "netem",
                "delay",
                &half_delay,
                "rate",
                &rate,
                "limit",
                "100000",
            ],
        )
    }

    fn setup_tun_wire(&self) -> anyhow::Result<TunWire> {
        let root = open_tun(&self.if_root)?;
        let peer = open_tun_in(&self.netns, &self.if_peer)?;
        let rate = format!("{}mbit", self.link.rate_mbit);
        // tbf paces what leaves each end at the link's rate; its queue holds up to 10 ms at
        // that rate (half a bandwidth-delay product), beyond which TCP sees drops.
        self.configure_ends(
            Some(self.link.tun_mtu),
            &["tbf", "rate", &rate, "burst", "256kb", "latency", "10ms"],
        )?;
        Ok(TunWire::start(
            root,
            peer,
            Duration::from_micros(u64::from(self.link.rtt_ms) * 500),
        ))
    }

    fn emulation_note(&self) -> String {
        let half = f64::from(self.link.rtt_ms) / 2.0;
        match &self.emulation {
            Some(Emulation::Netem) => format!(
                "veth pair, `tc qdisc … netem delay {half}ms rate {}mbit limit 100000` on both ends",
                self.link.rate_mbit
            ),
            Some(Emulation::TunWire(_)) => format!(
                "this kernel has no `sch_netem`, so: a TUN device in each namespace (MTU {}), \
                 `tc qdisc … tbf rate {}mbit burst 256kb latency 10ms` on both, and a forwarder \
                 in the bench process that hands every IP packet to the other end {half} ms after \
                 it left",
                self.link.tun_mtu, self.link.rate_mbit
            ),
            None => "not set up".into(),
        }
    }

    pub fn info(&self) -> LinkInfo {
        LinkInfo {
            spec: self.link,
            measured_rtt: self.measured_rtt,
            emulation: self.emulation_note(),
            wire: Vec::new(),
        }
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        if let Some(mut child) = self.registry.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Stopping the forwarder closes the TUN devices, which removes them and their qdiscs.
        drop(self.emulation.take());
        // Deleting the namespace deletes the veth peer, which takes the root end (and both
        // qdiscs) with it; the explicit delete covers a peer never moved into the namespace.
        run_quiet("ip", &["netns", "delete", &self.netns]);
        run_quiet("ip", &["link", "delete", &self.if_root]);
    }
}
