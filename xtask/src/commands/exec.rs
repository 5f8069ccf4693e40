//! `cargo xtask exec COMPONENT -- CMD...`: a command in a component's pod, with live
//! output, the remote exit code as ours, and an interactive TTY that follows window resizes.

use anyhow::{Result, anyhow, bail};

use crate::cli::ExecArgs;
use crate::cluster::Target;
use crate::cluster::exec::{ExecRequest, exec_streaming};
use crate::cluster::pods::{check_namespace, pick_container, ready_pod};
use crate::ctx::Ctx;

pub fn run(ctx: &Ctx, args: &ExecArgs) -> Result<i32> {
    let project = &ctx.project;
    if args.command.is_empty() {
        bail!("no command: put it after the component, for example `cargo xtask exec scheduler -- airflow dags list`");
    }
    let (target, settings) = Target::from_args(project, &args.cluster)?;
    let tty = args.tty && std::io::IsTerminal::is_terminal(&std::io::stdin());
    if args.tty && !tty {
        eprintln!("note: stdin is not a terminal; running without a TTY");
    }
    let cluster = ctx.connect(&target, &settings.namespace)?;
    ctx.block_on(async {
        check_namespace(&cluster).await?;
        let pod = ready_pod(&cluster, &settings, &args.component).await?;
        let container = pick_container(&pod, args.container.as_deref())?;
        let name = pod.metadata.name.clone().ok_or_else(|| anyhow!("pod without a name"))?;
        if !args.quiet {
            eprintln!("exec in {}/{name} (container {container})", cluster.namespace);
        }
        let req = ExecRequest {
            command: args.command.clone(),
            container,
            stdin: args.stdin || tty,
            tty,
            workdir: args.workdir.clone(),
            env: args.env.clone(),
        };
        exec_streaming(&cluster, &name, &req).await
    })
}
