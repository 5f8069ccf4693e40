//! What the benchmarks share: timing a child process (wall clock and peak memory), the
//! Docker engine's presence, a private containerd and a private registry as destinations.
//!
//! Measured commands are `std::process::Command`s, not xshell or duct: `timed` needs the
//! child's own pid to collect its peak RSS with wait4, which both of those hide. The
//! long-lived destinations (containerd, the registry) are duct handles, killed on drop.

use camino::{Utf8Path, Utf8PathBuf};
use std::fs;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::scenario::BASE_TAG;

pub(super) struct Run {
    pub(super) seconds: f64,
    pub(super) max_rss_kb: i64,
    pub(super) stdout: Vec<u8>,
}

/// The largest peak RSS of any xtask process a benchmark ran, in kB.
static XTASK_PEAK_KB: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Notes the peak RSS of an xtask child (what the memory target is about).
fn note_peak(cmd: &Command, max_rss_kb: i64) {
    let ours = std::env::current_exe().is_ok_and(|exe| exe.as_os_str() == cmd.get_program());
    if ours {
        XTASK_PEAK_KB.fetch_max(max_rss_kb, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The benchmark's peak memory: the largest of its xtask children's and its own, in MB.
pub(super) fn peak_memory_mb() -> (f64, f64) {
    // SAFETY: rusage is plain data, zeroed is a valid value; RUSAGE_SELF needs no pid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a local that outlives the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let children = XTASK_PEAK_KB.load(std::sync::atomic::Ordering::Relaxed);
    (children as f64 / 1024.0, usage.ru_maxrss as f64 / 1024.0)
}

/// Waits for a child that was spawned rather than `timed` (a long-lived `watch`), noting
/// its peak RSS like `timed` does.
pub(super) fn reap(cmd: &Command, child: std::process::Child) -> Result<()> {
    let mut status = 0;
    // SAFETY: as in `timed`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals; the pid is our own child's, not yet waited for.
    if unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) } < 0 {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    note_peak(cmd, usage.ru_maxrss);
    Ok(())
}

/// Runs a command to completion, measuring wall time and the child's peak RSS.
pub(super) fn timed(mut cmd: Command) -> Result<Run> {
    let out_file = tempfile::tempfile()?;
    let err_file = tempfile::tempfile()?;
    cmd.stdout(out_file.try_clone()?).stderr(err_file.try_clone()?).stdin(Stdio::null());
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    let mut status = 0;
    // wait4 is the one call that gives a child's peak RSS; neither std nor rustix wraps it.
    // SAFETY: rusage is plain data, zeroed is a valid value; the pid is our own child's.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: valid pointers to locals that outlive the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    if r < 0 {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let read = |mut f: fs::File| -> Vec<u8> {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        let _ = f.seek(std::io::SeekFrom::Start(0));
        let _ = f.read_to_end(&mut v);
        v
    };
    note_peak(&cmd, usage.ru_maxrss);
    let stdout = read(out_file);
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{cmd:?} failed:\n{}", String::from_utf8_lossy(&read(err_file)));
    }
    Ok(Run { seconds, max_rss_kb: usage.ru_maxrss, stdout })
}

/// Runs a command with its output discarded; whether it exited 0 (an error only when it
/// could not be started at all).
pub(super) fn succeeds(cmd: &mut Command) -> std::io::Result<bool> {
    Ok(cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?.success())
}

/// Whether the docker buildx plugin (BuildKit) is installed; asked once per benchmark,
/// outside what it times.
pub(super) fn buildkit_installed() -> bool {
    succeeds(Command::new("docker").args(["buildx", "version"])).unwrap_or(false)
}

/// What `docker_build` runs, for the tables.
pub(super) fn builder_name(buildkit: bool) -> &'static str {
    if buildkit { "BuildKit (docker buildx)" } else { "legacy builder (no buildx plugin installed)" }
}

