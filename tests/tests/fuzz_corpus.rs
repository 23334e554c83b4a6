//! Replays the saved fuzz corpora (`fuzz/corpus/<target>/`) and the
//! fuzzers' minimized findings (`fuzz/regressions/<target>/`) through the same
//! harnesses the fuzz targets run (`labship_tests::fuzz`), so what a long
//! local fuzzing run learned is checked on every test run, without a nightly
//! toolchain. How the corpora were grown: docs/reliability.md § Fuzzing.

use labship_tests::fuzz::TARGETS;
use std::path::PathBuf;

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd.map(|e| e.expect("read corpus dir").path()).collect();
    v.sort();
    v
}

#[test]
fn every_saved_input_replays_cleanly() {
    let mut total = 0;
    for (target, harness) in TARGETS {
        let corpus = inputs("corpus", target);
        assert!(
            corpus.len() >= 10,
            "fuzz/corpus/{target}/ holds {} inputs; the saved corpus is missing",
            corpus.len()
        );
        for path in corpus.iter().chain(&inputs("regressions", target)) {
            let data = std::fs::read(path).expect("read corpus file");
            let outcome = std::panic::catch_unwind(|| harness(&data));
            assert!(
                outcome.is_ok(),
                "{target}: {} breaks an invariant (replay: cargo fuzz run {target} {})",
                path.display(),
                path.display()
            );
            total += 1;
        }
    }
    eprintln!("MEASURED fuzz_corpus: {total} saved inputs replayed");
}

/// Writes the starting inputs of each target into `fuzz/corpus/<target>/`
/// (`cargo nextest run -p labship-tests --test fuzz_corpus --run-ignored only`).
#[test]
#[ignore = "writes the seed corpus into the source tree"]
fn write_seeds() {
    for (target, harness) in TARGETS {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        for (i, seed) in labship_tests::fuzz::seeds(target).iter().enumerate() {
            harness(seed);
            std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("write seed");
        }
    }
}
