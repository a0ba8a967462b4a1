"""The local stack: Airflow 3 with both DAGs, moto S3, a file server and the Databricks stand-in.

``python -m local.stack up [--run]|run|status|logs|down`` (``make demo``, ``make demo-up``,
``make demo-run``, ``make demo-status``, ``make demo-logs``, ``make demo-down``). Every process
binds 127.0.0.1 and leaves a pid file and a log under one run directory (default ``.run/demo``).
"""
