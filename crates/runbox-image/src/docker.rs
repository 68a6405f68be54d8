//! The Docker copy of an image: the rootfs streamed as one tar to the engine's import
//! endpoint (`docker import` with `repo`/`tag` and Dockerfile `changes` for ENV, WORKDIR, USER,
//! ENTRYPOINT, CMD), tagged `runbox/<name>:latest`. A blocking thread writes the tar into a
//! bounded channel that is the request body, so memory stays at a few MiB whatever the size.
//!
//! The engine may be older than bollard's default API version (Docker 20.10 speaks 1.41), so
//! the version is negotiated on connect.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::query_parameters::{CreateImageOptionsBuilder, RemoveImageOptionsBuilder};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use tar::{EntryType, Header, HeaderMode};
use tokio::sync::mpsc;

use crate::error::DockerError;
use crate::progress::{Progress, Unit};
use crate::store::{Image, RunConfig};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Chunks in flight between the tar writer and the HTTP body.
const CHANNEL_DEPTH: usize = 8;
const CHUNK: usize = 1 << 20;

/// `runbox/<name>:latest`.
pub fn docker_ref_for(name: &str) -> String {
    format!("runbox/{name}:latest")
}

/// An image as loaded into the engine.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub reference: String,
    pub image_id: Option<String>,
}

/// A connection to the local Docker engine (`DOCKER_HOST` or the default socket).
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
}

impl Engine {
    pub async fn connect() -> Result<Engine, DockerError> {
        let docker = Docker::connect_with_local_defaults().map_err(DockerError::Unreachable)?;
        let docker = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| DockerError::Timeout {
                seconds: CONNECT_TIMEOUT.as_secs(),
            })?
            .map_err(DockerError::Unreachable)?;
        Ok(Engine { docker })
    }

    /// Imports the image's rootfs as `runbox/<name>:latest`, replacing that tag.
    pub async fn load(&self, image: &Image, progress: &Progress) -> Result<Loaded, DockerError> {
        let reference = docker_ref_for(image.name());
        let (repo, tag) = reference
            .rsplit_once(':')
            .unwrap_or((reference.as_str(), "latest"));
        let phase = progress.phase("docker import", Some(image.meta().size_bytes), Unit::Bytes);
        phase.set_message(reference.clone());
        let ticker = phase.ticker();

        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
        let rootfs = image.rootfs();
        let writer = tokio::task::spawn_blocking(move || {
            let sender = ChannelWriter { tx: tx.clone() };
            let result = write_tar(&rootfs, BufWriter::with_capacity(CHUNK, sender));
            if let Err(e) = &result {
                // Ends the body with an error so the engine does not import a truncated tar.
                let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            result
        });
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                ticker.inc(bytes.len() as u64);
            }
        });
        let options = CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(repo)
            .tag(tag)
            .message("runbox image")
            .changes(changes(&image.meta().config))
            .build();
        let mut responses =
            self.docker
                .create_image(Some(options), Some(bollard::body_try_stream(body)), None);
        let mut engine_error = None;
        while let Some(item) = responses.next().await {
            if let Err(source) = item {
                engine_error = Some(source);
                break;
            }
        }
        drop(responses);
        let written = writer.await;
        if let Some(source) = engine_error {
            phase.abandon();
            return Err(DockerError::Import { reference, source });
        }
        match written {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                phase.abandon();
                return Err(DockerError::Stream { reference, source });
            }
            Err(join) => {
                phase.abandon();
                return Err(DockerError::Stream {
                    reference,
                    source: io::Error::other(join.to_string()),
                });
            }
        }
        let image_id = self
            .docker
            .inspect_image(&reference)
            .await
            .map_err(|source| DockerError::Import {
                reference: reference.clone(),
                source,
            })?
            .id;
        phase.finish(&format!("loaded as {reference}"));
        Ok(Loaded {
            reference,
            image_id,
        })
    }

    /// Removes `reference` from the engine; `false` when it was not there.
    pub async fn remove(&self, reference: &str) -> Result<bool, DockerError> {
        let options = RemoveImageOptionsBuilder::default().force(true).build();
        match self
            .docker
            .remove_image(reference, Some(options), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(source) => Err(DockerError::Remove {
                reference: reference.to_owned(),
                source,
            }),
        }
    }
}

