r"""``hart-edu profile``: where the time of one HART generation goes, phase by phase.

The counterpart of the official ``latency_profile.py`` (which times ``encode_prompts`` +
``autoregressive_infer_cfg`` as one number, averaged over 100 runs after 50 warm-up runs under
float16 autocast). Here the same work, one call of the real
:class:`~hart_edu.sampler.HARTPipeline`, is split into its phases (:mod:`hart_edu.timing`)::

    before text            the call's checks, the prompts' tokenization
    text encoding          Qwen2 over [system prompt ; prompt padded to T = 300] tokens
    scale 1x1 .. 64x64     one transformer stage each: 16 blocks over the stage's tokens
                           (KV cache), logits, CFG, top-k, draw (the last one up to the
                           residual diffusion below)
    residual diffusion     the 37M-parameter MLP head, 8 denoising steps on every last-scale token
    VAE decode             the tokenizer's decoder, 64x64x32 latent -> 1024x1024 image
    after decode           the images as uint8 and PIL, the pipeline's output

and timed for each kernel backend asked for (``--backends reference,triton``, the pipeline's
``backend``, never switched silently) at each batch size (latency at batch 1, throughput =
images / second at batch 8, the paper's two figures: 0.75 s and 2.23 images/s on an A100).
The models are the *released architecture* with **random weights** (seeded, drawn directly
on the device in the chosen dtype), so no download is needed: the timing of a dense network
does not depend on the values of its weights. ``hart-edu run-real`` times the same pipeline
with the same :class:`~hart_edu.timing.PhaseTimer`, once, with memory, on a CPU.

What is measured, and how
-------------------------
* One run = ``pipe(prompts)`` at sample.py's defaults (cfg 4.5, more_smooth, the residual
  diffusion): B different prompts of ``prompt_tokens`` words each, behind a system prompt of
  ``--system-tokens`` words, read by a stand-in word-level tokenizer (one token per word).
  The phase boundaries are forward hooks on the pipeline's parts
  (:class:`hart_edu.timing.PhaseTimer`): nothing in the measured code is replaced.
* On CUDA the boundaries are CUDA events recorded on the stream (no synchronisation inside
  the run, so the phases do not perturb each other); ``torch.cuda.synchronize`` before the
  run starts and after it ends. On the CPU: ``time.perf_counter``.
* ``--warmup`` runs first (not recorded: Triton compiles its kernels, cuDNN picks its
  algorithms), then ``--repeats`` runs; every figure is the **median** over the repeats, and
  the phases of a run add up exactly to its total.
* Weights are in ``--dtype`` (bfloat16 or float16) and the pipeline runs under
  ``torch.autocast`` of the same dtype (so the float32 parts of the pipeline, e.g. the text
  context and the RoPE angles, meet the half-precision weights as in the official run).
* Under the Triton backend one extra warm-up run counts the launches of each Triton kernel;
  the counts go into the report, and a line says so when there are none (then the "triton"
  column measured the reference code path).

Architectures (``--size``)
--------------------------
* ``1024px``: hart-0.7b-1024px as recorded in ``golden/manifest-hart-0.7b-1024px.json``
  (hypothesis "transformer_llm": depth 16 with per-block adaLN, 732,495,936 parameters
  including the 36.6M diffusion head; tokenizer 108,948,355 parameters without the
  discriminator) and a Qwen2 text encoder of the size of Qwen2-VL-1.5B-Instruct's language
  model (hidden 1536, 28 layers, 12 heads, 2 key/value heads, MLP 8960, vocabulary 151,936:
  inferred in the manifest's provenance, not read from the released config);
* ``1024px-depth24``: the manifest's other hypothesis (depth 24 without adaLN; same
  parameter count, 1.5x the transformer FLOPs);
* ``tiny``: a few-thousand-parameter model with 6 scales, the same code path, for tests and
  for reading the report on a laptop CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import pkgutil
import platform
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hart_edu.text_encoder import HART_SYSTEM_PROMPT
from hart_edu.timing import Clock, PhaseTimer, phase_names

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_STD = 0.02  # N(0, 0.02^2) matrices (the usual transformer init); norm gains 1, biases 0

# -- the released hart-0.7b-1024px (golden/manifest-hart-0.7b-1024px.json, "config_used") --

_PATCH_NUMS_1024 = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)
RELEASED_TRANSFORMER: dict[str, Any] = dict(
    context_token=300, context_dim=1536, depth=16, embed_dim=1536, num_heads=24, mlp_ratio=4.0,
    norm_eps=1e-6, shared_aln=False, attn_l2_norm=False, patch_nums=_PATCH_NUMS_1024,
    mlp_type="llama", attn_type="llama", disable_aln=False, use_timestep_embed=True,
    sep_aln_pooling_mode="max", use_cross_attn=False, diff_width=1024, diff_depth=6,
    num_sampling_steps="8", sampler="iddpm", use_context_norm=False, context_norm_scale=1.0,
)
RELEASED_TOKENIZER: dict[str, Any] = dict(
    vocab_size=4096, z_channels=32, ch=160, ch_mult=(1, 1, 2, 2, 4), quant_conv_ks=3,
    quant_resi=0.5, share_quant_resi=4, default_qresi_counts=0, v_patch_nums=_PATCH_NUMS_1024,
    quantizer_type="var_hybrid", hybrid=True,
)
# Qwen2-VL-1.5B-Instruct's language model (a Qwen2Model); see the module docstring.
RELEASED_TEXT_ENCODER: dict[str, Any] = dict(
    hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
    intermediate_size=8960, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
    rope_theta=1000000.0, hidden_act="silu", tie_word_embeddings=True,
)


@dataclass(frozen=True)
class Architecture:
    """The three models' configurations, and the text workload (token counts)."""

    name: str
    description: str
    transformer: dict[str, Any]  # TransformerConfig fields
    tokenizer: dict[str, Any]  # TokenizerConfig fields
    text_encoder: dict[str, Any]  # transformers.Qwen2Config fields
    prompt_tokens: int = 16  # real tokens of each prompt (the rest of the T positions is padding)
    system_tokens: int | None = None  # system-prompt tokens; None: estimated_system_tokens()

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return tuple(self.transformer["patch_nums"])


