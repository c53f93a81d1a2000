//! A private network per test: a namespace with a bridge (`br0`,
//! 10.99.0.1/24 and fd99::1/64) and tap devices for the VMs. Nothing in it
//! can reach or be reached from any other network.

use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use anyhow::Context;

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
        let ns = format!(
            "levee-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
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

    /// Keeps a process that lives in the namespace, so it is killed with it.
    pub fn adopt(&self, child: Child) {
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        for child in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Anything else still in the namespace (e.g. a daemon that forked).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill(2) on a pid that lives in our namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
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

    pub fn adopt(&self, child: Child) {
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
    }

    /// The host's network interface (the inner end of its veth).
    pub fn interface(&self) -> String {
        format!("vp{}", self.ns.rsplit("-h").next().unwrap_or("0"))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for child in self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
