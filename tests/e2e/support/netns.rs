//! Test networks in network namespaces, for calls across NAT and loss.
//!
//! ```text
//!   root namespace: courier serve and its relay on 198.18.200.1
//!        │ veth
//!   <prefix>p: a bridge, the "public" segment 198.18.200.0/24
//!        │ veth (wan, 198.18.200.1k)            one per home k = 1, 2, …
//!   <prefix>rk: a NAT router (nftables masquerade), loss rules per direction
//!        │ veth (lan, 10.0.k.1)
//!   <prefix>hk: a home network, the party at 10.0.k.2
//! ```
//!
//! Names start with `crt` and the test process's id; everything is removed
//! on drop (also when the test fails), and a new network first sweeps what
//! a killed run left behind. Needs root (`ip`, `nft`); tests using it run
//! one at a time (the `netns` test group).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The server's address on the public segment.
pub const PUBLIC_IP: &str = "198.18.200.1";
/// The public segment, which the relay is allowed to reach.
pub const PUBLIC_RANGE: &str = "198.18.200.0/24";
const PREFIX: &str = "crt";

/// How a home's router maps its parties' flows onto its public address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Masquerade keeping the source port: one mapping per local address
    /// and port whatever the destination (endpoint-independent mapping).
    PortPreserving,
    /// `masquerade fully-random`: a new random port for every destination
    /// (a symmetric NAT), so a reflexive address is of no use to the peer.
    Symmetric,
}

pub struct Net {
    prefix: String,
    homes: Vec<Nat>,
    root_link: String,
}

static NETS: AtomicU32 = AtomicU32::new(0);

/// Runs `ip`/`nft` (or any command) and fails the test, loudly, if it fails.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{program} {args:?}: {error} (the network tests need iproute2 and nftables)"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed (the network tests run as root): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn run_in(ns: &str, program: &str, args: &[&str]) {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full);
}

