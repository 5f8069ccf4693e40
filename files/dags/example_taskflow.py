"""A small extract -> transform -> load pipeline written with the TaskFlow API."""

from datetime import datetime

from airflow.sdk import dag, task


@dag(schedule=None, start_date=datetime(2024, 1, 1), catchup=False, tags=["example"])
def example_taskflow():
    @task
    def extract() -> list[dict]:
        return [{"name": "a", "amount": 1.5}, {"name": "b", "amount": 2.25}, {"name": "a", "amount": 3.0}]

    @task
    def transform(rows: list[dict]) -> dict[str, float]:
        totals: dict[str, float] = {}
        for row in rows:
            totals[row["name"]] = totals.get(row["name"], 0.0) + row["amount"]
        return totals

    @task
    def load(totals: dict[str, float]) -> None:
        for name, amount in sorted(totals.items()):
            print(f"{name}: {amount:.2f}")

    load(transform(extract()))


example_taskflow()
