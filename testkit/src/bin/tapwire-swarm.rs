//! `tapwire-swarm`: many synthetic guests in one process. Test and benchmark tool.

use std::process::ExitCode;

use clap::Parser;
use tapwire_testkit::swarm::{self, SwarmArgs};

/// N synthetic guests, each on its own WebSocket with a random MAC: a DHCP lease (or a static
/// address), ARP for the gateway, one ping; optionally a timed UDP phase with round-trip
/// times. Exit 0 when every guest pinged.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    args: SwarmArgs,
}

fn main() -> ExitCode {
    let Cli { args } = Cli::parse();
    let r = match swarm::run(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tapwire-swarm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addressing = match args.static_from {
        Some(_) => "static addresses (no DHCP)".to_string(),
        None => format!("{} leased", r.leased),
    };
    println!(
        "swarm: {} guests, {} upgraded, {addressing}, {} pinged the gateway, {:.2} s, {} retransmits, {} echoes answered",
        r.guests, r.upgraded, r.pinged, r.elapsed, r.retransmits, r.echoes_answered
    );
    if args.udp_to.is_some() {
        let pct = |p| r.rtt_percentile(p).map_or("–".into(), |v| v.to_string());
        println!(
            "udp: {} sent in {:.1} s ({:.0}/s), {} behind schedule, {} writes blocked by the relay; {} received, {} of them echoes of ours; {} broadcasts sent, {} broadcast copies received; rtt p50 {} µs, p99 {} µs, max {} µs",
            r.udp_sent,
            r.udp_seconds,
            r.udp_sent as f64 / r.udp_seconds.max(1e-9),
            r.udp_behind,
            r.write_blocked,
            r.udp_received,
            r.udp_echoes,
            r.udp_broadcasts_sent,
            r.udp_broadcasts_received,
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
    if r.pinged == r.guests {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