ARCHITECTURES: dict[str, Architecture] = {
    "1024px": Architecture(
        "1024px", "hart-0.7b-1024px (depth 16, adaLN; manifest hypothesis transformer_llm)",
        RELEASED_TRANSFORMER, RELEASED_TOKENIZER, RELEASED_TEXT_ENCODER),
    "1024px-depth24": Architecture(
        "1024px-depth24", "hart-0.7b-1024px (depth 24, no adaLN; manifest hypothesis transformer_llm_alt)",
        {**RELEASED_TRANSFORMER, "depth": 24, "disable_aln": True}, RELEASED_TOKENIZER, RELEASED_TEXT_ENCODER),
    "tiny": Architecture(
        "tiny", "tiny test architecture (6 scales up to 8x8, 32x32 pixels)",
        dict(context_token=16, context_dim=32, depth=2, embed_dim=64, num_heads=4, mlp_ratio=4.0,
             patch_nums=(1, 2, 3, 4, 6, 8), mlp_type="llama", attn_type="llama", use_timestep_embed=True,
             diff_width=32, diff_depth=2, num_sampling_steps="4"),
        dict(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 1, 2), v_patch_nums=(1, 2, 3, 4, 6, 8),
             quantizer_type="var_hybrid", hybrid=True),
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=64, vocab_size=128, max_position_embeddings=256, rms_norm_eps=1e-6,
             rope_theta=1000000.0, hidden_act="silu", tie_word_embeddings=True),
        prompt_tokens=5, system_tokens=6),
}

# The official system prompt is put in front of every prompt. Without the Qwen2 tokenizer
# its exact token count is unknown here; English BPE text averages about 4 bytes a token.
def estimated_system_tokens() -> int:
    return len(HART_SYSTEM_PROMPT.encode("utf-8")) // 4


