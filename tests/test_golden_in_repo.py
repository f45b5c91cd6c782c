"""A plain clone runs the parity check: the golden fixtures are committed in tests/golden.

These tests read the in-repo copy only (never ``$HART_EDU_GOLDEN``), so they prove what a
learner's ``git clone`` gets, whatever fixture set the rest of the session was pointed at.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from hart_edu.paths import GOLDEN_IN_REPO, REPO_ROOT


def _sums() -> dict[str, str]:
    """``SHA256SUMS`` as {relative path: hex digest}."""
    lines = (GOLDEN_IN_REPO / "SHA256SUMS").read_text().splitlines()
    return {path.removeprefix("./"): digest for digest, path in (line.split(maxsplit=1) for line in lines)}


def test_in_repo_fixtures_match_their_checksums():
    sums = _sums()
    on_disk = {p.relative_to(GOLDEN_IN_REPO).as_posix() for p in GOLDEN_IN_REPO.rglob("*") if p.is_file()}
    assert on_disk - {"README.md", "SHA256SUMS"} == set(sums), "tests/golden and SHA256SUMS list other files"
    for rel, digest in sums.items():
        assert hashlib.sha256((GOLDEN_IN_REPO / rel).read_bytes()).hexdigest() == digest, f"{rel} changed"


def test_golden_dir_defaults_to_the_in_repo_copy(monkeypatch):
    from hart_edu.paths import golden_dir

    monkeypatch.delenv("HART_EDU_GOLDEN", raising=False)
    assert golden_dir() == GOLDEN_IN_REPO
    monkeypatch.setenv("HART_EDU_GOLDEN", "/elsewhere/golden")
    assert golden_dir() == Path("/elsewhere/golden")


def test_a_copy_with_nothing_beside_it_passes_parity(tmp_path):
    """Copy the package and tests/golden alone into an empty folder (no ``../shared``), unset
    ``HART_EDU_GOLDEN`` and run ``python -m hart_edu.parity tests/golden`` there: every golden
    tensor must match, computed by the copied package."""
    clone = tmp_path / "clone"
    for part in ("hart_edu", "tests/golden"):
        shutil.copytree(REPO_ROOT / part, clone / part, ignore=shutil.ignore_patterns("__pycache__"))
    assert not (clone.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k not in ("HART_EDU_GOLDEN", "PYTHONPATH")}
    env.update(PYTHONPATH=str(clone), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    where = subprocess.run([sys.executable, "-c", "import hart_edu, hart_edu.paths as p; "
                            "print(hart_edu.__file__); print(p.golden_dir())"],
                           cwd=clone, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert where == [str(clone / "hart_edu" / "__init__.py"), str(clone / "tests" / "golden")]
    run = subprocess.run([sys.executable, "-m", "hart_edu.parity", "tests/golden"],
                         cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    n = len(json.loads((GOLDEN_IN_REPO / "tiny-golden.json").read_text())["tensors"])
    assert run.stdout.strip().splitlines()[-1] == f"parity: {n}/{n} match, 0 not covered"


def test_required_fixtures_missing_fail_the_session(tmp_path):
    """``make test`` sets HART_EDU_REQUIRE_GOLDEN=1: a fixture folder without the files stops
    the pytest session with an error (exit 1), it does not skip the parity tests."""
    env = dict(os.environ, HART_EDU_GOLDEN=str(tmp_path), HART_EDU_REQUIRE_GOLDEN="1")
    test = "tests/test_golden_in_repo.py::test_golden_dir_defaults_to_the_in_repo_copy"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout[-2000:]
    assert "golden fixtures required" in run.stdout + run.stderr


def test_nothing_reads_a_folder_beside_the_repository():
    """No code, notebook cell, Makefile rule or CI script points outside the repository for data
    (the old ``../shared/golden`` default): a plain clone must have all it reads."""
    outside = re.compile(r"\.\./shared|shared/golden|parent\s*/\s*[\"']shared[\"']")
    files = [*REPO_ROOT.glob("hart_edu/**/*.py"), *REPO_ROOT.glob("kernels/**/*.py"),
             *REPO_ROOT.glob("tests/**/*.py"), REPO_ROOT / "Makefile", REPO_ROOT / ".ci" / "run"]
    found = []
    for path in files:
        if path.resolve() == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if outside.search(line):
                found.append(f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()}")
    for path in REPO_ROOT.glob("notebooks/*.ipynb"):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if outside.search("".join(cell["source"])):
                found.append(f"{path.relative_to(REPO_ROOT)} cell {i}")
    assert not found, "\n".join(found)
