//! DPDK testpmd as a real, independent vhost-user peer: a backend for guests (`net_vhost`) or a
//! frontend for vdfwd (`net_virtio_user`), for interop proofs, hostile-peer tests and benchmarks.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::guest::MacAddr;
use crate::process::{describe, stop_child, tail, unique_name};

/// One testpmd port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vdev {
    /// `net_vhost`: testpmd is the vhost-user backend. With `client` it connects to a listening
    /// frontend (QEMU `server=on`), otherwise it creates and listens on `socket`.
    VhostUser {
        socket: PathBuf,
        client: bool,
        queues: u16,
    },
    /// `net_virtio_user`: testpmd is the frontend (driver). With `server` it listens on `socket`
    /// (for a backend in client mode), otherwise it connects to a listening backend.
    VirtioUser {
        socket: PathBuf,
        server: bool,
        queues: u16,
        queue_size: u16,
        /// The port's MAC (DPDK picks a random one otherwise), e.g. the vNIC's own MAC so that
        /// only the fields a test forges differ.
        mac: Option<MacAddr>,
    },
    /// `net_pcap`: replays the frames of `rx_pcap` (see [`write_pcap`]), forever with
    /// `infinite`, and writes what it is sent to `tx_pcap`. With io forwarding towards a
    /// virtio-user port this injects arbitrary hand-made frames into a vhost-user backend.
    Pcap {
        rx_pcap: PathBuf,
        tx_pcap: PathBuf,
        infinite: bool,
    },
}

impl Vdev {
    /// A listening vhost-user backend port with one queue pair.
    pub fn vhost(socket: impl Into<PathBuf>) -> Vdev {
        Vdev::VhostUser {
            socket: socket.into(),
            client: false,
            queues: 1,
        }
    }

    /// A virtio-user frontend port that connects to `socket`, one queue pair of 256 descriptors.
    pub fn virtio_user(socket: impl Into<PathBuf>) -> Vdev {
        Vdev::VirtioUser {
            socket: socket.into(),
            server: false,
            queues: 1,
            queue_size: 256,
            mac: None,
        }
    }

    fn arg(&self, index: usize) -> String {
        match self {
            Vdev::VhostUser {
                socket,
                client,
                queues,
            } => format!(
                "net_vhost{index},iface={},queues={queues}{}",
                socket.display(),
                if *client { ",client=1" } else { "" }
            ),
            Vdev::VirtioUser {
                socket,
                server,
                queues,
                queue_size,
                mac,
            } => format!(
                "net_virtio_user{index},path={},queues={queues},queue_size={queue_size}{}{}",
                socket.display(),
                if *server { ",server=1" } else { "" },
                mac.map(|m| format!(",mac={m}")).unwrap_or_default(),
            ),
            Vdev::Pcap {
                rx_pcap,
                tx_pcap,
                infinite,
            } => format!(
                "net_pcap{index},rx_pcap={},tx_pcap={}{}",
                rx_pcap.display(),
                tx_pcap.display(),
                if *infinite { ",infinite_rx=1" } else { "" }
            ),
        }
    }

    /// The socket testpmd itself creates, if it listens.
    fn listening_socket(&self) -> Option<&Path> {
        match self {
            Vdev::VhostUser {
                socket,
                client: false,
                ..
            } => Some(socket),
            Vdev::VirtioUser {
                socket,
                server: true,
                ..
            } => Some(socket),
            _ => None,
        }
    }
}

/// Writes `frames` as a classic pcap file (microsecond timestamps, Ethernet link type), for
/// [`Vdev::Pcap`]. Frames of any length are written as given, runts and giants included.
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) -> Result<()> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic, microseconds
    out.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // GMT offset
    out.extend_from_slice(&0u32.to_le_bytes()); // timestamp accuracy
    out.extend_from_slice(&65535u32.to_le_bytes()); // snap length
    out.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (i, f) in frames.iter().enumerate() {
        let len = u32::try_from(f.len())
            .map_err(|_| Error::InvalidArgument(format!("frame {i} is too long for pcap")))?;
        out.extend_from_slice(&0u32.to_le_bytes()); // seconds
        out.extend_from_slice(&(i as u32).to_le_bytes()); // microseconds: keeps the order
        out.extend_from_slice(&len.to_le_bytes()); // captured length
        out.extend_from_slice(&len.to_le_bytes()); // original length
        out.extend_from_slice(f);
    }
    fs::write(path, out).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// How to run testpmd. Defaults: lcores `0,1` (main on 0, forwarding on 1), `--no-huge -m 512`,
