"""Parses DAG files the way Airflow's DAG processor does (DagBag, the import timeout)
and prints one JSON line per file, prefixed @@xtask (Airflow logs to stdout too). Run by `cargo xtask dags check` inside the
worker image or a local virtualenv.

Variables, connections and os.getenv are answered by stand-ins, so a DAG that reads them
at parse time does not fail for want of a database or a secret. The os.getenv stand-in
answers only code under the DAGs and include trees; Airflow's own code reads the real
environment.

Input (environment): XTASK_DAGS_DIR, XTASK_SKIP (JSON list of paths relative to it),
XTASK_TIMEOUT (seconds per file), XTASK_INCLUDE_DIR (the include tree, for --serve).

With --serve (for `cargo xtask watch`) it imports Airflow once, prints {"ready": true},
then reads one JSON list of paths (relative to the DAGs folder) per line on stdin and
answers with one result line per path and {"done": true}; the include tree's modules are
imported afresh for every request.
"""

import json
import os
import sys
import time

DAGS = os.environ.get("XTASK_DAGS_DIR", "/opt/airflow/dags")
INCLUDE = os.environ.get("XTASK_INCLUDE_DIR", "/opt/airflow/include")
SKIP = set(json.loads(os.environ.get("XTASK_SKIP", "[]")))
os.environ["AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT"] = os.environ.get("XTASK_TIMEOUT", "30")
os.environ["AIRFLOW__CORE__DAGBAG_IMPORT_ERROR_TRACEBACK_DEPTH"] = "3"
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW_HOME", "/tmp/xtask-dags-check")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite:////tmp/xtask-dags-check.db")

_real_getenv = os.getenv
_USER_CODE = tuple(os.path.realpath(d) + os.sep for d in (DAGS, INCLUDE))


def _getenv(key, default=None):
    value = _real_getenv(key, default)
    if value is not None:
        return value
    caller = sys._getframe(1).f_code.co_filename
    if os.path.realpath(caller).startswith(_USER_CODE):
        return f"stand-in-for-{key}"
    return value


os.getenv = _getenv


def _install_stand_ins():
    def variable_get(key, default=None, deserialize_json=False, *args, **kwargs):
        if default is not None:
            return default
        return {} if deserialize_json else f"stand-in-for-{key}"

    def connection(conn_id, *args, **kwargs):
        from airflow.sdk import Connection

        return Connection(conn_id=conn_id, conn_type="generic", host="stand-in", login="stand-in", password="stand-in")

    targets = [
        ("airflow.sdk", "Variable", "get", staticmethod(variable_get)),
        ("airflow.sdk.definitions.variable", "Variable", "get", staticmethod(variable_get)),
        ("airflow.models.variable", "Variable", "get", staticmethod(variable_get)),
        ("airflow.sdk", "Connection", "get", staticmethod(connection)),
        ("airflow.sdk.bases.hook", "BaseHook", "get_connection", classmethod(lambda cls, conn_id: connection(conn_id))),
        ("airflow.hooks.base", "BaseHook", "get_connection", classmethod(lambda cls, conn_id: connection(conn_id))),
    ]
    import importlib

    for module, cls, attr, value in targets:
        try:
            owner = getattr(importlib.import_module(module), cls)
            setattr(owner, attr, value)
        except Exception:
            pass


def _files():
    """The DAG files in the order Airflow's DagBag visits them (which decides which of two
    files defining the same DAG id is the duplicate)."""
    try:
        from airflow.utils.file import list_py_file_paths

        paths = list_py_file_paths(DAGS, safe_mode=False)
    except Exception:
        paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(DAGS) for f in fs if f.endswith(".py"))
    return [p for p in paths if "__pycache__" not in p]


def _duplicates(result, seen):
    """Marks a file whose DAG id an earlier file already defined, as Airflow's DagBag
    does when it loads the folder; records this file's other DAG ids."""
    if result["status"] != "ok":
        return result
    taken = [d for d in result["dags"] if seen.get(d, result["file"]) != result["file"]]
    for d in result["dags"]:
        seen.setdefault(d, result["file"])
    if taken:
        result = dict(result, status="error", dags=[])
        result["error"] = "; ".join(f"DAG id {d!r} is already defined in {seen[d]}; Airflow ignores this one" for d in taken)
    return result


def _dagbag_class():
    import logging

    logging.disable(logging.WARNING)
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:
        from airflow.models.dagbag import DagBag
    _install_stand_ins()
    return DagBag


def _emit(obj):
    print("@@xtask " + json.dumps(obj), flush=True)


def _check(DagBag, path):
    """The result of parsing one file, as the JSON object the caller reads."""
    rel = os.path.relpath(path, DAGS)
    if rel in SKIP:
        return {"file": rel, "status": "skipped", "dags": [], "seconds": 0.0, "error": None}
    if not os.path.exists(path):
        return {"file": rel, "status": "removed", "dags": [], "seconds": 0.0, "error": None}
    started = time.monotonic()
    if "include_examples" in DagBag.__init__.__code__.co_varnames:
        bag = DagBag(dag_folder=path, include_examples=False)
    else:
        bag = DagBag(dag_folder=path)
    seconds = time.monotonic() - started
    errors = getattr(bag, "import_errors", {}) or {}
    error = "\n".join(str(e) for e in errors.values()) or None
    return {
        "file": rel,
        "status": "error" if error else "ok",
        "dags": sorted(bag.dag_ids) if not error else [],
        "seconds": round(seconds, 3),
        "error": error,
    }


def _forget_include_modules():
    root = os.path.realpath(INCLUDE) + os.sep
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None) or ""
        if origin and os.path.realpath(origin).startswith(root):
            del sys.modules[name]


def serve():
    DagBag = _dagbag_class()
    _emit({"ready": True})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        _forget_include_modules()
        for rel in json.loads(line):
            _emit(_check(DagBag, os.path.join(DAGS, rel)))
        _emit({"done": True})
    return 0


def main():
    if "--serve" in sys.argv[1:]:
        return serve()
    DagBag = _dagbag_class()
    failed = 0
    seen = {}
    for path in _files():
        result = _duplicates(_check(DagBag, path), seen)
        if result["status"] == "error":
            failed += 1
        _emit(result)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
