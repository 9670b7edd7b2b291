//! The one rule for a test that cannot run here (not root, a tool or an asset missing, no
//! io_uring): it says so where a person sees it, writes it where the test script counts it,
//! and fails outright when `TAPWIRE_NO_SKIP` is set.
//!
//! - `TAPWIRE_NO_SKIP=1` (set by `scripts/test.sh` as root, so in CI): every skip is a
//!   failure, with its reason.
//! - `TAPWIRE_TEST_REPORT=FILE` (set by `scripts/test.sh` on every run): each skip appends
//!   one line `skipped<TAB>TEST<TAB>REASON`, which the script counts and prints at the end.
//! - Always: a `skipped: REASON (TEST)` line straight to the process's stderr, past the test
//!   harness's output capture, so a plain `cargo test` shows every skip too, and when the test
//!   binary exits one line with how many of its tests skipped.
//!
//! [`notice`] reports the same way something a passing test wants seen (a retried download),
//! which the script prints at the end too.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

/// Tests of this process that skipped.
static SKIPPED: AtomicUsize = AtomicUsize::new(0);

/// Set (to anything but `0` or empty): a skip fails the test.
pub const NO_SKIP: &str = "TAPWIRE_NO_SKIP";
/// A file that every skip and notice appends a line to.
pub const REPORT: &str = "TAPWIRE_TEST_REPORT";

/// Whether skips are failures in this run.
pub fn forbidden() -> bool {
    std::env::var(NO_SKIP).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Records that `test` cannot run here because of `reason`; panics instead when skips are
/// forbidden. The caller returns right after.
#[track_caller]
pub fn skip(test: &str, reason: &str) {
    if forbidden() {
        panic!(
            "{test} cannot run here: {reason} ({NO_SKIP} is set, so this is a failure, not a skip)"
        );
    }
    report("skipped", test, reason);
    if SKIPPED.fetch_add(1, Ordering::Relaxed) == 0 {
        static AT_EXIT: Once = Once::new();
        // SAFETY: registers a plain function that only writes to stderr.
        AT_EXIT.call_once(|| unsafe {
            libc::atexit(say_how_many_skipped);
        });
    }
}

/// At exit: how many of this binary's tests skipped.
extern "C" fn say_how_many_skipped() {
    let n = SKIPPED.load(Ordering::Relaxed);
    let name = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let _ = std::io::stderr().write_all(
        format!("== {n} test(s) of {name} skipped (each named above with its reason); {NO_SKIP}=1 makes a skip a failure\n").as_bytes(),
    );
}

/// Reports `text` about `test` where a person sees it even when the test passes: on stderr
/// past the output capture, and in the test script's closing report.
pub fn notice(test: &str, text: &str) {
    report("notice", test, text);
}

fn report(kind: &str, test: &str, text: &str) {
    let text = text.replace(['\t', '\n'], " ");
    // Straight to fd 2: libtest captures `print!`/`eprint!`, not writes to the handle.
    let _ = std::io::stderr().write_all(format!("{kind}: {text} ({test})\n").as_bytes());
    if let Some(path) = std::env::var_os(REPORT) {
        // One short append per line: lines from parallel test processes do not interleave.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(format!("{kind}\t{test}\t{text}\n").as_bytes());
        }
    }
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips `test` (see [`skip`]) unless running as root; whether it was skipped.
#[track_caller]
pub fn unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    skip(test, "needs root");
    true
}