/// 8192 mbufs, io forwarding, statistics every second.
#[derive(Clone, Debug)]
pub struct TestpmdSpec {
    pub vdevs: Vec<Vdev>,
    /// `io`, `macswap`, `5tswap`, `txonly`, `rxonly`, `flowgen`, ...
    pub forward_mode: String,
    /// EAL `-l` list; the first is the main lcore, the rest forward.
    pub lcores: String,
    pub memory_mb: u32,
    pub total_num_mbufs: u32,
    /// Seconds between statistics blocks in the log (also keeps testpmd from exiting on stdin EOF).
    pub stats_period: u32,
    /// Extra EAL arguments (before `--`).
    pub extra_eal: Vec<String>,
    /// Extra application arguments (after `--`), e.g. `--tx-first`, `--txpkts=64`.
    pub extra_app: Vec<String>,
    /// How long to wait for forwarding to start.
    pub start_timeout: Duration,
}

impl TestpmdSpec {
    pub fn new(vdevs: Vec<Vdev>) -> TestpmdSpec {
        TestpmdSpec {
            vdevs,
            forward_mode: "io".into(),
            lcores: "0,1".into(),
            memory_mb: 512,
            total_num_mbufs: 8192,
            stats_period: 1,
            extra_eal: Vec::new(),
            extra_app: Vec::new(),
            start_timeout: Duration::from_secs(30),
        }
    }

    pub fn forward_mode(mut self, mode: &str) -> Self {
        self.forward_mode = mode.into();
        self
    }

    fn command(&self, prefix: &str) -> Command {
        let main = self.lcores.split([',', '-']).next().unwrap_or("0");
        let mut c = Command::new("dpdk-testpmd");
        c.args(["-l", &self.lcores, "--main-lcore", main])
            .args(["--no-pci", "--no-huge", "-m", &self.memory_mb.to_string()])
            .args(["--file-prefix", prefix]);
        for (i, v) in self.vdevs.iter().enumerate() {
            c.arg("--vdev").arg(v.arg(i));
        }
        c.args(&self.extra_eal)
            .arg("--")
            .arg(format!("--forward-mode={}", self.forward_mode))
            .arg(format!("--stats-period={}", self.stats_period))
            .arg(format!("--total-num-mbufs={}", self.total_num_mbufs))
            .args(&self.extra_app);
        c
    }
}

/// Counters of one port from testpmd's periodic statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub port: u32,
    pub rx_packets: u64,
    pub rx_missed: u64,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub rx_nombuf: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_bytes: u64,
    /// Packets per second over the last period.
    pub rx_pps: u64,
    pub tx_pps: u64,
}

