//! libvirt integration: `vdfwctl libvirt-hook`, run by libvirt's qemu hook
//! (`/etc/libvirt/hooks/qemu NAME OP SUBOP EXTRA`, the domain XML on stdin).
//!
//! A domain opts in by carrying one `<vdfw:vm>` element (namespace [`XMLNS`]) in its
//! `<metadata>` — libvirt keeps one top-level element per custom namespace, so everything vdfw
//! needs lives under that one element:
//!
//! ```xml
//! <metadata>
//!   <vdfw:vm xmlns:vdfw="https://vdfw.io/libvirt/1" namespace="prod">
//!     <vdfw:label key="env" value="prod"/>                  <!-- every vNIC of the VM -->
//!     <vdfw:vnic mac="52:54:00:00:00:10" ips="10.0.0.5" name="web-1">
//!       <vdfw:label key="app" value="web"/>                 <!-- this vNIC only -->
//!       <vdfw:port name="http" port="8080" protocol="TCP"/>
//!     </vdfw:vnic>
//!   </vdfw:vm>
//! </metadata>
//! ```
//!
//! Every `<interface type='vhostuser'>` of such a domain becomes one endpoint: its MAC and
//! socket come from the interface (libvirt `mode='client'`, QEMU connects, is vdfwd role
//! `server`; `mode='server'` is role `client`), its name, IPs, labels and named ports from the
//! `<vdfw:vnic>` with the same MAC (name default: `<domain>-net<N>`, N the interface's position
//! among the domain's interfaces, as in libvirt's `netN` aliases), its namespace from the vNIC
//! or else the VM. Domains without `<vdfw:vm>` are not vdfw's: the hook leaves them alone.
//!
//! Anything vdfw does not understand inside `<vdfw:vm>` is an error rather than ignored: a
//! misspelt label element would otherwise start a VM under a policy it was not meant to get.
//! [`plan`] is pure (XML in, endpoints out); [`run_hook`] talks to vdfwd.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use dfw::flow::IpProtocol;
use dfw::model::{EndpointKey, Labels, NamedPort};
use hyper::{Method, StatusCode};
use roxmltree::{Document, Node};

use crate::client::{encode, Client, ClientError};
use crate::controller::{validate_name, MutationReport};
use crate::types::{EndpointSpec, MacAddr, SocketRole, VnicSocket};

/// The XML namespace of vdfw's libvirt metadata (a name, never fetched).
pub const XMLNS: &str = "https://vdfw.io/libvirt/1";

/// What a hook invocation does, by libvirt's `OP SUBOP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAction {
    /// `prepare begin`: before QEMU starts (also on a migration's destination). A failure
    /// makes libvirt refuse to start the domain: this is where the hook fails closed.
    Register,
    /// `stopped end` and `release end`: QEMU is gone. Both come for one shutdown, so removal
    /// must tolerate endpoints that are already gone.
    Unregister,
    /// Everything else (`start`, `started`, `migrate`, `restore`, `reconnect`, ...). Nothing
    /// is printed: for `migrate`/`restore`/`save` libvirt reads the hook's stdout as a
    /// replacement XML, and empty output means "unchanged".
    Ignore,
}

impl HookAction {
    pub fn of(op: &str, subop: &str) -> HookAction {
        match (op, subop) {
            ("prepare", "begin") => HookAction::Register,
            ("stopped", "end") | ("release", "end") => HookAction::Unregister,
            _ => HookAction::Ignore,
        }
    }
}

/// Why a domain XML cannot be turned into endpoints.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the domain XML does not parse: {0}")]
    Xml(#[from] roxmltree::Error),
    #[error("the root element is <{0}>, not <domain>")]
    NotADomain(String),
    #[error("the domain has no <name>")]
    NoName,
    #[error("domain {domain}: interface {index} (vhostuser): {reason}")]
    Interface {
        domain: String,
        index: usize,
        reason: String,
    },
    #[error("domain {domain}: vdfw metadata: {reason}")]
    Metadata { domain: String, reason: String },
}

