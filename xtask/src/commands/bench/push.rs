//! `cargo xtask bench push`: pushing the image to a registry, cold and after one DAG edit,
//! next to `docker push` of the same content.

use std::fs;
use std::process::Command;

use anyhow::{Result, bail};

use super::parsed::{median, median_u64};
use super::scenario::{Scenario, edit_one_dag, scenario};
use super::tools::{
    BenchRegistry, PrivateContainerd, Run, builder_name, buildkit_installed, docker_build, docker_has_base, docker_ok,
    docker_save_import, timed,
};
use crate::cli::BenchImagesArgs;
use crate::config::Project;
use crate::fsutil::human_bytes;
use crate::ui::secs;

pub(super) fn push(project: &Project, args: &BenchImagesArgs) -> Result<()> {
    let sc = scenario(project, args)?;
    let registry = BenchRegistry::start(&sc.dir.join("registry"))?;
    let exe = std::env::current_exe()?;
    let xtask = |extra: &[&str]| -> Result<Run> {
        let mut c = Command::new(&exe);
        c.arg("--root").arg(&sc.repo).arg("images").arg("--json").args(extra).env_remove("SOURCE_DATE_EPOCH");
        timed(c)
    };
    eprintln!("measuring: first push of the whole image (peak memory of pushing the base)");
    xtask(&[])?;
    let first_push = xtask(&["--push", &registry.host])?;
    // After each edit the image is built first, so the push alone is timed, as for docker.
    let repeat = args.repeat.max(1);
    let (mut ours, mut ours_bytes, mut ours_stored) = (Vec::new(), Vec::new(), Vec::new());
    let mut dag_layer = 0;
    for i in 0..repeat {
        edit_one_dag(&sc.repo, 300 + i as u32)?;
        let rebuilt: serde_json::Value = serde_json::from_slice(&xtask(&[])?.stdout)?;
        dag_layer = super::scenario::new_dag_layer(&rebuilt).unwrap_or(0);
        let before = registry.stored_bytes();
        eprintln!("measuring ({}/{repeat}): xtask push after one DAG changed", i + 1);
        let run = xtask(&["--push", &registry.host])?;
        let report: serde_json::Value = serde_json::from_slice(&run.stdout)?;
        ours.push(run.seconds);
        ours_bytes.push(report["pushes"][0]["uploaded_bytes"].as_u64().unwrap_or(0));
        ours_stored.push(registry.stored_bytes() - before);
    }
    let ours_seconds = median(&ours);
    let ours_stored = median_u64(&ours_stored);
    let ours_bytes = median_u64(&ours_bytes);

    // Pulling the whole image back as a base, into a clean store.
    let pull_repo = sc.dir.join("pull-repo");
    let _ = fs::remove_dir_all(&pull_repo);
    fs::create_dir_all(pull_repo.join("docker"))?;
    fs::create_dir_all(pull_repo.join("files/dags"))?;
    fs::write(
        pull_repo.join("docker/images.toml"),
        format!(
            "[[image]]\nname = \"pulled\"\nbase = \"docker://{}/bench-worker:dev\"\n[[image.layer]]\nname = \"dags\"\nsource = \"files/dags\"\ntarget = \"/opt/airflow/dags\"\n",
            registry.host
        ),
    )?;
    eprintln!("measuring: pull of the whole image as a base (peak memory)");
    let mut c = Command::new(&exe);
    c.arg("--root").arg(&pull_repo).args(["images", "--json"]);
    let pull = timed(c)?;

    let docker = if args.no_docker || !docker_ok() { None } else { Some(docker_push_peer(&sc, &registry, repeat)?) };

    println!("\nscenario: {}", sc.description);
    println!("after one DAG changed (the new DAG layer is {} compressed):", human_bytes(dag_layer));
    if let Some(d) = &docker {
        println!("docker: {}", d.builder);
    }
    println!("{repeat} run(s) each, median; bytes are what the registry stored (the same place for both)");
    println!("\n{:<44} {:>10} {:>12}   note", "", "time", "bytes stored");
    println!(
        "{:<44} {:>10} {:>12}   {:.2}x the DAG layer (target <= 1.1x); xtask counted {} uploaded",
        "xtask images --push (push only)",
        secs(ours_seconds),
        human_bytes(ours_stored),
        ours_stored as f64 / dag_layer.max(1) as f64,
        human_bytes(ours_bytes)
    );
    if let Some(d) = &docker {
        println!(
            "{:<44} {:>10} {:>12}   xtask push takes {:.3} of its time",
            "docker push (push only)",
            secs(d.push_seconds),
            human_bytes(d.push_bytes),
            ours_seconds / d.push_seconds
        );
        println!(
            "{:<44} {:>10} {:>12}   what kind load does (bytes: the archive); xtask push takes {:.3} of its time",
            "docker save | ctr import",
            secs(d.save_import_seconds),
            human_bytes(d.save_bytes),
            ours_seconds / d.save_import_seconds
        );
    }
    println!(
        "\npeak memory: pushing the whole image ({} base) {:.0} MB; pulling it into a clean store {:.0} MB in {} (target < 150 MB)",
        human_bytes(sc.base_bytes),
        first_push.max_rss_kb as f64 / 1024.0,
        pull.max_rss_kb as f64 / 1024.0,
        secs(pull.seconds)
    );
    Ok(())
}

pub(super) struct DockerPush {
    pub(super) builder: &'static str,
    pub(super) push_seconds: f64,
    pub(super) push_bytes: u64,
    pub(super) save_import_seconds: f64,
    pub(super) save_bytes: u64,
}

pub(super) fn docker_push_peer(sc: &Scenario, registry: &BenchRegistry, repeat: usize) -> Result<DockerPush> {
    // The base must be in the engine: the images bench loads it.
    let have_base = docker_has_base()?;
    if !have_base {
        bail!("the bench base is not in the Docker engine; run `cargo xtask bench images` first (it loads it)");
    }
    let image = format!("{}/bench-docker:latest", registry.host);
    let buildkit = buildkit_installed();
    let build = || -> Result<f64> {
        let dockerfile = sc.repo.join("files/Dockerfile");
        Ok(timed(docker_build(buildkit, &[], &dockerfile, &sc.repo.join("files"), &image))?.seconds)
    };
    let push = || -> Result<f64> {
        let mut c = Command::new("docker");
        c.args(["push", &image]);
        Ok(timed(c)?.seconds)
    };
    eprintln!("measuring: docker push (first, whole image)");
    build()?;
    push()?;
    let (mut pushes, mut stored) = (Vec::new(), Vec::new());
    for i in 0..repeat {
        edit_one_dag(&sc.repo, 400 + i as u32)?;
        build()?;
        let before = registry.stored_bytes();
        eprintln!("measuring ({}/{repeat}): docker push after one DAG changed", i + 1);
        pushes.push(push()?);
        stored.push(registry.stored_bytes() - before);
    }
    let (push_seconds, push_bytes) = (median(&pushes), median_u64(&stored));

    eprintln!("measuring: docker save | ctr import (what kind load does)");
    let containerd = PrivateContainerd::start(&sc.dir.join("containerd"))?;
    let (save_import_seconds, save_bytes) = docker_save_import(&image, &sc.dir.join("save.tar"), containerd.ctr())?;
    Ok(DockerPush { builder: builder_name(buildkit), push_seconds, push_bytes, save_import_seconds, save_bytes })
}
