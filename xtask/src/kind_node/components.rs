//! The programs a Kubernetes node runs, built from their Go modules (the Go module proxy,
//! or the GOPROXY the user sets: no container registry), cached per version outside the
//! repository. The kind node image and the test cluster (.ci/local-cluster) both use them.
//!
//! Everything is built with CGO_ENABLED=0: static binaries run on `scratch` images and on
//! any host alike.

use camino::{Utf8Path, Utf8PathBuf};
use std::fs;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::gobuild::{GO_INSTALL, cache_root, go_cmd};
use crate::process;

/// Bumped whenever what is built, or how, changes: an older cache is built again.
const FORMAT: &str = "components-v1";

/// The Kubernetes programs built from the k8s.io/kubernetes module.
pub const KUBERNETES: [&str; 7] =
    ["kubeadm", "kubelet", "kubectl", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"];

/// What kubeadm of this release pulls when it sets up a control plane, as it names them.
#[derive(Clone, Debug, Default)]
pub struct SystemImages {
    pub apiserver: String,
    pub controller_manager: String,
    pub scheduler: String,
    pub proxy: String,
    pub coredns: String,
    pub pause: String,
    pub etcd: String,
}

impl SystemImages {
    /// Parses `kubeadm config images list`: one reference a line.
    pub fn parse(text: &str) -> Result<SystemImages> {
        let mut out = SystemImages::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let repo = line.rsplit_once(':').map(|(r, _)| r).unwrap_or(line);
            let slot = match repo.rsplit('/').next().unwrap_or(repo) {
                "kube-apiserver" => &mut out.apiserver,
                "kube-controller-manager" => &mut out.controller_manager,
                "kube-scheduler" => &mut out.scheduler,
                "kube-proxy" => &mut out.proxy,
                "coredns" => &mut out.coredns,
                "pause" => &mut out.pause,
                "etcd" => &mut out.etcd,
                _ => continue,
            };
            *slot = line.to_string();
        }
        for (what, v) in [
            ("kube-apiserver", &out.apiserver),
            ("kube-controller-manager", &out.controller_manager),
            ("kube-scheduler", &out.scheduler),
            ("kube-proxy", &out.proxy),
            ("coredns", &out.coredns),
            ("pause", &out.pause),
            ("etcd", &out.etcd),
        ] {
            if v.is_empty() {
                bail!("`kubeadm config images list` named no {what} image; it printed:\n{text}");
            }
        }
        Ok(out)
    }

    /// The Go module version of a tag like `3.6.6-0` (etcd) or `v1.13.1` (CoreDNS).
    pub fn module_version(reference: &str) -> Result<String> {
        let tag = reference.rsplit_once(':').map(|(_, t)| t).ok_or_else(|| anyhow!("`{reference}` has no tag"))?;
        let core = tag.split('-').next().unwrap_or(tag);
        Ok(if core.starts_with('v') { core.to_string() } else { format!("v{core}") })
    }
}

/// The built programs of one Kubernetes release.
pub struct Components {
    pub bin: Utf8PathBuf,
    pub images: SystemImages,
}

impl Components {
    pub fn path(&self, program: &str) -> Utf8PathBuf {
        self.bin.join(program)
    }
}

