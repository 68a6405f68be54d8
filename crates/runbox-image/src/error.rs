//! One error enum per concern, each variant named after the step that failed, and a coarse
//! [`ErrorKind`] the CLI maps to its exit codes.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::name::NameError;

/// What the caller can do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A bad name, an unreadable, corrupt or malicious archive.
    InvalidInput,
    /// No such image or file.
    NotFound,
    /// A tool, the mirror or the engine is missing or failed.
    Unavailable,
    /// Not allowed (building needs root).
    Permission,
    /// Anything else: a bug or a broken host.
    Internal,
}

fn io_kind(e: &io::Error) -> ErrorKind {
    match e.kind() {
        io::ErrorKind::PermissionDenied => ErrorKind::Permission,
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        _ => ErrorKind::Internal,
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{path} exists and is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("creating {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("locking {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}")]
    WriteMeta {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}")]
    ReadMeta {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("moving {from} to {to}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("removing {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("detaching the mount at {path} before removing it")]
    Unmount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no image named `{name}`")]
    NoSuchImage { name: String },
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Name(_) => ErrorKind::InvalidInput,
            StoreError::NoSuchImage { .. } => ErrorKind::NotFound,
            StoreError::NotADirectory { .. } => ErrorKind::InvalidInput,
            StoreError::Create { source, .. }
            | StoreError::Lock { source, .. }
            | StoreError::WriteMeta { source, .. }
            | StoreError::ReadMeta { source, .. }
            | StoreError::Rename { source, .. }
            | StoreError::Remove { source, .. }
            | StoreError::Unmount { source, .. } => match io_kind(source) {
                ErrorKind::NotFound => ErrorKind::Internal,
                k => k,
            },
        }
    }
}

/// Why one layer could not be applied. Unsafe entries abort the import: an archive that
/// tries to escape is malicious or broken, and a silently different image is worse than none.
#[derive(Debug, Error)]
pub enum LayerError {
    #[error("unsafe entry `{path}`: {reason}")]
    Unsafe { path: String, reason: &'static str },
    #[error("{op} `{path}`")]
    Write {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the layer tar")]
    Read(#[source] io::Error),
}

#[derive(Debug, Error)]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("opening {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("decompressing {path}")]
    Decompress {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the archive index of {path}")]
    Index {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is neither a docker-save archive (manifest.json) nor an OCI image layout \
         (oci-layout, index.json)"
    )]
    UnknownFormat { path: PathBuf },
    #[error("`{member}` is missing from the archive")]
    MissingMember { member: String },
    #[error("reading `{member}`")]
    ReadMember {
        member: String,
        #[source]
        source: io::Error,
    },
    #[error("`{member}` is not valid JSON of the expected shape")]
    Json {
        member: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("`{member}` is larger than {limit} bytes")]
    TooLarge { member: String, limit: u64 },
    #[error("unsupported digest `{digest}` (only sha256)")]
    UnsupportedDigest { digest: String },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("the image has no manifest for this platform ({platform})")]
    NoManifest { platform: String },
    #[error("unsupported manifest media type `{media_type}`")]
    UnsupportedManifest { media_type: String },
    #[error("image indexes nest deeper than {limit}")]
    TooDeep { limit: usize },
    #[error("the image lists {layers} layers but its config lists {diff_ids} diff ids")]
    LayerCount { layers: usize, diff_ids: usize },
    #[error("layer {index} ({member}) is {compression}-compressed, which is not supported")]
    Compression {
        index: usize,
        member: String,
        compression: &'static str,
    },
    #[error("layer {index} ({member})")]
    Layer {
        index: usize,
        member: String,
        #[source]
        source: LayerError,
    },
    #[error("computing the size of the rootfs")]
    Size(#[source] io::Error),
}

impl ImportError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImportError::Store(e) => e.kind(),
            // A path that names nothing is a bad argument.
            ImportError::Open { source, .. } => match io_kind(source) {
                ErrorKind::NotFound => ErrorKind::InvalidInput,
                k => k,
            },
            ImportError::Layer {
                source: LayerError::Write { source, .. },
                ..
            } => match io_kind(source) {
                ErrorKind::NotFound => ErrorKind::InvalidInput,
                k => k,
            },
            ImportError::Size(_) => ErrorKind::Internal,
            _ => ErrorKind::InvalidInput,
        }
    }
}

#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("building an image needs root (debootstrap creates device nodes and chroots)")]
    NotRoot,
    #[error("the mirror `{mirror}` is not an http://, https:// or file:// URL")]
    BadMirror { mirror: String },
    #[error("debootstrap is not installed (apt-get install debootstrap)")]
    DebootstrapMissing,
    #[error("starting {program}")]
    Spawn {
        program: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("writing the build log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("resolving the package list failed ({status}){detail}; full log: {log}")]
    Resolve {
        status: std::process::ExitStatus,
        detail: String,
        log: PathBuf,
    },
    #[error("debootstrap failed ({status}){detail}; full log: {log}")]
    Debootstrap {
        status: std::process::ExitStatus,
        detail: String,
        log: PathBuf,
    },
    #[error("tidying the rootfs: {step}")]
    Tidy {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("the built image fails its smoke test `{command}`: {output}")]
    SmokeTest { command: String, output: String },
    #[error("computing the size of the rootfs")]
    Size(#[source] io::Error),
}

impl BuildError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            BuildError::Store(e) => e.kind(),
            BuildError::NotRoot => ErrorKind::Permission,
            BuildError::BadMirror { .. } => ErrorKind::InvalidInput,
            BuildError::DebootstrapMissing
            | BuildError::Resolve { .. }
            | BuildError::Debootstrap { .. } => ErrorKind::Unavailable,
            BuildError::Spawn { source, .. } => io_kind(source),
            _ => ErrorKind::Internal,
        }
    }
}

#[derive(Debug, Error)]
pub enum DockerError {
    #[error("the Docker engine is unreachable")]
    Unreachable(#[source] bollard::errors::Error),
    #[error("the Docker engine did not answer within {seconds} s")]
    Timeout { seconds: u64 },
    #[error("the Docker engine refused the import of {reference}")]
    Import {
        reference: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("writing the rootfs tar stream for {reference}")]
    Stream {
        reference: String,
        #[source]
        source: io::Error,
    },
    #[error("the Docker engine refused to remove {reference}")]
    Remove {
        reference: String,
        #[source]
        source: bollard::errors::Error,
    },
}

impl DockerError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            DockerError::Unreachable(_) | DockerError::Timeout { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }

    /// The engine is not there at all (as opposed to refusing something).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            DockerError::Unreachable(_) | DockerError::Timeout { .. }
        )
    }
}
