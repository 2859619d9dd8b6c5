//! The flow-log catalog (names of rules, policies and vNICs for flow records and rule
//! counters) carries the previous publication's names, so events queued just before a
//! change still resolve — and no more: a long-running daemon whose policies keep changing
//! must not accumulate every rule it ever enforced (memory, and a publish that copies them
//! all: after a 10k-rule set came and went, a 10-rule apply took ~15 ms instead of ~0.1 ms).

use api::controller::InputFile;
use vswitch::config::{Config, DEFAULT_CONNTRACK_MAX};
use vswitch::daemon::{Daemon, FilterMode};

fn policy(name: &str, port: u16) -> InputFile {
    InputFile {
        file: format!("{name}.yaml"),
        text: format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: lab}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n    - from: [{{podSelector: {{matchLabels: {{app: web}}}}}}]\n      ports: [{{port: {port}}}]\n"
        ),
        content_type: None,
    }
}

#[test]
fn catalog_keeps_the_previous_generation_of_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        state_dir: dir.path().join("state"),
        policy_dir: None,
        default_deny: false,
        audit: false,
        conntrack_max_per_vnic: DEFAULT_CONNTRACK_MAX,
        huge_pages: false,
        conntrack_initial_per_vnic: None,
        poll_threads: 0,
        poll_cpus: vec![],
        poll_us: 0,
        namespaces: vec![],
        uplink: None,
        api: None,
        vnics: vec![],
    };
    let d = Daemon::start(cfg, FilterMode::Firewall).unwrap();
    let c = d.controller();
    // The same policy edited 20 times: each edit is a new rule (new content, new id).
    for port in 1000..1020 {
        c.apply(&[policy("p", port)], false).unwrap();
    }
    let rules = d.flow_log().catalog().rules.len();
    assert_eq!(
        rules, 2,
        "the enforced rule and the previous one only, not all {rules} ever published"
    );
    assert!(d
        .flow_log()
        .catalog()
        .rules
        .values()
        .all(|r| r.policy == "K8sNP:lab/p"));

    // Deleted: still named for one more publication, then gone.
    let key = api::refs::parse_object_ref(api::types::ResourceKind::Policy, "K8sNP:lab/p").unwrap();
    c.delete_objects(&[key], false).unwrap();
    assert_eq!(d.flow_log().catalog().rules.len(), 1);
    c.apply(&[policy("q", 2000)], false).unwrap();
    let cat = d.flow_log().catalog();
    assert_eq!(cat.rules.len(), 1);
    assert!(cat.rules.values().all(|r| r.policy == "K8sNP:lab/q"));
    assert!(cat.policies.values().all(|p| p == "K8sNP:lab/q"));
    d.shutdown();
}
