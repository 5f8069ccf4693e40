//! A long-lived DAG checker (`dag_check.py --serve`), in the worker image on the Docker
//! engine or in a local virtualenv: Airflow is imported once, then each request parses
//! only the files it names. What `watch` checks every change with.

use std::io::{BufRead, BufReader, Write};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::runtime::Handle;

use super::dagcheck::{self, FileResult};
use super::{container, runner};
use crate::config::Project;

/// Where the DAG and include trees sit in the worker image.
pub const DAGS_IN_IMAGE: &str = "/opt/airflow/dags";
pub const INCLUDE_IN_IMAGE: &str = "/opt/airflow/include";

/// A long-lived `dag_check.py --serve`: Airflow is imported once, each check parses only
/// the files asked for.
pub enum Checker {
    Container { attached: container::Attached, pending: String, rt: tokio::runtime::Handle },
    Local { stdin: std::io::PipeWriter, stdout: Box<BufReader<duct::ReaderHandle>> },
}

impl Checker {
    pub fn start(project: &Project, rt: &Handle, mode: &str) -> Result<Checker> {
        let skip = serde_json::to_string(&dagcheck::exceptions(project))?;
        let dags_dir = project.root.join("files/dags");
        let include_dir = project.root.join("files/include");
        let mut checker = match mode {
            "local" => {
                let python = runner::ensure_venv(project, &project.work_dir().join("venv"), true)?;
                // Requests go in through a pipe we keep; duct kills the child when its
                // reader is dropped.
                let (requests, stdin) = std::io::pipe().context("cannot make a pipe for the DAG checker")?;
                let reader = duct::cmd(python.as_std_path(), ["-c", dagcheck::CHECK_SCRIPT, "--serve"])
                    .env("XTASK_DAGS_DIR", &dags_dir)
                    .env("XTASK_INCLUDE_DIR", &include_dir)
                    .env("AIRFLOW__CORE__DAGS_FOLDER", &dags_dir)
                    .env("PYTHONPATH", &include_dir)
                    .env("XTASK_SKIP", &skip)
                    .stdin_file(requests)
                    .stderr_null()
                    .reader()
                    .context("cannot start the DAG checker in the virtualenv")?;
                Checker::Local { stdin, stdout: Box::new(BufReader::new(reader)) }
            }
            "image" => {
                let runner = runner::for_project(project, rt, false, None, "airflow-worker", false)?;
                let runner::Runner::Image { name: image, .. } = runner else {
                    bail!("no worker image to check DAGs in")
                };
                let spec = container::Spec {
                    image,
                    cmd: vec!["python".into(), "-c".into(), dagcheck::CHECK_SCRIPT.into(), "--serve".into()],
                    env: vec![format!("XTASK_SKIP={skip}")],
                    binds: vec![
                        format!("{}:{DAGS_IN_IMAGE}:ro", dags_dir),
                        format!("{}:{INCLUDE_IN_IMAGE}:ro", include_dir),
                    ],
                    tty: false,
                    auto_remove: true,
                };
                let attached = rt.block_on(container::start(&spec))?;
                Checker::Container { attached, pending: String::new(), rt: rt.clone() }
            }
            other => {
                bail!("--check {other}: use `image` (the worker image on the Docker engine) or `local` (a virtualenv)")
            }
        };
        match checker.next_result()? {
            Some(v) if v["ready"] == true => Ok(checker),
            other => {
                bail!("the DAG checker did not start (it said {other:?}); try `cargo xtask dags check` to see why")
            }
        }
    }

    /// The next `@@xtask` line's JSON; None when the checker has exited.
    fn next_result(&mut self) -> Result<Option<serde_json::Value>> {
        loop {
            let line = match self {
                Checker::Local { stdout, .. } => {
                    let mut line = String::new();
                    if stdout.read_line(&mut line)? == 0 {
                        return Ok(None);
                    }
                    line
                }
                Checker::Container { attached, pending, rt } => loop {
                    if let Some(i) = pending.find('\n') {
                        break pending.drain(..=i).collect::<String>();
                    }
                    match rt.block_on(attached.output.next()) {
                        Some(chunk) => pending.push_str(&String::from_utf8_lossy(
                            &chunk.context("lost the DAG checker's output")?.into_bytes(),
                        )),
                        None => return Ok(None),
                    }
                },
            };
            if let Some(json) = line.trim_end().strip_prefix(runner::RESULT_PREFIX) {
                return Ok(Some(serde_json::from_str(json)?));
            }
        }
    }

    pub fn check(&mut self, files: &[String]) -> Result<Vec<FileResult>> {
        let request = format!("{}\n", serde_json::to_string(files)?);
        match self {
            Checker::Local { stdin, .. } => {
                stdin.write_all(request.as_bytes())?;
                stdin.flush()?;
            }
            Checker::Container { attached, rt, .. } => {
                rt.block_on(async {
                    attached.input.write_all(request.as_bytes()).await?;
                    attached.input.flush().await
                })?;
            }
        }
        let mut results = Vec::new();
        loop {
            match self.next_result()? {
                None => bail!("the DAG checker exited; restart `cargo xtask watch`"),
                Some(v) if v["done"] == true => return Ok(results),
                Some(v) => results.push(serde_json::from_value(v)?),
            }
        }
    }

    pub fn stop(self) {
        match self {
            Checker::Local { stdin, stdout } => {
                drop(stdin);
                // Dropping the reader kills the child and reaps it.
                drop(stdout);
            }
            Checker::Container { attached, rt, .. } => {
                rt.block_on(attached.remove());
            }
        }
    }
}
