//! Pieces shared by every CRD flavour: object metadata, label selectors, CIDRs, ports, and the
//! Kubernetes name/label validation rules (re-implemented here because the API server that
//! would normally enforce them is not in the loop).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{self, IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer};

use super::error::{Invalid, Path};
use super::yaml::Node;
use crate::model::{
    IpBlock, LabelExpression, LabelSelector, PortRange, PortSpec, ProtocolMatch, SelectorOperator,
    Source, Unenforced, Warning,
};

/// Annotation that puts a policy in audit mode: its would-be drops are forwarded and reported
/// as `audit` instead. Values: `"true"` / `"false"`; anything else is an error.
pub const AUDIT_ANNOTATION: &str = "vdfw.io/audit";

/// The namespace Kubernetes assigns to namespaced objects applied without one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `metadata`. Server-populated fields are accepted (so `kubectl get -o yaml` output can be
/// re-applied) and ignored; anything else is an unknown field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ObjectMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub generate_name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    #[allow(dead_code)]
    uid: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    resource_version: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    creation_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    deletion_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    deletion_grace_period_seconds: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    generation: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    managed_fields: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    self_link: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    finalizers: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    owner_references: Option<IgnoredAny>,
}

/// Validated metadata.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub name: String,
    /// `Some` exactly for namespaced kinds.
    pub namespace: Option<String>,
    pub audit: bool,
}

/// Per-object translation context: where the object is, and the warnings it produced.
pub(crate) struct Cx<'a> {
    pub root: &'a Node,
    pub source: Source,
    pub warnings: Vec<Warning>,
}

impl Cx<'_> {
    pub(crate) fn warn(&mut self, path: &Path, message: impl fmt::Display) {
        let line = path.locate(self.root).line;
        self.warnings.push(Warning {
            source: self.source.clone(),
            message: format!("{path} (line {line}): {message}"),
        });
    }

    /// Records a field that is kept but not enforced, and warns about it. `field` names it
    /// relative to its rule (`toPorts[0].rules`, `to[1].fqdn`); `path` is its full path.
    pub(crate) fn unenforced(
        &mut self,
        out: &mut Vec<Unenforced>,
        path: &Path,
        field: String,
        value: &serde_json::Value,
        why: &str,
    ) {
        out.push(Unenforced {
            field,
            value: value.to_string(),
        });
        self.warn(path, format!("not enforced: {why}"));
    }
}

pub(crate) fn meta(
    raw: &ObjectMeta,
    namespaced: bool,
    base: &Path,
    cx: &mut Cx<'_>,
) -> Result<Meta, Invalid> {
    let path = base.key("metadata");
    let name = match (&raw.name, &raw.generate_name) {
        (Some(n), _) => n.clone(),
        (None, Some(_)) => {
            return Err(Invalid::unsupported(
                &path.key("generateName"),
                "generateName is not supported: set metadata.name",
            ))
        }
        (None, None) => {
            return Err(Invalid::missing(
                &path.key("name"),
                "required field is missing",
            ))
        }
    };
    dns_subdomain(&name, &path.key("name"))?;
    let namespace = if namespaced {
        let ns = raw
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        dns_label(&ns, &path.key("namespace"))?;
        Some(ns)
    } else {
        if raw.namespace.is_some() {
            cx.warn(
                &path.key("namespace"),
                "ignored: this kind is cluster-scoped",
            );
        }
        None
    };
    for (k, v) in raw.labels.iter().flatten() {
        let p = path.key("labels").key(k);
        qualified_name(k, &p)?;
        label_value(v, &p)?;
    }
    let mut audit = false;
    for (k, v) in raw.annotations.iter().flatten() {
        let p = path.key("annotations").key(k);
        qualified_name(k, &p)?;
        if k == AUDIT_ANNOTATION {
            audit = match v.as_str() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(Invalid::value(
                        &p,
                        format!("must be \"true\" or \"false\", not {other:?}"),
                    ))
                }
            };
        }
    }
    Ok(Meta {
        name,
        namespace,
        audit,
    })
}

