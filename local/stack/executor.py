"""The local stack's executor: Airflow 3.0.2's LocalExecutor, starting a worker per queued task.

3.0.2 starts a worker only while the unread tasks outnumber *all* its workers, busy ones included
(apache/airflow#54523, fixed after 3.0.2): two tasks queued together often run one after the
other, so mapped per-site tasks would not overlap whatever their bound says. Here, as in the fix,
a worker starts whenever a task waits unread and fewer than ``parallelism`` workers exist. Only
the stack uses it (``AIRFLOW__CORE__EXECUTOR``); Kubernetes runs the KubernetesExecutor.
"""

from __future__ import annotations

from airflow.executors import local_executor


class LocalExecutor(local_executor.LocalExecutor):
    def _check_workers(self) -> None:
        for pid, process in list(self.workers.items()):  # reap dead workers
            if not process.is_alive():
                process.close()
                del self.workers[pid]
        with self._unread_messages:
            unread = self._unread_messages.value
        if unread > 0 and not self.activity_queue.empty() and len(self.workers) < self.parallelism:
            self._spawn_worker()  # one per call: called after each task is put on the queue
