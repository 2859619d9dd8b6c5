//! libvirt as a test peer: libvirtd (QEMU driver) started by hand, vdfw's qemu hook, and
//! domains booting the harness's test guest on a vhost-user interface.
//!
//! There is no systemd here, so [`Libvirt::setup`] does what the packaging would: the
//! `libvirt-qemu` user and groups (libvirtd wants them even when QEMU runs as root), libvirt's
//! run/log/lib directories, `virtlogd -d` and `libvirtd -d`. libvirtd looks for hooks only when it
//! starts, so the hook is installed (with `configs/libvirt/install-hook.sh`, the operator's
//! path) before libvirtd is started. The hook reads its settings (`VDFW_SERVER`, `VDFWCTL`) from
//! [`HOOK_ENV`] at every run, which is how a test points it at its own vdfwd.
//!
//! Whatever setup started or wrote is undone when the [`Libvirt`] is dropped: daemons it started
//! are stopped (by their PID), a hook it installed is removed, the env file is restored.
//! Daemons and a hook found in place are used and left alone.
//!
//! Domains run QEMU as root with no relabelling (`<seclabel type='static' model='dac'
//! relabel='no'>`): libvirt must neither chown the harness's kernel and initrd nor need the
//! sockets to be reachable by `libvirt-qemu`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::guest::{Guest, MacAddr};
use crate::paths::{guest_image, workspace_root};
use crate::prereq::{require, Prereq};
use crate::process::{describe, run};

/// libvirt's qemu hook.
pub const HOOK: &str = "/etc/libvirt/hooks/qemu";
/// The hook's settings file (see `configs/libvirt/install-hook.sh`).
pub const HOOK_ENV: &str = "/etc/vdfw/libvirt-hook.env";
/// The line install-hook.sh marks its hook with.
const HOOK_MARKER: &str = "# vdfw libvirt hook";
const URI: &str = "qemu:///system";

/// A daemon this harness started (and so stops).
struct Started {
    name: &'static str,
    pid: libc::pid_t,
}

/// libvirtd and virtlogd running, vdfw's qemu hook installed and pointed at one vdfwd.
pub struct Libvirt {
    /// In start order; stopped in reverse.
    started: Vec<Started>,
    installed_hook: bool,
    /// The env file's content before setup (None: there was none).
    env_before: Option<Vec<u8>>,
}

fn pid_of(pidfile: &str, comm: &str) -> Option<libc::pid_t> {
    let pid: libc::pid_t = fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let actual = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (actual.trim() == comm).then_some(pid)
}

fn hook_env(vdfwctl: &Path, server: &str) -> Result<String> {
    let quote = |s: &str| -> Result<String> {
        if s.contains('\'') {
            return Err(Error::InvalidArgument(format!(
                "{s:?} contains a single quote"
            )));
        }
        Ok(format!("'{s}'"))
    };
    let bin = vdfwctl
        .to_str()
        .ok_or_else(|| Error::InvalidArgument(format!("non-UTF-8 path {vdfwctl:?}")))?;
    Ok(format!(
        "# written by the vdfw integration tests (restored afterwards)\nVDFW_SERVER={}\nVDFWCTL={}\n",
        quote(server)?,
        quote(bin)?
    ))
}