// ---------------------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawSelector {
    #[serde(default)]
    pub match_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub match_expressions: Option<Vec<RawExpression>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExpression {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default)]
    pub values: Option<Vec<String>>,
}

/// A Kubernetes label selector with Kubernetes key/value validation.
pub(crate) fn label_selector(raw: &RawSelector, path: &Path) -> Result<LabelSelector, Invalid> {
    label_selector_with(raw, path, |key, p| {
        qualified_name(key, p)?;
        Ok(key.to_string())
    })
}

/// A label selector whose keys go through `map_key` (Cilium strips source prefixes there).
/// Values are sorted and deduplicated, expressions sorted: the selector means the same, and a
/// canonical form keeps rule ids stable.
pub(crate) fn label_selector_with(
    raw: &RawSelector,
    path: &Path,
    mut map_key: impl FnMut(&str, &Path) -> Result<String, Invalid>,
) -> Result<LabelSelector, Invalid> {
    let mut match_labels = BTreeMap::new();
    for (k, v) in raw.match_labels.iter().flatten() {
        let p = path.key("matchLabels").key(k);
        let key = map_key(k, &p)?;
        label_value(v, &p)?;
        if match_labels.insert(key.clone(), v.clone()).is_some() {
            return Err(Invalid::conflict(
                &p,
                format!("label key `{key}` is given more than once"),
            ));
        }
    }
    let mut match_expressions = Vec::new();
    for (i, e) in raw.match_expressions.iter().flatten().enumerate() {
        let p = path.key("matchExpressions").idx(i);
        let key = map_key(&e.key, &p.key("key"))?;
        let mut values = e.values.clone().unwrap_or_default();
        for (j, v) in values.iter().enumerate() {
            label_value(v, &p.key("values").idx(j))?;
        }
        match e.operator {
            SelectorOperator::In | SelectorOperator::NotIn if values.is_empty() => {
                return Err(Invalid::value(
                    &p.key("values"),
                    format!("operator {:?} needs at least one value", e.operator),
                ))
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if !values.is_empty() => {
                return Err(Invalid::value(
                    &p.key("values"),
                    format!("must be empty when operator is {:?}", e.operator),
                ))
            }
            _ => {}
        }
        values.sort();
        values.dedup();
        match_expressions.push(LabelExpression {
            key,
            operator: e.operator,
            values,
        });
    }
    match_expressions.sort();
    match_expressions.dedup();
    Ok(LabelSelector {
        match_labels,
        match_expressions,
    })
}

// ---------------------------------------------------------------------------------------------
// Names (k8s.io/apimachinery/pkg/util/validation)
// ---------------------------------------------------------------------------------------------

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_label_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub(crate) fn dns_subdomain(s: &str, path: &Path) -> Result<(), Invalid> {
    if is_dns_subdomain(s) {
        Ok(())
    } else {
        Err(Invalid::value(
            path,
            format!("{s:?} is not a valid name: lowercase letters, digits, '-' and '.', at most 253 characters, starting and ending with a letter or digit"),
        ))
    }
}

pub(crate) fn dns_label(s: &str, path: &Path) -> Result<(), Invalid> {
    if is_dns_label(s) {
        Ok(())
    } else {
        Err(Invalid::value(
            path,
            format!("{s:?} is not a valid namespace name: lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit"),
        ))
    }
}

/// A label key: `[prefix/]name`, prefix a DNS subdomain, name at most 63 characters.
pub(crate) fn qualified_name(s: &str, path: &Path) -> Result<(), Invalid> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let prefix_ok = prefix.is_none_or(|p| !p.is_empty() && is_dns_subdomain(p));
    if prefix_ok && name.len() <= 63 && is_label_name_part(name) {
        Ok(())
    } else {
        Err(Invalid::value(
            path,
            format!("{s:?} is not a valid label key: an optional DNS-subdomain prefix and '/', then at most 63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"),
        ))
    }
}

pub(crate) fn label_value(s: &str, path: &Path) -> Result<(), Invalid> {
    if s.is_empty() || (s.len() <= 63 && is_label_name_part(s)) {
        Ok(())
    } else {
        Err(Invalid::value(
            path,
            format!("{s:?} is not a valid label value: at most 63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"),
        ))
    }
}

