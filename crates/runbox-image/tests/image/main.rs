//! Imports of synthetic archives, built here with the tar crate: the exact resulting trees,
//! malicious archives (nothing may be written outside the scratch directory: a canary
//! outside the images dir is checked after every attempt), atomicity, names, list and rm.
//! Nothing here needs the network or Docker.

mod archives;
mod import;
mod malicious;
mod store;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use runbox_image::{ImageStore, Progress, Style};

/// A directory removed on drop: `<tmp>/runbox-image-test-<pid>-<n>/` with `images/` (the
/// store) and `outside/canary` (what an escaping archive would hit).
#[derive(Debug)]
pub struct Scratch {
    pub root: PathBuf,
}

pub const CANARY_TEXT: &str = "original canary\n";

impl Scratch {
    pub fn new() -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let root =
            std::env::temp_dir().join(format!("runbox-image-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("outside")).expect("scratch dir");
        fs::write(root.join("outside/canary"), CANARY_TEXT).expect("canary");
        Scratch { root }
    }

    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn store(&self) -> ImageStore {
        ImageStore::open(self.images()).expect("open store")
    }

    pub fn outside(&self) -> PathBuf {
        self.root.join("outside")
    }

    /// The canary is untouched, has no extra hard links, and nothing else appeared beside it.
    pub fn assert_outside_untouched(&self) {
        let canary = self.outside().join("canary");
        assert_eq!(
            fs::read_to_string(&canary).expect("canary still there"),
            CANARY_TEXT
        );
        assert_eq!(
            fs::metadata(&canary).expect("canary").nlink(),
            1,
            "canary hard-linked"
        );
        let names: Vec<_> = fs::read_dir(self.outside())
            .expect("outside")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        assert_eq!(names, ["canary"], "something was written outside");
        let top: Vec<_> = fs::read_dir(&self.root)
            .expect("scratch")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .filter(|n| !n.starts_with("input"))
            .collect();
        let mut top = top;
        top.sort();
        assert!(
            top.iter().all(|n| n == "images" || n == "outside"),
            "unexpected entries in scratch: {top:?}"
        );
    }

    /// The images dir holds nothing but these names (no tmp dir, no lock, no half image).
    pub fn assert_images_dir_holds(&self, expected: &[&str]) {
        let mut names: Vec<String> = match fs::read_dir(self.images()) {
            Ok(entries) => entries
                .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        assert_eq!(names, expected);
    }

    pub fn write_input(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.root.join(format!("input-{name}"));
        fs::write(&path, bytes).expect("write input");
        path
    }
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

pub fn quiet() -> Progress {
    Progress::new(Style::Quiet)
}

/// One line per entry below `root`, sorted: `d 755 etc`, `f 644 etc/a = text`,
/// `l usr/bin/sh -> dash`, `p 644 fifo`.
pub fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out);
    out.sort();
    out
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(root.join(rel)).expect("read_dir") {
        let entry = entry.expect("entry");
        let path = rel.join(entry.file_name());
        let meta = fs::symlink_metadata(root.join(&path)).expect("lstat");
        let mode = meta.mode() & 0o7777;
        let shown = path.display();
        let kind = meta.file_type();
        if kind.is_dir() {
            out.push(format!("d {mode:o} {shown}"));
            walk(root, &path, out);
        } else if kind.is_symlink() {
            let target = fs::read_link(root.join(&path)).expect("readlink");
            out.push(format!("l {shown} -> {}", target.display()));
        } else if kind.is_file() {
            let text = fs::read_to_string(root.join(&path)).unwrap_or_else(|_| "<binary>".into());
            out.push(format!("f {mode:o} {shown} = {}", text.trim_end()));
        } else {
            out.push(format!("? {mode:o} {shown}"));
        }
    }
}
