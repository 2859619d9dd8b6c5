//! End-to-end tests against the real server (axum + tonic on a temp unix socket and a
//! loopback TCP port), the real controller and the real redb store.

mod common;

use std::os::unix::fs::PermissionsExt;

use api::client::ClientError;
use api::controller::MutationReport;
use api::flows::{FlowPeer, FlowRecord, FlowVerdict, PolicyRef};
use api::proto;
use api::types::EndpointSpec;
use common::{authed, Harness, TOKEN};
use dfw::flow::{FiveTuple, IpProtocol};
use dfw::model::{Direction, EndpointKey, Namespace, PolicyKey, PolicyKind, RuleId};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

fn web_endpoint(dir: &std::path::Path) -> Value {
    json!({
        "name": "web-0", "namespace": "prod",
        "labels": {"app": "web"},
        "mac": "52:54:00:00:00:01",
        "ips": ["10.0.0.1"],
        "named_ports": {"http": {"port": 8080, "protocol": "Tcp"}},
        "socket": {"path": dir.join("web-0.sock"), "role": "server"}
    })
}

#[tokio::test]
async fn socket_is_private_and_rest_manages_endpoints_and_namespaces() {
    let h = Harness::start().await;
    let mode = std::fs::metadata(h.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "API socket must be root-only");

    let c = h.unix_client();
    let r: MutationReport = c
        .call(
            Method::PUT,
            "/v1/endpoints",
            Some(&web_endpoint(h.dir.path())),
        )
        .await
        .unwrap();
    assert_eq!(r.revision, 1);
    let r: MutationReport = c
        .call(
            Method::PUT,
            "/v1/namespaces",
            Some(&json!({"name": "prod", "labels": {"env": "prod"}})),
        )
        .await
        .unwrap();
    assert_eq!(r.revision, 2);
    // Same content again: no new revision.
    let r: MutationReport = c
        .call(
            Method::PUT,
            "/v1/endpoints",
            Some(&web_endpoint(h.dir.path())),
        )
        .await
        .unwrap();
    assert_eq!(r.revision, 2);

    let eps: Vec<EndpointSpec> = c.get("/v1/endpoints").await.unwrap();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].mac.unwrap().to_string(), "52:54:00:00:00:01");
    let nss: Vec<Namespace> = c.get("/v1/namespaces").await.unwrap();
    assert_eq!(nss[0].labels["env"], "prod");

    // A second endpoint stealing the IP is refused with a message naming the owner.
    let mut dup = web_endpoint(h.dir.path());
    dup["name"] = json!("web-1");
    dup["mac"] = json!("52:54:00:00:00:02");
    dup["socket"]["path"] = json!(h.dir.path().join("web-1.sock"));
    match c
        .call::<MutationReport>(Method::PUT, "/v1/endpoints", Some(&dup))
        .await
    {
        Err(ClientError::Api { status, error }) => {
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(error.error.contains("10.0.0.1"), "{}", error.error);
            assert!(error.error.contains("prod/web-0"), "{}", error.error);
        }
        other => panic!("expected 400, got {other:?}"),
    }
    // Invalid name.
    let mut bad = web_endpoint(h.dir.path());
    bad["name"] = json!("Web_0");
    assert!(matches!(
        c.call::<MutationReport>(Method::PUT, "/v1/endpoints", Some(&bad))
            .await,
        Err(ClientError::Api {
            status: StatusCode::BAD_REQUEST,
            ..
        })
    ));

    let r: MutationReport = c
        .call(Method::DELETE, "/v1/endpoints/prod/web-0", None::<&()>)
        .await
        .unwrap();
    assert_eq!(r.revision, 3);
    assert!(matches!(
        c.call::<MutationReport>(Method::DELETE, "/v1/endpoints/prod/web-0", None::<&()>)
            .await,
        Err(ClientError::Api {
            status: StatusCode::NOT_FOUND,
            ..
        })
    ));
    h.stop().await;
}

