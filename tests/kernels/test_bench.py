"""The benchmark: a clear message and exit status 0 without a GPU; its cases run (untimed) and
agree; the accounting (bytes, FLOPs, GB/s, TFLOP/s, fraction of peak, targets) and the JSON
record are checked with a stand-in timer, so they are tested on the CPU too."""

from __future__ import annotations

import json

import pytest
import torch
from hart_edu.kernels import bench

TINY = bench.BenchSizes(batch=2, embed_dim=16, num_heads=2, mlp_hidden=24, context_tokens=3,
                        patch_nums=(1, 2, 3), vocab_size=40, vae_channels=16, images_quantised=1,
                        diffusion_width=24)
PEAKS = bench.Peaks(1000.0, "test", 10.0, "test")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without a CUDA device")
def test_cpu_prints_that_a_gpu_is_needed(capsys, tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "needs a CUDA GPU" in printed and "nothing was timed" in printed and "GB/s" not in printed
    assert not out.exists()  # nothing measured, nothing recorded


def test_released_sizes():
    sizes = bench.BenchSizes()
    assert sizes.train_tokens == 300 + 9450 and sizes.last_stage_tokens == 4096


def test_cases_run_and_agree_at_tiny_sizes(device):
    """Each case once, untimed, at tiny sizes: the benchmark code paths work and compare like for like."""
    cases = bench.make_cases(TINY, device, torch.float32, torch.Generator().manual_seed(0))
    assert len(cases) == 10
    for case in cases:
        assert case.bytes_moved > 0 and case.bound in ("memory", "compute")
        assert case.liger is None and case.liger_note  # no Liger table given: every entry says why
        ref, tri = case.reference(), case.triton()
        if ref is not None:  # forward cases return outputs; fwd+bwd cases return None
            if not isinstance(ref, torch.Tensor):  # a named tuple of outputs
                ref, tri = [torch.cat([t.flatten().float() for t in out if t is not None]) for out in (ref, tri)]
            torch.testing.assert_close(tri, ref, rtol=1e-4, atol=1e-4, msg=lambda m, n=case.name: f"{n}: {m}")


def test_bytes_and_flops_accounting(device):
    """The least traffic of each operation: inputs read once, outputs written once."""
    cases = {}
    for c in bench.make_cases(TINY, device, torch.bfloat16, torch.Generator().manual_seed(0)):
        cases.setdefault(c.name.split(" (")[0], c)  # the first of a kind: the training-sequence size
    B, L, C, F = TINY.batch, TINY.train_tokens, TINY.embed_dim, TINY.mlp_hidden
    assert cases["rmsnorm_modulate fwd"].bytes_moved == 2 * B * L * C * 2  # read x, write y (bf16)
    assert cases["rmsnorm_modulate fwd+bwd"].bytes_moved == 5 * B * L * C * 2  # + read g, x; write dx
    assert cases["swiglu fwd"].bytes_moved == 3 * B * L * F * 2  # read a, b; write y
    assert cases["swiglu fwd+bwd"].bytes_moved == 8 * B * L * F * 2  # + read g, a, b; write da, db
    assert cases["rope 2-D q+k"].bytes_moved == 4 * B * L * C * 2 + B * L * 2 * 4  # q, k in and out; positions
    Nd, W = B * TINY.last_stage_tokens, TINY.diffusion_width
    assert cases["layernorm_modulate fwd"].bytes_moved == 4 * Nd * W * 2  # x, scale, shift in; y out
    nc = cases["nearest_code fp32"]
    rows = sum(p * p for p in TINY.patch_nums)
    assert nc.bound == "compute" and nc.flops == 2 * rows * TINY.vocab_size * TINY.vae_channels
    l, V = TINY.last_stage_tokens, TINY.vocab_size  # the pipeline's sampling step: logits, noise, filtered, codes
    assert cases["cfg_sample top-k 300 multinomial"].bytes_moved == (B * l * V + 2 * (B // 2) * l * V) * 4 + l * 8


def test_rates_and_fraction_of_peak():
    memory = bench.Case("m", lambda: None, lambda: None, bytes_moved=2_000_000_000)
    t = bench.rates(memory, 4.0, PEAKS)  # 2 GB in 4 ms = 500 GB/s = 50% of 1000 GB/s
    assert t.gbs == pytest.approx(500.0) and t.fraction_of_peak == pytest.approx(0.5) and t.tflops is None
    compute = bench.Case("c", lambda: None, lambda: None, bytes_moved=1, flops=3 * 10**12, bound="compute")
    t = bench.rates(compute, 1000.0, PEAKS)  # 3 TFLOP in 1 s = 3 TFLOP/s = 30% of 10
    assert t.tflops == pytest.approx(3.0) and t.fraction_of_peak == pytest.approx(0.3)
    assert bench.rates(memory, 4.0, bench.Peaks(None, "not reported", None, "unknown")).fraction_of_peak is None
    with pytest.raises(ValueError, match="positive"):
        bench.rates(memory, 0.0, PEAKS)


def test_datasheet_peaks_by_name():
    assert bench.datasheet_fp32_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(66.9)
    assert bench.datasheet_fp32_tflops("NVIDIA H100 PCIe") == pytest.approx(51.2)  # not the SXM figure
    assert bench.datasheet_fp32_tflops("Some Future GPU") is None


def fake_timer(times: dict[str, float]):
    """A stand-in for do_bench: runs the function once (so it must work) and returns the
    time given for the implementation it belongs to."""
    def bench_fn(fn, grad_to_none=None):
        fn()
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        return times[fn.impl]
    return bench_fn


def labelled(fn, impl: str):
    """``fn`` as a new function object carrying which implementation it is (for fake_timer)."""
    def call():
        return fn()
    call.impl = impl
    return call


def tag(cases: list[bench.Case], impl_of_reference: str) -> None:
    for case in cases:
        for attr, impl in (("reference", impl_of_reference), ("triton", "triton"), ("liger", "liger")):
            fn = getattr(case, attr)
            if fn is not None:
                setattr(case, attr, labelled(fn, impl))


def test_measure_targets_and_json_record(device, tmp_path):
    """The whole reporting path with a stand-in timer: every case has every implementation,
    Liger says why it is absent, the targets follow the numbers, the JSON has the GPU and date."""
    eager = bench.make_cases(TINY, device, torch.float32, torch.Generator().manual_seed(0))
    compiled = bench.make_cases(TINY, device, torch.float32, torch.Generator().manual_seed(0))
    tag(eager, "eager")
    tag(compiled, "torch.compile")
    results = bench.measure(eager, compiled, fake_timer({"eager": 4.0, "torch.compile": 2.0, "triton": 2.5}), PEAKS)
    assert [r.case.name for r in results] == [c.name for c in eager]
    for r in results:
        assert list(r.timings) == list(bench.IMPLEMENTATIONS)
        assert r.timings["liger"].ms is None and r.timings["liger"].status
        expected = "-" if r.case.bound == "compute" else "missed"
        assert r.target().startswith(expected), (r.case.name, r.target())
        if r.case.bound == "memory":
            assert "slower than torch.compile" in r.target()

    table = bench.format_table(results, "Test GPU", "float32", PEAKS)
    assert "Test GPU" in table and "GB/s" in table and "TFLOP/s" in table and "x triton time" in table

    out = tmp_path / "bench.json"
    bench.write_json(out, bench.to_json(results, "Test GPU", "float32", PEAKS, TINY))
    data = json.loads(out.read_text())
    assert data["gpu"] == "Test GPU" and data["date"][:4].isdigit() and data["dtype"] == "float32"
    assert len(data["cases"]) == len(results)
    first = data["cases"][0]["implementations"]
    assert first["eager"]["ms"] == 4.0 and first["triton"]["ms"] == 2.5 and first["liger"]["ms"] is None
    assert first["triton"]["gbs"] == pytest.approx(results[0].case.bytes_moved / 2.5e-3 / 1e9)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed


def test_targets_met_when_fast_enough():
    case = bench.Case("m", lambda: None, lambda: None, bytes_moved=900_000_000)  # 0.9 GB
    result = bench.CaseResult(case, {"eager": bench.rates(case, 3.0, PEAKS), "triton": bench.rates(case, 1.0, PEAKS),
                                     "torch.compile": bench.rates(case, 1.2, PEAKS),
                                     "liger": bench.Timing(status="not installed")})
    assert result.target() == "met"  # 900 GB/s = 90% of peak, faster than torch.compile
    slow = bench.CaseResult(case, {"triton": bench.rates(case, 1.5, PEAKS)})  # 60%
    assert slow.target() == "missed (60% of peak < 80%)"


def test_failed_compile_is_recorded_not_replaced(device):
    eager = bench.make_cases(TINY, device, torch.float32, torch.Generator().manual_seed(0))[:1]
    compiled = bench.make_cases(TINY, device, torch.float32, torch.Generator().manual_seed(0))[:1]
    tag(eager, "eager")

    def broken():
        raise RuntimeError("no compiler\nsecond line")
    compiled[0].reference = broken
    results = bench.measure(eager, compiled, fake_timer({"eager": 1.0, "triton": 1.0}), PEAKS)
    t = results[0].timings["torch.compile"]
    assert t.ms is None and t.status == "failed: RuntimeError: no compiler"


def test_liger_column_says_not_installed_or_runs(device):
    liger, why = bench.liger_functions()
    if liger is None:
        assert why.startswith("not installed")
        cases = bench.make_cases(TINY, device, torch.float32, torch.Generator().manual_seed(0), liger_missing=why)
        assert {c.liger_note for c in cases if "swiglu" in c.name or "rope 1-D" in c.name} == {why}
    else:  # pragma: no cover - Liger needs a GPU
        assert set(liger) == {"swiglu", "rope"}


def test_compile_wraps_each_reference_once_outside_the_timed_call(device):
    """``compile_reference`` (torch.compile) is applied when the cases are made, once per case: a
    timed call that compiled again would time torch.compile's own overhead, not the kernel."""
    wrapped = []

    def counting_compile(fn):
        wrapped.append(fn)
        return fn

    cases = bench.make_cases(TINY, device, torch.float32, torch.Generator().manual_seed(0), counting_compile)
    assert len(wrapped) == len(cases)
    for case in cases:
        case.reference()
    assert len(wrapped) == len(cases)  # calling the references compiled nothing more