/// The components of `version` (`v1.35.4`), built now if the cache lacks them. `pause_c`
/// is the pause program's source; `say` reports each step.
pub fn ensure(version: &str, pause_c: &Utf8Path, say: &mut dyn FnMut(&str)) -> Result<Components> {
    if !version.starts_with("v1.") {
        bail!("kubernetes_version `{version}` is not of the form v1.MINOR.PATCH (k8s/settings.toml, [cluster])");
    }
    let dir = cache_root()?.join(version);
    let bin = dir.join("bin");
    let log = dir.join("build.log");
    fs::create_dir_all(&bin).with_context(|| format!("cannot create {bin}"))?;
    let pause_src = fs::read(pause_c).with_context(|| format!("cannot read {pause_c}"))?;
    let key = format!("{FORMAT} {version} {}", &crate::oci::Digest::of(&pause_src).hex()[..16]);
    let stamp = bin.join(".built");
    let listed = bin.join("system-images.txt");
    if fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == key) {
        let images =
            SystemImages::parse(&fs::read_to_string(&listed).with_context(|| format!("cannot read {listed}"))?)?;
        return Ok(Components { bin, images });
    }
    let go = process::require("go", GO_INSTALL)?;
    let started = Instant::now();
    let _ = fs::remove_file(&log);
    say(&format!(
        "building Kubernetes {version} from the k8s.io/kubernetes module (once per version; several minutes; log {log})"
    ));
    let src = dir.join("src");
    kubernetes_module(&go, version, &src, &log)?;
    let ldflags = version_ldflags(version);
    let mut args: Vec<String> =
        ["build", "-trimpath", "-ldflags", &ldflags, "-o"].iter().map(|s| s.to_string()).collect();
    args.push(format!("{bin}/"));
    args.extend(KUBERNETES.iter().map(|p| format!("k8s.io/kubernetes/cmd/{p}")));
    process::run_logged(go_cmd(&go, &args).dir(&src), &log, "go build (Kubernetes)")?;

    let list = duct::cmd(
        bin.join("kubeadm").into_std_path_buf(),
        ["config", "images", "list", "--kubernetes-version", version],
    )
    .read()
    .context("`kubeadm config images list` failed")?;
    let images = SystemImages::parse(&list)?;

    let etcd = SystemImages::module_version(&images.etcd)?;
    say(&format!("building etcd {etcd} (the version kubeadm {version} asks for)"));
    let etcd_src = dir.join("src-etcd");
    fs::create_dir_all(&etcd_src)?;
    crate::fsutil::write_atomic(
        &etcd_src.join("go.mod"),
        format!("module xtask.local/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 {etcd}\n").as_bytes(),
    )?;
    crate::fsutil::write_atomic(
        &etcd_src.join("tools.go"),
        b"//go:build tools\n\npackage tools\n\nimport _ \"go.etcd.io/etcd/server/v3\"\n",
    )?;
    process::run_logged(
        go_cmd(&go, &["mod", "tidy"]).dir(&etcd_src).env("GOFLAGS", "-mod=mod"),
        &log,
        "go mod tidy (etcd)",
    )?;
    process::run_logged(
        go_cmd(&go, &["build", "-trimpath", "-o", bin.join("etcd").as_str(), "go.etcd.io/etcd/server/v3"])
            .dir(&etcd_src),
        &log,
        "go build (etcd)",
    )?;

    let coredns = SystemImages::module_version(&images.coredns)?;
    say(&format!("building CoreDNS {coredns}"));
    process::run_logged(
        go_cmd(&go, &["install", "-trimpath", &format!("github.com/coredns/coredns@{coredns}")]).env("GOBIN", &bin),
        &log,
        "go install (CoreDNS)",
    )?;

    let cc = process::require("cc", "apt-get install gcc libc6-dev (or build-essential)")?;
    process::run_logged(
        duct::cmd(cc.into_std_path_buf(), ["-static", "-O2", "-o", bin.join("pause").as_str(), pause_c.as_str()]),
        &log,
        "cc (pause)",
    )?;
    crate::fsutil::write_atomic(&listed, list.as_bytes())?;
    crate::fsutil::write_atomic(&stamp, format!("{key}\n").as_bytes())?;
    say(&format!("components built in {:.0} s, cached in {dir}", started.elapsed().as_secs_f64()));
    Ok(Components { bin, images })
}

