"""The accounting of kernels/resources.py on made-up compiler figures: occupancy, floors, limits,
and the generated tables (the compile itself: test_compile.py)."""

from __future__ import annotations

import json

import pytest

from hart_edu.kernels import resources
from hart_edu.kernels.resources import SM_LIMITS, occupancy


@pytest.mark.parametrize("cc", [80, 90])
def test_occupancy_by_registers(cc):
    # 255 registers -> 8160 per warp -> 8192 allocated -> 8 warps fit the 65,536-register file
    assert occupancy(255, 4, 0, SM_LIMITS[cc]) == {"blocks": 2, "warps": 8, "limited_by": "registers",
                                                   "warps_by_registers": 8}
    # 128 registers -> 4096 per warp -> 16 warps: 4 blocks of 4 warps
    assert occupancy(128, 4, 0, SM_LIMITS[cc])["warps"] == 16
    # 32 registers: the 64-warp limit binds before the register file (64 warps x 1024 = 65,536)
    got = occupancy(32, 4, 0, SM_LIMITS[cc])
    assert (got["warps"], got["limited_by"]) == (64, "registers") or got["warps"] == 64
    # 129 registers round up to 136 -> 4352 per warp -> 15 warps -> 3 blocks of 4 (12 warps)
    assert occupancy(129, 4, 0, SM_LIMITS[cc])["warps"] == 12


def test_occupancy_by_shared_memory_differs_between_sm80_and_sm90():
    shared = 64 * 1024
    assert occupancy(32, 4, shared, SM_LIMITS[80]) == {"blocks": 2, "warps": 8, "limited_by": "shared memory",
                                                       "warps_by_registers": 64}
    assert occupancy(32, 4, shared, SM_LIMITS[90])["blocks"] == 3


def fake_data() -> dict:
    """Two launches of one kernel (released, tiny) and one compute-bound, compiled for two targets."""
    def launch(family, variant, model, kernel, moved, block):
        return {"family": family, "variant": variant, "model": model, "kernel": f"hart_edu.kernels.{family}:{kernel}",
                "arguments": {"x_ptr": {"tensor": "bfloat16", "aligned": True}, "N": 4096, "BLOCK": block},
                "options": {}, "grid": [8], "bytes_moved": moved, "constexprs": ["BLOCK"]}

    launches = [launch("swiglu", "bfloat16", resources.RELEASED, "_forward_kernel", 3_350_000, 4096),
                launch("swiglu", "bfloat16", resources.TINY, "_forward_kernel", 1000, 1024),
                launch("nearest_code", "float32", resources.RELEASED, "_nearest_code_kernel", 4_800_000, 64)]
    keys = [resources.Launch(**x).key() for x in launches]
    regs = {keys[0]: 200, keys[1]: 40, keys[2]: 250}
    compiled = [{"launch_key": k, "target": cc, "arch": f"sm_{cc}", "name": "k", "num_warps": 4, "num_stages": 3,
                 "registers": regs[k], "spill_stores": 8 if (k == keys[0] and cc == 90) else 0, "spill_loads": 0,
                 "stack_frame": 0, "shared": 0, "cubin_registers": regs[k], "seconds": 0.1, "error": ""}
                for k in keys for cc in (80, 90)]
    return {"launches": launches, "compiled": compiled}


def test_floors_are_bytes_over_the_stated_bandwidths():
    rows = resources.rows(fake_data())
    r = next(r for r in rows if r["model"] == resources.RELEASED and r["family"] == "swiglu")
    assert r["floor_us"]["H100 SXM"] == pytest.approx(1.0)  # 3.35 MB at 3.35 TB/s
    assert r["floor_us"]["H200"] == pytest.approx(3.35e6 / 4.8e12 * 1e6)
    assert all(src for _, src in resources.HBM_BANDWIDTH.values())


def test_violations_name_spills_and_register_bound_memory_kernels_at_released_shapes_only():
    found = resources.violations(resources.rows(fake_data()))
    # the released swiglu: 200 registers x 4 warps -> 8 warps on both targets, and a spill on sm_90;
    # the tiny launch (40 registers) and the compute-bound nearest_code (250) are not held to it
    assert len(found) == 3, found
    assert sum("spills 8 B" in v for v in found) == 1
    assert all("swiglu" in v and "released" in v for v in found)


def test_compile_errors_are_violations_at_any_shapes():
    data = fake_data()
    data["compiled"][2] = {"launch_key": data["compiled"][2]["launch_key"], "target": 80, "error": "boom"}
    found = resources.violations(resources.rows(data))
    assert any("compile error: boom" in v and "tiny" in v for v in found)


def test_report_markdown_and_readme_block(tmp_path):
    report = resources.build_report(fake_data(), 1.0)
    summary = resources.to_markdown_summary(report)
    assert "`swiglu._forward_kernel`" in summary and "H200 floor" in summary
    (tmp_path / "README.md").write_text(f"intro\n{resources.README_BEGIN}\nold\n{resources.README_END}\noutro\n")
    written = resources.write_report(report, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("intro\n") and readme.endswith("outro\n") and "old" not in readme
    assert summary in readme
    assert json.loads((tmp_path / "docs" / "kernel_resources.json").read_text())["violations"] == report["violations"]
    assert len(written) == 3


def test_the_readme_shows_the_committed_report():
    """The README's kernels section embeds the summary generated from docs/kernel_resources.json."""
    from hart_edu.paths import REPO_ROOT

    report = json.loads((REPO_ROOT / resources.REPORT_STEM).with_suffix(".json").read_text())
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"{resources.README_BEGIN}\n{resources.to_markdown_summary(report)}\n{resources.README_END}" in readme
