//! vdfwd configuration (TOML).
//!
//! ```toml
//! state_dir = "/var/lib/vdfw"
//! policy_dir = "/etc/vdfw/policies"   # *.yaml|*.yml|*.json, recursively; SIGHUP reloads
//! default_deny = false                 # drop what no rule decides, even if nothing isolates
//! audit = false                        # forward would-be drops, flag them in the flow log
//! conntrack_max_per_vnic = 65536       # connection-table size of each vNIC
//! conntrack_initial_per_vnic = 65536   # entries sized up front (default: min(max, 65536))
//! huge_pages = false                   # big tables on transparent huge pages
//! poll_threads = 0                     # >0: poll mode, N threads serve all vNICs (OVS PMD style)
//! poll_cpus = [1]                      # optional: pin poll thread i to poll_cpus[i % len]
//! poll_us = 0                          # poll mode: idle time before a poll thread sleeps (0 = never)
//!
//! [[namespace]]                        # optional: labels namespace selectors match
//! name = "shop"
//! labels = { team = "web" }
//!
//! [api]                                # optional; default: unix socket <state_dir>/api.sock
//! unix_socket = "/run/vdfw/api.sock"   # mode 0600 (root only)
//! tcp = { listen = "127.0.0.1:7443", token_file = "/etc/vdfw/token" }   # bearer token (+ tls)
//!
//! [uplink]                             # optional
//! tap = "vdfw-up0"
//! bridge = "br-vdfw"                   # optional
//!
//! [[vnic]]
//! name = "web-1-eth0"
//! socket = "/run/vdfw/web-1.sock"
//! role = "listen"                      # or "connect" (the frontend listens)
//! vm = "web-1"
//! namespace = "shop"
//! mac = "52:54:00:00:01:01"
//! ips = ["10.10.0.11", "fd00:10::11"]
//! labels = { app = "web" }
//! ports = [{ name = "http", port = 8080, protocol = "TCP" }]
//! ```
//!
//! See `configs/vdfwd.toml` for a complete example.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use api::server::{ApiConfig, TcpConfig};
use dfw::flow::IpProtocol;
use dfw::model::{Endpoint, EndpointKind, NamedPort as ModelNamedPort, Namespace};

use crate::device::SocketRole;
use crate::mac::MacAddr;
use crate::port::{NamedPort, VnicIdentity};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where vdfwd writes its runtime state (`ports.json`, `counters.json`).
    pub state_dir: PathBuf,
    /// Directory of policy files (`*.yaml`, `*.yml`, `*.json`, read recursively; hidden
    /// entries skipped). Without it no policy exists, so Kubernetes' default (allow) applies
    /// unless `default_deny` is set.
    #[serde(default)]
    pub policy_dir: Option<PathBuf>,
    /// Drop every flow no rule decides, even for endpoints no policy isolates (Kubernetes
    /// would allow them). The dfw engine's `default_deny`.
    #[serde(default)]
    pub default_deny: bool,
    /// Global audit mode: would-be drops are forwarded and logged with verdict `audit`.
    #[serde(default)]
    pub audit: bool,
    /// Connection-table entries per vNIC (each vNIC is its own conntrack zone and table).
    #[serde(default = "default_conntrack_max")]
    pub conntrack_max_per_vnic: u32,
    /// Connection-table entries sized up front (default: `conntrack_max_per_vnic`, at most
    /// 65536). Past it the table's index doubles, its keys moving over 32 per new
    /// connection; while it grows, new connections cost more (filling to 1M: ~1.2x the
    /// time) and the longest single insert is 2–13 ms at 1M entries (allocating the doubled
    /// index, freeing the old one). Set it to `conntrack_max_per_vnic` to never grow, at
    /// ~32–64 bytes of index per entry up front (entry storage is only touched as it fills).
    #[serde(default)]
    pub conntrack_initial_per_vnic: Option<u32>,
    /// Back large tables (connection tracking) with transparent huge pages
    /// (`madvise(MADV_HUGEPAGE)`, see [`crate::huge_alloc`]): fewer TLB misses per lookup in
    /// big tables (1M concurrent flows: 1.12x the packet rate), but the kernel may compact
    /// memory when a growing table faults in a huge page (new connections/s: 0.82x), and a
    /// table can hold up to 2 MiB more resident memory. Off by default.
    #[serde(default)]
    pub huge_pages: bool,
    /// Poll mode (0 = off, the default: each vNIC has an event-driven worker). With N > 0,
    /// N threads busy-poll the rings of all vNICs, like OVS-DPDK's PMD threads: higher packet
    /// rate and lower latency, at the price of spinning cores. See [`crate::device::poller`].
    #[serde(default)]
    pub poll_threads: u32,
    /// CPUs the poll threads are pinned to (thread `i` to `poll_cpus[i % len]`); empty: not
    /// pinned.
    #[serde(default)]
    pub poll_cpus: Vec<usize>,
    /// Poll mode: microseconds without traffic after which a poll thread re-arms the guests'
    /// notifications and sleeps until one kicks (0 = never sleep: a dedicated core).
    #[serde(default)]
    pub poll_us: u32,
    /// Namespaces and their labels (what `namespaceSelector`s match). A vNIC's namespace that
    /// is not listed still exists, with only its implied `kubernetes.io/metadata.name` label.
    #[serde(default, rename = "namespace")]
    pub namespaces: Vec<NamespaceConfig>,
    #[serde(default)]
    pub uplink: Option<UplinkConfig>,
    /// The REST + gRPC API. Without this section it listens only on `<state_dir>/api.sock`
    /// (mode 0600: root only); see [`Config::api_config`].
    #[serde(default)]
    pub api: Option<ApiSection>,
    #[serde(default, rename = "vnic")]
    pub vnics: Vec<VnicConfig>,
}

