//! `cargo xtask images` against real files, a real base made by umoci, and the real
//! consumers of its output: skopeo, umoci, containerd and the Docker engine.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;

fn manifest_digest(report: &serde_json::Value) -> String {
    image(report)["manifest_digest"].as_str().unwrap().to_string()
}

fn manifest_of(repo: &Repo, report: &serde_json::Value) -> serde_json::Value {
    serde_json::from_slice(&repo.blob(&manifest_digest(report))).unwrap()
}

fn layer_entries(
    repo: &Repo,
    report: &serde_json::Value,
    name: &str,
) -> Vec<(String, u64, u64, u32, char, Option<String>)> {
    tar_entries(&repo.blob(layer(report, name)["digest"].as_str().unwrap()))
}

fn set_mtime(path: &std::path::Path, secs: i64) {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs as u64);
    fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
}

#[test]
fn two_clean_builds_at_different_paths_and_mtimes_give_identical_bytes() {
    let a = Repo::new();
    let b = Repo::new();
    // b: the same content written in the other order, with other modification times.
    fs::remove_dir_all(b.path("files")).unwrap();
    b.write("files/dags/second_dag.py", "print('second')\n");
    b.write("files/dags/example_dag.py", "from common import GREETING\nprint(GREETING)\n");
    b.write("files/include/common/__init__.py", "GREETING = 'hello'\n");
    set_mtime(&b.path("files/dags/second_dag.py"), 1_000_000_000);
    set_mtime(&b.path("files/dags/example_dag.py"), 1_700_000_000);
    assert_ne!(a.root(), b.root());

    let ra = a.build_json(&[]);
    let rb = b.build_json(&[]);
    assert_eq!(manifest_digest(&ra), manifest_digest(&rb), "manifests differ between the two builds");
    let ma = manifest_of(&a, &ra);
    assert_eq!(a.blob(&manifest_digest(&ra)), b.blob(&manifest_digest(&rb)));
    let config = ma["config"]["digest"].as_str().unwrap();
    assert_eq!(a.blob(config), b.blob(config));
    for l in ma["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        assert_eq!(a.blob(d), b.blob(d), "layer {d} differs");
    }
    // And the same store rebuilt from scratch gives the same bytes again.
    fs::remove_dir_all(a.path("target")).unwrap();
    assert_eq!(manifest_digest(&a.build_json(&[])), manifest_digest(&ra));
}

#[test]
fn base_layers_are_reused_byte_for_byte() {
    let repo = Repo::new();
    let report = repo.build_json(&[]);
    let base = busybox_base();
    let index: serde_json::Value = serde_json::from_slice(&fs::read(base.join("index.json")).unwrap()).unwrap();
    let base_manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let base_manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(base.join("blobs/sha256").join(&base_manifest_digest[7..])).unwrap()).unwrap();
    let ours = manifest_of(&repo, &report);
    let base_layers = base_manifest["layers"].as_array().unwrap();
    let our_layers = ours["layers"].as_array().unwrap();
    assert_eq!(our_layers.len(), base_layers.len() + 2);
    for (b, o) in base_layers.iter().zip(our_layers) {
        assert_eq!(b["digest"], o["digest"]);
        assert_eq!(b["size"], o["size"]);
        let d = b["digest"].as_str().unwrap();
        assert_eq!(fs::read(base.join("blobs/sha256").join(&d[7..])).unwrap(), repo.blob(d));
    }
    assert_eq!(ours["annotations"]["org.opencontainers.image.base.digest"], base_manifest_digest);
    // New layers follow the base's compression (umoci writes gzip).
    assert_eq!(layer(&report, "dags")["media_type"], "application/vnd.oci.image.layer.v1.tar+gzip");
}

