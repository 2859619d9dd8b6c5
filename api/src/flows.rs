//! Flow records: what the data plane decided about each new connection, kept in a bounded
//! ring for `observe --last N` and broadcast live to followers (`observe --follow`).
//!
//! A record names the deciding policy, rule and log label on every verdict, drops included:
//! that is the first thing operators ask for when a connection fails (a top Hubble request).
//! Records are produced per connection (first packet / verdict change), not per packet, so a
//! mutex-protected ring is cheap enough; followers get `Arc`s, never copies.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use dfw::flow::FiveTuple;
use dfw::model::{Direction, EndpointKey, LabelSelector, Labels, PolicyKey, RuleId};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// What happened to the flow (Hubble's verdict names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlowVerdict {
    Forwarded,
    Dropped,
    /// Dropped, and the sender was told (TCP RST / ICMP administratively prohibited).
    Rejected,
    /// A policy in audit mode would have dropped it; it was forwarded.
    Audit,
}

impl FlowVerdict {
    pub const ALL: [FlowVerdict; 4] = [Self::Forwarded, Self::Dropped, Self::Rejected, Self::Audit];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "FORWARDED",
            Self::Dropped => "DROPPED",
            Self::Rejected => "REJECTED",
            Self::Audit => "AUDIT",
        }
    }
}

impl fmt::Display for FlowVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown verdict {0:?}: use FORWARDED, DROPPED, REJECTED or AUDIT")]
pub struct VerdictParseError(pub String);

impl FromStr for FlowVerdict {
    type Err = VerdictParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| VerdictParseError(s.to_string()))
    }
}

/// Why a flow was dropped (Hubble-style codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DropReason {
    /// No rule allowed it in an isolated direction (default deny).
    PolicyDenied,
    /// An explicit Drop/Reject/deny rule matched.
    PolicyDeny,
    /// Source MAC/IP not bound to the vNIC (spoof guard).
    Spoofed,
    /// A packet that is not part of a known connection and cannot open one (e.g. stray ACK).
    ConntrackInvalid,
    /// Unparseable or truncated packet.
    InvalidPacket,
    /// The connection table was full.
    ConntrackFull,
}

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FlowPeer {
    /// The endpoint, when the address belongs to a known endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointKey>,
    /// The numeric security identity (Cilium-style), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
    /// The endpoint's labels at the time of the verdict (empty for non-endpoints).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// The policy and rule that decided a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    pub policy: PolicyKey,
    /// Rule name as written (Antrea `name`) or generated (`ingress-0`).
    pub rule: String,
    pub rule_id: RuleId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_label: Option<String>,
}

/// One flow verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub src: FlowPeer,
    pub dst: FlowPeer,
    pub tuple: FiveTuple,
    /// The direction at the vNIC where the verdict was taken: `egress` leaving the source VM,
    /// `ingress` entering the destination VM.
    pub direction: Direction,
    pub verdict: FlowVerdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<DropReason>,
    /// `None` when no policy selected the endpoint (non-isolated: allowed by default) or the
    /// drop happened before policy (spoofing, invalid packet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
}

/// Selects flow records; every set field must match (AND). Endpoint/namespace/label criteria
/// match when either end matches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowFilter {
    #[serde(default)]
    pub namespace: Option<String>,
    /// `namespace/name`.
    #[serde(default)]
    pub endpoint: Option<EndpointKey>,
    #[serde(default)]
    pub labels: Option<LabelSelector>,
    #[serde(default)]
    pub verdict: Option<FlowVerdict>,
    /// Matches the deciding policy's name, or its full key as displayed (`ANP:ns/name`).
    #[serde(default)]
    pub policy: Option<String>,
}

impl FlowFilter {
    pub fn matches(&self, r: &FlowRecord) -> bool {
        let ends = [&r.src, &r.dst];
        if let Some(ns) = &self.namespace {
            if !ends
                .iter()
                .any(|p| p.endpoint.as_ref().is_some_and(|e| &e.namespace == ns))
            {
                return false;
            }
        }
        if let Some(ep) = &self.endpoint {
            if !ends.iter().any(|p| p.endpoint.as_ref() == Some(ep)) {
                return false;
            }
        }
        if let Some(sel) = &self.labels {
            if !ends
                .iter()
                .any(|p| p.endpoint.is_some() && sel.matches(&p.labels))
            {
                return false;
            }
        }
        if let Some(v) = self.verdict {
            if r.verdict != v {
                return false;
            }
        }
        if let Some(name) = &self.policy {
            match &r.policy {
                Some(p) if &p.policy.name == name || &p.policy.to_string() == name => {}
                _ => return false,
            }
        }
        true
    }
}