/// The endpoints of one vdfw-managed domain, in interface order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPlan {
    pub domain: String,
    pub endpoints: Vec<EndpointSpec>,
}

/// One `<vdfw:vnic>`: what the operator declared for the interface with this MAC.
#[derive(Debug, Default)]
struct VnicMeta {
    name: Option<String>,
    namespace: Option<String>,
    ips: Vec<IpAddr>,
    labels: Labels,
    named_ports: BTreeMap<String, NamedPort>,
    used: bool,
}

/// `<vdfw:vm>`: VM-wide defaults and the per-vNIC declarations.
#[derive(Debug)]
struct VmMeta {
    namespace: Option<String>,
    labels: Labels,
    vnics: Vec<(MacAddr, VnicMeta)>,
}

fn is_vdfw(n: &Node, local: &str) -> bool {
    n.is_element() && n.tag_name().namespace() == Some(XMLNS) && n.tag_name().name() == local
}

fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().namespace().is_none() && c.has_tag_name(name))
}

/// Reads a domain XML. `Ok(None)`: the domain has no `<vdfw:vm>` and is not vdfw's.
pub fn plan(xml: &str) -> Result<Option<DomainPlan>, PlanError> {
    // roxmltree refuses DTDs by default, so no entity expansion from a hostile XML.
    let doc = Document::parse(xml)?;
    let root = doc.root_element();
    if !root.has_tag_name("domain") {
        return Err(PlanError::NotADomain(root.tag_name().name().to_string()));
    }
    let domain = child(root, "name")
        .and_then(|n| n.text())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(PlanError::NoName)?
        .to_string();
    let meta_err = |reason: String| PlanError::Metadata {
        domain: domain.clone(),
        reason,
    };
    let mut vms = child(root, "metadata")
        .into_iter()
        .flat_map(|m| m.children())
        .filter(|n| n.is_element() && n.tag_name().namespace() == Some(XMLNS));
    let Some(vm_node) = vms.next() else {
        return Ok(None);
    };
    if !is_vdfw(&vm_node, "vm") {
        return Err(meta_err(format!(
            "<{}> in <metadata>: put vdfw elements inside the one <vdfw:vm xmlns:vdfw=\"{XMLNS}\">",
            vm_node.tag_name().name()
        )));
    }
    if vms.next().is_some() {
        return Err(meta_err(
            "more than one vdfw element in <metadata>: keep one <vdfw:vm>".into(),
        ));
    }
    let mut vm = parse_vm(vm_node).map_err(meta_err)?;

    let mut endpoints = Vec::new();
    let interfaces = child(root, "devices")
        .into_iter()
        .flat_map(|d| d.children())
        .filter(|n| n.is_element() && n.has_tag_name("interface"));
    for (index, iface) in interfaces.enumerate() {
        if iface.attribute("type") != Some("vhostuser") {
            continue;
        }
        let if_err = |reason: String| PlanError::Interface {
            domain: domain.clone(),
            index,
            reason,
        };
        let mac_text = child(iface, "mac")
            .and_then(|m| m.attribute("address"))
            .ok_or_else(|| if_err("no <mac address=...> (vdfwd binds the vNIC to it)".into()))?;
        let mac: MacAddr = mac_text.parse().map_err(|e| if_err(format!("{e}")))?;
        let source = child(iface, "source")
            .ok_or_else(|| if_err("no <source type='unix' path=... mode=...>".into()))?;
        if source.attribute("type").is_some_and(|t| t != "unix") {
            return Err(if_err(format!(
                "source type {:?}: only unix sockets are supported",
                source.attribute("type").unwrap_or_default()
            )));
        }
        let path = source
            .attribute("path")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .ok_or_else(|| if_err("the source needs an absolute socket path".into()))?;
        // libvirt's mode is QEMU's side; vdfwd takes the other one.
        let role = match source.attribute("mode") {
            Some("client") => SocketRole::Server,
            Some("server") => SocketRole::Client,
            other => {
                return Err(if_err(format!(
                    "source mode {other:?}: write mode='client' (vdfwd listens) or mode='server' (vdfwd connects)"
                )))
            }
        };
        let meta = vm.vnics.iter_mut().find(|(m, _)| *m == mac).map(|(_, v)| v);
        let (name, namespace, ips, labels, named_ports) = match meta {
            Some(v) => {
                v.used = true;
                let mut labels = vm.labels.clone();
                labels.extend(v.labels.clone());
                (
                    v.name.clone(),
                    v.namespace.clone(),
                    v.ips.clone(),
                    labels,
                    v.named_ports.clone(),
                )
            }
            None => (None, None, Vec::new(), vm.labels.clone(), BTreeMap::new()),
        };
        let explicit = name.is_some();
        let name = name.unwrap_or_else(|| format!("{domain}-net{index}"));
        validate_name("endpoint name", &name).map_err(|e| {
            if_err(if explicit {
                e.to_string()
            } else {
                format!("{e}; give the vNIC a name: <vdfw:vnic mac='{mac}' name='...'>")
            })
        })?;
        let namespace = namespace.or_else(|| vm.namespace.clone()).ok_or_else(|| {
            if_err(format!(
                "no namespace: set <vdfw:vm namespace='...'> or <vdfw:vnic mac='{mac}' namespace='...'>"
            ))
        })?;
        validate_name("namespace", &namespace).map_err(|e| if_err(e.to_string()))?;
        endpoints.push(EndpointSpec {
            name,
            namespace,
            labels,
            mac: Some(mac),
            ips,
            named_ports,
            socket: Some(VnicSocket { path, role }),
        });
    }
    if let Some((mac, _)) = vm.vnics.iter().find(|(_, v)| !v.used) {
        return Err(meta_err(format!(
            "<vdfw:vnic mac='{mac}'> matches no <interface type='vhostuser'> of the domain"
        )));
    }
    if endpoints.is_empty() {
        return Err(meta_err(
            "the domain has <vdfw:vm> but no <interface type='vhostuser'>".into(),
        ));
    }
    let mut seen = BTreeMap::new();
    for e in &endpoints {
        if let Some(prev) = seen.insert(e.key(), e.mac) {
            return Err(meta_err(format!(
                "two vNICs are named {} ({} and {}): give them distinct names",
                e.key(),
                prev.map(|m| m.to_string()).unwrap_or_default(),
                e.mac.map(|m| m.to_string()).unwrap_or_default()
            )));
        }
    }
    Ok(Some(DomainPlan { domain, endpoints }))
}

