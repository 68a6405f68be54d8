//! Well-formed archives give exactly the expected tree.

use std::fs;
use std::os::unix::fs::MetadataExt;

use runbox_image::import;
use tar::EntryType;

use crate::archives::{docker_save, gzip, oci, sha256, Layer, Members};
use crate::{quiet, tree, Scratch};

fn base_layer() -> Vec<u8> {
    Layer::new()
        .dir("./", 0o755)
        .dir("etc/", 0o755)
        .file("etc/a", "one", 0o644)
        .file("etc/gone", "bye", 0o644)
        .dir("usr/", 0o755)
        .dir("usr/bin/", 0o755)
        .file("usr/bin/tool", "#!tool", 0o4755)
        .symlink("usr/bin/link", "tool")
        .hardlink("etc/hard", "etc/a")
        .dir("opaque/", 0o755)
        .file("opaque/old", "old", 0o644)
        .dir("opaque/sub/", 0o755)
        .file("opaque/sub/deep", "deep", 0o644)
        .dir("keep/", 0o700)
        .file("keep/x", "x", 0o600)
        .tar()
}

fn top_layer() -> Vec<u8> {
    Layer::new()
        .file("etc/.wh.gone", "", 0o644)
        .file("etc/.wh.never-existed", "", 0o644)
        .dir("opaque/", 0o755)
        // Before its directory's opaque marker: the marker must not delete it.
        .file("opaque/new", "new", 0o644)
        .file("opaque/.wh..wh..opq", "", 0o644)
        .file("etc/a", "two", 0o600)
        .file("keep", "now a file", 0o644)
        .tar()
}

const EXPECTED: &[&str] = &[
    "d 755 etc",
    "d 755 opaque",
    "d 755 usr",
    "d 755 usr/bin",
    "f 600 etc/a = two",
    "f 644 etc/hard = one",
    "f 644 keep = now a file",
    "f 644 opaque/new = new",
    "f 755 usr/bin/tool = #!tool",
    "l usr/bin/link -> tool",
];

#[test]
fn docker_save_layers_apply_in_order_with_whiteouts() {
    let s = Scratch::new();
    let members = docker_save(
        &[base_layer(), top_layer()],
        Some("example.com/team/sample:latest"),
    );
    let input = s.write_input("save.tar", &members.to_tar());
    let report = import(&s.store(), &input, None, &quiet()).expect("import");
    let image = report.image;
    assert_eq!(image.name(), "sample");
    assert_eq!(tree(&image.rootfs()), EXPECTED);
    assert_eq!(
        report.setid_cleared, 1,
        "usr/bin/tool's setuid bit is cleared"
    );
    assert!(!report.replaced);

    let meta = image.meta();
    assert_eq!(
        meta.layers,
        [
            format!("sha256:{}", sha256(&base_layer())),
            format!("sha256:{}", sha256(&top_layer()))
        ]
    );
    assert!(
        meta.source.starts_with("docker-save archive "),
        "{}",
        meta.source
    );
    assert_eq!(meta.config.cmd, ["/bin/sh", "-c", "echo hi"]);
    assert_eq!(meta.config.working_dir.as_deref(), Some("/srv"));
    assert!(meta
        .config
        .env
        .contains(&"GREETING=hello \"world\"".to_owned()));
    assert_eq!(meta.docker_ref, None);
    assert_eq!(image.docker_ref(), None);
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(image.dir().join("image.json")).expect("image.json"))
            .expect("json");
    assert_eq!(json["name"], "sample");
    assert!(json["size_bytes"].as_u64().expect("size") > 0);
    assert!(json["created"].as_str().expect("created").ends_with('Z'));
    s.assert_images_dir_holds(&["sample"]);
    s.assert_outside_untouched();
}

#[test]
fn oci_directory_with_nested_index_and_mixed_compression() {
    let s = Scratch::new();
    let members = oci(
        &[(base_layer(), true), (top_layer(), false)],
        "docker.io/library/sample:1.0",
        true,
    );
    let dir = s.root.join("input-layout");
    members.to_dir(&dir);
    let report = import(&s.store(), &dir, None, &quiet()).expect("import");
    assert_eq!(report.image.name(), "sample-1.0");
    assert_eq!(tree(&report.image.rootfs()), EXPECTED);
    assert!(report.image.meta().source.starts_with("OCI layout "));
    s.assert_images_dir_holds(&["sample-1.0"]);
    s.assert_outside_untouched();
}

