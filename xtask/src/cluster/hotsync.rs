//! Changed files copied straight into a running pod (a tar through exec), so a DAG edit is
//! parsed in seconds while the new image rolls out behind it.

use camino::Utf8PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};

use super::Cluster;
use crate::config::{self, ImageOverrides, Project};

/// Files of the change as the image holds them: (path in the image, path on disk).
pub fn image_paths(project: &Project, files: &[Utf8PathBuf]) -> Result<Vec<(String, Utf8PathBuf)>> {
    let defs = config::load_images(project, &ImageOverrides::default())?;
    let worker = defs
        .iter()
        .find(|d| d.name == "airflow-worker")
        .or(defs.first())
        .ok_or_else(|| anyhow!("docker/images.toml defines no image"))?;
    let mut out = Vec::new();
    for f in files {
        let s = f.as_str();
        if let Some(layer) =
            worker.layers.iter().find(|l| s.starts_with(&format!("{}/", l.source.trim_end_matches('/'))))
        {
            let rel = &s[layer.source.trim_end_matches('/').len() + 1..];
            out.push((format!("/{}/{rel}", layer.target), project.root.join(f)));
        }
    }
    Ok(out)
}

/// The changed files as a tar for the pod, and the paths (in the image) of removed ones.
/// A symbolic link goes as the link itself, as the image layer holds it: its target is
/// never read, so a link under files/ cannot ship a file from outside it.
fn sync_tar(files: &[(String, Utf8PathBuf)]) -> Result<(Vec<u8>, Vec<String>)> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut removed = Vec::new();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs();
    for (in_image, on_disk) in files {
        let path = in_image.trim_start_matches('/');
        let Ok(md) = std::fs::symlink_metadata(on_disk) else {
            removed.push(in_image.clone());
            continue;
        };
        let mut h = tar::Header::new_gnu();
        h.set_mtime(now);
        if md.file_type().is_symlink() {
            let target = std::fs::read_link(on_disk).with_context(|| format!("cannot read link {}", on_disk))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            tar.append_link(&mut h, path, &target)?;
        } else if md.is_file() {
            let bytes = std::fs::read(on_disk).with_context(|| format!("cannot read {}", on_disk))?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(bytes.len() as u64);
            tar.append_data(&mut h, path, bytes.as_slice())?;
        } else {
            bail!("{} is neither a file nor a symbolic link; only those ship", on_disk);
        }
    }
    Ok((tar.into_inner()?, removed))
}

/// Copies changed files into a running pod (removed ones are removed there too).
pub async fn sync_into(cluster: &Cluster, pod: &str, container: &str, files: &[(String, Utf8PathBuf)]) -> Result<()> {
    let (bytes, removed) = sync_tar(files)?;
    let argv = vec!["tar".into(), "-x".into(), "-o".into(), "-C".into(), "/".into()];
    let (code, _, err) = super::exec::exec_capture(cluster, pod, container, argv, Some(bytes)).await?;
    if code != 0 {
        bail!("copying into {pod} failed: {}", String::from_utf8_lossy(&err).trim());
    }
    if !removed.is_empty() {
        let mut argv = vec!["rm".to_string(), "-f".to_string()];
        argv.extend(removed);
        super::exec::exec_capture(cluster, pod, container, argv, None).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_to_a_file_outside_ships_as_a_link_never_its_target() {
        let dir = camino_tempfile::tempdir().unwrap();
        let secret = dir.path().join("credentials");
        std::fs::write(&secret, "aws_secret_access_key = hunter2").unwrap();
        let dags = dir.path().join("files/dags");
        std::fs::create_dir_all(&dags).unwrap();
        std::fs::write(dags.join("a.py"), "print('a')").unwrap();
        std::os::unix::fs::symlink(&secret, dags.join("leak.py")).unwrap();
        let files = vec![
            ("/opt/airflow/dags/a.py".to_string(), dags.join("a.py")),
            ("/opt/airflow/dags/leak.py".to_string(), dags.join("leak.py")),
            ("/opt/airflow/dags/gone.py".to_string(), dags.join("gone.py")),
        ];
        let (bytes, removed) = sync_tar(&files).unwrap();
        assert_eq!(removed, ["/opt/airflow/dags/gone.py"]);
        assert!(!bytes.windows(7).any(|w| w == b"hunter2"), "the link's target was shipped");
        let mut archive = tar::Archive::new(&bytes[..]);
        let entries: Vec<(String, tar::EntryType, Option<Utf8PathBuf>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e.link_name().unwrap().map(|l| Utf8PathBuf::from_path_buf(l.into_owned()).unwrap());
                (e.path().unwrap().display().to_string(), e.header().entry_type(), link)
            })
            .collect();
        assert_eq!(entries[0].0, "opt/airflow/dags/a.py");
        assert_eq!(entries[1], ("opt/airflow/dags/leak.py".into(), tar::EntryType::Symlink, Some(secret)));
    }
}
