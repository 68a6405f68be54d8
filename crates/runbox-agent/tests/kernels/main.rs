//! The kernels run directly as the current user (no sandbox): state across cells, rich
//! python results, tracebacks, interrupts, timeouts, crashes, the import policy, output caps,
//! and the python start-up and round-trip times (printed; run with `--nocapture`).
//!
//! Needs python3 with numpy, pandas and matplotlib, node and bash (scripts/setup.sh installs
//! them); a test whose interpreter is missing fails with the reason.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use runbox_agent::kernels::{CellOutcome, ImportPolicy, Kernel, Language};
use runbox_agent::procs::Procs;
use runbox_agent::{stream, Config};
use runbox_proto::execd::{ErrorDetail, Event, EventKind};

/// One `Procs` (and reaper) for the whole test binary, started on a runtime of its own that
/// outlives every `#[tokio::test]` runtime: tests run as parallel threads of one process.
fn procs() -> Procs {
    static PROCS: OnceLock<Procs> = OnceLock::new();
    PROCS
        .get_or_init(|| {
            let procs = Procs::default();
            let (tx, rx) = std::sync::mpsc::channel();
            let reaper = procs.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("reaper runtime");
                rt.block_on(async move {
                    reaper.start_reaper().expect("reaper");
                    tx.send(()).expect("reaper started");
                    std::future::pending::<()>().await
                });
            });
            rx.recv().expect("reaper started");
            procs
        })
        .clone()
}

fn config(output_cap: usize) -> Config {
    let mut b = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    let dir = std::env::temp_dir().join(format!(
        "runbox-kernels-{}-{}",
        std::process::id(),
        u64::from_ne_bytes(b)
    ));
    std::fs::create_dir_all(&dir).expect("workspace");
    Config {
        output_cap,
        ..Config::in_dir(dir)
    }
}

async fn start(language: Language) -> Kernel {
    start_with(language, &ImportPolicy::default(), 1 << 20).await
}

async fn start_with(language: Language, policy: &ImportPolicy, output_cap: usize) -> Kernel {
    Kernel::start(language, &procs(), &config(output_cap), policy)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot start the {} kernel (is it installed?): {e}",
                language.name()
            )
        })
}

/// The events one cell produced.
struct Cell {
    events: Vec<Event>,
    outcome: CellOutcome,
    elapsed: Duration,
}

impl Cell {
    fn lines(&self, kind: EventKind) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e.kind == kind)
            .filter_map(|e| e.text.clone())
            .collect()
    }

    fn stdout(&self) -> String {
        self.lines(EventKind::Stdout).join("\n")
    }

    fn results(&self) -> Vec<&std::collections::BTreeMap<String, serde_json::Value>> {
        self.events
            .iter()
            .filter(|e| e.kind == EventKind::Result)
            .filter_map(|e| e.results.as_ref())
            .collect()
    }

    /// The `text` of the only result.
    fn text(&self) -> String {
        let results = self.results();
        assert_eq!(results.len(), 1, "expected one result: {:#?}", self.events);
        results[0]["text"].as_str().expect("text").to_owned()
    }

    fn error(&self) -> &ErrorDetail {
        let errors: Vec<_> = self
            .events
            .iter()
            .filter_map(|e| e.error.as_ref())
            .collect();
        assert_eq!(errors.len(), 1, "expected one error: {:#?}", self.events);
        errors[0]
    }

    fn ok(&self) -> &Self {
        assert!(!self.outcome.failed, "cell failed: {:#?}", self.events);
        self
    }
}

async fn run(kernel: &mut Kernel, code: &str) -> Cell {
    run_timeout(kernel, code, None).await
}

