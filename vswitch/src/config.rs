//! vdfwd configuration (TOML).
//!
//! ```toml
//! state_dir = "/var/lib/vdfw"
//! policy_dir = "/etc/vdfw/policies"   # read by the dfw integration (not wired yet)
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

use crate::device::SocketRole;
use crate::mac::MacAddr;
use crate::port::{NamedPort, VnicIdentity};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where vdfwd writes its runtime state (`ports.json`, `counters.json`).
    pub state_dir: PathBuf,
    /// Directory of policy YAML/JSON files, parsed by the dfw policy engine once it is wired.
    #[serde(default)]
    pub policy_dir: Option<PathBuf>,
    #[serde(default)]
    pub uplink: Option<UplinkConfig>,
    #[serde(default, rename = "vnic")]
    pub vnics: Vec<VnicConfig>,
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

    /// Checks what serde cannot: unique names, MACs, IPs and sockets; unicast MACs.
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
            for ip in &v.ips {
                if ip.is_unspecified() || ip.is_multicast() {
                    return bad(format!("IP {ip} cannot be bound"));
                }
                if !ips.insert(*ip) {
                    return bad(format!("IP {ip} used twice"));
                }
            }
        }
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
