//! Conntrack hot-path benchmarks.
//!
//! - `established/{1k,1M}`: a packet of an established TCP connection (alternating directions,
//!   full window check and state update) picked at random among N live connections.
//! - `established/lookup_only_{1k,1M}`: `ConnTrack::lookup` (probe + key compare, no update).
//! - `established/burst32_{1k,1M}`: the same through `process_burst`, 32 packets of one zone
//!   per call; time is per packet.
//! - `baseline_std_hashmap_u64/{1k,1M}`: a plain `HashMap<u64, u64>` lookup with the same
//!   random access pattern, as this machine's reference point.
//! - `new_connection/syn_commit`: first packet (SYN) of a new connection, decision closure and
//!   insert, with `expire(now, 2)` per packet keeping the table at a steady ~100k entries.
//! - `new_connection/udp_allowed`: the vswitch packet-rate harness's `newconn` traffic in one
//!   zone: a new UDP flow per packet, allowed, in a vdfwd-sized table kept at ~100k live
//!   entries by the worker's expiry budget.
//! - `growth/fill_1M_{presized,growing}`: 1M new connections into a table pre-sized for them
//!   or growing from 1024; time per insert, and the longest single insert (the biggest
//!   index rebuild) printed.
//! - Memory per connection is printed (counting global allocator and `memory_bytes()`).
//!
//! Run: `cargo bench -p dfw --bench conntrack -- --measurement-time 3 --warm-up-time 1`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, Criterion, Throughput};
use dfw::conntrack::{ConnTrack, CtConfig, CtVerdict, Decision, PacketMeta, TcpFlags, Zone, BURST};
use dfw::flow::{FiveTuple, IpProtocol};

/// Counts live heap bytes so the memory per connection is measured, not estimated.
struct CountingAlloc;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged
// and only adds bookkeeping on an atomic counter, so System's guarantees carry over.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's (non-zero-size layout), forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was returned by this allocator (i.e. by System) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr`/`layout` come from this allocator; `new_size` per the caller's contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const SEC: u64 = 1_000_000_000;
const ZONES: u32 = 16;

/// Unique tuple per `i` for any u32: 24 bits in the client address, 8 in the client port.
fn tuple(i: u32) -> FiveTuple {
    FiveTuple {
        src: IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 | (i & 0x00ff_ffff))),
        dst: IpAddr::V4(Ipv4Addr::new(172, 16, 0, 1)),
        protocol: IpProtocol::Tcp,
        src_port: 1024 + (i >> 24) as u16,
        dst_port: 443,
    }
}

fn zone(i: u32) -> Zone {
    Zone(i % ZONES)
}

fn isn(i: u32) -> [u32; 2] {
    [
        i.wrapping_mul(2_654_435_761),
        i.wrapping_mul(40_503).wrapping_add(7),
    ]
}

/// Pure ACK of established connection `i`, from the client (`dir` 0) or the server.
fn ack(i: u32, dir: usize) -> PacketMeta {
    let t = tuple(i);
    let s = isn(i);
    let (t, seq, ack) = if dir == 0 {
        (t, s[0].wrapping_add(1), s[1].wrapping_add(1))
    } else {
        (t.reversed(), s[1].wrapping_add(1), s[0].wrapping_add(1))
    };
    PacketMeta::tcp(t, TcpFlags::ACK, seq, ack, 502, 0).with_len(52)
}

fn config(n: u32, prealloc: bool) -> CtConfig {
    CtConfig {
        max_entries: n.max(1 << 20),
        max_entries_per_zone: n.max(1 << 20),
        initial_capacity: if prealloc { n } else { 1024 },
        ..CtConfig::default()
    }
}

/// A table with `n` established TCP connections (full handshakes).
fn build(n: u32, prealloc: bool) -> ConnTrack {
    let mut ct = ConnTrack::new(config(n, prealloc)).expect("valid config");
    for i in 0..n {
        let t = tuple(i);
        let s = isn(i);
        let z = zone(i);
        let syn = PacketMeta::tcp(t, TcpFlags::SYN, s[0], 0, 64_240, 0).with_wscale(7);
        let sa = PacketMeta::tcp(
            t.reversed(),
            TcpFlags::SYN | TcpFlags::ACK,
            s[1],
            s[0].wrapping_add(1),
            65_160,
            0,
        )
        .with_wscale(7);
        assert!(ct
            .process(z, &syn, 0, |_| Decision::Allow { mark: 1 })
            .passes());
        assert!(ct
            .process(z, &sa, 0, |_| Decision::Deny { mark: 0 })
            .passes());
        assert!(ct
            .process(z, &ack(i, 0), 0, |_| Decision::Deny { mark: 0 })
            .passes());
    }
    ct
}