async fn run_timeout(kernel: &mut Kernel, code: &str, timeout: Option<Duration>) -> Cell {
    let (emit, response) = stream::channel();
    let body = tokio::spawn(async move {
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
    });
    let started = Instant::now();
    let outcome = kernel.run(code, &emit, timeout).await;
    let elapsed = started.elapsed();
    drop(emit);
    let bytes = body.await.expect("collector");
    let text = String::from_utf8_lossy(&bytes);
    let events = text
        .split("\n\n")
        .filter(|c| !c.is_empty())
        .map(|c| serde_json::from_str(c).unwrap_or_else(|e| panic!("{e}: {c}")))
        .collect();
    Cell {
        events,
        outcome,
        elapsed,
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = s
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, d) in chunk.iter().enumerate() {
            n |= u32::from(*d) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

// ---- python ----

#[tokio::test]
async fn python_state_persists_and_counts_cells() {
    let mut k = start(Language::Python).await;
    let first = run(&mut k, "x = 41").await;
    first.ok();
    assert!(first.results().is_empty());
    let second = run(&mut k, "x + 1").await;
    assert_eq!(second.ok().text(), "42");
    let counts: Vec<_> = [&first, &second]
        .iter()
        .flat_map(|c| {
            c.events
                .iter()
                .filter(|e| e.kind == EventKind::ExecutionCount)
                .filter_map(|e| e.execution_count)
        })
        .collect();
    assert_eq!(counts, vec![1, 2]);
    k.shutdown().await;
}

#[tokio::test]
async fn python_output_precedes_results_and_subprocess_output_arrives() {
    let mut k = start(Language::Python).await;
    let c = run(&mut k, "import os, sys\nfor i in range(1000): print(i)\nos.system('echo from-subprocess')\nprint('to stderr', file=sys.stderr)\nprint('no newline', end='')\n'done'").await;
    c.ok();
    let out = c.lines(EventKind::Stdout);
    assert_eq!(out.len(), 1002, "{out:?}");
    assert_eq!(out[999], "999");
    assert_eq!(out[1000], "from-subprocess");
    assert_eq!(out[1001], "no newline");
    assert_eq!(c.lines(EventKind::Stderr), vec!["to stderr"]);
    let last_output = c
        .events
        .iter()
        .rposition(|e| e.kind == EventKind::Stdout)
        .expect("stdout");
    let result = c
        .events
        .iter()
        .position(|e| e.kind == EventKind::Result)
        .expect("result");
    assert!(last_output < result, "output must precede the result");
    k.shutdown().await;
}

#[tokio::test]
async fn python_matplotlib_plot_returns_a_png() {
    let mut k = start(Language::Python).await;
    let c = run(
        &mut k,
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [4, 1, 9])\nplt.show()",
    )
    .await;
    c.ok();
    let png = c.results().iter().find_map(|r| {
        r.get("image/png")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    });
    let png = base64_decode(&png.unwrap_or_else(|| panic!("no image/png result: {:#?}", c.events)));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes(png[16..20].try_into().expect("width"));
    let height = u32::from_be_bytes(png[20..24].try_into().expect("height"));
    assert!(width > 100 && height > 100, "{width}x{height}");
    // Figures are closed once sent; a later plot comes back too (without plt.show()).
    let again = run(&mut k, "plt.figure(); plt.bar([1, 2], [3, 4]); None").await;
    let pngs = again
        .ok()
        .results()
        .iter()
        .filter(|r| r.contains_key("image/png"))
        .count();
    assert_eq!(pngs, 1, "{:#?}", again.events);
    k.shutdown().await;
}

#[tokio::test]
async fn python_dataframe_has_html_and_text() {
    let mut k = start(Language::Python).await;
    let c = run(
        &mut k,
        "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})",
    )
    .await;
    let results = c.ok().results();
    assert_eq!(results.len(), 1);
    assert!(results[0]["text/html"]
        .as_str()
        .expect("html")
        .contains("<table"));
    assert!(results[0]["text"].as_str().expect("text").contains('a'));
    k.shutdown().await;
}

#[tokio::test]
async fn python_rich_reprs_and_dunder_result() {
    let mut k = start(Language::Python).await;
    let c = run(
        &mut k,
        "class Rich:\n    def _repr_html_(self): return '<b>hi</b>'\n    def _repr_markdown_(self): return '**hi**'\n    def __repr__(self): return 'Rich()'\nRich()",
    )
    .await;
    let r = c.ok().results()[0].clone();
    assert_eq!(r["text/html"], "<b>hi</b>");
    assert_eq!(r["text/markdown"], "**hi**");
    assert_eq!(r["text"], "Rich()");
    let c = run(&mut k, "__result__ = {'answer': 42}").await;
    assert_eq!(c.ok().text(), "{'answer': 42}");
    let c = run(&mut k, "'__result__' in globals()").await;
    assert_eq!(
        c.ok().text(),
        "False",
        "__result__ is deleted after it is sent"
    );
    k.shutdown().await;
}

#[tokio::test]
async fn python_traceback_shows_the_cells_line() {
    let mut k = start(Language::Python).await;
    let c = run(&mut k, "a = 1\nb = 2\nraise ValueError('boom')\n").await;
    assert!(c.outcome.failed && !c.outcome.kernel_died);
    let e = c.error();
    assert_eq!(
        (e.ename.as_str(), e.evalue.as_str()),
        ("ValueError", "boom")
    );
    let tb = e.traceback.join("\n");
    assert!(tb.contains("line 3"), "{tb}");
    assert!(tb.contains("raise ValueError('boom')"), "{tb}");
    assert!(
        !tb.contains("_run_cell") && !tb.contains("File \"<string>\""),
        "driver frames leak: {tb}"
    );
    // A function from an earlier cell shows that cell's source.
    run(&mut k, "def f():\n    return 1 / 0").await.ok();
    let c = run(&mut k, "f()").await;
    let tb = c.error().traceback.join("\n");
    assert!(tb.contains("return 1 / 0") && tb.contains("line 2"), "{tb}");
    let c = run(&mut k, "x = (").await;
    assert_eq!(c.error().ename, "SyntaxError");
    k.shutdown().await;
}

async fn interrupt_after(kernel: &Kernel, delay: Duration) -> tokio::task::JoinHandle<Instant> {
    let interrupter = kernel.interrupter();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        interrupter.interrupt();
        Instant::now()
    })
}

