//! The root filesystem's construction site: debootstrap (cached per suite and package
//! list), mounts undone on drop, and the environment commands run with in the chroot.

use camino::{Utf8Path, Utf8PathBuf};
use rustix::mount::{MountFlags, UnmountFlags};
use std::fs;

use anyhow::{Context, Result, anyhow};
use sha2::{Digest as _, Sha256};

use crate::process;
use std::time::Instant;

use super::format::Debian;
use super::{BuildOpts, step};

/// A mount that is undone when dropped, whatever happens in between.
pub(super) struct Mount(Utf8PathBuf);

impl Mount {
    pub(super) fn proc(target: &Utf8Path) -> Result<Mount> {
        rustix::mount::mount("proc", target.as_std_path(), "proc", MountFlags::empty(), None)
            .with_context(|| format!("cannot mount proc on {}", target))?;
        Ok(Mount(target.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Detaching never blocks.
        let _ = rustix::mount::unmount(self.0.as_std_path(), UnmountFlags::DETACH);
    }
}

/// Environment variables passed into the chroot: nothing of the host's but what pip needs
/// to reach the package index the way the host does.
pub(super) fn chroot_env(ca_inside: Option<&str>) -> Vec<String> {
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "HOME=/root".into(),
        "LANG=C.UTF-8".into(),
        "DEBIAN_FRONTEND=noninteractive".into(),
        "PIP_DISABLE_PIP_VERSION_CHECK=1".into(),
        "PIP_NO_CACHE_DIR=1".into(),
        "PIP_PROGRESS_BAR=off".into(),
    ];
    for key in [
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_TRUSTED_HOST",
        "PIP_DEFAULT_TIMEOUT",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    ] {
        if let Ok(v) = std::env::var(key) {
            env.push(format!("{key}={v}"));
        }
    }
    if let Some(ca) = ca_inside {
        for key in ["PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"] {
            env.push(format!("{key}={ca}"));
        }
    }
    env
}

/// The host's CA bundle, which knows any TLS-intercepting proxy the host trusts.
pub(super) fn host_ca_bundle() -> Option<Utf8PathBuf> {
    for var in ["PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"] {
        if let Ok(p) = std::env::var(var)
            && Utf8Path::new(&p).is_file()
        {
            return Some(Utf8PathBuf::from(p));
        }
    }
    let p = Utf8PathBuf::from("/etc/ssl/certs/ca-certificates.crt");
    p.is_file().then_some(p)
}

/// Where debootstrap's output is kept between builds: outside the repository (it is the
/// same for every checkout), keyed by the [debian] section.
pub(super) fn debootstrap_cache_dir() -> Utf8PathBuf {
    std::env::var("XTASK_CACHE")
        .ok()
        .map(Utf8PathBuf::from)
        .or_else(|| std::env::var("XDG_CACHE_HOME").ok().map(|d| Utf8PathBuf::from(d).join("xtask")))
        .or_else(|| std::env::var("HOME").ok().map(|h| Utf8PathBuf::from(h).join(".cache/xtask")))
        .unwrap_or_else(|| Utf8PathBuf::from("/var/cache/xtask"))
        .join("debootstrap")
}

/// A fresh root filesystem from debootstrap, or a copy of the one an earlier build made
/// from the same [debian] section (debootstrap takes most of a minute; a copy seconds).
pub(super) fn debootstrap_cached(
    debootstrap: &Utf8Path,
    d: &Debian,
    rootfs: &Utf8Path,
    log: &Utf8Path,
    opts: &BuildOpts,
) -> Result<()> {
    let key = {
        let mut h = Sha256::new();
        h.update(format!("{}\n{}\n{}\n{}\n", d.suite, d.mirror, d.variant, d.packages.join(",")));
        hex::encode(&h.finalize()[..12])
    };
    let cached = debootstrap_cache_dir().join(&key);
    if cached.join("etc/debian_version").is_file() {
        step(opts, &format!("debootstrap {} ({}): from the cache {}", d.suite, d.variant, cached));
        return process::run_logged(
            duct::cmd("cp", ["-a".as_ref(), cached.as_os_str(), rootfs.as_os_str()]),
            log,
            "copying the cached root filesystem",
        );
    }
    step(opts, &format!("debootstrap {} ({})", d.suite, d.variant));
    let mut args: Vec<String> = vec![format!("--variant={}", d.variant)];
    if !d.packages.is_empty() {
        args.push(format!("--include={}", d.packages.join(",")));
    }
    args.push(d.suite.clone());
    args.push(rootfs.to_string());
    args.push(d.mirror.clone());
    let t = Instant::now();
    process::run_logged(duct::cmd(debootstrap.as_std_path(), &args), log, "debootstrap")?;
    step(opts, &format!("debootstrap done in {:.0} s", t.elapsed().as_secs_f64()));
    // Keep a copy for the next build: written aside, renamed when complete.
    let parent = debootstrap_cache_dir();
    if fs::create_dir_all(&parent).is_ok() {
        let tmp = parent.join(format!(".{key}.{}.partial", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        if process::run_logged(
            duct::cmd("cp", ["-a".as_ref(), rootfs.as_os_str(), tmp.as_os_str()]),
            log,
            "caching the root filesystem",
        )
        .is_ok()
        {
            let _ = fs::rename(&tmp, &cached);
        }
        let _ = fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// pip prints pages; the lines that say what went wrong start with "ERROR:".
pub(super) fn shorten_pip_error(err: anyhow::Error, log: &Utf8Path) -> anyhow::Error {
    let text = fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("ERROR:")).collect();
    if errors.is_empty() {
        return err;
    }
    anyhow!(
        "pip install failed:\n  {}\n(check the versions in the [python] section of the recipe; full log: {})",
        errors.join("\n  "),
        log
    )
}

/// Unmounts whatever a crashed build left mounted below `root`.
pub(super) fn unmount_all_under(root: &Utf8Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else { return };
    let root = root.to_string();
    let mut targets: Vec<&str> =
        mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|t| t.starts_with(&root)).collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = rustix::mount::unmount(t, UnmountFlags::DETACH);
    }
}
