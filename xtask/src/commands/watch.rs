//! `cargo xtask watch`: on every (debounced) change under files/dags or files/include,
//! check the changed DAGs with a long-lived Airflow parser, then rebuild only the changed
//! layer, ship it, and roll the components and the pod template to the new digest
//! (k8s-up without the waits). The changed files are also copied into the running DAG
//! processor and a reparse is requested through the API, so the new version is parsed
//! in seconds instead of after the roll; the time from save to "parsed in the cluster" is
//! printed for each change. A DAG that fails the check is reported and not shipped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::airflow::dagcheck::{self, FileResult};
use crate::airflow::{container, runner};
use crate::cli::{K8sUpArgs, WatchArgs};
use crate::cluster::{Cluster, Target};
use crate::config::{self, ImageOverrides, Project};
use crate::ctx::Ctx;
use crate::pipeline::{self, Until};
use crate::ui;

/// Where the DAG and include trees sit in the worker image.
const DAGS_IN_IMAGE: &str = "/opt/airflow/dags";
const INCLUDE_IN_IMAGE: &str = "/opt/airflow/include";

/// A file's identity for change detection: modification time and size.
type Snapshot = BTreeMap<PathBuf, (SystemTime, u64)>;

fn scan(root: &Path, dir: &str, out: &mut Snapshot) {
    fn walk(base: &Path, p: &Path, out: &mut Snapshot) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name == "__pycache__"
                || name.ends_with(".pyc")
                || name.starts_with(".#")
                || name.ends_with('~')
                || name.ends_with(".swp")
            {
                continue;
            }
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                walk(base, &path, out);
            } else if let Ok(rel) = path.strip_prefix(base) {
                out.insert(rel.to_path_buf(), (md.modified().unwrap_or(SystemTime::UNIX_EPOCH), md.len()));
            }
        }
    }
    walk(root, &root.join(dir), out);
}

fn snapshot(root: &Path) -> Snapshot {
    let mut s = Snapshot::new();
    scan(root, "files/dags", &mut s);
    scan(root, "files/include", &mut s);
    s
}

/// Paths (relative to the repository) that were added, changed or removed.
fn diff(old: &Snapshot, new: &Snapshot) -> Vec<PathBuf> {
    let mut changed: Vec<PathBuf> =
        new.iter().filter(|(p, v)| old.get(*p) != Some(*v)).map(|(p, _)| p.clone()).collect();
    changed.extend(old.keys().filter(|p| !new.contains_key(*p)).cloned());
    changed.sort();
    changed
}

/// A long-lived `dag_check.py --serve`: Airflow is imported once, each check parses only
/// the files asked for.
enum Checker {
    Container { attached: container::Attached, pending: String, rt: tokio::runtime::Handle },
    Local { child: Child, stdin: ChildStdin, stdout: BufReader<ChildStdout> },
}

impl Checker {
    fn start(ctx: &Ctx, mode: &str) -> Result<Checker> {
        let project = &ctx.project;
        let skip = serde_json::to_string(&dagcheck::exceptions(project))?;
        let dags_dir = project.root.join("files/dags");
        let include_dir = project.root.join("files/include");
        let mut checker = match mode {
            "local" => {
                let python = runner::ensure_venv(project, &project.work_dir().join("venv"), true)?;
                let mut child = Command::new(python)
                    .args(["-c", dagcheck::CHECK_SCRIPT, "--serve"])
                    .env("XTASK_DAGS_DIR", &dags_dir)
                    .env("XTASK_INCLUDE_DIR", &include_dir)
                    .env("AIRFLOW__CORE__DAGS_FOLDER", &dags_dir)
                    .env("PYTHONPATH", &include_dir)
                    .env("XTASK_SKIP", &skip)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("cannot start the DAG checker in the virtualenv")?;
                let stdin = child.stdin.take().expect("piped");
                let stdout = BufReader::new(child.stdout.take().expect("piped"));
                Checker::Local { child, stdin, stdout }
            }
            "image" => {
                let runner = runner::for_project(project, ctx.handle(), false, None, "airflow-worker", false)?;
                let runner::Runner::Image { name: image, .. } = runner else {
                    bail!("no worker image to check DAGs in")
                };
                let spec = container::Spec {
                    image,
                    cmd: vec!["python".into(), "-c".into(), dagcheck::CHECK_SCRIPT.into(), "--serve".into()],
                    env: vec![format!("XTASK_SKIP={skip}")],
                    binds: vec![
                        format!("{}:{DAGS_IN_IMAGE}:ro", dags_dir.display()),
                        format!("{}:{INCLUDE_IN_IMAGE}:ro", include_dir.display()),
                    ],
                    tty: false,
                    auto_remove: true,
                };
                let attached = ctx.block_on(container::start(&spec))?;
                Checker::Container { attached, pending: String::new(), rt: ctx.handle().clone() }
            }
            other => {
                bail!("--check {other}: use `image` (the worker image on the Docker engine) or `local` (a virtualenv)")
            }
        };
        match checker.next_result()? {
            Some(v) if v["ready"] == true => Ok(checker),
            other => {
                bail!("the DAG checker did not start (it said {other:?}); try `cargo xtask dags check` to see why")
            }
        }
    }

