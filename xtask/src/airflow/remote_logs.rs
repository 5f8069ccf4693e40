//! Remote task logs: asks a running Airflow component whether remote logging is on, and
//! whether its connection reaches the bucket (what the api-server needs to show a task's
//! log once the worker pod is gone).

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::cluster::Cluster;

const PROBE: &str = include_str!("remote_logs.py");

/// What the probe found, as the component sees it.
#[derive(Debug, Default, Deserialize)]
pub struct Probe {
    pub remote: bool,
    #[serde(default)]
    pub folder: String,
    #[serde(default)]
    pub conn_id: String,
    #[serde(default)]
    pub bucket: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub message: String,
}

impl Probe {
    /// One line for a user: what is wrong, and a second for how to fix it.
    pub fn diagnosis(&self, namespace: &str) -> (String, String) {
        let at = self.endpoint.as_deref().unwrap_or("the default AWS endpoint");
        let secrets = format!(
            "the connection comes from AIRFLOW_CONN_{} (Secret airflow-s3 of the object-store overlay, or your airflow-env-secrets in namespace {namespace})",
            self.conn_id.to_uppercase()
        );
        match self.error.as_deref().unwrap_or("") {
            "not-s3" => (
                format!("remote_base_log_folder is `{}`, not s3://BUCKET/PREFIX", self.folder),
                "set AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER in k8s/overlays/remote-logging-s3/logging.yaml".into(),
            ),
            "no-provider" => (
                format!("the image lacks the Amazon provider: {}", self.message),
                "add apache-airflow-providers-amazon to [python] requirements in docker/base/airflow.toml, then `cargo xtask base --update-lock`".into(),
            ),
            "no-connection" => (
                format!("remote logs use connection `{}`, which is not defined", self.conn_id),
                format!("{secrets}; apply the object-store overlay or create that Secret"),
            ),
            "404" | "NoSuchBucket" => (
                format!("bucket {} does not exist at {at}", self.bucket),
                format!("create it (the object-store overlay makes airflow-logs), or change the bucket in {}", self.folder),
            ),
            "403" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" => (
                format!("{at} refused connection `{}` for bucket {} ({})", self.conn_id, self.bucket, self.error.as_deref().unwrap_or("")),
                format!("the keys in the connection are wrong or may not read the bucket; {secrets}"),
            ),
            "EndpointConnectionError" | "ConnectTimeoutError" | "ReadTimeoutError" => (
                format!("cannot reach the object store at {at}: {}", self.message),
                format!(
                    "is it running? `kubectl -n {namespace} get pods -l app.kubernetes.io/component=object-store`; or fix endpoint_url in the connection"
                ),
            ),
            other => (
                format!("bucket {} through connection `{}` at {at}: {other}: {}", self.bucket, self.conn_id, self.message),
                secrets,
            ),
        }
    }
}

/// Runs the probe in `container` of `pod`.
pub async fn probe(cluster: &Cluster, pod: &str, container: &str) -> Result<Probe> {
    let argv = vec!["python3".to_string(), "-".to_string()];
    let (code, out, err) =
        crate::cluster::exec::exec_capture(cluster, pod, container, argv, Some(PROBE.as_bytes().to_vec())).await?;
    let text = String::from_utf8_lossy(&out);
    let last = text.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    serde_json::from_str(last).with_context(|| {
        format!(
            "the remote-logging probe in pod {pod} exited {code} without an answer: {}",
            String::from_utf8_lossy(&err).lines().last().unwrap_or("")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_names_its_own_fix() {
        let p = |error: &str| Probe {
            remote: true,
            folder: "s3://airflow-logs/tasks".into(),
            conn_id: "airflow_s3".into(),
            bucket: "airflow-logs".into(),
            endpoint: Some("http://airflow-s3:7070".into()),
            error: Some(error.into()),
            ..Default::default()
        };
        let (what, fix) = p("404").diagnosis("airflow");
        assert!(what.contains("bucket airflow-logs does not exist at http://airflow-s3:7070"), "{what}");
        assert!(fix.contains("create it"), "{fix}");
        let (what, fix) = p("403").diagnosis("airflow");
        assert!(what.contains("refused connection `airflow_s3`"), "{what}");
        assert!(fix.contains("AIRFLOW_CONN_AIRFLOW_S3"), "{fix}");
        let (what, fix) = p("EndpointConnectionError").diagnosis("airflow");
        assert!(what.starts_with("cannot reach the object store"), "{what}");
        assert!(fix.contains("component=object-store"), "{fix}");
        let (_, fix) = p("no-connection").diagnosis("airflow");
        assert!(fix.contains("object-store overlay"), "{fix}");
    }
}