# --------------------------------------------------------------------------------------
# Building the models with random weights, fast
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules with every *parameter* on the meta device (no memory, no init work),
    while buffers and plain tensor attributes (schedules, RoPE frequencies, level ids) are
    computed as usual on the CPU. (``with torch.device("meta")`` would leave those empty.)

    Works by wrapping ``nn.Module.register_parameter`` for the duration of the block only."""
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def materialise_random(model: nn.Module, device: torch.device, dtype: torch.dtype,
                       generator: torch.Generator) -> nn.Module:
    """Give every meta parameter real storage on ``device`` in ``dtype``, drawn in one pass:

    * matrices, convolutions, embeddings (dim >= 2): N(0, WEIGHT_STD^2);
    * 1-D ``weight`` (norm gains): 1;  other 1-D parameters (biases): 0.

    ``generator`` must live on ``device`` (the numbers are drawn there, no host copy). Tied
    parameters stay tied. Buffers are moved to ``device`` unchanged. Returns ``model``."""
    if generator.device.type != device.type:
        raise ValueError(f"the generator is on {generator.device}, the weights go to {device}")
    done: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in done:
                data = torch.empty(param.shape, device=device,
                                   dtype=dtype if param.is_floating_point() else param.dtype)
                if param.dim() >= 2:
                    data.normal_(0.0, WEIGHT_STD, generator=generator)
                else:
                    data.fill_(1.0 if name == "weight" else 0.0)
                done[id(param)] = nn.Parameter(data, requires_grad=False)
            module._parameters[name] = done[id(param)]
    return model.to(device).eval()


@dataclass
class Models:
    """The three random-weight models of one architecture, ready on one device."""

    text_model: nn.Module
    transformer: Any  # HARTTransformer
    tokenizer: Any  # HybridTokenizer
    pad_token_id: int


def build_models(arch: Architecture, device: torch.device, dtype: torch.dtype, seed: int,
                 materialise: Callable[..., nn.Module] = materialise_random) -> Models:
    """Build ``arch`` with random weights (seed ``seed``) on ``device`` in ``dtype``.
    ``materialise(model, device, dtype, generator)`` draws each model's weights (the default,
    :func:`materialise_random`; ``hart_edu.quantize.materialise_random_int8`` draws the same
    numbers and quantizes the linear layers as it goes)."""
    import transformers

    from hart_edu.ar_transformer import HARTTransformer, TransformerConfig
    from hart_edu.hybrid_tokenizer import HybridTokenizer, TokenizerConfig

    t_config = TransformerConfig(**arch.transformer)
    k_config = TokenizerConfig(**arch.tokenizer)
    q_config = transformers.Qwen2Config(**arch.text_encoder, attn_implementation="sdpa")
    if q_config.hidden_size != t_config.context_dim:
        raise ValueError(f"{arch.name}: text encoder hidden {q_config.hidden_size} != context_dim {t_config.context_dim}")
    with parameters_on_meta():
        text_model = transformers.Qwen2Model(q_config)
        transformer = HARTTransformer(t_config, vocab_size=k_config.vocab_size, vae_channels=k_config.z_channels)
        tokenizer = HybridTokenizer(k_config)
    generator = torch.Generator(device=device).manual_seed(seed)
    for model in (text_model, transformer, tokenizer):
        materialise(model, device, dtype, generator)
    return Models(text_model, transformer, tokenizer, pad_token_id=q_config.vocab_size - 1)


def _word_tokenizer(texts: Sequence[str], vocab_size: int):
    """A whitespace word-level tokenizer standing in for Qwen2's BPE tokenizer: every word
    of ``texts`` gets its own id below ``vocab_size``; the last id is the pad."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in texts for w in text.split()})[: vocab_size - 2]
    vocab = {"<unk>": 0, "<pad>": vocab_size - 1} | {w: 1 + i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")


def random_release_pipeline(size: str | Architecture = "1024px", *, dtype: torch.dtype | None = None, seed: int = 0,
                            prompts: Sequence[str] = (), release_text_encoder: bool = False,
                            device: torch.device | str = "cpu",
                            system_prompt: str | None = HART_SYSTEM_PROMPT, quantize: str = "none"):
    """A :class:`~hart_edu.sampler.HARTPipeline` of ``ARCHITECTURES[size]`` (or ``size`` itself
    when it is an :class:`Architecture`; "1024px": the
    released model, "1024px-depth24": the manifest's other hypothesis, "tiny") with seeded
    random weights in ``dtype`` (default bfloat16) on ``device`` (default the CPU).

    The text encoder's tokenizer is a stand-in that knows the words of ``prompts`` and of
    ``system_prompt`` (one id per whitespace-separated word; the real Qwen2 tokenizer comes
    with the download). ``system_prompt``: default the official one, dropped when it has
    more words than the transformer takes text positions; None: none.
    ``release_text_encoder``: the pipeline's option (free the text encoder after the first
    call has encoded its prompts). ``quantize``: "int8" draws the text encoder's and the
    transformer's linear layers as int8 layers and stores the KV cache in bfloat16
    (:mod:`hart_edu.quantize`; float32 only)."""
    from hart_edu.ar_transformer import HARTTransformer
    from hart_edu.hybrid_tokenizer import HybridTokenizer
    from hart_edu.quantize import INT8_KV_CACHE_DTYPE, check_quantize, materialise_random_int8
    from hart_edu.sampler import HARTPipeline, check_dtype
    from hart_edu.text_encoder import TextEncoder

    dtype = check_dtype(torch.bfloat16 if dtype is None else dtype)
    if not isinstance(size, Architecture) and size not in ARCHITECTURES:
        raise ValueError(f"unknown size {size!r}: use one of {', '.join(sorted(ARCHITECTURES))}")
    arch = size if isinstance(size, Architecture) else ARCHITECTURES[size]
    materialise, kv_cache_dtype = materialise_random, None
    if check_quantize(quantize, dtype) == "int8":
        kv_cache_dtype = INT8_KV_CACHE_DTYPE
        materialise = materialise_random_int8(  # as quantize_pipeline_int8_: the text encoder weight-only
            skip=lambda model: isinstance(model, HybridTokenizer),
            weight_only=lambda model: not isinstance(model, (HybridTokenizer, HARTTransformer)))
    models = build_models(arch, torch.device(device), dtype, seed, materialise)
    T = models.transformer.config.context_token
    words = _word_tokenizer([system_prompt or "", *prompts], models.text_model.config.vocab_size)
    if system_prompt is not None and len(system_prompt.split()) > T:
        system_prompt = None
    encoder = TextEncoder(models.text_model, words, max_length=T, system_prompt=system_prompt)
    return HARTPipeline(encoder, models.transformer, models.tokenizer, release_text_encoder=release_text_encoder,
                        kv_cache_dtype=kv_cache_dtype)


def parameter_counts(pipe: Any) -> dict[str, int]:
    count = lambda m: sum(p.numel() for p in m.parameters())
    return {"text encoder": count(pipe.text_encoder.model), "transformer (with diffusion head)": count(pipe.transformer),
            "diffusion head": count(pipe.transformer.diffloss), "tokenizer": count(pipe.tokenizer)}


# --------------------------------------------------------------------------------------
# Timing one run
# --------------------------------------------------------------------------------------


def random_words(n: int, words: int, prefix: str, generator: torch.Generator) -> list[str]:
    """``n`` texts of ``words`` random words each (``w17 w3 ...``): as many text tokens for the
    stand-in tokenizer."""
    ids = torch.randint(0, 10 * max(1, n * words), (n, words), generator=generator).tolist()
    return [" ".join(f"{prefix}{i}" for i in row) for row in ids]


def run_once(pipe: Any, prompts: list[str], seed: int) -> dict[str, float]:
    """One pipeline call (text encoding to images) at sample.py's defaults; seconds per phase
    (see :func:`hart_edu.timing.phase_names`), timed by :class:`hart_edu.timing.PhaseTimer`."""
    rng = torch.Generator(device=pipe.device).manual_seed(seed)
    with torch.inference_mode(), PhaseTimer(pipe, Clock(pipe.device)) as timer:
        pipe(prompts, generator=rng, progress=False)
    return timer.seconds()


class _CountedKernel:
    """Stands in for a ``@triton.jit`` kernel object: counts its launches (``kernel[grid](...)``)."""

    def __init__(self, kernel: Any, name: str, counts: dict[str, int]):
        self.kernel, self.name, self.counts = kernel, name, counts

    def __getitem__(self, grid: Any) -> Any:
        self.counts[self.name] = self.counts.get(self.name, 0) + 1
        return self.kernel[grid]

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.kernel, attr)


