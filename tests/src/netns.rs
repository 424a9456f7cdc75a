//! A throw-away network of Linux network namespaces with two NAT routers, for the "real NAT"
//! end-to-end tests. Nothing is attached to the root namespace and every address lives only
//! inside namespaces this module creates (and deletes on drop, even when a test panics).
//!
//! ```text
//! cliA 10.1.0.10 --lan0-- natA 10.1.0.1 | 203.0.113.1 --wan0--+
//!                                                             |
//! cliB 10.2.0.10 --lan0-- natB 10.2.0.1 | 203.0.113.2 --wan0--+-- br0 (namespace "sw")
//!                                                             |
//!                         srv 203.0.113.10 + 203.0.113.11 ----+   (signaling, relay, probes)
//! ```
//!
//! The "public" segment is 203.0.113.0/24 (TEST-NET-3, RFC 5737); the LANs are 10.1.0.0/24 and
//! 10.2.0.0/24. `srv` has no route to the LANs: it only ever sees the routers' WAN addresses.
//!
//! Each router NATs with iptables (`MASQUERADE`, or `MASQUERADE --random-fully` for a symmetric
//! NAT), forwards LAN -> WAN plus ESTABLISHED,RELATED back (policy DROP), and accepts on its WAN
//! side only ESTABLISHED,RELATED traffic to itself. That last rule is not decoration: an
//! unsolicited packet (an early hole-punch probe) accepted by the router's own stack would leave a
//! confirmed conntrack entry that collides with the client's later outbound flow and forces
//! MASQUERADE onto another port, so even the cone NAT would look symmetric.
//!
//! Requires root, `ip` (iproute2) and `iptables` (nf_tables backend is fine). Use
//! [`netns_unavailable`] to skip where namespaces cannot be created.

use std::fmt::Write as _;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

/// The server's address on the public segment (signaling, relay).
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// A second server address on the same host (RFC 5780-style "alternate address") to observe
/// whether a NAT keeps the same mapping towards different destinations.
pub const SERVER_ALT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
/// Router A's public (WAN) address: what the server sees of client A.
pub const ROUTER_A_WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// Router B's public (WAN) address.
pub const ROUTER_B_WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// Client A's private address (behind router A).
pub const CLIENT_A_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 10);
/// Client B's private address (behind router B).
pub const CLIENT_B_IP: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 10);
/// The public segment, in CIDR notation (what the relay must be told to allow as peers).
pub const PUBLIC_NET: &str = "203.0.113.0/24";

const ROUTER_A_LAN: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const ROUTER_B_LAN: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);

/// Linux `CLONE_NEWNET` (include/uapi/linux/sched.h).
const CLONE_NEWNET: i32 = 0x4000_0000;

/// `SIGKILL`.
const SIGKILL: i32 = 9;

// From the C library std already links against (no extra crate for two calls).
unsafe extern "C" {
    /// setns(2): moves the calling *thread* into the namespace referred to by `fd`.
    fn setns(fd: i32, nstype: i32) -> i32;
    /// kill(2).
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Makes every topology name unique within this process; the PID makes it unique across
/// concurrent test runs.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A machine in the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// The bridge namespace joining the public segment.
    Switch,
    /// The public server host.
    Server,
    /// The NAT router in front of client A.
    RouterA,
    /// The NAT router in front of client B.
    RouterB,
    /// Client A, on LAN A.
    ClientA,
    /// Client B, on LAN B.
    ClientB,
}

impl Host {
    const ALL: [Self; 6] = [
        Self::Switch,
        Self::Server,
        Self::RouterA,
        Self::RouterB,
        Self::ClientA,
        Self::ClientB,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Switch => "sw",
            Self::Server => "srv",
            Self::RouterA => "natA",
            Self::RouterB => "natB",
            Self::ClientA => "cliA",
            Self::ClientB => "cliB",
        }
    }
}

/// How a router maps private (address, port) pairs to public ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// Plain `MASQUERADE`: Linux keeps the source port when it can, one mapping for every
    /// destination (endpoint-independent mapping, RFC 4787). Filtering stays address- and
    /// port-dependent (conntrack), i.e. a "port-restricted cone": hole punching works.
    EndpointIndependent,
    /// `MASQUERADE --random-fully`: a fresh random public port for every new 5-tuple
    /// (endpoint-dependent mapping). Hole punching fails; only a relay gets through.
    Symmetric,
}

/// One NAT router's behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouterSpec {
    /// The mapping behaviour.
    pub nat: NatKind,
    /// Drop every UDP packet the LAN sends out (only TCP leaves): a corporate firewall.
    pub block_udp: bool,
}

impl RouterSpec {
    /// An endpoint-independent ("cone") NAT.
    pub const fn cone() -> Self {
        Self {
            nat: NatKind::EndpointIndependent,
            block_udp: false,
        }
    }

    /// A symmetric NAT.
    pub const fn symmetric() -> Self {
        Self {
            nat: NatKind::Symmetric,
            block_udp: false,
        }
    }

