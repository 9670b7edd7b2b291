//! A `--config` file of any text, translated into options and validated: never a panic; what
//! loads, validates or is refused with a message that names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire::config::{LoadError, RunArgs};

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |text: &str| {
    let argv: Vec<std::ffi::OsString> = ["tapwire", "--config", "fuzz.toml"]
        .map(Into::into)
        .to_vec();
    match RunArgs::load_with_text(&argv, text) {
        Ok(args) => {
            let _ = args.validate(2);
        }
        Err(LoadError::File(message)) => assert!(message.contains("fuzz.toml"), "{message}"),
        Err(LoadError::Args(_)) => {}
    }
});
