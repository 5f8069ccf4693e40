//! Shared helpers for the integration tests: a throwaway repository, a small real base
//! image made with umoci, and running the real `xtask` binary against them.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// Panics (never skips) when a program the test needs is missing: CI installs them all.
pub fn require(program: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file())).unwrap_or(false);
    assert!(found, "`{program}` is not installed; run `bash .ci/run` (or see README.md) to install the test tools");
}

/// Runs a program, panicking with its output when it fails.
pub fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A directory that holds a small base image, built once per test binary with umoci:
/// busybox at /bin, and /opt/airflow/dags owned by 50000:0 with mode 0775 like the
/// official Airflow image. Returned as an OCI layout with tag `1`.
pub fn busybox_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        require("umoci");
        let dir = std::env::temp_dir().join(format!("xtask-test-base-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let layout = dir.join("layout");
        let bundle = dir.join("bundle");
        sh(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
        sh(Command::new("umoci").args(["new", "--image"]).arg(format!("{}:1", layout.display())));
        sh(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:1", layout.display())).arg(&bundle));
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "tmp", "opt/airflow/dags"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static is installed at /bin/busybox");
        for applet in
            ["sh", "cat", "ls", "stat", "find", "readlink", "id", "sleep", "env", "echo", "tar", "rm", "true", "pwd"]
        {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        sh(Command::new("chown").args(["-R", "50000:0"]).arg(rootfs.join("opt/airflow")));
        fs::set_permissions(rootfs.join("opt/airflow/dags"), fs::Permissions::from_mode(0o775)).unwrap();
        sh(Command::new("umoci").args(["repack", "--image"]).arg(format!("{}:1", layout.display())).arg(&bundle));
        sh(Command::new("umoci").args(["config", "--image"]).arg(format!("{}:1", layout.display())).args([
            "--config.env",
            "PATH=/bin",
            "--config.cmd",
            "/bin/sh",
            "--os",
            "linux",
            "--architecture",
            "amd64",
        ]));
        fs::remove_dir_all(&bundle).unwrap();
        layout
    })
}

pub const IMAGES_TOML: &str = r#"
[defaults]
registry = "docker.io/library"
tag = "test"

[[image]]
name = "airflow-worker"
base = "BASE"
[image.env]
AIRFLOW__CORE__LOAD_EXAMPLES = "False"

[[image.layer]]
name = "include"
source = "files/include"
target = "/opt/airflow/include"

[[image.layer]]
name = "dags"
source = "files/dags"
target = "/opt/airflow/dags"
"#;

/// A throwaway repository: docker/images.toml on the test base, a few DAGs and an
/// include package.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Repo {
        let base = format!("oci:{}:1", busybox_base().display());
        Repo::with_base(&base)
    }

    pub fn with_base(base: &str) -> Repo {
        let dir = tempfile::Builder::new().prefix("xtask-repo-").tempdir().unwrap();
        let repo = Repo { dir };
        repo.write("docker/images.toml", &IMAGES_TOML.replace("BASE", base));
        repo.write("files/include/common/__init__.py", "GREETING = 'hello'\n");
        repo.write("files/dags/example_dag.py", "from common import GREETING\nprint(GREETING)\n");
        repo.write("files/dags/second_dag.py", "print('second')\n");
        repo
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    pub fn set_base(&self, base: &str) {
        self.write("docker/images.toml", &IMAGES_TOML.replace("BASE", base));
    }

    /// A `cargo xtask` command rooted at this repository.
    pub fn xtask(&self) -> Command {
        let mut c = Command::new(XTASK);
        c.arg("--root").arg(self.root()).env_remove("SOURCE_DATE_EPOCH").env_remove("XTASK_TAG");
        // A test names its cluster with flags; a shell's `eval "$(.ci/local-cluster env)"`
        // must not turn the kind path into the local cluster.
        for var in ["XTASK_KUBECONFIG", "XTASK_NODE_CONTAINERD", "XTASK_NAMESPACE", "XTASK_CLUSTER"] {
            c.env_remove(var);
        }
        c
    }

    /// Runs `xtask ARGS` and expects success.
    pub fn ok(&self, args: &[&str]) -> Output {
        sh(self.xtask().args(args))
    }

    /// Runs `xtask ARGS` and expects failure, returning stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.xtask().args(args).output().unwrap();
        assert!(!out.status.success(), "xtask {args:?} should have failed but succeeded:\n{}", stdout(&out));
        stderr(&out)
    }

    /// `images --json`, parsed.
    pub fn build_json(&self, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["images", "--json"];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&out)))
    }

    pub fn store(&self) -> PathBuf {
        self.path("target/xtask/oci")
    }

    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").unwrap();
        fs::read(self.store().join("blobs/sha256").join(hex)).unwrap()
    }

    pub fn store_index(&self) -> String {
        fs::read_to_string(self.store().join("index.json")).unwrap()
    }
}

