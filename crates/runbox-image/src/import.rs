//! `import`: a `docker save` archive or an OCI layout (directory or tar, optionally gzipped)
//! becomes an image. One pass per layer: the blob is hashed as read, decompressed, hashed
//! again (the diff id) and applied; the digests are compared when the layer ends. A mismatch
//! fails the import, and since everything happens in a staging directory, nothing of it
//! remains.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;

use crate::archive::{describe, Source};
use crate::digest::HashingReader;
use crate::error::ImportError;
use crate::formats::{self, Format, Plan};
use crate::layer::Applier;
use crate::name::{name_from_reference, validate_name, NameError};
use crate::progress::{Phase, Progress, Unit};
use crate::rootfs;
use crate::staging::Staging;
use crate::store::{now_rfc3339, write_meta, Image, ImageMeta, ImageStore, ROOTFS_DIR};

/// Where a gzipped archive is decompressed to (inside the staging directory, so it goes
/// away with it): the formats need random access to their members.
const SCRATCH_TAR: &str = "archive.tar";

/// What an import did.
#[derive(Debug)]
pub struct ImportReport {
    pub image: Image,
    /// An image of that name existed and was replaced.
    pub replaced: bool,
    /// Entries not created (device nodes, unknown types), as `path (why)`.
    pub skipped: Vec<String>,
    /// Files and directories whose setuid/setgid bits were cleared.
    pub setid_cleared: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
    Bzip2,
}

fn sniff(reader: &mut impl BufRead) -> io::Result<Compression> {
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else if head.starts_with(b"BZh") {
        Compression::Bzip2
    } else {
        Compression::None
    })
}

