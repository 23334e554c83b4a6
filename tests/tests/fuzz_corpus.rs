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

/// The tar-reader cases (`labship_tests::tar_cases`: archives Python's
/// tarfile, GNU tar and bsdtar read otherwise than the tar crate, and some
/// they all read alike) are saved inputs of both archive targets, as
/// `tar-readers-<slug>`, so every fuzzing run starts from them. Compares the
/// tar inside, not the zstd bytes, which another libzstd may spell otherwise.
#[test]
fn the_corpora_hold_every_tar_reader_case() {
    let mut missing = Vec::new();
    for (slug, tar) in labship_tests::fuzz::tar_reader_cases() {
        for target in ["archive", "archive_tar"] {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/corpus")
                .join(target)
                .join(format!("tar-readers-{slug}"));
            let saved = std::fs::read(&path).ok().map(|b| match target {
                "archive" => zstd::decode_all(b.as_slice()).unwrap_or_default(),
                _ => b,
            });
            if saved.as_ref() != Some(&tar) {
                missing.push(path.display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "missing or stale: {missing:?}; write them with `cargo nextest run -p labship-tests --test fuzz_corpus --run-ignored only write_tar_reader_cases`"
    );
}

/// Writes `fuzz/corpus/{archive,archive_tar}/tar-readers-<slug>`.
#[test]
#[ignore = "writes into the source tree"]
fn write_tar_reader_cases() {
    for (slug, tar) in labship_tests::fuzz::tar_reader_cases() {
        for (target, bytes) in [
            ("archive", labship_tests::episode::zst(&tar)),
            ("archive_tar", tar.clone()),
        ] {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/corpus")
                .join(target);
            std::fs::write(dir.join(format!("tar-readers-{slug}")), bytes).expect("write case");
        }
    }
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