/// Bounded history of flow records plus a live broadcast.
pub struct FlowRing {
    capacity: usize,
    buf: Mutex<VecDeque<Arc<FlowRecord>>>,
    tx: broadcast::Sender<Arc<FlowRecord>>,
    counts: Mutex<[u64; 4]>,
}

/// Default ring capacity (records).
pub const DEFAULT_RING_CAPACITY: usize = 16_384;

/// How many records a slow follower may fall behind before it is told it lost some.
const FOLLOW_BACKLOG: usize = 4096;

impl FlowRing {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            buf: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            tx: broadcast::channel(FOLLOW_BACKLOG).0,
            counts: Mutex::new([0; 4]),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records one flow. Never blocks on followers: a follower that lags loses records and is
    /// told how many.
    pub fn push(&self, record: FlowRecord) {
        let record = Arc::new(record);
        if let Ok(mut counts) = self.counts.lock() {
            counts[verdict_index(record.verdict)] += 1;
        }
        if let Ok(mut buf) = self.buf.lock() {
            if buf.len() == self.capacity {
                buf.pop_front();
            }
            buf.push_back(record.clone());
        }
        // No receivers is not an error: nobody is following right now.
        let _ = self.tx.send(record);
    }

    /// The last `n` records matching `filter`, oldest first.
    pub fn last(&self, n: usize, filter: &FlowFilter) -> Vec<Arc<FlowRecord>> {
        let Ok(buf) = self.buf.lock() else {
            return Vec::new();
        };
        let mut out: Vec<_> = buf
            .iter()
            .rev()
            .filter(|r| filter.matches(r))
            .take(n)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// Follows new records matching `filter`.
    pub fn follow(&self, filter: FlowFilter) -> FlowFollower {
        FlowFollower {
            rx: self.tx.subscribe(),
            filter,
        }
    }

    /// Total records seen per verdict since start (also counts records evicted from the ring).
    pub fn verdict_counts(&self) -> Vec<(FlowVerdict, u64)> {
        let counts = self.counts.lock().map(|c| *c).unwrap_or([0; 4]);
        FlowVerdict::ALL
            .into_iter()
            .map(|v| (v, counts[verdict_index(v)]))
            .collect()
    }
}

const fn verdict_index(v: FlowVerdict) -> usize {
    match v {
        FlowVerdict::Forwarded => 0,
        FlowVerdict::Dropped => 1,
        FlowVerdict::Rejected => 2,
        FlowVerdict::Audit => 3,
    }
}

/// What a follower receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Followed {
    Record(Arc<FlowRecord>),
    /// The follower was too slow; this many records (matching or not) were skipped.
    Lost(u64),
}

/// A live subscription to the ring.
pub struct FlowFollower {
    rx: broadcast::Receiver<Arc<FlowRecord>>,
    filter: FlowFilter,
}

