"""The parity producers read every call argument from the fixture's descriptions: a fixture
recorded with other arguments is replayed with those arguments (no constant of the runner's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from golden_fixtures import needs_golden
from hart_edu.parity import Golden, run_parity
from hart_edu.parity.arguments import quoted_argument, shared_argument


def test_quoted_argument_reads_the_named_call_only():
    desc = "f(a, cfg=4.5, more_smooth=False, final_stage=0 (on), k='8') then g(z, cfg=3.6); diff_cfg=9"
    assert quoted_argument(desc, "cfg", float, call="f") == 4.5
    assert quoted_argument(desc, "cfg", float, call="g") == 3.6
    assert quoted_argument(desc, "more_smooth", bool) is False
    assert quoted_argument(desc, "final_stage", int) == 0
    assert quoted_argument(desc, "k", str) == "8"
    with pytest.raises(ValueError, match="values"):  # two different cfg outside a call
        quoted_argument(desc, "cfg", float)
    with pytest.raises(ValueError, match="no value"):
        quoted_argument(desc, "temperature", float, call="f")
    with pytest.raises(ValueError, match="no call h"):
        quoted_argument(desc, "cfg", float, call="h")


def test_shared_argument_skips_silent_descriptions_but_not_conflicts():
    descs = ["f(cfg=2.0, n=3)", "f(cfg=2.0)", "the second output of the same call"]
    assert shared_argument(descs, "cfg", float, "f") == 2.0
    assert shared_argument(descs, "n", int, "f") == 3
    assert shared_argument(descs, "top_k", int, "f", required=False) is None
    with pytest.raises(ValueError, match="no value"):
        shared_argument(descs, "top_k", int, "f")
    with pytest.raises(ValueError, match="2 different values"):
        shared_argument([*descs, "f(cfg=1.0)"], "cfg", float, "f")
    with pytest.raises(ValueError, match="True or False"):
        shared_argument(["f(flag=maybe)"], "flag", bool, "f")


# Every call argument the diffusion producer reads, replaced in the fixture's descriptions.
OTHER_ARGUMENTS = {
    "diff.net_forward_with_cfg": [("cfg_scale=4.5", "cfg_scale=2.0")],
    "diff.p_sample_cfg.": [("cfg_scale=4.5", "cfg_scale=2.0"), ("temperature=1.0", "temperature=0.7")],
    "diff.p_sample_nocfg.": [("temperature=0.8", "temperature=0.5")],
    "diff.sample.": [("cfg=4.5", "cfg=3.0"), ("temperature=1.0", "temperature=0.7")],
    "sched.gen8.": [("timestep_respacing='8'", "timestep_respacing='6'")],
}


def _fixture_with_other_arguments(golden_dir: Path, tmp_path: Path) -> Path:
    """A copy of the golden folder whose descriptions quote OTHER_ARGUMENTS (tensors linked)."""
    meta = json.loads((golden_dir / "tiny-golden.json").read_text())
    replaced = 0
    for name, spec in meta["tensors"].items():
        for prefix, swaps in OTHER_ARGUMENTS.items():
            if name.startswith(prefix):
                for old, new in swaps:
                    replaced += old in spec["desc"]
                    spec["desc"] = spec["desc"].replace(old, new)
    assert replaced >= 20  # the swaps did land (the fixture quotes these arguments)
    (tmp_path / "tiny-golden.json").write_text(json.dumps(meta))
    for name in ("tiny-golden.safetensors", "tiny-official"):
        (tmp_path / name).symlink_to(golden_dir / name)
    return tmp_path


@needs_golden
@torch.no_grad()
def test_a_fixture_made_with_other_arguments_is_replayed_with_them(golden_dir, tmp_path):
    from hart_edu.parity.diffusion import load_head, produce
    from hart_edu.diffusion_schedule import DiffusionSchedule, cosine_betas

    golden = Golden.load(_fixture_with_other_arguments(golden_dir, tmp_path))
    out = produce(golden)
    head = load_head(golden)
    t = golden.tensors
    x_t, noise = t["diff.p_sample.x_t"], t["diff.p_sample.noise"]

    expected = {
        "diff.net_forward_with_cfg": head.net.forward_with_cfg(t["diff.x"], t["diff.t"], t["diff.c_cfg"], 2.0),
        "diff.p_sample_cfg.pmv_mean": head.p_mean_variance(x_t, t["diff.p_sample_cfg.t"], t["diff.c_cfg"],
                                                           cfg_scale=2.0).mean,
        "diff.p_sample_cfg.sample": head.p_sample(x_t, t["diff.p_sample_cfg.t"], t["diff.c_cfg"], cfg_scale=2.0,
                                                  temperature=0.7, noise=noise).sample,
        "diff.p_sample_nocfg.sample": head.p_sample(x_t, t["diff.p_sample_nocfg.t"], t["diff.c"],
                                                    temperature=0.5, noise=noise).sample,
        "diff.sample.out": head.sample(t["diff.sample.z"], cfg=3.0, temperature=0.7,
                                       noises=[t[f"diff.sample.noise.{k}"] for k in range(5)]).tokens_NC,
        "sched.gen8.betas": DiffusionSchedule.respaced(cosine_betas(head.config.training_steps), "6").betas,
    }
    for name, tensor in expected.items():
        torch.testing.assert_close(out[name], tensor, rtol=0, atol=0, msg=name)
        assert out[name].shape != t[name].shape or not torch.allclose(out[name], t[name]), name  # took effect

    # The runner itself does not fail: the changed calls are reported as mismatches, not errors.
    checks, errors = run_parity(tmp_path, [("residual diffusion", "hart_edu.parity.diffusion:produce")])
    assert errors == []
    status = {c.name: c.status for c in checks}
    assert status["diff.sample.out"] == "MISMATCH" and status["diff.net_forward"] == "match"


@needs_golden
def test_transformer_runs_take_their_settings_from_the_descriptions(golden_dir):
    from hart_edu.parity.transformer import _settings

    golden = Golden.load(golden_dir)
    descs = [golden.specs[n]["desc"] for n in golden.names("t2i.ema.final0.")]
    settings = _settings("t2i.ema.final0", descs)
    assert (settings.cfg, settings.more_smooth, settings.num_maskgit_iters, settings.residual) == (4.5, False, 1, True)
    other = [d.replace("cfg=4.5", "cfg=2.5").replace("num_maskgit_iters=1", "num_maskgit_iters=3")
             .replace("temperature=1.0", "temperature=0.9") for d in descs]
    settings = _settings("t2i.ema.final0", other)
    assert (settings.cfg, settings.num_maskgit_iters, settings.diffusion_temperature) == (2.5, 3, 0.9)
    assert _settings("t2i.ema.final0", [d.replace("cfg=3.6", "cfg=1.0") for d in descs]).cfg == 4.5  # inner call
    with pytest.raises(ValueError, match="greedy"):
        _settings("t2i.ema.final0", [d.replace("greedy", "sampled") for d in descs])