#[tokio::test]
async fn python_interrupt_stops_busy_loops_and_sleeps() {
    let mut k = start(Language::Python).await;
    run(&mut k, "state = 'kept'").await.ok();
    for code in ["while True: pass", "import time\ntime.sleep(100)"] {
        let sent = interrupt_after(&k, Duration::from_millis(300)).await;
        let c = run(&mut k, code).await;
        let since_interrupt = sent.await.expect("interrupter").elapsed();
        assert!(
            since_interrupt < Duration::from_secs(1),
            "{code}: took {since_interrupt:?} after the interrupt"
        );
        assert_eq!(c.error().ename, "KeyboardInterrupt");
        assert!(!c.outcome.kernel_died);
    }
    // An interrupt between cells is ignored.
    k.interrupter().interrupt();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(run(&mut k, "state").await.ok().text(), "'kept'");
    k.shutdown().await;
}

#[tokio::test]
async fn python_timeout_interrupts_and_keeps_state() {
    let mut k = start(Language::Python).await;
    run(&mut k, "state = 1").await.ok();
    let c = run_timeout(
        &mut k,
        "import time\ntime.sleep(100)",
        Some(Duration::from_millis(500)),
    )
    .await;
    assert_eq!(c.error().ename, "TimeoutError");
    assert!(
        c.outcome.failed && !c.outcome.kernel_died,
        "{:?}",
        c.outcome
    );
    assert!(c.elapsed < Duration::from_secs(2), "{:?}", c.elapsed);
    assert_eq!(run(&mut k, "state").await.ok().text(), "1");
    k.shutdown().await;
}

#[tokio::test]
async fn python_timeout_kills_a_cell_that_ignores_interrupts() {
    let mut k = start(Language::Python).await;
    run(&mut k, "state = 1").await.ok();
    let code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass";
    let c = run_timeout(&mut k, code, Some(Duration::from_millis(300))).await;
    assert_eq!(c.error().ename, "TimeoutError");
    assert!(c.outcome.kernel_died);
    assert!(c.elapsed < Duration::from_secs(5), "{:?}", c.elapsed);
    // The next cell gets a fresh kernel: it works, and the old state is gone.
    let c = run(&mut k, "'state' in globals()").await;
    assert_eq!(c.ok().text(), "False");
    k.shutdown().await;
}

#[tokio::test]
async fn python_kernel_death_is_reported_and_the_next_start_works() {
    let mut k = start(Language::Python).await;
    let old_pid = k.pid;
    let c = run(&mut k, "print('before')\nimport os\nos._exit(3)").await;
    assert_eq!(c.stdout(), "before");
    let e = c.error();
    assert_eq!(e.ename, "KernelDied");
    assert!(e.evalue.contains("code 3"), "{}", e.evalue);
    assert!(c.outcome.kernel_died);
    assert_eq!(run(&mut k, "1 + 1").await.ok().text(), "2");
    assert_ne!(k.pid, old_pid);
    let c = run(
        &mut k,
        "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)",
    )
    .await;
    assert!(
        c.error().evalue.contains("signal 11"),
        "{}",
        c.error().evalue
    );
    k.shutdown().await;
    let mut fresh = start(Language::Python).await;
    assert_eq!(run(&mut fresh, "2 + 2").await.ok().text(), "4");
    fresh.shutdown().await;
}