@contextlib.contextmanager
def count_triton_launches() -> Iterator[dict[str, int]]:
    """Count the launches of every Triton kernel of the ``hart_edu.kernels`` modules inside the
    block, whoever calls them: each module-level ``@jit`` kernel object (which the module's
    wrappers look up when they launch it) is replaced by a counter for the duration of the
    block. Yields "module.kernel" -> launches."""
    from hart_edu import kernels

    counts: dict[str, int] = {}
    patched: list[tuple[Any, str, Any]] = []
    for info in pkgutil.iter_modules(kernels.__path__):
        if info.name.startswith("_") or info.name in ("backend", "bench"):
            continue
        module = importlib.import_module(f"hart_edu.kernels.{info.name}")
        for attr, obj in list(vars(module).items()):
            if attr.endswith("_kernel") and hasattr(obj, "fn") and hasattr(type(obj), "__getitem__"):
                patched.append((module, attr, obj))
                setattr(module, attr, _CountedKernel(obj, f"{info.name}.{attr.lstrip('_')}", counts))
    try:
        yield counts
    finally:
        for module, attr, obj in patched:
            setattr(module, attr, obj)


# --------------------------------------------------------------------------------------
# The whole profile
# --------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """All runs of one (backend, batch): seconds per phase per run, medians, kernel calls."""

    backend: str
    batch: int
    runs: list[dict[str, float]]
    triton_launches: dict[str, int] | None = None  # per run; None: not counted (reference backend)
    peak_memory_bytes: int | None = None  # CUDA only

    def median(self, phase: str) -> float:
        return statistics.median(run[phase] for run in self.runs)

    @property
    def total_s(self) -> float:
        return statistics.median(sum(run.values()) for run in self.runs)

    @property
    def images_per_s(self) -> float:
        return self.batch / self.total_s


