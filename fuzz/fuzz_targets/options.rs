//! Every option with a parser of its own (`--forward`, `--reserve`, `--subnet`,
//! `--allow-host-port`, durations, MACs, interface names, addresses, numbers, the farm's
//! `--trusted-proxy`, `--host-name`, `--hosts` and `--host-index`) given any value,
//! alone or twice, then the whole set validated: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire::config::RunArgs;

const OPTIONS: &[&str] = &[
    "--forward",
    "--reserve",
    "--subnet",
    "--dhcp-range",
    "--allow-host-port",
    "--handshake-timeout",
    "--slow-client-timeout",
    "--frame-timeout",
    "--ping-interval",
    "--mac-ageing",
    "--dhcp-lease-time",
    "--tap",
    "--attach-bridge",
    "--uplink",
    "--metrics",
    "--listen",
    "--listen-tls",
    "--dns",
    "--allow-origin",
    "--mtu",
    "--max-frame",
    "--cores",
    "--max-clients",
    "--send-queue",
    "--send-queue-bytes",
    "--max-macs-per-client",
    "--client-rate",
    "--client-broadcast-pps",
    "--trusted-proxy",
    "--host-name",
    "--hosts",
    "--host-index",
    "--network-pool",
    "--network-prefix",
    "--max-networks",
];

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |data: Vec<(u8, &str)>| {
    let mut argv: Vec<std::ffi::OsString> = vec!["tapwire".into()];
    for (option, value) in data.into_iter().take(8) {
        argv.push(OPTIONS[usize::from(option) % OPTIONS.len()].into());
        argv.push(value.into());
    }
    if let Ok(args) = RunArgs::load(&argv) {
        let _ = args.validate(2);
    }
});
