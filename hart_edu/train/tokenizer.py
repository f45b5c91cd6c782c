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

Own images: ``--data FOLDER`` trains on a folder of captioned images
(:mod:`hart_edu.data.image_folder`; the captions are not used here, the same folder then
trains the transformer) at ``--image-size``; the report then measures the first 256 of them.

Data parallel (:mod:`hart_edu.train.distributed`)::

    torchrun --nproc-per-node 2 -m hart_edu.train.tokenizer --batch-size 64 --run-dir runs/tokenizer ...

``--batch-size`` is the global batch: rank r encodes and decodes images [r B/W, (r+1) B/W) of
the step's B. DDP averages the gradients (the gradient of the global batch's mean); the
codebook hits are summed over the ranks, and a dead-code restart draws from every rank's
latents (gathered in rank order, the single process's batch), so every rank moves the same
codes to the same vectors. Only rank 0 writes.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from hart_edu.data.image_folder import ImageFolder
from hart_edu.data.scenes import SceneDataset

# The shipped tokenizer was trained before the relation layout and the validation split existed:
# on free-layout scenes of every caption that is not held out. These keep its command reproducing it.
TOKENIZER_LAYOUT = "free"
TOKENIZER_SPLIT = "train+validation"
from hart_edu.hybrid_tokenizer import HybridTokenizer, TokenizerConfig
from hart_edu.images import psnr
from hart_edu.train import add_settings_arguments, settings_from_args, warmup_cosine_lr, write_report
from hart_edu.vq import codebook_usage
from hart_edu.train.distributed import (
    DEFAULT_TIMEOUT_S,
    Ranks,
    batch_share,
    data_parallel,
    gather_rows,
    init,
    mean_over_ranks,
    run_main,
    same_on_every_rank,
    single,
    sum_over_ranks,
)

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
    train_examples: int = 200_000  # procedural scenes (with --data: every image of the folder)
    bf16: bool = True  # autocast matmuls/convs to bfloat16 on the CPU (AMX), weights stay fp32
    data: str = ""  # a folder of captioned images (hart_edu.data.image_folder); "": the procedural scenes


def training_data(s: TrainSettings) -> Dataset:
    """The images of a run: the folder ``s.data`` or the procedural scenes."""
    if s.data:
        return ImageFolder(s.data, s.image_size)
    return SceneDataset(TOKENIZER_SPLIT, size=s.image_size, length=s.train_examples, seed=s.seed,
                        layout=TOKENIZER_LAYOUT)


@torch.no_grad()
def evaluate(tok: HybridTokenizer, n: int = 256, seed: int = 1, batch_size: int = 64,
             data: Dataset | None = None) -> dict:
    """Held-out PSNR (discrete-only vs hybrid) and codebook usage per scale, on ``n`` held-out
    scenes, or on the first ``n`` images of ``data`` (own images: there is no held-out split)."""
    tok.eval()
    if data is None:
        data = SceneDataset("heldout", size=tok.config.image_size, length=n, seed=seed, layout=TOKENIZER_LAYOUT)
    n = min(n, len(data))
    device = next(tok.parameters()).device
    psnr_d, psnr_h, idx_per_scale = [], [], [[] for _ in tok.config.v_patch_nums]
    for start in range(0, n, batch_size):
        img_B3HW = torch.stack([data[i].image_3HW for i in range(start, min(n, start + batch_size))]).to(device)
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


class TokenizerStep(nn.Module):
    """One step's forward as a module (what DistributedDataParallel wraps, so that the
    gradients of all it computes are averaged over the ranks): encode, quantize over the
    scales, decode. Returns the reconstruction, the quantizer's output and the latent ``f``."""

    def __init__(self, tok: HybridTokenizer, bf16: bool):
        super().__init__()
        self.tok, self.bf16 = tok, bf16

    def forward(self, img_B3HW: torch.Tensor, keep_residual: bool):
        with torch.autocast(img_B3HW.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            f_BChw = self.tok.encode_latent(img_B3HW)
        q = self.tok.quantizer(f_BChw.float(), keep_residual=keep_residual)
        with torch.autocast(img_B3HW.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            rec_B3HW = self.tok.decoder(self.tok.post_quant_conv(q.fhat_BChw))
        return rec_B3HW, q, f_BChw


def train(out: Path, run: Path, s: TrainSettings, resume: bool = False,
          config: TokenizerConfig = TINY_TOKENIZER, ranks: Ranks | None = None,
          device: torch.device | str = "cpu", progress: bool = True) -> dict | None:
    """Train, save the official-layout folder at ``out``, return the report.

    ``ranks``: this process's place in a data-parallel run (its device is used); by default
    the one process on ``device``. Rank 0 evaluates, writes and returns the report; the other
    ranks return None."""
    ranks = single(device) if ranks is None else ranks
    device = ranks.device
    share = batch_share(s.batch_size, ranks)  # the one-line error before any work
    if config.image_size != s.image_size:
        raise ValueError(f"config makes {config.image_size}px images, settings say {s.image_size}")
    if ranks.is_main:
        run.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(s.seed)
    with torch.random.fork_rng():  # init draws from the global RNG inside nn layers: isolate it
        torch.manual_seed(s.seed)
        tok = HybridTokenizer(config)
    tok.to(device)
    opt = torch.optim.AdamW(tok.parameters(), lr=s.lr, betas=(0.9, 0.95), weight_decay=0.0)
    history: list[dict] = []
    hits_V = torch.zeros(config.vocab_size, dtype=torch.long, device=device)  # code hits since the last restart
    step = 0
    state_path = run / "state.pt"
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        tok.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        step, history = int(state["step"]), json.loads(state["history"])
        hits_V = state["hits"].to(device)
        if ranks.is_main:
            print(f"resumed from {state_path} at step {step}")
    same_on_every_rank(ranks, step, f"the step to start from (does every rank see {state_path}?)")

    if s.freeze_encoder:  # the discrete tokens stay exactly as phase 1 made them
        for module in (tok.encoder, tok.quant_conv, tok.quantizer):
            module.requires_grad_(False)
    data = training_data(s)
    if ranks.is_main and isinstance(data, ImageFolder):
        print(data.summary(), flush=True)
    N = len(data)
    tok.train()
    forward = data_parallel(TokenizerStep(tok, s.bf16), ranks)
    bar = tqdm(total=s.steps, initial=step, desc="tokenizer", unit="step", disable=not (progress and ranks.is_main))
    t0 = time.time()
    while step < s.steps:
        first = (step * s.batch_size) % N  # the global batch: images first .. first + B - 1 (mod N)
        img_b3HW = torch.stack([data[(first + i) % N].image_3HW for i in range(s.batch_size)[share]]).to(device)
        keep_residual = s.discrete_every == 0 or step % s.discrete_every != s.discrete_every - 1
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, s.lr, s.warmup, s.steps)
        rec_b3HW, q, f_bChw = forward(img_b3HW, keep_residual)
        rec_loss = F.mse_loss(rec_b3HW.float(), img_b3HW)
        loss = rec_loss + q.vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: gradients averaged over the ranks
        torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0)
        opt.step()
        step_hits_V = torch.zeros_like(hits_V)
        for idx in q.idx_Bl:
            step_hits_V += torch.bincount(idx.flatten(), minlength=config.vocab_size)
        hits_V += sum_over_ranks(ranks, step_hits_V)  # the global batch's hits
        restarted = 0
        if (step + 1) % s.restart_every == 0 and step + 1 < 0.8 * s.steps and not s.freeze_encoder:
            restarted = _restart_dead_codes(tok, hits_V, gather_rows(ranks, f_bChw.detach()), g)
            hits_V.zero_()
        loss_v, rec_v, vq_v = mean_over_ranks(ranks, [float(loss.detach()), float(rec_loss.detach()),
                                                      float(q.vq_loss.detach())])
        used = float((step_hits_V > 0).float().mean())  # share of the codes the global batch picked
        history.append({"step": step, "loss": loss_v, "recon_mse": rec_v, "vq_loss": vq_v,
                        "codebook_used_fraction": used, "hybrid_step": keep_residual, "restarted_codes": restarted})
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_v:.4f}", usage=f"{used:.0%}")
        if ranks.is_main and (step % 200 == 0 or step == s.steps):
            torch.save({"model": tok.state_dict(), "optimizer": opt.state_dict(),
                        "generator": g.get_state(), "step": step, "hits": hits_V.cpu(),
                        "history": json.dumps(history)}, state_path)
    bar.close()
    if not ranks.is_main:
        return None

    report = evaluate(tok, data=data if isinstance(data, ImageFolder) else None)
    report["evaluated_on"] = f"the first {report['heldout_images']} images of {s.data}" if s.data else "held-out scenes"
    report["train_seconds_this_run"] = round(time.time() - t0, 1)
    report["settings"] = asdict(s)
    report["ranks"] = ranks.world_size
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