#[test]
fn new_layers_keep_the_base_owner_of_existing_directories() {
    let repo = Repo::new();
    let report = repo.build_json(&[]);
    let entries = layer_entries(&repo, &report, "dags");
    let find = |p: &str| entries.iter().find(|e| e.0 == p).unwrap_or_else(|| panic!("no {p} in {entries:?}")).clone();
    // The base has /opt as root's and /opt/airflow/dags as 50000:0 0775.
    assert_eq!((find("opt/").1, find("opt/").2, find("opt/").3), (0, 0, 0o755));
    assert_eq!((find("opt/airflow/dags/").1, find("opt/airflow/dags/").3), (50000, 0o775));
    let dag = find("opt/airflow/dags/example_dag.py");
    assert_eq!((dag.1, dag.2, dag.3), (50000, 0, 0o644));
    // /opt/airflow/include is not in the base: it gets the image's owner.
    let include = layer_entries(&repo, &report, "include");
    let inc = include.iter().find(|e| e.0 == "opt/airflow/include/").unwrap();
    assert_eq!((inc.1, inc.2, inc.3), (50000, 0, 0o755));
    // Entries are sorted and carry no user names or real times.
    let paths: Vec<&String> = entries.iter().map(|e| &e.0).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
}

#[test]
fn unchanged_layers_are_reused_and_a_dag_edit_rebuilds_only_the_dag_layer() {
    let repo = Repo::new();
    let first = repo.build_json(&[]);
    assert_eq!(layer(&first, "dags")["status"], "rebuilt");
    let second = repo.build_json(&[]);
    assert_eq!(layer(&second, "include")["status"], "reused");
    assert_eq!(layer(&second, "dags")["status"], "reused");
    assert_eq!(manifest_digest(&first), manifest_digest(&second));
    assert_eq!(image(&second)["changed"], false);

    repo.write("files/dags/second_dag.py", "print('second, edited')\n");
    let third = repo.build_json(&[]);
    assert_eq!(layer(&third, "include")["status"], "reused");
    assert_eq!(layer(&third, "include")["digest"], layer(&first, "include")["digest"]);
    assert_eq!(layer(&third, "dags")["status"], "rebuilt");
    assert_ne!(layer(&third, "dags")["digest"], layer(&first, "dags")["digest"]);
    assert_ne!(manifest_digest(&third), manifest_digest(&first));
    assert_eq!(image(&third)["changed"], true);
    assert!(repo.store_index().contains(&manifest_digest(&third)));
}

#[test]
fn a_deleted_dag_is_gone_from_the_next_image() {
    let repo = Repo::new();
    repo.build_json(&[]);
    fs::remove_file(repo.path("files/dags/second_dag.py")).unwrap();
    let report = repo.build_json(&[]);
    assert_eq!(layer(&report, "dags")["status"], "rebuilt");
    let paths: Vec<String> = layer_entries(&repo, &report, "dags").into_iter().map(|e| e.0).collect();
    assert!(paths.contains(&"opt/airflow/dags/example_dag.py".to_string()));
    assert!(!paths.iter().any(|p| p.contains("second_dag")), "{paths:?}");
}

