//! The example policies under `configs/` parse, alone and as one set, and say what the
//! README says they say.

use std::path::{Path, PathBuf};

use dfw::crd::{parse_documents, parse_files, ParseOptions};
use dfw::inventory::parse_inventory;
use dfw::model::{
    Action, AppliedTo, Direction, Entity, GroupKey, Layer, Peer, Peers, PolicyKind, PortRange,
    PortSpec, ProtocolMatch,
};

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn policy_files() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path.display().to_string(), text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&configs().join("policies"), &mut out);
    out
}

#[test]
fn every_example_parses_alone_and_together() {
    let files = policy_files();
    assert!(files.len() >= 4, "{files:?}");
    for (name, text) in &files {
        if let Err(e) = parse_documents(text, name) {
            panic!("{e}");
        }
    }
    let set: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let parsed = match parse_files(&set, &ParseOptions::default()) {
        Ok(p) => p,
        Err(errors) => panic!("{errors:#?}"),
    };
    assert!(parsed.warnings.is_empty(), "{:#?}", parsed.warnings);
    assert_eq!(parsed.policies().count(), 8);
    assert_eq!(parsed.groups().count(), 2);
}

fn example(rel: &str) -> dfw::crd::Parsed {
    let path = configs().join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    parse_documents(&text, rel).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn k8s_example() {
    let parsed = example("policies/k8s/payments.yaml");
    let p: Vec<_> = parsed.policies().collect();
    assert_eq!(p.len(), 3);
    assert!(p
        .iter()
        .all(|p| p.key.kind == PolicyKind::KubernetesNetworkPolicy));
    assert_eq!(p[0].isolates, vec![Direction::Ingress]);
    assert_eq!(
        p[0].rules[0].ports[0].port,
        Some(PortSpec::Named("http".into()))
    );
    assert_eq!(p[2].isolates, vec![Direction::Egress]);
}

#[test]
fn antrea_examples() {
    let parsed = example("policies/antrea/cluster.yaml");
    let acnp = parsed.policies().next().unwrap();
    assert_eq!(acnp.key.kind, PolicyKind::AntreaClusterNetworkPolicy);
    assert_eq!(
        acnp.layer,
        Layer::AntreaTier {
            tier: "securityops".into(),
            tier_priority: 100,
            policy_priority: 5.0
        }
    );
    assert_eq!(
        acnp.applied_to,
        vec![AppliedTo::Group(GroupKey {
            namespace: None,
            name: "payments-vms".into()
        })]
    );
    let reject = &acnp.rules[1];
    assert_eq!(reject.action, Action::Reject);
    assert_eq!(reject.log_label.as_deref(), Some("ssh-blocked"));
    assert_eq!(
        reject.ports[0].port,
        Some(PortSpec::Range(PortRange::single(22)))
    );
    assert_eq!(
        acnp.rules[0].peers,
        Peers::List(vec![Peer::Group(GroupKey {
            namespace: None,
            name: "jumphosts".into()
        })])
    );
    let groups: Vec<&str> = parsed.groups().map(|g| g.key.name.as_str()).collect();
    assert_eq!(groups, ["payments-vms", "jumphosts"]);

    let parsed = example("policies/antrea/payments.yaml");
    let names: Vec<Vec<&str>> = parsed
        .policies()
        .map(|p| p.rules.iter().map(|r| r.name.as_str()).collect())
        .collect();
    assert_eq!(
        names,
        vec![
            vec![
                "allow-gateway",
                "drop-other-ingress",
                "allow-db",
                "drop-other-egress"
            ],
            vec!["allow-api", "drop-other-ingress"],
        ]
    );
}

#[test]
fn cilium_example() {
    let parsed = example("policies/cilium/payments.yaml");
    let db = parsed.policies().nth(1).unwrap();
    assert_eq!(db.isolates, vec![Direction::Ingress]);
    let deny = db.rules.iter().find(|r| r.action == Action::Drop).unwrap();
    assert_eq!(deny.peers, Peers::Any);
    assert_eq!(deny.ports[0].protocol, ProtocolMatch::Tcp);
    assert_eq!(
        deny.ports[0].port,
        Some(PortSpec::Range(PortRange::single(22)))
    );
    assert!(!db
        .rules
        .iter()
        .any(|r| r.peers == Peers::List(vec![Peer::Entity(Entity::World)])));
}

#[test]
fn inventory_matches_the_examples() {
    let text = std::fs::read_to_string(configs().join("inventory.yaml")).unwrap();
    let inv = parse_inventory(&text, "configs/inventory.yaml").unwrap_or_else(|e| panic!("{e}"));
    let api = inv.endpoint("payments", "payments-api").unwrap();
    assert_eq!(api.named_ports["http"].port, 8080);
    assert_eq!(
        inv.endpoint("payments", "payments-db").unwrap().named_ports["postgres"].port,
        5432
    );
    assert!(inv.endpoint("edge", "api-gateway").is_some());
    // Every selector label in the examples names something in the inventory.
    let all_labels: Vec<(String, String)> = inv
        .endpoints
        .iter()
        .flat_map(|e| e.labels.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect();
    for app in ["payments-api", "payments-db", "api-gateway", "jumphost"] {
        assert!(all_labels.contains(&("app".into(), app.into())), "{app}");
    }
    assert_eq!(inv.namespace("payments").unwrap().labels["team"], "pay");
    assert_eq!(inv.namespace("ops").unwrap().labels["team"], "ops");
}
