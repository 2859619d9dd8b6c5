//! A test guest: Linux under QEMU (TCG) with a virtio-net NIC on a vhost-user socket, driven over
//! its serial console.
//!
//! QEMU flags and why (see also `integration/README.md`):
//! - `-accel tcg`: /dev/kvm here is a pagetable-based KVM without hardware virtualisation, and a
//!   stock kernel hangs in its 32-bit entry under it.
//! - `-object memory-backend-memfd,...,share=on -machine pc,memory-backend=mem`: vhost-user backends
//!   map guest memory, so it must be a shareable fd.
//! - `-device virtio-net-pci,...,romfile=,vectors=0`: QEMU 7.2 under TCG segfaults in
//!   `msix_set_vector_notifiers` when a vhost-user net device starts; `vectors=0` uses INTx instead
//!   of MSI-X. `romfile=` skips loading iPXE.
//! - `-bios qboot.rom` when present: boots ~1 s faster than SeaBIOS.
//! - the serial console is QEMU's stdio, piped to the harness (`-chardev stdio,signal=off`).

use std::fmt;
use std::fs::{self, File};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::console::{Console, ConsoleError};
use crate::error::{Error, Result};
use crate::paths::{guest_image, GuestImage};
use crate::process::{stop_child, tail};

const QBOOT: &str = "/usr/share/qemu/qboot.rom";
/// Lines of serial log quoted in errors and printed when a test panics.
const LOG_TAIL: usize = 60;
/// Default timeout of the convenience helpers' guest commands.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered address `52:54:00:xx:xx:xx` (QEMU's prefix) ending in `n`.
    pub fn local(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([0x52, 0x54, 0x00, b[1], b[2], b[3]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = Error;
    fn from_str(s: &str) -> Result<MacAddr> {
        let bad = || Error::InvalidArgument(format!("bad MAC address {s:?}"));
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

/// Which side of the vhost-user socket listens.
///
/// In both roles QEMU 7.2 holds the machine until a backend has attached (its vhost-user netdev
/// waits for the first connection at start-up), so [`Guest::boot`] blocks until then: start the
/// backend first, or boot from another thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketRole {
    /// QEMU connects to a listening backend, with `reconnect=1`: it retries every second until the
    /// backend listens, and re-attaches the same way after the backend restarts.
    Client,
    /// QEMU listens (`server=on,wait=off`) and the backend connects (backend-as-client mode, e.g.
    /// testpmd `client=1`, OVS `dpdkvhostuserclient`); after a backend restart the backend must
    /// reconnect.
    Server,
}

/// One virtio-net NIC on a vhost-user socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicSpec {
    pub vhost_socket: PathBuf,
    pub socket_role: SocketRole,
    pub mac: MacAddr,
}

/// What to boot. Build with [`GuestSpec::new`] and the builder methods.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    /// Hostname, and the guest's name in errors and logs.
    pub name: String,
    /// eth0's vhost-user socket.
    pub vhost_socket: PathBuf,
    pub socket_role: SocketRole,
    pub mac: MacAddr,
    /// eth0's address (set by the guest's init).
    pub ip_cidr: Option<IpNet>,
    /// Default gateway via eth0.
    pub gateway: Option<IpAddr>,
    /// Further NICs (eth1, eth2, ...): brought up without addresses; configure them with `exec`.
    pub extra_nics: Vec<NicSpec>,
    /// Guest RAM in MiB (memfd-backed and shared with the backend).
    pub memory_mib: u32,
    /// Extra kernel command-line words (e.g. `vdfw.mtu=9000`, `vdfw.ipv6=0`, `loglevel=7`).
    pub extra_cmdline: Vec<String>,
    /// Extra QEMU arguments, appended last.
    pub extra_qemu_args: Vec<String>,
    /// How long to wait for the guest's ready marker.
    pub boot_timeout: Duration,
}

impl GuestSpec {
    /// A guest named `name` with eth0 on `vhost_socket` (QEMU as client), MAC `mac`, no address.
    pub fn new(name: impl Into<String>, vhost_socket: impl Into<PathBuf>, mac: MacAddr) -> Self {
        GuestSpec {
            name: name.into(),
            vhost_socket: vhost_socket.into(),
            socket_role: SocketRole::Client,
            mac,
            ip_cidr: None,
            gateway: None,
            extra_nics: Vec::new(),
            memory_mib: 256,
            extra_cmdline: Vec::new(),
            extra_qemu_args: Vec::new(),
            boot_timeout: Duration::from_secs(90),
        }
    }

    /// Sets eth0's address, e.g. `"10.0.0.1/24"`.
    pub fn ip(mut self, cidr: &str) -> Result<Self> {
        self.ip_cidr = Some(
            cidr.parse()
                .map_err(|_| Error::InvalidArgument(format!("bad address/prefix {cidr:?}")))?,
        );
        Ok(self)
    }

    pub fn gateway(mut self, gw: IpAddr) -> Self {
        self.gateway = Some(gw);
        self
    }

    pub fn role(mut self, role: SocketRole) -> Self {
        self.socket_role = role;
        self
    }

    pub fn extra_nic(mut self, nic: NicSpec) -> Self {
        self.extra_nics.push(nic);
        self
    }

    pub fn cmdline(mut self, word: impl Into<String>) -> Self {
        self.extra_cmdline.push(word.into());
        self
    }

    fn nics(&self) -> Vec<NicSpec> {
        let mut v = vec![NicSpec {
            vhost_socket: self.vhost_socket.clone(),
            socket_role: self.socket_role,
            mac: self.mac,
        }];
        v.extend(self.extra_nics.iter().cloned());
        v
    }

    fn kernel_cmdline(&self) -> Result<String> {
        let mut words = vec![
            "console=ttyS0".to_string(),
            "quiet".into(),
            // Reboot at once on panic; with -no-reboot QEMU then exits and the harness sees it.
            "panic=-1".into(),
            format!("vdfw.name={}", self.name),
        ];
        if let Some(ip) = self.ip_cidr {
            words.push(format!("vdfw.ip={ip}"));
        }
        if let Some(gw) = self.gateway {
            words.push(format!("vdfw.gw={gw}"));
        }
        words.extend(self.extra_cmdline.iter().cloned());
        if let Some(w) = words
            .iter()
            .find(|w| w.is_empty() || w.contains(char::is_whitespace))
        {
            return Err(Error::InvalidArgument(format!(
                "kernel command-line word {w:?} is empty or contains whitespace"
            )));
        }
        Ok(words.join(" "))
    }

    fn qemu_command(&self, image: &GuestImage, dir: &Path) -> Result<Command> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(Error::InvalidArgument(format!(
                "guest name {:?} must be non-empty ASCII letters, digits and '-'",
                self.name
            )));
        }
        let mem = format!("{}M", self.memory_mib);
        let mut c = Command::new("qemu-system-x86_64");
        c.args([
            "-name", &self.name, "-accel", "tcg", "-smp", "1", "-m", &mem,
        ])
        .arg("-object")
        .arg(format!("memory-backend-memfd,id=mem,size={mem},share=on"))
        .args(["-machine", "pc,memory-backend=mem"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        if Path::new(QBOOT).is_file() {
            c.args(["-bios", QBOOT]);
        }
        c.arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .arg("-append")
            .arg(self.kernel_cmdline()?)
            .args([
                "-chardev",
                "stdio,id=ser0,signal=off",
                "-serial",
                "chardev:ser0",
            ])
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("qmp.sock").display()
            ));
        for (i, nic) in self.nics().iter().enumerate() {
            let sock = nic.vhost_socket.to_str().ok_or_else(|| {
                Error::InvalidArgument(format!("non-UTF-8 socket path {:?}", nic.vhost_socket))
            })?;
            if sock.contains(',') {
                return Err(Error::InvalidArgument(format!(
                    "socket path {sock:?} contains ',' (QEMU option separator)"
                )));
            }
            let role = match nic.socket_role {
                SocketRole::Client => ",reconnect=1",
                SocketRole::Server => ",server=on,wait=off",
            };
            c.arg("-chardev")
                .arg(format!("socket,id=vu{i},path={sock}{role}"))
                .arg("-netdev")
                .arg(format!("vhost-user,id=n{i},chardev=vu{i}"))
                .arg("-device")
                .arg(format!(
                    "virtio-net-pci,netdev=n{i},mac={},romfile=,vectors=0",
                    nic.mac
                ));
        }
        c.args(&self.extra_qemu_args);
        Ok(c)
    }
}