#[test]
fn symlinks_long_unicode_names_and_empty_directories_survive() {
    let repo = Repo::new();
    let long = format!("files/dags/{}/{}.py", "nested_directory_".repeat(4), "a_really_long_dag_file_name_".repeat(3));
    repo.write(&long, "print('long')\n");
    repo.write("files/dags/with space/ünïcødé dag.py", "print('unicode')\n");
    fs::create_dir_all(repo.path("files/dags/empty_dir")).unwrap();
    std::os::unix::fs::symlink("../include/common/__init__.py", repo.path("files/dags/linked.py")).unwrap();
    fs::write(repo.path("files/dags/run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(repo.path("files/dags/run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    let report = repo.build_json(&[]);
    let entries = layer_entries(&repo, &report, "dags");
    let get =
        |p: &str| entries.iter().find(|e| e.0 == p).unwrap_or_else(|| panic!("{p} missing from {entries:#?}")).clone();
    let long_in_image = long.replace("files/dags/", "opt/airflow/dags/");
    assert!(long_in_image.len() > 100);
    assert_eq!(get(&long_in_image).4, 'f');
    assert_eq!(get("opt/airflow/dags/with space/ünïcødé dag.py").4, 'f');
    assert_eq!(get("opt/airflow/dags/empty_dir/").4, 'd');
    let link = get("opt/airflow/dags/linked.py");
    assert_eq!((link.4, link.5.as_deref()), ('l', Some("../include/common/__init__.py")));
    // Executable files stay executable, with the image's mode rather than the host's.
    assert_eq!(get("opt/airflow/dags/run.sh").3, 0o755);
}

#[test]
fn a_symlink_out_of_files_is_refused_and_the_previous_image_stays() {
    let repo = Repo::new();
    let good = repo.build_json(&[]);
    let index_before = repo.store_index();
    std::os::unix::fs::symlink("../../../etc/passwd", repo.path("files/dags/evil.py")).unwrap();
    let err = repo.fails(&["images"]);
    assert!(err.contains("files/dags/evil.py"), "{err}");
    assert!(err.contains("outside files/"), "{err}");
    assert_eq!(repo.store_index(), index_before);
    assert!(repo.store_index().contains(&manifest_digest(&good)));
    fs::remove_file(repo.path("files/dags/evil.py")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", repo.path("files/dags/abs.py")).unwrap();
    let err = repo.fails(&["images"]);
    assert!(err.contains("files/dags/abs.py") && err.contains("relative link"), "{err}");
}

#[test]
fn an_unreadable_file_is_named_with_the_fix() {
    require("setpriv");
    let repo = Repo::new();
    let archive = repo.path("out/images.tar");
    repo.ok(&["images", "--archive", archive.to_str().unwrap()]);
    let archive_before = fs::read(&archive).unwrap();
    repo.write("files/dags/secret.py", "x = 1\n");
    fs::set_permissions(repo.path("files/dags/secret.py"), fs::Permissions::from_mode(0o000)).unwrap();
    // We run as root in CI; drop the capabilities that let root read anything.
    let out = Command::new("setpriv")
        .args(["--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search", "--"])
        .arg(XTASK)
        .arg("--root")
        .arg(repo.root())
        .args(["images", "--archive", archive.to_str().unwrap()])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "build with an unreadable file succeeded");
    assert!(err.contains("files/dags/secret.py"), "{err}");
    assert!(err.contains("chmod a+r"), "{err}");
    assert_eq!(fs::read(&archive).unwrap(), archive_before, "the previous archive was touched");
}

#[test]
fn bad_bases_fail_clearly_and_leave_the_previous_image_and_archive_intact() {
    let repo = Repo::new();
    let archive = repo.path("target/xtask/images.tar");
    repo.ok(&["images", "--archive"]);
    let archive_before = fs::read(&archive).unwrap();
    let index_before = repo.store_index();
    let check = |base: &str, expect: &[&str]| {
        repo.set_base(base);
        let err = repo.fails(&["images", "--archive"]);
        for e in expect {
            assert!(err.contains(e), "for base {base}: expected `{e}` in:\n{err}");
        }
        assert_eq!(repo.store_index(), index_before, "store index changed after failing on {base}");
        assert_eq!(fs::read(&archive).unwrap(), archive_before, "archive changed after failing on {base}");
        let leftovers: Vec<_> = fs::read_dir(archive.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    };

    // Missing.
    check("oci:does/not/exist:1", &["does/not/exist", "not an OCI image layout"]);
    check("oci-archive:missing.tar", &["missing.tar", "does not exist"]);

    // Not an archive at all.
    fs::write(repo.path("garbage.tar"), vec![0x42u8; 5000]).unwrap();
    check("oci-archive:garbage.tar", &["garbage.tar", "corrupt or truncated"]);

    // Truncated: a real archive of the base, cut in the middle of its big layer.
    sh(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:1", busybox_base().display()))
        .arg(format!("oci-archive:{}", repo.path("base.tar").display())));
    let full = fs::read(repo.path("base.tar")).unwrap();
    fs::write(repo.path("cut.tar"), &full[..full.len() / 2]).unwrap();
    check("oci-archive:cut.tar", &["cut.tar", "truncated"]);
}

#[test]
fn a_base_blob_that_does_not_match_its_digest_is_refused_and_never_stored() {
    require("skopeo");
    // The previous image is built on another (uncompressed) copy of the base, so the
    // store does not already hold the blob the tampered base claims to have.
    let repo = Repo::new();
    let classic = repo.path("base-docker.tar");
    sh(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:1", busybox_base().display()))
        .arg(format!("docker-archive:{}:busybox:1", classic.display())));
    repo.set_base(&format!("docker-archive:{}", classic.display()));
    repo.ok(&["images", "--archive"]);
    let index_before = repo.store_index();
    let archive_before = fs::read(repo.path("target/xtask/images.tar")).unwrap();

    let layout = repo.path("tampered");
    copy_base(&layout);
    let blob = base_layer_path(&layout);
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    let digest = format!("sha256:{}", blob.file_name().unwrap().to_string_lossy());
    repo.set_base(&format!("oci:{}:1", layout.display()));
    let err = repo.fails(&["images", "--archive"]);
    assert!(err.contains("digest mismatch") && err.contains(&digest), "{err}");
    assert!(!repo.store().join("blobs/sha256").join(&digest[7..]).exists(), "the bad blob reached the store");
    assert_eq!(fs::read_dir(repo.store().join("tmp")).unwrap().count(), 0);
    assert_eq!(repo.store_index(), index_before);
    assert_eq!(fs::read(repo.path("target/xtask/images.tar")).unwrap(), archive_before);
}

#[test]
fn a_build_killed_at_any_moment_leaves_a_usable_store_and_no_half_archive() {
    let repo = Repo::new();
    // Enough content that a build takes a while: ~60 MB of poorly compressible DAG data.
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for i in 0..60 {
        let mut data = Vec::with_capacity(1 << 20);
        while data.len() < 1 << 20 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            data.extend_from_slice(&seed.to_le_bytes());
        }
        fs::write(repo.path(&format!("files/dags/data_{i:02}.bin")), data).unwrap();
    }
    let archive = repo.path("target/xtask/images.tar");
    for delay_ms in [5u64, 40, 120, 250, 500, 900] {
        let _ = fs::remove_dir_all(repo.path("target/xtask/oci/cache"));
        let mut child = repo
            .xtask()
            .args(["images", "--archive"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();
        if archive.exists() {
            // Whatever is under the final name is a complete archive.
            let entries = tar_entries(&fs::read(&archive).unwrap());
            assert!(entries.iter().any(|e| e.0 == "index.json"), "archive after kill at {delay_ms} ms is incomplete");
        }
    }
    // The next build works on the same store and gives the same image as a clean one.
    let after = repo.build_json(&["--archive"]);
    let clean = Repo::new();
    for i in 0..60 {
        let name = format!("files/dags/data_{i:02}.bin");
        fs::copy(repo.path(&name), clean.path(&name)).unwrap();
    }
    assert_eq!(manifest_digest(&after), manifest_digest(&clean.build_json(&[])));
    let leftovers = fs::read_dir(repo.store().join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "temporary blobs left in the store");
}

#[test]
fn skopeo_and_umoci_read_the_archive_and_the_dags_are_owned_by_airflow() {
    require("skopeo");
    require("umoci");
    let repo = Repo::new();
    repo.ok(&["images", "--archive"]);
    let archive = repo.path("target/xtask/images.tar");
    let out = sh(Command::new("skopeo").arg("inspect").arg(format!("oci-archive:{}", archive.display())));
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 3);
    assert!(inspect["Env"].as_array().unwrap().iter().any(|e| e == "AIRFLOW__CORE__LOAD_EXAMPLES=False"));
    let dir = repo.path("copied");
    sh(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci-archive:{}:test", archive.display()))
        .arg(format!("dir:{}", dir.display())));
    assert!(dir.join("manifest.json").is_file());

    let layout = repo.path("layout");
    fs::create_dir_all(&layout).unwrap();
    sh(Command::new("tar").arg("-C").arg(&layout).arg("-xf").arg(&archive));
    let bundle = repo.path("bundle");
    sh(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:test", layout.display())).arg(&bundle));
    let dag = bundle.join("rootfs/opt/airflow/dags/example_dag.py");
    let md = fs::metadata(&dag).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((md.uid(), md.gid()), (50000, 0));
    assert_eq!(fs::read_to_string(&dag).unwrap(), "from common import GREETING\nprint(GREETING)\n");
    let dags_dir = fs::metadata(bundle.join("rootfs/opt/airflow/dags")).unwrap();
    assert_eq!((dags_dir.uid(), dags_dir.mode() & 0o7777), (50000, 0o775));
}

#[test]
fn containerd_imports_the_archive_under_its_fully_qualified_name() {
    let repo = Repo::new();
    let report = repo.build_json(&["--archive"]);
    let ctrd = Containerd::start();
    let out = ctrd.ctr(&["images", "import", repo.path("target/xtask/images.tar").to_str().unwrap()]);
    assert!(out.status.success(), "ctr import failed: {}", stderr(&out));
    let out = ctrd.ctr(&["images", "ls"]);
    let listing = stdout(&out);
    let line = listing
        .lines()
        .find(|l| l.starts_with("docker.io/library/airflow-worker:test "))
        .unwrap_or_else(|| panic!("image not listed:\n{listing}"));
    assert!(line.contains(&manifest_digest(&report)), "{line}");
}

#[test]
fn docker_loads_the_archive_and_runs_the_dags() {
    require_docker();
    let repo = Repo::new();
    let tag = format!("docker.io/library/airflow-worker:t{}", std::process::id());
    repo.ok(&["images", "--archive", "--tag", &tag[tag.rfind(':').unwrap() + 1..]]);
    let out = sh(Command::new("docker").args(["load", "-i"]).arg(repo.path("target/xtask/images.tar")));
    assert!(stdout(&out).contains("airflow-worker"), "{}", stdout(&out));
    let out = sh(Command::new("docker").args(["run", "--rm", &tag, "cat", "/opt/airflow/dags/example_dag.py"]));
    assert_eq!(stdout(&out), "from common import GREETING\nprint(GREETING)\n");
    let out = sh(Command::new("docker").args([
        "run",
        "--rm",
        &tag,
        "stat",
        "-c",
        "%u:%g",
        "/opt/airflow/dags/second_dag.py",
    ]));
    assert_eq!(stdout(&out).trim(), "50000:0");
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
}

#[test]
fn bases_from_oci_archives_and_both_kinds_of_docker_archive() {
    require("skopeo");
    let repo = Repo::new();
    let reference = repo.build_json(&[]);
    let oci_base = format!("oci:{}:1", busybox_base().display());

    // oci-archive: the same image, so the same result.
    let oci_archive = repo.path("base-oci.tar");
    sh(Command::new("skopeo").arg("copy").arg(&oci_base).arg(format!("oci-archive:{}", oci_archive.display())));
    repo.set_base(&format!("oci-archive:{}", oci_archive.display()));
    assert_eq!(manifest_digest(&repo.build_json(&[])), manifest_digest(&reference));

    // docker-archive, classic (what docker save wrote before Docker 25): uncompressed
    // layers, so new layers are uncompressed too, and base layers stay as they are.
    let classic = repo.path("base-docker.tar");
    sh(Command::new("skopeo")
        .arg("copy")
        .arg(&oci_base)
        .arg(format!("docker-archive:{}:busybox:1", classic.display())));
    repo.set_base(&format!("docker-archive:{}", classic.display()));
    let r = repo.build_json(&[]);
    assert_eq!(layer(&r, "dags")["media_type"], "application/vnd.oci.image.layer.v1.tar");
    let m = manifest_of(&repo, &r);
    assert_eq!(m["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar");
    repo.set_base(&format!("docker-archive:{}:docker.io/library/busybox:1", classic.display()));
    repo.build_json(&[]);
    repo.set_base(&format!("docker-archive:{}:nosuch:1", classic.display()));
    assert!(repo.fails(&["images"]).contains("no image named nosuch:1"));

    // docker-archive, the Docker 25+ kind: an OCI layout with manifest.json beside it.
    let oci_kind = repo.path("base-docker25");
    copy_base(&oci_kind);
    let index: serde_json::Value = serde_json::from_slice(&fs::read(oci_kind.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"].as_str().unwrap().to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(oci_kind.join("blobs/sha256").join(&md[7..])).unwrap()).unwrap();
    let docker_manifest = serde_json::json!([{
        "Config": format!("blobs/sha256/{}", &manifest["config"]["digest"].as_str().unwrap()[7..]),
        "RepoTags": ["busybox:1"],
        "Layers": manifest["layers"].as_array().unwrap().iter().map(|l| format!("blobs/sha256/{}", &l["digest"].as_str().unwrap()[7..])).collect::<Vec<_>>(),
    }]);
    fs::write(oci_kind.join("manifest.json"), serde_json::to_vec(&docker_manifest).unwrap()).unwrap();
    let mut idx = index.clone();
    idx["manifests"][0]["annotations"] = serde_json::json!({
        "io.containerd.image.name": "docker.io/library/busybox:1",
        "org.opencontainers.image.ref.name": "1"
    });
    fs::write(oci_kind.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    let tarball = repo.path("base-docker25.tar");
    sh(Command::new("tar").arg("-C").arg(&oci_kind).arg("-cf").arg(&tarball).arg("."));
    repo.set_base(&format!("docker-archive:{}:busybox:1", tarball.display()));
    assert_eq!(manifest_digest(&repo.build_json(&[])), manifest_digest(&reference));
}

#[test]
fn docker_save_output_is_a_usable_base() {
    require_docker();
    let repo = Repo::new();
    let tag = format!("xtask-test-base:{}", std::process::id());
    sh(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:1", busybox_base().display()))
        .arg(format!("docker-daemon:{tag}")));
    let saved = repo.path("saved.tar");
    sh(Command::new("docker").args(["save", "-o"]).arg(&saved).arg(&tag));
    repo.set_base(&format!("docker-archive:{}", saved.display()));
    let r = repo.build_json(&["--archive"]);
    assert_eq!(image(&r)["base"]["layers"], 1);
    sh(Command::new("docker").args(["load", "-i"]).arg(repo.path("target/xtask/images.tar")));
    let out = sh(Command::new("docker").args([
        "run",
        "--rm",
        "docker.io/library/airflow-worker:test",
        "ls",
        "/opt/airflow/dags",
    ]));
    assert!(stdout(&out).contains("example_dag.py"));
    let _ = Command::new("docker").args(["rmi", "-f", &tag, "docker.io/library/airflow-worker:test"]).output();
}

#[test]
fn misconfiguration_names_the_file_and_the_fix() {
    let repo = Repo::new();
    repo.write("docker/images.toml", &IMAGES_TOML.replace("BASE", "oci:x:1").replace("target =", "targt ="));
    let err = repo.fails(&["images"]);
    assert!(err.contains("docker/images.toml") && err.contains("targt"), "{err}");
    repo.set_base("ftp://nowhere/x");
    let err = repo.fails(&["images"]);
    assert!(err.contains("oci:DIR[:TAG]"), "{err}");
    let err = repo.fails(&["images", "--image", "nosuch"]);
    assert!(err.contains("no image named `nosuch`") && err.contains("airflow-worker"), "{err}");
}
