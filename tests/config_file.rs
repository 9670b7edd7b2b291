//! `--config FILE` end to end: precedence over the environment (its own test binary, since it
//! sets an environment variable), and the `tapwire` binary's answer to a bad file.

use std::ffi::OsString;
use std::process::Command;

use tapwire::config::RunArgs;

fn file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tapwire-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn command_line_then_environment_then_file() {
    let path = file(
        "precedence.toml",
        "max-clients = 9\nsend-queue = 64\nmac-ageing = \"7s\"\n",
    );
    // SAFETY (of intent): the only test of this binary that reads the environment.
    std::env::set_var("TAPWIRE_SEND_QUEUE", "77");
    let argv: Vec<OsString> = [
        "tapwire",
        "--config",
        path.to_str().unwrap(),
        "--max-clients",
        "3",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let args = RunArgs::load(&argv).unwrap();
    std::env::remove_var("TAPWIRE_SEND_QUEUE");
    assert_eq!(args.clients.max_clients, 3, "command line");
    assert_eq!(args.clients.send_queue, 77, "environment");
    assert_eq!(
        args.clients.mac_ageing,
        std::time::Duration::from_secs(7),
        "file"
    );
}

#[test]
fn the_binary_refuses_a_bad_file_with_its_line_and_key() {
    let path = file("bad.toml", "# a farm\nnat = true\nmax-clinets = 5\n");
    let out = Command::new(env!("CARGO_BIN_EXE_tapwire"))
        .args(["run", "--config", path.to_str().unwrap()])
        .env_remove("TAPWIRE_SEND_QUEUE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}:3: max-clinets: unknown key", path.display())),
        "{err}"
    );
    let missing = Command::new(env!("CARGO_BIN_EXE_tapwire"))
        .args(["--config", "/nonexistent/tapwire.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read it"));
}
