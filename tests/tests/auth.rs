//! Authentication and ACL through Debian's mosquitto_pub/mosquitto_sub, with a password file made
//! by `mosquitto_passwd` (skipped loudly if the tools are missing).

use std::process::Command;
use std::time::{Duration, Instant};

use ringmq_tests::*;
use ringmq_tests::{mosquitto, paho};

const TOOL_WAIT: Duration = Duration::from_secs(15);

struct Setup {
    dir: std::path::PathBuf,
    broker: BrokerProcess,
}

/// A broker with a password file (car1, car2) and an ACL giving each car its own subtree.
fn start() -> Option<Setup> {
    if !mosquitto::available() {
        return None;
    }
    let dir = std::env::temp_dir().join(unique("ringmq-auth"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let passwd = dir.join("passwd");
    for (i, (user, pass)) in [("car1", "secret1"), ("car2", "secret2")]
        .iter()
        .enumerate()
    {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let status = cmd
            .args(["-b", passwd.to_str().expect("utf-8 path"), user, pass])
            .status()
            .expect("mosquitto_passwd runs");
        assert!(status.success(), "mosquitto_passwd failed");
    }
    let acl = dir.join("acl");
    std::fs::write(&acl, "pattern readwrite vehicle/%u/#\n").expect("acl");
    let config = format!(
        "[auth]\npassword_file = {:?}\n[acl]\nfile = {:?}\n",
        passwd.to_str().expect("utf-8"),
        acl.to_str().expect("utf-8")
    );
    let broker = BrokerProcess::start_with_config(&config, &[]);
    Some(Setup { dir, broker })
}

/// mosquitto_pub once; returns (exit success, stderr).
fn publish(port: u16, version: &str, user: Option<(&str, &str)>, topic: &str) -> (bool, String) {
    let port = port.to_string();
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        version,
        "-t",
        topic,
        "-m",
        "x",
    ];
    args.extend(["-q", "1"]);
    if let Some((u, p)) = user {
        args.extend(["-u", u, "-P", p]);
    }
    let out = Command::new("mosquitto_pub")
        .args(&args)
        .output()
        .expect("mosquitto_pub runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_lowercase(),
    )
}

/// Good and bad credentials, per protocol version: CONNACK 0, then 3.1.1 return code 4 / v5
/// reason 0x86 for a wrong password and 5 / 0x87 for an anonymous client [MQTT-3.2.2-6].
#[test]
fn passwords_from_mosquitto_passwd_are_checked() {
    let Some(s) = start() else { return };
    let port = s.broker.port;
    for version in ["mqttv311", "mqttv5"] {
        let (ok, err) = publish(port, version, Some(("car1", "secret1")), "vehicle/car1/t");
        assert!(ok, "{version}: good password refused: {err}");
        let (ok, err) = publish(port, version, Some(("car1", "wrong")), "vehicle/car1/t");
        assert!(!ok, "{version}: wrong password accepted");
        assert!(
            err.contains("bad user name or password"),
            "{version}: {err}"
        );
        let (ok, err) = publish(port, version, None, "vehicle/car1/t");
        assert!(!ok, "{version}: anonymous client accepted");
        assert!(err.contains("not authori"), "{version}: {err}");
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// `pattern readwrite vehicle/%u/#`: car1 may not subscribe to car2's subtree (v5 SUBACK 0x87,
/// 3.1.1 0x80 [MQTT-3.9.3-2]) and a wildcard subscription does not leak car2's messages.
#[test]
fn acl_keeps_each_vehicle_to_its_own_topics() {
    let Some(s) = start() else { return };
    let port = s.broker.port.to_string();
    for (version, code) in [("mqttv5", "135"), ("mqttv311", "128")] {
        let sub = mosquitto::spawn(
            "mosquitto_sub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-u",
                "car1",
                "-P",
                "secret1",
                "-t",
                "vehicle/car2/#",
                "-d",
                "-W",
                "3",
            ],
        );
        let (_, lines) = sub.finish(TOOL_WAIT);
        let suback = lines.iter().find(|l| l.starts_with("Subscribed"));
        assert!(
            suback.is_some_and(|l| l.trim_end().ends_with(code)),
            "{version}: expected SUBACK {code}, got {lines:?}"
        );
    }
    // car1 subscribes to everything under vehicle/: the broker may refuse the wildcard (SUBACK
    // 0x80) or grant it and filter each delivery; either way car2's message must not arrive.
    let sub = mosquitto::spawn(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "car1",
            "-P",
            "secret1",
            "-t",
            "vehicle/#",
            "-v",
            "-d",
            "-W",
            "6",
        ],
    );
    std::thread::sleep(Duration::from_millis(700));
    let p = s.broker.port;
    let (ok, err) = publish(
        p,
        "mqttv311",
        Some(("car2", "secret2")),
        "vehicle/car2/secret",
    );
    assert!(ok, "car2 publishing to its own topic: {err}");
    let (ok, err) = publish(
        p,
        "mqttv311",
        Some(("car1", "secret1")),
        "vehicle/car1/mine",
    );
    assert!(ok, "car1 publishing to its own topic: {err}");
    let (_, lines) = sub.finish(TOOL_WAIT);
    let granted = lines
        .iter()
        .any(|l| l.starts_with("Subscribed") && l.trim_end().ends_with(": 0"));
    if granted {
        assert!(
            lines.iter().any(|l| l.starts_with("vehicle/car1/mine")),
            "car1 missed its own message: {lines:?}"
        );
    } else {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("Subscribed") && l.trim_end().ends_with("128")),
            "wildcard neither granted nor refused: {lines:?}"
        );
    }
    assert!(
        !lines.iter().any(|l| l.starts_with("vehicle/car2")),
        "car1 received car2's message through a wildcard: {lines:?}"
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// SIGHUP reloads the password file: a user added afterwards gets in without a restart, while the
/// broker keeps serving.
#[test]
fn sighup_reloads_the_password_file() {
    let Some(s) = start() else { return };
    let passwd = s.dir.join("passwd");
    let (ok, _) = publish(
        s.broker.port,
        "mqttv5",
        Some(("car3", "secret3")),
        "vehicle/car3/t",
    );
    assert!(!ok, "car3 accepted before it exists");
    let status = Command::new("mosquitto_passwd")
        .args(["-b", passwd.to_str().expect("utf-8"), "car3", "secret3"])
        .status()
        .expect("mosquitto_passwd runs");
    assert!(status.success());
    s.broker.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, err) = publish(
            s.broker.port,
            "mqttv5",
            Some(("car3", "secret3")),
            "vehicle/car3/t",
        );
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "car3 still refused after SIGHUP: {err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// Eclipse Paho with a username and password from the mosquitto_passwd file, on 3.1.1 and 5.0:
/// the good password connects and round-trips a message under the ACL; a wrong password, an
/// unknown user and a missing password are CONNACK 0x86 / return code 4; no credentials at all
/// are 0x87 / 5 [MQTT-3.2.2-6: a refused CONNACK is followed by the close].
#[test]
fn paho_with_username_and_password() {
    if !paho::available() {
        return;
    }
    let Some(s) = start() else { return };
    let port = s.broker.port;
    for (version, bad, anonymous) in [("311", 4, 5), ("5", 0x86, 0x87)] {
        let (code, lines) = paho::auth_check(
            port,
            &[
                "roundtrip",
                version,
                "-",
                "car1",
                "secret1",
                "vehicle/car1/paho",
            ],
            TOOL_WAIT,
        );
        assert_eq!(code, Some(0), "v{version} good password: {lines:?}");
        assert!(
            lines.iter().any(|l| l == "received"),
            "v{version}: {lines:?}"
        );
        for (name, user, pass, want) in [
            ("wrong password", "car1", "secret2", bad),
            ("unknown user", "car9", "secret1", bad),
            ("no password", "car1", "-", bad),
            ("anonymous", "-", "-", anonymous),
        ] {
            let (_, lines) =
                paho::auth_check(port, &["connack", version, "-", user, pass], TOOL_WAIT);
            assert_eq!(
                paho::connack(&lines),
                Some(want),
                "v{version} {name}: {lines:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}
