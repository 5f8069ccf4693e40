//! A misbehaving registry, written for these tests: a proxy in front of a real
//! docker-registry that asks for credentials, sends its token service or upload locations
//! to other hosts, serves a blob that never ends, or stalls. xtask must keep credentials to
//! the registry's own host and stop within bounds.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

#[derive(Clone)]
enum Mode {
    /// Pass everything through.
    Forward,
    /// 401 with a Basic challenge until a request carries Authorization.
    Basic,
    /// 401 with a Bearer challenge whose realm is this URL.
    BearerAt(String),
    /// Basic, and upload Locations rewritten to this origin.
    LocationTo(String),
    /// Blob GETs answered with zeros that never end.
    EndlessBlob,
    /// Blob GETs answered with headers and then silence.
    Stall,
}

/// The misbehaving registry: every request head it saw, and its address.
struct Hostile {
    host: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Hostile {
    fn start(bind: &str, upstream: &str, mode: Mode) -> Hostile {
        let listener = TcpListener::bind(format!("{bind}:0")).unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (log, upstream) = (seen.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (log, upstream, mode) = (log.clone(), upstream.clone(), mode.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, &upstream, &mode, &log);
                });
            }
        });
        Hostile { host, seen }
    }

    /// The requests that carried an Authorization header.
    fn authorized(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|h| h.to_ascii_lowercase().contains("\nauthorization:")).cloned().collect()
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn serve(client: TcpStream, upstream: &str, mode: &Mode, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    while let Some(req) = read_head(&mut from_client)? {
        log.lock().unwrap().push(req.clone());
        let mut body = vec![0; content_length(&req)];
        from_client.read_exact(&mut body)?;
        let authorized = req.to_ascii_lowercase().contains("\nauthorization:");
        let is_blob_get = req.starts_with("GET ") && req.contains("/blobs/sha256:");
        let challenge = match mode {
            Mode::Basic | Mode::LocationTo(_) if !authorized => Some("Basic realm=\"hostile\"".to_string()),
            Mode::BearerAt(realm) if !authorized => Some(format!("Bearer realm=\"{realm}\",service=\"hostile\"")),
            _ => None,
        };
        if let Some(challenge) = challenge {
            write!(
                to_client,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\nContent-Length: 0\r\n\r\n"
            )?;
            continue;
        }
        match mode {
            Mode::EndlessBlob if is_blob_get => {
                to_client.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
                let zeros = vec![0u8; 1 << 16];
                loop {
                    to_client.write_all(&zeros)?;
                }
            }
            Mode::Stall if is_blob_get => {
                to_client.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")?;
                std::thread::sleep(Duration::from_secs(600));
                return Ok(());
            }
            _ => {}
        }
        // Through to the real registry, without our client's Authorization.
        let upstream_req: String =
            req.split_inclusive("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("authorization:")).collect();
        let (mut head, resp) = forward(upstream, &upstream_req, &body)?;
        if let Mode::LocationTo(origin) = mode {
            head = head
                .split_inclusive("\r\n")
                .map(|l| match l.strip_prefix("Location: ") {
                    Some(url) => {
                        let path = &url[url.find("/v2/").unwrap_or(0)..];
                        format!("Location: {origin}{path}")
                    }
                    None => l.to_string(),
                })
                .collect();
        }
        to_client.write_all(head.as_bytes())?;
        to_client.write_all(&resp)?;
    }
    Ok(())
}

/// A token service that records who asked and hands out a token.
fn token_service(bind: &str) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind(format!("{bind}:0")).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let mut r = BufReader::new(client.try_clone().unwrap());
            if let Ok(Some(head)) = read_head(&mut r) {
                log.lock().unwrap().push(head);
                let body = r#"{"token":"t0ken"}"#;
                let _ = write!(
                    &client,
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        }
    });
    (format!("http://{addr}/token"), seen)
}

/// A real registry holding the test base as bases/busybox:1.
fn registry_with_base() -> Registry {
    require("skopeo");
    let registry = Registry::start(None);
    sh(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", busybox_base().display()))
        .arg(format!("docker://{}/bases/busybox:1", registry.host)));
    registry
}

/// Runs xtask with `env` (and no credentials but those), failing the test if it has not
/// finished within `limit`: a hang is the bug these tests look for.
fn run_bounded(repo: &Repo, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let config = tempfile::tempdir().unwrap();
    let mut c = repo.xtask();
    c.args(args).env("DOCKER_CONFIG", config.path());
    for var in ["XTASK_REGISTRY_USER", "XTASK_REGISTRY_PASSWORD", "XTASK_REGISTRY_HOST", "XTASK_REGISTRY_TIMEOUT"] {
        c.env_remove(var);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    output_within(&mut c, limit)
}

const CREDS: [(&str, &str); 2] = [("XTASK_REGISTRY_USER", "ci"), ("XTASK_REGISTRY_PASSWORD", "s3cret-pw")];

#[test]
fn environment_credentials_go_only_to_the_host_they_name() {
    let registry = registry_with_base();
    let hostile = Hostile::start("127.0.0.1", &registry.host, Mode::Basic);
    let repo = Repo::with_base(&format!("docker://{}/bases/busybox:1", hostile.host));
    let limit = Duration::from_secs(120);

    // Without XTASK_REGISTRY_HOST the credentials are refused, and nothing is sent.
    let out = run_bounded(&repo, &["images"], &CREDS, limit);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("XTASK_REGISTRY_HOST is not") && err.contains("no other host"), "{err}");
    assert!(hostile.authorized().is_empty(), "credentials were sent: {:?}", hostile.authorized());

    // Bound to another host: this registry gets none.
    let mut env = CREDS.to_vec();
    env.push(("XTASK_REGISTRY_HOST", "registry.example.com"));
    let out = run_bounded(&repo, &["images"], &env, limit);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("wants credentials"), "{}", stderr(&out));
    assert!(hostile.authorized().is_empty(), "credentials were sent: {:?}", hostile.authorized());

    // Bound to this one: it gets them.
    env.pop();
    env.push(("XTASK_REGISTRY_HOST", &hostile.host));
    let out = run_bounded(&repo, &["images"], &env, limit);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(hostile.authorized().iter().all(|h| h.contains("Basic Y2k6czNjcmV0LXB3")));
    assert!(!hostile.authorized().is_empty());
}

