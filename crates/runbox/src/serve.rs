//! `runbox serve`: the OpenSandbox-compatible server.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use runbox_server::config::{Config, EnvOverrides};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [env: RUNBOX_LISTEN] [default: 127.0.0.1:8080]
    #[arg(long)]
    listen: Option<String>,
    /// Where the database and workspaces live [env: RUNBOX_DATA_DIR] [default: ./runbox-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A runbox.toml (every key documented in docs/configuration.md) [env: RUNBOX_CONFIG]
    #[arg(long)]
    config: Option<PathBuf>,
    /// The default isolation backend: native, docker or gvisor [env: RUNBOX_RUNTIME]
    /// [default: native]
    #[arg(long)]
    runtime: Option<String>,
}

pub fn main(args: ServeArgs) -> anyhow::Result<i32> {
    // The environment is read here, once; nothing below looks at it.
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let overrides = EnvOverrides {
        listen: args.listen.or_else(|| env("RUNBOX_LISTEN")),
        data_dir: args
            .data_dir
            .map(|d| d.display().to_string())
            .or_else(|| env("RUNBOX_DATA_DIR")),
        api_keys: env("RUNBOX_API_KEYS"),
        runtime: args.runtime.or_else(|| env("RUNBOX_RUNTIME")),
    };
    let file = args
        .config
        .or_else(|| env("RUNBOX_CONFIG").map(PathBuf::from));
    let config = Config::load(file.as_deref(), &overrides)?;
    let agent = runbox_runtime::installed_agent()?;
    // Fail at start, not at the first create.
    if !agent.is_file() {
        return Err(runbox_runtime::StartError::AgentMissing(agent).into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let state =
            runbox_server::AppState::new(config, agent).map_err(|e| anyhow::anyhow!("{e}"))?;
        runbox_server::serve(state)
            .await
            .context("the server stopped")
    })?;
    Ok(0)
}
