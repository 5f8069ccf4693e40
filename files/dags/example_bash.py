"""Shell tasks with the BashOperator: what a lot of real pipelines still are."""

from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(dag_id="example_bash", schedule=None, start_date=datetime(2024, 1, 1), catchup=False, tags=["example"]):
    where = BashOperator(task_id="where", bash_command="echo running on $(hostname) as $(id -un)")
    count = BashOperator(task_id="count_dags", bash_command="ls /opt/airflow/dags | wc -l")
    where >> count
