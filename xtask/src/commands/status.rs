//! `cargo xtask status`: the cluster and its nodes, whether each node has the images as
//! last built (stale?), each component's state, and failing pods with their reasons.

use anyhow::Result;

use crate::cli::StatusArgs;
use crate::cluster::Target;
use crate::cluster::inspect::{Status, collect};
use crate::ctx::Ctx;
use crate::error::Reported;

pub fn run(ctx: &Ctx, args: &StatusArgs) -> Result<()> {
    let project = &ctx.project;
    let (target, settings) = Target::from_args(project, &args.cluster)?;
    let built = crate::pipeline::deployed_builds(project);
    let cluster = ctx.connect(&target, &settings.namespace)?;
    let status = ctx.block_on(collect(&cluster, &built))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print(&status);
    }
    if !status.healthy() {
        return Err(Reported(1).into());
    }
    Ok(())
}

fn print(s: &Status) {
    println!("cluster    {} at {} (Kubernetes {})", s.cluster, s.server, s.version);
    for n in &s.nodes {
        let imgs: Vec<String> = n
            .images
            .iter()
            .map(|(name, has)| format!("{name} {}", if *has { "current" } else { "STALE or missing" }))
            .collect();
        println!(
            "node       {} {} kubelet {}  {}",
            n.name,
            if n.ready { "Ready" } else { "NOT READY" },
            n.kubelet,
            imgs.join(", ")
        );
    }
    for (name, digest) in &s.built {
        println!("built      {name} {digest}");
    }
    if s.components.is_empty() {
        println!("components none in namespace {} (run `cargo xtask k8s-up`)", s.namespace);
    }
    for c in &s.components {
        println!(
            "component  {:<24} {}/{} ready{}",
            c.name,
            c.ready,
            c.desired,
            if c.stale { "  runs an image older than the last build (run `cargo xtask k8s-up`)" } else { "" }
        );
    }
    for p in &s.failing_pods {
        println!("failing    {}", p.explain(&s.namespace).replace('\n', "\n           "));
    }
    println!("{}", if s.healthy() { "healthy" } else { "NOT healthy" });
}
