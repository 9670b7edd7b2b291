use std::ffi::OsString;
use std::path::Path;

use clap::{Args, Command, FromArgMatches};

use super::arguments;
use crate::config::RunArgs;

fn cmd() -> Command {
    RunArgs::augment_args(Command::new("tapwire"))
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// The run arguments of `cli` plus what `toml` adds.
fn with_file(cli: &[&str], toml: &str) -> Result<RunArgs, String> {
    let given = cmd()
        .try_get_matches_from(os(cli))
        .map_err(|e| e.to_string())?;
    let extra = arguments(&cmd(), &given, Path::new("t.toml"), toml)?;
    let mut all = os(cli);
    all.extend(extra.into_iter().map(OsString::from));
    let m = cmd().try_get_matches_from(all).map_err(|e| e.to_string())?;
    RunArgs::from_arg_matches(&m).map_err(|e| e.to_string())
}

const EVERY_OPTION: &str = r#"
listen = "127.0.0.1:9000"
listen-tls = "127.0.0.1:9443"
tls-cert = "/etc/tapwire/cert.pem"
tls-key = "/etc/tapwire/key.pem"
cores = 2
tap = "tw-test0"
subnet = "10.99.0.0/16"
attach-bridge = "br9"
mtu = 9000
max-frame = 9100
no-dhcp = true
dhcp-range = "10.99.0.50,10.99.0.99"
dhcp-lease-time = "30m"
dns = ["10.99.0.1", "10.99.0.2"]
isolate = true
nat = true
uplink = "eth9"
allow-spoofing = true
forward = ["tcp:2222:52:54:00:12:34:56:22", "udp:5353:10.99.0.5:53"]
metrics = 9186
allow-host-port = ["tcp:22", "udp:5000-5010"]
reserve = ["52:54:00:12:34:56=10.99.0.5"]
max-clients = 5000
send-queue = 512
send-queue-bytes = 1048576
handshake-timeout = "3s"
slow-client-timeout = "20s"
frame-timeout = "4s"
ping-interval = "15s"
client-rate = 1000000
client-broadcast-pps = 100
max-macs-per-client = 2
mac-ageing = "60s"
io-fallback = true
offload = true
runtime-dir = "/run/tw-test"
log-level = "debug"
token-secret = "/etc/tapwire/secret"
allow-origin = ["https://farm.example", "http://127.0.0.1:8000"]
admin-token = "/etc/tapwire/admin-token"
networks = "declared"
max-networks = 64
network-pool = "10.200.0.0/16"
network-prefix = 26
network-idle = "1m"
trusted-proxy = ["10.250.0.2", "fd00::/8"]
host-name = "hB"
hosts = 3
host-index = 1
span-peers = ["10.250.0.11", "10.250.0.12"]
span-dev = "ul0"
"#;

#[test]
fn a_file_with_every_option_equals_the_same_command_line() {
    // Every long option of `tapwire run` but --config appears in the file.
    for arg in cmd().get_arguments() {
        if let Some(long) = arg.get_long().filter(|l| *l != "config") {
            assert!(
                EVERY_OPTION.contains(&format!("\n{long} = ")),
                "{long} missing"
            );
        }
    }
    let from_file = with_file(&["tapwire"], EVERY_OPTION).unwrap();
    let mut cli = vec!["tapwire".to_string()];
    for line in EVERY_OPTION.lines().filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once(" = ").unwrap();
        let value = value.trim_matches(|c| c == '[' || c == ']');
        match value {
            "true" => cli.push(format!("--{key}")),
            _ => {
                for v in value.split(", ") {
                    cli.push(format!("--{key}"));
                    cli.push(v.trim_matches('"').to_string());
                }
            }
        }
    }
    let refs: Vec<&str> = cli.iter().map(String::as_str).collect();
    let from_cli = with_file(&refs, "").unwrap();
    assert_eq!(format!("{from_file:?}"), format!("{from_cli:?}"));
    assert_eq!(from_file.clients.max_clients, 5000);
    assert_eq!(from_file.forwards.len(), 2);
}

#[test]
fn the_command_line_wins_over_the_file() {
    let args = with_file(
        &["tapwire", "--max-clients", "7", "--nat"],
        "max-clients = 9\nsend-queue = 64\nnat = false\n",
    )
    .unwrap();
    assert_eq!(args.clients.max_clients, 7);
    assert_eq!(args.clients.send_queue, 64);
    assert!(args.nat);
}

#[test]
fn errors_name_the_file_line_and_key() {
    let err = |toml: &str| with_file(&["tapwire"], toml).unwrap_err();
    let e = err("nat = true\n\nmax-clinets = 5\n");
    assert!(e.starts_with("t.toml:3: max-clinets: unknown key"), "{e}");
    let e = err("# clients\nmax-clients = \"lots\"\n");
    assert!(
        e.starts_with("t.toml:2: max-clients: invalid value 'lots'"),
        "{e}"
    );
    let e = err("listen = true\n");
    assert!(e.starts_with("t.toml:1: listen: "), "{e}");
    let e = err("nat = \"yes\"\n");
    assert!(e.starts_with("t.toml:1: nat: "), "{e}");
    let e = err("forward = [\"tcp:1:10.86.0.5:2\", { x = 1 }]\n");
    assert!(e.contains("t.toml:1: forward: table is not a value"), "{e}");
    let e = err("reserve = \"52:54:00:12:34:56\"\n");
    assert!(e.starts_with("t.toml:1: reserve: "), "{e}");
    let e = err("config = \"other.toml\"\n");
    assert!(e.contains("unknown key"), "{e}");
    let e = err("nat = \n");
    assert!(e.starts_with("t.toml: not valid TOML"), "{e}");
}

#[test]
fn the_shipped_example_loads_and_names_every_option() {
    let text = include_str!("../../../examples/tapwire.toml");
    for arg in cmd().get_arguments() {
        if let Some(long) = arg.get_long().filter(|l| *l != "config") {
            assert!(
                text.contains(&format!("\n{long} = ")) || text.contains(&format!("\n# {long} = ")),
                "the example lacks {long}"
            );
        }
    }
    let args = with_file(&["tapwire"], text).unwrap();
    let defaults = with_file(&["tapwire"], "").unwrap();
    assert_eq!(
        format!("{args:?}"),
        format!("{defaults:?}"),
        "the example sets the defaults"
    );
}
