//! `vdfwd`, the system under test, as a managed child process: a generated (or loaded and
//! relocated) configuration, its own policy directory, state directory and sockets, and the
//! observations tests assert on (`counters.json`, `flows.jsonl`, its log).
//!
//! Everything lives in one scratch directory per [`Vdfwd`]: `vdfwd.toml`, `policies/`,
//! `state/`, `sockets/` and `vdfwd.log`. When a test panics, dropping the [`Vdfwd`] prints the
//! log's tail and keeps the directory.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::guest::{GuestSpec, MacAddr, SocketRole};
use crate::netns::NetNs;
use crate::paths::cargo_bin;
use crate::process::{describe, tail};

/// Lines of vdfwd's log quoted in errors and printed when a test panics.
const LOG_TAIL: usize = 80;

/// Who opens a vNIC's vhost-user socket, from vdfwd's side (its config's `role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VnicRole {
    /// vdfwd listens, QEMU connects with `reconnect=1` ([`SocketRole::Client`]).
    Listen,
    /// QEMU listens (`server=on`), vdfwd connects and reconnects ([`SocketRole::Server`]).
    Connect,
}

impl VnicRole {
    fn as_str(self) -> &'static str {
        match self {
            VnicRole::Listen => "listen",
            VnicRole::Connect => "connect",
        }
    }

    /// The QEMU side of this role.
    pub fn guest_role(self) -> SocketRole {
        match self {
            VnicRole::Listen => SocketRole::Client,
            VnicRole::Connect => SocketRole::Server,
        }
    }
}

/// One `[[vnic]]` of the configuration: a VM's identity as the firewall sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VnicDef {
    /// vNIC name, also its endpoint name in policy and the flow log.
    pub name: String,
    pub vm: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub mac: MacAddr,
    pub ips: Vec<IpAddr>,
    /// Named TCP ports (`http` -> 8080), what `port: http` in a policy resolves to.
    pub named_ports: Vec<(String, u16)>,
    pub role: VnicRole,
}

impl VnicDef {
    /// A vNIC called `name` (also the VM's name) in `namespace`, listening role, with one IP.
    pub fn new(name: &str, namespace: &str, mac: MacAddr, ip: IpAddr) -> VnicDef {
        VnicDef {
            name: name.into(),
            vm: name.into(),
            namespace: namespace.into(),
            labels: BTreeMap::new(),
            mac,
            ips: vec![ip],
            named_ports: Vec::new(),
            role: VnicRole::Listen,
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn named_port(mut self, name: &str, port: u16) -> Self {
        self.named_ports.push((name.into(), port));
        self
    }

    pub fn role(mut self, role: VnicRole) -> Self {
        self.role = role;
        self
    }

    fn to_toml(&self) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("name".into(), self.name.clone().into());
        t.insert("vm".into(), self.vm.clone().into());
        t.insert("namespace".into(), self.namespace.clone().into());
        t.insert("role".into(), self.role.as_str().into());
        t.insert("mac".into(), self.mac.to_string().into());
        let ips: Vec<toml::Value> = self.ips.iter().map(|ip| ip.to_string().into()).collect();
        t.insert("ips".into(), ips.into());
        let labels: toml::Table = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), toml::Value::from(v.clone())))
            .collect();
        t.insert("labels".into(), labels.into());
        let ports: Vec<toml::Value> = self
            .named_ports
            .iter()
            .map(|(name, port)| {
                let mut p = toml::Table::new();
                p.insert("name".into(), name.clone().into());
                p.insert("port".into(), i64::from(*port).into());
                p.insert("protocol".into(), "TCP".into());
                p.into()
            })
            .collect();
        t.insert("ports".into(), ports.into());
        // Relocated to the Vdfwd's socket directory by `render`.
        t.insert("socket".into(), format!("{}.sock", self.name).into());
        t
    }
}

/// What the harness needs to know about a configured vNIC to boot a guest on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VnicInfo {
    pub name: String,
    pub vm: String,
    pub mac: MacAddr,
    pub ips: Vec<IpAddr>,
    pub role: VnicRole,
    /// The socket path after relocation into the Vdfwd's directory.
    pub socket: PathBuf,
}

