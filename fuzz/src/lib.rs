//! Shared by the fuzz targets: each one checks, once, that it was built with debug assertions
//! and overflow checks (`scripts/fuzz.sh` builds them so), since an overflow the checks would
//! catch is exactly what a fuzzer should find.

/// Panics unless debug assertions and overflow checks are on in this build.
pub fn checks_are_on() {
    assert!(
        cfg!(debug_assertions),
        "fuzz targets must be built with debug assertions (cargo fuzz build --debug-assertions)"
    );
    // libfuzzer-sys's panic hook aborts on any panic: set it aside for this one.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let overflowed = std::panic::catch_unwind(|| {
        let x: u8 = std::hint::black_box(u8::MAX);
        std::hint::black_box(x + 1)
    });
    std::panic::set_hook(hook);
    assert!(
        overflowed.is_err(),
        "fuzz targets must be built with overflow checks (fuzz/Cargo.toml's release profile)"
    );
}
