//! REST API (JSON over HTTP/1.1 or HTTP/2). Described by the OpenAPI document at
//! `GET /openapi.json`. Object references in paths use the format of [`crate::refs`].

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dfw::model::{LabelSelector, Namespace};
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{OpenApi, ToSchema};

use super::AppState;
use crate::controller::{
    ChangeReport, Controller, ControllerError, InputFile, MutationReport, ObjectInfo,
};
use crate::flows::{FlowFilter, Followed};
use crate::realized::DocumentError;
use crate::refs;
use crate::store::StoreError;
use crate::trace::{TraceRequest, TraceResult};
use crate::types::{AuditTarget, EndpointSpec, ResourceKey, ResourceKind, Revision};

/// Error body of every failed call.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    pub error: String,
    /// Per-document problems (file, line, field) when documents were rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<DocumentError>,
}

impl ApiError {
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            details: Vec::new(),
        }
    }
}

/// A controller error as an HTTP response.
pub struct HttpError(StatusCode, ApiError);

impl From<ControllerError> for HttpError {
    fn from(e: ControllerError) -> Self {
        let status = match &e {
            ControllerError::Invalid(_) | ControllerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControllerError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ControllerError::NotFound(_) => StatusCode::NOT_FOUND,
            ControllerError::Store(StoreError::Conflict { .. }) => StatusCode::CONFLICT,
            ControllerError::DataPlane(_) => StatusCode::BAD_GATEWAY,
            ControllerError::Store(_) | ControllerError::Poisoned => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let details = match &e {
            ControllerError::Invalid(d) => d.clone(),
            _ => Vec::new(),
        };
        if status.is_server_error() {
            tracing::error!("API call failed: {e}");
        }
        HttpError(
            status,
            ApiError {
                error: e.to_string(),
                details,
            },
        )
    }
}

impl From<refs::RefError> for HttpError {
    fn from(e: refs::RefError) -> Self {
        HttpError(StatusCode::BAD_REQUEST, ApiError::new(e.0))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

type Result<T> = std::result::Result<Json<T>, HttpError>;

/// Runs a controller call on the blocking pool (store commits fsync).
async fn blocking<T, F>(c: &Arc<Controller>, f: F) -> std::result::Result<T, HttpError>
where
    T: Send + 'static,
    F: FnOnce(&Controller) -> std::result::Result<T, ControllerError> + Send + 'static,
{
    let c = c.clone();
    match tokio::task::spawn_blocking(move || f(&c)).await {
        Ok(r) => r.map_err(HttpError::from),
        Err(e) => Err(HttpError(
            StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::new(format!("internal error: {e}")),
        )),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApplyRequest {
    pub files: Vec<InputFile>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ObjectRefBody {
    /// policy | group | tier
    pub kind: String,
    /// e.g. `ANP:prod/allow-web`
    #[serde(rename = "ref")]
    pub reference: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeleteRequest {
    pub refs: Vec<ObjectRefBody>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ObjectList {
    pub revision: Revision,
    pub objects: Vec<ObjectInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevisionBody {
    pub revision: Revision,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditRequest {
    /// A policy reference (`ANP:prod/allow-web`); exclusive with `namespace`.
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct DryRunQuery {
    #[serde(default)]
    pub dry_run: bool,
}

/// Flow query: filters are ANDed.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct FlowQuery {
    pub namespace: Option<String>,
    /// `namespace/name`
    pub endpoint: Option<String>,
    /// Comma-separated `key=value` pairs.
    pub labels: Option<String>,
    /// FORWARDED | DROPPED | REJECTED | AUDIT
    pub verdict: Option<String>,
    pub policy: Option<String>,
    /// How many recent records to return first (default 20).
    pub last: Option<usize>,
    /// Keep the response open and stream new records.
    #[serde(default)]
    pub follow: bool,
}

impl FlowQuery {
    pub fn filter(&self) -> std::result::Result<FlowFilter, String> {
        let endpoint = match &self.endpoint {
            Some(e) => Some(refs::parse_endpoint_ref(e).map_err(|e| e.0)?),
            None => None,
        };
        let labels = match &self.labels {
            Some(l) if !l.is_empty() => {
                let mut sel = LabelSelector::default();
                for pair in l.split(',') {
                    let (k, v) = pair.split_once('=').ok_or_else(|| {
                        format!("bad label filter {pair:?}: write key=value[,key=value]")
                    })?;
                    sel.match_labels.insert(k.trim().into(), v.trim().into());
                }
                Some(sel)
            }
            _ => None,
        };
        let verdict = match &self.verdict {
            Some(v) => Some(
                v.parse()
                    .map_err(|e: crate::flows::VerdictParseError| e.to_string())?,
            ),
            None => None,
        };
        Ok(FlowFilter {
            namespace: self.namespace.clone(),
            endpoint,
            labels,
            verdict,
            policy: self.policy.clone(),
        })
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vdfw control plane",
        description = "Policies, endpoints, namespaces, audit, flows and stats of a vdfw host. The same operations are offered over gRPC (vdfw.v1.Control) on the same listener."
    ),
    paths(
        apply,
        list_policies,
        get_object,
        delete_object,
        delete_many,
        list_endpoints,
        put_endpoint,
        delete_endpoint,
        list_namespaces,
        put_namespace,
        delete_namespace,
        list_audit,
        put_audit,
        flows,
        stats,
        revision
    ),
    components(schemas(
        ApiError,
        ApplyRequest,
        InputFile,
        ChangeReport,
        MutationReport,
        ObjectInfo,
        ObjectList,
        DocumentError,
        DeleteRequest,
        ObjectRefBody,
        EndpointSpec,
        AuditRequest,
        RevisionBody
    ))
)]
pub struct ApiDoc;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(super::metrics::handler))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route("/v1/revision", get(revision))
        .route("/v1/apply", post(apply))
        .route("/v1/delete", post(delete_many))
        .route("/v1/policies", get(list_policies))
        .route("/v1/groups", get(list_groups))
        .route("/v1/tiers", get(list_tiers))
        .route(
            "/v1/objects/{kind}/{*reference}",
            get(get_object).delete(delete_object),
        )
        .route("/v1/endpoints", get(list_endpoints).put(put_endpoint))
        .route(
            "/v1/endpoints/{namespace}/{name}",
            axum::routing::delete(delete_endpoint),
        )
        .route("/v1/namespaces", get(list_namespaces).put(put_namespace))
        .route(
            "/v1/namespaces/{name}",
            axum::routing::delete(delete_namespace),
        )
        .route("/v1/audit", get(list_audit).put(put_audit))
        .route("/v1/flows", get(flows))
        .route("/v1/stats", get(stats))
        .route("/v1/trace", post(trace))
        .with_state(state)
}

#[utoipa::path(get, path = "/v1/revision", responses((status = 200, body = RevisionBody)))]
async fn revision(State(s): State<AppState>) -> Json<RevisionBody> {
    Json(RevisionBody {
        revision: s.controller.revision(),
    })
}

/// Applies every document of every file atomically (or reports what would change).
#[utoipa::path(post, path = "/v1/apply", request_body = ApplyRequest, responses(
    (status = 200, body = ChangeReport),
    (status = 400, description = "a document is invalid; nothing applied", body = ApiError),
    (status = 422, description = "the engine refused the resulting state; nothing applied", body = ApiError)))]
async fn apply(State(s): State<AppState>, Json(req): Json<ApplyRequest>) -> Result<ChangeReport> {
    blocking(&s.controller, move |c| c.apply(&req.files, req.dry_run))
        .await
        .map(Json)
}

async fn list_kind(s: AppState, kind: ResourceKind) -> Result<ObjectList> {
    blocking(&s.controller, move |c| c.list_objects(kind))
        .await
        .map(|(revision, objects)| Json(ObjectList { revision, objects }))
}

#[utoipa::path(get, path = "/v1/policies", responses((status = 200, body = ObjectList)),
    description = "Also /v1/groups and /v1/tiers.")]
async fn list_policies(State(s): State<AppState>) -> Result<ObjectList> {
    list_kind(s, ResourceKind::Policy).await
}

async fn list_groups(State(s): State<AppState>) -> Result<ObjectList> {
    list_kind(s, ResourceKind::Group).await
}

async fn list_tiers(State(s): State<AppState>) -> Result<ObjectList> {
    list_kind(s, ResourceKind::Tier).await
}

fn object_key(kind: &str, reference: &str) -> std::result::Result<ResourceKey, HttpError> {
    let kind = refs::parse_document_kind(kind)?;
    Ok(refs::parse_object_ref(kind, reference)?)
}

#[utoipa::path(get, path = "/v1/objects/{kind}/{reference}",
    params(("kind" = String, Path, description = "policy | group | tier"),
           ("reference" = String, Path, description = "e.g. ANP:prod/allow-web")),
    responses((status = 200, body = ObjectInfo), (status = 404, body = ApiError)))]
