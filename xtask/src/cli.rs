//! The command line: one struct per subcommand, help on every flag, an example on every
//! command.
//!
//! Longer than our other files on purpose: it is declarations only (no logic), and the
//! whole command-line surface in one file is what a reviewer reads to keep flag names,
//! defaults and help consistent across commands.

use camino::Utf8PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::config::CompressionChoice;

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    about = "Build automation for the Airflow monorepo: from DAG source to tasks running on Kubernetes.",
    after_help = "Run `cargo xtask <COMMAND> --help` for a command's flags and an example."
)]
pub struct Cli {
    /// The repository root [default: nearest directory with docker/images.toml]
    #[arg(long, global = true, env = "XTASK_ROOT", value_name = "DIR")]
    pub root: Option<Utf8PathBuf>,

    /// More detail on stderr (-v: debug, -vv: trace)
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the worker images into the local store, without Docker
    #[command(after_help = "Examples:
  cargo xtask images                       build every image in docker/images.toml
  cargo xtask images --archive             also write target/xtask/images.tar
  docker load -i target/xtask/images.tar   (or kind load image-archive, ctr images import)
  cargo xtask images --json                the same facts for CI
  cargo xtask images --push localhost:5000 push, uploading only missing blobs
  cargo xtask images --load docker         load into the local Docker engine")]
    Images(ImagesArgs),

