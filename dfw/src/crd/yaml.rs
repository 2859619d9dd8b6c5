//! YAML (and JSON) loading into a position-annotated tree.
//!
//! Why not `serde_yaml` or one of its forks (`serde_yaml_ng`, `serde_norway`)? They
//! deserialize straight into typed structs, which is exactly what we cannot do: a document's
//! type is only known after reading its `kind`/`apiVersion` (which may come after `spec`), a
//! `kind: List` or a JSON array holds objects of different kinds, and several checks
//! (`endPort >= port`, tier existence, duplicates) run after deserialization and still have to
//! point at a line. Going through their untyped `Value` loses every position. So we build our
//! own small tree from the events of `saphyr-parser` (maintained by the saphyr-rs project,
//! pure Rust, no `unsafe`, YAML 1.2 test-suite compliant, reports line/column for every event)
//! and run serde over that tree with [`super::de`], which tracks field paths.
//!
//! Scalar typing follows the YAML 1.2 core schema (`yes`/`no`/`on`/`off` are strings, not
//! booleans), which is also what JSON means. Anchors and aliases are expanded with a size
//! budget (no "billion laughs"), nesting depth is bounded, duplicate keys are errors, and tags
//! other than the core ones (`!!str`, `!!int`, ...) are refused rather than guessed at.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

/// A one-based line and column in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Mark {
    pub line: usize,
    pub column: usize,
}

impl Mark {
    fn of(span: &Span) -> Self {
        Self {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scalar {
    pub text: String,
    /// Plain (unquoted, untagged) scalars are typed by the core schema; quoted ones and
    /// `!!str` are always strings.
    pub plain: bool,
}

/// A scalar's value under the YAML 1.2 core schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Resolved {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str,
}

impl Scalar {
    pub(crate) fn resolve(&self) -> Resolved {
        if !self.plain {
            return Resolved::Str;
        }
        let t = self.text.as_str();
        match t {
            "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
            "true" | "True" | "TRUE" => return Resolved::Bool(true),
            "false" | "False" | "FALSE" => return Resolved::Bool(false),
            ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
                return Resolved::Float(f64::INFINITY)
            }
            "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
            ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
            _ => {}
        }
        if let Some(hex) = t.strip_prefix("0x") {
            if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return i128::from_str_radix(hex, 16).map_or(Resolved::Str, Resolved::Int);
            }
            return Resolved::Str;
        }
        if let Some(oct) = t.strip_prefix("0o") {
            if !oct.is_empty() && oct.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                return i128::from_str_radix(oct, 8).map_or(Resolved::Str, Resolved::Int);
            }
            return Resolved::Str;
        }
        let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            // Out-of-range integers stay integers here; numeric visitors reject them.
            return t.parse::<i128>().map_or(Resolved::Str, Resolved::Int);
        }
        if is_core_float(digits) {
            if let Ok(f) = t.parse::<f64>() {
                return Resolved::Float(f);
            }
        }
        Resolved::Str
    }
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` (sign already stripped).
fn is_core_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (!int.is_empty() || !frac.is_empty())
                && int.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|b| b.is_ascii_digit()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Entries in document order; keys are scalars and unique.
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub mark: Mark,
    pub value: Value,
}

impl Node {
    pub(crate) fn scalar_text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(s) if s.resolve() == Resolved::Null)
    }

    /// The value of a map entry, if this is a map that has `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.scalar_text() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn size(&self) -> usize {
        match &self.value {
            Value::Scalar(_) => 1,
            Value::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Value::Map(entries) => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.size() + v.size())
                    .sum::<usize>()
            }
        }
    }
}

/// One document of a (possibly multi-document) stream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Document {
    /// Zero-based position in the stream, counting empty documents too, so the number matches
    /// what a reader counts between `---` separators.
    pub index: usize,
    pub root: Node,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoadError {
    pub document: usize,
    pub mark: Mark,
    pub message: String,
}

/// Deeper nesting than this is refused (policies are a few levels deep; this keeps recursion
/// in drop/serde bounded on hostile input).
const MAX_DEPTH: usize = 64;
/// Total nodes, counting alias expansions: bounds memory on hostile input.
const MAX_NODES: usize = 500_000;

