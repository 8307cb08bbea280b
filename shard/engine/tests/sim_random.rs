//! Seeded random runs on three shards with random link delays: stable subscribers, publishers
//! that reconnect and take themselves over, and churning clients that subscribe, unsubscribe,
//! join a shared group and vanish. Checked at the end:
//! - every QoS 1 publish that got its PUBACK reached every stable subscriber exactly once, in the
//!   order each publisher connection sent them [MQTT-4.6.0-6] (two connections racing for one
//!   client id have no order between them: the engine drives ready connections by id);
//! - no route barrier is left waiting, and each engine's online count matches the clients it
//!   still serves.

mod sim;

use std::collections::HashMap;
use std::time::Duration;

use ringmq_engine::Limits;
use sim::*;
use wire::{Packet, ProtocolVersion, QoS, ReasonCode};

const SHARDS: u16 = 3;
const STABLE: usize = 3;
const PUBLISHERS: u32 = 4;
const CHURN_IDS: usize = 6;
const OPS: usize = 600;

/// Publisher `who`, message `seq`.
fn payload(who: u32, seq: u32) -> Vec<u8> {
    let mut p = who.to_be_bytes().to_vec();
    p.extend_from_slice(&seq.to_be_bytes());
    p
}

fn parse(payload: &[u8]) -> (u32, u32) {
    let who: [u8; 4] = payload[..4].try_into().unwrap_or_default();
    let seq: [u8; 4] = payload[4..8].try_into().unwrap_or_default();
    (u32::from_be_bytes(who), u32::from_be_bytes(seq))
}

struct Publisher {
    id: String,
    client: Option<Client>,
    next_seq: u32,
    /// Packet id → seq, sent and not yet acknowledged on the current connection.
    unacked: HashMap<u16, u32>,
    acked: Vec<u32>,
    /// The connection each seq was sent on: order is promised per connection only (two
    /// connections racing for one client id have no order between them).
    sent_on: HashMap<u32, Client>,
    next_packet_id: u16,
}

/// Reads what `c` received: QoS 1/2 publishes are acknowledged (QoS 2 fully, as the engine
/// sends PUBREL). Returns the publishes.
fn drain(sim: &mut Sim, c: Client) -> Vec<wire::Publish> {
    let mut got = Vec::new();
    for packet in sim.recv_all(c) {
        match packet {
            Packet::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => sim.send(c, &puback(packet_id_of(&p))),
                    QoS::ExactlyOnce => sim.send(c, &pubrec(packet_id_of(&p))),
                }
                got.push(p);
            }
            Packet::PubRel(a) => sim.send(c, &pubcomp(a.packet_id.get())),
            _ => {}
        }
    }
    got
}

