//! Startup overhead of `runbox run` against bare Python, bubblewrap and namespaces alone.
//!
//! Every variant runs `/usr/bin/python3 -c 'print(1)'` and must print exactly "1\n". Variants
//! alternate within each round (bare, runbox, bwrap, unshare, bare, ...) so that drift in the
//! machine (page cache, CPU frequency, noisy neighbours) hits all of them alike instead of
//! whichever happened to run last. Results go to stdout as a table and to
//! `target/bench/startup.json`.
//!
//! Run: `cargo bench -p runbox --bench startup` (RUNBOX_BENCH_N sets the runs per variant).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::Serialize;

const PYTHON: &str = "/usr/bin/python3";
const PY_ARGS: [&str; 2] = ["-c", "print(1)"];
const EXPECTED_STDOUT: &[u8] = b"1\n";
const DEFAULT_RUNS: usize = 100;
const WARMUP_ROUNDS: usize = 5;

/// Built by cargo with the bench profile before this benchmark runs.
const RUNBOX_BIN: &str = env!("CARGO_BIN_EXE_runbox");

#[derive(Debug)]
struct Variant {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    samples: Vec<Duration>,
}

impl Variant {
    fn new(name: &'static str, program: impl Into<PathBuf>, prefix: &[&str]) -> Self {
        let mut args: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        if name != "bare" {
            args.push(PYTHON.to_string());
        }
        args.extend(PY_ARGS.iter().map(|s| s.to_string()));
        Self {
            name,
            program: program.into(),
            args,
            samples: Vec::new(),
        }
    }

    fn command_line(&self) -> String {
        let mut line = self.program.display().to_string();
        for arg in &self.args {
            if arg.contains(' ') || arg.contains('(') {
                let _ = write!(line, " '{arg}'");
            } else {
                let _ = write!(line, " {arg}");
            }
        }
        line
    }

    /// Runs the command once and returns its wall time from spawn to reaped exit.
    fn run_once(&self) -> Result<Duration> {
        let start = Instant::now();
        let output = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("spawning {}", self.program.display()))?;
        let elapsed = start.elapsed();
        if !output.status.success() || output.stdout != EXPECTED_STDOUT {
            bail!(
                "`{}` failed ({}): stdout {:?}, stderr {:?}",
                self.command_line(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr).trim_end(),
            );
        }
        Ok(elapsed)
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    name: &'static str,
    command: String,
    runs: usize,
    median_ms: f64,
    p10_ms: f64,
    p90_ms: f64,
    mean_ms: f64,
    min_ms: f64,
    max_ms: f64,
    overhead_ms: f64,
    ratio: f64,
}

#[derive(Debug, Serialize)]
struct Skipped {
    name: &'static str,
    reason: String,
}

#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    unix_time: u64,
    kernel: String,
    cpus: usize,
    uid: u32,
    runs_per_variant: usize,
    warmup_rounds: usize,
    results: Vec<Summary>,
    skipped: Vec<Skipped>,
}

/// Milliseconds rounded to microseconds: finer digits are noise at this scale.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

