//! `cargo xtask doctor`: the chain from tools to DAGs, checked in order; it stops at the
//! first broken link and says how to fix it.

use anyhow::Result;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde::Serialize;

use crate::cli::DoctorArgs;
use crate::cluster::{Cluster, Target};
use crate::ctx::Ctx;
use crate::deploy::check::SCHEDULER_NEEDS;
use crate::deploy::manifests::POD_TEMPLATE_KEY;
use crate::error::Reported;

#[derive(Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// How to repair it, when broken.
    pub fix: Option<String>,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check { name, ok: true, detail: detail.into(), fix: None }
}

fn broken(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name, ok: false, detail: detail.into(), fix: Some(fix.into()) }
}

/// `verb resource[/subresource]` in the cluster's namespace, as access reviews ask it.
fn attributes(cluster: &Cluster, verb: &str, resource: &str, subresource: Option<&str>) -> ResourceAttributes {
    ResourceAttributes {
        namespace: Some(cluster.namespace.clone()),
        verb: Some(verb.to_string()),
        resource: Some(resource.to_string()),
        subresource: subresource.map(String::from),
        ..Default::default()
    }
}

/// The verbs on `resource` in `namespace` that `user` may not use (SubjectAccessReview).
pub async fn denied_for(
    cluster: &Cluster,
    user: &str,
    resource: &str,
    subresource: Option<&str>,
    verbs: &[&str],
) -> Result<Vec<String>> {
    let api: Api<SubjectAccessReview> = Api::all(cluster.client.clone());
    let mut denied = Vec::new();
    for verb in verbs {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.to_string()),
                resource_attributes: Some(attributes(cluster, verb, resource, subresource)),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| cluster.explain(e, "create", "subjectaccessreviews"))?;
        if !answer.status.is_some_and(|s| s.allowed) {
            denied.push(verb.to_string());
        }
    }
    Ok(denied)
}

/// The verbs on `resource` that our own credentials may not use (SelfSubjectAccessReview).
pub async fn self_denied(
    cluster: &Cluster,
    resource: &str,
    subresource: Option<&str>,
    verbs: &[&str],
) -> Result<Vec<String>> {
    let api: Api<SelfSubjectAccessReview> = Api::all(cluster.client.clone());
    let mut denied = Vec::new();
    for verb in verbs {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(attributes(cluster, verb, resource, subresource)),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| cluster.explain(e, "create", "selfsubjectaccessreviews"))?;
        if !answer.status.is_some_and(|s| s.allowed) {
            denied.push(verb.to_string());
        }
    }
    Ok(denied)
}

enum Admission {
    Admitted(String),
    NoTemplate,
    Refused { template: String, why: String },
    NotAllowedToAsk(String),
}

/// Asks the API server to admit, as a dry run, a pod made from the pod template the
/// KubernetesExecutor uses: quotas, limit ranges and Pod Security answer as they would for
/// a real worker pod.
async fn worker_pod_admitted(cluster: &Cluster) -> Result<Admission> {
    let maps = Api::<ConfigMap>::namespaced(cluster.client.clone(), &cluster.namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| cluster.explain(e, "list", "configmaps"))?;
    let Some((template, yaml)) = maps.items.iter().find_map(|m| {
        let yaml = m.data.as_ref()?.get(POD_TEMPLATE_KEY)?;
        Some((m.metadata.name.clone().unwrap_or_default(), yaml.clone()))
    }) else {
        return Ok(Admission::NoTemplate);
    };
    let mut pod: Pod = serde_yaml_ng::from_str(&yaml)
        .map_err(|e| anyhow::anyhow!("ConfigMap {template}'s {POD_TEMPLATE_KEY} is not a Pod: {e}"))?;
    pod.metadata.name = None;
    pod.metadata.generate_name = Some("xtask-doctor-".into());
    pod.metadata.namespace = Some(cluster.namespace.clone());
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    match pods.create(&PostParams { dry_run: true, ..Default::default() }, &pod).await {
        Ok(_) => Ok(Admission::Admitted(template)),
        Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("cannot create resource") => {
            Ok(Admission::NotAllowedToAsk(s.message))
        }
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => {
            Ok(Admission::Refused { template, why: s.message })
        }
        Err(e) => Err(cluster.explain(e, "create", "pods (dry run)")),
    }
}

