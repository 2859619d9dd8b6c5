//! Control-plane latencies: a durable store commit (fsync-bound), and a whole policy apply
//! through the controller (split, parse, engine transaction, store commit, snapshot) on top
//! of an existing policy set and inventory.

use std::sync::Arc;

use api::controller::{Controller, ControllerConfig, InputFile};
use api::store::{Change, ChangeSet, RedbStore, Store};
use api::types::{ContentType, Document, EndpointSpec, Resource};
use criterion::{criterion_group, criterion_main, Criterion};
use dfw::model::{Namespace, PolicyKey, PolicyKind};

fn policy(ns: usize, i: usize, port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: ns{ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: app{i}}}}}\n  ingress:\n    - from: [{{podSelector: {{matchLabels: {{app: client{i}}}}}}}]\n      ports: [{{port: {port}}}]\n"
    )
}

fn store_commit(c: &mut Criterion) {
    // On disk (not tmpfs), so the fsync is real.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let mut i = 0u64;
    c.bench_function("store_commit_one_document_fsync", |b| {
        b.iter(|| {
            i += 1;
            let r = Resource::Policy {
                key: PolicyKey {
                    kind: PolicyKind::KubernetesNetworkPolicy,
                    namespace: Some("bench".into()),
                    name: format!("p{}", i % 64),
                },
                document: Document {
                    file: "bench.yaml".into(),
                    content_type: ContentType::Yaml,
                    text: policy(0, i as usize, 80),
                    line: 1,
                },
            };
            store.commit(&ChangeSet::new(vec![Change::Put(r)])).unwrap()
        })
    });
}

fn controller_apply(c: &mut Criterion) {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
    let ctl = Controller::open(store, ControllerConfig::default()).unwrap();
    for ns in 0..10 {
        ctl.upsert_namespace(Namespace {
            name: format!("ns{ns}"),
            labels: Default::default(),
        })
        .unwrap();
    }
    for e in 0..200usize {
        ctl.upsert_endpoint(EndpointSpec {
            name: format!("vm{e}"),
            namespace: format!("ns{}", e % 10),
            labels: [("app".to_string(), format!("app{}", e % 100))].into(),
            mac: None,
            ips: vec![format!("10.1.{}.{}", e / 250, e % 250 + 1).parse().unwrap()],
            named_ports: Default::default(),
            socket: None,
        })
        .unwrap();
    }
    let text: String = (0..500)
        .map(|i| format!("{}---\n", policy(i % 10, i, 80)))
        .collect();
    ctl.apply(
        &[InputFile {
            file: "base.yaml".into(),
            text,
            content_type: None,
        }],
        false,
    )
    .unwrap();
    let mut port = 1000u16;
    let mut group = c.benchmark_group("controller_apply_with_500_policies_200_endpoints");
    group.sample_size(30);
    group.bench_function("apply_one_changed_policy", |b| {
        b.iter(|| {
            port = port.wrapping_add(1).max(1000);
            ctl.apply(
                &[InputFile {
                    file: "edit.yaml".into(),
                    text: policy(3, 3, port),
                    content_type: None,
                }],
                false,
            )
            .unwrap()
        })
    });
    group.bench_function("dry_run_one_changed_policy", |b| {
        b.iter(|| {
            ctl.apply(
                &[InputFile {
                    file: "edit.yaml".into(),
                    text: policy(3, 3, 999),
                    content_type: None,
                }],
                true,
            )
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, store_commit, controller_apply);
criterion_main!(benches);
