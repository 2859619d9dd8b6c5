#!/usr/bin/env python3
"""Packet-rate harness: vdfwd, OVS-DPDK and a testpmd ceiling side by side in one run.

One dpdk-testpmd process is the generator. It owns every vhost-user socket as a virtio-user
*server*; the subject under test connects to those sockets as a vhost-user *client* (OVS
`dpdkvhostuserclient`, testpmd `net_vhost ... client=1`, vdfwd `role = "connect"`). Generator
port 2k is the "guest" behind vNIC A of pair k, port 2k+1 the guest behind vNIC B. The generator
polls on CPU 1, the subject on CPU 0, so each side has one core of the two.

Two traffic modes (see README.md for why):
  loop     established flows: `5tswap` with `--port-topology=loop`, started with `start tx_first
           16`. A packet goes A -> subject -> B, B's guest swaps L2-L4 addresses and answers,
           B -> subject -> A, and so on: a request/response ping-pong that conntrack sees as one
           established UDP flow. The rate is bounded by the slower of generator and subject.
  flowgen  many flows: testpmd `flowgen` sends UDP from 10.254.0.0:1000 to 10.253.0.0+n:1001,
           n cycling over `--flowgen-flows` values. With a huge n every packet in the window is
           a new connection (new connections per second); with a small n it is a conntrack
           table of n entries being looked up.

The `latency` figure runs the loop with pairgen (pairgen.c) stamping a TSC into every packet it
sends and timing each trip through the subject on receipt: with one packet in flight per pair
(nothing queues: the drop-free, low-load latency) and with the loop's usual 16 x 32.

The figure is the packet rate the generator receives (sum over its ports), i.e. what the
subject delivered. Each measurement restarts the generator; rates are sampled once per second
over a fixed window after a warm-up, and the median interval is reported.

Run `python3 integration/bench/bench.py --help`. Everything it starts (processes, OVS database
and run dirs, the network namespace holding the netdev bridge's TAP, its hugetlbfs mount and the
hugepage reservation) is undone on exit, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import fcntl
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

GEN_CPU = 1  # the generator's forwarding lcore
SUBJECT_CPU = 0  # the subject's polling thread

# Addresses. Pair 0 uses what testpmd's flowgen hard-codes (MACs 00:01:02:03:04:00 -> :01,
# 10.254.0.0:1000 -> 10.253.0.0+n:1001), so loop and flowgen traffic is the same flow to a
# subject's spoof guard and policy. Pair k>0 has its own MACs and, with the pairgen generator
# (the vNIC sweep), its own IPs 10.254.0.k / 10.253.0.k; testpmd's --tx-ip is global, so with
# testpmd every pair sends pair 0's IPs (see the vNIC sweep notes in README.md).
IP_A = "10.254.0.0"
IP_B = "10.253.0.0"
UDP_SRC = 1000
UDP_DST = 1001
NS = "bench"
FLOWGEN_MAX = 2**31 - 1  # testpmd's limit: every packet of a short window is a new 5-tuple
VDFWD_CONNTRACK_MAX = 1 << 22


def mac_a(k: int) -> str:
    return f"00:01:02:03:{4 + k:02x}:00"


def mac_b(k: int) -> str:
    return f"00:01:02:03:{4 + k:02x}:01"


def ip_a(k: int) -> str:
    """The IP of pair k's vNIC A (pair 0: IP_A), unique per pair."""
    return f"10.254.{k >> 8}.{k & 255}"


def ip_b(k: int) -> str:
    return f"10.253.{k >> 8}.{k & 255}"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class PortsMissing(RuntimeError):
    """A virtio-user server port failed to probe (e.g. its accept() was interrupted)."""


class Unavailable(Exception):
    """A subject or case cannot run on this machine; the message says why."""


# ----------------------------------------------------------------------------------------
# Cleanup: everything started is registered here and undone in reverse order, exactly once.
# ----------------------------------------------------------------------------------------


class Cleanup:
    def __init__(self) -> None:
        self._stack: list[tuple[str, Callable[[], None]]] = []
        self._lock = threading.Lock()

    def push(self, what: str, fn: Callable[[], None]) -> Callable[[], None]:
        """Registers `fn`; returns a callable that runs it now (and unregisters it)."""
        entry = (what, fn)
        with self._lock:
            self._stack.append(entry)

        def run_now() -> None:
            with self._lock:
                if entry not in self._stack:
                    return
                self._stack.remove(entry)
            _guarded(what, fn)

        return run_now

    def run_all_but(self, keep: str) -> None:
        """Undoes everything except the entries named `keep` (e.g. the run dir, to save logs)."""
        with self._lock:
            kept = [e for e in self._stack if e[0] == keep]
            self._stack = [e for e in self._stack if e[0] != keep]
        self.run_all()
        with self._lock:
            self._stack = kept + self._stack

    def run_all(self) -> None:
        while True:
            with self._lock:
                if not self._stack:
                    return
                what, fn = self._stack.pop()
            _guarded(what, fn)


