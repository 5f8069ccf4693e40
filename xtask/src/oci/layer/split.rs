//! A directory of a git work tree as two layers: the files as the last commit (HEAD) has
//! them, and what the working tree changed since (changed and new files, deletions as
//! whiteouts). A one-DAG edit then rebuilds, ships and unpacks a one-file layer while the
//! committed layer, thousands of files, stays the blob every node already has.
//!
//! Both layers depend only on HEAD's tree and the working tree, so the same checkout gives
//! the same digests on any machine; with a clean working tree the committed layer is byte
//! for byte the single layer `build_one` writes. When the changes grow past a quarter of
//! the directory, or git cannot say what changed, the directory goes back to one layer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{BuiltLayer, Input, InputKind, LAYER_FORMAT, LayerBlob, LayerPlan, Part, build_one, cache_key, glob_match};
use crate::oci::store::Store;

/// How long one git command may take before the directory is built as one layer.
const GIT_LIMIT: Duration = Duration::from_secs(30);
/// The changes stay a layer of their own while they are at most this share of the bytes.
const FOLD_SHARE: u64 = 4;
/// Committed content no longer in the working tree is read from git into memory, up to this.
const MAX_GIT_BYTES: u64 = 64 << 20;

/// What an earlier build decided for the same working tree and HEAD.
#[derive(Serialize, Deserialize)]
enum Outcome {
    Fold,
    Split { committed: CachedPart, changes: Option<CachedPart> },
}

/// One built part as the outcome cache keeps it: enough to report it again.
#[derive(Serialize, Deserialize)]
struct CachedPart {
    blob: LayerBlob,
    input_bytes: u64,
    files: usize,
}

/// One file or symlink of HEAD's tree under the layer's source.
struct Committed {
    rel: String,
    exec: bool,
    symlink: bool,
    oid: String,
    size: u64,
}

