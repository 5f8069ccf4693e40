//! Clusters: the local kind cluster xtask creates, or any cluster reached by kubeconfig;
//! a kube-rs client for it, with errors that say what to check.

pub mod delivery;
pub mod diagnose;
pub mod exec;
pub mod hotsync;
pub mod inspect;
pub mod kind;
pub mod local_registry;
pub mod pods;
pub mod portforward;

use camino::{Utf8Path, Utf8PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::cli::ClusterArgs;
use crate::config::{self, ClusterSettings, Project};

/// Where the cluster is.
#[derive(Clone, Debug)]
pub enum Target {
    /// The kind cluster of this name; its kubeconfig is kept under target/xtask.
    Kind { name: String, kubeconfig: Utf8PathBuf },
    /// Any cluster, by kubeconfig and context.
    Existing { kubeconfig: Utf8PathBuf, context: Option<String> },
}

impl Target {
    pub fn from_args(project: &Project, args: &ClusterArgs) -> Result<(Target, ClusterSettings)> {
        let settings = config::load_cluster(project, args.namespace.as_deref(), args.cluster_name.as_deref())?;
        let target = match &args.kubeconfig {
            Some(k) => Target::Existing {
                kubeconfig: if k.is_absolute() { k.clone() } else { crate::fsutil::current_dir()?.join(k) },
                context: args.context.clone(),
            },
            None => Target::Kind { kubeconfig: kind_kubeconfig(project, &settings.name), name: settings.name.clone() },
        };
        Ok((target, settings))
    }

    pub fn kubeconfig(&self) -> &Utf8Path {
        match self {
            Target::Kind { kubeconfig, .. } | Target::Existing { kubeconfig, .. } => kubeconfig,
        }
    }

    pub fn context(&self) -> Option<&str> {
        match self {
            // The kubeconfig xtask writes for kind holds one context, the current one.
            Target::Kind { .. } => None,
            Target::Existing { context, .. } => context.as_deref(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Kind { name, .. } => format!("kind cluster {name}"),
            Target::Existing { kubeconfig, context } => match context {
                Some(c) => format!("context {c} of {}", kubeconfig),
                None => format!("the current context of {}", kubeconfig),
            },
        }
    }
}

/// Where the kubeconfig of a kind cluster is kept (the user's ~/.kube/config is left alone
/// unless asked).
pub fn kind_kubeconfig(project: &Project, name: &str) -> Utf8PathBuf {
    project.work_dir().join(format!("kubeconfig-{name}"))
}

/// A connected cluster: the client, the API server's address, the namespace.
#[derive(Clone)]
pub struct Cluster {
    /// For requests that answer at once: gives up on an API server silent for
    /// XTASK_KUBE_TIMEOUT seconds (60).
    pub client: kube::Client,
    /// For streams that may stay quiet for long (exec, logs -f, port-forward, watches):
    /// no read timeout; exec and port-forward keep their own pings.
    pub streams: kube::Client,
    pub url: String,
    pub namespace: String,
    pub target: Target,
}

/// How long a request may wait on a silent API server: XTASK_KUBE_TIMEOUT seconds, 60 by
/// default.
pub fn kube_timeout() -> std::time::Duration {
    crate::limits::env_seconds("XTASK_KUBE_TIMEOUT", 60)
}

/// Connects to the target and checks the API server answers.
pub async fn connect(target: &Target, namespace: &str) -> Result<Cluster> {
    let path = target.kubeconfig();
    if !path.is_file() {
        match target {
            Target::Kind { name, .. } => {
                bail!("the kind cluster {name} is not up (no {}); create it with `cargo xtask k8s-up`", path)
            }
            Target::Existing { .. } => {
                bail!("kubeconfig {} does not exist; pass the right --kubeconfig", path)
            }
        }
    }
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| format!("{} is not a valid kubeconfig", path))?;
    if let Some(ctx) = target.context()
        && !kubeconfig.contexts.iter().any(|c| c.name == ctx)
    {
        let names: Vec<&str> = kubeconfig.contexts.iter().map(|c| c.name.as_str()).collect();
        bail!("kubeconfig {} has no context `{ctx}`; it has: {}", path, names.join(", "));
    }
    let opts = KubeConfigOptions { context: target.context().map(String::from), ..Default::default() };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &opts)
        .await
        .with_context(|| format!("cannot use kubeconfig {}", path))?;
    let url = config.cluster_url.to_string();
    // Connecting includes the TLS handshake: a server that accepts and says nothing is
    // given up on after the same time.
    let mut config = config;
    config.connect_timeout = Some(kube_timeout());
    let streams = kube::Client::try_from(config.clone()).context("cannot set up a Kubernetes client")?;
    config.read_timeout = Some(kube_timeout());
    config.write_timeout = Some(kube_timeout());
    config.reset_reader_on_write = true;
    let client = kube::Client::try_from(config).context("cannot set up a Kubernetes client")?;
    tracing::debug!(url, kubeconfig = %path, context = ?target.context(), "connecting to the cluster");
    let cluster = Cluster { client, streams, url, namespace: namespace.to_string(), target: target.clone() };
    cluster.version().await?;
    Ok(cluster)
}

impl Cluster {
    /// The API server's version; the first call that proves it answers.
    pub async fn version(&self) -> Result<String> {
        let v = self.client.apiserver_version().await.map_err(|e| self.unreachable(e))?;
        Ok(v.git_version)
    }

    fn unreachable(&self, e: kube::Error) -> anyhow::Error {
        let what = match &self.target {
            Target::Kind { name, .. } => {
                format!("is the kind cluster running? `kind get clusters`; `docker ps --filter name={name}`")
            }
            Target::Existing { kubeconfig, .. } => {
                format!("check that the cluster runs and that {} points at it (server, certificates, VPN)", kubeconfig)
            }
        };
        anyhow!("cannot reach the Kubernetes API server at {} ({e}); {what}", self.url)
    }

    /// Turns an API error into one that says what was refused and how to confirm it.
    pub fn explain(&self, e: kube::Error, verb: &str, resource: &str) -> anyhow::Error {
        match &e {
            kube::Error::Api(s) if s.code == 403 => anyhow!(
                "Forbidden: your credentials may not `{verb}` {resource} in namespace {} ({}); confirm with `kubectl auth can-i {verb} {resource} -n {}`",
                self.namespace,
                s.message,
                self.namespace
            ),
            kube::Error::Api(s) if s.code == 401 => {
                anyhow!(
                    "Unauthorized at {}: the credentials in {} were refused ({})",
                    self.url,
                    self.target.kubeconfig(),
                    s.message
                )
            }
            kube::Error::Api(_) => anyhow!("{verb} {resource} in namespace {} failed: {e}", self.namespace),
            _ => self.unreachable(e),
        }
    }
}
