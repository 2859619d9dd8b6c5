//! `vdfwctl policy generate`: turn observed flows into allow-list policies (like
//! `cilium policy generate`), so a workload can be moved to default-deny without breaking
//! what it already does.
//!
//! One ingress policy per destination workload (namespace + labels): one rule per source
//! (workload by labels, or a /32 or /128 for addresses outside the inventory) listing the
//! ports seen. Sources and destinations are named by labels, never by IP, whenever the flow
//! record knows the endpoint.

use std::collections::{BTreeMap, BTreeSet};

use dfw::flow::IpProtocol;
use dfw::model::{Labels, CILIUM_NAMESPACE_LABEL, NAMESPACE_NAME_LABEL};
use serde_json::{json, Value};

use crate::flows::FlowRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyFlavor {
    /// crd.antrea.io/v1beta1 NetworkPolicy (explicit Allow rules, then a Drop-all rule).
    Antrea,
    /// cilium.io/v2 CiliumNetworkPolicy (a direction with rules is default-deny).
    Cilium,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Workload { namespace: String, labels: Labels },
    Address(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Port {
    protocol: &'static str,
    port: u16,
}

fn protocol_name(p: IpProtocol) -> Option<&'static str> {
    match p {
        IpProtocol::Tcp => Some("TCP"),
        IpProtocol::Udp => Some("UDP"),
        IpProtocol::Sctp => Some("SCTP"),
        _ => None,
    }
}

/// Workload key: namespace plus the labels that select it.
type Workload = (String, Labels);

/// Builds the policies as JSON values (render with [`crate::yaml::to_yaml`]). Flows to
/// addresses outside the inventory, and non-port protocols, are skipped (they are reported
/// in the second return value).
pub fn generate(flows: &[FlowRecord], flavor: PolicyFlavor) -> (Vec<Value>, Vec<String>) {
    let mut by_dst: BTreeMap<Workload, BTreeMap<Source, BTreeSet<Port>>> = BTreeMap::new();
    let mut names: BTreeMap<Workload, String> = BTreeMap::new();
    let mut skipped = BTreeSet::new();
    for f in flows {
        let Some(dst) = &f.dst.endpoint else {
            skipped.insert(format!("{}: destination is not a known endpoint", f.tuple));
            continue;
        };
        let Some(protocol) = protocol_name(f.tuple.protocol) else {
            skipped.insert(format!("{}: only TCP/UDP/SCTP flows become rules", f.tuple));
            continue;
        };
        let workload = (dst.namespace.clone(), f.dst.labels.clone());
        names
            .entry(workload.clone())
            .or_insert_with(|| workload_name(&f.dst.labels, &dst.name));
        let source = match &f.src.endpoint {
            Some(src) => Source::Workload {
                namespace: src.namespace.clone(),
                labels: f.src.labels.clone(),
            },
            None => Source::Address(match f.tuple.src {
                std::net::IpAddr::V4(ip) => format!("{ip}/32"),
                std::net::IpAddr::V6(ip) => format!("{ip}/128"),
            }),
        };
        by_dst
            .entry(workload)
            .or_default()
            .entry(source)
            .or_default()
            .insert(Port {
                protocol,
                port: f.tuple.dst_port,
            });
    }
    let policies = by_dst
        .into_iter()
        .map(|(workload, sources)| {
            let name = format!("allow-{}", names[&workload]);
            match flavor {
                PolicyFlavor::Antrea => antrea(&workload, &name, &sources),
                PolicyFlavor::Cilium => cilium(&workload, &name, &sources),
            }
        })
        .collect();
    (policies, skipped.into_iter().collect())
}

/// A readable name: the `app` label, else the endpoint name, DNS-safe.
fn workload_name(labels: &Labels, endpoint: &str) -> String {
    let raw = labels
        .get("app")
        .or_else(|| labels.get("app.kubernetes.io/name"))
        .map(String::as_str)
        .unwrap_or(endpoint);
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    cleaned.trim_matches('-').to_string()
}

fn labels_json(labels: &Labels) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn antrea(workload: &Workload, name: &str, sources: &BTreeMap<Source, BTreeSet<Port>>) -> Value {
    let (namespace, labels) = workload;
    let mut rules: Vec<Value> = sources
        .iter()
        .map(|(src, ports)| {
            let from = match src {
                Source::Workload { namespace, labels } => json!({
                    "podSelector": {"matchLabels": labels_json(labels)},
                    "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}},
                }),
                Source::Address(cidr) => json!({"ipBlock": {"cidr": cidr}}),
            };
            json!({
                "action": "Allow",
                "from": [from],
                "ports": ports.iter().map(|p| json!({"protocol": p.protocol, "port": p.port})).collect::<Vec<_>>(),
            })
        })
        .collect();
    // Antrea policies do not isolate by themselves: close the allow-list explicitly.
    rules.push(json!({"name": "default-deny", "action": "Drop", "from": []}));
    json!({
        "apiVersion": "crd.antrea.io/v1beta1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "tier": "application",
            "priority": 10,
            "appliedTo": [{"podSelector": {"matchLabels": labels_json(labels)}}],
            "ingress": rules,
        },
    })
}