#[tokio::test]
async fn python_survives_systemexit_stdout_replacement_and_deleted_builtins() {
    let mut k = start(Language::Python).await;
    let c = run(&mut k, "raise SystemExit(3)").await;
    assert_eq!(
        (c.error().ename.as_str(), c.error().evalue.as_str()),
        ("SystemExit", "3")
    );
    assert!(!c.outcome.kernel_died);
    let c = run(&mut k, "import sys\nsys.exit()").await;
    assert_eq!(c.error().ename, "SystemExit");
    run(&mut k, "import sys, io\nsys.stdout = io.StringIO()")
        .await
        .ok();
    assert_eq!(run(&mut k, "6 * 7").await.ok().text(), "42");
    run(
        &mut k,
        "import builtins\ndel builtins.len\ndel builtins.print",
    )
    .await
    .ok();
    let c = run(
        &mut k,
        "sys.stdout = sys.__stdout__\nprint(len('abc'))\nraise KeyError('k')",
    )
    .await;
    assert_eq!(c.stdout(), "3");
    assert_eq!(c.error().ename, "KeyError");
    let c = run(&mut k, "del __builtins__\nlen([1])").await;
    assert_eq!(c.ok().text(), "1");
    k.shutdown().await;
}

#[tokio::test]
async fn python_forked_child_leaving_the_cell_does_not_act_as_the_kernel() {
    let mut k = start(Language::Python).await;
    let code =
        "import os\npid = os.fork()\nif pid:\n    os.waitpid(pid, 0)\n'parent' if pid else 'child'";
    let c = run(&mut k, code).await;
    assert_eq!(c.ok().text(), "'parent'");
    assert_eq!(run(&mut k, "1 + 2").await.ok().text(), "3");
    k.shutdown().await;
}

#[tokio::test]
async fn python_top_level_await() {
    let mut k = start(Language::Python).await;
    let c = run(
        &mut k,
        "import asyncio\nawait asyncio.sleep(0.01)\nv = await asyncio.sleep(0, result=5)\nv * 2",
    )
    .await;
    assert_eq!(c.ok().text(), "10");
    k.shutdown().await;
}

#[tokio::test]
async fn python_import_policy_denies_socket_and_allows_math() {
    let policy = ImportPolicy {
        allow: None,
        deny: vec!["socket".into()],
    };
    let mut k = start_with(Language::Python, &policy, 1 << 20).await;
    let c = run(&mut k, "import socket").await;
    let e = c.error();
    assert_eq!(e.ename, "ImportBlockedError");
    assert!(
        e.evalue.contains("'socket'") && e.evalue.contains("policy"),
        "{}",
        e.evalue
    );
    assert!(
        run(&mut k, "from socket import socketpair")
            .await
            .outcome
            .failed
    );
    assert_eq!(
        run(&mut k, "import math\nmath.sqrt(16)").await.ok().text(),
        "4.0"
    );
    // Library code may import what it needs (http.client imports socket itself).
    run(&mut k, "import http.client").await.ok();
    // ImportError handlers in user code see it as a missing module.
    let c = run(
        &mut k,
        "try:\n    import socket\nexcept ImportError as e:\n    r = type(e).__mro__[1].__name__\nr",
    )
    .await;
    assert_eq!(c.ok().text(), "'ModuleNotFoundError'");
    k.shutdown().await;
}

#[tokio::test]
async fn python_import_allow_list_lets_allowed_modules_import_their_dependencies() {
    let policy = ImportPolicy {
        allow: Some(vec!["math".into(), "random".into()]),
        deny: Vec::new(),
    };
    let mut k = start_with(Language::Python, &policy, 1 << 20).await;
    assert_eq!(
        run(&mut k, "import random\n0 <= random.random() < 1")
            .await
            .ok()
            .text(),
        "True"
    );
    assert_eq!(
        run(&mut k, "import math\nmath.floor(2.5)")
            .await
            .ok()
            .text(),
        "2"
    );
    for blocked in [
        "import socket",
        "import os",
        "import json",
        "from os import path",
    ] {
        let c = run(&mut k, blocked).await;
        assert_eq!(c.error().ename, "ImportBlockedError", "{blocked}");
        assert!(
            c.error().evalue.contains("allowed modules: math, random"),
            "{}",
            c.error().evalue
        );
    }
    // A function defined in a cell is cell code too.
    let c = run(&mut k, "def sneaky():\n    import socket\nsneaky()").await;
    assert_eq!(c.error().ename, "ImportBlockedError");
    k.shutdown().await;
}