/// Default of [`Config::conntrack_max_per_vnic`].
pub const DEFAULT_CONNTRACK_MAX: u32 = 1 << 16;

fn default_conntrack_max() -> u32 {
    DEFAULT_CONNTRACK_MAX
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `[api]`: where the REST + gRPC API listens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// The unix socket (mode 0600); default `<state_dir>/api.sock`.
    #[serde(default)]
    pub unix_socket: Option<PathBuf>,
    /// An optional TCP listener (bearer token required; TLS / mutual TLS optional).
    #[serde(default)]
    pub tcp: Option<TcpConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// TAP device name (created by vdfwd).
    pub tap: String,
    /// Linux bridge to attach the TAP to.
    #[serde(default)]
    pub bridge: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VnicConfig {
    pub name: String,
    /// vhost-user socket path.
    pub socket: PathBuf,
    #[serde(default = "default_role")]
    pub role: SocketRole,
    pub vm: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub mac: MacAddr,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub ports: Vec<NamedPort>,
}

fn default_role() -> SocketRole {
    SocketRole::Listen
}

fn default_namespace() -> String {
    "default".to_owned()
}

impl VnicConfig {
    pub fn identity(&self) -> VnicIdentity {
        VnicIdentity {
            name: self.name.clone(),
            vm: self.vm.clone(),
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            named_ports: self.ports.clone(),
        }
    }

    /// The policy engine's view of this vNIC: a `vm` endpoint named after the vNIC, in its
    /// namespace, with its labels, addresses, MAC and named ports.
    pub fn endpoint(&self) -> Result<Endpoint, ConfigError> {
        let mut named_ports = BTreeMap::new();
        for p in &self.ports {
            let protocol = named_port_protocol(&p.protocol).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "vnic {:?}: port {:?}: protocol {:?} is not TCP, UDP or SCTP",
                    self.name, p.name, p.protocol
                ))
            })?;
            let np = ModelNamedPort {
                port: p.port,
                protocol,
            };
            if named_ports.insert(p.name.clone(), np).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "vnic {:?}: port name {:?} used twice",
                    self.name, p.name
                )));
            }
        }
        Ok(Endpoint {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            kind: EndpointKind::Vm,
            labels: self.labels.clone(),
            ips: self.ips.clone(),
            mac: Some(self.mac.octets()),
            named_ports,
        })
    }
}