    /// The same router, but letting no UDP out of its LAN.
    pub const fn blocking_udp(self) -> Self {
        Self {
            block_udp: true,
            ..self
        }
    }
}

/// Why namespaces cannot be used on this machine (not root, no `ip`, `ip netns add` refused),
/// or `None` when they can. Tests skip, loudly, on `Some`.
pub fn netns_unavailable() -> Option<String> {
    let name = format!("e2e-{}-probe-{}", std::process::id(), next_id());
    match Command::new("ip").args(["netns", "add", &name]).output() {
        Err(err) => Some(format!("cannot run `ip` (iproute2): {err}")),
        Ok(out) if !out.status.success() => Some(format!(
            "`ip netns add` failed (root required): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            None
        }
    }
}

fn next_id() -> u32 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A live topology. Dropping it kills every process still running inside its namespaces (by
/// PID) and deletes the namespaces, which removes their veths, bridge and NAT state.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    /// Namespaces created so far (a half-built topology is torn down too).
    created: Vec<Host>,
}

impl Topology {
    /// Builds the whole topology with the given routers. Fails with the failing command and
    /// its stderr; whatever was already created is torn down.
    pub fn up(router_a: RouterSpec, router_b: RouterSpec) -> anyhow::Result<Self> {
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_stale_namespaces);
        let mut topo = Self {
            prefix: format!("e2e-{}-{}", std::process::id(), next_id()),
            created: Vec::new(),
        };
        for host in Host::ALL {
            run(Command::new("ip").args(["netns", "add", &topo.ns(host)]))?;
            topo.created.push(host);
            topo.ip(host, &["link", "set", "lo", "up"])?;
            // IPv4 only: small, deterministic candidate lists.
            topo.sysctl(host, "net/ipv6/conf/all/disable_ipv6", "1")?;
            topo.sysctl(host, "net/ipv6/conf/default/disable_ipv6", "1")?;
        }

        // The public segment: a bridge in its own namespace.
        topo.ip(Host::Switch, &["link", "add", "br0", "type", "bridge"])?;
        topo.ip(Host::Switch, &["link", "set", "br0", "up"])?;
        for (host, ifname, port) in [
            (Host::Server, "eth0", "p-srv"),
            (Host::RouterA, "wan0", "p-natA"),
            (Host::RouterB, "wan0", "p-natB"),
        ] {
            topo.veth(host, ifname, Host::Switch, port)?;
            topo.ip(Host::Switch, &["link", "set", port, "master", "br0"])?;
        }
        topo.addr(Host::Server, SERVER_IP, "eth0")?;
        topo.addr(Host::Server, SERVER_ALT_IP, "eth0")?;

        // The LANs.
        topo.veth(Host::ClientA, "eth0", Host::RouterA, "lan0")?;
        topo.veth(Host::ClientB, "eth0", Host::RouterB, "lan0")?;
        topo.router(Host::RouterA, router_a, ROUTER_A_WAN, ROUTER_A_LAN)?;
        topo.router(Host::RouterB, router_b, ROUTER_B_WAN, ROUTER_B_LAN)?;
        topo.client(Host::ClientA, CLIENT_A_IP, ROUTER_A_LAN)?;
        topo.client(Host::ClientB, CLIENT_B_IP, ROUTER_B_LAN)?;
        Ok(topo)
    }

    /// The namespace name of `host` (for `ip netns exec`, `ip -n`).
    pub fn ns(&self, host: Host) -> String {
        format!("{}-{}", self.prefix, host.label())
    }

    /// A command running `program` inside `host`'s namespace (`ip netns exec` execs the
    /// program, so the spawned child's PID is the program's own).
    pub fn command(&self, host: Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host)]).arg(program);
        cmd
    }

    /// Runs `f` on a fresh thread that has entered `host`'s network namespace. Sockets created
    /// by `f` belong to that namespace for good and may be returned and used from any thread.
    pub fn in_netns<T: Send>(
        &self,
        host: Host,
        f: impl FnOnce() -> std::io::Result<T> + Send,
    ) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.ns(host));
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns(2) takes a valid, open namespace fd (owned by `file`, alive
                    // for the call) and only changes this short-lived thread's namespace.
                    let rc = unsafe { setns(file.as_raw_fd(), CLONE_NEWNET) };
                    if rc != 0 {
                        bail!("setns({path}): {}", std::io::Error::last_os_error());
                    }
                    f().with_context(|| format!("in namespace {path}"))
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread in {} panicked", host.label()))?
        })
    }

    /// Router state for a failure message: iptables counters and the UDP/TCP conntrack table
    /// of both routers.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for router in [Host::RouterA, Host::RouterB] {
            for args in [
                &["iptables", "-w", "5", "-L", "-v", "-n"][..],
                &["iptables", "-w", "5", "-t", "nat", "-L", "-v", "-n"][..],
                &["conntrack", "-L"][..],
            ] {
                let text = match self.command(router, args[0]).args(&args[1..]).output() {
                    Ok(o) => format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    ),
                    Err(err) => err.to_string(),
                };
                let _ = writeln!(out, "--- {} `{}`\n{text}", router.label(), args.join(" "));
            }
        }
        out
    }

    fn router(
        &self,
        host: Host,
        spec: RouterSpec,
        wan: Ipv4Addr,
        lan: Ipv4Addr,
    ) -> anyhow::Result<()> {
        self.addr(host, wan, "wan0")?;
        self.addr(host, lan, "lan0")?;
        self.sysctl(host, "net/ipv4/ip_forward", "1")?;
        let random = match spec.nat {
            NatKind::EndpointIndependent => "",
            NatKind::Symmetric => " --random-fully",
        };
        let block_udp = if spec.block_udp {
            "-A FORWARD -i lan0 -o wan0 -p udp -j DROP\n"
        } else {
            ""
        };
        let rules = format!(
            "*nat\n\
             -A POSTROUTING -o wan0 -j MASQUERADE{random}\n\
             COMMIT\n\
             *filter\n\
             :INPUT ACCEPT [0:0]\n\
             :FORWARD DROP [0:0]\n\
             :OUTPUT ACCEPT [0:0]\n\
             {block_udp}\
             -A FORWARD -i lan0 -o wan0 -j ACCEPT\n\
             -A FORWARD -i wan0 -o lan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
             -A INPUT -i wan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
             -A INPUT -i wan0 -j DROP\n\
             COMMIT\n"
        );
        run_with_stdin(
            self.command(host, "iptables-restore").args(["-w", "5"]),
            &rules,
        )
        .context("iptables-restore (is the `iptables` package installed?)")
    }

    fn client(&self, host: Host, ip: Ipv4Addr, gateway: Ipv4Addr) -> anyhow::Result<()> {
        self.addr(host, ip, "eth0")?;
        self.ip(
            host,
            &["route", "add", "default", "via", &gateway.to_string()],
        )
    }

    fn addr(&self, host: Host, ip: Ipv4Addr, dev: &str) -> anyhow::Result<()> {
        self.ip(host, &["addr", "add", &format!("{ip}/24"), "dev", dev])
    }

    /// A veth pair created directly inside the two namespaces (never visible in the root
    /// namespace), both ends up.
    fn veth(&self, a: Host, a_if: &str, b: Host, b_if: &str) -> anyhow::Result<()> {
        let (ns_a, ns_b) = (self.ns(a), self.ns(b));
        run(Command::new("ip").args([
            "link", "add", "name", a_if, "netns", &ns_a, "type", "veth", "peer", "name", b_if,
            "netns", &ns_b,
        ]))?;
        self.ip(a, &["link", "set", a_if, "up"])?;
        self.ip(b, &["link", "set", b_if, "up"])
    }

    fn ip(&self, host: Host, args: &[&str]) -> anyhow::Result<()> {
        run(Command::new("ip").arg("-n").arg(self.ns(host)).args(args))
    }

    /// Writes a per-namespace sysctl (`/proc/sys/net/...` resolves to the writer's namespace).
    fn sysctl(&self, host: Host, key: &str, value: &str) -> anyhow::Result<()> {
        let path = format!("/proc/sys/{key}");
        self.in_netns(host, || std::fs::write(&path, value))
            .with_context(|| format!("sysctl {key}={value} in {}", host.label()))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes keep a deleted namespace (and its veths) alive: kill them by PID first.
        for &host in &self.created {
            kill_all_in(&self.ns(host));
        }
        for &host in self.created.iter().rev() {
            let ns = self.ns(host);
            if let Err(err) = run(Command::new("ip").args(["netns", "del", &ns])) {
                eprintln!("netns teardown: {err:#}");
            }
        }
    }
}

/// Deletes namespaces left by test processes that died without running their destructors
/// (SIGKILL, abort): named `e2e-<pid>-...` with no process `<pid>` any more. Their remaining
/// processes, started by that test run, are killed by PID first.
fn sweep_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("e2e-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("netns: deleting {name}, left by dead test process {pid}");
        kill_all_in(name);
        let _ = run(Command::new("ip").args(["netns", "del", name]));
    }
}

/// Kills (SIGKILL, by PID) every process inside namespace `ns`; waits up to a second.
fn kill_all_in(ns: &str) {
    for attempt in 0..50 {
        let pids = netns_pids(ns);
        if pids.is_empty() {
            return;
        }
        if attempt == 0 {
            eprintln!("netns teardown: killing {pids:?} still running in {ns}");
        }
        for &pid in &pids {
            // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a process inside
            // a namespace this harness created (started by this test run), never 0 or -1.
            unsafe { kill(pid, SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes inside namespace `ns` (positive PIDs only).
fn netns_pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .filter(|&pid| pid > 0)
                .collect()
        })
        .unwrap_or_default()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {cmd:?}"))?;
    check(cmd, &out)
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    check(cmd, &out)
}

fn check(cmd: &Command, out: &Output) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
