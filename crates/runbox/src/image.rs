//! `runbox image build|import|list|rm`: sandbox images in the images directory, and their
//! copies in the local Docker engine (`runbox/<name>:latest`).
//!
//! Docker is best effort where the engine is simply not there: build and import then warn
//! that the docker backend will not have the image and still exit 0 (the native and gVisor
//! backends have it); an engine that is reachable but refuses the import is a failure (70).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use runbox_image::{
    docker_ref_for, human_bytes, BuildOptions, DockerError, Engine, ErrorKind, Image, ImageStore,
    Progress, DEFAULT_MIRROR,
};
use serde_json::Value;

use crate::exit;

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Where images live (<dir>/<name>/rootfs, <dir>/<name>/image.json)
    /// [default: /var/lib/runbox/images as root, else $XDG_DATA_HOME/runbox/images]
    #[arg(long, global = true, env = "RUNBOX_IMAGES_DIR", value_name = "DIR")]
    images_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build an image with debootstrap (Debian bookworm minbase, Python with numpy, pandas
    /// and matplotlib, Node.js, bash) and load it into Docker as runbox/NAME:latest. Needs root.
    Build(BuildArgs),
    /// Import a `docker save` archive or an OCI image layout (directory or tar, plain or gzip).
    Import(ImportArgs),
    /// List the images.
    #[command(alias = "ls")]
    List(ListArgs),
    /// Remove an image (and runbox/NAME:latest from Docker).
    #[command(alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// Image name: [a-z0-9][a-z0-9._-]{0,63}
    #[arg(default_value = "default")]
    name: String,
    /// Debian mirror
    #[arg(long, default_value = DEFAULT_MIRROR, value_name = "URL")]
    mirror: String,
    /// Do not load the image into the local Docker engine.
    #[arg(long)]
    no_docker: bool,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// A docker-save archive or an OCI layout (directory or tar, optionally gzipped)
    file: PathBuf,
    /// Image name [default: from the archive's repo tag: `python:3.12-slim` -> python-3.12-slim]
    #[arg(long)]
    name: Option<String>,
    /// Do not load the image into the local Docker engine.
    #[arg(long)]
    no_docker: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Print JSON (an array of image.json objects, each with its `rootfs` path).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RmArgs {
    name: String,
    /// Leave the Docker engine alone.
    #[arg(long)]
    no_docker: bool,
}

fn code_for(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::InvalidInput => exit::DATA,
        ErrorKind::NotFound => 1,
        ErrorKind::Unavailable => exit::UNAVAILABLE,
        ErrorKind::Permission => exit::NO_PERMISSION,
        ErrorKind::Internal => exit::SOFTWARE,
    }
}

/// Prints an error with its causes, the way `main::report` does.
fn fail(error: &dyn std::error::Error, kind: ErrorKind) -> i32 {
    let mut message = format!("runbox: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("{message}");
    code_for(kind)
}

pub fn main(args: ImageArgs) -> i32 {
    let Some(dir) = args.images_dir.or_else(runbox_image::default_images_dir) else {
        eprintln!("runbox: no images directory: set --images-dir, RUNBOX_IMAGES_DIR or HOME");
        return exit::USAGE;
    };
    let store = match ImageStore::open(&dir) {
        Ok(store) => store,
        Err(e) => return fail(&e, e.kind()),
    };
    match args.command {
        ImageCommand::Build(a) => build(&store, a),
        ImageCommand::Import(a) => import(&store, a),
        ImageCommand::List(a) => list(&store, a),
        ImageCommand::Rm(a) => rm(&store, a),
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("runbox: starting the async runtime: {e}");
            None
        }
    }
}

fn minutes(took: Duration) -> String {
    let secs = took.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", took.as_secs_f64())
    }
}

fn build(store: &ImageStore, args: BuildArgs) -> i32 {
    let started = Instant::now();
    let progress = Progress::for_stderr();
    let mut options = BuildOptions::new(&args.name);
    options.mirror = args.mirror;
    let report = match runbox_image::build(store, &options, &progress) {
        Ok(report) => report,
        Err(e) => return fail(&e, e.kind()),
    };
    let image = report.image;
    eprintln!(
        "{} image {} in {}: {}, {} packages, rootfs {}",
        if report.replaced { "rebuilt" } else { "built" },
        image.name(),
        minutes(started.elapsed()),
        human_bytes(image.meta().size_bytes),
        image.meta().packages.len(),
        image.rootfs().display()
    );
    let code = load_into_docker(store, &image, args.no_docker, &progress);
    if code == 0 {
        eprintln!("done in {}", minutes(started.elapsed()));
        out!("{}", image.name());
    }
    code
}

