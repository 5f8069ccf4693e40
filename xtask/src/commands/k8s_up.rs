//! `cargo xtask k8s-up`: from nothing to a healthy Airflow on Kubernetes running the
//! images just built. Preflight, cluster, images (built, then shipped only where missing),
//! server-side apply of k8s/, waits with diagnosis, and how to reach it.

use anyhow::Result;

use crate::cli::K8sUpArgs;
use crate::ctx::Ctx;
use crate::pipeline::{Until, up};
use crate::ui;

pub fn run(ctx: &Ctx, args: &K8sUpArgs) -> Result<()> {
    let _project = &ctx.project;
    let report = up(ctx, args, if args.no_wait { Until::Applied } else { Until::Healthy })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if !report.changed {
        println!("nothing changed: no image rebuilt, nothing shipped, every object already as in k8s/");
    }
    let ns = &report.namespace;
    if args.cluster.kubeconfig.is_none() {
        println!("Airflow UI and API: http://127.0.0.1:8080 (kind maps the api-server's nodePort 30080)");
    } else {
        println!(
            "Airflow UI and API: kubectl -n {ns} port-forward svc/airflow-api-server 8080:8080, then http://127.0.0.1:8080"
        );
    }
    println!(
        "login: admin; password: kubectl -n {ns} get secret airflow-admin -o jsonpath='{{.data.password}}' | base64 -d"
    );
    println!(
        "took {} ({})",
        ui::secs(report.steps.iter().map(|(_, s)| s).sum()),
        report.steps.iter().map(|(n, s)| format!("{n} {}", ui::secs(*s))).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}
