//! Build -> deliver -> apply -> wait: what `k8s-up` does, and what `watch`, `ci` and the
//! benchmarks reuse. Each step prints one line (unless JSON was asked for) and is timed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::cli::K8sUpArgs;
use crate::cluster::delivery::{self, Delivered, KindNode, LocalContainerd, Node};
use crate::cluster::{Target, kind, local_registry};
use crate::ctx::Ctx;
use crate::deploy::apply::{self, ApplyReport};
use crate::deploy::check::{self, CheckContext};
use crate::deploy::render::{self, RenderOptions};
use crate::deploy::wait;
use crate::fsutil::human_bytes;
use crate::image_build::{self, BuildOptions, ImageReport};
use crate::oci::DescriptorExt;
use crate::oci::image::BuiltImage;
use crate::oci::registry::{self, PushReport};
use crate::ui;

/// How far the pipeline goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// The images are on the nodes (or in the registry); nothing is applied (`watch`
    /// ships first and rolls after the change was parsed).
    Delivered,
    /// k8s/ is applied; nothing is waited for (`--no-wait`).
    Applied,
    /// Every component is healthy.
    Healthy,
}

/// What k8s-up did, for `--json` and for `status` (written to target/xtask/k8s-up.json).
#[derive(Serialize, serde::Deserialize, Default)]
pub struct UpReport {
    pub target: String,
    pub namespace: String,
    /// Placeholder -> the image reference pods use.
    pub images: BTreeMap<String, String>,
    pub built: Vec<String>,
    #[serde(skip_deserializing)]
    pub deliveries: Vec<Delivered>,
    #[serde(skip_deserializing)]
    pub pushes: Vec<PushReport>,
    #[serde(skip_deserializing)]
    pub apply: ApplyReport,
    pub steps: Vec<(String, f64)>,
    pub changed: bool,
    /// How the cluster was reached and what was applied, so `watch` repeats exactly that.
    #[serde(default)]
    pub delivery: Delivery,
}

/// The flags of a k8s-up that decide what is shipped and applied: what `watch` reuses.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Delivery {
    pub overlays: Vec<String>,
    pub registry: Option<String>,
    pub insecure_registries: Vec<String>,
    pub node_containerd: Option<camino::Utf8PathBuf>,
}

impl Delivery {
    pub fn of(args: &K8sUpArgs) -> Delivery {
        Delivery {
            overlays: args.overlay.clone(),
            registry: args.registry.clone(),
            insecure_registries: args.insecure_registry.clone(),
            node_containerd: args.node_containerd.clone(),
        }
    }
}

pub const REPORT_FILE: &str = "k8s-up.json";

