//! The Airflow base image, built on this machine with no container registry:
//! a Debian root filesystem from debootstrap, Python and Airflow from PyPI in a
//! virtualenv, Airflow's layout, written into the store as an OCI image by our engine.
//!
//! The recipe is `docker/base/<name>.toml`; a base is rebuilt only when the recipe or its
//! constraints file changed.

use camino::{Utf8Path, Utf8PathBuf};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::Project;
use crate::oci::image::BaseImage;
use crate::oci::image::rfc3339;
use crate::oci::layer::{self, Compression, LayerBlob, LayerPlan};
use crate::oci::store::Store;
use crate::oci::tar::Meta;
use crate::oci::{Descriptor, DescriptorExt, MediaType};
use crate::process;

mod chroot;
mod format;

use self::chroot::{Mount, chroot_env, debootstrap_cached, host_ca_bundle, shorten_pip_error, unmount_all_under};
use self::format::{ImageSettings, parse_mode, parse_owner};
pub use self::format::{LoadedRecipe, load};

/// What a finished build recorded, keyed by the recipe's key.
#[derive(Serialize, Deserialize)]
struct Built {
    base: BaseImage,
    seconds: f64,
}

pub struct Outcome {
    pub base: BaseImage,
    pub built: bool,
    pub seconds: f64,
    /// The name the image has in the store's index (`oci:target/xtask/oci:NAME` reads it).
    pub store_name: String,
}

fn store_name(loaded: &LoadedRecipe) -> String {
    format!("xtask-base/{}:{}", loaded.name, &loaded.key[..16])
}

/// The base named `name`: from the store when its recipe is unchanged, else built now.
pub fn ensure(project: &Project, store: &Store, name: &str, mtime: u64, opts: &BuildOpts) -> Result<Outcome> {
    let started = Instant::now();
    let loaded = load(project, name, mtime)?;
    if !opts.force
        && let Some(done) = store.cache_get::<Built>("base-recipes", &loaded.key)
        && [&done.base.manifest, &done.base.config]
            .into_iter()
            .chain(done.base.layers.iter())
            .all(|d| d.sha256().is_ok_and(|digest| store.blob_of_size(&digest, d.size())))
    {
        return Ok(Outcome {
            base: done.base,
            built: false,
            seconds: started.elapsed().as_secs_f64(),
            store_name: store_name(&loaded),
        });
    }
    let base = build(project, store, &loaded, mtime, opts)?;
    let seconds = started.elapsed().as_secs_f64();
    store.cache_put("base-recipes", &loaded.key, &Built { base: base.clone(), seconds })?;
    if opts.update_lock {
        // The new lock pins what this build installed: the next build with it is this one.
        let relocked = load(project, name, mtime)?;
        store.cache_put("base-recipes", &relocked.key, &Built { base: base.clone(), seconds })?;
        store.tag(&store_name(&relocked), &base.manifest)?;
        return Ok(Outcome { base, built: true, seconds, store_name: store_name(&relocked) });
    }
    Ok(Outcome { base, built: true, seconds, store_name: store_name(&loaded) })
}

#[derive(Clone, Debug, Default)]
pub struct BuildOpts {
    pub force: bool,
    pub update_lock: bool,
    /// Print a line per step.
    pub human: bool,
}

pub(super) fn step(opts: &BuildOpts, msg: &str) {
    if opts.human {
        println!("  {msg}");
    } else {
        eprintln!("base: {msg}");
    }
}

