//! ringmq's TLS 1.3 record layer (`edge::record`): one `seal` (the server's transmit: key
//! expanded on the stack, one record sealed) and one `open` (a receive of one record) per
//! plaintext size, 64 B (a small publish), 1 KiB and 16 KiB (a full record, RFC 8446 5.1).
//! Synthetic traffic keys, the same for both directions, so what one seals the other opens.
//! AES-256-GCM and ChaCha20-Poly1305 (rustls' public key type is 32 bytes, which AES-128-GCM
//! does not take). `cargo bench -p ringmq-shard --bench record`.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringmq_shard::edge::record::{self, RecordKeys};
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

const SIZES: [usize; 3] = [64, 1024, 16 * 1024];

fn secret(chacha: bool) -> ConnectionTrafficSecrets {
    let key = AeadKey::from([7u8; 32]);
    let iv = Iv::from([9u8; 12]);
    if chacha {
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
    } else {
        ConnectionTrafficSecrets::Aes256Gcm { key, iv }
    }
}

fn keys(chacha: bool) -> RecordKeys {
    RecordKeys::from_secrets(ExtractedSecrets {
        tx: (0, secret(chacha)),
        rx: (0, secret(chacha)),
    })
    .expect("a suite the record layer handles")
}

fn bench_records(c: &mut Criterion) {
    for (name, chacha) in [("aes256gcm", false), ("chacha20poly1305", true)] {
        let mut group = c.benchmark_group(format!("record/{name}"));
        for size in SIZES {
            let data = vec![0x5au8; size];
            group.throughput(Throughput::Bytes(size as u64));
            let mut k = keys(chacha);
            let mut out = BytesMut::with_capacity(size + 64);
            group.bench_function(format!("seal/{size}"), |b| {
                b.iter(|| {
                    out.clear();
                    record::seal(&mut k.tx, &data, &mut out).expect("seal");
                })
            });
            // Each record is sealed (in the untimed setup) with the sequence number the
            // opening side expects next.
            let RecordKeys { mut tx, mut rx } = keys(chacha);
            let (mut pending, mut work, mut plain) =
                (BytesMut::new(), BytesMut::new(), BytesMut::new());
            group.bench_function(format!("open/{size}"), |b| {
                b.iter_batched(
                    || {
                        let mut rec = BytesMut::with_capacity(size + 64);
                        record::seal(&mut tx, &data, &mut rec).expect("seal");
                        rec
                    },
                    |rec| {
                        plain.clear();
                        let closed =
                            record::open(&mut rx, &mut pending, &rec, &mut work, &mut plain)
                                .expect("open");
                        assert!(!closed && plain.len() == size);
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_records);
criterion_main!(benches);
