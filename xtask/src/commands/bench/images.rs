//! `cargo xtask bench images`: building the worker image cold, after one DAG edit and with
//! nothing changed, next to `docker build` of the same content.

use camino::Utf8Path;
use std::fs;
use std::io::Write;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use super::scenario::{BASE_TAG, Rng, Scenario, dir_size, edit_one_dag, scenario};
use super::tools::{Run, builder_name, buildkit_installed, docker_build, docker_has_base, docker_ok, timed};
use crate::cli::BenchImagesArgs;
use crate::config::Project;
use crate::fsutil::human_bytes;
use crate::oci::archive::{self, ArchiveImage};
use crate::oci::layer::{self, Compression, LayerPlan};
use crate::oci::store::Store;
use crate::ui::secs;

#[derive(Serialize)]
pub(super) struct Row {
    pub(super) what: String,
    pub(super) ours_seconds: Option<f64>,
    pub(super) peer: String,
    pub(super) peer_seconds: Option<f64>,
    pub(super) note: String,
}

#[derive(Serialize)]
pub(super) struct ImagesResult {
    pub(super) scenario: String,
    pub(super) base_bytes: u64,
    pub(super) dags_files: usize,
    pub(super) dags_bytes: u64,
    pub(super) include_bytes: u64,
    pub(super) rows: Vec<Row>,
    pub(super) throughput_mb_s: Vec<(String, f64)>,
    pub(super) import_peak_rss_mb: f64,
    pub(super) import_seconds: f64,
    pub(super) compression: Vec<(String, f64, u64)>,
}

