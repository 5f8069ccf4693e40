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
