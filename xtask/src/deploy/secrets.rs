//! Secrets xtask generates at the first apply and keeps only in the cluster: never in
//! the repository, never printed.

/// A Secret xtask makes, and the keys it holds.
pub struct GeneratedSecret {
    pub name: &'static str,
    pub keys: &'static [&'static str],
    /// Made only when the objects applied include this kind and name (an overlay's
    /// server, say); `None`: always.
    pub with: Option<(&'static str, &'static str)>,
}

impl GeneratedSecret {
    /// Whether this secret belongs with `objects` (rendered objects, as applied).
    pub fn wanted(&self, objects: &[serde_json::Value]) -> bool {
        self.with.is_none_or(|(kind, name)| objects.iter().any(|o| o["kind"] == kind && o["metadata"]["name"] == name))
    }
}

/// The in-cluster object store of the `object-store` overlay: its Deployment, Service and
/// generated Secret, which also defines the Airflow connection `airflow_s3`.
pub const OBJECT_STORE: &str = "airflow-s3";
const OBJECT_STORE_URL: &str = "http://airflow-s3:7070";

/// In the order they are made (the DB connection needs the DB password).
pub const GENERATED: &[GeneratedSecret] = &[
    GeneratedSecret { name: "airflow-postgres", keys: &["password"], with: None },
    GeneratedSecret {
        name: OBJECT_STORE,
        keys: &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AIRFLOW_CONN_AIRFLOW_S3"],
        with: Some(("Deployment", OBJECT_STORE)),
    },
    GeneratedSecret {
        name: "airflow-secrets",
        keys: &[
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "AIRFLOW__CORE__FERNET_KEY",
            "AIRFLOW__API_AUTH__JWT_SECRET",
            "AIRFLOW__API__SECRET_KEY",
        ],
        with: None,
    },
    GeneratedSecret { name: "airflow-admin", keys: &["passwords.json", "username", "password"], with: None },
];

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;

/// Bytes from the operating system's random source.
fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| anyhow!("the operating system gave no random bytes: {e}"))?;
    Ok(buf)
}

/// A random string of letters and digits (safe in URLs, shells and YAML), without the
/// look-alikes 0/O and 1/l/I. Bytes past the largest multiple of the alphabet's size are
/// dropped, so every character is equally likely.
fn random_alnum(n: usize) -> Result<String> {
    const ALNUM: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in random_bytes(n * 2)? {
            if usize::from(b) < 256 - 256 % ALNUM.len() && out.len() < n {
                out.push(ALNUM[usize::from(b) % ALNUM.len()] as char);
            }
        }
    }
    Ok(out)
}

/// The pull secret for one registry (`.dockerconfigjson` holding only its credentials),
/// applied with the other objects, so a k8s-up without them prunes it.
pub fn pull_secret(namespace: &str, dockerconfigjson: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": crate::cluster::diagnose::PULL_SECRET,
            "namespace": namespace,
            "labels": {super::manifests::MANAGED_BY_LABEL: super::manifests::MANAGED_BY},
        },
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": dockerconfigjson},
    })
}

/// Fresh values for a generated Secret. `existing` holds the values already in the
/// cluster (other secrets may be derived from them: the DB connection from the password).
pub fn generate(name: &str, existing: &BTreeMap<String, BTreeMap<String, String>>) -> Result<BTreeMap<String, String>> {
    let hex32 = || -> Result<String> { Ok(hex::encode(random_bytes(32)?)) };
    let mut v = BTreeMap::new();
    match name {
        "airflow-postgres" => {
            v.insert("password".into(), random_alnum(24)?);
        }
        "airflow-secrets" => {
            let pw = existing
                .get("airflow-postgres")
                .and_then(|s| s.get("password"))
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("the airflow-postgres secret must exist before airflow-secrets"))?;
            v.insert(
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN".into(),
                format!("postgresql+psycopg2://airflow:{pw}@airflow-postgres:5432/airflow"),
            );
            v.insert("AIRFLOW__CORE__FERNET_KEY".into(), URL_SAFE.encode(random_bytes(32)?));
            v.insert("AIRFLOW__API_AUTH__JWT_SECRET".into(), hex32()?);
            v.insert("AIRFLOW__API__SECRET_KEY".into(), hex32()?);
        }
        OBJECT_STORE => {
            let key = random_alnum(20)?;
            let secret = random_alnum(40)?;
            // Path-style requests: the store is one host name, not a host per bucket.
            let conn = serde_json::json!({
                "conn_type": "aws",
                "login": key,
                "password": secret,
                "extra": {
                    "endpoint_url": OBJECT_STORE_URL,
                    "region_name": "us-east-1",
                    "config_kwargs": {"s3": {"addressing_style": "path"}},
                },
            });
            v.insert("AWS_ACCESS_KEY_ID".into(), key);
            v.insert("AWS_SECRET_ACCESS_KEY".into(), secret);
            v.insert("AIRFLOW_CONN_AIRFLOW_S3".into(), conn.to_string());
        }
        "airflow-admin" => {
            let pw = random_alnum(20)?;
            v.insert("username".into(), "admin".into());
            v.insert("passwords.json".into(), serde_json::json!({"admin": pw}).to_string());
            v.insert("password".into(), pw);
        }
        other => anyhow::bail!("no generator for secret {other}"),
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_hold_every_declared_key() {
        let mut existing = BTreeMap::new();
        for g in GENERATED {
            let values = generate(g.name, &existing).unwrap();
            for k in g.keys {
                assert!(values.contains_key(*k), "{} lacks {k}", g.name);
            }
            existing.insert(g.name.to_string(), values);
        }
        let conn = &existing["airflow-secrets"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"];
        // The object store's connection carries the keys the store itself is started with.
        let s3: serde_json::Value = serde_json::from_str(&existing[OBJECT_STORE]["AIRFLOW_CONN_AIRFLOW_S3"]).unwrap();
        assert_eq!(s3["login"], existing[OBJECT_STORE]["AWS_ACCESS_KEY_ID"].as_str());
        assert_eq!(s3["password"], existing[OBJECT_STORE]["AWS_SECRET_ACCESS_KEY"].as_str());
        assert!(conn.contains(&existing["airflow-postgres"]["password"]));
        // A Fernet key is 32 bytes, URL-safe base64.
        assert_eq!(URL_SAFE.decode(&existing["airflow-secrets"]["AIRFLOW__CORE__FERNET_KEY"]).unwrap().len(), 32);
    }

    #[test]
    fn random_alnum_has_the_length_asked_for() {
        for n in [1, 20, 24, 200] {
            let s = random_alnum(n).unwrap();
            assert_eq!(s.len(), n);
            assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
    }
}
