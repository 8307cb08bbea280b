//! Proptest strategies shared by the integration tests.
#![allow(dead_code)]

use std::num::NonZeroU16;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use ringmq_wire::*;
use smallvec::SmallVec;

pub fn text() -> impl Strategy<Value = Utf8Bytes> {
    "[a-zA-Z0-9 äß€/_-]{0,12}".prop_map(Utf8Bytes::from)
}

pub fn topic_name() -> impl Strategy<Value = Utf8Bytes> {
    "[a-z$]{1,4}(/[a-z0-9]{0,4}){0,3}".prop_map(Utf8Bytes::from)
}

pub fn topic_filter() -> impl Strategy<Value = Utf8Bytes> {
    let level = prop_oneof!["[a-z]{0,3}", Just("+".to_string())];
    (vec(level, 1..4), any::<bool>(), option::of("[a-z]{1,4}")).prop_map(|(levels, hash, share)| {
        let mut filter = levels.join("/");
        if filter.is_empty() {
            filter.push('e');
        }
        if hash {
            filter.push_str("/#");
        }
        if let Some(group) = share {
            filter = format!("$share/{group}/{filter}");
        }
        Utf8Bytes::from(filter)
    })
}

pub fn data() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

pub fn packet_id() -> impl Strategy<Value = NonZeroU16> {
    (1u16..=u16::MAX).prop_map(|id| NonZeroU16::new(id).unwrap())
}

pub fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn user_properties() -> impl Strategy<Value = UserProperties> {
    vec((text(), text()), 0..3)
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    option::of(0u8..=1)
}

fn reason(kind: u8) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<ReasonCode> = ReasonCode::allowed_codes(kind)
        .iter()
        .map(|&code| ReasonCode::try_from(code).unwrap())
        .collect();
    proptest::sample::select(codes)
}

pub fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(1u16..),
        option::of(1u32..),
        option::of(any::<u16>()),
        flag(),
        flag(),
        user_properties(),
        option::of(text()),
        option::of(data()),
    )
        .prop_map(|(sei, rm, mps, tam, rri, rpi, user, method, data)| {
            let authentication_data = if method.is_some() { data } else { None };
            ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties: user,
                authentication_method: method,
                authentication_data,
            }
        })
}

pub fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        option::of(any::<u32>()),
        flag(),
        option::of(any::<u32>()),
        option::of(text()),
        option::of(topic_name()),
        option::of(data()),
        user_properties(),
    )
        .prop_map(
            |(delay, pfi, expiry, content, response, correlation, user)| WillProperties {
                will_delay_interval: delay,
                payload_format_indicator: pfi,
                message_expiry_interval: expiry,
                content_type: content,
                response_topic: response,
                correlation_data: correlation,
                user_properties: user,
            },
        )
}

pub fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            option::of(any::<u32>()),
            option::of(1u16..),
            flag(),
            flag(),
            option::of(1u32..),
            option::of(text()),
            option::of(any::<u16>()),
            option::of(text()),
            user_properties(),
        ),
        (
            flag(),
            flag(),
            flag(),
            option::of(any::<u16>()),
            option::of(text()),
            option::of(text()),
            option::of(text()),
            option::of(data()),
        ),
    )
        .prop_map(
            |((sei, rm, mq, ra, mps, aci, tam, rs, user), (wsa, sia, ssa, ska, ri, sr, am, ad))| {
                ConnAckProperties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: user,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                }
            },
        )
}

pub fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        flag(),
        option::of(any::<u32>()),
        option::of(1u16..),
        option::of(topic_name()),
        option::of(data()),
        user_properties(),
        vec(1u32..=VBI_MAX, 0..3),
        option::of(text()),
    )
        .prop_map(
            |(pfi, expiry, alias, response, correlation, user, ids, content)| PublishProperties {
                payload_format_indicator: pfi,
                message_expiry_interval: expiry,
                topic_alias: alias,
                response_topic: response,
                correlation_data: correlation,
                user_properties: user,
                subscription_identifiers: SmallVec::from_vec(ids),
                content_type: content,
            },
        )
}

pub fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (option::of(text()), user_properties()).prop_map(|(reason_string, user_properties)| {
        AckProperties {
            reason_string,
            user_properties,
        }
    })
}

fn connect(protocol: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = protocol.is_v5();
    let will = (
        topic_name(),
        data(),
        qos(),
        any::<bool>(),
        will_properties(),
    )
        .prop_map(move |(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties: if v5 {
                properties
            } else {
                WillProperties::default()
            },
        });
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        option::of(will),
        option::of(text()),
        option::of(data()),
        connect_properties(),
    )
        .prop_map(
            move |(
                clean_start,
                keep_alive_secs,
                client_id,
                will,
                username,
                password,
                properties,
            )| {
                // [MQTT-3.1.2-22]: v3.x needs a user name for a password.
                let password = if v5 || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol,
                    clean_start,
                    keep_alive_secs,
                    client_id,
                    will,
                    username,
                    password,
                    properties: if v5 {
                        properties
                    } else {
                        ConnectProperties::default()
                    },
                }))
            },
        )
        .boxed()
}

fn publish(v5: bool) -> BoxedStrategy<Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        publish_properties(),
        data(),
        any::<bool>(),
    )
        .prop_map(
            move |(dup, qos, retain, topic, id, properties, payload, alias_only)| {
                let qos0 = qos == QoS::AtMostOnce;
                // v5 3.3.2.3.4: with a topic alias the topic name may be empty.
                let alias_only = alias_only && v5 && properties.topic_alias.is_some();
                Packet::Publish(Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic: if alias_only {
                        Utf8Bytes::default()
                    } else {
                        topic
                    },
                    packet_id: if qos0 { None } else { Some(id) },
                    properties: if v5 {
                        properties
                    } else {
                        PublishProperties::default()
                    },
                    payload,
                })
            },
        )
        .boxed()
}

