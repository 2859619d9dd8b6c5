//! Prerequisite checks: a test that needs root, QEMU or testpmd must fail loudly, naming the
//! install script, rather than pass without having run.

use std::path::Path;

use crate::error::{Error, Result};

/// Something a test needs from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prereq {
    /// Running as root (network namespaces, TAPs, memfd-backed QEMU with vhost-user).
    Root,
    /// `qemu-system-x86_64`, `busybox` (static), `cpio`: booting test guests.
    Qemu,
    /// `dpdk-testpmd` with the vhost and virtio-user PMDs.
    Testpmd,
    /// `ip` and `nft`: namespaces and the kernel-firewall baseline.
    NetTools,
    /// `virsh`, `libvirtd`, `virtlogd`: the libvirt tests (the harness starts the daemons).
    Libvirt,
}

/// Checks all of `needs`; the error lists every missing piece at once.
pub fn require(needs: &[Prereq]) -> Result<()> {
    let mut missing = Vec::new();
    for need in needs {
        match need {
            Prereq::Root => {
                // SAFETY: geteuid(2) has no preconditions and cannot fail.
                if unsafe { libc::geteuid() } != 0 {
                    missing.push("root privileges (run the tests as root)".to_string());
                }
            }
            Prereq::Qemu => {
                for bin in ["qemu-system-x86_64", "cpio", "gzip", "dpkg-deb", "apt-get"] {
                    need_bin(bin, &mut missing);
                }
                if !Path::new("/bin/busybox").is_file() {
                    missing.push("/bin/busybox (package busybox-static)".into());
                }
            }
            Prereq::Testpmd => {
                need_bin("dpdk-testpmd", &mut missing);
                let pmds = ["librte_net_vhost.so", "librte_net_virtio.so"];
                for pmd in pmds {
                    if !dpdk_pmd_present(pmd) {
                        missing.push(format!(
                            "DPDK driver {pmd} (librte-net-vhost23 / librte-net-virtio23)"
                        ));
                    }
                }
            }
            Prereq::NetTools => {
                need_bin("ip", &mut missing);
                need_bin("nft", &mut missing);
            }
            Prereq::Libvirt => {
                for bin in ["virsh", "libvirtd", "virtlogd"] {
                    need_bin(bin, &mut missing);
                }
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Prerequisite {
            what: missing.join(", "),
        })
    }
}

fn need_bin(bin: &str, missing: &mut Vec<String>) {
    if find_in_path(bin).is_none() {
        missing.push(format!("`{bin}` in PATH"));
    }
}

pub(crate) fn find_in_path(bin: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// DPDK's PMDs live in the multiarch directory's `dpdk/pmds-*` plugin directory.
fn dpdk_pmd_present(file: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/usr/lib/x86_64-linux-gnu/dpdk") else {
        return false;
    };
    entries
        .flatten()
        .any(|e| e.path().join(file).exists() || e.path().join(format!("{file}.23")).exists())
}
