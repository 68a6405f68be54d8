//! Reading the two archive formats into one plan: which layer members to apply in which
//! order, the digests to check them against, the image's reference and run config.
//!
//! - `docker save` (Docker < 25): `manifest.json` = `[{Config, RepoTags, Layers}]`; layers
//!   are uncompressed tars checked against the config's `rootfs.diff_ids`; the config is
//!   checked against its file name (`<sha256>.json`).
//! - OCI image layout (also what Docker >= 25 saves): `oci-layout`, `index.json`,
//!   `blobs/sha256/<hex>`; every blob is checked against its descriptor's digest and size,
//!   indexes are followed (nested, multi-platform) to the manifest for this machine.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::archive::Source;
use crate::digest::Digest;
use crate::error::ImportError;
use crate::store::RunConfig;

/// Manifests, indexes and configs are small; anything bigger is not one.
const JSON_LIMIT: u64 = 16 << 20;
const MAX_INDEX_DEPTH: usize = 4;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    DockerSave,
    Oci,
}

#[derive(Debug)]
pub(crate) struct Plan {
    pub format: Format,
    pub reference: Option<String>,
    pub config: RunConfig,
    pub layers: Vec<LayerRef>,
}

#[derive(Debug)]
pub(crate) struct LayerRef {
    pub member: String,
    /// Digest of the blob as stored (compressed or not).
    pub blob: Option<Digest>,
    pub size: Option<u64>,
    /// Digest of the uncompressed tar.
    pub diff_id: Option<Digest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// Both layouts' "config" blob; only the fields we use.
#[derive(Deserialize, Default)]
struct ImageConfig {
    #[serde(default)]
    config: Option<ContainerConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize, Default)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

fn parse<T: DeserializeOwned>(member: &str, bytes: &[u8]) -> Result<T, ImportError> {
    serde_json::from_slice(bytes).map_err(|source| ImportError::Json {
        member: member.to_owned(),
        source,
    })
}

/// Recognises the format and reads its plan.
pub(crate) fn plan(source: &Source, path: &std::path::Path) -> Result<Plan, ImportError> {
    if source.contains("oci-layout") && source.contains("index.json") {
        oci(source)
    } else if source.contains("manifest.json") {
        docker_save(source)
    } else {
        Err(ImportError::UnknownFormat {
            path: path.to_owned(),
        })
    }
}

/// `<hex>.json` and `blobs/sha256/<hex>` name their content's digest.
fn digest_in_name(member: &str) -> Option<Digest> {
    let file = member.rsplit('/').next()?;
    if let Some(hex) = file.strip_suffix(".json") {
        return Digest::from_hex(hex);
    }
    member
        .strip_prefix("blobs/sha256/")
        .and_then(Digest::from_hex)
}

fn docker_save(source: &Source) -> Result<Plan, ImportError> {
    let entries: Vec<SaveEntry> = parse(
        "manifest.json",
        &source.read_small("manifest.json", JSON_LIMIT)?,
    )?;
    // A multi-image archive: the first image is imported (`docker save a b` lists a first).
    let entry = entries
        .into_iter()
        .next()
        .ok_or(ImportError::MissingMember {
            member: "an image in manifest.json".into(),
        })?;
    let config_bytes = source.read_small(&entry.config, JSON_LIMIT)?;
    if let Some(expected) = digest_in_name(&entry.config) {
        expected.verify(&Digest::of(&config_bytes), &entry.config)?;
    }
    let config: ImageConfig = parse(&entry.config, &config_bytes)?;
    let diff_ids = diff_ids(&config)?;
    if diff_ids.len() != entry.layers.len() {
        return Err(ImportError::LayerCount {
            layers: entry.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    let layers = entry
        .layers
        .into_iter()
        .zip(diff_ids)
        .map(|(member, diff_id)| LayerRef {
            blob: member
                .strip_prefix("blobs/sha256/")
                .and_then(Digest::from_hex),
            member,
            size: None,
            diff_id: Some(diff_id),
        })
        .collect();
    Ok(Plan {
        format: Format::DockerSave,
        reference: entry.repo_tags.and_then(|tags| tags.into_iter().next()),
        config: run_config(config),
        layers,
    })
}

fn diff_ids(config: &ImageConfig) -> Result<Vec<Digest>, ImportError> {
    config
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.iter().map(|d| Digest::parse(d)).collect())
        .unwrap_or_else(|| Ok(Vec::new()))
}

fn run_config(config: ImageConfig) -> RunConfig {
    let c = config.config.unwrap_or_default();
    RunConfig {
        env: c.env.unwrap_or_default(),
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        working_dir: c.working_dir.filter(|w| !w.is_empty()),
        user: c.user.filter(|u| !u.is_empty()),
    }
}

/// Reads a blob named by a descriptor, checking its size and digest.
fn read_blob(source: &Source, desc: &Descriptor) -> Result<(Vec<u8>, String), ImportError> {
    let digest = Digest::parse(&desc.digest)?;
    let member = digest.blob_path();
    if desc.size > JSON_LIMIT {
        return Err(ImportError::TooLarge {
            member,
            limit: JSON_LIMIT,
        });
    }
    let bytes = source.read_small(&member, JSON_LIMIT)?;
    if bytes.len() as u64 != desc.size {
        return Err(ImportError::SizeMismatch {
            what: member,
            expected: desc.size,
            actual: bytes.len() as u64,
        });
    }
    digest.verify(&Digest::of(&bytes), &member)?;
    Ok((bytes, member))
}

/// The OCI name of this machine's architecture.
pub(crate) fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn reference_of(desc: &Descriptor) -> Option<String> {
    // containerd and Docker put the full reference here; the OCI annotation is often only a tag.
    desc.annotations
        .get("io.containerd.image.name")
        .or_else(|| desc.annotations.get("org.opencontainers.image.ref.name"))
        .cloned()
}

fn usable(desc: &Descriptor) -> bool {
    let attestation = desc
        .annotations
        .get("vnd.docker.reference.type")
        .is_some_and(|t| t == "attestation-manifest");
    let platform_ok = desc
        .platform
        .as_ref()
        .is_none_or(|p| p.os == "linux" && p.architecture == host_architecture());
    !attestation && platform_ok
}

fn oci(source: &Source) -> Result<Plan, ImportError> {
    let index: Index = parse("index.json", &source.read_small("index.json", JSON_LIMIT)?)?;
    let mut reference = None;
    let manifest = select(source, &index.manifests, 0, &mut reference)?;
    let (config_bytes, config_member) = read_blob(source, &manifest.config)?;
    let config: ImageConfig = parse(&config_member, &config_bytes)?;
    let diff_ids = diff_ids(&config)?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(ImportError::LayerCount {
            layers: manifest.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    let mut layers = Vec::new();
    for (desc, diff_id) in manifest.layers.iter().zip(diff_ids) {
        let blob = Digest::parse(&desc.digest)?;
        layers.push(LayerRef {
            member: blob.blob_path(),
            blob: Some(blob),
            size: Some(desc.size),
            diff_id: Some(diff_id),
        });
    }
    Ok(Plan {
        format: Format::Oci,
        reference,
        config: run_config(config),
        layers,
    })
}

/// The first usable manifest below these descriptors, following indexes.
fn select(
    source: &Source,
    descriptors: &[Descriptor],
    depth: usize,
    reference: &mut Option<String>,
) -> Result<Manifest, ImportError> {
    if depth > MAX_INDEX_DEPTH {
        return Err(ImportError::TooDeep {
            limit: MAX_INDEX_DEPTH,
        });
    }
    let Some(desc) = descriptors.iter().find(|d| usable(d)) else {
        return Err(ImportError::NoManifest {
            platform: format!("linux/{}", host_architecture()),
        });
    };
    if reference.is_none() {
        *reference = reference_of(desc);
    }
    let (bytes, member) = read_blob(source, desc)?;
    let media_type = match desc.media_type.as_deref() {
        Some(m) => m.to_owned(),
        None => {
            // Descriptors may omit it; the blob's own `mediaType` or shape decides.
            let value: serde_json::Value = parse(&member, &bytes)?;
            match value.get("mediaType").and_then(|m| m.as_str()) {
                Some(m) => m.to_owned(),
                None if value.get("manifests").is_some() => OCI_INDEX.to_owned(),
                None => OCI_MANIFEST.to_owned(),
            }
        }
    };
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => parse(&member, &bytes),
        OCI_INDEX | DOCKER_LIST => {
            let index: Index = parse(&member, &bytes)?;
            select(source, &index.manifests, depth + 1, reference)
        }
        other => Err(ImportError::UnsupportedManifest {
            media_type: other.to_owned(),
        }),
    }
}
