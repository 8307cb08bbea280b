//! ACL escape attempts: a client allowed `vehicle/%c/#` must not reach another vehicle's data
//! through `+`, `#`, `$share/...`, a retained message or a crafted client id; for anonymous
//! rules, user rules and pattern rules.

use ringmq_auth::{Access, Acl, AclConfig, Identity};

use Access::{Allow, Deny};

fn id(client_id: &str, username: Option<&str>) -> Identity {
    Identity::new(client_id, username.map(str::to_owned))
}

/// Every way we know to reach `vehicle/c2/...` from a grant on `vehicle/c1/#`.
const ESCAPES: &[&str] = &[
    "vehicle/+/speed",
    "vehicle/+/#",
    "vehicle/#",
    "#",
    "+/+/speed",
    "+/#",
    "+/c2/speed",
    "vehicle/c2/#",
    "vehicle/c2/speed",
    "vehicle",
    "$share/g/vehicle/#",
    "$share/g/vehicle/+/speed",
    "$share/g/#",
    "$share/g/vehicle/c2/speed",
];

fn assert_vehicle_isolation(acl: &Acl, me: &Identity, mine: &str) {
    for filter in ESCAPES {
        assert_eq!(acl.check_subscribe(me, filter), Deny, "subscribe {filter}");
    }
    for filter in [
        format!("{mine}/#"),
        format!("{mine}/speed"),
        format!("{mine}/+"),
        mine.to_string(),
        format!("$share/g/{mine}/#"),
    ] {
        assert_eq!(
            acl.check_subscribe(me, &filter),
            Allow,
            "subscribe {filter}"
        );
    }
    // Retained and live delivery are checked per topic as well.
    assert_eq!(acl.check_receive(me, "vehicle/c2/speed"), Deny);
    assert_eq!(acl.check_receive(me, &format!("{mine}/speed")), Allow);
    assert_eq!(acl.check_publish(me, "vehicle/c2/speed"), Deny);
    assert_eq!(acl.check_publish(me, &format!("{mine}/speed")), Allow);
    // Wildcards in a topic name are never a publish target. [MQTT-3.3.2-2]
    assert_eq!(acl.check_publish(me, &format!("{mine}/+")), Deny);
    // $SYS only by explicit rule. [MQTT-4.7.2-1]
    assert_eq!(acl.check_subscribe(me, "$SYS/#"), Deny);
    assert_eq!(acl.check_receive(me, "$SYS/broker/uptime"), Deny);
}

#[test]
fn pattern_rules_isolate_vehicles() {
    let acl = Acl::parse("pattern readwrite vehicle/%c/#\n").unwrap();
    assert_vehicle_isolation(&acl, &id("c1", None), "vehicle/c1");
    assert_vehicle_isolation(&acl, &id("c1", Some("fleet")), "vehicle/c1");
}

#[test]
fn user_rules_isolate_vehicles() {
    let acl =
        Acl::parse("user car1\ntopic readwrite vehicle/c1/#\nuser car2\ntopic vehicle/c2/#\n")
            .unwrap();
    assert_vehicle_isolation(&acl, &id("any", Some("car1")), "vehicle/c1");
    // A username not in the file gets nothing; neither does an anonymous client.
    assert_eq!(
        acl.check_subscribe(&id("c1", Some("car3")), "vehicle/c1/#"),
        Deny
    );
    assert_eq!(acl.check_subscribe(&id("c1", None), "vehicle/c1/#"), Deny);
}

#[test]
fn anonymous_rules_isolate_vehicles() {
    // Rules before any `user` line apply to anonymous clients only (Mosquitto acl_file).
    let acl = Acl::parse("topic readwrite vehicle/c1/#\nuser admin\ntopic read #\n").unwrap();
    assert_vehicle_isolation(&acl, &id("whatever", None), "vehicle/c1");
    assert_eq!(
        acl.check_subscribe(&id("x", Some("somebody")), "vehicle/c1/#"),
        Deny
    );
    // The admin's `#` covers everything except $SYS.
    let admin = id("ops", Some("admin"));
    assert_eq!(acl.check_subscribe(&admin, "#"), Allow);
    assert_eq!(acl.check_subscribe(&admin, "$SYS/#"), Deny);
    assert_eq!(acl.check_publish(&admin, "vehicle/c1/x"), Deny, "read only");
}