async fn get_object(
    State(s): State<AppState>,
    Path((kind, reference)): Path<(String, String)>,
) -> Result<ObjectInfo> {
    let key = object_key(&kind, &reference)?;
    blocking(&s.controller, move |c| c.get_object(&key))
        .await
        .map(Json)
}

#[utoipa::path(delete, path = "/v1/objects/{kind}/{reference}",
    params(("kind" = String, Path, description = "policy | group | tier"),
           ("reference" = String, Path, description = "e.g. ANP:prod/allow-web"), DryRunQuery),
    responses((status = 200, body = ChangeReport), (status = 404, body = ApiError)))]
async fn delete_object(
    State(s): State<AppState>,
    Path((kind, reference)): Path<(String, String)>,
    Query(q): Query<DryRunQuery>,
) -> Result<ChangeReport> {
    let key = object_key(&kind, &reference)?;
    blocking(&s.controller, move |c| c.delete_objects(&[key], q.dry_run))
        .await
        .map(Json)
}

/// Deletes several objects atomically.
#[utoipa::path(post, path = "/v1/delete", request_body = DeleteRequest,
    responses((status = 200, body = ChangeReport), (status = 404, body = ApiError)))]
async fn delete_many(
    State(s): State<AppState>,
    Json(req): Json<DeleteRequest>,
) -> Result<ChangeReport> {
    let keys = req
        .refs
        .iter()
        .map(|r| object_key(&r.kind, &r.reference))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    blocking(&s.controller, move |c| c.delete_objects(&keys, req.dry_run))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/v1/endpoints", responses((status = 200, body = Vec<EndpointSpec>)))]
async fn list_endpoints(State(s): State<AppState>) -> Json<Vec<EndpointSpec>> {
    Json(s.controller.endpoints())
}

/// Registers or updates an endpoint (VM vNIC).
#[utoipa::path(put, path = "/v1/endpoints", request_body = EndpointSpec,
    responses((status = 200, body = MutationReport), (status = 400, body = ApiError)))]
