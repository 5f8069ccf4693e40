//! Hostile base images and a damaged store: every way out of the root is refused, reading
//! is bounded in memory and time, and a torn blob is made again instead of trusted.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// An OCI layout at `dir` whose layers are `layers` (tars), gzipped when `gzip`; returns the
/// base reference.
fn base_with_layers(dir: &Path, layers: &[Vec<u8>], gzip: bool) -> String {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        diff_ids.push(sha(tar));
        let blob = if gzip {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        } else {
            tar.clone()
        };
        let media =
            if gzip { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" };
        descs.push(serde_json::json!({"mediaType": media, "digest": sha(&blob), "size": blob.len()}));
        fs::write(dir.join("blobs/sha256").join(&sha(&blob)[7..]), &blob).unwrap();
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": descs
    }))
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&manifest), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "1"}}]});
    for b in [&config, &manifest] {
        fs::write(dir.join("blobs/sha256").join(&sha(b)[7..]), b).unwrap();
    }
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    format!("oci:{}:1", dir.display())
}

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// A tar of `entries`, names written raw (no checks by the tar crate) and long ones as GNU
/// long-name entries.
fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_mtime(0);
        let (name, kind, link, data): (&str, tar::EntryType, Option<&str>, &[u8]) = match e {
            E::Dir(n) => (n, tar::EntryType::Directory, None, b""),
            E::File(n, d) => (n, tar::EntryType::Regular, None, d),
            E::Symlink(n, t) => (n, tar::EntryType::Symlink, Some(t), b""),
            E::Hardlink(n, t) => (n, tar::EntryType::Link, Some(t), b""),
        };
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        if let Some(t) = link {
            h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
        }
        if name.len() < 100 {
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, data).unwrap();
        } else {
            b.append_data(&mut h, name, data).unwrap(); // GNU long name
        }
    }
    b.into_inner().unwrap()
}

