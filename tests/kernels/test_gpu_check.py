"""The CPU-side parts of ``make gpu-check`` (kernels/gpu_check.py): it refuses without a GPU, its
steps are the ones the README's GPU rows need, and its records are written from (fake) results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hart_edu.kernels import bench, gpu_check
from hart_edu.paths import REPO_ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is what happens without a GPU")
def test_refuses_in_one_line_with_status_2_without_a_gpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "hart_edu.kernels.gpu_check", "--out", str(tmp_path / "gpu")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1
    assert "needs a CUDA GPU" in proc.stderr
    assert not (tmp_path / "gpu").exists()


def test_the_plan_runs_what_the_gpu_rows_need_within_ten_minutes():
    steps = gpu_check.plan(Path("docs/gpu"), "NVIDIA H200", python="python")
    commands = [" ".join(s.command) for s in steps]
    assert "pytest tests/kernels" in commands[0] and "--ignore=tests/kernels/test_compile.py" in commands[0]
    assert "hart_edu.parity tests/golden --backend triton --device cuda" in commands[1]
    assert "hart_edu.kernels.bench --json docs/gpu/bench-h200.json" in commands[2]
    assert "profile --size 1024px" in commands[3] and "--batch-sizes 1,8" in commands[3]
    assert sum(s.limit_s for s in steps) <= gpu_check.BUDGET_S == 600
    assert (REPO_ROOT / "tests" / "golden").is_dir()  # what the parity step reads travels with the tree


def test_gpu_slug():
    assert gpu_check.gpu_slug("NVIDIA H200") == "h200"
    assert gpu_check.gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"


def test_run_steps_keeps_outputs_exit_status_and_stops_at_the_limit(tmp_path):
    py = sys.executable
    steps = [gpu_check.Step("golden parity, Triton backend", [py, "-c", "print('table'); print('parity: 3/3 match, 0 not covered')"],
                            30, ["parity.txt"]),
             gpu_check.Step("kernel benchmark", [py, "-c", "import sys; print('device: fake'); sys.exit(3)"], 30, []),
             gpu_check.Step("profile 1024px, batch 1 and 8", [py, "-c", "import time; time.sleep(30)"], 1, ["p.txt"])]
    gpu_check.run_steps(steps, tmp_path, budget_s=60)
    assert [s.returncode for s in steps] == [0, 3, 124]
    assert steps[0].summary == "parity: 3/3 match, 0 not covered"
    assert (tmp_path / "parity.txt").read_text().startswith("table\n")
    assert "timed out" in (tmp_path / "p.txt").read_text()


def fake_bench() -> dict:
    peaks = bench.Peaks(4800.0, "fake", 66.9, "fake")
    case = bench.Case("swiglu fwd (train seq, L=9750)", lambda: None, lambda: None, bytes_moved=2_400_000_000)
    result = bench.CaseResult(case, {"eager": bench.rates(case, 1.0, peaks),
                                     "torch.compile": bench.Timing(status="skipped (--no-compile)"),
                                     "liger": bench.Timing(status="not installed"),
                                     "triton": bench.rates(case, 0.625, peaks)})
    return bench.to_json([result], "NVIDIA H200", "bfloat16", peaks, bench.BenchSizes(), date="2026-12-01")


def fake_profile() -> dict:
    phases = ["text encoding", "scale 64x64", "VAE decode"]
    results = [{"backend": b, "batch": n, "phases_ms": {p: 10.0 * (i + 1) * n for i, p in enumerate(phases)},
                "total_ms": 60.0 * n, "images_per_s": 1000 / 60.0, "triton_launches": None}
               for n in (1, 8) for b in ("reference", "triton")]
    return {"tool": "hart-edu profile", "device": "NVIDIA H200", "dtype": "bfloat16", "phases": phases,
            "results": results}


def test_records_and_the_gpu_figures_tables_from_fake_results(tmp_path):
    out = Path("docs") / "gpu"
    (tmp_path / out).mkdir(parents=True)
    (tmp_path / out / "bench-h200.json").write_text(json.dumps(fake_bench()))
    (tmp_path / out / "profile-h200-1024px.json").write_text(json.dumps(fake_profile()))
    figures = tmp_path / "docs" / "gpu_figures.md"
    figures.write_text(f"# GPU figures\n\n{gpu_check.FIGURES_BEGIN}\nstill to be measured\n{gpu_check.FIGURES_END}\n\nafter\n")
    steps = gpu_check.plan(out, "NVIDIA H200", python="python")
    for s, rc in zip(steps, (0, 0, 0, 1)):
        s.returncode, s.seconds, s.summary = rc, 12.0, f"summary of {s.name}"
    written = gpu_check.write_records(steps, "NVIDIA H200", tmp_path, out, date="2026-12-01T00:00:00+00:00")
    record = json.loads((tmp_path / out / "gpu-check-h200.json").read_text())
    assert record["ok"] is False and [s["returncode"] for s in record["steps"]] == [0, 0, 0, 1]
    text = figures.read_text()
    assert "still to be measured" not in text and text.endswith("\n\nafter\n")
    assert "NOT every step passed" in text
    assert "| swiglu fwd (train seq, L=9750) | 1.000 | - | - | 0.625 | 3,840 (80%) | met |" in text
    assert "| **total** | 60.00 | 60.00 | 480.00 | 480.00 |" in text
    assert len(written) == 2


def test_the_repository_gpu_figures_page_has_the_markers():
    text = (REPO_ROOT / "docs" / "gpu_figures.md").read_text()
    assert gpu_check.FIGURES_BEGIN in text and gpu_check.FIGURES_END in text
    assert "make gpu-check" in text


def test_the_planned_profile_command_parses_with_the_real_cli():
    """The profile step's flags are the hart-edu CLI's own (a renamed flag fails here, not on the GPU day)."""
    from hart_edu.cli import build_parser

    step = gpu_check.plan(Path("docs/gpu"), "NVIDIA H200", python="python")[3]
    args = build_parser().parse_args(step.command[3:])  # after: python -m hart_edu
    assert (args.size, args.batch_sizes, args.backends) == ("1024px", "1,8", "reference,triton")
    assert args.json == Path("docs/gpu/profile-h200-1024px.json")