fn named_port_protocol(p: &str) -> Option<IpProtocol> {
    match p.to_ascii_uppercase().as_str() {
        "TCP" => Some(IpProtocol::Tcp),
        "UDP" => Some(IpProtocol::Udp),
        "SCTP" => Some(IpProtocol::Sctp),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Poll mode settings: a sane thread count, and pinning only to CPUs this host has and
    /// only with poll threads to pin.
    fn validate_poll(&self) -> Result<(), ConfigError> {
        const MAX_POLL_THREADS: u32 = 64;
        if self.poll_threads > MAX_POLL_THREADS {
            return Err(ConfigError::Invalid(format!(
                "poll_threads {} must be 0..={MAX_POLL_THREADS}",
                self.poll_threads
            )));
        }
        if self.poll_threads == 0 && !self.poll_cpus.is_empty() {
            return Err(ConfigError::Invalid(
                "poll_cpus is set but poll_threads is 0 (poll mode off)".into(),
            ));
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: sysconf has no preconditions; -1 (unknown) falls back to the count above.
        let configured = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
        let cpus = usize::try_from(configured).unwrap_or(cpus).max(cpus);
        if let Some(bad) = self.poll_cpus.iter().find(|c| **c >= cpus) {
            return Err(ConfigError::Invalid(format!(
                "poll_cpus: CPU {bad} does not exist (this host has CPUs 0..={})",
                cpus - 1
            )));
        }
        Ok(())
    }

    /// The poll-mode settings, if poll mode is on.
    pub fn poll_config(&self) -> Option<crate::device::PollConfig> {
        (self.poll_threads > 0).then(|| crate::device::PollConfig {
            threads: self.poll_threads as usize,
            cpus: self.poll_cpus.clone(),
            idle: std::time::Duration::from_micros(self.poll_us.into()),
        })
    }

    /// The API listeners in effect: the `[api]` section, or the unix socket
    /// `<state_dir>/api.sock` alone.
    pub fn api_config(&self) -> ApiConfig {
        let section = self.api.clone().unwrap_or_default();
        ApiConfig {
            unix_socket: section
                .unix_socket
                .unwrap_or_else(|| self.state_dir.join("api.sock")),
            tcp: section.tcp,
        }
    }

    /// The namespaces as the policy engine takes them.
    pub fn model_namespaces(&self) -> Vec<Namespace> {
        self.namespaces
            .iter()
            .map(|n| Namespace {
                name: n.name.clone(),
                labels: n.labels.clone(),
            })
            .collect()
    }

    /// Checks what serde cannot: unique names, MACs, IPs and sockets; unicast MACs; named
    /// ports; unique namespaces.
    /// Connection-table entries each vNIC's table is sized for up front.
    pub fn conntrack_initial(&self) -> u32 {
        self.conntrack_initial_per_vnic
            .unwrap_or(self.conntrack_max_per_vnic.min(1 << 16))
            .min(self.conntrack_max_per_vnic)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        let mut macs = HashSet::new();
        let mut ips = HashSet::new();
        let mut socks = HashSet::new();
        for v in &self.vnics {
            let bad =
                |what: String| Err(ConfigError::Invalid(format!("vnic {:?}: {what}", v.name)));
            if v.name.is_empty() {
                return bad("empty name".into());
            }
            if !names.insert(&v.name) {
                return bad("duplicate name".into());
            }
            if !v.mac.is_valid_unicast() {
                return bad(format!("MAC {} is not unicast", v.mac));
            }
            if !macs.insert(v.mac) {
                return bad(format!("MAC {} used twice", v.mac));
            }
            if !socks.insert(&v.socket) {
                return bad(format!("socket {} used twice", v.socket.display()));
            }
            if v.namespace.is_empty() {
                return bad("empty namespace".into());
            }
            v.endpoint()?;
            for ip in &v.ips {
                if ip.is_unspecified() || ip.is_multicast() {
                    return bad(format!("IP {ip} cannot be bound"));
                }
                if !ips.insert(*ip) {
                    return bad(format!("IP {ip} used twice"));
                }
            }
        }
        let mut namespaces = HashSet::new();
        for n in &self.namespaces {
            if n.name.is_empty() || !namespaces.insert(&n.name) {
                return Err(ConfigError::Invalid(format!(
                    "namespace {:?}: empty or declared twice",
                    n.name
                )));
            }
        }
        if self.conntrack_max_per_vnic == 0
            || self.conntrack_max_per_vnic > dfw::conntrack::MAX_TABLE_ENTRIES
        {
            return Err(ConfigError::Invalid(format!(
                "conntrack_max_per_vnic {} must be 1..={}",
                self.conntrack_max_per_vnic,
                dfw::conntrack::MAX_TABLE_ENTRIES
            )));
        }
        if let Some(n) = self.conntrack_initial_per_vnic {
            if n == 0 || n > self.conntrack_max_per_vnic {
                return Err(ConfigError::Invalid(format!(
                    "conntrack_initial_per_vnic {n} must be 1..=conntrack_max_per_vnic ({})",
                    self.conntrack_max_per_vnic
                )));
            }
        }
        self.validate_poll()?;
        if let Some(u) = &self.uplink {
            if u.tap.is_empty() || u.tap.len() > 15 {
                return Err(ConfigError::Invalid(format!(
                    "uplink tap name {:?} must be 1-15 bytes",
                    u.tap
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/vdfwd.toml");
        let cfg = Config::load(&path).unwrap();
        assert!(cfg.vnics.len() >= 2);
        assert!(cfg.policy_dir.is_some());
        let v = &cfg.vnics[0];
        assert_eq!(v.identity().name, v.name);
        assert!(!v.ips.is_empty());
        assert_eq!(cfg.namespaces[0].name, "shop");
        assert_eq!(cfg.conntrack_max_per_vnic, 65536);
        let e = v.endpoint().unwrap();
        assert_eq!(e.named_ports["http"].port, 8080);
        assert_eq!(e.mac, Some(v.mac.octets()));
    }

    #[test]
    fn the_api_socket_defaults_to_the_state_dir() {
        let base = "state_dir = \"/tmp/x\"\n";
        let c: Config = toml::from_str(base).unwrap();
        assert_eq!(c.api_config().unix_socket, Path::new("/tmp/x/api.sock"));
        let c: Config = toml::from_str(&format!(
            "{base}[api.tcp]\nlisten = \"127.0.0.1:7443\"\ntoken = \"t\"\n"
        ))
        .unwrap();
        assert_eq!(c.api_config().unix_socket, Path::new("/tmp/x/api.sock"));
        assert!(c.api_config().tcp.is_some());
        let c: Config = toml::from_str(&format!(
            "{base}[api]\nunix_socket = \"/run/vdfw/api.sock\"\n"
        ))
        .unwrap();
        assert_eq!(c.api_config().unix_socket, Path::new("/run/vdfw/api.sock"));
    }

    #[test]
    fn poll_mode_keys_are_checked() {
        let parse = |extra: &str| -> Config {
            toml::from_str(&format!("state_dir = \"/tmp/x\"\n{extra}")).unwrap()
        };
        let off = parse("");
        off.validate().unwrap();
        assert!(off.poll_config().is_none(), "poll mode is off by default");
        let on = parse("poll_threads = 2\npoll_cpus = [0]\npoll_us = 50\n");
        on.validate().unwrap();
        let p = on.poll_config().unwrap();
        assert_eq!((p.threads, p.cpus, p.idle.as_micros()), (2, vec![0], 50));
        let err = |extra: &str| parse(extra).validate().unwrap_err().to_string();
        assert!(err("poll_cpus = [0]\n").contains("poll_threads is 0"));
        assert!(err("poll_threads = 1\npoll_cpus = [100000]\n").contains("CPU 100000"));
        assert!(err("poll_threads = 1000\n").contains("poll_threads 1000"));
    }

    #[test]
    fn firewall_keys_and_their_defaults() {
        let base = "state_dir = \"/tmp/x\"\n";
        let c: Config = toml::from_str(base).unwrap();
        assert!(!c.default_deny && !c.audit && c.namespaces.is_empty());
        assert_eq!(c.conntrack_max_per_vnic, DEFAULT_CONNTRACK_MAX);
        assert!(!c.huge_pages);
        let c: Config = toml::from_str(&format!("{base}huge_pages = true\n")).unwrap();
        assert!(c.huge_pages);
        let c: Config = toml::from_str(&format!(
            "{base}default_deny = true\naudit = true\n[[namespace]]\nname = \"a\"\nlabels = {{ t = \"x\" }}\n"
        ))
        .unwrap();
        c.validate().unwrap();
        assert!(c.default_deny && c.audit);
        assert_eq!(c.model_namespaces()[0].labels["t"], "x");
        let dup: Config = toml::from_str(&format!(
            "{base}[[namespace]]\nname = \"a\"\n[[namespace]]\nname = \"a\"\n"
        ))
        .unwrap();
        assert!(dup.validate().is_err());
        let zero: Config = toml::from_str(&format!("{base}conntrack_max_per_vnic = 0\n")).unwrap();
        assert!(zero.validate().is_err());
        assert_eq!(c.conntrack_initial_per_vnic, None);
        assert_eq!(c.conntrack_initial(), 1 << 16);
        let initial = |n: u32| {
            toml::from_str::<Config>(&format!(
                "{base}conntrack_max_per_vnic = 100000\nconntrack_initial_per_vnic = {n}\n"
            ))
            .unwrap()
        };
        initial(100000).validate().unwrap();
        assert_eq!(initial(100000).conntrack_initial(), 100000);
        let err = initial(100001).validate().unwrap_err().to_string();
        assert!(err.contains("conntrack_initial_per_vnic 100001"), "{err}");
        assert!(initial(0).validate().is_err());
        let bad_proto: Config = toml::from_str(&format!(
            "{base}[[vnic]]\nname = \"a\"\nsocket = \"/tmp/a\"\nvm = \"a\"\nmac = \"52:54:00:00:00:01\"\nports = [{{ name = \"x\", port = 1, protocol = \"ICMP\" }}]\n"
        ))
        .unwrap();
        assert!(bad_proto
            .validate()
            .unwrap_err()
            .to_string()
            .contains("ICMP"));
    }

    #[test]
    fn duplicates_and_bad_values_are_refused() {
        let base = r#"
            state_dir = "/tmp/x"
            [[vnic]]
            name = "a"
            socket = "/tmp/a.sock"
            vm = "vm-a"
            mac = "52:54:00:00:00:01"
            ips = ["10.0.0.1"]
        "#;
        let ok: Config = toml::from_str(base).unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.vnics[0].role, SocketRole::Listen);
        assert_eq!(ok.vnics[0].namespace, "default");

        let dup_ip = format!(
            "{base}\n[[vnic]]\nname = \"b\"\nsocket = \"/tmp/b.sock\"\nvm = \"vm-b\"\nmac = \"52:54:00:00:00:02\"\nips = [\"10.0.0.1\"]\n"
        );
        let c: Config = toml::from_str(&dup_ip).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("10.0.0.1"));

        let mcast = base.replace("52:54:00:00:00:01", "01:00:5e:00:00:01");
        let c: Config = toml::from_str(&mcast).unwrap();
        assert!(c.validate().is_err());

        assert!(toml::from_str::<Config>(&format!("{base}\nbogus = 1\n")).is_err());
        assert!(toml::from_str::<Config>(&base.replace("52:54:00:00:00:01", "nonsense")).is_err());
        let connect: Config =
            toml::from_str(&base.replace("vm = \"vm-a\"", "vm = \"vm-a\"\nrole = \"connect\""))
                .unwrap();
        assert_eq!(connect.vnics[0].role, SocketRole::Connect);
    }
}