async fn put_endpoint(
    State(s): State<AppState>,
    Json(spec): Json<EndpointSpec>,
) -> Result<MutationReport> {
    blocking(&s.controller, move |c| c.upsert_endpoint(spec))
        .await
        .map(Json)
}

#[utoipa::path(delete, path = "/v1/endpoints/{namespace}/{name}",
    responses((status = 200, body = MutationReport), (status = 404, body = ApiError)))]
async fn delete_endpoint(
    State(s): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<MutationReport> {
    let key = dfw::model::EndpointKey { namespace, name };
    blocking(&s.controller, move |c| c.remove_endpoint(&key))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/v1/namespaces", responses((status = 200, body = Object)))]
async fn list_namespaces(State(s): State<AppState>) -> Json<Vec<Namespace>> {
    Json(s.controller.namespaces())
}

/// Declares a namespace and its labels (`{"name": "prod", "labels": {"env": "prod"}}`).
#[utoipa::path(put, path = "/v1/namespaces", request_body = Object,
    responses((status = 200, body = MutationReport), (status = 400, body = ApiError)))]
async fn put_namespace(
    State(s): State<AppState>,
    Json(ns): Json<Namespace>,
) -> Result<MutationReport> {
    blocking(&s.controller, move |c| c.upsert_namespace(ns))
        .await
        .map(Json)
}

#[utoipa::path(delete, path = "/v1/namespaces/{name}",
    responses((status = 200, body = MutationReport), (status = 404, body = ApiError)))]
