//! Registry credentials (the environment, Docker's config and credential helpers) and the
//! parameters of a `WWW-Authenticate` challenge.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

/// A user name and password (or token) for a registry, and where they came from. The
/// secret is never printed: Debug and Display show only the source.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    password: String,
    pub source: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials {{ user: {:?}, source: {:?} }}", self.user, self.source)
    }
}

impl Credentials {
    pub(super) fn basic(&self) -> String {
        format!("Basic {}", BASE64.encode(format!("{}:{}", self.user, self.password)))
    }
}

/// A `.dockerconfigjson` (what a kubernetes.io/dockerconfigjson Secret holds) with the
/// credentials for `host` and for no other registry; None when there are none for it.
pub fn pull_secret_json(host: &str) -> anyhow::Result<Option<String>> {
    Ok(credentials_for(host)?.map(|c| {
        serde_json::json!({"auths": {host: {
            "username": c.user,
            "password": c.password,
            "auth": BASE64.encode(format!("{}:{}", c.user, c.password)),
        }}})
        .to_string()
    }))
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers", default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

fn host_of(key: &str) -> &str {
    let k = key.trim_start_matches("https://").trim_start_matches("http://");
    k.split('/').next().unwrap_or(k)
}

/// The registry host the Docker config files Docker Hub under, whatever alias names it.
pub(super) fn hub(h: &str) -> &str {
    if h == "docker.io" || h == "registry-1.docker.io" { "index.docker.io" } else { h }
}

/// Credentials for `host`, and only for it: XTASK_REGISTRY_USER/XTASK_REGISTRY_PASSWORD when
/// XTASK_REGISTRY_HOST names `host` (for CI), else the Docker config
/// (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`): its auths, credHelpers and
/// credsStore, the way `docker login` leaves them. Environment credentials without
/// XTASK_REGISTRY_HOST are an error: they would otherwise go to whatever registry a base
/// image names.
pub fn credentials_for(host: &str) -> anyhow::Result<Option<Credentials>> {
    let user = std::env::var("XTASK_REGISTRY_USER").ok();
    let password = std::env::var("XTASK_REGISTRY_PASSWORD").ok();
    if user.is_some() || password.is_some() {
        let Some(for_host) = std::env::var("XTASK_REGISTRY_HOST").ok().filter(|h| !h.is_empty()) else {
            anyhow::bail!(
                "XTASK_REGISTRY_USER/XTASK_REGISTRY_PASSWORD are set but XTASK_REGISTRY_HOST is not; set it to the one registry they are for (for example XTASK_REGISTRY_HOST=registry.example.com:5000): xtask sends credentials to no other host"
            );
        };
        if hub(&for_host) == hub(host) {
            let (Some(user), Some(password)) = (user, password) else {
                anyhow::bail!(
                    "only one of XTASK_REGISTRY_USER and XTASK_REGISTRY_PASSWORD is set; set both (for {for_host}) or neither"
                );
            };
            return Ok(Some(Credentials {
                user,
                password,
                source: "XTASK_REGISTRY_USER/XTASK_REGISTRY_PASSWORD".into(),
            }));
        }
    }
    Ok(docker_config_credentials(host))
}

fn docker_config_credentials(host: &str) -> Option<Credentials> {
    let dir = std::env::var("DOCKER_CONFIG")
        .ok()
        .map(camino::Utf8PathBuf::from)
        .or_else(|| std::env::var("HOME").ok().map(|h| camino::Utf8Path::new(&h).join(".docker")))?;
    let path = dir.join("config.json");
    let cfg: DockerConfig = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let wanted = hub(host);
    let helper = cfg
        .cred_helpers
        .iter()
        .find(|(k, _)| hub(host_of(k)) == wanted)
        .map(|(_, v)| v.clone())
        .or(cfg.creds_store.clone());
    if let Some(helper) = helper
        && let Some(c) = from_helper(&helper, host)
    {
        return Some(c);
    }
    let (_, auth) = cfg.auths.iter().find(|(k, _)| hub(host_of(k)) == wanted)?;
    let source = format!("{} (auths)", path);
    if let (Some(u), Some(p)) = (&auth.username, &auth.password) {
        return Some(Credentials { user: u.clone(), password: p.clone(), source });
    }
    let decoded = String::from_utf8(BASE64.decode(auth.auth.as_deref()?.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some(Credentials { user: user.into(), password: password.into(), source })
}

/// How long a credential helper may take: they can prompt or wait on a keyring.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn from_helper(helper: &str, host: &str) -> Option<Credentials> {
    #[derive(Deserialize)]
    struct Out {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let program = format!("docker-credential-{helper}");
    crate::process::find(&program)?;
    let out = crate::process::read_bounded(
        duct::cmd(&program, ["get"]).stdin_bytes(host.as_bytes()).stderr_null(),
        &program,
        HELPER_TIMEOUT,
    )
    .map_err(|e| tracing::warn!("{e:#}"))
    .ok()?;
    let o: Out = serde_json::from_str(&out).ok()?;
    Some(Credentials { user: o.username, password: o.secret, source: format!("credential helper {program}") })
}

pub(super) fn parse_challenge(params: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let (value, next) = if let Some(stripped) = after.strip_prefix('"') {
            match stripped.split_once('"') {
                Some((v, n)) => (v, n),
                None => (stripped, ""),
            }
        } else {
            after.split_once(',').unwrap_or((after, ""))
        };
        out.insert(key.trim().trim_start_matches(',').trim().to_string(), value.to_string());
        rest = next.trim_start_matches(',').trim();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let p = parse_challenge(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
    }

    #[test]
    fn credentials_never_show_the_secret() {
        let c = Credentials { user: "u".into(), password: "hunter2".into(), source: "env".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
