//! The ACL file against independent clients (Debian's mosquitto_pub/mosquitto_sub): reload on
//! SIGHUP while clients stay connected (a removed grant stops deliveries, a new grant works, a
//! broken file keeps the old rules), and escape attempts by a vehicle allowed only
//! `vehicle/%c/#`, on 3.1.1 and 5.0. Password files come from `mosquitto_passwd`.
//!
//! Non-delivery is shown by order, not by waiting: after the message that must not arrive, the
//! test publishes a marker the subscriber may receive; on one shard (`--shards 1`) messages
//! reach a subscriber in the order the broker acknowledged them, so the marker arriving first
//! proves the other was dropped.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ringmq_tests::mosquitto::{self, Tool};
use ringmq_tests::{free_port, metric_total, unique, wait_for_metric, BrokerProcess};

const TOOL_WAIT: Duration = Duration::from_secs(15);
const LINE_WAIT: Duration = Duration::from_secs(10);

struct Setup {
    dir: PathBuf,
    broker: BrokerProcess,
    metrics_port: u16,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Setup {
    /// One shard, users car1, car2 and ops (password = "pw-" + name), the ACL file `acl`.
    /// Flapping detection is off: the tests reconnect car1 far more than 15 times a minute.
    fn start(acl: &str) -> Option<Setup> {
        if !mosquitto::available() {
            return None;
        }
        let dir = std::env::temp_dir().join(unique("ringmq-acl"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        mosquitto::passwd_file(
            &dir.join("passwd"),
            &[("car1", "pw-car1"), ("car2", "pw-car2"), ("ops", "pw-ops")],
        );
        std::fs::write(dir.join("acl"), acl).expect("write acl");
        let config = format!(
            "[auth]\npassword_file = {:?}\n[acl]\nfile = {:?}\n[overload.flapping]\nmax_connects = 0\n",
            dir.join("passwd").to_str().expect("utf-8"),
            dir.join("acl").to_str().expect("utf-8")
        );
        let metrics_port = free_port();
        let metrics = format!("127.0.0.1:{metrics_port}");
        let broker = BrokerProcess::start_with_config(
            &config,
            &["--shards", "1", "--metrics-listen", &metrics],
        );
        Some(Setup {
            dir,
            broker,
            metrics_port,
        })
    }

    fn port(&self) -> String {
        self.broker.port.to_string()
    }

    /// Rewrites the ACL file, sends SIGHUP and waits until the reload is counted with `result`
    /// and, when it succeeded, the shard has logged that it uses the new rules.
    fn reload_acl(&self, acl: &str, result: &str) {
        let applied_before = self.broker.log().matches("acl: new rules in use").count();
        let label = format!("result=\"{result}\"");
        let text = ringmq_tests::scrape_metrics(self.metrics_port);
        let before = metric_total(
            &text,
            "ringmq_auth_reloads_total",
            &["file=\"acl\"", &label],
        );
        std::fs::write(self.dir.join("acl"), acl).expect("write acl");
        self.broker.signal(libc::SIGHUP);
        wait_for_metric(
            self.metrics_port,
            "ringmq_auth_reloads_total",
            &["file=\"acl\"", &label],
            before + 1.0,
        );
        if result == "ok" {
            let deadline = Instant::now() + TOOL_WAIT;
            while self.broker.log().matches("acl: new rules in use").count() <= applied_before {
                assert!(Instant::now() < deadline, "shard never applied the new acl");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The SUBACK code mosquitto_sub -d logged for one SUBSCRIBE ("0" granted QoS 0, "128" /
    /// "135" refused).
    fn suback(&self, version: &str, user: &str, client_id: &str, filter: &str) -> String {
        let port = self.port();
        let pass = format!("pw-{user}");
        let (_, lines) = mosquitto::spawn(
            "mosquitto_sub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-i",
                client_id,
                "-u",
                user,
                "-P",
                &pass,
                "-t",
                filter,
                "-d",
                "-E",
                "-W",
                "10",
            ],
        )
        .finish(TOOL_WAIT);
        lines
            .iter()
            .find_map(|l| {
                l.strip_prefix("Subscribed ")
                    .and_then(|r| r.rsplit(": ").next())
            })
            .map(|code| code.trim().to_owned())
            .unwrap_or_else(|| panic!("{version} {filter}: no SUBACK in {lines:?}"))
    }

    /// A live mosquitto_sub printing `topic payload` lines, once its SUBACK has arrived.
    fn subscriber(&self, version: &str, user: &str, client_id: &str, filters: &[&str]) -> Tool {
        let port = self.port();
        let pass = format!("pw-{user}");
        // Line-buffered (coreutils stdbuf): mosquitto_sub does not flush its -d log lines.
        let mut args = vec![
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-i",
            client_id,
            "-u",
            user,
            "-P",
            &pass,
            "-q",
            "1",
            "-v",
            "-d",
            "-W",
            "60",
        ];
        for filter in filters {
            args.extend(["-t", filter]);
        }
        let tool = mosquitto::spawn("stdbuf", &args);
        loop {
            let line = tool.line(LINE_WAIT).expect("subscriber's SUBACK");
            if line.starts_with("Subscribed") {
                return tool;
            }
        }
    }

    /// mosquitto_pub -d at QoS 1; returns its debug lines (`received PUBACK (Mid: 1, RC:N)`).
    fn publish(
        &self,
        version: &str,
        user: &str,
        client_id: &str,
        topic: &str,
        payload: &str,
        retain: bool,
    ) -> Vec<String> {
        let port = self.port();
        let pass = format!("pw-{user}");
        let mut args = vec![
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-i",
            client_id,
            "-u",
            user,
            "-P",
            &pass,
            "-t",
            topic,
            "-m",
            payload,
            "-q",
            "1",
            "-d",
        ];
        if retain {
            args.push("-r");
        }
        let (status, lines) = mosquitto::spawn("mosquitto_pub", &args).finish(TOOL_WAIT);
        assert!(
            status.is_some(),
            "mosquitto_pub {topic} did not finish: {lines:?}"
        );
        lines
    }
}

/// The next `topic payload` line a `subscriber` printed (debug lines skipped).
fn next_message(tool: &Tool) -> String {
    loop {
        let line = tool.line(LINE_WAIT).expect("a message within the wait");
        if !line.starts_with("Client ") {
            return line;
        }
    }
}

/// Whether the PUBACK carried a success code (0, or 0x10 No matching subscribers).
fn accepted(lines: &[String]) -> bool {
    puback_code(lines).is_some_and(|code| code < 0x80)
}

fn puback_code(lines: &[String]) -> Option<u8> {
    lines.iter().find_map(|l| {
        let rest = l.split("received PUBACK").nth(1)?;
        rest.split("RC:")
            .nth(1)?
            .trim_end_matches(')')
            .trim()
            .parse()
            .ok()
    })
}

const ACL_BEFORE: &str = "\
user ops
topic read fleet/status/#
topic readwrite ops/#
pattern readwrite vehicle/%c/#
pattern write fleet/status/%c
pattern write fleet/alerts/%c
";

/// ops loses `fleet/status/#` and gains `fleet/alerts/#`.
const ACL_AFTER: &str = "\
user ops
topic read fleet/alerts/#
topic readwrite ops/#
pattern readwrite vehicle/%c/#
pattern write fleet/status/%c
pattern write fleet/alerts/%c
";

/// SIGHUP with a new ACL file while ops is subscribed: deliveries under the removed grant stop
/// at once for the live subscription, the new grant can be subscribed to and delivers; a broken
/// ACL file is refused (`ringmq_auth_reloads_total{file="acl",result="failed"}`) and the rules
/// in force stay as they were.
#[test]
fn acl_reload_applies_to_connected_clients() {
    let Some(s) = Setup::start(ACL_BEFORE) else {
        return;
    };
    assert_eq!(
        s.suback("mqttv5", "ops", &unique("ops"), "fleet/alerts/#"),
        "135"
    );
    let sub = s.subscriber("mqttv5", "ops", "ops-live", &["fleet/status/#", "ops/#"]);
    let lines = s.publish(
        "mqttv5",
        "car1",
        "car1",
        "fleet/status/car1",
        "before",
        false,
    );
    assert!(accepted(&lines), "{lines:?}");
    assert_eq!(next_message(&sub), "fleet/status/car1 before");

    s.reload_acl(ACL_AFTER, "ok");
    let lines = s.publish(
        "mqttv5",
        "car1",
        "car1",
        "fleet/status/car1",
        "after",
        false,
    );
    assert!(accepted(&lines), "car1 may still write: {lines:?}");
    s.publish(
        "mqttv5",
        "ops",
        &unique("ops-pub"),
        "ops/marker",
        "m1",
        false,
    );
    assert_eq!(
        next_message(&sub),
        "ops/marker m1",
        "a message under the removed grant reached the live subscription"
    );
    // The new grant: subscribe and receive.
    let alerts = s.subscriber("mqttv311", "ops", "ops-alerts", &["fleet/alerts/#"]);
    s.publish(
        "mqttv311",
        "car2",
        "car2",
        "fleet/alerts/car2",
        "smoke",
        false,
    );
    assert_eq!(next_message(&alerts), "fleet/alerts/car2 smoke");
    assert_eq!(
        s.suback("mqttv5", "ops", &unique("ops"), "fleet/status/#"),
        "135"
    );

    // A broken file: the reload fails and the rules stay those of ACL_AFTER.
    s.reload_acl("user ops\ntopic readwrite fleet/#/status\n", "failed");
    assert!(
        s.broker
            .log()
            .contains("reload failed; keeping the previous acl"),
        "no log line for the failed reload"
    );
    assert_eq!(
        s.suback("mqttv5", "ops", &unique("ops"), "fleet/alerts/#"),
        "0"
    );
    assert_eq!(
        s.suback("mqttv311", "ops", &unique("ops"), "fleet/status/#"),
        "128"
    );
    s.publish(
        "mqttv311",
        "car2",
        "car2",
        "fleet/alerts/car2",
        "fire",
        false,
    );
    assert_eq!(next_message(&alerts), "fleet/alerts/car2 fire");
    drop(sub);
    drop(alerts);
}

/// What the escape test grants: each car its own subtree by client id (`%c`), and the same by
/// username, so a second connection of the same user can publish the order markers.
const ACL_VEHICLES: &str = "\
user car1
topic readwrite vehicle/car1/#
user car2
topic readwrite vehicle/car2/#
pattern readwrite vehicle/%c/#
";

/// Messages a `subscriber` prints until (and without) `marker`.
fn messages_until(tool: &Tool, marker: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = next_message(tool);
        if line == marker {
            return seen;
        }
        seen.push(line);
    }
}

/// car1 may use only `vehicle/car1/#`. Through `+`, `#`, `$share/<group>/...` (MQTT 5.0 4.8.2;
/// on 3.1.1 a plain filter beginning `$share`, which nothing grants either) and retained
/// messages it gets nothing of car2's, on 3.1.1 (SUBACK 0x80) and 5.0 (SUBACK 0x87 Not
/// authorized [MQTT-3.9.3-2]); what it publishes into car2's tree is refused (v5 PUBACK 0x87;
/// 3.1.1 PUBACK 0 and dropped, as Mosquitto does) and neither delivered nor retained.
#[test]
fn a_vehicle_cannot_escape_its_subtree() {
    let Some(s) = Setup::start(ACL_VEHICLES) else {
        return;
    };
    let lines = s.publish("mqttv5", "car2", "car2", "vehicle/car2/speed", "88", true);
    assert!(accepted(&lines), "car2's retained: {lines:?}");
    let lines = s.publish("mqttv5", "car1", "car1", "vehicle/car1/speed", "50", true);
    assert!(accepted(&lines), "car1's retained: {lines:?}");
    let mut refusals = 0.0;
    for (version, refused) in [("mqttv311", "128"), ("mqttv5", "135")] {
        for filter in [
            "vehicle/car2/#",
            "vehicle/car2/speed",
            "vehicle/+/speed",
            "vehicle/+/#",
            "vehicle/#",
            "#",
            "+/car2/#",
            "+/+/+",
            "$share/g/vehicle/car2/#",
            "$share/g/vehicle/+/speed",
            "$share/g/#",
            "$share/car1/vehicle/car2/speed",
        ] {
            assert_eq!(
                s.suback(version, "car1", "car1", filter),
                refused,
                "{version}: car1 granted {filter}"
            );
            refusals += 1.0;
        }
        assert_eq!(
            s.suback(version, "car1", "car1", "vehicle/car1/#"),
            "0",
            "{version}"
        );
    }
    assert_eq!(
        s.suback("mqttv5", "car1", "car1", "$share/g/vehicle/car1/#"),
        "0"
    );

    // Retained: car1's own subtree shows only its own retained message.
    let car1 = s.subscriber("mqttv311", "car1", "car1", &["vehicle/car1/#"]);
    s.publish(
        "mqttv311",
        "car1",
        "car1-pub",
        "vehicle/car1/marker",
        "m",
        false,
    );
    assert_eq!(
        messages_until(&car1, "vehicle/car1/marker m"),
        vec!["vehicle/car1/speed 50".to_owned()],
        "car1's view of the retained set"
    );
    drop(car1);

    // Publishing into car2's tree, each version, QoS 1, retained and not, while car2 listens.
    let car2 = s.subscriber("mqttv5", "car2", "car2", &["vehicle/car2/#"]);
    for (version, want) in [("mqttv5", 0x87), ("mqttv311", 0)] {
        for retain in [false, true] {
            let lines = s.publish(
                version,
                "car1",
                "car1",
                "vehicle/car2/cmd",
                "unlock",
                retain,
            );
            assert_eq!(
                puback_code(&lines),
                Some(want),
                "{version} retain={retain}: {lines:?}"
            );
        }
    }
    s.publish(
        "mqttv5",
        "car2",
        "car2-pub",
        "vehicle/car2/marker",
        "m1",
        false,
    );
    assert_eq!(
        messages_until(&car2, "vehicle/car2/marker m1"),
        vec!["vehicle/car2/speed 88".to_owned()],
        "car2 received what car1 published into its tree"
    );
    drop(car2);
    // A fresh subscription sees the retained set: car2's own message, not car1's "unlock".
    let car2 = s.subscriber("mqttv311", "car2", "car2", &["vehicle/car2/#"]);
    s.publish(
        "mqttv5",
        "car2",
        "car2-pub",
        "vehicle/car2/marker",
        "m2",
        false,
    );
    assert_eq!(
        messages_until(&car2, "vehicle/car2/marker m2"),
        vec!["vehicle/car2/speed 88".to_owned()],
        "car1's retained publish into car2's tree was stored"
    );
    let text = wait_for_metric(
        s.metrics_port,
        "ringmq_acl_denied_total",
        &["operation=\"publish\""],
        4.0,
    );
    let denied = metric_total(
        &text,
        "ringmq_acl_denied_total",
        &["operation=\"subscribe\""],
    );
    assert!(
        denied >= refusals,
        "subscribe refusals counted {denied}, made {refusals}"
    );
}
