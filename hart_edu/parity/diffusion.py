"""Parity producer for the residual diffusion head: every ``diff.*`` and ``sched.*`` tensor.

The head is built from the primary tiny transformer's config.json (``embed_dim``,
``diff_width``, ``diff_depth``, ``num_sampling_steps``) and the tokenizer's ``z_channels``
(Cvae), and loaded strictly from the ``diffloss.*`` keys of the EMA file, as sample.py
uses the EMA weights. Every call argument (guidance scale, temperature, the extra
schedule's respacing) is read from the description of the tensor that call made
(:mod:`hart_edu.parity.arguments`); every size comes from the config or the inputs, and
the schedule arrays compared are the ones the fixture names.
"""

from __future__ import annotations

import torch

from hart_edu.checkpoint import load_weight_file, read_config
from hart_edu.parity import Golden
from hart_edu.parity.arguments import shared_argument
from hart_edu.diffusion_schedule import DiffusionSchedule, cosine_betas
from hart_edu.residual_diffusion import ResidualDiffusion, strip_prefix


def _argument(golden: Golden, names: list[str], key: str, kind, call: str):
    """The ``key=`` argument of ``call(...)``, as the descriptions of ``names`` quote it."""
    return shared_argument((golden.specs[n]["desc"] for n in names), key, kind, call)


def load_head(golden: Golden) -> ResidualDiffusion:
    """The EMA diffusion head of the primary tiny transformer (``llm/``)."""
    llm = golden.official("llm")
    config = read_config(llm, "hart_transformer_t2i")
    token_channels = read_config(golden.official("tokenizer"), "hart_autoencoder_with_disc")["z_channels"]
    state = strip_prefix(load_weight_file(llm / "ema_model.bin"), "diffloss.")
    return ResidualDiffusion.from_official(config, token_channels, state, source=f"{llm}/ema_model.bin")


@torch.no_grad()
def produce(golden: Golden) -> dict[str, torch.Tensor]:
    head = load_head(golden).to(golden.device)
    out: dict[str, torch.Tensor] = {}

    # Schedules, by the fixture's groups sched.<group>.<array>: "train" the 1000-step training
    # one, "gen" the config's respaced one, any other the respacing its descriptions quote.
    groups: dict[str, list[str]] = {}
    for name in golden.names("sched."):
        groups.setdefault(name.split(".")[1], []).append(name)
    for group, names in groups.items():
        if group == "train":
            schedule = head.train_schedule
        elif group == "gen":
            schedule = head.gen_schedule
        else:
            steps = _argument(golden, names, "timestep_respacing", str, "create_diffusion")
            schedule = DiffusionSchedule.respaced(cosine_betas(head.config.training_steps), steps)
        for name in names:
            out[name] = getattr(schedule, name.split(".", 2)[2])

    # The network alone (t on the original 1000-step scale).
    x, t, c, c_cfg = (golden.input(n) for n in ("diff.x", "diff.t", "diff.c", "diff.c_cfg"))
    out["diff.net_forward"] = head.net(x, t, c)
    cfg_scale = _argument(golden, ["diff.net_forward_with_cfg"], "cfg_scale", float, "forward_with_cfg")
    out["diff.net_forward_with_cfg"] = head.net.forward_with_cfg(x, t, c_cfg, cfg_scale)

    # One guided step: p_mean_variance and p_sample with the stored noise.
    x_t, noise = golden.input("diff.p_sample.x_t"), golden.input("diff.p_sample.noise")
    t_cfg = golden.input("diff.p_sample_cfg.t")
    pmv_names = golden.names("diff.p_sample_cfg.pmv_")
    cfg_scale = _argument(golden, pmv_names, "cfg_scale", float, "p_mean_variance")
    pmv = head.p_mean_variance(x_t, t_cfg, c_cfg, cfg_scale=cfg_scale)
    for name in pmv_names:
        out[name] = getattr(pmv, name.removeprefix("diff.p_sample_cfg.pmv_"))
    called = ["diff.p_sample_cfg.sample"]
    step = head.p_sample(x_t, t_cfg, c_cfg, cfg_scale=_argument(golden, called, "cfg_scale", float, "p_sample"),
                         temperature=_argument(golden, called, "temperature", float, "p_sample"), noise=noise)
    out["diff.p_sample_cfg.sample"] = step.sample
    out["diff.p_sample_cfg.pred_xstart"] = step.pred_xstart

    # One unguided step with mixed per-row t.
    t_mixed = golden.input("diff.p_sample_nocfg.t")
    temperature = _argument(golden, ["diff.p_sample_nocfg.sample"], "temperature", float, "p_sample")
    step = head.p_sample(x_t, t_mixed, c, temperature=temperature, noise=noise)
    out["diff.p_sample_nocfg.sample"] = step.sample
    out["diff.p_sample_nocfg.pred_xstart"] = step.pred_xstart

    # The full guided sampling loop, replaying the recorded draws in order.
    prefix = "diff.sample.noise."
    names = sorted(golden.names(prefix), key=lambda n: int(n[len(prefix):]))
    noises = [golden.input(n) for n in names]
    called = ["diff.sample.out"]
    result = head.sample(golden.input("diff.sample.z"), noises=noises,
                         cfg=_argument(golden, called, "cfg", float, "diffloss.sample"),
                         temperature=_argument(golden, called, "temperature", float, "diffloss.sample"))
    out["diff.sample.out"] = result.tokens_NC
    return out