/// Runs the checks in order, calling `report` on each, and stops at the first broken one.
fn checks(ctx: &Ctx, args: &DoctorArgs, report: &mut dyn FnMut(&Check)) -> Result<bool> {
    let mut push = |c: Check| -> bool {
        report(&c);
        c.ok
    };
    let project = &ctx.project;
    let (target, settings) = Target::from_args(project, &args.cluster)?;

    // 1. Tools.
    match &target {
        Target::Kind { .. } => {
            let docker = ctx.docker();
            let kind = crate::process::find("kind");
            let c = match (docker, kind) {
                (Err(e), _) => broken(
                    "tools",
                    format!("Docker engine: {e}"),
                    "start it (`sudo systemctl start docker`, or `dockerd &`)",
                ),
                (Ok(_), None) => broken("tools", "kind is not on PATH", crate::cluster::kind::INSTALL),
                (Ok((_, version)), Some(k)) => ok("tools", format!("Docker engine {version}, kind at {}", k)),
            };
            if !push(c) {
                return Ok(false);
            }
        }
        Target::Existing { kubeconfig, .. } => {
            if !push(ok("tools", format!("none needed for a cluster by kubeconfig ({})", kubeconfig))) {
                return Ok(false);
            }
        }
    }

    // 2. The cluster answers.
    let cluster = match ctx.connect(&target, &settings.namespace) {
        Ok(c) => c,
        Err(e) => {
            push(broken(
                "cluster",
                e.to_string(),
                "bring it up with `cargo xtask k8s-up` (kind) or check --kubeconfig/--context",
            ));
            return Ok(false);
        }
    };
    let version = ctx.block_on(cluster.version())?;
    push(ok("cluster", format!("{} at {} (Kubernetes {version})", target.describe(), cluster.url)));

    // 3. The namespace.
    if let Err(e) = ctx.block_on(crate::cluster::pods::check_namespace(&cluster)) {
        push(broken("namespace", e.to_string(), "`cargo xtask k8s-up` creates it and deploys Airflow into it"));
        return Ok(false);
    }
    push(ok("namespace", cluster.namespace.clone()));

    // 4. RBAC: the scheduler's service account on pods, and ours for what xtask does.
    let rbac = ctx.block_on(async {
        let scheduler = Api::<Deployment>::namespaced(cluster.client.clone(), &cluster.namespace)
            .get_opt(settings.workload_of("scheduler"))
            .await
            .ok()
            .flatten();
        let sa = scheduler
            .and_then(|d| d.spec)
            .and_then(|s| s.template.spec)
            .and_then(|s| s.service_account_name)
            .unwrap_or_else(|| "airflow-scheduler".into());
        let user = format!("system:serviceaccount:{}:{sa}", cluster.namespace);
        let mut problems = Vec::new();
        for (resource, verbs) in SCHEDULER_NEEDS {
            let (res, sub) = match resource.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (*resource, None),
            };
            let denied = denied_for(&cluster, &user, res, sub, verbs).await?;
            if !denied.is_empty() {
                problems.push(format!("service account {sa} may not {} {resource}", denied.join("/")));
            }
        }
        let mine = self_denied(&cluster, "pods", Some("exec"), &["create"]).await?;
        if !mine.is_empty() {
            problems.push("your credentials may not create pods/exec (xtask exec, run, watch)".into());
        }
        Ok::<_, anyhow::Error>((sa, problems))
    });
    let c = match rbac {
        Ok((sa, problems)) if problems.is_empty() => {
            let granted: Vec<String> = SCHEDULER_NEEDS.iter().map(|(r, v)| format!("{} {r}", v.join("/"))).collect();
            ok("rbac", format!("{sa} may {}; you may exec", granted.join(" and ")))
        }
        Ok((sa, problems)) => broken(
            "rbac",
            problems.join("; "),
            format!(
                "apply k8s/airflow/rbac.yaml (`cargo xtask k8s-up`); confirm with `kubectl auth can-i create pods -n {} --as system:serviceaccount:{}:{sa}`",
                cluster.namespace, cluster.namespace
            ),
        ),
        Err(e) => broken(
            "rbac",
            e.to_string(),
            "access reviews need `create subjectaccessreviews`; ask for it or check RBAC by hand with `kubectl auth can-i`",
        ),
    };
    if !push(c) {
        return Ok(false);
    }

    // 5. A worker pod from the pod template would be admitted now: a ResourceQuota, a
    //    LimitRange or Pod Security that refuses it leaves tasks queued with no pod at all.
    let c = match ctx.block_on(worker_pod_admitted(&cluster)) {
        Ok(Admission::Admitted(template)) => {
            ok("admission", format!("a worker pod from ConfigMap {template} would be admitted (server dry run)"))
        }
        Ok(Admission::NoTemplate) => broken(
            "admission",
            format!("no pod template (a ConfigMap with key {POD_TEMPLATE_KEY}) in namespace {}", cluster.namespace),
            "`cargo xtask k8s-up` applies k8s/airflow/pod-template.yaml",
        ),
        Ok(Admission::Refused { template, why }) => broken(
            "admission",
            format!("a worker pod from ConfigMap {template} would be refused, so tasks stay queued: {why}"),
            if why.contains("exceeded quota") {
                format!(
                    "raise the ResourceQuota (`kubectl -n {} describe resourcequota`) or lower the pod template's resources in k8s/airflow/pod-template.yaml",
                    cluster.namespace
                )
            } else {
                "make the pod template in k8s/airflow/pod-template.yaml meet the namespace's policy above, then `cargo xtask k8s-up`".to_string()
            },
        ),
        Ok(Admission::NotAllowedToAsk(why)) => {
            ok("admission", format!("not checked: your credentials may not create pods, even as a dry run ({why})"))
        }
        Err(e) => broken("admission", e.to_string(), "`cargo xtask k8s-up`"),
    };
    if !push(c) {
        return Ok(false);
    }

    // 6-8. Images on the nodes, components, worker pods.
    let built = crate::pipeline::deployed_builds(project);
    let status = ctx.block_on(crate::cluster::inspect::collect(&cluster, &built))?;
    let stale: Vec<String> = status
        .nodes
        .iter()
        .flat_map(|n| {
            n.images.iter().filter(|(_, has)| !has).map(move |(img, _)| format!("{} lacks {img} as last built", n.name))
        })
        .collect();
    let c = if built.is_empty() {
        ok("images", "nothing built yet on this machine; not compared")
    } else if stale.is_empty() {
        ok("images", format!("every node has {}", built.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ")))
    } else if status.nodes.iter().any(|n| n.images.iter().any(|(_, has)| *has)) || !status.components.is_empty() {
        broken(
            "images",
            stale.join("; "),
            "ship the last build with `cargo xtask k8s-up` (it sends only the missing layers)",
        )
    } else {
        broken("images", stale.join("; "), "`cargo xtask k8s-up` builds, ships and deploys")
    };
    if !push(c) {
        return Ok(false);
    }
    let unhealthy: Vec<String> = status
        .components
        .iter()
        .filter(|c| c.ready < c.desired || c.stale)
        .map(|c| {
            format!("{} {}/{} ready{}", c.name, c.ready, c.desired, if c.stale { ", runs an older image" } else { "" })
        })
        .collect();
    let component_pods: Vec<String> = status
        .failing_pods
        .iter()
        .filter(|p| !p.name.contains("-worker-") && status.components.iter().any(|c| p.name.starts_with(&c.name)))
        .map(|p| p.explain(&cluster.namespace))
        .collect();
    let c = if status.components.is_empty() {
        broken(
            "components",
            format!("no Airflow components in namespace {}", cluster.namespace),
            "`cargo xtask k8s-up`",
        )
    } else if unhealthy.is_empty() {
        ok(
            "components",
            format!("{} ready", status.components.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")),
        )
    } else {
        let mut detail = unhealthy.join("; ");
        for p in component_pods {
            detail.push_str(&format!("\n  {}", p.replace('\n', "\n  ")));
        }
        broken(
            "components",
            detail,
            "the fix above, then `cargo xtask k8s-up`; `cargo xtask logs COMPONENT` shows a component's log",
        )
    };
    if !push(c) {
        return Ok(false);
    }
    let failing_workers: Vec<String> = status
        .failing_pods
        .iter()
        .filter(|p| p.phase == "Failed" || p.reason.is_some())
        .filter(|p| !status.components.iter().any(|c| p.name.starts_with(&c.name)))
        .map(|p| p.explain(&cluster.namespace))
        .collect();
    let c = if failing_workers.is_empty() {
        ok("workers", "no failing worker pods")
    } else {
        broken(
            "workers",
            format!(
                "{} failing worker pod(s):\n  {}",
                failing_workers.len(),
                failing_workers.join("\n  ").replace("\n    ", "\n      ")
            ),
            "each pod's fix is above; `cargo xtask logs DAG_ID.TASK_ID` shows a task's log (failed worker pods are kept for this)",
        )
    };
    if !push(c) {
        return Ok(false);
    }

    // 8. An external database: its Secret, and whether Airflow reaches it from the cluster.
    if let Some(db) = &settings.database {
        let c = ctx.block_on(async {
            crate::cluster::inspect::check_database_secret(&cluster, db).await?;
            let pod = crate::cluster::pods::ready_pod(&cluster, &settings, "scheduler").await?;
            let name = pod.metadata.name.clone().unwrap_or_default();
            let container = crate::cluster::pods::pick_container(&pod, None)?;
            let argv = ["airflow", "db", "check"].map(String::from).to_vec();
            let (code, out, err) = crate::cluster::exec::exec_capture(&cluster, &name, &container, argv, None).await?;
            let said = String::from_utf8_lossy(&err).to_string() + &String::from_utf8_lossy(&out);
            let last = said.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            Ok::<_, anyhow::Error>((code, last))
        });
        let c = match c {
            Ok((0, _)) => ok(
                "database",
                format!("external, from Secret {} (key {}): `airflow db check` passes", db.secret, db.key),
            ),
            Ok((code, last)) => broken(
                "database",
                format!("`airflow db check` in the scheduler exited {code}: {last}"),
                format!(
                    "check host, port, user and password in Secret {} (key {}), and that the database accepts connections from the cluster's nodes",
                    db.secret, db.key
                ),
            ),
            Err(e) => broken("database", e.to_string(), "the fix above, then `cargo xtask k8s-up`"),
        };
        if !push(c) {
            return Ok(false);
        }
    }

    // 9. Remote task logs: the bucket, through the api-server's own connection (the
    //    api-server is what reads a finished task's log).
    let c = ctx.block_on(async {
        let pod = crate::cluster::pods::ready_pod(&cluster, &settings, "api-server").await?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let container = crate::cluster::pods::pick_container(&pod, None)?;
        crate::airflow::remote_logs::probe(&cluster, &name, &container).await
    });
    let c = match c {
        Err(e) => broken("logs", e.to_string(), "`cargo xtask logs api-server`"),
        Ok(p) if !p.remote => ok("logs", "task logs on the airflow-logs volume (no remote logging)"),
        Ok(p) if p.ok => ok(
            "logs",
            format!(
                "remote task logs: bucket {} at {} reachable through connection `{}`",
                p.bucket,
                p.endpoint.as_deref().unwrap_or("AWS S3"),
                p.conn_id
            ),
        ),
        Ok(p) => {
            let (what, fix) = p.diagnosis(&cluster.namespace);
            broken("logs", what, fix)
        }
    };
    if !push(c) {
        return Ok(false);
    }

    // 10. DAG import errors, from the API.
    let c = match crate::airflow::session::api_session(ctx, &cluster) {
        Err(e) => broken("dags", format!("the Airflow API is not reachable: {e}"), "`cargo xtask logs api-server`"),
        Ok((_pf, api, _)) => match api.import_errors() {
            Err(e) => broken("dags", e.to_string(), "`cargo xtask logs api-server`"),
            Ok(errors) if errors.is_empty() => ok("dags", "no import errors"),
            Ok(errors) => broken(
                "dags",
                errors
                    .iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e.filename,
                            e.stack_trace.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n  "),
                "fix the files, check them with `cargo xtask dags check`, ship with `cargo xtask k8s-up` (or keep `cargo xtask watch` running)",
            ),
        },
    };
    Ok(push(c))
}

pub fn run(ctx: &Ctx, args: &DoctorArgs) -> Result<()> {
    let mut all = Vec::new();
    let human = !args.json;
    let healthy = checks(ctx, args, &mut |c: &Check| {
        if human {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            println!("{mark} {:<11} {}", c.name, c.detail.replace('\n', "\n                 "));
            if let Some(fix) = &c.fix {
                println!("     {:<11} fix: {fix}", "");
            }
        }
        all.push(serde_json::json!({"check": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix}));
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"healthy": healthy, "checks": all}))?);
    } else if healthy {
        println!("everything checks out");
    }
    if healthy { Ok(()) } else { Err(Reported(1).into()) }
}