impl Libvirt {
    /// Prepares the host and starts what is not running; the hook will run `vdfwctl` against
    /// `server` (e.g. `unix:/tmp/.../api.sock`).
    pub fn setup(vdfwctl: &Path, server: &str) -> Result<Libvirt> {
        require(&[Prereq::Root, Prereq::Libvirt])?;
        let env_text = hook_env(vdfwctl, server)?;
        ensure_users()?;
        for d in [
            "/var/log/libvirt/qemu",
            "/var/run/libvirt",
            "/var/lib/libvirt/qemu",
            "/etc/vdfw",
        ] {
            fs::create_dir_all(d).map_err(|e| Error::io(format!("creating {d}"), e))?;
        }
        let mut lv = Libvirt {
            started: Vec::new(),
            installed_hook: false,
            env_before: fs::read(HOOK_ENV).ok(),
        };
        fs::write(HOOK_ENV, env_text).map_err(|e| Error::io(format!("writing {HOOK_ENV}"), e))?;

        match fs::read_to_string(HOOK) {
            Ok(text) if text.contains(HOOK_MARKER) => {}
            Ok(_) => {
                return Err(Error::Prerequisite {
                    what: format!("{HOOK} exists and is not vdfw's: the test will not replace it"),
                })
            }
            Err(_) => {
                let script = workspace_root().join("configs/libvirt/install-hook.sh");
                run(Command::new("sh")
                    .arg(&script)
                    .arg("--vdfwctl")
                    .arg(vdfwctl))?;
                lv.installed_hook = true;
            }
        }

        if pid_of("/var/run/virtlogd.pid", "virtlogd").is_none() {
            lv.start_daemon("virtlogd", "/var/run/virtlogd.pid")?;
        }
        if pid_of("/var/run/libvirtd.pid", "libvirtd").is_none() {
            lv.start_daemon("libvirtd", "/var/run/libvirtd.pid")?;
        } else if lv.installed_hook {
            return Err(Error::Prerequisite {
                what: "libvirtd was already running without a qemu hook (it looks for hooks only at start): restart it".into(),
            });
        }
        // libvirtd answers once its drivers are up.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match lv.virsh(&["version"]) {
                Ok(o) if o.status.success() => break,
                other => {
                    if Instant::now() >= deadline {
                        let why = match other {
                            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                            Err(e) => e.to_string(),
                        };
                        return Err(Error::UnexpectedOutput {
                            command: "virsh version (libvirtd not answering after 30 s)".into(),
                            output: why,
                        });
                    }
                    thread::sleep(Duration::from_millis(200));
                }
            }
        }
        Ok(lv)
    }

    fn start_daemon(&mut self, name: &'static str, pidfile: &str) -> Result<()> {
        // `-d` forks; the parent returns once the daemon is set up and has written its pidfile.
        run(Command::new(name).arg("-d"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = pid_of(pidfile, name) {
                self.started.push(Started { name, pid });
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::UnexpectedOutput {
                    command: format!("{name} -d"),
                    output: format!("no live {name} in {pidfile} after 10 s"),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Points the hook at another vdfwd API address (the file is read at every hook run).
    pub fn set_server(&self, vdfwctl: &Path, server: &str) -> Result<()> {
        fs::write(HOOK_ENV, hook_env(vdfwctl, server)?)
            .map_err(|e| Error::io(format!("writing {HOOK_ENV}"), e))
    }

    /// `virsh -c qemu:///system ARGS`, whatever its exit status.
    pub fn virsh(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("virsh");
        cmd.args(["-c", URI]).args(args);
        cmd.output()
            .map_err(|e| Error::io(format!("running `{}`", describe(&cmd)), e))
    }

    /// `virsh ARGS`, which must succeed; its stdout.
    pub fn virsh_ok(&self, args: &[&str]) -> Result<String> {
        run(Command::new("virsh").args(["-c", URI]).args(args))
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        for d in self.started.iter().rev() {
            // SAFETY: kill(2) has no memory-safety preconditions. The PID was read from the
            // daemon's pidfile and checked against /proc/PID/comm when we started it.
            unsafe {
                libc::kill(d.pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{}", d.pid)).exists() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            if Path::new(&format!("/proc/{}", d.pid)).exists() {
                eprintln!(
                    "libvirt harness: {} ({}) still running after SIGTERM",
                    d.name, d.pid
                );
            }
        }
        if self.installed_hook {
            let _ = fs::remove_file(HOOK);
        }
        let _ = match &self.env_before {
            Some(text) => fs::write(HOOK_ENV, text),
            None => fs::remove_file(HOOK_ENV),
        };
    }
}

/// The user and groups libvirtd insists on (qemu.conf's defaults), created like the Debian
/// package's postinst would.
fn ensure_users() -> Result<()> {
    let exists = |db: &str, name: &str| {
        Command::new("getent")
            .args([db, name])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    for group in ["kvm", "libvirt-qemu"] {
        if !exists("group", group) {
            run(Command::new("groupadd").args(["-r", group]))?;
        }
    }
    if !exists("passwd", "libvirt-qemu") {
        run(Command::new("useradd").args([
            "-r",
            "-g",
            "libvirt-qemu",
            "-G",
            "kvm",
            "-d",
            "/var/lib/libvirt",
            "-s",
            "/usr/sbin/nologin",
            "-M",
            "libvirt-qemu",
        ]))?;
    }
    Ok(())
}

/// A domain booting the harness's test guest on one vhost-user interface.
#[derive(Clone, Debug)]
pub struct DomainSpec {
    /// Domain name, also the guest's hostname.
    pub name: String,
    pub mac: MacAddr,
    /// The vhost-user socket; libvirt `mode='client'` (QEMU connects, vdfwd listens).
    pub socket: PathBuf,
    /// eth0's address, set by the guest's init from the kernel command line.
    pub ip_cidr: IpNet,
    /// Raw XML placed inside `<metadata>` (e.g. a `<vdfw:vm>`).
    pub metadata: String,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(escape)
        .ok_or_else(|| Error::InvalidArgument(format!("non-UTF-8 path {p:?}")))
}

impl DomainSpec {
    /// The domain XML: TCG, memfd shared memory, direct kernel boot, the vhost-user interface
    /// with `vectors=0` (QEMU 7.2's MSI-X crash), the serial console on `console`.
    pub fn to_xml(&self, console: &Path) -> Result<String> {
        let image = guest_image()?;
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(Error::InvalidArgument(format!(
                "domain name {:?}: ASCII letters, digits and '-' only",
                self.name
            )));
        }
        let cmdline = format!(
            "console=ttyS0 quiet panic=-1 vdfw.name={} vdfw.ip={} vdfw.ipv6=0",
            self.name, self.ip_cidr
        );
        Ok(format!(
            r#"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <metadata>{metadata}</metadata>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='vhostuser'>
      <mac address='{mac}'/>
      <source type='unix' path='{socket}' mode='client'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
    <serial type='unix'>
      <source mode='bind' path='{console}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  <qemu:override>
    <qemu:device alias='net0'>
      <qemu:frontend><qemu:property name='vectors' type='unsigned' value='0'/></qemu:frontend>
    </qemu:device>
  </qemu:override>
</domain>
"#,
            name = self.name,
            metadata = self.metadata,
            kernel = path_str(&image.kernel)?,
            initrd = path_str(&image.initrd)?,
            cmdline = escape(&cmdline),
            mac = self.mac,
            socket = path_str(&self.socket)?,
            console = path_str(console)?,
        ))
    }
}

/// A defined domain; dropping it destroys (if running) and undefines it.
pub struct Domain<'a> {
    lv: &'a Libvirt,
    name: String,
    dir: tempfile::TempDir,
}

impl<'a> Domain<'a> {
    /// `virsh define` of `spec` (its XML is kept as `domain.xml` in the domain's directory).
    pub fn define(lv: &'a Libvirt, spec: &DomainSpec) -> Result<Domain<'a>> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("vdfw-libvirt-{}-", spec.name))
            .tempdir()
            .map_err(|e| Error::io("creating the domain's directory", e))?;
        let xml = spec.to_xml(&dir.path().join("console.sock"))?;
        let file = dir.path().join("domain.xml");
        fs::write(&file, xml).map_err(|e| Error::io("writing domain.xml", e))?;
        let file = file
            .to_str()
            .ok_or_else(|| Error::InvalidArgument("non-UTF-8 temp path".into()))?;
        lv.virsh_ok(&["define", file])?;
        Ok(Domain {
            lv,
            name: spec.name.clone(),
            dir,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `virsh start`, whatever its outcome (a refused start is what some tests want).
    pub fn try_start(&self) -> Result<Output> {
        self.lv.virsh(&["start", &self.name])
    }

    /// `virsh start` (which must succeed), then attaches to the serial console and waits for
    /// the guest's shell.
    pub fn start(&self) -> Result<Guest> {
        let out = self.try_start()?;
        if !out.status.success() {
            return Err(Error::HostCommand {
                command: format!("virsh start {}", self.name),
                status: out.status.to_string(),
                stderr: format!(
                    "{}\n--- libvirt's QEMU log tail ---\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.qemu_log_tail()
                ),
            });
        }
        let pidfile = format!("/var/run/libvirt/qemu/{}.pid", self.name);
        let pid = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Guest::attach(
            &self.name,
            &self.dir.path().join("console.sock"),
            pid,
            Duration::from_secs(90),
        )
        .map_err(|e| match e {
            Error::BootTimeout {
                guest,
                timeout,
                log,
            } => Error::BootTimeout {
                guest,
                timeout,
                log: format!(
                    "{log}\n--- libvirt's QEMU log tail ---\n{}",
                    self.qemu_log_tail()
                ),
            },
            other => other,
        })
    }

    /// `virsh domstate`: `running`, `shut off`, ...
    pub fn state(&self) -> Result<String> {
        Ok(self
            .lv
            .virsh_ok(&["domstate", &self.name])?
            .trim()
            .to_string())
    }

    /// `virsh destroy` (hard stop; the hook's `stopped`/`release` still run).
    pub fn destroy(&self) -> Result<()> {
        self.lv.virsh_ok(&["destroy", &self.name]).map(|_| ())
    }

    /// The end of libvirt's log of this domain's QEMU (command line, QEMU's stderr).
    pub fn qemu_log_tail(&self) -> String {
        let text = fs::read_to_string(format!("/var/log/libvirt/qemu/{}.log", self.name))
            .unwrap_or_default();
        crate::process::tail(&text, 30)
    }
}

impl Drop for Domain<'_> {
    fn drop(&mut self) {
        if self.state().map(|s| s != "shut off").unwrap_or(false) {
            let _ = self.lv.virsh(&["destroy", &self.name]);
        }
        let _ = self.lv.virsh(&["undefine", &self.name]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_env_quotes_and_refuses_quotes() {
        let env = hook_env(Path::new("/t/vdfwctl"), "unix:/tmp/a b/api.sock").unwrap();
        assert!(
            env.contains("VDFW_SERVER='unix:/tmp/a b/api.sock'\n"),
            "{env}"
        );
        assert!(env.contains("VDFWCTL='/t/vdfwctl'\n"), "{env}");
        assert!(hook_env(Path::new("/t/x"), "unix:/it's").is_err());
    }

    #[test]
    fn escape_covers_xml_specials() {
        assert_eq!(escape(r#"a<b>&'""#), "a&lt;b&gt;&amp;&apos;&quot;");
    }
}
