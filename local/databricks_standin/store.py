"""The stand-in's state directory: its runs outlive the process, so run ids never repeat.

Databricks keeps runs (60 days) and never reuses a run id. The stand-in writes every run, the next
id and thereby the idempotency tokens to ``<state dir>/runs.json`` after each change (a temporary
file, then ``os.replace``: a reader or a crash sees the old file or the new one, never half of
one). A lock file keeps a second stand-in off the same directory. Scratch files (the task runs'
``s3://`` downloads) live in ``<state dir>/downloads``, emptied by each stand-in that takes the
directory: a killed one leaves nothing outside its state directory, and nothing there for long.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

STATE_FILE = "runs.json"
LOCK_FILE = "standin.lock"
DOWNLOADS = "downloads"
FORMAT = 1


class StateDirInUse(RuntimeError):
    """Another stand-in holds the state directory."""


class StateDir:
    """``runs.json`` in ``path`` (created if missing), held exclusively until :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._lock = (path / LOCK_FILE).open("a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "unknown"
            self._lock.close()
            raise StateDirInUse(
                f"The state directory {path} is in use by another Databricks stand-in "
                f"(pid {holder}): stop it, or give this one another --state-dir."
            ) from None
        self._lock.truncate(0)
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        shutil.rmtree(self.downloads, ignore_errors=True)  # a killed predecessor's leftovers
        self.downloads.mkdir()

    @property
    def downloads(self) -> Path:
        """Where task runs put their ``s3://`` downloads; empty when this stand-in starts."""
        return self.path / DOWNLOADS

    @property
    def file(self) -> Path:
        return self.path / STATE_FILE

    def load(self) -> dict[str, Any] | None:
        """What the last process saved, or None for a new directory."""
        try:
            saved = json.loads(self.file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as error:
            raise ValueError(
                f"{self.file} is not the stand-in's state ({error}): move it away to start "
                "with no runs (run ids then start again at 1001)."
            ) from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise ValueError(
                f"{self.file} is not in the state format {FORMAT} of this stand-in: move it away "
                "to start with no runs."
            )
        return saved

    def save(self, state: dict[str, Any]) -> None:
        temporary = self.path / f".{STATE_FILE}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps({"format": FORMAT, **state}), encoding="utf-8")
        os.replace(temporary, self.file)

    def close(self) -> None:
        self._lock.close()  # releases the lock
