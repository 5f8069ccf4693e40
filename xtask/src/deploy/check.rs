//! `manifests check`'s rules on the typed documents of k8s/: references that must resolve
//! (ConfigMaps, Secrets, Services, service accounts, claims), images that are placeholders
//! or pinned, resources on long-running containers, the pod template's `base` container,
//! and RBAC no broader than the pod launcher needs. Each finding names file, line and field.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::api::rbac::v1::PolicyRule;

use super::secrets::GENERATED;

use super::manifests::{Doc, POD_TEMPLATE_KEY, Problem, TYPED_KINDS, Typed, parse, problem};
/// The verbs the pod launcher may have on each resource (core API group), and nothing else.
pub const ALLOWED_RULES: &[(&str, &[&str])] = &[
    ("pods", &["create", "get", "list", "watch", "patch", "delete"]),
    ("pods/log", &["get"]),
    ("pods/exec", &["create", "get"]),
    ("events", &["list"]),
];

/// What the scheduler's service account must be allowed for the KubernetesExecutor to
/// launch, follow and clean up worker pods and read their logs: what `doctor` checks.
pub const SCHEDULER_NEEDS: &[(&str, &[&str])] =
    &[("pods", &["create", "get", "list", "watch", "patch", "delete"]), ("pods/log", &["get"])];

/// What the check needs to know besides the documents.
pub struct CheckContext<'a> {
    /// Image names that are replaced at apply time (docker/images.toml's images).
    pub placeholders: &'a BTreeSet<String>,
}

/// Pod specs inside an object, with the JSON path that leads to each.
fn pod_specs(t: &Typed) -> Vec<(&PodSpec, &'static str)> {
    match t {
        Typed::Pod(p) => p.spec.iter().map(|s| (s, "spec")).collect(),
        Typed::Deployment(d) => {
            d.spec.iter().filter_map(|s| s.template.spec.as_ref()).map(|s| (s, "spec.template.spec")).collect()
        }
        Typed::StatefulSet(d) => {
            d.spec.iter().filter_map(|s| s.template.spec.as_ref()).map(|s| (s, "spec.template.spec")).collect()
        }
        Typed::DaemonSet(d) => {
            d.spec.iter().filter_map(|s| s.template.spec.as_ref()).map(|s| (s, "spec.template.spec")).collect()
        }
        Typed::Job(j) => {
            j.spec.iter().filter_map(|s| s.template.spec.as_ref()).map(|s| (s, "spec.template.spec")).collect()
        }
        Typed::CronJob(c) => c
            .spec
            .iter()
            .filter_map(|s| s.job_template.spec.as_ref())
            .filter_map(|s| s.template.spec.as_ref())
            .map(|s| (s, "spec.jobTemplate.spec.template.spec"))
            .collect(),
        _ => vec![],
    }
}

fn is_long_running(t: &Typed) -> bool {
    matches!(t, Typed::Deployment(_) | Typed::StatefulSet(_) | Typed::DaemonSet(_))
}

/// The documents of kinds `check` has no type for, one line each: they are applied as
/// written (through the cluster's discovery) but not type-checked here.
pub fn unchecked(docs: &[Doc]) -> Vec<String> {
    docs.iter()
        .filter(|d| !d.kind().is_empty() && !TYPED_KINDS.contains(&(d.api_version(), d.kind())))
        .map(|d| {
            format!(
                "{}:{}: {} {} ({}): not type-checked; applied as written through the cluster's discovery",
                d.file,
                d.line,
                d.kind(),
                d.name(),
                d.api_version()
            )
        })
        .collect()
}

