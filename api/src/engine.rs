//! Glue to `dfw::crd` (document parsing) and the dfw engine (realization, evaluation): the
//! only module that knows their APIs.

use std::sync::Arc;

use dfw::compile::{
    DecidedBy, Decision, Engine, EngineConfig, FlowAction, FlowQuery, ObjectKey, PolicySnapshot,
};
use dfw::crd::{parse_files, ParseOptions};
use dfw::model::{Endpoint, Object, Tier};

use crate::realized::{Desired, DocumentError, EngineChange, ParsedDocument};
use crate::trace::{
    self, TraceDecision, TraceError, TracePeer, TraceRequest, TraceResult, TraceVerdict,
    DEFAULT_SRC_PORT,
};
use crate::types::{Document, ResourceKey};

/// The engine's realized snapshot (what the data path classifies against).
pub type Snapshot = Arc<PolicySnapshot>;

/// The live engine the controller mutates under its lock.
pub struct Live {
    engine: Engine,
}

fn object_key(key: &ResourceKey) -> Option<ObjectKey> {
    match key {
        ResourceKey::Policy(k) => Some(ObjectKey::Policy(k.clone())),
        ResourceKey::Group(k) => Some(ObjectKey::Group(k.clone())),
        ResourceKey::Tier { name } => Some(ObjectKey::Tier(name.clone())),
        _ => None,
    }
}

impl Live {
    /// A fresh engine holding `desired` (start-up, and dry-runs on a throwaway engine).
    pub fn build(desired: &Desired) -> Result<Self, String> {
        Self::build_with(desired, EngineConfig::default())
    }

    pub fn build_with(desired: &Desired, config: EngineConfig) -> Result<Self, String> {
        let mut live = Self {
            engine: Engine::new(config),
        };
        live.apply(&EngineChange::between(&Desired::default(), desired))?;
        Ok(live)
    }

    /// Applies a change. The object part is one engine transaction (atomic); inventory
    /// changes come one at a time from the controller, so in practice a failure is always
    /// the first step and nothing changed.
    pub fn apply(&mut self, c: &EngineChange) -> Result<(), String> {
        for ns in &c.namespaces_upsert {
            self.engine.upsert_namespace(ns.clone());
        }
        for ep in &c.endpoints_upsert {
            self.engine
                .upsert_endpoint(ep.to_model())
                .map_err(|e| e.to_string())?;
        }
        if !c.upserts.is_empty() || !c.removals.is_empty() {
            self.engine
                .transaction(
                    c.upserts.clone(),
                    c.removals.iter().filter_map(object_key).collect(),
                )
                .map_err(|e| e.to_string())?;
        }
        for k in &c.endpoints_remove {
            self.engine.remove_endpoint(k).map_err(|e| e.to_string())?;
        }
        for n in &c.namespaces_remove {
            self.engine.remove_namespace(n);
        }
        Ok(())
    }

    pub fn snapshot(&mut self) -> Snapshot {
        self.engine.snapshot()
    }
}

fn tiers(context: &Desired) -> impl Iterator<Item = &Tier> {
    context.documents.values().filter_map(|p| match &p.object {
        Object::Tier(t) => Some(t),
        _ => None,
    })
}

/// Parses one document into exactly one object. The text is parsed at its original line
/// (padded with empty lines), so errors and sources point into the user's file.
pub fn parse_document(
    doc: &Document,
    context: &Desired,
) -> Result<ParsedDocument, Vec<DocumentError>> {
    let padded = format!("{}{}", "\n".repeat(doc.line.saturating_sub(1)), doc.text);
    let options = ParseOptions::with_known_tiers(tiers(context));
    let whole = |message: String| {
        vec![DocumentError {
            file: doc.file.clone(),
            line: doc.line,
            column: None,
            field: None,
            message,
        }]
    };
    match parse_files(&[(doc.file.as_str(), padded.as_str())], &options) {
        Ok(parsed) => {
            let mut objects = parsed.objects;
            match (objects.pop(), objects.is_empty()) {
                (Some(object), true) => Ok(ParsedDocument {
                    document: doc.clone(),
                    object,
                    warnings: parsed.warnings,
                }),
                (None, _) => Err(whole("the document declares no object".into())),
                (Some(_), false) => Err(whole(format!(
                    "the document declares {} objects; write one object per document (separate them with ---)",
                    objects.len() + 1
                ))),
            }
        }
        Err(errors) => Err(errors
            .into_iter()
            .map(|e| DocumentError {
                file: e.file,
                line: e.line,
                column: Some(e.column),
                field: (!e.path.is_empty()).then_some(e.path),
                message: e.message,
            })
            .collect()),
    }
}