fn build(project: &Project, store: &Store, loaded: &LoadedRecipe, mtime: u64, opts: &BuildOpts) -> Result<BaseImage> {
    let r = &loaded.recipe;
    let rel = project.rel(&loaded.path);
    if !process::is_root() {
        bail!(
            "building the base from {rel} needs root (debootstrap and chroot); run `sudo -E cargo xtask base`, or use the official image: set base = \"docker://docker.io/apache/airflow:<version>\" in docker/images.toml"
        );
    }
    let debootstrap = process::require("debootstrap", "sudo apt-get install debootstrap (or run .ci/setup)")?;
    let work = project.work_dir().join("base-build").join(&loaded.name);
    let rootfs = work.join("rootfs");
    let log = work.join("build.log");
    if work.exists() {
        // A previous build was interrupted: nothing in it is trusted.
        unmount_all_under(&rootfs);
        fs::remove_dir_all(&work).with_context(|| format!("cannot clear {}", work))?;
    }
    fs::create_dir_all(&work)?;
    let result = (|| -> Result<BaseImage> {
        debootstrap_cached(&debootstrap, &r.debian, &rootfs, &log, opts)?;

        let _proc = Mount::proc(&rootfs.join("proc"))?;
        if Utf8Path::new("/etc/resolv.conf").exists() {
            let _ = fs::remove_file(rootfs.join("etc/resolv.conf"));
            fs::copy("/etc/resolv.conf", rootfs.join("etc/resolv.conf"))
                .context("cannot copy /etc/resolv.conf into the chroot")?;
        }
        let ca_inside = match host_ca_bundle() {
            Some(ca) => {
                fs::copy(&ca, rootfs.join("tmp/xtask-ca.pem")).context("cannot copy the CA bundle into the chroot")?;
                Some("/tmp/xtask-ca.pem")
            }
            None => None,
        };
        let env = chroot_env(ca_inside);
        let in_chroot = |what: &str, cmd: &[&str]| -> Result<()> {
            let mut args: Vec<String> = vec![rootfs.to_string(), "/usr/bin/env".into(), "-i".into()];
            args.extend(env.iter().cloned());
            args.extend(cmd.iter().map(|s| s.to_string()));
            process::run_logged(duct::cmd("chroot", &args), &log, what)
        };
        // Package scripts must not try to start services in the chroot.
        let policy = rootfs.join("usr/sbin/policy-rc.d");
        fs::write(&policy, "#!/bin/sh\nexit 101\n")?;
        fs::set_permissions(&policy, fs::Permissions::from_mode(0o755))?;
        // The declared layout first, so steps can use it (enable a unit file, say).
        lay_out(&rootfs, &r.image, &rel)?;
        for g in &r.go {
            step(opts, &format!("go install {}@{}", g.package, g.version));
            let built = crate::gobuild::go_install(&g.package, &g.version, &mut |l| step(opts, l))
                .with_context(|| format!("{rel}: [[go]] {}", g.package))?;
            let to = rootfs.join(g.path.trim_start_matches('/'));
            if let Some(dir) = to.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::copy(&built, &to).with_context(|| format!("cannot copy {built} to {} in the image", g.path))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
        }
        for (i, st) in r.step.iter().enumerate() {
            step(opts, &format!("step {}: {}", i + 1, st.run));
            in_chroot(&format!("step {} of {rel} (`{}`)", i + 1, st.run), &["/bin/sh", "-euc", &st.run])?;
        }
        fs::remove_file(&policy)?;
        if let Some(py) = &r.python {
            in_chroot("python3 -m venv", &["python3", "-m", "venv", &py.venv])?;
            let pip = format!("{}/bin/pip", py.venv);
            let mut install: Vec<String> = vec![pip.clone(), "install".into()];
            // --update-lock resolves afresh: the old lock may forbid what a new requirement needs.
            if let Some((path, _)) = loaded.constraints.as_ref().filter(|_| !opts.update_lock) {
                fs::copy(path, rootfs.join("tmp/constraints.txt"))?;
                install.push("--constraint".into());
                install.push("/tmp/constraints.txt".into());
            }
            install.extend(py.requirements.iter().cloned());
            step(opts, &format!("pip install {}", py.requirements.join(" ")));
            let t = Instant::now();
            let install_refs: Vec<&str> = install.iter().map(String::as_str).collect();
            in_chroot("pip install", &install_refs).map_err(|e| shorten_pip_error(e, &log))?;
            step(opts, &format!("pip install done in {:.0} s", t.elapsed().as_secs_f64()));
            if opts.update_lock {
                let target = loaded
                    .constraints
                    .as_ref()
                    .map(|(p, _)| p.clone())
                    .unwrap_or_else(|| loaded.path.with_extension("lock"));
                let freeze = duct::cmd("chroot", [rootfs.to_string(), pip.clone(), "freeze".into(), "--all".into()])
                    .read()
                    .context("pip freeze failed")?;
                let header = format!(
                    "# Every package of the {} base, as `cargo xtask base --update-lock` resolved it.\n",
                    loaded.name
                );
                crate::fsutil::write_atomic(&target, format!("{header}{freeze}\n").as_bytes())?;
                step(opts, &format!("wrote {}", project.rel(&target)));
            }
        }
        drop(_proc);

        for junk in ["var/cache/apt/archives", "var/lib/apt/lists", "tmp", "root/.cache", "var/log"] {
            let dir = rootfs.join(junk);
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    let _ = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
                }
            }
        }
        let _ = fs::remove_file(rootfs.join("etc/resolv.conf"));

        step(opts, "writing layers");
        write_image(store, loaded, &rootfs, mtime)
    })();
    unmount_all_under(&rootfs);
    match &result {
        Ok(_) => {
            let _ = fs::remove_dir_all(&work);
        }
        Err(_) => {
            // Keep only the log, for the user to read.
            let _ = fs::remove_dir_all(&rootfs);
        }
    }
    result
}

