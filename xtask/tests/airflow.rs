//! Real Airflow in the image: the base built from docker/base/airflow.toml, `dags check`
//! and `smoke --local` asserting on what Airflow itself reports; the base recipe's errors.

mod common;

use std::fs;
use std::process::Command;

use common::*;

fn results_by_file(report: &serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
    report["files"].as_array().unwrap().iter().map(|f| (f["file"].as_str().unwrap().to_string(), f.clone())).collect()
}

#[test]
fn dags_check_passes_the_real_dags_and_names_each_broken_one_by_file_and_line() {
    let repo = airflow_repo();
    repo.write("files/dags/bad_syntax.py", "from airflow.sdk import dag\ndef broken(:\n    pass\n");
    repo.write("files/dags/bad_import.py", "from airflow.sdk import dag\nimport no_such_module\n");
    repo.write("files/dags/slow_dag.py", "import time\nfrom airflow.sdk import dag\ntime.sleep(120)\n");
    repo.write(
        "files/dags/reads_at_parse.py",
        "import os\nfrom datetime import datetime\nfrom airflow.sdk import DAG, Variable\nteam = Variable.get(\"team\")\nwarehouse = os.getenv(\"WAREHOUSE_URL\")\nwith DAG(dag_id=\"reads_at_parse\", schedule=None, start_date=datetime(2024, 1, 1)):\n    pass\n",
    );
    // Library code (here the standard library's tempfile) reads the real environment: the
    // stand-ins are for the DAGs' own code only.
    repo.write(
        "files/dags/library_env.py",
        "import tempfile\nfrom datetime import datetime\nfrom airflow.sdk import DAG\nassert not any(d.startswith('stand-in') for d in tempfile._candidate_tempdir_list()), tempfile._candidate_tempdir_list()\nwith DAG(dag_id=\"library_env\", schedule=None, start_date=datetime(2024, 1, 1)):\n    pass\n",
    );
    repo.write("files/dags/legacy_dag.py", "from airflow.sdk import dag\nimport only_in_production\n");
    repo.write("files/dags_check_exceptions.txt", "# parsed only in production\nlegacy_dag.py\n");

    let out = repo.xtask().args(["dags", "check", "--json", "--timeout", "5"]).output().unwrap();
    assert!(!out.status.success(), "dags check passed with broken DAGs");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&out), stderr(&out)));
    let files = results_by_file(&report);
    for (file, dag) in [
        ("example_bash.py", "example_bash"),
        ("example_include.py", "example_include"),
        ("example_taskflow.py", "example_taskflow"),
        ("smoke_environment.py", "smoke_environment"),
        ("smoke_xcom.py", "smoke_xcom"),
        ("reads_at_parse.py", "reads_at_parse"),
        ("library_env.py", "library_env"),
    ] {
        assert_eq!(files[file]["status"], "ok", "{file}: {}", files[file]);
        assert_eq!(files[file]["dags"][0], dag);
    }
    let err = |f: &str| files[f]["error"].as_str().unwrap_or("").to_string();
    assert_eq!(
        (files["bad_syntax.py"]["status"].as_str(), files["bad_syntax.py"]["line"].as_u64()),
        (Some("error"), Some(2))
    );
    assert!(err("bad_syntax.py").contains("SyntaxError"));
    assert_eq!(
        (files["bad_import.py"]["status"].as_str(), files["bad_import.py"]["line"].as_u64()),
        (Some("error"), Some(2))
    );
    assert!(err("bad_import.py").contains("No module named 'no_such_module'"));
    assert_eq!(
        (files["slow_dag.py"]["status"].as_str(), files["slow_dag.py"]["line"].as_u64()),
        (Some("error"), Some(3))
    );
    assert!(err("slow_dag.py").contains("timeout"), "{}", err("slow_dag.py"));
    assert!(files["slow_dag.py"]["seconds"].as_f64().unwrap() < 20.0);
    assert_eq!(files["legacy_dag.py"]["status"], "skipped");
    assert_eq!(report["errors"], 3);

    // The human report names the file and line too.
    let out = repo.xtask().args(["dags", "check", "--timeout", "5"]).output().unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("ERROR  bad_syntax.py:2")
            && text.contains("ERROR  bad_import.py:2")
            && text.contains("ERROR  slow_dag.py:3"),
        "{text}"
    );
    assert!(text.contains("SKIP   legacy_dag.py"), "{text}");
}

