//! Helpers shared by the integration tests: temp files and the real external tools.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether `tool` runs here; prints a notice when it does not so a skip is visible.
pub fn have_tool(tool: &str, probe_arg: &str) -> bool {
    let found = Command::new(tool).arg(probe_arg).output().is_ok();
    if !found {
        eprintln!("notice: {tool} is not installed; skipping the part of this test that needs it");
    }
    found
}

/// Runs a command and returns its stdout; panics with stderr on failure (test setup only).
pub fn run(command: &mut Command) -> Vec<u8> {
    let output = command.output().expect("spawn");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

pub fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write");
    path
}

/// Writes a password file with the real `mosquitto_passwd`: `hash` is "sha512-pbkdf2" or
/// "sha512". `None` when the tool is missing.
pub fn mosquitto_passwd(dir: &Path, hash: &str, users: &[(&str, &str)]) -> Option<PathBuf> {
    if !have_tool("mosquitto_passwd", "--help") {
        return None;
    }
    let path = dir.join(format!("passwd-{hash}"));
    for (index, (user, password)) in users.iter().enumerate() {
        let mut command = Command::new("mosquitto_passwd");
        command.args(["-H", hash]);
        if index == 0 {
            command.arg("-c");
        }
        command.arg("-b").arg(&path).arg(user).arg(password);
        run(&mut command);
    }
    Some(path)
}

/// Generates a key pair with `openssl genpkey`: ("rsa" | "ec"), returns (private, public) PEM
/// paths. `None` when openssl is missing.
pub fn openssl_keypair(dir: &Path, kind: &str) -> Option<(PathBuf, PathBuf)> {
    if !have_tool("openssl", "version") {
        return None;
    }
    let private = dir.join(format!("{kind}.key"));
    let public = dir.join(format!("{kind}.pub.pem"));
    let mut command = Command::new("openssl");
    command.arg("genpkey");
    match kind {
        "rsa" => command.args(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        _ => command.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
    };
    run(command.arg("-out").arg(&private));
    run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public));
    Some((private, public))
}
