//! `cargo xtask bench ...`: the figures the issues ask for, each printed next to its peer
//! measured in the same run on the same inputs.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

mod deliver;
mod watch;

use crate::cli::{BenchArgs, BenchCommand, BenchImagesArgs};
use crate::config::Project;
use crate::ctx::Ctx;
use crate::fsutil::human_bytes;
use crate::oci::archive::{self, ArchiveImage};
use crate::oci::layer::{self, Compression, LayerPlan};
use crate::oci::store::Store;
use crate::oci::tar::Meta;
use crate::oci::{DescriptorExt, ImageManifest, MediaType};
use crate::ui::secs;

pub fn run(ctx: &Ctx, args: &BenchArgs) -> Result<()> {
    let project = &ctx.project;
    match &args.command {
        BenchCommand::Images(a) => images(project, a),
        BenchCommand::Push(a) => push(project, a),
        BenchCommand::Deliver(a) => deliver::run(ctx, a),
        BenchCommand::Watch(a) => watch::run(ctx, a),
    }
}

/// A deterministic pseudo-random byte source (xorshift64*), so every run and machine
/// benchmarks the same content.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill_random(&mut self, buf: &mut Vec<u8>, n: usize) {
        buf.reserve(n);
        while !buf.len().is_multiple_of(8) && n > 0 {
            buf.push(0);
        }
        let end = buf.len() + n;
        while buf.len() < end {
            buf.extend_from_slice(&self.next().to_le_bytes());
        }
        buf.truncate(end);
    }

    /// Python-looking source text: compresses about as well as real DAG code.
    fn python_source(&mut self, size: usize) -> Vec<u8> {
        const WORDS: [&str; 24] = [
            "task",
            "dag",
            "schedule",
            "operator",
            "xcom",
            "context",
            "retries",
            "pool",
            "sensor",
            "bash_command",
            "python_callable",
            "start_date",
            "catchup",
            "params",
            "default_args",
            "queue",
            "conn_id",
            "execution",
            "upstream",
            "downstream",
            "trigger_rule",
            "timeout",
            "priority",
            "owner",
        ];
        let mut out = Vec::with_capacity(size + 128);
        out.extend_from_slice(b"from airflow.sdk import dag, task\n\n");
        while out.len() < size {
            let r = self.next();
            let a = WORDS[(r % 24) as usize];
            let b = WORDS[((r >> 8) % 24) as usize];
            let n = (r >> 16) % 10_000;
            let line = match (r >> 40) % 4 {
                0 => format!("def {a}_{b}_{n}(ctx):\n"),
                1 => format!("    {a} = {b}.get(\"{a}_{n}\", {n})\n"),
                2 => format!("    # {a} {b} {n}: keep {b} in sync with {a}\n"),
                _ => format!("    return {{\"{a}\": {b}_{n}, \"n\": {n}}}\n"),
            };
            out.extend_from_slice(line.as_bytes());
        }
        out.truncate(size);
        out
    }
}

#[derive(Serialize)]
struct Row {
    what: String,
    ours_seconds: Option<f64>,
    peer: String,
    peer_seconds: Option<f64>,
    note: String,
}

#[derive(Serialize)]
struct ImagesResult {
    scenario: String,
    base_bytes: u64,
    dags_files: usize,
    dags_bytes: u64,
    include_bytes: u64,
    rows: Vec<Row>,
    throughput_mb_s: Vec<(String, f64)>,
    import_peak_rss_mb: f64,
    import_seconds: f64,
    compression: Vec<(String, f64, u64)>,
}

const BASE_TAG: &str = "xtask-bench-base";

/// Scenario files live here and are reused by later runs with the same parameters.
fn bench_dir(project: &Project) -> PathBuf {
    project.work_dir().join("bench/images")
}

/// The scenario's files, generated once and reused while the parameters stay the same.
struct Scenario {
    dir: PathBuf,
    repo: PathBuf,
    base_store: PathBuf,
    description: String,
    base_bytes: u64,
}

