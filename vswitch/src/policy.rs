//! Reading the policy directory: every `*.yaml`, `*.yml` and `*.json` file under it,
//! recursively, parsed by dfw as one set (all of it or nothing).
//!
//! Hidden entries (names starting with `.`) are skipped: editor swap files, and the
//! `..data`/`..2024_...` directories a Kubernetes ConfigMap volume keeps beside the symlinks
//! that name its files (the symlinks are followed, so a ConfigMap mounted as `policy_dir`
//! reads each file once). Files are read in path order, so errors come out in a stable order.

use std::path::{Path, PathBuf};

use dfw::crd::{parse_files, ParseError, ParseOptions, Parsed};

/// Directory nesting followed at most (guards against symlink loops).
const MAX_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} policy error(s)", .0.len())]
    Parse(Vec<ParseError>),
}

impl PolicyLoadError {
    /// One line per problem: `file: document N (line L, column C): field.path: message`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            PolicyLoadError::Read { .. } => vec![self.to_string()],
            PolicyLoadError::Parse(errors) => errors.iter().map(|e| e.to_string()).collect(),
        }
    }
}

fn is_policy_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Policy files under `dir`, sorted by path.
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyLoadError> {
    let mut out = Vec::new();
    walk(dir, 0, &mut out)?;
    out.sort();
    Ok(out)
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), PolicyLoadError> {
    let read_err = |source| PolicyLoadError::Read {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if hidden(&path) {
            continue;
        }
        // Follows symlinks (ConfigMap volumes); a dangling one is an error like any other.
        let meta = std::fs::metadata(&path).map_err(|source| PolicyLoadError::Read {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, out)?;
            }
        } else if meta.is_file() && is_policy_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Every policy file under `dir` with its text, sorted by path.
pub fn read_policy_dir(dir: &Path) -> Result<Vec<(PathBuf, String)>, PolicyLoadError> {
    policy_files(dir)?
        .into_iter()
        .map(|f| match std::fs::read_to_string(&f) {
            Ok(text) => Ok((f, text)),
            Err(source) => Err(PolicyLoadError::Read { path: f, source }),
        })
        .collect()
}

/// Reads and parses every policy file under `dir` as one set.
pub fn load_policy_dir(dir: &Path) -> Result<(Vec<PathBuf>, Parsed), PolicyLoadError> {
    let files = policy_files(dir)?;
    let mut texts = Vec::with_capacity(files.len());
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|source| PolicyLoadError::Read {
            path: f.clone(),
            source,
        })?;
        texts.push((f.display().to_string(), text));
    }
    let refs: Vec<(&str, &str)> = texts
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let parsed = parse_files(&refs, &ParseOptions::default()).map_err(PolicyLoadError::Parse)?;
    Ok((files, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: NAME, namespace: shop}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n";

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn reads_nested_yaml_and_json_skips_hidden_and_others() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(&root.join("a.yaml"), &NP.replace("NAME", "a"));
        write(&root.join("sub/deeper/b.yml"), &NP.replace("NAME", "b"));
        write(
            &root.join("c.json"),
            r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"c","namespace":"shop"},"spec":{"podSelector":{}}}"#,
        );
        write(&root.join("README.md"), "not policy");
        write(&root.join(".a.yaml.swp"), "garbage: [");
        write(&root.join("..data/hidden.yaml"), "garbage: [");
        std::os::unix::fs::symlink(root.join("a.yaml"), root.join("link.yaml")).unwrap();

        let files = policy_files(root).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a.yaml", "c.json", "link.yaml", "sub/deeper/b.yml"]);

        // link.yaml repeats a.yaml: the set has a duplicate, and the whole set is refused.
        let err = load_policy_dir(root).unwrap_err();
        let lines = err.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("link.yaml"), "{lines:?}");
        std::fs::remove_file(root.join("link.yaml")).unwrap();
        let (files, parsed) = load_policy_dir(root).unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(parsed.policies().count(), 3);
    }

    #[test]
    fn every_error_is_reported_with_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("good.yaml"), &NP.replace("NAME", "ok"));
        write(
            &d.path().join("bad1.yaml"),
            &NP.replace("NAME", "x")
                .replace("podSelector", "podSelecter"),
        );
        write(
            &d.path().join("bad2.yaml"),
            &format!(
                "{}  ingress: [{{ports: [{{port: 99999}}]}}]\n",
                NP.replace("NAME", "y")
            ),
        );
        let err = load_policy_dir(d.path()).unwrap_err();
        let lines = err.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains("bad1.yaml") && lines[0].contains("line 5"),
            "{lines:?}"
        );
        assert!(lines[0].contains("podSelecter"), "{lines:?}");
        assert!(
            lines[1].contains("bad2.yaml") && lines[1].contains("port"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_policy_dir(&d.path().join("nope")),
            Err(PolicyLoadError::Read { .. })
        ));
    }
}
