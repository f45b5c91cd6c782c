"""Learner copies of the notebooks, and the instructor's answer key.

    python -m hart_edu.course.student --out student          # what ``make student`` runs

The committed notebooks are the instructor's: every exercise has its solution between
``# BEGIN SOLUTION`` / ``# END SOLUTION`` lines, every conceptual question its answer between
``<!-- BEGIN ANSWER -->`` / ``<!-- END ANSWER -->`` lines (the format is described in
:mod:`hart_edu.course`). A learner copy

* replaces each solution by ``raise NotImplementedError("Exercise N.k")`` at the same indentation,
* drops each answer (the question stays),
* drops the ``# NBVAL_CHECK_OUTPUT`` lines (they tell ``make test-nb`` which committed outputs to
  compare; a learner copy has none),
* and has no outputs: the learner runs it.

The answers go to the instructor key, a markdown file (``course/instructor_key.md``), one
section per notebook with every question and its answer, and the solution of every exercise.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

from hart_edu.paths import REPO_ROOT, display_path

NOTEBOOKS = REPO_ROOT / "notebooks"
KEY = REPO_ROOT / "course" / "instructor_key.md"

BEGIN_SOLUTION, END_SOLUTION = "# BEGIN SOLUTION", "# END SOLUTION"
BEGIN_ANSWER, END_ANSWER = "<!-- BEGIN ANSWER -->", "<!-- END ANSWER -->"
NBVAL_MARK = "# NBVAL_CHECK_OUTPUT"
EXERCISE_TITLE = re.compile(r"^###\s+Exercise\s+(\d+\.\d+)\s*:?\s*(.*)$", re.MULTILINE)
QUESTION = re.compile(r"\*\*Question\s+([\w.]+)\*\*")


class Exercise(NamedTuple):
    """One exercise of a notebook: its number ("1.2"), title and the sources of its cells."""

    number: str
    title: str
    task: str  # the markdown cell
    solution: str  # the code cell with the function and its solution markers
    check: str  # the code cell that calls the checker


class Question(NamedTuple):
    number: str
    question: str  # the markdown without the answer
    answer: str


def source(cell: dict[str, Any]) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def read_notebook(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def exercises(nb: dict[str, Any], where: str = "notebook") -> list[Exercise]:
    """Every exercise of a notebook: a ``### Exercise N.k`` markdown cell, then the solution
    cell, then the check cell. A malformed exercise raises ValueError naming it."""
    cells = nb["cells"]
    found = []
    for i, cell in enumerate(cells):
        match = EXERCISE_TITLE.search(source(cell)) if cell["cell_type"] == "markdown" else None
        if match is None:
            continue
        number = match.group(1)
        if i + 2 >= len(cells) or cells[i + 1]["cell_type"] != "code" or cells[i + 2]["cell_type"] != "code":
            raise ValueError(f"{where}: exercise {number} needs a solution cell and a check cell after its task")
        solution, check = source(cells[i + 1]), source(cells[i + 2])
        if BEGIN_SOLUTION not in solution or END_SOLUTION not in solution:
            raise ValueError(f"{where}: exercise {number}'s cell has no {BEGIN_SOLUTION!r} ... {END_SOLUTION!r} lines")
        if "check_" not in check:
            raise ValueError(f"{where}: exercise {number}'s next cell calls no check_* function")
        found.append(Exercise(number, match.group(2).strip(), source(cell), solution, check))
    return found


def stub(solution: str, number: str) -> str:
    """The solution cell with every marked block replaced by ``raise NotImplementedError``."""
    out, inside = [], False
    for line in solution.splitlines(keepends=True):
        stripped = line.strip()
        if stripped == BEGIN_SOLUTION:
            if inside:
                raise ValueError(f"exercise {number}: {BEGIN_SOLUTION!r} twice without {END_SOLUTION!r}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f'{indent}raise NotImplementedError("Exercise {number}: write this part")\n')
        elif stripped == END_SOLUTION:
            if not inside:
                raise ValueError(f"exercise {number}: {END_SOLUTION!r} without {BEGIN_SOLUTION!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"exercise {number}: {BEGIN_SOLUTION!r} is never closed")
    return "".join(out)


def split_answer(markdown: str) -> tuple[str, str]:
    """(the markdown without its answer block, the answer) of a question cell."""
    if BEGIN_ANSWER not in markdown:
        return markdown, ""
    head, rest = markdown.split(BEGIN_ANSWER, 1)
    if END_ANSWER not in rest:
        raise ValueError(f"an answer starts with {BEGIN_ANSWER!r} but has no {END_ANSWER!r}")
    answer, tail = rest.split(END_ANSWER, 1)
    return (head.rstrip() + "\n" + tail.lstrip()).rstrip() + "\n", answer.strip()


def questions(nb: dict[str, Any]) -> list[Question]:
    found = []
    for cell in nb["cells"]:
        text = source(cell)
        match = QUESTION.search(text) if cell["cell_type"] == "markdown" else None
        if match is not None:
            question, answer = split_answer(text)
            found.append(Question(match.group(1), question.strip(), answer))
    return found


def student_copy(nb: dict[str, Any], where: str = "notebook") -> dict[str, Any]:
    """The learner's copy of a notebook (see the module docstring)."""
    out = copy.deepcopy(nb)
    numbers = {ex.solution: ex.number for ex in exercises(nb, where)}
    for cell in out["cells"]:
        text = source(cell)
        if cell["cell_type"] == "code":
            if text in numbers:
                text = stub(text, numbers[text])
            text = "".join(line for line in text.splitlines(keepends=True) if line.strip() != NBVAL_MARK)
            cell["outputs"], cell["execution_count"] = [], None
        elif cell["cell_type"] == "markdown":
            text, _ = split_answer(text)
        cell["source"] = text
    return out


