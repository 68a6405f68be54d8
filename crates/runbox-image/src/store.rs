//! The images directory: `<dir>/<name>/rootfs/` and `<dir>/<name>/image.json`, plus what
//! interrupted work leaves behind (`.<label>.tmp-<random>` with its `.lock`, and
//! `.<name>.old-*` / `.<name>.rm-*` from replacements and removals), swept by
//! [`ImageStore::sweep`].

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::name::validate_name;
use crate::staging::{self, random_suffix};

pub(crate) const META_FILE: &str = "image.json";
pub(crate) const ROOTFS_DIR: &str = "rootfs";

/// How a sandbox runs by default in this image (from the image config on import; fixed for
/// the built image). The Docker copy gets the same values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// `image.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageMeta {
    pub name: String,
    /// `debootstrap bookworm <mirror>` or the imported file (`docker-save archive <path>`,
    /// `OCI layout <path>`).
    pub source: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// Apparent size of the rootfs (regular files, hard links once, symlinks).
    pub size_bytes: u64,
    /// Installed Debian packages (built images).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<Package>,
    /// Layer diff ids, bottom first (imported images).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<String>,
    /// The image as loaded into the local Docker engine (`runbox/<name>:latest`), if it was.
    #[serde(default)]
    pub docker_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_image_id: Option<String>,
    #[serde(default)]
    pub config: RunConfig,
}

/// One image found in a store.
#[derive(Debug, Clone)]
pub struct Image {
    dir: PathBuf,
    meta: ImageMeta,
}

impl Image {
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// `<dir>/<name>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The unpacked root filesystem.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join(ROOTFS_DIR)
    }

    /// `runbox/<name>:latest` when the image was loaded into Docker.
    pub fn docker_ref(&self) -> Option<String> {
        self.meta.docker_ref.clone()
    }

    pub fn meta(&self) -> &ImageMeta {
        &self.meta
    }
}

/// A directory of images. Opening does not create it: a store that does not exist yet is
/// empty, and the first build or import creates it.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

/// `/var/lib/runbox/images` for root, else `$XDG_DATA_HOME/runbox/images` or
/// `~/.local/share/runbox/images`; `None` without a usable home. Reads the environment: call
/// it from `main`.
pub fn default_images_dir() -> Option<PathBuf> {
    if rustix::process::geteuid().is_root() {
        return Some(PathBuf::from("/var/lib/runbox/images"));
    }
    let absolute = |v: std::ffi::OsString| {
        let p = PathBuf::from(v);
        p.is_absolute().then_some(p)
    };
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").and_then(absolute) {
        return Some(data.join("runbox/images"));
    }
    std::env::var_os("HOME")
        .and_then(absolute)
        .map(|home| home.join(".local/share/runbox/images"))
}

impl ImageStore {
    pub fn open(dir: impl AsRef<Path>) -> Result<ImageStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        match fs::metadata(&dir) {
            Ok(meta) if !meta.is_dir() => Err(StoreError::NotADirectory { path: dir }),
            _ => Ok(ImageStore { dir }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn ensure_dir(&self) -> Result<(), StoreError> {
        fs::create_dir_all(&self.dir).map_err(|source| StoreError::Create {
            path: self.dir.clone(),
            source,
        })
    }

    /// `<dir>/<name>.build.log`.
    pub fn build_log(&self, name: &str) -> PathBuf {
        self.dir
            .join(format!("{name}{}", crate::name::BUILD_LOG_SUFFIX))
    }

    /// The image called `name`, if there is a complete one (an unreadable or invalid
    /// `image.json` counts as none).
    pub fn get(&self, name: &str) -> Option<Image> {
        validate_name(name).ok()?;
        self.load(name).ok()
    }

    fn load(&self, name: &str) -> Result<Image, StoreError> {
        let dir = self.dir.join(name);
        let path = dir.join(META_FILE);
        let bytes = fs::read(&path).map_err(|source| StoreError::ReadMeta {
            path: path.clone(),
            source,
        })?;
        let meta: ImageMeta = serde_json::from_slice(&bytes).map_err(|e| StoreError::ReadMeta {
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        if meta.name != name {
            return Err(StoreError::ReadMeta {
                path,
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    "image.json names another image",
                ),
            });
        }
        Ok(Image { dir, meta })
    }

    /// Every complete image, by name. A missing directory is an empty store.
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::ReadMeta {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let mut images: Vec<Image> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| self.get(&name))
            .collect();
        images.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(images)
    }

    /// Removes the image `name`: it is first renamed aside, so no half-deleted image is ever
    /// visible under its name. Returns what was removed (its Docker reference, for one).
    pub fn remove(&self, name: &str) -> Result<Image, StoreError> {
        validate_name(name)?;
        let image = self.get(name).ok_or_else(|| StoreError::NoSuchImage {
            name: name.to_owned(),
        })?;
        let aside = self.dir.join(format!(".{name}.rm-{}", random_suffix()));
        fs::rename(image.dir(), &aside).map_err(|source| StoreError::Rename {
            from: image.dir().to_owned(),
            to: aside.clone(),
            source,
        })?;
        staging::discard(&aside)?;
        Ok(image)
    }

    /// Records (or clears) the Docker copy of `name` in its `image.json`.
    pub fn set_docker(
        &self,
        name: &str,
        docker_ref: Option<String>,
        image_id: Option<String>,
    ) -> Result<Image, StoreError> {
        validate_name(name)?;
        let mut image = self.load(name)?;
        image.meta.docker_ref = docker_ref;
        image.meta.docker_image_id = image_id;
        write_meta(image.dir(), &image.meta)?;
        Ok(image)
    }

    /// Removes what interrupted builds, imports, replacements and removals left behind.
    /// Work in progress (its lock is held) is left alone. Returns what was removed.
    pub fn sweep(&self) -> Result<Vec<PathBuf>, StoreError> {
        staging::sweep(&self.dir)
    }
}

/// Writes `image.json` atomically (a reader never sees half a file).
pub(crate) fn write_meta(dir: &Path, meta: &ImageMeta) -> Result<(), StoreError> {
    let path = dir.join(META_FILE);
    let tmp = dir.join(format!(".{META_FILE}.tmp-{}", random_suffix()));
    let write = || -> io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        let mut text = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
        text.push(b'\n');
        file.write_all(&text)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|source| {
        let _ = fs::remove_file(&tmp);
        StoreError::WriteMeta { path, source }
    })
}

/// Now, as RFC 3339 in UTC.
pub(crate) fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    // Seconds are precise enough for a listing.
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
