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
    /// Print an access token for a relay run with --token-secret, and the URL to give v86.
    Token {
        /// The secret file given to the relay's --token-secret.
        #[arg(long, env = "TAPWIRE_TOKEN_SECRET", value_name = "FILE")]
        token_secret: std::path::PathBuf,
        /// How long the token opens the relay (e.g. 1h, 30m, 7d).
        #[arg(long, default_value = "1h", value_parser = tapwire::config::parse_duration)]
        ttl: std::time::Duration,
        /// The network the token opens (letters, digits, _ and -; up to 32; none: the default
        /// network); the URL printed joins it (/n/NETWORK).
        #[arg(long, default_value = "")]
        network: String,
        /// The relay's URL, to print the URL with the token.
        #[arg(long, default_value = "ws://127.0.0.1:8086/")]
        url: String,
    },
    /// Undo what a crashed or killed run left behind (from its ledger).
    Cleanup {
        /// Only the run that used this TAP name (default: every dead run).
        #[arg(long, env = "TAPWIRE_TAP")]
        tap: Option<String>,
        #[arg(long, env = "TAPWIRE_RUNTIME_DIR", default_value = "/run/tapwire")]
        runtime_dir: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None | Some(Command::Run(_)) => {
            // Parsed again with the options of a --config file, if any.
            let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
            if argv.get(1).is_some_and(|a| a == "run") {
                argv.remove(1);
            }
            match RunArgs::load(&argv) {
                Ok(args) => run(args),
                Err(tapwire::config::LoadError::Args(e)) => e.exit(),
                Err(e) => {
                    say_error(&e);
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Token {
            token_secret,
            ttl,
            network,
            url,
        }) => {
            let made = tapwire::config::read_token_secret(&token_secret).and_then(|secret| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                tapwire::ws::access::mint(&secret, now.saturating_add(ttl.as_secs()), &network)
            });
            match made {
                Ok(token) => {
                    println!("{token}");
                    println!(
                        "{}",
                        tapwire::networks::url_for(&url, &network, Some(&token))
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    say_error(&e);
                    ExitCode::from(2)
                }
            }
        }
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
            logging::init(log::LevelFilter::Info, None);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    say_error(&e);
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
    }
}

fn run(args: RunArgs) -> ExitCode {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cfg = match args.validate(cores) {
        Ok(cfg) => cfg,
        Err(e) => {
            say_error(&e);
            return ExitCode::from(2);
        }
    };
    logging::init(cfg.log_level, cfg.farm.host_name.as_deref());
    let listeners = match tapwire::bind_listeners(cfg.listen, cfg.cores) {
        Ok(l) => l,
        Err(e) => {
            say_error(&e);
            return ExitCode::FAILURE;
        }
    };
    let tls_listeners = match cfg
        .tls
        .as_ref()
        .map(|t| tapwire::bind_tls_listeners(t.listen, cfg.cores))
    {
        None => Vec::new(),
        Some(Ok(l)) => l,
        Some(Err(e)) => {
            say_error(&e);
            return ExitCode::FAILURE;
        }
    };
    let debug = cfg.log_level >= log::LevelFilter::Debug;
    match tapwire::run(
        cfg,
        listeners,
        tls_listeners,
        tapwire::Shutdown::with_signals(),
    ) {
        Ok(report) => {
            // A person reads the paragraph; the full counters at debug (the tests read them).
            if debug {
                eprint!("{}", report.summary);
            }
            log::info!("{}", report.paragraph);
            match report.lost {
                Some(why) => {
                    say_error(&why);
                    ExitCode::FAILURE
                }
                None => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            say_error(&e);
            ExitCode::FAILURE
        }
    }
}

/// Prints `tapwire: ERROR` on stderr in one write, so that a reader of the log (a supervisor,
/// a test) never sees half of it.
fn say_error(e: &dyn std::fmt::Display) {
    use std::io::Write;
    let line = format!("tapwire: {e}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
