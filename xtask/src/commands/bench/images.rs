//! `cargo xtask bench images`: building the worker image cold, after one DAG edit and with
//! nothing changed, next to `docker build` of the same content.

use camino::Utf8Path;
use std::fs;
use std::io::Write;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use super::parsed::median;
use super::scenario::{BASE_TAG, Scenario, dir_size, edit_one_dag, scenario};
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
    pub(super) compression: Vec<CodecRow>,
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
    let repeat = args.repeat.max(1);
    let mut ones = Vec::new();
    let mut one = None;
    for i in 0..repeat {
        edit_one_dag(&repo, 100 + i as u32)?;
        eprintln!("measuring ({}/{repeat}): xtask after one DAG changed", i + 1);
        let run = xtask(&[])?;
        ones.push(run.seconds);
        one = Some(run);
    }
    let one = one.expect("at least one run");
    let mut noops = Vec::new();
    for _ in 0..repeat {
        noops.push(xtask(&[])?.seconds);
    }
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
    let docker = if args.no_docker { None } else { docker_peer(&dir, &repo, &base_store, repeat)? };

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
            what: format!("one DAG changed (median of {repeat})"),
            ours_seconds: Some(median(&ones)),
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
            what: format!("no-op rebuild (median of {repeat})"),
            ours_seconds: Some(median(&noops)),
            peer: "docker build".into(),
            peer_seconds: docker.as_ref().map(|d| d.noop),
            note: "target: < 20 ms".into(),
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
    println!("\nnew layers' tar streams, compressed and decompressed in memory on one core:");
    println!("  {:<8} {:<8} {:>10} {:>10} {:>10} {:>12}", "layer", "codec", "bytes", "compress", "MB/s", "decompress");
    for r in &result.compression {
        let raw = result.compression.iter().find(|n| n.layer == r.layer && n.codec == "none").map_or(0, |n| n.bytes);
        let mbs =
            if r.compress_seconds > 0.0 { format!("{:.0}", raw as f64 / 1e6 / r.compress_seconds) } else { "-".into() };
        println!(
            "  {:<8} {:<8} {:>10} {:>10} {:>10} {:>12}",
            r.layer,
            r.codec,
            human_bytes(r.bytes),
            secs(r.compress_seconds),
            mbs,
            secs(r.decompress_seconds)
        );
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
pub(super) fn docker_peer(
    dir: &Utf8Path,
    repo: &Utf8Path,
    base_store: &Utf8Path,
    repeat: usize,
) -> Result<Option<DockerTimes>> {
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
    // The docker side gets the same edits our side got (so both rebuild one DAG), as
    // many times, and the same number of no-op builds.
    let mut ones = Vec::new();
    for i in 0..repeat {
        edit_one_dag(repo, 200 + i as u32)?;
        eprintln!("measuring ({}/{repeat}): docker build after one DAG changed", i + 1);
        ones.push(build(false)?);
    }
    let mut noops = Vec::new();
    for _ in 0..repeat {
        noops.push(build(false)?);
    }
    Ok(Some(DockerTimes { builder: builder.into(), load, cold, one: median(&ones), noop: median(&noops) }))
}

/// One codec and level on one layer's tar stream.
#[derive(Serialize)]
pub(super) struct CodecRow {
    pub(super) layer: String,
    pub(super) codec: String,
    pub(super) bytes: u64,
    pub(super) compress_seconds: f64,
    pub(super) decompress_seconds: f64,
}

/// The include and DAG layers' tar streams, each compressed and decompressed in memory
/// with gzip at levels 1, 6 and 9 and zstd at 1, 3 and 9, so the choice of default is
/// made on numbers: the same input, the same place, one core each.
pub(super) fn compression_choice(repo: &Utf8Path) -> Result<Vec<CodecRow>> {
    use std::io::Read;
    let scratch = camino_tempfile::tempdir()?;
    let store = Store::open(scratch.path())?;
    let mut out = Vec::new();
    for (name, source) in [("include", "files/include"), ("dags", "files/dags")] {
        let plan = LayerPlan {
            name: name.into(),
            source: repo.join(source),
            source_label: source.into(),
            context: repo.join("files"),
            target: format!("opt/airflow/{name}"),
            parents: vec![],
            uid: 50000,
            gid: 0,
            file_mode: 0o644,
            exec_mode: 0o755,
            dir_mode: 0o755,
            mtime: 0,
            compression: Compression::None,
            exclude: vec![],
            rootfs: false,
            prune: vec![],
        };
        let inputs = layer::scan(&plan)?;
        let blob = layer::write(&plan, &inputs, &store, &mut |_| {})?;
        let mut tar = Vec::new();
        store.open_blob(&blob.digest)?.read_to_end(&mut tar)?;
        out.push(CodecRow {
            layer: name.into(),
            codec: "none".into(),
            bytes: tar.len() as u64,
            compress_seconds: 0.0,
            decompress_seconds: 0.0,
        });
        let time = |f: &mut dyn FnMut() -> Result<Vec<u8>>| -> Result<(f64, Vec<u8>)> {
            let t = Instant::now();
            let v = f()?;
            Ok((t.elapsed().as_secs_f64(), v))
        };
        for level in [1, 6, 9] {
            let (c, packed) = time(&mut || {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
                gz.write_all(&tar)?;
                Ok(gz.finish()?)
            })?;
            let (d, _) = time(&mut || {
                let mut v = Vec::with_capacity(tar.len());
                flate2::read::GzDecoder::new(&packed[..]).read_to_end(&mut v)?;
                Ok(v)
            })?;
            out.push(CodecRow {
                layer: name.into(),
                codec: format!("gzip -{level}"),
                bytes: packed.len() as u64,
                compress_seconds: c,
                decompress_seconds: d,
            });
        }
        for level in [1, 3, 9] {
            let (c, packed) = time(&mut || Ok(zstd::bulk::compress(&tar, level)?))?;
            let (d, _) = time(&mut || Ok(zstd::stream::decode_all(&packed[..])?))?;
            out.push(CodecRow {
                layer: name.into(),
                codec: format!("zstd -{level}"),
                bytes: packed.len() as u64,
                compress_seconds: c,
                decompress_seconds: d,
            });
        }
    }
    Ok(out)
}
