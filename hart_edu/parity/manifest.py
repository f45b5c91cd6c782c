"""Does hart_edu build the *released* HART architecture? (keys, shapes, parameter counts)

``golden/manifest-hart-0.7b-1024px.json`` lists, for each part of the released checkpoint
(the tokenizer and two hypotheses for the transformer), the config the official classes were
built with and every state-dict key with its shape. Each *part checker* here builds our model
from that config on the ``meta`` device (shapes only, no memory) and compares.

Checkers are registered in :data:`MANIFEST_PARTS` as (manifest section, "module:function");
a function takes the section dict and returns a :class:`ManifestResult`.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

MANIFEST_PARTS: list[tuple[str, str]] = [
    ("tokenizer", "hart_edu.parity.manifest:check_tokenizer"),
    ("transformer_llm", "hart_edu.parity.transformer:check_manifest_part"),
    ("transformer_llm_alt", "hart_edu.parity.transformer:check_manifest_part"),
]


@dataclass
class ManifestResult:
    part: str
    n_keys_expected: int
    n_keys_ours: int
    params_expected: int
    params_ours: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape or self.error) and (
            self.params_expected == self.params_ours
        )


def compare_shapes(
    part: str,
    expected: dict[str, dict[str, Any]],
    ours: dict[str, torch.Size],
    params_expected: int,
    params_ours: int,
) -> ManifestResult:
    """Compare a manifest ``state_dict`` section with our ``{key: shape}``."""
    return ManifestResult(
        part=part,
        n_keys_expected=len(expected),
        n_keys_ours=len(ours),
        params_expected=params_expected,
        params_ours=params_ours,
        missing=sorted(set(expected) - set(ours)),
        unexpected=sorted(set(ours) - set(expected)),
        wrong_shape=sorted(
            f"{k}: ours {tuple(ours[k])} vs {tuple(v['shape'])}"
            for k, v in expected.items()
            if k in ours and tuple(ours[k]) != tuple(v["shape"])
        ),
    )


def check_tokenizer(section: dict[str, Any]) -> ManifestResult:
    """The tokenizer's ``vae.*`` keys (the training-only ``disc.*`` keys are not ours to build)."""
    from hart_edu.hybrid_tokenizer import HybridTokenizer, TokenizerConfig
    from hart_edu.checkpoint import config_from_dict

    config = config_from_dict(TokenizerConfig, section["config_used"], source="manifest tokenizer")
    with torch.device("meta"):
        model = HybridTokenizer(config)
    ours = {k: v.shape for k, v in model.official_state_dict().items()}
    expected = {k: v for k, v in section["state_dict"].items() if k.startswith("vae.")}
    params_ours = sum(p.numel() for p in model.parameters())
    return compare_shapes(
        "tokenizer (vae.*)", expected, ours, section["total_params_without_disc"], params_ours
    )


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest's JSON object; a ValueError (one line naming the file and what is wrong)
    for a file that is not UTF-8 JSON, not an object, or lacks a part of :data:`MANIFEST_PARTS`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"manifest {path} is not UTF-8 text (byte at offset {err.start}): "
                         f"give a manifest-*.json such as tests/golden/manifest-hart-0.7b-1024px.json") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"manifest {path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): "
                         f"give a manifest-*.json such as tests/golden/manifest-hart-0.7b-1024px.json") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"manifest {path} must hold a JSON object, got {type(manifest).__name__}")
    missing = [section for section, _ in MANIFEST_PARTS if not isinstance(manifest.get(section), dict)]
    if missing:
        raise ValueError(f"manifest {path} has no part(s) {', '.join(missing)}: is it a HART manifest?")
    return manifest


def check_manifest(path: str | Path) -> list[ManifestResult]:
    """Check every part of :data:`MANIFEST_PARTS` against the manifest at ``path``
    (:func:`read_manifest`: errors in the file itself raise; a part that fails is reported)."""
    manifest = read_manifest(path)
    results = []
    for section, spec in MANIFEST_PARTS:
        module, func = spec.split(":")
        try:
            results.append(getattr(importlib.import_module(module), func)(manifest[section]))
        except Exception as err:  # a broken part is reported, the others still checked
            results.append(ManifestResult(section, 0, 0, 0, 0, error=f"{type(err).__name__}: {err}"))
    return results


def format_manifest(results: list[ManifestResult]) -> str:
    lines = [f"{'part':<34} {'keys (ours/released)':>22} {'params (ours/released)':>30}  status"]
    for r in results:
        keys = f"{r.n_keys_ours}/{r.n_keys_expected}"
        params = f"{r.params_ours:,}/{r.params_expected:,}"
        lines.append(f"{r.part:<34} {keys:>22} {params:>30}  {'ok' if r.ok else 'MISMATCH'}")
        for label, items in (("missing", r.missing), ("unexpected", r.unexpected),
                             ("wrong shape", r.wrong_shape)):
            if items:
                lines.append(f"    {label} ({len(items)}): " + ", ".join(items[:8])
                             + (" ..." if len(items) > 8 else ""))
        if r.error:
            lines.append(f"    error: {r.error}")
    ok = sum(r.ok for r in results)
    lines.append(f"manifest: {ok}/{len(results)} parts match")
    return "\n".join(lines)
