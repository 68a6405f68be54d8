//! `runbox image list|import|rm` through the binary: output, JSON, exit codes, and the
//! Docker copy when an engine is there. Archives are made with the system's GNU tar and
//! sha256sum (this crate has no tar dependency); `runbox image build` takes minutes and
//! needs the network, so it is exercised by hand, not here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use super::{temp_dir, RUNBOX};

fn image(dir: &Path, args: &[&str]) -> Output {
    Command::new(RUNBOX)
        .arg("image")
        .args(args)
        .arg("--images-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("runbox starts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("tool starts");
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

fn sha256_file(path: &Path) -> String {
    run_ok(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned()
}

/// A docker-save archive of one layer holding `files`, tagged `tag`.
fn docker_save(work: &Path, tag: &str, files: &[(&str, &str)]) -> PathBuf {
    let layer_dir = work.join("layer");
    for (name, content) in files {
        let path = layer_dir.join(name);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, content).expect("file");
    }
    let save = work.join("save");
    fs::create_dir_all(save.join("l1")).expect("save dir");
    let layer = save.join("l1/layer.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&layer)
            .arg("-C")
            .arg(&layer_dir)
            .arg("."),
    );
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_file(&layer))]}
    });
    let config_tmp = save.join("config.tmp");
    fs::write(&config_tmp, serde_json::to_vec(&config).expect("config")).expect("config");
    let config_name = format!("{}.json", sha256_file(&config_tmp));
    fs::rename(&config_tmp, save.join(&config_name)).expect("config name");
    let manifest = serde_json::json!([{
        "Config": config_name, "RepoTags": [tag], "Layers": ["l1/layer.tar"]
    }]);
    fs::write(save.join("manifest.json"), manifest.to_string()).expect("manifest");
    let archive = work.join("image.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(&save)
            .arg("."),
    );
    archive
}

