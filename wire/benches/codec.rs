//! Decode/encode cost of the hot packets. Run:
//! `cargo bench -p ringmq-wire --bench codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringmq_wire::*;

fn publish(qos: QoS, v5_properties: bool) -> Packet {
    let mut properties = PublishProperties::default();
    if v5_properties {
        properties.message_expiry_interval = Some(3600);
        properties
            .user_properties
            .push(("vin".into(), "WVWZZZ1JZXW000001".into()));
    }
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: "fleet/vehicle/WVWZZZ1JZXW000001/telemetry".into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(NonZeroU16::MIN),
        properties,
        payload: Bytes::from(vec![0x5A; 100]),
    })
}

fn connect() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: false,
        keep_alive_secs: 60,
        client_id: "vehicle-WVWZZZ1JZXW000001".into(),
        will: Some(LastWill {
            topic: "fleet/vehicle/WVWZZZ1JZXW000001/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties::default(),
        }),
        username: Some("vehicle".into()),
        password: Some(Bytes::from_static(b"secret-token-0123456789")),
        properties: ConnectProperties::default(),
    }))
}

fn subscribe() -> Packet {
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..SubscriptionOptions::default()
    };
    Packet::Subscribe(Subscribe {
        packet_id: NonZeroU16::MIN,
        filters: vec![
            ("fleet/vehicle/WVWZZZ1JZXW000001/cmd/#".into(), options),
            ("fleet/broadcast/+".into(), options),
        ],
        properties: SubscribeProperties::default(),
    })
}

fn bench(c: &mut Criterion) {
    let cases = [
        (
            "publish_qos0_v311",
            publish(QoS::AtMostOnce, false),
            ProtocolVersion::V3_1_1,
        ),
        (
            "publish_qos0_v5_props",
            publish(QoS::AtMostOnce, true),
            ProtocolVersion::V5,
        ),
        (
            "publish_qos1_v311",
            publish(QoS::AtLeastOnce, false),
            ProtocolVersion::V3_1_1,
        ),
        ("connect_v311", connect(), ProtocolVersion::V3_1_1),
        ("subscribe_v311", subscribe(), ProtocolVersion::V3_1_1),
    ];
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    for (name, packet, version) in &cases {
        let mut out = BytesMut::new();
        encode(packet, *version, &mut out).expect("bench packet encodes");
        let frame = out.freeze();
        group.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| {
                let frame = black_box(frame.clone());
                let framing = check(&frame, u32::MAX).expect("frame checks");
                black_box(framing);
                decode(frame, *version).expect("frame decodes")
            })
        });
        let mut buffer = BytesMut::with_capacity(1024);
        group.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                buffer.clear();
                encode(black_box(packet), *version, &mut buffer).expect("packet encodes");
                black_box(buffer.len())
            })
        });
        if let Packet::Publish(publish) = packet {
            group.bench_function(format!("encode_header/{name}"), |b| {
                b.iter(|| {
                    buffer.clear();
                    encode_publish_header(black_box(publish), *version, &mut buffer)
                        .expect("header encodes");
                    black_box(buffer.len())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