fn scenario(project: &Project, args: &BenchImagesArgs) -> Result<Scenario> {
    let dir = bench_dir(project);
    let repo = dir.join("repo");
    let description = format!(
        "base {} MB in 3 layers, {} DAG files of {} kB, include {} MB (10% binary)",
        args.base_mb, args.dags, args.dag_kb, args.include_mb
    );
    eprintln!("scenario: {description} (in {})", project.rel(&dir));
    let marker = dir.join("scenario.txt");
    if fs::read_to_string(&marker).ok().as_deref() != Some(description.as_str()) {
        let _ = fs::remove_dir_all(&dir);
        generate(&dir, args)?;
        fs::write(&marker, &description)?;
    }
    let base_store = dir.join("base");
    let base_bytes: u64 = {
        let store = Store::open(&base_store)?;
        let desc = store.lookup(BASE_TAG)?.context("bench base missing; delete target/xtask/bench and rerun")?;
        let m: ImageManifest = store.read_json(&desc.sha256()?)?;
        m.layers().iter().map(|l| l.size()).sum()
    };
    Ok(Scenario { dir, repo, base_store, description, base_bytes })
}

fn images(project: &Project, args: &BenchImagesArgs) -> Result<()> {
    let Scenario { dir, repo, base_store, description: scenario, base_bytes } = self::scenario(project, args)?;
    let (dags_files, dags_bytes) = dir_size(&repo.join("files/dags"))?;
    let (_, include_bytes) = dir_size(&repo.join("files/include"))?;
    let exe = std::env::current_exe()?;
    let xtask = |extra: &[&str]| -> Result<Run> {
        let mut c = Command::new(&exe);
        c.arg("--root").arg(&repo).arg("images").arg("--json").args(extra).env_remove("SOURCE_DATE_EPOCH");
        timed(c)
    };

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

struct Run {
    seconds: f64,
    max_rss_kb: i64,
    stdout: Vec<u8>,
}

/// Runs a command to completion, measuring wall time and the child's peak RSS.
fn timed(mut cmd: Command) -> Result<Run> {
    let out_file = tempfile::tempfile()?;
    let err_file = tempfile::tempfile()?;
    cmd.stdout(out_file.try_clone()?).stderr(err_file.try_clone()?).stdin(Stdio::null());
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    let mut status = 0;
    // wait4 is the one call that gives a child's peak RSS; neither std nor rustix wraps it.
    // SAFETY: rusage is plain data, zeroed is a valid value; the pid is our own child's.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: valid pointers to locals that outlive the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    if r < 0 {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let read = |mut f: fs::File| -> Vec<u8> {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        let _ = f.seek(std::io::SeekFrom::Start(0));
        let _ = f.read_to_end(&mut v);
        v
    };
    let stdout = read(out_file);
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{cmd:?} failed:\n{}", String::from_utf8_lossy(&read(err_file)));
    }
    Ok(Run { seconds, max_rss_kb: usage.ru_maxrss, stdout })
}

fn dir_size(dir: &Path) -> Result<(usize, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let md = e.metadata()?;
        if md.is_dir() {
            let (f, b) = dir_size(&e.path())?;
            files += f;
            bytes += b;
        } else {
            files += 1;
            bytes += md.len();
        }
    }
    Ok((files, bytes))
}

fn edit_one_dag(repo: &Path, n: u32) -> Result<()> {
    let p = repo.join("files/dags/dag_0000.py");
    let mut f = fs::OpenOptions::new().append(true).open(&p)?;
    writeln!(f, "# edit {n}")?;
    Ok(())
}

