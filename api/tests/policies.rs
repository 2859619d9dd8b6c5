//! Policy documents end to end: apply / dry-run / list / get / delete over REST and gRPC
//! against the real server, controller, CRD parser, engine and store.

mod common;

use api::client::ClientError;
use api::controller::ChangeReport;
use api::proto;
use api::server::rest::ObjectList;
use common::Harness;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

const DB_POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-allow-web
  namespace: prod
spec:
  podSelector:
    matchLabels: {app: db}
  ingress:
    - from:
        - podSelector: {matchLabels: {app: web}}
      ports:
        - {protocol: TCP, port: 5432}
";

const BASELINE: &str = "\
apiVersion: crd.antrea.io/v1beta1
kind: ClusterNetworkPolicy
metadata:
  name: deny-ssh
spec:
  priority: 5
  tier: securityops
  appliedTo:
    - podSelector: {}
  ingress:
    - name: no-ssh
      action: Drop
      enableLogging: true
      logLabel: ssh-block
      ports:
        - {protocol: TCP, port: 22}
";

fn apply_body(files: &[(&str, &str)], dry_run: bool) -> Value {
    json!({
        "files": files.iter().map(|(f, t)| json!({"file": f, "text": t})).collect::<Vec<_>>(),
        "dry_run": dry_run,
    })
}

#[tokio::test]
async fn apply_dry_run_list_get_delete_over_rest() {
    let h = Harness::start().await;
    let c = h.unix_client();
    let two_docs = format!("# prod policies\n{DB_POLICY}---\n{BASELINE}");
    let r: ChangeReport = c
        .call(
            Method::POST,
            "/v1/apply",
            Some(&apply_body(&[("prod.yaml", &two_docs)], false)),
        )
        .await
        .unwrap();
    assert_eq!(r.revision, 1);
    assert_eq!(r.changes.len(), 2);
    assert!(r
        .changes
        .iter()
        .all(|ch| ch.action == api::realized::ChangeAction::Added));
    assert!(r.changes.iter().all(|ch| ch.rules_added.len() == 1));

    let list: ObjectList = c.get("/v1/policies").await.unwrap();
    assert_eq!(list.revision, 1);
    let names: Vec<String> = list
        .objects
        .iter()
        .map(|o| api::refs::object_ref(&o.key))
        .collect();
    assert_eq!(names, vec!["ACNP:deny-ssh", "K8sNP:prod/db-allow-web"]);
    let db = &list.objects[1];
    // Stored exactly as written, comments included, with its place in the file.
    assert_eq!(db.document.text, format!("# prod policies\n{DB_POLICY}"));
    assert_eq!(db.document.line, 1);

    let got: Value = c.get("/v1/objects/policy/ACNP:deny-ssh").await.unwrap();
    assert_eq!(got["rules"][0]["name"], "no-ssh");
    assert_eq!(got["rules"][0]["log_label"], "ssh-block");
    let acnp_line = two_docs
        .lines()
        .position(|l| l.starts_with("apiVersion: crd.antrea.io"))
        .unwrap()
        + 1;
    assert_eq!(got["document"]["line"], acnp_line);

    // Dry-run of an edit: reported, nothing stored.
    let edited = DB_POLICY.replace("5432", "5433");
    let r: ChangeReport = c
        .call(
            Method::POST,
            "/v1/apply",
            Some(&apply_body(&[("db.yaml", &edited)], true)),
        )
        .await
        .unwrap();
    assert!(r.dry_run);
    assert_eq!(r.revision, 1);
    assert_eq!(r.changes[0].action, api::realized::ChangeAction::Changed);
    assert_eq!(
        (
            r.changes[0].rules_added.len(),
            r.changes[0].rules_removed.len()
        ),
        (1, 1)
    );
    let got: Value = c
        .get("/v1/objects/policy/K8sNP:prod/db-allow-web")
        .await
        .unwrap();
    assert!(got["document"]["text"].as_str().unwrap().contains("5432"));

    // Re-applying identical content is a no-op: no new revision.
    let r: ChangeReport = c
        .call(
            Method::POST,
            "/v1/apply",
            Some(&apply_body(&[("prod.yaml", &two_docs)], false)),
        )
        .await
        .unwrap();
    assert_eq!(r.revision, 1);
    assert!(r
        .changes
        .iter()
        .all(|ch| ch.action == api::realized::ChangeAction::Unchanged));

    let r: ChangeReport = c
        .call(
            Method::DELETE,
            "/v1/objects/policy/ACNP:deny-ssh",
            None::<&()>,
        )
        .await
        .unwrap();
    assert_eq!(r.revision, 2);
    assert_eq!(r.changes[0].action, api::realized::ChangeAction::Removed);
    match c
        .call::<ChangeReport>(
            Method::DELETE,
            "/v1/objects/policy/ACNP:deny-ssh",
            None::<&()>,
        )
        .await
    {
        Err(ClientError::Api { status, .. }) => assert_eq!(status, StatusCode::NOT_FOUND),
        other => panic!("expected 404, got {other:?}"),
    }
    h.stop().await;
}