/// The two layers, or None when the directory should be one layer.
pub(super) fn build(
    plan: &LayerPlan,
    inputs: &[Input],
    store: &Store,
    force: bool,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<Option<Vec<BuiltLayer>>> {
    let started = Instant::now();
    let inputs_key = cache_key(plan, inputs);
    // A build with nothing changed finds its outcome under HEAD's commit, read from the
    // repository's files: no git process.
    let head_key =
        head_commit(&plan.source).map(|(commit, rel)| sha(&[LAYER_FORMAT, "split-head", &commit, &rel, &inputs_key]));
    if !force
        && let Some(key) = &head_key
        && let Some(outcome) = store.cache_get::<Outcome>("split", key)
        && let Some(built) = reuse(outcome, store, started)
    {
        return Ok(built);
    }
    let Some(InGit { prefix, tree }) = head_tree(plan) else { return Ok(None) };
    let outcome_key = sha(&[LAYER_FORMAT, "split", &tree, &inputs_key]);
    if !force && let Some(outcome) = store.cache_get::<Outcome>("split", &outcome_key) {
        if let Some(key) = &head_key {
            store.cache_put("split", key, &outcome)?;
        }
        if let Some(built) = reuse(outcome, store, started) {
            return Ok(built);
        }
    }
    let remember = |outcome: &Outcome| -> Result<()> {
        store.cache_put("split", &outcome_key, outcome)?;
        if let Some(key) = &head_key {
            store.cache_put("split", key, outcome)?;
        }
        Ok(())
    };
    let Some(split) = plan_split(plan, inputs, &prefix)? else {
        remember(&Outcome::Fold)?;
        return Ok(None);
    };

    let excluded = plan.exclude.join("\0");
    let committed_key = sha(&[LAYER_FORMAT, "committed", &tree, &excluded, &cache_key(plan, &[])]);
    let (blob, reused) = match store.cache_get::<LayerBlob>("layers", &committed_key) {
        Some(blob) if !force && store.blob_of_size(&blob.digest, blob.size) => (blob, true),
        _ => {
            let Some(entries) = committed_inputs(plan, &split)? else {
                remember(&Outcome::Fold)?;
                return Ok(None);
            };
            let blob = super::write(plan, &entries, store, on_bytes)?;
            // The layer is filed under HEAD's tree: it must not hold an edit made while it
            // was written.
            if let Some(i) =
                entries.iter().find(|i| i.kind == InputKind::File && i.data.is_none() && changed_since_scan(i))
            {
                anyhow::bail!("{}/{} changed while the layer was written; build again", plan.source_label, i.rel);
            }
            store.cache_put("layers", &committed_key, &blob)?;
            (blob, false)
        }
    };
    let committed = BuiltLayer {
        part: Part::Committed,
        blob,
        reused,
        input_bytes: split.committed.iter().map(|c| c.size).sum(),
        files: split.committed.iter().filter(|c| !c.symlink).count(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let changes = if split.changes.is_empty() {
        None
    } else {
        Some(build_one(plan, Part::Changes, &split.changes, store, force, Instant::now(), on_bytes)?)
    };
    let cached = |b: &BuiltLayer| CachedPart { blob: b.blob.clone(), input_bytes: b.input_bytes, files: b.files };
    let outcome = Outcome::Split { committed: cached(&committed), changes: changes.as_ref().map(cached) };
    remember(&outcome)?;
    let mut out = vec![committed];
    out.extend(changes);
    Ok(Some(out))
}

/// The layers an earlier build decided on, when their blobs are still in the store:
/// Some(None) for "one layer", Some(Some(parts)) for the split, None to build again.
fn reuse(outcome: Outcome, store: &Store, started: Instant) -> Option<Option<Vec<BuiltLayer>>> {
    match outcome {
        Outcome::Fold => Some(None),
        Outcome::Split { committed, changes } => {
            let present = |c: &CachedPart| store.blob_of_size(&c.blob.digest, c.blob.size);
            if !(present(&committed) && changes.as_ref().is_none_or(present)) {
                return None;
            }
            let reused = |part, c: CachedPart| BuiltLayer {
                part,
                blob: c.blob,
                reused: true,
                seconds: started.elapsed().as_secs_f64(),
                input_bytes: c.input_bytes,
                files: c.files,
            };
            let mut out = vec![reused(Part::Committed, committed)];
            out.extend(changes.map(|c| reused(Part::Changes, c)));
            Some(Some(out))
        }
    }
}

/// HEAD's commit id and the source's path below the top of its work tree, read from the
/// repository's own files (.git, HEAD, the branch's ref or packed-refs) without starting
/// git. None when git's environment points elsewhere or anything is unusual; the git
/// commands decide then.
fn head_commit(source: &Utf8Path) -> Option<(String, String)> {
    const GIT_ENV: [&str; 5] = ["GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"];
    if GIT_ENV.iter().any(|v| std::env::var_os(v).is_some()) {
        return None;
    }
    let source = source.canonicalize_utf8().ok()?;
    let mut top = source.as_path();
    let dot_git = loop {
        let candidate = top.join(".git");
        if candidate.exists() {
            break candidate;
        }
        top = top.parent()?;
    };
    let relative_to = |base: &Utf8Path, p: &str| {
        let p = Utf8PathBuf::from(p.trim());
        if p.is_absolute() { p } else { base.join(p) }
    };
    let git_dir = if dot_git.is_dir() {
        dot_git
    } else {
        // A linked work tree or a submodule: `gitdir: PATH`.
        relative_to(top, std::fs::read_to_string(&dot_git).ok()?.strip_prefix("gitdir:")?)
    };
    let common = match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(c) => relative_to(&git_dir, &c),
        Err(_) => git_dir.clone(),
    };
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let commit = match head.trim().strip_prefix("ref:") {
        None => head.trim().to_string(),
        Some(name) => {
            let name = name.trim();
            if !name.starts_with("refs/") || name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                return None;
            }
            match std::fs::read_to_string(common.join(name)) {
                Ok(id) => id.trim().to_string(),
                Err(_) => std::fs::read_to_string(common.join("packed-refs")).ok()?.lines().find_map(|l| {
                    let (id, n) = l.split_once(' ')?;
                    (n == name).then(|| id.to_string())
                })?,
            }
        }
    };
    let hex = matches!(commit.len(), 40 | 64) && commit.bytes().all(|b| b.is_ascii_hexdigit());
    let rel = source.strip_prefix(top).ok()?.to_string();
    hex.then_some((commit, rel))
}

fn changed_since_scan(i: &Input) -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(&i.abs) {
        Ok(md) => {
            md.len() != i.size || i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()) != i.mtime_ns
        }
        Err(_) => true,
    }
}

