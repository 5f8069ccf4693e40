//! Where Airflow checks run: inside the built worker image on the local Docker engine
//! (through its API), or in a local virtualenv. Either way, stdout lines stream back live
//! and lines prefixed `@@xtask ` carry the JSON results.

use camino::{Utf8Path, Utf8PathBuf};
use std::collections::VecDeque;
use std::fs;
use std::io::BufRead;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;

use crate::config::Project;
use crate::image_build::recipe;
use crate::process;

pub const RESULT_PREFIX: &str = "@@xtask ";

pub enum Runner {
    /// A container of this image (fully qualified name, present in the Docker engine),
    /// driven on the process's runtime.
    Image { name: String, rt: tokio::runtime::Handle },
    /// A virtualenv with Airflow; DAGs and include come from the repository.
    Venv { python: Utf8PathBuf, dags: Utf8PathBuf, include: Utf8PathBuf },
}

pub struct Output {
    pub exit_code: i64,
    /// The last lines that were not results, for error messages.
    pub tail: String,
}

impl Runner {
    pub fn describe(&self) -> String {
        match self {
            Runner::Image { name, .. } => format!("in the image {name} (Docker engine)"),
            Runner::Venv { python, .. } => format!("in the virtualenv of {}", python),
        }
    }

    /// Where the DAGs are, as the script sees them.
    pub fn dags_dir(&self) -> String {
        match self {
            Runner::Image { .. } => "/opt/airflow/dags".into(),
            Runner::Venv { dags, .. } => dags.to_string(),
        }
    }

    /// Runs a Python script with arguments and environment; `on_result` gets the JSON of
    /// every result line as it arrives.
    pub fn run_python(
        &self,
        script: &str,
        args: &[String],
        env: &[(String, String)],
        on_result: &mut dyn FnMut(serde_json::Value) -> Result<()>,
    ) -> Result<Output> {
        let mut tail: VecDeque<String> = VecDeque::new();
        let mut handle_line = |line: &str, on_result: &mut dyn FnMut(serde_json::Value) -> Result<()>| -> Result<()> {
            if let Some(json) = line.strip_prefix(RESULT_PREFIX) {
                let v: serde_json::Value =
                    serde_json::from_str(json).with_context(|| format!("garbled result line: {line}"))?;
                on_result(v)?;
            } else {
                tail.push_back(line.to_string());
                if tail.len() > 40 {
                    tail.pop_front();
                }
            }
            Ok(())
        };
        let exit_code = match self {
            Runner::Venv { python, dags, include } => {
                let mut full_args = vec!["-c".to_string(), script.to_string()];
                full_args.extend(args.iter().cloned());
                let mut cmd = duct::cmd(python.as_std_path(), full_args)
                    .env("AIRFLOW__CORE__DAGS_FOLDER", dags)
                    .env("PYTHONPATH", include)
                    .env("XTASK_DAGS_DIR", dags)
                    .stderr_to_stdout()
                    .unchecked();
                for (k, v) in env {
                    cmd = cmd.env(k, v);
                }
                let reader = cmd.reader().with_context(|| format!("cannot run {}", python))?;
                let mut lines = std::io::BufReader::new(&reader);
                let mut line = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line)? == 0 {
                        break;
                    }
                    handle_line(line.trim_end(), on_result)?;
                }
                let out = reader.try_wait()?.ok_or_else(|| anyhow!("the script's output ended before it exited"))?;
                i64::from(out.status.code().unwrap_or(-1))
            }
            Runner::Image { name, rt } => {
                rt.block_on(run_in_container(name, script, args, env, &mut |l| handle_line(l, on_result)))?
            }
        };
        Ok(Output { exit_code, tail: tail.into_iter().collect::<Vec<_>>().join("\n") })
    }
}