fn task_states(report: &serde_json::Value, dag: &str) -> std::collections::BTreeMap<String, String> {
    let d = report["dags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dag"] == dag)
        .unwrap_or_else(|| panic!("no {dag} in {report}"));
    d["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["task_id"].as_str().unwrap().to_string(), t["state"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn smoke_local_runs_the_smoke_dags_in_the_image_and_reports_airflows_task_states() {
    let repo = airflow_repo();
    let out = repo.xtask().args(["smoke", "--local", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let env = task_states(&report, "smoke_environment");
    assert_eq!(env.get("include_is_importable").map(String::as_str), Some("success"), "{env:?}");
    assert_eq!(env.get("pod_template_env_is_set").map(String::as_str), Some("success"), "{env:?}");
    let xcom = task_states(&report, "smoke_xcom");
    assert_eq!(xcom.values().filter(|s| *s == "success").count(), 2, "{xcom:?}");
    let consumed =
        &report["dags"].as_array().unwrap().iter().find(|d| d["dag"] == "smoke_xcom").unwrap()["xcoms"]["consume"];
    assert!(consumed["producer_hostname"].is_string(), "the XCom did not reach the consumer: {report}");
    let junit = fs::read_to_string(repo.path("target/xtask/smoke/local-junit.xml")).unwrap();
    assert!(junit.contains("<testsuites tests=\"4\" failures=\"0\">"), "{junit}");

    // A task that fails is reported as failed by Airflow, and the run fails.
    repo.write(
        "files/dags/smoke_broken.py",
        "from datetime import datetime\nfrom airflow.sdk import dag, task\n\n@dag(schedule=None, start_date=datetime(2024, 1, 1), catchup=False)\ndef smoke_broken():\n    @task\n    def explode():\n        raise ValueError('boom from smoke_broken')\n    explode()\n\nsmoke_broken()\n",
    );
    let out = repo.xtask().args(["smoke", "--local", "--json", "--dag", "smoke_broken"]).output().unwrap();
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task_states(&report, "smoke_broken")["explode"], "failed", "{report}");
    assert!(report["dags"][0]["log_tail"].as_str().unwrap_or("").contains("boom from smoke_broken"), "{report}");
    let junit = fs::read_to_string(repo.path("target/xtask/smoke/local-junit.xml")).unwrap();
    assert!(junit.contains("failures=\"1\""), "{junit}");

    // A DAG that does not even import never runs: it is reported as not run, with the
    // import error, and nothing else goes wrong reading what Airflow recorded.
    repo.write("files/dags/smoke_unimportable.py", "import no_such_module_anywhere\n");
    let out = repo.xtask().args(["smoke", "--local", "--json", "--dag", "smoke_unimportable"]).output().unwrap();
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dag = &report["dags"][0];
    assert_eq!(dag["state"], "not run", "{report}");
    assert!(dag["xcoms"].get("_error").is_none(), "reading the states failed: {report}");
}

#[test]
fn dags_check_and_smoke_run_in_a_local_virtualenv() {
    let repo = airflow_repo();
    // A virtualenv kept in this workspace, so it is made once per machine.
    let venv = workspace().join("target/xtask/test-venv");
    let out = repo.xtask().args(["dags", "check", "--json", "--local", "--venv"]).arg(&venv).output().unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["errors"], 0);
    assert_eq!(results_by_file(&report)["example_include.py"]["status"], "ok");
    let out =
        repo.xtask().args(["smoke", "--local", "--json", "--dag", "smoke_xcom", "--venv"]).arg(&venv).output().unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task_states(&report, "smoke_xcom").values().filter(|s| *s == "success").count(), 2);
}

/// A repository whose airflow recipe is the real one with `from` replaced by `to`.
fn repo_with_recipe(from: &str, to: &str) -> Repo {
    let repo = airflow_repo();
    let recipe = repo.path("docker/base/airflow.toml");
    let text = fs::read_to_string(&recipe).unwrap();
    assert!(text.contains(from));
    fs::write(&recipe, text.replacen(from, to, 1)).unwrap();
    repo
}

