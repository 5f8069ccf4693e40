//! `cargo xtask dags push --endpoint` against a real S3 server (versitygw on this machine):
//! the bucket ends up holding exactly files/dags, a push sends only what changed, and bad
//! keys or a missing bucket are named with their fix.

mod common;

use std::process::Command;

use common::*;

fn push(repo: &Repo, s3: &S3Server, extra: &[&str]) -> std::process::Output {
    let mut c: Command = repo.xtask();
    c.args(["dags", "push", "--endpoint", &s3.endpoint, "--json"])
        .args(extra)
        .env("AWS_ACCESS_KEY_ID", &s3.key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret);
    c.output().unwrap()
}

fn report(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "dags push failed:\n{}\n{}", stdout(out), stderr(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The bucket's DAG objects, keyed by their path under the prefix.
fn bundle(s3: &S3Server) -> std::collections::BTreeMap<String, Vec<u8>> {
    s3.objects("airflow-dags")
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("dags/").map(|k| (k.to_string(), v)))
        .collect()
}

#[test]
fn dags_push_mirrors_files_dags_and_sends_only_what_changed() {
    let s3 = S3Server::start(&["airflow-dags"]);
    let repo = Repo::new();
    std::fs::remove_dir_all(repo.path("files/dags")).unwrap();
    repo.write("files/dags/a.py", "a = 1\n");
    repo.write("files/dags/team/b.py", "b = 2\n");
    repo.write("files/dags/team/__pycache__/b.cpython-311.pyc", "compiled");

    let first = report(&push(&repo, &s3, &[]));
    assert_eq!(first["uploaded"], serde_json::json!(["a.py", "team/b.py"]), "{first:#}");
    let held = bundle(&s3);
    assert_eq!(held.keys().collect::<Vec<_>>(), ["a.py", "team/b.py"]);
    assert_eq!(held["team/b.py"], b"b = 2\n");

    let again = report(&push(&repo, &s3, &[]));
    assert_eq!(again["uploaded"], serde_json::json!([]), "{again:#}");
    assert_eq!(again["unchanged"], 2);

    // One edit, one deletion: one upload, one delete, and the bucket is the tree again.
    repo.write("files/dags/a.py", "a = 3\n");
    std::fs::remove_file(repo.path("files/dags/team/b.py")).unwrap();
    let third = report(&push(&repo, &s3, &[]));
    assert_eq!(third["uploaded"], serde_json::json!(["a.py"]), "{third:#}");
    assert_eq!(third["deleted"], serde_json::json!(["team/b.py"]), "{third:#}");
    let held = bundle(&s3);
    assert_eq!(held.keys().collect::<Vec<_>>(), ["a.py"]);
    assert_eq!(held["a.py"], b"a = 3\n");
}

#[test]
fn dags_push_names_refused_keys_and_a_missing_bucket() {
    let s3 = S3Server::start(&["airflow-dags"]);
    let repo = Repo::new();
    repo.write("files/dags/a.py", "a = 1\n");
    let mut c = repo.xtask();
    c.args(["dags", "push", "--endpoint", &s3.endpoint])
        .env("AWS_ACCESS_KEY_ID", &s3.key)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("HTTP 403 SignatureDoesNotMatch") && err.contains("check the keys"), "{err}");

    let out = push(&repo, &s3, &["--bucket", "no-such-bucket"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("NoSuchBucket") && err.contains("create bucket no-such-bucket"), "{err}");
    assert!(s3.objects("airflow-dags").is_empty(), "a failed push wrote to another bucket");
}

/// Airflow's S3 bundle downloads an object again only when its size differs from the local
/// copy's or its LastModified (whole seconds, as S3 lists it) is later than the copy's
/// mtime, the time it was downloaded. An edit that keeps the size, pushed in the same second
/// as that download, would never reach the DAG processor; push writes such files again
/// once the second has turned.
#[test]
fn a_same_size_edit_is_listed_as_modified_after_the_bundle_downloaded_the_old_version() {
    let s3 = S3Server::start(&["airflow-dags"]);
    let repo = Repo::new();
    std::fs::remove_dir_all(repo.path("files/dags")).unwrap();
    repo.write("files/dags/a.py", "a = 1\n");
    report(&push(&repo, &s3, &[]));

    // The DAG processor downloads a.py early in a second; the edit is pushed in that second.
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    while now().subsec_millis() > 50 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let downloaded = now().as_secs_f64();
    repo.write("files/dags/a.py", "a = 2\n");
    let pushed = report(&push(&repo, &s3, &[]));
    assert_eq!(pushed["uploaded"], serde_json::json!(["a.py"]), "{pushed:#}");

    // versitygw lists an object's LastModified as its file's mtime, to the second.
    let object = s3.dir.path().join("data/airflow-dags/dags/a.py");
    let listed = std::fs::metadata(&object).unwrap().modified().unwrap();
    let listed = listed.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64;
    assert!(
        listed > downloaded,
        "LastModified {listed} is not after the download at {downloaded}: the bundle would keep the old a.py ({pushed:#})"
    );
    assert_eq!(bundle(&s3)["a.py"], b"a = 2\n");
    assert_eq!(pushed["rewritten"], serde_json::json!(["a.py"]), "{pushed:#}");
}
