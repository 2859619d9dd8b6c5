//! Shared by the scenario tests (`payments.rs`, `spoofing.rs`, ...): guest set-up against one
//! vdfwd, outcome assertions with useful messages, flow-log matching, step timing.
//!
//! Each scenario file is its own test binary; cargo runs them one after another. Inside a file,
//! tests that boot guests take [`heavy`] so they never overlap on the 2-core machine.

#![allow(dead_code)] // each test binary uses its own subset

use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use vdfw_integration::{ConnectOutcome, Guest, Vdfwd};

/// The scenario configuration shared with the demo: the three payments VMs of
/// `configs/inventory.yaml`.
pub const DEMO_CONFIG: &str = "configs/demo/vdfwd.toml";

/// TCG guests are CPU-bound: tests of one file that boot guests run one at a time.
pub fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Prints progress with the time since the test started, so a run's log shows where the time
/// goes (and the report's runtimes come from the same lines).
pub struct Clock {
    test: &'static str,
    t0: Instant,
}

impl Clock {
    pub fn start(test: &'static str) -> Clock {
        eprintln!("[{test}] start");
        Clock {
            test,
            t0: Instant::now(),
        }
    }

    pub fn step(&self, what: &str) {
        eprintln!(
            "[{} +{:6.1}s] {what}",
            self.test,
            self.t0.elapsed().as_secs_f64()
        );
    }

    pub fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        let verdict = if std::thread::panicking() {
            "FAILED"
        } else {
            "passed"
        };
        eprintln!(
            "[{}] {verdict} after {:.1}s",
            self.test,
            self.t0.elapsed().as_secs_f64()
        );
    }
}

/// Boots one guest per vNIC (addresses in one `/prefix_len`) and waits until vdfwd sees every
/// one of them attached with running rings.
pub fn boot(vd: &Vdfwd, vnics: &[&str], prefix_len: u8) -> Vec<Guest> {
    let specs = vnics
        .iter()
        .map(|v| vd.guest_spec(v, prefix_len).unwrap())
        .collect();
    let guests = Guest::boot_all(specs).unwrap();
    vd.wait_connected(vnics, Duration::from_secs(30)).unwrap();
    guests
}

/// Asserts the outcome of a TCP connect from `from` to `to:port`, with a message that names
/// the flow and why it was expected; returns how long the attempt took inside the guest.
pub fn expect_connect(
    from: &Guest,
    to: IpAddr,
    port: u16,
    timeout_s: u32,
    expected: ConnectOutcome,
    why: &str,
) -> Duration {
    let (got, took) = from.tcp_connect_timed(to, port, timeout_s).unwrap();
    assert_eq!(
        got,
        expected,
        "{} -> {to}:{port}: expected {expected:?} ({why}), got {got:?} after {took:?}",
        from.name()
    );
    took
}

/// Sends `payload` over TCP and asserts it comes back (an echo server on the other side):
/// the connection is allowed AND its replies flow.
pub fn expect_echo(from: &Guest, to: IpAddr, port: u16, payload: &str, why: &str) {
    let reply = from
        .tcp_exchange(to, port, payload, 5)
        .unwrap_or_else(|e| panic!("{} -> {to}:{port} ({why}): {e}", from.name()));
    assert_eq!(
        reply,
        payload,
        "{} -> {to}:{port} ({why}): the echo server's reply did not come back intact",
        from.name()
    );
}

/// The value at a `/`-separated path in a JSON record (`"dst/port"`).
pub fn field<'a>(r: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('/').try_fold(r, |v, k| v.get(k))
}

/// Whether a flow-log record is about a TCP connection `src -> dst:port` with `verdict`
/// (`forwarded`, `dropped`, `rejected`).
pub fn is_flow(r: &Value, src: IpAddr, dst: IpAddr, port: u16, verdict: &str) -> bool {
    let s = |p: &str| field(r, p).and_then(Value::as_str);
    s("src/ip") == Some(&src.to_string())
        && s("dst/ip") == Some(&dst.to_string())
        && field(r, "dst/port").and_then(Value::as_u64) == Some(u64::from(port))
        && s("verdict") == Some(verdict)
}

/// [`is_flow`], and decided in `direction` (`ingress`: by the receiving vNIC's policy, logged
/// on that vNIC; `egress`: by the sender's).
pub fn is_flow_in(
    r: &Value,
    src: IpAddr,
    dst: IpAddr,
    port: u16,
    verdict: &str,
    direction: &str,
) -> bool {
    is_flow(r, src, dst, port, verdict)
        && field(r, "direction").and_then(Value::as_str) == Some(direction)
}

/// A compact one-line rendering of a flow record for test output.
pub fn show_flow(r: &Value) -> String {
    let s = |p: &str| {
        field(r, p)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "{} {} {}:{} -> {}:{} {} by {} policy={} rule={} label={}",
        s("vnic"),
        s("direction"),
        s("src/ip"),
        s("src/port"),
        s("dst/ip"),
        s("dst/port"),
        s("verdict"),
        s("decided_by"),
        s("policy"),
        s("rule_name"),
        s("log_label")
    )
}