/// The version stamps Kubernetes' own build sets, so `kubelet --version` and the API
/// server's /version say the release.
fn version_ldflags(version: &str) -> String {
    let minor = version.trim_start_matches("v1.").split('.').next().unwrap_or("0");
    ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"]
        .iter()
        .map(|pkg| {
            format!(
                "-X {pkg}.gitVersion={version} -X {pkg}.gitMajor=1 -X {pkg}.gitMinor={minor} -X {pkg}.gitTreeState=clean -X {pkg}.buildDate=1970-01-01T00:00:00Z"
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Downloaded {
    go_mod: Option<String>,
    error: Option<String>,
}

/// A module that requires k8s.io/kubernetes at `version`, with its staging modules (which
/// it requires as v0.0.0) pinned to the same release.
fn kubernetes_module(go: &Utf8Path, version: &str, src: &Utf8Path, log: &Utf8Path) -> Result<()> {
    fs::create_dir_all(src)?;
    let out = duct::cmd(go.as_std_path(), ["mod", "download", "-json", &format!("k8s.io/kubernetes@{version}")])
        .dir(src)
        .unchecked()
        .stderr_to_stdout()
        .read()
        .context("cannot run `go mod download`")?;
    let info: Downloaded = serde_json::from_str(&out)
        .map_err(|_| anyhow!("`go mod download k8s.io/kubernetes@{version}` failed: {}", out.trim()))?;
    if let Some(e) = info.error {
        bail!(
            "cannot download k8s.io/kubernetes@{version} from the Go module proxy: {e}; check GOPROXY, or the version in k8s/settings.toml"
        );
    }
    let gomod = info.go_mod.ok_or_else(|| anyhow!("`go mod download` did not say where go.mod is"))?;
    let upstream = fs::read_to_string(&gomod).with_context(|| format!("cannot read {gomod}"))?;
    crate::fsutil::write_atomic(&src.join("go.mod"), component_go_mod(&upstream, version)?.as_bytes())?;
    let mut tools = String::from("//go:build tools\n\npackage tools\n\nimport (\n");
    for p in KUBERNETES {
        tools.push_str(&format!("\t_ \"k8s.io/kubernetes/cmd/{p}\"\n"));
    }
    tools.push_str(")\n");
    crate::fsutil::write_atomic(&src.join("tools.go"), tools.as_bytes())?;
    process::run_logged(
        go_cmd(go, &["mod", "tidy"]).dir(src).env("GOFLAGS", "-mod=mod"),
        log,
        "go mod tidy (Kubernetes)",
    )
}

fn component_go_mod(upstream: &str, version: &str) -> Result<String> {
    let go_line = upstream
        .lines()
        .find_map(|l| l.strip_prefix("go ").map(str::trim))
        .ok_or_else(|| anyhow!("k8s.io/kubernetes@{version}'s go.mod has no `go` line"))?;
    let staging = format!("v0.{}", version.trim_start_matches("v1."));
    let mut out = format!("module xtask.local/components\n\ngo {go_line}\n\nrequire k8s.io/kubernetes {version}\n\n");
    out.push_str("// The staging modules k8s.io/kubernetes requires as v0.0.0, pinned to this release.\nreplace (\n");
    for line in upstream.lines() {
        if let Some(module) = line.strip_prefix('\t').and_then(|l| l.strip_suffix(" v0.0.0"))
            && module.starts_with("k8s.io/")
            && !module.contains(' ')
        {
            out.push_str(&format!("\t{module} => {module} {staging}\n"));
        }
    }
    out.push_str(")\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadm_image_list_is_read_by_component() {
        let list = "registry.k8s.io/kube-apiserver:v1.35.4\nregistry.k8s.io/kube-controller-manager:v1.35.4\n\
                    registry.k8s.io/kube-scheduler:v1.35.4\nregistry.k8s.io/kube-proxy:v1.35.4\n\
                    registry.k8s.io/coredns/coredns:v1.13.1\nregistry.k8s.io/pause:3.10.1\nregistry.k8s.io/etcd:3.6.6-0\n";
        let images = SystemImages::parse(list).unwrap();
        assert_eq!(images.coredns, "registry.k8s.io/coredns/coredns:v1.13.1");
        assert_eq!(images.pause, "registry.k8s.io/pause:3.10.1");
        assert_eq!(SystemImages::module_version(&images.etcd).unwrap(), "v3.6.6");
        assert_eq!(SystemImages::module_version(&images.coredns).unwrap(), "v1.13.1");
        let err = SystemImages::parse("registry.k8s.io/pause:3.10.1\n").unwrap_err().to_string();
        assert!(err.contains("no kube-apiserver image"), "{err}");
    }

    #[test]
    fn staging_modules_are_pinned_to_the_release() {
        let upstream =
            "module k8s.io/kubernetes\n\ngo 1.25.0\n\nrequire (\n\tk8s.io/api v0.0.0\n\tgithub.com/x/y v1.2.3\n)\n";
        let m = component_go_mod(upstream, "v1.35.4").unwrap();
        assert!(m.contains("go 1.25.0\n"), "{m}");
        assert!(m.contains("\tk8s.io/api => k8s.io/api v0.35.4\n"), "{m}");
        assert!(!m.contains("github.com/x/y"), "{m}");
    }
}
