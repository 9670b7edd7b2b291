//! `dist/tapwire.service` passes `systemd-analyze verify` with no warning (an unknown or
//! misspelt key is only a warning there, so the output must be empty), with its binary paths
//! pointed at the binary under test. Also checks the hardening the README promises is there.

use std::process::Command;

#[test]
fn the_unit_verifies_cleanly() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/tapwire.service"))
            .expect("dist/tapwire.service");
    for key in [
        "CapabilityBoundingSet=CAP_NET_ADMIN ",
        "ProtectSystem=strict",
        "RuntimeDirectory=tapwire",
        "ExecStopPost=/usr/local/bin/tapwire cleanup",
        "NoNewPrivileges=yes",
        "DeviceAllow=/dev/net/tun rw",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(key), "the unit lacks {key}");
    }
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        tapwire_testkit::skip::skip(
            "the_unit_verifies_cleanly",
            "systemd-analyze is not installed (apt-get install systemd)",
        );
        return;
    };
    assert!(version.status.success());
    let dir = std::env::temp_dir().join(format!("tapwire-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tapwire.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/tapwire", env!("CARGO_BIN_EXE_tapwire")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.trim(), "", "systemd-analyze warned");
}
