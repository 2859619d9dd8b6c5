//! Issue 4, the API end to end: a real `vdfwd` process (no guests) driven through its REST and
//! gRPC API — `vdfwctl`, the api crate's REST client and tonic stubs — over the unix socket and
//! the token-protected TCP listener (cleartext and mutual TLS).
//!
//! What the data plane enforces is checked through the daemon itself: `stats` reports the
//! revision the data plane enforces, and `trace` evaluates a flow against the live realized
//! state. (Packets through guests are the subject of `api_guests.rs`.)
//!
//! Needs root (vdfwd's sockets and state live under /tmp; the API socket is root-only).

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use api::client::{Client, ClientError, Target};
use api::controller::ChangeReport;
use api::proto;
use api::proto::control_client::ControlClient;
use api::server::rest::ObjectList;
use common::*;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};
use vdfw_integration::{require, MacAddr, Prereq, Vdfwd, VdfwdConfig, VdfwdSpec, VnicDef};

const TOKEN: &str = "e2e-token-7f3a9c21d4b8e605";

/// `lab/db` accepts `app: web` on 5432 and nothing else (it is isolated for ingress).
const DB_POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-allow-web
  namespace: lab
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

/// `app: web` may only talk to `app: db` on 5432 (egress isolation).
const WEB_EGRESS: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-egress
  namespace: lab
spec:
  podSelector:
    matchLabels: {app: web}
  policyTypes: [Egress]
  egress:
    - to:
        - podSelector: {matchLabels: {app: db}}
      ports:
        - {protocol: TCP, port: 5432}
";

/// Two ClusterGroups that contain each other: each parses, the engine refuses the set.
const GROUP_CYCLE: &str = "\
apiVersion: crd.antrea.io/v1beta1
kind: ClusterGroup
metadata: {name: ring-a}
spec:
  childGroups: [ring-b]
---
apiVersion: crd.antrea.io/v1beta1
kind: ClusterGroup
metadata: {name: ring-b}
spec:
  childGroups: [ring-a]
";

const WEB_IP: &str = "10.0.0.1";
const DB_IP: &str = "10.0.0.2";

/// Two configured vNICs in namespace `lab`: `web` (app=web) and `db` (app=db).
fn lab_config() -> VdfwdConfig {
    VdfwdConfig::new()
        .with_namespace("lab", &[("env", "test")])
        .with_vnic(VnicDef::new("web", "lab", MacAddr::local(1), ip(WEB_IP)).label("app", "web"))
        .with_vnic(VnicDef::new("db", "lab", MacAddr::local(2), ip(DB_IP)).label("app", "db"))
}

fn start(cfg: VdfwdConfig) -> Vdfwd {
    require(&[Prereq::Root]).unwrap();
    Vdfwd::start(VdfwdSpec::new(cfg)).unwrap()
}

/// The api crate's REST client and tonic stubs on a private runtime, so the tests themselves
/// stay synchronous like the rest of the harness.
struct Api {
    rt: tokio::runtime::Runtime,
    rest: Client,
}

impl Api {
    fn new(target: Target, token: Option<&str>) -> Api {
        Api {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            rest: Client::new(target, token.map(str::to_string)),
        }
    }

    fn unix(vd: &Vdfwd) -> Api {
        Api::new(Target::Unix(vd.api_socket()), None)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.rt.block_on(self.rest.get(path))
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<T, ClientError> {
        self.rt.block_on(self.rest.call(method, path, Some(body)))
    }

    fn apply(&self, files: &[(&str, &str)], dry_run: bool) -> Result<ChangeReport, ClientError> {
        self.call(Method::POST, "/v1/apply", &apply_body(files, dry_run))
    }

    fn revision(&self) -> u64 {
        self.get::<Value>("/v1/revision").unwrap()["revision"]
            .as_u64()
            .unwrap()
    }

    fn policies(&self) -> ObjectList {
        self.get("/v1/policies").unwrap()
    }

    /// The revision the data plane enforces right now.
    fn enforced_revision(&self) -> u64 {
        let s: Value = self.get("/v1/stats").unwrap();
        s["data_plane"]["enforced_revision"].as_u64().unwrap()
    }

    fn trace(&self, src: &str, dst: &str, port: u16) -> Value {
        self.call(
            Method::POST,
            "/v1/trace",
            &json!({"src": src, "dst": dst, "protocol": "TCP", "port": port}),
        )
        .unwrap()
    }

    fn grpc_unix(&self, socket: &Path) -> ControlClient<Channel> {
        let path = socket.to_path_buf();
        let ch = self.rt.block_on(async move {
            Endpoint::try_from("http://localhost")
                .unwrap()
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                    }
                }))
                .await
                .unwrap()
        });
        ControlClient::new(ch)
    }

    fn grpc_tcp(&self, addr: std::net::SocketAddr) -> ControlClient<Channel> {
        let ch = self.rt.block_on(async {
            Endpoint::try_from(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap()
        });
        ControlClient::new(ch)
    }
}

