//! Archives that try to write outside the rootfs, or whose content does not match its
//! digests. Every one must fail, leave the images directory empty (no image, no tmp dir, no
//! lock) and leave the canary outside untouched.

use runbox_image::{import, ErrorKind, ImportError, LayerError};
use tar::EntryType;

use crate::archives::{docker_save, gzip, oci, sha256, Layer};
use crate::{quiet, Scratch};

/// Imports these layers (docker-save) and returns the error; checks nothing leaked.
fn refused(s: &Scratch, layers: &[Vec<u8>]) -> ImportError {
    let input = s.write_input("evil.tar", &docker_save(layers, Some("evil:1")).to_tar());
    let err = import(&s.store(), &input, None, &quiet()).expect_err("must be refused");
    s.assert_images_dir_holds(&[]);
    s.assert_outside_untouched();
    err
}

fn unsafe_reason(err: &ImportError) -> &'static str {
    match err {
        ImportError::Layer {
            source: LayerError::Unsafe { reason, .. },
            ..
        } => reason,
        other => panic!("expected an unsafe-entry error, got: {other:?}"),
    }
}

#[test]
fn absolute_paths_are_refused() {
    let s = Scratch::new();
    let target = s.outside().join("canary");
    let layer = Layer::new()
        .raw(
            target.as_os_str().as_encoded_bytes(),
            EntryType::Regular,
            None,
            0o644,
            b"pwned",
        )
        .tar();
    let err = refused(&s, &[layer]);
    assert_eq!(unsafe_reason(&err), "absolute path");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn dot_dot_escapes_are_refused() {
    let s = Scratch::new();
    // rootfs is images/.<label>.tmp-<r>/rootfs: three levels up is the scratch dir.
    for name in [
        "../../../outside/pwned",
        "a/../../../../outside/pwned",
        "..",
    ] {
        let layer = Layer::new()
            .raw(name.as_bytes(), EntryType::Regular, None, 0o644, b"pwned")
            .tar();
        assert_eq!(unsafe_reason(&refused(&s, &[layer])), "`..` component");
    }
}

#[test]
fn writing_through_a_planted_symlink_is_refused() {
    let s = Scratch::new();
    let outside = s.outside().display().to_string();
    // Absolute and relative links, in the same layer and across layers.
    let cases: Vec<Vec<Vec<u8>>> = vec![
        vec![Layer::new()
            .symlink("etc", &outside)
            .file("etc/pwned", "x", 0o644)
            .tar()],
        vec![
            Layer::new().symlink("etc", "/").tar(),
            Layer::new().file("etc/pwned", "x", 0o644).tar(),
        ],
        vec![Layer::new()
            .symlink("up", "../../../outside")
            .dir("up/newdir/", 0o755)
            .tar()],
        vec![Layer::new()
            .symlink("up", &outside)
            .raw(b"up/fifo", EntryType::Fifo, None, 0o644, b"")
            .tar()],
        vec![Layer::new()
            .symlink("up", &outside)
            .symlink("up/evil-link", "/etc/shadow")
            .tar()],
    ];
    for layers in cases {
        let err = refused(&s, &layers);
        assert_eq!(
            unsafe_reason(&err),
            "a parent is a symlink or not a directory"
        );
    }
    assert!(!std::path::Path::new("/pwned").exists());
}

#[test]
fn a_symlink_at_the_final_component_is_replaced_not_followed() {
    let s = Scratch::new();
    let canary = s.outside().join("canary");
    let layer = Layer::new()
        .symlink("victim", &canary.display().to_string())
        .file("victim", "replaced", 0o644)
        .symlink("dir-victim", &s.outside().display().to_string())
        .dir("dir-victim/", 0o755)
        .file("dir-victim/inside", "ok", 0o644)
        .tar();
    let input = s.write_input("ok.tar", &docker_save(&[layer], None).to_tar());
    let report = import(&s.store(), &input, Some("ok"), &quiet()).expect("import");
    let rootfs = report.image.rootfs();
    assert_eq!(
        std::fs::read_to_string(rootfs.join("victim")).expect("victim"),
        "replaced"
    );
    assert!(rootfs.join("dir-victim/inside").is_file());
    assert!(!std::fs::symlink_metadata(rootfs.join("dir-victim"))
        .expect("dir")
        .file_type()
        .is_symlink());
    s.assert_outside_untouched();
}

#[test]
fn hard_links_outside_the_rootfs_are_refused() {
    let s = Scratch::new();
    let canary = s.outside().join("canary").display().to_string();
    let cases = [
        (
            Layer::new().hardlink("passwd", "/etc/passwd").tar(),
            "absolute path",
        ),
        (
            Layer::new().hardlink("canary", &canary).tar(),
            "absolute path",
        ),
        (
            Layer::new()
                .hardlink("canary", "../../../outside/canary")
                .tar(),
            "`..` component",
        ),
        (
            Layer::new()
                .symlink("out", &s.outside().display().to_string())
                .hardlink("canary", "out/canary")
                .tar(),
            "hard link target's parent is a symlink or not a directory",
        ),
        (
            Layer::new().dir("d/", 0o755).hardlink("dlink", "d").tar(),
            "hard link to a directory",
        ),
        (
            Layer::new().hardlink("nothing", "missing").tar(),
            "hard link to a missing entry",
        ),
    ];
    for (layer, reason) in cases {
        assert_eq!(unsafe_reason(&refused(&s, &[layer])), reason);
    }
}

#[test]
fn whiteouts_cannot_reach_outside() {
    let s = Scratch::new();
    let outside = s.outside().display().to_string();
    let cases = [
        vec![
            Layer::new().symlink("l", &outside).tar(),
            Layer::new().file("l/.wh.canary", "", 0o644).tar(),
        ],
        vec![
            Layer::new().symlink("l", &outside).tar(),
            Layer::new().file("l/.wh..wh..opq", "", 0o644).tar(),
        ],
        vec![Layer::new().file("../.wh.outside", "", 0o644).tar()],
        vec![Layer::new().file("etc/.wh..", "", 0o644).tar()],
    ];
    for layers in cases {
        refused(&s, &layers);
    }
}

#[test]
fn a_layer_that_does_not_match_its_diff_id_is_refused() {
    let s = Scratch::new();
    let good = Layer::new().file("a", "good", 0o644).tar();
    let evil = Layer::new().file("a", "evil", 0o644).tar();
    let mut members = docker_save(&[good], Some("swap:1"));
    // Same length, other content: only the digest can tell.
    members.files[0].1 = evil;
    let input = s.write_input("swapped.tar", &members.to_tar());
    let err = import(&s.store(), &input, None, &quiet()).expect_err("mismatch");
    assert!(matches!(err, ImportError::DigestMismatch { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    s.assert_images_dir_holds(&[]);
    s.assert_outside_untouched();
}

#[test]
fn a_tampered_oci_blob_is_refused() {
    let s = Scratch::new();
    let layer = Layer::new().file("a", "good", 0o644).tar();
    let mut members = oci(&[(layer, true)], "tampered:1", false);
    let blob = members
        .files
        .iter_mut()
        .find(|(name, bytes)| name.starts_with("blobs/") && bytes.starts_with(&[0x1f, 0x8b]))
        .expect("layer blob");
    blob.1 = gzip(&Layer::new().file("a", "evil", 0o644).tar());
    let input = s.write_input("tampered.tar", &members.to_tar());
    let err = import(&s.store(), &input, None, &quiet()).expect_err("tampered");
    assert!(
        matches!(
            err,
            ImportError::DigestMismatch { .. } | ImportError::SizeMismatch { .. }
        ),
        "{err:?}"
    );
    s.assert_images_dir_holds(&[]);
}

#[test]
fn a_tampered_config_is_refused() {
    let s = Scratch::new();
    let layer = Layer::new().file("a", "good", 0o644).tar();
    let mut members = docker_save(&[layer], Some("cfg:1"));
    let config = members
        .files
        .iter_mut()
        .find(|(name, _)| name.ends_with(".json") && name != "manifest.json")
        .expect("config");
    // A valid config naming another layer; its file name no longer matches its digest.
    config.1 = crate::archives::config_json(&[sha256(b"other")]);
    let input = s.write_input("cfg.tar", &members.to_tar());
    let err = import(&s.store(), &input, None, &quiet()).expect_err("tampered config");
    assert!(matches!(err, ImportError::DigestMismatch { .. }), "{err:?}");
    s.assert_images_dir_holds(&[]);
}
