"""The time limit of the notebooks, for ``make test-nb`` (nbval runs every notebook here).

nbval turns each notebook into one test item per code cell; the kernel starts in the first
item's setup and stops in the last item's teardown. Summing the setup, call and teardown
durations of a notebook's items gives its whole run, kernel start included. A notebook over
``HART_EDU_NOTEBOOK_LIMIT_S`` seconds (default 90, the course's limit on 2 CPU cores) fails the
session; the table of every notebook's time is printed either way.
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest

LIMIT_S = float(os.environ.get("HART_EDU_NOTEBOOK_LIMIT_S", "90"))
_seconds: dict[str, float] = defaultdict(float)  # notebook path -> seconds so far


def notebook_of(nodeid: str) -> str | None:
    """``notebooks/05_sampler.ipynb`` for an nbval item ``notebooks/05_sampler.ipynb::Cell 3``."""
    path = nodeid.split("::", 1)[0]
    return path if path.endswith(".ipynb") else None


def over_limit(seconds: dict[str, float], limit_s: float) -> dict[str, float]:
    return {path: s for path, s in seconds.items() if s > limit_s}


_mpl_dir: str | None = None


def pytest_configure(config):
    """Matplotlib's font cache, built fresh in a folder of this session before any kernel starts.

    nbval compares the outputs of the cells marked ``# NBVAL_CHECK_OUTPUT``, stderr included. A
    kernel that finds no usable font cache writes to stderr in the first cell that draws text
    ("building the font cache", or "findfont: Font family ... not found" when the shared cache
    in ~/.cache/matplotlib lists the fonts of a virtual environment since deleted). The kernels
    inherit ``MPLCONFIGDIR`` from this process, which has built the cache there already."""
    global _mpl_dir
    if "MPLCONFIGDIR" in os.environ:
        return
    import tempfile

    _mpl_dir = tempfile.mkdtemp(prefix="hart_edu_matplotlib_")
    os.environ["MPLCONFIGDIR"] = _mpl_dir
    import matplotlib.font_manager  # noqa: F401  (builds the cache now, here)


def pytest_unconfigure(config):
    if _mpl_dir is not None:
        import shutil

        shutil.rmtree(_mpl_dir, ignore_errors=True)


def pytest_runtest_logreport(report):
    path = notebook_of(report.nodeid)
    if path is not None:
        _seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    terminalreporter.section(f"notebook times (limit {LIMIT_S:g} s each; load average {load})")
    for path, s in sorted(_seconds.items()):
        terminalreporter.write_line(f"{s:7.1f} s  {path}" + ("   OVER THE LIMIT" if s > LIMIT_S else ""))


def write_times(path: str, seconds: dict[str, float]) -> None:
    import json
    import platform

    from hart_edu.cpu_dtype import cpu_features

    record = {"limit_s": LIMIT_S, "load_average": list(os.getloadavg()), "python": platform.python_version(),
              "cpu": cpu_features().as_dict(),
              "seconds": {os.path.basename(p): round(s, 1) for p, s in sorted(seconds.items())}}
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=1) + "\n")


def pytest_sessionfinish(session, exitstatus):
    if _seconds and os.environ.get("HART_EDU_NOTEBOOK_TIMES"):
        write_times(os.environ["HART_EDU_NOTEBOOK_TIMES"], _seconds)
    slow = over_limit(_seconds, LIMIT_S)
    if slow:
        listing = "; ".join(f"{p} {s:.1f} s" for p, s in sorted(slow.items()))
        writer = session.config.get_terminal_writer()
        writer.line()
        writer.line(f"notebook time limit of {LIMIT_S:g} s exceeded: {listing}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