fn list_json(dir: &Path) -> Vec<Value> {
    let out = image(dir, &["list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    match serde_json::from_slice(&out.stdout).expect("JSON") {
        Value::Array(items) => items,
        other => panic!("not an array: {other}"),
    }
}

#[test]
fn image_list_of_an_empty_dir() {
    let dir = temp_dir("image-empty");
    let out = image(&dir.join("images"), &["list"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).contains("no images"),
        "{}",
        text(&out.stderr)
    );
    assert!(list_json(&dir.join("images")).is_empty());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn image_import_list_rm_round_trip() {
    let dir = temp_dir("image-roundtrip");
    let images = dir.join("images");
    let archive = docker_save(
        &dir,
        "example.com/tools/sample:1.2",
        &[("etc/motd", "hi\n")],
    );

    let out = image(
        &images,
        &["import", archive.to_str().expect("utf-8"), "--no-docker"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "sample-1.2\n");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("imported image sample-1.2"), "{stderr}");
    assert!(stderr.contains("docker backend will not have"), "{stderr}");
    assert_eq!(
        fs::read_to_string(images.join("sample-1.2/rootfs/etc/motd")).expect("motd"),
        "hi\n"
    );

    let listed = list_json(&images);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "sample-1.2");
    assert_eq!(
        listed[0]["rootfs"],
        images.join("sample-1.2/rootfs").display().to_string()
    );
    assert_eq!(listed[0]["docker_ref"], Value::Null);
    assert_eq!(listed[0]["layers"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["config"]["cmd"][0], "/bin/sh");

    let table = image(&images, &["list"]);
    let table = text(&table.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("sample-1.2"), "{table}");

    // Same archive, explicit name; then the other way to spell the option.
    let out = image(
        &images,
        &[
            "import",
            archive.to_str().expect("utf-8"),
            "--name",
            "second",
            "--no-docker",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(list_json(&images).len(), 2);

    let out = image(&images, &["rm", "sample-1.2", "--no-docker"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!images.join("sample-1.2").exists());
    let names: Vec<_> = list_json(&images)
        .iter()
        .map(|i| i["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["second"]);

    let out = image(&images, &["rm", "sample-1.2", "--no-docker"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no image named"),
        "{}",
        text(&out.stderr)
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn image_import_refuses_an_escaping_archive() {
    let dir = temp_dir("image-evil");
    let images = dir.join("images");
    let outside = dir.join("outside");
    fs::create_dir_all(&outside).expect("outside");
    let canary = outside.join("canary");
    fs::write(&canary, "original").expect("canary");
    // GNU tar -P keeps the leading `/`: the layer names the canary by its absolute path.
    let save = dir.join("save");
    fs::create_dir_all(save.join("l1")).expect("save");
    let evil_src = dir.join("evil-src");
    fs::create_dir_all(&evil_src).expect("src");
    fs::write(evil_src.join("canary"), "pwned").expect("payload");
    let layer = save.join("l1/layer.tar");
    run_ok(
        Command::new("tar")
            .arg("-cPf")
            .arg(&layer)
            .arg(format!(
                "--transform=s|^{}|{}|",
                evil_src.display(),
                outside.display()
            ))
            .arg(evil_src.join("canary")),
    );
    let listing = run_ok(Command::new("tar").arg("-tPf").arg(&layer));
    assert!(
        listing.starts_with('/'),
        "the layer names an absolute path: {listing}"
    );
    let config = serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_file(&layer))]}
    });
    fs::write(save.join("c.json"), config.to_string()).expect("config");
    fs::write(
        save.join("manifest.json"),
        r#"[{"Config":"c.json","RepoTags":["evil:1"],"Layers":["l1/layer.tar"]}]"#,
    )
    .expect("manifest");
    let archive = dir.join("evil.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(&save)
            .arg("."),
    );

    let out = image(
        &images,
        &["import", archive.to_str().expect("utf-8"), "--no-docker"],
    );
    assert_eq!(out.status.code(), Some(65), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("absolute path"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fs::read_to_string(&canary).expect("canary"), "original");
    let left: Vec<_> = fs::read_dir(&images)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn image_bad_names_and_missing_files_are_data_errors() {
    let dir = temp_dir("image-bad");
    let images = dir.join("images");
    let archive = docker_save(&dir, "x:1", &[("a", "a")]);
    let out = image(
        &images,
        &[
            "import",
            archive.to_str().expect("utf-8"),
            "--name",
            "Bad/Name",
            "--no-docker",
        ],
    );
    assert_eq!(out.status.code(), Some(65));
    assert!(
        text(&out.stderr).contains("invalid image name"),
        "{}",
        text(&out.stderr)
    );
    let out = image(
        &images,
        &["import", "/nonexistent/image.tar", "--no-docker"],
    );
    assert_eq!(out.status.code(), Some(65), "{}", text(&out.stderr));
    let out = image(&images, &["rm", "../x", "--no-docker"]);
    assert_eq!(out.status.code(), Some(65));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn image_dir_comes_from_the_environment() {
    let dir = temp_dir("image-env");
    let images = dir.join("from-env");
    let archive = docker_save(&dir, "envtest:latest", &[("a", "a")]);
    let out = Command::new(RUNBOX)
        .args([
            "image",
            "import",
            archive.to_str().expect("utf-8"),
            "--no-docker",
        ])
        .env("RUNBOX_IMAGES_DIR", &images)
        .stdin(Stdio::null())
        .output()
        .expect("runbox");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(images.join("envtest/image.json").is_file());
    let _ = fs::remove_dir_all(&dir);
}

fn docker_reachable() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn image_import_loads_into_docker_and_rm_removes_it() {
    if !docker_reachable() {
        eprintln!("SKIPPED (needs a Docker engine): {}", module_path!());
        return;
    }
    let dir = temp_dir("image-docker");
    let images = dir.join("images");
    let name = format!("clitest-{}", std::process::id());
    let reference = format!("runbox/{name}:latest");
    let archive = docker_save(&dir, "whatever:1", &[("hello.txt", "from runbox\n")]);
    let out = image(
        &images,
        &["import", archive.to_str().expect("utf-8"), "--name", &name],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed = list_json(&images);
    assert_eq!(listed[0]["docker_ref"], reference.as_str());
    assert!(listed[0]["docker_image_id"]
        .as_str()
        .is_some_and(|id| id.starts_with("sha256:")));
    let inspect = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{json .Config.Cmd}}",
            &reference,
        ])
        .output()
        .expect("docker");
    assert!(inspect.status.success(), "{}", text(&inspect.stderr));
    assert_eq!(text(&inspect.stdout).trim(), r#"["/bin/sh"]"#);

    let out = image(&images, &["rm", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("from Docker"),
        "{}",
        text(&out.stderr)
    );
    let gone = Command::new("docker")
        .args(["image", "inspect", &reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("docker");
    assert!(!gone.success(), "{reference} is still in the engine");
    let _ = fs::remove_dir_all(&dir);
}
