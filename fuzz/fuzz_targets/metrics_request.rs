//! The metrics listener's request line on any head: never a panic, and a route only for the
//! request line that names it (`GET /metrics` or `GET /healthz`, any query, then a space or
//! the line's end; any method on a path under `/api/`, whose own route never panics).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire::control::api::api_route;
use tapwire::control::metrics::{route, Route};

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |head: &[u8]| {
    let line = head.split(|b| *b == b'\r').next().unwrap_or(&[]);
    let names = |path: &[u8]| {
        line.strip_prefix(b"GET ".as_slice())
            .and_then(|rest| rest.strip_prefix(path))
            .is_some_and(|rest| rest.is_empty() || rest[0] == b' ' || rest[0] == b'?')
    };
    let target = line.split(|b| *b == b' ').nth(1).unwrap_or(&[]);
    match route(head) {
        Route::Api => {
            assert!(target.starts_with(b"/api/"));
            let method = line.split(|b| *b == b' ').next().unwrap_or(&[]);
            let path = std::str::from_utf8(target).unwrap_or("");
            let _ = api_route(method, path.split('?').next().unwrap_or(""));
        }
        Route::Metrics => assert!(names(b"/metrics")),
        Route::Healthz => assert!(names(b"/healthz")),
        Route::NotFound => {
            assert!(line.starts_with(b"GET ") || line == b"GET");
            assert!(!target.starts_with(b"/api/"));
        }
        Route::MethodNotAllowed => assert!(!line.starts_with(b"GET ") && line != b"GET"),
    }
});
