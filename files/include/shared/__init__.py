"""Code the monorepo's DAGs share. Baked into the worker image at /opt/airflow/include
(on PYTHONPATH), so `import shared` works in every component and worker pod."""

from shared.greetings import greeting
from shared.records import Record, summarize

__all__ = ["Record", "greeting", "summarize", "VERSION"]

VERSION = "1.0"
