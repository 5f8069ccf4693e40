//! `cargo xtask`: the monorepo's build automation, from DAG source to tasks on Kubernetes.

mod airflow;
mod base;
mod bench;
mod ci;
mod cli;
mod cluster;
mod config;
mod dags;
mod day2;
mod deploy;
mod encoding;
mod fsutil;
mod images;
mod k8s_down;
mod k8s_up;
mod manifests;
mod oci;
mod process;
mod report;
mod smoke;
mod status;
mod ui;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::Project;

/// A command that already reported its failure and only needs a non-zero exit.
#[derive(Debug, thiserror::Error)]
#[error("failed")]
pub struct Reported(pub u8);

fn main() -> ExitCode {
    // One TLS crypto provider for every client (kube, registries).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(Reported(code)) = err.downcast_ref::<Reported>() {
                return ExitCode::from(*code);
            }
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let project = Project::discover(cli.root.as_deref())?;
    match &cli.command {
        Command::Images(args) => images::run(&project, args),
        Command::Base(args) => base::run(&project, args),
        Command::Dags(args) => dags::run(&project, args),
        Command::Smoke(args) => smoke::run(&project, args),
        Command::Manifests(args) => manifests::run(&project, args),
        Command::K8sUp(args) => k8s_up::run(&project, args),
        Command::Ci(args) => ci::run(&project, args),
        Command::K8sDown(args) => k8s_down::run(&project, args),
        Command::Status(args) => status::run(&project, args),
        Command::Bench(args) => bench::run(&project, args),
        Command::Exec(args) => exit_with(day2::exec::run(&project, args)?),
        Command::Run(args) => exit_with(day2::run::run(&project, args)?),
        Command::Logs(args) => day2::logs::run(&project, args),
        Command::Doctor(args) => day2::doctor::run(&project, args),
        Command::Watch(args) => day2::watch::run(&project, args),
    }
}

/// A remote command's exit code becomes ours.
fn exit_with(code: i32) -> anyhow::Result<()> {
    if code == 0 { Ok(()) } else { Err(Reported(code.clamp(1, 255) as u8).into()) }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "xtask=debug,info",
        _ => "xtask=trace,debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("XTASK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}
