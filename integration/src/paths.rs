//! Locating things on the host: the workspace, the guest image (built by `build-guest.sh`) and
//! workspace binaries (built with cargo on first use).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::process::run;

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The guest kernel and initramfs produced by `integration/scripts/build-guest.sh`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Builds the guest image if it is not cached yet (`integration/.cache/guest/`), once per process.
///
/// The script is idempotent and returns in ~50 ms when the cache is current; a cold build downloads
/// the Debian cloud kernel package (~27 MB) with `apt-get download`.
pub fn guest_image() -> Result<GuestImage> {
    static IMAGE: OnceLock<Mutex<Option<GuestImage>>> = OnceLock::new();
    let mut slot = IMAGE
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(img) = slot.as_ref() {
        return Ok(img.clone());
    }
    let script = workspace_root().join("integration/scripts/build-guest.sh");
    let out = run(Command::new("bash").arg(&script))?;
    let field = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(PathBuf::from)
            .ok_or_else(|| Error::UnexpectedOutput {
                command: script.display().to_string(),
                output: out.clone(),
            })
    };
    let img = GuestImage {
        kernel: field("KERNEL=")?,
        initrd: field("INITRD=")?,
    };
    *slot = Some(img.clone());
    Ok(img)
}

/// The path of workspace binary `name` (e.g. `"vdfwd"`), built with `cargo build --bin name` the
/// first time it is asked for in this process (cargo makes that a quick no-op when up to date).
///
/// Honours `CARGO_TARGET_DIR` and `CARGO` (both set by `cargo test`), and builds the profile the
/// tests themselves were built with (release when debug assertions are off).
pub fn cargo_bin(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(name) {
        return Ok(p.clone());
    }
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_relative() { root.join(t) } else { t })
        .unwrap_or_else(|| root.join("target"));
    let release = !cfg!(debug_assertions);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--quiet", "--bin", name])
        .env("CARGO_TARGET_DIR", &target);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let path = target
        .join(if release { "release" } else { "debug" })
        .join(name);
    if !path.is_file() {
        return Err(Error::UnexpectedOutput {
            command: format!("cargo build --bin {name}"),
            output: format!("built, but {} does not exist", path.display()),
        });
    }
    built.insert(name.to_string(), path.clone());
    Ok(path)
}
