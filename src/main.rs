//! The `tapwire` command: thin wrapper over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tapwire::config::RunArgs;
use tapwire::control::{check, cleanup, logging};

/// Relay raw Ethernet frames between WebSocket clients (v86, jor1k, JSLinux) and a host TAP.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (what a bare `tapwire` does).
    Run(Box<RunArgs>),
    /// Check that this machine can run tapwire, with the fix for each problem.
    Check,
    /// Undo what a crashed or killed run left behind (from its ledger).
    Cleanup {
        /// Only the run that used this TAP name (default: every dead run).
        #[arg(long, env = "TAPWIRE_TAP")]
        tap: Option<String>,
        #[arg(long, env = "TAPWIRE_RUNTIME_DIR", default_value = "/run/tapwire")]
        runtime_dir: std::path::PathBuf,
    },
    /// Test tool: a fake guest with a real Linux network stack behind a TAP in a namespace.
    Guest(tapwire::guest::GuestArgs),
    /// Test tool: many synthetic guests in one process (DHCP lease, ARP, ping the gateway).
    Swarm(tapwire::swarm::SwarmArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(*args),
        Some(Command::Check) => {
            let mut fatal = false;
            for f in check::run_checks() {
                let mark = if f.ok {
                    "ok  "
                } else if f.fatal {
                    "FAIL"
                } else {
                    "warn"
                };
                fatal |= !f.ok && f.fatal;
                println!("{mark} {}", f.what);
            }
            if fatal {
                println!("tapwire cannot run here until the FAIL lines are fixed");
                ExitCode::FAILURE
            } else {
                println!("tapwire can run here");
                ExitCode::SUCCESS
            }
        }
        Some(Command::Cleanup { tap, runtime_dir }) => {
            logging::init(log::LevelFilter::Info);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tapwire: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let (report, ok) = rt.block_on(cleanup::cleanup(&runtime_dir, tap.as_deref()));
            for line in report {
                println!("{line}");
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(Command::Swarm(args)) => match tapwire::swarm::run(&args) {
            Ok(r) => {
                println!(
                    "swarm: {} guests, {} upgraded, {} leased, {} pinged the gateway, {:.2} s, {} retransmits, {} echoes answered",
                    r.guests, r.upgraded, r.leased, r.pinged, r.elapsed, r.retransmits, r.echoes_answered
                );
                if args.udp_to.is_some() {
                    let pct = |p| r.rtt_percentile(p).map_or("–".into(), |v| v.to_string());
                    println!(
                        "udp: {} sent in {:.1} s ({:.0}/s), {} behind schedule, {} writes blocked by the relay; {} received, {} of them echoes of ours; rtt p50 {} µs, p99 {} µs, max {} µs",
                        r.udp_sent,
                        r.udp_seconds,
                        r.udp_sent as f64 / r.udp_seconds.max(1e-9),
                        r.udp_behind,
                        r.write_blocked,
                        r.udp_received,
                        r.udp_echoes,
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
            Err(e) => {
                eprintln!("tapwire swarm: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Guest(args)) => match tapwire::guest::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tapwire guest: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(args: RunArgs) -> ExitCode {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cfg = match args.validate(cores) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("tapwire: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(cfg.log_level);
    let listeners = match tapwire::bind_listeners(cfg.listen, cfg.cores) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tapwire: {e}");
            return ExitCode::FAILURE;
        }
    };
    match tapwire::run(cfg, listeners, tapwire::Shutdown::with_signals()) {
        Ok(report) => {
            eprint!("{}", report.summary);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tapwire: {e}");
            ExitCode::FAILURE
        }
    }
}
