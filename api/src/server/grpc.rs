//! gRPC service `vdfw.v1.Control` (see `api/proto/vdfw/v1/control.proto`). Same operations
//! and semantics as the REST API; this module only converts messages.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use dfw::flow::IpProtocol;
use dfw::model::{EndpointKey, NamedPort, Namespace};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::controller::{self, Controller, ControllerError};
use crate::flows::{FlowRecord, FlowVerdict, Followed};
use crate::proto::control_server::{Control, ControlServer};
use crate::proto::{self as pb, observe_response};
use crate::realized::{ChangeAction, DocumentError};
use crate::refs;
use crate::store::StoreError;
use crate::types::{AuditTarget, ContentType, EndpointSpec, MacAddr, SocketRole, VnicSocket};

pub fn service(
    controller: Arc<Controller>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> ControlServer<GrpcService> {
    ControlServer::new(GrpcService {
        controller,
        shutdown,
    })
}

pub struct GrpcService {
    controller: Arc<Controller>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

fn status(e: ControllerError) -> Status {
    let msg = e.to_string();
    match e {
        ControllerError::Invalid(_) | ControllerError::BadRequest(_) => {
            Status::invalid_argument(msg)
        }
        ControllerError::Rejected(_) => Status::failed_precondition(msg),
        ControllerError::NotFound(_) => Status::not_found(msg),
        ControllerError::Store(StoreError::Conflict { .. }) => Status::aborted(msg),
        ControllerError::DataPlane(_) => Status::unavailable(msg),
        ControllerError::Store(_) | ControllerError::Poisoned => {
            tracing::error!("gRPC call failed: {msg}");
            Status::internal(msg)
        }
    }
}

fn bad(e: impl ToString) -> Status {
    Status::invalid_argument(e.to_string())
}

impl GrpcService {
    async fn blocking<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Controller) -> Result<T, ControllerError> + Send + 'static,
    {
        let c = self.controller.clone();
        match tokio::task::spawn_blocking(move || f(&c)).await {
            Ok(r) => r.map_err(status),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}

fn change_report(r: controller::ChangeReport) -> pb::ChangeReport {
    pb::ChangeReport {
        revision: r.revision,
        dry_run: r.dry_run,
        changes: r
            .changes
            .into_iter()
            .map(|c| pb::ObjectChange {
                object: c.object,
                action: match c.action {
                    ChangeAction::Added => "added",
                    ChangeAction::Changed => "changed",
                    ChangeAction::Unchanged => "unchanged",
                    ChangeAction::Removed => "removed",
                }
                .into(),
                rules_added: c.rules_added,
                rules_removed: c.rules_removed,
            })
            .collect(),
        warnings: r.warnings,
    }
}

fn mutation(r: controller::MutationReport) -> pb::MutationReport {
    pb::MutationReport {
        revision: r.revision,
        warnings: r.warnings,
    }
}

fn doc_error(e: DocumentError) -> pb::DocumentError {
    pb::DocumentError {
        file: e.file,
        line: e.line as u64,
        field: e.field.unwrap_or_default(),
        message: e.message,
    }
}

fn content_type_str(c: ContentType) -> &'static str {
    match c {
        ContentType::Yaml => "yaml",
        ContentType::Json => "json",
    }
}

fn object_info(o: controller::ObjectInfo) -> pb::ObjectInfo {
    pb::ObjectInfo {
        object: refs::object_ref(&o.key),
        file: o.document.file,
        content_type: content_type_str(o.document.content_type).into(),
        text: o.document.text,
        line: o.document.line as u64,
        create_revision: o.create_revision,
        mod_revision: o.mod_revision,
        status: match o.status {
            controller::ObjectStatus::Realized => "realized",
            controller::ObjectStatus::Failed => "failed",
        }
        .into(),
        errors: o.errors.into_iter().map(doc_error).collect(),
        rules: o
            .rules
            .into_iter()
            .map(|r| pb::RuleSummary {
                id: r.id,
                name: r.name,
                direction: r.direction,
                action: r.action,
                log_label: r.log_label.unwrap_or_default(),
            })
            .collect(),
        audit: o.audit,
    }
}

fn protocol_name(p: IpProtocol) -> String {
    p.to_string()
}

fn parse_protocol(s: &str) -> Result<IpProtocol, Status> {
    match s.to_ascii_uppercase().as_str() {
        "" | "TCP" => Ok(IpProtocol::Tcp),
        "UDP" => Ok(IpProtocol::Udp),
        "SCTP" => Ok(IpProtocol::Sctp),
        other => Err(bad(format!(
            "unknown protocol {other:?}: use TCP, UDP or SCTP"
        ))),
    }
}

pub fn endpoint_to_pb(e: EndpointSpec) -> pb::Endpoint {
    pb::Endpoint {
        name: e.name,
        namespace: e.namespace,
        labels: e.labels.into_iter().collect(),
        mac: e.mac.map(|m| m.to_string()).unwrap_or_default(),
        ips: e.ips.iter().map(|ip| ip.to_string()).collect(),
        named_ports: e
            .named_ports
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    pb::NamedPort {
                        port: v.port.into(),
                        protocol: protocol_name(v.protocol),
                    },
                )
            })
            .collect(),
        socket_path: e
            .socket
            .as_ref()
            .map(|s| s.path.display().to_string())
            .unwrap_or_default(),
        socket_role: match e.socket.map(|s| s.role) {
            Some(SocketRole::Server) => "server".into(),
            Some(SocketRole::Client) => "client".into(),
            None => String::new(),
        },
    }
}

