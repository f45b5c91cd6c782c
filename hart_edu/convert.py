"""``hart-edu convert``: an official HART checkpoint -> safetensors, training-only tensors dropped.

The released ``llm/pytorch_model.bin`` and ``llm/ema_model.bin`` are pickles (``torch.save``)
that carry tensors inference never reads. Reading the official code (every
``register_buffer`` of mit-han-lab/hart at e28a41f) and the golden checkpoints gives:

=====================================  ======================  ===============================
key                                    where                   why it can go
=====================================  ======================  ===============================
``attn_bias_for_masking``              llm (both files)        the (1, 1, L, L) block-causal
                                                               training mask, L = 9750 at
                                                               1024px: 380 MB of float32
``blocks.N.attn.zero_k_bias``          llm (both files)        always zero (the key projection
                                                               has no bias); rebuilt on load
``disc.*``                             tokenizer               the GAN discriminator (training)
=====================================  ======================  ===============================

Kept although inference never reads them: ``lvl_1L`` (the loader checks it against the
config's scales) and the quantizer's ``ema_vocab_hit_SV`` (a small training statistic that the
tokenizer's strict loader expects). The official RoPE ``inv_freq`` buffers are not persistent,
so no checkpoint holds them.

``pytorch_model.bin`` becomes ``model.safetensors`` and ``ema_model.bin``
``ema_model.safetensors`` (same tensors, same dtype, minus the keys above);
``config.json`` is copied when the output is another folder. All or nothing: every output
is written to a hidden temporary file and renamed only when the whole tree has converted
(a failing ``llm/`` leaves no converted ``tokenizer/``), with the usual file mode (0666 less
the umask, not safetensors' 0600). The loaders
(:func:`hart_edu.checkpoint.find_weight_file`) take ``*.safetensors`` before ``*.bin``, so a
converted folder is used as soon as it exists, also in place (``OUT`` = ``SRC``, the default:
the ``.bin`` files can then be deleted). Safetensors loads without unpickling anything and
can be memory-mapped.
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["ConvertedFile", "training_only", "convert_folder", "convert_tree", "add_parser", "run"]


def training_only(model_type: str, key: str) -> bool:
    """Is ``key`` of a checkpoint of ``model_type`` training-only (see the module docstring)?"""
    from hart_edu.ar_transformer import MODEL_TYPE as LLM_TYPE, TRAINING_ONLY_MASK_KEY
    from hart_edu.hybrid_tokenizer import MODEL_TYPE as TOKENIZER_TYPE

    if model_type == LLM_TYPE:
        return key == TRAINING_ONLY_MASK_KEY or key.endswith(".attn.zero_k_bias")
    if model_type == TOKENIZER_TYPE:
        return key.startswith("disc.")
    raise ValueError(f"model_type {model_type!r} is not a HART checkpoint")


@dataclass
class ConvertedFile:
    """One converted weight file: where from, where to, what was dropped (key -> bytes)."""

    source: Path
    target: Path
    kept: int
    dropped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.dropped:
            return f"{self.source} -> {self.target}: {self.kept} tensors, nothing dropped"
        groups: dict[str, list[int]] = {}
        for key, size in self.dropped.items():
            pattern = "blocks.*.attn.zero_k_bias" if key.endswith(".attn.zero_k_bias") else \
                "disc.*" if key.startswith("disc.") else key
            groups.setdefault(pattern, []).append(size)
        parts = [f"{name} ({len(s)} tensor{'s' if len(s) > 1 else ''}, {_mb(sum(s))})" for name, s in groups.items()]
        return (f"{self.source} -> {self.target}: {self.kept} tensors kept, dropped "
                f"{', '.join(parts)}; {_mb(sum(self.dropped.values()))} saved")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def _model_type(folder: Path) -> str:
    """The folder's HART model_type (config.json), or a one-line error."""
    import json

    from hart_edu.ar_transformer import MODEL_TYPE as LLM_TYPE
    from hart_edu.checkpoint import CheckpointError
    from hart_edu.hybrid_tokenizer import MODEL_TYPE as TOKENIZER_TYPE

    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    config = folder / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{folder} is not a HART checkpoint: it has no config.json")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as err:
        raise CheckpointError(f"{config} is not a valid config.json: {err}") from None
    if model_type not in (LLM_TYPE, TOKENIZER_TYPE):
        raise CheckpointError(f"{folder} is not a HART checkpoint: model_type {model_type!r} "
                              f"(expected {LLM_TYPE!r} or {TOKENIZER_TYPE!r})")
    return model_type


def _usual_file_mode() -> int:
    """0666 less the process's umask: the mode ``open()`` gives a new file (0644 under the
    common umask 022). safetensors' writer creates its files 0600; outputs get this instead."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0)  # no /proc: read it by setting it (and put it back at once)
    os.umask(umask)
    return 0o666 & ~umask


def _tensors_to_save(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors with no shared storage (safetensors refuses it: repeats are copied)."""
    seen: set[tuple[int, int]] = set()
    tensors = {}
    for key, tensor in state.items():
        tensor = tensor.contiguous()
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        tensors[key] = tensor.clone() if ident in seen and tensor.numel() else tensor
        seen.add(ident)
    return tensors