/// Random order of `0..n` (xorshift Fisher-Yates; fixed seed for comparable runs).
fn shuffled(n: u32) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn report_memory(n: u32, prealloc: bool) -> ConnTrack {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let ct = build(n, prealloc);
    let after = LIVE_BYTES.load(Ordering::Relaxed);
    println!(
        "memory: {n} connections (prealloc={prealloc}): heap {:.1} B/conn (counting allocator), \
         {:.1} B/conn (memory_bytes), {} entries",
        (after - before) as f64 / f64::from(n),
        ct.memory_bytes() as f64 / f64::from(n),
        ct.len()
    );
    ct
}

fn established(c: &mut Criterion) {
    let mut group = c.benchmark_group("established");
    for (name, n) in [("1k", 1_000u32), ("1M", 1_000_000u32)] {
        // Built on first use, so that a filtered-out size costs nothing.
        let mut state: Option<(ConnTrack, Vec<u32>)> = None;
        let setup = |state: &mut Option<(ConnTrack, Vec<u32>)>| {
            if state.is_none() {
                if n == 1_000_000 {
                    drop(report_memory(n, false));
                }
                *state = Some((report_memory(n, true), shuffled(n)));
            }
        };
        let mut k = 0usize;
        let now = 10 * SEC;

        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| {
            setup(&mut state);
            let Some((ct, order)) = state.as_mut() else {
                return;
            };
            b.iter(|| {
                k += 1;
                let i = order[k % order.len()];
                let pkt = ack(i, k & 1);
                let v = ct.process(zone(i), black_box(&pkt), now, |_| Decision::Deny {
                    mark: 0,
                });
                debug_assert!(matches!(v, CtVerdict::Established { .. }));
                black_box(v)
            })
        });

        // Read-only lookup (`ConnTrack::lookup`): the hash probe and key compare alone.
        group.bench_function(format!("lookup_only_{name}"), |b| {
            setup(&mut state);
            let Some((ct, order)) = state.as_mut() else {
                return;
            };
            b.iter(|| {
                k += 1;
                let i = order[k % order.len()];
                let t = tuple(i);
                black_box(ct.lookup(zone(i), black_box(&t), now).map(|(d, _)| d))
            })
        });

        // Bursts of 32 packets of one zone (one vNIC queue poll) through process_burst.
        group.throughput(Throughput::Elements(BURST as u64));
        let mut pkts: Vec<PacketMeta> = Vec::with_capacity(BURST);
        let mut out: Vec<CtVerdict> = Vec::with_capacity(BURST);
        group.bench_function(format!("burst{BURST}_{name}"), |b| {
            setup(&mut state);
            let Some((ct, order)) = state.as_mut() else {
                return;
            };
            b.iter(|| {
                k += 1;
                let z = (k as u32) % ZONES;
                pkts.clear();
                for j in 0..BURST {
                    let r = order[(k * BURST + j) % order.len()];
                    let mut i = r - r % ZONES + z;
                    if i >= n {
                        i -= ZONES;
                    }
                    pkts.push(ack(i, j & 1));
                }
                ct.process_burst(
                    Zone(z),
                    black_box(&pkts),
                    now,
                    |_| Decision::Deny { mark: 0 },
                    &mut out,
                );
                debug_assert!(out
                    .iter()
                    .all(|v| matches!(v, CtVerdict::Established { .. })));
                black_box(out.len())
            })
        });

        if let Some((ct, _)) = &state {
            assert_eq!(
                ct.stats().new,
                u64::from(n),
                "no packet fell back to policy"
            );
            assert_eq!(ct.stats().total_drops(), 0, "every packet stayed in window");
        }
    }
    group.finish();
}

/// Reference points for this machine: the same random-access pattern on a plain
/// `std::collections::HashMap<u64, u64>` (SipHash), so conntrack figures can be read against
/// what the hardware gives a minimal hash lookup.
fn baseline(c: &mut Criterion) {
    let mut group = c.benchmark_group("baseline_std_hashmap_u64");
    group.throughput(Throughput::Elements(1));
    for (name, n) in [("1k", 1_000u32), ("1M", 1_000_000u32)] {
        let mut state: Option<(std::collections::HashMap<u64, u64>, Vec<u32>)> = None;
        let mut k = 0usize;
        group.bench_function(name, |b| {
            let (map, order) = state.get_or_insert_with(|| {
                (
                    (0..n)
                        .map(|i| (u64::from(i) * 7919, u64::from(i)))
                        .collect(),
                    shuffled(n),
                )
            });
            b.iter(|| {
                k += 1;
                let key = u64::from(order[k % order.len()]) * 7919;
                black_box(map.get(black_box(&key)).copied())
            })
        });
    }
    group.finish();
}

