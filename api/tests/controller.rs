//! Controller ↔ data plane contract.
//!
//! The data plane here is a recorder (vdfwd's real `DataPlane`, `vswitch::enforcer`, is
//! exercised by the vswitch and integration tests): it pins the order of calls the controller
//! promises (publish before add_vnic; remove_vnic before the state without the endpoint),
//! which vdfwd relies on to never forward before policy is realized.

use std::sync::{Arc, Mutex};

use api::controller::{Controller, ControllerConfig, ControllerError, InputFile};
use api::dataplane::{DataPlane, DataPlaneError, DataPlaneStats};
use api::flows::{FlowFilter, FlowPeer, FlowRecord, FlowSink, FlowVerdict};
use api::realized::ChangeAction;
use api::realized::RealizedState;
use api::store::{RedbStore, Store};
use api::types::{EndpointSpec, SocketRole, VnicSocket};
use dfw::flow::{FiveTuple, IpProtocol};
use dfw::model::{Direction, EndpointKey, Namespace};

#[derive(Debug, Clone, PartialEq)]
enum Call {
    SetSink,
    /// revision, endpoints in the published state
    Publish(u64, Vec<String>),
    AddVnic(String),
    RemoveVnic(String),
}

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    sink: Mutex<Option<FlowSink>>,
    fail_add: Mutex<bool>,
}

impl DataPlane for Recorder {
    fn publish(&self, state: Arc<RealizedState>) -> Result<(), DataPlaneError> {
        let eps = state
            .endpoints
            .iter()
            .map(|e| e.key().to_string())
            .collect();
        self.calls
            .lock()
            .unwrap()
            .push(Call::Publish(state.revision, eps));
        Ok(())
    }
    fn add_vnic(&self, endpoint: &EndpointSpec) -> Result<(), DataPlaneError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::AddVnic(endpoint.key().to_string()));
        if *self.fail_add.lock().unwrap() {
            return Err(DataPlaneError::Vnic {
                endpoint: endpoint.key(),
                reason: "socket directory missing".into(),
            });
        }
        Ok(())
    }
    fn remove_vnic(&self, endpoint: &EndpointKey) -> Result<(), DataPlaneError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::RemoveVnic(endpoint.to_string()));
        Ok(())
    }
    fn stats(&self) -> Result<DataPlaneStats, DataPlaneError> {
        Ok(DataPlaneStats {
            conntrack_entries: 7,
            ..Default::default()
        })
    }
    fn set_flow_sink(&self, sink: FlowSink) {
        self.calls.lock().unwrap().push(Call::SetSink);
        *self.sink.lock().unwrap() = Some(sink);
    }
}

fn ep(name: &str, ip: &str, socket: bool) -> EndpointSpec {
    EndpointSpec {
        name: name.into(),
        namespace: "prod".into(),
        labels: [("app".to_string(), name.to_string())].into(),
        // A vNIC needs a MAC; derive a distinct one from the IP.
        mac: socket.then(|| {
            let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
            api::types::MacAddr([0x52, 0x54, 0, 0, 0, last])
        }),
        ips: vec![ip.parse().unwrap()],
        named_ports: Default::default(),
        socket: socket.then(|| VnicSocket {
            path: format!("/run/vdfw/{name}.sock").into(),
            role: SocketRole::Server,
        }),
    }
}

fn open(dir: &std::path::Path) -> Controller {
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir).unwrap());
    Controller::open(store, ControllerConfig::default()).unwrap()
}

#[test]
fn data_plane_sees_policy_before_vnics_and_vnics_go_before_their_policy() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = open(dir.path());
        c.upsert_endpoint(ep("web-0", "10.0.0.1", true)).unwrap();
        c.upsert_endpoint(ep("peer", "10.0.0.2", false)).unwrap();
        c.upsert_namespace(Namespace {
            name: "prod".into(),
            labels: Default::default(),
        })
        .unwrap();
    }
    // Restart: everything is realized from the store before the data plane is attached.
    let c = open(dir.path());
    assert_eq!(c.revision(), 3);
    let dp = Arc::new(Recorder::default());
    let warnings = c.attach_data_plane(dp.clone()).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(
        *dp.calls.lock().unwrap(),
        vec![
            Call::SetSink,
            Call::Publish(3, vec!["prod/peer".into(), "prod/web-0".into()]),
            // Only endpoints with a socket are vNICs on this host.
            Call::AddVnic("prod/web-0".into()),
        ]
    );
    dp.calls.lock().unwrap().clear();

    c.upsert_endpoint(ep("db-0", "10.0.0.3", true)).unwrap();
    c.remove_endpoint(&EndpointKey {
        namespace: "prod".into(),
        name: "web-0".into(),
    })
    .unwrap();
    assert_eq!(
        *dp.calls.lock().unwrap(),
        vec![
            Call::Publish(
                4,
                vec!["prod/db-0".into(), "prod/peer".into(), "prod/web-0".into()]
            ),
            Call::AddVnic("prod/db-0".into()),
            Call::RemoveVnic("prod/web-0".into()),
            Call::Publish(5, vec!["prod/db-0".into(), "prod/peer".into()]),
        ]
    );

    // A vNIC that fails to come up: stored (desired state), reported as a warning.
    *dp.fail_add.lock().unwrap() = true;
    let r = c.upsert_endpoint(ep("app-0", "10.0.0.4", true)).unwrap();
    assert_eq!(r.revision, 6);
    assert!(
        r.warnings[0].contains("socket directory missing"),
        "{:?}",
        r.warnings
    );

    // Flow records pushed by the data plane land in the controller's ring.
    let sink = dp.sink.lock().unwrap().clone().unwrap();
    sink.push(FlowRecord {
        time_ns: 1,
        src: FlowPeer::default(),
        dst: FlowPeer::default(),
        tuple: FiveTuple {
            src: "10.0.0.3".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            protocol: IpProtocol::Udp,
            src_port: 5353,
            dst_port: 53,
        },
        direction: Direction::Egress,
        verdict: FlowVerdict::Forwarded,
        drop_reason: None,
        policy: None,
    });
    assert_eq!(c.flows().last(10, &FlowFilter::default()).len(), 1);
    assert_eq!(c.data_plane_stats().unwrap().unwrap().conntrack_entries, 7);
}

