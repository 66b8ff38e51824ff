//! The short fuzzing pass of CI: every target for a few thousand inputs with
//! fixed seeds, and every saved regression input in `tests/fuzz-corpus/`. The
//! long runs use the `peercache-fuzz` binary (`docs/fuzzing.md`).

use std::path::PathBuf;
use std::time::Duration;

use peercache_tests::fuzz::{
    CountingAlloc, RunConfig, allocations_counted, check_one, from_hex, run, target, targets,
    to_hex,
};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The input as hex, cut short for the log.
fn shown(input: &[u8]) -> String {
    let hex = to_hex(&input[..input.len().min(512)]);
    if input.len() > 512 {
        format!("{hex}… ({} bytes)", input.len())
    } else {
        hex
    }
}

fn no_hang(f: &peercache_tests::fuzz::Failure) {
    panic!("{} hangs: {} on {}", f.target, f.message, shown(&f.input));
}

#[test]
fn every_target_survives_a_short_run() {
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for t in targets() {
        let stats = run(
            t,
            &RunConfig {
                seed: 20_261_201,
                iterations: t.ci_inputs,
                threads: 1,
                // Debug builds are slow; this catches hangs, not speed.
                max_input_time: Duration::from_secs(5),
                hang_after: Duration::from_secs(60),
            },
            no_hang,
        );
        report.push(format!(
            "{}: {} inputs, {} accepted, {:.2} s",
            t.name,
            stats.inputs,
            stats.accepted,
            stats.elapsed.as_secs_f64()
        ));
        assert_eq!(stats.inputs, t.ci_inputs, "{}", t.name);
        for f in stats.failures {
            failures.push(format!(
                "{}: {}\n  input: {}",
                f.target,
                f.message,
                shown(&f.input)
            ));
        }
    }
    println!("{}", report.join("\n"));
    assert!(
        allocations_counted(),
        "the counting allocator is not in use"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Each file `tests/fuzz-corpus/<target>/<name>.hex` is an input that once
/// failed; it must pass now.
#[test]
fn regression_corpus_passes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus");
    let mut ran = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("tests/fuzz-corpus exists") {
        let sub = entry.expect("a corpus entry").path();
        let name = sub
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 target name");
        let t = target(name).unwrap_or_else(|| panic!("{} names no target", sub.display()));
        for file in std::fs::read_dir(&sub).expect("a target's corpus") {
            let path = file.expect("a corpus file").path();
            let text = std::fs::read_to_string(&path).expect("a readable corpus file");
            let input = from_hex(&text).unwrap_or_else(|| panic!("{} is not hex", path.display()));
            ran += 1;
            if let Err(e) = check_one(t, &input) {
                failures.push(format!("{}: {e}", path.display()));
            }
        }
    }
    assert!(ran > 0, "no regression inputs in {}", dir.display());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