def _guarded(what: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as e:  # cleanup must go on
        log(f"cleanup of {what} failed: {e}")


CLEANUP = Cleanup()


class Proc:
    """A child process in its own session, so stopping it also stops anything it forked.

    Only the process group this harness created (pgid == the child's pid) is ever signalled.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, stdin_pipe: bool = False,
                 env: Optional[dict] = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "w")
        self._log.write("# " + " ".join(argv) + "\n")
        self._log.flush()
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdin_pipe else self._log,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
            env=env,
        )
        self.pid = self.p.pid
        self._undo = CLEANUP.push(f"process {name} ({self.pid})", self._stop)

    def alive(self) -> bool:
        return self.p.poll() is None

    def _stop(self) -> None:
        if self.p.poll() is None:
            for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.p.wait(grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()

    def stop(self) -> None:
        self._undo()


def run(argv: list[str], check: bool = True, env: Optional[dict] = None, timeout: float = 120,
        input: Optional[str] = None) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}... failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return r


def cpu_seconds(pid: Optional[int]) -> Optional[float]:
    """User + system CPU time of `pid` (all its threads) in seconds, None if unreadable."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def rss_of(pid: int) -> dict:
    """VmRSS and hugetlb pages of a process, kB (hugetlb pages do not count in VmRSS)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "HugetlbPages"):
                out[k] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


# ----------------------------------------------------------------------------------------
# testpmd driven over stdin (interactive mode).
# ----------------------------------------------------------------------------------------


class Testpmd:
    """dpdk-testpmd, or pairgen (`program`), which answers the same commands the same way."""

    started = 0  # numbers the log files: one per process
    def __init__(self, name: str, lcores: str, main_lcore: int, vdevs: list[str], app: list[str],
                 run_dir: Path, mem_mb: int = 512, program: str = "dpdk-testpmd") -> None:
        self.name = name
        prefix = f"vdfwb-{os.getpid()}-{name}"
        eal = ["-l", lcores, "--main-lcore", str(main_lcore), "--no-pci", "--no-huge",
               "-m", str(mem_mb), "--file-prefix", prefix]
        for v in vdevs:
            eal += ["--vdev", v]
        # stdout is a pipe: without stdbuf testpmd's answers sit in a 4 KiB stdio buffer.
        argv = ["stdbuf", "-oL", program, *eal, "--", "-i", *app]
        Testpmd.started += 1
        self.proc = Proc(name, argv, run_dir / f"{name}-{Testpmd.started:03d}.log", stdin_pipe=True)
        # DPDK leaves /var/run/dpdk/<prefix>/ behind; remove ours after the process is gone
        # (pushed after the process, so it runs first... hence remove in stop()).
        self._rundir = Path("/var/run/dpdk") / prefix
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.p.stdout is not None
        logf = self.proc._log
        for line in self.proc.p.stdout:
            try:
                logf.write(line)
            except ValueError:
                pass
            self._lines.put(line)
        self._lines.put(None)

    def send(self, command: str) -> None:
        if not self.proc.alive():
            raise RuntimeError(f"{self.name} exited; see {self.proc.log_path}")
        assert self.proc.p.stdin is not None
        self.proc.p.stdin.write(command + "\n")
        self.proc.p.stdin.flush()

    def drain(self) -> None:
        while True:
            try:
                if self._lines.get_nowait() is None:
                    return
            except queue.Empty:
                return

    def collect(self, done: Callable[[list[str]], bool], timeout: float) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while not done(got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no complete answer in {timeout}s; see {self.proc.log_path}")
            try:
                line = self._lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.name} exited; see {self.proc.log_path}")
            got.append(line)
        return got

    def links_up(self, nports: int, timeout: float) -> None:
        """Waits until every port reports link up (for virtio-user: the backend connected).

        A virtio-user server port blocks testpmd's start-up until its client connects (the
        clients retry about once a second), so start-up alone takes up to ~1 s per port; the
        first answer comes once all ports are probed.
        """
        deadline = time.monotonic() + timeout
        self.drain()
        self.send("show port summary all")
        lines = self.collect(lambda g: any("Number of available ports" in x for x in g), timeout)
        have = next(int(x.split(":")[1]) for x in lines if "Number of available ports" in x)
        if have < nports:
            raise PortsMissing(f"{self.name}: only {have} of {nports} ports probed; see {self.proc.log_path}")
        while True:
            self.drain()
            self.send("show port info all")
            lines = self.collect(lambda g: sum("Link status" in x for x in g) >= nports, 10)
            up = sum(("Link status" in x and "up" in x) for x in lines)
            if up >= nports:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {up}/{nports} links up after {timeout}s")
            time.sleep(0.5)

    def port_stats(self, nports: int) -> tuple[float, dict[int, dict[str, int]]]:
        self.drain()
        t = time.monotonic()
        self.send("show port stats all")
        lines = self.collect(lambda g: sum("Tx-pps" in x for x in g) >= nports, 10)
        stats: dict[int, dict[str, int]] = {}
        port = -1
        for x in lines:
            m = re.search(r"NIC statistics for port (\d+)", x)
            if m:
                port = int(m.group(1))
                stats[port] = {}
                continue
            for key in ("RX-packets", "RX-bytes", "TX-packets", "TX-bytes", "RX-missed", "TX-errors"):
                m = re.search(key + r":\s+(\d+)", x)
                if m and port >= 0:
                    stats[port][key] = int(m.group(1))
        return t, stats

    def latency(self) -> dict:
        """pairgen's `show latency` since the last `clear latency`: one-way trips through the
        subject, as `lat_*_us` (µs) plus `lat_samples`. Raises when nothing was timed (the
        circulating packets were lost, or the subject forwarded nothing)."""
        self.drain()
        self.send("show latency")
        # (the answer follows the `pairgen> ` prompt on the same line)
        line = self.collect(lambda g: any("Latency:" in x for x in g), 15)[-1]
        line = line[line.index("Latency:"):]
        kv = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        if "error" in kv or int(kv.get("samples", 0)) == 0:
            raise RuntimeError(f"{self.name}: no packet timed in the window ({line.strip()}); "
                               f"see {self.proc.log_path}")
        out = {"lat_samples": int(kv["samples"]), "tsc_hz": int(kv["tsc_hz"])}
        for k in ("mean", "min", "p50", "p90", "p99", "p999", "max"):
            out[f"lat_{k}_us"] = round(float(kv[f"{k}_ns"]) / 1000, 3)
        return out

    def stop(self) -> None:
        if self.proc.alive():
            try:
                self.send("stop")
                time.sleep(0.3)
                self.send("quit")
                self.proc.p.wait(10)
            except Exception:
                pass
        self.proc.stop()
        shutil.rmtree(self._rundir, ignore_errors=True)


class PairGen:
    """pairgen.c, compiled once per run against the installed DPDK (about a second).

    The vNIC sweep's generator: testpmd's 5tswap loop with a source/destination IP per port,
    so every vNIC pair sends its own addresses (see the comment at the top of pairgen.c)."""

    SOURCE = HERE / "pairgen.c"

    def __init__(self) -> None:
        self.out_dir: Optional[Path] = None
        self._path: Optional[Path] = None
        self._why: Optional[str] = None

    def unavailable(self) -> Optional[str]:
        """Builds it if not yet done; returns why it cannot run, or None."""
        if self._path or self._why:
            return self._why
        assert self.out_dir is not None
        for tool in ("gcc", "pkg-config"):
            if not shutil.which(tool):
                self._why = f"pairgen needs {tool} (integration/bench/install-bench-deps.sh)"
                return self._why
        flags = run(["pkg-config", "--cflags", "--libs", "libdpdk"], check=False)
        if flags.returncode != 0:
            self._why = "pairgen needs libdpdk-dev (pkg-config libdpdk failed)"
            return self._why
        out = self.out_dir / "pairgen"
        r = run(["gcc", "-O2", "-Wall", "-o", str(out), str(self.SOURCE), *flags.stdout.split()], check=False)
        if r.returncode != 0:
            self._why = f"pairgen did not compile: {r.stderr.strip()[-400:]}"
            return self._why
        log(f"built {out}")
        self._path = out
        return None

    def path(self) -> Path:
        why = self.unavailable()
        if why:
            raise RuntimeError(why)
        assert self._path is not None
        return self._path


PAIRGEN = PairGen()


# ----------------------------------------------------------------------------------------
# Traffic and cases
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    figure: str  # established | newconn | rules | flows | vnics | latency | smoke-allow | smoke-deny
    mode: str  # loop | flowgen
    frame: int = 64  # bytes from the Ethernet header to the end of the payload (virtio has no FCS)
    flows: int = 1  # flowgen: distinct destination addresses cycled
    rules: int = 10  # policy rules in the subject (the allowing one among them)
    pairs: int = 1  # vNIC pairs (vNIC count = 2 * pairs)
    deny: bool = False  # policy denies A -> B
    # Loop generator: "testpmd" (every pair sends pair 0's IPs) or "pairgen" (pair k sends
    # ip_a(k) <-> ip_b(k); see pairgen.c). Same for every subject of a case.
    gen: str = "testpmd"
    # Loop packets seeded per pair (0: the usual `start tx_first` 16 bursts of 32). The latency
    # figure uses 1 (one packet circulates, nothing queues) and 512 (the usual load); pairgen only.
    inflight: int = 0

    @property
    def key(self) -> str:
        return (f"{self.figure}:{self.mode}:f{self.frame}:n{self.flows}:r{self.rules}:"
                f"v{2 * self.pairs}{':deny' if self.deny else ''}"
                f"{'' if self.gen == 'testpmd' else ':' + self.gen}"
                f"{f':q{self.inflight}' if self.inflight else ''}")

    @property
    def seed(self) -> tuple[int, int]:
        """(bursts, packets per burst) the loop is seeded with per pair (pairgen); (0, 0) for
        the usual `Settings.tx_first_bursts` x 32."""
        if not self.inflight:
            return 0, 0
        per = min(32, self.inflight)
        return max(1, self.inflight // per), per

    def ips(self, k: int) -> tuple[str, str]:
        """The source IPs the generator's ports of pair k send (A, B): what a subject's
        anti-spoofing must accept."""
        return (ip_a(k), ip_b(k)) if self.gen == "pairgen" else (IP_A, IP_B)

    @property
    def x(self) -> int:
        """The swept variable of the figure."""
        return {"established": self.frame, "rules": self.rules, "flows": self.flows,
                "vnics": 2 * self.pairs, "latency": self.inflight}.get(self.figure, 0)


@dataclass
class Settings:
    warmup: float
    window: float
    link_timeout: float = 90.0
    settle: float = 1.0
    flows_fill_max: float = 30.0
    tx_first_bursts: int = 16


class Generator:
    def __init__(self, run_dir: Path, case: Case, prefix: str) -> None:
        self.run_dir = run_dir
        self.case = case
        self.nports = 2 * case.pairs
        self.sockets = [run_dir / f"{prefix}-{i}.sock" for i in range(self.nports)]
        for s in self.sockets:
            s.unlink(missing_ok=True)
        vdevs = []
        for i, s in enumerate(self.sockets):
            k = i // 2
            mac = mac_a(k) if i % 2 == 0 else mac_b(k)
            vdevs.append(f"net_virtio_user{i},path={s},server=1,queues=1,queue_size=256,mac={mac}")
        mbufs = max(16384, self.nports * 2048)
        mem = 512 if self.nports <= 8 else 1024
        if case.gen == "pairgen":
            # Seeds from A's ports only (A opens, B answers); otherwise testpmd's loop.
            app = [f"--mbufs={mbufs}", f"--frame={case.frame}", f"--udp={UDP_SRC},{UDP_DST}"]
            app += [f"--port-flow={2 * k},{mac_b(k)},{ip_a(k)},{ip_b(k)}" for k in range(case.pairs)]
            if case.figure == "latency":
                app.append("--stamp")
            if case.inflight:
                app.append(f"--seed-burst={case.seed[1]}")
            self.tp = Testpmd("pairgen", f"{SUBJECT_CPU},{GEN_CPU}", SUBJECT_CPU, vdevs, app, run_dir, mem,
                              program=str(PAIRGEN.path()))
            return
        app = [f"--total-num-mbufs={mbufs}", "--burst=32", "--rxd=256", "--txd=256"]
        if case.mode == "loop":
            app += ["--forward-mode=5tswap", "--port-topology=loop", f"--txpkts={case.frame}",
                    f"--tx-ip={IP_A},{IP_B}", f"--tx-udp={UDP_SRC},{UDP_DST}"]
            for i in range(self.nports):
                k = i // 2
                app.append(f"--eth-peer={i},{mac_b(k) if i % 2 == 0 else mac_a(k)}")
        else:
            # flowgen subtracts 4 bytes (an FCS it does not send) from --txpkts.
            app += ["--forward-mode=flowgen", f"--flowgen-flows={case.flows}",
                    f"--txpkts={case.frame + 4}"]
        self.tp = Testpmd("generator", f"{SUBJECT_CPU},{GEN_CPU}", SUBJECT_CPU, vdevs, app, run_dir, mem)

    def measure(self, st: Settings, cpu_pid: Optional[int] = None) -> dict:
        # The generator probes its server ports one after the other, each waiting for its
        # client; vdfwd's reconnect backoff grows to 1 s (5 s before round 5: 32 ports took ~2.5 min).
        self.tp.links_up(self.nports, max(st.link_timeout, 6.0 * self.nports))
        # A link is up once the backend connected; its queues may be enabled a little later.
        # Packets lost at the start are gone for good in a loop (fewer in flight, lower rate).
        time.sleep(st.settle)
        self.tp.drain()
        if self.case.mode == "loop":
            # retry: the initial bursts (16 x 32 per port) exceed the 256-slot rings, so wait
            # for the subject to drain them instead of dropping them. testpmd's default wait
            # (64 x 1 us) is shorter than one scheduler slice: a subject preempted while the loop
            # is seeded lost every reply and the loop died (0 Mpps). Waiting up to 10 ms costs
            # nothing in steady state: a full TX ring means the subject is the bottleneck.
            self.tp.send("set burst tx delay 10 retry 1000")
            self.tp.send("set fwd 5tswap retry")
            self.tp.send(f"start tx_first {self.case.seed[0] or st.tx_first_bursts}")
        else:
            self.tp.send("start")
            if self.case.flows < FLOWGEN_MAX:
                self._visit_all_flows(st)
        time.sleep(st.warmup)
        latency = self.case.figure == "latency"
        if latency:
            # Trips of the warm-up (a subject's first packet may take its slow path) do not count.
            self.tp.send("clear latency")
        cpu0 = cpu_seconds(cpu_pid)
        samples = [self.tp.port_stats(self.nports)]
        n = max(1, round(st.window))
        step = st.window / n
        for _ in range(n):
            time.sleep(max(0.0, samples[-1][0] + step - time.monotonic()))
            samples.append(self.tp.port_stats(self.nports))
        pps, bps, per_port = [], [], []
        for (t0, s0), (t1, s1) in zip(samples, samples[1:]):
            dt_ = t1 - t0
            rx = {p: (s1[p]["RX-packets"] - s0[p]["RX-packets"]) / dt_ for p in s1}
            pps.append(sum(rx.values()))
            bps.append(sum((s1[p]["RX-bytes"] - s0[p]["RX-bytes"]) * 8 / dt_ for p in s1))
            per_port.append(rx)
        cpu1 = cpu_seconds(cpu_pid)
        lat = self.tp.latency() if latency else {}
        (ta, sa), (tb, sb) = samples[0], samples[-1]
        med = statistics.median(pps)
        mean = sum(sb[p]["RX-packets"] - sa[p]["RX-packets"] for p in sb) / (tb - ta) / 1e6
        # Cores the subject used during the window, and its rate per core: on a shared machine
        # the subject gets a varying share of its core, so this is the steadier cost figure.
        cores = (cpu1 - cpu0) / (tb - ta) if cpu0 is not None and cpu1 is not None else None
        i_med = min(range(len(pps)), key=lambda i: abs(pps[i] - med))
        return {
            "mpps": med / 1e6,
            "gbps": statistics.median(bps) / 1e9,
            "mpps_min": min(pps) / 1e6,
            "mpps_max": max(pps) / 1e6,
            "mpps_mean": mean,
            "subject_cores": round(cores, 3) if cores is not None else None,
            "mpps_per_core": mean / cores if cores else None,
            "rx_pps_by_port": {str(p): round(v) for p, v in per_port[i_med].items()},
            "rx_packets_by_port": {str(p): sb[p]["RX-packets"] for p in sb},
            "tx_packets_by_port": {str(p): sb[p]["TX-packets"] for p in sb},
            "window_s": round(tb - ta, 3),
            # flowgen: flows sent at least once before the window (capped wait; see README).
            "flows_visited": min(getattr(self, "flows_visited", 0), self.case.flows)
            if self.case.mode == "flowgen" and self.case.flows < FLOWGEN_MAX else None,
            # Sent but not received by the end: packets in flight plus packets lost.
            "unreturned": sum(sb[p]["TX-packets"] - sb[p]["RX-packets"] for p in sb),
            **lat,
        }

    def _visit_all_flows(self, st: Settings) -> None:
        """Waits until port 0 has sent every flow once, so the window sees a table of `flows`
        entries rather than new connections. flowgen advances its flow counter only for
        packets the ring accepted, so TX-packets counts flows visited."""
        deadline = time.monotonic() + st.flows_fill_max
        while True:
            _, s = self.tp.port_stats(self.nports)
            self.flows_visited = s[0]["TX-packets"]
            if self.flows_visited >= self.case.flows or time.monotonic() > deadline:
                return
            time.sleep(0.5)

    def stop(self) -> None:
        self.tp.stop()


# ----------------------------------------------------------------------------------------
# Subjects
# ----------------------------------------------------------------------------------------


class Subject:
    """What runs between generator port 2k and 2k+1.

    `unavailable()` says why the subject cannot run at all; `skip(case)` why it cannot run one
    case; `start_case` connects it to the generator's sockets for one case (the generator is
    already listening) and `end_case` undoes what must not outlive the case.
    """

    name = "?"
    description = ""

    def unavailable(self) -> Optional[str]:
        return None

    def setup(self, run_dir: Path) -> None:
        pass

    def skip(self, case: Case) -> Optional[str]:
        return None

    def start_case(self, case: Case, sockets: list[Path]) -> None:
        raise NotImplementedError

    def end_case(self, case: Case) -> dict:
        """Stops per-case state; returns extra observations (memory, counters)."""
        return {}

    def cpu_pid(self) -> Optional[int]:
        """The process whose CPU time the window accounts (see `cpu_seconds`)."""
        return None

    def pause(self) -> None:
        """Stops burning the subject core while other subjects are measured."""

    def resume(self) -> None:
        pass

    @property
    def sock_prefix(self) -> str:
        """Generator socket names for this subject (subjects sharing a daemon share it)."""
        return self.name

    def teardown(self) -> None:
        pass


class CeilingSubject(Subject):
    """testpmd as the vhost-user backend forwarding port 2k <-> 2k+1 (io): no lookup at all."""

    name = "ceiling"
    description = "dpdk-testpmd net_vhost (client) --forward-mode=io, port 2k<->2k+1"

    def __init__(self) -> None:
        self.tp: Optional[Testpmd] = None
        self.run_dir = Path()

    def unavailable(self) -> Optional[str]:
        return None if shutil.which("dpdk-testpmd") else "dpdk-testpmd not installed (integration/bench/install-bench-deps.sh)"

    def setup(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def skip(self, case: Case) -> Optional[str]:
        if case.figure == "rules":
            return "no rules in a port-to-port forwarder (its established 64 B rate is the reference)"
        return None

    def start_case(self, case: Case, sockets: list[Path]) -> None:
        vdevs = [f"net_vhost{i},iface={s},client=1,queues=1" for i, s in enumerate(sockets)]
        mbufs = max(16384, len(sockets) * 2048)
        app = [f"--total-num-mbufs={mbufs}", "--burst=32", "--rxd=256", "--txd=256",
               "--forward-mode=io", "--auto-start"]
        self.tp = Testpmd("ceiling", f"{SUBJECT_CPU},{GEN_CPU}", GEN_CPU, vdevs, app, self.run_dir,
                          512 if len(sockets) <= 8 else 1024)

    def cpu_pid(self) -> Optional[int]:
        return self.tp.proc.pid if self.tp else None

    def end_case(self, case: Case) -> dict:
        extra = {}
        if self.tp:
            extra = {"rss_kb": rss_of(self.tp.proc.pid)}
            self.tp.stop()
            self.tp = None
        return extra


class OvsDaemon:
    """ovsdb-server + ovs-vswitchd-dpdk in a private run dir, the bridge in a private netns.

    The netdev bridge creates a TAP named after the bridge; running the daemons under
    `ip netns exec` puts that TAP in a namespace this harness deletes at the end.
    """

    VSWITCHD = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"
    SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
    BRIDGE = "brbench"
    HUGEPAGES = 1024  # 2 MiB pages: 1 GiB for dpdk-socket-mem plus headroom

    def __init__(self) -> None:
        self.started = False
        self.ports = 0  # vhost ports added so far (ofport 1..ports)
        self.flows_key = ""
        self.paused = False

    @staticmethod
    def unavailable() -> Optional[str]:
        for f in (OvsDaemon.VSWITCHD, OvsDaemon.SCHEMA):
            if not os.path.exists(f):
                return f"{f} missing: openvswitch-switch-dpdk not installed (integration/bench/install-bench-deps.sh)"
        for tool in ("ovsdb-server", "ovs-vsctl", "ovs-ofctl", "ip"):
            if not shutil.which(tool):
                return f"{tool} not found"
        if os.geteuid() != 0:
            return "needs root (hugepages, network namespace)"
        return None

    def start(self, run_dir: Path) -> None:
        if self.started:
            return
        d = run_dir / "ovs"
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.db_sock = d / "db.sock"
        self.netns = f"vdfwb{os.getpid()}"
        self.env = dict(os.environ, OVS_RUNDIR=str(d), OVS_LOGDIR=str(d), OVS_DBDIR=str(d))
        self._hugepages()
        run(["ip", "netns", "add", self.netns])
        CLEANUP.push(f"netns {self.netns}", lambda: run(["ip", "netns", "del", self.netns], check=False))
        run(["ovsdb-tool", "create", str(d / "conf.db"), self.SCHEMA], env=self.env)
        self.db = Proc("ovsdb-server", ["ovsdb-server", str(d / "conf.db"), f"--remote=punix:{self.db_sock}",
                                        f"--unixctl={d / 'ovsdb-server.ctl'}", f"--pidfile={d / 'ovsdb-server.pid'}",
                                        f"--log-file={d / 'ovsdb-server.log'}"],
                       d / "ovsdb-server.out", env=self.env)
        self._wait(lambda: self.db_sock.exists(), 10, "ovsdb-server socket")
        self.vsctl("--no-wait", "init")
        self.vsctl("--no-wait", "set", "Open_vSwitch", ".",
                   "other_config:dpdk-init=true",
                   f'other_config:dpdk-extra="--no-pci --huge-dir={self.huge_dir}"',
                   "other_config:dpdk-socket-mem=1024",
                   f"other_config:dpdk-lcore-mask={1 << GEN_CPU:#x}",
                   f"other_config:pmd-cpu-mask={1 << SUBJECT_CPU:#x}")
        self.vswitchd = Proc("ovs-vswitchd", ["ip", "netns", "exec", self.netns, self.VSWITCHD,
                                              f"unix:{self.db_sock}", f"--unixctl={d / 'ovs-vswitchd.ctl'}",
                                              f"--pidfile={d / 'ovs-vswitchd.pid'}", f"--log-file={d / 'ovs-vswitchd.log'}"],
                             d / "ovs-vswitchd.out", env=self.env)
        self._wait(lambda: self.vsctl("get", "Open_vSwitch", ".", "dpdk_initialized", check=False).stdout.strip() == "true",
                   60, "dpdk_initialized")
        self.vsctl("add-br", self.BRIDGE, "--", "set", "bridge", self.BRIDGE, "datapath_type=netdev",
                   "fail-mode=secure")
        self.started = True
        CLEANUP.push("ovs bridge", lambda: self.vsctl("--timeout=10", "del-br", self.BRIDGE, check=False))
        CLEANUP.push("ovs-vswitchd SIGCONT", self.resume)
        log(f"OVS-DPDK up ({self.ovs_version()})")

    def _hugepages(self) -> None:
        nr = Path("/proc/sys/vm/nr_hugepages")
        before = int(nr.read_text())
        if before < self.HUGEPAGES:
            nr.write_text(str(self.HUGEPAGES))
            CLEANUP.push("hugepage reservation", lambda: nr.write_text(str(before)))
            got = int(nr.read_text())
            if got < self.HUGEPAGES:
                raise Unavailable(f"only {got} of {self.HUGEPAGES} 2 MiB hugepages could be reserved")
        self.huge_dir = self.dir / "huge"
        self.huge_dir.mkdir(exist_ok=True)
        run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "nodev", str(self.huge_dir)])
        CLEANUP.push("hugetlbfs mount", lambda: run(["umount", str(self.huge_dir)], check=False))

    @staticmethod
    def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timeout waiting for {what}")
            time.sleep(0.3)

    def vsctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["ovs-vsctl", f"--db=unix:{self.db_sock}", *args], check=check, env=self.env)

    def ofctl(self, *args: str, input: Optional[str] = None) -> subprocess.CompletedProcess:
        return run(["ovs-ofctl", "-O", "OpenFlow13", *args], env=self.env, input=input, timeout=600)

    def appctl(self, *args: str) -> subprocess.CompletedProcess:
        return run(["ovs-appctl", "-t", str(self.dir / "ovs-vswitchd.ctl"), *args], env=self.env, check=False)

    def ovs_version(self) -> str:
        return run(["ovs-vswitchd", "--version"], check=False).stdout.splitlines()[0]

    def ensure_ports(self, sockets: list[Path]) -> None:
        """vhost-user client ports vhu0..: ofport i+1 connects to generator socket i.

        Socket paths do not change between cases, so ports persist and OVS reconnects to each
        new generator by itself.
        """
        for i in range(self.ports, len(sockets)):
            self.vsctl("add-port", self.BRIDGE, f"vhu{i}", "--", "set", "Interface", f"vhu{i}",
                       "type=dpdkvhostuserclient", f"options:vhost-server-path={sockets[i]}",
                       f"ofport_request={i + 1}")
        self.ports = max(self.ports, len(sockets))

    def set_flows(self, key: str, flows: str) -> None:
        if key == self.flows_key:
            return
        path = self.dir / "flows.txt"
        path.write_text(flows)
        t = time.monotonic()
        self.ofctl("--bundle", "replace-flows", self.BRIDGE, str(path))
        self.flows_key = key
        n = flows.count("\n")
        if n > 1000:
            log(f"OVS: {n} flows installed in {time.monotonic() - t:.1f}s")
        # (Datapath flows are left to the revalidators: deleting them behind their back with
        # dpctl/del-flows sends every packet to the slow path until the ukeys expire.)

    def flush_conntrack(self) -> None:
        """Entries of the previous case must not make this one's flows "established"."""
        self.appctl("dpctl/flush-conntrack")

    def pause(self) -> None:
        """SIGSTOP ovs-vswitchd: its PMD would otherwise spin on the subject core while other
        subjects are measured. Its ports point at sockets only its own generator creates."""
        pid = self.pid()
        if pid and not self.paused:
            time.sleep(0.5)  # let it see the generator's disconnect first
            os.kill(pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        pid = self.pid()
        if pid and self.paused:
            os.kill(pid, signal.SIGCONT)
            self.paused = False

    def pid(self) -> Optional[int]:
        try:
            return int((self.dir / "ovs-vswitchd.pid").read_text().strip())
        except (OSError, ValueError):
            return None


def ovs_plain_flows(pairs: int) -> str:
    out = []
    for k in range(pairs):
        a, b = 2 * k + 1, 2 * k + 2
        out.append(f"table=0,priority=10,in_port={a},actions=output:{b}")
        out.append(f"table=0,priority=10,in_port={b},actions=output:{a}")
    return "\n".join(out) + "\n"


def filler_match(i: int) -> tuple[str, int]:
    """The i-th non-matching rule: a /32 in 172.16/12 and a TCP port, all distinct."""
    return f"172.{16 + (i >> 16) % 16}.{(i >> 8) & 255}.{i & 255}", 1024 + i % 60000


def ovs_ct_flows(case: Case) -> str:
    """The OpenStack security-group pattern (OVS firewall driver, simplified).

    Table 0: anti-spoofing (a port may send only from its MAC and IP), then conntrack in a zone
    per pair. Table 1: established/related traffic passes; new traffic is committed only when an
    egress rule of vNIC A allows it; `rules` counts those rules, the matching one included.
    Everything else, and anything B starts, is dropped. The anti-spoof IPs are the ones the
    case's generator sends (`Case.ips`).
    """
    out = []
    for k in range(case.pairs):
        a, b, z = 2 * k + 1, 2 * k + 2, k + 1
        src_a, src_b = case.ips(k)
        out.append(f"table=0,priority=100,in_port={a},ip,dl_src={mac_a(k)},nw_src={src_a},actions=ct(table=1,zone={z})")
        out.append(f"table=0,priority=100,in_port={b},ip,dl_src={mac_b(k)},nw_src={src_b},actions=ct(table=1,zone={z})")
        out.append(f"table=1,priority=100,ct_state=-new+est-rel-inv+trk,in_port={a},actions=output:{b}")
        out.append(f"table=1,priority=100,ct_state=-new+est-rel-inv+trk,in_port={b},actions=output:{a}")
        out.append(f"table=1,priority=50,ct_state=+new-est-rel-inv+trk,in_port={a},udp,tp_dst={UDP_DST},"
                   f"actions=ct(commit,zone={z}),output:{b}")
        for i in range(case.rules - 1):
            ip, port = filler_match(i)
            out.append(f"table=1,priority=50,ct_state=+new-est-rel-inv+trk,in_port={a},tcp,nw_dst={ip},"
                       f"tp_dst={port},actions=ct(commit,zone={z}),output:{b}")
    out.append("table=0,priority=0,actions=drop")
    out.append("table=1,priority=0,actions=drop")
    return "\n".join(out) + "\n"


class OvsSubject(Subject):
    sock_prefix = "ovs"  # ovs and ovs-ct share the daemon and its ports

    def __init__(self, daemon: OvsDaemon, ct: bool) -> None:
        self.d = daemon
        self.ct = ct
        self.name = "ovs-ct" if ct else "ovs"
        self.description = ("OVS-DPDK netdev bridge, dpdkvhostuserclient ports, security-group flows: "
                            "anti-spoof, ct(table=1,zone=Z), ct(commit)+output for allowed new, est passes"
                            if ct else "OVS-DPDK netdev bridge, dpdkvhostuserclient ports, in_port=1,actions=output:2")
        self.run_dir = Path()

    def unavailable(self) -> Optional[str]:
        return self.d.unavailable()

    def setup(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.d.start(run_dir)

    def skip(self, case: Case) -> Optional[str]:
        if case.figure == "rules" and not self.ct:
            return "plain OVS has no rules to scale"
        return None

    def start_case(self, case: Case, sockets: list[Path]) -> None:
        self.d.ensure_ports(sockets)
        self.d.flush_conntrack()
        if self.ct:
            self.d.set_flows(f"ct:{case.pairs}:{case.rules}:{case.gen}", ovs_ct_flows(case))
        else:
            self.d.set_flows(f"plain:{case.pairs}", ovs_plain_flows(case.pairs))

    def pause(self) -> None:
        self.d.pause()

    def resume(self) -> None:
        self.d.resume()

    def cpu_pid(self) -> Optional[int]:
        return self.d.pid()

    def end_case(self, case: Case) -> dict:
        extra: dict = {}
        pid = self.d.pid()
        if pid:
            extra["rss_kb"] = rss_of(pid)
        if self.ct:
            r = self.d.appctl("dpctl/ct-get-nconns")
            if r.returncode == 0 and r.stdout.strip().isdigit():
                extra["conntrack_entries"] = int(r.stdout.strip())
        return extra


# ---- vdfwd ---------------------------------------------------------------------------------


def vdfwd_policies(rules: int, deny: bool) -> dict[str, str]:
    """Kubernetes NetworkPolicies for the bench namespace, as {file name: YAML}.

    vNIC A (role=bench-a) and B (role=bench-b) are both isolated in both directions, like the
    OVS security-group flows: A may open UDP to B port 1001 (or port 1002 when `deny`, which
    the traffic never uses), B may open nothing. The allowing rule names B by label and also
    `0.0.0.0/0`: flowgen's destinations run from 10.253.0.0 upwards past 10.253/16 (1M flows
    reach 11.12.x.x; they never leave the vhost-user loop), and the OVS rule has no nw_dst
    either; replies pass only through connection
    tracking. `rules` counts A's egress rules, the allowing one included; the others name TCP
    ports on /32s in 172.16/12 that no packet matches.
    """
    port = UDP_DST + 1 if deny else UDP_DST
    allow = (f"    - to:\n        - podSelector:\n            matchLabels: {{role: bench-b}}\n"
             f"        - ipBlock:\n            cidr: 0.0.0.0/0\n"
             f"      ports:\n        - protocol: UDP\n          port: {port}\n")
    files: dict[str, str] = {}
    per_file = 1000
    fillers = list(range(rules - 1))
    chunks = [fillers[i:i + per_file] for i in range(0, len(fillers), per_file)] or [[]]
    for c, chunk in enumerate(chunks):
        body = [f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n"
                f"  name: bench-a-egress-{c}\n  namespace: {NS}\nspec:\n"
                f"  podSelector:\n    matchLabels: {{role: bench-a}}\n"
                f"  policyTypes: [Ingress, Egress]\n  ingress: []\n  egress:\n"]
        if c == 0:
            body.append(allow)
        for i in chunk:
            ip, p = filler_match(i)
            body.append(f"    - to:\n        - ipBlock:\n            cidr: {ip}/32\n"
                        f"      ports:\n        - protocol: TCP\n          port: {p}\n")
        files[f"bench-a-{c:03d}.yaml"] = "".join(body)
    files["bench-b.yaml"] = (
        f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: bench-b\n"
        f"  namespace: {NS}\nspec:\n  podSelector:\n    matchLabels: {{role: bench-b}}\n"
        f"  policyTypes: [Ingress, Egress]\n  egress: []\n  ingress:\n"
        f"    - from:\n        - podSelector:\n            matchLabels: {{role: bench-a}}\n"
        f"      ports:\n        - protocol: UDP\n          port: {port}\n")
    return files


def config_lines(kvs: list[str], ap: argparse.ArgumentParser) -> list[str]:
    """`KEY=VALUE` (from the command line) -> TOML lines `KEY = VALUE` (VALUE verbatim TOML)."""
    out = []
    for kv in kvs:
        k, sep, v = kv.partition("=")
        if not sep or not re.fullmatch(r"[a-z_]+", k.strip()) or not v.strip():
            ap.error(f"vdfwd config wants KEY=VALUE, got {kv!r}")
        out.append(f"{k.strip()} = {v.strip()}")
    return out


def vdfwd_config(sockets: list[Path], state_dir: Path, policy_dir: Path,
                 extra: Optional[list[str]] = None) -> str:
    """vdfwd TOML (format of configs/vdfwd.toml): one `connect` vNIC per generator socket.
    `extra`: top-level `key = value` lines (--vdfwd-config, e.g. `poll_us = 50`)."""
    # 4M entries per vNIC (the default is 64k): the flows figure goes to 1M concurrent flows,
    # and the newconn case adds an entry per packet for ~6 s (~3M at 0.5 M/s): a full table
    # would measure refused connections, not new ones. OVS's conntrack allows 3M by default
    # (it fills ~2.2M in that case). Entries are allocated as the table grows.
    out = [f'state_dir = "{state_dir}"', f'policy_dir = "{policy_dir}"',
           f"conntrack_max_per_vnic = {VDFWD_CONNTRACK_MAX}", *(extra or []), ""]
    for i, s in enumerate(sockets):
        # vdfwd requires a unique IP per vNIC: pair k's are those pairgen sends (testpmd sends
        # pair 0's on every port, so pairs k > 0 are not run with it; VdfwdSubject.skip).
        k, side = i // 2, "ab"[i % 2]
        ip = ip_a(k) if side == "a" else ip_b(k)
        out += ["[[vnic]]", f'name = "bench-{side}{k}"', f'socket = "{s}"', 'role = "connect"',
                f'vm = "bench-{side}{k}"', f'namespace = "{NS}"',
                f'mac = "{mac_a(k) if side == "a" else mac_b(k)}"', f'ips = ["{ip}"]',
                f'labels = {{ role = "bench-{side}", pair = "{k}" }}', ""]
    return "\n".join(out)


class VdfwdSubject(Subject):
    """vdfwd with a generated config (vNICs connect to the generator) and a generated policy set.

    The one entry point for vdfwd is `start_vdfwd(binary, config_text, policies)`; everything
    else (which policy, how many rules) comes from the case.
    """

    def __init__(self, binary: Optional[Path], extra_args: list[str], firewall_off: bool = False,
                 label: str = "", config: Optional[list[str]] = None) -> None:
        self.binary = binary
        self.config = config or []
        self.firewall_off = firewall_off
        self.extra_args = extra_args + (["--insecure-allow-all"] if firewall_off else [])
        # A label names another vdfwd build measured in the same run (--vdfwd-variant).
        self.name = ("vdfwd-nofw" if firewall_off else "vdfwd") + (f"@{label}" if label else "")
        self.description = (
            "vdfwd --insecure-allow-all: the vhost-user data path and spoof guard without the firewall"
            if firewall_off else
            "vdfwd (vhost-user backend + dfw), vNICs role=connect, K8s NetworkPolicy set")
        if self.config:
            self.description += "; config " + ", ".join(self.config)
        self.proc: Optional[Proc] = None
        self.run_dir = Path()

    def unavailable(self) -> Optional[str]:
        if self.binary is None:
            if not (REPO / "vswitch" / "src" / "bin" / "vdfwd.rs").exists():
                return "vdfwd is not on this branch yet (vswitch/src/bin/vdfwd.rs missing)"
            return "vdfwd binary not found and not built: cargo build --release -p vswitch --bin vdfwd, or pass --vdfwd PATH"
        if not os.access(self.binary, os.X_OK):
            return f"{self.binary} is not executable"
        if self.firewall_off:
            r = run([str(self.binary), "--help"], check=False)
            if "--insecure-allow-all" not in r.stdout:
                return "this vdfwd has no --insecure-allow-all"
        return None

    def setup(self, run_dir: Path) -> None:
        self.description += f"; binary {self.binary}"
        if self.binary and "/debug/" in str(self.binary):
            self.description += " (DEBUG build: rates not representative)"
        self.run_dir = run_dir / self.name
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def skip(self, case: Case) -> Optional[str]:
        if case.pairs > 1 and case.gen == "testpmd":
            return ("one testpmd generator sends the same IPs on every port (--tx-ip is global) and "
                    "vdfwd's spoof guard binds unique IPs per vNIC (use --vnic-gen pairgen)")
        return None

    def start_vdfwd(self, binary: Path, config_text: str, policies: dict[str, str]) -> Proc:
        pol = self.run_dir / "policies"
        shutil.rmtree(pol, ignore_errors=True)
        pol.mkdir(parents=True)
        for name, text in policies.items():
            (pol / name).write_text(text)
        cfg = self.run_dir / "vdfwd.toml"
        cfg.write_text(config_text)
        argv = ["taskset", "-c", str(SUBJECT_CPU), str(binary), "--config", str(cfg), *self.extra_args]
        return Proc("vdfwd", argv, self.run_dir / "vdfwd.log", env=dict(os.environ, RUST_LOG=os.environ.get("VDFWD_LOG", "info")))

    def start_case(self, case: Case, sockets: list[Path]) -> None:
        assert self.binary is not None
        state = self.run_dir / "state"
        state.mkdir(exist_ok=True)
        text = vdfwd_config(sockets, state, self.run_dir / "policies", self.config)
        self.proc = self.start_vdfwd(self.binary, text, vdfwd_policies(case.rules, case.deny))
        time.sleep(0.5)
        if not self.proc.alive():
            raise RuntimeError(f"vdfwd exited at start: {tail(self.proc.log_path)}")

    def cpu_pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def end_case(self, case: Case) -> dict:
        extra: dict = {}
        if self.proc:
            extra["rss_kb"] = rss_of(self.proc.pid)
            counters = self.run_dir / "state" / "counters.json"
            if counters.exists():
                try:
                    extra["counters"] = json.loads(counters.read_text())
                except ValueError:
                    pass
            self.proc.stop()
            self.proc = None
        return extra


def copy_logs(src: Path, dst: Path) -> None:
    """Copies the regular files of the run dir (logs, generated configs) next to the results."""
    for p in src.rglob("*"):
        if (p.is_file() and not p.is_symlink() and p.name not in ("conf.db", "pairgen")
                and "huge" not in p.parts):
            t = dst / p.relative_to(src)
            t.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy2(p, t)
            except OSError:
                pass


def tail(path: Path, n: int = 5) -> str:
    try:
        return " | ".join(path.read_text().strip().splitlines()[-n:])
    except OSError:
        return "(no log)"


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------


def cases_for(args: argparse.Namespace) -> list[Case]:
    if args.smoke:
        return [Case("smoke-allow", "loop", rules=3), Case("smoke-deny", "loop", rules=3, deny=True)]
    cs = [Case("established", "loop", frame=f) for f in args.frames]
    cs.append(Case("newconn", "flowgen", flows=FLOWGEN_MAX))
    cs += [Case("rules", "loop", rules=r) for r in args.rules]
    cs += [Case("flows", "flowgen", flows=n) for n in args.flows]
    cs += [Case("vnics", "loop", pairs=v // 2, gen=args.vnic_gen) for v in args.vnics if v >= 2]
    cs += [Case("latency", "loop", gen="pairgen", inflight=q) for q in args.latency_inflight if q >= 1]
    return cs


LOCK = Path("/tmp/vdfw-bench.lock")


def one_run_at_a_time() -> None:
    """Waits until no other bench.py (with this lock) runs: two runs would share both cores and
    measure each other. Held until this process exits."""
    f = open(LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        log(f"another bench run holds {LOCK} ({f.read().strip() or '?'}); waiting for it")
        fcntl.flock(f, fcntl.LOCK_EX)
    f.truncate(0)
    f.write(f"pid {os.getpid()}, started {time.strftime('%H:%M:%S')}\n")
    f.flush()
    globals()["_lock_file"] = f  # keep it open (and locked) until exit


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_at_start": [round(x, 2) for x in load],
        "testpmd": run(["dpkg-query", "-W", "-f=${Version}", "dpdk-dev"], check=False).stdout.strip(),
        "openvswitch_dpdk": run(["dpkg-query", "-W", "-f=${Version}", "openvswitch-switch-dpdk"], check=False).stdout.strip(),
    }


def measure_one(subject: Subject, case: Case, run_dir: Path, st: Settings) -> dict:
    for attempt in range(3):
        try:
            return _measure_once(subject, case, run_dir, st)
        except PortsMissing as e:
            if attempt == 2:
                raise
            log(f"{e}; retrying")
    raise AssertionError("unreachable")


def _measure_once(subject: Subject, case: Case, run_dir: Path, st: Settings) -> dict:
    gen = Generator(run_dir, case, subject.sock_prefix)
    started = False
    try:
        subject.start_case(case, gen.sockets)
        started = True
        res = gen.measure(st, subject.cpu_pid())
    finally:
        gen.stop()
        extra = subject.end_case(case) if started else {}
    res.update(extra)
    return res


LAT_KEYS = ("lat_mean_us", "lat_min_us", "lat_p50_us", "lat_p90_us", "lat_p99_us", "lat_p999_us", "lat_max_us")
LAT_RATIOS = ("lat_p50_us", "lat_p99_us", "lat_mean_us")  # ratios to the ceiling's / OVS+ct's


def combine_rounds(r: dict) -> None:
    """Folds a row's rounds into one: median Mpps/Gbps of the rounds, min..max over all
    intervals, counters summed (so a single forwarded packet in any round shows)."""
    rounds = r.pop("_rounds", None)
    if rounds is None:
        return
    ok = [m for m in rounds if m.get("mpps") is not None]
    r["rounds_mpps"] = [m.get("mpps") for m in rounds]
    errors = [m["error"] for m in rounds if m.get("error")]
    if errors:
        r["error"] = "; ".join(errors)
    if not ok:
        r["mpps"] = None
        r.setdefault("error", "interrupted before it ran")
        return
    last = ok[-1]
    r.update({k: v for k, v in last.items() if k not in ("mpps", "gbps", "mpps_min", "mpps_max", "mpps_mean")})
    r["mpps"] = statistics.median(m["mpps"] for m in ok)
    r["gbps"] = statistics.median(m["gbps"] for m in ok)
    r["mpps_min"] = min(m["mpps_min"] for m in ok)
    r["mpps_max"] = max(m["mpps_max"] for m in ok)
    r["rounds_mpps_per_core"] = [m.get("mpps_per_core") for m in rounds]
    per_core = [m["mpps_per_core"] for m in ok if m.get("mpps_per_core")]
    r["mpps_per_core"] = statistics.median(per_core) if per_core else None
    cores = [m["subject_cores"] for m in ok if m.get("subject_cores") is not None]
    r["subject_cores"] = statistics.median(cores) if cores else None
    # Latency (figure `latency`): medians of the rounds' percentiles (each round is one window
    # of pairgen's histogram), the per-round values kept for the paired ratios.
    for k in LAT_KEYS:
        vals = [m[k] for m in ok if m.get(k) is not None]
        if vals:
            r[k] = statistics.median(vals)
            r[f"rounds_{k}"] = [m.get(k) for m in rounds]
    if any("lat_samples" in m for m in ok):
        r["lat_samples"] = sum(m.get("lat_samples", 0) for m in ok)
    for k in ("rx_packets_by_port", "tx_packets_by_port"):
        tot: dict[str, int] = {}
        for m in ok:
            for p, v in m[k].items():
                tot[p] = tot.get(p, 0) + v
        r[k] = tot


def add_ratios(rows: list[dict]) -> None:
    """Each row's Mpps as a ratio to the ceiling's and to OVS+ct's for the same traffic.

    With several rounds the ratio is the median of per-round ratios: subjects of one round ran
    minutes apart at most, so the machine's background load cancels out better."""
    by = {(r["subject"], r["case"]): r for r in rows if r.get("mpps") is not None}
    for r in rows:
        if r.get("mpps") is None:
            continue
        c = r["_case"]
        for ref, col in (("ceiling", "vs_ceiling"), ("ovs-ct", "vs_ovs_ct")):
            key = r["case"]
            if ref == "ceiling" and c.figure == "rules":
                # The ceiling has no rules: compare with its established 64 B rate.
                key = Case("established", "loop", frame=c.frame).key
            ref_row = by.get((ref, key))
            if not ref_row or not ref_row["mpps"]:
                continue
            pairs = [(a, b) for a, b in zip(r["rounds_mpps"], ref_row["rounds_mpps"]) if a is not None and b]
            if pairs:
                r[col] = statistics.median(a / b for a, b in pairs)
            # Latency: this subject's time over the reference's (> 1 = slower), per round.
            for k in LAT_RATIOS:
                pairs = [(a, b) for a, b in zip(r.get(f"rounds_{k}", []), ref_row.get(f"rounds_{k}", []))
                         if a is not None and b]
                if pairs:
                    r[f"{k[:-3]}_{col}"] = statistics.median(a / b for a, b in pairs)


def print_table(rows: list[dict], info: dict, out=sys.stdout) -> None:
    print(f"\nmachine: {info['nproc']} CPUs, {info['cpu_model']}, kernel {info['kernel']}, {info['date']}, "
          f"load at start {info['loadavg_at_start']}", file=out)
    print(f"generator CPU {GEN_CPU}, subject CPU {SUBJECT_CPU}; Mpps = median of 1 s intervals "
          f"(min..max in brackets); Gbps = frame bytes without FCS", file=out)
    hdr = f"{'figure':<12}{'x':>11} {'subject':<9}{'Mpps':>8} {'[min..max]':<15}{'Gbps':>7}{'/ceil':>7}{'/ovs-ct':>8}  note"
    print(hdr, file=out)
    print("-" * len(hdr), file=out)
    said: set[str] = set()
    for r in rows:
        c = r["_case"]
        if r.get("unavailable"):
            if r["subject"] not in said:
                said.add(r["subject"])
                print(f"{'(all)':<12}{'':>11} {r['subject']:<9}{'-':>8} {'':<15}{'':>7}{'':>7}{'':>8}  NOT RUN: {r['skipped']}", file=out)
            continue
        x = {"established": f"{c.frame}B", "newconn": "new/s", "rules": f"{c.rules}r",
             "flows": f"{c.flows}fl", "vnics": f"{2 * c.pairs}vnic",
             "latency": f"{c.inflight}inflt"}.get(c.figure, "deny" if c.deny else "allow")
        if r.get("mpps") is None:
            print(f"{c.figure:<12}{x:>11} {r['subject']:<9}{'-':>8} {'':<15}{'':>7}{'':>7}{'':>8}  {r.get('skipped') or r.get('error')}", file=out)
            continue
        rng = f"[{r['mpps_min']:.2f}..{r['mpps_max']:.2f}]"
        vc = f"{r['vs_ceiling']:.2f}" if "vs_ceiling" in r else "-"
        vo = f"{r['vs_ovs_ct']:.2f}" if "vs_ovs_ct" in r else "-"
        note = ""
        if r.get("mpps_per_core"):
            note = f"{r['mpps_per_core']:.2f} Mpps/core ({r['subject_cores']:.2f} cores) "
        if "rss_kb" in r and r["rss_kb"].get("VmRSS"):
            note += f"RSS {r['rss_kb']['VmRSS'] // 1024} MiB"
        if "conntrack_entries" in r:
            note += f" ct {r['conntrack_entries']}"
        print(f"{c.figure:<12}{x:>11} {r['subject']:<9}{r['mpps']:>8.3f} {rng:<15}{r['gbps']:>7.2f}{vc:>7}{vo:>8}  {note}", file=out)
    print_latency(rows, out)


def print_latency(rows: list[dict], out) -> None:
    """The latency figure's own table: one-way µs through the subject and ratios of times."""
    lat = [r for r in rows if r["_case"].figure == "latency" and r.get("lat_p50_us") is not None]
    if not lat:
        return
    print("\nlatency: one-way trip generator port -> subject -> generator port, µs (pairgen TSC stamps; "
          "median of rounds); x ceil / x ovs-ct = this subject's time over theirs (paired per round)", file=out)
    hdr = (f"{'in flight':>9} {'subject':<16}{'p50':>8}{'p90':>8}{'p99':>8}{'mean':>8}{'min':>7}{'max':>9}"
           f"  {'p50 x ceil':>10}{'p50 x ovs-ct':>13}{'p99 x ceil':>11}{'p99 x ovs-ct':>13}{'samples':>10}")
    print(hdr, file=out)
    print("-" * len(hdr), file=out)

    def f(v, w=8, d=1):
        return f"{v:>{w}.{d}f}" if v is not None else f"{'-':>{w}}"

    for r in sorted(lat, key=lambda r: r["_case"].inflight):
        print(f"{r['_case'].inflight:>9} {r['subject']:<16}{f(r['lat_p50_us'])}{f(r.get('lat_p90_us'))}"
              f"{f(r['lat_p99_us'])}{f(r['lat_mean_us'])}{f(r['lat_min_us'], 7)}{f(r['lat_max_us'], 9, 0)}"
              f"  {f(r.get('lat_p50_vs_ceiling'), 10, 2)}{f(r.get('lat_p50_vs_ovs_ct'), 13, 2)}"
              f"{f(r.get('lat_p99_vs_ceiling'), 11, 2)}{f(r.get('lat_p99_vs_ovs_ct'), 13, 2)}"
              f"{r.get('lat_samples', 0):>10}", file=out)


def write_outputs(out_dir: Path, rows: list[dict], info: dict, subjects: list[dict], st: Settings) -> None:
    clean = [{k: v for k, v in r.items() if k != "_case"} | {"figure": r["_case"].figure, "x": r["_case"].x,
             "frame": r["_case"].frame, "flows": r["_case"].flows, "rules": r["_case"].rules,
             "vnics": 2 * r["_case"].pairs, "mode": r["_case"].mode, "deny": r["_case"].deny,
             "inflight": r["_case"].inflight} for r in rows]
    doc = {"machine": info, "subjects": subjects, "settings": {"warmup_s": st.warmup, "window_s": st.window,
           "generator_cpu": GEN_CPU, "subject_cpu": SUBJECT_CPU, "tx_first_bursts": st.tx_first_bursts},
           "results": clean}
    (out_dir / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    cols = ["figure", "x", "subject", "mode", "frame", "flows", "rules", "vnics", "deny", "mpps", "mpps_min",
            "mpps_max", "rounds_mpps", "mpps_per_core", "subject_cores", "gbps", "vs_ceiling", "vs_ovs_ct", "rss_kb", "conntrack_entries",
            "inflight", *LAT_KEYS, "lat_samples", "rounds_lat_p50_us", "rounds_lat_p99_us",
            *(f"{k[:-3]}_{c}" for k in LAT_RATIOS for c in ("vs_ceiling", "vs_ovs_ct")), "skipped", "error"]
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in clean:
            w.writerow([json.dumps(r[c]) if isinstance(r.get(c), (dict, list)) else r.get(c, "") for c in cols])
    with open(out_dir / "table.txt", "w") as f:
        print_table(rows, info, out=f)


def plot(results_json: Path, png: Path) -> Optional[str]:
    """Draws the scaling curves; returns why not when matplotlib is missing."""
    try:
        import matplotlib  # type: ignore

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore
    except ImportError:
        sysp = "/usr/bin/python3"
        if os.path.exists(sysp) and os.path.realpath(sys.executable) != os.path.realpath(sysp):
            r = subprocess.run([sysp, __file__, "--plot-only", str(results_json), "--png", str(png)],
                               capture_output=True, text=True)
            return None if r.returncode == 0 else f"plot failed: {r.stderr.strip()[-300:]}"
        return "matplotlib not installed (python3-matplotlib): no PNG"
    doc = json.loads(results_json.read_text())
    res = [r for r in doc["results"] if r.get("mpps") is not None]
    figs = [("established", "frame bytes", False), ("rules", "rules", True), ("flows", "concurrent flows", True),
            ("vnics", "vNICs", True)]
    fig, axes = plt.subplots(2, 4, figsize=(21, 9))
    colors = {"ceiling": "tab:gray", "ovs": "tab:blue", "ovs-ct": "tab:orange", "vdfwd": "tab:green",
              "vdfwd-nofw": "tab:olive"}
    for ax, (name, xl, logx) in zip(axes.flat, figs):
        for subj in sorted({r["subject"] for r in res}):
            pts = sorted((r["x"], r["mpps"], r["mpps_min"], r["mpps_max"]) for r in res
                         if r["figure"] == name and r["subject"] == subj)
            if pts:
                # Error bars: the slowest and fastest 1-s interval of the window.
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                            yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]],
                            marker="o", capsize=3, label=subj, color=colors.get(subj.split("@")[0]) if "@" not in subj else None)
        ax.set_ylim(bottom=0)
        if not ax.lines:
            ax.text(0.5, 0.5, "not in this run", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"Mpps vs {xl}")
        ax.set_xlabel(xl)
        ax.set_ylabel("Mpps (delivered)")
        if logx:
            ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
    ax = axes.flat[4]
    for subj in sorted({r["subject"] for r in res}):
        pts = sorted((r["x"], r["gbps"]) for r in res if r["figure"] == "established" and r["subject"] == subj)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=subj, color=colors.get(subj.split("@")[0]) if "@" not in subj else None)
    ax.set_title("Gbps vs frame bytes (established)")
    ax.set_xlabel("frame bytes")
    ax.set_ylabel("Gbps")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax = axes.flat[5]
    nc = [r for r in res if r["figure"] == "newconn"]
    ax.bar([r["subject"] for r in nc], [r["mpps"] for r in nc], color=[colors.get(r["subject"], "tab:purple") for r in nc])
    ax.set_title("new connections per second (M/s)")
    # Latency: p50 bars, whiskers up to p99, one group per in-flight count (log scale: µs to ms).
    ax = axes.flat[6]
    lat = [r for r in doc["results"] if r["figure"] == "latency" and r.get("lat_p50_us") is not None]
    for j, q in enumerate(sorted({r["inflight"] for r in lat})):
        rs = [r for r in lat if r["inflight"] == q]
        xs = [i + 0.4 * j for i in range(len(rs))]
        ax.bar(xs, [r["lat_p50_us"] for r in rs], width=0.38, label=f"{q} in flight per pair",
               yerr=[[0] * len(rs), [r["lat_p99_us"] - r["lat_p50_us"] for r in rs]], capsize=3)
        if j == 0:
            ax.set_xticks([i + 0.2 for i in range(len(rs))], [r["subject"] for r in rs], rotation=30, fontsize=8)
    ax.set_yscale("log")
    ax.set_title("one-way latency, p50 (whisker: p99), µs")
    ax.grid(True, alpha=0.3, axis="y")
    if lat:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "not in this run", ha="center", va="center", transform=ax.transAxes)
    axes.flat[7].axis("off")
    m = doc["machine"]
    fig.suptitle(f"vdfw bench, {m['date']}: {m['nproc']} CPUs {m['cpu_model']}, kernel {m['kernel']} "
                 f"(shared machine: noisy)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    return None


def parse_list(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few seconds per subject, allow + deny policy, no sweep (CI)")
    ap.add_argument("--out", type=Path, help="output dir (default integration/bench/results/<UTC date-time>/)")
    ap.add_argument("--subjects", default="ceiling,ovs,ovs-ct,vdfwd,vdfwd-nofw", help="comma list (default: all)")
    ap.add_argument("--vdfwd", type=Path, help="vdfwd binary (default: build/find this checkout's, in $CARGO_TARGET_DIR or target/)")
    ap.add_argument("--no-build", action="store_true", help="do not build vdfwd when its binary is missing")
    ap.add_argument("--vdfwd-arg", action="append", default=[], help="extra vdfwd argument (repeatable)")
    ap.add_argument("--vdfwd-config", action="append", default=[], metavar="KEY=VALUE",
                    help="top-level vdfwd config line for vdfwd / vdfwd-nofw, e.g. poll_us=50 (repeatable)")
    ap.add_argument("--vdfwd-variant", action="append", default=[], metavar="LABEL=PATH[,KEY=VALUE...]",
                    help="another vdfwd binary (or the same one with other config lines) measured in "
                         "the same run as subjects vdfwd@LABEL and vdfwd-nofw@LABEL (e.g. the build "
                         "before an optimisation; repeatable)")
    ap.add_argument("--warmup", type=float, help="seconds before sampling (default 1.5, smoke 1)")
    ap.add_argument("--window", type=float, help="sampling window in seconds (default 4, smoke 2)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds per case (subjects interleaved in each round)")
    ap.add_argument("--frames", type=parse_list, default=[64, 512, 1500])
    ap.add_argument("--rules", type=parse_list, default=[10, 100, 1000, 10000, 100000])
    ap.add_argument("--flows", type=parse_list, default=[1, 100, 10000, 100000, 1000000])
    ap.add_argument("--vnics", type=parse_list, default=[2, 4, 8, 16, 32])
    ap.add_argument("--vnic-gen", choices=["pairgen", "testpmd"], default="pairgen",
                    help="generator of the vnics figure, the same for every subject: pairgen (pair k "
                         "sends its own IPs; default) or testpmd (every pair sends pair 0's IPs: "
                         "vdfwd cannot run it)")
    ap.add_argument("--latency-inflight", type=parse_list, default=[1, 512],
                    help="latency figure: packets circulating per pair (1 = drop-free, nothing queues; "
                         "512 = the loop's usual 16 x 32); comma list")
    ap.add_argument("--only", help="comma list of figures to run (established,newconn,rules,flows,vnics,latency)")
    ap.add_argument("--min-smoke-mpps", type=float, default=0.01,
                    help="smoke: the allowing policy must deliver at least this rate")
    ap.add_argument("--deadline-min", type=float, default=45.0, help="abort (with cleanup) after this many minutes")
    ap.add_argument("--plot-only", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--png", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.plot_only:
        why = plot(args.plot_only, args.png)
        if why:
            print(why, file=sys.stderr)
            return 1
        return 0

    one_run_at_a_time()  # before the deadline starts and anything is set up
    st = Settings(warmup=args.warmup or (1.0 if args.smoke else 1.5), window=args.window or (2.0 if args.smoke else 4.0))
    out_dir = args.out or HERE / "results" / dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Short path: vhost-user socket paths must fit in sun_path (108 bytes).
    run_dir = Path(tempfile.mkdtemp(prefix="vdfwb-", dir="/tmp"))
    CLEANUP.push("run dir", lambda: shutil.rmtree(run_dir, ignore_errors=True))
    PAIRGEN.out_dir = run_dir
    keep_logs = out_dir / "logs"

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    # Bounded runtime: past the deadline the run stops like on Ctrl-C (and cleans up).
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(int(args.deadline_min * 60))

    vbin = args.vdfwd or find_vdfwd(args.smoke, not args.no_build)
    ovsd = OvsDaemon()
    all_subjects: dict[str, Subject] = {
        "ceiling": CeilingSubject(),
        "ovs": OvsSubject(ovsd, ct=False),
        "ovs-ct": OvsSubject(ovsd, ct=True),
        "vdfwd": VdfwdSubject(vbin, args.vdfwd_arg, config=config_lines(args.vdfwd_config, ap)),
        "vdfwd-nofw": VdfwdSubject(vbin, args.vdfwd_arg, firewall_off=True,
                                   config=config_lines(args.vdfwd_config, ap)),
    }
    for v in args.vdfwd_variant:
        label, sep, rest = v.partition("=")
        path, *kvs = rest.split(",")
        if not sep or not label or not path:
            ap.error(f"--vdfwd-variant wants LABEL=PATH[,KEY=VALUE...], got {v!r}")
        for off in (False, True):
            subj = VdfwdSubject(Path(path), args.vdfwd_arg, firewall_off=off, label=label,
                                config=config_lines(kvs, ap))
            all_subjects[subj.name] = subj
    wanted = [s for s in args.subjects.split(",") if s]
    for s in wanted:
        if s not in all_subjects:
            ap.error(f"unknown subject {s}")
    if args.smoke:
        wanted = [s for s in wanted if s in ("ceiling", "vdfwd")]
    cases = cases_for(args)
    if args.only:
        only = set(args.only.split(","))
        cases = [c for c in cases if c.figure in only]

    info = machine()
    rows: list[dict] = []
    subj_info: list[dict] = []
    failures: list[str] = []
    t_start = time.monotonic()
    try:
        # Set every subject up first, then interleave: for each case, each subject in turn.
        # The machine's background load drifts; interleaving keeps the ratios of one case fair.
        live: list[str] = []
        for sname in wanted:
            subj = all_subjects[sname]
            why = subj.unavailable()
            subj_info.append({"name": sname, "description": subj.description, "unavailable": why})
            if not why:
                try:
                    subj.setup(run_dir)
                    subj_info[-1]["description"] = subj.description
                    subj.pause()
                except (Unavailable, RuntimeError) as e:
                    why = f"setup failed: {e}"
                    subj_info[-1]["unavailable"] = why
            if why:
                log(f"{sname}: NOT RUN: {why}")
                for c in cases:
                    rows.append({"subject": sname, "case": c.key, "_case": c, "mpps": None, "skipped": why,
                                 "unavailable": True})
                continue
            live.append(sname)
        for c in cases:
            measured = []
            for sname in live:
                subj = all_subjects[sname]
                row = {"subject": sname, "case": c.key, "_case": c}
                rows.append(row)
                why = subj.skip(c) or (PAIRGEN.unavailable() if c.gen == "pairgen" else None)
                if c.figure.startswith("smoke") and sname == "ceiling" and c.deny:
                    why = "the ceiling has no policy"
                if why:
                    row.update(mpps=None, skipped=why)
                else:
                    row["_rounds"] = []
                    measured.append((subj, row))
            # Rounds: each subject in turn, then again; ratios are taken per round (paired).
            for rnd in range(args.repeat):
                for subj, row in measured:
                    tag = f"{subj.name}: {c.key}" + (f" (round {rnd + 1}/{args.repeat})" if args.repeat > 1 else "")
                    log(tag)
                    subj.resume()
                    try:
                        m = measure_one(subj, c, run_dir, st)
                        log(f"{tag}: {m['mpps']:.3f} Mpps, {m['gbps']:.2f} Gbps")
                    except (RuntimeError, TimeoutError, OSError) as e:
                        m = {"mpps": None, "error": str(e)}
                        log(f"{tag}: ERROR {e}")
                    finally:
                        subj.pause()
                    row["_rounds"].append(m)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); cleaning up")
        failures.append("interrupted")
    finally:
        # Keep the logs of what ran, then undo everything.
        try:
            CLEANUP.run_all_but("run dir")
            copy_logs(run_dir, keep_logs)
        finally:
            CLEANUP.run_all()

    for r in rows:
        combine_rounds(r)
    order = {n: i for i, n in enumerate(wanted)}
    rows.sort(key=lambda r: order[r["subject"]])
    if args.smoke and "interrupted" not in failures:
        failures += smoke_verdict(rows, wanted, all_subjects, args.min_smoke_mpps)
    add_ratios(rows)
    info["elapsed_s"] = round(time.monotonic() - t_start, 1)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_outputs(out_dir, rows, info, subj_info, st)
    print_table(rows, info)
    if not args.smoke:
        why = plot(out_dir / "results.json", out_dir / "scaling.png")
        if why:
            log(why)
    log(f"results in {out_dir}")
    if failures:
        for f in failures:
            log(f"FAIL: {f}")
        return 1
    return 0


def find_vdfwd(smoke: bool, build: bool) -> Optional[Path]:
    """The vdfwd binary of THIS checkout: built here when the source exists and no binary does.

    A binary without the source on this branch (e.g. left in a shared target dir by another
    branch) is not used unless passed with --vdfwd. Full runs want a release build (a debug
    build's rates mean nothing); smoke accepts either.
    """
    if not (REPO / "vswitch" / "src" / "bin" / "vdfwd.rs").exists():
        return None
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    profiles = ["release", "debug"] if smoke else ["release"]
    if build and shutil.which("cargo"):
        prof = "debug" if smoke else "release"
        log(f"building vdfwd ({prof}) into {target}")
        argv = ["cargo", "build", "-p", "vswitch", "--bin", "vdfwd"] + ([] if smoke else ["--release"])
        r = subprocess.run(argv, cwd=REPO, env=dict(os.environ, CARGO_TARGET_DIR=str(target)))
        if r.returncode != 0:
            log("vdfwd build failed")
        profiles = [prof] + [p for p in profiles if p != prof]
    for prof in profiles:
        p = target / prof / "vdfwd"
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def vnic_counter(counters, vnic: str, key: str) -> Optional[int | dict]:
    """A per-vNIC counter from vdfwd's counters.json (a list of vNIC objects), if present."""
    if isinstance(counters, dict):
        counters = counters.get("vnics") or counters.get("ports")
    if not isinstance(counters, list):
        return None
    for v in counters:
        if isinstance(v, dict) and v.get("name") == vnic and isinstance(v.get(key), (int, dict)):
            return v[key]
    return None


def vnic_drop(counters, vnic: str, reason: str) -> Optional[int]:
    """One drop reason of a vNIC from counters.json (absent reasons are 0)."""
    if isinstance(counters, dict):
        counters = counters.get("vnics") or counters.get("ports")
    if not isinstance(counters, list):
        return None
    for v in counters:
        if isinstance(v, dict) and v.get("name") == vnic and isinstance(v.get("drops"), dict):
            n = v["drops"].get(reason, 0)
            return n if isinstance(n, int) else None
    return None


def smoke_verdict(rows: list[dict], wanted: list[str], subjects: dict[str, Subject], min_mpps: float) -> list[str]:
    """CI rules: the ceiling must move packets; vdfwd must forward with the allowing policy and
    forward nothing A -> B (generator port 1 receives nothing) with the denying one."""
    fails = []
    by = {(r["subject"], r["_case"].figure): r for r in rows}
    ceil = by.get(("ceiling", "smoke-allow"))
    if "ceiling" in wanted and (not ceil or not ceil.get("mpps")):
        fails.append(f"ceiling delivered nothing: {ceil and (ceil.get('error') or ceil.get('skipped'))}")
    if "vdfwd" in wanted:
        why = subjects["vdfwd"].unavailable()
        if why and (REPO / "vswitch" / "src" / "bin" / "vdfwd.rs").exists():
            # The source is here, so CI must test it: a missing binary is a failure.
            fails.append(f"vdfwd not run: {why}")
        elif why:
            log(f"smoke: vdfwd not run ({why}); smoke covered the ceiling subject only")
        else:
            allow, deny = by.get(("vdfwd", "smoke-allow")), by.get(("vdfwd", "smoke-deny"))
            if not allow or allow.get("mpps") is None or allow["mpps"] < min_mpps:
                fails.append(f"vdfwd with the allowing policy delivered {allow and allow.get('mpps')} Mpps "
                             f"(< {min_mpps}): {allow and allow.get('error')}")
            else:
                # Both directions must move: port 1 receives A's requests (policy allows them),
                # port 0 B's answers (only connection tracking lets those through).
                rx = allow.get("rx_packets_by_port") or {}
                for port, what in (("1", "A->B (allowed by policy)"), ("0", "B->A replies (conntrack)")):
                    if int(rx.get(port, 0)) == 0:
                        fails.append(f"vdfwd with the allowing policy forwarded nothing {what}")
            if not deny or deny.get("mpps") is None:
                fails.append(f"vdfwd deny run failed: {deny and deny.get('error')}")
            elif any(int(v) > 0 for v in deny["rx_packets_by_port"].values()):
                # A -> B is denied (A may open only UDP 1002) and B may open nothing: with no
                # connection A -> B there is nothing B's packets could be a reply to.
                fails.append(f"vdfwd forwarded {deny['rx_packets_by_port']} packets (by receiving generator "
                             f"port) that the policy denies")
            else:
                # Nothing forwarded proves something only if vdfwd received A's traffic and the
                # firewall, not something before it, refused it.
                seen = vnic_counter(deny.get("counters"), "bench-a0", "tx_packets")
                denied = vnic_drop(deny.get("counters"), "bench-a0", "policy_denied")
                if seen is None or denied is None:
                    log("smoke: vdfwd counters.json has no tx_packets/drops for bench-a0; cannot confirm the "
                        "denied traffic reached the firewall")
                elif seen == 0:
                    fails.append("vdfwd received nothing from vNIC A in the deny run: the deny check proves nothing")
                elif denied == 0:
                    fails.append(f"vdfwd forwarded nothing in the deny run but counted no policy_denied drop on "
                                 f"bench-a0 (drops: {vnic_counter(deny.get('counters'), 'bench-a0', 'drops')})")
    return fails


if __name__ == "__main__":
    sys.exit(main())