    /// The next `@@xtask` line's JSON; None when the checker has exited.
    fn next_result(&mut self) -> Result<Option<serde_json::Value>> {
        loop {
            let line = match self {
                Checker::Local { stdout, .. } => {
                    let mut line = String::new();
                    if stdout.read_line(&mut line)? == 0 {
                        return Ok(None);
                    }
                    line
                }
                Checker::Container { attached, pending, rt } => loop {
                    if let Some(i) = pending.find('\n') {
                        break pending.drain(..=i).collect::<String>();
                    }
                    match rt.block_on(attached.output.next()) {
                        Some(chunk) => pending.push_str(&String::from_utf8_lossy(
                            &chunk.context("lost the DAG checker's output")?.into_bytes(),
                        )),
                        None => return Ok(None),
                    }
                },
            };
            if let Some(json) = line.trim_end().strip_prefix(runner::RESULT_PREFIX) {
                return Ok(Some(serde_json::from_str(json)?));
            }
        }
    }

    fn check(&mut self, files: &[String]) -> Result<Vec<FileResult>> {
        let request = format!("{}\n", serde_json::to_string(files)?);
        match self {
            Checker::Local { stdin, .. } => {
                stdin.write_all(request.as_bytes())?;
                stdin.flush()?;
            }
            Checker::Container { attached, rt, .. } => {
                rt.block_on(async {
                    attached.input.write_all(request.as_bytes()).await?;
                    attached.input.flush().await
                })?;
            }
        }
        let mut results = Vec::new();
        loop {
            match self.next_result()? {
                None => bail!("the DAG checker exited; restart `cargo xtask watch`"),
                Some(v) if v["done"] == true => return Ok(results),
                Some(v) => results.push(serde_json::from_value(v)?),
            }
        }
    }

    fn stop(self) {
        match self {
            Checker::Local { mut child, stdin, .. } => {
                drop(stdin);
                let _ = child.kill();
                let _ = child.wait();
            }
            Checker::Container { attached, rt, .. } => {
                rt.block_on(attached.remove());
            }
        }
    }
}

/// What one change did, for `--json` (one line each) and the benchmark.
#[derive(Serialize, Default)]
pub struct ChangeReport {
    pub files: Vec<String>,
    /// ok, rejected (a DAG failed the check; nothing shipped) or failed.
    pub outcome: String,
    pub check_seconds: f64,
    pub ship_seconds: f64,
    /// From the newest changed file's modification time to the new version parsed in
    /// the cluster (None when nothing was waited for).
    pub save_to_parsed_seconds: Option<f64>,
    pub image: Option<String>,
    pub errors: Vec<String>,
}

/// Files of the change as the image holds them: (path in the image, path on disk).
fn image_paths(project: &Project, files: &[PathBuf]) -> Result<Vec<(String, PathBuf)>> {
    let defs = config::load_images(project, &ImageOverrides::default())?;
    let worker = defs
        .iter()
        .find(|d| d.name == "airflow-worker")
        .or(defs.first())
        .ok_or_else(|| anyhow!("docker/images.toml defines no image"))?;
    let mut out = Vec::new();
    for f in files {
        let s = f.to_string_lossy();
        if let Some(layer) =
            worker.layers.iter().find(|l| s.starts_with(&format!("{}/", l.source.trim_end_matches('/'))))
        {
            let rel = &s[layer.source.trim_end_matches('/').len() + 1..];
            out.push((format!("/{}/{rel}", layer.target), project.root.join(f)));
        }
    }
    Ok(out)
}