enum Frame {
    Seq {
        mark: Mark,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        mark: Mark,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

const CORE_TAG_HANDLE: &str = "tag:yaml.org,2002:";

/// Parses every document of `text`. Empty documents are returned too (as a null scalar);
/// callers skip them.
pub(crate) fn load(text: &str) -> Result<Vec<Document>, LoadError> {
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut nodes = 0usize;
    let mut doc_index = 0usize;
    let mut in_doc = false;

    let err = |document: usize, mark: Mark, message: String| LoadError {
        document,
        mark,
        message,
    };

    for event in Parser::new_from_str(text) {
        let (event, span) = match event {
            Ok(ev) => ev,
            Err(e) => {
                let mark = Mark {
                    line: e.marker().line(),
                    column: e.marker().col() + 1,
                };
                return Err(err(doc_index, mark, format!("YAML syntax: {}", e.info())));
            }
        };
        let mark = Mark::of(&span);
        let completed: Option<(Node, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                if in_doc {
                    doc_index += 1;
                }
                in_doc = true;
                anchors.clear();
                None
            }
            Event::DocumentEnd => {
                // `in_doc` stays set so the next DocumentStart advances the index.
                None
            }
            Event::Scalar(text, style, anchor, tag) => {
                let quoted = !matches!(style, ScalarStyle::Plain);
                let plain = match tag.as_deref() {
                    None => !quoted,
                    Some(t) => scalar_tag_is_plain(t)
                        .map_err(|m| err(doc_index, mark, m))?
                        .unwrap_or(!quoted),
                };
                Some((
                    Node {
                        mark,
                        value: Value::Scalar(Scalar {
                            text: text.into_owned(),
                            plain,
                        }),
                    },
                    anchor,
                ))
            }
            Event::Alias(id) => {
                let node = anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| err(doc_index, mark, "alias to an unknown anchor".into()))?;
                nodes += node.size();
                Some((node, 0))
            }
            Event::SequenceStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "seq").map_err(|m| err(doc_index, mark, m))?;
                stack.push(Frame::Seq {
                    mark,
                    anchor,
                    items: Vec::new(),
                });
                None
            }
            Event::MappingStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "map").map_err(|m| err(doc_index, mark, m))?;
                stack.push(Frame::Map {
                    mark,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq {
                    mark,
                    anchor,
                    items,
                }) => Some((
                    Node {
                        mark,
                        value: Value::Seq(items),
                    },
                    anchor,
                )),
                _ => return Err(err(doc_index, mark, "unbalanced sequence end".into())),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    mark,
                    anchor,
                    entries,
                    ..
                }) => Some((
                    Node {
                        mark,
                        value: Value::Map(entries),
                    },
                    anchor,
                )),
                _ => return Err(err(doc_index, mark, "unbalanced mapping end".into())),
            },
        };
        if stack.len() > MAX_DEPTH {
            return Err(err(
                doc_index,
                mark,
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        let Some((node, anchor)) = completed else {
            continue;
        };
        nodes += 1;
        if nodes > MAX_NODES {
            return Err(err(
                doc_index,
                mark,
                format!("document too large (more than {MAX_NODES} nodes after alias expansion)"),
            ));
        }
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => docs.push(Document {
                index: doc_index,
                root: node,
            }),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    let Some(text) = node.scalar_text() else {
                        return Err(err(
                            doc_index,
                            node.mark,
                            "mapping keys must be scalars".into(),
                        ));
                    };
                    if entries.iter().any(|(k, _)| k.scalar_text() == Some(text)) {
                        return Err(err(doc_index, node.mark, format!("duplicate key `{text}`")));
                    }
                    *key = Some(node);
                }
                Some(k) => entries.push((k, node)),
            },
        }
    }
    Ok(docs)
}

/// `Ok(Some(plain))` for core scalar tags, `Err` for anything else.
fn scalar_tag_is_plain(tag: &Tag) -> Result<Option<bool>, String> {
    if tag.handle == CORE_TAG_HANDLE {
        match tag.suffix.as_str() {
            "str" => Ok(Some(false)),
            "int" | "float" | "bool" | "null" => Ok(Some(true)),
            other => Err(format!("unsupported YAML tag `!!{other}`")),
        }
    } else if tag.handle == "!" && tag.suffix.is_empty() {
        // The non-specific tag `!` forces a string.
        Ok(Some(false))
    } else {
        Err(format!(
            "unsupported YAML tag `{}{}`",
            tag.handle, tag.suffix
        ))
    }
}