#[test]
fn crafted_client_ids_do_not_widen_patterns() {
    let acl = Acl::parse("pattern readwrite vehicle/%c/#\npattern read users/%u/inbox\n").unwrap();
    // Mosquitto refuses ids with wildcards for every check.
    for client_id in ["+", "#", "c+", "a#"] {
        let me = id(client_id, None);
        assert_eq!(acl.check_subscribe(&me, "vehicle/+/#"), Deny, "{client_id}");
        assert_eq!(acl.check_subscribe(&me, "vehicle/#"), Deny, "{client_id}");
        assert_eq!(
            acl.check_receive(&me, "vehicle/c2/speed"),
            Deny,
            "{client_id}"
        );
    }
    // `/` would move the pattern onto another vehicle's subtree: c2/speed -> vehicle/c2/speed/#.
    let slash = id("c2/speed", None);
    assert_eq!(acl.check_subscribe(&slash, "vehicle/c2/speed/#"), Deny);
    assert_eq!(acl.check_publish(&slash, "vehicle/c2/speed"), Deny);
    // `$SYS` as a client id must not make `%c/...` an explicit $SYS rule.
    let acl_top = Acl::parse("pattern readwrite %c/#\n").unwrap();
    assert_eq!(acl_top.check_subscribe(&id("$SYS", None), "$SYS/#"), Deny);
    assert_eq!(acl_top.check_subscribe(&id("", None), "/#"), Deny);
    assert_eq!(acl_top.check_subscribe(&id("c1", None), "c1/#"), Allow);
    // %u patterns do not apply to anonymous clients, and unsafe usernames get nothing.
    assert_eq!(acl.check_subscribe(&id("c1", None), "users/+/inbox"), Deny);
    assert_eq!(
        acl.check_subscribe(&id("c1", Some("bob")), "users/bob/inbox"),
        Allow
    );
    assert_eq!(
        acl.check_subscribe(&id("c1", Some("bob")), "users/+/inbox"),
        Deny
    );
    assert_eq!(
        acl.check_subscribe(&id("c1", Some("b/x")), "users/b/x/inbox"),
        Deny
    );
    assert_eq!(
        acl.check_subscribe(&id("c1", Some("#")), "vehicle/c1/#"),
        Deny
    );
}

#[test]
fn unsafe_value_in_deny_pattern_denies_everything() {
    let acl = Acl::parse("topic readwrite open/#\npattern deny open/%c/private\n").unwrap();
    assert_eq!(acl.check_publish(&id("c1", None), "open/x"), Allow);
    assert_eq!(acl.check_publish(&id("c1", None), "open/c1/private"), Deny);
    // The deny pattern cannot be resolved for this id: fail closed.
    assert_eq!(acl.check_publish(&id("a/b", None), "open/x"), Deny);
}

#[test]
fn deny_wins_whatever_the_order() {
    let acl = Acl::parse(
        "pattern readwrite vehicle/%c/#\npattern deny vehicle/%c/firmware/#\ntopic deny vehicle/+/secret\n",
    )
    .unwrap();
    let me = id("c1", None);
    assert_eq!(acl.check_publish(&me, "vehicle/c1/speed"), Allow);
    assert_eq!(acl.check_publish(&me, "vehicle/c1/firmware/v2"), Deny);
    assert_eq!(acl.check_receive(&me, "vehicle/c1/firmware/v2"), Deny);
    // A filter overlapping a deny rule is refused whole: every topic it matches must be allowed.
    assert_eq!(acl.check_subscribe(&me, "vehicle/c1/#"), Deny);
    assert_eq!(acl.check_subscribe(&me, "vehicle/c1/+/v2"), Deny);
    assert_eq!(acl.check_subscribe(&me, "vehicle/c1/speed"), Allow);
    // The anonymous `topic deny` applies to anonymous clients only.
    let named = id("c1", Some("u"));
    assert_eq!(acl.check_publish(&me, "vehicle/c1/secret"), Deny);
    assert_eq!(acl.check_publish(&named, "vehicle/c1/secret"), Allow);
    // Order reversed: same result.
    let reversed = Acl::parse(
        "topic deny vehicle/+/secret\npattern deny vehicle/%c/firmware/#\npattern readwrite vehicle/%c/#\n",
    )
    .unwrap();
    assert_eq!(reversed.check_publish(&me, "vehicle/c1/firmware/v2"), Deny);
    assert_eq!(reversed.check_publish(&me, "vehicle/c1/speed"), Allow);
}