#[tokio::test]
async fn python_output_is_capped_per_stream() {
    let cap = 1 << 20;
    let mut k = start_with(Language::Python, &ImportPolicy::default(), cap).await;
    let c = run(&mut k, "import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range(5 * 1024): sys.stdout.write(line)\nprint('err', file=sys.stderr)\n'end'").await;
    c.ok();
    let out = c.lines(EventKind::Stdout);
    let bytes: usize = out.iter().map(|l| l.len() + 1).sum();
    assert!(bytes <= cap + 1 && bytes > cap - 2048, "{bytes} bytes kept");
    let notes = c.lines(EventKind::Status);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("truncated"), "{notes:?}");
    assert_eq!(
        c.lines(EventKind::Stderr),
        vec!["err"],
        "the cap is per stream"
    );
    assert_eq!(c.text(), "'end'");
    // Nothing of the dropped output leaks into the next cell.
    let next = run(&mut k, "print('next')").await;
    assert_eq!(next.ok().stdout(), "next");
    k.shutdown().await;
}

/// Peak resident memory of this test process, from /proc.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn python_printing_a_gibibyte_does_not_exhaust_memory() {
    let mut k = start(Language::Python).await;
    let before = peak_rss_kib();
    let c = run(&mut k, "import os\nchunk = b'x' * 1023 + b'\\n'\nchunk *= 1024\nfor _ in range(1024): os.write(1, chunk)\n'done'").await;
    assert_eq!(c.ok().text(), "'done'");
    let grown = peak_rss_kib().saturating_sub(before);
    println!(
        "1 GiB of output in {:?}; peak RSS grew by {grown} KiB",
        c.elapsed
    );
    assert!(grown < 256 * 1024, "peak RSS grew by {grown} KiB");
    k.shutdown().await;
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn python_cold_start_and_round_trip_times() {
    let mut starts = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let k = start(Language::Python).await;
        starts.push(t.elapsed());
        k.shutdown().await;
    }
    let mut k = start(Language::Python).await;
    let mut trips = Vec::new();
    for _ in 0..100 {
        let c = run(&mut k, "1+1").await;
        assert_eq!(c.text(), "2");
        trips.push(c.elapsed);
    }
    k.shutdown().await;
    let (cold, trip) = (median(starts.clone()), median(trips));
    println!(
        "python kernel: cold start (spawn to ready) median {cold:?} (min {:?}) over 10; `1+1` round trip median {trip:?} over 100",
        starts.iter().min().expect("starts")
    );
    assert!(
        cold < Duration::from_secs(2) && trip < Duration::from_millis(500),
        "{cold:?} {trip:?}"
    );
    for language in [Language::Bash, Language::JavaScript] {
        let mut starts = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let k = start(language).await;
            starts.push(t.elapsed());
            k.shutdown().await;
        }
        println!(
            "{} kernel: cold start median {:?} over 5",
            language.name(),
            median(starts)
        );
    }
}

// ---- bash ----

#[tokio::test]
async fn bash_keeps_cwd_and_variables() {
    let mut k = start(Language::Bash).await;
    run(
        &mut k,
        "cd /tmp\nGREETING=hello\ndeclare -A m=([k]=v)\nf() { echo \"f:$1\"; }",
    )
    .await
    .ok();
    let c = run(&mut k, "echo \"$GREETING $PWD ${m[k]}\"; f x").await;
    assert_eq!(c.ok().lines(EventKind::Stdout), vec!["hello /tmp v", "f:x"]);
    let c = run(&mut k, "cat; echo stdin-is-empty").await;
    assert_eq!(c.ok().stdout(), "stdin-is-empty");
    k.shutdown().await;
}