    /// Create (or reuse) the cluster, ship the images, apply k8s/ and wait until healthy
    #[command(
        name = "k8s-up",
        after_help = "Examples:
  cargo xtask k8s-up                            the kind cluster of k8s/kind.yaml (created if missing)
  cargo xtask k8s-up --recreate                 start from a fresh kind cluster
  cargo xtask k8s-up --kubeconfig ~/.kube/config --context staging --registry registry.example.com/team
                                                any cluster, images through a registry
  cargo xtask k8s-up --json --no-wait           for CI: apply and report, do not wait"
    )]
    K8sUp(K8sUpArgs),

    /// Delete the kind cluster (or, with --keep-cluster, only what xtask applied)
    #[command(
        name = "k8s-down",
        after_help = "Examples:
  cargo xtask k8s-down                    delete the kind cluster
  cargo xtask k8s-down --keep-cluster     remove only the objects and secrets xtask made"
    )]
    K8sDown(K8sDownArgs),

    /// Show the cluster, nodes, images on nodes vs the last build, components, failing pods
    #[command(after_help = "Examples:
  cargo xtask status
  cargo xtask status --json")]
    Status(StatusArgs),

    /// The pipeline in one command: images, dags check, k8s-up, smoke, k8s-down
    #[command(after_help = "Examples:
  cargo xtask ci                     everything, on a fresh kind cluster, deleted at the end
  cargo xtask ci --keep              leave the cluster up afterwards
  cargo xtask ci --json              a JSON summary on stdout (step reports go to stderr)")]
    Ci(CiArgs),

    /// Check or render the Kubernetes manifests in k8s/
    #[command(after_help = "Examples:
  cargo xtask manifests check                     typed check of every document in k8s/airflow
  cargo xtask manifests check --overlay remote-logging-s3
  cargo xtask manifests render > applied.yaml     what k8s-up applies (secrets shown as <generated>)")]
    Manifests(ManifestsArgs),

    /// Check the DAGs: parse every file the way the DAG processor does, in the worker image
    #[command(after_help = "Examples:
  cargo xtask dags check            in the built worker image (Docker engine)
  cargo xtask dags check --local    in a local virtualenv (target/xtask/venv, made on first use)")]
    Dags(DagsArgs),

    /// Run the smoke DAGs (files/dags/smoke_*.py) on the cluster, or locally
    #[command(after_help = "Examples:
  cargo xtask smoke                         trigger them on the cluster k8s-up made, follow the worker pods
  cargo xtask smoke --dag smoke_xcom --timeout 300
  cargo xtask smoke --local                 airflow dags test in the worker image")]
    Smoke(SmokeArgs),

    /// Build the Airflow base image from docker/base/airflow.toml (debootstrap + pip)
    #[command(after_help = "Examples:
  sudo -E cargo xtask base                  build it (about 2 minutes; a second run does nothing)
  sudo -E cargo xtask base --update-lock    rebuild and re-pin every package in docker/base/airflow.lock")]
    Base(BaseArgs),

    /// Build a kind node image offline (no registry, no docker build) and load it into Docker
    #[command(
        name = "node-image",
        after_help = "Examples:
  sudo -E cargo xtask node-image            build xtask.local/kind-node:<kubernetes_version> and load it
  cargo xtask k8s-up                        then uses it (kind create cluster --image xtask.local/kind-node:...)
  cargo xtask node-image --archive node.tar also write it as an archive, for another machine (docker load -i)
  cargo xtask node-image --components-only  only build the Kubernetes programs; prints where they are"
    )]
    NodeImage(NodeImageArgs),

    /// Run a command in a component's pod (like kubectl exec, knowing our layout)
    #[command(after_help = "Examples:
  cargo xtask exec scheduler -- airflow dags list
  cargo xtask exec -it api-server -- bash          an interactive shell (window resizes follow)
  cargo xtask exec postgres --workdir /tmp --env PGUSER=airflow -- psql -c 'select 1'
  cargo xtask exec airflow-scheduler --namespace staging -- airflow version")]
    Exec(ExecArgs),

    /// Run a named task from k8s/settings.toml on the first executor that is available
    #[command(after_help = "Examples:
  cargo xtask run --list                    the tasks, their executors and which are available
  cargo xtask run import-errors             the DAG import errors Airflow recorded
  cargo xtask run dags-list -x container    in a container of the worker image (Docker engine)
  cargo xtask run shell                     an interactive shell where Airflow runs")]
    Run(RunArgs),

    /// Logs of a component, or of a task's worker pod (from the API when the pod is gone)
    #[command(after_help = "Examples:
  cargo xtask logs scheduler -f                    follow the scheduler
  cargo xtask logs smoke_xcom                      the newest worker pod of any task of the DAG
  cargo xtask logs smoke_xcom.consume              that task's worker pod, else its log from the API")]
    Logs(LogsArgs),

    /// Check the chain from tools to DAGs, in order, and stop at the first broken link
    #[command(after_help = "Examples:
  cargo xtask doctor
  cargo xtask doctor --kubeconfig ~/.kube/config --context staging")]
    Doctor(DoctorArgs),

    /// Rebuild, ship and roll on every change to files/dags or files/include
    #[command(after_help = "Examples:
  cargo xtask watch                 after `cargo xtask k8s-up`; Ctrl+C stops it
  cargo xtask watch --check local   check DAGs in the local virtualenv instead of the image")]
    Watch(WatchArgs),

    /// Measure xtask next to its peers (docker build, ...) on the same inputs
    #[command(after_help = "Examples:
  cargo xtask bench images           xtask vs docker build on a 1.1 GB base, 2,000 DAGs
  cargo xtask bench images --json    the same figures as JSON
  cargo xtask bench push             push after one DAG change vs docker push vs docker save | ctr import
  cargo xtask bench deliver          k8s-up --no-wait after one DAG change vs docker save + ctr import
  cargo xtask bench watch            watch's save-to-parsed vs docker build + save | ctr import + rollout")]
    Bench(BenchArgs),
}

/// Which cluster, for every command that talks to one.
#[derive(Debug, Args, Clone, Default)]
pub struct ClusterArgs {
    /// Use this kubeconfig's cluster instead of the kind cluster
    #[arg(long, env = "XTASK_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<Utf8PathBuf>,
    /// The kubeconfig context [default: its current context]
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace [env: XTASK_NAMESPACE; default: k8s/settings.toml, else airflow]
    #[arg(long, env = "XTASK_NAMESPACE")]
    pub namespace: Option<String>,
    /// Name of the kind cluster [default: k8s/settings.toml, else airflow-python-<py>-<k8s version>]
    #[arg(long, env = "XTASK_CLUSTER", value_name = "NAME")]
    pub cluster_name: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The component: a short name from k8s/settings.toml [components], or a Deployment or
    /// StatefulSet name
    pub component: String,
    /// The command and its arguments (after `--`)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// The container, when the pod has several
    #[arg(short, long)]
    pub container: Option<String>,
    /// Pass stdin to the command
    #[arg(short = 'i', long = "stdin")]
    pub stdin: bool,
    /// Allocate a TTY (with a terminal on stdin)
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Run in this directory
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Set an environment variable (repeatable)
    #[arg(short, long, value_name = "K=V", value_parser = parse_env_pair)]
    pub env: Vec<String>,
    /// Do not print which pod and container run the command
    #[arg(short, long)]
    pub quiet: bool,
}

