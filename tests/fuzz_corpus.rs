//! Replays the stored fuzz corpus (`fuzz/corpus/<target>/`) through the
//! checks the fuzz targets run, on stable and without libFuzzer, so that
//! every `cargo test` keeps what the fuzzer once found interesting
//! passing. docs/FUZZING.md says how the corpus is grown.

use std::path::{Path, PathBuf};

#[path = "../fuzz/checks.rs"]
mod checks;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    // An empty directory would make the replay pass while testing nothing.
    assert!(!files.is_empty(), "no corpus files in {}", dir.display());
    files
}

/// Runs `check` on every file of the target's corpus; a failure names the
/// file, which is also the input to hand to the fuzz target to debug it.
fn replay(target: &str, check: fn(&[u8])) {
    for path in corpus(target) {
        let data = std::fs::read(&path).expect("readable corpus file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        if let Err(panic) = outcome {
            eprintln!("fuzz corpus input {} failed", path.display());
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn wire_decode_corpus() {
    replay("wire_decode", checks::wire_decode);
}

#[test]
fn config_parse_corpus() {
    replay("config_parse", checks::config_parse);
}

#[test]
fn engine_corpus() {
    replay("engine", checks::engine);
}