#[test]
fn sys_topics_only_by_explicit_rule() {
    let acl = Acl::parse("user monitor\ntopic read #\ntopic read +/broker/#\n").unwrap();
    let monitor = id("m", Some("monitor"));
    assert_eq!(acl.check_subscribe(&monitor, "#"), Allow);
    assert_eq!(acl.check_subscribe(&monitor, "$SYS/#"), Deny);
    assert_eq!(acl.check_subscribe(&monitor, "$SYS/broker/load"), Deny);
    assert_eq!(acl.check_receive(&monitor, "$SYS/broker/load"), Deny);
    let explicit = Acl::parse("user monitor\ntopic read $SYS/#\n").unwrap();
    assert_eq!(explicit.check_subscribe(&monitor, "$SYS/#"), Allow);
    assert_eq!(explicit.check_receive(&monitor, "$SYS/broker/load"), Allow);
    assert_eq!(explicit.check_subscribe(&monitor, "#"), Deny);
}

#[test]
fn access_words_and_syntax() {
    let acl = Acl::parse(
        "# comment\n\nuser u\ntopic read r/#\ntopic write w/#\ntopic readwrite rw/#\ntopic plain/#\n",
    )
    .unwrap();
    let u = id("c", Some("u"));
    assert_eq!(acl.check_subscribe(&u, "r/x"), Allow);
    assert_eq!(acl.check_publish(&u, "r/x"), Deny);
    assert_eq!(acl.check_subscribe(&u, "w/x"), Deny);
    assert_eq!(acl.check_publish(&u, "w/x"), Allow);
    assert_eq!(acl.check_publish(&u, "rw/x"), Allow);
    assert_eq!(acl.check_receive(&u, "plain/x"), Allow);
    assert_eq!(acl.check_publish(&u, "plain/x"), Allow);
    for (text, line) in [
        ("topic\n", 1),
        ("user u\ntopic sometimes a/b\n", 2),
        ("topic read a/#/b\n", 1),
        ("\nfrobnicate a\n", 2),
        ("user\n", 1),
    ] {
        let err = Acl::parse(text).unwrap_err().to_string();
        assert!(err.contains(&format!("line {line}")), "{text:?}: {err}");
    }
    // Malformed subscribe filters and shared forms are refused, not matched loosely.
    let open = Acl::parse("topic #\n").unwrap();
    let anon = id("c", None);
    for filter in ["a/#/b", "a+", "$share/g", "$share//a", "$share/g/", ""] {
        assert_eq!(open.check_subscribe(&anon, filter), Deny, "{filter:?}");
    }
}

#[test]
fn acl_deny_list_is_a_rule_source() {
    // The broker's `[acl] deny` rule: SUBACK 0x80 / 0x87 for secret/a, secret/+ and
    // $share/g/secret/x; open/a still fine; publishing is not affected.
    let config: AclConfig = toml::from_str("deny = [\"secret/#\"]\n").unwrap();
    let acl = config.load(std::path::Path::new(".")).unwrap();
    let me = id("c", None);
    for filter in [
        "secret/a",
        "secret/+",
        "$share/g/secret/x",
        "secret",
        "#",
        "+/a",
    ] {
        assert_eq!(acl.check_subscribe(&me, filter), Deny, "{filter}");
    }
    assert_eq!(acl.check_subscribe(&me, "open/a"), Allow);
    assert_eq!(acl.check_receive(&me, "secret/x"), Deny);
    assert_eq!(acl.check_receive(&me, "open/x"), Allow);
    assert_eq!(acl.check_publish(&me, "secret/x"), Allow);
    // As before, a rule may name the shared form itself.
    let config: AclConfig = toml::from_str("deny = [\"$share/#\"]\n").unwrap();
    let no_shared = config.load(std::path::Path::new(".")).unwrap();
    assert_eq!(no_shared.check_subscribe(&me, "$share/g/a"), Deny);
    assert_eq!(no_shared.check_subscribe(&me, "a"), Allow);

    // With a file as well, both apply.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acl"), "pattern readwrite vehicle/%c/#\n").unwrap();
    let config: AclConfig =
        toml::from_str("file = \"acl\"\ndeny = [\"vehicle/+/keys\"]\n").unwrap();
    let acl = config.load(dir.path()).unwrap();
    assert_eq!(
        acl.check_subscribe(&id("c1", None), "vehicle/c1/speed"),
        Allow
    );
    assert_eq!(
        acl.check_subscribe(&id("c1", None), "vehicle/c1/keys"),
        Deny
    );
}
