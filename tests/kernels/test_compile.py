"""Every Triton kernel variant the dispatchers launch, compiled for sm_80 and sm_90 without a GPU,
and held to the resource limits at the released model's shapes (kernels/resources.py).

The launches are captured from the dispatchers themselves in a child process running Triton's
interpreter; the compilation runs in a child process without it. Triton's cache (and the
ptxas figures cached beside it) make a second run take seconds; the first compiles about
300 kernels (minutes on two cores).
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
import time

import pytest

from hart_edu.kernels import resources

pytest.importorskip("triton")


@functools.lru_cache(maxsize=1)
def measured() -> tuple[dict, float]:
    start = time.perf_counter()
    data = resources.measure()
    seconds = time.perf_counter() - start
    return resources.build_report(data, seconds), seconds


def kernel_modules() -> list[str]:
    import hart_edu.kernels as package

    skip = {"backend", "bench", "resources", "gpu_check", "_triton"}
    return [m.name for m in pkgutil.iter_modules(package.__path__) if m.name not in skip]


def test_every_variant_compiles_for_sm80_and_sm90():
    report, seconds = measured()
    errors = [r for r in report["rows"] if r["error"]]
    assert not errors, "\n".join(f"{r['family']} {r['variant']} sm_{r['target']}: {r['error']}" for r in errors)
    assert report["targets"] == [80, 90]
    print(f"compiled {report['compiled_kernels']} kernels from {report['launches']} launches in {seconds:.1f} s")


def test_every_launched_kernel_of_every_module_is_covered_at_both_models_shapes():
    """Each kernel module's launched @jit kernels (names ending in _kernel) appear in the capture,
    for the released model and for the tiny one."""
    report, _ = measured()
    seen = {(r["family"], r["kernel"], r["model"]) for r in report["rows"]}
    for name in kernel_modules():
        module = importlib.import_module(f"hart_edu.kernels.{name}")
        kernels = [k for k, v in vars(module).items() if k.endswith("_kernel") and hasattr(v, "fn")]
        assert kernels, f"{name}: no kernel found"
        for kernel in kernels:
            for model in (resources.RELEASED, resources.TINY):
                assert (name, kernel, model) in seen, f"{name}.{kernel} was never launched at the {model} shapes"


def test_cfg_sample_every_switch_combination_is_compiled():
    report, _ = measured()
    switches = {json.dumps(r["constexprs"], sort_keys=True) for r in report["rows"]
                if r["family"] == "cfg_sample" and r["model"] == resources.RELEASED}
    combos = {tuple(json.loads(s)[k] for k in ("DRAW", "TOP_K", "TOP_P", "KEEP_GUIDED", "KEEP_FILTERED"))
              for s in switches}
    assert len(combos) == 32


def test_the_registers_read_from_ptxas_are_those_of_the_cubin_triton_built():
    report, _ = measured()
    mismatched = [(r["family"], r["kernel"], r["variant"], r["target"]) for r in report["rows"]
                  if not r["error"] and r["registers"] != r["cubin_registers"]]
    assert not mismatched, mismatched


def test_no_spills_and_enough_resident_warps_at_the_released_shapes():
    report, _ = measured()
    assert report["violations"] == [], "\n".join(report["violations"])


def test_the_committed_report_is_the_one_these_kernels_compile_to():
    """docs/kernel_resources.json (and the README table made from it) match a fresh compile:
    after changing a kernel, run python -m hart_edu.kernels.resources --write."""
    from hart_edu.paths import REPO_ROOT

    committed = json.loads((REPO_ROOT / resources.REPORT_STEM).with_suffix(".json").read_text())
    fresh, _ = measured()
    figures = lambda rep: sorted((r["family"], r["kernel"], r["variant"], r["model"], r["target"], r.get("registers"),
                                  r.get("spill_stores"), r.get("shared"), r.get("num_warps"), r["bytes_moved"])
                                 for r in rep["rows"])
    assert figures(committed) == figures(fresh), \
        "docs/kernel_resources.json is stale: run python -m hart_edu.kernels.resources --write"
