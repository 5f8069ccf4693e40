//! Programs built from their Go modules (the Go module proxy, or the GOPROXY the user
//! sets), cached per version outside the repository: what the kind node image, the test
//! cluster and base recipes' `[[go]]` programs share.
//!
//! Everything is built with CGO_ENABLED=0: static binaries run on any image and host alike.

use camino::{Utf8Path, Utf8PathBuf};
use std::fs;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::process;

/// Bumped whenever how a single program is built changes: an older build is made again.
const FORMAT: &str = "go-install-v1";

pub const GO_INSTALL: &str =
    "Go 1.25 or later from https://go.dev/dl (or `apt-get install golang` where it is new enough)";

/// Where the builds are kept: XTASK_COMPONENTS_CACHE, else ~/.cache/xtask/components.
pub fn cache_root() -> Result<Utf8PathBuf> {
    if let Ok(dir) = std::env::var("XTASK_COMPONENTS_CACHE")
        && !dir.is_empty()
    {
        return Ok(Utf8PathBuf::from(dir));
    }
    let base = match std::env::var("XDG_CACHE_HOME") {
        Ok(d) if !d.is_empty() => Utf8PathBuf::from(d),
        _ => Utf8PathBuf::from(
            std::env::var("HOME")
                .context("HOME is not set; set XTASK_COMPONENTS_CACHE to a directory for Go builds")?,
        )
        .join(".cache"),
    };
    Ok(base.join("xtask/components"))
}

/// One program, `go install PACKAGE@VERSION`, built once per version into the cache
/// (`<cache>/go/<package>@<version>/`); returns its path.
pub fn go_install(package: &str, version: &str, say: &mut dyn FnMut(&str)) -> Result<Utf8PathBuf> {
    let name = package.rsplit('/').next().unwrap_or(package);
    let dir = cache_root()?.join("go").join(format!("{}@{version}", package.replace('/', "+")));
    let program = dir.join(name);
    let stamp = dir.join(".built");
    let key = format!("{FORMAT} {package}@{version}");
    if program.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == key) {
        return Ok(program);
    }
    let go = process::require("go", GO_INSTALL)?;
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir}"))?;
    let log = dir.join("build.log");
    let _ = fs::remove_file(&log);
    let started = Instant::now();
    say(&format!("building {package}@{version} from its Go module (once per version; log {log})"));
    process::run_logged(
        go_cmd(&go, &["install", "-trimpath", "-ldflags=-s -w", &format!("{package}@{version}")])
            .env("GOBIN", &dir)
            .env("GOFLAGS", "-buildvcs=false"),
        &log,
        &format!("go install {package}@{version}"),
    )?;
    if !program.is_file() {
        bail!("`go install {package}@{version}` made no program {program}; is {package} a main package?");
    }
    crate::fsutil::write_atomic(&stamp, format!("{key}\n").as_bytes())?;
    say(&format!("built {name} in {:.0} s, cached in {dir}", started.elapsed().as_secs_f64()));
    Ok(program)
}

pub fn go_cmd<S: AsRef<str>>(go: &Utf8Path, args: &[S]) -> duct::Expression {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    duct::cmd(go.as_std_path(), args).env("CGO_ENABLED", "0")
}