fn run(seed: u64) {
    let limits = Limits {
        session_queue_len_max: 10_000,
        ..Limits::default()
    };
    let mut sim = Sim::seeded(SHARDS, limits, seed, 3);

    // Stable subscribers, connected through random shards (hand-offs included).
    let mut stable = Vec::new();
    for i in 0..STABLE {
        let accept = (sim.rng().next_u64() % u64::from(SHARDS)) as u16;
        let (c, _) = sim.connect(accept, v5(&format!("stable-{i}")));
        let filter = ["r/#", "r/+", "#"][i % 3];
        assert_eq!(
            sim.subscribe(c, filter, QoS::AtLeastOnce).reason_codes,
            [ReasonCode::GrantedQoS1]
        );
        stable.push(c);
    }
    let mut received: Vec<Vec<(u32, u32)>> = vec![Vec::new(); STABLE];

    let mut publishers: Vec<Publisher> = (0..PUBLISHERS)
        .map(|i| Publisher {
            id: format!("pub-{i}"),
            client: None,
            next_seq: 0,
            unacked: HashMap::new(),
            acked: Vec::new(),
            sent_on: HashMap::new(),
            next_packet_id: 1,
        })
        .collect();
    let mut churn: Vec<Option<Client>> = vec![None; CHURN_IDS];

    for _ in 0..OPS {
        let op = sim.rng().upto(99);
        match op {
            // Publish QoS 1 (connecting first if needed).
            0..=39 => {
                let who = (sim.rng().next_u64() % u64::from(PUBLISHERS)) as usize;
                let accept = (sim.rng().next_u64() % u64::from(SHARDS)) as u16;
                let p = &mut publishers[who];
                let client = match p.client.filter(|c| !sim.is_closed(*c)) {
                    Some(c) => c,
                    None => {
                        let c = sim.open(accept);
                        sim.send(c, &Packet::Connect(Box::new(v5(&p.id))));
                        p.client = Some(c);
                        p.unacked.clear();
                        c
                    }
                };
                let seq = p.next_seq;
                p.next_seq += 1;
                let packet_id = p.next_packet_id;
                p.next_packet_id = p.next_packet_id % 1000 + 1;
                p.unacked.insert(packet_id, seq);
                p.sent_on.insert(seq, client);
                let topic = format!("r/{who}");
                let body = payload(who as u32, seq);
                sim.send(
                    client,
                    &publish(&topic, &body, QoS::AtLeastOnce, Some(packet_id)),
                );
            }
            // A publisher reconnects: its new connection takes the session over.
            40..=44 => {
                let who = (sim.rng().next_u64() % u64::from(PUBLISHERS)) as usize;
                let accept = (sim.rng().next_u64() % u64::from(SHARDS)) as u16;
                let c = sim.open(accept);
                sim.send(c, &Packet::Connect(Box::new(v5(&publishers[who].id))));
                publishers[who].client = Some(c);
                publishers[who].unacked.clear();
            }
            // A churning client: connect (maybe taking over), subscribe, unsubscribe, leave.
            45..=79 => {
                let slot = (sim.rng().next_u64() % CHURN_IDS as u64) as usize;
                let action = sim.rng().upto(5);
                let live = churn[slot].filter(|c| !sim.is_closed(*c));
                match (live, action) {
                    (None, _) | (Some(_), 0) => {
                        let accept = (sim.rng().next_u64() % u64::from(SHARDS)) as u16;
                        let version = if sim.rng().upto(1) == 0 {
                            ProtocolVersion::V5
                        } else {
                            ProtocolVersion::V3_1_1
                        };
                        let mut connect = connect(version, &format!("churn-{slot}"));
                        connect.clean_start = sim.rng().upto(1) == 0;
                        if version == ProtocolVersion::V5 && !connect.clean_start {
                            connect.properties.session_expiry_interval = Some(30);
                        }
                        let c = sim.open(accept);
                        sim.send(c, &Packet::Connect(Box::new(connect)));
                        churn[slot] = Some(c);
                    }
                    (Some(c), 1 | 2) => {
                        let filters = ["r/#", "r/1", "$share/g/r/+", "x/y", "r/+"];
                        let f = filters[(sim.rng().next_u64() % 5) as usize];
                        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
                            [(sim.rng().next_u64() % 3) as usize];
                        sim.send(c, &subscribe(7, &[(f, qos)]));
                    }
                    (Some(c), 3) => {
                        sim.send(
                            c,
                            &Packet::Unsubscribe(wire::Unsubscribe {
                                packet_id: pid(8),
                                filters: vec!["r/#".into(), "$share/g/r/+".into()],
                                properties: Default::default(),
                            }),
                        );
                    }
                    (Some(c), 4) => sim.drop_connection(c),
                    (Some(c), _) => sim.send(c, &disconnect(ReasonCode::Success)),
                }
            }
            // Let the shards run a turn or a few.
            80..=94 => {
                let turns = sim.rng().upto(3);
                for _ in 0..turns {
                    sim.step();
                }
            }
            // Everybody reads what it got.
            _ => {
                for (i, &c) in stable.iter().enumerate() {
                    for p in drain(&mut sim, c) {
                        received[i].push(parse(&p.payload));
                    }
                }
                for c in churn.iter().flatten() {
                    if !sim.is_closed(*c) {
                        drain(&mut sim, *c);
                    } else {
                        sim.recv_all(*c);
                    }
                }
                collect_acks(&mut sim, &mut publishers);
            }
        }
        if sim.rng().upto(49) == 0 {
            sim.advance(Duration::from_secs(1));
        }
    }

    // Settle: run, read and acknowledge until nothing moves.
    for _ in 0..100 {
        sim.run_until_idle();
        let mut moved = false;
        for (i, &c) in stable.iter().enumerate() {
            for p in drain(&mut sim, c) {
                moved = true;
                received[i].push(parse(&p.payload));
            }
        }
        for c in churn.iter().flatten() {
            if !sim.is_closed(*c) {
                moved |= !drain(&mut sim, *c).is_empty();
            }
        }
        collect_acks(&mut sim, &mut publishers);
        if !moved && sim.is_idle() {
            break;
        }
    }

    // Every acknowledged publish reached every stable subscriber exactly once, in order.
    for (i, got) in received.iter().enumerate() {
        for (who, p) in publishers.iter().enumerate() {
            let from_who: Vec<u32> = got
                .iter()
                .filter(|(w, _)| *w == who as u32)
                .map(|(_, s)| *s)
                .collect();
            let mut sorted = from_who.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(
                sorted.len(),
                from_who.len(),
                "stable-{i} got duplicates from {who}"
            );
            let mut last_on: HashMap<Client, u32> = HashMap::new();
            for seq in &from_who {
                let Some(&conn) = p.sent_on.get(seq) else {
                    panic!("stable-{i} got seq {seq} publisher {who} never sent");
                };
                if let Some(before) = last_on.insert(conn, *seq) {
                    assert!(
                        before < *seq,
                        "stable-{i}: publisher {who} seq {seq} after {before} on one connection"
                    );
                }
            }
            let from_who = sorted;
            for seq in &p.acked {
                assert!(
                    from_who.binary_search(seq).is_ok(),
                    "stable-{i} missed acknowledged message {seq} of publisher {who}"
                );
            }
        }
    }
    assert_eq!(sim.barriers_pending(), 0, "route barriers left waiting");
    for shard in 0..SHARDS {
        let online = sim.engine(shard).state.sessions_online();
        let clients = sim.open_clients_on(shard);
        assert!(
            online as usize == clients,
            "shard {shard}: {online} online sessions for {clients} open clients"
        );
    }
}

