"""The HTTP side: the Jobs API 2.1 endpoints the Airflow Databricks provider calls.

``GET`` requests take their arguments from the query string (the provider's sync hook) or from
a JSON body (its async hook, used by the deferrable operator's trigger).
"""

from __future__ import annotations

import hmac
import html
import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from local.databricks_standin.bundle import Job
from local.databricks_standin.runs import Runner

MAX_LIST_LIMIT = 100


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


def _invalid(message: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, "INVALID_PARAMETER_VALUE", message)


def _int(args: dict[str, Any], name: str) -> int:
    try:
        return int(args[name])
    except KeyError:
        raise _invalid(f"Missing required field: {name}") from None
    except (TypeError, ValueError):
        raise _invalid(f"Field {name} must be an integer, not {args[name]!r}") from None


class JobsApi:
    """The endpoints, as plain functions of the request arguments."""

    def __init__(self, jobs: dict[int, Job], runner: Runner) -> None:
        self.jobs = jobs
        self.runner = runner

    def list_jobs(self, args: dict[str, Any]) -> dict[str, Any]:
        limit = int(args.get("limit") or 20)
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise _invalid(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        offset = int(args.get("page_token") or 0)
        name = args.get("name")
        matching = [
            {"job_id": job_id, "settings": {"name": job.name}, "creator_user_name": "standin"}
            for job_id, job in sorted(self.jobs.items())
            if not name or job.name == name
        ]
        page = matching[offset : offset + limit]
        response: dict[str, Any] = {"has_more": offset + limit < len(matching)}
        if page:
            response["jobs"] = page
        if response["has_more"]:
            response["next_page_token"] = str(offset + limit)
        return response

    def run_now(self, args: dict[str, Any]) -> dict[str, Any]:
        job_id = _int(args, "job_id")
        if job_id not in self.jobs:
            raise _invalid(f"Job {job_id} does not exist.")
        job = self.jobs[job_id]
        unsupported = sorted(
            set(args) & {"notebook_params", "python_params", "jar_params", "spark_submit_params"}
        )
        if unsupported:
            raise _invalid(f"{unsupported} are not supported for jobs with job parameters")
        parameters = args.get("job_parameters") or {}
        undeclared = sorted(set(parameters) - set(job.parameters))
        if undeclared:
            raise _invalid(
                f"Job {job.name} does not declare parameter(s) {undeclared}; "
                f"declared: {sorted(job.parameters)}"
            )
        run = self.runner.submit(job_id, job, {k: str(v) for k, v in parameters.items()})
        return {"run_id": run.run_id, "number_in_job": run.run_id}

    def get_run(self, args: dict[str, Any]) -> dict[str, Any]:
        run_id = _int(args, "run_id")
        if run_id in self.runner.runs:
            return self.runner.runs[run_id].to_api()
        if run_id in self.runner.task_runs:
            run, task = self.runner.task_runs[run_id]
            return {**task.to_api(), "job_id": run.job_id, "run_page_url": run.run_page_url}
        raise ApiError(
            HTTPStatus.BAD_REQUEST, "RESOURCE_DOES_NOT_EXIST", f"Run {run_id} does not exist."
        )

    def get_run_output(self, args: dict[str, Any]) -> dict[str, Any]:
        run_id = _int(args, "run_id")
        if run_id in self.runner.runs:
            raise _invalid(
                "Retrieving the output of runs with multiple tasks is not supported. "
                "Please retrieve the output of each individual task run instead."
            )
        if run_id not in self.runner.task_runs:
            raise ApiError(
                HTTPStatus.BAD_REQUEST, "RESOURCE_DOES_NOT_EXIST", f"Run {run_id} does not exist."
            )
        run, task = self.runner.task_runs[run_id]
        output: dict[str, Any] = {
            "metadata": {**task.to_api(), "job_id": run.job_id, "run_page_url": run.run_page_url},
            "notebook_output": {},
        }
        if task.result_state == "FAILED":
            output["error"], output["error_trace"] = task.error, task.error_trace
        return output

    def cancel_run(self, args: dict[str, Any]) -> dict[str, Any]:
        run_id = _int(args, "run_id")
        if run_id not in self.runner.runs:
            raise ApiError(
                HTTPStatus.BAD_REQUEST, "RESOURCE_DOES_NOT_EXIST", f"Run {run_id} does not exist."
            )
        self.runner.cancel(self.runner.runs[run_id])
        return {}


ROUTES = {
    ("GET", "/api/2.1/jobs/list"): JobsApi.list_jobs,
    ("POST", "/api/2.1/jobs/run-now"): JobsApi.run_now,
    ("GET", "/api/2.1/jobs/runs/get"): JobsApi.get_run,
    ("GET", "/api/2.1/jobs/runs/get-output"): JobsApi.get_run_output,
    ("POST", "/api/2.1/jobs/runs/cancel"): JobsApi.cancel_run,
}


def make_server(port: int, token: str, api: JobsApi) -> ThreadingHTTPServer:
    """A server on 127.0.0.1:port; API calls need ``Authorization: Bearer <token>``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "databricks-standin"

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def _handle(self, method: str) -> None:
            url = urlsplit(self.path)
            if method == "GET" and url.path.startswith("/runs/"):
                self._run_page(url.path.removeprefix("/runs/"))
                return
            try:
                route = ROUTES.get((method, url.path))
                if route is None:
                    raise ApiError(
                        HTTPStatus.NOT_FOUND,
                        "ENDPOINT_NOT_FOUND",
                        f"No API found for '{method} {url.path}'",
                    )
                self._authenticate()
                self._reply(HTTPStatus.OK, route(api, self._arguments(url.query)))
            except ApiError as error:
                self._reply(
                    error.status, {"error_code": error.error_code, "message": error.message}
                )

        def _authenticate(self) -> None:
            header = self.headers.get("Authorization", "")
            scheme, _, presented = header.partition(" ")
            if scheme != "Bearer" or not hmac.compare_digest(presented.encode(), token.encode()):
                raise ApiError(HTTPStatus.UNAUTHORIZED, "UNAUTHENTICATED", "Invalid access token.")

        def _arguments(self, query: str) -> dict[str, Any]:
            args: dict[str, Any] = dict(parse_qsl(query))
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                try:
                    body = json.loads(self.rfile.read(length))
                except json.JSONDecodeError as error:
                    raise ApiError(
                        HTTPStatus.BAD_REQUEST, "MALFORMED_REQUEST", str(error)
                    ) from None
                if not isinstance(body, dict):
                    raise ApiError(
                        HTTPStatus.BAD_REQUEST, "MALFORMED_REQUEST", "Body must be an object"
                    )
                args.update(body)
            return args

        def _run_page(self, run_id: str) -> None:
            """A read-only page per run (what ``run_page_url`` points at), for humans."""
            run = api.runner.runs.get(int(run_id)) if run_id.isdigit() else None
            if run is None:
                self._reply(HTTPStatus.NOT_FOUND, {"error_code": "RESOURCE_DOES_NOT_EXIST"})
                return
            rows = "".join(
                f"<tr><td>{t.task.key}</td><td>{t.life_cycle_state} {t.result_state}</td>"
                f"<td><pre>{html.escape(t.error_trace or t.state_message)}</pre></td></tr>"
                for t in run.tasks
            )
            state = f"{run.life_cycle_state} {run.result_state}: {run.state_message}"
            page = (
                f"<h1>{html.escape(run.job.name)} run {run.run_id}</h1>"
                f"<p>{html.escape(state)}</p>"
                f"<table border=1>{rows}</table>"
            ).encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def _reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the provider polls; one line per poll would drown the run log

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)
