//! `cargo xtask watch`: on every (debounced) change under files/dags or files/include,
//! check the changed DAGs with a long-lived Airflow parser, copy the changed files into the
//! running DAG processor and ask for a reparse through the API, then, while it parses,
//! rebuild only the changed layer, ship it, and roll the components and the pod template
//! to the new digest (k8s-up without the waits). The new version is parsed in about a
//! second instead of after the roll; the time from save to "parsed in the cluster" is
//! printed for each change. A DAG that fails the check is reported and not shipped.

use camino::{Utf8Path, Utf8PathBuf};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::airflow::api::ApiClient;
use crate::airflow::checker::Checker;
use crate::airflow::dagcheck::{self, FileResult};
use crate::cli::{K8sUpArgs, WatchArgs};
use crate::cluster::hotsync::{image_paths, sync_into};
use crate::cluster::portforward::PortForward;
use crate::cluster::{Cluster, Target};
use crate::ctx::Ctx;
use crate::pipeline::{self, Until};
use crate::ui;

/// A file's identity for change detection: modification time and size.
type Snapshot = BTreeMap<Utf8PathBuf, (SystemTime, u64)>;

fn scan(root: &Utf8Path, dir: &str, out: &mut Snapshot) {
    fn walk(base: &Utf8Path, p: &Utf8Path, out: &mut Snapshot) {
        for e in p.read_dir_utf8().into_iter().flatten().flatten() {
            let path = e.path();
            let name = e.file_name();
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
                walk(base, path, out);
            } else if let Ok(rel) = path.strip_prefix(base) {
                out.insert(rel.to_path_buf(), (md.modified().unwrap_or(SystemTime::UNIX_EPOCH), md.len()));
            }
        }
    }
    walk(root, &root.join(dir), out);
}

fn snapshot(root: &Utf8Path) -> Snapshot {
    let mut s = Snapshot::new();
    scan(root, "files/dags", &mut s);
    scan(root, "files/include", &mut s);
    s
}

/// Paths (relative to the repository) that were added, changed or removed.
fn diff(old: &Snapshot, new: &Snapshot) -> Vec<Utf8PathBuf> {
    let mut changed: Vec<Utf8PathBuf> =
        new.iter().filter(|(p, v)| old.get(*p) != Some(*v)).map(|(p, _)| p.clone()).collect();
    changed.extend(old.keys().filter(|p| !new.contains_key(*p)).cloned());
    changed.sort();
    changed
}

/// What one change did, for `--json` (one line each) and the benchmark.
#[derive(Serialize, Default)]
pub struct ChangeReport {
    pub files: Vec<String>,
    /// ok, rejected (a DAG failed the check; nothing shipped) or failed.
    pub outcome: String,
    pub check_seconds: f64,
    /// Copying the files into the running DAG processor and asking for the parse.
    pub sync_seconds: f64,
    pub ship_seconds: f64,
    /// From the newest changed file's modification time to the new version parsed in
    /// the cluster (None when nothing was waited for).
    pub save_to_parsed_seconds: Option<f64>,
    pub image: Option<String>,
    pub errors: Vec<String>,
}