fn assert_nothing_half_written(repo: &Repo) {
    let index = fs::read_to_string(repo.store().join("index.json")).unwrap_or_default();
    assert!(!index.contains("xtask-base/"), "a base was recorded: {index}");
    let tmp = fs::read_dir(repo.store().join("tmp")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(tmp, 0, "temporary blobs left");
    assert!(!repo.path("target/xtask/base-build/airflow/rootfs").exists(), "the half-made root filesystem is left");
}

#[test]
fn a_missing_or_failing_debootstrap_and_an_unknown_airflow_version_fail_clearly() {
    // debootstrap missing (it lives in /usr/sbin).
    let repo = airflow_repo();
    let out = repo.xtask().args(["base"]).env("PATH", "/usr/bin:/bin").output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("`debootstrap` is not installed") && err.contains("apt-get install debootstrap"), "{err}");
    assert_nothing_half_written(&repo);

    // debootstrap failing: a mirror that does not answer.
    let repo = repo_with_recipe("http://deb.debian.org/debian", "http://127.0.0.1:9/debian");
    let err = repo.fails(&["base"]);
    assert!(err.contains("debootstrap failed") && err.contains("build.log"), "{err}");
    assert_nothing_half_written(&repo);

    // An Airflow version that does not exist: pip's own error, shortened.
    let repo = repo_with_recipe("apache-airflow[postgres]==3.3.2", "apache-airflow[postgres]==9.9.9");
    let recipe = repo.path("docker/base/airflow.toml");
    let text = fs::read_to_string(&recipe).unwrap().replace("constraints = \"airflow.lock\"\n", "");
    fs::write(&recipe, text).unwrap();
    let err = repo.fails(&["base"]);
    assert!(err.contains("pip install failed") && err.contains("ERROR:") && err.contains("apache-airflow"), "{err}");
    assert!(err.lines().count() < 15, "the pip error was not shortened:\n{err}");
    assert_nothing_half_written(&repo);
}