/// Dockerfile instructions that give the imported image the run config. ENV values are
/// double-quoted with `\`, `"` and `$` escaped (ENV expands variables); an entry holding a
/// newline cannot be expressed (instructions are newline-separated) and is left out.
pub(crate) fn changes(config: &RunConfig) -> Vec<String> {
    let mut out = Vec::new();
    for entry in &config.env {
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        if key.is_empty() || entry.contains('\n') || key.contains([' ', '"', '\\', '$']) {
            continue;
        }
        let mut quoted = String::with_capacity(value.len() + 2);
        for c in value.chars() {
            if matches!(c, '\\' | '"' | '$') {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        out.push(format!("ENV {key}=\"{quoted}\""));
    }
    if let Some(dir) = config.working_dir.as_deref().filter(|d| !d.contains('\n')) {
        out.push(format!("WORKDIR {dir}"));
    }
    if let Some(user) = config.user.as_deref().filter(|u| !u.contains('\n')) {
        out.push(format!("USER {user}"));
    }
    // JSON (exec form): escapes keep every argument on one line.
    let json = |argv: &[String]| serde_json::to_string(argv).unwrap_or_else(|_| "[]".into());
    if !config.entrypoint.is_empty() {
        out.push(format!("ENTRYPOINT {}", json(&config.entrypoint)));
    }
    if !config.cmd.is_empty() {
        out.push(format!("CMD {}", json(&config.cmd)));
    }
    out
}

/// `Write` into the body channel; a closed channel (the engine stopped reading) is a
/// broken pipe.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the engine stopped reading"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the tree under `root` as a tar: directories before their contents, names sorted,
/// hard links as links to their first path, devices and fifos as such, sockets left out.
/// Never follows a symlink (entries come from `readdir`, metadata from `lstat`).
pub(crate) fn write_tar(root: &Path, out: impl Write) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    let mut first_paths: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        let mut entries = fs::read_dir(root.join(&dir))?.collect::<io::Result<Vec<_>>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = dir.join(entry.file_name());
            let meta = entry.metadata()?;
            let kind = meta.file_type();
            let mut header = Header::new_gnu();
            header.set_metadata_in_mode(&meta, HeaderMode::Complete);
            header.set_mode(meta.mode() & 0o7777);
            header.set_size(0);
            if kind.is_dir() {
                builder.append_data(&mut header, &path, io::empty())?;
                stack.push(path);
            } else if kind.is_file() {
                if meta.nlink() > 1 {
                    if let Some(first) = first_paths.get(&(meta.dev(), meta.ino())) {
                        header.set_entry_type(EntryType::Link);
                        builder.append_link(&mut header, &path, first)?;
                        continue;
                    }
                    first_paths.insert((meta.dev(), meta.ino()), path.clone());
                }
                header.set_size(meta.len());
                let file = File::open(root.join(&path))?;
                builder.append_data(&mut header, &path, file)?;
            } else if kind.is_symlink() {
                let target = fs::read_link(root.join(&path))?;
                builder.append_link(&mut header, &path, target)?;
            } else if kind.is_char_device() || kind.is_block_device() {
                header.set_device_major(rustix::fs::major(meta.rdev()))?;
                header.set_device_minor(rustix::fs::minor(meta.rdev()))?;
                builder.append_data(&mut header, &path, io::empty())?;
            } else if kind.is_fifo() {
                builder.append_data(&mut header, &path, io::empty())?;
            }
        }
    }
    builder.into_inner()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_config_becomes_dockerfile_changes() {
        let config = RunConfig {
            env: vec![
                "PATH=/usr/bin:/bin".into(),
                "QUOTED=a \"b\" $HOME \\x".into(),
                "BROKEN=one\ntwo".into(),
                "NOVALUE".into(),
            ],
            entrypoint: Vec::new(),
            cmd: vec!["bash".into(), "-c".into(), "echo \"hi\"".into()],
            working_dir: Some("/workspace".into()),
            user: None,
        };
        assert_eq!(
            changes(&config),
            [
                "ENV PATH=\"/usr/bin:/bin\"",
                "ENV QUOTED=\"a \\\"b\\\" \\$HOME \\\\x\"",
                "WORKDIR /workspace",
                "CMD [\"bash\",\"-c\",\"echo \\\"hi\\\"\"]",
            ]
        );
    }
}