fn nft(ns: &str, script: &str) {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("piped").write_all(script.as_bytes())?;
            child.wait_with_output()
        })
        .expect("nft runs");
    assert!(output.status.success(), "nft in {ns}: {}\n{script}", String::from_utf8_lossy(&output.stderr));
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the namespaces and links of test runs whose process is gone.
fn sweep_stale() {
    let listed = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    let links = Command::new("ip").args(["-o", "link"]).output().map(|o| o.stdout).unwrap_or_default();
    let owner = |name: &str| -> Option<u32> {
        let digits: String = name.strip_prefix(PREFIX)?.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok().map(|tagged| tagged / 100)
    };
    for line in String::from_utf8_lossy(&listed).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if owner(name).is_some_and(|pid| !process_alive(pid)) {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
    for line in String::from_utf8_lossy(&links).lines() {
        let Some(name) = line.split(": ").nth(1).map(|name| name.split('@').next().unwrap_or(name)) else { continue };
        if owner(name).is_some_and(|pid| !process_alive(pid)) {
            let _ = Command::new("ip").args(["link", "del", name]).output();
        }
    }
}

impl Net {
    /// Builds the public segment and one home per entry of `homes`.
    pub fn build(homes: &[Nat]) -> Net {
        sweep_stale();
        // The range must be nobody's here: a machine may reach services
        // (a package mirror, say) at addresses of other test ranges.
        let routes = Command::new("ip").args(["-o", "route", "show", "to", "match", PUBLIC_IP]).output().unwrap();
        let taken = String::from_utf8_lossy(&routes.stdout).lines().any(|route| !route.starts_with("default"));
        assert!(!taken, "{PUBLIC_RANGE} is routed on this machine already: the network tests need it free");
        let index = NETS.fetch_add(1, Ordering::Relaxed) % 100;
        // The process id and a per-process index, recoverable by the sweep.
        let prefix = format!("{PREFIX}{}", std::process::id() * 100 + index);
        let root_link = format!("{prefix}x");
        let net = Net { prefix: prefix.clone(), homes: homes.to_vec(), root_link: root_link.clone() };
        let public = net.public_ns();
        run("ip", &["netns", "add", &public]);
        run("ip", &["-n", &public, "link", "set", "lo", "up"]);
        run("ip", &["-n", &public, "link", "add", "name", "segment", "type", "bridge"]);
        run("ip", &["-n", &public, "link", "set", "segment", "up"]);
        // The root namespace's leg: the server's address on the segment.
        let far = format!("{prefix}y");
        run("ip", &["link", "add", &root_link, "type", "veth", "peer", "name", &far]);
        run("ip", &["link", "set", &far, "netns", &public]);
        run("ip", &["-n", &public, "link", "set", &far, "master", "segment", "up"]);
        run("ip", &["addr", "add", &format!("{PUBLIC_IP}/24"), "dev", &root_link]);
        run("ip", &["link", "set", &root_link, "up"]);
        for (k, nat) in homes.iter().enumerate() {
            net.build_home(k + 1, *nat);
        }
        net
    }

    fn public_ns(&self) -> String {
        format!("{}p", self.prefix)
    }

    /// The namespace of home `k` (from 1), where its party runs.
    pub fn home_ns(&self, k: usize) -> String {
        format!("{}h{k}", self.prefix)
    }

    fn router_ns(&self, k: usize) -> String {
        format!("{}r{k}", self.prefix)
    }

    /// The party's address in home `k`.
    pub fn home_ip(k: usize) -> String {
        format!("10.0.{k}.2")
    }

    /// Home `k`'s router's public address.
    pub fn router_public_ip(k: usize) -> String {
        format!("198.18.200.{}", 10 + k)
    }

    fn build_home(&self, k: usize, nat: Nat) {
        let (public, router, home) = (self.public_ns(), self.router_ns(k), self.home_ns(k));
        for ns in [&router, &home] {
            run("ip", &["netns", "add", ns]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        // WAN: router ↔ the bridge.
        let (wan, wan_far) = (format!("{}w{k}", self.prefix), format!("{}v{k}", self.prefix));
        run("ip", &["link", "add", &wan, "type", "veth", "peer", "name", &wan_far]);
        run("ip", &["link", "set", &wan, "netns", &router]);
        run("ip", &["link", "set", &wan_far, "netns", &public]);
        run("ip", &["-n", &public, "link", "set", &wan_far, "master", "segment", "up"]);
        run("ip", &["-n", &router, "link", "set", &wan, "name", "wan"]);
        run("ip", &["-n", &router, "addr", "add", &format!("{}/24", Self::router_public_ip(k)), "dev", "wan"]);
        run("ip", &["-n", &router, "link", "set", "wan", "up"]);
        // LAN: router ↔ the home.
        let (lan, lan_far) = (format!("{}l{k}", self.prefix), format!("{}m{k}", self.prefix));
        run("ip", &["link", "add", &lan, "type", "veth", "peer", "name", &lan_far]);
        run("ip", &["link", "set", &lan, "netns", &router]);
        run("ip", &["link", "set", &lan_far, "netns", &home]);
        run("ip", &["-n", &router, "link", "set", &lan, "name", "lan"]);
        run("ip", &["-n", &router, "addr", "add", &format!("10.0.{k}.1/24"), "dev", "lan"]);
        run("ip", &["-n", &router, "link", "set", "lan", "up"]);
        run("ip", &["-n", &home, "link", "set", &lan_far, "name", "wire"]);
        run("ip", &["-n", &home, "addr", "add", &format!("{}/24", Self::home_ip(k)), "dev", "wire"]);
        run("ip", &["-n", &home, "link", "set", "wire", "up"]);
        run("ip", &["-n", &home, "route", "add", "default", "via", &format!("10.0.{k}.1")]);
        run_in(&router, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);
        let masquerade = match nat {
            Nat::PortPreserving => "masquerade",
            Nat::Symmetric => "masquerade fully-random",
        };
        nft(
            &router,
            &format!(
                "table ip nat {{\n  chain post {{ type nat hook postrouting priority srcnat; oifname \"wan\" {masquerade}; }}\n}}\n\
                 table ip firewall {{\n  chain input {{ type filter hook input priority filter; iifname \"wan\" ct state new drop; }}\n}}\n\
                 table ip loss {{\n  chain drops {{ type filter hook prerouting priority raw; }}\n}}\n"
            ),
        );
    }

    /// Drops `inbound_pct` % of the packets coming into home `k` and
    /// `outbound_pct` % of those leaving it, at random, from now on. They are
    /// dropped as they reach the router, before its connection tracking sees
    /// them, as a lossy link would lose them (dropped later, a TCP segment
    /// would still move the router's idea of the connection's window, and
    /// the retransmissions that follow look out of window to it).
    pub fn set_loss(&self, k: usize, inbound_pct: u32, outbound_pct: u32) {
        let mut script = String::from("flush chain ip loss drops\n");
        if inbound_pct > 0 {
            script.push_str(&format!(
                "add rule ip loss drops iifname \"wan\" numgen random mod 100 < {inbound_pct} drop\n"
            ));
        }
        if outbound_pct > 0 {
            script.push_str(&format!(
                "add rule ip loss drops iifname \"lan\" numgen random mod 100 < {outbound_pct} drop\n"
            ));
        }
        nft(&self.router_ns(k), &script);
    }

    /// Drops every datagram leaving home `k` that carries a DTLS handshake
    /// record of this type first (11: the client's Certificate, which opens
    /// its last flight), until [`Net::set_loss`] clears the rules.
    pub fn drop_dtls(&self, k: usize, handshake_type: u8) {
        // The UDP payload starts 64 bits into the transport header: the
        // record's content type (22: handshake) is its first byte, the
        // handshake message's type its fourteenth.
        nft(
            &self.router_ns(k),
            &format!(
                "add rule ip loss drops iifname \"lan\" udp length > 21 @th,64,8 22 @th,168,8 {handshake_type} \
                 counter drop\n"
            ),
        );
    }

    /// How many packets home `k`'s loss rules have counted.
    pub fn dropped(&self, k: usize) -> u64 {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.router_ns(k), "nft", "list", "chain", "ip", "loss", "drops"])
            .output()
            .expect("nft runs");
        let listed = String::from_utf8_lossy(&output.stdout);
        listed
            .split("counter packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Home `k`'s router moves to another public address: every mapping it
    /// held is gone (as when a phone changes networks or a NAT reboots).
    pub fn rebind(&self, k: usize, new_ip: &str) {
        let router = self.router_ns(k);
        run("ip", &["-n", &router, "addr", "flush", "dev", "wan"]);
        run("ip", &["-n", &router, "addr", "add", &format!("{new_ip}/24"), "dev", "wan"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let mut namespaces = vec![self.public_ns()];
        for k in 1..=self.homes.len() {
            namespaces.extend([self.router_ns(k), self.home_ns(k)]);
        }
        for ns in namespaces {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.root_link]).output();
    }
}