@dataclass
class Profile:
    arch: Architecture
    device: torch.device
    dtype_name: str
    warmup: int
    repeats: int
    system_tokens: int
    parameters: dict[str, int]
    measurements: list[Measurement] = field(default_factory=list)

    @property
    def phases(self) -> list[str]:
        return phase_names(self.arch.patch_nums)


def check_request(device: torch.device, backends: Sequence[str]) -> None:
    """Refuse, before anything is built, what cannot run here (one-line ValueErrors)."""
    from hart_edu.kernels import backend as kb

    for name in backends:
        if name not in kb.BACKENDS:
            raise ValueError(f"--backends: unknown backend {name!r}; choose from {', '.join(kb.BACKENDS)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here (pass --device cpu)")
    if "triton" in backends:
        status = kb.triton_status()
        if not status.available:
            raise ValueError(f"--backends triton cannot run here: {status.reason}; "
                             "pass --backends reference on this machine")
        if status.mode == "cuda" and device.type != "cuda":
            raise ValueError(f"--backends triton compiles CUDA kernels but --device is {device}: "
                             "pass --device cuda (or set TRITON_INTERPRET=1 to interpret them on the CPU)")
        if status.mode == "interpreter" and device.type != "cpu":
            raise ValueError("TRITON_INTERPRET=1 runs the Triton kernels on the CPU: pass --device cpu")


