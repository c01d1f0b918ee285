"""runs/session.py: a run's final status, a pure function of its outcome and its tasks."""

from __future__ import annotations

from dataclasses import dataclass

from plait.core.graph import CANCELLED, DONE, FAILED, SKIPPED
from plait.runs.result import TaskRecord
from plait.runs.session import final_status


@dataclass(frozen=True)
class Concluded:
    answer: str | None = None
    error: str | None = None


def record(task_id: int, status: str, error: str | None = None) -> TaskRecord:
    return TaskRecord(task_id, "search", {}, status, error=error)


def test_a_question_answered_is_done_whatever_its_tasks_did() -> None:
    tasks = [record(1, FAILED, "boom"), record(2, SKIPPED)]
    assert final_status(Concluded("42"), tasks, written=False) == (DONE, None)


def test_a_question_without_an_answer_fails_with_the_loops_reason() -> None:
    got = final_status(Concluded(error="invalid plan: x"), [record(1, DONE)], written=False)
    assert got == (FAILED, "invalid plan: x")


def test_a_written_plan_whose_tasks_all_succeeded_is_done() -> None:
    assert final_status(Concluded("7"), [record(1, DONE), record(2, DONE)], written=True) == (
        DONE,
        None,
    )


def test_a_written_plan_names_its_first_failed_task_even_after_a_skipped_one() -> None:
    tasks = [record(1, DONE), record(2, SKIPPED), record(3, FAILED, "no route"), record(4, FAILED)]
    got = final_status(Concluded(), tasks, written=True)
    assert got == (FAILED, "task 3 (search) failed: no route")


def test_a_written_plan_with_a_failed_task_fails_even_with_an_answer() -> None:
    got = final_status(Concluded("7"), [record(1, FAILED, "x"), record(2, DONE)], written=True)
    assert got == (FAILED, "task 1 (search) failed: x")


def test_a_written_plan_with_only_a_skipped_task_names_it() -> None:
    got = final_status(Concluded(), [record(1, DONE), record(2, SKIPPED, "input")], written=True)
    assert got == (FAILED, "task 2 (search) skipped: input")


def test_a_written_plan_without_an_answer_names_the_task_that_did_not_finish() -> None:
    got = final_status(Concluded(), [record(1, DONE), record(2, CANCELLED, "edit")], written=True)
    assert got == (FAILED, "task 2 (search) cancelled: edit")


def test_a_written_plan_with_no_answer_and_nothing_to_blame_still_fails_with_a_reason() -> None:
    assert final_status(Concluded(), [record(1, DONE)], written=True) == (FAILED, "no answer")
