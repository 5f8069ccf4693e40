//! `cargo xtask dags check`: every DAG file parsed the way the DAG processor parses it,
//! inside the worker image (or a local virtualenv), before anything ships.
//! `cargo xtask dags push`: files/dags into the S3 DAG bundle.

use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::airflow::api::{ApiClient, BundleDag};
use crate::airflow::dagcheck::{CHECK_SCRIPT, FileResult, error_line, exceptions, print_result};
use crate::airflow::{bundle, runner};
use crate::cli::{DagsArgs, DagsCheckArgs, DagsCommand, DagsPushArgs};
use crate::cluster::Target;
use crate::cluster::portforward::PortForward;
use crate::ctx::Ctx;
use crate::deploy::secrets::OBJECT_STORE;
use crate::error::Reported;
use crate::s3::ObjectStore;
use crate::ui;

pub fn run(ctx: &Ctx, args: &DagsArgs) -> Result<()> {
    match &args.command {
        DagsCommand::Check(a) => {
            let results = check(ctx, a)?;
            if results.iter().any(|r| r.status == "error") {
                return Err(Reported(1).into());
            }
            Ok(())
        }
        DagsCommand::Push(a) => push(ctx, a),
    }
}

/// `dags push`: files/dags into the bundle bucket, through a port-forward to the cluster's
/// object store (Secret airflow-s3 holds its keys) unless --endpoint names another store.
fn push(ctx: &Ctx, a: &DagsPushArgs) -> Result<()> {
    let project = &ctx.project;
    let dir = project.root.join("files/dags");
    let (report, at) = match &a.endpoint {
        Some(endpoint) => {
            let key = std::env::var("AWS_ACCESS_KEY_ID").ok().filter(|k| !k.is_empty());
            let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok().filter(|k| !k.is_empty());
            let (Some(key), Some(secret)) = (key, secret) else {
                bail!("--endpoint {endpoint} needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set to its keys");
            };
            let store = ObjectStore::new(endpoint, &a.bucket, &a.region, &key, &secret)?;
            (bundle::push(&store, &dir, &a.prefix, &mut |_| {})?, endpoint.clone())
        }
        None => {
            let (target, settings) = Target::from_args(project, &a.cluster)?;
            let cluster = ctx.connect(&target, &settings.namespace)?;
            let (pf, key, secret) = ctx.block_on(async {
                let keys = Api::<Secret>::namespaced(cluster.client.clone(), &cluster.namespace)
                    .get_opt(OBJECT_STORE)
                    .await
                    .map_err(|e| cluster.explain(e, "get", "secrets"))?
                    .and_then(|s| s.data)
                    .ok_or_else(|| {
                        anyhow!(
                            "namespace {} has no Secret {OBJECT_STORE}, so no object store: `cargo xtask k8s-up --overlay object-store`, or pass --endpoint",
                            cluster.namespace
                        )
                    })?;
                let get = |k: &str| keys.get(k).map(|v| String::from_utf8_lossy(&v.0).into_owned()).unwrap_or_default();
                let pod = crate::cluster::pods::ready_pod(&cluster, &settings, OBJECT_STORE).await?;
                let name = pod.metadata.name.clone().unwrap_or_default();
                let pf = PortForward::start(&cluster.streams, &cluster.namespace, &name, 7070).await?;
                Ok::<_, anyhow::Error>((pf, get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")))
            })?;
            let store = ObjectStore::new(&pf.base_url(), &a.bucket, &a.region, &key, &secret)?;
            let mut reparse = Reparse { ctx, cluster: &cluster, bundle: &a.bundle, api: None };
            let mut report = bundle::push(&store, &dir, &a.prefix, &mut |first| {
                if !a.no_reparse {
                    let _ = reparse.request(first);
                }
            })?;
            drop(pf);
            if !a.no_reparse && (!report.uploaded.is_empty() || !report.deleted.is_empty()) {
                match reparse.request(&report) {
                    Ok(files) => report.reparse_requested = files,
                    Err(e) => report.reparse_note = Some(format!("no reparse asked for: {e:#}")),
                }
            }
            (report, format!("the object store of namespace {}", cluster.namespace))
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for s in &report.skipped {
        println!("skipped  files/dags/{s} (not a regular file)");
    }
    println!(
        "dags push s3://{}/{}/ on {at}: {} uploaded ({}), {} deleted, {} unchanged, in {}",
        report.bucket,
        report.prefix,
        report.uploaded.len(),
        crate::fsutil::human_bytes(report.uploaded_bytes),
        report.deleted.len(),
        report.unchanged,
        ui::secs(report.seconds)
    );
    if !report.rewritten.is_empty() {
        println!(
            "written again a second later, so Airflow's bundle sync sees them as modified (same size as before): {}",
            report.rewritten.join(", ")
        );
    }
    if !report.reparse_requested.is_empty() {
        println!("asked the DAG processor to parse again: {}", report.reparse_requested.join(", "));
    }
    if let Some(note) = &report.reparse_note {
        println!("{note}");
    }
    Ok(())
}

/// Asks the cluster's DAG processor to parse the pushed files now: a parse request makes
/// it refresh the bundle in its next loop (about a second) instead of at the bundle's
/// refresh interval. A cluster whose Airflow does not answer, or knows no DAG of the bundle
/// yet, is left to its interval, and the report says why.
struct Reparse<'a> {
    ctx: &'a Ctx,
    cluster: &'a crate::cluster::Cluster,
    bundle: &'a str,
    /// The API session and the bundle's DAGs, made on the first request.
    api: Option<(PortForward, ApiClient, Vec<BundleDag>)>,
}

impl Reparse<'_> {
    /// Requests a parse of the report's changed files; the files asked for.
    fn request(&mut self, report: &bundle::PushReport) -> Result<Vec<String>> {
        if self.api.is_none() {
            let (pf, api, _) = crate::airflow::session::api_session(self.ctx, self.cluster)?;
            let known = api.bundle_dags(self.bundle)?;
            self.api = Some((pf, api, known));
        }
        let (_, api, known) = self.api.as_ref().expect("made above");
        if known.is_empty() {
            bail!(
                "Airflow knows no DAG of bundle {} yet (is overlay dag-bundle-s3 applied?); its DAG processor reads the bucket at its next refresh",
                self.bundle
            );
        }
        let requests = bundle::reparse_requests(report, known);
        for (_, token) in &requests {
            api.reparse(token)?;
        }
        Ok(requests.into_iter().map(|(file, _)| file).collect())
    }
}

pub fn check(ctx: &Ctx, a: &DagsCheckArgs) -> Result<Vec<FileResult>> {
    let project = &ctx.project;
    let started = Instant::now();
    let human = !a.json;
    let runner = runner::for_project(project, ctx.handle(), a.local, a.venv.as_deref(), &a.image, human)?;
    let skip = exceptions(project);
    if human {
        println!("dags check {}", runner.describe());
    }
    let env = vec![
        ("XTASK_DAGS_DIR".to_string(), runner.dags_dir()),
        ("XTASK_SKIP".to_string(), serde_json::to_string(&skip)?),
        ("XTASK_TIMEOUT".to_string(), a.timeout.to_string()),
    ];
    let mut results: Vec<FileResult> = Vec::new();
    let out = runner.run_python(CHECK_SCRIPT, &[], &env, &mut |v| {
        let mut r: FileResult = serde_json::from_value(v)?;
        r.line = r.error.as_deref().and_then(|e| error_line(e, &r.file));
        if human {
            print_result(&r);
        }
        results.push(r);
        Ok(())
    })?;
    if results.is_empty() && out.exit_code != 0 {
        bail!(
            "the DAG check did not run ({} exit {}); its last output:\n{}",
            runner.describe(),
            out.exit_code,
            out.tail
        );
    }
    let errors = results.iter().filter(|r| r.status == "error").count();
    let skipped = results.iter().filter(|r| r.status == "skipped").count();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"files": results, "errors": errors, "seconds": started.elapsed().as_secs_f64()})
            )?
        );
    } else {
        println!(
            "{} files: {} OK, {errors} with errors, {skipped} skipped ({})",
            results.len(),
            results.len() - errors - skipped,
            ui::secs(started.elapsed().as_secs_f64())
        );
    }
    Ok(results)
}
