r"""Score prompt following automatically: a miniature GenEval on the held-out captioned scenes.

    python -m hart_edu.eval                      # 200 held-out captions, weights/tiny (or: hart-edu eval)
    python -m hart_edu.eval --sweep              # + accuracy against the guidance scale (plot)
    python -m hart_edu.eval --no-residual        # discrete tokens only (no diffusion head)
    python -m hart_edu.eval --given-scales       # + the first k scales from the scene itself

For every held-out caption (compositions never seen in training, see
:func:`hart_edu.data.scenes.is_heldout`) the pipeline generates one image; the checker
:func:`hart_edu.data.scenes.check_image` reads it back the way the scenes are drawn: the
border's palette colour is the background, each palette colour's largest blob is a shape,
its fill and top/bottom balance give its kind, and the two centroids give the relation.
The accuracy of an attribute is the share of images where it is right (``position``: over
the two-shape captions only); ``all`` is the share with every attribute of the caption right,
size included. The run ends with one line (the mean over ``--seeds``)::

    eval: n=200 background=0.97 shape_color=0.93 shape_kind=0.85 size=0.95 position=0.74 all=0.66

``--split validation`` scores captions carved from the training split instead (never trained
on, never the held-out ones): that is where sampling settings are chosen.

Sampling settings: the weights' own (``generation_config.json``, chosen on the validation
captions with ``--choose-settings``); each flag overrides one. One ``torch.Generator`` per seed
drives a whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hart_edu.data.scenes import Scene, heldout_scenes, score_images
from hart_edu.generation_config import GenerationConfig, write_generation_config
from hart_edu.images import to_model_range, to_output_range

__all__ = [
    "ATTRIBUTES",
    "CANDIDATES",
    "choose_settings",
    "SWEEP_CFGS",
    "EvalResult",
    "evaluate",
    "evaluate_across_ranks",
    "eval_line",
    "mean_scores",
    "scores_by_shape_count",
    "pipeline_generator",
    "render_generator",
    "save_grid",
    "add_arguments",
    "build_parser",
    "add_parser",
    "run",
    "main",
]

ATTRIBUTES = ("background", "shape_color", "shape_kind", "size", "position")
# The files an eval run writes into --out, and their hidden temporary files (hart_edu.cli.atomic_output's
# names): what --overwrite may replace (hart_edu.cli.check_output_folder, as for generate).
EVAL_FILES = ("samples.png", "eval.json", "cfg_sweep.png", "given_scales.png", "choice.json")
EVAL_FILE = re.compile("|".join([re.escape(name) for name in EVAL_FILES] + [
    rf"\.{re.escape(Path(name).stem)}\.\d+\.tmp{re.escape(Path(name).suffix)}" for name in EVAL_FILES]))
SWEEP_CFGS = (0.0, 1.0, 2.0, 3.0, 4.5, 6.0)

# A generator maps B scenes (only their captions may be used) to images (B, 3, H, W) in [-1, 1].
Generator = Callable[[Sequence[Scene]], torch.Tensor]


@dataclass
class EvalResult:
    scores: dict[str, float]  # per attribute, plus "size" and "overall" from score_images
    images_B3HW: torch.Tensor  # in [-1, 1]
    scenes: list[Scene]
    seconds: float

    @property
    def n(self) -> int:
        return len(self.scenes)


def evaluate(generate: Generator, scenes: Sequence[Scene], batch_size: int = 50) -> EvalResult:
    """Generate an image per scene (in batches) and score them all."""
    if not scenes:
        raise ValueError("no scenes to evaluate")
    t0 = time.time()
    images = [generate(scenes[i:i + batch_size]) for i in range(0, len(scenes), batch_size)]
    images_B3HW = torch.cat(images)
    if images_B3HW.shape[0] != len(scenes):
        raise ValueError(f"the generator returned {images_B3HW.shape[0]} images for {len(scenes)} captions")
    seconds = time.time() - t0
    return EvalResult(score_images(images_B3HW, scenes), images_B3HW, list(scenes), seconds)


def eval_line(result: EvalResult, scores: dict[str, float] | None = None) -> str:
    """``eval: n=200 background=0.97 shape_color=0.93 shape_kind=0.85 size=0.95 position=0.74 all=0.66``
    (``scores``: instead of the result's own, e.g. the mean over seeds)."""
    scores = result.scores if scores is None else scores
    values = " ".join(f"{name}={scores[name]:.2f}" for name in ATTRIBUTES)
    return f"eval: n={result.n} {values} all={scores['overall']:.2f}"


def mean_scores(results: Sequence[EvalResult]) -> dict[str, float]:
    """The mean of each score over several runs (e.g. seeds) of the same captions."""
    return mean_scores_of([r.scores for r in results])


def mean_scores_of(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    if not scores:
        raise ValueError("no results to average")
    return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}


# The sampling settings --choose-settings tries (on the validation captions): guidance scales,
# each with codes drawn from the full guided distribution and with greedy argmax; no Gumbel
# smoothing (a visualisation aid), the residual diffusion on, the diffusion head at temperature 1.
# (No top-k: under the official quirks, the pipeline's default, a top-k is replaced by 600/300.)
CANDIDATES: tuple[GenerationConfig, ...] = tuple(
    GenerationConfig(cfg=cfg, more_smooth=False, residual=True, greedy=greedy)
    for cfg in (1.0, 2.0, 3.0, 4.5, 6.0)
    for greedy in (False, True))


def choose_settings(score: Callable[[GenerationConfig], dict[str, float]], record: Path,
                    about: dict, candidates: Sequence[GenerationConfig] = CANDIDATES) -> GenerationConfig:
    """Score each candidate with ``score`` (its mean scores), keep the best ``overall`` (every
    attribute right; ties: the earlier candidate), and write every row to ``record`` (JSON)."""
    rows = []
    for c in candidates:
        scores = score(c)
        rows.append({"settings": c.to_dict(), "scores": scores})
        print(f"{c.cfg:>4g} top_k={c.top_k or 0:<3} greedy={c.greedy!s:<5} " +
              " ".join(f"{k}={scores[k]:.3f}" for k in ATTRIBUTES + ("overall",)), flush=True)
    best = max(range(len(rows)), key=lambda i: (rows[i]["scores"]["overall"], -i))
    record.parent.mkdir(parents=True, exist_ok=True)  # made only now: an interrupted run leaves no empty folder
    record.write_text(json.dumps({**about, "candidates": rows, "chosen": best}, indent=2) + "\n")
    return candidates[best]


def scores_by_shape_count(result: EvalResult) -> dict[int, dict[str, float]]:
    """The scores of the one-shape and of the two-shape captions separately: {1: ..., 2: ...}."""
    out = {}
    for count in (1, 2):
        rows = [i for i, s in enumerate(result.scenes) if len(s.shapes) == count]
        if rows:
            out[count] = score_images(result.images_B3HW[rows], [result.scenes[i] for i in rows])
    return out


# --------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------


def render_generator(size: int = 64) -> Generator:
    """A perfect "generator": draws each caption's own scene (the checker's upper bound)."""
    from hart_edu.data.scenes import render

    return lambda scenes: torch.stack([render(scene, size) for scene in scenes])


def pipeline_generator(pipe, settings: "GenerationConfig", generator: torch.Generator,
                       given_scales: int = 0) -> Generator:
    """Images from the pipeline for the scenes' captions with the sampling ``settings`` (every
    field passed explicitly), all draws from ``generator``.

    A ``top_k`` switches the official top-k override off so that the given k is used.
    ``given_scales`` = k > 0: the first k scales are not sampled but taken from the tokenizer's
    encoding of the scene itself (drawn with :func:`hart_edu.data.scenes.render`); the model
    generates the rest. Sweeping k shows at which scale the prompt gets lost."""
    from hart_edu.generation import OfficialQuirks
    from hart_edu.data.scenes import render

    quirks = OfficialQuirks(top_k_override=not settings.top_k)

    def generate(scenes: Sequence[Scene]) -> torch.Tensor:
        given = ()
        if given_scales:
            size = pipe.tokenizer.config.image_size
            images_B3HW = torch.stack([render(s, size) for s in scenes]).to(pipe.device, pipe.dtype)
            with torch.no_grad(), pipe.autocast():
                given = [idx.to(pipe.device) for idx in pipe.tokenizer.encode(images_B3HW).idx_Bl[:given_scales]]
        out = pipe([s.caption for s in scenes], cfg=settings.cfg, residual=settings.residual,
                   more_smooth=settings.more_smooth, top_k=settings.top_k or 0, top_p=settings.top_p or 0.0,
                   greedy=settings.greedy, diffusion_temperature=settings.diffusion_temperature, quirks=quirks,
                   generator=generator, progress=False, given_indices=given)
        return to_model_range(out.image_B3HW)  # the checker reads [-1, 1]

    return generate


# --------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------


def save_grid(images_B3HW: torch.Tensor, scenes: Sequence[Scene], path: Path, count: int = 24,
              columns: int = 6) -> None:
    """The first ``count`` images (B, 3, H, W) with their scenes' captions; a red title marks an
    image that the scene checker finds wrong in some attribute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hart_edu.data.scenes import check_image

    count = min(count, len(images_B3HW), len(scenes))
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(count):
        img_3HW, scene = images_B3HW[i], scenes[i]
        ok = check_image(img_3HW, scene).correct
        ax = axes.flat[i]
        ax.imshow(to_output_range(img_3HW.clamp(-1, 1)).permute(1, 2, 0).numpy())
        words = scene.caption.replace(" background", "").split(" ")
        lines = [" ".join(words[j:j + 4]) for j in range(0, len(words), 4)]
        ax.set_title("\n".join(lines), fontsize=6.5, color="black" if ok else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_sweep(sweep: list[dict], path: Path, key: str = "cfg", xlabel: str = "guidance scale (cfg)",
               title: str = "prompt following on held-out captions") -> None:
    """Accuracy of each attribute against ``row[key]`` (the guidance scale, or the number of
    given scales)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    xs = [row[key] for row in sweep]
    for name in ATTRIBUTES + ("overall",):
        ax.plot(xs, [row["scores"][name] for row in sweep], marker="o", lw=1.2, label=name)
    ax.set(xlabel=xlabel, ylabel="accuracy", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(result: EvalResult, label: str, scores: dict[str, float] | None = None) -> None:
    scores = result.scores if scores is None else scores
    print(f"{label}: {result.n} images in {result.seconds:.1f} s")
    for name in ATTRIBUTES + ("overall",):
        print(f"  {name:<12} {scores[name]:.3f}")


# --------------------------------------------------------------------------------------
# Across the ranks of a torchrun run
# --------------------------------------------------------------------------------------


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch ``batch``'s own generator in :func:`evaluate_across_ranks`."""
    return seed * 1_000_003 + batch


def evaluate_across_ranks(make_generator: Callable[[torch.Generator], Generator], scenes: Sequence[Scene],
                          batch_size: int, seed: int, ranks) -> EvalResult:
    """:func:`evaluate` with the captions split over the ranks (``ranks``:
    :class:`hart_edu.train.distributed.Ranks`).

    The captions go in batches of ``batch_size``; rank r generates batches r, r + W, r + 2W, ...,
    each with a generator of its own, ``make_generator(Generator().manual_seed(batch_seed(seed, k)))``
    (one generator running through all batches, as the one-process command draws, would tie each
    batch to every batch before it). Every rank gathers all images in caption order and scores
    them at once, so the result does not depend on the number of ranks: W ranks give exactly
    the numbers of one (``torchrun --nproc-per-node 1``). They are not the plain command's, whose
    single generator runs through all batches."""
    from hart_edu.train.distributed import gather_objects

    if not scenes:
        raise ValueError("no scenes to evaluate")
    t0 = time.time()
    mine = {}
    for k, start in enumerate(range(0, len(scenes), batch_size)):
        if k % ranks.world_size == ranks.rank:
            generate = make_generator(torch.Generator().manual_seed(batch_seed(seed, k)))
            mine[k] = generate(scenes[start:start + batch_size]).cpu()
    batches = {k: images for part in gather_objects(ranks, mine) for k, images in part.items()}
    images_B3HW = torch.cat([batches[k] for k in sorted(batches)])
    return EvalResult(score_images(images_B3HW, scenes), images_B3HW, list(scenes), time.time() - t0)


@contextlib.contextmanager
def output_file(folder: Path, name: str, written: list[str]) -> Iterator[Path]:
    """A file of ``--out``, written whole or not at all (:func:`hart_edu.cli.atomic_output`);
    the folder is made now, and ``name`` is added to ``written``."""
    from hart_edu.cli import atomic_output

    folder.mkdir(parents=True, exist_ok=True)
    written.append(name)
    with atomic_output(folder / name) as tmp:
        yield tmp


def finish(args: argparse.Namespace, results: Sequence[EvalResult], report: dict, label: str,
           earlier: Sequence[Path], written: list[str]) -> int:
    """The end of every evaluation: the scores averaged over the seeds (``results``, one per
    seed), overall and by shape count, printed as a table and the line; samples.png (the first
    seed's images) and eval.json (``report`` completed) written; the earlier run's files that
    this run did not replace removed (``--overwrite``)."""
    first, scenes = results[0], results[0].scenes
    scores = mean_scores(results)
    by_count = [scores_by_shape_count(r) for r in results]
    print_table(first, label, scores)
    with output_file(args.out, "samples.png", written) as tmp:
        save_grid(first.images_B3HW, scenes, tmp)
    for count, name in ((1, "one_shape"), (2, "two_shape")):
        report[name] = ({"n": sum(len(s.shapes) == count for s in scenes),
                         "scores": mean_scores_of([b[count] for b in by_count])}
                        if all(count in b for b in by_count) else None)
    report.update({"scores": scores, "scores_per_seed": [r.scores for r in results],
                   "seconds": round(sum(r.seconds for r in results), 2), "line": eval_line(first, scores)})
    with output_file(args.out, "eval.json", written) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    remove_earlier_run(earlier, written)
    print(f"wrote {args.out / 'samples.png'} and {args.out / 'eval.json'}")
    print(eval_line(first, scores))
    return 0


def main_across_ranks(args: argparse.Namespace, pipe, settings: GenerationConfig, scenes: list[Scene],
                      seeds: list[int], earlier: Sequence[Path] = ()) -> int:
    """``torchrun --nproc-per-node N -m hart_edu.eval ...``: the plain evaluation (the mean over
    ``--seeds``) with the captions split over the ranks (:func:`evaluate_across_ranks`, gloo, on
    the CPUs); rank 0 prints the table and the line and writes samples.png and eval.json."""
    from hart_edu.paths import display_path
    from hart_edu.train.distributed import init, run_main

    def job() -> int:
        if args.sweep or args.given_scales or args.choose_settings:
            raise ValueError("under torchrun eval scores the captions (over --seeds) only: "
                             "run --sweep, --given-scales and --choose-settings in one process")
        ranks = init(pipe.device)
        make = lambda g: pipeline_generator(pipe, settings, g)  # noqa: E731
        with torch.no_grad():
            results = [evaluate_across_ranks(make, scenes, args.batch_size, seed, ranks) for seed in seeds]
        if not ranks.is_main:
            return 0
        report: dict = {"weights": display_path(args.weights), "split": args.split, "n": args.n, "seeds": seeds,
                        "settings": settings.to_dict(), "ranks": ranks.world_size,
                        "generators": f"one per batch of {args.batch_size} captions, seeded seed * 1000003 + batch"}
        label = f"{ranks.world_size} ranks, cfg={settings.cfg:g}, {len(seeds)} seed(s)"
        return finish(args, results, report, label, earlier, written=[])

    return run_main(job, "python -m hart_edu.eval")


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m hart_edu.eval`` and ``hart-edu eval`` (one definition for both)."""
    from hart_edu.generation_config import GENERATION_CONFIG, MAX_CFG
    from hart_edu.paths import TINY_WEIGHTS

    p.add_argument("--weights", type=Path, default=TINY_WEIGHTS, help="a HART tree (default: weights/tiny)")
    # --captions, not only --n: torchrun reads every argument, the script's too, as a possible
    # abbreviation of its own options, and stops at --n (--nnodes, --nproc-per-node, ...)
    p.add_argument("--captions", "--n", dest="n", type=int, default=200,
                   help="number of captions, at least 1 (default 200); under torchrun write --captions")
    p.add_argument("--split", choices=("heldout", "validation"), default="heldout",
                   help="held-out captions (default; the test), or the validation captions carved "
                        "from training (where sampling settings are chosen)")
    p.add_argument("--cfg", type=float, default=None,
                   help=f"guidance scale, in [0, {MAX_CFG:g}] (default: the weights' {GENERATION_CONFIG}, else 4.5)")
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                   help="the diffusion head's residual (default: the weights' generation_config.json)")
    p.add_argument("--more-smooth", action=argparse.BooleanOptionalAction, default=None,
                   help="Gumbel-smoothed codes (default: the weights' generation_config.json)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely codes (0: all; default: the config's)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling, in (0, 1] (0: off; default: the config's)")
    p.add_argument("--greedy", action=argparse.BooleanOptionalAction, default=None,
                   help="argmax codes at every scale (default: the config's)")
    p.add_argument("--sweep", action="store_true", help=f"also score cfg in {SWEEP_CFGS} and plot it")
    p.add_argument("--given-scales", action="store_true",
                   help="also score with the first k scales taken from each scene's own encoding, "
                        "k = 0 .. S-1, and plot it (where is the prompt lost?)")
    p.add_argument("--choose-settings", action="store_true",
                   help="score every candidate of CANDIDATES on --split validation, write the best "
                        "(by all=) to the weights' generation_config.json and the table to OUT/choice.json")
    p.add_argument("--seeds", default="0",
                   help="seeds of the sampling generator, comma-separated (default 0); the line "
                        "and eval.json give the mean over them")
    p.add_argument("--scene-seed", type=int, default=0, help="seed of the caption list")
    p.add_argument("--batch-size", type=int, default=50, help="captions per pipeline call, at least 1 (default 50)")
    p.add_argument("--out", type=Path, default=Path("out/eval"),
                   help="the folder the grid, JSON and plots go to, made when they are written; it must be "
                        "empty (a run's folder holds that run only, as with hart-edu generate) unless "
                        "--overwrite (default out/eval)")
    p.add_argument("--overwrite", action="store_true",
                   help="reuse a non-empty --out that holds an earlier evaluation: its samples.png, eval.json, "
                        "plots and choice.json are replaced, those this run does not write are removed once it "
                        "has written its own; a folder holding any other file is still refused (default: off)")


DESCRIPTION = __doc__.split("\n")[0]


def build_parser() -> argparse.ArgumentParser:
    """``python -m hart_edu.eval``'s parser."""
    p = argparse.ArgumentParser(prog="python -m hart_edu.eval", description=DESCRIPTION)
    add_arguments(p)
    return p


def add_parser(sub) -> None:
    """``hart-edu eval``: the same options as ``python -m hart_edu.eval`` (:func:`add_arguments`)."""
    p = sub.add_parser("eval", help="score prompt following on held-out captions (a miniature GenEval)",
                       description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(run=run)


def check_arguments(args: argparse.Namespace) -> tuple[list[int], GenerationConfig, list[Path]]:
    """Everything that can be checked before the model loads; a ValueError (one line naming
    the option and what to do) for bad input. Returns the seeds, the sampling settings (the
    weights' generation_config.json, overridden by the options) and the earlier run's files in
    --out that this run replaces (``--overwrite``; else none). Nothing is written."""
    from hart_edu.cli import check_output_folder, check_writable
    from hart_edu.generation_config import read_generation_config
    from hart_edu.sampler import check_seed

    if args.n < 1:
        raise ValueError(f"--captions (--n) {args.n}: the number of captions must be at least 1")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: give at least 1 caption per batch")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds must be integers separated by commas, got {args.seeds!r}") from None
    for seed in seeds:
        check_seed(seed)
    if args.choose_settings and args.split != "validation":
        raise ValueError("--choose-settings chooses on the validation captions: add --split validation")
    if not args.weights.is_dir():
        raise FileNotFoundError(f"--weights {args.weights}: HART weights folder not found: give a tree with "
                                f"tokenizer/ and llm/")
    settings = read_generation_config(args.weights).override(
        cfg=args.cfg, residual=args.residual, more_smooth=args.more_smooth, top_k=args.top_k, top_p=args.top_p,
        greedy=args.greedy)
    earlier = check_output_folder(args.out, overwrite=args.overwrite, run_file=EVAL_FILE, writer="hart-edu eval",
                                  replaced="an earlier evaluation's " + ", ".join(EVAL_FILES))
    if args.choose_settings:  # the chosen settings go into the weights' generation_config.json
        check_writable(args.weights, "--weights")
    return seeds, settings, earlier


def remove_earlier_run(earlier: Sequence[Path], written: Sequence[str]) -> None:
    """``--overwrite``: once this run's files are written, remove the earlier run's files (and
    temporary files) that it did not replace, so that --out holds this run only."""
    for path in earlier:
        if path.name not in written:
            path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m hart_edu.eval``: bad input is one line and exit status 2, Ctrl-C one line and
    130, as with ``hart-edu eval``."""
    from hart_edu.cli import report_error, report_interrupt

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (OSError, ValueError) as err:
        return report_error(parser.prog, err)
    except KeyboardInterrupt:
        return report_interrupt(parser.prog)


def run(args: argparse.Namespace) -> int:
    """Evaluate as the options say (see the module docstring); bad input raises a ValueError or
    an OSError before the model loads, and the output folder is made only when a file is
    written to it (each file whole or not at all)."""
    from hart_edu.paths import display_path

    seeds, settings, earlier = check_arguments(args)
    written: list[str] = []
    output = lambda name: output_file(args.out, name, written)  # noqa: E731

    from hart_edu.sampler import HARTPipeline

    pipe = HARTPipeline.from_pretrained(args.weights)  # finds the tiny tree's text encoder itself
    scenes = heldout_scenes(args.n, seed=args.scene_seed, split=args.split)
    from hart_edu.train.distributed import launched_by_torchrun

    if launched_by_torchrun():  # torchrun -m hart_edu.eval: the captions split over the ranks
        return main_across_ranks(args, pipe, settings, scenes, seeds, earlier)

    def score(settings: GenerationConfig, given_scales: int = 0, seed: int = seeds[0]) -> EvalResult:
        gen = pipeline_generator(pipe, settings, torch.Generator().manual_seed(seed), given_scales)
        with torch.no_grad():
            return evaluate(gen, scenes, args.batch_size)

    if args.choose_settings:
        best = choose_settings(lambda s: mean_scores([score(s, seed=seed) for seed in seeds]), args.out / "choice.json",
                               {"weights": display_path(args.weights), "split": args.split, "n": args.n,
                                "seeds": seeds})
        path = write_generation_config(
            args.weights, best, note="chosen by python -m hart_edu.eval --choose-settings: the best all= of "
                                     f"{len(CANDIDATES)} candidates (see reports/validation/choice.json)",
            chosen_on=f"{args.n} validation captions (carved from training, never the held-out ones), "
                      f"seeds {args.seeds}")
        remove_earlier_run(earlier, ["choice.json"])
        print(f"wrote {display_path(path)}")
        return 0

    report: dict = {"weights": display_path(args.weights), "split": args.split, "n": args.n, "seeds": seeds,
                    "settings": settings.to_dict()}
    if args.sweep:
        sweep = []
        for cfg in SWEEP_CFGS:
            r = score(settings.override(cfg=cfg))
            print(f"cfg {cfg:>4}: " + " ".join(f"{k}={r.scores[k]:.3f}" for k in ATTRIBUTES + ("overall",)))
            sweep.append({"cfg": cfg, "scores": r.scores})
        with output("cfg_sweep.png") as tmp:
            save_sweep(sweep, tmp)
        report["sweep"] = sweep
        print(f"wrote {args.out / 'cfg_sweep.png'}")

    result = score(settings)  # the plain run: also the sweep's k = 0
    if args.given_scales:
        rows = []
        for k in range(len(pipe.transformer.config.patch_nums)):
            r = result if k == 0 else score(settings, given_scales=k)
            print(f"given scales {k}: " + " ".join(f"{n}={r.scores[n]:.3f}" for n in ATTRIBUTES + ("overall",)))
            rows.append({"given_scales": k, "scores": r.scores})
        with output("given_scales.png") as tmp:
            save_sweep(rows, tmp, key="given_scales",
                       xlabel="scales taken from the scene's own codes (the rest generated)",
                       title=f"where the prompt is lost (cfg {settings.cfg:g})")
        report["given_scales"] = rows
        print(f"wrote {args.out / 'given_scales.png'}")

    results = [result] + [score(settings, seed=seed) for seed in seeds[1:]]
    label = f"cfg={settings.cfg:g}, residual {'on' if settings.residual else 'off'}, {len(seeds)} seed(s)"
    return finish(args, results, report, label, earlier, written)


if __name__ == "__main__":
    raise SystemExit(main())
