//! The context made once in `main` and handed to every command: the project, the one
//! async runtime of the process, and the clients opened on it when first asked for (a
//! cluster connection is made once per cluster and namespace, the Docker engine once).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use bollard::Docker;
use tokio::runtime::{Handle, Runtime};

use crate::cluster::{self, Cluster, Target};
use crate::config::Project;

pub struct Ctx {
    pub project: Project,
    /// Always Some until the context is dropped.
    rt: Option<Runtime>,
    docker: OnceLock<(Docker, String)>,
    clusters: Mutex<BTreeMap<String, Cluster>>,
}

impl Ctx {
    pub fn new(project: Project) -> Result<Ctx> {
        // Two workers: the kube client's connection tasks and a stream or two run beside the
        // main thread, which drives everything else through `block_on`.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(Ctx { project, rt: Some(rt), docker: OnceLock::new(), clusters: Mutex::new(BTreeMap::new()) })
    }

    /// Runs async work (kube, bollard) from the synchronous commands, on the one runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime().block_on(f)
    }

    fn runtime(&self) -> &Runtime {
        self.rt.as_ref().expect("the runtime lives as long as the context")
    }

    /// The runtime, for the modules below the commands that take a handle.
    pub fn handle(&self) -> &Handle {
        self.runtime().handle()
    }

    /// The local Docker engine and its version, connected on first use.
    pub fn docker(&self) -> Result<(Docker, String)> {
        if let Some(d) = self.docker.get() {
            return Ok(d.clone());
        }
        let d = self.block_on(crate::oci::docker::connect())?;
        Ok(self.docker.get_or_init(|| d).clone())
    }

    /// A connection to `target` (the API server asked for its version), made once per
    /// process, cluster and namespace, then reused.
    pub fn connect(&self, target: &Target, namespace: &str) -> Result<Cluster> {
        let key = format!("{}|{}|{namespace}", target.kubeconfig(), target.context().unwrap_or(""));
        if let Some(c) = self.clusters.lock().expect("clusters lock").get(&key) {
            return Ok(c.clone());
        }
        let c = self.block_on(cluster::connect(target, namespace))?;
        self.clusters.lock().expect("clusters lock").insert(key, c.clone());
        Ok(c)
    }

    /// Forgets the connections (a kind cluster that was deleted and made again has a new
    /// address and certificates).
    pub fn forget_clusters(&self) {
        self.clusters.lock().expect("clusters lock").clear();
    }
}

impl Drop for Ctx {
    /// The runtime is shut down without waiting for blocking tasks: a read of standard input
    /// (exec -it, run) never ends by itself, and waiting for it kept xtask alive after the
    /// remote command had exited, until a key was pressed.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