/// IANA service name (`IsValidPortName`): what a named port may be called.
pub(crate) fn is_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

pub(crate) fn port_name(s: &str, path: &Path) -> Result<String, Invalid> {
    if is_port_name(s) {
        Ok(s.to_string())
    } else {
        Err(Invalid::value(
            path,
            format!("{s:?} is not a valid port name: 1-15 lowercase letters, digits and '-', with at least one letter (use an unquoted number for a numeric port)"),
        ))
    }
}

/// Log labels end up in flow logs: keep them short and free of control characters.
pub(crate) fn log_label(s: &str, path: &Path) -> Result<String, Invalid> {
    if s.len() <= 63 && !s.chars().any(char::is_control) {
        Ok(s.to_string())
    } else {
        Err(Invalid::value(
            path,
            "log label must be at most 63 characters without control characters",
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// CIDRs
// ---------------------------------------------------------------------------------------------

/// Parses a CIDR, normalizing host bits away (`10.0.0.5/24` → `10.0.0.0/24`, as the Kubernetes
/// API server's sloppy parser accepts it). `allow_bare_ip` accepts `10.0.0.1` as a /32.
pub(crate) fn cidr(s: &str, path: &Path, allow_bare_ip: bool) -> Result<IpNet, Invalid> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if allow_bare_ip {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(IpNet::from(ip));
        }
    }
    Err(Invalid::value(
        path,
        format!("{s:?} is not a valid CIDR (expected e.g. 10.0.0.0/16 or 2001:db8::/64)"),
    ))
}

/// `ipBlock{cidr, except}`: every `except` must be a strict subset of `cidr`.
pub(crate) fn ip_block(
    cidr_text: &str,
    except: &[String],
    path: &Path,
    allow_bare_ip: bool,
) -> Result<IpBlock, Invalid> {
    let net = cidr(cidr_text, &path.key("cidr"), allow_bare_ip)?;
    let mut holes = Vec::new();
    for (i, e) in except.iter().enumerate() {
        let p = path.key("except").idx(i);
        let hole = cidr(e, &p, allow_bare_ip)?;
        if hole.prefix_len() <= net.prefix_len() || !net.contains(&hole) {
            return Err(Invalid::value(
                &p,
                format!("{hole} is not a strict subset of {net}"),
            ));
        }
        holes.push(hole);
    }
    holes.sort();
    holes.dedup();
    Ok(IpBlock {
        cidr: net,
        except: holes,
    })
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// `port` as Kubernetes' `IntOrString`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IntOrString {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or name")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i64::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom(format!("port {v} is out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A port number in 1..=65535.
pub(crate) fn port_number(v: i64, path: &Path) -> Result<u16, Invalid> {
    match u16::try_from(v) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Invalid::value(
            path,
            format!("port {v} is out of range 1-65535"),
        )),
    }
}

/// `protocol: TCP|UDP|SCTP` (case-sensitive, as the API server checks it); `None` = TCP.
pub(crate) fn l4_protocol(p: Option<&str>, path: &Path) -> Result<ProtocolMatch, Invalid> {
    match p {
        None | Some("TCP") => Ok(ProtocolMatch::Tcp),
        Some("UDP") => Ok(ProtocolMatch::Udp),
        Some("SCTP") => Ok(ProtocolMatch::Sctp),
        Some(other) => Err(Invalid::value(
            path,
            format!("unsupported protocol {other:?}: expected TCP, UDP or SCTP"),
        )),
    }
}

/// `port` + `endPort` as Kubernetes and Antrea define them: `endPort` needs a numeric `port`
/// and must not be below it. `path` is the port entry.
pub(crate) fn k8s_port_spec(
    port: Option<&IntOrString>,
    end_port: Option<i64>,
    path: &Path,
) -> Result<Option<PortSpec>, Invalid> {
    let spec = match port {
        None => {
            if end_port.is_some() {
                return Err(Invalid::missing(
                    &path.key("port"),
                    "`port` is required when `endPort` is set",
                ));
            }
            return Ok(None);
        }
        Some(IntOrString::Str(name)) => {
            if end_port.is_some() {
                return Err(Invalid::conflict(
                    &path.key("endPort"),
                    "`endPort` cannot be used with a named `port`",
                ));
            }
            PortSpec::Named(port_name(name, &path.key("port"))?)
        }
        Some(IntOrString::Int(n)) => {
            let start = port_number(*n, &path.key("port"))?;
            let end = match end_port {
                None => start,
                Some(e) => {
                    let end = port_number(e, &path.key("endPort"))?;
                    if end < start {
                        return Err(Invalid::value(
                            &path.key("endPort"),
                            format!("endPort {end} is less than port {start}"),
                        ));
                    }
                    end
                }
            };
            PortSpec::Range(PortRange { start, end })
        }
    };
    Ok(Some(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_name_rules() {
        let p = Path::root();
        assert!(qualified_name("app", &p).is_ok());
        assert!(qualified_name("app.kubernetes.io/name", &p).is_ok());
        assert!(qualified_name("kubernetes.io/metadata.name", &p).is_ok());
        assert!(qualified_name("-app", &p).is_err());
        assert!(qualified_name("/app", &p).is_err());
        assert!(qualified_name("a/b/c", &p).is_err());
        assert!(qualified_name(&"a".repeat(64), &p).is_err());
        assert!(label_value("", &p).is_ok());
        assert!(label_value("payments-api", &p).is_ok());
        assert!(label_value("has space", &p).is_err());
        assert!(dns_subdomain("payments.api-1", &p).is_ok());
        assert!(dns_subdomain("Payments", &p).is_err());
        assert!(dns_label("edge", &p).is_ok());
        assert!(dns_label("a.b", &p).is_err());
        assert!(is_port_name("http"));
        assert!(is_port_name("http-alt2"));
        assert!(!is_port_name("8080"));
        assert!(!is_port_name("a--b"));
        assert!(!is_port_name("verylongportname"));
        assert!(!is_port_name("HTTP"));
    }

    #[test]
    fn cidrs_normalize_and_except_must_be_inside() {
        let p = Path::root();
        assert_eq!(
            cidr("10.0.0.5/24", &p, false).unwrap().to_string(),
            "10.0.0.0/24"
        );
        assert!(cidr("10.0.0.5", &p, false).is_err());
        assert_eq!(
            cidr("10.0.0.5", &p, true).unwrap().to_string(),
            "10.0.0.5/32"
        );
        assert!(cidr("10.0.0.0/33", &p, false).is_err());
        let b = ip_block("10.0.0.0/16", &["10.0.5.0/24".into()], &p, false).unwrap();
        assert_eq!(b.except.len(), 1);
        let e = ip_block("10.0.0.0/16", &["10.1.0.0/24".into()], &p, false).unwrap_err();
        assert_eq!(e.path.to_string(), "except[0]");
        assert!(ip_block("10.0.0.0/16", &["10.0.0.0/16".into()], &p, false).is_err());
        assert!(ip_block("10.0.0.0/16", &["2001:db8::/64".into()], &p, false).is_err());
    }

    #[test]
    fn k8s_ports() {
        let p = Path::root();
        let int = IntOrString::Int;
        assert_eq!(
            k8s_port_spec(Some(&int(80)), Some(90), &p).unwrap(),
            Some(PortSpec::Range(PortRange { start: 80, end: 90 }))
        );
        let e = k8s_port_spec(Some(&int(443)), Some(80), &p).unwrap_err();
        assert_eq!(e.path.to_string(), "endPort");
        assert!(k8s_port_spec(Some(&int(0)), None, &p).is_err());
        assert!(k8s_port_spec(Some(&int(65536)), None, &p).is_err());
        assert!(k8s_port_spec(None, Some(80), &p).is_err());
        let named = IntOrString::Str("http".into());
        assert_eq!(
            k8s_port_spec(Some(&named), None, &p).unwrap(),
            Some(PortSpec::Named("http".into()))
        );
        assert!(k8s_port_spec(Some(&named), Some(90), &p).is_err());
        assert!(k8s_port_spec(Some(&IntOrString::Str("80".into())), None, &p).is_err());
    }
}
