//! Parse errors and field paths.
//!
//! Every error names the file, the document, the line and column, and the field path
//! (`spec.ingress[0].from[0].podSelecter`), because policy files are written by people and the
//! fastest fix is the one that points at the exact spot.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::yaml::{Mark, Node, Value};

/// What went wrong, so callers (the API) can map errors to status codes without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Not well-formed YAML/JSON (or a YAML feature vdfw refuses: unknown tags, deep nesting).
    Syntax,
    /// `apiVersion`/`kind` not understood.
    UnknownKind,
    /// A field the CRD schema does not define (typo protection: nothing is silently ignored).
    UnknownField,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type or an out-of-range / malformed value.
    InvalidValue,
    /// Fields that may not be combined (e.g. `appliedTo` on the policy and on a rule).
    Conflict,
    /// Valid upstream, but not something vdfw can enforce and refuses to half-enforce.
    Unsupported,
    /// A reference to something that does not exist (e.g. an unknown Antrea tier).
    UnknownReference,
    /// Two documents in one set declare the same object.
    Duplicate,
}

/// A located, human-readable parse error.
///
/// Rendered as `file: document N (line L, column C): path: message`, where `N` is one-based
/// (the first document of a file is "document 1"), unlike [`crate::model::Source::document`],
/// which is zero-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub struct ParseError {
    pub file: String,
    /// Zero-based index of the document in the file.
    pub document: usize,
    /// One-based line in the file (absolute, not relative to the document).
    pub line: usize,
    /// One-based column.
    pub column: usize,
    /// Field path from the document root, e.g. `spec.ingress[0].ports[1].endPort`; empty for
    /// errors about the document as a whole.
    pub path: String,
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: document {} (line {}, column {}): ",
            self.file,
            self.document + 1,
            self.line,
            self.column
        )?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A path from a document root to a node. Cheap enough to clone per node: policy documents
/// are small and the path is only a handful of segments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Path(Vec<Seg>);

impl Path {
    pub(crate) fn root() -> Self {
        Self::default()
    }

    pub(crate) fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        Self(segs)
    }

    pub(crate) fn idx(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }

    /// The node this path leads to, or the deepest existing ancestor; for a final map key,
    /// the key node (so the error points at the field name).
    pub(crate) fn locate(&self, root: &Node) -> Mark {
        let mut node = root;
        let mut mark = root.mark;
        for seg in &self.0 {
            match (seg, &node.value) {
                (Seg::Key(k), Value::Map(entries)) => {
                    match entries.iter().find(|(key, _)| key.scalar_text() == Some(k)) {
                        Some((key, value)) => {
                            mark = key.mark;
                            node = value;
                        }
                        None => return mark,
                    }
                }
                (Seg::Index(i), Value::Seq(items)) => match items.get(*i) {
                    Some(item) => {
                        mark = item.mark;
                        node = item;
                    }
                    None => return mark,
                },
                _ => return mark,
            }
        }
        mark
    }
}

/// Keys printed bare after a dot; anything else is printed as `["key"]`.
fn is_simple_key(key: &str) -> bool {
    key.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if is_simple_key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Key(k) => write!(f, "[{k:?}]")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// An error found while translating one object, before it is tied to a file position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub path: Path,
    pub kind: ErrorKind,
    pub message: String,
    /// Exact position when known (deserializer errors); otherwise found from `path`.
    pub mark: Option<Mark>,
}

impl Invalid {
    pub(crate) fn new(path: &Path, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            path: path.clone(),
            kind,
            message: message.into(),
            mark: None,
        }
    }

    pub(crate) fn value(path: &Path, message: impl Into<String>) -> Self {
        Self::new(path, ErrorKind::InvalidValue, message)
    }

    pub(crate) fn conflict(path: &Path, message: impl Into<String>) -> Self {
        Self::new(path, ErrorKind::Conflict, message)
    }

    pub(crate) fn unsupported(path: &Path, message: impl Into<String>) -> Self {
        Self::new(path, ErrorKind::Unsupported, message)
    }

    pub(crate) fn missing(path: &Path, message: impl Into<String>) -> Self {
        Self::new(path, ErrorKind::MissingField, message)
    }

    /// Ties the error to a file position, resolving the path against the document tree.
    pub(crate) fn into_parse_error(self, file: &str, document: usize, root: &Node) -> ParseError {
        let mark = self.mark.unwrap_or_else(|| self.path.locate(root));
        ParseError {
            file: file.to_string(),
            document,
            line: mark.line,
            column: mark.column,
            path: self.path.to_string(),
            kind: self.kind,
            message: self.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_renders_like_kubectl_explain() {
        let p = Path::root()
            .key("spec")
            .key("ingress")
            .idx(0)
            .key("from")
            .idx(2)
            .key("podSelector");
        assert_eq!(p.to_string(), "spec.ingress[0].from[2].podSelector");
        let labels = Path::root()
            .key("metadata")
            .key("labels")
            .key("app.kubernetes.io/name");
        assert_eq!(
            labels.to_string(),
            "metadata.labels[\"app.kubernetes.io/name\"]"
        );
        assert_eq!(Path::root().idx(3).key("kind").to_string(), "[3].kind");
        assert_eq!(Path::root().to_string(), "");
    }

    #[test]
    fn display_is_one_based_and_names_everything() {
        let e = ParseError {
            file: "policies/pay.yaml".into(),
            document: 1,
            line: 14,
            column: 9,
            path: "spec.ingress[0].from[0].podSelecter".into(),
            kind: ErrorKind::UnknownField,
            message: "unknown field".into(),
        };
        assert_eq!(
            e.to_string(),
            "policies/pay.yaml: document 2 (line 14, column 9): spec.ingress[0].from[0].podSelecter: unknown field"
        );
    }
}
