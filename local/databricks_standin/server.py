"""The HTTP side: the Jobs API 2.2, 2.1 and 2.0 calls the Airflow provider, the SDK and the CLIs
make.

The versions share the handlers; where the real API differs, 2.2 adds ``status`` to runs and
pages the arrays of ``jobs/get`` and ``runs/get`` (100 elements, ``next_page_token``) and shows
at most 100 of each in ``jobs/list`` and ``runs/list`` (``has_more``); 2.1 and 2.0 return them
whole. ``GET`` takes its arguments from the query string (the SDK, the provider's sync hook) and
from a JSON body (the provider's async hook, used by the deferrable operator's trigger). The token
is checked before the body is read. Errors have the shape Databricks gives them: the right status
and ``{"error_code": ..., "message": ...}``. Jobs come from the bundle only: ``jobs/create`` and
``runs/submit`` answer 501 ``NOT_IMPLEMENTED`` saying so.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import json
import re
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from local.databricks_standin.bundle import Job
from local.databricks_standin.runs import JobRun, Runner

MAX_JOBS_LIMIT = 100
MAX_RUNS_LIMIT = 25
ARRAY_PAGE = 100  # Jobs API 2.2 pages the arrays of jobs/get and runs/get by 100
MAX_BODY_BYTES = 10 << 20  # our clients send a few kB; a body over this is refused unread
MAX_IDEMPOTENCY_TOKEN = 64
_PATH = re.compile(r"^/api/(?P<version>2\.[012])/(?P<endpoint>jobs/[a-z/-]+)$")
RUN_TYPES = ("JOB_RUN", "WORKFLOW_RUN", "SUBMIT_RUN")
_LEGACY_PARAMETERS = {
    "notebook_params", "python_params", "jar_params", "spark_submit_params",
    "python_named_params", "sql_params", "dbt_commands",
}  # fmt: skip


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


def _invalid(message: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, "INVALID_PARAMETER_VALUE", message)


def _int(args: dict[str, Any], name: str, default: int | None = None) -> int:
    """An integer argument (JSON number or query string); missing without default is an error."""
    if args.get(name) in (None, ""):
        if default is None:
            raise _invalid(f"Missing required field: {name}")
        return default
    value = args[name]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _invalid(f"Field {name} must be an integer, not {value!r}")
    try:
        return int(value)
    except ValueError:
        raise _invalid(f"Field {name} must be an integer, not {value!r}") from None


def _bool(args: dict[str, Any], name: str) -> bool:
    value = args.get(name, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", ""):
        return value.lower() == "true"
    raise _invalid(f"Field {name} must be true or false, not {value!r}")


def _limit(args: dict[str, Any], default: int, maximum: int, zero_means_max: bool) -> int:
    limit = _int(args, "limit", default)
    if limit == 0 and zero_means_max:
        return maximum
    if not 1 <= limit <= maximum:
        raise _invalid(f"limit must be between 1 and {maximum}, not {limit}")
    return limit


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _offset(args: dict[str, Any]) -> int:
    """Where a page starts: ``page_token`` (opaque, from a previous page), else ``offset``."""
    token = args.get("page_token")
    if token in (None, ""):
        offset = _int(args, "offset", 0)
        if offset < 0:
            raise _invalid(f"offset must be >= 0, not {offset}")
        return offset
    try:
        offset = json.loads(base64.urlsafe_b64decode(str(token).encode()))["offset"]
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        offset = None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise _invalid(
            f"Invalid page_token {token!r}: pass a next_page_token or prev_page_token exactly "
            "as a previous response returned it."
        )
    return offset


def _first(api: dict[str, Any], arrays: tuple[str, ...]) -> bool:
    """Cut each array of ``api`` to its first ``ARRAY_PAGE`` elements, as 2.2 listings show
    them; whether any had more (the item's ``has_more``)."""
    more = any(len(api.get(name, [])) > ARRAY_PAGE for name in arrays)
    for name in arrays:
        if name in api:
            api[name] = api[name][:ARRAY_PAGE]
    return more


def _page(items: list[Any], offset: int, limit: int) -> tuple[list[Any], dict[str, Any]]:
    """A page of a listing and its ``has_more`` / ``next_page_token`` / ``prev_page_token``."""
    page = items[offset : offset + limit]
    more = offset + limit < len(items)
    marks: dict[str, Any] = {"has_more": more}
    if more:
        marks["next_page_token"] = _token(offset + limit)
    if offset:
        marks["prev_page_token"] = _token(max(0, offset - limit))
    return page, marks


class JobsApi:
    """The endpoints, as plain functions of the request arguments and the API version."""

    def __init__(self, jobs: dict[int, Job], runner: Runner) -> None:
        self.jobs = jobs
        self.runner = runner
        self.created_time = int(time.time() * 1000)

    def _job(self, args: dict[str, Any], required: bool = True) -> int | None:
        if not required and args.get("job_id") in (None, ""):
            return None
        job_id = _int(args, "job_id")
        if job_id not in self.jobs:
            raise _invalid(f"Job {job_id} does not exist.")
        return job_id

    def _run(self, args: dict[str, Any]) -> int:
        run_id = _int(args, "run_id")
        if run_id not in self.runner.runs and run_id not in self.runner.task_runs:
            raise _invalid(f"Run {run_id} does not exist.")
        return run_id

    def _parameters(self, job: Job, args: dict[str, Any]) -> dict[str, str]:
        """The ``job_parameters`` of run-now or a repair, checked against the job's."""
        unsupported = sorted(set(args) & _LEGACY_PARAMETERS)
        if unsupported:
            raise _invalid(f"{unsupported} are not supported for jobs with job parameters")
        parameters = args.get("job_parameters") or {}
        if not isinstance(parameters, dict) or not all(
            isinstance(value, str | int | float | bool) for value in parameters.values()
        ):
            raise _invalid("job_parameters must be an object of parameter names to strings")
        undeclared = sorted(set(parameters) - set(job.parameters))
        if undeclared:
            raise _invalid(
                f"Job {job.name} does not declare parameter(s) {undeclared}; "
                f"declared: {sorted(job.parameters)}"
            )
        return {key: str(value) for key, value in parameters.items()}

    def _job_api(self, job_id: int, tasks: list[dict[str, Any]] | None) -> dict[str, Any]:
        job = self.jobs[job_id]
        settings: dict[str, Any] = {
            "name": job.name,
            "format": "MULTI_TASK",
            "max_concurrent_runs": job.max_concurrent_runs,
            "queue": {"enabled": job.queue_enabled},
            "timeout_seconds": job.timeout_seconds,
            "parameters": [{"name": n, "default": d} for n, d in job.parameters.items()],
        }
        if tasks is not None:
            settings["tasks"] = tasks
        return {
            "job_id": job_id,
            "creator_user_name": "standin",
            "run_as_user_name": "standin",
            "created_time": self.created_time,
            "settings": settings,
        }

    @staticmethod
    def _task_api(job: Job) -> list[dict[str, Any]]:
        return [
            {
                "task_key": task.key,
                "depends_on": [{"task_key": key} for key in task.depends_on],
                "notebook_task": {"notebook_path": str(task.notebook), "source": "WORKSPACE"},
            }
            for task in job.tasks
        ]

    def list_jobs(self, args: dict[str, Any], version: str) -> dict[str, Any]:
        limit = _limit(args, 20, MAX_JOBS_LIMIT, zero_means_max=False)
        offset, expand = _offset(args), _bool(args, "expand_tasks")
        name = str(args.get("name") or "")
        matching = [
            job_id
            for job_id, job in sorted(self.jobs.items())
            if not name or job.name.casefold() == name.casefold()
        ]
        page, response = _page(matching, offset, limit)
        listed = [
            self._job_api(job_id, self._task_api(self.jobs[job_id]) if expand else None)
            for job_id in page
        ]
        if expand and version == "2.2":
            for job in listed:
                job["settings"].setdefault("job_clusters", [])
                job["has_more"] = _first(job["settings"], ("tasks", "job_clusters", "parameters"))
        if listed:
            response["jobs"] = listed
        return response

    def get_job(self, args: dict[str, Any], version: str) -> dict[str, Any]:
        job_id = self._job(args)
        assert job_id is not None
        job = self._job_api(job_id, self._task_api(self.jobs[job_id]))
        if version != "2.2":
            return job
        # 2.2: every array of the settings is paged; a page holds the next slice of each.
        offset, settings = _offset(args), job["settings"]
        settings.setdefault("job_clusters", [])
        settings.setdefault("environments", [])
        arrays = ("tasks", "job_clusters", "parameters", "environments")
        longest = max(len(settings[name]) for name in arrays)
        for name in arrays:
            settings[name] = settings[name][offset : offset + ARRAY_PAGE]
        job["has_more"] = offset + ARRAY_PAGE < longest
        if job["has_more"]:
            job["next_page_token"] = _token(offset + ARRAY_PAGE)
        return job

    def run_now(self, args: dict[str, Any], version: str) -> dict[str, Any]:
        job_id = self._job(args)
        assert job_id is not None
        job = self.jobs[job_id]
        values = self._parameters(job, args)
        token = args.get("idempotency_token")
        if token is not None and (
            not isinstance(token, str) or not 0 < len(token) <= MAX_IDEMPOTENCY_TOKEN
        ):
            raise _invalid(
                f"idempotency_token must be a string of 1 to {MAX_IDEMPOTENCY_TOKEN} characters"
            )
        run = self.runner.submit(job_id, job, values, token)
        return {"run_id": run.run_id, "number_in_job": run.run_id}

    def get_run(self, args: dict[str, Any], version: str) -> dict[str, Any]:
        run_id = self._run(args)
        with self.runner.lock:
            if run_id in self.runner.task_runs:
                run, task = self.runner.task_runs[run_id]
                return {**task.to_api(version), **self._task_context(run)}
            run = self.runner.runs[run_id]
            history = [attempt.to_api(version) for attempt in run.attempts]
            if version != "2.2":
                api = run.to_api(version)
                if _bool(args, "include_history"):
                    api["repair_history"] = history
                return api
            # 2.2: tasks, job_parameters, repair_history (and the empty job_clusters) are paged.
            offset = _offset(args)
            api = run.to_api(version, tasks=run.tasks[offset : offset + ARRAY_PAGE])
        if not _bool(args, "include_history"):
            history = []
        api["job_parameters"] = api["job_parameters"][offset : offset + ARRAY_PAGE]
        api["repair_history"] = history[offset : offset + ARRAY_PAGE]
        api["job_clusters"] = []
        longest = max(len(run.tasks), len(run.parameters), len(history))
        api["has_more"] = offset + ARRAY_PAGE < longest
        if api["has_more"]:
            api["next_page_token"] = _token(offset + ARRAY_PAGE)
        return api

    @staticmethod
    def _task_context(run: JobRun) -> dict[str, Any]:
        """What a task run shows of its job run."""
        return {"job_id": run.job_id, "job_run_id": run.run_id, "run_page_url": run.run_page_url}

    def list_runs(self, args: dict[str, Any], version: str) -> dict[str, Any]:
        job_id = self._job(args, required=False)
        active_only, completed_only = _bool(args, "active_only"), _bool(args, "completed_only")
        if active_only and completed_only:
            raise _invalid("active_only and completed_only cannot both be true")
        limit = _limit(args, 20, MAX_RUNS_LIMIT, zero_means_max=True)
        offset, expand = _offset(args), _bool(args, "expand_tasks")
        since = _int(args, "start_time_from", 0)
        until = _int(args, "start_time_to", 2**63 - 1)
        run_type = str(args.get("run_type") or "JOB_RUN")
        if run_type not in RUN_TYPES:
            raise _invalid(f"run_type must be one of {list(RUN_TYPES)}, not {run_type!r}")
        with self.runner.lock:
            runs = [
                run
                for run in sorted(
                    self.runner.runs.values(), key=lambda r: (r.start_time, r.run_id), reverse=True
                )
                if (job_id is None or run.job_id == job_id)
                and not (active_only and not run.is_active)
                and not (completed_only and run.is_active)
                and since <= run.start_time <= until
                and run_type == "JOB_RUN"  # the stand-in makes no workflow or submit runs
            ]
            page, response = _page(runs, offset, limit)
            listed = [run.to_api(version) for run in page]
        for run in listed:
            if not expand:
                del run["tasks"]
            elif version == "2.2":
                run["job_clusters"] = []
                run["has_more"] = _first(run, ("tasks", "job_clusters", "job_parameters"))
        if listed:
            response["runs"] = listed
        return response

    def repair_run(self, args: dict[str, Any], version: str) -> dict[str, Any]:
        """Run tasks of an ended job run again, as Databricks' ``runs/repair`` does."""
        run_id = self._run(args)
        if run_id not in self.runner.runs:
            job_run = self.runner.task_runs[run_id][0].run_id
            raise _invalid(f"Run {run_id} is a task run: repair its job run {job_run}.")
        run = self.runner.runs[run_id]
        parameters = self._parameters(run.job, args)
        rerun = args.get("rerun_tasks")
        all_failed = _bool(args, "rerun_all_failed_tasks")
        if rerun is not None and (
            not isinstance(rerun, list) or not all(isinstance(key, str) for key in rerun)
        ):
            raise _invalid("rerun_tasks must be a list of task keys")
        if bool(rerun) == all_failed:
            raise _invalid("Exactly one of rerun_tasks or rerun_all_failed_tasks must be set.")
        latest = args.get("latest_repair_id")
        with self.runner.lock:
            if run.is_active:
                raise _invalid(
                    f"Run {run_id} is {run.life_cycle_state}: only a run that has ended can be "
                    "repaired. Wait for it to end, or cancel it."
                )
            if latest in (None, "") and run.latest_repair_id is not None:
                raise _invalid(
                    "The latest repair ID needs to be provided in order to create a new repair "
                    f"(latest_repair_id {run.latest_repair_id})."
                )
            if latest not in (None, "") and _int(args, "latest_repair_id") != run.latest_repair_id:
                raise _invalid(
                    f"latest_repair_id {latest} is not the latest repair of run {run_id} "
                    f"({run.latest_repair_id}): get the run with include_history=true."
                )
            keys = {task.task.key: task for task in run.tasks}
            if all_failed:
                chosen = {key for key, task in keys.items() if task.result_state != "SUCCESS"}
                if not chosen:
                    raise _invalid(f"Run {run_id} has no failed tasks to repair.")
            else:
                unknown = sorted(set(rerun) - keys.keys())
                if unknown:
                    raise _invalid(
                        f"Run {run_id} has no task(s) {unknown}; its tasks: {sorted(keys)}"
                    )
                chosen = set(rerun)
            if _bool(args, "rerun_dependent_tasks"):
                chosen |= _dependents(run.job, chosen)
            repair_id = self.runner.repair(run, chosen, parameters)
        return {"repair_id": repair_id}

    def not_served(self, endpoint: str) -> ApiError:
        """Jobs API endpoints the stand-in does not serve: jobs come from the bundle, runs stay."""
        names = ", ".join(sorted(job.name for job in self.jobs.values()))
        return ApiError(
            HTTPStatus.NOT_IMPLEMENTED,
            "NOT_IMPLEMENTED",
            f"The Databricks stand-in does not serve {endpoint}: it runs only the jobs of its "
            f"bundle (databricks.yml and resources/*.job.yml: {names}), which it cannot create, "
            "change or delete, runs no one-time (submitted) runs, and keeps every run. Define "
            "the job in the bundle, restart the stand-in, and use jobs/run-now.",
        )

    def get_run_output(self, args: dict[str, Any], version: str) -> dict[str, Any]:
        run_id = self._run(args)
        if run_id in self.runner.runs:
            raise _invalid(
                "Retrieving the output of runs with multiple tasks is not supported. "
                "Please retrieve the output of each individual task run instead."
            )
        with self.runner.lock:
            run, task = self.runner.task_runs[run_id]
            output: dict[str, Any] = {
                "metadata": {**task.to_api(version), **self._task_context(run)},
                "notebook_output": {},
            }
            if task.notebook_result is not None:
                output["notebook_output"] = {"result": task.notebook_result, "truncated": False}
            if task.result_state == "FAILED":
                output["error"], output["error_trace"] = task.error, task.error_trace
        return output

    def cancel_run(self, args: dict[str, Any], version: str) -> dict[str, Any]:
        run_id = self._run(args)
        # Cancelling a task run cancels the job run it belongs to.
        run = self.runner.runs.get(run_id) or self.runner.task_runs[run_id][0]
        self.runner.cancel(run)
        return {}

    def cancel_all_runs(self, args: dict[str, Any], version: str) -> dict[str, Any]:
        job_id = self._job(args, required=False)
        all_queued = _bool(args, "all_queued_runs")
        if job_id is None and not all_queued:
            raise _invalid("Either job_id or all_queued_runs must be set")
        with self.runner.lock:
            chosen = [
                run
                for run in self.runner.runs.values()
                if (run.job_id == job_id and run.is_active)
                or (job_id is None and run.life_cycle_state == "QUEUED")
            ]
        for run in chosen:
            self.runner.cancel(run)
        return {}


def _dependents(job: Job, keys: set[str]) -> set[str]:
    """Every task that depends on one of ``keys``, directly or not."""
    found: set[str] = set()
    for task in job.task_order():  # upstream first, so one pass sees chains
        if set(task.depends_on) & (keys | found):
            found.add(task.key)
    return found


Handler = Callable[[JobsApi, dict[str, Any], str], dict[str, Any]]
ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", "jobs/list"): JobsApi.list_jobs,
    ("GET", "jobs/get"): JobsApi.get_job,
    ("POST", "jobs/run-now"): JobsApi.run_now,
    ("GET", "jobs/runs/get"): JobsApi.get_run,
    ("GET", "jobs/runs/list"): JobsApi.list_runs,
    ("GET", "jobs/runs/get-output"): JobsApi.get_run_output,
    ("POST", "jobs/runs/cancel"): JobsApi.cancel_run,
    ("POST", "jobs/runs/cancel-all"): JobsApi.cancel_all_runs,
    ("POST", "jobs/runs/repair"): JobsApi.repair_run,
}
# Jobs API endpoints a client may call that the stand-in answers 501 NOT_IMPLEMENTED.
NOT_SERVED = {
    ("POST", "jobs/create"), ("POST", "jobs/update"), ("POST", "jobs/reset"),
    ("POST", "jobs/delete"), ("POST", "jobs/runs/submit"), ("POST", "jobs/runs/delete"),
    ("GET", "jobs/runs/export"),
}  # fmt: skip