#[tokio::test]
async fn tcp_requires_the_bearer_token_for_rest_and_grpc() {
    let h = Harness::start().await;
    // REST without / with a wrong / with the right token.
    for token in [None, Some("wrong-token-0123456789")] {
        match h.tcp_client(token).get::<Value>("/v1/revision").await {
            Err(ClientError::Api { status, error }) => {
                assert_eq!(status, StatusCode::UNAUTHORIZED);
                assert!(error.error.contains("Bearer"), "{}", error.error);
            }
            other => panic!("expected 401, got {other:?}"),
        }
    }
    // Even a write is refused before it reaches the controller.
    let refused = h
        .tcp_client(None)
        .call::<Value>(
            Method::PUT,
            "/v1/namespaces",
            Some(&json!({"name": "x", "labels": {}})),
        )
        .await;
    assert!(refused.is_err());
    assert_eq!(h.controller.revision(), 0);

    let ok: Value = h.tcp_client(Some(TOKEN)).get("/v1/revision").await.unwrap();
    assert_eq!(ok["revision"], 0);

    // gRPC: UNAUTHENTICATED without the token, fine with it.
    let mut g = h.grpc_tcp().await;
    let err = g.get_revision(proto::ListRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let rev = g
        .get_revision(authed(proto::ListRequest {}, TOKEN))
        .await
        .unwrap();
    assert_eq!(rev.into_inner().revision, 0);

    // The unix socket needs no token, and the failures were counted.
    let metrics = h.unix_client();
    let (status, body) = metrics.send(Method::GET, "/metrics", None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(
        http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains("vdfw_api_auth_failures_total 4"),
        "metrics:\n{text}"
    );
    assert!(text.contains("vdfw_store_revision 0"), "metrics:\n{text}");
    h.stop().await;
}

#[tokio::test]
async fn grpc_over_unix_manages_endpoints_namespaces_and_audit() {
    let h = Harness::start().await;
    let mut g = h.grpc_unix().await;
    let ep = proto::Endpoint {
        name: "db-0".into(),
        namespace: "prod".into(),
        labels: [("app".to_string(), "db".to_string())].into(),
        mac: "52:54:00:00:00:09".into(),
        ips: vec!["10.0.0.9".into(), "fd00::9".into()],
        named_ports: [(
            "pg".to_string(),
            proto::NamedPort {
                port: 5432,
                protocol: "TCP".into(),
            },
        )]
        .into(),
        socket_path: h.dir.path().join("db-0.sock").display().to_string(),
        socket_role: "client".into(),
    };
    let r = g.put_endpoint(ep.clone()).await.unwrap().into_inner();
    assert_eq!(r.revision, 1);
    let list = g
        .list_endpoints(proto::ListRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.endpoints, vec![ep]);

    let bad = proto::Endpoint {
        name: "x".into(),
        namespace: "prod".into(),
        mac: "not-a-mac".into(),
        ..Default::default()
    };
    let err = g.put_endpoint(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("not-a-mac"));

    g.put_namespace(proto::Namespace {
        name: "prod".into(),
        labels: [("env".to_string(), "prod".to_string())].into(),
    })
    .await
    .unwrap();
    let r = g
        .set_audit(proto::AuditSetting {
            target_kind: "namespace".into(),
            target: "prod".into(),
            enabled: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revision, 3);
    // Auditing a policy that does not exist is a NOT_FOUND, not a silent no-op.
    let err = g
        .set_audit(proto::AuditSetting {
            target_kind: "policy".into(),
            target: "ANP:prod/nope".into(),
            enabled: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let audit = g
        .list_audit(proto::ListRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(audit.settings.len(), 1);
    assert!(audit.settings[0].enabled);

    let err = g
        .delete_namespace(proto::NamespaceRef {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    h.stop().await;
}

#[tokio::test]
async fn restart_keeps_everything() {
    let h = Harness::start().await;
    let c = h.unix_client();
    let _: MutationReport = c
        .call(
            Method::PUT,
            "/v1/endpoints",
            Some(&web_endpoint(h.dir.path())),
        )
        .await
        .unwrap();
    let _: MutationReport = c
        .call(
            Method::PUT,
            "/v1/namespaces",
            Some(&json!({"name": "prod", "labels": {"env": "prod"}})),
        )
        .await
        .unwrap();
    let _: MutationReport = c
        .call(
            Method::PUT,
            "/v1/audit",
            Some(&json!({"namespace": "prod", "enabled": true})),
        )
        .await
        .unwrap();
    let dir = h.stop().await;

    let h = Harness::start_in(dir).await;
    let c = h.unix_client();
    let rev: Value = c.get("/v1/revision").await.unwrap();
    assert_eq!(rev["revision"], 3);
    let eps: Vec<EndpointSpec> = c.get("/v1/endpoints").await.unwrap();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].key().to_string(), "prod/web-0");
    let audit: Vec<Value> = c.get("/v1/audit").await.unwrap();
    assert_eq!(audit[0]["enabled"], true);
    h.stop().await;
}

fn flow(i: u64, verdict: FlowVerdict) -> FlowRecord {
    FlowRecord {
        time_ns: i,
        src: FlowPeer {
            endpoint: Some(EndpointKey {
                namespace: "prod".into(),
                name: "web-0".into(),
            }),
            identity: Some(256),
            labels: [("app".to_string(), "web".to_string())].into(),
        },
        dst: FlowPeer::default(),
        tuple: FiveTuple {
            src: "10.0.0.1".parse().unwrap(),
            dst: "192.0.2.1".parse().unwrap(),
            protocol: IpProtocol::Tcp,
            src_port: 40000 + i as u16,
            dst_port: 443,
        },
        direction: Direction::Egress,
        verdict,
        drop_reason: None,
        policy: Some(PolicyRef {
            policy: PolicyKey {
                kind: PolicyKind::AntreaClusterNetworkPolicy,
                namespace: None,
                name: "egress-lockdown".into(),
            },
            rule: "egress-0".into(),
            rule_id: RuleId(0xabc),
            log_label: Some("lockdown".into()),
        }),
    }
}

#[tokio::test]
async fn flows_last_n_and_follow_over_rest_and_grpc() {
    let h = Harness::start().await;
    let ring = h.controller.flows().clone();
    for i in 0..10 {
        ring.push(flow(
            i,
            if i % 2 == 0 {
                FlowVerdict::Dropped
            } else {
                FlowVerdict::Forwarded
            },
        ));
    }
    let c = h.unix_client();
    let mut lines = Vec::new();
    c.lines("/v1/flows?last=3&verdict=DROPPED", |l| {
        lines.push(serde_json::from_str::<FlowRecord>(l).unwrap());
        true
    })
    .await
    .unwrap();
    assert_eq!(
        lines.iter().map(|r| r.time_ns).collect::<Vec<_>>(),
        vec![4, 6, 8]
    );
    assert_eq!(
        lines[0].policy.as_ref().unwrap().log_label.as_deref(),
        Some("lockdown")
    );

    // Bad filter: clear 400.
    match c.lines("/v1/flows?verdict=MAYBE", |_| true).await {
        Err(ClientError::Api { status, error }) => {
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(error.error.contains("DROPPED"));
        }
        other => panic!("expected 400, got {other:?}"),
    }

    // gRPC follow: history first, then a live record pushed after subscribing.
    let mut g = h.grpc_unix().await;
    let mut stream = g
        .observe(proto::ObserveRequest {
            verdict: "FORWARDED".into(),
            last: 1,
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(proto::observe_response::Event::Flow(f)) = first.event else {
        panic!("expected a flow");
    };
    assert_eq!(f.time_ns, 9);
    assert_eq!(f.policy, "ACNP:egress-lockdown");
    ring.push(flow(100, FlowVerdict::Dropped)); // filtered out
    ring.push(flow(101, FlowVerdict::Forwarded));
    let next = stream.message().await.unwrap().unwrap();
    let Some(proto::observe_response::Event::Flow(f)) = next.event else {
        panic!("expected a flow");
    };
    assert_eq!(f.time_ns, 101);
    assert_eq!(f.src.unwrap().endpoint, "prod/web-0");
    drop(stream);

    let stats: Value = c.get("/v1/stats").await.unwrap();
    assert_eq!(stats["flows_by_verdict"]["DROPPED"], 6);
    assert_eq!(stats["flows_by_verdict"]["FORWARDED"], 6);
    assert!(stats["data_plane"].is_null());
    h.stop().await;
}

#[tokio::test]
async fn openapi_document_is_served() {
    let h = Harness::start().await;
    let doc: Value = h.unix_client().get("/openapi.json").await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/apply",
        "/v1/policies",
        "/v1/endpoints",
        "/v1/flows",
        "/v1/audit",
    ] {
        assert!(doc["paths"].get(path).is_some(), "missing {path}");
    }
    assert!(doc["components"]["schemas"].get("ChangeReport").is_some());
    h.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_flow_followers() {
    let h = Harness::start().await;
    let mut g = h.grpc_unix().await;
    let mut grpc_stream = g
        .observe(proto::ObserveRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rest = h.unix_client();
    let rest_follow =
        tokio::spawn(async move { rest.lines("/v1/flows?follow=true", |_| true).await });
    // Let the REST follower connect before stopping.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    tokio::time::timeout(std::time::Duration::from_secs(10), h.stop())
        .await
        .expect("shutdown must not wait for followers that never hang up");
    assert!(matches!(grpc_stream.message().await, Ok(None) | Err(_)));
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), rest_follow)
        .await
        .expect("REST follower ended");
    assert!(ended.is_ok());
}