PROG = "python -m hart_edu.train.tokenizer"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("weights/tiny/tokenizer"),
                   help="where to write config.json + model.safetensors")
    p.add_argument("--run", "--run-dir", dest="run", type=Path, default=Path("runs/tokenizer"),
                   help="checkpoints and logs (under torchrun spell it --run-dir: torchrun reads --run as its "
                        "own --run-path)")
    p.add_argument("--report", type=Path, default=Path("weights/tiny/reports"))
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--device", default="cpu",
                   help="where to train, e.g. cuda (default: cpu); under torchrun each rank takes cuda:LOCAL_RANK")
    p.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"under torchrun: seconds a rank waits for the others before the run fails "
                        f"(default {DEFAULT_TIMEOUT_S})")
    add_settings_arguments(p, TrainSettings)
    args = p.parse_args(argv)
    settings = settings_from_args(TrainSettings, args)
    return run_main(lambda: train_and_save(args, settings), PROG)


def train_and_save(args: argparse.Namespace, settings: TrainSettings) -> int:
    """:func:`train` on every rank; rank 0 writes the report and the curves."""
    ranks = init(args.device, args.dist_timeout)
    batch_share(settings.batch_size, ranks)  # a batch that does not divide by the ranks: one line, before the log
    if ranks.is_main:
        print(f"{ranks.describe()}; global batch {settings.batch_size} = {ranks.world_size} x "
              f"{settings.batch_size // ranks.world_size} per rank", flush=True)
    report = train(args.out, args.run, settings, resume=args.resume, ranks=ranks)
    if not ranks.is_main:
        return 0
    history = json.loads((args.run / "history.json").read_text())
    save_report(report, history, args.report)
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}/ and {args.report}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
