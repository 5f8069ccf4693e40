//! The kind node image, built offline by our own engine: what `kind create cluster
//! --image` boots, for teams that cannot pull `kindest/node`.
//!
//! Bottom to top: the operating system from the recipe `docker/base/kind-node.toml`
//! (Debian, systemd, containerd, runc, CNI plugins), then kubeadm, kubelet and kubectl, the
//! containerd configuration, and `/kind` (the version kind reads, the default CNI and
//! storage manifests, and an archive of the system images kubeadm asks for, imported into
//! containerd before the kubelet starts). The system images (kube-apiserver, etcd, CoreDNS,
//! pause, ...) are written by the same engine from binaries built from their Go modules
//! (`components`), under the exact names `kubeadm config images list` prints.

pub mod components;

use camino::{Utf8Path, Utf8PathBuf};
use std::collections::BTreeMap;
use std::fs;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use tokio::runtime::Handle;

use crate::config::{CompressionChoice, DEFAULT_MTIME, ImageDef, LayerDef, Project};
use crate::image_build::{self, BuildOptions, ImageReport};
use crate::oci::archive::{self, ArchiveImage};
use crate::oci::layer::Compression;
use crate::oci::store::Store;

use self::components::Components;

/// The repository our node images are named under: `xtask.local/kind-node:<version>`.
pub const IMAGE_REPO: &str = "xtask.local/kind-node";

/// The name of the node image for a Kubernetes version.
pub fn image_name(version: &str) -> String {
    format!("{IMAGE_REPO}:{version}")
}

/// The image that runs the default CNI and storage agents.
fn agent_image(version: &str) -> String {
    format!("xtask.local/kind-node-agent:{version}")
}

/// One system image: a program at /usr/local/bin on a base; kubeadm's manifests name the
/// command of most, the image's entrypoint is the program for the others.
struct SystemImage<'a> {
    reference: String,
    base: &'a str,
    program: &'a str,
    entrypoint: bool,
}

/// Where the definitions of the node image live in the repository.
pub fn definition_dir(project: &Project) -> Utf8PathBuf {
    project.root.join("docker/kind-node")
}

pub struct Built {
    pub name: String,
    pub node: ImageReport,
    pub system: Vec<ImageReport>,
    pub seconds: f64,
    /// The store, still locked, for whatever comes next (loading, an archive).
    pub store: Store,
}

/// Builds (or, when nothing changed, finds) the node image of `version` in the store.
pub fn build(project: &Project, rt: &Handle, version: &str, say: &mut dyn FnMut(&str)) -> Result<Built> {
    let started = Instant::now();
    let defs_dir = definition_dir(project);
    let comps = components::ensure(version, &defs_dir.join("pause.c"), say)?;
    let stage = project.work_dir().join("node-image").join(version);
    let store = Store::open(&project.store_dir())?;
    let images = &comps.images;

    // The system images: one binary each on scratch, kube-proxy and the agent on a small
    // Debian with iptables.
    let netbase = format!("{}kind-netbase", image_build::XTASK_BASE);
    let system = [
        SystemImage {
            reference: images.apiserver.clone(),
            base: "scratch",
            program: "kube-apiserver",
            entrypoint: false,
        },
        SystemImage {
            reference: images.controller_manager.clone(),
            base: "scratch",
            program: "kube-controller-manager",
            entrypoint: false,
        },
        SystemImage {
            reference: images.scheduler.clone(),
            base: "scratch",
            program: "kube-scheduler",
            entrypoint: false,
        },
        SystemImage { reference: images.etcd.clone(), base: "scratch", program: "etcd", entrypoint: false },
        SystemImage { reference: images.coredns.clone(), base: "scratch", program: "coredns", entrypoint: true },
        SystemImage { reference: images.pause.clone(), base: "scratch", program: "pause", entrypoint: true },
        SystemImage { reference: images.proxy.clone(), base: &netbase, program: "kube-proxy", entrypoint: false },
        SystemImage { reference: agent_image(version), base: &netbase, program: "kubectl", entrypoint: false },
    ];
    let mut system_reports = Vec::new();
    for img in &system {
        let (registry, name, tag) = split_reference(&img.reference)?;
        let dir = stage.join("system").join(&name);
        stage_programs(&comps, &[img.program], &dir)?;
        let entrypoint = img.entrypoint.then(|| vec![format!("/usr/local/bin/{}", img.program)]);
        let def =
            image_def(&stage, &registry, &name, &tag, img.base, vec![layer("bin", &dir, "usr/local/bin")], &entrypoint);
        say(&format!("image      {}", img.reference));
        system_reports.push(build_quietly(project, rt, &store, &def)?);
    }

    // The node's own files.
    let kind_dir = stage.join("kind");
    let archive_images: Vec<ArchiveImage> = system_reports.iter().map(ImageReport::archive_image).collect();
    let key: String = archive_images.iter().map(|i| format!("{} {}\n", i.name, i.manifest.digest())).collect();
    let archive_path = kind_dir.join("images/system.tar");
    let key_path = stage.join("system-images.key");
    if !archive_path.is_file() || fs::read_to_string(&key_path).ok().as_deref() != Some(key.as_str()) {
        fs::create_dir_all(archive_path.parent().unwrap_or(&kind_dir))?;
        let stats = archive::write_archive_file(&store, &archive_images, &archive_path, &mut |_| {})?;
        crate::fsutil::write_atomic(&key_path, key.as_bytes())?;
        say(&format!("archive    {} system images, {}", archive_images.len(), crate::fsutil::human_bytes(stats.bytes)));
    }
    write_if_changed(&kind_dir.join("version"), version)?;
    for manifest in ["default-cni.yaml", "default-storage.yaml"] {
        let path = defs_dir.join(manifest);
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", project.rel(&path)))?;
        write_if_changed(
            &kind_dir.join("manifests").join(manifest),
            &text.replace("@AGENT_IMAGE@", &agent_image(version)),
        )?;
    }
    let containerd = defs_dir.join("containerd.toml");
    let text = fs::read_to_string(&containerd).with_context(|| format!("cannot read {}", project.rel(&containerd)))?;
    let containerd_dir = stage.join("containerd");
    write_if_changed(&containerd_dir.join("config.toml"), &text.replace("@PAUSE_IMAGE@", &images.pause))?;
    let node_bin = stage.join("node-bin");
    stage_programs(&comps, &["kubeadm", "kubelet", "kubectl"], &node_bin)?;

    let name = image_name(version);
    let (registry, repo, tag) = split_reference(&name)?;
    let node_def = image_def(
        &stage,
        &registry,
        &repo,
        &tag,
        &format!("{}kind-node", image_build::XTASK_BASE),
        vec![
            layer("kubernetes", &node_bin, "usr/local/bin"),
            layer("containerd", &containerd_dir, "etc/containerd"),
            layer("kind", &kind_dir, "kind"),
        ],
        &None,
    );
    say(&format!("image      {name}"));
    let node = build_quietly(project, rt, &store, &node_def)?;
    Ok(Built { name, node, system: system_reports, seconds: started.elapsed().as_secs_f64(), store })
}

