//! `cargo xtask manifests check|render`: the documents in k8s/, as typed objects.

use std::collections::BTreeSet;

use anyhow::Result;
use serde_json::json;

use crate::cli::{ManifestsArgs, ManifestsCommand};
use crate::config::{self};
use crate::ctx::Ctx;
use crate::deploy::check::{self, CheckContext};
use crate::deploy::render::{self, RenderOptions};
use crate::deploy::secrets::GENERATED;
use crate::deploy::{built_images, load_docs, placeholders};
use crate::error::Reported;

pub fn run(ctx: &Ctx, args: &ManifestsArgs) -> Result<()> {
    let project = &ctx.project;
    match &args.command {
        ManifestsCommand::Check { overlay, json } => {
            let docs = load_docs(project, overlay)?;
            let placeholders = placeholders(project)?;
            let problems = check::check(&docs, &CheckContext { placeholders: &placeholders });
            let unchecked = check::unchecked(&docs);
            let files: BTreeSet<&str> = docs.iter().map(|d| d.file.as_str()).collect();
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "documents": docs.len(),
                        "files": files.len(),
                        "problems": problems,
                        "unchecked": unchecked,
                    }))?
                );
            } else {
                for p in &problems {
                    println!("{p}");
                }
                for u in &unchecked {
                    println!("note: {u}");
                }
                if problems.is_empty() {
                    println!("{} documents in {} files: OK", docs.len(), files.len());
                } else {
                    println!("{} problem(s) in {} documents", problems.len(), docs.len());
                }
            }
            if !problems.is_empty() {
                return Err(Reported(1).into());
            }
            Ok(())
        }
        ManifestsCommand::Render { overlay, namespace, image } => {
            let cluster = config::load_cluster(project, namespace.as_deref(), None)?;
            let mut docs = load_docs(project, overlay)?;
            if let Some(db) = &cluster.database {
                crate::deploy::use_external_database(&mut docs, db);
            }
            let (mut images, missing) = built_images(project)?;
            for o in image {
                let (k, v) = render::parse_image_override(o)?;
                images.insert(k, v);
            }
            for m in missing.iter().filter(|m| !images.contains_key(*m)) {
                eprintln!("note: image `{m}` is not built yet, so it stays a placeholder; run `cargo xtask images`");
            }
            let mut objects = render::render(
                &docs,
                &RenderOptions { namespace: &cluster.namespace, images: &images, pull_secret: None },
            )?;
            objects.sort_by_key(|v| render::apply_order(v["kind"].as_str().unwrap_or("")));
            for o in &objects {
                println!("---\n{}", serde_yaml_ng::to_string(o)?.trim_end());
            }
            // Generated secrets are left out: a placeholder applied by hand or by a GitOps
            // tool would become the real (and public) key. Say what they are and where to
            // read them instead.
            println!("# Not rendered: the Secrets `cargo xtask k8s-up` generates and keeps only in the cluster.");
            for g in GENERATED {
                println!("#   {} (keys: {})", g.name, g.keys.join(", "));
            }
            println!(
                "# Create them before applying this elsewhere, or read a cluster's with:\n#   kubectl -n {} get secret NAME -o jsonpath='{{.data.KEY}}' | base64 -d",
                cluster.namespace
            );
            Ok(())
        }
    }
}