/// Writes the scenario: a base image (an OCI layout of three large gzip layers and
/// /opt/airflow/dags owned by 50000:0) and a repository with DAGs and an include tree.
fn generate(dir: &Path, args: &BenchImagesArgs) -> Result<()> {
    eprintln!("generating the scenario (once; reused by later runs)");
    let mut rng = Rng(0x5eed_0123_4567_89ab);
    let rootfs = dir.join("rootfs");
    // The base: mostly incompressible bytes, like the shared libraries and wheels of a
    // real Python image, split over three layers.
    let per_layer = (args.base_mb as usize * 1_000_000) / 3;
    for l in 0..3 {
        let ldir = rootfs.join(format!("layer{l}"));
        fs::create_dir_all(&ldir)?;
        let mut written = 0;
        let mut i = 0;
        while written < per_layer {
            let size = (1 << 20).min(per_layer - written);
            let mut buf = Vec::with_capacity(size);
            if i % 5 == 0 {
                buf = rng.python_source(size);
            } else {
                rng.fill_random(&mut buf, size);
            }
            fs::write(ldir.join(format!("lib{i:05}.so")), &buf)?;
            written += size;
            i += 1;
        }
    }
    fs::create_dir_all(rootfs.join("empty"))?;
    let base_store = Store::open(&dir.join("base"))?;
    let mtime = 946_684_800;
    let root_meta = |mode| Meta { uid: 0, gid: 0, mode, mtime };
    let mut layers = Vec::new();
    let mut specs: Vec<(PathBuf, String, u64)> =
        (0..3).map(|l| (rootfs.join(format!("layer{l}")), format!("usr/lib/bench{l}"), 0)).collect();
    specs.push((rootfs.join("empty"), "opt/airflow/dags".into(), 50000));
    for (source, target, uid) in specs {
        let parents = {
            let mut acc = String::new();
            let mut v = Vec::new();
            for p in target.split('/') {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(p);
                let meta = if acc == target { Meta { uid, ..root_meta(0o775) } } else { root_meta(0o755) };
                v.push((acc.clone(), meta));
            }
            v
        };
        let plan = LayerPlan {
            name: target.clone(),
            source: source.clone(),
            source_label: source.display().to_string(),
            context: rootfs.clone(),
            target,
            parents,
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            exec_mode: 0o755,
            dir_mode: 0o755,
            mtime,
            compression: Compression::Gzip,
            exclude: vec![],
            rootfs: false,
            prune: vec![],
        };
        let inputs = layer::scan(&plan)?;
        layers.push(layer::write(&plan, &inputs, &base_store, &mut |_| {})?);
    }
    let created = "2000-01-01T00:00:00Z".to_string();
    let mut cfg = oci_spec::image::Config::default();
    cfg.set_env(Some(vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()]))
        .set_user(Some("50000:0".into()))
        .set_working_dir(Some("/opt/airflow".into()));
    let history = layers
        .iter()
        .map(|_| {
            let mut h = oci_spec::image::History::default();
            h.set_created(Some(created.clone())).set_created_by(Some("bench".into()));
            h
        })
        .collect();
    let mut config = oci_spec::image::ImageConfiguration::default();
    config
        .set_architecture(crate::oci::Arch::Amd64)
        .set_os(crate::oci::Os::Linux)
        .set_created(Some(created))
        .set_config(Some(cfg))
        .set_history(Some(history));
    config.rootfs_mut().set_diff_ids(layers.iter().map(|l| l.diff_id.to_string()).collect());
    let config = base_store.put_json(MediaType::ImageConfig, &config)?;
    let layers = layers.iter().map(|l| crate::oci::descriptor(l.media_type.clone(), &l.digest, l.size)).collect();
    let manifest = crate::oci::image::oci_manifest(config, layers, None);
    let manifest = base_store.put_json(MediaType::ImageManifest, &manifest)?;
    base_store.tag(BASE_TAG, &manifest)?;
    drop(base_store);
    fs::remove_dir_all(&rootfs)?;

    let repo = dir.join("repo");
    let dags = repo.join("files/dags");
    for i in 0..args.dags {
        let sub = dags.join(format!("team_{:02}", i % 20));
        fs::create_dir_all(&sub)?;
        let name = if i == 0 { dags.join("dag_0000.py") } else { sub.join(format!("dag_{i:04}.py")) };
        fs::write(name, rng.python_source(args.dag_kb as usize * 1000))?;
    }
    let include = repo.join("files/include/company");
    fs::create_dir_all(&include)?;
    let include_files = 200;
    let per_file = args.include_mb as usize * 1_000_000 / include_files;
    // Mostly code and text data, with one file in ten binary (a pickled model, a parquet
    // sample): what a shared include package tends to hold.
    for i in 0..include_files {
        if i % 10 == 9 {
            let mut data = Vec::new();
            rng.fill_random(&mut data, per_file);
            fs::write(include.join(format!("model_{i:03}.bin")), data)?;
        } else {
            fs::write(include.join(format!("module_{i:03}.py")), rng.python_source(per_file))?;
        }
    }
    fs::create_dir_all(repo.join("docker"))?;
    fs::write(
        repo.join("docker/images.toml"),
        format!(
            "[[image]]\nname = \"bench-worker\"\nbase = \"oci:{}:{BASE_TAG}\"\n\n[[image.layer]]\nname = \"include\"\nsource = \"files/include\"\ntarget = \"/opt/airflow/include\"\n\n[[image.layer]]\nname = \"dags\"\nsource = \"files/dags\"\ntarget = \"/opt/airflow/dags\"\n",
            dir.join("base").display()
        ),
    )?;
    fs::write(
        repo.join("files/Dockerfile"),
        format!(
            "FROM {BASE_TAG}:latest\nCOPY --chown=50000:0 include /opt/airflow/include\nCOPY --chown=50000:0 dags /opt/airflow/dags\n"
        ),
    )?;
    fs::write(repo.join("files/.dockerignore"), "Dockerfile\n.dockerignore\n")?;
    Ok(())
}

