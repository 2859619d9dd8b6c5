//! Error reporting common to all formats: locations, kinds, documents, sets.

use dfw::crd::{parse_documents, parse_files, ErrorKind, ParseOptions};
use dfw::model::Object;

use crate::{err, parse};

const K8S_OK: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ok, namespace: a}\nspec: {podSelector: {}}\n";

#[test]
fn lines_are_absolute_for_the_third_document() {
    let text = format!(
        "# leading comment\n{K8S_OK}---\n{}---\n\n# policy three\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: three\n  namespace: pay\nspec:\n  podSelector: {{}}\n  ingress:\n    - from:\n        - podSelecter: {{}}\n",
        K8S_OK.replace("name: ok", "name: two")
    );
    let e = parse_documents(&text, "policies/pay.yaml").unwrap_err();
    assert_eq!(e.document, 2);
    assert_eq!(e.line, 23);
    assert_eq!(e.column, 11);
    assert_eq!(e.kind, ErrorKind::UnknownField);
    assert_eq!(e.path, "spec.ingress[0].from[0].podSelecter");
    let msg = e.to_string();
    assert!(
        msg.starts_with("policies/pay.yaml: document 3 (line 23, column 11): spec.ingress[0].from[0].podSelecter: unknown field (did you mean `podSelector`?)"),
        "{msg}"
    );
    // Objects report where they start.
    let parsed = parse(&text.replace("podSelecter", "podSelector"));
    let lines: Vec<(usize, usize)> = parsed
        .policies()
        .map(|p| (p.source.document, p.source.line))
        .collect();
    assert_eq!(lines, vec![(0, 2), (1, 7), (2, 14)]);
}

#[test]
fn unknown_kinds_and_versions() {
    let e = err("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n");
    assert_eq!(e.kind, ErrorKind::UnknownKind);
    assert_eq!(e.path, "kind");
    assert_eq!(e.line, 2);
    let e = err("apiVersion: crd.antrea.io/v2\nkind: ClusterNetworkPolicy\nmetadata: {name: x}\n");
    assert_eq!(e.kind, ErrorKind::UnknownKind);
    assert_eq!(e.path, "apiVersion");
    assert!(e.message.contains("crd.antrea.io/v1beta1"), "{e}");
    let e =
        err("apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: x}\n");
    assert_eq!(e.path, "apiVersion");
    let e = err("kind: NetworkPolicy\nmetadata: {name: x}\n");
    assert_eq!(
        (e.kind, e.path.as_str()),
        (ErrorKind::MissingField, "apiVersion")
    );
    let e = err("apiVersion: networking.k8s.io/v1\nmetadata: {name: x}\n");
    assert_eq!((e.kind, e.path.as_str()), (ErrorKind::MissingField, "kind"));
    let e = err("just a string\n");
    assert_eq!(e.kind, ErrorKind::InvalidValue);
}

#[test]
fn metadata_rules() {
    let e =
        err("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: a}\n");
    assert_eq!(
        (e.kind, e.path.as_str()),
        (ErrorKind::MissingField, "metadata.name")
    );
    let e = err(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {generateName: np-}\n",
    );
    assert_eq!(
        (e.kind, e.path.as_str()),
        (ErrorKind::Unsupported, "metadata.generateName")
    );
    let e =
        err("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: Bad_Name}\n");
    assert_eq!(e.path, "metadata.name");
    let e = err("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: a.b}\n");
    assert_eq!(e.path, "metadata.namespace");
    let e = err("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, labels: {'-x': y}}\n");
    assert_eq!(e.path, "metadata.labels[\"-x\"]");
    let e = err("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, clusterName: x}\n");
    assert_eq!(
        (e.kind, e.path.as_str()),
        (ErrorKind::UnknownField, "metadata.clusterName")
    );
    // Server-populated fields and status, as `kubectl get -o yaml` prints them, are fine.
    let parsed = parse("apiVersion: crd.antrea.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata:\n  name: a\n  uid: 6b1c\n  resourceVersion: \"123\"\n  generation: 2\n  creationTimestamp: \"2024-01-01T00:00:00Z\"\n  managedFields:\n    - manager: kubectl\n      operation: Update\n  annotations:\n    kubectl.kubernetes.io/last-applied-configuration: '{\"a\": 1}'\nspec:\n  priority: 1\n  appliedTo: [{podSelector: {}}]\nstatus:\n  phase: Realized\n  observedGeneration: 2\n  currentNodesRealized: 1\n  desiredNodesRealized: 1\n");
    assert_eq!(parsed.objects.len(), 1);
    // A namespace on a cluster-scoped kind is ignored, with a warning.
    let parsed = parse("apiVersion: crd.antrea.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: a, namespace: x}\nspec:\n  priority: 1\n  appliedTo: [{podSelector: {}}]\n");
    assert_eq!(parsed.policies().next().unwrap().key.namespace, None);
    assert_eq!(parsed.warnings.len(), 1);
}

