//! `cargo xtask dags check`: every DAG file parsed the way the DAG processor parses it,
//! inside the worker image (or a local virtualenv), before anything ships.

use std::time::Instant;

use anyhow::{Result, bail};

use crate::airflow::dagcheck::{CHECK_SCRIPT, FileResult, error_line, exceptions, print_result};
use crate::airflow::runner;
use crate::cli::{DagsArgs, DagsCheckArgs, DagsCommand};
use crate::ctx::Ctx;
use crate::error::Reported;
use crate::ui;

pub fn run(ctx: &Ctx, args: &DagsArgs) -> Result<()> {
    let _project = &ctx.project;
    match &args.command {
        DagsCommand::Check(a) => {
            let results = check(ctx, a)?;
            if results.iter().any(|r| r.status == "error") {
                return Err(Reported(1).into());
            }
            Ok(())
        }
    }
}

pub fn check(ctx: &Ctx, a: &DagsCheckArgs) -> Result<Vec<FileResult>> {
    let project = &ctx.project;
    let started = Instant::now();
    let human = !a.json;
    let runner = runner::for_project(project, ctx.handle(), a.local, a.venv.as_deref(), &a.image, human)?;
    let skip = exceptions(project);
    if human {
        println!("dags check {}", runner.describe());
    }
    let env = vec![
        ("XTASK_DAGS_DIR".to_string(), runner.dags_dir()),
        ("XTASK_SKIP".to_string(), serde_json::to_string(&skip)?),
        ("XTASK_TIMEOUT".to_string(), a.timeout.to_string()),
    ];
    let mut results: Vec<FileResult> = Vec::new();
    let out = runner.run_python(CHECK_SCRIPT, &[], &env, &mut |v| {
        let mut r: FileResult = serde_json::from_value(v)?;
        r.line = r.error.as_deref().and_then(|e| error_line(e, &r.file));
        if human {
            print_result(&r);
        }
        results.push(r);
        Ok(())
    })?;
    if results.is_empty() && out.exit_code != 0 {
        bail!(
            "the DAG check did not run ({} exit {}); its last output:\n{}",
            runner.describe(),
            out.exit_code,
            out.tail
        );
    }
    let errors = results.iter().filter(|r| r.status == "error").count();
    let skipped = results.iter().filter(|r| r.status == "skipped").count();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"files": results, "errors": errors, "seconds": started.elapsed().as_secs_f64()})
            )?
        );
    } else {
        println!(
            "{} files: {} OK, {errors} with errors, {skipped} skipped ({})",
            results.len(),
            results.len() - errors - skipped,
            ui::secs(started.elapsed().as_secs_f64())
        );
    }
    Ok(results)
}