/// The report of the first image in a `--json` report.
pub fn image(report: &serde_json::Value) -> &serde_json::Value {
    &report["images"][0]
}

pub fn layer<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    image(report)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no layer {name} in {report}"))
}

/// Entries of a (gzip or plain) tar blob: (path, uid, gid, mode, kind, link target).
pub fn tar_entries(bytes: &[u8]) -> Vec<(String, u64, u64, u32, char, Option<String>)> {
    let reader: Box<dyn std::io::Read> =
        if bytes.starts_with(&[0x1f, 0x8b]) { Box::new(flate2::read::GzDecoder::new(bytes)) } else { Box::new(bytes) };
    let mut ar = tar::Archive::new(reader);
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            let kind = match h.entry_type() {
                tar::EntryType::Directory => 'd',
                tar::EntryType::Symlink => 'l',
                tar::EntryType::Regular => 'f',
                _ => '?',
            };
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.mode().unwrap(),
                kind,
                e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned()),
            )
        })
        .collect()
}

/// Whether the Docker engine answers on its default socket.
pub fn docker_running() -> bool {
    Command::new("docker").arg("info").output().map(|o| o.status.success()).unwrap_or(false)
}

pub fn require_docker() {
    require("docker");
    assert!(
        docker_running(),
        "the Docker engine is not running; start it with `dockerd &` (bash .ci/run does) and run the tests again"
    );
}

/// The kubeconfig of the local test cluster (`.ci/local-cluster up`); panics with the fix
/// when it is not up. XTASK_TEST_KUBECONFIG points at another cluster.
pub fn test_kubeconfig() -> PathBuf {
    let p = std::env::var_os("XTASK_TEST_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/xtask-local-cluster/admin.kubeconfig"));
    assert!(
        p.is_file(),
        "no test cluster: {} is missing; start one with `.ci/local-cluster up` (bash .ci/test does)",
        p.display()
    );
    p
}

/// The local test cluster's containerd socket, through which images reach its node.
pub const CLUSTER_CONTAINERD: &str = "/run/xtask-local-cluster/containerd.sock";

pub async fn kube_client() -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(test_kubeconfig()).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

/// A namespace for one test, deleted (with everything in it) when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &kube::Client, prefix: &str) -> TestNamespace {
        use k8s_openapi::api::core::v1::Namespace;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("{prefix}-{}-{}", std::process::id(), nanos % 100_000);
        let api: kube::Api<Namespace> = kube::Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        api.create(&Default::default(), &ns).await.unwrap();
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        // On a runtime and client of its own: the test's runtime may be unwinding.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async move {
                let client = kube_client().await;
                let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(10), api.delete(&name, &Default::default()))
                        .await;
            })
        })
        .join();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Debian's docker-registry on 127.0.0.1, with its own storage, stopped on drop.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub host: String,
    child: std::process::Child,
}

impl Registry {
    /// `htpasswd`: Some((user, password)) to require basic auth.
    pub fn start(htpasswd: Option<(&str, &str)>) -> Registry {
        Registry::start_at("127.0.0.1", htpasswd)
    }