/// What a guest command printed (stdout and stderr interleaved, `\r` removed) and its exit code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    pub output: String,
    pub exit_code: i32,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// How a TCP connection attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// The handshake completed.
    Connected,
    /// `connect` failed at once with ECONNREFUSED: the peer (or a firewall's Reject) answered with
    /// a TCP RST. (An ICMP port-unreachable gives the same errno.)
    Refused,
    /// No answer at all within the timeout (a firewall's Drop).
    TimedOut,
    /// EHOSTUNREACH / ENETUNREACH: no ARP answer or an ICMP unreachable came back.
    Unreachable,
}

/// A background process started with [`Guest::spawn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Background {
    /// PID of the session leader; the whole session is killed by [`Guest::kill`].
    pub pid: u32,
    /// Guest path of the file collecting its stdout and stderr.
    pub log: String,
}

/// A long-lived TCP session opened with [`Guest::open_session`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSession {
    pub peer: IpAddr,
    pub port: u16,
    /// Guest path of the FIFO feeding nc's stdin.
    pub fifo: String,
    /// The nc process (its log is what the peer sent back).
    pub nc: Background,
    /// The process holding the FIFO's write end open.
    pub holder: Background,
}

/// A running guest. Dropping it stops QEMU (unless it was [attached](Guest::attach) to, e.g. a
/// libvirt domain); if the thread is panicking (a failed test) the serial log's tail is printed
/// and the guest's log directory is kept.
pub struct Guest {
    name: String,
    /// QEMU when the harness started it; None for a guest another program manages.
    child: Mutex<Option<Child>>,
    pid: u32,
    console: Console,
    spawned: AtomicU32,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
}

