//! A small client for Airflow 3's REST API (`/api/v2`), authenticated with the simple auth
//! manager's token endpoint. Reached through a kube-rs port-forward.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub struct ApiClient {
    agent: ureq::Agent,
    base: String,
    token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskInstance {
    pub task_id: String,
    pub state: Option<String>,
    pub hostname: Option<String>,
    pub duration: Option<f64>,
    pub try_number: Option<i64>,
}

/// A DAG as `GET /dags` lists it: where its file lies in its bundle, and the token that
/// asks for that file to be parsed again.
#[derive(Clone, Debug, PartialEq)]
pub struct BundleDag {
    pub dag_id: String,
    pub relative_fileloc: String,
    pub file_token: String,
}

#[derive(Clone, Debug)]
pub struct ImportError {
    pub filename: String,
    pub stack_trace: String,
}

/// Everything but RFC 3986's unreserved characters is percent-encoded in a path segment
/// (run ids hold ':' and '+').
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, PATH_SEGMENT).to_string()
}

impl ApiClient {
    /// Logs in with the simple auth manager (`POST /auth/token`).
    pub fn login(base: &str, user: &str, password: &str) -> Result<ApiClient> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut resp = agent
            .post(&format!("{base}/auth/token"))
            .header("Content-Type", "application/json")
            .send(json!({"username": user, "password": password}).to_string())
            .map_err(|e| anyhow!("cannot reach the Airflow API at {base} ({e})"))?;
        let status = resp.status();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        if !status.is_success() {
            bail!(
                "the Airflow API refused the login of `{user}` ({status}): {body}; the password is in the Secret airflow-admin that k8s-up made"
            );
        }
        let v: Value = serde_json::from_str(&body).context("the token endpoint answered something other than JSON")?;
        let token =
            v["access_token"].as_str().ok_or_else(|| anyhow!("no access_token in the login answer"))?.to_string();
        Ok(ApiClient { agent, base: base.to_string(), token })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let url = format!("{}/api/v2{path}", self.base);
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Accept", "application/json");
        let resp = match body {
            Some(b) => self
                .agent
                .run(req.header("Content-Type", "application/json").body(b.to_string()).expect("valid request")),
            None => self.agent.run(req.body(()).expect("valid request")),
        };
        let mut resp = resp.map_err(|e| anyhow!("{method} {url} failed: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().with_config().limit(32 << 20).read_to_string().unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        match self.call(method, path, body)? {
            (s, v) if (200..300).contains(&s) => Ok(v),
            (s, v) => bail!("{method} /api/v2{path} answered {s}: {v}"),
        }
    }

    /// The DAG as the API knows it; None until the DAG processor has stored it.
    pub fn dag(&self, dag_id: &str) -> Result<Option<Value>> {
        match self.call("GET", &format!("/dags/{}", encode(dag_id)), None)? {
            (404, _) => Ok(None),
            (s, v) if (200..300).contains(&s) => Ok(Some(v)),
            (s, v) => bail!("GET dag {dag_id} answered {s}: {v}"),
        }
    }

