//! `runbox-agent`: PID 1 of a sandbox. Serves the execd API on a unix socket it inherits from
//! the host (so code in the sandbox has no path to it) and requires a token it reads from an
//! inherited pipe (so the token is in no file, argument or environment variable).
//!
//! ```text
//! runbox-agent --listen-fd 3 --token-fd 4 [--memory BYTES] [--cpus N] [--output-cap BYTES]
//!              [--workspace DIR] [--env K=V]... [--python-allow m,m] [--python-deny m,m]
//! runbox-agent --listen unix:/path.sock --token-file FILE ...      (tests, outside a sandbox)
//! runbox-agent --listen unix:/run/runbox-agent/agent.sock --token-stdin ...  (docker, gvisor)
//! ```
//!
//! In a container the listening socket cannot be inherited: the agent binds it in a directory
//! the host mounted for this sandbox alone, and reads the token from its stdin (which the host
//! writes and closes), then points stdin at /dev/null.
#![deny(unsafe_code)]

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;

use runbox_agent::{app, AppState, Config};

mod signals;

#[derive(Debug, Default)]
struct Args {
    listen_fd: Option<i32>,
    listen_path: Option<String>,
    token_fd: Option<i32>,
    token_file: Option<String>,
    token_stdin: bool,
    seccomp: bool,
    config: Config,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        config: Config::default(),
        ..Default::default()
    };
    let mut it = std::env::args().skip(1);
    let list = |v: String| {
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen-fd" => {
                a.listen_fd = Some(value()?.parse().map_err(|_| "--listen-fd takes a number")?)
            }
            "--listen" => a.listen_path = Some(value()?.trim_start_matches("unix:").to_owned()),
            "--token-fd" => {
                a.token_fd = Some(value()?.parse().map_err(|_| "--token-fd takes a number")?)
            }
            "--token-file" => a.token_file = Some(value()?),
            "--token-stdin" => a.token_stdin = true,
            "--seccomp" => a.seccomp = true,
            "--memory" => {
                a.config.memory_limit_bytes =
                    Some(value()?.parse().map_err(|_| "--memory takes bytes")?)
            }
            "--cpus" => {
                a.config.cpu_limit = Some(value()?.parse().map_err(|_| "--cpus takes a number")?)
            }
            "--output-cap" => {
                a.config.output_cap = value()?.parse().map_err(|_| "--output-cap takes bytes")?
            }
            "--workspace" => a.config.workspace = value()?.into(),
            "--env" => {
                let kv = value()?;
                let (k, v) = kv.split_once('=').ok_or("--env takes K=V")?;
                a.config.env.retain(|(key, _)| key != k);
                a.config.env.push((k.to_owned(), v.to_owned()));
            }
            "--python-allow" => a.config.python_import_policy.allow = Some(list(value()?)),
            "--python-deny" => a.config.python_import_policy.deny = list(value()?),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(a)
}

/// Takes ownership of a descriptor the spawner passed us.
fn inherited(fd: i32) -> Result<OwnedFd, String> {
    if fd < 3 {
        return Err(format!("refusing to take over standard descriptor {fd}"));
    }
    // SAFETY: by the agent's contract (module docs) the spawner passed `fd` for the agent
    // alone; nothing else in this process refers to it. If it is not open, the check below
    // fails and dropping the OwnedFd only gets a harmless EBADF from close.
    #[allow(unsafe_code)]
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_getfd(&owned)
        .map_err(|_| format!("file descriptor {fd} was not passed to the agent"))?;
    // The host passes it without close-on-exec (it has to survive our exec); every process we
    // start must not get it: with the listening socket, code could accept the host's
    // requests (token included) and answer in our place.
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| format!("cannot mark descriptor {fd} close-on-exec: {e}"))?;
    Ok(owned)
}

