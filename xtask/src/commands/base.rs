//! `cargo xtask base`: build the Airflow base image from its recipe in docker/base/.

use anyhow::Result;
use serde::Serialize;

use crate::cli::BaseArgs;
use crate::ctx::Ctx;
use crate::fsutil::human_bytes;
use crate::image_build::recipe::{self, BuildOpts};
use crate::image_build::source_date_epoch;
use crate::oci::store::Store;
use crate::ui;

#[derive(Serialize)]
struct Report<'a> {
    recipe: String,
    reference: String,
    /// Read it from elsewhere as oci:STORE:NAME.
    store: String,
    store_name: String,
    manifest_digest: &'a oci_spec::image::Digest,
    layers: Vec<(&'a oci_spec::image::Digest, u64)>,
    built: bool,
    seconds: f64,
}

pub fn run(ctx: &Ctx, args: &BaseArgs) -> Result<()> {
    let project = &ctx.project;
    let store = Store::open(&project.store_dir())?;
    let mtime = source_date_epoch()?.unwrap_or(crate::config::DEFAULT_MTIME);
    let opts = BuildOpts { force: args.force || args.update_lock, update_lock: args.update_lock, human: !args.json };
    if !args.json {
        println!("base  docker/base/{}.toml", args.name);
    }
    let outcome = recipe::ensure(project, &store, &args.name, mtime, &opts)?;
    let base = &outcome.base;
    if args.json {
        let report = Report {
            recipe: format!("docker/base/{}.toml", args.name),
            reference: format!("xtask-base:{}", args.name),
            store: store.root().to_string(),
            store_name: outcome.store_name.clone(),
            manifest_digest: base.manifest.digest(),
            layers: base.layers.iter().map(|l| (l.digest(), l.size())).collect(),
            built: outcome.built,
            seconds: outcome.seconds,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "  manifest {}  {} layers, {}  {}",
            base.manifest.digest(),
            base.layers.len(),
            human_bytes(base.total_size()),
            if outcome.built {
                format!("built in {}", ui::secs(outcome.seconds))
            } else {
                "up to date (recipe unchanged)".into()
            }
        );
    }
    Ok(())
}
