//! Fuzzes every parser that takes bytes from outside (see `docs/fuzzing.md`).
//!
//! ```text
//! cargo run --release -p peercache-tests --bin peercache-fuzz -- --target all --iterations 10000000
//! cargo run --release -p peercache-tests --bin peercache-fuzz -- --list
//! cargo run --release -p peercache-tests --bin peercache-fuzz -- --target auth --replay crash.hex
//! ```
//! Flags: `--target NAME[,NAME…]|all`, `--iterations N` (per target), `--seed S`,
//! `--threads T`, `--out DIR` (where failing inputs go, as hex; default
//! `fuzz-failures`), `--max-ms M` (an input slower than this fails; default 1000),
//! `--replay FILE` (runs one saved input). Exits 1 when anything failed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use peercache_tests::fuzz::{
    CountingAlloc, Failure, RunConfig, Target, check_one, from_hex, run, target, targets, to_hex,
};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

struct Args {
    targets: Vec<&'static Target>,
    iterations: u64,
    seed: u64,
    threads: usize,
    out: PathBuf,
    max_ms: u64,
    replay: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut args = Args {
        targets: targets().iter().collect(),
        iterations: 100_000,
        seed: 1,
        threads: 1,
        out: PathBuf::from("fuzz-failures"),
        max_ms: 1000,
        replay: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--list" => {
                for t in targets() {
                    println!("{:<14} {}", t.name, t.about);
                }
                return Ok(None);
            }
            "--target" => {
                let v = value()?;
                if v != "all" {
                    args.targets = v
                        .split(',')
                        .map(|n| target(n).with_context(|| format!("no target {n:?} (--list)")))
                        .collect::<anyhow::Result<_>>()?;
                }
            }
            "--iterations" => args.iterations = value()?.parse().context("--iterations")?,
            "--seed" => args.seed = value()?.parse().context("--seed")?,
            "--threads" => args.threads = value()?.parse().context("--threads")?,
            "--out" => args.out = PathBuf::from(value()?),
            "--max-ms" => args.max_ms = value()?.parse().context("--max-ms")?,
            "--replay" => args.replay = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!(
                    "peercache-fuzz [--target NAME[,NAME…]|all] [--iterations N] [--seed S] \
                     [--threads T] [--out DIR] [--max-ms M] [--replay FILE] [--list]"
                );
                return Ok(None);
            }
            other => bail!("unknown flag {other:?} (--help)"),
        }
    }
    Ok(Some(args))
}

fn save(dir: &Path, failure: &Failure) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let digest = fnv(&failure.input);
    let path = dir.join(format!("{}-{digest:016x}.hex", failure.target));
    std::fs::write(&path, to_hex(&failure.input) + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A short name for an input (FNV-1a; not a security boundary).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn report(out: &Path, failure: &Failure) {
    let hex = to_hex(&failure.input);
    let shown = if hex.len() > 2000 {
        format!("{}… ({} bytes)", &hex[..2000], failure.input.len())
    } else {
        hex
    };
    eprintln!("FAILURE in {}: {}", failure.target, failure.message);
    eprintln!("  input (hex): {shown}");
    match save(out, failure) {
        Ok(path) => eprintln!("  saved to {}", path.display()),
        Err(e) => eprintln!("  not saved: {e:#}"),
    }
}

static OUT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn on_hang(failure: &Failure) {
    let out = OUT
        .get()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("fuzz-failures"));
    report(&out, failure);
    std::process::exit(2);
}

fn main() -> anyhow::Result<()> {
    let Some(args) = parse_args()? else {
        return Ok(());
    };
    if let Some(path) = &args.replay {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let input = from_hex(&text).context("the file is not hex")?;
        for t in &args.targets {
            match check_one(t, &input) {
                Ok(accepted) => println!("{}: ok (accepted: {accepted})", t.name),
                Err(e) => println!("{}: FAILS: {e}", t.name),
            }
        }
        return Ok(());
    }
    let _ = OUT.set(args.out.clone());
    let config = RunConfig {
        seed: args.seed,
        iterations: args.iterations,
        threads: args.threads,
        max_input_time: Duration::from_millis(args.max_ms),
        hang_after: Duration::from_millis(args.max_ms.saturating_mul(10).max(5000)),
    };
    println!(
        "seed {}, {} inputs per target, {} thread(s)",
        args.seed, args.iterations, args.threads
    );
    println!(
        "{:<14} {:>12} {:>12} {:>10} {:>12} {:>10} failures",
        "target", "inputs", "accepted", "secs", "inputs/s", "slowest"
    );
    let started = Instant::now();
    let (mut total, mut failed) = (0u64, 0usize);
    for t in &args.targets {
        let stats = run(t, &config, on_hang);
        let secs = stats.elapsed.as_secs_f64();
        println!(
            "{:<14} {:>12} {:>12} {:>10.1} {:>12.0} {:>10.2?} {}",
            t.name,
            stats.inputs,
            stats.accepted,
            secs,
            stats.inputs as f64 / secs.max(1e-9),
            stats.slowest,
            stats.failures.len()
        );
        for f in &stats.failures {
            report(&args.out, f);
        }
        total += stats.inputs;
        failed += stats.failures.len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "total: {total} inputs in {secs:.1} s ({:.0}/s), {failed} failure(s)",
        total as f64 / secs.max(1e-9)
    );
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
