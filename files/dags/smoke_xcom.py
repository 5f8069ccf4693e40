"""Smoke DAG: an XCom passed between two tasks, each reporting its hostname. On the
cluster every task runs in its own worker pod, so the hostnames differ."""

import socket
from datetime import datetime

from airflow.sdk import dag, task


@dag(schedule=None, start_date=datetime(2024, 1, 1), catchup=False, tags=["smoke"])
def smoke_xcom():
    @task
    def produce() -> dict:
        return {"value": 42, "hostname": socket.gethostname()}

    @task
    def consume(produced: dict) -> dict:
        assert produced["value"] == 42, f"XCom arrived as {produced!r}"
        return {"producer_hostname": produced["hostname"], "consumer_hostname": socket.gethostname()}

    consume(produce())


smoke_xcom()
