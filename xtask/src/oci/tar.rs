//! A deterministic tar writer (ustar headers, PAX records where ustar cannot hold a value)
//! and the path checks applied to every tar entry we read.
//!
//! Written by hand rather than through the `tar` crate's builder so that every byte of a
//! header is decided here: empty user and group names, no device numbers, no access
//! times, one fixed name for PAX headers. The same entries always give the same bytes.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// Ownership, permission bits and time of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub uid: u64,
    pub gid: u64,
    pub mode: u32,
    pub mtime: u64,
}

pub struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter { out }
    }

    /// A directory entry; `path` is relative, without a leading or trailing slash.
    pub fn dir(&mut self, path: &str, meta: Meta) -> io::Result<()> {
        self.header(&format!("{path}/"), EntryKind::Dir, meta, 0, "")
    }

    pub fn symlink(&mut self, path: &str, target: &str, meta: Meta) -> io::Result<()> {
        self.header(path, EntryKind::Symlink, meta, 0, target)
    }

    /// A regular file of exactly `size` bytes read from `content`. A source that yields
    /// fewer or more bytes (a file changed while being read) is an error.
    pub fn file(&mut self, path: &str, meta: Meta, size: u64, content: &mut dyn Read) -> io::Result<()> {
        self.header(path, EntryKind::File, meta, size, "")?;
        let copied = io::copy(&mut content.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path} shrank from {size} to {copied} bytes while being read"),
            ));
        }
        let mut probe = [0u8; 1];
        if content.read(&mut probe)? != 0 {
            return Err(io::Error::other(format!("{path} grew beyond {size} bytes while being read")));
        }
        self.pad(size)
    }

    /// Writes the end-of-archive marker and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; BLOCK * 2])?;
        Ok(self.out)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    fn header(&mut self, path: &str, kind: EntryKind, meta: Meta, size: u64, link: &str) -> io::Result<()> {
        let mut pax: Vec<(&str, String)> = Vec::new();
        if path.len() > 100 {
            pax.push(("path", path.to_string()));
        }
        if link.len() > 100 {
            pax.push(("linkpath", link.to_string()));
        }
        if size > 0o777_7777_7777 {
            pax.push(("size", size.to_string()));
        }
        if meta.uid > 0o777_7777 {
            pax.push(("uid", meta.uid.to_string()));
        }
        if meta.gid > 0o777_7777 {
            pax.push(("gid", meta.gid.to_string()));
        }
        if !pax.is_empty() {
            let mut records = Vec::new();
            for (key, value) in &pax {
                records.extend_from_slice(&pax_record(key, value));
            }
            let pax_meta = Meta { uid: 0, gid: 0, mode: 0o644, mtime: meta.mtime };
            let block = ustar_block("././@PaxHeader", b'x', pax_meta, records.len() as u64, "");
            self.out.write_all(&block)?;
            self.out.write_all(&records)?;
            self.pad(records.len() as u64)?;
        }
        let flag = match kind {
            EntryKind::File => b'0',
            EntryKind::Dir => b'5',
            EntryKind::Symlink => b'2',
        };
        let meta = Meta { uid: meta.uid.min(0o777_7777), gid: meta.gid.min(0o777_7777), ..meta };
        let block = ustar_block(truncate(path, 100), flag, meta, size.min(0o777_7777_7777), truncate(link, 100));
        self.out.write_all(&block)
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One PAX record: `"<len> <key>=<value>\n"` where len counts the whole record.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // space, '=', newline
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    format!("{len} {key}={value}\n").into_bytes()
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

fn ustar_block(name: &str, flag: u8, meta: Meta, size: u64, link: &str) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(meta.mode & 0o7777));
    octal(&mut h[108..116], meta.uid);
    octal(&mut h[116..124], meta.gid);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], meta.mtime);
    h[156] = flag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0);
    octal(&mut h[337..345], 0);
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}");
    h[148..154].copy_from_slice(s.as_bytes());
    h[154] = 0;
    h[155] = b' ';
    h
}

/// Why a path read from a tar entry is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnsafePath {
    #[error("entry `{0}` is an absolute path")]
    Absolute(String),
    #[error("entry `{0}` escapes the root with `..`")]
    Escapes(String),
}

/// Normalises a path read from a tar entry (drops `./` and trailing slashes) and refuses
/// one that is absolute or climbs out of the root.
pub fn safe_entry_path(raw: &str) -> Result<String, UnsafePath> {
    if raw.starts_with('/') {
        return Err(UnsafePath::Absolute(raw.to_string()));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(UnsafePath::Escapes(raw.to_string())),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta { uid: 50000, gid: 0, mode: 0o644, mtime: 946684800 }
    }

    fn read_back(bytes: &[u8]) -> Vec<(String, u64, u64, u32, Option<String>)> {
        let mut ar = ::tar::Archive::new(bytes);
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mode().unwrap(),
                    e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn long_and_unicode_names_round_trip_through_a_standard_reader() {
        let long = format!("opt/airflow/dags/{}/ünïcødé file.py", "d".repeat(120));
        let link_target = "x".repeat(150);
        let mut w = TarWriter::new(Vec::new());
        w.dir("opt", Meta { uid: 0, mode: 0o755, ..meta() }).unwrap();
        w.file(&long, meta(), 5, &mut &b"hello"[..]).unwrap();
        w.symlink("opt/link", &link_target, meta()).unwrap();
        let bytes = w.finish().unwrap();
        let entries = read_back(&bytes);
        assert_eq!(entries[0].0, "opt/");
        assert_eq!(entries[0].1, 0);
        assert_eq!(entries[1].0, long);
        assert_eq!((entries[1].1, entries[1].2, entries[1].3), (50000, 0, 0o644));
        assert_eq!(entries[2].4.as_deref(), Some(link_target.as_str()));
    }

    #[test]
    fn a_file_that_changes_size_while_read_is_an_error() {
        let mut w = TarWriter::new(Vec::new());
        let err = w.file("a", meta(), 10, &mut &b"short"[..]).unwrap_err();
        assert!(err.to_string().contains("shrank"));
        let mut w = TarWriter::new(Vec::new());
        let err = w.file("a", meta(), 2, &mut &b"longer"[..]).unwrap_err();
        assert!(err.to_string().contains("grew"));
    }

    #[test]
    fn same_entries_give_same_bytes() {
        let build = || {
            let mut w = TarWriter::new(Vec::new());
            w.dir("a", meta()).unwrap();
            w.file("a/b", meta(), 3, &mut &b"abc"[..]).unwrap();
            w.finish().unwrap()
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record("path", &"a".repeat(95));
        let s = String::from_utf8(r.clone()).unwrap();
        let len: usize = s.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(len, r.len());
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(safe_entry_path("./opt/airflow/").unwrap(), "opt/airflow");
        assert!(matches!(safe_entry_path("/etc/passwd"), Err(UnsafePath::Absolute(_))));
        assert!(matches!(safe_entry_path("opt/../../etc"), Err(UnsafePath::Escapes(_))));
    }
}
