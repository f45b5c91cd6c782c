"""Parity producer for the residual diffusion head: every ``diff.*`` and ``sched.*`` tensor.

The head is built from the primary tiny transformer's config.json (``embed_dim``,
``diff_width``, ``diff_depth``, ``num_sampling_steps``) and the tokenizer's ``z_channels``
(Cvae), and loaded strictly from the ``diffloss.*`` keys of the EMA file, as sample.py
uses the EMA weights. The call arguments below (guidance scale, temperatures) are the
ones the fixture's descriptions state; every size comes from the config or the inputs.
"""

from __future__ import annotations

import dataclasses

import torch

from hart_edu.checkpoint import load_weight_file, read_config
from hart_edu.parity import Golden
from hart_edu.residual_diffusion import (
    DiffusionHeadConfig,
    DiffusionSchedule,
    ResidualDiffusion,
    cosine_betas,
    strip_prefix,
)

CFG_SCALE = 4.5  # diff.net_forward_with_cfg, diff.p_sample_cfg.*, diff.sample.*
NOCFG_TEMPERATURE = 0.8  # diff.p_sample_nocfg.*
SCHEDULE_ARRAYS = (
    "timestep_map",
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
)
# sched.gen8.*: the released num_sampling_steps, which is the official class default.
RELEASED_STEPS = next(f.default for f in dataclasses.fields(DiffusionHeadConfig) if f.name == "num_sampling_steps")


def load_head(golden: Golden) -> ResidualDiffusion:
    """The EMA diffusion head of the primary tiny transformer (``llm/``)."""
    llm = golden.official("llm")
    config = read_config(llm, "hart_transformer_t2i")
    token_channels = read_config(golden.official("tokenizer"), "hart_autoencoder_with_disc")["z_channels"]
    state = strip_prefix(load_weight_file(llm / "ema_model.bin"), "diffloss.")
    return ResidualDiffusion.from_official(config, token_channels, state, source=f"{llm}/ema_model.bin")


def _schedule_tensors(prefix: str, schedule: DiffusionSchedule) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{name}": getattr(schedule, name) for name in SCHEDULE_ARRAYS}


@torch.no_grad()
def produce(golden: Golden) -> dict[str, torch.Tensor]:
    head = load_head(golden)
    out: dict[str, torch.Tensor] = {}

    # Schedules: the 1000-step training one, the config's respaced one, the released one.
    base_betas = cosine_betas(head.config.training_steps)
    out["sched.train.betas"] = head.train_schedule.betas
    out["sched.train.alphas_cumprod"] = head.train_schedule.alphas_cumprod
    out.update(_schedule_tensors("sched.gen", head.gen_schedule))
    out.update(_schedule_tensors("sched.gen8", DiffusionSchedule.respaced(base_betas, RELEASED_STEPS)))

    # The network alone (t on the original 1000-step scale).
    x, t, c, c_cfg = (golden.input(n) for n in ("diff.x", "diff.t", "diff.c", "diff.c_cfg"))
    out["diff.net_forward"] = head.net(x, t, c)
    out["diff.net_forward_with_cfg"] = head.net.forward_with_cfg(x, t, c_cfg, CFG_SCALE)

    # One guided step: p_mean_variance and p_sample with the stored noise.
    x_t, noise = golden.input("diff.p_sample.x_t"), golden.input("diff.p_sample.noise")
    t_cfg = golden.input("diff.p_sample_cfg.t")
    pmv = head.p_mean_variance(x_t, t_cfg, c_cfg, cfg_scale=CFG_SCALE)
    for field in ("mean", "variance", "log_variance", "pred_xstart"):
        out[f"diff.p_sample_cfg.pmv_{field}"] = getattr(pmv, field)
    step = head.p_sample(x_t, t_cfg, c_cfg, cfg_scale=CFG_SCALE, temperature=1.0, noise=noise)
    out["diff.p_sample_cfg.sample"] = step.sample
    out["diff.p_sample_cfg.pred_xstart"] = step.pred_xstart

    # One unguided step with mixed per-row t and temperature 0.8.
    t_mixed = golden.input("diff.p_sample_nocfg.t")
    step = head.p_sample(x_t, t_mixed, c, temperature=NOCFG_TEMPERATURE, noise=noise)
    out["diff.p_sample_nocfg.sample"] = step.sample
    out["diff.p_sample_nocfg.pred_xstart"] = step.pred_xstart

    # The full guided sampling loop, replaying the recorded draws in order.
    prefix = "diff.sample.noise."
    names = sorted(golden.names(prefix), key=lambda n: int(n[len(prefix):]))
    noises = [golden.input(n) for n in names]
    result = head.sample(golden.input("diff.sample.z"), cfg=CFG_SCALE, temperature=1.0, noises=noises)
    out["diff.sample.out"] = result.tokens_NC
    return out