fn parse_env_pair(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_string()),
        _ => Err(format!("`{s}` is not K=V")),
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The task's name in k8s/settings.toml [tasks]
    #[arg(required_unless_present = "list")]
    pub task: Option<String>,
    /// Run on this executor instead of the first available one
    #[arg(short = 'x', long, value_enum)]
    pub executor: Option<crate::config::Executor>,
    /// List the tasks and which executors are available
    #[arg(long)]
    pub list: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// A component, or DAG_ID or DAG_ID.TASK_ID for a task's worker pod
    pub what: String,
    /// Keep following the log
    #[arg(short, long)]
    pub follow: bool,
    /// The container, when the pod has several [default: all of them]
    #[arg(short, long)]
    pub container: Option<String>,
    /// Only the last N lines
    #[arg(long, value_name = "N")]
    pub tail: Option<i64>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Print the checks as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Where changed DAGs are checked before they ship: `image` (the worker image on the
    /// Docker engine) or `local` (the virtualenv of `dags check --local`)
    #[arg(long, default_value = "image")]
    pub check: String,
    /// Passed to the delivery: import images into this containerd socket
    #[arg(long, value_name = "SOCKET", env = "XTASK_NODE_CONTAINERD")]
    pub node_containerd: Option<Utf8PathBuf>,
    /// Passed to the delivery: ship images through this registry
    #[arg(long, value_name = "HOST[:PORT][/PREFIX]")]
    pub registry: Option<String>,
    /// Quiet period after the last change before a rebuild, in milliseconds (long enough
    /// for an editor's write-then-rename to be one change)
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,
    /// Stop after this many changes were handled (for scripts and benchmarks)
    #[arg(long, value_name = "N")]
    pub max_changes: Option<usize>,
    /// One JSON line per change on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Default)]
pub struct K8sUpArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Delete the kind cluster first and create it again
    #[arg(long)]
    pub recreate: bool,
    /// Use the images as last built instead of building
    #[arg(long)]
    pub no_build: bool,
    /// Apply and return without waiting for Airflow to be healthy
    #[arg(long)]
    pub no_wait: bool,
    /// Ship images through this registry (pods pull REGISTRY/PREFIX/NAME@digest) instead of
    /// importing them into the nodes
    #[arg(long, value_name = "HOST[:PORT][/PREFIX]")]
    pub registry: Option<String>,
    /// Registry that may be reached over plain HTTP (repeatable; loopback always may)
    #[arg(
        long = "insecure-registry",
        value_name = "HOST[:PORT]",
        env = "XTASK_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registry: Vec<String>,
    /// Import images into this containerd socket (a node whose runtime is on this machine)
    #[arg(long, value_name = "SOCKET", env = "XTASK_NODE_CONTAINERD")]
    pub node_containerd: Option<Utf8PathBuf>,
    /// kind node image [default: kindest/node:<kubernetes_version of k8s/settings.toml>]
    #[arg(long, value_name = "IMAGE")]
    pub node_image: Option<String>,
    /// Also merge the kind cluster's kubeconfig into ~/.kube/config
    #[arg(long)]
    pub export_kubeconfig: bool,
    /// Also apply k8s/overlays/NAME (repeatable)
    #[arg(long)]
    pub overlay: Vec<String>,
    /// Seconds each wait step may take before its failure is diagnosed
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Print a JSON report on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CiArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Leave the cluster up at the end
    #[arg(long)]
    pub keep: bool,
    /// Passed to k8s-up: ship images through this registry
    #[arg(long, value_name = "HOST[:PORT][/PREFIX]")]
    pub registry: Option<String>,
    /// Passed to k8s-up
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]", value_delimiter = ',')]
    pub insecure_registry: Vec<String>,
    /// Passed to k8s-up: import images into this containerd socket
    #[arg(long, value_name = "SOCKET", env = "XTASK_NODE_CONTAINERD")]
    pub node_containerd: Option<Utf8PathBuf>,
    /// Seconds each k8s-up wait step and the smoke run may take
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Print a JSON summary on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct K8sDownArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Keep the cluster; remove only the objects and generated secrets xtask made
    #[arg(long)]
    pub keep_cluster: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Print the status as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ManifestsArgs {
    #[command(subcommand)]
    pub command: ManifestsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ManifestsCommand {
    /// Parse every document into typed Kubernetes objects and check references, images,
    /// resources and RBAC; exits non-zero on any problem
    Check {
        /// Also check k8s/overlays/NAME (repeatable)
        #[arg(long)]
        overlay: Vec<String>,
        /// Print the problems as JSON
        #[arg(long)]
        json: bool,
    },
    /// Print what k8s-up would apply: placeholders resolved to the last built digests,
    /// namespace set, pod templates as ConfigMaps, secrets shown as <generated>
    Render {
        /// Also apply k8s/overlays/NAME (repeatable)
        #[arg(long)]
        overlay: Vec<String>,
        /// Namespace [env: XTASK_NAMESPACE; default: k8s/settings.toml, else airflow]
        #[arg(long, env = "XTASK_NAMESPACE")]
        namespace: Option<String>,
        /// Use IMAGE for placeholder NAME instead of the last build (NAME=IMAGE, repeatable)
        #[arg(long, value_name = "NAME=IMAGE")]
        image: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct DagsArgs {
    #[command(subcommand)]
    pub command: DagsCommand,
}

#[derive(Debug, Subcommand)]
pub enum DagsCommand {
    /// Import every DAG file like the scheduler's DAG processor; report OK, import errors
    /// (with the traceback's last frames) and parse time per file; exit non-zero on errors
    Check(DagsCheckArgs),
    /// Upload files/dags to the DAG bundle bucket (overlay dag-bundle-s3): only files whose
    /// content changed, removing deleted ones; the dag-processor and workers read it
    Push(DagsPushArgs),
}

#[derive(Debug, Args)]
pub struct DagsPushArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// An S3 endpoint (https://s3.eu-west-1.amazonaws.com, say) instead of the cluster's
    /// object store; keys from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The bucket
    #[arg(long, default_value = "airflow-dags")]
    pub bucket: String,
    /// The key prefix the bundle reads (its `prefix`)
    #[arg(long, default_value = "dags")]
    pub prefix: String,
    /// The region requests are signed for
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// The DAG bundle (of AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST) that reads the prefix
    #[arg(long, default_value = "dags-s3")]
    pub bundle: String,
    /// Leave the DAG processor to find the change at its next bundle refresh, instead of
    /// asking it through the cluster's Airflow API to parse the changed files now
    #[arg(long)]
    pub no_reparse: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DagsCheckArgs {
    /// Check in a local virtualenv instead of the worker image
    #[arg(long)]
    pub local: bool,
    /// The virtualenv for --local [default: target/xtask/venv, made from docker/base/airflow.toml]
    #[arg(long, value_name = "DIR")]
    pub venv: Option<Utf8PathBuf>,
    /// The image (of docker/images.toml) whose DAGs to check
    #[arg(long, default_value = "airflow-worker")]
    pub image: String,
    /// Seconds a file may take to import (Airflow's dagbag_import_timeout)
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SmokeArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Seconds the smoke run may take, from the first parse check to the last DAG's end
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Run with `airflow dags test` in the worker image on the Docker engine (or in a
    /// virtualenv with --venv) instead of on the cluster
    #[arg(long)]
    pub local: bool,
    /// With --local: run in this virtualenv instead of the image
    #[arg(long, value_name = "DIR")]
    pub venv: Option<Utf8PathBuf>,
    /// Only this smoke DAG (repeatable) [default: every files/dags/smoke_*.py]
    #[arg(long)]
    pub dag: Vec<String>,
    /// The image (of docker/images.toml) to run in
    #[arg(long, default_value = "airflow-worker")]
    pub image: String,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BaseArgs {
    /// Which recipe of docker/base/ to build
    #[arg(default_value = "airflow")]
    pub name: String,
    /// Build even when the recipe did not change
    #[arg(long)]
    pub force: bool,
    /// Resolve the newest versions allowed by the recipe and write them to its constraints file
    #[arg(long)]
    pub update_lock: bool,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NodeImageArgs {
    /// The Kubernetes release [default: kubernetes_version in k8s/settings.toml]
    #[arg(long, value_name = "VERSION")]
    pub kubernetes_version: Option<String>,
    /// Do not load the image into the local Docker engine
    #[arg(long)]
    pub no_load: bool,
    /// Also write the image as one tar (docker load -i, skopeo copy oci-archive:...)
    #[arg(long, value_name = "FILE")]
    pub archive: Option<Utf8PathBuf>,
    /// Build only the Kubernetes programs (cached under ~/.cache/xtask/components) and print their directory
    #[arg(long)]
    pub components_only: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Image builds: cold, one DAG changed, no-op; throughput; memory of a base import
    Images(BenchImagesArgs),
    /// Shipping one DAG change: xtask push vs docker push vs docker save + ctr import;
    /// memory of pulling and pushing the 1 GB base
    Push(BenchImagesArgs),
    /// One DAG change to the node: `k8s-up --no-wait` vs `docker save` + `ctr import`,
    /// on the local test cluster (.ci/local-cluster up)
    Deliver(BenchClusterArgs),
    /// One DAG change to every kind node: `k8s-up --no-wait` vs `kind load docker-image`
    /// and `kind load image-archive`, on kind clusters of 1 and 2 nodes it creates and deletes
    #[command(name = "deliver-kind")]
    DeliverKind(BenchKindArgs),
    /// One DAG change to "parsed in the cluster": `watch` vs docker build + docker save |
    /// ctr import + rollout, on the local test cluster
    Watch(BenchClusterArgs),
    /// One DAG edit until the API shows it: `dags push` to the S3 bundle (with and without
    /// its parse request) vs `k8s-up --no-wait` vs docker build + kind load + rollout, on a
    /// kind cluster it creates and deletes
    Bundle(BenchBundleArgs),
}

#[derive(Debug, Args)]
pub struct BenchBundleArgs {
    /// Nodes of the kind cluster (one control plane, the rest workers)
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Runs of each row (the table shows the median, fastest and slowest)
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// The kind cluster the benchmark creates
    #[arg(long, default_value = "xtask-bench-bundle")]
    pub cluster_name: String,
    /// Namespace the benchmark deploys into
    #[arg(long, default_value = "xtask-bench")]
    pub namespace: String,
    /// Leave the kind cluster up afterwards
    #[arg(long)]
    pub keep_cluster: bool,
    /// Leave out the docker row
    #[arg(long)]
    pub no_docker: bool,
}

#[derive(Debug, Args)]
pub struct BenchClusterArgs {
    /// The cluster's kubeconfig
    #[arg(
        long,
        env = "XTASK_KUBECONFIG",
        value_name = "FILE",
        default_value = "/var/lib/xtask-local-cluster/admin.kubeconfig"
    )]
    pub kubeconfig: Utf8PathBuf,
    /// The node's containerd socket
    #[arg(
        long,
        env = "XTASK_NODE_CONTAINERD",
        value_name = "SOCKET",
        default_value = "/run/xtask-local-cluster/containerd.sock"
    )]
    pub node_containerd: Utf8PathBuf,
    /// Namespace the benchmark deploys into (removed at the end)
    #[arg(long, default_value = "xtask-bench")]
    pub namespace: String,
    /// Files of DAG-side data (SQL templates, 25 kB each) added to files/dags, so the DAG
    /// layer has a realistic size (deliver only)
    #[arg(long, default_value_t = 2000)]
    pub dag_files: usize,
    /// Runs of each row, for both sides (the table shows the median)
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Leave out the docker columns
    #[arg(long)]
    pub no_docker: bool,
}

#[derive(Debug, Args)]
pub struct BenchKindArgs {
    /// Cluster sizes to measure, in nodes (one control plane, the rest workers)
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub nodes: Vec<usize>,
    /// Files of DAG-side data (SQL templates, 25 kB each) added to files/dags, so the DAG
    /// layer has a realistic size
    #[arg(long, default_value_t = 2000)]
    pub dag_files: usize,
    /// Namespace the benchmark deploys into
    #[arg(long, default_value = "xtask-bench")]
    pub namespace: String,
}

#[derive(Debug, Args)]
pub struct BenchImagesArgs {
    /// Size of the synthetic base image, in MB (three gzip layers, mostly incompressible)
    #[arg(long, default_value_t = 1100)]
    pub base_mb: u64,
    /// Number of DAG files
    #[arg(long, default_value_t = 2000)]
    pub dags: usize,
    /// Size of each DAG file, in kB
    #[arg(long, default_value_t = 25)]
    pub dag_kb: u64,
    /// Size of files/include, in MB
    #[arg(long, default_value_t = 20)]
    pub include_mb: u64,
    /// Runs of each repeated row (one-DAG and no-op rebuilds, pushes), for both sides;
    /// the table shows the median
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Leave out the docker build columns
    #[arg(long)]
    pub no_docker: bool,
    /// Print the figures as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct ImagesArgs {
    /// Build only this image (repeatable) [default: every image in docker/images.toml]
    #[arg(long = "image", value_name = "NAME")]
    pub images: Vec<String>,

    /// Also write one tar loadable by `docker load`, `kind load image-archive` and
    /// `ctr images import` [default path: target/xtask/images.tar]
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "target/xtask/images.tar")]
    pub archive: Option<Utf8PathBuf>,

    /// Tag of the built images [default: from docker/images.toml, else "dev"]
    #[arg(long, env = "XTASK_TAG")]
    pub tag: Option<String>,

    /// Base image reference for every image, overriding docker/images.toml
    /// (oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE, ...)
    #[arg(long, env = "XTASK_BASE", value_name = "REF")]
    pub base: Option<String>,

    /// Compression of new layers: auto (follow the base), gzip (every reader), zstd
    /// (containerd >= 1.5, Docker >= 23) or none
    #[arg(long, env = "XTASK_COMPRESSION", value_name = "auto|gzip|zstd|none")]
    pub compression: Option<CompressionChoice>,

    /// Rebuild every layer even when its inputs did not change
    #[arg(long)]
    pub no_cache: bool,

    /// First hash every blob of the image store and remove those whose bytes do not match
    /// their name (torn by a crash or power loss), so the build makes or fetches them again
    #[arg(long)]
    pub verify: bool,

    /// Push each image to REGISTRY[/PREFIX] (as REGISTRY/PREFIX/NAME:TAG), uploading only
    /// the blobs the registry lacks
    #[arg(long, value_name = "REGISTRY[/PREFIX]")]
    pub push: Option<String>,

    /// Load the images into a local engine: `docker` (skipped when it has the same image
    /// id), or `containerd` (at --containerd-socket; only the blobs it lacks are sent)
    #[arg(long, value_name = "docker|containerd")]
    pub load: Option<LoadTarget>,

    /// The containerd socket for --load containerd
    #[arg(
        long,
        value_name = "SOCKET",
        default_value = "/run/containerd/containerd.sock",
        env = "XTASK_CONTAINERD_SOCKET"
    )]
    pub containerd_socket: Utf8PathBuf,

    /// Registry that may be reached over plain HTTP (repeatable; loopback always may)
    #[arg(
        long = "insecure-registry",
        value_name = "HOST[:PORT]",
        env = "XTASK_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registry: Vec<String>,

    /// Platform to take from a multi-platform base [default: linux/amd64]
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,

    /// Print the report as JSON on stdout (progress and notes stay on stderr)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LoadTarget {
    /// The local Docker engine, through its API
    Docker,
    /// A containerd (namespace k8s.io, where the kubelet looks), like `ctr images import`
    Containerd,
}
