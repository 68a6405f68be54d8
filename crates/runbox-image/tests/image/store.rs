//! The store: names, list, rm, replacement, and what failures and crashes leave behind.

use std::fs;

use runbox_image::{import, ImageStore, StoreError};

use crate::archives::{docker_save, Layer};
use crate::{quiet, Scratch};

fn layer(text: &str) -> Vec<u8> {
    Layer::new().file("version", text, 0o644).tar()
}

fn import_text(s: &Scratch, name: &str, text: &str) -> runbox_image::ImportReport {
    let input = s.write_input(
        &format!("{name}.tar"),
        &docker_save(&[layer(text)], None).to_tar(),
    );
    import(&s.store(), &input, Some(name), &quiet()).expect("import")
}

#[test]
fn invalid_names_are_refused_before_any_work() {
    let s = Scratch::new();
    let input = s.write_input("x.tar", &docker_save(&[layer("1")], None).to_tar());
    for bad in [
        "",
        "Upper",
        "../escape",
        "a/b",
        ".hidden",
        "x.build.log",
        &"a".repeat(65),
    ] {
        let err = import(&s.store(), &input, Some(bad), &quiet()).expect_err(bad);
        assert_eq!(err.kind(), runbox_image::ErrorKind::InvalidInput, "{bad}");
        assert!(err.to_string().contains("invalid image name"), "{err}");
    }
    assert!(!s.images().exists(), "nothing was created");
    assert!(s.store().get("../outside").is_none());
}

#[test]
fn list_get_and_remove() {
    let s = Scratch::new();
    let store = s.store();
    assert!(store.list().expect("empty list").is_empty());
    import_text(&s, "zeta", "z");
    import_text(&s, "alpha", "a");
    let names: Vec<String> = store
        .list()
        .expect("list")
        .iter()
        .map(|i| i.name().to_owned())
        .collect();
    assert_eq!(names, ["alpha", "zeta"]);
    let alpha = store.get("alpha").expect("alpha");
    assert_eq!(alpha.rootfs(), s.images().join("alpha/rootfs"));
    assert_eq!(
        fs::read_to_string(alpha.rootfs().join("version")).expect("file"),
        "a"
    );

    let removed = store.remove("alpha").expect("remove");
    assert_eq!(removed.name(), "alpha");
    assert!(store.get("alpha").is_none());
    assert!(matches!(
        store.remove("alpha"),
        Err(StoreError::NoSuchImage { .. })
    ));
    s.assert_images_dir_holds(&["zeta"]);
}

#[test]
fn a_second_import_replaces_the_first_atomically() {
    let s = Scratch::new();
    assert!(!import_text(&s, "app", "1").replaced);
    let second = import_text(&s, "app", "2");
    assert!(second.replaced);
    assert_eq!(
        fs::read_to_string(second.image.rootfs().join("version")).expect("file"),
        "2"
    );
    s.assert_images_dir_holds(&["app"]);
}

#[test]
fn a_failed_import_keeps_the_previous_image_and_leaves_nothing() {
    let s = Scratch::new();
    import_text(&s, "app", "1");
    // Layer 1 applies, layer 2 escapes: the failure comes halfway through.
    let evil = Layer::new()
        .raw(
            b"../../../outside/x",
            tar::EntryType::Regular,
            None,
            0o644,
            b"x",
        )
        .tar();
    let input = s.write_input("half.tar", &docker_save(&[layer("2"), evil], None).to_tar());
    import(&s.store(), &input, Some("app"), &quiet()).expect_err("refused");
    let app = s.store().get("app").expect("old image still there");
    assert_eq!(
        fs::read_to_string(app.rootfs().join("version")).expect("file"),
        "1"
    );
    s.assert_images_dir_holds(&["app"]);
    s.assert_outside_untouched();

    import(&s.store(), &input, Some("fresh"), &quiet()).expect_err("refused");
    assert!(s.store().get("fresh").is_none());
    s.assert_images_dir_holds(&["app"]);
}

#[test]
fn leftovers_of_crashed_work_are_swept_but_live_work_is_not() {
    let s = Scratch::new();
    let images = s.images();
    fs::create_dir_all(images.join(".dead.tmp-0123456789ab/rootfs/etc")).expect("dead tmp");
    fs::write(images.join(".dead.tmp-0123456789ab.lock"), "").expect("dead lock");
    fs::create_dir_all(images.join(".nolock.tmp-0123456789ab/rootfs")).expect("lockless tmp");
    fs::create_dir_all(images.join(".old.rm-0123456789ab/rootfs")).expect("removed aside");
    // A live build elsewhere holds its lock.
    fs::create_dir_all(images.join(".live.tmp-0123456789ab/rootfs")).expect("live tmp");
    let live_lock = fs::File::create(images.join(".live.tmp-0123456789ab.lock")).expect("lock");
    live_lock.try_lock().expect("hold the lock");
    // A symlink in a dead tree must be removed, not followed.
    std::os::unix::fs::symlink(
        s.outside(),
        images.join(".dead.tmp-0123456789ab/rootfs/escape"),
    )
    .expect("symlink");

    import_text(&s, "app", "1");
    s.assert_images_dir_holds(&[
        ".live.tmp-0123456789ab",
        ".live.tmp-0123456789ab.lock",
        "app",
    ]);
    s.assert_outside_untouched();
    drop(live_lock);
    let removed = ImageStore::open(&images)
        .expect("store")
        .sweep()
        .expect("sweep");
    assert_eq!(removed.len(), 1);
    s.assert_images_dir_holds(&["app"]);
}

#[test]
fn leftover_mounts_are_detached_not_emptied() {
    if !rustix::process::geteuid().is_root() {
        eprintln!(
            "SKIPPED (needs root): {} mounts inside a leftover",
            module_path!()
        );
        return;
    }
    let s = Scratch::new();
    let rootfs = s.images().join(".crashed.tmp-0123456789ab/rootfs");
    fs::create_dir_all(rootfs.join("dev")).expect("dev");
    fs::create_dir_all(rootfs.join("proc")).expect("proc");
    // What a killed debootstrap can leave in its target: the host's /dev bound in (here the
    // scratch's `outside`, holding the canary) and a pseudo filesystem.
    rustix::mount::mount_bind(s.outside(), rootfs.join("dev")).expect("bind");
    rustix::mount::mount(
        "tmpfs",
        rootfs.join("proc"),
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .expect("tmpfs");
    assert!(rootfs.join("dev/canary").is_file());

    s.store().sweep().expect("sweep");
    s.assert_images_dir_holds(&[]);
    s.assert_outside_untouched();
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(s.images().to_str().expect("utf-8")),
        "mounts left under the images dir"
    );
}

#[test]
fn a_corrupt_image_json_hides_the_image() {
    let s = Scratch::new();
    import_text(&s, "app", "1");
    fs::write(s.images().join("app/image.json"), "{").expect("corrupt");
    assert!(s.store().get("app").is_none());
    assert!(s.store().list().expect("list").is_empty());
}

#[test]
fn the_default_dir_for_root_is_var_lib() {
    if rustix::process::geteuid().is_root() {
        assert_eq!(
            runbox_image::default_images_dir().as_deref(),
            Some(std::path::Path::new("/var/lib/runbox/images"))
        );
    } else {
        let dir = runbox_image::default_images_dir().expect("a home");
        assert!(dir.ends_with("runbox/images"), "{}", dir.display());
    }
}
