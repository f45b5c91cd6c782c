"""The committed notebooks: clean outputs, and the per-notebook time limit of ``make test-nb``.

The notebooks are committed executed, so learners read their outputs without running them. An
output that shows a traceback, a warning, a progress bar, a path of the machine that ran it, an
empty figure or a "not there yet" fallback teaches the wrong thing, and nbval's lax mode compares
only the outputs of the cells marked ``# NBVAL_CHECK_OUTPUT`` (after notebooks/nbval_sanitize.cfg).
These tests read the committed files (no kernel); the time limit itself is enforced by
notebooks/conftest.py while nbval runs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hart_edu.paths import REPO_ROOT, display_path

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))

# (what is wrong, pattern) for every text output: stdout/stderr streams, text/plain, html, markdown
DEBRIS = [
    ("a traceback", re.compile(r"Traceback \(most recent call last\)|\x1b\[")),
    ("warning text", re.compile(r"\b[A-Z]?\w*Warning\b|warnings\.warn")),
    ("progress-bar debris", re.compile(r"\r|\d\s?(it/s|s/it)\b|\d+%\|")),
    ("an absolute path of the machine", re.compile(
        r"(?<![\w.~])/(work|home|tmp|root|Users|usr|opt|mnt|var)/|site-packages|\b[A-Z]:\\\\")),
    ("a fallback message", re.compile(
        r"not there yet|not (yet )?(found|available)|is missing|no such file|fall(ing)? ?back",
        re.IGNORECASE)),
    ("an empty figure", re.compile(r"<Figure size [\d.x]+ with 0 Axes>")),
]
TEXT_TYPES = ("text/plain", "text/html", "text/markdown")


def output_texts(output: dict) -> list[str]:
    """The text of one cell output (images are skipped)."""
    if output["output_type"] == "stream":
        return ["".join(output["text"])]
    if output["output_type"] == "error":
        return ["".join(output.get("traceback", [])) or output.get("ename", "")]
    return ["".join(output.get("data", {}).get(t, "")) for t in TEXT_TYPES]


def problems(notebook: dict) -> list[str]:
    """Every reason, one line each, why the committed outputs of ``notebook`` are not clean."""
    found = []
    code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    for i, cell in enumerate(code_cells):
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                found.append(f"code cell {i}: an error output ({output.get('ename')})")
            if output["output_type"] == "stream" and output["name"] == "stderr":
                found.append(f"code cell {i}: stderr output {''.join(output['text'])[:80]!r}")
            for text in output_texts(output):
                for what, pattern in DEBRIS:
                    if m := pattern.search(text):
                        found.append(f"code cell {i}: {what}: ...{text[max(0, m.start() - 40):m.end() + 40]!r}...")
    counts = [c.get("execution_count") for c in code_cells]
    if counts != list(range(1, len(code_cells) + 1)):
        found.append(f"not executed top to bottom in one fresh kernel: execution counts {counts}")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_outputs_are_clean(path):
    found = problems(json.loads(path.read_text()))
    assert not found, f"{path.name}:\n" + "\n".join(found)


def _notebook(*outputs_per_cell) -> dict:
    cells = [{"cell_type": "code", "execution_count": i + 1, "source": "", "metadata": {}, "outputs": list(outs)}
             for i, outs in enumerate(outputs_per_cell)]
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _stdout(text: str) -> dict:
    return {"output_type": "stream", "name": "stdout", "text": [text]}


@pytest.mark.parametrize("output, expected", [
    ({"output_type": "error", "ename": "ValueError", "evalue": "x", "traceback": ["ValueError: x"]}, "error output"),
    ({"output_type": "stream", "name": "stderr", "text": ["hello\n"]}, "stderr output"),
    (_stdout("Traceback (most recent call last):\n"), "a traceback"),
    (_stdout("x.py:3: UserWarning: careful\n"), "warning text"),
    (_stdout("TqdmWarning: IProgress not found\n"), "warning text"),
    (_stdout("encode: 100%|#####| 1/1 [00:03<00:00,  3.17s/it]"), "progress-bar debris"),
    (_stdout("step 3\rstep 4"), "progress-bar debris"),
    (_stdout("loading 26/26 [00:00, 6824.70it/s]"), "progress-bar debris"),
    (_stdout("weights: /work/main/weights/tiny\n"), "an absolute path"),
    (_stdout("cache: /root/.cache/hart_edu\n"), "an absolute path"),
    (_stdout("in .venv/lib/python3.11/site-packages/tqdm\n"), "an absolute path"),
    (_stdout("samples.png is not there yet: run the eval\n"), "a fallback message"),
    ({"output_type": "display_data", "metadata": {},
      "data": {"text/plain": ["<Figure size 640x480 with 0 Axes>"]}}, "an empty figure"),
])
def test_each_kind_of_debris_is_caught(output, expected):
    found = problems(_notebook([_stdout("fine\n")], [output]))
    assert len(found) >= 1 and all(line.startswith("code cell 1:") for line in found), found
    assert any(expected in line for line in found), found


def test_clean_outputs_pass_and_relative_paths_are_fine():
    clean = _notebook([_stdout("weights: weights/tiny\ncache: ~/.cache/hart_edu\n0.5 s per image, 3/4 right\n")],
                      [{"output_type": "display_data", "metadata": {},
                        "data": {"text/plain": ["<Figure size 640x480 with 2 Axes>"], "image/png": "iVBOR"}}])
    assert problems(clean) == []


def test_cells_executed_out_of_order_are_caught():
    nb = _notebook([_stdout("a\n")], [_stdout("b\n")])
    nb["cells"][1]["execution_count"] = 5
    assert any("execution counts [1, 5]" in line for line in problems(nb))


def test_display_path_hides_the_machine():
    assert display_path(REPO_ROOT / "weights" / "tiny") == "weights/tiny"
    assert display_path(Path.home() / ".cache" / "hart_edu") == "~/.cache/hart_edu"
    assert display_path("/some/other/place") == "/some/other/place"


def test_a_notebook_over_the_time_limit_fails_the_nbval_run(tmp_path):
    """notebooks/conftest.py under nbval: a notebook that sleeps 2 s, with a 1 s limit, fails
    the session (exit 1) and is named; the times are printed, and written to the JSON file that
    HART_EDU_NOTEBOOK_TIMES names (how course/notebook_times.json is made)."""
    import nbformat

    shutil.copy(REPO_ROOT / "notebooks" / "conftest.py", tmp_path / "conftest.py")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time\ntime.sleep(2)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "slow.ipynb")
    env = dict(os.environ, HART_EDU_NOTEBOOK_LIMIT_S="1", HART_EDU_NOTEBOOK_TIMES=str(tmp_path / "times.json"))
    run = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
                          "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert "notebook time limit of 1 s exceeded: slow.ipynb" in run.stdout
    assert re.search(r"\d+\.\d s  slow\.ipynb   OVER THE LIMIT", run.stdout)
    times = json.loads((tmp_path / "times.json").read_text())
    assert times["limit_s"] == 1 and times["seconds"]["slow.ipynb"] >= 2, times
    assert {"load_average", "python", "cpu"} <= set(times)


# --- nbval output checks: the cells marked `# NBVAL_CHECK_OUTPUT`, compared after the sanitize file ---

SANITIZE = REPO_ROOT / "notebooks" / "nbval_sanitize.cfg"
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


def checked_cells(notebook: dict) -> list[int]:
    """The code-cell indices (0-based) whose first line is the nbval output-check marker."""
    code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    return [i for i, c in enumerate(code_cells)
            if "".join(c["source"]).lstrip().startswith(CHECK_MARK)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_notebook_has_cells_whose_output_nbval_checks(path):
    nb = json.loads(path.read_text())
    marked = checked_cells(nb)
    assert marked, f"{path.name}: no code cell starts with {CHECK_MARK!r} (nbval would compare none of its outputs)"
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    empty = [i for i in marked if not code_cells[i].get("outputs")]
    assert not empty, f"{path.name}: code cells {empty} are marked but have no committed output to compare"


def _nbval_sanitize_patterns() -> list[tuple[str, str]]:
    from nbval.plugin import get_sanitize_patterns

    return get_sanitize_patterns(SANITIZE.read_text())


def test_make_test_nb_compares_the_marked_cells_through_the_sanitize_file():
    recipe = subprocess.run(["make", "-n", "test-nb"], capture_output=True, text=True, cwd=REPO_ROOT).stdout
    assert "--nbval-sanitize-with notebooks/nbval_sanitize.cfg" in recipe, recipe
    assert "--nbval-lax" in recipe   # lax: only the marked cells are compared
    assert len(_nbval_sanitize_patterns()) >= 4


@pytest.mark.parametrize("a, b", [
    ("encoded 128 images in 3 s", "encoded 128 images in 41.7 s"),
    ("eager 0.599 ms, triton 0.037 ms", "eager 1.2 ms, triton 0.1 ms"),
    ("peak memory 9.43 GiB (10.12 GB)", "peak memory 11.0 GiB (11.81 GB)"),
    ("weights: /work/main/weights/tiny", "weights: /home/someone/hart_edu/weights/tiny"),
    ("NVIDIA H200, 2026-11-30T20:45:39+00:00", "NVIDIA H200, 2027-01-02T08:00:00+00:00"),
    ("(load average before: 0.4)", "(load average before: 3.9)"),
])
def test_the_sanitize_file_hides_timings_memory_paths_and_dates(a, b):
    def sanitize(text):
        for regex, replace in _nbval_sanitize_patterns():
            text = re.sub(regex, replace, text)
        return text
    assert sanitize(a) == sanitize(b) != a


@pytest.mark.parametrize("text", ["image_B3HW (4, 3, 64, 64)", "20 steps of 32 scenes, 8 scales", "3.14M parameters",
                                  "max |difference| = 0.0e+00", "PASSED rms_norm: 6 cases"])
def test_the_sanitize_file_leaves_shapes_counts_and_numbers_alone(text):
    for regex, replace in _nbval_sanitize_patterns():
        text_after = re.sub(regex, replace, text)
        assert text_after == text, (regex, text_after)


def test_nbval_fails_a_marked_cell_whose_output_changed_and_ignores_timings(tmp_path):
    """A notebook under nbval with the sanitize file: a marked cell whose committed output is wrong
    fails; a marked cell that prints a different time passes (sanitized); an unmarked cell with a
    wrong committed output passes (lax)."""
    import nbformat

    def cell(source, committed):
        c = nbformat.v4.new_code_cell(source, execution_count=1)   # nbval refuses outputs of an unrun cell
        c.outputs = [nbformat.v4.new_output("stream", name="stdout", text=committed)]
        return c

    nb = nbformat.v4.new_notebook(cells=[
        cell(f"{CHECK_MARK}\nimport time\nprint(f'took {{time.perf_counter() % 7 + 1:.2f}} s')", "took 1.23 s\n"),
        cell(f"{CHECK_MARK}\nprint('shape', (4, 3, 64, 64))", "shape (4, 3, 64, 65)\n"),
        cell("print('not compared')", "something else\n"),
        cell(f"{CHECK_MARK}\nprint('shape', (4, 16, 8, 8))", "shape (4, 16, 8, 8)\n"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "marked.ipynb")
    run = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
                          "--nbval-sanitize-with", str(SANITIZE), "-rf", str(tmp_path / "marked.ipynb")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-3000:]
    assert "1 failed, 3 passed" in out, out[-3000:]
    assert re.search(r"FAILED .*Cell 1\b", out), out[-3000:]


def test_the_course_records_a_measured_time_for_every_notebook():
    """course/README.md points to course/notebook_times.json for the notebooks' run times: it must
    exist, name the CPU that ran them and hold every notebook, each under the limit."""
    record = json.loads((REPO_ROOT / "course" / "notebook_times.json").read_text(encoding="utf-8"))
    assert record["cpu"]["kind"] and record["limit_s"] == 90
    assert set(record["seconds"]) == {nb.name for nb in NOTEBOOKS}, "re-run: HART_EDU_NOTEBOOK_TIMES=... make test-nb"
    assert all(0 < s <= record["limit_s"] for s in record["seconds"].values())