/// `docker build FLAGS -q -t TAG -f DOCKERFILE CONTEXT`, with BuildKit (`docker buildx
/// build --load`) when `buildkit`, else the legacy builder.
pub(super) fn docker_build(
    buildkit: bool,
    flags: &[&str],
    dockerfile: &Utf8Path,
    context: &Utf8Path,
    tag: &str,
) -> Command {
    let mut c = Command::new("docker");
    if buildkit {
        c.env("DOCKER_BUILDKIT", "1").args(["buildx", "build", "--load"]);
    } else {
        c.env("DOCKER_BUILDKIT", "0").arg("build");
    }
    c.args(flags).args(["-q", "-t", tag, "-f"]).arg(dockerfile).arg(context);
    c
}

pub(super) fn docker_ok() -> bool {
    succeeds(Command::new("docker").arg("info")).unwrap_or(false)
}

/// Whether the Docker engine holds the bench base (the images bench loads it).
pub(super) fn docker_has_base() -> Result<bool> {
    Ok(succeeds(Command::new("docker").args(["image", "inspect", &format!("{BASE_TAG}:latest")]))?)
}

/// A private containerd (its own root, state and socket), stopped on drop: the
/// destination of `ctr import` measurements.
pub struct PrivateContainerd {
    pub dir: Utf8PathBuf,
    child: duct::Handle,
}

impl PrivateContainerd {
    pub fn start(dir: &Utf8Path) -> Result<PrivateContainerd> {
        crate::process::require("containerd", "sudo apt-get install containerd (or run .ci/setup)")?;
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{0}/containerd.sock\"\n",
            dir
        );
        fs::write(dir.join("config.toml"), config)?;
        let log = fs::File::create(dir.join("containerd.log"))?;
        let child = duct::cmd!("containerd", "--config", dir.join("config.toml"))
            .stderr_to_stdout()
            .stdout_file(log)
            .unchecked()
            .start()
            .context("cannot start containerd")?;
        let c = PrivateContainerd { dir: dir.to_path_buf(), child };
        for _ in 0..100 {
            if succeeds(c.ctr().arg("version")).unwrap_or(false) {
                return Ok(c);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bail!("containerd did not start; see {}", dir.join("containerd.log"))
    }

    pub fn socket(&self) -> Utf8PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(self.socket()).args(["--namespace", "k8s.io"]);
        c
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = duct::cmd!("umount", "-R", self.dir.join("root")).stdout_null().stderr_null().unchecked().run();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A docker-registry on a free loopback port with throwaway storage, stopped on drop.
pub(super) struct BenchRegistry {
    pub(super) host: String,
    pub(super) storage: Utf8PathBuf,
    child: duct::Handle,
}

impl BenchRegistry {
    pub(super) fn start(dir: &Utf8Path) -> Result<BenchRegistry> {
        crate::process::require("docker-registry", "sudo apt-get install docker-registry (or run .ci/setup)")?;
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let storage = dir.join("data");
        fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
                storage
            ),
        )?;
        let child = duct::cmd!("docker-registry", "serve", dir.join("config.yml"))
            .stdout_null()
            .stderr_null()
            .unchecked()
            .start()
            .context("cannot start docker-registry")?;
        let host = format!("127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&host).is_ok() {
                return Ok(BenchRegistry { host, storage, child });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!("docker-registry did not start")
    }

    /// Bytes of every blob the registry stores.
    pub(super) fn stored_bytes(&self) -> u64 {
        fn walk(p: &Utf8Path) -> u64 {
            let mut n = 0;
            for e in p.read_dir_utf8().into_iter().flatten().flatten() {
                let path = e.path();
                if path.is_dir() {
                    n += walk(path);
                } else if e.file_name() == "data" {
                    n += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
            n
        }
        walk(&self.storage.join("docker/registry/v2/blobs"))
    }
}

impl Drop for BenchRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// What `kind load docker-image` does: `docker save` to a file, then `ctr images import`
/// of it (`ctr` is the containerd command to import with). Returns seconds and the
/// archive's size.
pub(super) fn docker_save_import(image: &str, tar: &Utf8Path, mut ctr: Command) -> Result<(f64, u64)> {
    let started = Instant::now();
    let mut save = Command::new("docker");
    save.args(["save", "-o"]).arg(tar).arg(image);
    timed(save)?;
    ctr.args(["images", "import"]).arg(tar);
    timed(ctr)?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes = fs::metadata(tar)?.len();
    fs::remove_file(tar)?;
    Ok((seconds, bytes))
}