fn sha(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\0");
    }
    hex::encode(h.finalize())
}

fn git(plan: &LayerPlan, args: &[&str]) -> Option<String> {
    let mut argv = vec!["-C", plan.source.as_str(), "--no-optional-locks"];
    argv.extend_from_slice(args);
    let expr = duct::cmd("git", argv).stderr_null().env("GIT_OPTIONAL_LOCKS", "0");
    crate::process::read_bounded(expr, "git", GIT_LIMIT).ok()
}

/// Where the source sits in a git work tree whose last commit has it: its path from the
/// top of the work tree ("files/dags/") and the id of its tree in HEAD.
struct InGit {
    prefix: String,
    tree: String,
}

fn head_tree(plan: &LayerPlan) -> Option<InGit> {
    crate::process::find("git")?;
    let out = git(plan, &["rev-parse", "--show-prefix", "--verify", "--quiet", "HEAD:./"])?;
    let mut lines = out.lines();
    let (prefix, tree) = match (lines.next(), lines.next()) {
        // At the top of the work tree the prefix is an empty line.
        (Some(prefix), Some(tree)) => (prefix, tree),
        _ => return None,
    };
    let tree = tree.trim();
    (!tree.is_empty()).then(|| InGit { prefix: prefix.to_string(), tree: tree.to_string() })
}

/// What goes in each layer.
struct Split {
    committed: Vec<Committed>,
    /// Committed files whose bytes the working tree no longer has: read from git.
    from_git: HashSet<String>,
    /// The working tree's inputs by path.
    worktree: HashMap<String, Input>,
    /// The changes layer: changed and new entries, their directories, and whiteouts.
    changes: Vec<Input>,
}