    /// The same, listening on `ip` (an address of this machine).
    pub fn start_at(ip: &str, htpasswd: Option<(&str, &str)>) -> Registry {
        require("docker-registry");
        let dir = tempfile::Builder::new().prefix("xtask-registry-").tempdir().unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}/data}}}}\nhttp: {{addr: \"{ip}:{port}\"}}\n",
            dir.path().display()
        );
        if let Some((user, password)) = htpasswd {
            require("htpasswd");
            let out = sh(Command::new("htpasswd").args(["-Bbn", user, password]));
            fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
            config.push_str(&format!(
                "auth: {{htpasswd: {{realm: xtask-test, path: {}/htpasswd}}}}\n",
                dir.path().display()
            ));
        }
        fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = fs::File::create(dir.path().join("registry.log")).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let host = format!("{ip}:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&host).is_ok() {
                return Registry { dir, host, child };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "docker-registry did not start: {}",
            fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// Every blob the registry stores: digest -> size.
    pub fn stored_blobs(&self) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        let root = self.dir.path().join("data/docker/registry/v2/blobs/sha256");
        for prefix in fs::read_dir(&root).into_iter().flatten().flatten() {
            for blob in fs::read_dir(prefix.path()).into_iter().flatten().flatten() {
                if let Ok(md) = fs::metadata(blob.path().join("data")) {
                    out.insert(format!("sha256:{}", blob.file_name().to_string_lossy()), md.len());
                }
            }
        }
        out
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This repository's root (the workspace the tests are built from).
pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// A base of docker/base/, built into this workspace's store by `cargo xtask base` (so it
/// is built once per machine and recipe), as an `oci:` reference a test repository can use.
fn workspace_base(name: &str) -> String {
    let out = sh(Command::new(XTASK).arg("--root").arg(workspace()).args(["base", name, "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    format!("oci:{}:{}", v["store"].as_str().unwrap(), v["store_name"].as_str().unwrap())
}

/// The real Airflow base (docker/base/airflow.toml).
pub fn airflow_base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| workspace_base("airflow"))
}

/// The Postgres image's base (docker/base/postgres.toml).
pub fn postgres_base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| workspace_base("postgres"))
}

/// The object store's base (docker/base/s3.toml: versitygw from its Go module).
pub fn s3_base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| workspace_base("s3"))
}

/// A repository with this repository's DAGs, include package, k8s/ and base recipes, on
/// the real Airflow base.
pub fn airflow_repo() -> Repo {
    let repo = Repo::with_base(airflow_base());
    fs::remove_dir_all(repo.path("files")).unwrap();
    for dir in ["files", "k8s"] {
        sh(Command::new("cp").arg("-r").arg(workspace().join(dir)).arg(repo.root()));
    }
    fs::create_dir_all(repo.path("docker")).unwrap();
    sh(Command::new("cp").arg("-r").arg(workspace().join("docker/base")).arg(repo.path("docker")));
    let images = fs::read_to_string(workspace().join("docker/images.toml")).unwrap();
    assert!(images.contains("base = \"xtask-base:airflow\""));
    let images = images
        .replace("base = \"xtask-base:airflow\"", &format!("base = \"{}\"", airflow_base()))
        .replace("base = \"xtask-base:postgres\"", &format!("base = \"{}\"", postgres_base()))
        .replace("base = \"xtask-base:s3\"", &format!("base = \"{}\"", s3_base()));
    repo.write("docker/images.toml", &images);
    let _ = fs::remove_dir_all(repo.path("files/dags/__pycache__"));
    repo
}

/// A private containerd (its own root, state and socket) for one test, stopped on drop.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Containerd {
    pub fn start() -> Containerd {
        require("containerd");
        require("ctr");
        let dir = tempfile::Builder::new().prefix("xtask-ctrd-").tempdir().unwrap();
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{0}/containerd.sock\"\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_tcp_service = true\n",
            dir.path().display()
        );
        fs::write(dir.path().join("config.toml"), config).unwrap();
        let log = fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd { dir, child };
        for _ in 0..100 {
            if c.ctr(&["version"]).status.success() {
                return c;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("containerd did not start: {}", fs::read_to_string(c.dir.path().join("containerd.log")).unwrap());
    }

    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Containerd {
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Snapshots may leave mounts behind; containerd's root is ours alone.
        let _ = Command::new("umount").arg("-R").arg(self.dir.path().join("root")).output();
    }
}

/// The head (request or status line and headers) of the next HTTP message, None at EOF.
pub fn read_head(r: &mut std::io::BufReader<std::net::TcpStream>) -> std::io::Result<Option<String>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(r, &mut line)? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" {
            return Ok(Some(head));
        }
    }
}

/// The Content-Length a message head gives, 0 when none.
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

/// Runs `cmd` to completion, failing the test if it still runs after `limit`: for tests
/// whose bug would be a hang.
pub fn output_within(cmd: &mut Command, limit: std::time::Duration) -> Output {
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{cmd:?} still ran after {limit:?}; it hangs:\n{}", stderr(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// Makes a copy of the test base as an OCI layout the test may damage.
pub fn copy_base(to: &Path) {
    sh(Command::new("cp").arg("-a").arg(busybox_base()).arg(to));
}

/// The blob of the first layer of the OCI layout at `layout`.
pub fn base_layer_path(layout: &Path) -> PathBuf {
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(&m[7..])).unwrap()).unwrap();
    let l = manifest["layers"][0]["digest"].as_str().unwrap();
    layout.join("blobs/sha256").join(&l[7..])
}