fn required<'a>(n: &Node<'a, '_>, attr: &str) -> Result<&'a str, String> {
    n.attribute(attr).ok_or_else(|| {
        format!(
            "<vdfw:{}> needs the attribute {attr:?}",
            n.tag_name().name()
        )
    })
}

fn parse_label(n: &Node, labels: &mut Labels) -> Result<(), String> {
    let key = required(n, "key")?;
    let value = required(n, "value")?;
    if key.is_empty() {
        return Err("<vdfw:label> with an empty key".into());
    }
    if labels.insert(key.to_string(), value.to_string()).is_some() {
        return Err(format!("label {key:?} given twice"));
    }
    Ok(())
}

fn parse_port(n: &Node, ports: &mut BTreeMap<String, NamedPort>) -> Result<(), String> {
    let name = required(n, "name")?;
    let port_text = required(n, "port")?;
    let port: u16 = port_text
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("named port {name:?}: bad port {port_text:?}"))?;
    let protocol = match n.attribute("protocol").unwrap_or("TCP") {
        p if p.eq_ignore_ascii_case("tcp") => IpProtocol::Tcp,
        p if p.eq_ignore_ascii_case("udp") => IpProtocol::Udp,
        p if p.eq_ignore_ascii_case("sctp") => IpProtocol::Sctp,
        other => {
            return Err(format!(
                "named port {name:?}: protocol {other:?} (TCP, UDP or SCTP)"
            ))
        }
    };
    if ports
        .insert(name.to_string(), NamedPort { port, protocol })
        .is_some()
    {
        return Err(format!("named port {name:?} given twice"));
    }
    Ok(())
}

