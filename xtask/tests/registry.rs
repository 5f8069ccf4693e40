//! Images in and out through a real registry (Debian's docker-registry, with and without
//! htpasswd auth) and the real Docker engine, checked with skopeo and docker.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A repository whose DAG layer is big enough (~300 kB, incompressible) that config and
/// manifest are small beside it.
fn repo_with_big_dags() -> Repo {
    let repo = Repo::new();
    std::fs::write(repo.path("files/dags/model.bin"), random_bytes(300_000, 7)).unwrap();
    repo
}

#[test]
fn push_is_read_by_skopeo_and_a_second_push_after_one_dag_change_uploads_only_that_layer() {
    require("skopeo");
    let registry = Registry::start(None);
    let repo = repo_with_big_dags();
    // Chunks of 100 kB: the 300 kB DAG layer goes up in PATCHes, the small ones in one PUT.
    let out =
        sh(repo.xtask().env("XTASK_PUSH_CHUNK_SIZE", "100000").args(["images", "--json", "--push", &registry.host]));
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let push = &first["pushes"][0];
    assert_eq!(push["uploaded_blobs"], 4, "{push}"); // base layer, include, dags, config
    assert_eq!(push["skipped_blobs"], 0);
    let manifest_digest = image(&first)["manifest_digest"].as_str().unwrap();

    let target = format!("docker://{}/airflow-worker:test", registry.host);
    let out = sh(Command::new("skopeo").args(["inspect", "--tls-verify=false", &target]));
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspect["Digest"], manifest_digest);
    let copy = repo.path("copied");
    sh(Command::new("skopeo").args(["copy", "--src-tls-verify=false", &target]).arg(format!("dir:{}", copy.display())));
    assert!(copy.join("manifest.json").is_file());

    // One DAG changes: only that layer (and the config and manifest naming it) goes up.
    let before = registry.stored_blobs();
    repo.write("files/dags/second_dag.py", "print('second, changed')\n");
    let second = repo.build_json(&["--push", &registry.host]);
    let push = &second["pushes"][0];
    let dags = layer(&second, "dags");
    assert_eq!(push["uploaded_blobs"], 2, "{push}"); // the DAG layer and the config
    assert_eq!(push["skipped_blobs"], 2, "{push}"); // the base layer and the include layer
    let after = registry.stored_blobs();
    let new: Vec<(&String, &u64)> = after.iter().filter(|(d, _)| !before.contains_key(*d)).collect();
    let new_bytes: u64 = new.iter().map(|(_, s)| **s).sum();
    assert!(new.iter().any(|(d, _)| d.as_str() == dags["digest"].as_str().unwrap()), "{new:?}");
    assert_eq!(new.len(), 3, "dags layer, config, manifest: {new:?}");
    assert_eq!(
        push["uploaded_bytes"].as_u64().unwrap(),
        new_bytes,
        "our counter disagrees with the registry's storage"
    );
    let dag_layer = dags["size"].as_u64().unwrap() as f64;
    assert!(new_bytes as f64 <= 1.1 * dag_layer, "moved {new_bytes} bytes for a {dag_layer}-byte DAG layer");
}

#[test]
fn a_base_that_skopeo_pushed_is_pulled_by_tag_and_by_digest() {
    require("skopeo");
    let registry = Registry::start(None);
    let target = format!("docker://{}/bases/busybox:1", registry.host);
    sh(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", busybox_base().display()))
        .arg(&target));
    let out = sh(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &target]));
    let pushed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let repo = Repo::with_base(&target);
    let report = repo.build_json(&[]);
    let base = &image(&report)["base"];
    assert_eq!(base["layers"], pushed["layers"].as_array().unwrap().len());
    let ours: serde_json::Value =
        serde_json::from_slice(&repo.blob(image(&report)["manifest_digest"].as_str().unwrap())).unwrap();
    for (p, o) in pushed["layers"].as_array().unwrap().iter().zip(ours["layers"].as_array().unwrap()) {
        assert_eq!(p["digest"], o["digest"], "base layers must be reused byte for byte");
    }
    // The base name is recorded, pinned by digest.
    let base_name = ours["annotations"]["org.opencontainers.image.base.name"].as_str().unwrap();
    assert!(base_name.starts_with(&format!("{}/bases/busybox:1@sha256:", registry.host)), "{base_name}");

    let digest = base["manifest_digest"].as_str().unwrap();
    repo.set_base(&format!("docker://{}/bases/busybox@{digest}", registry.host));
    repo.build_json(&[]);

    repo.set_base(&format!("docker://{}/bases/nosuch:1", registry.host));
    let err = repo.fails(&["images"]);
    assert!(err.contains("manifest unknown") && err.contains("bases/nosuch:1"), "{err}");
    repo.set_base(&format!("docker://127.0.0.1:{}/bases/busybox:1", free_port()));
    let err = repo.fails(&["images"]);
    assert!(err.contains("unreachable") && err.contains("http://127.0.0.1:"), "{err}");
}