fn plan_split(plan: &LayerPlan, inputs: &[Input], prefix: &str) -> Result<Option<Split>> {
    let Some(listing) = git(plan, &["ls-tree", "-r", "-z", "-l", "HEAD"]) else { return Ok(None) };
    let Some(status) = git(plan, &["status", "--porcelain", "-z", "--untracked-files=no", "--", "."]) else {
        return Ok(None);
    };

    let mut committed = Vec::new();
    for record in listing.split('\0').filter(|r| !r.is_empty()) {
        // "MODE TYPE OID SIZE\tPATH"
        let Some((head, rel)) = record.split_once('\t') else { return Ok(None) };
        let fields: Vec<&str> = head.split_whitespace().collect();
        let [mode, kind, oid, size] = fields[..] else { return Ok(None) };
        if rel.contains('\u{fffd}') || kind != "blob" {
            // A name that is not UTF-8, or a submodule: one layer, as without git.
            return Ok(None);
        }
        if rel.split('/').any(|part| plan.exclude.iter().any(|p| glob_match(p, part))) {
            continue;
        }
        let Ok(size) = size.parse() else { return Ok(None) };
        committed.push(Committed {
            rel: rel.to_string(),
            exec: mode == "100755",
            symlink: mode == "120000",
            oid: oid.to_string(),
            size,
        });
    }
    if committed.is_empty() {
        return Ok(None);
    }
    let dirty = dirty_paths(&status, prefix);
    let worktree: HashMap<String, Input> = inputs.iter().map(|i| (i.rel.clone(), i.clone())).collect();

    // A committed entry is clean when the working tree has the same kind, mode and bytes.
    let is_clean = |c: &Committed| match worktree.get(&c.rel) {
        _ if dirty.contains(c.rel.as_str()) => false,
        Some(Input { kind: InputKind::Symlink(_), .. }) => c.symlink,
        Some(i @ Input { kind: InputKind::File, .. }) => !c.symlink && (i.mode & 0o111 != 0) == c.exec,
        _ => false,
    };
    let clean: HashSet<&str> = committed.iter().filter(|c| is_clean(c)).map(|c| c.rel.as_str()).collect();
    let committed_dirs: BTreeSet<String> = committed.iter().flat_map(|c| parents(&c.rel)).map(str::to_string).collect();

    let mut changes = Vec::new();
    let mut changed_bytes = 0;
    for i in inputs {
        let keep = match i.kind {
            InputKind::Dir => !committed_dirs.contains(&i.rel),
            _ => !clean.contains(i.rel.as_str()),
        };
        if keep {
            changed_bytes += i.size;
            changes.push(i.clone());
        }
    }
    // Deleted: the topmost missing directory, else the path itself. Under a path the
    // working tree turned into a file, the new file replaces the whole committed tree.
    let mut from_git_ids = Vec::new();
    let mut gone = BTreeSet::new();
    for c in &committed {
        if clean.contains(c.rel.as_str()) {
            continue;
        }
        from_git_ids.push(c);
        let mut whiteout = Some(c.rel.clone());
        for dir in parents(&c.rel) {
            match worktree.get(dir).map(|i| &i.kind) {
                Some(InputKind::Dir) => continue,
                None => whiteout = Some(dir.to_string()),
                Some(_) => whiteout = None,
            }
            break;
        }
        if whiteout.as_deref() == Some(c.rel.as_str()) && worktree.contains_key(&c.rel) {
            // Still there, changed: the changes layer's entry replaces it.
            whiteout = None;
        }
        gone.extend(whiteout);
    }
    changes.extend(gone.iter().map(|rel| made(plan, rel, InputKind::Whiteout, 0, None)));
    // Every directory the changes reach is in their layer, so it applies onto any lower.
    let have: HashSet<String> = changes.iter().map(|i| i.rel.clone()).collect();
    let mut needed: BTreeSet<String> = BTreeSet::new();
    for i in &changes {
        needed.extend(parents(&i.rel).filter(|d| !have.contains(*d)).map(str::to_string));
    }
    changes.extend(needed.iter().filter_map(|d| worktree.get(d).cloned()));

    changes.sort_by(|a, b| written(a).as_bytes().cmp(written(b).as_bytes()));

    // Folded back into one layer once the changes are a large part of the directory.
    let total: u64 = inputs.iter().map(|i| i.size).sum();
    let from_git_bytes: u64 = from_git_ids.iter().map(|c| c.size).sum();
    if changed_bytes * FOLD_SHARE > total || from_git_bytes > MAX_GIT_BYTES || from_git_bytes * FOLD_SHARE > total {
        return Ok(None);
    }
    // A committed symlink's target must be checked like the working tree's.
    if from_git_ids.iter().any(|c| c.symlink) {
        return Ok(None);
    }
    let from_git: HashSet<String> = from_git_ids.iter().map(|c| c.rel.clone()).collect();
    Ok(Some(Split { committed, from_git, worktree, changes }))
}

/// The paths `git status --porcelain -z` names, relative to the source directory. Each
/// record is "XY PATH"; a rename or copy is followed by a record of the path it came from.
fn dirty_paths<'a>(status: &'a str, prefix: &str) -> HashSet<&'a str> {
    let mut out = HashSet::new();
    let mut records = status.split('\0').filter(|r| !r.is_empty());
    while let Some(record) = records.next() {
        let (xy, path) = (record.get(..2).unwrap_or_default(), record.get(3..).unwrap_or_default());
        let mut paths = vec![path];
        if xy.contains('R') || xy.contains('C') {
            paths.extend(records.next());
        }
        out.extend(paths.into_iter().filter_map(|p| p.strip_prefix(prefix)));
    }
    out
}