#[tokio::test]
async fn malformed_document_is_rejected_whole_and_the_old_policy_stays() {
    let h = Harness::start().await;
    let c = h.unix_client();
    let _: ChangeReport = c
        .call(
            Method::POST,
            "/v1/apply",
            Some(&apply_body(&[("db.yaml", DB_POLICY)], false)),
        )
        .await
        .unwrap();
    // Document 1 is a valid edit, document 2 has a typo on line 20 of the file.
    let bad = format!(
        "{}---\n{}",
        DB_POLICY.replace("5432", "6543"),
        BASELINE.replace("      enableLogging", "      enableLoging")
    );
    let typo_line = bad
        .lines()
        .position(|l| l.contains("enableLoging"))
        .unwrap()
        + 1;
    match c
        .call::<ChangeReport>(
            Method::POST,
            "/v1/apply",
            Some(&apply_body(&[("bad.yaml", &bad)], false)),
        )
        .await
    {
        Err(ClientError::Api { status, error }) => {
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(error.details.len(), 1, "{error:?}");
            let d = &error.details[0];
            assert_eq!(d.file, "bad.yaml");
            assert_eq!(d.line, typo_line);
            assert_eq!(d.field.as_deref(), Some("spec.ingress[0].enableLoging"));
            assert!(
                error.error.contains("nothing was applied"),
                "{}",
                error.error
            );
        }
        other => panic!("expected 400, got {other:?}"),
    }
    // Nothing of the batch was applied: not even the valid first document.
    let list: ObjectList = c.get("/v1/policies").await.unwrap();
    assert_eq!(list.revision, 1);
    assert_eq!(list.objects.len(), 1);
    assert!(list.objects[0].document.text.contains("5432"));
    h.stop().await;
}

