"""Compare training recipes of the tiny HART by their loss curves, step for step.

    python -m hart_edu.recipe_runs RUNS_DIR --out weights/tiny/reports/exploration/NAME.json \\
        --note "what ran where"

``RUNS_DIR`` holds one folder per recipe, each with the loss history of a training run
(``reports/transformer_history.json`` of a finished run, or ``partial/history.json`` of one
stopped early) and the command line it ran (``command.txt``, optional). The record keeps, per
recipe, the mean of every logged quantity over windows of ``--window`` steps (the curves at a
readable size), and the plot draws the 2x2 scale's cross-entropy (where the layout is decided)
and the mean cross-entropy of all codes against the step.

Why compare at equal steps? A recipe's cost on the CPU is (steps x batch); comparing curves
at the same step shows what each change buys per step before anyone pays for a full run. Runs
stopped early are marked as such: their learning rate had not decayed yet, so their numbers are
not final results.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HISTORY_FILES = ("reports/transformer_history.json", "partial/history.json")


def window_means(history: list[dict[str, Any]], window: int) -> list[dict[str, Any]]:
    """Mean of ``ce``, ``diffusion`` and every entry of ``ce_scales`` over consecutive windows
    of ``window`` steps (the last, incomplete window is dropped); ``step`` is the window's end."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    out = []
    for start in range(0, len(history) - window + 1, window):
        part = history[start:start + window]
        n_scales = len(part[0]["ce_scales"])
        out.append({
            "step": part[-1]["step"] + 1,
            "ce": sum(h["ce"] for h in part) / window,
            "diffusion": sum(h["diffusion"] for h in part) / window,
            "ce_scales": [sum(h["ce_scales"][i] for h in part) / window for i in range(n_scales)],
        })
    return out


def read_run(folder: Path) -> tuple[list[dict[str, Any]], bool]:
    """(history, finished) of one recipe's folder."""
    for name in HISTORY_FILES:
        path = folder / name
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8")), name.startswith("reports")
    raise FileNotFoundError(f"{folder} has no loss history ({' or '.join(HISTORY_FILES)})")


def record(runs_dir: Path, window: int = 50, note: str = "") -> dict[str, Any]:
    """The comparison record of every recipe folder in ``runs_dir`` (sorted by name)."""
    folders = sorted(p for p in Path(runs_dir).iterdir() if p.is_dir() and any((p / f).is_file() for f in HISTORY_FILES))
    if not folders:
        raise FileNotFoundError(f"no recipe folders with a loss history in {runs_dir}")
    runs = {}
    for folder in folders:
        history, finished = read_run(folder)
        command = folder / "command.txt"
        runs[folder.name] = {
            "steps_done": len(history),
            "finished": finished,
            "command": command.read_text(encoding="utf-8").strip() if command.is_file() else None,
            "curve": window_means(history, window),
        }
    return {"window": window, "note": note, "runs": runs}


def at_step(run: dict[str, Any], step: int) -> dict[str, Any] | None:
    """The window of ``run``'s curve that ends at ``step`` (None when the run did not get there)."""
    return next((w for w in run["curve"] if w["step"] == step), None)


def plot(rec: dict[str, Any], path: Path, scale: int = 1, patch_nums: tuple[int, ...] = (1, 2, 3, 4, 6, 8)) -> None:
    """Two panels against the step: the cross-entropy of scale ``scale`` and the mean of all codes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = patch_nums[scale]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in rec["runs"].items():
        steps = [w["step"] for w in run["curve"]]
        (line,) = left.plot(steps, [w["ce_scales"][scale] for w in run["curve"]], label=name)
        right.plot(steps, [w["ce"] for w in run["curve"]], color=line.get_color(), label=name)
    left.set_title(f"{p}x{p} scale: cross-entropy (nats per code)")
    right.set_title("all codes: cross-entropy (nats per code)")
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(f"recipes compared step for step (means over {rec['window']} steps)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hart_edu.recipe_runs", description=__doc__.split("\n")[0])
    p.add_argument("runs", type=Path, help="a folder with one sub-folder per recipe")
    p.add_argument("--out", type=Path, required=True, help="the record (.json); the plot goes beside it (.png)")
    p.add_argument("--window", type=int, default=50, help="steps per mean (default 50)")
    p.add_argument("--note", default="", help="what ran where (device, software), kept in the record")
    args = p.parse_args(argv)
    if args.out.suffix != ".json":
        print(f"error: --out must name a .json file, got {args.out}", file=sys.stderr)
        return 2
    try:
        rec = record(args.runs, args.window, args.note)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rec, indent=1) + "\n", encoding="utf-8")
    plot(rec, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
