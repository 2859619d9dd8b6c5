//! The endpoint inventory: namespaces and the VMs/pods in them, with labels, IPs and named
//! ports. Used by the offline trace and by tests; the live daemon learns the same facts from
//! its ports and API.
//!
//! ```yaml
//! namespaces:
//!   - {name: payments, labels: {team: pay}}
//! endpoints:
//!   - {name: payments-api, namespace: payments, kind: vm, labels: {app: payments-api},
//!      ips: [10.0.1.5], mac: "52:54:00:00:01:05", ports: {http: 8080, dns: {port: 53, protocol: UDP}}}
//! services:
//!   - {name: payments, namespace: payments, selector: {app: payments-api}}
//! ```
//!
//! Services exist for Antrea groups' `serviceReference`: a Service's backends are the
//! endpoints of its namespace whose labels include its `selector` (see
//! [`crate::model::Service`]).
//!
//! Defaults and checks: `namespace` defaults to `default` and `kind` to `vm`; a named port is
//! a number (TCP) or `{port, protocol}`; namespaces referenced by endpoints but not declared
//! are implied with no labels. Names, labels, IPs, MACs and ports are validated; duplicate
//! namespaces, endpoints, or IPs shared by two endpoints are errors (an IP must identify one
//! endpoint). Errors have the same form as policy errors ([`ParseError`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::compile::{Engine, EngineError};
use crate::crd::meta::{self, IntOrString, DEFAULT_NAMESPACE};
use crate::crd::{yaml, ErrorKind, ParseError};
use crate::flow::IpProtocol;
use crate::model::{Endpoint, EndpointKind, Labels, NamedPort, Namespace, Service};

/// Namespaces (declared and implied, in order of first mention), endpoints and Services.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub namespaces: Vec<Namespace>,
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub services: Vec<Service>,
}

impl Inventory {
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    pub fn endpoint(&self, namespace: &str, name: &str) -> Option<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.namespace == namespace && e.name == name)
    }

    /// Feeds everything into `engine` (namespaces, endpoints, then Services). Stops at the
    /// first endpoint the engine refuses (an address owned by another endpoint).
    pub fn load_into(self, engine: &mut Engine) -> Result<(), EngineError> {
        for ns in self.namespaces {
            engine.upsert_namespace(ns);
        }
        for ep in self.endpoints {
            engine.upsert_endpoint(ep)?;
        }
        for svc in self.services {
            engine.upsert_service(svc);
        }
        Ok(())
    }

    /// The endpoint owning `ip`, if any.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.ips.contains(&ip))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    namespaces: Option<Vec<RawNamespace>>,
    #[serde(default)]
    endpoints: Option<Vec<RawEndpoint>>,
    #[serde(default)]
    services: Option<Vec<RawService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    selector: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamespace {
    name: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    kind: Option<EndpointKind>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    ips: Option<Vec<IpAddr>>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    ports: Option<BTreeMap<String, RawPort>>,
}

/// `8080` or `{port: 53, protocol: UDP}`. Hand-written instead of `#[serde(untagged)]`,
/// which buffers the value and loses the position and field path of errors.
#[derive(Debug)]
enum RawPort {
    Number(IntOrString),
    Full(RawPortFull),
}

