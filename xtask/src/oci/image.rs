//! An image = a base image + new layers: its config (the base's, extended) and manifest.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::archive::ArchiveImage;
use super::layer::LayerBlob;
use super::store::Store;
use super::{
    ANNOTATION_BASE_DIGEST, ANNOTATION_BASE_NAME, Descriptor, DescriptorExt, Digest, ImageManifest, MediaType,
};

/// What the image definition adds to the base's config.
#[derive(Clone, Debug, Default)]
pub struct ConfigChanges {
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// RFC 3339 time written to `created` and the new history entries.
    pub created: String,
}

/// One new layer as it goes into the config's history.
pub struct NewLayer<'a> {
    pub blob: &'a LayerBlob,
    pub created_by: String,
}

pub struct Assembled {
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// A base image whose blobs are all in the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BaseImage {
    pub reference: String,
    /// The base's manifest as stored (for an OCI base, byte-identical to the source's).
    pub manifest: Descriptor,
    pub config: Descriptor,
    /// Layers with OCI media types; blob bytes exactly as in the source.
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<Digest>,
    /// Name to record in `org.opencontainers.image.base.name`, where the reference is a
    /// portable name (a registry reference); None for local files.
    pub base_name: Option<String>,
}

impl BaseImage {
    pub fn total_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size()).sum()
    }
}

/// Progress of an import: called with the total once known, then with byte counts.
pub trait ImportProgress {
    fn start(&mut self, total: u64);
    fn advance(&mut self, n: u64);
}

pub struct NoProgress;
impl ImportProgress for NoProgress {
    fn start(&mut self, _: u64) {}
    fn advance(&mut self, _: u64) {}
}

/// An image the store holds: what delivery and apply need of it.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// The name in docker/images.toml, which k8s/ uses as the placeholder.
    pub name: String,
    /// Fully qualified name with tag.
    pub reference: String,
    pub manifest: Descriptor,
}

impl BuiltImage {
    /// `name@sha256:...`: how a pod refers to exactly this image.
    pub fn pinned_reference(&self) -> String {
        format!("{}@{}", super::repository_of(&self.reference), self.manifest.digest())
    }

    pub fn archive_image(&self) -> ArchiveImage {
        ArchiveImage { name: self.reference.clone(), manifest: self.manifest.clone() }
    }
}