fn action_str(a: FlowAction) -> &'static str {
    match a {
        FlowAction::Allow => "allow",
        FlowAction::Drop => "drop",
        FlowAction::Reject => "reject",
    }
}

fn decision(d: &Decision<'_>) -> TraceDecision {
    let (decided_by, policy, rule, rule_id, log_label) = match d.by {
        DecidedBy::Rule(r) => (
            "rule",
            Some(r.policy.key.to_string()),
            Some(r.rule_name.clone()),
            Some(r.rule_id.to_string()),
            r.log_label.clone(),
        ),
        DecidedBy::Isolation(p) => ("isolation", Some(p.key.to_string()), None, None, None),
        DecidedBy::DefaultAllow => ("default-allow", None, None, None, None),
        DecidedBy::DefaultDeny => ("default-deny", None, None, None, None),
    };
    TraceDecision {
        action: action_str(d.action).into(),
        audit: d.audit,
        decided_by: decided_by.into(),
        policy,
        rule,
        rule_id,
        log_label,
    }
}

/// Evaluates one hypothetical flow against a realized snapshot.
pub fn trace(snapshot: &PolicySnapshot, req: &TraceRequest) -> Result<TraceResult, TraceError> {
    let endpoints: Vec<&Endpoint> = snapshot.endpoints().map(|v| v.endpoint()).collect();
    let (src_ip, src_ep) = trace::resolve_peer("src", &req.src, endpoints.iter().copied())?;
    let (dst_ip, dst_ep) = trace::resolve_peer("dst", &req.dst, endpoints.iter().copied())?;
    let protocol = trace::parse_protocol(&req.protocol)?;
    let query = if protocol.is_icmp() {
        // `port` carries the ICMP type for ICMP flows (8 = echo request).
        FlowQuery::icmp(src_ip, dst_ip, u8::try_from(req.port).unwrap_or(u8::MAX), 0)
    } else {
        FlowQuery::new(
            src_ip,
            dst_ip,
            protocol,
            req.src_port.unwrap_or(DEFAULT_SRC_PORT),
            req.port,
        )
    };
    let verdict = snapshot.evaluate(&query);
    let peer = |ip: std::net::IpAddr, endpoint: Option<String>| TracePeer {
        ip: ip.to_string(),
        identity: Some(snapshot.identity_of(ip).0),
        endpoint,
    };
    let deciding = verdict.deciding().map(decision);
    let direction = verdict
        .deciding()
        .map(|d| format!("{:?}", d.direction).to_lowercase())
        .unwrap_or_else(|| "none".into());
    let (decided_by, policy, rule, rule_id, log_label) = match deciding {
        Some(d) => (d.decided_by, d.policy, d.rule, d.rule_id, d.log_label),
        None => (
            "neither end is a known endpoint".to_string(),
            None,
            None,
            None,
            None,
        ),
    };
    Ok(TraceResult {
        verdict: match verdict.action {
            FlowAction::Allow => TraceVerdict::Allow,
            FlowAction::Drop => TraceVerdict::Drop,
            FlowAction::Reject => TraceVerdict::Reject,
        },
        audit: verdict.audit,
        direction,
        decided_by,
        policy,
        rule,
        rule_id,
        log_label,
        src: peer(src_ip, src_ep),
        dst: peer(dst_ip, dst_ep),
        protocol: protocol.to_string(),
        port: req.port,
        egress: verdict.egress.as_ref().map(decision),
        ingress: verdict.ingress.as_ref().map(decision),
    })
}