fn parse_ips(text: &str) -> Result<Vec<IpAddr>, String> {
    text.split([',', ' ', '\t', '\n'])
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("bad IP address {s:?} in ips (write ips='10.0.0.5,fd00::5')"))
        })
        .collect()
}

/// Only vdfw-namespace elements are read; anything else inside (comments, other tools'
/// elements) is skipped. Unknown vdfw elements and attributes are errors.
fn check_attributes(n: &Node, allowed: &[&str]) -> Result<(), String> {
    for a in n.attributes() {
        if a.namespace().is_none() && !allowed.contains(&a.name()) {
            return Err(format!(
                "<vdfw:{}> has an unknown attribute {:?} (known: {})",
                n.tag_name().name(),
                a.name(),
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

fn vdfw_children<'a, 'i>(n: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children()
        .filter(|c| c.is_element() && c.tag_name().namespace() == Some(XMLNS))
}

fn parse_vm(vm: Node) -> Result<VmMeta, String> {
    check_attributes(&vm, &["namespace"])?;
    let mut out = VmMeta {
        namespace: vm.attribute("namespace").map(str::to_string),
        labels: Labels::new(),
        vnics: Vec::new(),
    };
    for c in vdfw_children(vm) {
        match c.tag_name().name() {
            "label" => {
                check_attributes(&c, &["key", "value"])?;
                parse_label(&c, &mut out.labels)?;
            }
            "vnic" => {
                check_attributes(&c, &["mac", "name", "namespace", "ips"])?;
                let mac_text = required(&c, "mac")?;
                let mac: MacAddr = mac_text.parse().map_err(|e| format!("<vdfw:vnic>: {e}"))?;
                if out.vnics.iter().any(|(m, _)| *m == mac) {
                    return Err(format!("two <vdfw:vnic> elements for MAC {mac}"));
                }
                let mut v = VnicMeta {
                    name: c.attribute("name").map(str::to_string),
                    namespace: c.attribute("namespace").map(str::to_string),
                    ips: parse_ips(c.attribute("ips").unwrap_or_default())?,
                    ..VnicMeta::default()
                };
                for g in vdfw_children(c) {
                    match g.tag_name().name() {
                        "label" => {
                            check_attributes(&g, &["key", "value"])?;
                            parse_label(&g, &mut v.labels)?;
                        }
                        "port" => {
                            check_attributes(&g, &["name", "port", "protocol"])?;
                            parse_port(&g, &mut v.named_ports)?;
                        }
                        other => {
                            return Err(format!(
                                "unknown element <vdfw:{other}> in <vdfw:vnic> (known: label, port)"
                            ))
                        }
                    }
                }
                out.vnics.push((mac, v));
            }
            other => {
                return Err(format!(
                    "unknown element <vdfw:{other}> in <vdfw:vm> (known: label, vnic)"
                ))
            }
        }
    }
    Ok(out)
}

/// Why the hook failed. Each message starts with what libvirt will do about it, because libvirt
/// shows it verbatim to whoever ran `virsh start`.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("vdfw: refusing to start domain {domain}: {source}")]
    Plan {
        domain: String,
        #[source]
        source: PlanError,
    },
    #[error("vdfw: refusing to start domain {domain}: registering endpoint {endpoint} with vdfwd failed: {source}")]
    Register {
        domain: String,
        endpoint: EndpointKey,
        #[source]
        source: ClientError,
    },
    #[error(
        "vdfw: refusing to start domain {domain}: asking vdfwd for its endpoints failed: {source}"
    )]
    List {
        domain: String,
        #[source]
        source: ClientError,
    },
    #[error("vdfw: refusing to start domain {domain}: endpoint {endpoint} is already registered with MAC {other_mac}, not this domain's {mac} (another VM's vNIC? give this one another name)")]
    Taken {
        domain: String,
        endpoint: EndpointKey,
        mac: String,
        other_mac: String,
    },
    #[error("vdfw: domain {domain} stopped, but removing its endpoints from vdfwd failed: {}", .failures.join("; "))]
    Unregister {
        domain: String,
        failures: Vec<String>,
    },
}

/// What a successful hook run did, for vdfwctl to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Not a vdfw domain, or an operation the hook does not act on.
    Nothing,
    Registered(Vec<EndpointKey>),
    /// Endpoints removed; ones already gone (the second of `stopped`/`release`) are not listed.
    /// `foreign`: endpoints of this domain's names now registered with another MAC (another VM
    /// took the name after this one stopped), left alone.
    Unregistered {
        removed: Vec<EndpointKey>,
        foreign: Vec<EndpointKey>,
    },
}

fn mac_text(m: Option<MacAddr>) -> String {
    m.map_or_else(|| "none".to_string(), |m| m.to_string())
}

async fn delete_endpoint(client: &Client, key: &EndpointKey) -> Result<bool, ClientError> {
    let path = format!(
        "/v1/endpoints/{}/{}",
        encode(&key.namespace),
        encode(&key.name)
    );
    match client
        .call::<MutationReport>(Method::DELETE, &path, None::<&()>)
        .await
    {
        Ok(_) => Ok(true),
        Err(ClientError::Api { status, .. }) if status == StatusCode::NOT_FOUND => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs the hook for `domain OP SUBOP` with the domain XML libvirt passed on stdin.
///
/// Register is all or nothing: if one vNIC is refused, the ones this run registered are removed
/// again (best effort) before the error is returned, so a refused domain leaves no endpoint behind.
pub async fn run_hook(
    client: &Client,
    domain: &str,
    op: &str,
    subop: &str,
    xml: &str,
) -> Result<HookOutcome, HookError> {
    let action = HookAction::of(op, subop);
    if action == HookAction::Ignore {
        return Ok(HookOutcome::Nothing);
    }
    let plan = match plan(xml) {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(HookOutcome::Nothing),
        Err(source) if action == HookAction::Register => {
            return Err(HookError::Plan {
                domain: domain.to_string(),
                source,
            })
        }
        Err(source) => {
            return Err(HookError::Unregister {
                domain: domain.to_string(),
                failures: vec![source.to_string()],
            })
        }
    };
    // An endpoint is this domain's when it carries the MAC of this domain's interface (vdfwd
    // refuses one MAC on two endpoints). A PUT is an upsert, so without this check a domain
    // reusing another VM's vNIC name would silently take over its identity, and its `release`
    // would delete the other VM's endpoint. (GET then PUT is not atomic: two domains racing for
    // one name at the same moment are not caught.)
    let registered: Vec<EndpointSpec> = match client.get("/v1/endpoints").await {
        Ok(list) => list,
        Err(source) => {
            return Err(match action {
                HookAction::Register => HookError::List {
                    domain: plan.domain,
                    source,
                },
                _ => HookError::Unregister {
                    domain: plan.domain,
                    failures: vec![source.to_string()],
                },
            });
        }
    };
    let holder = |spec: &EndpointSpec| registered.iter().find(|r| r.key() == spec.key());
    match action {
        HookAction::Register => {
            if let Some((spec, other)) = plan
                .endpoints
                .iter()
                .find_map(|s| holder(s).filter(|r| r.mac != s.mac).map(|r| (s, r)))
            {
                return Err(HookError::Taken {
                    domain: plan.domain.clone(),
                    endpoint: spec.key(),
                    mac: mac_text(spec.mac),
                    other_mac: mac_text(other.mac),
                });
            }
            let mut done = Vec::new();
            for spec in &plan.endpoints {
                let key = spec.key();
                if let Err(source) = client
                    .call::<MutationReport>(Method::PUT, "/v1/endpoints", Some(spec))
                    .await
                {
                    for k in done.iter().rev() {
                        let _ = delete_endpoint(client, k).await;
                    }
                    return Err(HookError::Register {
                        domain: plan.domain,
                        endpoint: key,
                        source,
                    });
                }
                done.push(key);
            }
            Ok(HookOutcome::Registered(done))
        }
        HookAction::Unregister | HookAction::Ignore => {
            let mut removed = Vec::new();
            let mut foreign = Vec::new();
            let mut failures = Vec::new();
            // Every endpoint is tried, even after a failure: leave as little behind as possible.
            for spec in &plan.endpoints {
                let key = spec.key();
                match holder(spec) {
                    None => continue,
                    Some(r) if r.mac != spec.mac => {
                        foreign.push(key);
                        continue;
                    }
                    Some(_) => {}
                }
                match delete_endpoint(client, &key).await {
                    Ok(true) => removed.push(key),
                    Ok(false) => {}
                    Err(e) => failures.push(format!("{key}: {e}")),
                }
            }
            if failures.is_empty() {
                Ok(HookOutcome::Unregistered { removed, foreign })
            } else {
                Err(HookError::Unregister {
                    domain: plan.domain,
                    failures,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(metadata: &str, interfaces: &str) -> String {
        format!(
            r#"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web1</name>
  <uuid>0b7c8a1e-3c1f-4f8e-9d7a-2f0f1c2d3e4f</uuid>
  <metadata>{metadata}</metadata>
  <memory unit='MiB'>256</memory>
  <devices>
    <interface type='network'><mac address='52:54:00:aa:00:01'/><source network='default'/></interface>
    {interfaces}
  </devices>
</domain>"#
        )
    }

    const VHOST_CLIENT: &str = r#"<interface type='vhostuser'>
      <mac address='52:54:00:00:00:10'/>
      <source type='unix' path='/run/vdfw/web1.sock' mode='client'/>
      <model type='virtio'/>
    </interface>"#;

    const VHOST_SERVER: &str = r#"<interface type='vhostuser'>
      <mac address='52:54:00:00:00:11'/>
      <source type='unix' path='/run/vdfw/web1-b.sock' mode='server'/>
    </interface>"#;

    fn vm(inner: &str) -> String {
        format!(
            r#"<vdfw:vm xmlns:vdfw='https://vdfw.io/libvirt/1' namespace='prod'>{inner}</vdfw:vm>"#
        )
    }

    fn plan_ok(xml: &str) -> DomainPlan {
        plan(xml).unwrap().expect("a vdfw domain")
    }

    fn plan_err(xml: &str) -> String {
        plan(xml).unwrap_err().to_string()
    }

    #[test]
    fn actions_by_operation() {
        assert_eq!(HookAction::of("prepare", "begin"), HookAction::Register);
        assert_eq!(HookAction::of("stopped", "end"), HookAction::Unregister);
        assert_eq!(HookAction::of("release", "end"), HookAction::Unregister);
        for (op, sub) in [
            ("start", "begin"),
            ("started", "begin"),
            ("migrate", "begin"),
            ("restore", "begin"),
            ("reconnect", "begin"),
            ("prepare", "end"),
        ] {
            assert_eq!(HookAction::of(op, sub), HookAction::Ignore, "{op} {sub}");
        }
    }

    #[test]
    fn a_domain_without_vdfw_metadata_is_not_ours() {
        assert_eq!(plan(&domain("", VHOST_CLIENT)).unwrap(), None);
        let other = "<app:x xmlns:app='https://example.org/app'><app:vnic/></app:x>";
        assert_eq!(plan(&domain(other, VHOST_CLIENT)).unwrap(), None);
    }

    #[test]
    fn vnic_metadata_becomes_the_endpoint() {
        let meta = vm(r#"<vdfw:label key='env' value='prod'/>
            <vdfw:label key='app' value='generic'/>
            <vdfw:vnic mac='52:54:00:00:00:10' ips='10.0.0.5, fd00::5' name='web-1'>
              <vdfw:label key='app' value='web'/>
              <vdfw:port name='http' port='8080'/>
              <vdfw:port name='dns' port='53' protocol='udp'/>
            </vdfw:vnic>"#);
        let p = plan_ok(&domain(&meta, VHOST_CLIENT));
        assert_eq!(p.domain, "web1");
        assert_eq!(p.endpoints.len(), 1);
        let e = &p.endpoints[0];
        assert_eq!(e.key().to_string(), "prod/web-1");
        assert_eq!(e.mac.unwrap().to_string(), "52:54:00:00:00:10");
        assert_eq!(
            e.ips,
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        // VM labels apply to every vNIC; the vNIC's own win.
        assert_eq!(e.labels["env"], "prod");
        assert_eq!(e.labels["app"], "web");
        assert_eq!(e.named_ports["http"].port, 8080);
        assert_eq!(e.named_ports["http"].protocol, IpProtocol::Tcp);
        assert_eq!(e.named_ports["dns"].protocol, IpProtocol::Udp);
        let s = e.socket.as_ref().unwrap();
        assert_eq!(s.path, PathBuf::from("/run/vdfw/web1.sock"));
        // libvirt mode='client': QEMU connects, so vdfwd serves.
        assert_eq!(s.role, SocketRole::Server);
    }

    #[test]
    fn default_names_follow_the_interface_position_and_roles_invert() {
        let meta = vm("<vdfw:vnic mac='52:54:00:00:00:11' namespace='lab' ips='10.1.0.2'/>");
        let p = plan_ok(&domain(&meta, &format!("{VHOST_CLIENT}{VHOST_SERVER}")));
        let names: Vec<String> = p.endpoints.iter().map(|e| e.key().to_string()).collect();
        // The network interface is net0, so the vhost-user ones are net1 and net2.
        assert_eq!(names, ["prod/web1-net1", "lab/web1-net2"]);
        // An interface without <vdfw:vnic>: VM namespace, no addresses.
        assert!(p.endpoints[0].ips.is_empty());
        assert_eq!(p.endpoints[1].ips.len(), 1);
        let role = |i: usize| p.endpoints[i].socket.as_ref().unwrap().role;
        assert_eq!(role(0), SocketRole::Server);
        assert_eq!(role(1), SocketRole::Client);
    }

    #[test]
    fn mistakes_are_refused_not_ignored() {
        let cases = [
            (
                vm("<vdfw:vnic mac='52:54:00:00:00:99'/>"),
                VHOST_CLIENT,
                "matches no <interface",
            ),
            (vm("<vdfw:lable key='a' value='b'/>"), VHOST_CLIENT, "unknown element <vdfw:lable>"),
            (
                vm("<vdfw:vnic mac='52:54:00:00:00:10' ip='10.0.0.1'/>"),
                VHOST_CLIENT,
                "unknown attribute \"ip\"",
            ),
            (
                vm("<vdfw:vnic mac='52:54:00:00:00:10' ips='10.0.0.300'/>"),
                VHOST_CLIENT,
                "bad IP address",
            ),
            (
                vm("<vdfw:label key='a'/>"),
                VHOST_CLIENT,
                "needs the attribute \"value\"",
            ),
            (
                vm("<vdfw:label key='a' value='1'/><vdfw:label key='a' value='2'/>"),
                VHOST_CLIENT,
                "given twice",
            ),
            (
                vm("<vdfw:vnic mac='52:54:00:00:00:10'><vdfw:port name='x' port='0'/></vdfw:vnic>"),
                VHOST_CLIENT,
                "bad port",
            ),
            (
                vm("<vdfw:vnic mac='52:54:00:00:00:10' name='Web_1'/>"),
                VHOST_CLIENT,
                "not a valid name",
            ),
            (
                vm("<vdfw:vnic mac='52:54:00:00:00:10' name='x'/><vdfw:vnic mac='52:54:00:00:00:11' name='x'/>"),
                "",
                "matches no <interface",
            ),
            (vm(""), "", "no <interface type='vhostuser'>"),
            (
                "<vdfw:vnic xmlns:vdfw='https://vdfw.io/libvirt/1' mac='52:54:00:00:00:10'/>".into(),
                VHOST_CLIENT,
                "inside the one <vdfw:vm",
            ),
            (
                format!("{}{}", vm(""), vm("")),
                VHOST_CLIENT,
                "more than one vdfw element",
            ),
            (
                "<vdfw:vm xmlns:vdfw='https://vdfw.io/libvirt/1'/>".into(),
                VHOST_CLIENT,
                "no namespace",
            ),
        ];
        for (meta, ifaces, needle) in cases {
            let err = plan_err(&domain(&meta, ifaces));
            assert!(
                err.contains(needle),
                "{meta}: expected {needle:?} in {err:?}"
            );
        }
        let both = format!("{VHOST_CLIENT}{VHOST_SERVER}");
        let err = plan_err(&domain(
            &vm("<vdfw:vnic mac='52:54:00:00:00:10' name='x'/><vdfw:vnic mac='52:54:00:00:00:11' name='x'/>"),
            &both,
        ));
        assert!(err.contains("two vNICs are named prod/x"), "{err}");
    }

    #[test]
    fn bad_interfaces_are_refused() {
        let meta = vm("");
        for (iface, needle) in [
            (
                "<interface type='vhostuser'><source type='unix' path='/a.sock' mode='client'/></interface>",
                "no <mac",
            ),
            (
                "<interface type='vhostuser'><mac address='52:54:00:00:00:01'/><source type='unix' path='a.sock' mode='client'/></interface>",
                "absolute socket path",
            ),
            (
                "<interface type='vhostuser'><mac address='52:54:00:00:00:01'/><source type='unix' path='/a.sock'/></interface>",
                "source mode None",
            ),
            (
                "<interface type='vhostuser'><mac address='52:54:00:00:00:0'/><source type='unix' path='/a.sock' mode='client'/></interface>",
                "invalid MAC",
            ),
        ] {
            let err = plan_err(&domain(&meta, iface));
            assert!(err.contains(needle), "{iface}: expected {needle:?} in {err:?}");
            assert!(err.contains("interface 1"), "{err}");
        }
        // A domain name that is no endpoint name needs explicit vNIC names.
        let xml = domain(&meta, VHOST_CLIENT).replace("<name>web1</name>", "<name>Web_1</name>");
        assert!(plan_err(&xml).contains("give the vNIC a name"));
    }

    #[test]
    fn the_shipped_example_domain_plans() {
        let p = plan_ok(include_str!("../../configs/libvirt/vdfw-web1.xml"));
        assert_eq!(p.domain, "web1");
        let e = &p.endpoints[..];
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key().to_string(), "prod/web1");
        assert_eq!(e[0].labels["app"], "web");
        assert_eq!(e[0].labels["env"], "prod");
        assert_eq!(e[0].named_ports["http"].port, 8080);
        assert_eq!(e[0].socket.as_ref().unwrap().role, SocketRole::Server);
    }

    #[test]
    fn hostile_or_broken_xml_is_an_error_not_a_panic() {
        for xml in [
            "",
            "<domain>",
            "<network><name>x</name></network>",
            "<domain><metadata/></domain>",
            "<!DOCTYPE d [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;'>]><domain><name>&b;</name></domain>",
        ] {
            assert!(plan(xml).is_err(), "{xml}");
        }
    }
}