/// Writes config and manifest for `base` + `layers` into the store.
pub fn assemble(
    store: &Store,
    base: &BaseImage,
    layers: &[NewLayer<'_>],
    changes: &ConfigChanges,
) -> Result<Assembled> {
    // The base's config stays raw JSON: it must round-trip every field, including those
    // oci-spec's ImageConfiguration does not model (Docker's container_config, Healthcheck...).
    let mut config: Value = store.read_json(&base.config.sha256()?).context("cannot read the base image's config")?;
    let Some(obj) = config.as_object_mut() else { bail!("the base image's config is not a JSON object") };

    obj.insert("created".into(), json!(changes.created));
    let rootfs = obj.entry("rootfs").or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    let Some(diff_ids) = rootfs.get_mut("diff_ids").and_then(Value::as_array_mut) else {
        bail!("the base image's config has no rootfs.diff_ids")
    };
    for l in layers {
        diff_ids.push(json!(l.blob.diff_id));
    }
    let history = obj.entry("history").or_insert_with(|| json!([]));
    if let Some(history) = history.as_array_mut() {
        for l in layers {
            history.push(json!({"created": changes.created, "created_by": l.created_by, "comment": "xtask"}));
        }
    }
    let cfg = obj.entry("config").or_insert_with(|| json!({}));
    let Some(cfg) = cfg.as_object_mut() else { bail!("the base image's config.config is not an object") };
    if !changes.env.is_empty() {
        let mut env: Vec<String> = cfg
            .get("Env")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        for (k, v) in &changes.env {
            let line = format!("{k}={v}");
            match env.iter_mut().find(|e| e.split_once('=').map(|(ek, _)| ek) == Some(k.as_str())) {
                Some(existing) => *existing = line,
                None => env.push(line),
            }
        }
        cfg.insert("Env".into(), json!(env));
    }
    if !changes.labels.is_empty() {
        let labels = cfg.entry("Labels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            *labels = json!({});
        }
        let labels = labels.as_object_mut().expect("object");
        for (k, v) in &changes.labels {
            labels.insert(k.clone(), json!(v));
        }
    }
    if let Some(user) = &changes.user {
        cfg.insert("User".into(), json!(user));
    }
    if let Some(dir) = &changes.workdir {
        cfg.insert("WorkingDir".into(), json!(dir));
    }
    if let Some(entrypoint) = &changes.entrypoint {
        cfg.insert("Entrypoint".into(), json!(entrypoint));
        // A new entrypoint invalidates the base's arguments to the old one.
        if changes.cmd.is_none() {
            cfg.remove("Cmd");
        }
    }
    if let Some(cmd) = &changes.cmd {
        cfg.insert("Cmd".into(), json!(cmd));
    }

    let config_desc = store.put_json(MediaType::ImageConfig, &config)?;
    let mut all_layers = base.layers.clone();
    for l in layers {
        all_layers.push(super::descriptor(l.blob.media_type.clone(), &l.blob.digest, l.blob.size));
    }
    let mut annotations = HashMap::new();
    annotations.insert(ANNOTATION_BASE_DIGEST.to_string(), base.manifest.digest().to_string());
    if let Some(name) = &base.base_name {
        annotations.insert(ANNOTATION_BASE_NAME.to_string(), name.clone());
    }
    let manifest = oci_manifest(config_desc.clone(), all_layers.clone(), Some(annotations));
    let manifest_desc = store.put_json(MediaType::ImageManifest, &manifest)?;
    Ok(Assembled { manifest: manifest_desc, config: config_desc, layers: all_layers })
}

/// An OCI image manifest of `config` and `layers`.
pub fn oci_manifest(
    config: Descriptor,
    layers: Vec<Descriptor>,
    annotations: Option<HashMap<String, String>>,
) -> ImageManifest {
    let mut m = oci_spec::image::ImageManifestBuilder::default()
        .schema_version(oci_spec::image::SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers);
    if let Some(a) = annotations {
        m = m.annotations(a);
    }
    m.build().expect("every required field of the manifest is set")
}

/// RFC 3339 (UTC) for seconds since the epoch; the `created` time of new content.
pub fn rfc3339(epoch: u64) -> anyhow::Result<String> {
    let t = i64::try_from(epoch).ok().and_then(|s| jiff::Timestamp::from_second(s).ok()).ok_or_else(|| {
        anyhow::anyhow!("{epoch} seconds since 1970 is not a time an image can carry (SOURCE_DATE_EPOCH?)")
    })?;
    // Whole seconds in UTC, `Z` for the offset: what the digests of earlier builds hold.
    Ok(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::archive::{ArchiveImage, ArchiveOptions, write_archive};

    /// The digests an image had stay its digests: a change to how configs, manifests or
    /// archives are written (a new serializer, new types) must not move them, or every
    /// user's images would be rebuilt and re-shipped for nothing.
    #[test]
    fn the_same_inputs_keep_the_digests_they_had() {
        let dir = camino_tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let base_layer = store.put_bytes(b"base layer bytes").unwrap();
        // A base config with fields no OCI type models: they must survive as they are.
        let base_config = json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin", "LANG=C"], "Cmd": ["sh"], "Labels": {"a": "b"}, "Healthcheck": {"Test": ["NONE"]}},
            "container_config": {"Hostname": "x"},
            "rootfs": {"type": "layers", "diff_ids": [base_layer]},
            "history": [{"created": "2020-01-01T00:00:00Z", "created_by": "base"}],
        });
        let config = store.put_json(MediaType::ImageConfig, &base_config).unwrap();
        let layer = crate::oci::descriptor(MediaType::ImageLayerGzip, &base_layer, 16);
        let manifest_json =
            json!({"schemaVersion": 2, "mediaType": MediaType::ImageManifest, "config": config, "layers": [layer]});
        let manifest = store.put_json(MediaType::ImageManifest, &manifest_json).unwrap();
        let base = BaseImage {
            reference: "oci:base:1".into(),
            manifest,
            config,
            layers: vec![layer],
            diff_ids: vec![base_layer],
            base_name: Some("registry.example/base:1".into()),
        };
        let dags = store.put_bytes(b"dags layer bytes").unwrap();
        let blob = LayerBlob {
            digest: dags.clone(),
            diff_id: Digest::of(b"dags tar"),
            size: 16,
            media_type: MediaType::ImageLayerGzip,
        };
        let changes = ConfigChanges {
            env: BTreeMap::from([("LANG".into(), "C.UTF-8".into()), ("AIRFLOW_HOME".into(), "/opt/airflow".into())]),
            labels: BTreeMap::from([("org.example".into(), "yes".into())]),
            user: Some("50000:0".into()),
            workdir: Some("/opt/airflow".into()),
            entrypoint: Some(vec!["/entrypoint".into()]),
            cmd: None,
            created: rfc3339(1_700_000_000).unwrap(),
        };
        let image =
            assemble(&store, &base, &[NewLayer { blob: &blob, created_by: "COPY files/dags".into() }], &changes)
                .unwrap();
        assert_eq!(
            image.config.digest().as_ref(),
            "sha256:d300e3eb8da3565c4bc1b55c367999bbbb784840f95c229fb9b4e8a4e543702c"
        );
        assert_eq!(
            image.manifest.digest().as_ref(),
            "sha256:783762508dd4a8b65d680b1e2d8a965e138973bb1d30cb472cbd6f5034ffd036"
        );

        let mut archive = Vec::new();
        let images = [ArchiveImage { name: "docker.io/library/airflow-worker:dev".into(), manifest: image.manifest }];
        let opts = ArchiveOptions { digest_names: true, ..Default::default() };
        write_archive(&store, &images, &opts, &mut archive, &mut |_| {}).unwrap();
        assert_eq!(
            Digest::of(&archive).as_str(),
            "sha256:ab053861052030910b90eb83e42910be83f261c1270e1d73c205802b07fbbb20"
        );
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(946_684_800).unwrap(), "2000-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199).unwrap(), "2024-02-29T23:59:59Z");
        assert!(rfc3339(u64::MAX).is_err());
    }
}
