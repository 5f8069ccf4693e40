//! `cargo xtask node-image`: a kind node image built on this machine, for clusters on
//! networks that cannot pull `kindest/node`.

use anyhow::Result;

use crate::cli::NodeImageArgs;
use crate::ctx::Ctx;
use crate::fsutil::human_bytes;
use crate::kind_node::{self, components};
use crate::oci::archive;
use crate::ui;

pub fn run(ctx: &Ctx, args: &NodeImageArgs) -> Result<()> {
    let project = &ctx.project;
    let settings = crate::config::load_cluster(project, None, None)?;
    let version = args.kubernetes_version.clone().unwrap_or(settings.kubernetes_version);
    let mut say = |line: &str| eprintln!("{line}");
    if args.components_only {
        let built = components::ensure(&version, &kind_node::definition_dir(project).join("pause.c"), &mut say)?;
        println!("{}", built.bin);
        return Ok(());
    }
    let built = kind_node::build(project, ctx.handle(), &version, &mut say)?;
    println!(
        "node-image {}  {}  ({} system images, {} in all, {})",
        built.name,
        built.node.manifest_digest,
        built.system.len(),
        human_bytes(built.node.base.size + built.node.layers.iter().map(|l| l.size).sum::<u64>()),
        if built.node.changed { format!("built in {}", ui::secs(built.seconds)) } else { "unchanged".into() }
    );
    let image = built.node.archive_image();
    if let Some(path) = &args.archive {
        let stats = archive::write_archive_file(&built.store, std::slice::from_ref(&image), path, &mut |_| {})?;
        println!("archive    {path}  {}  (docker load -i {path})", human_bytes(stats.bytes));
    }
    if !args.no_load {
        ctx.docker()?;
        for r in crate::oci::docker::load(ctx.handle(), &built.store, std::slice::from_ref(&image))? {
            println!(
                "load       {} into the Docker engine: {}",
                r.name,
                if r.status == "skipped" { "already there".to_string() } else { human_bytes(r.bytes) }
            );
        }
        println!("kind       cargo xtask k8s-up uses it; or: kind create cluster --image {}", built.name);
    }
    Ok(())
}
