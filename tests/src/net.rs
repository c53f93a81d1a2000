//! A private network per test: a namespace with a bridge (`br0`,
//! 10.99.0.1/24 and fd99::1/64) and tap devices for the VMs. Nothing in it
//! can reach or be reached from any other network. Named
//! `levee-<tag>-<pid>-<n>` after the test and its process; the test's guard
//! deletes it if the test dies, and the next run removes one whose owner is
//! gone ([`crate::guard::sweep_stale_netns`]).

use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use anyhow::Context;

use crate::guard;
use crate::{require_tool, run};

pub const BRIDGE: &str = "br0";
pub const SERVER_IP: &str = "10.99.0.1";

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct TestNet {
    pub ns: String,
    taps: AtomicU32,
    children: Mutex<Vec<Child>>,
}

impl TestNet {
    /// Creates the namespace; `tag` makes its name readable in `ip netns`.
    pub fn new(tag: &str) -> anyhow::Result<TestNet> {
        require_tool("ip", "iproute2")?;
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(guard::sweep_stale_netns);
        let ns = format!(
            "{}{tag}-{}-{}",
            guard::NETNS_PREFIX,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // Registered before it exists, so no window leaves it behind.
        guard::own_netns(&ns)?;
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        let net = TestNet {
            ns,
            taps: AtomicU32::new(0),
            children: Mutex::new(Vec::new()),
        };
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", BRIDGE, "type", "bridge"],
            // Forward at once: a bridge that waits for STP would eat boot time.
            vec![
                "link",
                "set",
                BRIDGE,
                "type",
                "bridge",
                "forward_delay",
                "0",
                "stp_state",
                "0",
            ],
            vec!["addr", "add", "10.99.0.1/24", "dev", BRIDGE],
            vec!["-6", "addr", "add", "fd99::1/64", "dev", BRIDGE, "nodad"],
            vec!["link", "set", BRIDGE, "up"],
        ] {
            run(net.cmd("ip").args(&args)).context("setting up the test network")?;
        }
        Ok(net)
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }

    /// Adds a tap device on the bridge and returns its name.
    pub fn add_tap(&self) -> anyhow::Result<String> {
        let name = format!("tap{}", self.taps.fetch_add(1, Ordering::Relaxed));
        run(self
            .cmd("ip")
            .args(["tuntap", "add", "dev", &name, "mode", "tap"]))?;
        run(self
            .cmd("ip")
            .args(["link", "set", &name, "master", BRIDGE, "up"]))?;
        Ok(name)
    }

    /// Another host on the bridge, in its own namespace (e.g. the office DHCP
    /// server beside Levee in proxy mode), at `cidr` such as `10.99.0.2/24`.
    pub fn add_host(&self, cidr: &str) -> anyhow::Result<Host> {
        let n = self.taps.fetch_add(1, Ordering::Relaxed);
        let ns = format!("{}-h{n}", self.ns);
        guard::own_netns(&ns)?;
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        let host = Host {
            ns: ns.clone(),
            children: Mutex::new(Vec::new()),
        };
        let (outer, inner) = (format!("vh{n}"), format!("vp{n}"));
        run(self.cmd("ip").args([
            "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
        ]))?;
        run(self
            .cmd("ip")
            .args(["link", "set", &outer, "master", BRIDGE, "up"]))?;
        run(host.cmd("ip").args(["link", "set", "lo", "up"]))?;
        run(host.cmd("ip").args(["addr", "add", cidr, "dev", &inner]))?;
        run(host.cmd("ip").args(["link", "set", &inner, "up"]))?;
        Ok(host)
    }

    /// Starts `cmd` (made by [`TestNet::cmd`]) through the test's guard and
    /// keeps it, so it is killed with the network; returns its pid.
    pub fn spawn(&self, cmd: &mut Command) -> anyhow::Result<u32> {
        let child = guard::spawn(cmd)?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
        Ok(pid)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        for child in children.iter_mut() {
            guard::kill(child);
        }
        // Anything else still in the namespace (e.g. a daemon that forked
        // out of its group) dies with it.
        guard::delete_netns(&self.ns);
        guard::disown_netns(&self.ns);
    }
}

/// A second host on a test network.
pub struct Host {
    pub ns: String,
    children: Mutex<Vec<Child>>,
}

impl Host {
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }

    /// Starts `cmd` (made by [`Host::cmd`]) through the test's guard and
    /// keeps it, so it is killed with the host; returns its pid.
    pub fn spawn(&self, cmd: &mut Command) -> anyhow::Result<u32> {
        let child = guard::spawn(cmd)?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
        Ok(pid)
    }

    /// Runs `f` on a new thread inside this host's network namespace: the
    /// sockets it opens (and those of threads it starts, such as a blocking
    /// HTTP client's) live there. The test process itself stays outside.
    pub fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> std::thread::JoinHandle<anyhow::Result<T>> {
        let ns = self.ns.clone();
        std::thread::spawn(move || {
            enter_netns(&ns)?;
            f()
        })
    }

    /// The host's network interface (the inner end of its veth).
    pub fn interface(&self) -> String {
        format!("vp{}", self.ns.rsplit("-h").next().unwrap_or("0"))
    }
}

/// Moves the calling thread (only it: the network namespace is per
/// thread) into network namespace `ns`.
pub fn enter_netns(ns: &str) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
    // SAFETY: setns on a descriptor we hold open; it changes only this
    // thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot enter network namespace {ns}"));
    }
    Ok(())
}

impl Drop for Host {
    fn drop(&mut self) {
        for child in self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            guard::kill(child);
        }
        guard::delete_netns(&self.ns);
        guard::disown_netns(&self.ns);
    }
}