/// Checks the documents; returns every problem found (empty means all good).
pub fn check(docs: &[Doc], ctx: &CheckContext<'_>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let typed: Vec<(usize, Typed)> =
        docs.iter().enumerate().filter_map(|(i, d)| parse(d, &mut problems).map(|t| (i, t))).collect();

    // What the documents (and xtask) define, by kind and name.
    let mut config_maps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut secrets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut service_accounts = BTreeSet::new();
    let mut services = BTreeSet::new();
    let mut pvcs = BTreeSet::new();
    let mut roles = BTreeSet::new();
    for g in GENERATED {
        secrets.insert(g.name.to_string(), g.keys.iter().map(|k| k.to_string()).collect());
    }
    for (i, t) in &typed {
        let name = docs[*i].name().to_string();
        match t {
            Typed::ConfigMap(c) => {
                let keys = c
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, _)| k.clone())
                    .chain(c.binary_data.iter().flatten().map(|(k, _)| k.clone()));
                config_maps.insert(name, keys.collect());
            }
            Typed::Pod(_) => {
                config_maps.insert(name, BTreeSet::from([POD_TEMPLATE_KEY.to_string()]));
            }
            Typed::Secret(s) => {
                let keys = s
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, _)| k.clone())
                    .chain(s.string_data.iter().flatten().map(|(k, _)| k.clone()));
                secrets.insert(name, keys.collect());
            }
            Typed::ServiceAccount(_) => {
                service_accounts.insert(name);
            }
            Typed::Service(_) => {
                services.insert(name);
            }
            Typed::Pvc(_) => {
                pvcs.insert(name);
            }
            Typed::Role(_) => {
                roles.insert(name);
            }
            _ => {}
        }
    }

    for (i, t) in &typed {
        let doc = &docs[*i];
        // Volume claim templates define claims for the StatefulSet's own pods.
        let mut own_claims = BTreeSet::new();
        if let Typed::StatefulSet(s) = t {
            for c in s.spec.iter().flat_map(|s| s.volume_claim_templates.iter().flatten()) {
                own_claims.extend(c.metadata.name.clone());
            }
            if let Some(svc) = s.spec.as_ref().map(|s| &s.service_name).and_then(|s| s.as_ref())
                && !services.contains(svc)
            {
                problems.push(problem(
                    doc,
                    "spec.serviceName",
                    format!("Service `{svc}` is not defined in k8s/; add it"),
                ));
            }
        }
        for (spec, base) in pod_specs(t) {
            check_pod_spec(
                doc,
                t,
                spec,
                base,
                ctx,
                &own_claims,
                &Defined {
                    services: &services,
                    config_maps: &config_maps,
                    secrets: &secrets,
                    service_accounts: &service_accounts,
                    pvcs: &pvcs,
                },
                &mut problems,
            );
        }
        if let Typed::Pod(p) = t {
            let has_base = p.spec.iter().flat_map(|s| s.containers.iter()).any(|c| c.name == "base");
            if !has_base {
                problems.push(problem(
                    doc,
                    "spec.containers",
                    "a pod template needs a container named `base`: the KubernetesExecutor runs the task in it".into(),
                ));
            }
        }
        match t {
            Typed::Role(r) => check_rules(doc, r.rules.as_deref().unwrap_or(&[]), &mut problems),
            Typed::ClusterRole(_) | Typed::ClusterRoleBinding(_) => problems.push(problem(
                doc,
                "kind",
                "cluster-wide RBAC is broader than Airflow needs; the scheduler's pod launcher is a namespaced Role"
                    .into(),
            )),
            Typed::RoleBinding(b) => {
                if b.role_ref.kind == "Role" && !roles.contains(&b.role_ref.name) {
                    problems.push(problem(
                        doc,
                        "roleRef.name",
                        format!("Role `{}` is not defined in k8s/; add it", b.role_ref.name),
                    ));
                }
                if b.role_ref.kind == "ClusterRole" {
                    problems.push(problem(
                        doc,
                        "roleRef.kind",
                        "binds a ClusterRole; bind the namespaced Role instead".into(),
                    ));
                }
                for (j, s) in b.subjects.iter().flatten().enumerate() {
                    if s.kind == "ServiceAccount" && !service_accounts.contains(&s.name) {
                        problems.push(problem(
                            doc,
                            &format!("subjects[{j}].name"),
                            format!("ServiceAccount `{}` is not defined in k8s/; add it", s.name),
                        ));
                    }
                }
            }
            Typed::ConfigMap(c) => {
                for (k, v) in c.data.iter().flatten() {
                    for host in service_hosts(v) {
                        if !services.contains(&host) {
                            problems.push(problem(
                                doc,
                                &format!("data.{k}"),
                                format!("refers to Service `{host}`, which is not defined in k8s/; add it or fix the host name"),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

struct Defined<'a> {
    services: &'a BTreeSet<String>,
    config_maps: &'a BTreeMap<String, BTreeSet<String>>,
    secrets: &'a BTreeMap<String, BTreeSet<String>>,
    service_accounts: &'a BTreeSet<String>,
    pvcs: &'a BTreeSet<String>,
}

#[allow(clippy::too_many_arguments)]
fn check_pod_spec(
    doc: &Doc,
    t: &Typed,
    spec: &PodSpec,
    base: &str,
    ctx: &CheckContext<'_>,
    own_claims: &BTreeSet<String>,
    defined: &Defined<'_>,
    problems: &mut Vec<Problem>,
) {
    let missing = |what: &str, name: &str| {
        format!(
            "{what} `{name}` is not defined in k8s/ (nor generated by xtask); add it, or mark the reference `optional: true`"
        )
    };
    if let Some(sa) = &spec.service_account_name
        && !defined.service_accounts.contains(sa)
    {
        problems.push(problem(doc, &format!("{base}.serviceAccountName"), missing("ServiceAccount", sa)));
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let at = format!("{base}.volumes[{i}]");
        if let Some(cm) = &v.config_map
            && !cm.optional.unwrap_or(false)
            && !defined.config_maps.contains_key(&cm.name)
        {
            problems.push(problem(doc, &format!("{at}.configMap.name"), missing("ConfigMap", &cm.name)));
        }
        if let Some(s) = &v.secret
            && !s.optional.unwrap_or(false)
            && let Some(name) = &s.secret_name
            && !defined.secrets.contains_key(name)
        {
            problems.push(problem(doc, &format!("{at}.secret.secretName"), missing("Secret", name)));
        }
        if let Some(pvc) = &v.persistent_volume_claim
            && !defined.pvcs.contains(&pvc.claim_name)
            && !own_claims.contains(&pvc.claim_name)
        {
            problems.push(problem(
                doc,
                &format!("{at}.persistentVolumeClaim.claimName"),
                missing("PersistentVolumeClaim", &pvc.claim_name),
            ));
        }
    }
    let containers: Vec<(&str, usize, &Container)> = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| ("containers", i, c))
        .chain(spec.init_containers.iter().flatten().enumerate().map(|(i, c)| ("initContainers", i, c)))
        .collect();
    for (list, i, c) in containers {
        let at = format!("{base}.{list}[{i}]");
        match c.image.as_deref() {
            None => problems.push(problem(doc, &format!("{at}.image"), "missing; name the image (a placeholder or name@sha256:...)".into())),
            Some(image) if ctx.placeholders.contains(image) => {}
            Some(image) if is_pinned(image) => {}
            Some(image) => problems.push(problem(
                doc,
                &format!("{at}.image"),
                format!(
                    "`{image}` is neither a placeholder ({}) nor pinned by digest (NAME@sha256:...); pin it so a pod never runs an image other than the one checked",
                    ctx.placeholders.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
        }
        for (j, e) in c.env.iter().flatten().enumerate() {
            let Some(from) = &e.value_from else {
                continue;
            };
            if let Some(r) = &from.config_map_key_ref
                && !r.optional.unwrap_or(false)
            {
                match defined.config_maps.get(&r.name) {
                    None => problems.push(problem(
                        doc,
                        &format!("{at}.env[{j}].valueFrom.configMapKeyRef.name"),
                        missing("ConfigMap", &r.name),
                    )),
                    Some(keys) if !keys.contains(&r.key) => problems.push(problem(
                        doc,
                        &format!("{at}.env[{j}].valueFrom.configMapKeyRef.key"),
                        format!("ConfigMap `{}` has no key `{}`", r.name, r.key),
                    )),
                    _ => {}
                }
            }
            if let Some(r) = &from.secret_key_ref
                && !r.optional.unwrap_or(false)
            {
                match defined.secrets.get(&r.name) {
                    None => problems.push(problem(
                        doc,
                        &format!("{at}.env[{j}].valueFrom.secretKeyRef.name"),
                        missing("Secret", &r.name),
                    )),
                    Some(keys) if !keys.contains(&r.key) => problems.push(problem(
                        doc,
                        &format!("{at}.env[{j}].valueFrom.secretKeyRef.key"),
                        format!("Secret `{}` has no key `{}`", r.name, r.key),
                    )),
                    _ => {}
                }
            }
        }
        for (j, e) in c.env.iter().flatten().enumerate() {
            for host in e.value.iter().flat_map(|v| service_hosts(v)) {
                if !defined.services.contains(&host) {
                    problems.push(problem(
                        doc,
                        &format!("{at}.env[{j}].value"),
                        format!(
                            "refers to Service `{host}`, which is not defined in k8s/; add it or fix the host name"
                        ),
                    ));
                }
            }
        }
        for (j, f) in c.env_from.iter().flatten().enumerate() {
            if let Some(r) = &f.config_map_ref
                && !r.optional.unwrap_or(false)
                && !defined.config_maps.contains_key(&r.name)
            {
                problems.push(problem(
                    doc,
                    &format!("{at}.envFrom[{j}].configMapRef.name"),
                    missing("ConfigMap", &r.name),
                ));
            }
            if let Some(r) = &f.secret_ref
                && !r.optional.unwrap_or(false)
                && !defined.secrets.contains_key(&r.name)
            {
                problems.push(problem(doc, &format!("{at}.envFrom[{j}].secretRef.name"), missing("Secret", &r.name)));
            }
        }
        if list == "containers" {
            check_secret_keys(doc, &at, c, spec, defined, problems);
        }
        if is_long_running(t) && list == "containers" {
            let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            let lim = c.resources.as_ref().and_then(|r| r.limits.as_ref());
            let mut absent = Vec::new();
            for (what, map) in [("requests", req), ("limits", lim)] {
                for res in ["cpu", "memory"] {
                    if !map.is_some_and(|m| m.contains_key(res)) {
                        absent.push(format!("{what}.{res}"));
                    }
                }
            }
            if !absent.is_empty() {
                problems.push(problem(
                    doc,
                    &format!("{at}.resources"),
                    format!("missing {}; a long-running component needs requests and limits so it fits the node next to the worker pods", absent.join(", ")),
                ));
            }
        }
    }
}

/// `name@sha256:<64 hex>`.
pub fn is_pinned(image: &str) -> bool {
    image.split_once('@').is_some_and(|(name, digest)| !name.is_empty() && crate::oci::Digest::parse(digest).is_ok())
}

fn check_rules(doc: &Doc, rules: &[PolicyRule], problems: &mut Vec<Problem>) {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED_RULES.iter().copied().collect();
    let allowed_text =
        ALLOWED_RULES.iter().map(|(r, v)| format!("{r}: {}", v.join(","))).collect::<Vec<_>>().join("; ");
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("rules[{i}]");
        let groups = rule.api_groups.as_deref().unwrap_or(&[]);
        if groups.iter().any(|g| !g.is_empty()) {
            problems.push(problem(
                doc,
                &format!("{at}.apiGroups"),
                format!(
                    "grants API groups {groups:?}; the pod launcher needs only the core group \"\" ({allowed_text})"
                ),
            ));
        }
        if rule.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()) {
            problems.push(problem(
                doc,
                &format!("{at}.nonResourceURLs"),
                format!("grants non-resource URLs; the pod launcher needs only: {allowed_text}"),
            ));
        }
        for res in rule.resources.iter().flatten() {
            match allowed.get(res.as_str()) {
                None => problems.push(problem(
                    doc,
                    &format!("{at}.resources"),
                    format!("grants `{res}`, broader than the pod launcher needs ({allowed_text})"),
                )),
                Some(ok) => {
                    for verb in &rule.verbs {
                        if !ok.contains(&verb.as_str()) {
                            problems.push(problem(
                                doc,
                                &format!("{at}.verbs"),
                                format!(
                                    "grants `{verb}` on `{res}`, broader than the pod launcher needs ({allowed_text})"
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// Cluster-internal host names in URLs (`scheme://NAME[.NS[.svc[.cluster.local]]]:PORT`),
/// which must be Services of k8s/. Hosts with other dots, IPs and localhost are external.
pub fn service_hosts(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        rest = &rest[i + 3..];
        let authority = rest.split(['/', ' ', '\n', '"', '\'']).next().unwrap_or("");
        let hostport = authority.rsplit('@').next().unwrap_or("");
        let Some((host, port)) = hostport.rsplit_once(':') else { continue };
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let parts: Vec<&str> = host.split('.').collect();
        let internal = matches!(parts.as_slice(), [_] | [_, _, "svc"] | [_, _, "svc", "cluster", "local"]);
        let name = parts[0];
        if internal && name != "localhost" && !name.is_empty() && !name.bytes().all(|b| b.is_ascii_digit()) {
            out.push(name.to_string());
        }
    }
    out
}

/// The generated keys an Airflow command reads, and why.
const SQL_CONN: &str = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN";
const JWT_SECRET: &str = "AIRFLOW__API_AUTH__JWT_SECRET";
const API_SECRET_KEY: &str = "AIRFLOW__API__SECRET_KEY";

/// What an Airflow container needs from the generated secrets, and what it must not get:
/// the dag-processor, the triggerer and the workers run DAG authors' code, so they get no
/// key that signs tokens or sessions. The scheduler also needs its service account token
/// (it starts worker pods through the API).
fn check_secret_keys(
    doc: &Doc,
    at: &str,
    c: &Container,
    spec: &PodSpec,
    defined: &Defined<'_>,
    problems: &mut Vec<Problem>,
) {
    let args = c.args.as_deref().unwrap_or_default();
    let command = if c.name == "base" { "worker" } else { args.first().map(String::as_str).unwrap_or("") };
    let (needs, never): (&[(&str, &str)], &[&str]) = match command {
        "scheduler" => {
            (&[(SQL_CONN, "it reads the metadata database"), (JWT_SECRET, "it signs the tokens worker pods use")], &[])
        }
        "api-server" => (
            &[
                (SQL_CONN, "it reads the metadata database"),
                (JWT_SECRET, "it checks the tokens worker pods send"),
                (API_SECRET_KEY, "it signs sessions and log requests"),
            ],
            &[],
        ),
        "dag-processor" | "triggerer" => {
            (&[(SQL_CONN, "it reads the metadata database")], &[JWT_SECRET, API_SECRET_KEY])
        }
        "worker" => (&[], &[JWT_SECRET, API_SECRET_KEY, SQL_CONN]),
        _ => return,
    };
    // Keys the container gets: by name, or every key of a Secret it takes whole.
    let mut has: BTreeSet<String> = c.env.iter().flatten().map(|e| e.name.clone()).collect();
    for f in c.env_from.iter().flatten() {
        if let Some(r) = &f.secret_ref
            && let Some(keys) = defined.secrets.get(&r.name)
        {
            has.extend(keys.iter().cloned());
        }
    }
    for (key, why) in needs {
        if !has.contains(*key) {
            problems.push(problem(
                doc,
                &format!("{at}.env"),
                format!(
                    "`{command}` needs {key} ({why}); add `- name: {key}` with `valueFrom: {{secretKeyRef: {{name: airflow-secrets, key: {key}}}}}` to its env"
                ),
            ));
        }
    }
    for key in never {
        if has.contains(*key) {
            problems.push(problem(
                doc,
                &format!("{at}.env"),
                format!(
                    "`{command}` runs DAG authors' code and must not get {key}; give it only the keys it reads (secretKeyRef per key, not envFrom of airflow-secrets)"
                ),
            ));
        }
    }
    if command == "scheduler" && spec.automount_service_account_token == Some(false) {
        problems.push(problem(
            doc,
            "spec.template.spec.automountServiceAccountToken",
            "the scheduler starts worker pods through the Kubernetes API and needs its service account token; remove `automountServiceAccountToken: false`".into(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_hosts_finds_cluster_names_only() {
        assert_eq!(
            service_hosts("execution_api_server_url = http://airflow-api-server:8080/execution/"),
            ["airflow-api-server"]
        );
        assert_eq!(service_hosts("postgresql://u:p@db.airflow.svc.cluster.local:5432/x"), ["db"]);
        assert!(service_hosts("http://localhost:8080 https://example.com:443 http://10.0.0.1:80").is_empty());
    }

    #[test]
    fn pinned_images_need_a_real_digest() {
        assert!(is_pinned(&format!("docker.io/library/postgres:16@sha256:{}", "a".repeat(64))));
        assert!(!is_pinned("postgres:16"));
        assert!(!is_pinned("postgres@sha256:abc"));
    }
}
