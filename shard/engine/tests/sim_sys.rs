//! `$SYS`: every shard reports to shard 0, which publishes the totals as retained messages that
//! reach subscribers on every shard; `#` does not match `$SYS` topics.

mod sim;

use sim::*;
use wire::{Packet, QoS};

/// Shard 1's figures reach shard 0, whose `$SYS` totals count both shards' clients and are
/// retained everywhere.
#[test]
fn sys_totals_cover_every_shard() {
    let mut sim = Sim::new(2);
    let (_a, _) = sim.connect(0, v311(&sim.client_id_on(0, "a")));
    let (_b, _) = sim.connect(1, v311(&sim.client_id_on(1, "b")));
    let (_c, _) = sim.connect(1, v311(&sim.client_id_on(1, "c")));
    let now = sim.now();
    sim.engines[1].sys_tick(now);
    sim.run_until_idle();
    sim.engines[0].sys_tick(now);
    sim.run_until_idle();
    for shard in 0..2 {
        let (s, _) = sim.connect(shard, v311(&sim.client_id_on(shard, "sys")));
        sim.subscribe(s, "$SYS/broker/clients/connected", QoS::AtMostOnce);
        let p = sim.expect_publish(s);
        assert!(p.retain);
        assert_eq!(&p.payload[..], b"3", "shard {shard}");
    }
}

/// [MQTT-4.7.2-1] a filter starting with a wildcard does not match topics starting with `$`.
#[test]
fn wildcard_does_not_match_sys() {
    let mut sim = Sim::new(1);
    let (all, _) = sim.connect(0, v311("all"));
    sim.subscribe(all, "#", QoS::AtMostOnce);
    let (plus, _) = sim.connect(0, v311("plus"));
    sim.subscribe(plus, "+/broker/#", QoS::AtMostOnce);
    let now = sim.now();
    sim.engines[0].sys_tick(now);
    sim.run_until_idle();
    sim.expect_nothing(all);
    sim.expect_nothing(plus);
    let (sys, _) = sim.connect(0, v311("sys"));
    sim.subscribe(sys, "$SYS/#", QoS::AtMostOnce);
    let got = sim.recv_all(sys);
    assert!(got.len() >= 10, "{got:?}");
    assert!(got
        .iter()
        .all(|p| matches!(p, Packet::Publish(p) if p.retain)));
}