fn new_connection(c: &mut Criterion) {
    let mut group = c.benchmark_group("new_connection");
    group.throughput(Throughput::Elements(1));
    let mut ct = ConnTrack::new(config(1 << 20, false)).expect("valid config");
    let mut next: u32 = 0;
    let mut now: u64 = 0;
    // SYN timer 120 s / 1.2 ms of fake time per packet: ~100k live entries in steady state.
    let step = 1_200_000;
    group.bench_function("syn_commit", |b| {
        b.iter(|| {
            next = next.wrapping_add(1);
            now += step;
            let s = isn(next);
            let syn = PacketMeta::tcp(tuple(next), TcpFlags::SYN, s[0], 0, 64_240, 0);
            let v = ct.process(zone(next), black_box(&syn), now, |_| Decision::Allow {
                mark: 1,
            });
            ct.expire(now, 2);
            black_box(v)
        })
    });
    println!(
        "new_connection: {} entries live at the end, drops {}",
        ct.len(),
        ct.stats().total_drops()
    );

    // The vswitch harness's `newconn` traffic in one zone: unique UDP flows, all allowed,
    // into a table sized as vdfwd sizes it (2M, 64k up front). Fake time runs at 500k
    // packets/s and the UDP first-packet timer is 200 ms, so ~100k entries stay live; the
    // expiry budget is the vhost-user worker's (128 slots per 32-packet batch).
    let max = 2_097_152;
    let timeouts = dfw::conntrack::Timeouts {
        udp_first: std::time::Duration::from_millis(200),
        ..Default::default()
    };
    let mut ct = ConnTrack::new(CtConfig {
        max_entries: max,
        max_entries_per_zone: max,
        initial_capacity: 1 << 16,
        timeouts,
        ..CtConfig::default()
    })
    .expect("valid config");
    let mut next: u32 = 0;
    let mut now: u64 = 0;
    let udp = |next: &mut u32, now: &mut u64, ct: &mut ConnTrack| {
        *next = next.wrapping_add(1);
        *now += 2_000;
        let t = FiveTuple {
            src: IpAddr::V4(Ipv4Addr::new(10, 254, 0, 0)),
            dst: IpAddr::V4(Ipv4Addr::from_bits(0x0afd_0000u32.wrapping_add(*next))),
            protocol: IpProtocol::Udp,
            src_port: 1000,
            dst_port: 1001,
        };
        let v = ct.process(
            Zone(1),
            black_box(&PacketMeta::datagram(t, 46)),
            *now,
            |_| Decision::Allow { mark: 1 },
        );
        if next.is_multiple_of(32) {
            ct.expire(*now, 128);
        }
        v
    };
    for _ in 0..150_000 {
        assert!(matches!(
            udp(&mut next, &mut now, &mut ct),
            CtVerdict::New { .. }
        ));
    }
    group.bench_function("udp_allowed", |b| {
        b.iter(|| black_box(udp(&mut next, &mut now, &mut ct)))
    });
    println!(
        "new_connection/udp_allowed: {} entries live at the end, drops {}",
        ct.len(),
        ct.stats().total_drops()
    );
    group.finish();
}

/// Filling a table with `n` new connections from an `initial_capacity` of 1024 (growing:
/// the index doubles several times, its keys moving over a few per insert) against a
/// pre-sized table. Time is per insert; the longest single insert of the last fill is
/// printed (a growth allocating its doubled array or freeing the old one).
fn growth(c: &mut Criterion) {
    let mut group = c.benchmark_group("growth");
    group.sample_size(10);
    let n: u32 = 1 << 20;
    group.throughput(Throughput::Elements(u64::from(n)));
    for (name, prealloc) in [("fill_1M_presized", true), ("fill_1M_growing", false)] {
        let mut worst = std::time::Duration::ZERO;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let mut ct = ConnTrack::new(CtConfig {
                        max_entries: n,
                        max_entries_per_zone: n,
                        initial_capacity: if prealloc { n } else { 1024 },
                        hash_seed: Some(1),
                        ..CtConfig::default()
                    })
                    .expect("valid config");
                    worst = std::time::Duration::ZERO;
                    let start = std::time::Instant::now();
                    for i in 0..n {
                        let s = isn(i);
                        let syn = PacketMeta::tcp(tuple(i), TcpFlags::SYN, s[0], 0, 64_240, 0);
                        let t0 = std::time::Instant::now();
                        let v = ct.process(zone(i), &syn, 0, |_| Decision::Allow { mark: 1 });
                        worst = worst.max(t0.elapsed());
                        black_box(v);
                    }
                    total += start.elapsed();
                    assert_eq!(ct.len(), n as usize);
                }
                total
            })
        });
        println!("growth/{name}: longest single insert {worst:?}");
    }
    group.finish();
}

criterion_group!(benches, established, new_connection, baseline, growth);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