fn apply_body(files: &[(&str, &str)], dry_run: bool) -> Value {
    json!({
        "files": files.iter().map(|(f, t)| json!({"file": f, "text": t})).collect::<Vec<_>>(),
        "dry_run": dry_run,
    })
}

fn refs(list: &ObjectList) -> Vec<String> {
    list.objects
        .iter()
        .map(|o| api::refs::object_ref(&o.key))
        .collect()
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

fn grpc_file(file: &str, text: &str) -> proto::InputFile {
    proto::InputFile {
        file: file.into(),
        text: text.into(),
        content_type: String::new(),
    }
}

fn policy_ref(r: &str) -> proto::ObjectRef {
    proto::ObjectRef {
        kind: "policy".into(),
        r#ref: r.into(),
    }
}

/// Runs vdfwctl, which must fail; returns its stderr.
fn vdfwctl_fails(vd: &Vdfwd, args: &[&str]) -> String {
    let out = vd.vdfwctl(args).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "vdfwctl {args:?} should have failed; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn verdict(t: &Value) -> &str {
    t["verdict"].as_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. apply / list / get / delete / dry-run over REST (vdfwctl and the REST client) and gRPC
// ---------------------------------------------------------------------------------------------

#[test]
fn policies_apply_list_get_delete_and_dry_run_over_rest_and_grpc() {
    let clock = Clock::start("api-crud");
    let vd = start(lab_config());
    let api = Api::unix(&vd);
    let files = tempfile_dir();
    // The configuration's namespace and vNICs are synced in as revisions of their own.
    let r0 = vd.vdfwctl_json(&["revision"]).unwrap()["revision"]
        .as_u64()
        .unwrap();
    assert!(r0 >= 1, "config endpoints are stored: revision {r0}");
    assert!(api.policies().objects.is_empty());
    // No policy: lab/db is not isolated, so Kubernetes' default allow applies.
    assert_eq!(verdict(&api.trace("lab/web", "lab/db", 5433)), "allow");

    // vdfwctl apply of a two-document file: one revision for both.
    let prod = write_file(
        files.path(),
        "prod.yaml",
        &format!("# lab policies\n{DB_POLICY}---\n{BASELINE}"),
    );
    let rep = vd
        .vdfwctl_json(&["apply", "-f", prod.to_str().unwrap()])
        .unwrap();
    let r1 = rep["revision"].as_u64().unwrap();
    assert_eq!(r1, r0 + 1, "{rep}");
    let actions: Vec<&str> = rep["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["added", "added"], "{rep}");
    let list: ObjectList =
        serde_json::from_value(vd.vdfwctl_json(&["get", "policies"]).unwrap()).unwrap();
    assert_eq!(list.revision, r1);
    assert_eq!(refs(&list), ["ACNP:deny-ssh", "K8sNP:lab/db-allow-web"]);
    // Acknowledged means enforced: the data plane already runs revision r1.
    assert_eq!(api.enforced_revision(), r1);
    let allowed = api.trace("lab/web", "lab/db", 5432);
    assert_eq!(verdict(&allowed), "allow", "{allowed}");
    assert_eq!(allowed["policy"], "K8sNP:lab/db-allow-web", "{allowed}");
    assert_eq!(verdict(&api.trace("lab/web", "lab/db", 5433)), "drop");
    let ssh = api.trace("lab/db", "lab/web", 22);
    assert_eq!(verdict(&ssh), "drop", "{ssh}");
    assert_eq!(ssh["log_label"], "ssh-block", "{ssh}");

    // get over REST: the document as written, where it was in the file, its rules.
    let got: Value = api
        .get("/v1/objects/policy/K8sNP:lab/db-allow-web")
        .unwrap();
    assert_eq!(
        got["document"]["text"],
        format!("# lab policies\n{DB_POLICY}")
    );
    assert_eq!(got["document"]["file"], prod.display().to_string());
    assert_eq!(got["mod_revision"], r1);
    assert_eq!(got["status"], "realized");
    assert_eq!(got["rules"].as_array().unwrap().len(), 1);

    // Dry runs change nothing: not the store, not the revision, not what is enforced.
    let edit = write_file(
        files.path(),
        "edit.yaml",
        &DB_POLICY.replace("5432", "5433"),
    );
    let dry = vd
        .vdfwctl_json(&["apply", "--dry-run", "-f", edit.to_str().unwrap()])
        .unwrap();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["revision"], r1);
    assert_eq!(dry["changes"][0]["action"], "changed", "{dry}");
    let dry_del = vd
        .vdfwctl_json(&["delete", "policy", "ACNP:deny-ssh", "--dry-run"])
        .unwrap();
    assert_eq!(dry_del["changes"][0]["action"], "removed", "{dry_del}");
    let dry_rest: ChangeReport = api.apply(&[("edit.yaml", WEB_EGRESS)], true).unwrap();
    assert!(dry_rest.dry_run);
    assert_eq!(api.revision(), r1);
    assert_eq!(api.enforced_revision(), r1);
    assert_eq!(
        refs(&api.policies()),
        ["ACNP:deny-ssh", "K8sNP:lab/db-allow-web"]
    );
    assert_eq!(verdict(&api.trace("lab/web", "lab/db", 5432)), "allow");
    assert_eq!(verdict(&api.trace("lab/web", "lab/db", 5433)), "drop");
    clock.step("vdfwctl apply / get / dry-run");

    // Delete through vdfwctl: a new revision, gone from the list and from enforcement.
    let del = vd
        .vdfwctl_json(&["delete", "policy", "ACNP:deny-ssh"])
        .unwrap();
    let r2 = del["revision"].as_u64().unwrap();
    assert!(r2 > r1);
    assert_eq!(refs(&api.policies()), ["K8sNP:lab/db-allow-web"]);
    assert!(matches!(
        api.get::<Value>("/v1/objects/policy/ACNP:deny-ssh"),
        Err(ClientError::Api {
            status: StatusCode::NOT_FOUND,
            ..
        })
    ));
    assert_eq!(api.enforced_revision(), r2);
    let ssh = api.trace("lab/db", "lab/web", 22);
    assert_eq!(verdict(&ssh), "allow", "{ssh}");
    let again = vdfwctl_fails(&vd, &["delete", "policy", "ACNP:deny-ssh"]);
    assert!(again.contains("not found"), "{again}");

    // gRPC over the same unix socket: apply, re-apply (no-op), list, get, dry-run, delete.
    let mut g = api.grpc_unix(&vd.api_socket());
    let r3 = api
        .rt
        .block_on(g.apply(proto::ApplyRequest {
            files: vec![grpc_file("web.yaml", WEB_EGRESS)],
            dry_run: false,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(r3.revision, r2 + 1);
    assert!(r3.changes[0].object.ends_with("lab/web-egress"), "{r3:?}");
    assert_eq!(r3.changes[0].action, "added");
    let same = api
        .rt
        .block_on(g.apply(proto::ApplyRequest {
            files: vec![grpc_file("web.yaml", WEB_EGRESS)],
            dry_run: false,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(
        same.revision, r3.revision,
        "identical content: no new revision"
    );
    assert_eq!(same.changes[0].action, "unchanged");
    let listed = api
        .rt
        .block_on(g.list_objects(proto::ListObjectsRequest {
            kind: "policy".into(),
        }))
        .unwrap()
        .into_inner();
    assert_eq!(listed.revision, r3.revision);
    let names: Vec<&str> = listed.objects.iter().map(|o| o.object.as_str()).collect();
    assert_eq!(names, ["K8sNP:lab/db-allow-web", "K8sNP:lab/web-egress"]);
    let info = api
        .rt
        .block_on(g.get_object(policy_ref("K8sNP:lab/web-egress")))
        .unwrap()
        .into_inner();
    assert_eq!(info.text, WEB_EGRESS);
    assert_eq!(info.file, "web.yaml");
    assert_eq!(info.status, "realized");
    assert_eq!(info.rules[0].direction, "egress");
    // The egress policy is live: web may reach db:5432 only.
    assert_eq!(verdict(&api.trace("lab/web", "192.0.2.10", 443)), "drop");
    assert_eq!(verdict(&api.trace("lab/web", "lab/db", 5432)), "allow");

    let dry = api
        .rt
        .block_on(g.delete_objects(proto::DeleteObjectsRequest {
            refs: vec![policy_ref("K8sNP:lab/web-egress")],
            dry_run: true,
        }))
        .unwrap()
        .into_inner();
    assert!(dry.dry_run);
    assert_eq!(dry.revision, r3.revision);
    assert_eq!(api.policies().objects.len(), 2);
    let gone = api
        .rt
        .block_on(g.delete_objects(proto::DeleteObjectsRequest {
            refs: vec![
                policy_ref("K8sNP:lab/web-egress"),
                policy_ref("K8sNP:lab/db-allow-web"),
            ],
            dry_run: false,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(gone.revision, r3.revision + 1, "two deletes, one revision");
    assert!(api.policies().objects.is_empty());
    let err = api
        .rt
        .block_on(g.get_object(policy_ref("K8sNP:lab/web-egress")))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let stats = api
        .rt
        .block_on(g.get_stats(proto::ListRequest {}))
        .unwrap()
        .into_inner();
    assert!(stats.data_plane_attached);
    assert_eq!(stats.enforced_revision, gone.revision);
    assert_eq!(verdict(&api.trace("lab/web", "lab/db", 5433)), "allow");
    clock.step("vdfwctl delete, gRPC apply / list / get / delete");
}

fn tempfile_dir() -> vdfw_integration::tempfile::TempDir {
    vdfw_integration::tempfile::tempdir().unwrap()
}

// ---------------------------------------------------------------------------------------------
// 2. Invalid sets are rejected whole, with file:line and field; the running set stays
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_or_refused_sets_change_nothing() {
    let clock = Clock::start("api-reject");
    let vd = start(lab_config());
    let api = Api::unix(&vd);
    let files = tempfile_dir();
    let r1 = api
        .apply(&[("db.yaml", DB_POLICY)], false)
        .unwrap()
        .revision;
    let before = api.policies();
    assert_eq!(refs(&before), ["K8sNP:lab/db-allow-web"]);

    // Document 1: a valid edit (5432 -> 6543); document 2: a typo'd field.
    let bad_text = format!(
        "{}---\n{}",
        DB_POLICY.replace("5432", "6543"),
        BASELINE.replace("      enableLogging", "      enableLoging")
    );
    let typo_line = bad_text
        .lines()
        .position(|l| l.contains("enableLoging"))
        .unwrap()
        + 1;
    let bad = write_file(files.path(), "bad.yaml", &bad_text);

    // vdfwctl: exit status 1, the error names file:line and the field.
    let stderr = vdfwctl_fails(&vd, &["apply", "-f", bad.to_str().unwrap()]);
    let at = format!("{}:{typo_line}", bad.display());
    assert!(stderr.contains(&at), "expected {at} in:\n{stderr}");
    assert!(stderr.contains("spec.ingress[0].enableLoging"), "{stderr}");
    assert!(stderr.contains("nothing was applied"), "{stderr}");

    // REST: 400 with a structured detail.
    match api.apply(&[("bad.yaml", &bad_text)], false) {
        Err(ClientError::Api { status, error }) => {
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(error.details.len(), 1, "{error:?}");
            let d = &error.details[0];
            assert_eq!((d.file.as_str(), d.line), ("bad.yaml", typo_line));
            assert_eq!(d.field.as_deref(), Some("spec.ingress[0].enableLoging"));
        }
        other => panic!("expected 400, got {other:?}"),
    }
    // gRPC: INVALID_ARGUMENT with the same location.
    let mut g = api.grpc_unix(&vd.api_socket());
    let err = api
        .rt
        .block_on(g.apply(proto::ApplyRequest {
            files: vec![grpc_file("bad.yaml", &bad_text)],
            dry_run: false,
        }))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains(&format!("bad.yaml:{typo_line}"))
            && err.message().contains("enableLoging"),
        "{}",
        err.message()
    );

    let unchanged = |why: &str| {
        assert_eq!(api.revision(), r1, "{why}: revision moved");
        assert_eq!(api.enforced_revision(), r1, "{why}: data plane moved");
        let now = api.policies();
        assert_eq!(refs(&now), refs(&before), "{why}");
        assert_eq!(
            now.objects[0].document, before.objects[0].document,
            "{why}: stored text changed"
        );
        // The valid first document of the batch was not applied either.
        assert_eq!(verdict(&api.trace("lab/web", "lab/db", 5432)), "allow");
        assert_eq!(verdict(&api.trace("lab/web", "lab/db", 6543)), "drop");
    };
    unchanged("malformed document");
    clock.step("malformed document refused by vdfwctl, REST and gRPC");

    // A set every document of which parses, but that the engine refuses (a group cycle),
    // alongside a valid edit.
    let cyc_text = format!("{}---\n{GROUP_CYCLE}", DB_POLICY.replace("5432", "6543"));
    let cyc = write_file(files.path(), "cycle.yaml", &cyc_text);
    let stderr = vdfwctl_fails(&vd, &["apply", "-f", cyc.to_str().unwrap()]);
    assert!(
        stderr.contains("rejected by the policy engine") && stderr.contains("cycle"),
        "{stderr}"
    );
    match api.apply(&[("cycle.yaml", &cyc_text)], false) {
        Err(ClientError::Api { status, error }) => {
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(error.error.contains("ring-a"), "{}", error.error);
        }
        other => panic!("expected 422, got {other:?}"),
    }
    // Not even as a dry run.
    assert!(api.apply(&[("cycle.yaml", &cyc_text)], true).is_err());
    let err = api
        .rt
        .block_on(g.apply(proto::ApplyRequest {
            files: vec![grpc_file("cycle.yaml", &cyc_text)],
            dry_run: false,
        }))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let groups: ObjectList = api.get("/v1/groups").unwrap();
    assert!(groups.objects.is_empty(), "{:?}", refs(&groups));
    unchanged("engine-refused set");
    // And the daemon still takes a good apply afterwards.
    let ok = api.apply(&[("web.yaml", WEB_EGRESS)], false).unwrap();
    assert_eq!(ok.revision, r1 + 1);
    assert_eq!(api.enforced_revision(), r1 + 1);
    clock.step("engine-refused set refused; a good apply follows");
}

// ---------------------------------------------------------------------------------------------
// 3. kill -9 in the middle of a stream of applies
// ---------------------------------------------------------------------------------------------

/// One apply of the stream: its number and the policies its file declares.
#[derive(Clone, Debug)]
struct StreamApply {
    n: usize,
    names: Vec<String>,
}

fn stream_policy(name: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: lab}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n    - from: [{{podSelector: {{matchLabels: {{app: web}}}}}}]\n      ports: [{{port: {port}}}]\n"
    )
}

/// Applies one policy file after another (every third declaring two policies) until the
/// daemon goes away; returns why the stream ended. `first` numbers the applies.
fn apply_stream(
    socket: PathBuf,
    first: usize,
    acked: Arc<Mutex<Vec<(StreamApply, u64)>>>,
    attempted: Arc<Mutex<Vec<StreamApply>>>,
) -> ClientError {
    let api = Api::new(Target::Unix(socket), None);
    let mut last = 0;
    for n in first..first + 5000 {
        let names: Vec<String> = if n % 3 == 2 {
            vec![format!("s{n}-a"), format!("s{n}-b")]
        } else {
            vec![format!("s{n}")]
        };
        let text = names
            .iter()
            .map(|name| stream_policy(name, stream_port(n)))
            .collect::<Vec<_>>()
            .join("---\n");
        let a = StreamApply { n, names };
        attempted.lock().unwrap().push(a.clone());
        match api.apply(&[(&format!("stream/{n}.yaml"), &text)], false) {
            Ok(rep) => {
                assert!(
                    rep.revision > last,
                    "revision went {last} -> {}",
                    rep.revision
                );
                last = rep.revision;
                acked.lock().unwrap().push((a, rep.revision));
            }
            Err(e) => return e,
        }
    }
    panic!("5000 applies went through before vdfwd was killed");
}

fn stream_port(n: usize) -> u16 {
    1000 + (n % 60000) as u16
}

/// Rounds of: stream applies, SIGKILL vdfwd after a varying number of acknowledgements,
/// restart, check. The kill lands at a different point of an apply each round (parse,
/// engine, store commit, publish, reply), so the invariants are checked against several.
#[test]
fn sigkill_during_a_stream_of_applies_loses_nothing_acknowledged() {
    use std::os::unix::process::ExitStatusExt;
    let clock = Clock::start("api-sigkill");
    let mut vd = start(lab_config());
    let acked: Arc<Mutex<Vec<(StreamApply, u64)>>> = Arc::default();
    let attempted: Arc<Mutex<Vec<StreamApply>>> = Arc::default();
    let key = |name: &str| format!("K8sNP:lab/{name}");
    let mut in_flight_committed = 0;
    const ROUNDS: usize = 4;
    for round in 0..ROUNDS {
        let first = attempted.lock().unwrap().len();
        let acked_before = acked.lock().unwrap().len();
        let client = {
            let (socket, acked, attempted) = (vd.api_socket(), acked.clone(), attempted.clone());
            thread::spawn(move || apply_stream(socket, first, acked, attempted))
        };
        let want = acked_before + 20 + 7 * round;
        wait_for("acknowledged applies", Duration::from_secs(120), || {
            acked.lock().unwrap().len() >= want
        });
        // A few hundred microseconds more, differently each round, so the kill is not
        // always right after an acknowledgement.
        thread::sleep(Duration::from_micros(1500 * round as u64));
        let status = vd.stop(libc::SIGKILL, Duration::from_secs(10)).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        let err = client.join().unwrap();
        // The stream ends because the daemon went away, not because it refused an apply.
        assert!(
            matches!(err, ClientError::Connect { .. } | ClientError::Http(_)),
            "round {round}: the apply stream ended with {err:?}"
        );
        let acked = acked.lock().unwrap().clone();
        let attempted = attempted.lock().unwrap().clone();
        let (_, last_rev) = acked.last().cloned().unwrap();

        vd.start_again().unwrap();
        let api = Api::unix(&vd);
        let list = api.policies();
        let present: BTreeSet<String> = refs(&list).into_iter().collect();
        for (a, rev) in &acked {
            for name in &a.names {
                assert!(
                    present.contains(&key(name)),
                    "round {round}: apply #{} acknowledged at revision {rev} lost {name} across SIGKILL",
                    a.n
                );
            }
        }
        assert!(
            list.revision >= last_rev,
            "round {round}: revision {} after restart < last acknowledged {last_rev}",
            list.revision
        );
        // All or nothing per apply, and nothing that was never sent.
        let mut expected = 0;
        for a in &attempted {
            let here = a.names.iter().filter(|n| present.contains(&key(n))).count();
            assert!(
                here == 0 || here == a.names.len(),
                "round {round}: apply #{} is half-applied: {here} of {:?}",
                a.n,
                a.names
            );
            expected += here;
        }
        assert_eq!(
            present.len(),
            expected,
            "round {round}: policies nobody applied: {present:?}"
        );
        // Every apply but the one cut short per round was acknowledged; the cut one may or
        // may not have been committed (then it is whole, and the revision is one past).
        assert_eq!(attempted.len(), acked.len() + round + 1);
        let cut = attempted.last().unwrap();
        if cut.names.iter().all(|n| present.contains(&key(n))) {
            in_flight_committed += 1;
            assert_eq!(list.revision, last_rev + 1, "round {round}");
        } else {
            assert_eq!(list.revision, last_rev, "round {round}");
        }
        assert!(list
            .objects
            .iter()
            .all(|o| o.status == api::controller::ObjectStatus::Realized));
        // Realized again before anything was served: the data plane enforces the stored
        // revision, including the last acknowledged policy.
        assert_eq!(api.enforced_revision(), list.revision);
        let (a, _) = acked.last().unwrap();
        let t = api.trace("lab/web", "lab/db", stream_port(a.n));
        assert_eq!(verdict(&t), "allow", "{t}");
        clock.step(&format!(
            "round {round}: SIGKILL after {} acknowledged applies (last revision {last_rev}); \
             restarted with {} policies at revision {}; cut apply {}",
            acked.len(),
            present.len(),
            list.revision,
            if list.revision > last_rev {
                "committed"
            } else {
                "not committed"
            }
        ));
    }
    eprintln!("    in-flight apply committed without acknowledgement in {in_flight_committed} of {ROUNDS} rounds");
}

// ---------------------------------------------------------------------------------------------
// 4. Authentication: unix socket 0600, bearer token on TCP, mutual TLS
// ---------------------------------------------------------------------------------------------

fn tcp_api_config(extra: &str) -> toml::Value {
    let text = format!("tcp = {{ listen = \"127.0.0.1:0\", {extra} }}");
    toml::Value::Table(text.parse().unwrap())
}

#[test]
fn unauthenticated_calls_are_refused_and_logged() {
    let clock = Clock::start("api-auth");
    let secrets = tempfile_dir();
    let token_file = write_file(secrets.path(), "token", &format!("{TOKEN}\n"));
    let cfg = lab_config().with_setting(
        "api",
        tcp_api_config(&format!("token_file = \"{}\"", token_file.display())),
    );
    let vd = start(cfg);
    let mode = std::fs::metadata(vd.api_socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "API socket mode {mode:o}");
    let addr = vd.api_tcp_addr().unwrap();
    assert!(addr.ip().is_loopback());
    let unix = Api::unix(&vd);
    let r0 = unix.revision();

    // REST: no token, a wrong one -> 401; a write without a token never reaches the store.
    let mut refused = 0;
    for token in [None, Some("e2e-token-0000000000000000")] {
        let api = Api::new(Target::Tcp(addr.to_string()), token);
        match api.get::<Value>("/v1/revision") {
            Err(ClientError::Api { status, error }) => {
                assert_eq!(status, StatusCode::UNAUTHORIZED);
                assert!(error.error.contains("Bearer"), "{}", error.error);
            }
            other => panic!("expected 401, got {other:?}"),
        }
        refused += 1;
    }
    let anon = Api::new(Target::Tcp(addr.to_string()), None);
    assert!(matches!(
        anon.apply(&[("db.yaml", DB_POLICY)], false),
        Err(ClientError::Api {
            status: StatusCode::UNAUTHORIZED,
            ..
        })
    ));
    refused += 1;
    assert_eq!(unix.revision(), r0);
    // The right token: served, reads and writes.
    let authed = Api::new(Target::Tcp(addr.to_string()), Some(TOKEN));
    let rev: Value = authed.get("/v1/revision").unwrap();
    assert_eq!(rev["revision"], r0);
    let rep = authed.apply(&[("db.yaml", DB_POLICY)], false).unwrap();
    assert_eq!(rep.revision, r0 + 1);
    clock.step("REST over TCP: 401 without / with a wrong token, 200 with it");

    // gRPC on the same port.
    let mut g = authed.grpc_tcp(addr);
    let err = authed
        .rt
        .block_on(g.get_revision(proto::ListRequest {}))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = authed
        .rt
        .block_on(g.get_revision(with_token(proto::ListRequest {}, "not-the-token")))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = authed
        .rt
        .block_on(g.apply(proto::ApplyRequest {
            files: vec![grpc_file("web.yaml", WEB_EGRESS)],
            dry_run: false,
        }))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    refused += 3;
    assert_eq!(unix.revision(), r0 + 1);
    let ok = authed
        .rt
        .block_on(g.apply(with_token(
            proto::ApplyRequest {
                files: vec![grpc_file("web.yaml", WEB_EGRESS)],
                dry_run: false,
            },
            TOKEN,
        )))
        .unwrap()
        .into_inner();
    assert_eq!(ok.revision, r0 + 2);
    clock.step("gRPC over TCP: UNAUTHENTICATED without / with a wrong token, OK with it");

    // vdfwctl against the TCP listener.
    let server = format!("http://{addr}");
    let stderr = vdfwctl_fails(&vd, &["--server", &server, "revision"]);
    assert!(stderr.contains("401"), "{stderr}");
    refused += 1;
    let out = vd
        .vdfwctl(&["--server", &server, "--token", TOKEN, "revision"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (r0 + 2).to_string()
    );

    // Every refusal was logged (with the peer and why) and counted; the token never was.
    let log = vd.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused unauthenticated API call"))
        .collect();
    assert_eq!(
        lines.len(),
        refused,
        "refusals logged:\n{}",
        lines.join("\n")
    );
    assert!(lines.iter().all(|l| l.contains("peer=127.0.0.1:")));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("wrong bearer token"))
            .count(),
        2
    );
    assert!(lines
        .iter()
        .any(|l| l.contains("path=/vdfw.v1.Control/Apply")));
    assert!(!log.contains(TOKEN), "the token leaked into the log");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = rt.block_on(async {
        let c = Client::new(Target::Unix(vd.api_socket()), None);
        let (_, body) = c.send(Method::GET, "/metrics", None).await.unwrap();
        let bytes = body.collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    });
    assert!(
        metrics.contains(&format!("vdfw_api_auth_failures_total {refused}")),
        "{metrics}"
    );
    clock.step(&format!("{refused} refusals logged and counted"));
}

mod pki {
    //! A throwaway CA, the server's certificate and key, a client's, and a client certificate
    //! from another CA (rcgen).

    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };

    pub struct Pki {
        pub ca: PathBuf,
        pub server_cert: PathBuf,
        pub server_key: PathBuf,
        pub client_cert: PathBuf,
        pub client_key: PathBuf,
        pub rogue_cert: PathBuf,
        pub rogue_key: PathBuf,
    }

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(
        dir: &Path,
        name: &str,
        sans: &[&str],
        purpose: ExtendedKeyUsagePurpose,
        issuer: &CertifiedIssuer<'static, KeyPair>,
    ) -> (PathBuf, PathBuf) {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    pub fn make(dir: &Path) -> Pki {
        let ca1 = ca("vdfw e2e CA");
        let ca2 = ca("rogue CA");
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, ca1.pem()).unwrap();
        let server = ExtendedKeyUsagePurpose::ServerAuth;
        let client = ExtendedKeyUsagePurpose::ClientAuth;
        let (server_cert, server_key) =
            leaf(dir, "server", &["127.0.0.1", "localhost"], server, &ca1);
        let (client_cert, client_key) = leaf(dir, "client", &["ops"], client.clone(), &ca1);
        let (rogue_cert, rogue_key) = leaf(dir, "rogue", &["ops"], client, &ca2);
        Pki {
            ca: ca_path,
            server_cert,
            server_key,
            client_cert,
            client_key,
            rogue_cert,
            rogue_key,
        }
    }
}

#[test]
fn mutual_tls_listener_serves_only_certified_clients_with_the_token() {
    let clock = Clock::start("api-mtls");
    let dir = tempfile_dir();
    let pki = pki::make(dir.path());
    let tls = format!(
        "token = \"{TOKEN}\", tls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    );
    let vd = start(lab_config().with_setting("api", tcp_api_config(&tls)));
    assert!(
        vd.log()
            .contains("API listening (TCP, mutual TLS + bearer token)"),
        "{}",
        vd.log()
    );
    let addr = vd.api_tcp_addr().unwrap();
    let server = format!("https://{addr}");
    let ctl = |cert: Option<(&Path, &Path)>, token: bool| {
        let mut args: Vec<String> = vec!["--server".into(), server.clone()];
        args.extend(["--cacert".into(), pki.ca.display().to_string()]);
        if let Some((c, k)) = cert {
            args.extend(["--cert".into(), c.display().to_string()]);
            args.extend(["--key".into(), k.display().to_string()]);
        }
        if token {
            args.extend(["--token".into(), TOKEN.into()]);
        }
        args.push("revision".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        vd.vdfwctl(&args).unwrap()
    };
    let rev = Api::unix(&vd).revision();
    let ok = ctl(Some((&pki.client_cert, &pki.client_key)), true);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), rev.to_string());
    // A certified client without the token: 401.
    let no_token = ctl(Some((&pki.client_cert, &pki.client_key)), false);
    assert!(!no_token.status.success());
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("401"));
    // No client certificate, or one from another CA: refused in the handshake.
    assert!(!ctl(None, true).status.success());
    assert!(!ctl(Some((&pki.rogue_cert, &pki.rogue_key)), true)
        .status
        .success());
    // Cleartext on the TLS port gets nowhere.
    let plain = vd
        .vdfwctl(&[
            "--server",
            &format!("http://{addr}"),
            "--token",
            TOKEN,
            "revision",
        ])
        .unwrap();
    assert!(!plain.status.success());
    wait_for("handshake refusals logged", Duration::from_secs(5), || {
        vd.log()
            .matches("refused API connection: TLS handshake failed")
            .count()
            >= 3
    });
    clock.step(
        "mTLS: certified client + token served; no token 401; no/rogue cert and cleartext refused",
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Endpoints registered through the API
// ---------------------------------------------------------------------------------------------

#[test]
fn api_registered_endpoints_get_a_socket_follow_labels_and_survive_restarts() {
    let clock = Clock::start("api-endpoints");
    let mut vd = start(lab_config());
    let api = Api::unix(&vd);
    let files = tempfile_dir();
    api.apply(&[("db.yaml", DB_POLICY), ("web.yaml", WEB_EGRESS)], false)
        .unwrap();
    let sock = vd.dir().join("sockets/batch-0.sock");
    assert!(!sock.exists());
    let endpoint = |app: &str| {
        json!({
            "name": "batch-0", "namespace": "lab",
            "labels": {"app": app},
            "mac": "02:00:00:00:00:09",
            "ips": ["10.0.0.9"],
            "socket": {"path": sock, "role": "server"}
        })
    };

    // Register with vdfwctl: the vNIC's vhost-user socket appears, served by vdfwd.
    let r0 = api.revision();
    let ep_file = write_file(files.path(), "batch.json", &endpoint("batch").to_string());
    let rep = vd
        .vdfwctl_json(&["endpoint", "-f", ep_file.to_str().unwrap()])
        .unwrap();
    assert_eq!(rep["revision"], r0 + 1, "{rep}");
    assert!(rep.get("warnings").is_none(), "{rep}");
    wait_for("the new vNIC's socket", Duration::from_secs(5), || {
        sock.exists()
    });
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&sock).unwrap().file_type().is_socket());
    let inode = std::fs::metadata(&sock).unwrap().ino();
    let eps: Value = vd.vdfwctl_json(&["get", "endpoints"]).unwrap();
    assert!(
        eps.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "batch-0"),
        "{eps}"
    );
    let stats: Value = api.get("/v1/stats").unwrap();
    assert!(
        stats["data_plane"]["vnics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["endpoint"]["name"] == "batch-0" && v["connected"] == false),
        "{stats}"
    );
    // app=batch: no policy selects it; db's ingress policy does not admit it.
    let t = api.trace("lab/batch-0", "lab/db", 5432);
    assert_eq!(verdict(&t), "drop", "{t}");
    assert!(t["egress"]["decided_by"] != "rule", "{t}");
    assert_eq!(
        verdict(&api.trace("lab/batch-0", "192.0.2.10", 443)),
        "allow"
    );
    clock.step("endpoint registered: socket served, not selected by app=web policies");

    // Relabel to app=web over REST: re-realized, both web policies now select it, and the
    // port is kept (same socket inode: only labels changed).
    let rep: Value = api
        .call(Method::PUT, "/v1/endpoints", &endpoint("web"))
        .unwrap();
    assert_eq!(rep["revision"], r0 + 2);
    let t = api.trace("lab/batch-0", "lab/db", 5432);
    assert_eq!(verdict(&t), "allow", "{t}");
    assert_eq!(t["ingress"]["policy"], "K8sNP:lab/db-allow-web", "{t}");
    assert_eq!(t["egress"]["policy"], "K8sNP:lab/web-egress", "{t}");
    let t = api.trace("lab/batch-0", "192.0.2.10", 443);
    assert_eq!(verdict(&t), "drop", "web-egress isolates it now: {t}");
    assert_eq!(std::fs::metadata(&sock).unwrap().ino(), inode);
    assert_eq!(api.enforced_revision(), r0 + 2);
    clock.step("relabelled: now selected by both policies, port kept");

    // Restart: endpoint, labels and policies come back from the store; the socket is served
    // again (SIGTERM removed it).
    vd.stop(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    assert!(!sock.exists(), "vdfwd removes its sockets on SIGTERM");
    vd.start_again().unwrap();
    let api = Api::unix(&vd);
    wait_for("the socket after restart", Duration::from_secs(5), || {
        sock.exists()
    });
    let eps: Vec<api::types::EndpointSpec> = api.get("/v1/endpoints").unwrap();
    let batch = eps
        .iter()
        .find(|e| e.name == "batch-0")
        .expect("batch-0 kept");
    assert_eq!(batch.labels["app"], "web");
    assert_eq!(refs(&api.policies()).len(), 2);
    assert_eq!(api.revision(), r0 + 2, "a restart stores nothing new");
    assert_eq!(verdict(&api.trace("lab/batch-0", "lab/db", 5432)), "allow");
    assert_eq!(
        verdict(&api.trace("lab/batch-0", "192.0.2.10", 443)),
        "drop"
    );
    clock.step("restart: endpoint and policies back, socket served again");

    // Delete: the socket goes away, and stays away across a restart.
    let rep = vd
        .vdfwctl_json(&["delete", "endpoint", "lab/batch-0"])
        .unwrap();
    assert_eq!(rep["revision"], r0 + 3, "{rep}");
    wait_for("the socket removed", Duration::from_secs(5), || {
        !sock.exists()
    });
    assert!(matches!(
        api.call::<Value>(
            Method::POST,
            "/v1/trace",
            &json!({"src": "lab/batch-0", "dst": "lab/db", "port": 5432})
        ),
        Err(ClientError::Api {
            status: StatusCode::BAD_REQUEST,
            ..
        })
    ));
    vd.stop(libc::SIGKILL, Duration::from_secs(10)).unwrap();
    vd.start_again().unwrap();
    let api = Api::unix(&vd);
    let eps: Vec<api::types::EndpointSpec> = api.get("/v1/endpoints").unwrap();
    let names: BTreeSet<&str> = eps.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["db", "web"]));
    thread::sleep(Duration::from_millis(500));
    assert!(!sock.exists());
    assert_eq!(refs(&api.policies()).len(), 2);
    clock.step("deleted: socket gone, still gone after SIGKILL + restart");
}