/// A vdfwd configuration as a TOML table: built here ([`VdfwdConfig::new`] and the `with_*`
/// methods) or loaded from a file (e.g. `configs/demo/vdfwd.toml`, so tests exercise the very
/// configuration the demo uses). `state_dir`, `policy_dir` and every vNIC's `socket` are
/// rewritten to the [`Vdfwd`]'s own directory when it starts.
#[derive(Clone, Debug, Default)]
pub struct VdfwdConfig {
    table: toml::Table,
}

impl VdfwdConfig {
    pub fn new() -> VdfwdConfig {
        VdfwdConfig::default()
    }

    /// Loads a configuration file (relative paths are taken from the workspace root).
    pub fn load(path: impl AsRef<Path>) -> Result<VdfwdConfig> {
        let path = crate::paths::workspace_root().join(path);
        let text = fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let table = text.parse::<toml::Table>().map_err(|e| {
            Error::InvalidArgument(format!("{} is not valid TOML: {e}", path.display()))
        })?;
        Ok(VdfwdConfig { table })
    }

    pub fn with_vnic(mut self, vnic: VnicDef) -> Self {
        self.array("vnic").push(vnic.to_toml().into());
        self
    }

    /// A `[[namespace]]` with labels (what `namespaceSelector`s match).
    pub fn with_namespace(mut self, name: &str, labels: &[(&str, &str)]) -> Self {
        let mut t = toml::Table::new();
        t.insert("name".into(), name.into());
        let l: toml::Table = labels
            .iter()
            .map(|(k, v)| (k.to_string(), toml::Value::from(*v)))
            .collect();
        t.insert("labels".into(), l.into());
        self.array("namespace").push(t.into());
        self
    }

    /// An `[uplink]` TAP (created by vdfwd), attached to `bridge` if given.
    pub fn with_uplink(mut self, tap: &str, bridge: Option<&str>) -> Self {
        let mut t = toml::Table::new();
        t.insert("tap".into(), tap.into());
        if let Some(b) = bridge {
            t.insert("bridge".into(), b.into());
        }
        self.table.insert("uplink".into(), t.into());
        self
    }

    /// Any other top-level setting, e.g. `("default_deny", true.into())`.
    pub fn with_setting(mut self, key: &str, value: toml::Value) -> Self {
        self.table.insert(key.into(), value);
        self
    }

    fn array(&mut self, key: &str) -> &mut Vec<toml::Value> {
        let slot = self
            .table
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        if !slot.is_array() {
            *slot = toml::Value::Array(Vec::new());
        }
        match slot {
            toml::Value::Array(a) => a,
            _ => unreachable!("just made it an array"),
        }
    }

    /// The vNICs, with their sockets relocated into `socket_dir`.
    fn vnics(&self, socket_dir: &Path) -> Result<Vec<VnicInfo>> {
        let Some(list) = self.table.get("vnic").and_then(|v| v.as_array()) else {
            return Ok(Vec::new());
        };
        let bad = |what: &str| Error::InvalidArgument(format!("vdfwd config: vnic {what}"));
        list.iter()
            .map(|v| {
                let s = |k: &str| v.get(k).and_then(|x| x.as_str());
                let name = s("name").ok_or_else(|| bad("without a name"))?.to_string();
                let mac = s("mac").ok_or_else(|| bad("without a mac"))?.parse()?;
                let ips = v
                    .get("ips")
                    .and_then(|x| x.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|ip| ip.as_str()?.parse().ok())
                            .collect()
                    })
                    .unwrap_or_default();
                let role = match s("role") {
                    None | Some("listen") => VnicRole::Listen,
                    Some("connect") => VnicRole::Connect,
                    Some(other) => return Err(bad(&format!("with unknown role {other:?}"))),
                };
                let file = s("socket")
                    .and_then(|p| Path::new(p).file_name().map(PathBuf::from))
                    .unwrap_or_else(|| PathBuf::from(format!("{name}.sock")));
                Ok(VnicInfo {
                    vm: s("vm").unwrap_or(&name).to_string(),
                    socket: socket_dir.join(file),
                    name,
                    mac,
                    ips,
                    role,
                })
            })
            .collect()
    }

    /// The TOML vdfwd gets: paths rewritten into the scratch directory.
    fn render(&self, state_dir: &Path, policy_dir: &Path, socket_dir: &Path) -> Result<String> {
        let mut table = self.table.clone();
        let path = |p: &Path| toml::Value::from(p.display().to_string());
        table.insert("state_dir".into(), path(state_dir));
        table.insert("policy_dir".into(), path(policy_dir));
        // An `[api]` section without `unix_socket` would put the socket in vdfwd's default
        // /run/vdfw/api.sock, shared by every vdfwd of a test run: keep it in the state dir,
        // where [`Vdfwd::api_socket`] looks for it.
        if let Some(api) = table.get_mut("api").and_then(toml::Value::as_table_mut) {
            api.entry("unix_socket")
                .or_insert_with(|| path(&state_dir.join("api.sock")));
        }
        let vnics = self.vnics(socket_dir)?;
        if let Some(toml::Value::Array(list)) = table.get_mut("vnic") {
            for (v, info) in list.iter_mut().zip(&vnics) {
                if let Some(t) = v.as_table_mut() {
                    t.insert("socket".into(), path(&info.socket));
                }
            }
        }
        toml::to_string(&table)
            .map_err(|e| Error::InvalidArgument(format!("vdfwd config does not render: {e}")))
    }
}

