"""The course's exercises, checked both ways, and the learner copies ``make student`` writes.

For every exercise of every notebook: its solution (run in a fresh namespace, as the exercise
format requires) passes its checker; the learner's stub fails it with "not written yet"; and
a deliberately wrong answer (the solution's output nudged) fails it too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hart_edu.course import ExerciseFailed
from hart_edu.course import student as course_student
from hart_edu.paths import REPO_ROOT

NOTEBOOKS = course_student.notebook_paths()
ALL = [(path, ex) for path in NOTEBOOKS for ex in course_student.exercises(course_student.read_notebook(path), path.name)]
MIN_EXERCISES = 3


def _defined_functions(before: set[str], namespace: dict) -> list[str]:
    """The names of the functions an exercise cell defined."""
    names = [k for k, v in namespace.items() if k not in before and getattr(v, "__code__", None) is not None]
    assert names, "an exercise cell defines a function"
    return names


def _run(solution: str, check: str, wrap=None) -> None:
    namespace: dict = {"__name__": "__main__"}
    before = set(namespace) | {"__builtins__"}
    exec(compile(solution, "<exercise>", "exec"), namespace)
    if wrap is not None:
        for name in _defined_functions(before, namespace):
            namespace[name] = wrap(namespace[name])
    exec(compile(check, "<check>", "exec"), namespace)


def _nudge(value):
    """A wrong answer: every tensor of the output moved (floats by 0.5, integers by 1, booleans flipped)."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool:
            return ~value
        return value + (0.5 if value.is_floating_point() else 1)
    if isinstance(value, (tuple, list)):
        return type(value)(_nudge(v) for v in value) if not hasattr(value, "_fields") else type(value)(*map(_nudge, value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value + 0.5
    return value


def _wrong(fn):
    def wrong(*args, **kwargs):
        return _nudge(fn(*args, **kwargs))
    return wrong


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_at_least_three_coding_exercises(path):
    found = course_student.exercises(course_student.read_notebook(path), path.name)
    assert len(found) >= MIN_EXERCISES, f"{path.name} has {len(found)} exercises"


@pytest.mark.parametrize("path,ex", ALL, ids=[f"{p.stem}-{e.number}" for p, e in ALL])
def test_the_solution_passes_and_the_stub_and_a_wrong_answer_fail(path, ex, capsys):
    _run(ex.solution, ex.check)
    assert "PASSED" in capsys.readouterr().out
    with pytest.raises(ExerciseFailed, match="not written yet"):
        _run(course_student.stub(ex.solution, ex.number), ex.check)
    with pytest.raises(ExerciseFailed):
        _run(ex.solution, ex.check, wrap=_wrong)


def test_student_copies_keep_the_questions_and_lose_the_answers_solutions_and_outputs(tmp_path):
    nb = {"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "### Exercise 9.1: add one\nWrite it."},
        {"cell_type": "code", "metadata": {}, "execution_count": 3, "outputs": [{"output_type": "stream", "name": "stdout", "text": "x"}],
         "source": "def add_one(x):\n    y = x\n    # BEGIN SOLUTION\n    y = x + 1\n    # END SOLUTION\n    return y\n"},
        {"cell_type": "code", "metadata": {}, "execution_count": 4, "outputs": [], "source": "check_add_one(add_one)"},
        {"cell_type": "markdown", "metadata": {}, "source": "**Question 9.a** Why?\n<!-- BEGIN ANSWER -->\nBecause.\n<!-- END ANSWER -->\n"},
    ], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    folder = tmp_path / "notebooks"
    folder.mkdir()
    (folder / "09_x.ipynb").write_text(json.dumps(nb))
    written = course_student.write_student(tmp_path / "student", folder, tmp_path / "key.md")
    copy = json.loads(written[0].read_text())
    solution = copy["cells"][1]["source"]
    assert "x + 1" not in solution and 'raise NotImplementedError("Exercise 9.1' in solution
    assert solution.splitlines()[2] == '    raise NotImplementedError("Exercise 9.1: write this part")'
    assert copy["cells"][1]["outputs"] == [] and copy["cells"][1]["execution_count"] is None
    assert "Because" not in copy["cells"][3]["source"] and "Why?" in copy["cells"][3]["source"]
    key = (tmp_path / "key.md").read_text()
    assert "Because." in key and "y = x + 1" in key
    with pytest.raises(ValueError, match="must not be the notebooks folder"):
        course_student.write_student(folder, folder, tmp_path / "key.md")


@pytest.mark.parametrize("bad, message", [
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n", "never closed"),
    ("def f():\n    return 1\n    # END SOLUTION\n", "without"),
])
def test_broken_solution_markers_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        course_student.stub(bad, "9.9")


def test_the_committed_instructor_key_is_up_to_date():
    assert course_student.KEY.read_text(encoding="utf-8") == course_student.instructor_key(NOTEBOOKS), \
        "course/instructor_key.md is stale: run make student"


def test_make_student_writes_learner_copies_that_hold_no_solution(tmp_path):
    out = tmp_path / "student"
    key = tmp_path / "key.md"
    proc = subprocess.run([sys.executable, "-m", "hart_edu.course.student", "--out", str(out), "--key", str(key)],
                          capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    copies = sorted(out.glob("*.ipynb"))
    assert [p.name for p in copies] == [p.name for p in NOTEBOOKS]
    for path in copies:
        text = path.read_text()
        assert course_student.BEGIN_SOLUTION not in text and course_student.BEGIN_ANSWER not in text, path.name
        assert course_student.NBVAL_MARK not in text, path.name   # no outputs to compare in a learner copy


def test_make_lab_and_student_targets_exist():
    for target in ("student", "lab"):
        proc = subprocess.run(["make", "-n", target], capture_output=True, text=True, cwd=REPO_ROOT)
        assert proc.returncode == 0, proc.stderr
    assert "jupyter" in subprocess.run(["make", "-n", "lab"], capture_output=True, text=True, cwd=REPO_ROOT).stdout
