//! Small filesystem helpers shared by every module that writes results.

use camino::{Utf8Path, Utf8PathBuf};
use std::fs::{self, File};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// `path` as UTF-8, or an error naming it with the fix: the project's paths are UTF-8,
/// refused once here when they are not.
pub fn utf8(path: std::path::PathBuf) -> Result<Utf8PathBuf> {
    Utf8PathBuf::from_path_buf(path)
        .map_err(|p| anyhow::anyhow!("{} is not valid UTF-8; rename it (xtask works with UTF-8 paths)", p.display()))
}

/// The current directory, as UTF-8.
pub fn current_dir() -> Result<Utf8PathBuf> {
    utf8(std::env::current_dir().context("cannot read the current directory")?)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique name for a temporary sibling of `path`, in the same directory (so a rename is
/// atomic). The `.partial` suffix marks it as never to be read.
pub fn temp_sibling(path: &Utf8Path) -> Utf8PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(str::to_string).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}-{n}.partial", std::process::id()))
}

/// Writes `bytes` to `path` through a temporary file and a rename: a reader sees the old
/// content or the new one, never a part.
pub fn write_atomic(path: &Utf8Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir))?;
    }
    let tmp = temp_sibling(path);
    let result = (|| -> Result<()> {
        let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp))?;
        f.write_all(bytes).with_context(|| format!("cannot write {}", tmp))?;
        f.sync_all().ok();
        fs::rename(&tmp, path).with_context(|| format!("cannot move {} to {}", tmp, path))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A file being written under a temporary name; [`AtomicFile::commit`] renames it into
/// place, dropping it without commit removes it.
pub struct AtomicFile {
    tmp: Utf8PathBuf,
    dest: Utf8PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    pub fn create(dest: &Utf8Path) -> Result<AtomicFile> {
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir))?;
        }
        let tmp = temp_sibling(dest);
        let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp))?;
        Ok(AtomicFile { tmp, dest: dest.to_path_buf(), file: Some(file) })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is present until commit")
    }

    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("commit once");
        file.sync_all().with_context(|| format!("cannot flush {}", self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.dest).with_context(|| format!("cannot move {} to {}", self.tmp, self.dest))?;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Human-readable byte count (powers of 1000, like docker and skopeo print).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// Shows `path` relative to `base` when it lies under it, else as is.
pub fn display_rel(path: &Utf8Path, base: &Utf8Path) -> String {
    path.strip_prefix(base).unwrap_or(path).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_content_and_leaves_no_temp() {
        let dir = camino_tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_atomic_file_leaves_nothing() {
        let dir = camino_tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar");
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.file().write_all(b"half").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn human_bytes_uses_decimal_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }
}