/// How to start vdfwd.
#[derive(Clone, Debug)]
pub struct VdfwdSpec {
    pub config: VdfwdConfig,
    /// Policy files copied into vdfwd's own `policy_dir` (files, or directories whose files are
    /// copied, not recursively); none: an empty policy directory.
    pub policies: Vec<PathBuf>,
    /// Policy files given as text: (file name, YAML), written next to the copied ones.
    pub policy_texts: Vec<(String, String)>,
    /// `--insecure-allow-all` (the firewall off: bring-up only).
    pub insecure_allow_all: bool,
    /// Run vdfwd inside this namespace (`ip netns exec`), e.g. for an uplink on a namespaced
    /// bridge. vhost-user sockets are not namespaced, so guests attach as usual.
    pub netns: Option<String>,
    /// `RUST_LOG` for vdfwd (default `info`).
    pub log_filter: String,
    /// How long to wait for the sockets and `counters.json` after start.
    pub start_timeout: Duration,
}

impl VdfwdSpec {
    pub fn new(config: VdfwdConfig) -> VdfwdSpec {
        VdfwdSpec {
            config,
            policies: Vec::new(),
            policy_texts: Vec::new(),
            insecure_allow_all: false,
            netns: None,
            log_filter: "info".into(),
            start_timeout: Duration::from_secs(30),
        }
    }

    /// Policy files or directories (relative paths from the workspace root).
    pub fn policies<P: AsRef<Path>>(mut self, paths: impl IntoIterator<Item = P>) -> Self {
        let root = crate::paths::workspace_root();
        self.policies
            .extend(paths.into_iter().map(|p| root.join(p.as_ref())));
        self
    }

    /// A policy file written from `yaml` (e.g. a scenario's own policy, kept next to its test).
    pub fn policy_text(mut self, file_name: &str, yaml: &str) -> Self {
        self.policy_texts.push((file_name.into(), yaml.into()));
        self
    }

    pub fn insecure_allow_all(mut self) -> Self {
        self.insecure_allow_all = true;
        self
    }

    pub fn in_netns(mut self, ns: &NetNs) -> Self {
        self.netns = Some(ns.name().to_string());
        self
    }
}

/// A running (or stopped, between [`Vdfwd::stop`] and [`Vdfwd::start_again`]) vdfwd.
pub struct Vdfwd {
    child: Option<Child>,
    spec: VdfwdSpec,
    binary: PathBuf,
    vnics: Vec<VnicInfo>,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    starts: u32,
}