/// A running testpmd; stopped (SIGINT, then SIGKILL) on drop.
pub struct Testpmd {
    child: Child,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Testpmd {
    /// Starts testpmd and waits until it forwards and its listening sockets exist.
    pub fn start(spec: TestpmdSpec) -> Result<Testpmd> {
        let dir = tempfile::Builder::new()
            .prefix("vdfw-testpmd-")
            .tempdir()
            .map_err(|e| Error::io("creating testpmd's directory", e))?;
        let log_path = dir.path().join("testpmd.log");
        let log = File::create(&log_path).map_err(|e| Error::io("creating testpmd.log", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("cloning testpmd.log", e))?;
        let mut cmd = spec.command(&unique_name("vdfw-tp"));
        let described = describe(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Error::io("starting dpdk-testpmd (run install-deps.sh)", e))?;
        let mut tp = Testpmd {
            child,
            log_path,
            _dir: dir,
        };
        fs::write(tp.log_path.with_file_name("cmdline"), &described)
            .map_err(|e| Error::io("writing testpmd cmdline", e))?;
        let deadline = Instant::now() + spec.start_timeout;
        let sockets: Vec<&Path> = spec
            .vdevs
            .iter()
            .filter_map(Vdev::listening_socket)
            .collect();
        loop {
            if let Ok(Some(status)) = tp.child.try_wait() {
                return Err(Error::Testpmd {
                    message: format!("exited during start-up ({status}): {described}"),
                    log: tail(&tp.log(), 40),
                });
            }
            let started = tp.log().contains("packet forwarding - ports=");
            if started && sockets.iter().all(|s| s.exists()) {
                return Ok(tp);
            }
            if Instant::now() >= deadline {
                return Err(Error::Testpmd {
                    message: format!(
                        "forwarding not started after {:?}: {described}",
                        spec.start_timeout
                    ),
                    log: tail(&tp.log(), 40),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// testpmd's output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The latest complete statistics of every port, in port order.
    pub fn port_stats(&self) -> Vec<PortStats> {
        parse_port_stats(&self.log())
    }

    /// Waits until the log contains `needle` (e.g. `"new device"` when a peer attached).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(Error::Testpmd {
            message: format!("{needle:?} not seen in {timeout:?}"),
            log: tail(&self.log(), 40),
        })
    }

    /// Stops testpmd (SIGINT: it prints its accumulated statistics and removes its sockets) and
    /// returns its whole log.
    pub fn stop(mut self) -> String {
        stop_child(&mut self.child, libc::SIGINT, Duration::from_secs(5));
        self.log()
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        stop_child(&mut self.child, libc::SIGINT, Duration::from_secs(5));
        if thread::panicking() {
            eprintln!(
                "--- testpmd log tail ---\n{}\n--- end ---",
                tail(&self.log(), 40)
            );
        }
    }
}

/// Parses testpmd's "NIC statistics for port N" blocks; the last complete block of each port wins.
fn parse_port_stats(log: &str) -> Vec<PortStats> {
    let mut latest: Vec<PortStats> = Vec::new();
    let mut current: Option<PortStats> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("NIC statistics for port").nth(1) {
            let port = rest
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            current = Some(PortStats {
                port,
                ..PortStats::default()
            });
            continue;
        }
        let Some(st) = current.as_mut() else { continue };
        if line.trim_start().starts_with("####") {
            // The block's closing rule: it is complete.
            let done = *st;
            current = None;
            match latest.iter_mut().find(|p| p.port == done.port) {
                Some(slot) => *slot = done,
                None => latest.push(done),
            }
            continue;
        }
        let tokens: Vec<&str> = line.split_whitespace().collect();
        for pair in tokens.windows(2) {
            let Ok(v) = pair[1].parse::<u64>() else {
                continue;
            };
            match pair[0] {
                "RX-packets:" => st.rx_packets = v,
                "RX-missed:" => st.rx_missed = v,
                "RX-bytes:" => st.rx_bytes = v,
                "RX-errors:" => st.rx_errors = v,
                "RX-nombuf:" => st.rx_nombuf = v,
                "TX-packets:" => st.tx_packets = v,
                "TX-errors:" => st.tx_errors = v,
                "TX-bytes:" => st.tx_bytes = v,
                "Rx-pps:" => st.rx_pps = v,
                "Tx-pps:" => st.tx_pps = v,
                _ => {}
            }
        }
    }
    latest.sort_by_key(|p| p.port);
    latest
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Port statistics ====================================
  ######################## NIC statistics for port 0  ########################
  RX-packets: 6          RX-missed: 0          RX-bytes:  516
  RX-errors: 0
  RX-nombuf:  0
  TX-packets: 2          TX-errors: 0          TX-bytes:  180

  Throughput (since last show)
  Rx-pps:            3          Rx-bps:         2064
  Tx-pps:            1          Tx-bps:          720
  ############################################################################

  ######################## NIC statistics for port 1  ########################
  RX-packets: 9          RX-missed: 1          RX-bytes:  900
  RX-errors: 0
  RX-nombuf:  4
  TX-packets: 7          TX-errors: 2          TX-bytes:  700
";

    #[test]
    fn parses_complete_blocks_only() {
        let stats = parse_port_stats(SAMPLE);
        // Port 1's block has no closing rule yet: not reported.
        assert_eq!(
            stats,
            vec![PortStats {
                port: 0,
                rx_packets: 6,
                rx_bytes: 516,
                tx_packets: 2,
                tx_bytes: 180,
                rx_pps: 3,
                tx_pps: 1,
                ..PortStats::default()
            }]
        );
        let closed = format!("{SAMPLE}  ####################\n");
        let stats = parse_port_stats(&closed);
        assert_eq!(stats.len(), 2);
        assert_eq!(stats[1].rx_missed, 1);
        assert_eq!(stats[1].rx_nombuf, 4);
        assert_eq!(stats[1].tx_errors, 2);
    }

    #[test]
    fn command_line() {
        let spec = TestpmdSpec::new(vec![
            Vdev::vhost("/s/a.sock"),
            Vdev::VirtioUser {
                socket: "/s/b.sock".into(),
                server: true,
                queues: 1,
                queue_size: 1024,
                mac: Some(MacAddr::local(7)),
            },
            Vdev::Pcap {
                rx_pcap: "/p/in.pcap".into(),
                tx_pcap: "/p/out.pcap".into(),
                infinite: true,
            },
        ])
        .forward_mode("macswap");
        let d = describe(&spec.command("pfx"));
        assert!(
            d.contains("--vdev net_vhost0,iface=/s/a.sock,queues=1 "),
            "{d}"
        );
        assert!(
            d.contains(
                "--vdev net_virtio_user1,path=/s/b.sock,queues=1,queue_size=1024,server=1,mac=52:54:00:00:00:07 "
            ),
            "{d}"
        );
        assert!(
            d.contains("--vdev net_pcap2,rx_pcap=/p/in.pcap,tx_pcap=/p/out.pcap,infinite_rx=1 "),
            "{d}"
        );
        assert!(
            d.contains("--no-pci --no-huge -m 512 --file-prefix pfx"),
            "{d}"
        );
        assert!(
            d.contains("-- --forward-mode=macswap --stats-period=1"),
            "{d}"
        );
    }
}