#[tokio::test]
async fn bash_nonzero_status_is_an_error() {
    let mut k = start(Language::Bash).await;
    let c = run(&mut k, "echo out; echo err >&2; (exit 7)").await;
    assert_eq!(c.stdout(), "out");
    assert_eq!(c.lines(EventKind::Stderr), vec!["err"]);
    let e = c.error();
    assert_eq!(
        (e.ename.as_str(), e.evalue.as_str()),
        ("CommandExecError", "7")
    );
    assert!(!c.outcome.kernel_died);
    run(&mut k, "true").await.ok();
    k.shutdown().await;
}

#[tokio::test]
async fn bash_exit_kills_the_shell_and_the_next_cell_gets_a_new_one() {
    let mut k = start(Language::Bash).await;
    run(&mut k, "X=1").await.ok();
    let c = run(&mut k, "exit 3").await;
    assert_eq!(c.error().ename, "KernelDied");
    assert!(c.outcome.kernel_died);
    let c = run(&mut k, "echo \"x=${X:-unset}\"").await;
    assert_eq!(c.ok().stdout(), "x=unset");
    k.shutdown().await;
}

#[tokio::test]
async fn bash_interrupt_ends_the_cell_and_keeps_the_shell() {
    let mut k = start(Language::Bash).await;
    run(&mut k, "KEEP=yes").await.ok();
    for code in [
        "sleep 100; echo not-reached",
        "while true; do :; done; echo not-reached",
    ] {
        let sent = interrupt_after(&k, Duration::from_millis(300)).await;
        let c = run(&mut k, code).await;
        assert!(
            sent.await.expect("interrupter").elapsed() < Duration::from_secs(1),
            "{code}"
        );
        assert_eq!(c.stdout(), "");
        assert_eq!(c.error().evalue, "130");
    }
    k.interrupter().interrupt();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(run(&mut k, "echo $KEEP").await.ok().stdout(), "yes");
    let c = run_timeout(&mut k, "sleep 100", Some(Duration::from_millis(300))).await;
    assert_eq!(c.error().ename, "TimeoutError");
    assert!(!c.outcome.kernel_died);
    k.shutdown().await;
}

// ---- javascript ----

#[tokio::test]
async fn node_keeps_declarations() {
    let mut k = start(Language::JavaScript).await;
    run(
        &mut k,
        "let a = 1\nconst b = 2\nvar c = 3\nfunction twice(x) { return 2 * x }",
    )
    .await
    .ok();
    assert_eq!(run(&mut k, "a + 1").await.ok().text(), "2");
    assert_eq!(run(&mut k, "twice(b + c)").await.ok().text(), "10");
    let c = run(
        &mut k,
        "console.log('hi'); console.error('oops'); ({x: [1, 'y']})",
    )
    .await;
    assert_eq!(c.ok().stdout(), "hi");
    assert_eq!(c.lines(EventKind::Stderr), vec!["oops"]);
    assert_eq!(c.text(), "{ x: [ 1, 'y' ] }");
    let c = run(
        &mut k,
        "const r = await new Promise(res => setTimeout(() => res(20), 10))\nr + 1",
    )
    .await;
    assert_eq!(c.ok().text(), "21");
    assert_eq!(run(&mut k, "r").await.ok().text(), "20");
    assert_eq!(
        run(&mut k, "require('path').basename('/a/b.txt')")
            .await
            .ok()
            .text(),
        "'b.txt'"
    );
    k.shutdown().await;
}

#[tokio::test]
async fn node_errors_and_interrupts() {
    let mut k = start(Language::JavaScript).await;
    let c = run(&mut k, "\n\nnope()").await;
    let e = c.error();
    assert_eq!(e.ename, "ReferenceError");
    assert!(e.evalue.contains("nope"));
    assert!(
        e.traceback.iter().any(|l| l.contains("<cell-1>:3")),
        "{:?}",
        e.traceback
    );
    let sent = interrupt_after(&k, Duration::from_millis(300)).await;
    let c = run(&mut k, "while (true) {}").await;
    assert!(sent.await.expect("interrupter").elapsed() < Duration::from_secs(1));
    assert_eq!(c.error().ename, "KeyboardInterrupt");
    assert_eq!(run(&mut k, "1 + 1").await.ok().text(), "2");
    let c = run(&mut k, "process.exit(4)").await;
    assert!(c.outcome.kernel_died && c.error().evalue.contains("code 4"));
    k.shutdown().await;
}