impl Vdfwd {
    /// Builds vdfwd if needed (`cargo build`), writes its config and policies, starts it and
    /// waits until every listening socket exists and `counters.json` has been written.
    pub fn start(spec: VdfwdSpec) -> Result<Vdfwd> {
        let binary = cargo_bin("vdfwd")?;
        let dir = tempfile::Builder::new()
            .prefix("vdfw-vdfwd-")
            .tempdir()
            .map_err(|e| Error::io("creating vdfwd's directory", e))?;
        let dir_path = dir.path().to_path_buf();
        for sub in ["state", "policies", "sockets"] {
            fs::create_dir_all(dir_path.join(sub))
                .map_err(|e| Error::io(format!("creating {sub}/"), e))?;
        }
        let vnics = spec.config.vnics(&dir_path.join("sockets"))?;
        let mut v = Vdfwd {
            child: None,
            binary,
            vnics,
            dir: Some(dir),
            dir_path,
            starts: 0,
            spec,
        };
        let policies = v.spec.policies.clone();
        v.copy_policies(&policies)?;
        for (name, text) in &v.spec.policy_texts {
            fs::write(v.policy_dir().join(name), text)
                .map_err(|e| Error::io(format!("writing policy {name}"), e))?;
        }
        let text =
            v.spec
                .config
                .render(&v.state_dir(), &v.policy_dir(), &v.dir_path.join("sockets"))?;
        fs::write(v.config_path(), text).map_err(|e| Error::io("writing vdfwd.toml", e))?;
        v.spawn()?;
        Ok(v)
    }

    fn spawn(&mut self) -> Result<()> {
        // counters.json of a previous run must not count as this run's.
        let _ = fs::remove_file(self.state_dir().join("counters.json"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| Error::io("opening vdfwd.log", e))?;
        self.starts += 1;
        use std::io::Write;
        let _ = writeln!(&log, "=== harness: vdfwd start #{} ===", self.starts);
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("cloning vdfwd.log", e))?;
        let mut cmd = match &self.spec.netns {
            Some(ns) => {
                // `ip netns exec` execs the program: the child's PID is vdfwd's own.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        cmd.arg("--config").arg(self.config_path());
        if self.spec.insecure_allow_all {
            cmd.arg("--insecure-allow-all");
        }
        cmd.env("RUST_LOG", &self.spec.log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let described = describe(&cmd);
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting `{described}`"), e))?;
        self.child = Some(child);
        let deadline = Instant::now() + self.spec.start_timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Err(Error::Vdfwd {
                    message: format!("exited during start-up ({status}): {described}"),
                    log: self.log_tail(),
                });
            }
            let sockets_ready = self
                .vnics
                .iter()
                .filter(|v| v.role == VnicRole::Listen)
                .all(|v| v.socket.exists());
            if sockets_ready && self.state_dir().join("counters.json").exists() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Vdfwd {
                    message: format!(
                        "sockets / counters.json not ready after {:?}: {described}",
                        self.spec.start_timeout
                    ),
                    log: self.log_tail(),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// vdfwd's PID (None while stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `signal` and waits up to `grace` for vdfwd to exit (then SIGKILL). Returns how it
    /// exited. Guests keep running: listen-role QEMUs retry every second, connect-role vNICs
    /// wait for vdfwd to connect again.
    pub fn stop(&mut self, signal: libc::c_int, grace: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| Error::Vdfwd {
            message: "stop: vdfwd is not running".into(),
            log: String::new(),
        })?;
        send_signal(child.id(), signal);
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let status = child
                    .wait()
                    .map_err(|e| Error::io("waiting for vdfwd", e))?;
                return Err(Error::Vdfwd {
                    message: format!(
                        "did not exit within {grace:?} of signal {signal}; SIGKILLed ({status})"
                    ),
                    log: self.log_tail(),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts vdfwd again with the same configuration and policy directory.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Err(Error::Vdfwd {
                message: "start_again: vdfwd is still running".into(),
                log: String::new(),
            });
        }
        self.spawn()
    }

    /// Sends a signal without waiting (e.g. SIGHUP; see [`Vdfwd::reload`]).
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = self.pid().ok_or_else(|| Error::Vdfwd {
            message: "signal: vdfwd is not running".into(),
            log: String::new(),
        })?;
        send_signal(pid, signal);
        Ok(())
    }

    /// SIGHUP, then waits until `counters.json` shows that the policy was applied (the
    /// `policy` section changed: new generation / last change) and returns that section. A
    /// refused reload (`policy.last_error`) is an error carrying vdfwd's messages.
    pub fn reload(&self) -> Result<Value> {
        let before = self.counters()?.get("policy").cloned();
        self.signal(libc::SIGHUP)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            // counters.json is rewritten every second.
            thread::sleep(Duration::from_millis(200));
            if let Ok(c) = self.counters() {
                let now = c.get("policy").cloned();
                if now != before {
                    let policy = now.unwrap_or(Value::Null);
                    if let Some(err) = policy.get("last_error").filter(|e| !e.is_null()) {
                        return Err(Error::Vdfwd {
                            message: format!("policy reload refused: {err}"),
                            log: self.log_tail(),
                        });
                    }
                    return Ok(policy);
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Vdfwd {
                    message: "SIGHUP: policy status in counters.json did not change in 15 s".into(),
                    log: self.log_tail(),
                });
            }
        }
    }

    /// Replaces the policy directory's content with `files` (name, YAML text), for a reload.
    pub fn write_policies(&self, files: &[(&str, &str)]) -> Result<()> {
        self.clear_policies()?;
        for (name, text) in files {
            fs::write(self.policy_dir().join(name), text)
                .map_err(|e| Error::io(format!("writing policy {name}"), e))?;
        }
        Ok(())
    }

    /// Replaces the policy directory's content with copies of `paths` (relative to the
    /// workspace root; directories: their files).
    pub fn replace_policies<P: AsRef<Path>>(&self, paths: &[P]) -> Result<()> {
        self.clear_policies()?;
        let root = crate::paths::workspace_root();
        let abs: Vec<PathBuf> = paths.iter().map(|p| root.join(p.as_ref())).collect();
        self.copy_policies(&abs)
    }

    fn clear_policies(&self) -> Result<()> {
        let dir = self.policy_dir();
        for e in fs::read_dir(&dir)
            .map_err(|e| Error::io("listing policies/", e))?
            .flatten()
        {
            fs::remove_file(e.path())
                .map_err(|err| Error::io(format!("removing {}", e.path().display()), err))?;
        }
        Ok(())
    }

    fn copy_policies(&self, paths: &[PathBuf]) -> Result<()> {
        let dir = self.policy_dir();
        for src in paths {
            let files: Vec<PathBuf> = if src.is_dir() {
                let mut v: Vec<PathBuf> = fs::read_dir(src)
                    .map_err(|e| Error::io(format!("listing {}", src.display()), e))?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.is_file()
                            && matches!(
                                p.extension().and_then(|e| e.to_str()),
                                Some("yaml" | "yml" | "json")
                            )
                    })
                    .collect();
                v.sort();
                v
            } else {
                vec![src.clone()]
            };
            for f in files {
                // Prefix with the parent's name: antrea/payments.yaml and k8s/payments.yaml can
                // sit side by side.
                let parent = f
                    .parent()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                fs::copy(&f, dir.join(format!("{parent}-{name}")))
                    .map_err(|e| Error::io(format!("copying policy {}", f.display()), e))?;
            }
        }
        Ok(())
    }