fn pub_ack(kind: u8, v5: bool) -> BoxedStrategy<PubAck> {
    (packet_id(), reason(kind), ack_properties())
        .prop_map(move |(packet_id, reason_code, properties)| {
            if v5 {
                PubAck {
                    packet_id,
                    reason_code,
                    properties,
                }
            } else {
                PubAck::new(packet_id)
            }
        })
        .boxed()
}

fn subscription_options(v5: bool) -> impl Strategy<Value = SubscriptionOptions> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(RetainHandling::SendAtSubscribe),
            Just(RetainHandling::SendAtSubscribeIfNew),
            Just(RetainHandling::DoNotSend)
        ],
    )
        .prop_map(
            move |(qos, no_local, retain_as_published, retain_handling)| {
                if v5 {
                    SubscriptionOptions {
                        qos,
                        no_local,
                        retain_as_published,
                        retain_handling,
                    }
                } else {
                    SubscriptionOptions {
                        qos,
                        ..SubscriptionOptions::default()
                    }
                }
            },
        )
}

/// Every packet kind valid in `version` (for v3.x: empty properties, representable codes).
pub fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let connack = (
        any::<bool>(),
        reason(packet_type::CONNACK),
        connack_properties(),
    )
        .prop_map(move |(session_present, reason_code, properties)| {
            Packet::ConnAck(if v5 {
                ConnAck {
                    session_present,
                    reason_code,
                    properties,
                }
            } else {
                ConnAck {
                    session_present: session_present && version == ProtocolVersion::V3_1_1,
                    reason_code: ReasonCode::from_v3_connack(reason_code.to_v3_connack()).unwrap(),
                    properties: ConnAckProperties::default(),
                }
            })
        });
    let subscribe = (
        packet_id(),
        vec((topic_filter(), subscription_options(v5)), 1..4),
        option::of(1u32..=VBI_MAX),
        user_properties(),
    )
        .prop_map(move |(packet_id, mut filters, id, user)| {
            for (filter, options) in &mut filters {
                // [MQTT-3.8.3-4]: no local is not allowed on shared subscriptions.
                if filter.starts_with("$share/") {
                    options.no_local = false;
                }
            }
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties: if v5 {
                    SubscribeProperties {
                        subscription_identifier: id,
                        user_properties: user,
                    }
                } else {
                    SubscribeProperties::default()
                },
            })
        });
    let suback = (
        packet_id(),
        vec(reason(packet_type::SUBACK), 0..4),
        ack_properties(),
    )
        .prop_map(move |(packet_id, codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes: if v5 {
                    codes
                } else {
                    codes
                        .into_iter()
                        .map(|code| ReasonCode::try_from(code.to_v3_suback()).unwrap())
                        .collect()
                },
                properties: if v5 {
                    properties
                } else {
                    AckProperties::default()
                },
            })
        });
    let unsubscribe = (packet_id(), vec(topic_filter(), 1..4), user_properties()).prop_map(
        move |(packet_id, filters, user)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties: AckProperties {
                    reason_string: None,
                    user_properties: if v5 { user } else { Vec::new() },
                },
            })
        },
    );
    let unsuback = (
        packet_id(),
        vec(reason(packet_type::UNSUBACK), 0..4),
        ack_properties(),
    )
        .prop_map(move |(packet_id, codes, properties)| {
            Packet::UnsubAck(if v5 {
                UnsubAck {
                    packet_id,
                    reason_codes: codes,
                    properties,
                }
            } else {
                UnsubAck {
                    packet_id,
                    reason_codes: Vec::new(),
                    properties: AckProperties::default(),
                }
            })
        });
    let disconnect = (
        reason(packet_type::DISCONNECT),
        option::of(any::<u32>()),
        option::of(text()),
        user_properties(),
        option::of(text()),
    )
        .prop_map(move |(reason_code, sei, rs, user, sr)| {
            Packet::Disconnect(if v5 {
                Disconnect {
                    reason_code,
                    properties: DisconnectProperties {
                        session_expiry_interval: sei,
                        reason_string: rs,
                        user_properties: user,
                        server_reference: sr,
                    },
                }
            } else {
                Disconnect::default()
            })
        });
    let mut kinds: Vec<BoxedStrategy<Packet>> = vec![
        connect(version),
        connack.boxed(),
        publish(v5),
        pub_ack(packet_type::PUBACK, v5)
            .prop_map(Packet::PubAck)
            .boxed(),
        pub_ack(packet_type::PUBREC, v5)
            .prop_map(Packet::PubRec)
            .boxed(),
        pub_ack(packet_type::PUBREL, v5)
            .prop_map(Packet::PubRel)
            .boxed(),
        pub_ack(packet_type::PUBCOMP, v5)
            .prop_map(Packet::PubComp)
            .boxed(),
        subscribe.boxed(),
        suback.boxed(),
        unsubscribe.boxed(),
        unsuback.boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect.boxed(),
    ];
    if v5 {
        let auth = (
            reason(packet_type::AUTH),
            option::of(text()),
            option::of(data()),
            option::of(text()),
            user_properties(),
        )
            .prop_map(|(reason_code, am, ad, rs, user)| {
                Packet::Auth(Auth {
                    reason_code,
                    properties: AuthProperties {
                        authentication_method: am,
                        authentication_data: ad,
                        reason_string: rs,
                        user_properties: user,
                    },
                })
            });
        kinds.push(auth.boxed());
    }
    proptest::strategy::Union::new(kinds).boxed()
}
