"""The local stack: Airflow 3 with both DAGs, moto S3, a file server and the Databricks stand-in.

``python -m local.stack up [--run]|run|status|logs|down`` (``make demo``, ``make demo-up``,
``make demo-run``, ``make demo-status``, ``make demo-logs``, ``make demo-down``). Every process
binds 127.0.0.1 and leaves a pid file and a log under one run directory (default ``.run/demo``).
"""


class StackError(RuntimeError):
    """A step of the local stack failed; the message names the step and where to look.

    Defined here, with no imports, so that ``local.stack.prerequisites`` runs on the system's
    Python before the virtualenv exists (``make test`` installs both at once)."""
