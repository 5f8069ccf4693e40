//! `cargo xtask k8s-down`: delete the kind cluster, or only what xtask applied.

use anyhow::Result;

use crate::cli::K8sDownArgs;
use crate::cluster::{Target, kind, local_registry};
use crate::ctx::Ctx;
use crate::deploy::apply;

pub fn run(ctx: &Ctx, args: &K8sDownArgs) -> Result<()> {
    let project = &ctx.project;
    let (target, settings) = Target::from_args(project, &args.cluster)?;
    match &target {
        Target::Kind { name, kubeconfig } if !args.keep_cluster => {
            kind::require()?;
            if kind::clusters()?.contains(name) {
                kind::delete(name)?;
                println!("deleted kind cluster {name}");
            } else {
                println!("no kind cluster {name}: nothing to delete");
            }
            // The last cluster gone, the local registry and kind's network go too.
            let docker = ctx.docker()?.0;
            if kind::clusters()?.is_empty() && ctx.block_on(local_registry::remove(&docker))? {
                println!("removed the local registry container {}", local_registry::CONTAINER);
            }
            if ctx.block_on(kind::remove_network_if_unused(&docker))? {
                println!("removed the Docker network {} (no cluster uses it)", kind::network_name());
            }
            let _ = std::fs::remove_file(kubeconfig);
        }
        _ => {
            if matches!(target, Target::Existing { .. }) && !args.keep_cluster {
                println!("{} was not made by xtask, so it stays; removing what xtask applied", target.describe());
            }
            let cluster = ctx.connect(&target, &settings.namespace)?;
            let removed = ctx.block_on(apply::delete_everything(&cluster))?;
            for r in &removed {
                println!("deleted {} {}", r.kind, r.name);
            }
            // Deletion only starts it: a claim stays until its pods are gone. Waiting here
            // means a k8s-up right after finds nothing half-deleted.
            ctx.block_on(apply::wait_deleted(&cluster, &removed, apply::TERMINATING_TIMEOUT, &mut |left| {
                eprintln!("waiting for {} to finish terminating: {}", left.len(), left.join(", "));
            }))?;
            println!("removed {} objects from namespace {}", removed.len(), settings.namespace);
        }
    }
    Ok(())
}
