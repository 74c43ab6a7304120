#![no_main]

// The checks live in one file shared with tests/fuzz_corpus.rs, which
// replays the stored corpus on stable; this target uses one of them.
#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::config_parse(data));
