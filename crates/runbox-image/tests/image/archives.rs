//! Builders for layer tars, `docker save` archives and OCI layouts. Headers are written
//! raw (name bytes copied into the header) so malicious names (`/abs`, `../x`) can be made:
//! the tar crate's own path setters refuse them.

use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

pub const MTIME: u64 = 1_700_000_000;

pub fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// One layer tar.
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    pub fn raw(
        mut self,
        name: &[u8],
        kind: EntryType,
        link: Option<&[u8]>,
        mode: u32,
        data: &[u8],
    ) -> Layer {
        let mut header = Header::new_gnu();
        {
            let old = header.as_old_mut();
            assert!(name.len() < old.name.len(), "name too long for the test");
            old.name[..name.len()].copy_from_slice(name);
            if let Some(link) = link {
                old.linkname[..link.len()].copy_from_slice(link);
            }
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header.set_cksum();
        self.builder.append(&header, data).expect("append");
        self
    }

    pub fn dir(self, name: &str, mode: u32) -> Layer {
        self.raw(name.as_bytes(), EntryType::Directory, None, mode, b"")
    }

    pub fn file(self, name: &str, data: &str, mode: u32) -> Layer {
        self.raw(
            name.as_bytes(),
            EntryType::Regular,
            None,
            mode,
            data.as_bytes(),
        )
    }

    pub fn symlink(self, name: &str, target: &str) -> Layer {
        self.raw(
            name.as_bytes(),
            EntryType::Symlink,
            Some(target.as_bytes()),
            0o777,
            b"",
        )
    }

    pub fn hardlink(self, name: &str, target: &str) -> Layer {
        self.raw(
            name.as_bytes(),
            EntryType::Link,
            Some(target.as_bytes()),
            0o644,
            b"",
        )
    }

    pub fn tar(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish layer")
    }
}

impl Default for Layer {
    fn default() -> Layer {
        Layer::new()
    }
}

/// Archive members by name, in order, and symlink members.
#[derive(Default)]
pub struct Members {
    pub files: Vec<(String, Vec<u8>)>,
    pub symlinks: Vec<(String, String)>,
}

impl Members {
    pub fn add(&mut self, name: impl Into<String>, bytes: Vec<u8>) {
        self.files.push((name.into(), bytes));
    }

    pub fn to_tar(&self) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, bytes) in &self.files {
            let mut header = Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(MTIME);
            builder
                .append_data(&mut header, name, bytes.as_slice())
                .expect("member");
        }
        for (name, target) in &self.symlinks {
            let mut header = Header::new_gnu();
            header.set_entry_type(EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            builder
                .append_link(&mut header, name, target)
                .expect("symlink member");
        }
        builder.into_inner().expect("finish archive")
    }

    pub fn to_dir(&self, dir: &Path) {
        for (name, bytes) in &self.files {
            let path = dir.join(name);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, bytes).expect("write member");
        }
        for (name, target) in &self.symlinks {
            std::os::unix::fs::symlink(target, dir.join(name)).expect("symlink member");
        }
    }
}

pub fn config_json(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello \"world\""],
            "Cmd": ["/bin/sh", "-c", "echo hi"],
            "WorkingDir": "/srv"
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids.iter().map(|d| format!("sha256:{d}")).collect::<Vec<_>>()
        }
    }))
    .expect("config")
}

pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A Docker < 25 `docker save`: `manifest.json`, `<sha>.json`, `<n>/layer.tar`.
pub fn docker_save(layers: &[Vec<u8>], repo_tag: Option<&str>) -> Members {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let config = config_json(&diff_ids);
    let config_name = format!("{}.json", sha256(&config));
    let mut members = Members::default();
    let mut layer_names = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let name = format!("layer{i:02}/layer.tar");
        members.add(&name, layer.clone());
        layer_names.push(name);
    }
    members.add(&config_name, config);
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": repo_tag.map(|t| vec![t]),
        "Layers": layer_names,
    }]);
    members.add(
        "manifest.json",
        serde_json::to_vec(&manifest).expect("manifest"),
    );
    members
}

pub fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({
        "mediaType": media_type,
        "digest": format!("sha256:{}", sha256(bytes)),
        "size": bytes.len(),
    })
}

/// An OCI layout. Each layer is `(tar, gzip it?)`. With `nested`, index.json points to an
/// image index listing an attestation, another architecture and this one.
pub fn oci(layers: &[(Vec<u8>, bool)], reference: &str, nested: bool) -> Members {
    let mut members = Members::default();
    members.add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    let diff_ids: Vec<String> = layers.iter().map(|(l, _)| sha256(l)).collect();
    let mut layer_descriptors = Vec::new();
    for (tar, gz) in layers {
        let (blob, media) = if *gz {
            (gzip(tar), "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (tar.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        layer_descriptors.push(descriptor(media, &blob));
        members.add(format!("blobs/sha256/{}", sha256(&blob)), blob);
    }
    let config = config_json(&diff_ids);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": layer_descriptors,
    }))
    .expect("manifest");
    members.add(format!("blobs/sha256/{}", sha256(&config)), config);
    members.add(
        format!("blobs/sha256/{}", sha256(&manifest)),
        manifest.clone(),
    );
    let annotations = json!({
        "io.containerd.image.name": reference,
        "org.opencontainers.image.ref.name": reference.rsplit(':').next().unwrap_or("latest"),
    });
    let top = if nested {
        let mut this = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
        this["platform"] = json!({"architecture": host_arch(), "os": "linux"});
        let other_arch = if host_arch() == "amd64" {
            "arm64"
        } else {
            "amd64"
        };
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": format!("sha256:{}", "0".repeat(64)),
                    "size": 10,
                    "platform": {"architecture": "unknown", "os": "unknown"},
                    "annotations": {"vnd.docker.reference.type": "attestation-manifest"}
                },
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": format!("sha256:{}", "1".repeat(64)),
                    "size": 10,
                    "platform": {"architecture": other_arch, "os": "linux"}
                },
                this
            ]
        }))
        .expect("index");
        members.add(format!("blobs/sha256/{}", sha256(&index)), index.clone());
        let mut d = descriptor("application/vnd.oci.image.index.v1+json", &index);
        d["annotations"] = annotations;
        d
    } else {
        let mut d = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
        d["annotations"] = annotations;
        d
    };
    members.add(
        "index.json",
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [top]})).expect("index.json"),
    );
    members
}
