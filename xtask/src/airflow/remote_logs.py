# Run by `cargo xtask doctor` inside an Airflow component: is remote task logging set, and
# can this pod reach its bucket with its connection? Prints one JSON object.
import json

out = {"remote": False}
try:
    from airflow.configuration import conf

    if conf.getboolean("logging", "remote_logging", fallback=False):
        folder = conf.get("logging", "remote_base_log_folder", fallback="")
        conn_id = conf.get("logging", "remote_log_conn_id", fallback="")
        out.update(remote=True, folder=folder, conn_id=conn_id)
        if not folder.startswith("s3://"):
            out["error"] = "not-s3"
        else:
            bucket = folder[len("s3://"):].split("/", 1)[0]
            out["bucket"] = bucket
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            client = S3Hook(aws_conn_id=conn_id).get_conn()
            out["endpoint"] = client.meta.endpoint_url
            client.head_bucket(Bucket=bucket)
            out["ok"] = True
except ImportError as e:
    out.update(error="no-provider", message=str(e))
except Exception as e:  # what went wrong is the answer
    response = getattr(e, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    if type(e).__name__ == "AirflowNotFoundException":
        code = "no-connection"
    out.update(error=code or type(e).__name__, message=str(e)[:500])
print(json.dumps(out))