fn read_token(args: &Args) -> Result<String, String> {
    let mut token = String::new();
    match (args.token_fd, &args.token_file) {
        _ if args.token_stdin => {
            std::io::stdin()
                .read_to_string(&mut token)
                .map_err(|e| format!("reading the token from stdin: {e}"))?;
            let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
            rustix::stdio::dup2_stdin(&null).map_err(|e| format!("replacing stdin: {e}"))?;
        }
        (Some(fd), _) => {
            std::fs::File::from(inherited(fd)?)
                .read_to_string(&mut token)
                .map_err(|e| format!("reading the token: {e}"))?;
        }
        (None, Some(path)) => {
            token = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?
        }
        (None, None) => {
            return Err("no token: pass --token-fd, --token-stdin or --token-file".into())
        }
    }
    let token = token.trim().to_owned();
    if token.len() < 16 {
        return Err("the token is too short (at least 16 characters)".into());
    }
    Ok(token)
}

fn listener(args: &Args) -> Result<std::os::unix::net::UnixListener, String> {
    match (args.listen_fd, &args.listen_path) {
        (Some(fd), _) => Ok(std::os::unix::net::UnixListener::from(inherited(fd)?)),
        (None, Some(path)) => {
            let _ = std::fs::remove_file(path);
            std::os::unix::net::UnixListener::bind(path).map_err(|e| format!("binding {path}: {e}"))
        }
        (None, None) => Err("nowhere to listen: pass --listen-fd or --listen unix:PATH".into()),
    }
}

fn main() -> ExitCode {
    // Before anything else: nobody in the sandbox may read our memory or /proc/1/*.
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    // Before any thread exists, so that every thread has them blocked (see signals.rs).
    let termination = match signals::block_termination() {
        Ok(blocked) => blocked,
        Err(e) => {
            eprintln!("runbox-agent: cannot block SIGTERM and SIGINT: {e}");
            return ExitCode::from(1);
        }
    };
    let setup = parse_args().and_then(|mut a| {
        if a.seccomp {
            confine_self()?;
        }
        // After the filter (it holds for the threads started after it), before the token
        // (a stop requested while we wait for it still stops us).
        signals::forward_termination(termination)
            .map_err(|e| format!("cannot start the termination thread: {e}"))?;
        a.config.token = read_token(&a)?;
        let l = listener(&a)?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok((a.config, l))
    });
    let (config, std_listener) = match setup {
        Ok(s) => s,
        Err(e) => {
            eprintln!("runbox-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runbox-agent: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result: Result<(), String> = runtime.block_on(async move {
        let state = AppState::new(config);
        state
            .procs
            .start_reaper()
            .map_err(|e| format!("cannot watch SIGCHLD: {e}"))?;
        tokio::spawn(jupyter_port());
        let listener =
            tokio::net::UnixListener::from_std(std_listener).map_err(|e| e.to_string())?;
        axum::serve(listener, app(state))
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runbox-agent: {e}");
            ExitCode::from(1)
        }
    }
}

/// Installs the jail's seccomp filter on the agent itself, before any thread exists, so it
/// holds for every process the agent starts (`--seccomp`). For backends whose own filter
/// cannot express the jail's argument checks: gVisor's OCI seccomp in the runsc we run applies
/// a rule with argument comparisons to every call, so clone(CLONE_NEWUSER) could only be
/// refused here. The native jail installs the same filter before exec'ing us. With it goes
/// the init guard: gVisor delivers even SIGKILL from the code to PID 1 (us), so signals
/// addressed to pid 1 are refused.
fn confine_self() -> Result<(), String> {
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("no_new_privs: {e}"))?;
    let program = runbox_jail::seccomp::compile_guarding_init()
        .map_err(|e| format!("compiling the filter: {e}"))?;
    runbox_jail::seccomp::install(&program).map_err(|e| format!("installing the filter: {e}"))
}

/// The official CodeInterpreter checks that something listens on 44771 inside the sandbox
/// (its Jupyter port). Accept and close: the check only connects.
async fn jupyter_port() {
    let Ok(l) =
        tokio::net::TcpListener::bind(("127.0.0.1", runbox_proto::execd::JUPYTER_PORT)).await
    else {
        return;
    };
    while let Ok((stream, _)) = l.accept().await {
        drop(stream);
    }
}
