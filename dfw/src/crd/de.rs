//! A serde `Deserializer` over the position-annotated YAML tree.
//!
//! Every node knows its field path and position; an error raised while deserializing a node
//! (wrong type, unknown field, unknown enum variant, missing field) is stamped with the
//! innermost node's path and position on its way out, so `#[serde(deny_unknown_fields)]`
//! structs give errors like `spec.ingress[0].from[0].podSelecter: unknown field`.
//!
//! Go-compatible null handling: the CRDs are Go structs decoded from JSON, where `null` for a
//! slice, map or struct means "empty/absent". We follow that (null → empty sequence / map,
//! `None` for options) so documents `kubectl` accepts are accepted here too.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, VariantAccess, Visitor,
};

use super::error::{ErrorKind, Invalid, Path};
use super::yaml::{Mark, Node, Resolved, Scalar, Value};

/// Deserializes `node` (found at `path`) into `T`.
pub(crate) fn from_node<T: DeserializeOwned>(node: &Node, path: &Path) -> Result<T, Invalid> {
    T::deserialize(NodeDe {
        node,
        path: path.clone(),
    })
    .map_err(|e| {
        let (path, mark) = e.at.unwrap_or_else(|| (path.clone(), node.mark));
        Invalid {
            path,
            kind: e.kind,
            message: e.message,
            mark: Some(mark),
        }
    })
}

/// The deserializer's error: a message plus, once known, where it happened.
#[derive(Debug)]
pub(crate) struct DeError {
    kind: ErrorKind,
    message: String,
    /// For `missing field` errors: the field, appended to the map's path when located.
    missing: Option<&'static str>,
    at: Option<(Path, Mark)>,
}

impl DeError {
    fn located(mut self, path: &Path, mark: Mark) -> Self {
        if self.at.is_none() {
            let path = match self.missing {
                Some(field) => path.key(field),
                None => path.clone(),
            };
            self.at = Some((path, mark));
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            kind: ErrorKind::InvalidValue,
            message: msg.to_string(),
            missing: None,
            at: None,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let mut message = String::from("unknown field");
        if let Some(best) = closest(field, expected) {
            message.push_str(&format!(" (did you mean `{best}`?)"));
        }
        if !expected.is_empty() {
            let list: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
            message.push_str(&format!("; expected one of {}", list.join(", ")));
        }
        Self {
            kind: ErrorKind::UnknownField,
            message,
            missing: None,
            at: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        Self {
            kind: ErrorKind::MissingField,
            message: "required field is missing".into(),
            missing: Some(field),
            at: None,
        }
    }
}

/// The expected name within edit distance 2 of `field`, for "did you mean" hints.
fn closest(field: &str, expected: &[&'static str]) -> Option<&'static str> {
    expected
        .iter()
        .map(|e| (edit_distance(field, e), *e))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn unexpected(node: &Node) -> Unexpected<'_> {
    match &node.value {
        Value::Scalar(s) => match s.resolve() {
            Resolved::Null => Unexpected::Other("null"),
            Resolved::Bool(b) => Unexpected::Bool(b),
            Resolved::Int(i) => match i64::try_from(i) {
                Ok(i) => Unexpected::Signed(i),
                Err(_) => Unexpected::Other("out-of-range integer"),
            },
            Resolved::Float(f) => Unexpected::Float(f),
            Resolved::Str => Unexpected::Str(&s.text),
        },
        Value::Seq(_) => Unexpected::Seq,
        Value::Map(_) => Unexpected::Map,
    }
}

struct NodeDe<'a> {
    node: &'a Node,
    path: Path,
}

impl NodeDe<'_> {
    fn done<T>(self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.map_err(|e| e.located(&self.path, self.node.mark))
    }

    fn invalid_type<'de, T, V: Visitor<'de>>(&self, visitor: &V) -> Result<T, DeError> {
        Err(de::Error::invalid_type(unexpected(self.node), visitor))
    }
}

fn visit_scalar<'de, V: Visitor<'de>>(s: &Scalar, visitor: V) -> Result<V::Value, DeError> {
    match s.resolve() {
        Resolved::Null => visitor.visit_unit(),
        Resolved::Bool(b) => visitor.visit_bool(b),
        Resolved::Int(i) => {
            if let Ok(u) = u64::try_from(i) {
                visitor.visit_u64(u)
            } else if let Ok(n) = i64::try_from(i) {
                visitor.visit_i64(n)
            } else {
                Err(de::Error::custom(format!("integer `{i}` is out of range")))
            }
        }
        Resolved::Float(f) => visitor.visit_f64(f),
        Resolved::Str => visitor.visit_str(&s.text),
    }
}

macro_rules! forward_to_any {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
                self.deserialize_any(visitor)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Scalar(s) => visit_scalar(s, visitor),
            Value::Seq(items) => visitor.visit_seq(SeqDe {
                iter: items.iter().enumerate(),
                path: &self.path,
            }),
            Value::Map(entries) => visitor.visit_map(MapDe {
                iter: entries.iter(),
                path: &self.path,
                value: None,
            }),
        };
        self.done(r)
    }