/// The changed files as a tar for the pod, and the paths (in the image) of removed ones.
/// A symbolic link goes as the link itself, as the image layer holds it: its target is
/// never read, so a link under files/ cannot ship a file from outside it.
fn sync_tar(files: &[(String, PathBuf)]) -> Result<(Vec<u8>, Vec<String>)> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut removed = Vec::new();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs();
    for (in_image, on_disk) in files {
        let path = in_image.trim_start_matches('/');
        let Ok(md) = std::fs::symlink_metadata(on_disk) else {
            removed.push(in_image.clone());
            continue;
        };
        let mut h = tar::Header::new_gnu();
        h.set_mtime(now);
        if md.file_type().is_symlink() {
            let target =
                std::fs::read_link(on_disk).with_context(|| format!("cannot read link {}", on_disk.display()))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            tar.append_link(&mut h, path, &target)?;
        } else if md.is_file() {
            let bytes = std::fs::read(on_disk).with_context(|| format!("cannot read {}", on_disk.display()))?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(bytes.len() as u64);
            tar.append_data(&mut h, path, bytes.as_slice())?;
        } else {
            bail!("{} is neither a file nor a symbolic link; only those ship", on_disk.display());
        }
    }
    Ok((tar.into_inner()?, removed))
}

/// Copies changed files into a running pod (removed ones are removed there too).
async fn sync_into(cluster: &Cluster, pod: &str, container: &str, files: &[(String, PathBuf)]) -> Result<()> {
    let (bytes, removed) = sync_tar(files)?;
    let argv = vec!["tar".into(), "-x".into(), "-o".into(), "-C".into(), "/".into()];
    let (code, _, err) = crate::cluster::exec::exec_capture(cluster, pod, container, argv, Some(bytes)).await?;
    if code != 0 {
        bail!("copying into {pod} failed: {}", String::from_utf8_lossy(&err).trim());
    }
    if !removed.is_empty() {
        let mut argv = vec!["rm".to_string(), "-f".to_string()];
        argv.extend(removed);
        crate::cluster::exec::exec_capture(cluster, pod, container, argv, None).await?;
    }
    Ok(())
}

