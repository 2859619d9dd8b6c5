//! Offline trace: policy files + an inventory file + flows, evaluated with the dfw engine
//! alone (no daemon, no store). Backs `vdfwctl trace --policies ... --inventory ...
//! --flows ...`, which CI and policy reviews use to check intent before applying.

use std::path::{Path, PathBuf};

use dfw::compile::{Engine, EngineConfig};
use dfw::crd::{parse_files, ParseOptions};
use dfw::inventory::parse_inventory;

use crate::engine::Snapshot;
use crate::trace::TraceRequest;

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no .yaml, .yml or .json files in this directory")]
    EmptyDir(PathBuf),
    /// Every policy problem, one per line (`file: document N (line L, column C): path: msg`).
    #[error("invalid policies:\n{}", .0.join("\n"))]
    Policies(Vec<String>),
    #[error("invalid inventory: {0}")]
    Inventory(String),
    #[error("the policies cannot be realized: {0}")]
    Engine(String),
    /// Every bad flow line (`file:line: problem`).
    #[error("invalid flows:\n{}", .0.join("\n"))]
    Flows(Vec<String>),
}

fn read(path: &Path) -> Result<String, OfflineError> {
    std::fs::read_to_string(path).map_err(|source| OfflineError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Files named directly, plus the `.yaml`/`.yml`/`.json` files of named directories
/// (non-recursive, sorted).
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, OfflineError> {
    let mut out = Vec::new();
    for p in paths {
        let io = |source| OfflineError::Io {
            path: p.clone(),
            source,
        };
        if std::fs::metadata(p).map_err(io)?.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|e| {
                    e.is_file()
                        && matches!(
                            e.extension().and_then(|x| x.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                })
                .collect();
            entries.sort();
            if entries.is_empty() {
                return Err(OfflineError::EmptyDir(p.clone()));
            }
            out.extend(entries);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Parses and realizes the policies for the inventory's endpoints.
pub fn realize(
    policies: &[PathBuf],
    inventory: &Path,
    default_deny: bool,
) -> Result<Snapshot, OfflineError> {
    let files = expand_paths(policies)?;
    let texts = files
        .iter()
        .map(|f| Ok((f.display().to_string(), read(f)?)))
        .collect::<Result<Vec<_>, OfflineError>>()?;
    let refs: Vec<(&str, &str)> = texts
        .iter()
        .map(|(f, t)| (f.as_str(), t.as_str()))
        .collect();
    let parsed = parse_files(&refs, &ParseOptions::default())
        .map_err(|errors| OfflineError::Policies(errors.iter().map(|e| e.to_string()).collect()))?;
    let inv_text = read(inventory)?;
    let inv = parse_inventory(&inv_text, &inventory.display().to_string())
        .map_err(|e| OfflineError::Inventory(e.to_string()))?;
    let mut engine = Engine::new(EngineConfig {
        default_deny,
        ..EngineConfig::default()
    });
    // Namespaces, endpoints and Services (what `serviceReference` groups resolve to).
    inv.load_into(&mut engine)
        .map_err(|e| OfflineError::Engine(e.to_string()))?;
    engine
        .apply(parsed.objects)
        .map_err(|e| OfflineError::Engine(e.to_string()))?;
    Ok(engine.snapshot())
}

/// Reads a JSON-lines flow file (`{"src": "ns/name" | IP, "dst": ..., "protocol": "TCP",
/// "port": 8080}`; blank lines and `#` comments skipped). Returns every bad line at once.
pub fn read_flows(path: &Path) -> Result<Vec<TraceRequest>, OfflineError> {
    let text = read(path)?;
    let mut flows = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match serde_json::from_str::<TraceRequest>(line) {
            Ok(f) => flows.push(f),
            Err(e) => errors.push(format!(
                "{}:{}: {e} (expected {{\"src\": \"ns/name\" or IP, \"dst\": ..., \"protocol\": \"TCP\", \"port\": 8080}})",
                path.display(),
                i + 1
            )),
        }
    }
    if errors.is_empty() {
        Ok(flows)
    } else {
        Err(OfflineError::Flows(errors))
    }
}
