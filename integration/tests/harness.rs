//! Proof that the harness works against a real, independent vhost-user backend: DPDK testpmd in
//! io-forwarding mode (port 0 <-> port 1) between two QEMU guests.
//!
//! Needs root, QEMU and testpmd: without them these tests FAIL with a message naming
//! `integration/scripts/install-deps.sh` (they never pass without having run).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vdfw_integration::{
    require, tempfile, ConnectOutcome, Error, Guest, GuestSpec, MacAddr, Prereq, SocketRole,
    Testpmd, TestpmdSpec, Vdev,
};

/// testpmd busy-polls a core and TCG guests are CPU-bound: on a 2-core machine the tests in this
/// file run one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn spec(name: &str, sock: &Path, n: u32, role: SocketRole) -> GuestSpec {
    GuestSpec::new(name, sock, MacAddr::local(n))
        .ip(&format!("10.77.0.{n}/24"))
        .unwrap()
        .role(role)
        // Quieter wire: no IPv6 DAD/MLD/router traffic through the backend.
        .cmdline("vdfw.ipv6=0")
}

#[test]
fn two_guests_talk_through_testpmd() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    require(&[Prereq::Root, Prereq::Qemu, Prereq::Testpmd]).unwrap();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));

    let tp = Testpmd::start(TestpmdSpec::new(vec![Vdev::vhost(&sa), Vdev::vhost(&sb)])).unwrap();
    let guests = Guest::boot_all(vec![
        spec("ga", &sa, 1, SocketRole::Client),
        spec("gb", &sb, 2, SocketRole::Client),
    ])
    .unwrap();
    let (ga, gb) = (&guests[0], &guests[1]);
    eprintln!("booted two guests in {:?}", t0.elapsed());

    // The harness's own console protocol: exact output, exit codes, no echo.
    let out = ga
        .exec("echo hello; hostname; exit 7", Duration::from_secs(10))
        .unwrap();
    assert_eq!((out.output.as_str(), out.exit_code), ("hello\nga\n", 7));
    let addrs = gb
        .exec_ok("ip -o -4 addr show eth0", Duration::from_secs(10))
        .unwrap();
    assert!(addrs.contains("10.77.0.2/24"), "{addrs}");
    let mac = gb
        .exec_ok("cat /sys/class/net/eth0/address", Duration::from_secs(10))
        .unwrap();
    assert_eq!(mac.trim(), "52:54:00:00:00:02");

    // ICMP both ways through testpmd.
    assert_eq!(ga.ping(ip("10.77.0.2"), 3).unwrap(), 3);
    assert_eq!(gb.ping(ip("10.77.0.1"), 3).unwrap(), 3);

    // A TCP exchange carries a payload, and a plain connect succeeds.
    let server = gb.spawn_tcp_echo(8080).unwrap();
    let reply = ga
        .tcp_exchange(ip("10.77.0.2"), 8080, "payload-through-testpmd", 5)
        .unwrap();
    assert_eq!(reply, "payload-through-testpmd");
    assert_eq!(
        ga.tcp_connect(ip("10.77.0.2"), 8080, 5).unwrap(),
        ConnectOutcome::Connected
    );
    gb.kill(&server).unwrap();

    // A closed port answers with a RST: Refused, at once.
    let t = Instant::now();
    assert_eq!(
        ga.tcp_connect(ip("10.77.0.2"), 8080, 5).unwrap(),
        ConnectOutcome::Refused
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "RST took {:?}",
        t.elapsed()
    );

    // Silence is TimedOut, not Refused: a static neighbour entry sends the SYN to a MAC nobody
    // has; testpmd forwards it to gb, whose NIC filter drops it, so no answer ever comes.
    ga.exec_ok(
        "arp -s 10.77.0.99 52:54:00:00:00:99",
        Duration::from_secs(10),
    )
    .unwrap();
    let t = Instant::now();
    assert_eq!(
        ga.tcp_connect(ip("10.77.0.99"), 80, 2).unwrap(),
        ConnectOutcome::TimedOut
    );
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "timed out after only {:?}",
        t.elapsed()
    );

    // The frames really crossed testpmd (io forwarding: port 0 <-> port 1).
    tp.wait_for_log("Port statistics", Duration::from_secs(5))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // one more statistics period
    let stats = tp.port_stats();
    assert_eq!(stats.len(), 2, "{stats:?}");
    assert!(
        stats.iter().all(|p| p.rx_packets >= 8 && p.tx_packets >= 8),
        "{stats:?}"
    );
    eprintln!(
        "whole exchange took {:?}; testpmd ports: {stats:?}",
        t0.elapsed()
    );
}

#[test]
fn console_survives_timeouts_and_backend_restarts() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    require(&[Prereq::Root, Prereq::Qemu, Prereq::Testpmd]).unwrap();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));

    // ga: QEMU connects (reconnect=1). gb: QEMU listens and testpmd connects (client=1).
    let vdevs = || {
        vec![
            Vdev::vhost(&sa),
            Vdev::VhostUser {
                socket: sb.clone(),
                client: true,
                queues: 1,
            },
        ]
    };
    let tp = Testpmd::start(TestpmdSpec::new(vdevs())).unwrap();
    let guests = Guest::boot_all(vec![
        spec("ga", &sa, 1, SocketRole::Client),
        spec("gb", &sb, 2, SocketRole::Server),
    ])
    .unwrap();
    let (ga, gb) = (&guests[0], &guests[1]);
    assert_eq!(ga.ping(ip("10.77.0.2"), 2).unwrap(), 2);

    // A command that overruns its timeout is interrupted; the console stays usable.
    let t = Instant::now();
    match ga.exec("echo started; sleep 60", Duration::from_secs(1)) {
        Err(Error::CommandTimeout { output, .. }) => assert_eq!(output, "started\n"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "recovery took {:?}",
        t.elapsed()
    );
    assert_eq!(
        ga.exec_ok("echo ok", Duration::from_secs(10)).unwrap(),
        "ok\n"
    );
    // The interrupted sleep is gone (^C reached the foreground job).
    let ps = ga.exec_ok("ps", Duration::from_secs(10)).unwrap();
    assert!(!ps.contains("sleep 60"), "{ps}");

    // QEMU's monitor answers through QMP.
    let net = ga.hmp("info network").unwrap();
    assert!(net.contains("n0") && net.contains("vhost-user"), "{net}");

    // Backend restart: both guests re-attach (ga by QEMU's reconnect, gb by testpmd's client mode).
    drop(tp);
    assert_eq!(
        ga.ping(ip("10.77.0.2"), 1).unwrap(),
        0,
        "no backend, no replies"
    );
    let tp = Testpmd::start(TestpmdSpec::new(vdevs())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if ga.ping(ip("10.77.0.2"), 1).unwrap() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no traffic after backend restart:\n{}",
            tp.log()
        );
    }
    assert_eq!(gb.ping(ip("10.77.0.1"), 3).unwrap(), 3);

    // Background processes: spawn, read their output, kill them.
    let bg = gb
        .spawn("while true; do echo tick; sleep 0.2; done")
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(gb.background_output(&bg).unwrap().contains("tick\n"));
    gb.kill(&bg).unwrap();
    let alive = gb
        .exec(&format!("kill -0 {}", bg.pid), Duration::from_secs(10))
        .unwrap();
    assert_ne!(alive.exit_code, 0, "background process survived kill");
    eprintln!("console/restart test took {:?}", t0.elapsed());
}
