//! Trace: evaluate a hypothetical flow against a realized policy (the live state over the
//! API, or files offline with `vdfwctl trace --policies ... --inventory ... --flows ...`).
//!
//! Flows name their ends as `namespace/name` (an endpoint of the inventory, which resolves
//! to its first IPv4 address, else its first address) or as a literal IP.

use std::net::IpAddr;

use dfw::flow::IpProtocol;
use dfw::model::Endpoint;
use serde::{Deserialize, Serialize};

/// One hypothetical flow (also the line format of `--flows` files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// `namespace/name` or an IP address.
    pub src: String,
    pub dst: String,
    /// TCP (default), UDP, SCTP, ICMP, ICMPv6, or a protocol number.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Destination port (TCP/UDP/SCTP); ICMP type for ICMP.
    #[serde(default)]
    pub port: u16,
    /// Source port; an ephemeral port when absent.
    #[serde(default)]
    pub src_port: Option<u16>,
}

fn default_protocol() -> String {
    "TCP".into()
}

/// What the data path would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TraceVerdict {
    Allow,
    Drop,
    Reject,
}

/// One resolved end of the flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TracePeer {
    pub ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
}

/// The decision of one direction (egress at the source, ingress at the destination).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TraceDecision {
    /// allow | drop | reject | pass, before audit mode.
    pub action: String,
    pub audit: bool,
    /// rule | isolation | default-allow | default-deny
    pub decided_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_label: Option<String>,
}

/// The outcome: the effective verdict and the decision that determined it (the direction
/// that dropped, else the ingress side), plus both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TraceResult {
    pub verdict: TraceVerdict,
    /// Forwarded only because the deciding policy is in audit mode.
    pub audit: bool,
    /// egress | ingress
    pub direction: String,
    pub decided_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_label: Option<String>,
    pub src: TracePeer,
    pub dst: TracePeer,
    pub protocol: String,
    pub port: u16,
    /// The sender's egress decision (absent when the source is not a known endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<TraceDecision>,
    /// The receiver's ingress decision (absent when the destination is not one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<TraceDecision>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    #[error("{field}: endpoint {name} is not in the inventory")]
    UnknownEndpoint { field: &'static str, name: String },
    #[error("{field}: endpoint {name} has no IP address to trace from/to")]
    NoAddress { field: &'static str, name: String },
    #[error("{field}: {value:?} is neither namespace/name nor an IP address")]
    BadPeer { field: &'static str, value: String },
    #[error("protocol: {0:?} is not TCP, UDP, SCTP, ICMP, ICMPv6 or a protocol number")]
    BadProtocol(String),
}

pub fn parse_protocol(s: &str) -> Result<IpProtocol, TraceError> {
    match s.to_ascii_uppercase().as_str() {
        "TCP" => Ok(IpProtocol::Tcp),
        "UDP" => Ok(IpProtocol::Udp),
        "SCTP" => Ok(IpProtocol::Sctp),
        "ICMP" => Ok(IpProtocol::Icmp),
        "ICMPV6" => Ok(IpProtocol::Icmpv6),
        other => other
            .parse::<u8>()
            .map(IpProtocol::from_number)
            .map_err(|_| TraceError::BadProtocol(s.to_string())),
    }
}

/// Resolves `namespace/name` or an IP against the endpoints.
pub fn resolve_peer<'a>(
    field: &'static str,
    value: &str,
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
) -> Result<(IpAddr, Option<String>), TraceError> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        let owner = endpoints
            .into_iter()
            .find(|e| e.ips.contains(&ip))
            .map(|e| e.key().to_string());
        return Ok((ip, owner));
    }
    let Some((ns, name)) = value.split_once('/') else {
        return Err(TraceError::BadPeer {
            field,
            value: value.to_string(),
        });
    };
    let ep = endpoints
        .into_iter()
        .find(|e| e.namespace == ns && e.name == name)
        .ok_or_else(|| TraceError::UnknownEndpoint {
            field,
            name: value.to_string(),
        })?;
    let ip = ep
        .ips
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ep.ips.first())
        .copied()
        .ok_or_else(|| TraceError::NoAddress {
            field,
            name: value.to_string(),
        })?;
    Ok((ip, Some(value.to_string())))
}

/// The source port used when the request names none (a typical ephemeral port).
pub const DEFAULT_SRC_PORT: u16 = 49152;

#[cfg(test)]
mod tests {
    use super::*;
    use dfw::model::EndpointKind;

    #[test]
    fn peers_resolve_by_name_or_ip() {
        let eps = [Endpoint {
            name: "db".into(),
            namespace: "prod".into(),
            kind: EndpointKind::Vm,
            labels: Default::default(),
            ips: vec!["fd00::6".parse().unwrap(), "10.0.1.6".parse().unwrap()],
            mac: None,
            named_ports: Default::default(),
        }];
        let (ip, ep) = resolve_peer("src", "prod/db", &eps).unwrap();
        assert_eq!(ip.to_string(), "10.0.1.6");
        assert_eq!(ep.as_deref(), Some("prod/db"));
        let (_, ep) = resolve_peer("dst", "fd00::6", &eps).unwrap();
        assert_eq!(ep.as_deref(), Some("prod/db"));
        assert_eq!(resolve_peer("dst", "192.0.2.1", &eps).unwrap().1, None);
        assert!(matches!(
            resolve_peer("src", "prod/nope", &eps),
            Err(TraceError::UnknownEndpoint { .. })
        ));
        assert!(matches!(
            resolve_peer("src", "nope", &eps),
            Err(TraceError::BadPeer { .. })
        ));
        assert_eq!(parse_protocol("udp").unwrap(), IpProtocol::Udp);
        assert_eq!(parse_protocol("47").unwrap(), IpProtocol::Other(47));
        assert!(parse_protocol("http").is_err());
    }
}
