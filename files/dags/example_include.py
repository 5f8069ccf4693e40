"""Uses the shared package from files/include (at /opt/airflow/include in the image)."""

from datetime import datetime

from airflow.sdk import dag, task

from shared import Record, greeting, summarize


@dag(schedule=None, start_date=datetime(2024, 1, 1), catchup=False, tags=["example"])
def example_include():
    @task
    def greet() -> str:
        return greeting("example_include")

    @task
    def totals() -> dict[str, float]:
        return summarize([Record("x", 1.25), Record("x", 2.5), Record("y", 4.0)])

    greet()
    totals()


example_include()
