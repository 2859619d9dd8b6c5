//! A small block-style YAML writer for JSON values (for `vdfwctl policy generate` and
//! `-o yaml`-like output). Scalars are double-quoted (JSON escaping, which YAML accepts)
//! whenever a plain scalar could be misread (numbers, booleans, null, special characters).

use serde_json::Value;

/// Renders one YAML document (without the `---` separator).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        scalar => {
            out.push_str(&scalar_str(scalar));
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn write_map(out: &mut String, m: &serde_json::Map<String, Value>, ind: usize) {
    // The caller has already indented the first key (it may sit on a "- " line).
    let mut first = true;
    for (k, v) in m {
        if !first {
            indent(out, ind);
        }
        first = false;
        out.push_str(&key_str(k));
        out.push(':');
        write_value_after_key(out, v, ind);
    }
}

fn write_value_after_key(out: &mut String, v: &Value, ind: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            indent(out, ind + 2);
            write_map(out, m, ind + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            indent(out, ind);
            write_seq(out, a, ind);
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_str(scalar));
            out.push('\n');
        }
    }
}

fn write_seq(out: &mut String, a: &[Value], ind: usize) {
    let mut first = true;
    for v in a {
        if !first {
            indent(out, ind);
        }
        first = false;
        out.push_str("- ");
        match v {
            Value::Object(m) if !m.is_empty() => write_map(out, m, ind + 2),
            Value::Array(inner) if !inner.is_empty() => write_seq(out, inner, ind + 2),
            scalar => {
                out.push_str(&scalar_str(scalar));
                out.push('\n');
            }
        }
    }
}

fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s.parse::<f64>().is_ok()
        || matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "~" | "y" | "n"
        )
        || s.starts_with([
            ' ', '-', '?', ':', ',', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '\'', '"',
            '%', '@', '`',
        ])
        || s.ends_with(' ')
        || s.contains(": ")
        || s.contains(" #")
        || s.chars().any(|c| c.is_control())
}

fn key_str(k: &str) -> String {
    if needs_quotes(k) {
        Value::String(k.to_string()).to_string()
    } else {
        k.to_string()
    }
}

fn scalar_str(v: &Value) -> String {
    match v {
        Value::String(s) if !needs_quotes(s) => s.clone(),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_nested_maps_and_sequences() {
        let v = json!({
            "kind": "NetworkPolicy",
            "spec": {
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 80, "protocol": "TCP"}]},
                    {"action": "Drop", "from": []}
                ],
                "port": "8080",
                "flag": "true"
            }
        });
        let expected = "\
kind: NetworkPolicy
spec:
  flag: \"true\"
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: web
    ports:
    - port: 80
      protocol: TCP
  - action: Drop
    from: []
  port: \"8080\"
";
        assert_eq!(to_yaml(&v), expected);
    }
}
