"""Runs DAGs with `airflow dags test` against a throwaway SQLite database and prints, per
DAG, one JSON line (prefixed @@xtask) with every task's state as Airflow recorded it and
the XComs the tasks returned. Run by `cargo xtask smoke --local` inside the worker image
or a local virtualenv. Arguments: the DAG ids."""

import json
import os
import subprocess
import sys
import time

home = os.environ.setdefault("AIRFLOW_HOME", "/tmp/xtask-smoke")
os.makedirs(home, exist_ok=True)
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home}/airflow.db")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", "/opt/airflow/dags")


def emit(record):
    print("@@xtask " + json.dumps(record, default=str), flush=True)


def states(dag_id):
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).first()
        if run is None:
            return None, [], {}
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id).all()
        tasks = []
        for ti in sorted(tis, key=lambda t: t.task_id):
            tasks.append(
                {
                    "task_id": ti.task_id,
                    "state": str(ti.state) if ti.state is not None else "none",
                    "seconds": ti.duration,
                    "try_number": ti.try_number,
                    "hostname": ti.hostname,
                }
            )
        xcoms = {}
        try:
            from airflow.models.xcom import XComModel

            for x in session.query(XComModel).filter(XComModel.dag_id == dag_id, XComModel.run_id == run.run_id):
                if x.key == "return_value":
                    xcoms[x.task_id] = x.value if not isinstance(x.value, (bytes, str)) else _decode(x.value)
        except Exception as e:  # XComs are a bonus; states are what counts
            xcoms["_error"] = str(e)
        return str(run.state), tasks, xcoms


def _decode(v):
    try:
        return json.loads(v)
    except Exception:
        return str(v)


def main():
    started = time.monotonic()
    migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True)
    if migrate.returncode != 0:
        emit({"setup_error": (migrate.stdout + migrate.stderr)[-4000:]})
        return 2
    emit({"setup_seconds": round(time.monotonic() - started, 1)})
    failed = 0
    for dag_id in sys.argv[1:]:
        t = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", dag_id], capture_output=True, text=True)
        seconds = round(time.monotonic() - t, 1)
        run_state, tasks, xcoms = states(dag_id)
        ok = p.returncode == 0 and run_state == "success"
        failed += 0 if ok else 1
        log = (p.stdout + p.stderr).splitlines()
        emit(
            {
                "dag": dag_id,
                "state": run_state or "not run",
                "returncode": p.returncode,
                "seconds": seconds,
                "tasks": tasks,
                "xcoms": xcoms,
                "log_tail": None if ok else "\n".join(log[-40:]),
            }
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