pub(super) fn images(project: &Project, args: &BenchImagesArgs) -> Result<()> {
    let Scenario { dir, repo, base_store, description: scenario, base_bytes } = self::scenario(project, args)?;
    let (dags_files, dags_bytes) = dir_size(&repo.join("files/dags"))?;
    let (_, include_bytes) = dir_size(&repo.join("files/include"))?;
    let exe = std::env::current_exe()?;
    let xtask_env = |extra: &[&str], env: &[(&str, &str)]| -> Result<Run> {
        let mut c = Command::new(&exe);
        c.arg("--root").arg(&repo).arg("images").arg("--json").args(extra).env_remove("SOURCE_DATE_EPOCH");
        c.envs(env.iter().copied());
        timed(c)
    };
    let xtask = |extra: &[&str]| xtask_env(extra, &[]);

    // Peak memory and time of importing the base into a clean store (and building on it).
    let _ = fs::remove_dir_all(repo.join("target"));
    eprintln!("measuring: base import into a clean store");
    let import = xtask(&[])?;
    // Our cold build: base already in the store, every new layer written.
    eprintln!("measuring: xtask cold build");
    let cold = xtask(&["--no-cache"])?;
    let report: serde_json::Value = serde_json::from_slice(&cold.stdout)?;
    let mut throughput = Vec::new();
    for l in report["images"][0]["layers"].as_array().into_iter().flatten() {
        let mb = l["input_bytes"].as_f64().unwrap_or(0.0) / 1e6;
        let s = l["seconds"].as_f64().unwrap_or(f64::NAN);
        throughput.push((l["name"].as_str().unwrap_or("?").to_string(), mb / s));
    }
    edit_one_dag(&repo, 1)?;
    eprintln!("measuring: xtask after one DAG changed");
    let one = xtask(&[])?;
    let mut noops = Vec::new();
    for _ in 0..5 {
        noops.push(xtask(&[])?.seconds);
    }
    noops.sort_by(f64::total_cmp);
    let noop = noops[noops.len() / 2];
    // The same kind of edit with git out of sight: the DAG directory is one layer again.
    edit_one_dag(&repo, 2)?;
    eprintln!("measuring: xtask after one DAG changed, git hidden (one DAG layer)");
    let hidden = dir.join("no-such-git-dir");
    let one_layer = xtask_env(&[], &[("GIT_DIR", hidden.as_str())])?;
    let layer_bytes = |run: &Run| -> Result<u64> {
        let report: serde_json::Value = serde_json::from_slice(&run.stdout)?;
        super::scenario::new_dag_layer(&report).context("no files/dags layer in the images report")
    };
    let (split_bytes, whole_bytes) = (layer_bytes(&one)?, layer_bytes(&one_layer)?);

    // The same steps with docker build.
    let docker = if args.no_docker { None } else { docker_peer(&dir, &repo, &base_store)? };

    let compression = compression_choice(&repo)?;

    let mut rows = vec![
        Row {
            what: "cold build (base present)".into(),
            ours_seconds: Some(cold.seconds),
            peer: "docker build --no-cache".into(),
            peer_seconds: docker.as_ref().map(|d| d.cold),
            note: String::new(),
        },
        Row {
            what: "one DAG changed".into(),
            ours_seconds: Some(one.seconds),
            peer: "docker build".into(),
            peer_seconds: docker.as_ref().map(|d| d.one),
            note: "target: <= 1/3 of docker build".into(),
        },
        Row {
            what: "one DAG changed, its new layer".into(),
            ours_seconds: Some(one.seconds),
            peer: "xtask, one DAG layer".into(),
            peer_seconds: Some(one_layer.seconds),
            note: format!(
                "committed + changes layers: the new layer is {} vs {} for the whole DAG layer",
                human_bytes(split_bytes),
                human_bytes(whole_bytes)
            ),
        },
        Row {
            what: "no-op rebuild (median of 5)".into(),
            ours_seconds: Some(noop),
            peer: "docker build".into(),
            peer_seconds: docker.as_ref().map(|d| d.noop),
            note: "target: < 50 ms".into(),
        },
    ];
    if let Some(d) = &docker {
        rows.push(Row {
            what: "load base into the engine (once)".into(),
            ours_seconds: None,
            peer: "docker load".into(),
            peer_seconds: d.load,
            note: "xtask reads the base straight from its layout".into(),
        });
    }
    let result = ImagesResult {
        scenario: scenario.clone(),
        base_bytes,
        dags_files,
        dags_bytes,
        include_bytes,
        rows,
        throughput_mb_s: throughput,
        import_peak_rss_mb: import.max_rss_kb as f64 / 1024.0,
        import_seconds: import.seconds,
        compression,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    println!(
        "\nscenario: base {} (gzip, 3 layers), dags {} files {}, include {}",
        human_bytes(result.base_bytes),
        result.dags_files,
        human_bytes(result.dags_bytes),
        human_bytes(result.include_bytes)
    );
    if let Some(d) = &docker {
        println!("docker: {}", d.builder);
    }
    println!("\n{:<34} {:>10}   {:<26} {:>10}   {:>7}   note", "", "xtask", "peer", "peer", "ratio");
    for r in &result.rows {
        let ours = r.ours_seconds.map(secs).unwrap_or_else(|| "-".into());
        let peer = r.peer_seconds.map(secs).unwrap_or_else(|| "-".into());
        let ratio = match (r.ours_seconds, r.peer_seconds) {
            (Some(o), Some(p)) if p > 0.0 => format!("{:.3}", o / p),
            _ => "-".into(),
        };
        println!("{:<34} {:>10}   {:<26} {:>10}   {:>7}   {}", r.what, ours, r.peer, peer, ratio, r.note);
    }
    println!();
    for (name, mbs) in &result.throughput_mb_s {
        println!(
            "new-layer throughput, {name:<8} {mbs:>7.0} MB/s of input on one core (gzip level 1, zlib-rs, sha256 in the same pass; target >= 150)"
        );
    }
    println!(
        "base import into a clean store: {} (whole build), peak RSS {:.0} MB (target < 150 MB)",
        secs(result.import_seconds),
        result.import_peak_rss_mb
    );
    println!("\nnew DAG layer, gzip vs uncompressed (for destinations that take either):");
    for (what, s, bytes) in &result.compression {
        println!("  {what:<40} {:>9}  {}", secs(*s), human_bytes(*bytes));
    }
    Ok(())
}

pub(super) struct DockerTimes {
    pub(super) builder: String,
    pub(super) load: Option<f64>,
    pub(super) cold: f64,
    pub(super) one: f64,
    pub(super) noop: f64,
}

/// `docker build` of the same Dockerfile-shaped image, after the same edits.
pub(super) fn docker_peer(dir: &Utf8Path, repo: &Utf8Path, base_store: &Utf8Path) -> Result<Option<DockerTimes>> {
    if !docker_ok() {
        eprintln!("the Docker engine is not running: docker columns left empty (start dockerd, or pass --no-docker)");
        return Ok(None);
    }
    let buildkit = buildkit_installed();
    let builder = builder_name(buildkit);
    let have_base = docker_has_base()?;
    let mut load = None;
    if !have_base {
        eprintln!("loading the base into docker (once)");
        let tar = dir.join("base.tar");
        {
            let store = Store::open(base_store)?;
            let desc = store.lookup(BASE_TAG)?.context("bench base missing")?;
            archive::write_archive_file(
                &store,
                &[ArchiveImage { name: format!("docker.io/library/{BASE_TAG}:latest"), manifest: desc }],
                &tar,
                &mut |_| {},
            )?;
        }
        let mut c = Command::new("docker");
        c.args(["load", "-i"]).arg(&tar);
        load = Some(timed(c)?.seconds);
        fs::remove_file(&tar)?;
    }
    let build = |no_cache: bool| -> Result<f64> {
        let flags: &[&str] = if no_cache { &["--no-cache"] } else { &[] };
        let dockerfile = repo.join("files/Dockerfile");
        Ok(timed(docker_build(buildkit, flags, &dockerfile, &repo.join("files"), "xtask-bench-worker:latest"))?.seconds)
    };
    eprintln!("measuring: docker build --no-cache");
    let cold = build(true)?;
    // The docker side gets the same edit our side got (so both rebuild one DAG).
    edit_one_dag(repo, 2)?;
    eprintln!("measuring: docker build after one DAG changed");
    let one = build(false)?;
    let noop = build(false)?;
    Ok(Some(DockerTimes { builder: builder.into(), load, cold, one, noop }))
}

/// Writes the DAG layer gzip and uncompressed, and times decompression, so the choice of
/// what to ship to containerd or docker load is made on numbers.
pub(super) fn compression_choice(repo: &Utf8Path) -> Result<Vec<(String, f64, u64)>> {
    let scratch = camino_tempfile::tempdir()?;
    let store = Store::open(scratch.path())?;
    let mut out = Vec::new();
    let mut gz_blob = None;
    for c in [Compression::Gzip, Compression::None] {
        let plan = LayerPlan {
            name: "dags".into(),
            source: repo.join("files/dags"),
            source_label: "files/dags".into(),
            context: repo.join("files"),
            target: "opt/airflow/dags".into(),
            parents: vec![],
            uid: 50000,
            gid: 0,
            file_mode: 0o644,
            exec_mode: 0o755,
            dir_mode: 0o755,
            mtime: 0,
            compression: c,
            exclude: vec![],
            rootfs: false,
            prune: vec![],
        };
        let inputs = layer::scan(&plan)?;
        let t = Instant::now();
        let blob = layer::write(&plan, &inputs, &store, &mut |_| {})?;
        out.push((format!("write, {c:?}"), t.elapsed().as_secs_f64(), blob.size));
        if c == Compression::Gzip {
            gz_blob = Some(blob);
        }
    }
    // The compressor's floor: incompressible input (what a tree of binaries would give).
    let mut random = Vec::new();
    Rng(7).fill_random(&mut random, 32 << 20);
    let t = Instant::now();
    let mut gz = flate2::write::GzEncoder::new(std::io::sink(), flate2::Compression::fast());
    gz.write_all(&random)?;
    gz.finish()?;
    out.push(("gzip of incompressible input (32 MiB)".into(), t.elapsed().as_secs_f64(), random.len() as u64));
    if let Some(blob) = gz_blob {
        let t = Instant::now();
        let mut r = flate2::read::GzDecoder::new(std::io::BufReader::new(store.open_blob(&blob.digest)?));
        let n = std::io::copy(&mut r, &mut std::io::sink())?;
        out.push(("gunzip at the destination".into(), t.elapsed().as_secs_f64(), n));
    }
    Ok(out)
}
