//! `cargo xtask dags check`: every DAG file parsed the way the DAG processor parses it,
//! inside the worker image (or a local virtualenv), before anything ships.

use std::time::Instant;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::Reported;
use crate::airflow::runner;
use crate::cli::{DagsArgs, DagsCheckArgs, DagsCommand};
use crate::config::Project;
use crate::ui;

pub const CHECK_SCRIPT: &str = include_str!("airflow/dag_check.py");
pub const EXCEPTIONS_FILE: &str = "files/dags_check_exceptions.txt";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileResult {
    pub file: String,
    /// ok, error or skipped.
    pub status: String,
    pub dags: Vec<String>,
    pub seconds: f64,
    pub error: Option<String>,
    /// The line in the file the error points at, when the traceback names one.
    #[serde(default)]
    pub line: Option<u32>,
}

pub fn run(project: &Project, args: &DagsArgs) -> Result<()> {
    match &args.command {
        DagsCommand::Check(a) => {
            let results = check(project, a)?;
            if results.iter().any(|r| r.status == "error") {
                return Err(Reported(1).into());
            }
            Ok(())
        }
    }
}

/// Paths (relative to files/dags) listed in the exceptions file.
pub fn exceptions(project: &Project) -> Vec<String> {
    std::fs::read_to_string(project.root.join(EXCEPTIONS_FILE))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The line of `file` that a traceback's last frame in that file points at.
fn error_line(error: &str, file: &str) -> Option<u32> {
    let needle = format!("/{file}\", line ");
    error
        .rmatch_indices(&needle)
        .next()
        .and_then(|(i, _)| error[i + needle.len()..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
}

pub fn check(project: &Project, a: &DagsCheckArgs) -> Result<Vec<FileResult>> {
    let started = Instant::now();
    let human = !a.json;
    let runner = runner::for_project(project, a.local, a.venv.as_deref(), &a.image, human)?;
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

pub fn print_result(r: &FileResult) {
    match r.status.as_str() {
        "ok" => println!("  OK     {:<40} {:<32} {}", r.file, r.dags.join(", "), ui::secs(r.seconds)),
        "skipped" => println!("  SKIP   {:<40} listed in {EXCEPTIONS_FILE}", r.file),
        _ => {
            let at = match r.line {
                Some(l) => format!("{}:{l}", r.file),
                None => r.file.clone(),
            };
            let err = r.error.as_deref().unwrap_or("");
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty() && !l.starts_with("Please") && !l.starts_with("* "))
                .unwrap_or("");
            println!("  ERROR  {at:<40} {}", last.trim());
            // The traceback's last frames, indented.
            let frames: Vec<&str> = err.lines().filter(|l| l.starts_with("  ")).collect();
            for l in &frames[frames.len().saturating_sub(4)..] {
                println!("         {l}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_line_is_the_last_frame_in_the_file() {
        let tb = "Traceback:\n  File \"/opt/airflow/dags/x.py\", line 3, in <module>\n    f()\n  File \"/opt/airflow/dags/x.py\", line 12, in f\n    boom\nNameError";
        assert_eq!(error_line(tb, "x.py"), Some(12));
        assert_eq!(error_line(tb, "y.py"), None);
    }
}
