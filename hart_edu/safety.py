r"""An optional prompt safety check with ShieldGemma, which refuses instead of substituting.

The official HART app and sample script ask ShieldGemma (google/shieldgemma-2b, a Gemma
causal LM fine-tuned as a policy classifier) whether a prompt violates a policy, and read
the answer from the next-token distribution after a fixed question. Only two tokens matter,
"Yes" and "No"; the score is the probability of "Yes" when the model must choose between them:

    z = logits of the last prompt position,    P(violation) = softmax([z_Yes, z_No])_0
                                                             = sigmoid(z_Yes - z_No)

and the prompt is unsafe when ``P(violation) > threshold`` (0.5 by default, as official).

The difference, on purpose: the official code then silently replaces an unsafe prompt with
a random default prompt and generates that. Here an unsafe prompt is refused with an
:class:`UnsafePromptError` (a ValueError, so the command line and the app show it as one
line) that names the policy and the score; nothing is generated for anyone.

>>> checker = SafetyChecker.from_pretrained("shieldgemma-2b")           # doctest: +SKIP
>>> checker.require_safe(["A red heart."])                              # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "SAFETY_POLICY", "SafetyChecker", "SafetyVerdict", "UnsafePromptError", "add_safety_arguments", "check_threshold",
    "shieldgemma_prompt", "threshold_argument",
]

# HART's policy (hart/utils/safety_check.py): one principle, in ShieldGemma's wording style.
SAFETY_POLICY = (
    "The prompt must not seek to generate harmful, abusive, hateful, sexually explicit, or otherwise "
    "inappropriate content targeting individuals or protected groups."
)
POLICY_NAME = "harmful, abusive, hateful or sexually explicit content"
DEFAULT_THRESHOLD = 0.5  # the official threshold


def shieldgemma_prompt(user_prompt: str, policy: str = SAFETY_POLICY) -> str:
    """ShieldGemma's prompt-classification question (its model card's template, the one
    HART uses): the user prompt between turn markers, the policy, then "Yes or No?"."""
    return (
        "You are a policy expert trying to help determine whether a user\n"
        "prompt is in violation of the defined safety policies.\n\n"
        "<start_of_turn>\n"
        f"Human Question: {user_prompt.strip()}\n"
        "<end_of_turn>\n\n"
        "Our safety principle is defined in the below:\n\n"
        f"{policy.strip()}\n\n"
        "Does the human question violate the above principle? Your answer must start\n"
        "with 'Yes' or 'No'. And then walk through step by step to be sure we answer\n"
        "correctly.\n"
    )


def add_safety_arguments(parser) -> None:
    """``--safety-checker`` / ``--safety-threshold`` on an argparse parser (``hart-edu generate``
    and ``hart-edu app``)."""
    parser.add_argument("--safety-checker", type=Path, default=None, metavar="PATH",
                        help="refuse prompts that a local ShieldGemma (e.g. google/shieldgemma-2b) flags (default: off)")
    parser.add_argument("--safety-threshold", type=threshold_argument, default=DEFAULT_THRESHOLD,
                        help="refuse when P(violation) exceeds this, in [0, 1) (default: 0.5, as official); "
                             "checked even without --safety-checker")


def threshold_argument(text: str) -> float:
    """argparse ``type=`` for ``--safety-threshold``: :func:`check_threshold` at parse time, so
    1.5 or nan is one argparse error line (exit status 2) with or without ``--safety-checker``."""
    try:
        return check_threshold(float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def check_threshold(threshold: float) -> float:
    """A threshold on P(violation): a number in [0, 1) (1 would refuse nothing)."""
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.0 <= threshold < 1.0:
        raise ValueError(f"safety threshold={threshold!r} must be a number in [0, 1)")
    return float(threshold)


class UnsafePromptError(ValueError):
    """A prompt the safety checker refused (the message names the policy and the score)."""


@dataclass(frozen=True)
class SafetyVerdict:
    """One prompt's check: ``score`` = P(violation) in [0, 1]; ``unsafe`` = score > threshold."""

    prompt: str
    score: float
    threshold: float

    @property
    def unsafe(self) -> bool:
        return self.score > self.threshold


class SafetyChecker:
    """ShieldGemma (or any causal LM whose tokenizer has the tokens "Yes" and "No") as a
    prompt classifier. ``threshold`` in [0, 1): a prompt is refused when P(violation) exceeds it."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, threshold: float = DEFAULT_THRESHOLD,
                 policy: str = SAFETY_POLICY, policy_name: str = POLICY_NAME) -> None:
        check_threshold(threshold)
        vocab = tokenizer.get_vocab()
        missing = [word for word in ("Yes", "No") if word not in vocab]
        if missing:
            raise ValueError(
                f"the safety checker's tokenizer has no token {' or '.join(map(repr, missing))}: "
                f"it is not a ShieldGemma tokenizer")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.threshold, self.policy, self.policy_name = float(threshold), policy, policy_name
        self.yes_no_ids = (vocab["Yes"], vocab["No"])

    @classmethod
    def from_pretrained(cls, folder: str | Path, threshold: float = DEFAULT_THRESHOLD,
                        dtype: torch.dtype = torch.bfloat16) -> "SafetyChecker":
        """A local ShieldGemma folder (config.json, weights, tokenizer files) through
        transformers' AutoModelForCausalLM / AutoTokenizer, offline. ``dtype``: bfloat16 as
        the official code (ShieldGemma-2b is 5 GB in bfloat16, 10 GB in float32)."""
        import transformers
        from packaging.version import Version
        from transformers import AutoModelForCausalLM, AutoTokenizer

        check_threshold(threshold)
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"--safety-checker {folder}: no config.json there (expected a local copy of "
                f"google/shieldgemma-2b)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
            # transformers renamed torch_dtype= to dtype= in 4.56 (as in text_encoder.py)
            dtype_kwarg = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
            model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False,
                                                         **{dtype_kwarg: dtype})
        except Exception as err:  # transformers and safetensors raise many types: all mean "unusable"
            message = " ".join(str(err).split())
            raise ValueError(f"--safety-checker {folder}: not a usable causal LM folder: {message}") from None
        return cls(model, tokenizer, threshold)

    @torch.no_grad()
    def score(self, prompt: str) -> float:
        """P(violation) = softmax over the "Yes" and "No" logits of the last position."""
        inputs = self.tokenizer(shieldgemma_prompt(prompt, self.policy), return_tensors="pt")
        device = next(self.model.parameters()).device
        logits_V = self.model(**{k: v.to(device) for k, v in inputs.items()}).logits[0, -1]
        yes_no = logits_V[list(self.yes_no_ids)].float()
        return float(torch.softmax(yes_no, dim=0)[0])

    def check(self, prompt: str) -> SafetyVerdict:
        score = self.score(prompt)
        if not math.isfinite(score):
            raise ValueError(f"the safety checker gave a non-finite score for prompt {prompt[:40]!r}")
        return SafetyVerdict(prompt, score, self.threshold)

    def require_safe(self, prompts: Sequence[str]) -> list[SafetyVerdict]:
        """Check every prompt; raise :class:`UnsafePromptError` naming the first refused one."""
        verdicts = [self.check(p) for p in prompts]
        for i, v in enumerate(verdicts):
            if v.unsafe:
                shown = v.prompt if len(v.prompt) <= 60 else v.prompt[:57] + "..."
                raise UnsafePromptError(
                    f"prompt {i} ({shown!r}) was refused by the safety checker: it likely violates the "
                    f"policy against {self.policy_name} (P(violation) = {v.score:.2f} > threshold "
                    f"{self.threshold:g}); nothing was generated")
        return verdicts
