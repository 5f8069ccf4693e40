//! The DAG check both `dags check` and `watch` run: the script, its per-file result, the
//! exceptions file, and how a result is printed.

use serde::{Deserialize, Serialize};

use crate::config::Project;
use crate::ui;

pub const CHECK_SCRIPT: &str = include_str!("dag_check.py");
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
pub fn error_line(error: &str, file: &str) -> Option<u32> {
    let needle = format!("/{file}\", line ");
    error
        .rmatch_indices(&needle)
        .next()
        .and_then(|(i, _)| error[i + needle.len()..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
}

pub fn print_result(r: &FileResult) {
    match r.status.as_str() {
        "ok" => println!("  OK     {:<40} {:<32} {}", r.file, r.dags.join(", "), ui::secs(r.seconds)),
        "skipped" => println!("  SKIP   {:<40} listed in {EXCEPTIONS_FILE}", r.file),
        "removed" => println!("  GONE   {:<40} deleted; nothing to check", r.file),
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