    pub fn import_errors(&self) -> Result<Vec<ImportError>> {
        let v = self.ok("GET", "/importErrors?limit=1000", None)?;
        Ok(v["import_errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| ImportError {
                filename: e["filename"].as_str().unwrap_or("").to_string(),
                stack_trace: e["stack_trace"].as_str().unwrap_or("").to_string(),
            })
            .collect())
    }

    /// Every DAG Airflow holds from one bundle, page by page (at most 100 000).
    pub fn bundle_dags(&self, bundle: &str) -> Result<Vec<BundleDag>> {
        const PAGE: usize = 100;
        let mut dags = Vec::new();
        let mut offset = 0;
        while offset < 100_000 {
            let path = format!("/dags?bundle_name={}&limit={PAGE}&offset={offset}", encode(bundle));
            let v = self.ok("GET", &path, None)?;
            let page = v["dags"].as_array().cloned().unwrap_or_default();
            for d in &page {
                let field = |k: &str| d[k].as_str().unwrap_or("").to_string();
                dags.push(BundleDag {
                    dag_id: field("dag_id"),
                    relative_fileloc: field("relative_fileloc"),
                    file_token: field("file_token"),
                });
            }
            offset += page.len();
            if page.len() < PAGE || offset as u64 >= v["total_entries"].as_u64().unwrap_or(0) {
                break;
            }
        }
        Ok(dags)
    }

    /// The DAG's details (file_token, last_parsed_time, ...); None until it is stored.
    pub fn dag_details(&self, dag_id: &str) -> Result<Option<Value>> {
        match self.call("GET", &format!("/dags/{}/details", encode(dag_id)), None)? {
            (404, _) => Ok(None),
            (s, v) if (200..300).contains(&s) => Ok(Some(v)),
            (s, v) => bail!("GET dag details {dag_id} answered {s}: {v}"),
        }
    }

    /// The newest run of the DAG, if any.
    pub fn latest_run(&self, dag_id: &str) -> Result<Option<String>> {
        let v = self.ok("GET", &format!("/dags/{}/dagRuns?order_by=-run_after&limit=1", encode(dag_id)), None)?;
        Ok(v["dag_runs"].as_array().and_then(|r| r.first()).and_then(|r| r["dag_run_id"].as_str()).map(String::from))
    }

    /// Asks the DAG processor to parse the DAG's file again now (instead of at its next
    /// interval). `file_token` comes from the DAG's details. A request for the file that
    /// is still waiting answers 409 (one per file): the file will be parsed all the same.
    pub fn reparse(&self, file_token: &str) -> Result<()> {
        let path = format!("/parseDagFile/{}", encode(file_token));
        match self.call("PUT", &path, None)? {
            (s, _) if (200..300).contains(&s) || s == 409 => Ok(()),
            (s, v) => bail!("PUT /api/v2{path} answered {s}: {v}"),
        }
    }

    pub fn unpause(&self, dag_id: &str) -> Result<()> {
        self.ok("PATCH", &format!("/dags/{}", encode(dag_id)), Some(json!({"is_paused": false})))?;
        Ok(())
    }

    /// Triggers a run now; returns its run id.
    pub fn trigger(&self, dag_id: &str) -> Result<String> {
        let v = self.ok("POST", &format!("/dags/{}/dagRuns", encode(dag_id)), Some(json!({"logical_date": null})))?;
        v["dag_run_id"].as_str().map(String::from).ok_or_else(|| anyhow!("the trigger answer has no dag_run_id: {v}"))
    }

    pub fn run_state(&self, dag_id: &str, run_id: &str) -> Result<String> {
        let v = self.ok("GET", &format!("/dags/{}/dagRuns/{}", encode(dag_id), encode(run_id)), None)?;
        Ok(v["state"].as_str().unwrap_or("unknown").to_string())
    }

    pub fn task_instances(&self, dag_id: &str, run_id: &str) -> Result<Vec<TaskInstance>> {
        let v = self.ok("GET", &format!("/dags/{}/dagRuns/{}/taskInstances", encode(dag_id), encode(run_id)), None)?;
        Ok(serde_json::from_value(v["task_instances"].clone()).unwrap_or_default())
    }

    pub fn xcom(&self, dag_id: &str, run_id: &str, task_id: &str) -> Result<Option<Value>> {
        let path = format!(
            "/dags/{}/dagRuns/{}/taskInstances/{}/xcomEntries/return_value",
            encode(dag_id),
            encode(run_id),
            encode(task_id)
        );
        match self.call("GET", &path, None)? {
            (404, _) => Ok(None),
            (s, v) if (200..300).contains(&s) => Ok(Some(v["value"].clone())),
            (s, v) => bail!("GET xcom answered {s}: {v}"),
        }
    }

    /// The task's log as text (the API serves it as structured JSON lines).
    pub fn task_log(&self, dag_id: &str, run_id: &str, task_id: &str, try_number: i64) -> Result<String> {
        let path = format!(
            "/dags/{}/dagRuns/{}/taskInstances/{}/logs/{try_number}?full_content=true",
            encode(dag_id),
            encode(run_id),
            encode(task_id)
        );
        let v = self.ok("GET", &path, None)?;
        let content = &v["content"];
        Ok(match content {
            Value::Array(lines) => lines
                .iter()
                .map(|l| match l {
                    Value::Object(o) => {
                        let event = o.get("event").and_then(Value::as_str).unwrap_or("");
                        let level = o.get("level").and_then(Value::as_str).unwrap_or("");
                        let mut line = if level.is_empty() { event.to_string() } else { format!("[{level}] {event}") };
                        // Dict tracebacks (the Task SDK's error_detail, structlog's exception):
                        // [{exc_type, exc_value, frames: [{filename, lineno, name}]}]; the last
                        // frames are the telling ones.
                        let details = o.get("error_detail").or(o.get("exception")).and_then(Value::as_array);
                        for exc in details.into_iter().flatten() {
                            let frames = exc["frames"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                            for f in &frames[frames.len().saturating_sub(4)..] {
                                line.push_str(&format!(
                                    "\n  File \"{}\", line {}, in {}",
                                    f["filename"].as_str().unwrap_or("?"),
                                    f["lineno"],
                                    f["name"].as_str().unwrap_or("?")
                                ));
                            }
                            line.push_str(&format!(
                                "\n{}: {}",
                                exc["exc_type"].as_str().unwrap_or("Exception"),
                                exc["exc_value"].as_str().unwrap_or("")
                            ));
                        }
                        line
                    }
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_percent_encoded() {
        assert_eq!(
            encode("manual__2026-11-22T17:53:48.314412+00:00"),
            "manual__2026-11-22T17%3A53%3A48.314412%2B00%3A00"
        );
    }
}