pub fn endpoint_from_pb(e: pb::Endpoint) -> Result<EndpointSpec, Status> {
    let mac = if e.mac.is_empty() {
        None
    } else {
        Some(e.mac.parse::<MacAddr>().map_err(bad)?)
    };
    let ips = e
        .ips
        .iter()
        .map(|ip| {
            ip.parse()
                .map_err(|_| bad(format!("bad IP address {ip:?} in ips")))
        })
        .collect::<Result<_, _>>()?;
    let mut named_ports = BTreeMap::new();
    for (name, p) in e.named_ports {
        let port = u16::try_from(p.port).map_err(|_| {
            bad(format!(
                "named port {name}: {} is not a port number",
                p.port
            ))
        })?;
        named_ports.insert(
            name,
            NamedPort {
                port,
                protocol: parse_protocol(&p.protocol)?,
            },
        );
    }
    let socket = if e.socket_path.is_empty() {
        None
    } else {
        let role = match e.socket_role.as_str() {
            "" | "server" => SocketRole::Server,
            "client" => SocketRole::Client,
            other => {
                return Err(bad(format!(
                    "socket_role {other:?}: use server (vdfwd listens) or client"
                )));
            }
        };
        Some(VnicSocket {
            path: e.socket_path.into(),
            role,
        })
    };
    Ok(EndpointSpec {
        name: e.name,
        namespace: e.namespace,
        labels: e.labels.into_iter().collect(),
        mac,
        ips,
        named_ports,
        socket,
    })
}

