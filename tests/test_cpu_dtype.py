"""The dtype choice per CPU kind (hart_edu.cpu_dtype), int8 linear layers (hart_edu.quantize)
and the recorded runs of docs/cpu (hart_edu.cpu_records), on the tiny architecture."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from hart_edu.cpu_dtype import CpuFeatures, choose_cpu_dtype, cpu_features
from hart_edu.cpu_records import RECORDS_FILE, comparison_line, load_records, markdown_table
from hart_edu.hybrid_tokenizer import HybridTokenizer
from hart_edu.profile import ARCHITECTURES, build_models, random_release_pipeline
from hart_edu.quantize import (Int8WeightLinear, is_int8_layer, materialise_random_int8, quantize_int8_,
                               weight_bytes)

AVX2 = CpuFeatures(model="AMD EPYC", capability="AVX2", cores=2, amx_bf16=False, avx512_bf16=False, fp16=False,
                   flags=("avx2",))
AMX = CpuFeatures(model="Xeon", capability="AVX512", cores=2, amx_bf16=True, avx512_bf16=True, fp16=True,
                  flags=("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_fp16"))
AVX512_NO_BF16 = CpuFeatures(model="Skylake", capability="AVX512", cores=4, amx_bf16=False, avx512_bf16=False,
                             fp16=False, flags=("avx2", "avx512f"))


# ---------------------------------------------------------------------------------- dtype


@pytest.mark.parametrize("cpu, dtype, kind", [(AVX2, torch.float32, "AVX2"), (AMX, torch.bfloat16, "AMX"),
                                              (AVX512_NO_BF16, torch.float32, "AVX512")])
def test_auto_is_bfloat16_only_where_it_is_native(cpu, dtype, kind):
    choice = choose_cpu_dtype("auto", cpu)
    assert choice.dtype == dtype and choice.warning is None and cpu.kind == kind
    assert choice.line().startswith(f"dtype {choice.name} (auto): ") and "\n" not in choice.line()


def test_an_explicit_dtype_is_obeyed_with_a_warning_where_slow():
    slow = choose_cpu_dtype("bfloat16", AVX2)
    assert slow.dtype == torch.bfloat16 and "slow on this CPU (AVX2" in slow.warning
    assert choose_cpu_dtype(torch.float16, AVX2).warning.startswith("float16 is slow")
    assert choose_cpu_dtype("float32", AVX2).warning is None
    assert choose_cpu_dtype("bfloat16", AMX).warning is None
    assert "would be faster" in choose_cpu_dtype("float32", AMX).warning  # obeyed, but says what auto does


def test_int8_runs_with_float32_activations():
    assert choose_cpu_dtype("auto", AMX, quantize="int8").dtype == torch.float32  # not bfloat16, and says why
    assert "int8" in choose_cpu_dtype("auto", AMX, quantize="int8").reason
    assert choose_cpu_dtype("float32", AMX, quantize="int8").warning is None
    with pytest.raises(ValueError, match="needs dtype float32, not bfloat16"):
        choose_cpu_dtype("bfloat16", AVX2, quantize="int8")
    with pytest.raises(ValueError, match="choose one of none, int8"):
        choose_cpu_dtype("auto", AVX2, quantize="int4")


def test_bad_dtype_names_are_refused():
    with pytest.raises(ValueError, match="use one of auto, float32, bfloat16, float16"):
        choose_cpu_dtype("fp32", AVX2)
    with pytest.raises(ValueError, match="not supported"):
        choose_cpu_dtype(torch.float64, AVX2)


def test_this_machine_is_described():
    cpu = cpu_features()
    assert cpu.capability == torch.backends.cpu.get_cpu_capability() and cpu.cores >= 1
    assert cpu.kind in cpu.describe() and set(cpu.as_dict()) >= {"kind", "torch capability", "native bfloat16"}
    assert choose_cpu_dtype("auto", cpu).dtype == (torch.bfloat16 if cpu.native_bf16 else torch.float32)


# ---------------------------------------------------------------------------------- int8


def test_int8_layers_are_close_to_float32_and_keep_the_head():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).eval()
    for p in model.parameters():
        nn.init.normal_(p, 0, 0.1, generator=g)
    x = torch.randn(16, 64, generator=g)
    ref = model(x).detach()
    summary = quantize_int8_(model, keep_float=("2",))
    assert summary.dynamic_layers == 1 and summary.kept_float == ["2"]
    assert is_int8_layer(model[0]) and isinstance(model[2], nn.Linear)
    out = model(x)
    err = (out - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.05  # changed (it is int8), but within a few percent of the largest output


def test_weight_only_layer_dequantizes_per_row():
    linear = nn.Linear(8, 4)
    with torch.no_grad():
        linear.weight.copy_(torch.arange(32.0).view(4, 8) - 10)
    q = Int8WeightLinear.from_float(linear)
    assert q.q_OI.dtype == torch.int8 and q.q_OI.abs().amax(1).tolist() == [127] * 4  # each row uses the range
    assert torch.allclose(q.weight, linear.weight, atol=linear.weight.abs().amax().item() / 254 + 1e-6)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(q(x), nn.functional.linear(x, q.weight, linear.bias))


def test_quantize_refuses_training_mode_and_half_weights():
    with pytest.raises(ValueError, match="model.eval"):
        quantize_int8_(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="float32 weights, got torch.bfloat16"):
        quantize_int8_(nn.Sequential(nn.Linear(4, 4)).to(torch.bfloat16).eval())


def test_random_int8_build_draws_the_float32_numbers_and_quantizes_them():
    arch = ARCHITECTURES["tiny"]
    ref = build_models(arch, torch.device("cpu"), torch.float32, 0)
    materialise = materialise_random_int8(skip=lambda m: isinstance(m, HybridTokenizer))
    q = build_models(arch, torch.device("cpu"), torch.float32, 0, materialise=materialise)
    ref_float = dict(ref.transformer.named_parameters())
    for name, p in q.transformer.named_parameters():  # the parameters left float: the same numbers
        assert torch.equal(p, ref_float[name]), name
    assert torch.equal(q.transformer.head.weight, ref.transformer.head.weight)  # kept float
    quantize_int8_(ref.transformer)  # quantizing the float32 build afterwards: the same int8 layers
    layers = [(a, b) for a, b in zip(ref.transformer.modules(), q.transformer.modules()) if is_int8_layer(a)]
    assert len(layers) == 29
    for a, b in layers:
        wa, wb = (m.weight() if callable(m.weight) else m.weight for m in (a, b))
        assert torch.equal(*(w.dequantize() if w.is_quantized else w for w in (wa, wb)))
    assert weight_bytes(q.transformer) < weight_bytes(build_models(arch, torch.device("cpu"), torch.float32,
                                                                   0).transformer)


def test_int8_pipeline_makes_an_image_close_to_float32_logits():
    kw = dict(seed=0, prompts=("a red cat",), dtype=torch.float32)
    f32 = random_release_pipeline("tiny", **kw)
    int8 = random_release_pipeline("tiny", quantize="int8", **kw)
    text_layers = [m for m in int8.text_encoder.model.modules() if is_int8_layer(m)]
    assert len(text_layers) == 14 and all(isinstance(m, Int8WeightLinear) for m in text_layers)  # weight-only
    assert sum(map(is_int8_layer, int8.transformer.modules())) == 29
    assert f32.kv_cache_dtype is None and int8.kv_cache_dtype == torch.bfloat16  # the KV cache in bfloat16 too
    out = int8(["a red cat"], seed=3, progress=False)
    assert out.image_B3HW.shape == (1, 3, 32, 32) and torch.isfinite(out.image_B3HW).all()
    a = f32.text_encoder(["a red cat"]).context_BTD
    b = int8.text_encoder(["a red cat"]).context_BTD
    assert 0 < (a - b).abs().max() < 0.1 * a.abs().max()
    with pytest.raises(ValueError, match="needs dtype float32"):
        random_release_pipeline("tiny", quantize="int8", dtype=torch.bfloat16)


def test_run_real_records_the_dtype_choice_and_int8(tmp_path, capsys):
    from hart_edu import cli

    path = tmp_path / "r.json"
    argv = ["run-real", "--random-weights", "--size", "tiny", "--threads", "1", "--quantize", "int8"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # torch.ao's deprecation is silenced where used
        assert cli.main([*argv, "--json", str(path)]) == 0
    captured = capsys.readouterr()
    assert "run-real: dtype float32 (auto): int8 layers" in captured.err
    assert "no recorded run of --size tiny" in captured.out
    extra = json.loads(path.read_text())["extra"]
    assert extra["quantize"] == "int8" and extra["int8 linear layers"] == {"text encoder": 14, "transformer": 29}
    assert extra["dtype choice"].startswith("dtype float32 (auto)") and extra["KV cache dtype"] == "bfloat16"
    assert extra["cpu features"]["kind"] == cpu_features().kind
    assert cli.main(["run-real", "--random-weights", "--size", "tiny", "--dtype", "bfloat16",
                     "--quantize", "int8"]) == 2
    assert "needs dtype float32" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- records


def _report(tmp_path, name, total, peak_gib, dtype="float32", quantize="none"):
    gib = 1024**3
    report = {"seconds": {"text encoder": 1.0, "transformer": total - 1}, "total_seconds": total,
              "peak_total_bytes": int(peak_gib * gib), "threads": 2, "dtype": dtype, "image_shape": [1, 3, 1024, 1024],
              "extra": {"quantize": quantize, "peak RSS while building (GiB)": 1.0,
                        "machine": {"cpu": "CPU " + name, "date": "2026-11-30T20:00:00+00:00"}}}
    (tmp_path / f"{name}.json").write_text(json.dumps(report))


def test_comparison_uses_the_closest_kind_and_the_same_setting(tmp_path):
    _report(tmp_path, "amx", 50.0, 5.0, dtype="bfloat16")
    _report(tmp_path, "avx2", 400.0, 9.0)
    _report(tmp_path, "avx2-int8", 200.0, 5.5, quantize="int8")
    index = tmp_path / "records.json"
    index.write_text(json.dumps({"runs": [{"kind": k, "size": "1024px", "file": f"{f}.json"} for k, f in
                                          (("AMX", "amx"), ("AVX2", "avx2"), ("AVX2", "avx2-int8"))]}))
    records = load_records(index)
    line = comparison_line(100.0, 5 * 1024**3, "AVX2", "1024px", "float32", "int8", records)
    assert "the same kind, AVX2 (CPU avx2-int8" in line and "x0.50" in line
    line = comparison_line(100.0, 5 * 1024**3, "AVX512", "1024px", "float32", "none", records)
    assert "closest kind to AVX512, AVX2 (CPU avx2, 2 threads, float32" in line and "x0.25" in line
    assert "AMX (CPU amx" in comparison_line(40.0, 1, "AVX-512 BF16", "1024px", "bfloat16", "none", records)
    assert "no recorded run of --size tiny" in comparison_line(1.0, 1, "AVX2", "tiny", "float32", "none", records)
    table = markdown_table(records).splitlines()
    assert len(table) == 5 and "| AVX2 | CPU avx2-int8 | " in table[4] and " | 2 | float32 + int8 |" in table[4] and "**200.0 s**" in table[4]


def test_memory_warning_before_a_setting_that_did_not_fit(tmp_path):
    """run-real warns, before building, when the closest kind's record of this setting peaked above
    the memory available now, and names the recorded setting with the lowest peak if it fits."""
    from hart_edu.cpu_records import memory_warning
    from hart_edu.memory import available_bytes

    _report(tmp_path, "avx2", 400.0, 9.0)
    _report(tmp_path, "avx2-int8", 200.0, 5.5, quantize="int8")
    index = tmp_path / "records.json"
    index.write_text(json.dumps({"runs": [{"kind": "AVX2", "size": "1024px", "file": f"{f}.json"}
                                          for f in ("avx2", "avx2-int8")]}))
    records = load_records(index)
    gib = 1024**3
    line = memory_warning("AVX2", "1024px", "float32", "none", 8 * gib, records)
    assert "peaked at 9.00 GiB" in line and "8.00 GiB available" in line and "--quantize int8 peaked at 5.50 GiB" in line
    assert "--quantize" not in memory_warning("AVX2", "1024px", "float32", "none", 5 * gib, records)  # nothing fits
    assert memory_warning("AVX2", "1024px", "float32", "none", 16 * gib, records) is None  # it fits
    assert memory_warning("AVX2", "1024px", "float32", "int8", None, records) is None  # unknown memory
    assert memory_warning("AVX2", "tiny", "float32", "none", 1, records) is None  # nothing recorded
    assert available_bytes() is None or available_bytes() > 0


def test_the_recorded_runs_load_and_the_readmes_quote_them():
    from hart_edu.paths import REPO_ROOT

    records = load_records(RECORDS_FILE)
    assert {r.kind for r in records} >= {"AMX", "AVX2"} and all(r.size == "1024px" for r in records)
    assert all(r.total_seconds > 0 and r.peak_bytes > 0 for r in records)
    rows = markdown_table(records).splitlines()
    for readme in (REPO_ROOT / "README.md", RECORDS_FILE.parent / "README.md"):
        text = readme.read_text(encoding="utf-8")
        missing = [row for row in rows if row not in text]
        assert not missing, f"{readme} does not quote (python -m hart_edu.cpu_records): {missing}"


# ---------------------------------------------------------------------------------- generate


def _generate(tmp_path, name, *flags):
    from hart_edu import cli

    out = tmp_path / name
    status = cli.main(["generate", "--prompt", "a red circle on a white background", "--out", str(out),
                       "--no-progress", *flags])
    return status, out


def test_generate_dtype_and_int8(tmp_path, capsys):
    native = cpu_features().native_bf16
    status, auto = _generate(tmp_path, "auto")
    assert status == 0
    err = capsys.readouterr().err
    assert f"generate: dtype {'bfloat16' if native else 'float32'} (auto): " in err
    status, f32 = _generate(tmp_path, "f32", "--dtype", "float32")
    assert status == 0
    if not native:  # auto is float32 here: the same bytes
        assert (auto / "000000.png").read_bytes() == (f32 / "000000.png").read_bytes()
    capsys.readouterr()
    status, int8 = _generate(tmp_path, "int8", "--quantize", "int8")
    assert status == 0 and "generate: dtype float32 (auto): int8 layers" in capsys.readouterr().err
    assert (int8 / "000000.png").read_bytes() != (f32 / "000000.png").read_bytes()  # int8 changes the image
    status, _ = _generate(tmp_path, "bad", "--quantize", "int8", "--dtype", "bfloat16")
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "needs dtype float32, not bfloat16" in err
    assert not (tmp_path / "bad").exists()


@pytest.mark.skipif(cpu_features().native_bf16, reason="bfloat16 is native on this CPU: no warning to see")
def test_generate_warns_when_the_dtype_is_slow_here(tmp_path, capsys):
    status, _ = _generate(tmp_path, "bf16", "--dtype", "bfloat16")
    assert status == 0 and "generate: warning: bfloat16 is slow on this CPU" in capsys.readouterr().err


def test_int8_of_a_loaded_pipeline_stores_the_kv_cache_in_bfloat16():
    """quantize_pipeline_int8_ (generate --quantize int8): the layers, and the cache's dtype. The
    cache alone in bfloat16 moves the context stage's logits (the same inputs in both runs) by
    rounding only."""
    from hart_edu.generation import generate
    from hart_edu.quantize import INT8_KV_CACHE_DTYPE, quantize_pipeline_int8_

    pipe = random_release_pipeline("tiny", seed=0, prompts=("a red cat",), dtype=torch.float32)
    text = pipe.text_encoder(["a red cat"])
    args = (pipe.tokenizer.quantizer, text.context_BTD, text.mask_BT, text.position_ids_BT)

    def raw_logits(p, kv_cache_dtype):
        out = generate(p.transformer, *args, generator=torch.Generator().manual_seed(0), capture=True,
                       kv_cache_dtype=kv_cache_dtype)
        return out.raw_logits

    f32 = raw_logits(pipe, None)
    compact = raw_logits(pipe, torch.bfloat16)  # the cache alone in bfloat16: float32 layers
    summary = quantize_pipeline_int8_(pipe)
    assert pipe.kv_cache_dtype == INT8_KV_CACHE_DTYPE == torch.bfloat16
    assert summary.line()
    a, b = f32[0], compact[0]  # later scales take sampled codes, which rounding may change
    assert 0 < (a - b).abs().max() < 0.05 * a.abs().max()
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        type(pipe)(pipe.text_encoder, pipe.transformer, pipe.tokenizer, kv_cache_dtype=torch.int8)
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        pipe.kv_cache_dtype = "bfloat16"  # a name, not a torch.dtype


def test_int8_while_loading_equals_int8_after_loading():
    """HARTPipeline.from_pretrained(quantize="int8") quantizes each model as it is loaded (the
    transformer before the text encoder is read): the same layers, cache dtype and image as
    loading in float32 and calling quantize_pipeline_int8_ afterwards."""
    from hart_edu.paths import TINY_WEIGHTS
    from hart_edu.quantize import quantize_pipeline_int8_
    from hart_edu.sampler import HARTPipeline

    while_loading = HARTPipeline.from_pretrained(TINY_WEIGHTS, quantize="int8")
    after = HARTPipeline.from_pretrained(TINY_WEIGHTS)
    quantize_pipeline_int8_(after)
    for a, b in ((while_loading.transformer, after.transformer),
                 (while_loading.text_encoder.model, after.text_encoder.model)):
        assert [type(m).__name__ for m in a.modules()] == [type(m).__name__ for m in b.modules()]
    assert while_loading.kv_cache_dtype == after.kv_cache_dtype == torch.bfloat16
    images = [p(["a red circle above a blue square"], seed=5, progress=False).image_B3HW
              for p in (while_loading, after)]
    assert torch.equal(*images)
    with pytest.raises(ValueError, match="needs dtype float32"):
        HARTPipeline.from_pretrained(TINY_WEIGHTS, dtype=torch.bfloat16, quantize="int8")


def test_int8_reads_a_bfloat16_text_encoder_as_stored_and_gets_the_same_layers(golden_dir, tmp_path):
    """Qwen2-VL ships bfloat16: under int8, from_pretrained reads such a text encoder in
    bfloat16 (half the loading memory) and quantizes each layer from its exact float32 value,
    so the pipeline equals loading everything in float32 and quantizing afterwards."""
    import warnings as _warnings

    from test_sampler import build_tiny_tree

    from hart_edu.quantize import quantize_pipeline_int8_
    from hart_edu.sampler import HARTPipeline
    from hart_edu.text_encoder import load_text_model, stored_float_dtypes

    tree = build_tiny_tree(golden_dir, tmp_path / "tree")
    text = tree / "text_encoder"
    assert stored_float_dtypes(text) == {torch.float32}
    load_text_model(text).to(torch.bfloat16).save_pretrained(text)  # stored as the released one is
    assert stored_float_dtypes(text) == {torch.bfloat16}
    assert stored_float_dtypes(tree / "llm") is None  # .bin files: unknown until loaded
    with _warnings.catch_warnings():
        _warnings.filterwarnings("ignore", message="the system prompt has")
        while_loading = HARTPipeline.from_pretrained(tree, quantize="int8")
        after = HARTPipeline.from_pretrained(tree)
    quantize_pipeline_int8_(after)
    a, b = while_loading.text_encoder.model, after.text_encoder.model
    assert {p.dtype for p in a.parameters()} == {torch.float32}
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with _warnings.catch_warnings():
        _warnings.filterwarnings("ignore", message="the system prompt has")
        images = [p(["w1 w2"], seed=2, progress=False).image_B3HW for p in (while_loading, after)]
    assert torch.equal(*images)