def run_profile(arch: Architecture, device: torch.device, dtype_name: str, backends: Sequence[str],
                batches: Sequence[int], warmup: int, repeats: int, seed: int = 0,
                system_tokens: int | None = None, progress: Callable[[str], None] = lambda s: None) -> Profile:
    """Build ``arch`` once as a pipeline, then time ``warmup`` + ``repeats`` calls per backend
    (the pipeline's :attr:`~hart_edu.sampler.HARTPipeline.backend`) and batch."""
    check_request(device, backends)
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need --repeats >= 1 and --warmup >= 0, got {repeats} and {warmup}")
    if not batches or any(b < 1 for b in batches):
        raise ValueError(f"--batch-sizes must be positive integers, got {list(batches)}")
    dtype = DTYPES[dtype_name]
    if system_tokens is None:
        system_tokens = estimated_system_tokens() if arch.system_tokens is None else arch.system_tokens
    if not 0 <= system_tokens <= arch.transformer["context_token"]:
        raise ValueError(f"--system-tokens {system_tokens} must be in [0, {arch.transformer['context_token']}] "
                         "(the official encoding slices the system prompt's mask from a context_token-wide tensor)")
    progress(f"building {arch.description} with random weights in {dtype_name} on {device}")
    g = torch.Generator().manual_seed(seed)
    system_prompt = random_words(1, system_tokens, "s", g)[0] if system_tokens else None
    prompts = random_words(max(batches), arch.prompt_tokens, "w", g)  # batch b: the first b
    pipe = random_release_pipeline(arch, dtype=dtype, seed=seed, prompts=prompts, device=device,
                                   system_prompt=system_prompt)
    profile = Profile(arch, device, dtype_name, warmup, repeats, system_tokens, parameter_counts(pipe))
    for batch in batches:
        for name in backends:
            pipe.backend = name
            for _ in range(warmup):
                run_once(pipe, prompts[:batch], seed)
            calls = None
            if name == "triton":
                with count_triton_launches() as calls:
                    run_once(pipe, prompts[:batch], seed)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            runs = [run_once(pipe, prompts[:batch], seed) for _ in range(repeats)]
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            m = Measurement(name, batch, runs, dict(calls) if calls is not None else None, peak)
            profile.measurements.append(m)
            progress(f"{name:>9s} batch {batch}: {m.total_s * 1e3:.1f} ms per run, {m.images_per_s:.2f} images/s")
    return profile


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s))"


def format_table(profile: Profile) -> str:
    """Phases as rows, (backend, batch) as columns, median milliseconds."""
    ms = profile.measurements
    heads = [f"{m.backend} b{m.batch}" for m in ms]
    width = max(12, *(len(h) for h in heads))
    label = max(len(p) for p in profile.phases + ["images / s"])
    lines = [f"hart-edu profile: {profile.arch.description}",
             (f"random weights, {profile.dtype_name}, on {device_name(profile.device)}; median of "
              f"{profile.repeats} runs after {profile.warmup} warm-up runs; milliseconds"),
             f"{'phase':<{label}} " + " ".join(f"{h:>{width}}" for h in heads)]
    lines.append("-" * len(lines[-1]))
    for phase in profile.phases:
        lines.append(f"{phase:<{label}} " + " ".join(f"{m.median(phase) * 1e3:>{width}.2f}" for m in ms))
    lines.append("-" * len(lines[2]))
    lines.append(f"{'total':<{label}} " + " ".join(f"{m.total_s * 1e3:>{width}.2f}" for m in ms))
    lines.append(f"{'images / s':<{label}} " + " ".join(f"{m.images_per_s:>{width}.2f}" for m in ms))
    for m in ms:
        if m.triton_launches is not None and not m.triton_launches:
            lines.append(f"note: at batch {m.batch} the models called no Triton kernel under the triton backend: "
                         "that column measured the reference code path")
        elif m.triton_launches:
            calls = ", ".join(f"{k} x{v}" for k, v in sorted(m.triton_launches.items()))
            lines.append(f"Triton kernel launches per run at batch {m.batch}: {calls}")
    by_batch = {m.batch: m for m in ms}
    if 1 in by_batch:
        lines.append("latency at batch 1: " + ", ".join(
            f"{m.backend} {m.total_s:.3f} s" for m in ms if m.batch == 1))
    if max(by_batch) > 1:
        b = max(by_batch)
        lines.append(f"throughput at batch {b}: " + ", ".join(
            f"{m.backend} {m.images_per_s:.2f} images/s" for m in ms if m.batch == b))
    return "\n".join(lines)