struct DockerTimes {
    builder: String,
    load: Option<f64>,
    cold: f64,
    one: f64,
    noop: f64,
}

/// Runs a command with its output discarded; whether it exited 0 (an error only when it
/// could not be started at all).
fn succeeds(cmd: &mut Command) -> std::io::Result<bool> {
    Ok(cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?.success())
}

fn docker_ok() -> bool {
    succeeds(Command::new("docker").arg("info")).unwrap_or(false)
}

/// Whether the Docker engine holds the bench base (the images bench loads it).
fn docker_has_base() -> Result<bool> {
    Ok(succeeds(Command::new("docker").args(["image", "inspect", &format!("{BASE_TAG}:latest")]))?)
}

/// `docker build` of the same Dockerfile-shaped image, after the same edits.
fn docker_peer(dir: &Path, repo: &Path, base_store: &Path) -> Result<Option<DockerTimes>> {
    if !docker_ok() {
        eprintln!("the Docker engine is not running: docker columns left empty (start dockerd, or pass --no-docker)");
        return Ok(None);
    }
    let buildkit = succeeds(Command::new("docker").args(["buildx", "version"])).unwrap_or(false);
    let builder = if buildkit { "BuildKit (docker buildx)" } else { "legacy builder (no buildx plugin installed)" };
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
        let mut c = Command::new("docker");
        if buildkit {
            c.env("DOCKER_BUILDKIT", "1").args(["buildx", "build", "--load"]);
        } else {
            c.env("DOCKER_BUILDKIT", "0").arg("build");
        }
        if no_cache {
            c.arg("--no-cache");
        }
        c.args(["-q", "-t", "xtask-bench-worker:latest", "-f"])
            .arg(repo.join("files/Dockerfile"))
            .arg(repo.join("files"));
        Ok(timed(c)?.seconds)
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
fn compression_choice(repo: &Path) -> Result<Vec<(String, f64, u64)>> {
    let scratch = tempfile::tempdir()?;
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

/// A private containerd (its own root, state and socket), stopped on drop: the
/// destination of `ctr import` measurements.
pub struct PrivateContainerd {
    pub dir: PathBuf,
    child: std::process::Child,
}

impl PrivateContainerd {
    pub fn start(dir: &Path) -> Result<PrivateContainerd> {
        crate::process::require("containerd", "sudo apt-get install containerd (or run .ci/setup)")?;
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{0}/containerd.sock\"\n",
            dir.display()
        );
        fs::write(dir.join("config.toml"), config)?;
        let log = fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start containerd")?;
        let c = PrivateContainerd { dir: dir.to_path_buf(), child };
        for _ in 0..100 {
            if succeeds(c.ctr().arg("version")).unwrap_or(false) {
                return Ok(c);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bail!("containerd did not start; see {}", dir.join("containerd.log").display())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(self.socket()).args(["--namespace", "k8s.io"]);
        c
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg("-R").arg(self.dir.join("root")).output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A docker-registry on a free loopback port with throwaway storage, stopped on drop.
struct BenchRegistry {
    host: String,
    storage: PathBuf,
    child: std::process::Child,
}

impl BenchRegistry {
    fn start(dir: &Path) -> Result<BenchRegistry> {
        crate::process::require("docker-registry", "sudo apt-get install docker-registry (or run .ci/setup)")?;
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let storage = dir.join("data");
        fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
                storage.display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let host = format!("127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&host).is_ok() {
                return Ok(BenchRegistry { host, storage, child });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!("docker-registry did not start")
    }

    /// Bytes of every blob the registry stores.
    fn stored_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let mut n = 0;
            for e in fs::read_dir(p).into_iter().flatten().flatten() {
                let path = e.path();
                if path.is_dir() {
                    n += walk(&path);
                } else if e.file_name() == "data" {
                    n += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
            n
        }
        walk(&self.storage.join("docker/registry/v2/blobs"))
    }
}

impl Drop for BenchRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn push(project: &Project, args: &BenchImagesArgs) -> Result<()> {
    let sc = scenario(project, args)?;
    let registry = BenchRegistry::start(&sc.dir.join("registry"))?;
    let exe = std::env::current_exe()?;
    let xtask = |extra: &[&str]| -> Result<Run> {
        let mut c = Command::new(&exe);
        c.arg("--root").arg(&sc.repo).arg("images").arg("--json").args(extra).env_remove("SOURCE_DATE_EPOCH");
        timed(c)
    };
    eprintln!("measuring: first push of the whole image (peak memory of pushing the base)");
    xtask(&[])?;
    let first_push = xtask(&["--push", &registry.host])?;
    edit_one_dag(&sc.repo, 3)?;
    let rebuilt: serde_json::Value = serde_json::from_slice(&xtask(&[])?.stdout)?;
    let dag_layer = rebuilt["images"][0]["layers"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == "dags"))
        .and_then(|l| l["size"].as_u64())
        .unwrap_or(0);
    let before = registry.stored_bytes();
    eprintln!("measuring: xtask push after one DAG changed");
    let ours = xtask(&["--push", &registry.host])?;
    let ours_report: serde_json::Value = serde_json::from_slice(&ours.stdout)?;
    let ours_bytes = ours_report["pushes"][0]["uploaded_bytes"].as_u64().unwrap_or(0);
    let ours_stored = registry.stored_bytes() - before;

    // Pulling the whole image back as a base, into a clean store.
    let pull_repo = sc.dir.join("pull-repo");
    let _ = fs::remove_dir_all(&pull_repo);
    fs::create_dir_all(pull_repo.join("docker"))?;
    fs::create_dir_all(pull_repo.join("files/dags"))?;
    fs::write(
        pull_repo.join("docker/images.toml"),
        format!(
            "[[image]]\nname = \"pulled\"\nbase = \"docker://{}/bench-worker:dev\"\n[[image.layer]]\nname = \"dags\"\nsource = \"files/dags\"\ntarget = \"/opt/airflow/dags\"\n",
            registry.host
        ),
    )?;
    eprintln!("measuring: pull of the whole image as a base (peak memory)");
    let mut c = Command::new(&exe);
    c.arg("--root").arg(&pull_repo).args(["images", "--json"]);
    let pull = timed(c)?;

    let docker = if args.no_docker || !docker_ok() { None } else { Some(docker_push_peer(&sc, &registry)?) };

    println!("\nscenario: {}", sc.description);
    println!("after one DAG changed (the new DAG layer is {} compressed):", human_bytes(dag_layer));
    println!("\n{:<44} {:>10} {:>12}   note", "", "time", "bytes moved");
    println!(
        "{:<44} {:>10} {:>12}   {:.2}x the DAG layer (target <= 1.1x); the registry stored {}",
        "xtask images --push",
        secs(ours.seconds),
        human_bytes(ours_bytes),
        ours_bytes as f64 / dag_layer.max(1) as f64,
        human_bytes(ours_stored)
    );
    if let Some(d) = &docker {
        println!(
            "{:<44} {:>10} {:>12}   the registry stored it",
            "docker build + docker push (push only)",
            secs(d.push_seconds),
            human_bytes(d.push_bytes)
        );
        println!(
            "{:<44} {:>10} {:>12}   what kind load does; xtask push takes {:.3} of its time (target <= 0.1)",
            "docker save | ctr import",
            secs(d.save_import_seconds),
            human_bytes(d.save_bytes),
            ours.seconds / d.save_import_seconds
        );
    }
    println!(
        "\npeak memory: pushing the whole image ({} base) {:.0} MB; pulling it into a clean store {:.0} MB in {} (target < 150 MB)",
        human_bytes(sc.base_bytes),
        first_push.max_rss_kb as f64 / 1024.0,
        pull.max_rss_kb as f64 / 1024.0,
        secs(pull.seconds)
    );
    Ok(())
}

struct DockerPush {
    push_seconds: f64,
    push_bytes: u64,
    save_import_seconds: f64,
    save_bytes: u64,
}

fn docker_push_peer(sc: &Scenario, registry: &BenchRegistry) -> Result<DockerPush> {
    // The base must be in the engine: the images bench loads it.
    let have_base = docker_has_base()?;
    if !have_base {
        bail!("the bench base is not in the Docker engine; run `cargo xtask bench images` first (it loads it)");
    }
    let image = format!("{}/bench-docker:latest", registry.host);
    let build = || -> Result<f64> {
        let mut c = Command::new("docker");
        c.env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "-t", &image, "-f"])
            .arg(sc.repo.join("files/Dockerfile"))
            .arg(sc.repo.join("files"));
        Ok(timed(c)?.seconds)
    };
    let push = || -> Result<f64> {
        let mut c = Command::new("docker");
        c.args(["push", &image]);
        Ok(timed(c)?.seconds)
    };
    eprintln!("measuring: docker push (first, whole image)");
    build()?;
    push()?;
    edit_one_dag(&sc.repo, 4)?;
    build()?;
    let before = registry.stored_bytes();
    eprintln!("measuring: docker push after one DAG changed");
    let push_seconds = push()?;
    let push_bytes = registry.stored_bytes() - before;

    eprintln!("measuring: docker save | ctr import (what kind load does)");
    let containerd = PrivateContainerd::start(&sc.dir.join("containerd"))?;
    let (save_import_seconds, save_bytes) = docker_save_import(&image, &sc.dir.join("save.tar"), containerd.ctr())?;
    Ok(DockerPush { push_seconds, push_bytes, save_import_seconds, save_bytes })
}

/// What `kind load docker-image` does: `docker save` to a file, then `ctr images import`
/// of it (`ctr` is the containerd command to import with). Returns seconds and the
/// archive's size.
fn docker_save_import(image: &str, tar: &Path, mut ctr: Command) -> Result<(f64, u64)> {
    let started = Instant::now();
    let mut save = Command::new("docker");
    save.args(["save", "-o"]).arg(tar).arg(image);
    timed(save)?;
    ctr.args(["images", "import"]).arg(tar);
    timed(ctr)?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes = fs::metadata(tar)?.len();
    fs::remove_file(tar)?;
    Ok((seconds, bytes))
}