/// Imports `path` as image `name` (derived from the archive's reference when `None`).
pub fn import(
    store: &ImageStore,
    path: &Path,
    name: Option<&str>,
    progress: &Progress,
) -> Result<ImportReport, ImportError> {
    if let Some(name) = name {
        validate_name(name)?;
    }
    let open_error = |source| ImportError::Open {
        path: path.to_owned(),
        source,
    };
    let is_dir = fs::metadata(path).map_err(open_error)?.is_dir();
    if let Err(e) = store.sweep() {
        progress.note(&format!("warning: could not sweep leftovers: {e}"));
    }
    let staging = Staging::create(store, name.unwrap_or("import"))?;
    let source = if is_dir {
        Source::dir(path)?
    } else {
        let mut file = File::open(path).map_err(open_error)?;
        let gzip = sniff(&mut BufReader::new(&mut file)).map_err(open_error)? == Compression::Gzip;
        file.rewind().map_err(open_error)?;
        if gzip {
            let scratch = staging.path().join(SCRATCH_TAR);
            decompress(path, file, &scratch, progress)?;
            let file = File::open(&scratch).map_err(open_error)?;
            Source::tar(path, file)?
        } else {
            Source::tar(path, file)?
        }
    };
    let plan = formats::plan(&source, path)?;
    let name = match name {
        Some(name) => name.to_owned(),
        None => name_from_reference(plan.reference.as_deref().ok_or(NameError::NoReference)?)?,
    };

    let rootfs_path = staging.path().join(ROOTFS_DIR);
    let make_root = || -> io::Result<_> {
        fs::create_dir(&rootfs_path)?;
        fs::set_permissions(
            &rootfs_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        rootfs::open_dir(&rootfs_path)
    };
    let applier = Applier::new(make_root().map_err(|source| ImportError::Open {
        path: rootfs_path.clone(),
        source,
    })?);
    let mut skipped = Vec::new();
    let mut setid_cleared = 0;
    let total: u64 = plan
        .layers
        .iter()
        .map(|l| source.open(&l.member).map(|(_, size)| size))
        .sum::<Result<u64, _>>()?;
    let phase = progress.phase("importing", Some(total), Unit::Bytes);
    for index in 0..plan.layers.len() {
        phase.set_message(format!("layer {}/{}", index + 1, plan.layers.len()));
        match apply_layer(&source, &applier, &plan, index, &phase) {
            Ok(stats) => {
                skipped.extend(stats.skipped);
                setid_cleared += stats.setid_cleared;
            }
            Err(e) => {
                phase.abandon();
                return Err(e);
            }
        }
    }
    phase.finish(&format!("{} layers applied", plan.layers.len()));
    drop(source);
    let _ = fs::remove_file(staging.path().join(SCRATCH_TAR));

    let size_bytes = rootfs::tree_size(&rootfs_path).map_err(ImportError::Size)?;
    let kind = match plan.format {
        Format::DockerSave => "docker-save archive",
        Format::Oci => "OCI layout",
    };
    let meta = ImageMeta {
        name: name.clone(),
        source: format!("{kind} {}", describe(path).display()),
        created: now_rfc3339(),
        size_bytes,
        packages: Vec::new(),
        layers: plan
            .layers
            .iter()
            .filter_map(|l| l.diff_id.as_ref().map(|d| d.to_string()))
            .collect(),
        docker_ref: None,
        docker_image_id: None,
        config: plan.config.clone(),
    };
    write_meta(staging.path(), &meta)?;
    let replaced = staging.commit(&name)?;
    let image = store
        .get(&name)
        .ok_or(crate::error::StoreError::NoSuchImage { name: name.clone() })?;
    Ok(ImportReport {
        image,
        replaced,
        skipped,
        setid_cleared,
    })
}

fn decompress(
    path: &Path,
    file: File,
    scratch: &Path,
    progress: &Progress,
) -> Result<(), ImportError> {
    let error = |source| ImportError::Decompress {
        path: path.to_owned(),
        source,
    };
    let size = file.metadata().map_err(error)?.len();
    let phase = progress.phase("decompressing", Some(size), Unit::Bytes);
    let counted = Counted {
        inner: file,
        phase: &phase,
    };
    let mut decoder = MultiGzDecoder::new(BufReader::with_capacity(1 << 18, counted));
    let result = File::create(scratch).and_then(|mut out| io::copy(&mut decoder, &mut out));
    match result {
        Ok(bytes) => {
            phase.finish(&format!(
                "{} uncompressed",
                crate::progress::human_bytes(bytes)
            ));
            Ok(())
        }
        Err(e) => {
            phase.abandon();
            Err(error(e))
        }
    }
}

/// Applies layer `index` of the plan, verifying its blob digest, size and diff id.
fn apply_layer(
    source: &Source,
    applier: &Applier,
    plan: &Plan,
    index: usize,
    phase: &Phase,
) -> Result<crate::layer::LayerStats, ImportError> {
    let layer = &plan.layers[index];
    let member = layer.member.clone();
    let read_error = |source| ImportError::ReadMember {
        member: member.clone(),
        source,
    };
    let (reader, size) = source.open(&layer.member)?;
    if let Some(expected) = layer.size {
        if expected != size {
            return Err(ImportError::SizeMismatch {
                what: member,
                expected,
                actual: size,
            });
        }
    }
    let raw = HashingReader::new(Counted {
        inner: reader,
        phase,
    });
    let mut buffered = BufReader::with_capacity(1 << 18, raw);
    let layer_error = |source| ImportError::Layer {
        index: index + 1,
        member: member.clone(),
        source,
    };
    let unsupported = |compression| ImportError::Compression {
        index: index + 1,
        member: member.clone(),
        compression,
    };
    let (stats, diff_id) = match sniff(&mut buffered).map_err(read_error)? {
        Compression::None => {
            let mut tar = HashingReader::new(&mut buffered);
            let stats = applier.apply(&mut tar).map_err(layer_error)?;
            (stats, tar.finish().map_err(read_error)?.0)
        }
        Compression::Gzip => {
            let mut tar = HashingReader::new(MultiGzDecoder::new(&mut buffered));
            let stats = applier.apply(&mut tar).map_err(layer_error)?;
            (stats, tar.finish().map_err(read_error)?.0)
        }
        Compression::Zstd => return Err(unsupported("zstd")),
        Compression::Xz => return Err(unsupported("xz")),
        Compression::Bzip2 => return Err(unsupported("bzip2")),
    };
    io::copy(&mut buffered, &mut io::sink()).map_err(read_error)?;
    let (blob, _) = buffered.into_inner().finish().map_err(read_error)?;
    if let Some(expected) = &layer.blob {
        expected.verify(&blob, format!("layer {} ({member})", index + 1))?;
    }
    if let Some(expected) = &layer.diff_id {
        expected.verify(
            &diff_id,
            format!("layer {} ({member}) uncompressed", index + 1),
        )?;
    }
    Ok(stats)
}

/// Advances a progress phase by the bytes read through it.
struct Counted<'a, R> {
    inner: R,
    phase: &'a Phase,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.phase.inc(n as u64);
        Ok(n)
    }
}
