//! Shared by the property tests (tests/fuzz_*.rs).

use proptest::test_runner::Config as ProptestConfig;

/// `cases` unless `CALLBRIDGE_FUZZ_CASES` asks for another count.
pub fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("CALLBRIDGE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // No regression files next to the sources; failures print the minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
