//! The `runbox` command: one file per subcommand.
#![forbid(unsafe_code)]

/// `println!` that ignores a closed stdout (`runbox doctor | head`) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod doctor;
mod exec;
mod exit;
mod image;
mod run;
mod sandbox_args;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "runbox",
    version,
    about = "Secure, fast code execution for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(about = run::ABOUT)]
    Run(Box<run::RunArgs>),
    /// Run code cells in one stateful context (python, bash, javascript) in a fresh sandbox.
    Exec(Box<exec::ExecArgs>),
    /// An interactive session with one stateful context in a fresh sandbox.
    Repl(Box<exec::ReplArgs>),
    /// Serve the OpenSandbox-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Show which kernel features this host offers and what `run` will use.
    Doctor(doctor::DoctorArgs),
    /// Build, import, list and remove sandbox images.
    Image(image::ImageArgs),
}

/// `runbox run` alone, parsed without the other subcommands: building clap's whole command
/// tree (every subcommand's arguments) costs about 0.3 ms, a noticeable part of a sandbox's
/// start, and `run` is the command whose start is measured. Same arguments, help and errors.
#[derive(Debug, Parser)]
#[command(
    name = "runbox run",
    bin_name = "runbox run",
    about = run::ABOUT
)]
struct RunCli {
    #[command(flatten)]
    args: run::RunArgs,
}

fn main() {
    let code = if std::env::args_os().nth(1).is_some_and(|a| a == "run") {
        run::main(parse::<RunCli>(std::env::args_os().skip(1)).args)
    } else {
        match parse::<Cli>(std::env::args_os()).command {
            Command::Run(args) => run::main(*args),
            Command::Doctor(args) => doctor::main(args),
            Command::Image(args) => image::main(args),
            Command::Exec(args) => report(exec::main(*args)),
            Command::Serve(args) => report(serve::main(args)),
            Command::Repl(args) => report(exec::repl(*args)),
        }
    };
    std::process::exit(code);
}

/// Parses the command line or exits: 0 for --help and --version, `exit::DATA` for a value
/// that does not parse, `exit::USAGE` for anything else.
fn parse<P: Parser>(argv: impl IntoIterator<Item = std::ffi::OsString>) -> P {
    P::try_parse_from(argv).unwrap_or_else(|e| {
        let code = match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
            clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue => {
                exit::DATA
            }
            _ => exit::USAGE,
        };
        let _ = e.print();
        std::process::exit(code);
    })
}

/// Prints an error chain for subcommands that return anyhow errors; jail errors keep their
/// distinct exit codes.
fn report(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            let code = e
                .downcast_ref::<runbox_jail::JailError>()
                .map_or(exit::SOFTWARE, |j| exit::for_kind(j.kind()));
            eprintln!("runbox: {e:#}");
            code
        }
    }
}