/// Sends one HTTP request (its head and body, as a test proxy read them) to `upstream` on a
/// new connection and reads the whole answer: its head and body.
pub fn forward(upstream: &str, head: &str, body: &[u8]) -> std::io::Result<(String, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut server = std::net::TcpStream::connect(upstream)?;
    server.write_all(head.as_bytes())?;
    server.write_all(body)?;
    let mut from_server = std::io::BufReader::new(server);
    let answer = read_head(&mut from_server)?.unwrap_or_default();
    let no_body = head.starts_with("HEAD ") || answer.starts_with("HTTP/1.1 204") || answer.starts_with("HTTP/1.1 304");
    let mut resp = vec![0; if no_body { 0 } else { content_length(&answer) }];
    from_server.read_exact(&mut resp)?;
    Ok((answer, resp))
}

impl Repo {
    /// Makes the repository a git work tree with everything in it committed.
    pub fn commit_all(&self) {
        let git = |args: &[&str]| {
            sh(Command::new("git")
                .arg("-C")
                .arg(self.root())
                .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
                .args(args))
        };
        if !self.path(".git").exists() {
            git(&["init", "-q"]);
            self.write(".gitignore", "/target/\n");
        }
        git(&["add", "-A"]);
        git(&["commit", "-q", "--allow-empty", "-m", "test"]);
    }
}

/// A kind cluster a test makes and drives through xtask. Its kubeconfig is a file of its
/// own, so the shell's cluster (KUBECONFIG, set by `.ci/local-cluster env`) loses nothing
/// when kind deletes the cluster's context.
pub struct KindCluster(pub &'static str);

impl KindCluster {
    pub fn kubeconfig(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}.kubeconfig", self.0))
    }

    /// `kind ARGS` with that kubeconfig.
    pub fn kind(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kind");
        c.args(args).env("KUBECONFIG", self.kubeconfig());
        c
    }

    /// `xtask ARGS --cluster-name NAME` in `repo`.
    pub fn xtask(&self, repo: &Repo, args: &[&str]) -> Command {
        let mut c = repo.xtask();
        c.args(args).args(["--cluster-name", self.0]).env("KUBECONFIG", self.kubeconfig());
        c
    }

    pub fn run(&self, repo: &Repo, args: &[&str]) -> Output {
        self.xtask(repo, args).output().unwrap()
    }

    /// Its stdout; fails the test with both outputs if it fails.
    pub fn ok(&self, repo: &Repo, args: &[&str]) -> String {
        let out = self.run(repo, args);
        assert!(out.status.success(), "xtask {args:?} failed:\n{}\n{}", stdout(&out), stderr(&out));
        stdout(&out)
    }
}

/// versitygw (.ci/setup installs it) serving a directory as S3 on 127.0.0.1, with one
/// account and the buckets asked for; stopped on drop.
pub struct S3Server {
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub key: String,
    pub secret: String,
    child: std::process::Child,
}

impl S3Server {
    pub fn start(buckets: &[&str]) -> S3Server {
        require("versitygw");
        let dir = tempfile::Builder::new().prefix("xtask-s3-").tempdir().unwrap();
        for b in buckets {
            fs::create_dir_all(dir.path().join("data").join(b)).unwrap();
        }
        let port = free_port();
        let (key, secret) = ("xtasktestkey".to_string(), "xtask-test-secret-0123456789".to_string());
        let log = fs::File::create(dir.path().join("versitygw.log")).unwrap();
        let mut child = Command::new("versitygw")
            .args(["--port", &format!("127.0.0.1:{port}"), "--access", &key, "--secret", &secret, "posix"])
            .arg(dir.path().join("data"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return S3Server { dir, endpoint: format!("http://127.0.0.1:{port}"), key, secret, child };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("versitygw did not start: {}", fs::read_to_string(dir.path().join("versitygw.log")).unwrap_or_default());
    }

    /// The objects of `bucket`: key -> bytes, as the server's directory holds them.
    pub fn objects(&self, bucket: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
        let root = self.dir.path().join("data").join(bucket);
        let mut out = std::collections::BTreeMap::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(p.strip_prefix(&root).unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap());
                }
            }
        }
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