async fn run_in_container(
    image: &str,
    script: &str,
    args: &[String],
    env: &[(String, String)],
    on_line: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<i64> {
    use bollard::models::ContainerCreateBody;
    use bollard::query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder};
    let (docker, _) = crate::oci::docker::connect().await?;
    let mut cmd = vec!["python".to_string(), "-c".to_string(), script.to_string()];
    cmd.extend(args.iter().cloned());
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(cmd),
        env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        ..Default::default()
    };
    let name = format!(
        "xtask-check-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos()
    );
    let created = docker
        .create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body)
        .await
        .with_context(|| format!("cannot create a container of {image}"))?;
    let id = created.id;
    let result = async {
        docker
            .start_container(&id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .context("cannot start the container")?;
        let mut logs =
            docker.logs(&id, Some(LogsOptionsBuilder::default().follow(true).stdout(true).stderr(true).build()));
        let mut pending = String::new();
        while let Some(chunk) = logs.next().await {
            let chunk = chunk.context("lost the container's output")?;
            pending.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            while let Some(i) = pending.find('\n') {
                let line: String = pending.drain(..=i).collect();
                on_line(line.trim_end())?;
            }
        }
        if !pending.is_empty() {
            on_line(pending.trim_end())?;
        }
        let mut wait = docker.wait_container(&id, None::<bollard::query_parameters::WaitContainerOptions>);
        let code = match wait.next().await {
            Some(Ok(r)) => r.status_code,
            // A non-zero exit comes back as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(anyhow!("waiting for the container failed: {e}")),
            None => -1,
        };
        Ok::<i64, anyhow::Error>(code)
    }
    .await;
    let _ = docker.remove_container(&id, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
    result
}

/// A virtualenv with the base recipe's Airflow, made with the host's python3 on first use
/// (and remade when the recipe changes).
pub fn ensure_venv(project: &Project, venv: &Utf8Path, human: bool) -> Result<Utf8PathBuf> {
    let loaded = recipe::load(project, "airflow", 0)?;
    let python = venv.join("bin/python");
    let marker = venv.join(".xtask-recipe");
    if python.is_file() && fs::read_to_string(&marker).ok().as_deref() == Some(loaded.key.as_str()) {
        return Ok(python);
    }
    let py = loaded
        .recipe
        .python
        .as_ref()
        .ok_or_else(|| anyhow!("docker/base/airflow.toml has no [python] section to make a virtualenv from"))?;
    let host_python = process::require("python3", "sudo apt-get install python3 python3-venv")?;
    if human {
        println!("making a virtualenv with Airflow at {} (once; about a minute)", project.rel(venv));
    }
    let log = project.work_dir().join("venv.log");
    fs::create_dir_all(project.work_dir())?;
    let _ = fs::remove_dir_all(venv);
    process::run_logged(
        duct::cmd(
            host_python.as_std_path(),
            [std::ffi::OsStr::new("-m"), std::ffi::OsStr::new("venv"), venv.as_os_str()],
        ),
        &log,
        "python3 -m venv",
    )?;
    let mut args: Vec<String> = vec!["install".into(), "--quiet".into()];
    if let Some((path, _)) = &loaded.constraints {
        args.push("--constraint".into());
        args.push(path.to_string());
    }
    args.extend(py.requirements.iter().cloned());
    let pip = venv.join("bin/pip");
    if let Err(e) = process::run_logged(duct::cmd(pip.as_std_path(), &args), &log, "pip install") {
        let _ = fs::remove_dir_all(venv);
        bail!("{e}\n(the virtualenv was removed; fix the cause and run again)");
    }
    fs::write(&marker, &loaded.key)?;
    Ok(python)
}

/// Where checks run for a command: `--local` (a virtualenv) or the built worker image,
/// built and loaded into the Docker engine first (both skipped when unchanged).
pub fn for_project(
    project: &Project,
    rt: &tokio::runtime::Handle,
    local: bool,
    venv: Option<&Utf8Path>,
    image: &str,
    human: bool,
) -> Result<Runner> {
    if local {
        let venv = venv.map(Utf8Path::to_path_buf).unwrap_or_else(|| project.work_dir().join("venv"));
        let python = ensure_venv(project, &venv, human)?;
        return Ok(Runner::Venv {
            python,
            dags: project.root.join("files/dags"),
            include: project.root.join("files/include"),
        });
    }
    let opts = crate::image_build::BuildOptions { only: vec![image.to_string()], ..Default::default() };
    let (store, reports) = crate::image_build::build(project, rt, &opts, false)?;
    let images: Vec<_> = reports.iter().map(crate::image_build::ImageReport::archive_image).collect();
    crate::oci::docker::load(rt, &store, &images)?;
    Ok(Runner::Image { name: reports[0].reference.clone(), rt: rt.clone() })
}
