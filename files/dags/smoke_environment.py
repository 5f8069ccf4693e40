"""Smoke DAG: what every worker must have. Run by `cargo xtask smoke` (on the cluster)
and `cargo xtask smoke --local` (in the image); each task fails loudly when its check
does not hold."""

import os
import socket
from datetime import datetime

from airflow.sdk import dag, task


@dag(schedule=None, start_date=datetime(2024, 1, 1), catchup=False, tags=["smoke"])
def smoke_environment():
    @task
    def include_is_importable() -> dict:
        import shared

        assert shared.greeting("smoke").startswith("hello"), "shared.greeting is broken"
        return {"shared_version": shared.VERSION, "hostname": socket.gethostname()}

    @task
    def pod_template_env_is_set() -> dict:
        value = os.environ.get("XTASK_POD_TEMPLATE_MARKER")
        assert value == "set-by-pod-template", f"XTASK_POD_TEMPLATE_MARKER is {value!r}; the pod template's env did not reach the worker"
        return {"marker": value, "hostname": socket.gethostname()}

    include_is_importable()
    pod_template_env_is_set()


smoke_environment()