fn cilium(workload: &Workload, name: &str, sources: &BTreeMap<Source, BTreeSet<Port>>) -> Value {
    let (namespace, labels) = workload;
    let rules: Vec<Value> = sources
        .iter()
        .map(|(src, ports)| {
            let to_ports = json!([{
                "ports": ports.iter().map(|p| json!({"port": p.port.to_string(), "protocol": p.protocol})).collect::<Vec<_>>(),
            }]);
            match src {
                Source::Workload { namespace, labels } => {
                    let mut sel = labels.clone();
                    sel.insert(CILIUM_NAMESPACE_LABEL.to_string(), namespace.clone());
                    json!({"fromEndpoints": [{"matchLabels": labels_json(&sel)}], "toPorts": to_ports})
                }
                Source::Address(cidr) => json!({"fromCIDR": [cidr], "toPorts": to_ports}),
            }
        })
        .collect();
    json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "endpointSelector": {"matchLabels": labels_json(labels)},
            "ingress": rules,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::{FlowPeer, FlowVerdict};
    use dfw::flow::FiveTuple;
    use dfw::model::{Direction, EndpointKey};

    fn peer(ns: &str, name: &str, app: &str) -> FlowPeer {
        FlowPeer {
            endpoint: Some(EndpointKey {
                namespace: ns.into(),
                name: name.into(),
            }),
            identity: None,
            labels: [("app".to_string(), app.to_string())].into(),
        }
    }

    fn f(src: FlowPeer, src_ip: &str, dst: FlowPeer, proto: IpProtocol, port: u16) -> FlowRecord {
        FlowRecord {
            time_ns: 0,
            src,
            dst,
            tuple: FiveTuple {
                src: src_ip.parse().unwrap(),
                dst: "10.0.0.2".parse().unwrap(),
                protocol: proto,
                src_port: 40000,
                dst_port: port,
            },
            direction: Direction::Ingress,
            verdict: FlowVerdict::Audit,
            drop_reason: None,
            policy: None,
        }
    }

    #[test]
    fn one_policy_per_destination_with_merged_ports() {
        let flows = vec![
            f(
                peer("prod", "web-0", "web"),
                "10.0.0.1",
                peer("prod", "db-0", "db"),
                IpProtocol::Tcp,
                5432,
            ),
            f(
                peer("prod", "web-1", "web"),
                "10.0.0.3",
                peer("prod", "db-1", "db"),
                IpProtocol::Tcp,
                5433,
            ),
            f(
                FlowPeer::default(),
                "192.0.2.7",
                peer("prod", "db-0", "db"),
                IpProtocol::Tcp,
                5432,
            ),
            f(
                peer("prod", "web-0", "web"),
                "10.0.0.1",
                FlowPeer::default(),
                IpProtocol::Tcp,
                443,
            ),
            f(
                peer("prod", "web-0", "web"),
                "10.0.0.1",
                peer("prod", "db-0", "db"),
                IpProtocol::Icmp,
                0,
            ),
        ];
        let (policies, skipped) = generate(&flows, PolicyFlavor::Antrea);
        assert_eq!(policies.len(), 1);
        assert_eq!(skipped.len(), 2);
        let p = &policies[0];
        assert_eq!(p["metadata"]["name"], "allow-db");
        let ingress = p["spec"]["ingress"].as_array().unwrap();
        assert_eq!(ingress.len(), 3, "web rule, address rule, default-deny");
        let web = ingress
            .iter()
            .find(|r| r["from"][0]["podSelector"].is_object())
            .unwrap();
        assert_eq!(web["ports"].as_array().unwrap().len(), 2);
        assert_eq!(
            web["from"][0]["namespaceSelector"]["matchLabels"][NAMESPACE_NAME_LABEL],
            "prod"
        );
        assert!(ingress
            .iter()
            .any(|r| r["from"][0]["ipBlock"]["cidr"] == "192.0.2.7/32"));

        let (policies, _) = generate(&flows, PolicyFlavor::Cilium);
        let rules = policies[0]["spec"]["ingress"].as_array().unwrap();
        let from_web = rules
            .iter()
            .find(|r| r["fromEndpoints"].is_array())
            .unwrap();
        assert_eq!(
            from_web["fromEndpoints"][0]["matchLabels"][CILIUM_NAMESPACE_LABEL],
            "prod"
        );
        assert_eq!(from_web["toPorts"][0]["ports"][0]["port"], "5432");
    }
}