/// A PAX extended header carrying `path` for the entry after it.
fn pax_path_entry(path: &str, data: &[u8]) -> Vec<u8> {
    let record = |k: &str, v: &str| {
        let body = format!(" {k}={v}\n");
        let mut n = body.len() + 1;
        while format!("{n}{body}").len() != n {
            n += 1;
        }
        format!("{n}{body}")
    };
    let records = record("path", path);
    let mut b = tar::Builder::new(Vec::new());
    let mut x = tar::Header::new_ustar();
    x.set_entry_type(tar::EntryType::XHeader);
    x.set_path("PaxHeaders/x").unwrap();
    x.set_size(records.len() as u64);
    x.set_cksum();
    b.append(&x, records.as_bytes()).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("short-name").unwrap();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

fn refuses(repo: &Repo, base: &str, expect: &[&str]) {
    let before = repo.store_index();
    repo.set_base(base);
    let out = output_within(repo.xtask().arg("images"), Duration::from_secs(120));
    assert!(!out.status.success(), "{base} was accepted");
    let err = stderr(&out);
    for e in expect {
        assert!(err.contains(e), "for {base}: expected `{e}` in:\n{err}");
    }
    assert_eq!(repo.store_index(), before, "the store index changed");
}

#[test]
fn every_way_out_of_the_root_is_refused_and_long_names_still_work() {
    let repo = Repo::new();
    repo.build_json(&[]);
    let d = |n: &str| repo.path(n);

    refuses(
        &repo,
        &base_with_layers(&d("dotdot"), &[tar_of(&[E::File("../../etc/evil", b"x")])], false),
        &["escapes the root", "unsafe"],
    );
    refuses(
        &repo,
        &base_with_layers(&d("abs"), &[tar_of(&[E::File("/etc/evil", b"x")])], false),
        &["absolute path", "unsafe"],
    );
    refuses(
        &repo,
        &base_with_layers(&d("hardlink"), &[tar_of(&[E::Hardlink("etc/pw", "../../etc/passwd")])], false),
        &["hardlink etc/pw points outside", "unsafe"],
    );
    refuses(
        &repo,
        &base_with_layers(
            &d("through"),
            &[tar_of(&[E::Dir("opt"), E::Symlink("opt/link", "/etc"), E::File("opt/link/passwd", b"x")])],
            false,
        ),
        &["opt/link/passwd is written through the symlink opt/link", "unsafe"],
    );
    refuses(
        &repo,
        &base_with_layers(
            &d("through-layers"),
            &[tar_of(&[E::Dir("opt"), E::Symlink("opt/link", "/etc")]), tar_of(&[E::File("opt/link/passwd", b"x")])],
            true,
        ),
        &["writes into opt/link", "symlink in a lower layer", "unsafe"],
    );

    // Honest forms pass: absolute symlinks, a link replaced by a directory in a later
    // layer, and names longer than 100 bytes as GNU long names and PAX records.
    let long = format!("opt/{}/{}", "d".repeat(120), "f".repeat(150));
    let base = base_with_layers(
        &d("long"),
        &[
            tar_of(&[E::Dir("opt"), E::Symlink("opt/link", "/etc"), E::File(&long, b"gnu")]),
            tar_of(&[E::Dir("opt/link"), E::File("opt/link/ok", b"x")]),
            pax_path_entry(&format!("opt/{}", "p".repeat(200)), b"pax"),
        ],
        true,
    );
    repo.set_base(&base);
    repo.build_json(&[]);
}

#[test]
fn a_hostile_base_layer_is_stopped_in_bounded_memory_and_time() {
    let repo = Repo::new();
    repo.build_json(&[]);

    // An extension header that claims 64 GiB: refused before anything is read.
    let mut tar = Vec::new();
    let mut x = tar::Header::new_ustar();
    x.set_entry_type(tar::EntryType::XHeader);
    x.set_path("PaxHeaders/x").unwrap();
    x.set_size(64 << 30);
    x.set_cksum();
    tar.extend_from_slice(x.as_bytes());
    tar.extend_from_slice(&[0u8; 4096]);
    refuses(&repo, &base_with_layers(&repo.path("pax"), &[tar], false), &["tar extension header of 68719476736 bytes"]);

    // A gzip bomb: 512 MiB of zeros in well under a megabyte, with the limit set low so
    // the test stays quick. Refused once the limit is crossed.
    let zeros = vec![0u8; 512 << 20];
    let bomb = tar_of(&[E::File("bomb", &zeros)]);
    drop(zeros);
    let base = base_with_layers(&repo.path("bomb"), &[bomb], true);
    repo.set_base(&base);
    let out = output_within(
        repo.xtask().arg("images").env("XTASK_MAX_LAYER_INFLATE", (64u64 << 20).to_string()),
        Duration::from_secs(120),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("inflates to more than 67108864 bytes") && err.contains("XTASK_MAX_LAYER_INFLATE"), "{err}");
}

#[test]
fn an_oci_dir_blob_that_is_a_symlink_fifo_or_device_is_refused_at_once() {
    let repo = Repo::new();
    repo.build_json(&[]);
    let layout = repo.path("base");
    copy_base(&layout);
    let blob = base_layer_path(&layout);
    let hex = blob.file_name().unwrap().to_string_lossy().into_owned();
    let base = format!("oci:{}:1", layout.display());

    fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &blob).unwrap();
    refuses(&repo, &base, &["not a regular file", &hex]);

    fs::remove_file(&blob).unwrap();
    sh(Command::new("mkfifo").arg(&blob));
    refuses(&repo, &base, &["not a regular file", &hex]);
}

#[test]
fn a_torn_blob_in_the_store_is_made_again_and_verify_finds_a_damaged_one() {
    let repo = Repo::new();
    let report = repo.build_json(&[]);
    let dags = layer_of(&report, "dags");
    let blob = repo.store().join("blobs/sha256").join(&dags[7..]);
    let whole = fs::read(&blob).unwrap();

    // Torn: half its bytes, as a power loss between write and rename could leave it.
    fs::write(&blob, &whole[..whole.len() / 2]).unwrap();
    let again = repo.build_json(&[]);
    assert_eq!(layer_of(&again, "dags"), dags);
    assert_eq!(fs::read(&blob).unwrap(), whole, "the torn blob was kept");

    // Damaged at the same size: the cheap check cannot see it, --verify does.
    let mut bad = whole.clone();
    bad[whole.len() / 2] ^= 0xff;
    fs::write(&blob, &bad).unwrap();
    let out = repo.ok(&["images", "--verify"]);
    let text = stdout(&out);
    assert!(text.contains("removed 1 damaged") && text.contains(&dags[7..]), "{text}");
    assert_eq!(fs::read(&blob).unwrap(), whole, "the damaged blob was not made again");
    let out = repo.ok(&["images", "--verify"]);
    assert!(stdout(&out).contains("all whole"), "{}", stdout(&out));
}

fn layer_of(report: &serde_json::Value, name: &str) -> String {
    layer(report, name)["digest"].as_str().unwrap().to_string()
}