impl<'de> Deserialize<'de> for RawPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawPort;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number or {port, protocol}")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawPort, E> {
                Ok(RawPort::Number(IntOrString::Int(v)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawPort, E> {
                Ok(RawPort::Number(IntOrString::Int(
                    i64::try_from(v).unwrap_or(i64::MAX),
                )))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawPort, E> {
                Ok(RawPort::Number(IntOrString::Str(v.to_string())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawPort, A::Error> {
                RawPortFull::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawPort::Full)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortFull {
    port: i64,
    #[serde(default)]
    protocol: Option<String>,
}

/// Parses an inventory file (a single YAML or JSON document; empty = empty inventory).
pub fn parse_inventory(text: &str, file: &str) -> Result<Inventory, ParseError> {
    let docs = yaml::load(text).map_err(|e| ParseError {
        file: file.to_string(),
        document: e.document,
        line: e.mark.line,
        column: e.mark.column,
        path: String::new(),
        kind: ErrorKind::Syntax,
        message: e.message,
    })?;
    let docs: Vec<_> = docs.into_iter().filter(|d| !d.root.is_null()).collect();
    let Some(doc) = docs.first() else {
        return Ok(Inventory::default());
    };
    if let Some(extra) = docs.get(1) {
        return Err(crate::crd::error::Invalid::value(
            &crate::crd::error::Path::root(),
            "an inventory is a single document",
        )
        .into_parse_error(file, extra.index, &extra.root));
    }
    build(&doc.root).map_err(|e| e.into_parse_error(file, doc.index, &doc.root))
}

fn build(root: &yaml::Node) -> Result<Inventory, crate::crd::error::Invalid> {
    use crate::crd::error::{Invalid, Path};

    let path = Path::root();
    let raw: RawInventory = crate::crd::de::from_node(root, &path)?;
    let mut inv = Inventory::default();
    let mut ns_seen = BTreeSet::new();
    for (i, ns) in raw.namespaces.iter().flatten().enumerate() {
        let p = path.key("namespaces").idx(i);
        meta::dns_label(&ns.name, &p.key("name"))?;
        if !ns_seen.insert(ns.name.clone()) {
            return Err(Invalid::new(
                &p.key("name"),
                ErrorKind::Duplicate,
                format!("namespace {} is declared twice", ns.name),
            ));
        }
        inv.namespaces.push(Namespace {
            name: ns.name.clone(),
            labels: labels(ns.labels.as_ref(), &p.key("labels"))?,
        });
    }

    let mut ep_seen = BTreeSet::new();
    let mut ip_owner: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (i, ep) in raw.endpoints.iter().flatten().enumerate() {
        let p = path.key("endpoints").idx(i);
        meta::dns_subdomain(&ep.name, &p.key("name"))?;
        let namespace = ep
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        meta::dns_label(&namespace, &p.key("namespace"))?;
        let key = format!("{namespace}/{}", ep.name);
        if !ep_seen.insert(key.clone()) {
            return Err(Invalid::new(
                &p.key("name"),
                ErrorKind::Duplicate,
                format!("endpoint {key} is declared twice"),
            ));
        }
        if ns_seen.insert(namespace.clone()) {
            inv.namespaces.push(Namespace {
                name: namespace.clone(),
                labels: Labels::new(),
            });
        }
        let ips = ep.ips.clone().unwrap_or_default();
        for (j, ip) in ips.iter().enumerate() {
            if let Some(owner) = ip_owner.insert(*ip, key.clone()) {
                return Err(Invalid::new(
                    &p.key("ips").idx(j),
                    ErrorKind::Duplicate,
                    format!("IP {ip} already belongs to endpoint {owner}"),
                ));
            }
        }
        let mac = match &ep.mac {
            None => None,
            Some(m) => Some(parse_mac(m).ok_or_else(|| {
                Invalid::value(
                    &p.key("mac"),
                    format!("{m:?} is not a unicast MAC address like 52:54:00:12:34:56"),
                )
            })?),
        };
        let mut named_ports = BTreeMap::new();
        for (name, port) in ep.ports.iter().flatten() {
            let pp = p.key("ports").key(name);
            meta::port_name(name, &pp)?;
            let (number, protocol) = match port {
                RawPort::Number(IntOrString::Int(n)) => (*n, None),
                RawPort::Number(IntOrString::Str(s)) => {
                    return Err(Invalid::value(
                        &pp,
                        format!("expected a port number or {{port, protocol}}, got {s:?}"),
                    ))
                }
                RawPort::Full(f) => (f.port, f.protocol.as_deref()),
            };
            let port = meta::port_number(number, &pp)?;
            let protocol = match protocol {
                None | Some("TCP") => IpProtocol::Tcp,
                Some("UDP") => IpProtocol::Udp,
                Some("SCTP") => IpProtocol::Sctp,
                Some(other) => {
                    return Err(Invalid::value(
                        &pp.key("protocol"),
                        format!("unsupported protocol {other:?}: expected TCP, UDP or SCTP"),
                    ))
                }
            };
            named_ports.insert(name.clone(), NamedPort { port, protocol });
        }
        inv.endpoints.push(Endpoint {
            name: ep.name.clone(),
            namespace,
            kind: ep.kind.unwrap_or(EndpointKind::Vm),
            labels: labels(ep.labels.as_ref(), &p.key("labels"))?,
            ips,
            mac,
            named_ports,
        });
    }

    let mut svc_seen = BTreeSet::new();
    for (i, svc) in raw.services.iter().flatten().enumerate() {
        let p = path.key("services").idx(i);
        // Service names are DNS labels.
        meta::dns_label(&svc.name, &p.key("name"))?;
        let namespace = svc
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        meta::dns_label(&namespace, &p.key("namespace"))?;
        let key = format!("{namespace}/{}", svc.name);
        if !svc_seen.insert(key.clone()) {
            return Err(Invalid::new(
                &p.key("name"),
                ErrorKind::Duplicate,
                format!("service {key} is declared twice"),
            ));
        }
        if ns_seen.insert(namespace.clone()) {
            inv.namespaces.push(Namespace {
                name: namespace.clone(),
                labels: Labels::new(),
            });
        }
        inv.services.push(Service {
            name: svc.name.clone(),
            namespace,
            selector: labels(svc.selector.as_ref(), &p.key("selector"))?,
        });
    }
    Ok(inv)
}

fn labels(
    raw: Option<&BTreeMap<String, String>>,
    path: &crate::crd::error::Path,
) -> Result<Labels, crate::crd::error::Invalid> {
    let mut out = Labels::new();
    for (k, v) in raw.into_iter().flatten() {
        let p = path.key(k);
        meta::qualified_name(k, &p)?;
        meta::label_value(v, &p)?;
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

/// `aa:bb:cc:dd:ee:ff` (or with `-`); multicast MACs are refused: a vNIC MAC is unicast.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    (mac[0] & 1 == 0).then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
namespaces:
  - {name: payments, labels: {team: pay}}
endpoints:
  - name: payments-api
    namespace: payments
    kind: vm
    labels: {app: payments-api}
    ips: [10.0.1.5, 'fd00::105']
    mac: '52:54:00:00:01:05'
    ports: {http: 8080, dns: {port: 53, protocol: UDP}}
  - {name: api-gateway, namespace: edge, labels: {app: api-gateway}, ips: [10.0.2.10]}
  - {name: probe, kind: pod}
";

    #[test]
    fn parses_the_documented_example() {
        let inv = parse_inventory(SAMPLE, "inv.yaml").unwrap();
        let names: Vec<&str> = inv.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["payments", "edge", "default"]);
        assert_eq!(
            inv.namespace("payments")
                .unwrap()
                .labels
                .get("team")
                .map(String::as_str),
            Some("pay")
        );
        assert!(inv.namespace("edge").unwrap().labels.is_empty());
        let api = inv.endpoint("payments", "payments-api").unwrap();
        assert_eq!(api.kind, EndpointKind::Vm);
        assert_eq!(api.mac, Some([0x52, 0x54, 0, 0, 1, 5]));
        assert_eq!(api.ips.len(), 2);
        assert_eq!(
            api.named_ports.get("http"),
            Some(&NamedPort {
                port: 8080,
                protocol: IpProtocol::Tcp
            })
        );
        assert_eq!(
            api.named_ports.get("dns"),
            Some(&NamedPort {
                port: 53,
                protocol: IpProtocol::Udp
            })
        );
        let gw = inv.endpoint_by_ip("10.0.2.10".parse().unwrap()).unwrap();
        assert_eq!(gw.name, "api-gateway");
        assert_eq!(gw.kind, EndpointKind::Vm);
        let probe = inv.endpoint("default", "probe").unwrap();
        assert_eq!(probe.kind, EndpointKind::Pod);
        assert!(inv.endpoint_by_ip("10.9.9.9".parse().unwrap()).is_none());
    }

    #[test]
    fn services_parse_and_load() {
        let text = format!(
            "{SAMPLE}services:\n  - {{name: api, namespace: payments, selector: {{app: payments-api}}}}\n  - {{name: manual, namespace: billing}}\n"
        );
        let inv = parse_inventory(&text, "inv.yaml").unwrap();
        assert_eq!(
            inv.services,
            vec![
                Service {
                    namespace: "payments".into(),
                    name: "api".into(),
                    selector: Labels::from([("app".into(), "payments-api".into())]),
                },
                Service {
                    namespace: "billing".into(),
                    name: "manual".into(),
                    selector: Labels::new(),
                },
            ]
        );
        // A Service's namespace is implied like an endpoint's.
        assert!(inv.namespace("billing").is_some());
        let mut engine = Engine::default();
        inv.load_into(&mut engine).unwrap();
        assert_eq!(engine.services().count(), 2);
        assert_eq!(engine.endpoints().count(), 3);
        let e = err("services:\n  - {name: a}\n  - {name: a, namespace: default}\n");
        assert_eq!(e.kind, ErrorKind::Duplicate);
        assert_eq!(e.path, "services[1].name");
        let e = err("services:\n  - {name: a, selector: {'bad key!': x}}\n");
        assert_eq!(e.path, "services[0].selector[\"bad key!\"]");
        let e = err("services:\n  - {name: a, ports: [80]}\n");
        assert_eq!(e.kind, ErrorKind::UnknownField);
    }

    #[test]
    fn empty_inventory() {
        assert_eq!(parse_inventory("", "x").unwrap(), Inventory::default());
        assert_eq!(
            parse_inventory("# nothing\n", "x").unwrap(),
            Inventory::default()
        );
    }

    fn err(text: &str) -> ParseError {
        parse_inventory(text, "inv.yaml").unwrap_err()
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = err("endpoints:\n  - name: a\n    ips: [10.0.0.300]\n");
        assert_eq!(e.path, "endpoints[0].ips[0]");
        assert_eq!(e.line, 3);
        let e = err("endpoints:\n  - name: a\n    lables: {}\n");
        assert_eq!(e.kind, ErrorKind::UnknownField);
        assert_eq!(e.path, "endpoints[0].lables");
        assert!(
            e.to_string()
                .starts_with("inv.yaml: document 1 (line 3, column 5)"),
            "{e}"
        );
        let e = err("endpoints:\n  - name: a\n    ports: {http: 70000}\n");
        assert_eq!(e.path, "endpoints[0].ports.http");
        let e = err("endpoints:\n  - name: a\n    ports: {http: {port: 80, protocol: ICMP}}\n");
        assert_eq!(e.path, "endpoints[0].ports.http.protocol");
        let e = err("endpoints:\n  - name: a\n    ports:\n      dns: {port: 53, prot: UDP}\n");
        assert_eq!(e.kind, ErrorKind::UnknownField);
        assert_eq!(e.path, "endpoints[0].ports.dns.prot");
        assert_eq!((e.line, e.column), (4, 23));
        let e = err("endpoints:\n  - name: a\n    mac: '01:00:5e:00:00:01'\n");
        assert_eq!(e.path, "endpoints[0].mac");
        let e = err("endpoints:\n  - name: a\n    kind: container\n");
        assert_eq!(e.path, "endpoints[0].kind");
        let e = err("endpoints:\n  - name: a\n    labels: {app: 'has space'}\n");
        assert_eq!(e.path, "endpoints[0].labels.app");
        let e = err("endpoints:\n  - {name: a, ips: [10.0.0.1]}\n  - {name: b, ips: [10.0.0.1]}\n");
        assert_eq!(e.kind, ErrorKind::Duplicate);
        assert_eq!(e.path, "endpoints[1].ips[0]");
        assert_eq!(e.line, 3);
        let e = err("endpoints:\n  - {name: a}\n  - {name: a}\n");
        assert_eq!(e.kind, ErrorKind::Duplicate);
        let e = err("namespaces:\n  - {name: x}\n  - {name: x}\n");
        assert_eq!(e.kind, ErrorKind::Duplicate);
        let e = err("namespaces:\n  - {name: Bad_NS}\n");
        assert_eq!(e.path, "namespaces[0].name");
        let e = err("a: 1\n---\nb: 2\n");
        assert_eq!(e.document, 1);
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("52-54-00-AA-bb-cc"),
            Some([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc])
        );
        assert_eq!(parse_mac("52:54:00:aa:bb"), None);
        assert_eq!(parse_mac("52:54:00:aa:bb:ccc"), None);
        assert_eq!(parse_mac("52:54:00:aa:bb:zz"), None);
    }
}