#[test]
fn a_registry_with_htpasswd_needs_credentials_from_env_or_docker_config_and_never_shows_them() {
    require("skopeo");
    let registry = Registry::start(Some(("ci", "s3cret-pw")));
    let repo = Repo::new();
    let empty_config = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)], docker_config: &std::path::Path| {
        let mut c = repo.xtask();
        c.args(["images", "--push", &registry.host])
            .env_remove("XTASK_REGISTRY_USER")
            .env_remove("XTASK_REGISTRY_PASSWORD")
            .env("XTASK_REGISTRY_HOST", &registry.host)
            .env("DOCKER_CONFIG", docker_config);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = run(&[], empty_config.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("wants credentials") && err.contains("docker login"), "{err}");

    let out = run(&[("XTASK_REGISTRY_USER", "ci"), ("XTASK_REGISTRY_PASSWORD", "wrong-pw")], empty_config.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("refused the credentials for user `ci`") && err.contains("XTASK_REGISTRY_USER"), "{err}");
    assert!(!err.contains("wrong-pw") && !stdout(&out).contains("wrong-pw"), "a password was printed");

    let out = run(&[("XTASK_REGISTRY_USER", "ci"), ("XTASK_REGISTRY_PASSWORD", "s3cret-pw")], empty_config.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("s3cret-pw") && !stdout(&out).contains("s3cret-pw"));
    let target = format!("docker://{}/airflow-worker:test", registry.host);
    sh(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--creds", "ci:s3cret-pw", &target]));

    // `docker login` leaves base64(user:password) in config.json's auths.
    let config = tempfile::tempdir().unwrap();
    let auth = "Y2k6czNjcmV0LXB3"; // base64("ci:s3cret-pw")
    std::fs::write(
        config.path().join("config.json"),
        format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, registry.host),
    )
    .unwrap();
    repo.write("files/dags/third.py", "print(3)\n");
    let out = run(&[], config.path());
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A proxy in front of the registry that flips one byte in the body of every large
/// response (so a blob arrives with the wrong content) or cuts it short.
fn faulty_proxy(upstream: String, mode: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let damaged = Arc::new(AtomicUsize::new(0));
    let count = damaged.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let upstream = upstream.clone();
            let count = count.clone();
            std::thread::spawn(move || {
                let _ = proxy_connection(client, &upstream, mode, &count);
            });
        }
    });
    (addr, damaged)
}

fn proxy_connection(client: TcpStream, upstream: &str, mode: &str, damaged: &AtomicUsize) -> std::io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    while let Some(req) = read_head(&mut from_client)? {
        let mut body = vec![0; content_length(&req)];
        from_client.read_exact(&mut body)?;
        let (head, mut resp) = forward(upstream, &req, &body)?;
        if resp.len() > 10_000 {
            damaged.fetch_add(1, Ordering::SeqCst);
            if mode == "corrupt" {
                resp[5_000] ^= 0xff;
            } else {
                to_client.write_all(head.as_bytes())?;
                to_client.write_all(&resp[..resp.len() / 2])?;
                return Ok(()); // cut off mid-body
            }
        }
        to_client.write_all(head.as_bytes())?;
        to_client.write_all(&resp)?;
    }
    Ok(())
}

#[test]
fn a_registry_that_sends_wrong_bytes_fails_the_pull_and_the_store_keeps_nothing_bad() {
    require("skopeo");
    let registry = Registry::start(None);
    let target = format!("{}/bases/busybox:1", registry.host);
    sh(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", busybox_base().display()))
        .arg(format!("docker://{target}")));
    let (proxy, damaged) = faulty_proxy(registry.host.clone(), "corrupt");
    let repo = Repo::with_base(&format!("docker://{proxy}/bases/busybox:1"));
    let err = repo.fails(&["images"]);
    assert!(damaged.load(Ordering::SeqCst) > 0, "the proxy never saw a blob");
    assert!(
        err.contains("digest mismatch") && err.contains("expected sha256:") && err.contains("got sha256:"),
        "{err}"
    );
    let expected = err.split("expected ").nth(1).unwrap().split(',').next().unwrap().trim().to_string();
    assert!(!repo.store().join("blobs/sha256").join(&expected[7..]).exists(), "the bad blob reached the store");
    assert_eq!(std::fs::read_dir(repo.store().join("tmp")).unwrap().count(), 0);

    // A pull cut off mid-blob leaves the store consistent, and the next pull completes it.
    let (proxy, _) = faulty_proxy(registry.host.clone(), "cut");
    repo.set_base(&format!("docker://{proxy}/bases/busybox:1"));
    repo.fails(&["images"]);
    repo.set_base(&format!("docker://{target}"));
    repo.build_json(&[]);
}

#[test]
fn a_docker_engine_image_is_a_base_and_load_docker_runs_the_dags() {
    require_docker();
    require("skopeo");
    let pid = std::process::id();
    let base_tag = format!("xtask-test-daemon-base:{pid}");
    sh(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:1", busybox_base().display()))
        .arg(format!("docker-daemon:{base_tag}")));
    let repo = Repo::with_base(&format!("docker-daemon:{base_tag}"));
    let tag = format!("d{pid}");
    let report = repo.build_json(&["--tag", &tag, "--load", "docker"]);
    assert_eq!(report["loads"][0]["status"], "loaded", "{report}");
    let name = format!("docker.io/library/airflow-worker:{tag}");
    let out = sh(Command::new("docker").args(["run", "--rm", &name, "cat", "/opt/airflow/dags/example_dag.py"]));
    assert_eq!(stdout(&out), "from common import GREETING\nprint(GREETING)\n");
    let again = repo.build_json(&["--tag", &tag, "--load", "docker"]);
    assert_eq!(again["loads"][0]["status"], "skipped", "{again}");
    let _ = Command::new("docker").args(["rmi", "-f", &name, &base_tag]).output();

    let repo = Repo::with_base("docker-daemon:xtask-no-such-image:1");
    let err = repo.fails(&["images"]);
    assert!(err.contains("has no image `xtask-no-such-image:1`"), "{err}");
}