async fn delete_namespace(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<MutationReport> {
    blocking(&s.controller, move |c| c.delete_namespace(&name))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/v1/audit", responses((status = 200, body = Object)))]
async fn list_audit(State(s): State<AppState>) -> Result<Vec<crate::types::AuditSetting>> {
    blocking(&s.controller, |c| c.audit_settings())
        .await
        .map(Json)
}

/// Turns audit mode on or off for a policy or a namespace.
#[utoipa::path(put, path = "/v1/audit", request_body = AuditRequest,
    responses((status = 200, body = MutationReport), (status = 404, body = ApiError)))]
async fn put_audit(
    State(s): State<AppState>,
    Json(req): Json<AuditRequest>,
) -> Result<MutationReport> {
    let target = match (&req.policy, &req.namespace) {
        (Some(p), None) => AuditTarget::Policy(refs::parse_policy_ref(p)?),
        (None, Some(ns)) => AuditTarget::Namespace(ns.clone()),
        _ => {
            return Err(HttpError(
                StatusCode::BAD_REQUEST,
                ApiError::new("set exactly one of \"policy\" or \"namespace\""),
            ));
        }
    };
    blocking(&s.controller, move |c| c.set_audit(target, req.enabled))
        .await
        .map(Json)
}

/// Flow records as JSON lines (`application/x-ndjson`): the last N, then live ones with
/// `follow=true`. A `{"lost": N}` line means the follower fell behind.
#[utoipa::path(get, path = "/v1/flows", params(FlowQuery),
    responses((status = 200, description = "one JSON flow record per line", content_type = "application/x-ndjson")))]
async fn flows(State(s): State<AppState>, Query(q): Query<FlowQuery>) -> Response {
    let filter = match q.filter() {
        Ok(f) => f,
        Err(e) => return HttpError(StatusCode::BAD_REQUEST, ApiError::new(e)).into_response(),
    };
    let ring = s.controller.flows().clone();
    // Subscribe before reading history so nothing falls between the two.
    let mut follower = q.follow.then(|| ring.follow(filter.clone()));
    let history = ring.last(q.last.unwrap_or(20), &filter);
    let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<String, Infallible>>(64);
    let shutdown = s.shutdown.clone();
    tokio::spawn(async move {
        for r in history {
            if tx.send(Ok(json_line(&*r))).await.is_err() {
                return;
            }
        }
        let Some(follower) = follower.as_mut() else {
            return;
        };
        loop {
            let next = tokio::select! {
                n = follower.next() => n,
                _ = tx.closed() => return,
                _ = super::stopping(shutdown.clone()) => return,
            };
            let line = match next {
                Some(Followed::Record(r)) => json_line(&*r),
                Some(Followed::Lost(n)) => json_line(&serde_json::json!({ "lost": n })),
                None => return,
            };
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response()
}

fn json_line<T: Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string(v).unwrap_or_default();
    s.push('\n');
    s
}

/// Stats: store revision, flow verdict totals, data-plane counters (absent offline).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsBody {
    pub revision: Revision,
    pub flows_by_verdict: std::collections::BTreeMap<String, u64>,
    pub data_plane: Option<crate::dataplane::DataPlaneStats>,
}

#[utoipa::path(get, path = "/v1/stats", responses((status = 200, body = Object)))]
async fn stats(State(s): State<AppState>) -> Result<StatsBody> {
    let data_plane = blocking(&s.controller, |c| c.data_plane_stats()).await?;
    Ok(Json(StatsBody {
        revision: s.controller.revision(),
        flows_by_verdict: s
            .controller
            .flows()
            .verdict_counts()
            .into_iter()
            .map(|(v, n)| (v.as_str().to_string(), n))
            .collect(),
        data_plane,
    }))
}

/// Evaluates a hypothetical flow against the live realized state: the verdict and the
/// policy/rule that decides it.
#[utoipa::path(post, path = "/v1/trace", request_body = TraceRequest,
    responses((status = 200, body = TraceResult), (status = 400, body = ApiError)))]
async fn trace(State(s): State<AppState>, Json(req): Json<TraceRequest>) -> Result<TraceResult> {
    blocking(&s.controller, move |c| c.trace(&req))
        .await
        .map(Json)
}
