//! Private network namespaces for uplink tests: the bridge, TAP and "host" addresses live inside a
//! namespace the test created, never on the machine's own interfaces.

use std::process::Command;

use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::process::{run, unique_name};

/// A network namespace (`ip netns add`), deleted with everything in it on drop; processes still
/// running inside are killed first.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `vdfw-<prefix>-<pid>-<n>` with its loopback up.
    pub fn new(prefix: &str) -> Result<NetNs> {
        let name = unique_name(&format!("vdfw-{prefix}"));
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace holding bridge `bridge` (up) with address `addr` (e.g. `10.9.0.1/24`).
    pub fn with_bridge(prefix: &str, bridge: &str, addr: Option<IpNet>) -> Result<NetNs> {
        let ns = NetNs::new(prefix)?;
        ns.add_bridge(bridge, addr)?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`), e.g. to
    /// start `vdfwd` there.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `program args...` inside the namespace; returns stdout, or the error with stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args))
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Creates a Linux bridge, sets it up, and optionally gives it an address.
    pub fn add_bridge(&self, bridge: &str, addr: Option<IpNet>) -> Result<()> {
        self.ip(&["link", "add", bridge, "type", "bridge"])?;
        self.ip(&["link", "set", bridge, "up"])?;
        if let Some(a) = addr {
            self.ip(&["addr", "add", &a.to_string(), "dev", bridge])?;
        }
        Ok(())
    }

    /// Creates a TAP device (up), optionally enslaved to `bridge`.
    pub fn add_tap(&self, tap: &str, bridge: Option<&str>) -> Result<()> {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        if let Some(br) = bridge {
            self.ip(&["link", "set", tap, "master", br])?;
        }
        self.ip(&["link", "set", tap, "up"])?;
        Ok(())
    }

    /// Adds `addr` to interface `dev`.
    pub fn add_addr(&self, dev: &str, addr: IpNet) -> Result<()> {
        self.ip(&["addr", "add", &addr.to_string(), "dev", dev])
            .map(|_| ())
    }

    /// PIDs of processes running inside the namespace.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let out = run(Command::new("ip").args(["netns", "pids", &self.name]))?;
        out.split_whitespace()
            .map(|p| {
                p.parse().map_err(|_| Error::UnexpectedOutput {
                    command: format!("ip netns pids {}", self.name),
                    output: out.clone(),
                })
            })
            .collect()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for pid in self.pids().unwrap_or_default() {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) has no memory-safety preconditions. The PIDs were just listed as
                // members of our own namespace.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prereq::{require, Prereq};

    /// Needs root: fails (does not skip) without it, naming install-deps.sh.
    #[test]
    fn namespace_with_bridge_and_tap_is_removed_on_drop() {
        require(&[Prereq::Root, Prereq::NetTools]).unwrap();
        let name;
        let mut sleeper;
        {
            let ns =
                NetNs::with_bridge("unit", "br0", Some("10.99.0.1/24".parse().unwrap())).unwrap();
            ns.add_tap("tap0", Some("br0")).unwrap();
            name = ns.name().to_string();
            let links = ns.ip(&["-o", "link"]).unwrap();
            assert!(links.contains("br0") && links.contains("tap0"), "{links}");
            let addrs = ns.ip(&["-o", "addr", "show", "br0"]).unwrap();
            assert!(addrs.contains("10.99.0.1/24"), "{addrs}");
            // The address is reachable inside the namespace only.
            ns.run("busybox", &["ping", "-c", "1", "-W", "1", "10.99.0.1"])
                .unwrap();
            sleeper = ns.command("sleep").arg("30").spawn().unwrap();
            assert!(ns.pids().unwrap().contains(&sleeper.id()));
        }
        // Dropping the namespace killed the process inside it.
        assert!(!sleeper.wait().unwrap().success());
        let list = run(Command::new("ip").args(["netns", "list"])).unwrap();
        assert!(!list.contains(&name), "{name} still listed: {list}");
    }
}
