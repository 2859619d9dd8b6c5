//! Tests of CRD parsing through the public API (`dfw::crd`, `dfw::inventory`).

mod antrea;
mod cilium;
mod errors;
mod examples;
mod k8s;
mod props;
mod ruleid;

use dfw::crd::{parse_documents, ParseError, Parsed};
use dfw::model::{LabelExpression, LabelSelector, Labels, Object, Policy, SelectorOperator};

pub fn parse(text: &str) -> Parsed {
    match parse_documents(text, "test.yaml") {
        Ok(p) => p,
        Err(e) => panic!("unexpected parse error: {e}"),
    }
}

pub fn err(text: &str) -> ParseError {
    match parse_documents(text, "test.yaml") {
        Ok(p) => panic!("expected an error, parsed {:#?}", p.objects),
        Err(e) => e,
    }
}

/// The only policy of `text`.
pub fn policy(text: &str) -> Policy {
    let parsed = parse(text);
    assert_eq!(parsed.objects.len(), 1, "{:#?}", parsed.objects);
    match parsed.objects.into_iter().next() {
        Some(Object::Policy(p)) => p,
        other => panic!("expected a policy, got {other:?}"),
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: Vec::new(),
    }
}

pub fn expr(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelExpression {
    LabelExpression {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}
