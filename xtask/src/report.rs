//! Machine-readable results for CI: JUnit XML (what CI systems render as test results)
//! and JSON summaries, written atomically under target/xtask.

use camino::Utf8Path;
use std::fmt::Write as _;

use anyhow::Result;

/// One test case: a task of a DAG, say.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub classname: String,
    pub seconds: f64,
    /// None when it passed; the message when it failed.
    pub failure: Option<String>,
}

/// A suite of cases: one DAG run.
#[derive(Clone, Debug)]
pub struct Suite {
    pub name: String,
    pub seconds: f64,
    pub cases: Vec<Case>,
}

fn escape(s: &str) -> String {
    s.chars()
        .filter(|c| *c == '\n' || *c == '\t' || !c.is_control())
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&apos;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

pub fn junit_xml(suites: &[Suite]) -> String {
    let tests: usize = suites.iter().map(|s| s.cases.len()).sum();
    let failures: usize = suites.iter().flat_map(|s| &s.cases).filter(|c| c.failure.is_some()).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(out, "<testsuites tests=\"{tests}\" failures=\"{failures}\">");
    for s in suites {
        let f = s.cases.iter().filter(|c| c.failure.is_some()).count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\" time=\"{:.3}\">",
            escape(&s.name),
            s.cases.len(),
            s.seconds
        );
        for c in &s.cases {
            let _ = write!(
                out,
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
                escape(&c.name),
                escape(&c.classname),
                c.seconds
            );
            match &c.failure {
                None => out.push_str("/>\n"),
                Some(msg) => {
                    let first = msg.lines().next().unwrap_or("failed");
                    let _ = writeln!(
                        out,
                        ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                        escape(first),
                        escape(msg)
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

pub fn write_junit(path: &Utf8Path, suites: &[Suite]) -> Result<()> {
    crate::fsutil::write_atomic(path, junit_xml(suites).as_bytes())
}

pub fn write_json<T: serde::Serialize>(path: &Utf8Path, value: &T) -> Result<()> {
    crate::fsutil::write_atomic(path, &serde_json::to_vec_pretty(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_escapes_and_counts_failures() {
        let xml = junit_xml(&[Suite {
            name: "smoke_xcom".into(),
            seconds: 1.5,
            cases: vec![
                Case { name: "produce".into(), classname: "smoke_xcom".into(), seconds: 0.5, failure: None },
                Case {
                    name: "consume".into(),
                    classname: "smoke_xcom".into(),
                    seconds: 1.0,
                    failure: Some("x < 1 & \"y\"\nline 2".into()),
                },
            ],
        }]);
        assert!(xml.contains("<testsuites tests=\"2\" failures=\"1\">"));
        assert!(xml.contains("message=\"x &lt; 1 &amp; &quot;y&quot;\""));
        assert!(xml.contains("<testcase name=\"produce\" classname=\"smoke_xcom\" time=\"0.500\"/>"));
    }
}