#[test]
fn a_token_realm_on_another_host_gets_no_password_and_plain_http_elsewhere_is_refused() {
    let registry = registry_with_base();
    // 127.0.0.2 is another host to xtask (another origin) yet reachable here.
    let (realm, asked) = token_service("127.0.0.2");
    let hostile = Hostile::start("127.0.0.1", &registry.host, Mode::BearerAt(realm));
    let repo = Repo::with_base(&format!("docker://{}/bases/busybox:1", hostile.host));
    let mut env = CREDS.to_vec();
    env.push(("XTASK_REGISTRY_HOST", &hostile.host));
    let out = run_bounded(&repo, &["images"], &env, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    let asked = asked.lock().unwrap().clone();
    assert!(!asked.is_empty(), "the token service was never asked");
    for head in &asked {
        assert!(!head.to_ascii_lowercase().contains("authorization"), "the realm got credentials:\n{head}");
    }
    // The token goes back to the registry only.
    assert!(hostile.authorized().iter().all(|h| h.contains("Bearer t0ken")));

    // A realm over plain HTTP on a host that is not loopback is not even asked.
    let hostile = Hostile::start("127.0.0.1", &registry.host, Mode::BearerAt("http://auth.example.com/token".into()));
    repo.set_base(&format!("docker://{}/bases/busybox:1", hostile.host));
    let mut env = CREDS.to_vec();
    env.push(("XTASK_REGISTRY_HOST", &hostile.host));
    let out = run_bounded(&repo, &["images"], &env, Duration::from_secs(120));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("http://auth.example.com/token") && err.contains("not HTTPS"), "{err}");
}

#[test]
fn an_upload_location_on_another_host_gets_no_credentials() {
    let registry = Registry::start(None);
    // Uploads are sent on to 127.0.0.2, which passes them to the same registry.
    let elsewhere = Hostile::start("127.0.0.2", &registry.host, Mode::Forward);
    let hostile = Hostile::start("127.0.0.1", &registry.host, Mode::LocationTo(format!("http://{}", elsewhere.host)));
    let repo = Repo::new();
    let mut env = CREDS.to_vec();
    env.push(("XTASK_REGISTRY_HOST", &hostile.host));
    let out = run_bounded(&repo, &["images", "--push", &hostile.host], &env, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(elsewhere.requests() > 0, "no upload went to the other host");
    assert!(elsewhere.authorized().is_empty(), "the other host got credentials: {:?}", elsewhere.authorized());
    assert!(!hostile.authorized().is_empty());

    // A Location over plain HTTP to a host that is not loopback is refused.
    let hostile = Hostile::start("127.0.0.1", &registry.host, Mode::LocationTo("http://uploads.example.com".into()));
    repo.write("files/dags/another.py", "print('another')\n");
    let mut env = CREDS.to_vec();
    env.push(("XTASK_REGISTRY_HOST", &hostile.host));
    let out = run_bounded(&repo, &["images", "--push", &hostile.host], &env, Duration::from_secs(120));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("http://uploads.example.com") && err.contains("not HTTPS"), "{err}");
}

#[test]
fn a_blob_that_never_ends_stops_at_its_declared_size() {
    let registry = registry_with_base();
    let hostile = Hostile::start("127.0.0.1", &registry.host, Mode::EndlessBlob);
    let repo = Repo::with_base(&format!("docker://{}/bases/busybox:1", hostile.host));
    let out = run_bounded(&repo, &["images"], &[], Duration::from_secs(120));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("longer than") && err.contains("declared"), "{err}");
    assert_eq!(std::fs::read_dir(repo.store().join("tmp")).unwrap().count(), 0, "a partial blob was left");
}

#[test]
fn a_registry_that_stalls_is_given_up_on_with_its_name_and_the_time_it_had() {
    let registry = registry_with_base();
    let hostile = Hostile::start("127.0.0.1", &registry.host, Mode::Stall);
    let repo = Repo::with_base(&format!("docker://{}/bases/busybox:1", hostile.host));
    let started = Instant::now();
    let out = run_bounded(&repo, &["images"], &[("XTASK_REGISTRY_TIMEOUT", "2")], Duration::from_secs(60));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&hostile.host) && err.contains("stalled") && err.contains("2s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}