fn import(store: &ImageStore, args: ImportArgs) -> i32 {
    let started = Instant::now();
    let progress = Progress::for_stderr();
    let report = match runbox_image::import(store, &args.file, args.name.as_deref(), &progress) {
        Ok(report) => report,
        Err(e) => return fail(&e, e.kind()),
    };
    let image = report.image;
    if !report.skipped.is_empty() {
        eprintln!(
            "note: {} entries were not created: {}{}",
            report.skipped.len(),
            report
                .skipped
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            if report.skipped.len() > 5 {
                ", ..."
            } else {
                ""
            }
        );
    }
    if report.setid_cleared > 0 {
        eprintln!(
            "note: setuid/setgid bits cleared on {} files",
            report.setid_cleared
        );
    }
    eprintln!(
        "{} image {} in {}: {}, {} layers, rootfs {}",
        if report.replaced {
            "replaced"
        } else {
            "imported"
        },
        image.name(),
        minutes(started.elapsed()),
        human_bytes(image.meta().size_bytes),
        image.meta().layers.len(),
        image.rootfs().display()
    );
    let code = load_into_docker(store, &image, args.no_docker, &progress);
    if code == 0 {
        out!("{}", image.name());
    }
    code
}

/// Loads a fresh image into Docker and records it; see the module comment for the policy.
fn load_into_docker(store: &ImageStore, image: &Image, skip: bool, progress: &Progress) -> i32 {
    let name = image.name();
    // The fresh image.json has no docker_ref, so a copy from an earlier build of this name
    // (stale now) is not used by the docker backend.
    let unloaded = |why: &str| {
        eprintln!(
            "warning: {why}: the docker backend will not have image `{name}` \
             (native and gvisor will)"
        );
    };
    if skip {
        unloaded("--no-docker");
        return 0;
    }
    let Some(rt) = runtime() else {
        return exit::SOFTWARE;
    };
    let loaded = rt.block_on(async {
        let engine = Engine::connect().await?;
        engine.load(image, progress).await
    });
    match loaded {
        Ok(loaded) => match store.set_docker(name, Some(loaded.reference), loaded.image_id) {
            Ok(_) => 0,
            Err(e) => fail(&e, e.kind()),
        },
        Err(e) if e.is_unreachable() => {
            unloaded(&format!("{e}{}", cause(&e)));
            0
        }
        Err(e) => {
            eprintln!(
                "runbox: image `{name}` is in {} but loading it into Docker failed",
                image.dir().display()
            );
            fail(&e, e.kind())
        }
    }
}

fn cause(e: &DockerError) -> String {
    std::error::Error::source(e)
        .map(|s| format!(" ({s})"))
        .unwrap_or_default()
}

fn list(store: &ImageStore, args: ListArgs) -> i32 {
    let images = match store.list() {
        Ok(images) => images,
        Err(e) => return fail(&e, e.kind()),
    };
    if args.json {
        let out: Vec<Value> = images
            .iter()
            .map(|image| {
                let mut v = serde_json::to_value(image.meta()).unwrap_or(Value::Null);
                if let Value::Object(map) = &mut v {
                    map.insert(
                        "rootfs".into(),
                        Value::String(image.rootfs().display().to_string()),
                    );
                }
                v
            })
            .collect();
        out!(
            "{}",
            serde_json::to_string_pretty(&out).unwrap_or_else(|_| "[]".into())
        );
        return 0;
    }
    if images.is_empty() {
        eprintln!("no images in {}", store.dir().display());
        return 0;
    }
    let rows: Vec<[String; 5]> = images
        .iter()
        .map(|i| {
            let m = i.meta();
            [
                m.name.clone(),
                human_bytes(m.size_bytes),
                m.created.clone(),
                m.docker_ref.clone().unwrap_or_else(|| "-".into()),
                m.source.clone(),
            ]
        })
        .collect();
    let header = ["NAME", "SIZE", "CREATED", "DOCKER", "SOURCE"].map(String::from);
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(rows.iter()) {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(widths.iter()) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        line.push_str(&row[4]);
        out!("{line}");
    }
    0
}

fn rm(store: &ImageStore, args: RmArgs) -> i32 {
    let name = args.name;
    if let Err(e) = runbox_image::validate_name(&name) {
        return fail(&e, ErrorKind::InvalidInput);
    }
    let removed = match store.remove(&name) {
        Ok(image) => {
            eprintln!("removed {}", image.dir().display());
            true
        }
        Err(runbox_image::StoreError::NoSuchImage { .. }) => false,
        Err(e) => return fail(&e, e.kind()),
    };
    let mut in_docker = false;
    if !args.no_docker {
        let reference = docker_ref_for(&name);
        let Some(rt) = runtime() else {
            return exit::SOFTWARE;
        };
        let result = rt.block_on(async { Engine::connect().await?.remove(&reference).await });
        match result {
            Ok(true) => {
                eprintln!("removed {reference} from Docker");
                in_docker = true;
            }
            Ok(false) => {}
            Err(e) if e.is_unreachable() && removed => {
                eprintln!("note: Docker is unreachable; {reference} was not checked");
            }
            Err(e) if e.is_unreachable() => {}
            Err(e) => return fail(&e, e.kind()),
        }
    }
    if removed || in_docker {
        0
    } else {
        eprintln!(
            "runbox: no image named `{name}` in {}",
            store.dir().display()
        );
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_minutes() {
        assert_eq!(minutes(Duration::from_secs(185)), "3m05s");
        assert_eq!(minutes(Duration::from_millis(2500)), "2.5s");
    }

    #[test]
    fn kinds_map_to_exit_codes() {
        assert_eq!(code_for(ErrorKind::InvalidInput), exit::DATA);
        assert_eq!(code_for(ErrorKind::Unavailable), exit::UNAVAILABLE);
    }
}