#[test]
fn offline_controller_works_without_a_data_plane() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    assert!(c.data_plane_stats().unwrap().is_none());
    c.upsert_endpoint(ep("web-0", "10.0.0.1", true)).unwrap();
    assert_eq!(c.realized().endpoints.len(), 1);
    // A vNIC without a MAC is refused with the reason.
    let mut no_mac = ep("web-1", "10.0.0.9", true);
    no_mac.mac = None;
    match c.upsert_endpoint(no_mac) {
        Err(ControllerError::BadRequest(m)) => assert!(m.contains("needs its MAC"), "{m}"),
        other => panic!("expected BadRequest, got {other:?}"),
    }
    // Removing something that is not there is an error, and changes nothing.
    let missing = EndpointKey {
        namespace: "prod".into(),
        name: "nope".into(),
    };
    assert!(matches!(
        c.remove_endpoint(&missing),
        Err(ControllerError::NotFound(_))
    ));
    assert_eq!(c.revision(), 1);
}

fn np(name: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: prod}}\nspec:\n  podSelector: {{}}\n  ingress: [{{ports: [{{port: {port}}}]}}]\n"
    )
}

fn file(name: &str, text: &str) -> InputFile {
    InputFile {
        file: name.into(),
        text: text.into(),
        content_type: None,
    }
}

fn policy_names(c: &Controller) -> Vec<String> {
    c.realized()
        .policies
        .iter()
        .map(|p| p.key.name.clone())
        .collect()
}

#[test]
fn a_source_sync_replaces_what_the_source_declared_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let src = "/etc/vdfw/policies/";
    c.sync_source(
        src,
        &[
            file("/etc/vdfw/policies/a.yaml", &np("a", 80)),
            file("/etc/vdfw/policies/sub/b.yaml", &np("b", 81)),
        ],
        false,
    )
    .unwrap();
    c.apply(&[file("api.yaml", &np("c", 82))], false).unwrap();
    assert_eq!(policy_names(&c), ["a", "b", "c"]);
    let rev = c.revision();

    // b.yaml gone: b is deleted, a unchanged, c (applied through the API) untouched; one
    // revision for the whole change.
    let r = c
        .sync_source(
            src,
            &[file("/etc/vdfw/policies/a.yaml", &np("a", 80))],
            false,
        )
        .unwrap();
    let actions: Vec<ChangeAction> = r.changes.iter().map(|ch| ch.action).collect();
    assert_eq!(actions, [ChangeAction::Unchanged, ChangeAction::Removed]);
    assert_eq!(r.revision, rev + 1);
    assert_eq!(policy_names(&c), ["a", "c"]);

    // A broken file refuses the whole sync and changes nothing.
    let err = c
        .sync_source(
            src,
            &[
                file("/etc/vdfw/policies/a.yaml", &np("a", 8080)),
                file(
                    "/etc/vdfw/policies/bad.yaml",
                    "kind: NetworkPolicy\nspec: [",
                ),
            ],
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("bad.yaml"), "{err}");
    assert_eq!(c.revision(), rev + 1);
    assert_eq!(policy_names(&c), ["a", "c"]);

    // A dry-run reports without changing; an empty source removes all it declared.
    let dry = c.sync_source(src, &[], true).unwrap();
    assert_eq!(dry.changes.len(), 1);
    assert_eq!(policy_names(&c), ["a", "c"]);
    c.sync_source(src, &[], false).unwrap();
    assert_eq!(policy_names(&c), ["c"]);

    // Reopened from the store: the same state.
    drop(c);
    let c = open(dir.path());
    assert_eq!(policy_names(&c), ["c"]);
}
