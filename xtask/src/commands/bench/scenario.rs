//! The images benchmark's scenario: a generated repository (many DAGs, an include tree)
//! and base, made once per set of parameters and reused by later runs.

use camino::{Utf8Path, Utf8PathBuf};
use std::fs;
use std::io::Write;

use anyhow::{Context, Result};

use crate::cli::BenchImagesArgs;
use crate::config::Project;
use crate::oci::layer::{self, Compression, LayerPlan};
use crate::oci::store::Store;
use crate::oci::tar::Meta;
use crate::oci::{DescriptorExt, ImageManifest, MediaType};

/// A deterministic pseudo-random byte source (xorshift64*), so every run and machine
/// benchmarks the same content.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(super) fn fill_random(&mut self, buf: &mut Vec<u8>, n: usize) {
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
    pub(super) fn python_source(&mut self, size: usize) -> Vec<u8> {
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

pub(super) const BASE_TAG: &str = "xtask-bench-base";

/// Scenario files live here and are reused by later runs with the same parameters.
pub(super) fn bench_dir(project: &Project) -> Utf8PathBuf {
    project.work_dir().join("bench/images")
}

/// The scenario's files, generated once and reused while the parameters stay the same.
pub(super) struct Scenario {
    pub(super) dir: Utf8PathBuf,
    pub(super) repo: Utf8PathBuf,
    pub(super) base_store: Utf8PathBuf,
    pub(super) description: String,
    pub(super) base_bytes: u64,
}

pub(super) fn scenario(project: &Project, args: &BenchImagesArgs) -> Result<Scenario> {
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
    // The scenario as committed: a DAG edit is then a change on top of a commit.
    commit_all(&repo)?;
    let base_store = dir.join("base");
    let base_bytes: u64 = {
        let store = Store::open(&base_store)?;
        let desc = store.lookup(BASE_TAG)?.context("bench base missing; delete target/xtask/bench and rerun")?;
        let m: ImageManifest = store.read_json(&desc.sha256()?)?;
        m.layers().iter().map(|l| l.size()).sum()
    };
    Ok(Scenario { dir, repo, base_store, description, base_bytes })
}

pub(super) fn dir_size(dir: &Utf8Path) -> Result<(usize, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    for e in dir.read_dir_utf8()? {
        let e = e?;
        let md = e.metadata()?;
        if md.is_dir() {
            let (f, b) = dir_size(e.path())?;
            files += f;
            bytes += b;
        } else {
            files += 1;
            bytes += md.len();
        }
    }
    Ok((files, bytes))
}

pub(super) fn edit_one_dag(repo: &Utf8Path, n: u32) -> Result<()> {
    let p = repo.join("files/dags/dag_0000.py");
    let mut f = fs::OpenOptions::new().append(true).open(&p)?;
    writeln!(f, "# edit {n}")?;
    Ok(())
}

/// Writes the scenario: a base image (an OCI layout of three large gzip layers and
/// /opt/airflow/dags owned by 50000:0) and a repository with DAGs and an include tree.
pub(super) fn generate(dir: &Utf8Path, args: &BenchImagesArgs) -> Result<()> {
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
    let mut specs: Vec<(Utf8PathBuf, String, u64)> =
        (0..3).map(|l| (rootfs.join(format!("layer{l}")), format!("usr/lib/bench{l}"), 0)).collect();
    specs.push((rootfs.join("empty"), "opt/airflow/dags".into(), 50000));
    for (source, target, uid) in specs {
        let parents = crate::image_build::ancestors(&target)
            .into_iter()
            .map(|dir| {
                let meta = if dir == target { Meta { uid, ..root_meta(0o775) } } else { root_meta(0o755) };
                (dir, meta)
            })
            .collect();
        let plan = LayerPlan {
            name: target.clone(),
            source: source.clone(),
            source_label: source.to_string(),
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
            dir.join("base")
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

/// Commits everything in a benchmark's own repository, so that its DAG edits are changes
/// on top of a commit, as in a user's checkout (where a DAG edit gets a layer of its own).
pub(super) fn commit_all(repo: &Utf8Path) -> Result<()> {
    let git = |args: &[&str]| -> Result<()> {
        let mut argv = vec!["-C", repo.as_str(), "-c", "user.name=xtask bench", "-c", "user.email=bench@xtask.invalid"];
        argv.extend_from_slice(args);
        duct::cmd("git", argv)
            .stdout_null()
            .run()
            .with_context(|| format!("git {} in {repo} failed", args.join(" ")))?;
        Ok(())
    };
    if !repo.join(".git").exists() {
        git(&["init", "-q"])?;
        fs::write(repo.join(".gitignore"), "/target/\n")?;
    }
    git(&["add", "-A"])?;
    git(&["commit", "-q", "--allow-empty", "-m", "benchmark scenario"])
}

/// The DAG layer a one-DAG change produced: the topmost layer of `files/dags` in an images
/// report (its changes layer in a git work tree, else the whole DAG layer).
pub(super) fn new_dag_layer(report: &serde_json::Value) -> Option<u64> {
    report["images"][0]["layers"]
        .as_array()?
        .iter()
        .rfind(|l| l["source"] == "files/dags")
        .and_then(|l| l["size"].as_u64())
}