fn summarize(variant: &Variant, bare_median_ms: Option<f64>) -> Summary {
    let mut sorted = variant.samples.clone();
    sorted.sort();
    let median_ms = ms(median(&sorted));
    let total: Duration = sorted.iter().sum();
    let bare = bare_median_ms.unwrap_or(median_ms);
    Summary {
        name: variant.name,
        command: variant.command_line(),
        runs: sorted.len(),
        median_ms,
        p10_ms: ms(percentile(&sorted, 10.0)),
        p90_ms: ms(percentile(&sorted, 90.0)),
        mean_ms: ms(total / sorted.len() as u32),
        min_ms: ms(sorted[0]),
        max_ms: ms(sorted[sorted.len() - 1]),
        overhead_ms: ((median_ms - bare) * 1000.0).round() / 1000.0,
        ratio: (median_ms / bare * 1000.0).round() / 1000.0,
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn runs_from_env() -> Result<usize> {
    match std::env::var("RUNBOX_BENCH_N") {
        Ok(value) => match value.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("RUNBOX_BENCH_N must be a positive integer, got {value:?}"),
        },
        Err(_) => Ok(DEFAULT_RUNS),
    }
}

/// `target/` of this build: the runbox binary lives in `target/<profile>/runbox`.
fn target_dir(runbox: &Path) -> PathBuf {
    runbox
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn variants(skipped: &mut Vec<Skipped>) -> Vec<Variant> {
    let mut list = vec![
        Variant::new("bare", PYTHON, &[]),
        Variant::new("runbox", RUNBOX_BIN, &["run", "--"]),
    ];
    match find_in_path("bwrap") {
        Some(bwrap) => list.push(Variant::new(
            "bwrap",
            bwrap,
            &[
                "--unshare-user",
                "--unshare-pid",
                "--unshare-net",
                "--unshare-ipc",
                "--unshare-uts",
                "--unshare-cgroup",
                "--ro-bind",
                "/usr",
                "/usr",
                "--symlink",
                "usr/bin",
                "/bin",
                "--symlink",
                "usr/lib",
                "/lib",
                "--symlink",
                "usr/lib64",
                "/lib64",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "--die-with-parent",
                "--",
            ],
        )),
        None => skipped.push(Skipped {
            name: "bwrap",
            reason: "bwrap not found in PATH (scripts/setup.sh installs bubblewrap)".into(),
        }),
    }
    match find_in_path("unshare") {
        Some(unshare) => list.push(Variant::new(
            "unshare",
            unshare,
            &[
                "--user",
                "--map-root-user",
                "--pid",
                "--fork",
                "--mount",
                "--net",
                "--ipc",
                "--uts",
                "--cgroup",
            ],
        )),
        None => skipped.push(Skipped {
            name: "unshare",
            reason: "unshare (util-linux) not found in PATH".into(),
        }),
    }
    list
}

fn print_table(results: &[Summary], skipped: &[Skipped]) {
    println!();
    println!(
        "{:<8} {:>5} {:>10} {:>10} {:>10} {:>13} {:>7}",
        "variant", "runs", "median ms", "p10 ms", "p90 ms", "overhead ms", "ratio"
    );
    for r in results {
        println!(
            "{:<8} {:>5} {:>10.2} {:>10.2} {:>10.2} {:>+13.2} {:>6.2}x",
            r.name, r.runs, r.median_ms, r.p10_ms, r.p90_ms, r.overhead_ms, r.ratio
        );
    }
    for s in skipped {
        println!("{:<8} skipped: {}", s.name, s.reason);
    }
    println!();
    println!("overhead = median minus the bare median; ratio = median / bare median");
}

fn main() -> Result<()> {
    let runs = runs_from_env()?;
    let runbox = PathBuf::from(RUNBOX_BIN);
    if !runbox.is_file() {
        bail!(
            "runbox binary missing at {}; build it with `cargo build --release -p runbox`",
            runbox.display()
        );
    }

    let mut skipped = Vec::new();
    let mut all = variants(&mut skipped);

    // Warm-up doubles as a check: a variant that cannot run here is reported, not timed.
    let mut active = Vec::new();
    for variant in all.drain(..) {
        let mut failure = None;
        for _ in 0..WARMUP_ROUNDS {
            if let Err(err) = variant.run_once() {
                failure = Some(err);
                break;
            }
        }
        match failure {
            None => active.push(variant),
            Some(err) if variant.name == "bare" => return Err(err.context("bare python3 failed")),
            Some(err) => {
                eprintln!(
                    "startup: {} does not work here, skipping it: {err:#}",
                    variant.name
                );
                skipped.push(Skipped {
                    name: variant.name,
                    reason: format!("{err:#}"),
                });
            }
        }
    }

    eprintln!(
        "startup: {runs} runs of {} variants, alternating, after {WARMUP_ROUNDS} warm-up rounds",
        active.len()
    );
    for variant in &active {
        eprintln!("  {:<8} {}", variant.name, variant.command_line());
    }
    for round in 0..runs {
        for variant in &mut active {
            let sample = variant
                .run_once()
                .with_context(|| format!("{} failed in round {}", variant.name, round + 1))?;
            variant.samples.push(sample);
        }
    }

    let bare_median = active
        .iter()
        .find(|v| v.name == "bare")
        .map(|v| summarize(v, None).median_ms);
    let results: Vec<Summary> = active.iter().map(|v| summarize(v, bare_median)).collect();
    print_table(&results, &skipped);

    let report = Report {
        benchmark: "startup",
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        uid: rustix::process::getuid().as_raw(),
        runs_per_variant: runs,
        warmup_rounds: WARMUP_ROUNDS,
        results,
        skipped,
    };
    let out_dir = target_dir(&runbox).join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let out_file = out_dir.join("startup.json");
    let json = serde_json::to_string_pretty(&report).context("serializing the report")?;
    std::fs::write(&out_file, json + "\n")
        .with_context(|| format!("writing {}", out_file.display()))?;
    println!("results written to {}", out_file.display());
    Ok(())
}