/// The cluster's Airflow API, through a port-forward; retried until `deadline` (the
/// api-server may be rolling).
fn api(ctx: &Ctx, cluster: &Cluster, deadline: Instant) -> Result<(PortForward, ApiClient)> {
    loop {
        match crate::airflow::session::api_session(ctx, cluster) {
            Ok((pf, api, _)) => return Ok((pf, api)),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// Each DAG's `last_parsed_time` now: what `wait_parsed` waits to see move.
fn last_parsed(api: &ApiClient, dag_ids: &[String]) -> Result<BTreeMap<String, Option<String>>> {
    let mut out = BTreeMap::new();
    for id in dag_ids {
        let details = api.dag_details(id)?;
        out.insert(id.clone(), details.as_ref().and_then(|d| d["last_parsed_time"].as_str().map(String::from)));
    }
    Ok(out)
}

/// Asks the DAG processor to parse the files of these DAGs at its next loop.
fn request_reparse(api: &ApiClient, dag_ids: &[String]) -> Result<()> {
    for id in dag_ids {
        if let Some(token) = api.dag_details(id)?.as_ref().and_then(|d| d["file_token"].as_str().map(String::from)) {
            api.reparse(&token)?;
        }
    }
    Ok(())
}

/// Waits until every DAG's `last_parsed_time` moved past `before`, and returns when the
/// last of them was parsed (the API's own timestamp, so time spent elsewhere meanwhile
/// does not count; the time of seeing it when the timestamp cannot be read). A session
/// that breaks (the api-server rolling) is made again, until the deadline.
fn wait_parsed(
    ctx: &Ctx,
    cluster: &Cluster,
    mut session: Option<(PortForward, ApiClient)>,
    before: &BTreeMap<String, Option<String>>,
    timeout: Duration,
) -> Result<SystemTime> {
    let deadline = Instant::now() + timeout;
    let ids: Vec<String> = before.keys().cloned().collect();
    let mut last_error = None;
    loop {
        if session.is_none() {
            session = api(ctx, cluster, deadline).ok();
        }
        let now = match session.as_ref().map(|(_, api)| last_parsed(api, &ids)) {
            Some(Ok(now)) => Some(now),
            Some(Err(e)) => {
                last_error = Some(e);
                session = None;
                None
            }
            None => None,
        };
        if let Some(now) = &now {
            let waiting: Vec<&str> = now
                .iter()
                .filter(|(id, t)| t.is_none() || before.get(*id) == Some(*t))
                .map(|(id, _)| id.as_str())
                .collect();
            if waiting.is_empty() {
                let parsed = now
                    .values()
                    .flatten()
                    .filter_map(|t| t.parse::<jiff::Timestamp>().ok())
                    .map(SystemTime::from)
                    .max();
                // A timestamp from a clock ahead of ours is not believed past now.
                return Ok(parsed.map_or_else(SystemTime::now, |p| p.min(SystemTime::now())));
            }
            if Instant::now() > deadline {
                bail!(
                    "not parsed within {} s: {} (see `cargo xtask logs dag-processor`)",
                    timeout.as_secs(),
                    waiting.join(", ")
                );
            }
        } else if Instant::now() > deadline {
            let why = last_error.map(|e| format!(": {e:#}")).unwrap_or_default();
            bail!("the Airflow API did not answer within {} s{why}", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn handle(
    ctx: &Ctx,
    args: &WatchArgs,
    up_args: &K8sUpArgs,
    checker: &mut Checker,
    files: &[Utf8PathBuf],
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
    let mut report = ChangeReport { files: files.iter().map(|f| f.to_string()).collect(), ..Default::default() };
    say(&format!("change   {}", report.files.join(", ")));

    // 1. Check: the changed DAG files, or every DAG when include/ changed.
    let started = Instant::now();
    let include_changed = files.iter().any(|f| f.starts_with("files/include"));
    let dag_files: Vec<String> = if include_changed {
        let mut s = Snapshot::new();
        scan(&project.root.join("files"), "dags", &mut s);
        s.keys()
            .filter(|p| p.extension().is_some_and(|e| e == "py"))
            .map(|p| p.strip_prefix("dags").unwrap_or(p).to_string())
            .collect()
    } else {
        files
            .iter()
            .filter_map(|f| f.strip_prefix("files/dags").ok())
            .filter(|p| p.extension().is_some_and(|e| e == "py"))
            .map(|p| p.to_string())
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

    // 2. Parsed in the cluster first: the files copied into the running DAG processor and a
    // reparse requested, so the parse runs while the image is built and shipped. The
    // parse times are read before the copy, so a parse the copy alone sets off counts.
    let started = Instant::now();
    let (target, settings) = Target::from_args(project, &args.cluster)?;
    let cluster = ctx.connect(&target, &settings.namespace)?;
    let in_image = image_paths(project, files)?;
    let session =
        if dag_ids.is_empty() { None } else { api(ctx, &cluster, Instant::now() + Duration::from_secs(30)).ok() };
    let before = match &session {
        Some((_, api)) => Some(last_parsed(api, &dag_ids)?),
        None => None,
    };
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
    if live && let Some((_, api)) = &session {
        request_reparse(api, &dag_ids)?;
    }
    report.sync_seconds = started.elapsed().as_secs_f64();
    if live {
        say(&format!(
            "sync     copied into the running DAG processor, parse asked, in {}",
            ui::secs(report.sync_seconds)
        ));
    }

    // 3. Build and ship: the new image on the nodes (or in the registry).
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

    // 4. Roll the components to the new image (after the parse, which a roll could end).
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
    match (live, session, before) {
        (true, Some(session), Some(before)) => {
            let parsed_at = wait_parsed(ctx, &cluster, Some(session), &before, Duration::from_secs(180))?;
            report_parsed(&mut report, parsed_at);
            roll(&mut report)?;
        }
        (_, session, _) => {
            // The restarted DAG processor parses every file; the times are read before the
            // roll. The api-server restarts too: the wait makes its session again.
            let before = match session {
                Some((_pf, api)) => last_parsed(&api, &dag_ids)?,
                None => last_parsed(&api(ctx, &cluster, Instant::now() + Duration::from_secs(60))?.1, &dag_ids)?,
            };
            roll(&mut report)?;
            let parsed_at = wait_parsed(ctx, &cluster, None, &before, Duration::from_secs(300))?;
            report_parsed(&mut report, parsed_at);
        }
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
    let mut checker = Checker::start(&ctx.project, ctx.handle(), &args.check)?;
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
        debouncer
            .watcher()
            .watch(project.root.join(dir).as_std_path(), notify::RecursiveMode::Recursive)
            .with_context(|| {
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
                    files: files.iter().map(|f| f.to_string()).collect(),
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
        let dir = camino_tempfile::tempdir().unwrap();
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
    fn changes_are_added_modified_and_removed_files() {
        let t = SystemTime::UNIX_EPOCH;
        let old: Snapshot =
            [(Utf8PathBuf::from("files/dags/a.py"), (t, 1)), (Utf8PathBuf::from("files/dags/b.py"), (t, 1))].into();
        let new: Snapshot =
            [(Utf8PathBuf::from("files/dags/a.py"), (t, 2)), (Utf8PathBuf::from("files/dags/c.py"), (t, 1))].into();
        assert_eq!(
            diff(&old, &new),
            vec![
                Utf8PathBuf::from("files/dags/a.py"),
                Utf8PathBuf::from("files/dags/b.py"),
                Utf8PathBuf::from("files/dags/c.py")
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }
}