/// The report of the last complete k8s-up (or watch roll) in this repository, if any.
pub fn last_report(project: &crate::config::Project) -> Option<UpReport> {
    let text = std::fs::read_to_string(project.work_dir().join(REPORT_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The last build of each image the last k8s-up deployed: what the nodes should hold.
/// Every image of docker/images.toml is built by `images` and `ci`, but only those the
/// applied documents use are shipped (an overlay's server only with its overlay). With no
/// k8s-up yet, every image built.
pub fn deployed_builds(project: &crate::config::Project) -> Vec<BuiltImage> {
    let deployed: Vec<String> = last_report(project).map(|r| r.images.into_keys().collect()).unwrap_or_default();
    image_build::last_built(project, &deployed).unwrap_or_default()
}

struct Steps {
    human: bool,
    times: Vec<(String, f64)>,
    started: Instant,
}

impl Steps {
    fn line(&self, s: &str) {
        if self.human {
            println!("{s}");
        }
    }
    fn done(&mut self, name: &str) {
        self.times.push((name.into(), self.started.elapsed().as_secs_f64()));
        self.started = Instant::now();
    }
}

/// Everything k8s-up does, reporting progress lines unless `args.json`; the report is also
/// written to target/xtask/k8s-up.json.
pub fn up(ctx: &Ctx, args: &K8sUpArgs, until: Until) -> Result<UpReport> {
    let project = &ctx.project;
    let human = !args.json;
    let (target, settings) = Target::from_args(project, &args.cluster)?;
    let mut steps = Steps { human, times: Vec::new(), started: Instant::now() };
    let mut report = UpReport {
        target: target.describe(),
        namespace: settings.namespace.clone(),
        delivery: Delivery::of(args),
        ..Default::default()
    };

    // k8s/ is checked before anything is built, shipped or created. The kind cluster also
    // gets the kind overlay (the nodePort its port mapping reaches).
    let mut overlays = args.overlay.clone();
    if matches!(target, Target::Kind { .. }) && !overlays.iter().any(|o| o == "kind") {
        overlays.push("kind".into());
    }
    let docs = crate::deploy::load_docs(project, &overlays)?;
    let placeholders = crate::deploy::placeholders(project)?;
    let problems = check::check(&docs, &CheckContext { placeholders: &placeholders });
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        bail!("k8s/ has {} problem(s); nothing was applied:\n{}", problems.len(), list.join("\n"));
    }
    let mut docs = docs;
    if let Some(db) = &settings.database {
        crate::deploy::use_external_database(&mut docs, db);
    }
    // 1. Preflight: what this path needs, with versions, or how to get it.
    match &target {
        Target::Kind { .. } => {
            let docker = ctx.docker()?.1;
            let (_, kind_version) = kind::require()?;
            steps.line(&format!("preflight  Docker engine {docker}, {kind_version}"));
        }
        Target::Existing { .. } => {
            if args.registry.is_none() && args.node_containerd.is_none() {
                bail!(
                    "images reach a cluster given by --kubeconfig through a registry: pass --registry HOST[:PORT][/PREFIX] (a registry its nodes pull from), or --node-containerd SOCKET when its node's containerd runs on this machine"
                );
            }
            steps.line(&format!("preflight  {}", target.describe()));
        }
    }
    steps.done("preflight");

    // 2. The cluster.
    if let Target::Kind { name, kubeconfig } = &target {
        kind::check_name(name)?;
        let exists = kind::clusters()?.contains(name);
        if exists && args.recreate {
            steps.line(&format!("cluster    deleting {name} (--recreate)"));
            kind::delete(name)?;
            ctx.forget_clusters();
        }
        if !exists || args.recreate {
            let node_image = match &args.node_image {
                Some(image) => image.clone(),
                None => ctx.block_on(kind::node_image(&ctx.docker()?.0, &settings.kubernetes_version)),
            };
            let log = project.work_dir().join("kind-create.log");
            std::fs::create_dir_all(project.work_dir())?;
            kind::create(name, &project.root.join("k8s/kind.yaml"), &node_image, 3, &log, &mut |attempt, previous| {
                if let Some(err) = previous {
                    steps.line(&format!(
                        "cluster    attempt {} failed: {}",
                        attempt - 1,
                        err.lines().last().unwrap_or("")
                    ));
                }
                steps.line(&format!("cluster    creating kind cluster {name} ({node_image}), attempt {attempt} of 3"));
            })?;
        } else {
            steps.line(&format!("cluster    reusing kind cluster {name}"));
        }
        kind::write_kubeconfig(name, kubeconfig)?;
        if args.export_kubeconfig {
            kind::export_kubeconfig(name)?;
        }
    }
    let cluster = ctx.connect(&target, &settings.namespace)?;
    let version = ctx.block_on(cluster.version())?;
    steps.line(&format!(
        "cluster    {} at {} (Kubernetes {version}), kubeconfig {}",
        target.describe(),
        cluster.url,
        project.rel(target.kubeconfig())
    ));
    if let Some(db) = &settings.database {
        ctx.block_on(crate::cluster::inspect::check_database_secret(&cluster, db))?;
        steps.line(&format!(
            "database   external: {} from Secret {}, key {} (no airflow-postgres StatefulSet)",
            crate::deploy::DB_CONN_ENV,
            db.secret,
            db.key
        ));
    }
    steps.done("cluster");

    // 3. Images: built (unless --no-build), then shipped where missing.
    // Only the images the applied documents use: an overlay's server comes with the overlay.
    let used = crate::deploy::render::images_used(&docs, &placeholders);
    let built: Vec<BuiltImage> = if args.no_build {
        image_build::last_built(project, &used)?
    } else {
        let opts = BuildOptions {
            only: used,
            overrides: crate::config::ImageOverrides { mtime: image_build::source_date_epoch()?, ..Default::default() },
            ..Default::default()
        };
        let (_, reports) = image_build::build(project, ctx.handle(), &opts, false)?;
        for r in &reports {
            let rebuilt: Vec<&str> =
                r.layers.iter().filter(|l| l.status == "rebuilt").map(|l| l.name.as_str()).collect();
            if r.changed || !rebuilt.is_empty() {
                report.built.push(r.name.clone());
            }
            steps.line(&format!(
                "images     {}  {}{}",
                r.name,
                r.manifest_digest,
                if rebuilt.is_empty() {
                    "  (unchanged)".to_string()
                } else {
                    format!("  rebuilt: {}", rebuilt.join(", "))
                }
            ));
        }
        reports.iter().map(ImageReport::built).collect()
    };
    steps.done("build");

    let store = crate::oci::store::Store::open(&project.store_dir())?;
    let mut pull_secret: Option<serde_json::Value> = None;
    let archive_images: Vec<_> = built.iter().map(BuiltImage::archive_image).collect();
    if let Some(dest) = &args.registry {
        let host = dest.split('/').next().unwrap_or(dest);
        if let Target::Kind { name, .. } = &target
            && local_registry::local_port(dest).is_none()
            && args.insecure_registry.iter().any(|h| h == host)
        {
            // A plain-HTTP registry: kind's nodes are told to pull from it that way.
            let nodes = kind::nodes(name)?;
            ctx.block_on(async {
                for node in &nodes {
                    local_registry::configure_node_http(node, host).await?;
                }
                Ok::<_, anyhow::Error>(())
            })?;
            steps.line(&format!("registry   {} kind node(s) pull {host} over HTTP (--insecure-registry)", nodes.len()));
        }
        // Credentials for that registry, and only for it, become the pods' pull secret.
        if let Some(config) = registry::pull_secret_json(host)? {
            pull_secret = Some(crate::deploy::secrets::pull_secret(&settings.namespace, &config));
            steps.line(&format!(
                "registry   pods pull {host} with your credentials for it: Secret {} (type kubernetes.io/dockerconfigjson, that host only)",
                crate::cluster::diagnose::PULL_SECRET
            ));
        }
        if let (Target::Kind { name, .. }, Some(port)) = (&target, local_registry::local_port(dest)) {
            // kind's local registry: the container, each node's mirror, the ConfigMap.
            let docker = ctx.docker()?.0;
            let said = local_registry::ensure(project, ctx.handle(), &store, &docker, port)?;
            let nodes = kind::nodes(name)?;
            ctx.block_on(async {
                for node in &nodes {
                    local_registry::configure_node(node, port).await?;
                }
                local_registry::publish(&cluster.client, port).await
            })?;
            steps.line(&format!(
                "registry   {said}; {} node(s) pull localhost:{port} from it; ConfigMap kube-public/local-registry-hosting",
                nodes.len()
            ));
        }
        for r in &built {
            let target_ref = image_build::push_target(&r.reference, &r.name, dest)?;
            let p = registry::push(&store, &r.manifest, &target_ref, &args.insecure_registry, &mut |_| {})
                .with_context(|| format!("cannot push {} to {target_ref}", r.name))?;
            steps.line(&format!(
                "deliver    {} -> {}: uploaded {}, skipped {} already there",
                r.name,
                p.reference,
                human_bytes(p.uploaded_bytes),
                human_bytes(p.skipped_bytes)
            ));
            let mut pinned = target_ref.clone();
            pinned.tag = None;
            pinned.digest = Some(r.manifest.sha256()?);
            report.images.insert(r.name.clone(), pinned.to_string());
            report.pushes.push(p);
        }
    } else {
        let nodes: Vec<Box<dyn Node>> = match (&target, &args.node_containerd) {
            (_, Some(socket)) => vec![Box::new(LocalContainerd { socket: socket.clone() })],
            (Target::Kind { name, .. }, None) => kind::nodes(name)?
                .into_iter()
                .map(|c| Box::new(KindNode { container: c, rt: ctx.handle().clone() }) as Box<dyn Node>)
                .collect(),
            (Target::Existing { .. }, None) => unreachable!("checked in preflight"),
        };
        report.deliveries = delivery::deliver(&store, &archive_images, &nodes, &mut |d| {
            steps.line(&format!(
                "deliver    {} -> {}: {}",
                d.image,
                d.node,
                match d.status {
                    "present" => "already there".to_string(),
                    s => format!(
                        "{s} archive, {} sent ({} the node had left out) in {}",
                        human_bytes(d.bytes),
                        human_bytes(d.omitted_bytes),
                        ui::secs(d.seconds)
                    ),
                }
            ))
        })?;
        for r in &built {
            report.images.insert(r.name.clone(), r.pinned_reference());
        }
    }
    drop(store);
    steps.done("deliver");
    if until == Until::Delivered {
        report.steps = steps.times.clone();
        return Ok(report);
    }

    // 4. Apply k8s/, pruning what xtask applied before and k8s/ dropped.
    let mut objects = render::render(
        &docs,
        &RenderOptions {
            namespace: &settings.namespace,
            images: &report.images,
            pull_secret: pull_secret.as_ref().map(|_| crate::cluster::diagnose::PULL_SECRET),
        },
    )?;
    if let Some(secret) = pull_secret {
        objects.push(secret);
        objects.sort_by_key(|v| render::apply_order(v["kind"].as_str().unwrap_or("")));
    }
    let applied = ctx.block_on(apply::apply(&cluster, &objects, true, &mut |o| {
        if o.action != "unchanged" {
            steps.line(&format!("apply      {} {} {}", o.kind, o.name, o.action));
        }
    }))?;
    steps.line(&format!("apply      {} in namespace {}", applied.summary(), settings.namespace));
    report.apply = applied;
    steps.done("apply");

    // 5. Wait until healthy.
    if until == Until::Healthy {
        let timeout = Duration::from_secs(args.timeout);
        let delivered: Vec<String> =
            if report.deliveries.is_empty() { vec![] } else { report.images.values().cloned().collect() };
        ctx.block_on(wait::wait(&cluster, &wait::steps_for(&objects, timeout), &delivered, &mut |line| {
            steps.line(&format!("wait       {line}"))
        }))?;
        steps.done("wait");
    }

    report.changed = !report.built.is_empty()
        || report.deliveries.iter().any(|d| d.status != "present")
        || report.pushes.iter().any(|p| p.uploaded_blobs > 0)
        || report.apply.changed();
    report.steps = steps.times.clone();
    crate::report::write_json(&project.work_dir().join(REPORT_FILE), &report)?;
    Ok(report)
}