#[tokio::test]
async fn grpc_apply_list_get_delete_and_restart_keeps_policies() {
    let h = Harness::start().await;
    let mut g = h.grpc_unix().await;
    let r = g
        .apply(proto::ApplyRequest {
            files: vec![
                proto::InputFile {
                    file: "db.yaml".into(),
                    text: DB_POLICY.into(),
                    content_type: String::new(),
                },
                proto::InputFile {
                    file: "baseline.yaml".into(),
                    text: BASELINE.into(),
                    content_type: "yaml".into(),
                },
            ],
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revision, 1);
    assert_eq!(r.changes.len(), 2);

    let bad = g
        .apply(proto::ApplyRequest {
            files: vec![proto::InputFile {
                file: "x.yaml".into(),
                text: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {podSelector: 7}\n".into(),
                content_type: String::new(),
            }],
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("x.yaml:4"), "{}", bad.message());

    let list = g
        .list_objects(proto::ListObjectsRequest {
            kind: "policies".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.objects.len(), 2);
    let got = g
        .get_object(proto::ObjectRef {
            kind: "policy".into(),
            r#ref: "K8sNP:prod/db-allow-web".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.text, DB_POLICY);
    assert_eq!(got.status, "realized");
    g.set_audit(proto::AuditSetting {
        target_kind: "policy".into(),
        target: "K8sNP:prod/db-allow-web".into(),
        enabled: true,
    })
    .await
    .unwrap();
    let r = g
        .delete_objects(proto::DeleteObjectsRequest {
            refs: vec![proto::ObjectRef {
                kind: "policy".into(),
                r#ref: "ACNP:deny-ssh".into(),
            }],
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revision, 3);
    drop(g);

    let dir = h.stop().await;
    let h = Harness::start_in(dir).await;
    let list: ObjectList = h.unix_client().get("/v1/policies").await.unwrap();
    assert_eq!(list.revision, 3);
    assert_eq!(list.objects.len(), 1);
    let db = &list.objects[0];
    assert_eq!(db.document.text, DB_POLICY);
    assert!(db.audit, "audit setting survives the restart");
    assert_eq!(db.create_revision, 1);
    h.stop().await;
}

async fn register(c: &api::client::Client, name: &str, app: &str, ip: &str) {
    let _: api::controller::MutationReport = c
        .call(
            Method::PUT,
            "/v1/endpoints",
            Some(&json!({"name": name, "namespace": "prod", "labels": {"app": app}, "ips": [ip]})),
        )
        .await
        .unwrap();
}

async fn trace(c: &api::client::Client, dst_port: u16) -> Value {
    c.call(
        Method::POST,
        "/v1/trace",
        Some(
            &json!({"src": "prod/web-0", "dst": "prod/db-0", "protocol": "TCP", "port": dst_port}),
        ),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn trace_names_the_deciding_policy_and_rejected_applies_leave_policy_in_force() {
    let h = Harness::start().await;
    let c = h.unix_client();
    register(&c, "web-0", "web", "10.0.0.1").await;
    register(&c, "db-0", "db", "10.0.0.2").await;
    let _: ChangeReport = c
        .call(
            Method::POST,
            "/v1/apply",
            Some(&apply_body(
                &[("db.yaml", DB_POLICY), ("baseline.yaml", BASELINE)],
                false,
            )),
        )
        .await
        .unwrap();

    let t = trace(&c, 5432).await;
    assert_eq!(t["verdict"], "allow", "{t}");
    assert_eq!(t["decided_by"], "rule");
    assert_eq!(t["direction"], "ingress");
    assert_eq!(t["policy"], "K8sNP:prod/db-allow-web");
    assert_eq!(t["src"]["endpoint"], "prod/web-0");

    let t = trace(&c, 5433).await;
    assert_eq!(t["verdict"], "drop", "{t}");
    assert_eq!(t["decided_by"], "isolation");
    assert_eq!(t["policy"], "K8sNP:prod/db-allow-web");

    let t = trace(&c, 22).await;
    assert_eq!(t["verdict"], "drop", "{t}");
    assert_eq!(t["policy"], "ACNP:deny-ssh");
    assert_eq!(t["rule"], "no-ssh");
    assert_eq!(t["log_label"], "ssh-block");

    // A rejected apply (valid edit + malformed document) leaves the old policy enforced.
    let bad = format!(
        "{}---\n{}",
        DB_POLICY.replace("5432", "6543"),
        BASELINE.replace("action: Drop", "action: Dorp")
    );
    let err = c
        .call::<ChangeReport>(
            Method::POST,
            "/v1/apply",
            Some(&apply_body(&[("bad.yaml", &bad)], false)),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad.yaml:"), "{err}");
    assert_eq!(trace(&c, 5432).await["verdict"], "allow");
    assert_eq!(trace(&c, 6543).await["verdict"], "drop");

    // Audit mode on the deny policy: forwarded, flagged.
    let _: api::controller::MutationReport = c
        .call(
            Method::PUT,
            "/v1/audit",
            Some(&json!({"policy": "ACNP:deny-ssh", "enabled": true})),
        )
        .await
        .unwrap();
    let t = trace(&c, 22).await;
    assert_eq!(t["verdict"], "allow", "{t}");
    assert_eq!(t["audit"], true);
    assert_eq!(t["policy"], "ACNP:deny-ssh");

    // gRPC trace agrees; bad input is a clear INVALID_ARGUMENT.
    let mut g = h.grpc_unix().await;
    let r = g
        .trace(proto::TraceRequest {
            src: "10.0.0.1".into(),
            dst: "prod/db-0".into(),
            protocol: "tcp".into(),
            port: 5433,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.verdict.as_str(), r.policy.as_str()),
        ("drop", "K8sNP:prod/db-allow-web")
    );
    let e = g
        .trace(proto::TraceRequest {
            src: "prod/nope".into(),
            dst: "prod/db-0".into(),
            protocol: String::new(),
            port: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("prod/nope is not in the inventory"),
        "{}",
        e.message()
    );
    h.stop().await;
}
