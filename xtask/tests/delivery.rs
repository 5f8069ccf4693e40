//! Delivery into Debian's containerd the way kind does it (`ctr images import`), shipping
//! only what it lacks: the full archive first, nothing when it has the image, then a thin
//! archive with only the changed layer.

mod common;

use common::*;

fn delivery(report: &serde_json::Value) -> &serde_json::Value {
    &report["deliveries"][0]
}

#[test]
fn containerd_gets_the_full_image_then_nothing_then_only_the_changed_layer() {
    let ctrd = Containerd::start();
    let repo = Repo::new();
    std::fs::write(repo.path("files/dags/data.bin"), vec![7u8; 200_000]).unwrap();
    let socket = ctrd.socket();
    let load =
        |repo: &Repo| repo.build_json(&["--load", "containerd", "--containerd-socket", socket.to_str().unwrap()]);

    let first = load(&repo);
    let d = delivery(&first);
    assert_eq!(d["status"], "full", "{first}");
    let manifest = image(&first)["manifest_digest"].as_str().unwrap().to_string();
    let listing = stdout(&ctrd.ctr(&["images", "ls"]));
    assert!(listing.contains("docker.io/library/airflow-worker:test "), "{listing}");
    // The digest name too: containerd's CRI finds an image a pod names by digest only so.
    assert!(listing.contains(&format!("docker.io/library/airflow-worker@{manifest}")), "{listing}");

    let second = load(&repo);
    assert_eq!(delivery(&second)["status"], "present", "{second}");
    assert_eq!(delivery(&second)["bytes"], 0);

    repo.write("files/dags/second_dag.py", "print('changed')\n");
    let third = load(&repo);
    let d = delivery(&third);
    assert_eq!(d["status"], "thin", "{third}");
    let dags = layer(&third, "dags")["size"].as_u64().unwrap();
    let sent = d["bytes"].as_u64().unwrap();
    // The new DAG layer plus config, manifests and tar headers; never the base again.
    assert!(sent < dags + 20_000, "sent {sent} bytes for a {dags}-byte layer");
    assert!(d["omitted_bytes"].as_u64().unwrap() > 1_000_000, "{d}");
    let listing = stdout(&ctrd.ctr(&["images", "ls"]));
    let new_manifest = image(&third)["manifest_digest"].as_str().unwrap();
    assert!(
        listing.lines().any(|l| l.starts_with("docker.io/library/airflow-worker:test ") && l.contains(new_manifest)),
        "{listing}"
    );
}

#[test]
fn a_ctr_stand_in_that_hangs_is_stopped_with_the_time_it_had() {
    // A stand-in for a containerd that stopped answering: a `ctr` first on PATH that never
    // returns. The real one cannot be made to hang on cue.
    let repo = Repo::new();
    let bin = repo.path("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let ctr = bin.join("ctr");
    std::fs::write(&ctr, "#!/bin/sh\nexec sleep 600\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ctr, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let started = std::time::Instant::now();
    let out = output_within(
        repo.xtask()
            .args(["images", "--load", "containerd", "--containerd-socket", "/nonexistent/containerd.sock"])
            .env("PATH", path)
            .env("XTASK_CTR_TIMEOUT", "2"),
        std::time::Duration::from_secs(60),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("did not finish within 2s") && err.contains("XTASK_CTR_TIMEOUT"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "took {:?}", started.elapsed());
}

/// Every path under `dir`, relative, with `/` after directories; sorted.
fn tree(dir: &std::path::Path) -> Vec<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if p.is_dir() && !p.is_symlink() {
                out.push(format!("{rel}/"));
                walk(root, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn in_a_git_work_tree_a_dag_edit_ships_a_layer_of_the_change_and_containerd_sees_the_working_tree() {
    let ctrd = Containerd::start();
    let repo = Repo::new();
    for i in 0..300 {
        let body: String = (0..200).map(|n| format!("task_{i}_{n} = {}\n", i * n)).collect();
        repo.write(&format!("files/dags/team_{}/dag_{i}.py", i % 3), &body);
    }
    repo.write("files/dags/old/legacy.py", "print('legacy')\n");
    repo.commit_all();
    let socket = ctrd.socket();
    let load =
        |repo: &Repo| repo.build_json(&["--load", "containerd", "--containerd-socket", socket.to_str().unwrap()]);

    // Clean: one DAG layer, byte for byte the one a copy without git gets.
    let first = load(&repo);
    let committed = layer(&first, "dags").clone();
    assert_eq!(committed["part"], "committed", "{first}");
    assert!(image(&first)["layers"].as_array().unwrap().iter().all(|l| l["name"] != "dags+changes"), "{first}");
    let plain = Repo::new();
    sh(std::process::Command::new("cp").arg("-a").arg(repo.path("files/dags")).arg(plain.path("files")));
    let plain_report = plain.build_json(&[]);
    assert_eq!(layer(&plain_report, "dags")["part"], "all");
    assert_eq!(layer(&plain_report, "dags")["digest"], committed["digest"], "git changed the bytes of the layer");

    // One DAG edited, one deleted, a directory deleted, one added: a small second layer.
    repo.write("files/dags/team_1/dag_1.py", "print('edited')\n");
    std::fs::remove_file(repo.path("files/dags/team_2/dag_2.py")).unwrap();
    std::fs::remove_dir_all(repo.path("files/dags/old")).unwrap();
    repo.write("files/dags/new_dag.py", "print('new')\n");
    let second = load(&repo);
    assert_eq!(layer(&second, "dags")["digest"], committed["digest"], "{second}");
    assert_eq!(layer(&second, "dags")["status"], "reused", "{second}");
    let changes = layer(&second, "dags+changes");
    assert_eq!(changes["part"], "changes");
    let entries: Vec<String> =
        tar_entries(&repo.blob(changes["digest"].as_str().unwrap())).into_iter().map(|e| e.0).collect();
    let dags = "opt/airflow/dags";
    for want in [
        format!("{dags}/.wh.old"),
        format!("{dags}/new_dag.py"),
        format!("{dags}/team_1/dag_1.py"),
        format!("{dags}/team_2/.wh.dag_2.py"),
    ] {
        assert!(entries.contains(&want), "{want} not in the changes layer: {entries:?}");
    }
    assert!(entries.iter().all(|e| !e.contains("dag_3.py")), "unchanged files in the changes layer: {entries:?}");
    let d = delivery(&second);
    assert_eq!(d["status"], "thin", "{second}");
    let sent = d["bytes"].as_u64().unwrap();
    let committed_size = committed["size"].as_u64().unwrap();
    assert!(sent < changes["size"].as_u64().unwrap() + 20_000, "sent {sent} bytes: {second}");
    assert!(sent * 5 < committed_size, "sent {sent} bytes, the committed layer is {committed_size}");

    // What a container of the new image sees is exactly the working tree.
    let reference = image(&second)["reference"].as_str().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let out = ctrd.ctr(&["images", "mount", reference, mnt.path().to_str().unwrap()]);
    assert!(out.status.success(), "ctr images mount: {}", stderr(&out));
    let seen = tree(&mnt.path().join(dags));
    let _ = ctrd.ctr(&["images", "unmount", "--rm", mnt.path().to_str().unwrap()]);
    assert_eq!(seen, tree(&repo.path("files/dags")));
}