    /// The configured vNICs (sockets relocated).
    pub fn vnics(&self) -> &[VnicInfo] {
        &self.vnics
    }

    /// A configured vNIC by name.
    pub fn vnic(&self, name: &str) -> Result<&VnicInfo> {
        self.vnics
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| Error::InvalidArgument(format!("no vNIC {name:?} in vdfwd's config")))
    }

    /// A guest for vNIC `vnic`: its socket (QEMU's role the opposite of vdfwd's), MAC, first
    /// IP with `/prefix_len`, hostname = the vNIC's VM name, IPv6 off (a quieter wire).
    pub fn guest_spec(&self, vnic: &str, prefix_len: u8) -> Result<GuestSpec> {
        let v = self.vnic(vnic)?;
        let ip = v.ips.first().ok_or_else(|| {
            Error::InvalidArgument(format!("vNIC {vnic:?} has no IP for the guest"))
        })?;
        GuestSpec::new(v.vm.clone(), &v.socket, v.mac)
            .ip(&format!("{ip}/{prefix_len}"))
            .map(|s| s.role(v.role.guest_role()).cmdline("vdfw.ipv6=0"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir_path.join("vdfwd.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir_path.join("state")
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir_path.join("policies")
    }

    /// The API's unix socket (vdfwd's default without an `[api]` section).
    pub fn api_socket(&self) -> PathBuf {
        self.state_dir().join("api.sock")
    }

    /// The address of the API's TCP listener (`[api] tcp.listen`, e.g. `127.0.0.1:0`) as
    /// bound by the current run, read from its "API listening (TCP" log line.
    pub fn api_tcp_addr(&self) -> Result<std::net::SocketAddr> {
        let log = self.log();
        let this_run = log
            .rsplit_once("=== harness: vdfwd start #")
            .map_or(log.as_str(), |(_, run)| run);
        this_run
            .lines()
            .filter(|l| l.contains("API listening (TCP"))
            .filter_map(|l| l.split_once(" addr=").map(|(_, a)| a))
            .filter_map(|a| a.split_whitespace().next()?.parse().ok())
            .next_back()
            .ok_or_else(|| Error::Vdfwd {
                message: "no \"API listening (TCP\" line in this run's log: is [api] tcp set?"
                    .into(),
                log: self.log_tail(),
            })
    }

    /// Runs `vdfwctl ARGS` against this vdfwd's API socket (`-o json` is up to the caller).
    pub fn vdfwctl(&self, args: &[&str]) -> Result<std::process::Output> {
        let bin = cargo_bin("vdfwctl")?;
        Command::new(&bin)
            .env(
                "VDFW_SERVER",
                format!("unix:{}", self.api_socket().display()),
            )
            .args(args)
            .output()
            .map_err(|e| Error::io(format!("running {}", bin.display()), e))
    }

    /// `vdfwctl -o json ARGS`, which must succeed; its stdout parsed as JSON.
    pub fn vdfwctl_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.vdfwctl(&all)?;
        if !out.status.success() {
            return Err(Error::Vdfwd {
                message: format!(
                    "vdfwctl {}: {}\n{}",
                    all.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ),
                log: self.log_tail(),
            });
        }
        serde_json::from_slice(&out.stdout).map_err(|_| Error::UnexpectedOutput {
            command: format!("vdfwctl {}", all.join(" ")),
            output: String::from_utf8_lossy(&out.stdout).into_owned(),
        })
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir_path.join("vdfwd.log")
    }

    /// Everything vdfwd logged (all starts).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        tail(&self.log(), LOG_TAIL)
    }

    /// The latest `counters.json` (rewritten by vdfwd every second).
    pub fn counters(&self) -> Result<Value> {
        let path = self.state_dir().join("counters.json");
        let text = fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        serde_json::from_str(&text).map_err(|_| Error::UnexpectedOutput {
            command: format!("cat {}", path.display()),
            output: text,
        })
    }

    /// The status object of port `name` (a vNIC name, or `uplink:<tap>`) in `counters.json`.
    pub fn port_status(&self, name: &str) -> Result<Value> {
        let c = self.counters()?;
        // Before the firewall: a bare array of ports; with it: `{"ports": [...], ...}`.
        let ports = c.get("ports").unwrap_or(&c);
        ports
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
            })
            .cloned()
            .ok_or_else(|| Error::UnexpectedOutput {
                command: format!("port {name:?} in counters.json"),
                output: c.to_string(),
            })
    }

    /// Drops of port `name` for `reason` (e.g. `spoofed_source_ip`), 0 if never counted.
    pub fn drops(&self, name: &str, reason: &str) -> Result<u64> {
        let p = self.port_status(name)?;
        Ok(p.get("drops")
            .and_then(|d| d.get(reason))
            .and_then(Value::as_u64)
            .unwrap_or(0))
    }

    /// Every non-zero drop counter of port `name`.
    pub fn all_drops(&self, name: &str) -> Result<BTreeMap<String, u64>> {
        let p = self.port_status(name)?;
        Ok(p.get("drops")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits until `counters.json` shows a new value satisfying `pred` (it is rewritten every
    /// second, so counters lag by up to a second).
    pub fn wait_counters<F: FnMut(&Value) -> bool>(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: F,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(c) = self.counters() {
                if pred(&c) {
                    return Ok(c);
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Vdfwd {
                    message: format!(
                        "counters.json: {what} not seen in {timeout:?}; last:\n{}",
                        self.counters()
                            .map(|c| serde_json::to_string_pretty(&c).unwrap_or_default())
                            .unwrap_or_else(|e| e.to_string())
                    ),
                    log: self.log_tail(),
                });
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every vNIC in `names` has a frontend attached with running rings
    /// (`connected` in `counters.json`).
    pub fn wait_connected(&self, names: &[&str], timeout: Duration) -> Result<()> {
        self.wait_counters(&format!("{names:?} connected"), timeout, |c| {
            let ports = c.get("ports").unwrap_or(c);
            names.iter().all(|n| {
                ports.as_array().is_some_and(|a| {
                    a.iter().any(|p| {
                        p.get("name").and_then(Value::as_str) == Some(*n)
                            && p.get("connected").and_then(Value::as_bool) == Some(true)
                    })
                })
            })
        })
        .map(|_| ())
    }

    /// Every record of `state/flows.jsonl` so far (lines that are not JSON are skipped: a line
    /// may be half-written while we read).
    pub fn flows(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.state_dir().join("flows.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for a flow-log record matching `pred` and returns it.
    pub fn wait_flow<F: FnMut(&Value) -> bool>(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: F,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.flows().into_iter().find(|r| pred(r)) {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                let flows = self.flows();
                let last: Vec<String> = flows
                    .iter()
                    .rev()
                    .take(30)
                    .rev()
                    .map(Value::to_string)
                    .collect();
                return Err(Error::Vdfwd {
                    message: format!(
                        "flows.jsonl: no record with {what} in {timeout:?} ({} records; last 30):\n{}",
                        flows.len(),
                        last.join("\n")
                    ),
                    log: self.log_tail(),
                });
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

fn send_signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own unreaped child,
        // so it cannot have been recycled for another process.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

impl Drop for Vdfwd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::process::stop_child(&mut child, libc::SIGTERM, Duration::from_secs(5));
        }
        if thread::panicking() {
            eprintln!(
                "--- vdfwd log tail (full log, config, state in {}) ---\n{}\n--- end of vdfwd log ---",
                self.dir_path.display(),
                self.log_tail()
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
    fn config_renders_with_relocated_paths() {
        let cfg = VdfwdConfig::new()
            .with_namespace("payments", &[("team", "pay")])
            .with_vnic(
                VnicDef::new(
                    "api",
                    "payments",
                    MacAddr::local(5),
                    "10.0.1.5".parse().unwrap(),
                )
                .label("app", "payments-api")
                .named_port("http", 8080),
            )
            .with_vnic(
                VnicDef::new(
                    "db",
                    "payments",
                    MacAddr::local(6),
                    "10.0.1.6".parse().unwrap(),
                )
                .role(VnicRole::Connect),
            )
            .with_uplink("vdfw-up0", Some("br0"));
        let text = cfg
            .render(Path::new("/s"), Path::new("/p"), Path::new("/k"))
            .unwrap();
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["state_dir"].as_str(), Some("/s"));
        assert_eq!(t["policy_dir"].as_str(), Some("/p"));
        let v = t["vnic"].as_array().unwrap();
        assert_eq!(v[0]["socket"].as_str(), Some("/k/api.sock"));
        assert_eq!(v[0]["labels"]["app"].as_str(), Some("payments-api"));
        assert_eq!(v[0]["ports"][0]["port"].as_integer(), Some(8080));
        assert_eq!(v[1]["role"].as_str(), Some("connect"));
        assert_eq!(t["uplink"]["bridge"].as_str(), Some("br0"));
        let infos = cfg.vnics(Path::new("/k")).unwrap();
        assert_eq!(infos[1].role.guest_role(), SocketRole::Server);
        assert_eq!(infos[1].mac, MacAddr::local(6));
    }

    #[test]
    fn demo_config_loads_and_relocates() {
        let cfg = VdfwdConfig::load("configs/demo/vdfwd.toml").unwrap();
        let infos = cfg.vnics(Path::new("/k")).unwrap();
        assert!(infos.len() >= 3, "{infos:?}");
        assert!(infos.iter().all(|v| v.socket.starts_with("/k")));
    }
}