/// Waits until the cluster's Airflow has parsed each DAG again (its `last_parsed_time`
/// moves past the value it had before the request), asking for a reparse first.
fn wait_parsed(ctx: &Ctx, cluster: &Cluster, dag_ids: &[String], timeout: Duration) -> Result<SystemTime> {
    let deadline = Instant::now() + timeout;
    let (_pf, api, _) = loop {
        match crate::airflow::session::api_session(ctx, cluster) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    let mut before: BTreeMap<&String, Option<String>> = BTreeMap::new();
    for id in dag_ids {
        let details = api.dag_details(id)?;
        let last = details.as_ref().and_then(|d| d["last_parsed_time"].as_str().map(String::from));
        if let Some(token) = details.as_ref().and_then(|d| d["file_token"].as_str()) {
            api.reparse(token)?;
        }
        before.insert(id, last);
    }
    loop {
        let mut waiting = Vec::new();
        for (id, prev) in &before {
            let now = api.dag_details(id)?.and_then(|d| d["last_parsed_time"].as_str().map(String::from));
            if now.is_none() || now == *prev {
                waiting.push(id.as_str());
            }
        }
        if waiting.is_empty() {
            return Ok(SystemTime::now());
        }
        if Instant::now() > deadline {
            bail!(
                "not parsed within {} s: {} (see `cargo xtask logs dag-processor`)",
                timeout.as_secs(),
                waiting.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn handle(
    ctx: &Ctx,
    args: &WatchArgs,
    up_args: &K8sUpArgs,
    checker: &mut Checker,
    files: &[PathBuf],
    human: bool,
) -> Result<ChangeReport> {
    let project = &ctx.project;
    let say = |s: &str| {
        if human {
            println!("{s}");
        }
    };
    let saved = files
        .iter()
        .filter_map(|f| std::fs::metadata(project.root.join(f)).ok()?.modified().ok())
        .max()
        .unwrap_or_else(SystemTime::now);
    let mut report =
        ChangeReport { files: files.iter().map(|f| f.display().to_string()).collect(), ..Default::default() };
    say(&format!("change   {}", report.files.join(", ")));

    // 1. Check: the changed DAG files, or every DAG when include/ changed.
    let started = Instant::now();
    let include_changed = files.iter().any(|f| f.starts_with("files/include"));
    let dag_files: Vec<String> = if include_changed {
        let mut s = Snapshot::new();
        scan(&project.root.join("files"), "dags", &mut s);
        s.keys()
            .filter(|p| p.extension().is_some_and(|e| e == "py"))
            .map(|p| p.strip_prefix("dags").unwrap_or(p).display().to_string())
            .collect()
    } else {
        files
            .iter()
            .filter_map(|f| f.strip_prefix("files/dags").ok())
            .filter(|p| p.extension().is_some_and(|e| e == "py"))
            .map(|p| p.display().to_string())
            .collect()
    };
    let results = checker.check(&dag_files)?;
    report.check_seconds = started.elapsed().as_secs_f64();
    let bad: Vec<&FileResult> = results.iter().filter(|r| r.status == "error").collect();
    if !bad.is_empty() {
        report.outcome = "rejected".into();
        report.errors = bad
            .iter()
            .map(|r| format!("{}: {}", r.file, r.error.as_deref().unwrap_or("").lines().last().unwrap_or("")))
            .collect();
        if human {
            println!(
                "check    {} file(s) do not import; NOT shipped, the cluster keeps running the last good image:",
                bad.len()
            );
            for r in &bad {
                dagcheck::print_result(r);
            }
        }
        return Ok(report);
    }
    let dag_ids: Vec<String> = if include_changed {
        vec![]
    } else {
        results.iter().filter(|r| r.status == "ok").flat_map(|r| r.dags.iter().cloned()).collect()
    };
    say(&format!("check    {} file(s) OK in {}", results.len(), ui::secs(report.check_seconds)));

    // 2. Build and ship: the new image on the nodes (or in the registry).
    let started = Instant::now();
    let shipped = pipeline::up(ctx, up_args, Until::Delivered)?;
    report.ship_seconds = started.elapsed().as_secs_f64();
    report.image = shipped.images.get("airflow-worker").cloned();
    let sent: u64 = shipped.deliveries.iter().map(|d| d.bytes).sum::<u64>()
        + shipped.pushes.iter().map(|p| p.uploaded_bytes).sum::<u64>();
    say(&format!(
        "ship     {} ({} sent) in {}",
        report.image.clone().unwrap_or_default(),
        crate::fsutil::human_bytes(sent),
        ui::secs(report.ship_seconds)
    ));

    // 3. Parsed in the cluster: the files into the running DAG processor and a reparse
    // request, before the roll restarts it (its strategy may be Recreate).
    let (target, settings) = Target::from_args(project, &args.cluster)?;
    let cluster = ctx.connect(&target, &settings.namespace)?;
    let in_image = image_paths(project, files)?;
    let synced = ctx.block_on(async {
        let pod = crate::cluster::pods::ready_pod(&cluster, &settings, "dag-processor").await?;
        let container = crate::cluster::pods::pick_container(&pod, None)?;
        sync_into(&cluster, pod.metadata.name.as_deref().unwrap_or_default(), &container, &in_image).await
    });
    let live = match synced {
        Ok(()) => true,
        Err(e) => {
            say(&format!(
                "sync     not copied into a running DAG processor ({}); waiting for the roll instead",
                e.to_string().lines().next().unwrap_or("")
            ));
            false
        }
    };
    let roll = |report: &mut ChangeReport| -> Result<()> {
        let up = pipeline::up(ctx, up_args, Until::Applied)?;
        report.image = up.images.get("airflow-worker").cloned();
        say(&format!("roll     {}", up.apply.summary()));
        Ok(())
    };
    if dag_ids.is_empty() {
        roll(&mut report)?;
        report.outcome = "ok".into();
        say(if include_changed {
            "parsed   (include/ changed: every DAG is parsed again as the components roll)"
        } else {
            "parsed   (the changed files hold no DAG; nothing to wait for)"
        });
        return Ok(report);
    }
    let report_parsed = |report: &mut ChangeReport, parsed_at: SystemTime| {
        let latency = parsed_at.duration_since(saved).unwrap_or_default().as_secs_f64();
        report.save_to_parsed_seconds = Some(latency);
        say(&format!("parsed   {} in the cluster, {} after the save", dag_ids.join(", "), ui::secs(latency)));
    };
    if live {
        let parsed_at = wait_parsed(ctx, &cluster, &dag_ids, Duration::from_secs(180))?;
        report_parsed(&mut report, parsed_at);
        roll(&mut report)?;
    } else {
        roll(&mut report)?;
        let parsed_at = wait_parsed(ctx, &cluster, &dag_ids, Duration::from_secs(300))?;
        report_parsed(&mut report, parsed_at);
    }
    report.outcome = "ok".into();
    Ok(report)
}

/// The k8s-up that watch repeats on every change: the flags of the last k8s-up on this
/// cluster and namespace (its overlays, registry, insecure registries, node containerd),
/// so a save never prunes an overlay's objects or drops a flag; watch's own --registry and
/// --node-containerd take precedence.
fn up_args(ctx: &Ctx, args: &WatchArgs) -> Result<K8sUpArgs> {
    let (target, settings) = Target::from_args(&ctx.project, &args.cluster)?;
    let last = pipeline::last_report(&ctx.project)
        .filter(|r| r.target == target.describe() && r.namespace == settings.namespace)
        .map(|r| r.delivery)
        .unwrap_or_default();
    Ok(K8sUpArgs {
        cluster: args.cluster.clone(),
        no_wait: true,
        json: true,
        timeout: 600,
        overlay: last.overlays,
        insecure_registry: last.insecure_registries,
        registry: args.registry.clone().or(last.registry),
        node_containerd: args.node_containerd.clone().or(last.node_containerd),
        ..Default::default()
    })
}

pub fn run(ctx: &Ctx, args: &WatchArgs) -> Result<()> {
    let project = &ctx.project;
    let human = !args.json;
    let (target, settings) = Target::from_args(project, &args.cluster)?;
    // The cluster must be up with Airflow in it: watch ships changes, it does not deploy.
    let cluster = ctx.connect(&target, &settings.namespace)?;
    ctx.block_on(crate::cluster::pods::ready_pod(&cluster, &settings, "dag-processor"))
        .map_err(|e| anyhow!("{e}\nwatch ships changes to a running Airflow: run `cargo xtask k8s-up` first"))?;
    drop(cluster);
    let up_args = up_args(ctx, args)?;
    if human && (!up_args.overlay.is_empty() || up_args.registry.is_some()) {
        println!(
            "ships    like the last k8s-up: overlays [{}]{}",
            up_args.overlay.join(", "),
            up_args.registry.as_deref().map(|r| format!(", registry {r}")).unwrap_or_default()
        );
    }
    let started = Instant::now();
    let mut checker = Checker::start(ctx, &args.check)?;
    let mut last = snapshot(&project.root);
    if human {
        println!(
            "watching files/dags and files/include (DAG checker ready in {}); Ctrl+C stops",
            ui::secs(started.elapsed().as_secs_f64())
        );
    } else {
        println!("{}", serde_json::json!({"event": "ready"}));
    }
    // The kernel tells us about changes (inotify); the debouncer waits for a quiet period,
    // so an editor's save-and-rename is one change. What changed is then read from the
    // tree itself, against the last snapshot.
    let (tx, events) = std::sync::mpsc::channel();
    let mut debouncer = notify_debouncer_mini::new_debouncer(Duration::from_millis(args.debounce_ms), tx)
        .context("cannot watch files/ for changes (inotify)")?;
    for dir in ["files/dags", "files/include"] {
        debouncer.watcher().watch(&project.root.join(dir), notify::RecursiveMode::Recursive).with_context(|| {
            format!("cannot watch {dir} (too many files for inotify? raise fs.inotify.max_user_watches)")
        })?;
    }
    let mut handled = 0usize;
    loop {
        // A change made while the last one was handled has its event queued already.
        match events.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("watching files/ failed: {e}"),
            Err(_) => bail!("the file watcher stopped"),
        }
        let now = snapshot(&project.root);
        let files = diff(&last, &now);
        if files.is_empty() {
            continue;
        }
        last = now;
        let report = match handle(ctx, args, &up_args, &mut checker, &files, human) {
            Ok(r) => r,
            Err(e) => {
                if human {
                    println!("failed   {e:#}\n         (watch keeps going; fix the cause and save again)");
                }
                ChangeReport {
                    files: files.iter().map(|f| f.display().to_string()).collect(),
                    outcome: "failed".into(),
                    errors: vec![format!("{e:#}")],
                    ..Default::default()
                }
            }
        };
        if !human {
            println!("{}", serde_json::to_string(&serde_json::json!({"event": "change", "change": report}))?);
        }
        handled += 1;
        if args.max_changes.is_some_and(|n| handled >= n) {
            checker.stop();
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_save_repeats_the_overlays_and_flags_of_the_last_k8s_up_on_that_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Ctx::new(crate::config::Project::discover(Some(dir.path())).unwrap()).unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let watch_args = |namespace: &str| WatchArgs {
            cluster: crate::cli::ClusterArgs {
                kubeconfig: Some(kubeconfig.clone()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            check: "image".into(),
            node_containerd: None,
            registry: None,
            debounce_ms: 300,
            max_changes: None,
            json: false,
        };
        let (target, _) = Target::from_args(&ctx.project, &watch_args("prod").cluster).unwrap();
        let report = pipeline::UpReport {
            target: target.describe(),
            namespace: "prod".into(),
            delivery: pipeline::Delivery {
                overlays: vec!["remote-logging-s3".into()],
                registry: Some("registry.internal:5000/team".into()),
                insecure_registries: vec!["registry.internal:5000".into()],
                node_containerd: None,
            },
            ..Default::default()
        };
        crate::report::write_json(&ctx.project.work_dir().join(pipeline::REPORT_FILE), &report).unwrap();

        let a = up_args(&ctx, &watch_args("prod")).unwrap();
        assert_eq!(a.overlay, ["remote-logging-s3"]);
        assert_eq!(a.insecure_registry, ["registry.internal:5000"]);
        assert_eq!(a.registry.as_deref(), Some("registry.internal:5000/team"));
        // Another namespace was not deployed by that k8s-up: nothing is carried over.
        let b = up_args(&ctx, &watch_args("staging")).unwrap();
        assert!(b.overlay.is_empty() && b.registry.is_none() && b.insecure_registry.is_empty());
    }

    #[test]
    fn a_link_to_a_file_outside_ships_as_a_link_never_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("credentials");
        std::fs::write(&secret, "aws_secret_access_key = hunter2").unwrap();
        let dags = dir.path().join("files/dags");
        std::fs::create_dir_all(&dags).unwrap();
        std::fs::write(dags.join("a.py"), "print('a')").unwrap();
        std::os::unix::fs::symlink(&secret, dags.join("leak.py")).unwrap();
        let files = vec![
            ("/opt/airflow/dags/a.py".to_string(), dags.join("a.py")),
            ("/opt/airflow/dags/leak.py".to_string(), dags.join("leak.py")),
            ("/opt/airflow/dags/gone.py".to_string(), dags.join("gone.py")),
        ];
        let (bytes, removed) = sync_tar(&files).unwrap();
        assert_eq!(removed, ["/opt/airflow/dags/gone.py"]);
        assert!(!bytes.windows(7).any(|w| w == b"hunter2"), "the link's target was shipped");
        let mut archive = tar::Archive::new(&bytes[..]);
        let entries: Vec<(String, tar::EntryType, Option<PathBuf>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e.link_name().unwrap().map(|l| l.into_owned());
                (e.path().unwrap().display().to_string(), e.header().entry_type(), link)
            })
            .collect();
        assert_eq!(entries[0].0, "opt/airflow/dags/a.py");
        assert_eq!(entries[1], ("opt/airflow/dags/leak.py".into(), tar::EntryType::Symlink, Some(secret)));
    }

    #[test]
    fn changes_are_added_modified_and_removed_files() {
        let t = SystemTime::UNIX_EPOCH;
        let old: Snapshot =
            [(PathBuf::from("files/dags/a.py"), (t, 1)), (PathBuf::from("files/dags/b.py"), (t, 1))].into();
        let new: Snapshot =
            [(PathBuf::from("files/dags/a.py"), (t, 2)), (PathBuf::from("files/dags/c.py"), (t, 1))].into();
        assert_eq!(
            diff(&old, &new),
            vec![PathBuf::from("files/dags/a.py"), PathBuf::from("files/dags/b.py"), PathBuf::from("files/dags/c.py")]
        );
        assert!(diff(&new, &new).is_empty());
    }
}
