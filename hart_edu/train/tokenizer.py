"""Train a tiny hybrid tokenizer on the captioned scenes, on a CPU, in minutes.

    python -m hart_edu.train.tokenizer --steps 2000                       # phase 1
    python -m hart_edu.train.tokenizer --steps 3500 --resume \
        --freeze-encoder --discrete-every 0                                # phase 2

What one step does (the HART tokenizer recipe, shrunk):

1. encode a batch of 64x64 scenes to ``f`` and quantize it over the scales;
2. decode the hybrid latent (discrete + continuous residual), or, every
   ``--discrete-every``-th step, the discrete one alone, so one decoder serves both (HART's decoder must render
   the transformer's discrete-only output as well as the hybrid one);
3. loss = MSE(reconstruction, image) + VQ loss (codebook + beta * commitment, over scales);
4. every ``--restart-every`` steps, codes that no scale picked since the last restart are
   moved onto latent vectors of the current batch (dead-code restart), which keeps the
   codebook in use.

Phase 2 (HART's recipe: the tokenizer is first trained for discrete tokens, then its decoder
is fine-tuned for the hybrid latent): ``--freeze-encoder`` freezes the encoder, quant_conv and
codebook, so the discrete tokens no longer change, and ``--discrete-every 0`` trains the
decoder on the hybrid latent only, so it learns to use every detail of the residual.

Seeded and resumable: the data is a pure function of (seed, index), the model init and the
code restarts draw from one ``torch.Generator`` whose state is saved with the checkpoint.
``--resume`` continues from ``<run>/state.pt`` (loaded with ``weights_only=True``).
At the end the weights are written in the official layout (config.json + model.safetensors)
and a report (held-out PSNR discrete vs hybrid, codebook usage) beside them.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from hart_edu.data.scenes import SceneDataset

# The shipped tokenizer was trained before the relation layout and the validation split existed:
# on free-layout scenes of every caption that is not held out. These keep its command reproducing it.
TOKENIZER_LAYOUT = "free"
TOKENIZER_SPLIT = "train+validation"
from hart_edu.hybrid_tokenizer import HybridTokenizer, TokenizerConfig
from hart_edu.images import psnr
from hart_edu.train import add_settings_arguments, settings_from_args, warmup_cosine_lr, write_report
from hart_edu.vq import codebook_usage

TINY_TOKENIZER = TokenizerConfig(
    vocab_size=256,
    beta=0.02,  # weak commitment: the latent may hold more than the codes, the residual keeps it
    z_channels=16,
    ch=32,
    ch_mult=(1, 1, 2, 2),  # 64x64 image -> 8x8 latent; channels 32, 32, 64, 64
    v_patch_nums=(1, 2, 3, 4, 6, 8),
    quantizer_type="var_hybrid",
    hybrid=True,
    quant_resi=0.5,
    share_quant_resi=4,
    freeze_codebook_for_hybrid=False,  # we train the codebook together with the VAE
    test_mode=False,
)


@dataclass
class TrainSettings:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    seed: int = 0
    restart_every: int = 50
    discrete_every: int = 3  # every n-th step decodes the discrete latent alone (0: never)
    freeze_encoder: bool = False  # phase 2: train only post_quant_conv + decoder (HART's recipe)
    image_size: int = 64
    train_examples: int = 200_000
    bf16: bool = True  # autocast matmuls/convs to bfloat16 on the CPU (AMX), weights stay fp32


@torch.no_grad()
def evaluate(tok: HybridTokenizer, n: int = 256, seed: int = 1, batch_size: int = 64) -> dict:
    """Held-out PSNR (discrete-only vs hybrid) and codebook usage per scale."""
    tok.eval()
    data = SceneDataset("heldout", size=tok.config.image_size, length=n, seed=seed, layout=TOKENIZER_LAYOUT)
    psnr_d, psnr_h, idx_per_scale = [], [], [[] for _ in tok.config.v_patch_nums]
    for start in range(0, n, batch_size):
        img_B3HW = torch.stack([data[i].image_3HW for i in range(start, min(n, start + batch_size))])
        enc = tok.encode(img_B3HW)
        psnr_d.append(psnr(tok.decode(enc.fhat_discrete_BChw), img_B3HW))
        psnr_h.append(psnr(tok.decode(enc.fhat_full_BChw), img_B3HW))
        for si, idx in enumerate(enc.idx_Bl):
            idx_per_scale[si].append(idx)
    all_idx = torch.cat([torch.cat(i).flatten() for i in idx_per_scale])
    usage = codebook_usage(all_idx, tok.config.vocab_size)
    return {
        "heldout_images": n,
        "psnr_discrete_db": float(torch.cat(psnr_d).mean()),
        "psnr_hybrid_db": float(torch.cat(psnr_h).mean()),
        "codebook_used_fraction": usage.fraction_used,
        "codebook_perplexity": usage.perplexity,
        "codes_used_per_scale": [int(torch.cat(i).unique().numel()) for i in idx_per_scale],
    }


@torch.no_grad()
def _restart_dead_codes(tok: HybridTokenizer, hits_V: torch.Tensor, f_BChw: torch.Tensor,
                        g: torch.Generator) -> int:
    """Move never-picked codes onto random latent vectors (residual-scale) of the batch."""
    dead = (hits_V == 0).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    # residual vectors at the last scale are what most codes must represent
    codes = tok.quantizer.encode(f_BChw.float())
    pool_NC = torch.cat([codes.rest_before_last_BChw.permute(0, 2, 3, 1).reshape(-1, f_BChw.shape[1]),
                         f_BChw.float().permute(0, 2, 3, 1).reshape(-1, f_BChw.shape[1])])
    pick = torch.randint(0, pool_NC.shape[0], (dead.numel(),), generator=g)
    tok.quantizer.embedding.weight[dead] = pool_NC[pick]
    return int(dead.numel())


def train(out: Path, run: Path, s: TrainSettings, resume: bool = False,
          config: TokenizerConfig = TINY_TOKENIZER) -> dict:
    """Train, save the official-layout folder at ``out``, return the report."""
    run.mkdir(parents=True, exist_ok=True)
    if config.image_size != s.image_size:
        raise ValueError(f"config makes {config.image_size}px images, settings say {s.image_size}")
    g = torch.Generator().manual_seed(s.seed)
    with torch.random.fork_rng():  # init draws from the global RNG inside nn layers: isolate it
        torch.manual_seed(s.seed)
        tok = HybridTokenizer(config)
    opt = torch.optim.AdamW(tok.parameters(), lr=s.lr, betas=(0.9, 0.95), weight_decay=0.0)
    history: list[dict] = []
    hits_V = torch.zeros(config.vocab_size, dtype=torch.long)  # code hits since the last restart
    step = 0
    state_path = run / "state.pt"
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        tok.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        step, history = int(state["step"]), json.loads(state["history"])
        hits_V = state["hits"]
        print(f"resumed from {state_path} at step {step}")

    if s.freeze_encoder:  # the discrete tokens stay exactly as phase 1 made them
        for module in (tok.encoder, tok.quant_conv, tok.quantizer):
            module.requires_grad_(False)
    data = SceneDataset(TOKENIZER_SPLIT, size=s.image_size, length=s.train_examples, seed=s.seed,
                        layout=TOKENIZER_LAYOUT)
    tok.train()
    bar = tqdm(total=s.steps, initial=step, desc="tokenizer", unit="step")
    t0 = time.time()
    while step < s.steps:
        first = (step * s.batch_size) % s.train_examples
        img_B3HW = torch.stack([data[(first + i) % s.train_examples].image_3HW for i in range(s.batch_size)])
        keep_residual = s.discrete_every == 0 or step % s.discrete_every != s.discrete_every - 1
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, s.lr, s.warmup, s.steps)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.bf16):
            f_BChw = tok.encode_latent(img_B3HW)
        q = tok.quantizer(f_BChw.float(), keep_residual=keep_residual)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.bf16):
            rec_B3HW = tok.decoder(tok.post_quant_conv(q.fhat_BChw))
        rec_loss = F.mse_loss(rec_B3HW.float(), img_B3HW)
        loss = rec_loss + q.vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0)
        opt.step()
        for idx in q.idx_Bl:
            hits_V += torch.bincount(idx.flatten(), minlength=config.vocab_size)
        restarted = 0
        if (step + 1) % s.restart_every == 0 and step + 1 < 0.8 * s.steps and not s.freeze_encoder:
            restarted = _restart_dead_codes(tok, hits_V, f_BChw.detach(), g)
            hits_V.zero_()
        history.append({"step": step, "loss": float(loss), "recon_mse": float(rec_loss),
                        "vq_loss": float(q.vq_loss), "codebook_used_fraction": q.fraction_used,
                        "hybrid_step": keep_residual, "restarted_codes": restarted})
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss):.4f}", usage=f"{q.fraction_used:.0%}")
        if step % 200 == 0 or step == s.steps:
            torch.save({"model": tok.state_dict(), "optimizer": opt.state_dict(),
                        "generator": g.get_state(), "step": step, "hits": hits_V,
                        "history": json.dumps(history)}, state_path)
    bar.close()

    report = evaluate(tok)
    report["train_seconds_this_run"] = round(time.time() - t0, 1)
    report["settings"] = asdict(s)
    tok.save_pretrained(out)
    (run / "history.json").write_text(json.dumps(history))
    return report


def save_report(report: dict, history: list[dict], folder: Path) -> None:
    """report.json + loss curve (data and PNG) for the README and the notebooks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_report(folder, "tokenizer", report, history)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3))
    for hybrid, label in ((True, "hybrid steps"), (False, "discrete-only steps")):
        pts = [(h["step"], h["recon_mse"]) for h in history if h["hybrid_step"] == hybrid]
        ax[0].plot(*zip(*pts), label=label, lw=0.8)
    ax[0].set(yscale="log", xlabel="step", ylabel="reconstruction MSE", title="tokenizer training")
    ax[0].legend()
    ax[1].plot([h["step"] for h in history], [h["codebook_used_fraction"] for h in history], lw=0.8)
    ax[1].set(xlabel="step", ylabel="share of codes used in the batch", title="codebook usage")
    fig.tight_layout()
    fig.savefig(folder / "tokenizer_training.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hart_edu.train.tokenizer", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("weights/tiny/tokenizer"),
                   help="where to write config.json + model.safetensors")
    p.add_argument("--run", type=Path, default=Path("runs/tokenizer"), help="checkpoints and logs")
    p.add_argument("--report", type=Path, default=Path("weights/tiny/reports"))
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False)
    add_settings_arguments(p, TrainSettings)
    args = p.parse_args(argv)
    settings = settings_from_args(TrainSettings, args)
    report = train(args.out, args.run, settings, resume=args.resume)
    history = json.loads((args.run / "history.json").read_text())
    save_report(report, history, args.report)
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}/ and {args.report}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