impl Guest {
    /// Boots a guest and waits for its shell (3–5 s under TCG on an idle core).
    pub fn boot(spec: GuestSpec) -> Result<Guest> {
        let image = guest_image()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("vdfw-guest-{}-", spec.name))
            .tempdir()
            .map_err(|e| Error::io("creating the guest's log directory", e))?;
        let dir_path = dir.path().to_path_buf();
        let mut cmd = spec.qemu_command(&image, &dir_path)?;
        fs::write(dir_path.join("qemu.cmdline"), format!("{cmd:?}\n"))
            .map_err(|e| Error::io("writing qemu.cmdline", e))?;
        let stderr = File::create(dir_path.join("qemu.stderr"))
            .map_err(|e| Error::io("creating qemu.stderr", e))?;
        let serial_log = File::create(dir_path.join("serial.log"))
            .map_err(|e| Error::io("creating serial.log", e))?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| Error::io("starting qemu-system-x86_64 (run install-deps.sh)", e))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::io(
                "QEMU's stdio pipes",
                std::io::Error::other("missing pipe"),
            ));
        };
        let mut guest = Guest {
            name: spec.name.clone(),
            pid: child.id(),
            child: Mutex::new(Some(child)),
            spawned: AtomicU32::new(0),
            console: Console::new(stdout, stdin, Some(serial_log)),
            dir: Some(dir),
            dir_path,
        };
        guest.wait_ready(spec.boot_timeout)?;
        Ok(guest)
    }

    /// Attaches to a guest some other program started and owns (libvirt): its serial console is
    /// the unix socket `console` that QEMU listens on (`<serial type='unix'><source
    /// mode='bind'>`), `pid` its QEMU process. Waits for the shell's ready marker, so attach right
    /// after starting the VM: QEMU drops console output while no client is connected. Dropping
    /// the returned Guest only disconnects; stopping the VM is its owner's business.
    pub fn attach(name: &str, console: &Path, pid: u32, timeout: Duration) -> Result<Guest> {
        use std::os::unix::net::UnixStream;
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(console) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::io(
                        format!("connecting to {name}'s console {}", console.display()),
                        e,
                    ))
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        let reader = stream
            .try_clone()
            .map_err(|e| Error::io("cloning the console socket", e))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("vdfw-guest-{name}-"))
            .tempdir()
            .map_err(|e| Error::io("creating the guest's log directory", e))?;
        let dir_path = dir.path().to_path_buf();
        let serial_log = File::create(dir_path.join("serial.log"))
            .map_err(|e| Error::io("creating serial.log", e))?;
        let mut guest = Guest {
            name: name.to_string(),
            pid,
            child: Mutex::new(None),
            spawned: AtomicU32::new(0),
            console: Console::new(reader, stream, Some(serial_log)),
            dir: Some(dir),
            dir_path,
        };
        guest.wait_ready(deadline.saturating_duration_since(Instant::now()))?;
        Ok(guest)
    }

    /// Boots several guests in parallel (one thread each) and returns them in order.
    pub fn boot_all(specs: Vec<GuestSpec>) -> Result<Vec<Guest>> {
        let results: Vec<Result<Guest>> = thread::scope(|s| {
            let handles: Vec<_> = specs
                .into_iter()
                .map(|spec| s.spawn(move || Guest::boot(spec)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::InvalidArgument("guest boot thread panicked".into()))
                    })
                })
                .collect()
        });
        results.into_iter().collect()
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let before = self
            .console
            .wait_for_line("VDFW-READY ", Instant::now() + timeout)
            .map_err(|e| match e {
                ConsoleError::Closed => self.qemu_exited(),
                _ => Error::BootTimeout {
                    guest: self.name.clone(),
                    timeout,
                    log: self.serial_log_tail(),
                },
            })?;
        if let Some(line) = before.lines().find(|l| l.contains("VDFW-INIT-ERROR")) {
            return Err(Error::GuestInit {
                guest: self.name.clone(),
                message: line.trim().to_string(),
                log: self.serial_log_tail(),
            });
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The QEMU process's PID (e.g. to SIGKILL it and simulate a crashed VM).
    pub fn qemu_pid(&self) -> u32 {
        self.pid
    }

    /// Directory holding `serial.log`, `qemu.stderr`, `qemu.cmdline` and `qmp.sock`.
    pub fn log_dir(&self) -> &Path {
        &self.dir_path
    }

    /// QEMU's QMP socket (for `set_link`, `device_del`, ... see [`Guest::hmp`]).
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir_path.join("qmp.sock")
    }

    /// Everything the guest printed on its serial console so far.
    pub fn serial_log(&self) -> String {
        fs::read_to_string(self.dir_path.join("serial.log")).unwrap_or_default()
    }

    fn serial_log_tail(&self) -> String {
        tail(&self.serial_log().replace('\r', ""), LOG_TAIL)
    }

    fn qemu_exited(&self) -> Error {
        Error::QemuExited {
            guest: self.name.clone(),
            stderr: fs::read_to_string(self.dir_path.join("qemu.stderr")).unwrap_or_default(),
            log: self.serial_log_tail(),
        }
    }

    /// Runs a shell command in the guest (busybox `sh`, as root, stdin `/dev/null`) and returns its
    /// output and exit code. A non-zero exit is not an error here; see [`Guest::exec_ok`]. On
    /// timeout the command is interrupted with ^C and [`Error::CommandTimeout`] returned; the guest
    /// stays usable.
    pub fn exec(&self, cmd: &str, timeout: Duration) -> Result<CommandOutput> {
        match self.console.exec(cmd, timeout) {
            Ok((output, exit_code)) => Ok(CommandOutput { output, exit_code }),
            Err(ConsoleError::Timeout(output)) => Err(Error::CommandTimeout {
                guest: self.name.clone(),
                command: cmd.to_string(),
                timeout,
                output,
            }),
            Err(ConsoleError::Closed) => Err(self.qemu_exited()),
            Err(ConsoleError::Invalid(why)) => Err(Error::InvalidArgument(why)),
            Err(ConsoleError::Write(e)) => {
                if self.has_exited() {
                    Err(self.qemu_exited())
                } else {
                    Err(Error::io("writing to the guest's serial console", e))
                }
            }
        }
    }

    /// Whether QEMU has exited.
    pub fn has_exited(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => !Path::new(&format!("/proc/{}", self.pid)).exists(),
        }
    }

    /// Like [`Guest::exec`] but a non-zero exit is [`Error::CommandFailed`]; returns the output.
    pub fn exec_ok(&self, cmd: &str, timeout: Duration) -> Result<String> {
        let out = self.exec(cmd, timeout)?;
        if out.success() {
            Ok(out.output)
        } else {
            Err(Error::CommandFailed {
                guest: self.name.clone(),
                command: cmd.to_string(),
                exit_code: out.exit_code,
                output: out.output,
            })
        }
    }

    /// Starts `cmd` in the background in its own session (stdin `/dev/null`, output to a log file
    /// in the guest) and returns at once, e.g. `nc -ll -p 8080 -e cat` or `httpd -f -p 80`.
    pub fn spawn(&self, cmd: &str) -> Result<Background> {
        let quoted = cmd.replace('\'', r"'\''");
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let log = format!("/tmp/bg-{n}.log");
        let launch = format!("setsid sh -c '{quoted}' >{log} 2>&1 </dev/null & echo $!");
        let out = self.exec_ok(&launch, HELPER_TIMEOUT)?;
        let pid = out
            .trim()
            .parse::<u32>()
            .map_err(|_| Error::UnexpectedOutput {
                command: launch.clone(),
                output: out.clone(),
            })?;
        Ok(Background { pid, log })
    }

    /// Kills a background process's whole session (SIGKILL).
    pub fn kill(&self, bg: &Background) -> Result<()> {
        self.exec(
            &format!("kill -9 -{} 2>/dev/null; true", bg.pid),
            HELPER_TIMEOUT,
        )
        .map(|_| ())
    }

    /// The output a background process has written so far.
    pub fn background_output(&self, bg: &Background) -> Result<String> {
        self.exec_ok(&format!("cat {}", bg.log), HELPER_TIMEOUT)
    }

    /// Waits until something listens on TCP `port` in the guest (after [`Guest::spawn`] of a
    /// server, before connecting to it from another guest).
    pub fn wait_tcp_listen(&self, port: u16, timeout: Duration) -> Result<()> {
        let secs = timeout.as_secs().max(1) * 10;
        let cmd = format!(
            "i=0; while ! netstat -ltn | grep -q ':{port} '; do \
             i=$((i+1)); [ $i -ge {secs} ] && exit 1; sleep 0.1; done"
        );
        self.exec_ok(&cmd, timeout + Duration::from_secs(5))
            .map(|_| ())
    }

    /// Starts a TCP echo server on `port` (one `cat` per connection) and waits until it listens.
    pub fn spawn_tcp_echo(&self, port: u16) -> Result<Background> {
        let bg = self.spawn(&format!("nc -ll -p {port} -e cat"))?;
        self.wait_tcp_listen(port, Duration::from_secs(10))?;
        Ok(bg)
    }

    /// Opens a TCP connection to `ip:port` and closes it at once, telling a RST (Refused, within
    /// milliseconds) from silence (TimedOut after `timeout_s`) from EHOSTUNREACH (Unreachable,
    /// e.g. after ~3 s of unanswered ARP). `timeout_s` must be at least 1.
    pub fn tcp_connect(&self, ip: IpAddr, port: u16, timeout_s: u32) -> Result<ConnectOutcome> {
        self.tcp_connect_timed(ip, port, timeout_s).map(|(o, _)| o)
    }

    /// Like [`Guest::tcp_connect`], and how long the attempt took, measured inside the guest
    /// (`/proc/uptime`, 10 ms resolution), so console round trips on a loaded host do not count:
    /// "a Reject answers at once" is asserted on this.
    pub fn tcp_connect_timed(
        &self,
        ip: IpAddr,
        port: u16,
        timeout_s: u32,
    ) -> Result<(ConnectOutcome, Duration)> {
        let timeout_s = timeout_s.max(1);
        // busybox nc: -w bounds the connect; `-e true` closes right after the handshake.
        let cmd = format!(
            "read t0 x </proc/uptime; nc -w {timeout_s} {ip} {port} -e true; rc=$?; \
             read t1 x </proc/uptime; echo \"VDFW-TIMING $t0 $t1\"; exit $rc"
        );
        let out = self.exec(&cmd, Duration::from_secs(u64::from(timeout_s) + 15))?;
        let timing = out
            .output
            .lines()
            .find_map(|l| l.strip_prefix("VDFW-TIMING "))
            .and_then(|l| {
                let mut it = l.split_whitespace().map(|x| x.parse::<f64>().ok());
                Some((it.next()??, it.next()??))
            })
            .ok_or_else(|| Error::UnexpectedOutput {
                command: cmd.clone(),
                output: out.output.clone(),
            })?;
        let elapsed = Duration::from_secs_f64((timing.1 - timing.0).max(0.0));
        let text = out.output.to_ascii_lowercase();
        let outcome = if out.success() {
            ConnectOutcome::Connected
        } else if text.contains("refused") {
            ConnectOutcome::Refused
        } else if text.contains("timed out") {
            ConnectOutcome::TimedOut
        } else if text.contains("unreachable") || text.contains("no route") {
            ConnectOutcome::Unreachable
        } else {
            return Err(Error::UnexpectedOutput {
                command: cmd,
                output: out.output,
            });
        };
        Ok((outcome, elapsed))
    }

    /// Opens a long-lived, bidirectional TCP session to `ip:port`: a background `nc` whose stdin
    /// is a FIFO kept open by a holder process, so lines can be sent at any later time over the
    /// *same* connection ([`Guest::session_send`]) and what came back read
    /// ([`Guest::session_output`]). Waits until the connection is established.
    pub fn open_session(&self, ip: IpAddr, port: u16) -> Result<TcpSession> {
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let fifo = format!("/tmp/session-{n}.in");
        self.exec_ok(&format!("rm -f {fifo}; mkfifo {fifo}"), HELPER_TIMEOUT)?;
        // nc opens the FIFO for reading (blocks until the holder opens it for writing); the
        // holder keeps a writer open so nc never sees EOF between our writes.
        let nc = self.spawn(&format!("exec nc {ip} {port} <{fifo}"))?;
        let holder = self.spawn(&format!("exec sleep 2147483647 >{fifo}"))?;
        let session = TcpSession {
            peer: ip,
            port,
            fifo,
            nc,
            holder,
        };
        let cmd = format!(
            "i=0; while ! netstat -tn | grep -q ' {ip}:{port} *ESTABLISHED'; do \
             i=$((i+1)); [ $i -ge 100 ] && exit 1; sleep 0.1; done"
        );
        match self.exec(&cmd, HELPER_TIMEOUT)? {
            out if out.success() => Ok(session),
            _ => {
                let output = self.background_output(&session.nc).unwrap_or_default();
                let _ = self.close_session(&session);
                Err(Error::UnexpectedOutput {
                    command: format!("session to {ip}:{port} (not established in 10 s)"),
                    output,
                })
            }
        }
    }

    /// Writes `line` (plus a newline) into the session's connection.
    pub fn session_send(&self, s: &TcpSession, line: &str) -> Result<()> {
        if line.contains(['\'', '\n']) {
            return Err(Error::InvalidArgument(
                "session line must not contain quotes or newlines".into(),
            ));
        }
        // Opening the FIFO for writing blocks while no reader has it open (nc has exited):
        // `timeout` keeps a dead session from hanging the console.
        self.exec_ok(
            &format!(
                "timeout 5 sh -c 'printf \"%s\\n\" \"$0\" >{}' '{line}'",
                s.fifo
            ),
            HELPER_TIMEOUT,
        )
        .map(|_| ())
    }

    /// Everything the peer sent back over the session so far.
    pub fn session_output(&self, s: &TcpSession) -> Result<String> {
        self.background_output(&s.nc)
    }

    /// Waits up to `timeout` for `needle` in the session's output; Ok(false) if it never came.
    pub fn session_wait_for(
        &self,
        s: &TcpSession,
        needle: &str,
        timeout: Duration,
    ) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.session_output(s)?.contains(needle) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the session's connection is still ESTABLISHED in the guest's TCP stack.
    pub fn session_established(&self, s: &TcpSession) -> Result<bool> {
        let out = self.exec(
            &format!(
                "netstat -tn | grep -q ' {}:{} *ESTABLISHED'",
                s.peer, s.port
            ),
            HELPER_TIMEOUT,
        )?;
        Ok(out.success())
    }

    /// Kills the session's nc and FIFO holder.
    pub fn close_session(&self, s: &TcpSession) -> Result<()> {
        self.kill(&s.nc)?;
        self.kill(&s.holder)?;
        self.exec(&format!("rm -f {}", s.fifo), HELPER_TIMEOUT)
            .map(|_| ())
    }

    /// Sends `payload` to `ip:port`, half-closes, and returns everything the server sent back
    /// before closing (with [`Guest::spawn_tcp_echo`] on the other side: the payload itself).
    pub fn tcp_exchange(
        &self,
        ip: IpAddr,
        port: u16,
        payload: &str,
        timeout_s: u32,
    ) -> Result<String> {
        if payload.contains(['\'', '\n']) {
            return Err(Error::InvalidArgument(
                "payload must not contain quotes or newlines".into(),
            ));
        }
        let timeout_s = timeout_s.max(1);
        let cmd = format!("printf '%s' '{payload}' | nc -w {timeout_s} {ip} {port}");
        self.exec_ok(&cmd, Duration::from_secs(u64::from(timeout_s) * 2 + 15))
    }

    /// Pings `ip` `count` times (0.2 s apart) and returns how many replies came back.
    pub fn ping(&self, ip: IpAddr, count: u32) -> Result<u32> {
        let count = count.max(1);
        let deadline = count + 3;
        let prog = if ip.is_ipv6() { "ping6" } else { "ping" };
        let cmd = format!("{prog} -c {count} -i 0.2 -W 1 -w {deadline} {ip}");
        let out = self.exec(&cmd, Duration::from_secs(u64::from(deadline) + 15))?;
        // "3 packets transmitted, 3 packets received, 0% packet loss"
        out.output
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or(Error::UnexpectedOutput {
                command: cmd,
                output: out.output,
            })
    }

    /// Runs a human-monitor command through QMP (e.g. `set_link n0 off`; NICs are `n0`, `n1`, ...)
    /// and returns its text output.
    pub fn hmp(&self, command: &str) -> Result<String> {
        use std::io::{BufRead, BufReader, Write};
        use std::os::unix::net::UnixStream;
        let ctx = |e| Error::io("talking QMP", e);
        let stream = UnixStream::connect(self.qmp_socket()).map_err(ctx)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(ctx)?;
        let mut writer = stream.try_clone().map_err(ctx)?;
        let mut reader = BufReader::new(stream);
        let request = serde_json::json!({
            "execute": "human-monitor-command",
            "arguments": {"command-line": command},
        });
        writer
            .write_all(format!("{{\"execute\":\"qmp_capabilities\"}}\n{request}\n").as_bytes())
            .map_err(ctx)?;
        // Replies come in order (greeting, capabilities, ours), interleaved with events.
        let mut returns = 0;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(ctx)? == 0 {
                return Err(Error::UnexpectedOutput {
                    command: command.to_string(),
                    output: "QMP closed the connection".into(),
                });
            }
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|_| Error::UnexpectedOutput {
                    command: command.to_string(),
                    output: line.clone(),
                })?;
            if let Some(err) = v.get("error") {
                return Err(Error::UnexpectedOutput {
                    command: command.to_string(),
                    output: err.to_string(),
                });
            }
            if let Some(ret) = v.get("return") {
                returns += 1;
                if returns == 2 {
                    return Ok(ret.as_str().unwrap_or_default().to_string());
                }
            }
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // SIGTERM lets QEMU close its vhost-user connections cleanly; the guest has no state.
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = child.as_mut() {
            stop_child(child, libc::SIGTERM, Duration::from_secs(2));
        }
        if thread::panicking() {
            eprintln!(
                "--- guest {}: serial log tail (full log kept in {}) ---\n{}\n--- end of {} ---",
                self.name,
                self.dir_path.display(),
                self.serial_log_tail(),
                self.name
            );
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m: MacAddr = "52:54:00:ab:cd:0f".parse().unwrap();
        assert_eq!(m, MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0x0f]));
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!(MacAddr::local(0x010203).to_string(), "52:54:00:01:02:03");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn qemu_command_has_the_workarounds() {
        let spec = GuestSpec::new("g1", "/tmp/x/a.sock", MacAddr::local(1))
            .ip("10.0.0.1/24")
            .unwrap()
            .gateway("10.0.0.254".parse().unwrap())
            .role(SocketRole::Server);
        let img = GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
        };
        let cmd = spec.qemu_command(&img, Path::new("/d")).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let has = |s: &str| args.iter().any(|a| a == s);
        assert!(has("tcg"));
        assert!(has("memory-backend-memfd,id=mem,size=256M,share=on"));
        assert!(has("socket,id=vu0,path=/tmp/x/a.sock,server=on,wait=off"));
        assert!(has(
            "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,romfile=,vectors=0"
        ));
        assert!(has(
            "console=ttyS0 quiet panic=-1 vdfw.name=g1 vdfw.ip=10.0.0.1/24 vdfw.gw=10.0.0.254"
        ));

        let bad = GuestSpec::new("g 1", "/a", MacAddr::local(1));
        assert!(bad.qemu_command(&img, Path::new("/d")).is_err());
        let bad = GuestSpec::new("g", "/a,b", MacAddr::local(1));
        assert!(bad.qemu_command(&img, Path::new("/d")).is_err());
        let bad = GuestSpec::new("g", "/a", MacAddr::local(1)).cmdline("two words");
        assert!(bad.qemu_command(&img, Path::new("/d")).is_err());
    }
}