#[test]
fn gzipped_oci_tar_with_a_given_name() {
    let s = Scratch::new();
    let members = oci(
        &[(base_layer(), false), (top_layer(), true)],
        "sample:2",
        false,
    );
    let input = s.write_input("layout.tar.gz", &gzip(&members.to_tar()));
    let report = import(&s.store(), &input, Some("named"), &quiet()).expect("import");
    assert_eq!(report.image.name(), "named");
    assert_eq!(tree(&report.image.rootfs()), EXPECTED);
    // The decompressed scratch copy went away with the staging directory.
    s.assert_images_dir_holds(&["named"]);
}

#[test]
fn docker_25_save_with_layers_linked_into_blobs() {
    let s = Scratch::new();
    let layer = base_layer();
    let hex = sha256(&layer);
    let mut members = Members::default();
    members.add(format!("blobs/sha256/{hex}"), layer.clone());
    members
        .symlinks
        .push((format!("{hex}/layer.tar"), format!("../blobs/sha256/{hex}")));
    let config = crate::archives::config_json(std::slice::from_ref(&hex));
    let config_hex = sha256(&config);
    members.add(format!("blobs/sha256/{config_hex}"), config);
    members.add(
        "manifest.json",
        serde_json::to_vec(&serde_json::json!([{
            "Config": format!("blobs/sha256/{config_hex}"),
            "RepoTags": ["linked:latest"],
            "Layers": [format!("{hex}/layer.tar")],
        }]))
        .expect("manifest"),
    );
    let input = s.write_input("save25.tar", &members.to_tar());
    let report = import(&s.store(), &input, None, &quiet()).expect("import");
    assert_eq!(report.image.name(), "linked");
    assert!(report.image.rootfs().join("etc/gone").is_file());
}

#[test]
fn devices_are_skipped_fifos_made_links_to_symlinks_stay_links() {
    let s = Scratch::new();
    let layer = Layer::new()
        .dir("dev/", 0o755)
        .raw(b"dev/sda", EntryType::Block, None, 0o660, b"")
        .raw(b"dev/mem", EntryType::Char, None, 0o660, b"")
        .raw(b"pipe", EntryType::Fifo, None, 0o640, b"")
        .symlink("passwd-link", "/etc/passwd")
        .hardlink("second-link", "passwd-link")
        .tar();
    let input = s.write_input("dev.tar", &docker_save(&[layer], None).to_tar());
    let report = import(&s.store(), &input, Some("devs"), &quiet()).expect("import");
    let mut skipped = report.skipped.clone();
    skipped.sort();
    assert_eq!(skipped, ["dev/mem (device node)", "dev/sda (device node)"]);
    let rootfs = report.image.rootfs();
    assert_eq!(
        tree(&rootfs),
        [
            "? 640 pipe",
            "d 755 dev",
            "l passwd-link -> /etc/passwd",
            "l second-link -> /etc/passwd",
        ]
    );
    let a = fs::symlink_metadata(rootfs.join("passwd-link")).expect("link");
    let b = fs::symlink_metadata(rootfs.join("second-link")).expect("link");
    assert_eq!(
        a.ino(),
        b.ino(),
        "a hard link to a symlink links the symlink"
    );
    s.assert_outside_untouched();
}

#[test]
fn an_archive_without_a_tag_needs_a_name() {
    let s = Scratch::new();
    let input = s.write_input("untagged.tar", &docker_save(&[base_layer()], None).to_tar());
    let err = import(&s.store(), &input, None, &quiet()).expect_err("no name");
    assert!(err.to_string().contains("--name"), "{err}");
    s.assert_images_dir_holds(&[]);
}

#[test]
fn unknown_files_are_refused() {
    let s = Scratch::new();
    let input = s.write_input("junk.tar", &Layer::new().file("hello", "x", 0o644).tar());
    let err = import(&s.store(), &input, Some("junk"), &quiet()).expect_err("not an image");
    assert_eq!(err.kind(), runbox_image::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("neither"), "{err}");
    let err =
        import(&s.store(), &s.root.join("missing.tar"), Some("x"), &quiet()).expect_err("missing");
    assert_eq!(err.kind(), runbox_image::ErrorKind::InvalidInput);
    s.assert_images_dir_holds(&[]);
}
