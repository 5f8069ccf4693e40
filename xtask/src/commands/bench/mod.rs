//! `cargo xtask bench ...`: the figures the issues ask for, each printed next to its peer
//! measured in the same run on the same inputs.

mod bundle;
mod deliver;
mod deliver_kind;
mod images;
mod parsed;
mod push;
mod scenario;
mod tools;
mod watch;

use anyhow::Result;

use crate::cli::{BenchArgs, BenchCommand};
use crate::ctx::Ctx;

pub fn run(ctx: &Ctx, args: &BenchArgs) -> Result<()> {
    let project = &ctx.project;
    let json = matches!(&args.command, BenchCommand::Images(a) if a.json);
    let result = match &args.command {
        BenchCommand::Images(a) => images::images(project, a),
        BenchCommand::Push(a) => push::push(project, a),
        BenchCommand::Deliver(a) => deliver::run(ctx, a),
        BenchCommand::DeliverKind(a) => deliver_kind::run(ctx, a),
        BenchCommand::Watch(a) => watch::run(ctx, a),
        BenchCommand::Bundle(a) => bundle::run(ctx, a),
    };
    if result.is_ok() && !json {
        let (children, own) = tools::peak_memory_mb();
        let met = if children.max(own) < 150.0 { "met" } else { "not met" };
        println!(
            "\npeak memory: {children:.0} MB for the largest xtask process measured, {own:.0} MB for this benchmark's own (target < 150 MB: {met})"
        );
    }
    result
}
