//! `cargo xtask images`: build the worker images, then optionally write an archive, push
//! to a registry, or load into Docker or containerd.

use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::{ImagesArgs, LoadTarget};
use crate::cluster::delivery::{self, LocalContainerd, Node};
use crate::config::{ImageOverrides, Project};
use crate::ctx::Ctx;
use crate::fsutil::human_bytes;
use crate::image_build::{BuildOptions, ImageReport, build, push_target, source_date_epoch};
use crate::oci::archive::{self, ArchiveImage, ArchiveStats};
use crate::oci::docker;
use crate::oci::registry::{self, PushReport};
use crate::oci::store::Store;
use crate::ui;

#[derive(Serialize)]
struct JsonReport<'a> {
    images: &'a [ImageReport],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pushes: Vec<PushReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    loads: Vec<docker::LoadResult>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    deliveries: Vec<delivery::Delivered>,
    #[serde(skip_serializing_if = "Option::is_none")]
    archive: Option<ArchiveReport>,
    store: String,
    seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
struct ArchiveReport {
    path: String,
    #[serde(flatten)]
    stats: ArchiveStats,
}

pub fn run(ctx: &Ctx, args: &ImagesArgs) -> Result<()> {
    let project = &ctx.project;
    let started = Instant::now();
    let opts = BuildOptions {
        only: args.images.clone(),
        overrides: ImageOverrides {
            tag: args.tag.clone(),
            base: args.base.clone(),
            compression: args.compression,
            mtime: source_date_epoch()?,
            platform: args.platform.clone(),
            insecure: args.insecure_registry.clone(),
            ..Default::default()
        },
        no_cache: args.no_cache,
    };
    if args.verify {
        let store = Store::open(&project.store_dir())?;
        let bar = if args.json { indicatif::ProgressBar::hidden() } else { ui::count_bar("verify", "blobs") };
        let v = store.verify(&mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
        bar.finish_and_clear();
        if !args.json {
            println!(
                "verified {} blobs ({}) in {}: {}",
                v.checked,
                human_bytes(v.bytes),
                store.root(),
                if v.removed.is_empty() {
                    "all whole".to_string()
                } else {
                    format!("removed {} damaged, to be made again: {}", v.removed.len(), v.removed.join(", "))
                }
            );
        }
    }
    let (store, reports) = build(project, ctx.handle(), &opts, !args.json)?;
    let mut archive_report = None;
    if let Some(path) = &args.archive {
        let path = if path.is_absolute() { path.clone() } else { project.root.join(path) };
        archive_report = Some(write_archive(project, &store, &reports, &path, !args.json)?);
    }
    let mut pushes = Vec::new();
    if let Some(dest) = &args.push {
        for r in &reports {
            pushes.push(push_one(&store, r, dest, &args.insecure_registry, !args.json)?);
        }
    }
    let mut loads = Vec::new();
    let mut deliveries = Vec::new();
    let images: Vec<ArchiveImage> = reports.iter().map(ImageReport::archive_image).collect();
    match args.load {
        Some(LoadTarget::Docker) => {
            loads = docker::load(ctx.handle(), &store, &images)?;
            if !args.json {
                for l in &loads {
                    println!("docker   {}  {}  ({})", l.name, l.status, l.image_id);
                }
            }
        }
        Some(LoadTarget::Containerd) => {
            let node: Box<dyn Node> = Box::new(LocalContainerd { socket: args.containerd_socket.clone() });
            deliveries = delivery::deliver(&store, &images, std::slice::from_ref(&node), &mut |d| {
                if !args.json {
                    println!(
                        "ctr      {}  {}  {} sent, {} left out",
                        d.image,
                        d.status,
                        human_bytes(d.bytes),
                        human_bytes(d.omitted_bytes)
                    );
                }
            })?;
        }
        None => {}
    }
    if args.json {
        let report = JsonReport {
            images: &reports,
            pushes,
            loads,
            deliveries,
            archive: archive_report,
            store: project.rel(store.root()),
            seconds: started.elapsed().as_secs_f64(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("done in {}", ui::secs(started.elapsed().as_secs_f64()));
    }
    Ok(())
}

fn push_one(store: &Store, report: &ImageReport, dest: &str, insecure: &[String], human: bool) -> Result<PushReport> {
    let target = push_target(&report.reference, &report.name, dest)?;
    let total: u64 = report.all_layers.iter().map(|l| l.size()).sum();
    let bar = ui::bytes_bar("push", total);
    let r = registry::push(store, &report.manifest, &target, insecure, &mut |n| bar.inc(n))
        .with_context(|| format!("cannot push {} to {target}", report.name))?;
    bar.finish_and_clear();
    if human {
        println!(
            "push     {}  uploaded {} in {} blobs, skipped {} in {} blobs already there",
            r.reference,
            human_bytes(r.uploaded_bytes),
            r.uploaded_blobs,
            human_bytes(r.skipped_bytes),
            r.skipped_blobs
        );
    }
    Ok(r)
}

fn write_archive(
    project: &Project,
    store: &Store,
    reports: &[ImageReport],
    path: &camino::Utf8Path,
    human: bool,
) -> Result<ArchiveReport> {
    let images: Vec<ArchiveImage> = reports.iter().map(ImageReport::archive_image).collect();
    let total: u64 = reports.iter().flat_map(|r| r.all_layers.iter().map(|l| l.size())).sum();
    let bar = ui::bytes_bar("archive", total);
    let stats = archive::write_archive_file(store, &images, path, &mut |n| bar.inc(n))?;
    bar.finish_and_clear();
    if human {
        println!(
            "archive  {}  {}  (docker load -i / kind load image-archive / ctr -n k8s.io images import)",
            project.rel(path),
            human_bytes(stats.bytes)
        );
    }
    Ok(ArchiveReport { path: project.rel(path), stats })
}