/// The directories and files the recipe declares, with their owners and modes.
fn lay_out(rootfs: &Utf8Path, img: &ImageSettings, rel: &str) -> Result<()> {
    for d in &img.dir {
        let p = rootfs.join(d.path.trim_start_matches('/'));
        fs::create_dir_all(&p).with_context(|| format!("cannot create {} in the image", d.path))?;
        let (uid, gid) = parse_owner(&d.owner, rel)?;
        std::os::unix::fs::chown(&p, Some(uid), Some(gid))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(parse_mode(&d.mode, rel)?))?;
    }
    for f in &img.file {
        let p = rootfs.join(f.path.trim_start_matches('/'));
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(&p, &f.content).with_context(|| format!("cannot write {} in the image", f.path))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(parse_mode(&f.mode, rel)?))?;
    }
    Ok(())
}

fn write_image(store: &Store, loaded: &LoadedRecipe, rootfs: &Utf8Path, mtime: u64) -> Result<BaseImage> {
    let img = &loaded.recipe.image;
    let venv_rel = loaded.recipe.python.as_ref().map(|p| p.venv.trim_start_matches('/').to_string());
    let plan = |source: Utf8PathBuf, target: String, parents: Vec<(String, Meta)>, prune: Vec<String>| LayerPlan {
        name: if target.is_empty() { "os".into() } else { "python".into() },
        source_label: source.to_string(),
        source,
        context: rootfs.to_path_buf(),
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
        rootfs: true,
        prune,
    };
    // Layer 1: the operating system and the declared layout; layer 2 (with [python]): the
    // virtualenv, which changes with every Airflow upgrade while the OS layer stays.
    let mut prune: Vec<String> = ["proc", "sys", "dev", "run", "tmp"].map(String::from).to_vec();
    prune.extend(venv_rel.clone());
    let mut plans = vec![plan(rootfs.to_path_buf(), String::new(), vec![], prune)];
    if let Some(venv_rel) = &venv_rel {
        use std::os::unix::fs::MetadataExt;
        let mut parents = Vec::new();
        for dir in super::ancestors(venv_rel) {
            let md = fs::symlink_metadata(rootfs.join(&dir))?;
            parents.push((dir, Meta { uid: md.uid().into(), gid: md.gid().into(), mode: md.mode() & 0o7777, mtime }));
        }
        plans.push(plan(rootfs.join(venv_rel), venv_rel.clone(), parents, vec![]));
    }
    let mut blobs: Vec<LayerBlob> = Vec::new();
    for p in &plans {
        let inputs = layer::scan(p)?;
        blobs.push(layer::write(p, &inputs, store, &mut |_| {})?);
    }
    let created = rfc3339(mtime)?;
    let mut env: Vec<String> =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(), "LANG=C.UTF-8".into()];
    for (k, v) in &img.env {
        env.retain(|e| !e.starts_with(&format!("{k}=")));
        env.push(format!("{k}={v}"));
    }
    let mut labels = img.labels.clone();
    labels.insert("io.xtask.base.recipe".into(), format!("docker/base/{}.toml", loaded.name));
    labels.insert("io.xtask.base.recipe-key".into(), loaded.key[..16].to_string());
    let mut cfg = oci_spec::image::Config::default();
    cfg.set_user(Some(img.user.clone()))
        .set_env(Some(env))
        .set_labels(Some(labels.into_iter().collect()))
        .set_entrypoint((!img.entrypoint.is_empty()).then(|| img.entrypoint.clone()))
        .set_cmd((!img.cmd.is_empty()).then(|| img.cmd.clone()))
        .set_working_dir(img.workdir.clone());
    let step = |created_by: String| {
        let mut h = oci_spec::image::History::default();
        h.set_created(Some(created.clone())).set_created_by(Some(created_by));
        h
    };
    let mut history =
        vec![step(format!("debootstrap {} + {} steps", loaded.recipe.debian.suite, loaded.recipe.step.len()))];
    if let Some(py) = &loaded.recipe.python {
        history.push(step(format!("pip install {}", py.requirements.join(" "))));
    }
    // debootstrap builds for this machine's architecture.
    let mut config = oci_spec::image::ImageConfiguration::default();
    config
        .set_architecture(crate::oci::host_platform().architecture().clone())
        .set_os(crate::oci::Os::Linux)
        .set_created(Some(created.clone()))
        .set_config(Some(cfg))
        .set_history(Some(history));
    config.rootfs_mut().set_diff_ids(blobs.iter().map(|b| b.diff_id.to_string()).collect());
    let config_desc = store.put_json(MediaType::ImageConfig, &config)?;
    let layers: Vec<Descriptor> =
        blobs.iter().map(|b| crate::oci::descriptor(b.media_type.clone(), &b.digest, b.size)).collect();
    let manifest = crate::oci::image::oci_manifest(config_desc.clone(), layers.clone(), None);
    let manifest_desc = store.put_json(MediaType::ImageManifest, &manifest)?;
    store.tag(&store_name(loaded), &manifest_desc)?;
    Ok(BaseImage {
        reference: format!("xtask-base:{}", loaded.name),
        manifest: manifest_desc,
        config: config_desc,
        layers,
        diff_ids: blobs.iter().map(|b| b.diff_id.clone()).collect(),
        base_name: None,
    })
}
