"""The local stack deletes only a run directory it created (``DEMO_RUN_DIR=.`` must not wipe the
checkout): ``up`` marks the directories it makes and refuses any other non-empty one."""

from __future__ import annotations

from pathlib import Path

import pytest

from local import services
from local.stack import StackError
from local.stack import up as stack_up
from local.stack.state import RUN_DIR_MARKER, fresh_run_dir


def _sentinel(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    sentinel = directory / "precious.txt"
    sentinel.write_text("not the stack's")
    return sentinel


def test_up_refuses_a_directory_it_did_not_create_and_leaves_it_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel = _sentinel(tmp_path / "checkout")
    monkeypatch.chdir(tmp_path / "checkout")  # DEMO_RUN_DIR=. from inside a checkout
    options = stack_up.Options(run_dir=Path("."), api_port=services.free_port())
    with pytest.raises(StackError) as raised:
        stack_up.up(options, log=lambda line: None)
    message = str(raised.value)
    assert str(tmp_path / "checkout") in message and RUN_DIR_MARKER in message
    assert "DEMO_RUN_DIR" in message and "--run-dir" in message  # the fix
    assert sentinel.read_text() == "not the stack's"
    assert sorted(p.name for p in (tmp_path / "checkout").iterdir()) == ["precious.txt"]


def test_a_directory_the_stack_created_is_emptied_and_marked_again(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fresh_run_dir(run_dir)  # the first up: created, with the marker
    assert [p.name for p in run_dir.iterdir()] == [RUN_DIR_MARKER]
    leftover = _sentinel(run_dir / "logs")  # what the last stack left
    fresh_run_dir(run_dir)
    assert not leftover.exists()
    assert [p.name for p in run_dir.iterdir()] == [RUN_DIR_MARKER]


def test_a_missing_or_empty_directory_is_used_and_marked(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for run_dir in (tmp_path / "new" / "run", empty):
        fresh_run_dir(run_dir)
        assert (run_dir / RUN_DIR_MARKER).is_file()


def test_a_file_as_run_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.write_text("x")
    with pytest.raises(StackError, match="is a file"):
        fresh_run_dir(path)
    assert path.read_text() == "x"
