//! `cargo xtask`: the monorepo's build automation, from DAG source to tasks on Kubernetes.

mod airflow;
mod cli;
mod cluster;
mod commands;
mod config;
mod ctx;
mod deploy;
mod error;
mod fsutil;
mod gobuild;
mod image_build;
mod kind_node;
mod limits;
mod oci;
mod pipeline;
mod process;
mod report;
mod s3;
mod term;
#[cfg(test)]
mod tidy;
mod ui;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::commands::*;
use crate::config::Project;
use crate::ctx::Ctx;
use crate::error::{Reported, exit_with};

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
    let ctx = Ctx::new(Project::discover(cli.root.as_deref())?)?;
    let ctx = &ctx;
    match &cli.command {
        Command::Images(args) => images::run(ctx, args),
        Command::Base(args) => base::run(ctx, args),
        Command::NodeImage(args) => node_image::run(ctx, args),
        Command::Dags(args) => dags::run(ctx, args),
        Command::Smoke(args) => smoke::run(ctx, args),
        Command::Manifests(args) => manifests::run(ctx, args),
        Command::K8sUp(args) => k8s_up::run(ctx, args),
        Command::Ci(args) => ci::run(ctx, args),
        Command::K8sDown(args) => k8s_down::run(ctx, args),
        Command::Status(args) => status::run(ctx, args),
        Command::Bench(args) => bench::run(ctx, args),
        Command::Exec(args) => exit_with(exec::run(ctx, args)?),
        Command::Run(args) => exit_with(run::run(ctx, args)?),
        Command::Logs(args) => logs::run(ctx, args),
        Command::Doctor(args) => doctor::run(ctx, args),
        Command::Watch(args) => watch::run(ctx, args),
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        // Without -v only our own warnings: a library's log line would repeat, unexplained,
        // what our error already says with its fix.
        0 => "off,xtask=warn",
        1 => "xtask=debug,info",
        _ => "xtask=trace,debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("XTASK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}
