//! Running the external programs xtask cannot do without (debootstrap, kind, docker CLI
//! fallbacks, python): checked before use, with how to install them when missing.

use camino::{Utf8Path, Utf8PathBuf};
use std::fs;

use anyhow::{Context, Result, bail};

/// The full path of `program` on PATH, if any.
pub fn find(program: &str) -> Option<Utf8PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter_map(|d| Utf8PathBuf::from_path_buf(d).ok())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The path of `program`, or an error saying how to install it.
pub fn require(program: &str, install: &str) -> Result<Utf8PathBuf> {
    find(program).with_context(|| format!("`{program}` is not installed (or not on PATH); install it with: {install}"))
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Utf8Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `expr` with stdout and stderr appended to `log`; on failure the error carries the
/// log's last lines and its path.
pub fn run_logged(expr: duct::Expression, log: &Utf8Path, what: &str) -> Result<()> {
    let file =
        fs::OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("cannot open {}", log))?;
    tracing::debug!(what, ?expr, log = %log, "running");
    let out = expr
        .stdin_null()
        .stderr_to_stdout()
        .stdout_file(file)
        .unchecked()
        .run()
        .with_context(|| format!("cannot start {what}"))?;
    tracing::debug!(what, status = %out.status, "finished");
    if !out.status.success() {
        bail!("{what} failed ({}); last lines of {}:\n{}", out.status, log, tail(log, 15));
    }
    Ok(())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs `expr` and returns its standard output, killing it if it has not finished within
/// `limit`: the error names the program and the time it was given.
pub fn read_bounded(expr: duct::Expression, program: &str, limit: std::time::Duration) -> Result<String> {
    let handle = expr.stdout_capture().unchecked().start().with_context(|| format!("cannot start `{program}`"))?;
    match handle.wait_timeout(limit).with_context(|| format!("cannot wait for `{program}`"))? {
        Some(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Some(out) => bail!("`{program}` failed ({})", out.status),
        None => {
            let _ = handle.kill();
            bail!("`{program}` did not finish within {}s and was stopped", limit.as_secs())
        }
    }
}
