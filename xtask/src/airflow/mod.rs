//! Airflow itself: the base image recipe, the DAG check, where Python runs (image or
//! virtualenv), containers of the worker image, and the API client and its session.

pub mod api;
pub mod bundle;
pub mod checker;
pub mod container;
pub mod dagcheck;
pub mod remote_logs;
pub mod runner;
pub mod session;

/// The label the KubernetesExecutor puts on every worker pod it starts.
pub const WORKER_POD_SELECTOR: &str = "kubernetes_executor=True";

/// `airflow dags test` of each smoke DAG, for `smoke --local`.
pub const SMOKE_LOCAL_SCRIPT: &str = include_str!("smoke_local.py");