/// Moves PUBACKed seqs of each publisher into `acked` (ignores CONNACKs and the rest).
fn collect_acks(sim: &mut Sim, publishers: &mut [Publisher]) {
    for p in publishers.iter_mut() {
        let Some(c) = p.client else { continue };
        for packet in sim.recv_all(c) {
            if let Packet::PubAck(a) = packet {
                if let Some(seq) = p.unacked.remove(&a.packet_id.get()) {
                    p.acked.push(seq);
                }
            }
        }
        p.acked.sort_unstable();
    }
}

#[test]
fn random_runs() {
    for seed in seeds(24) {
        run(seed);
    }
}

/// A client's QoS 2 receiver state: packet ids received and not yet released. It survives
/// reconnects (it is session state on the client side too).
#[derive(Default)]
struct Qos2Receiver {
    awaiting_release: std::collections::HashSet<u16>,
    delivered: Vec<(u32, u32)>,
}

impl Qos2Receiver {
    /// Reads what `c` received and answers it as a correct client: a QoS 2 PUBLISH whose id
    /// awaits PUBREL is a duplicate (it must carry DUP) and is answered, not delivered.
    fn read(&mut self, sim: &mut Sim, c: Client) {
        for packet in sim.recv_all(c) {
            match packet {
                Packet::Publish(p) => {
                    assert_eq!(p.qos, QoS::ExactlyOnce, "{p:?}");
                    let id = packet_id_of(&p);
                    if self.awaiting_release.insert(id) {
                        self.delivered.push(parse(&p.payload));
                    } else {
                        assert!(p.dup, "a resent QoS 2 PUBLISH without DUP: {p:?}");
                    }
                    sim.send(c, &pubrec(id));
                }
                Packet::PubRel(a) => {
                    self.awaiting_release.remove(&a.packet_id.get());
                    sim.send(c, &pubcomp(a.packet_id.get()));
                }
                Packet::ConnAck(a) => assert!(a.session_present, "session lost: {a:?}"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// QoS 2 end to end while subscribers keep losing their connections (unread bytes are lost
/// with them) and resume their sessions through random shards: every message a publisher got
/// PUBREC for is delivered exactly once to every subscriber [MQTT-4.3.3], [MQTT-4.4.0-1].
fn run_qos2_reconnecting(seed: u64) {
    let limits = Limits {
        session_queue_len_max: 10_000,
        ..Limits::default()
    };
    let mut sim = Sim::seeded(SHARDS, limits, seed, 3);
    let subscribers = 3;
    let mut subs: Vec<(Client, Qos2Receiver)> = Vec::new();
    for i in 0..subscribers {
        let accept = (sim.rng().next_u64() % u64::from(SHARDS)) as u16;
        let (c, _) = sim.connect(accept, v5_persistent(&format!("q2sub-{i}"), 3600));
        assert_eq!(
            sim.subscribe(c, "q/#", QoS::ExactlyOnce).reason_codes,
            [ReasonCode::GrantedQoS2]
        );
        subs.push((c, Qos2Receiver::default()));
    }
    let publishers: Vec<Client> = (0..2)
        .map(|i| {
            let accept = (sim.rng().next_u64() % u64::from(SHARDS)) as u16;
            sim.connect(accept, v5(&format!("q2pub-{i}"))).0
        })
        .collect();
    let mut next_seq = [0u32; 2];
    let mut sent: Vec<HashMap<u16, u32>> = vec![HashMap::new(); 2];
    let mut accepted: Vec<(u32, u32)> = Vec::new();

    for _ in 0..400 {
        match sim.rng().upto(9) {
            0..=3 => {
                let who = (sim.rng().next_u64() % 2) as usize;
                if sent[who].len() < 50 {
                    let seq = next_seq[who];
                    next_seq[who] += 1;
                    let packet_id = (seq % 60_000 + 1) as u16;
                    sent[who].insert(packet_id, seq);
                    let body = payload(who as u32, seq);
                    sim.send(
                        publishers[who],
                        &publish("q/x", &body, QoS::ExactlyOnce, Some(packet_id)),
                    );
                }
            }
            4 => {
                // A subscriber loses its connection; what it had not read is lost.
                let i = (sim.rng().next_u64() % subscribers as u64) as usize;
                let (c, _) = subs[i];
                if !sim.is_closed(c) {
                    sim.drop_connection(c);
                    sim.run_until_idle();
                    sim.take_bytes(c);
                }
            }
            5 => {
                // It comes back, through any shard.
                let i = (sim.rng().next_u64() % subscribers as u64) as usize;
                if sim.is_closed(subs[i].0) {
                    let accept = (sim.rng().next_u64() % u64::from(SHARDS)) as u16;
                    let c = sim.open(accept);
                    let connect = v5_persistent(&format!("q2sub-{i}"), 3600);
                    sim.send(c, &Packet::Connect(Box::new(connect)));
                    subs[i].0 = c;
                }
            }
            6..=7 => {
                for _ in 0..sim.rng().upto(3) {
                    sim.step();
                }
            }
            _ => {
                for (c, receiver) in subs.iter_mut() {
                    if !sim.is_closed(*c) {
                        receiver.read(&mut sim, *c);
                    }
                }
                publisher_acks(&mut sim, &publishers, &mut sent, &mut accepted);
            }
        }
    }
    // Everyone back online, then settle.
    for (i, (c, _)) in subs.iter_mut().enumerate() {
        if sim.is_closed(*c) {
            let (back, _) = sim.connect(0, v5_persistent(&format!("q2sub-{i}"), 3600));
            *c = back;
        }
    }
    for _ in 0..100 {
        sim.run_until_idle();
        for (c, receiver) in subs.iter_mut() {
            receiver.read(&mut sim, *c);
        }
        publisher_acks(&mut sim, &publishers, &mut sent, &mut accepted);
        if sim.is_idle() && subs.iter().all(|(c, _)| sim.take_bytes(*c).is_empty()) {
            break;
        }
    }
    accepted.sort_unstable();
    for (i, (_, receiver)) in subs.iter().enumerate() {
        let mut got = receiver.delivered.clone();
        got.sort_unstable();
        let before = got.len();
        got.dedup();
        assert_eq!(before, got.len(), "q2sub-{i}: a message delivered twice");
        for m in &accepted {
            assert!(
                got.binary_search(m).is_ok(),
                "q2sub-{i}: accepted {m:?} never delivered"
            );
        }
    }
    assert_eq!(sim.barriers_pending(), 0);
}

/// Publishers answer PUBREC with PUBREL; a PUBREC marks the message accepted.
fn publisher_acks(
    sim: &mut Sim,
    publishers: &[Client],
    sent: &mut [HashMap<u16, u32>],
    accepted: &mut Vec<(u32, u32)>,
) {
    for (who, &p) in publishers.iter().enumerate() {
        for packet in sim.recv_all(p) {
            match packet {
                Packet::PubRec(a) => {
                    if let Some(seq) = sent[who].remove(&a.packet_id.get()) {
                        accepted.push((who as u32, seq));
                    }
                    sim.send(p, &pubrel(a.packet_id.get()));
                }
                Packet::PubComp(_) => {}
                other => panic!("publisher got {other:?}"),
            }
        }
    }
}

#[test]
fn qos2_exactly_once_with_reconnecting_subscribers() {
    for seed in seeds(24) {
        run_qos2_reconnecting(seed);
    }
}

/// Subscribers whose transport randomly reports backlog (slow consumers, paused and resumed)
/// while publishers send QoS 0 and 1: once every transport drains, nobody is left paused, every
/// session queue empties, and every PUBACKed QoS 1 message was delivered.
fn run_slow_consumers(seed: u64) -> bool {
    use ringmq_engine::conn::TRANSPORT_QUEUED_MAX_BYTES;
    let mut sim = Sim::seeded(2, Limits::default(), seed, 2);
    let subs: Vec<Client> = (0..3)
        .map(|i| {
            let shard = (i % 2) as u16;
            let (c, _) = sim.connect(shard, v311(&sim.client_id_on(shard, &format!("slow{i}"))));
            sim.subscribe(c, "f/#", QoS::AtLeastOnce);
            c
        })
        .collect();
    let (publisher, _) = sim.connect(1, v311(&sim.client_id_on(1, "fire")));
    let mut delivered: Vec<std::collections::HashSet<u32>> = vec![Default::default(); subs.len()];
    let mut unacked: HashMap<u16, u32> = HashMap::new();
    let mut acked: Vec<u32> = Vec::new();
    let mut seq = 0u32;
    for _ in 0..300 {
        match sim.rng().upto(9) {
            0..=4 => {
                let qos = if sim.rng().upto(1) == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                let packet_id = (seq % 60_000 + 1) as u16;
                if qos == QoS::AtLeastOnce {
                    unacked.insert(packet_id, seq);
                }
                let id = (qos == QoS::AtLeastOnce).then_some(packet_id);
                let body = payload(0, seq);
                sim.send(publisher, &publish("f/x", &body, qos, id));
                seq += 1;
            }
            5 => {
                let i = (sim.rng().next_u64() % subs.len() as u64) as usize;
                let queued = sim.rng().upto(2 * TRANSPORT_QUEUED_MAX_BYTES as u64) as usize;
                sim.report_sent(subs[i], queued);
            }
            6..=7 => {
                for _ in 0..sim.rng().upto(3) {
                    sim.step();
                }
            }
            _ => {
                for (i, &c) in subs.iter().enumerate() {
                    for p in drain(&mut sim, c) {
                        delivered[i].insert(parse(&p.payload).1);
                    }
                }
                for packet in sim.recv_all(publisher) {
                    if let Packet::PubAck(a) = packet {
                        if let Some(s) = unacked.remove(&a.packet_id.get()) {
                            acked.push(s);
                        }
                    }
                }
            }
        }
    }
    for _ in 0..200 {
        for &c in &subs {
            sim.report_sent(c, 0);
        }
        sim.run_until_idle();
        let mut moved = false;
        for (i, &c) in subs.iter().enumerate() {
            for p in drain(&mut sim, c) {
                moved = true;
                delivered[i].insert(parse(&p.payload).1);
            }
        }
        for packet in sim.recv_all(publisher) {
            if let Packet::PubAck(a) = packet {
                if let Some(s) = unacked.remove(&a.packet_id.get()) {
                    acked.push(s);
                }
            }
        }
        if !moved && sim.is_idle() {
            break;
        }
    }
    for (i, &c) in subs.iter().enumerate() {
        assert!(!sim.is_paused(c), "slow{i} left paused");
        assert!(!sim.is_closed(c), "slow{i} closed");
        for s in &acked {
            assert!(
                delivered[i].contains(s),
                "slow{i} never got acknowledged {s}"
            );
        }
    }
    assert!(
        unacked.is_empty(),
        "publishes never acknowledged: {unacked:?}"
    );
    for shard in 0..2 {
        assert_eq!(
            sim.engine(shard).state.queued_messages(),
            0,
            "shard {shard} holds messages"
        );
    }
    subs.iter()
        .any(|&c| sim.events(c).contains(&Event::PauseReading))
}

#[test]
fn slow_consumers_recover() {
    let seeds = seeds(24);
    let mut paused = 0;
    for &seed in &seeds {
        paused += usize::from(run_slow_consumers(seed));
    }
    // The runs exercise what they claim to (one seed alone may not pause anybody).
    assert!(paused > 0 || seeds.len() == 1, "no run paused a consumer");
}