class _Staging:
    """All or nothing for a conversion: every output is first written to a hidden temporary
    file beside its target (``.NAME.PID.tmp``), in the usual file mode; :meth:`commit` renames
    them all at the end (Ctrl-C held back meanwhile). Leaving the ``with`` block without a
    commit (an error, Ctrl-C) removes the temporary files and the folders it made, so a tree
    whose ``llm/`` fails leaves no converted ``tokenizer/`` behind, and earlier outputs stay."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []  # (temporary, target)
        self.made: list[Path] = []  # folders made, in order
        self.mode = _usual_file_mode()

    def __enter__(self) -> "_Staging":
        return self

    def folder(self, path: Path) -> None:
        """Make ``path`` (and its missing parents), remembering them for the clean-up."""
        missing = [p for p in (path, *path.parents) if not p.exists()]
        path.mkdir(parents=True, exist_ok=True)
        self.made.extend(reversed(missing))

    def temporary(self, target: Path) -> Path:
        """A temporary path for ``target``, registered before anything is written to it."""
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        self.pending.append((tmp, target))
        return tmp

    def save(self, state: dict[str, torch.Tensor], target: Path) -> None:
        from safetensors.torch import save_file

        tmp = self.temporary(target)
        save_file(_tensors_to_save(state), str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, self.mode)

    def copy(self, source: Path, target: Path) -> None:
        tmp = self.temporary(target)
        shutil.copyfile(source, tmp)
        os.chmod(tmp, self.mode)

    def commit(self) -> None:
        from hart_edu.cli import interrupts_deferred

        with interrupts_deferred():
            for tmp, target in self.pending:
                os.replace(tmp, target)
            self.pending.clear()
            self.made.clear()

    def __exit__(self, *exc) -> None:
        from hart_edu.cli import interrupts_deferred

        with interrupts_deferred():
            for tmp, _ in self.pending:
                tmp.unlink(missing_ok=True)
            for folder in reversed(self.made):  # deepest first
                shutil.rmtree(folder, ignore_errors=True)


def _stage_folder(src: Path, out: Path, staging: _Staging) -> list[ConvertedFile]:
    """Convert one checkpoint folder's ``*.bin`` files into ``staging`` (see :func:`convert_folder`)."""
    from hart_edu.checkpoint import CheckpointError, load_weight_file

    model_type = _model_type(src)
    bins = sorted(p for p in src.glob("*.bin") if p.is_file())
    if not bins:
        raise CheckpointError(f"no .bin weight files in {src} (nothing to convert)")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"output {out} exists and is not a folder")
    staging.folder(out)
    converted: list[ConvertedFile] = []
    for path in bins:
        state = load_weight_file(path)  # also refuses NaN and stray infinities, naming the key
        dropped = {k: v.numel() * v.element_size() for k, v in state.items() if training_only(model_type, k)}
        for key in (k for k in dropped if k.endswith("zero_k_bias")):
            if bool(state[key].any()):
                raise CheckpointError(f"{path}: {key} is not zero, so it is not a training-only constant")
        kept = {k: v for k, v in state.items() if k not in dropped}
        target = out / (path.stem.removeprefix("pytorch_") + ".safetensors")  # the loaders' names
        staging.save(kept, target)
        converted.append(ConvertedFile(path, target, len(kept), dropped))
        del state, kept
    if out.resolve() != src.resolve():
        staging.copy(src / "config.json", out / "config.json")
    return converted


def convert_folder(src: str | Path, out: str | Path | None = None) -> list[ConvertedFile]:
    """Convert every ``*.bin`` weight file of one checkpoint folder (``llm/`` or ``tokenizer/``).

    Writes ``model.safetensors`` / ``ema_model.safetensors`` into ``out`` (default ``src``) and copies config.json
    when ``out`` is another folder; all or nothing (see :class:`_Staging`), in the usual file
    mode. A zero_k_bias that is not zero is refused (it would not be training-only).
    Returns what was converted and dropped.
    """
    src = Path(src)
    with _Staging() as staging:
        converted = _stage_folder(src, Path(out) if out is not None else src, staging)
        staging.commit()
    return converted


def convert_tree(src: str | Path, out: str | Path | None = None) -> list[ConvertedFile]:
    """A HART tree (``tokenizer/`` and ``llm/``) or a single checkpoint folder; all or nothing
    over the whole tree: if one file fails, no output of the tree is left (nor a folder this
    call made), and files from an earlier conversion stay as they were."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {src}")
    parts = [name for name in ("tokenizer", "llm") if (src / name / "config.json").is_file()]
    if not parts:
        return convert_folder(src, out)
    out = Path(out) if out is not None else src
    with _Staging() as staging:
        converted = [c for name in parts for c in _stage_folder(src / name, out / name, staging)]
        staging.commit()
    return converted


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="official checkpoint (.bin) -> safetensors without the training-only tensors",
        description="Convert a HART tree (tokenizer/ + llm/) or one checkpoint folder to safetensors, "
                    "dropping attn_bias_for_masking, zero_k_bias and the discriminator (disc.*). "
                    "The loaders prefer the .safetensors files.",
    )
    p.add_argument("src", type=Path, help="a HART tree or a tokenizer/ or llm/ folder")
    p.add_argument("out", type=Path, nargs="?", default=None,
                   help="output folder (default: SRC itself, beside the .bin files)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    converted = convert_tree(args.src, args.out)
    for item in converted:
        print(item.summary())
    saved = sum(sum(c.dropped.values()) for c in converted)
    print(f"converted {len(converted)} file(s); dropped {_mb(saved)} of training-only tensors")
    return 0