pub fn flow_to_pb(r: &FlowRecord) -> pb::FlowRecord {
    let peer = |p: &crate::flows::FlowPeer, ip: std::net::IpAddr, port: u16| pb::FlowPeer {
        endpoint: p
            .endpoint
            .as_ref()
            .map(|e| e.to_string())
            .unwrap_or_default(),
        identity: p.identity.unwrap_or(0),
        labels: p.labels.clone().into_iter().collect(),
        ip: ip.to_string(),
        port: port.into(),
    };
    pb::FlowRecord {
        time_ns: r.time_ns,
        src: Some(peer(&r.src, r.tuple.src, r.tuple.src_port)),
        dst: Some(peer(&r.dst, r.tuple.dst, r.tuple.dst_port)),
        protocol: protocol_name(r.tuple.protocol),
        direction: format!("{:?}", r.direction).to_lowercase(),
        verdict: r.verdict.as_str().into(),
        drop_reason: r
            .drop_reason
            .and_then(|d| serde_json::to_value(d).ok())
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        policy: r
            .policy
            .as_ref()
            .map(|p| p.policy.to_string())
            .unwrap_or_default(),
        rule: r
            .policy
            .as_ref()
            .map(|p| p.rule.clone())
            .unwrap_or_default(),
        rule_id: r
            .policy
            .as_ref()
            .map(|p| p.rule_id.to_string())
            .unwrap_or_default(),
        log_label: r
            .policy
            .as_ref()
            .and_then(|p| p.log_label.clone())
            .unwrap_or_default(),
    }
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::ObserveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Control for GrpcService {
    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ChangeReport>, Status> {
        let req = req.into_inner();
        let files = req
            .files
            .into_iter()
            .map(|f| {
                let content_type = match f.content_type.as_str() {
                    "" => None,
                    "yaml" => Some(ContentType::Yaml),
                    "json" => Some(ContentType::Json),
                    other => {
                        return Err(bad(format!(
                            "file {}: content_type {other:?}: use yaml or json",
                            f.file
                        )));
                    }
                };
                Ok(controller::InputFile {
                    file: f.file,
                    text: f.text,
                    content_type,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let dry_run = req.dry_run;
        let r = self.blocking(move |c| c.apply(&files, dry_run)).await?;
        Ok(Response::new(change_report(r)))
    }

    async fn list_objects(
        &self,
        req: Request<pb::ListObjectsRequest>,
    ) -> Result<Response<pb::ListObjectsResponse>, Status> {
        let kind = refs::parse_document_kind(&req.into_inner().kind).map_err(bad)?;
        let (revision, objects) = self.blocking(move |c| c.list_objects(kind)).await?;
        Ok(Response::new(pb::ListObjectsResponse {
            revision,
            objects: objects.into_iter().map(object_info).collect(),
        }))
    }

    async fn get_object(
        &self,
        req: Request<pb::ObjectRef>,
    ) -> Result<Response<pb::ObjectInfo>, Status> {
        let r = req.into_inner();
        let kind = refs::parse_document_kind(&r.kind).map_err(bad)?;
        let key = refs::parse_object_ref(kind, &r.r#ref).map_err(bad)?;
        let info = self.blocking(move |c| c.get_object(&key)).await?;
        Ok(Response::new(object_info(info)))
    }

    async fn delete_objects(
        &self,
        req: Request<pb::DeleteObjectsRequest>,
    ) -> Result<Response<pb::ChangeReport>, Status> {
        let req = req.into_inner();
        let keys = req
            .refs
            .iter()
            .map(|r| {
                let kind = refs::parse_document_kind(&r.kind)?;
                refs::parse_object_ref(kind, &r.r#ref)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let dry_run = req.dry_run;
        let r = self
            .blocking(move |c| c.delete_objects(&keys, dry_run))
            .await?;
        Ok(Response::new(change_report(r)))
    }

    async fn list_endpoints(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        Ok(Response::new(pb::ListEndpointsResponse {
            endpoints: self
                .controller
                .endpoints()
                .into_iter()
                .map(endpoint_to_pb)
                .collect(),
        }))
    }

    async fn put_endpoint(
        &self,
        req: Request<pb::Endpoint>,
    ) -> Result<Response<pb::MutationReport>, Status> {
        let spec = endpoint_from_pb(req.into_inner())?;
        let r = self.blocking(move |c| c.upsert_endpoint(spec)).await?;
        Ok(Response::new(mutation(r)))
    }

    async fn delete_endpoint(
        &self,
        req: Request<pb::EndpointRef>,
    ) -> Result<Response<pb::MutationReport>, Status> {
        let r = req.into_inner();
        let key = EndpointKey {
            namespace: r.namespace,
            name: r.name,
        };
        let r = self.blocking(move |c| c.remove_endpoint(&key)).await?;
        Ok(Response::new(mutation(r)))
    }

    async fn list_namespaces(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        Ok(Response::new(pb::ListNamespacesResponse {
            namespaces: self
                .controller
                .namespaces()
                .into_iter()
                .map(|n| pb::Namespace {
                    name: n.name,
                    labels: n.labels.into_iter().collect(),
                })
                .collect(),
        }))
    }

    async fn put_namespace(
        &self,
        req: Request<pb::Namespace>,
    ) -> Result<Response<pb::MutationReport>, Status> {
        let n = req.into_inner();
        let ns = Namespace {
            name: n.name,
            labels: n.labels.into_iter().collect(),
        };
        let r = self.blocking(move |c| c.upsert_namespace(ns)).await?;
        Ok(Response::new(mutation(r)))
    }

    async fn delete_namespace(
        &self,
        req: Request<pb::NamespaceRef>,
    ) -> Result<Response<pb::MutationReport>, Status> {
        let name = req.into_inner().name;
        let r = self.blocking(move |c| c.delete_namespace(&name)).await?;
        Ok(Response::new(mutation(r)))
    }

    async fn set_audit(
        &self,
        req: Request<pb::AuditSetting>,
    ) -> Result<Response<pb::MutationReport>, Status> {
        let a = req.into_inner();
        let target = match a.target_kind.as_str() {
            "policy" => AuditTarget::Policy(refs::parse_policy_ref(&a.target).map_err(bad)?),
            "namespace" => AuditTarget::Namespace(a.target),
            other => {
                return Err(bad(format!(
                    "target_kind {other:?}: use policy or namespace"
                )))
            }
        };
        let enabled = a.enabled;
        let r = self.blocking(move |c| c.set_audit(target, enabled)).await?;
        Ok(Response::new(mutation(r)))
    }

    async fn list_audit(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let settings = self.blocking(|c| c.audit_settings()).await?;
        Ok(Response::new(pb::ListAuditResponse {
            settings: settings
                .into_iter()
                .map(|s| {
                    let (target_kind, target) = match s.target {
                        AuditTarget::Policy(k) => ("policy", k.to_string()),
                        AuditTarget::Namespace(n) => ("namespace", n),
                    };
                    pb::AuditSetting {
                        target_kind: target_kind.into(),
                        target,
                        enabled: s.enabled,
                    }
                })
                .collect(),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        req: Request<pb::ObserveRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let r = req.into_inner();
        let query = super::rest::FlowQuery {
            namespace: opt(r.namespace),
            endpoint: opt(r.endpoint),
            labels: (!r.labels.is_empty()).then(|| r.labels.join(",")),
            verdict: opt(r.verdict),
            policy: opt(r.policy),
            last: Some(if r.last == 0 { 20 } else { r.last as usize }),
            follow: r.follow,
        };
        let filter = query.filter().map_err(bad)?;
        let ring = self.controller.flows().clone();
        let follower = query.follow.then(|| ring.follow(filter.clone()));
        let history = ring.last(query.last.unwrap_or(20), &filter);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let flow = |r: &FlowRecord| pb::ObserveResponse {
                event: Some(observe_response::Event::Flow(flow_to_pb(r))),
            };
            for r in history {
                if tx.send(Ok(flow(&r))).await.is_err() {
                    return;
                }
            }
            let Some(mut follower) = follower else {
                return;
            };
            loop {
                let next = tokio::select! {
                    n = follower.next() => n,
                    _ = tx.closed() => return,
                    _ = super::stopping(shutdown.clone()) => return,
                };
                let msg = match next {
                    Some(Followed::Record(r)) => flow(&r),
                    Some(Followed::Lost(n)) => pb::ObserveResponse {
                        event: Some(observe_response::Event::Lost(n)),
                    },
                    None => return,
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_stats(&self, _: Request<pb::ListRequest>) -> Result<Response<pb::Stats>, Status> {
        let dp = self.blocking(|c| c.data_plane_stats()).await?;
        let flows_by_verdict = self
            .controller
            .flows()
            .verdict_counts()
            .into_iter()
            .map(|(v, n)| (FlowVerdict::as_str(v).to_string(), n))
            .collect();
        let mut stats = pb::Stats {
            revision: self.controller.revision(),
            data_plane_attached: dp.is_some(),
            flows_by_verdict,
            ..Default::default()
        };
        if let Some(dp) = dp {
            stats.conntrack_entries = dp.conntrack_entries;
            stats.enforced_revision = dp.enforced_revision;
            stats.vnics = dp
                .vnics
                .into_iter()
                .map(|v| pb::VnicStats {
                    endpoint: v.endpoint.to_string(),
                    connected: v.connected,
                    rx_packets: v.rx_packets,
                    rx_bytes: v.rx_bytes,
                    tx_packets: v.tx_packets,
                    tx_bytes: v.tx_bytes,
                    drops: v.drops.into_iter().collect(),
                })
                .collect();
            stats.rules = dp
                .rules
                .into_iter()
                .map(|r| pb::RuleStats {
                    policy: r.policy.to_string(),
                    rule_id: r.rule_id.to_string(),
                    rule: r.rule,
                    hits: r.hits,
                    packets: r.packets,
                    bytes: r.bytes,
                    sessions: r.sessions,
                })
                .collect();
        }
        Ok(Response::new(stats))
    }

    async fn trace(
        &self,
        req: Request<pb::TraceRequest>,
    ) -> Result<Response<pb::TraceResponse>, Status> {
        let r = req.into_inner();
        let port = u16::try_from(r.port)
            .map_err(|_| bad(format!("port {} is not a port number", r.port)))?;
        let req = crate::trace::TraceRequest {
            src: r.src,
            dst: r.dst,
            protocol: if r.protocol.is_empty() {
                "TCP".into()
            } else {
                r.protocol
            },
            port,
            src_port: None,
        };
        let t = self.blocking(move |c| c.trace(&req)).await?;
        let explanation = serde_json::to_string(&t).unwrap_or_default();
        Ok(Response::new(pb::TraceResponse {
            verdict: match t.verdict {
                crate::trace::TraceVerdict::Allow => "allow",
                crate::trace::TraceVerdict::Drop => "drop",
                crate::trace::TraceVerdict::Reject => "reject",
            }
            .into(),
            policy: t.policy.unwrap_or_default(),
            rule: t.rule.unwrap_or_default(),
            rule_id: t.rule_id.unwrap_or_default(),
            log_label: t.log_label.unwrap_or_default(),
            audit: t.audit,
            explanation,
        }))
    }

    async fn get_revision(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::RevisionResponse>, Status> {
        Ok(Response::new(pb::RevisionResponse {
            revision: self.controller.revision(),
        }))
    }
}