/// The path an entry has in the layer: a whiteout is `.wh.NAME` in its parent.
fn written(i: &Input) -> String {
    if i.kind == InputKind::Whiteout { super::whiteout_path(&i.rel) } else { i.rel.clone() }
}

/// An entry the working tree does not have as such: a whiteout, a directory of the commit,
/// a committed file's bytes. Owner and time come from the plan when it is written.
fn made(plan: &LayerPlan, rel: &str, kind: InputKind, mode: u32, data: Option<Arc<[u8]>>) -> Input {
    let size = data.as_ref().map_or(0, |d| d.len() as u64);
    Input { rel: rel.to_string(), abs: plan.source.join(rel), kind, size, mtime_ns: 0, mode, uid: 0, gid: 0, data }
}

/// `a/b/c` -> `a`, `a/b`.
fn parents(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/').map(move |(i, _)| &rel[..i])
}

/// The bytes of committed blobs, through one `git cat-file --batch`.
fn read_blobs(plan: &LayerPlan, wanted: &[&Committed]) -> Result<Option<HashMap<String, Arc<[u8]>>>> {
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return Ok(Some(out));
    }
    let ids: String = wanted.iter().map(|c| format!("{}\n", c.oid)).collect();
    let reader = duct::cmd!("git", "-C", plan.source.as_str(), "cat-file", "--batch")
        .stdin_bytes(ids)
        .stderr_null()
        .reader()
        .context("cannot start `git cat-file`")?;
    let mut reader = BufReader::new(reader);
    for c in wanted {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        // "OID blob SIZE"
        let size: Option<u64> = header.split_whitespace().nth(2).and_then(|s| s.parse().ok());
        if size != Some(c.size) {
            return Ok(None);
        }
        let mut data = vec![0; c.size as usize + 1];
        reader.read_exact(&mut data)?;
        data.pop();
        out.insert(c.rel.clone(), Arc::from(data));
    }
    Ok(Some(out))
}