def instructor_key(paths: list[Path]) -> str:
    """The answer key of the given notebooks, as markdown."""
    L = ["# Instructor key", "",
         "Written by `python -m hart_edu.course.student` (`make student`) from the notebooks: every "
         "conceptual question with its answer, and every exercise's solution. Do not edit by hand.", ""]
    for path in paths:
        nb = read_notebook(path)
        L += [f"## {path.stem}", ""]
        for q in questions(nb):
            L += [q.question, "", f"> **Answer.** {q.answer}" if q.answer else "> (no answer written)", ""]
        for ex in exercises(nb, path.name):
            L += [f"**Exercise {ex.number}: {ex.title}**", "", "```python", ex.solution.rstrip(), "```", ""]
    return "\n".join(L).rstrip() + "\n"


def notebook_paths(folder: Path = NOTEBOOKS) -> list[Path]:
    return sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))


def write_student(out: Path, folder: Path = NOTEBOOKS, key: Path = KEY) -> list[Path]:
    """Learner copies of every notebook into ``out`` (created; existing copies are replaced) and
    the instructor key into ``key``; returns the written notebooks."""
    paths = notebook_paths(folder)
    if not paths:
        raise FileNotFoundError(f"no notebooks (NN_name.ipynb) in {display_path(folder)}")
    if out.resolve() == Path(folder).resolve():
        raise ValueError("--out must not be the notebooks folder itself (the solutions would be lost)")
    copies = {path: student_copy(read_notebook(path), path.name) for path in paths}  # all checked first
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, nb in copies.items():
        target = out / path.name
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(target)
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text(instructor_key(paths), encoding="utf-8")
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hart_edu.course.student", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("student"), help="where the learner copies go (default: student/)")
    p.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="the instructor notebooks (default: notebooks/)")
    p.add_argument("--key", type=Path, default=KEY, help="the instructor key (default: course/instructor_key.md)")
    args = p.parse_args(argv)
    try:
        written = write_student(args.out, args.notebooks, args.key)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} learner notebooks to {display_path(args.out)}/ and the key to {display_path(args.key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
