//! `tapwire-guest`: a fake guest with a real Linux network stack (a TAP in a namespace,
//! pumped to a relay). Test tool.

use std::process::ExitCode;

use clap::Parser;
use tapwire_testkit::guest::{self, GuestArgs};

/// A fake guest whose network stack is the Linux one: a TAP in namespace NS, pumped to the
/// relay at URL. Runs until the relay closes the connection.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    args: GuestArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match guest::run(&cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tapwire-guest: {e}");
            ExitCode::FAILURE
        }
    }
}