#[test]
fn a_second_base_build_with_an_unchanged_recipe_does_nothing() {
    airflow_base();
    let out = sh(Command::new(XTASK).arg("--root").arg(workspace()).args(["base", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["built"], false);
}

/// What Airflow's own DagBag says of every file of the DAGs folder, loaded the way the DAG
/// processor's DagBag loads a folder, in the worker image, with `dags check`'s stand-ins
/// for variables, connections and the environment (the one intended difference) in place.
const DAGBAG_VERDICTS: &str = r#"
import json, os, sys
sys.path.insert(0, "/xtask")
import dag_check  # the environment and os.getenv stand-in of dags check
DagBag = dag_check._dagbag_class()  # Airflow's DagBag, with the Variable/Connection stand-ins
kw = {"include_examples": False} if "include_examples" in DagBag.__init__.__code__.co_varnames else {}
bag = DagBag(dag_folder=dag_check.DAGS, **kw)
real = lambda p: os.path.realpath(os.path.join(dag_check.DAGS, p))
errors = {real(f) for f in bag.import_errors}
out = {}
for d, _, files in os.walk(dag_check.DAGS):
    for f in files:
        if not f.endswith(".py"):
            continue
        path = real(os.path.join(d, f))
        if path in errors:
            out[os.path.relpath(path, dag_check.DAGS)] = {"status": "error", "dags": []}
        else:
            dags = sorted(x.dag_id for x in bag.dags.values() if real(x.fileloc) == path)
            out[os.path.relpath(path, dag_check.DAGS)] = {"status": "ok", "dags": dags}
print("@@verdicts " + json.dumps(out))
"#;

#[test]
fn dags_check_reports_what_airflows_dagbag_reports_for_the_same_folder() {
    require_docker();
    let repo = airflow_repo();
    let out =
        repo.xtask().args(["images", "--load", "docker", "--image", "airflow-worker", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let worker = image(&report)["reference"].as_str().unwrap().to_string();

    // The DAGs folder: the example DAGs that ship inside the apache-airflow wheel...
    let dags = repo.path("files/dags");
    fs::remove_dir_all(&dags).unwrap();
    fs::create_dir_all(&dags).unwrap();
    let _ = fs::remove_file(repo.path("files/dags_check_exceptions.txt"));
    let examples = sh(Command::new("docker").args([
        "run",
        "--rm",
        &worker,
        "sh",
        "-c",
        r#"cd "$(python -c 'import airflow.example_dags as e, os; print(os.path.dirname(e.__file__))')" && tar cf - --exclude=__pycache__ ."#,
    ]));
    tar::Archive::new(&examples.stdout[..]).unpack(&dags).unwrap();
    let shipped = fs::read_dir(&dags).unwrap().count();
    assert!(shipped > 10, "the wheel's example DAGs were not found ({shipped} entries)");
    // ...and broken files of our own: a syntax error, a missing module, a cycle, a DAG id
    // defined twice, a file Airflow's safe mode passes over.
    let dag = |id: &str, body: &str| {
        format!(
            "from datetime import datetime\nfrom airflow.sdk import DAG\nfrom airflow.providers.standard.operators.empty import EmptyOperator\nwith DAG(dag_id={id:?}, schedule=None, start_date=datetime(2024, 1, 1)):\n{body}"
        )
    };
    repo.write("files/dags/zz_bad_syntax.py", "from airflow.sdk import dag\ndef broken(:\n    pass\n");
    repo.write("files/dags/zz_bad_import.py", "from airflow.sdk import dag\nimport no_such_module\n");
    repo.write(
        "files/dags/zz_cycle.py",
        &dag("zz_cycle", "    a = EmptyOperator(task_id='a')\n    b = EmptyOperator(task_id='b')\n    a >> b >> a\n"),
    );
    repo.write("files/dags/zz_twice_a.py", &dag("zz_twice", "    EmptyOperator(task_id='a')\n"));
    repo.write("files/dags/zz_twice_b.py", &dag("zz_twice", "    EmptyOperator(task_id='b')\n"));
    repo.write("files/dags/zz_helper.py", "VALUE = 1\n");

    let out = repo.xtask().args(["dags", "check", "--json"]).output().unwrap();
    let ours: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&out), stderr(&out)));
    let ours = results_by_file(&ours);

    let script = workspace().join("xtask/src/airflow/dag_check.py");
    let out = sh(Command::new("docker")
        .args(["run", "--rm", "-v"])
        .arg(format!("{}:/opt/airflow/dags:ro", dags.display()))
        .arg("-v")
        .arg(format!("{}:/xtask/dag_check.py:ro", script.display()))
        .args([&worker, "python", "-c", DAGBAG_VERDICTS]));
    let text = stdout(&out);
    let line = text.lines().find_map(|l| l.strip_prefix("@@verdicts ")).unwrap_or_else(|| panic!("{text}"));
    let airflow: std::collections::BTreeMap<String, serde_json::Value> = serde_json::from_str(line).unwrap();

    // Our own broken files are judged as Airflow judges them, and the test covers them.
    for f in ["zz_bad_syntax.py", "zz_bad_import.py", "zz_cycle.py"] {
        assert_eq!(airflow[f]["status"], "error", "{f}: {}", airflow[f]);
    }
    assert_eq!(
        airflow["zz_twice_a.py"]["status"]
            .as_str()
            .zip(airflow["zz_twice_b.py"]["status"].as_str())
            .map(|(a, b)| a != b),
        Some(true)
    );
    assert!(airflow.values().filter(|v| v["status"] == "ok" && !v["dags"].as_array().unwrap().is_empty()).count() > 10);

    let mut differences = Vec::new();
    for file in airflow.keys().chain(ours.keys()).collect::<std::collections::BTreeSet<_>>() {
        let theirs = airflow.get(file).map(|v| (v["status"].clone(), v["dags"].clone()));
        let mine = ours.get(file).map(|v| (v["status"].clone(), v["dags"].clone()));
        if theirs != mine {
            differences.push(format!("{file}: dags check {mine:?}, DagBag {theirs:?}"));
        }
    }
    assert!(differences.is_empty(), "dags check and Airflow's DagBag disagree:\n{}", differences.join("\n"));
}