#[test]
fn json_arrays_and_lists() {
    let json = r#"[
  {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
   "metadata": {"name": "a", "namespace": "x"}, "spec": {"podSelector": {}}},
  {"apiVersion": "crd.antrea.io/v1beta1", "kind": "Tier",
   "metadata": {"name": "t"}, "spec": {"priority": 10}}
]"#;
    assert_eq!(parse(json).objects.len(), 2);
    let single = r#"{"apiVersion": "crd.antrea.io/v1beta1", "kind": "ClusterGroup", "metadata": {"name": "g"}, "spec": {"ipBlocks": [{"cidr": "10.0.0.0/8"}]}}"#;
    assert!(matches!(parse(single).objects[0], Object::Group(_)));
    let list = "apiVersion: v1\nkind: List\nmetadata: {resourceVersion: \"\"}\nitems:\n  - apiVersion: networking.k8s.io/v1\n    kind: NetworkPolicy\n    metadata: {name: a, namespace: x}\n  - apiVersion: networking.k8s.io/v1\n    kind: NetworkPolicy\n    metadata: {name: b, namespace: x}\n    spec: {podSelector: {matchLabels: {app: 'bad value'}}}\n";
    let e = err(list);
    assert_eq!(e.path, "items[1].spec.podSelector.matchLabels.app");
    assert_eq!(e.line, 11);
    let ok = list.replace("'bad value'", "good");
    let parsed = parse(&ok);
    assert_eq!(parsed.objects.len(), 2);
    assert_eq!(parsed.policies().nth(1).unwrap().source.line, 8);
    // Typed lists too.
    let typed = ok.replace(
        "apiVersion: v1\nkind: List",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicyList",
    );
    assert_eq!(parse(&typed).objects.len(), 2);
    let e = err("apiVersion: v1\nkind: List\nitemz: []\n");
    assert_eq!(
        (e.kind, e.path.as_str()),
        (ErrorKind::UnknownField, "itemz")
    );
    let e = err("[1, 2]\n");
    assert_eq!(e.path, "[0]");
    // Empty documents are skipped but still counted.
    let e = err(&format!(
        "---\n# nothing\n---\n{}",
        K8S_OK.replace("spec:", "spek:")
    ));
    assert_eq!(e.document, 1);
}

#[test]
fn syntax_errors() {
    let e = err(&format!(
        "{K8S_OK}---\nmetadata:\n  name: a\n   bad: indent\n"
    ));
    assert_eq!(e.kind, ErrorKind::Syntax);
    assert_eq!(e.document, 1);
    assert_eq!(e.line, 8);
    let e = err("a: [1, 2\n");
    assert_eq!(e.kind, ErrorKind::Syntax);
    let e = err("a: 1\na: 2\n");
    assert_eq!(e.kind, ErrorKind::Syntax);
    assert!(e.message.contains("duplicate key"));
}

#[test]
fn sets_are_all_or_nothing_and_report_every_error() {
    let bad1 = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {podSelector: {matchLabels: {a: 'b c'}}}\n";
    let bad2 = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: y}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEntities: [moon]}]\n";
    let errors = parse_files(
        &[
            ("ok.yaml", K8S_OK),
            ("bad1.yaml", bad1),
            ("bad2.yaml", bad2),
        ],
        &ParseOptions::default(),
    )
    .unwrap_err();
    let files: Vec<&str> = errors.iter().map(|e| e.file.as_str()).collect();
    assert_eq!(files, ["bad1.yaml", "bad2.yaml"]);
    // Several bad objects in one file: one error each.
    let text = format!("{bad1}---\n{K8S_OK}---\n{bad2}");
    let errors = parse_files(&[("multi.yaml", &text)], &ParseOptions::default()).unwrap_err();
    let docs: Vec<usize> = errors.iter().map(|e| e.document).collect();
    assert_eq!(docs, [0, 2]);
    // Set-level errors (unknown tier) are reported in file order with the rest.
    let tiered = "apiVersion: crd.antrea.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: t}\nspec:\n  tier: nope\n  priority: 1\n  appliedTo: [{podSelector: {}}]\n";
    let text = format!("{tiered}---\n{bad1}");
    let errors = parse_files(&[("t.yaml", &text)], &ParseOptions::default()).unwrap_err();
    let found: Vec<(usize, ErrorKind)> = errors.iter().map(|e| (e.document, e.kind)).collect();
    assert_eq!(
        found,
        [
            (0, ErrorKind::UnknownReference),
            (1, ErrorKind::InvalidValue)
        ]
    );
}

#[test]
fn duplicates_across_files() {
    let errors = parse_files(
        &[("a.yaml", K8S_OK), ("b.yaml", K8S_OK)],
        &ParseOptions::default(),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].kind, ErrorKind::Duplicate);
    assert_eq!(errors[0].file, "b.yaml");
    assert_eq!(errors[0].path, "metadata.name");
    assert!(
        errors[0].message.contains("a.yaml document 1 (line 3)"),
        "{}",
        errors[0]
    );
    // Same name, different kinds or namespaces: no conflict.
    let other_ns = K8S_OK.replace("namespace: a", "namespace: b");
    assert!(parse_files(
        &[("a.yaml", K8S_OK), ("b.yaml", &other_ns)],
        &ParseOptions::default()
    )
    .is_ok());
}