def make_server(port: int, token: str, api: JobsApi) -> ThreadingHTTPServer:
    """A server on 127.0.0.1:port; API calls need ``Authorization: Bearer <token>``."""

    class RequestHandler(BaseHTTPRequestHandler):
        server_version = "databricks-standin"

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def _handle(self, method: str) -> None:
            url = urlsplit(self.path)
            try:
                if method == "GET" and url.path.startswith("/runs/"):
                    self._skip_body()
                    self._run_page(url.path.removeprefix("/runs/"))
                    return
                self._authenticate()  # before the body: a bad token gets its answer unread
                body = self._body()
                match = _PATH.match(url.path)
                route = match and ROUTES.get((method, match["endpoint"]))
                if match and (method, match["endpoint"]) in NOT_SERVED:
                    raise api.not_served(match["endpoint"])
                if not match or not route:
                    # Databricks names the path without its /api/<version> prefix.
                    endpoint = re.sub(r"^/api/[^/]+", "", url.path)
                    raise ApiError(
                        HTTPStatus.NOT_FOUND,
                        "ENDPOINT_NOT_FOUND",
                        f"No API found for '{method} {endpoint}'",
                    )
                arguments = self._arguments(url.query, body)
                self._reply(HTTPStatus.OK, route(api, arguments, match["version"]))
            except ApiError as error:
                self._reply(
                    error.status, {"error_code": error.error_code, "message": error.message}
                )
            except Exception as error:  # a bug here must still answer, never drop the connection
                message = f"{type(error).__name__}: {error}"
                self._reply(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    {"error_code": "INTERNAL_ERROR", "message": message},
                )

        def _body(self) -> bytes:
            """The request body, read whole (an unread body would corrupt the next request)."""
            length = self.headers.get("Content-Length") or "0"
            if not length.isdigit():
                self.close_connection = True  # where this body ends is unknown
                raise ApiError(
                    HTTPStatus.BAD_REQUEST,
                    "MALFORMED_REQUEST",
                    f"Invalid Content-Length header: {length!r}",
                )
            if int(length) > MAX_BODY_BYTES:
                self.close_connection = True
                raise ApiError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    "MALFORMED_REQUEST",
                    f"The request body of {length} bytes is over {MAX_BODY_BYTES} bytes.",
                )
            return self.rfile.read(int(length))

        def _skip_body(self) -> None:
            """A request answered without reading its body ends the connection after the
            answer (the unread bytes must not be taken for the next request)."""
            if (self.headers.get("Content-Length") or "0") != "0":
                self.close_connection = True

        def _authenticate(self) -> None:
            header = self.headers.get("Authorization", "")
            scheme, _, presented = header.partition(" ")
            if scheme != "Bearer" or not hmac.compare_digest(presented.encode(), token.encode()):
                self._skip_body()
                # Databricks' answer to a missing, wrong or expired token.
                raise ApiError(HTTPStatus.FORBIDDEN, "403", "Invalid access token.")

        @staticmethod
        def _arguments(query: str, body: bytes) -> dict[str, Any]:
            args: dict[str, Any] = dict(parse_qsl(query))
            if body.strip():
                try:
                    parsed = json.loads(body)
                except (json.JSONDecodeError, UnicodeDecodeError) as error:
                    raise ApiError(
                        HTTPStatus.BAD_REQUEST,
                        "MALFORMED_REQUEST",
                        f"Invalid JSON given in the body of the request: {error}",
                    ) from None
                if not isinstance(parsed, dict):
                    raise ApiError(
                        HTTPStatus.BAD_REQUEST,
                        "MALFORMED_REQUEST",
                        "Invalid JSON given in the body of the request - expected a map",
                    )
                args.update(parsed)
            return args

        def _run_page(self, run_id: str) -> None:
            """A read-only page per run (what ``run_page_url`` points at), for humans."""
            run = api.runner.runs.get(int(run_id)) if run_id.isdigit() else None
            if run is None:
                raise ApiError(
                    HTTPStatus.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST", f"Run {run_id} does not exist."
                )
            with api.runner.lock:
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
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", page)

        def _reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            self._send(status, "application/json", json.dumps(body).encode())

        def _send(self, status: HTTPStatus, content_type: str, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # clients poll; one line per poll would drown the run log

    return ThreadingHTTPServer(("127.0.0.1", port), RequestHandler)
