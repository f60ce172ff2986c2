//! The property tests' configuration: a bounded number of cases in the normal suite, more on demand through
//! `PROPTEST_CASES` (as proptest's own default reads it), and no regression files written into the sources.

use proptest::test_runner::Config;

/// `cases` cases, or `PROPTEST_CASES` when it is set to a number.
pub(crate) fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}