def to_json(profile: Profile) -> dict[str, Any]:
    """Everything needed to read the figures later: what ran where, and every run."""
    import hart_edu.kernels.backend as kb

    return {
        "tool": "hart-edu profile",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(profile.device),
        "device_type": profile.device.type,
        "torch": torch.__version__,
        "triton": getattr(kb.triton, "__version__", None),
        "size": profile.arch.name,
        "architecture": profile.arch.description,
        "config": {"transformer": _jsonable(profile.arch.transformer), "tokenizer": _jsonable(profile.arch.tokenizer),
                   "text_encoder": _jsonable(profile.arch.text_encoder)},
        "parameters": profile.parameters,
        "weights": f"random, N(0, {WEIGHT_STD}^2) matrices, seeded",
        "dtype": profile.dtype_name,
        "prompt_tokens": profile.arch.prompt_tokens,
        "system_tokens": profile.system_tokens,
        "warmup": profile.warmup,
        "repeats": profile.repeats,
        "statistic": "median over repeats",
        "phases": profile.phases,
        "results": [
            {"backend": m.backend, "batch": m.batch,
             "phases_ms": {p: m.median(p) * 1e3 for p in profile.phases},
             "total_ms": m.total_s * 1e3, "images_per_s": m.images_per_s,
             "triton_launches": m.triton_launches, "peak_memory_bytes": m.peak_memory_bytes,
             "runs_ms": [{p: run[p] * 1e3 for p in profile.phases} for run in m.runs]}
            for m in profile.measurements
        ],
    }


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--batch-sizes {text!r}: expected comma-separated integers, e.g. 1,8") from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "profile", help="latency and throughput of HART inference by phase (random weights)",
        description="Time text encoding, each scale, the residual diffusion and the VAE decode of the "
                    "released HART architecture with random weights, per kernel backend.")
    p.add_argument("--size", choices=sorted(ARCHITECTURES), default="1024px",
                   help="architecture (default: 1024px; 'tiny' runs in seconds on a CPU)")
    p.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16",
                   help="weights and autocast dtype (default: bfloat16)")
    p.add_argument("--backends", default="reference,triton",
                   help="kernel backends, comma-separated (default: reference,triton)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated (default: 1,8: latency and throughput)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first, per backend and batch (default: 3)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs; medians are reported (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and the sampling (default: 0)")
    p.add_argument("--system-tokens", type=int, default=None,
                   help="system-prompt tokens in front of each prompt (default for 1024px: an estimate, "
                        "the official system prompt's UTF-8 bytes / 4)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure and run to this JSON file")
    p.set_defaults(run=run)


def run(args) -> int:
    import sys

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or len(set(backends)) != len(backends):
        raise ValueError(f"--backends {args.backends!r}: name each backend once, e.g. reference,triton")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device {args.device!r} is not a torch device (e.g. cuda, cuda:1, cpu)") from None
    if args.json is not None and not args.json.parent.is_dir():
        raise FileNotFoundError(f"--json {args.json}: folder {args.json.parent} does not exist")
    profile = run_profile(
        ARCHITECTURES[args.size], device, args.dtype, backends, _int_list(args.batch_sizes),
        warmup=args.warmup, repeats=args.repeats, seed=args.seed, system_tokens=args.system_tokens,
        progress=lambda line: print(line, file=sys.stderr),
    )
    print(format_table(profile))
    if args.json is not None:
        from hart_edu.kernels.bench import write_json

        write_json(args.json, to_json(profile))
        print(f"wrote {args.json}")
    return 0