/// The committed layer's entries: HEAD's files (bytes from the working tree where they
/// are unchanged, else from git) and the directories that hold them, in layer order.
/// None when git's answer does not match its listing.
fn committed_inputs(plan: &LayerPlan, split: &Split) -> Result<Option<Vec<Input>>> {
    let wanted: Vec<&Committed> = split.committed.iter().filter(|c| split.from_git.contains(&c.rel)).collect();
    let Some(mut from_git) = read_blobs(plan, &wanted)? else { return Ok(None) };
    let dirs: BTreeSet<&str> = split.committed.iter().flat_map(|c| parents(&c.rel)).collect();
    let mut out: Vec<Input> = dirs.into_iter().map(|d| made(plan, d, InputKind::Dir, 0o755, None)).collect();
    for c in &split.committed {
        let input = match (from_git.remove(&c.rel), split.worktree.get(&c.rel)) {
            (Some(data), _) => made(plan, &c.rel, InputKind::File, if c.exec { 0o755 } else { 0o644 }, Some(data)),
            (None, Some(i)) => i.clone(),
            (None, None) => return Ok(None),
        };
        out.push(input);
    }
    out.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::layer::scan;
    use crate::oci::layer::tests::plan;
    use camino::Utf8Path;

    #[test]
    fn status_records_name_both_paths_of_a_rename() {
        let status = "R  files/dags/new.py\0files/dags/old.py\0 M files/dags/a b.py\0M  other/x.py\0";
        let dirty = dirty_paths(status, "files/dags/");
        assert_eq!(dirty, HashSet::from(["new.py", "old.py", "a b.py"]));
    }

    fn git(dir: &Utf8Path, args: &[&str]) {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn git_out(dir: &Utf8Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git").arg("-C").arg(dir).args(args).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn head_is_read_from_the_repository_files_as_git_reads_it() {
        let dir = camino_tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let dags = root.join("files/dags");
        std::fs::create_dir_all(&dags).unwrap();
        std::fs::write(dags.join("a.py"), "a = 1\n").unwrap();
        git(&root, &["init", "-q", "-b", "main"]);
        git(&root, &["add", "-A"]);
        git(&root, &["commit", "-qm", "one"]);
        let head = || git_out(&root, &["rev-parse", "HEAD"]);
        assert_eq!(head_commit(&dags), Some((head(), "files/dags".to_string())), "loose ref");
        // Branch refs packed away, then a commit made on top: loose again.
        git(&root, &["pack-refs", "--all"]);
        assert!(!root.join(".git/refs/heads/main").exists());
        assert_eq!(head_commit(&dags).map(|h| h.0), Some(head()), "packed ref");
        std::fs::write(dags.join("a.py"), "a = 2\n").unwrap();
        git(&root, &["commit", "-qam", "two"]);
        assert_eq!(head_commit(&dags).map(|h| h.0), Some(head()), "a new commit");
        // A detached HEAD, and a linked work tree (.git is a file there).
        git(&root, &["checkout", "-q", "--detach", "HEAD~1"]);
        assert_eq!(head_commit(&dags).map(|h| h.0), Some(head()), "detached");
        let linked = dir.path().join("linked");
        git(&root, &["worktree", "add", "-q", "-b", "side", linked.as_str(), "main"]);
        let linked_head = git_out(&linked, &["rev-parse", "HEAD"]);
        assert_eq!(head_commit(&linked.join("files/dags")), Some((linked_head, "files/dags".to_string())));
        // Outside any repository there is no HEAD to read.
        let outside = camino_tempfile::tempdir().unwrap();
        assert_eq!(head_commit(outside.path()), None);
    }

    #[test]
    fn small_changes_get_a_layer_and_large_ones_fold_back_into_one() {
        let dir = camino_tempfile::tempdir().unwrap();
        let root = dir.path();
        let plan = plan(root);
        std::fs::create_dir_all(&plan.source).unwrap();
        for i in 0..8 {
            std::fs::write(plan.source.join(format!("dag_{i}.py")), format!("x = {i}\n").repeat(100)).unwrap();
        }
        git(root, &["init", "-q"]);
        git(root, &["add", "-A"]);
        git(root, &["commit", "-qm", "dags"]);
        let store = Store::open(&root.join("store")).unwrap();
        let parts = |p: &LayerPlan| -> Vec<Part> {
            let built = super::super::build(p, &store, false, &mut |_| {}).unwrap();
            built.iter().map(|b| b.part).collect()
        };
        assert_eq!(parts(&plan), [Part::Committed]);

        std::fs::write(plan.source.join("dag_0.py"), "x = 'edited'\n").unwrap();
        assert_eq!(parts(&plan), [Part::Committed, Part::Changes]);
        // Nothing changed since: reused from the cache, reported as built.
        let counts = |b: &[BuiltLayer]| b.iter().map(|l| (l.part, l.files, l.input_bytes)).collect::<Vec<_>>();
        let again = super::super::build(&plan, &store, false, &mut |_| {}).unwrap();
        assert!(again.iter().all(|l| l.reused), "a no-op rebuild rebuilt");
        let forced = super::super::build(&plan, &store, true, &mut |_| {}).unwrap();
        assert_eq!(counts(&again), counts(&forced));
        assert_eq!(counts(&again)[0].1, 8, "the committed layer holds the 8 DAGs");

        // Three of eight files rewritten, larger: more than a quarter of the bytes.
        for i in 1..4 {
            std::fs::write(plan.source.join(format!("dag_{i}.py")), "y = 1\n".repeat(150)).unwrap();
        }
        assert_eq!(parts(&plan), [Part::All]);

        // Outside a git work tree: one layer, as ever.
        std::fs::remove_dir_all(root.join(".git")).unwrap();
        assert_eq!(parts(&plan), [Part::All]);
        assert!(scan(&plan).unwrap().len() == 8);
    }
}