/// `registry.k8s.io/coredns/coredns:v1.13.1` -> (`registry.k8s.io/coredns`, `coredns`, `v1.13.1`).
fn split_reference(reference: &str) -> Result<(String, String, String)> {
    let (repo, tag) = reference.rsplit_once(':').ok_or_else(|| anyhow!("image `{reference}` has no tag"))?;
    let (registry, name) = repo.rsplit_once('/').ok_or_else(|| anyhow!("image `{reference}` has no registry"))?;
    Ok((registry.into(), name.into(), tag.into()))
}

fn layer(name: &str, dir: &Utf8Path, target: &str) -> LayerDef {
    LayerDef { name: name.into(), source: dir.to_string(), target: target.into() }
}

fn image_def(
    stage: &Utf8Path,
    registry: &str,
    name: &str,
    tag: &str,
    base: &str,
    layers: Vec<LayerDef>,
    entrypoint: &Option<Vec<String>>,
) -> ImageDef {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string());
    let p = crate::oci::host_platform();
    ImageDef {
        name: name.into(),
        base: base.into(),
        registry: registry.into(),
        tag: tag.into(),
        platform: format!("{}/{}", p.os(), p.architecture()),
        // Uncompressed: these images never leave the machine, and containerd and Docker
        // unpack them faster so.
        compression: CompressionChoice::Fixed(Compression::None),
        mtime: DEFAULT_MTIME,
        insecure: vec![],
        context: stage.to_path_buf(),
        exclude: vec![],
        uid: 0,
        gid: 0,
        file_mode: 0o644,
        exec_mode: 0o755,
        dir_mode: 0o755,
        user: None,
        workdir: None,
        entrypoint: entrypoint.clone(),
        cmd: None,
        env,
        labels: BTreeMap::from([(
            "org.opencontainers.image.source".to_string(),
            "built offline by cargo xtask node-image".to_string(),
        )]),
        layers,
    }
}

/// An image that is a recipe's base and nothing more (the local registry's, say).
pub fn recipe_image(project: &Project, registry: &str, name: &str, tag: &str, base: &str) -> ImageDef {
    image_def(&project.work_dir(), registry, name, tag, base, vec![], &None)
}

fn build_quietly(project: &Project, rt: &Handle, store: &Store, def: &ImageDef) -> Result<ImageReport> {
    image_build::build_def(project, rt, store, def, &BuildOptions::default(), false)
        .with_context(|| format!("image {}", def.full_name()))
}

/// Copies the programs into `dir`, keeping their times, so an unchanged program leaves
/// the layer's inputs unchanged and the layer is not written again.
fn stage_programs(comps: &Components, programs: &[&str], dir: &Utf8Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    for p in programs {
        let from = comps.path(p);
        let to = dir.join(p);
        let src = fs::metadata(&from).with_context(|| format!("{from} was not built"))?;
        if let Ok(dst) = fs::metadata(&to)
            && dst.len() == src.len()
            && dst.modified().ok() == src.modified().ok()
        {
            continue;
        }
        let tmp = crate::fsutil::temp_sibling(&to);
        fs::copy(&from, &tmp).with_context(|| format!("cannot copy {from} to {tmp}"))?;
        fs::File::options().write(true).open(&tmp)?.set_modified(src.modified()?)?;
        fs::rename(&tmp, &to)?;
    }
    Ok(())
}

fn write_if_changed(path: &Utf8Path, text: &str) -> Result<()> {
    if fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    crate::fsutil::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_registry_name_and_tag() {
        assert_eq!(
            split_reference("registry.k8s.io/coredns/coredns:v1.13.1").unwrap(),
            ("registry.k8s.io/coredns".into(), "coredns".into(), "v1.13.1".into())
        );
        assert_eq!(
            split_reference(&image_name("v1.35.4")).unwrap(),
            ("xtask.local".into(), "kind-node".into(), "v1.35.4".into())
        );
        assert!(split_reference("pause").is_err());
    }
}