fn check_collection_tag(tag: Option<&Tag>, expected: &str) -> Result<(), String> {
    match tag {
        None => Ok(()),
        Some(t) if t.handle == CORE_TAG_HANDLE && t.suffix == expected => Ok(()),
        Some(t) => Err(format!("unsupported YAML tag `{}{}`", t.handle, t.suffix)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(t: &str) -> Resolved {
        Scalar {
            text: t.into(),
            plain: true,
        }
        .resolve()
    }

    #[test]
    fn core_schema_resolution() {
        assert_eq!(plain(""), Resolved::Null);
        assert_eq!(plain("~"), Resolved::Null);
        assert_eq!(plain("true"), Resolved::Bool(true));
        // YAML 1.2: the Norway problem does not exist.
        assert_eq!(plain("no"), Resolved::Str);
        assert_eq!(plain("yes"), Resolved::Str);
        assert_eq!(plain("8080"), Resolved::Int(8080));
        assert_eq!(plain("-3"), Resolved::Int(-3));
        assert_eq!(plain("0x1F"), Resolved::Int(31));
        assert_eq!(plain("0o17"), Resolved::Int(15));
        assert_eq!(plain("1.5"), Resolved::Float(1.5));
        assert_eq!(plain("1e3"), Resolved::Float(1000.0));
        assert_eq!(plain("10.0.0.1"), Resolved::Str);
        assert_eq!(plain("10.0.0.0/8"), Resolved::Str);
        assert_eq!(plain("http"), Resolved::Str);
        let quoted = Scalar {
            text: "80".into(),
            plain: false,
        };
        assert_eq!(quoted.resolve(), Resolved::Str);
    }

    #[test]
    fn lines_are_absolute_across_documents() {
        let text = "a: 1\n---\nb: 2\n---\n# c\n\nc:\n  d: 3\n";
        let docs = load(text).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[2].index, 2);
        assert_eq!(docs[2].root.mark.line, 7);
        let d = docs[2].root.get("c").unwrap().get("d").unwrap();
        assert_eq!(d.mark, Mark { line: 8, column: 6 });
    }

    #[test]
    fn empty_documents_keep_their_index() {
        let docs = load("---\n---\na: 1\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert!(docs[0].root.is_null());
        assert_eq!(docs[1].index, 1);
        assert!(load("").unwrap().is_empty());
    }

    #[test]
    fn crlf_and_bom_keep_lines_right() {
        let docs = load("\u{feff}a: 1\r\n---\r\nb:\r\n  c: 2\r\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].root.get("a").unwrap().scalar_text(), Some("1"));
        let c = docs[1].root.get("b").unwrap().get("c").unwrap();
        assert_eq!(c.mark, Mark { line: 4, column: 6 });
        assert_eq!(c.scalar_text(), Some("2"));
    }

    #[test]
    fn json_with_tabs_parses() {
        let docs = load("{\n\t\"a\": [1, {\"b\": \"c\"}]\n}\n").unwrap();
        assert_eq!(docs.len(), 1);
        assert!(docs[0].root.get("a").is_some());
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = load("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.mark.line, 3);
        assert!(e.message.contains("duplicate key `a`"), "{}", e.message);
    }

    #[test]
    fn syntax_errors_carry_document_and_line() {
        let e = load("a: 1\n---\nb: 1\n  c: 2\n").unwrap_err();
        assert_eq!(e.document, 1);
        assert_eq!(e.mark.line, 4);
    }

    #[test]
    fn aliases_expand_within_budget() {
        let docs = load("a: &x {k: v}\nb: *x\n").unwrap();
        assert_eq!(
            docs[0]
                .root
                .get("b")
                .unwrap()
                .get("k")
                .unwrap()
                .scalar_text(),
            Some("v")
        );
        // Exponential alias bomb.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = load(&bomb).unwrap_err();
        assert!(e.message.contains("too large"), "{}", e.message);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = "[".repeat(10_000);
        let e = load(&text).unwrap_err();
        assert!(
            e.message.contains("nesting") || e.message.contains("syntax"),
            "{}",
            e.message
        );
    }

    #[test]
    fn unknown_tags_are_refused() {
        assert!(load("a: !Ref x\n").is_err());
        assert!(load("a: !!binary aGVsbG8=\n").is_err());
        let docs = load("a: !!str 5\n").unwrap();
        assert_eq!(
            docs[0].root.get("a").unwrap().value,
            Value::Scalar(Scalar {
                text: "5".into(),
                plain: false
            })
        );
    }
}
