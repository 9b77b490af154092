//! The fuzz targets' shared settings. Every parser that reads bytes from
//! outside has a property test (proptest, on the stable toolchain) that
//! feeds it arbitrary and structured inputs and checks it never panics:
//! 10,000 cases per target in each test run, `COURIER_FUZZ_CASES` for a
//! longer run. A failing input is written to the crate's
//! `proptest-regressions/` and replayed first from then on.

/// Cases per fuzz target: `COURIER_FUZZ_CASES`, or 10,000.
pub fn cases() -> u32 {
    std::env::var("COURIER_FUZZ_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(10_000)
}