impl FlowFollower {
    /// The next matching record, `Lost` after a lag, or `None` when the ring is gone.
    pub async fn next(&mut self) -> Option<Followed> {
        loop {
            match self.rx.recv().await {
                Ok(r) if self.filter.matches(&r) => return Some(Followed::Record(r)),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => return Some(Followed::Lost(n)),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Shared handle the data plane pushes records through (see [`crate::dataplane::DataPlane`]).
pub type FlowSink = Arc<FlowRing>;

#[cfg(test)]
mod tests {
    use super::*;
    use dfw::flow::IpProtocol;
    use dfw::model::PolicyKind;

    fn rec(i: u64, ns: &str, verdict: FlowVerdict, app: &str) -> FlowRecord {
        FlowRecord {
            time_ns: i,
            src: FlowPeer {
                endpoint: Some(EndpointKey {
                    namespace: ns.into(),
                    name: format!("vm-{i}"),
                }),
                identity: Some(256),
                labels: [("app".to_string(), app.to_string())].into(),
            },
            dst: FlowPeer::default(),
            tuple: FiveTuple {
                src: "10.0.0.1".parse().unwrap(),
                dst: "10.0.0.2".parse().unwrap(),
                protocol: IpProtocol::Tcp,
                src_port: 40000,
                dst_port: 80,
            },
            direction: Direction::Egress,
            verdict,
            drop_reason: (verdict == FlowVerdict::Dropped).then_some(DropReason::PolicyDeny),
            policy: Some(PolicyRef {
                policy: PolicyKey {
                    kind: PolicyKind::AntreaNetworkPolicy,
                    namespace: Some(ns.into()),
                    name: "deny-web".into(),
                },
                rule: "egress-0".into(),
                rule_id: RuleId(7),
                log_label: None,
            }),
        }
    }

    #[test]
    fn ring_keeps_the_newest_and_filters() {
        let ring = FlowRing::new(3);
        for i in 0..5 {
            let v = if i % 2 == 0 {
                FlowVerdict::Dropped
            } else {
                FlowVerdict::Forwarded
            };
            ring.push(rec(i, if i < 3 { "a" } else { "b" }, v, "web"));
        }
        let all = ring.last(10, &FlowFilter::default());
        assert_eq!(
            all.iter().map(|r| r.time_ns).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        let dropped = FlowFilter {
            verdict: Some(FlowVerdict::Dropped),
            ..Default::default()
        };
        assert_eq!(
            ring.last(10, &dropped)
                .iter()
                .map(|r| r.time_ns)
                .collect::<Vec<_>>(),
            vec![2, 4]
        );
        let ns_b_last1 = FlowFilter {
            namespace: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(ring.last(1, &ns_b_last1)[0].time_ns, 4);
        let counts = ring.verdict_counts();
        assert_eq!(counts[0], (FlowVerdict::Forwarded, 2));
        assert_eq!(counts[1], (FlowVerdict::Dropped, 3));
    }

    #[test]
    fn filter_by_labels_policy_and_endpoint() {
        let r = rec(1, "a", FlowVerdict::Dropped, "web");
        let sel = |app: &str| LabelSelector {
            match_labels: [("app".to_string(), app.to_string())].into(),
            match_expressions: vec![],
        };
        let f = |f: FlowFilter| f.matches(&r);
        assert!(f(FlowFilter {
            labels: Some(sel("web")),
            ..Default::default()
        }));
        assert!(!f(FlowFilter {
            labels: Some(sel("db")),
            ..Default::default()
        }));
        assert!(f(FlowFilter {
            policy: Some("deny-web".into()),
            ..Default::default()
        }));
        assert!(f(FlowFilter {
            policy: Some("ANP:a/deny-web".into()),
            ..Default::default()
        }));
        assert!(!f(FlowFilter {
            policy: Some("other".into()),
            ..Default::default()
        }));
        assert!(f(FlowFilter {
            endpoint: Some(EndpointKey {
                namespace: "a".into(),
                name: "vm-1".into()
            }),
            ..Default::default()
        }));
        assert!("dropped".parse::<FlowVerdict>().is_ok());
        assert!("nope".parse::<FlowVerdict>().is_err());
    }

    #[tokio::test]
    async fn followers_get_matching_records_and_hear_about_losses() {
        let ring = FlowRing::new(8);
        let mut dropped = ring.follow(FlowFilter {
            verdict: Some(FlowVerdict::Dropped),
            ..Default::default()
        });
        ring.push(rec(1, "a", FlowVerdict::Forwarded, "web"));
        ring.push(rec(2, "a", FlowVerdict::Dropped, "web"));
        match dropped.next().await {
            Some(Followed::Record(r)) => assert_eq!(r.time_ns, 2),
            other => panic!("unexpected {other:?}"),
        }
        for i in 0..(FOLLOW_BACKLOG as u64 + 10) {
            ring.push(rec(i, "a", FlowVerdict::Dropped, "web"));
        }
        assert!(matches!(dropped.next().await, Some(Followed::Lost(n)) if n >= 10));
    }
}
