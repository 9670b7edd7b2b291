//! Micro-benchmarks of the per-frame work that is ours (not the kernel's): WebSocket header
//! parse and in-place unmask, the switch decision, and flood fan-out to N client queues.
//! Run: `cargo bench --bench micro`.

use std::collections::VecDeque;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tapwire::switch::{ingress, Mac, Ownership, PortId, Source, Switch};
use tapwire::ws::{frame, Event, Session};

fn masked_frame(len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
    tapwire_testkit::ws::client_frame(frame::OP_BINARY, &payload)
}

fn parse_and_unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_parse_unmask");
    for len in [64usize, 512, 1514] {
        let wire = masked_frame(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &wire, |b, wire| {
            let mut session = Session::new(65_553, true);
            let mut buf = wire.clone();
            b.iter(|| {
                // Unmasking twice restores the buffer; the decoder unmasks once per call, so
                // restore the copy first (a 1.5 KB memcpy is included in every figure).
                buf.copy_from_slice(wire);
                let mut pos = 0;
                match session.next(black_box(&mut buf), &mut pos) {
                    Ok(Some(Event::Message(r))) => black_box(r),
                    other => panic!("{other:?}"),
                }
            });
        });
    }
    group.finish();
}

fn switch_lookup(c: &mut Criterion) {
    let mut sw = Switch::new(300_000);
    let mut own = Ownership::new(4);
    for i in 0..10_000u32 {
        let b = i.to_be_bytes();
        let port = PortId::new(0, 1, i);
        ingress(
            &mut sw,
            &mut own,
            Source::Port(port),
            Mac::BROADCAST,
            Mac([0x00, 0x22, b[0], b[1], b[2], b[3]]),
            0,
        )
        .expect("learn");
    }
    let src = Mac([0x00, 0x22, 0, 0, 0, 7]);
    let dst = Mac([0x00, 0x22, 0, 0, 0x13, 0x88]);
    c.bench_function("switch_known_unicast_10k_macs", |b| {
        b.iter(|| {
            ingress(
                &mut sw,
                &mut own,
                Source::Port(PortId::new(0, 1, 7)),
                black_box(dst),
                black_box(src),
                1,
            )
            .expect("forward")
        })
    });
}

fn flood_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("flood_fanout");
    for ports in [10usize, 100, 1000] {
        group.throughput(Throughput::Elements(ports as u64));
        group.bench_with_input(BenchmarkId::from_parameter(ports), &ports, |b, &ports| {
            // The engine's per-recipient work: a bounded-queue check, one queue push of a
            // buffer reference, one reference count increment.
            let mut queues: Vec<VecDeque<(u32, *const u8, u32)>> =
                (0..ports).map(|_| VecDeque::with_capacity(128)).collect();
            let mut refs = 0u32;
            let data = [0u8; 1514];
            b.iter(|| {
                for q in queues.iter_mut() {
                    if q.len() < 128 {
                        q.push_back((7, data.as_ptr(), 1514));
                        refs += 1;
                    }
                }
                for q in queues.iter_mut() {
                    q.pop_front();
                }
                black_box(refs)
            });
        });
    }
    group.finish();
}

/// The anti-spoofing check of one client frame: `guard::inspect` on an ICMP echo, then the
/// switch decision with the claimed address compared to the entry's binding.
fn guard_check(c: &mut Criterion) {
    use std::net::Ipv4Addr;
    use tapwire::switch::guard::inspect;
    use tapwire::switch::{ingress_claiming, Binding};
    let src = Mac([0x00, 0x22, 0, 0, 0, 7]);
    let gateway = Mac([0x02, 0, 0, 0, 0, 1]);
    let frame = tapwire_testkit::packet::icmp_echo(
        gateway.0,
        src.0,
        Ipv4Addr::new(10, 86, 0, 50),
        Ipv4Addr::new(10, 86, 0, 1),
        1,
        1,
        0,
    );
    let mut sw = Switch::new(300_000);
    let mut own = Ownership::new(4);
    own.bind(src, Binding::lease([10, 86, 0, 50], 3600, 0), 0);
    let port = PortId::new(0, 1, 7);
    ingress(
        &mut sw,
        &mut own,
        Source::Port(port),
        Mac::BROADCAST,
        src,
        0,
    )
    .expect("learn");
    sw.set_binding(src, own.binding(src, 0));
    c.bench_function("guard_inspect_icmp", |b| {
        b.iter(|| inspect(black_box(&frame), black_box(src)).expect("passes"))
    });
    c.bench_function("switch_unicast_with_binding_check", |b| {
        b.iter(|| {
            let claim = inspect(black_box(&frame), src).expect("passes");
            ingress_claiming(
                &mut sw,
                &mut own,
                Source::Port(port),
                black_box(gateway),
                black_box(src),
                claim.address.map(|(ip, _)| ip),
                1,
            )
            .expect("forward")
        })
    });
    c.bench_function("switch_unicast_without_check", |b| {
        b.iter(|| {
            ingress(
                &mut sw,
                &mut own,
                Source::Port(port),
                black_box(gateway),
                black_box(src),
                1,
            )
            .expect("forward")
        })
    });
}

criterion_group!(
    benches,
    parse_and_unmask,
    switch_lookup,
    flood_fanout,
    guard_check
);
criterion_main!(benches);