    forward_to_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char deserialize_bytes
        deserialize_byte_buf
    }

    /// Strings accept any non-null scalar as written (`port: 80` into a string field gives
    /// `"80"`), like the Kubernetes YAML decoder does for typed targets.
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Scalar(s) if s.resolve() != Resolved::Null => visitor.visit_str(&s.text),
            _ => Err(de::Error::invalid_type(unexpected(self.node), &visitor)),
        };
        self.done(r)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            let r = visitor.visit_none();
            self.done(r)
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = if self.node.is_null() {
            visitor.visit_unit()
        } else {
            Err(de::Error::invalid_type(unexpected(self.node), &visitor))
        };
        self.done(r)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Seq(items) => visitor.visit_seq(SeqDe {
                iter: items.iter().enumerate(),
                path: &self.path,
            }),
            _ if self.node.is_null() => visitor.visit_seq(SeqDe {
                iter: [].iter().enumerate(),
                path: &self.path,
            }),
            _ => self.invalid_type(&visitor),
        };
        self.done(r)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Map(entries) => visitor.visit_map(MapDe {
                iter: entries.iter(),
                path: &self.path,
                value: None,
            }),
            _ if self.node.is_null() => visitor.visit_map(MapDe {
                iter: [].iter(),
                path: &self.path,
                value: None,
            }),
            _ => self.invalid_type(&visitor),
        };
        self.done(r)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Scalar(s) if s.resolve() != Resolved::Null => {
                visitor.visit_enum(UnitVariant { name: &s.text })
            }
            _ => self.invalid_type(&visitor),
        };
        self.done(r)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct SeqDe<'a, 'p> {
    iter: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    path: &'p Path,
}

impl<'de> SeqAccess<'de> for SeqDe<'_, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.iter.next() {
            None => Ok(None),
            Some((i, node)) => seed
                .deserialize(NodeDe {
                    node,
                    path: self.path.idx(i),
                })
                .map(Some),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct MapDe<'a, 'p> {
    iter: std::slice::Iter<'a, (Node, Node)>,
    path: &'p Path,
    value: Option<(&'a Node, Path)>,
}

impl<'de> MapAccess<'de> for MapDe<'_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        let text = key.scalar_text().unwrap_or_default();
        let path = self.path.key(text);
        let r = seed
            .deserialize(KeyDe { text })
            .map_err(|e| e.located(&path, key.mark));
        self.value = Some((value, path));
        r.map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some((node, path)) => seed.deserialize(NodeDe { node, path }),
            None => Err(de::Error::custom("value requested before key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// Map keys are always strings (JSON object keys).
struct KeyDe<'a> {
    text: &'a str,
}

impl<'de> de::Deserializer<'de> for KeyDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str(self.text)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct UnitVariant<'a> {
    name: &'a str,
}

impl<'de> EnumAccess<'de> for UnitVariant<'_> {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self), DeError> {
        let de: de::value::StrDeserializer<'_, DeError> = self.name.into_deserializer();
        Ok((seed.deserialize(de)?, self))
    }
}

impl<'de> VariantAccess<'de> for UnitVariant<'_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value, DeError> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"a newtype variant",
        ))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _v: V) -> Result<V::Value, DeError> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"a tuple variant",
        ))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _v: V,
    ) -> Result<V::Value, DeError> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"a struct variant",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::crd::yaml::load;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Inner {
        pod_selector: Option<BTreeMap<String, String>>,
        port: Option<u16>,
        op: Option<Op>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    enum Op {
        In,
        NotIn,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        items: Vec<Inner>,
    }

    fn parse(text: &str) -> Result<Outer, Invalid> {
        let docs = load(text).unwrap();
        from_node(&docs.last().unwrap().root, &Path::root())
    }

    #[test]
    fn unknown_field_points_at_the_key() {
        let e = parse("---\nname: x\n---\nname: y\nitems:\n  - port: 1\n  - podSelecter: {}\n")
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnknownField);
        assert_eq!(e.path.to_string(), "items[1].podSelecter");
        assert_eq!(e.mark, Some(Mark { line: 7, column: 5 }));
        assert!(
            e.message.contains("did you mean `podSelector`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn missing_field_names_the_field() {
        let e = parse("items: []\n").unwrap_err();
        assert_eq!(e.kind, ErrorKind::MissingField);
        assert_eq!(e.path.to_string(), "name");
    }

    #[test]
    fn type_errors_point_at_the_value() {
        let e = parse("name: x\nitems:\n  - port: 70000\n").unwrap_err();
        assert_eq!(e.path.to_string(), "items[0].port");
        assert_eq!(
            e.mark,
            Some(Mark {
                line: 3,
                column: 11
            })
        );
        let e = parse("name: x\nitems:\n  - port: \"80\"\n").unwrap_err();
        assert!(e.message.contains("invalid type"), "{}", e.message);
        let e = parse("name: x\nitems:\n  - op: Inn\n").unwrap_err();
        assert_eq!(e.path.to_string(), "items[0].op");
        assert!(e.message.contains("unknown variant"), "{}", e.message);
    }

    #[test]
    fn null_collections_are_empty_like_go() {
        let o = parse("name: 5\nitems:\n").unwrap();
        assert_eq!(o.name, "5");
        assert!(o.items.is_empty());
        let o = parse("name: x\nitems: [{podSelector: ~}]\n").unwrap();
        assert_eq!(o.items[0].pod_selector, None);
    }

    #[test]
    fn null_is_not_a_string() {
        let e = parse("name:\nitems: []\n").unwrap_err();
        assert_eq!(e.path.to_string(), "name");
    }

    #[test]
    fn json_values_roundtrip() {
        let docs = load("{a: [1, -2, 1.5, true, null, x, \"y\"], b: {c: d}}").unwrap();
        let v: serde_json::Value = from_node(&docs[0].root, &Path::root()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": [1, -2, 1.5, true, null, "x", "y"], "b": {"c": "d"}})
        );
    }
}
