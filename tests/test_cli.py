"""``hart-edu generate``: reproducible files, the options, and bad input (message, exit != 0,
no files, no traceback). Runs in-process through ``cli.main(argv)``, plus one real
``python -m hart_edu generate`` subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hart_edu import cli
from test_sampler import build_tiny_tree

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["w1 w2 w3", "w9 w8"]


def run(argv: list[str]) -> int:
    """cli.main, with argparse's own exits turned into return codes."""
    try:
        return cli.main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def generate_argv(tree: Path, out: Path, *extra: str) -> list[str]:
    argv = ["generate", "--weights", str(tree), "--out", str(out), "--seed", "1", "--no-progress"]
    for prompt in PROMPTS:
        argv += ["--prompt", prompt]
    return argv + list(extra)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def tree(golden_dir, tmp_path_factory) -> Path:
    return build_tiny_tree(golden_dir, tmp_path_factory.mktemp("hart_tree"))


@pytest.fixture(scope="module")
def first_run(tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "first"
    assert run(generate_argv(tree, out)) == 0
    return out


# ------------------------------------------------------------------------------- it works


def test_same_seed_gives_identical_files(tree, first_run, tmp_path, capsys):
    first = folder_bytes(first_run)
    assert sorted(first) == ["000000.png", "000001.png", "prompt.txt"]
    assert first["prompt.txt"].decode("utf-8") == "\n".join(PROMPTS)
    assert first["000000.png"].startswith(b"\x89PNG") and first["000000.png"] != first["000001.png"]

    capsys.readouterr()
    assert run(generate_argv(tree, tmp_path / "again")) == 0
    assert folder_bytes(tmp_path / "again") == first
    printed = capsys.readouterr()
    assert str(tmp_path / "again") in printed.out
    # The tiny model's context is 8 tokens: the official system prompt is cut, and we say so.
    assert "warning: the system prompt has" in printed.err


def test_python_dash_m_in_a_fresh_process_gives_the_same_files(tree, first_run, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "hart_edu", *generate_argv(tree, tmp_path / "sub")]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert folder_bytes(tmp_path / "sub") == folder_bytes(first_run)


def test_prompt_file_grid_and_switches(tree, tmp_path):
    from PIL import Image

    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_bytes("w4 w5\r\n\nw6 café ☕\n".encode("utf-8"))
    out = tmp_path / "grid"
    argv = ["generate", "--weights", str(tree), "--prompt-file", str(prompt_file), "--out", str(out),
            "--grid", "--num-images", "2", "--no-residual", "--no-more-smooth", "--cfg", "3", "--no-progress"]
    assert run(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["prompt.txt", "sample_images.png"]
    assert (out / "prompt.txt").read_text(encoding="utf-8") == "w4 w5\nw6 café ☕"
    size = 32  # the tiny tokenizer's images; 4 images in one row, 2 px black padding
    with Image.open(out / "sample_images.png") as grid:
        assert grid.size == (4 * (size + 2) + 2, size + 4) and grid.mode == "RGB"


def test_booleans_can_be_switched_off():
    parser = cli.build_parser()
    on = parser.parse_args(["generate", "--prompt", "x"])
    assert (on.ema, on.grid, on.official_quirks) == (True, False, True)
    assert on.system_prompt is None  # the weights tree's choice (text_encoder.json), see HARTPipeline
    # the sampling options: None = the weights' generation_config.json (see test_generation_config)
    assert (on.more_smooth, on.residual, on.greedy, on.diffusion_temperature) == (None, None, None, None)
    off = parser.parse_args(["generate", "--prompt", "x", "--no-more-smooth", "--no-residual", "--no-ema",
                             "--no-system-prompt", "--no-grid", "--no-official-quirks", "--no-greedy"])
    assert [off.more_smooth, off.residual, off.ema, off.system_prompt, off.grid, off.official_quirks,
            off.greedy] == [False] * 7
    assert (on.seed, on.cfg, on.num_images, on.top_k, on.top_p) == (1, None, 1, None, None)


def test_generate_and_run_real_take_the_same_cpu_arguments():
    """--dtype / --quantize come from one place (hart_edu.cpu_dtype.add_cpu_arguments)."""
    parser = cli.build_parser()
    commands = (["generate", "--prompt", "x"], ["run-real", "--random-weights"])
    for argv in commands:
        default = parser.parse_args(argv)
        assert (default.dtype, default.quantize) == ("auto", "none")
        chosen = parser.parse_args(argv + ["--dtype", "float32", "--quantize", "int8"])
        assert (chosen.dtype, chosen.quantize) == ("float32", "int8")
        with pytest.raises(SystemExit):
            parser.parse_args(argv + ["--dtype", "int8"])


# ------------------------------------------------------------------------------ bad input


def bad_cases(tree: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, a fragment the message must contain)."""
    not_utf8 = tmp / "latin1.txt"
    not_utf8.write_bytes("caf\xe9\n".encode("latin-1"))
    blank = tmp / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    a_file = tmp / "a_file"
    a_file.write_text("x", encoding="utf-8")
    no_llm = tmp / "no_llm"
    no_llm.mkdir()
    (no_llm / "tokenizer").symlink_to(tree / "tokenizer")
    out = ["--out", str(tmp / "out"), "--weights", str(tree)]
    p = ["--prompt", "w1"]
    return {
        "no prompt": (["generate", *out], "--prompt"),
        "prompt and prompt file": (["generate", *out, *p, "--prompt-file", str(blank)], "not allowed with"),
        "non-UTF-8 prompt file": (["generate", *out, "--prompt-file", str(not_utf8)], "not UTF-8"),
        "missing prompt file": (["generate", *out, "--prompt-file", str(tmp / "nope.txt")], "does not exist"),
        "blank prompt file": (["generate", *out, "--prompt-file", str(blank)], "no prompt"),
        "negative cfg": (["generate", *out, *p, "--cfg", "-1"], "cfg"),
        "huge cfg": (["generate", *out, *p, "--cfg", "51"], "cfg"),
        "nan cfg": (["generate", *out, *p, "--cfg", "nan"], "cfg"),
        "cfg not a number": (["generate", *out, *p, "--cfg", "abc"], "invalid float"),
        "negative top-p": (["generate", *out, *p, "--top-p", "-0.1"], "top_p"),  # (0 is "off")
        "top-p above one": (["generate", *out, *p, "--top-p", "1.5"], "top_p"),
        "negative top-k": (["generate", *out, *p, "--top-k", "-1"], "top_k"),
        "zero images": (["generate", *out, *p, "--num-images", "0"], "num_images"),
        "negative seed": (["generate", *out, *p, "--seed", "-3"], "seed"),
        "zero diffusion temperature": (["generate", *out, *p, "--diffusion-temperature", "0"], "diffusion_temperature"),
        "missing weights": (["generate", *p, "--out", str(tmp / "out"), "--weights", str(tmp / "none")], "not found"),
        "tree without llm": (["generate", *p, "--out", str(tmp / "out"), "--weights", str(no_llm)], "no llm/"),
        "missing text encoder": (["generate", *out, *p, "--text-encoder", str(tmp / "none")], "text encoder"),
        "out is a file": (["generate", *p, "--weights", str(tree), "--out", str(a_file)], "not a folder"),
        "out named like an image": (["generate", *p, "--weights", str(tree), "--out", str(tmp / "cat.png")],
                                    "looks like an image file name"),
    }


CASE_NAMES = [
    "no prompt", "prompt and prompt file", "non-UTF-8 prompt file", "missing prompt file", "blank prompt file",
    "negative cfg", "huge cfg", "nan cfg", "cfg not a number", "negative top-p", "top-p above one",
    "negative top-k", "zero images", "negative seed", "zero diffusion temperature", "missing weights", "tree without llm",
    "missing text encoder", "out is a file", "out named like an image",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_clear_line_and_no_files(tree, tmp_path, capsys, name):
    argv, fragment = bad_cases(tree, tmp_path)[name]
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    code = run(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert fragment in err, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line] == [err.splitlines()[-1]]
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no output folder


def test_missing_default_weights_say_how_to_choose(tmp_path, monkeypatch, capsys):
    import hart_edu.paths

    monkeypatch.setattr(hart_edu.paths, "TINY_WEIGHTS", tmp_path / "weights" / "tiny")
    assert run(["generate", "--prompt", "w1", "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "--weights" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_writing_is_all_or_nothing(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(FileNotFoundError):
        cli.write_all_or_nothing(out, {"a.png": b"1", "missing_dir/b.png": b"2"})
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(FileNotFoundError):
        cli.write_all_or_nothing(existing, {"a.png": b"1", "missing_dir/b.png": b"2"})
    assert list(existing.iterdir()) == []
    written = cli.write_all_or_nothing(existing, {"a.png": b"1", "b.png": b"2"})
    assert [p.name for p in written] == ["a.png", "b.png"] and sorted(p.name for p in existing.iterdir()) == ["a.png", "b.png"]


# ------------------------------------------------------------------------------- the help


def _generate_parser():
    return cli.build_parser()._subparsers._group_actions[0].choices["generate"]


def test_generate_help_states_the_parsers_real_defaults():
    """Every "(default: X)" in ``generate --help`` is what the parser really gives: on/off for
    the switches, the value itself otherwise (options whose default is None explain theirs; the
    sampling options' None is the weights' generation_config.json, else the official value)."""
    import re

    from hart_edu.generation_config import GenerationConfig

    checked = 0
    for action in _generate_parser()._actions:
        if action.dest in cli.SAMPLING_OPTIONS:
            assert action.default is None, action.option_strings
            stated = re.findall(r"default: the weights' generation_config\.json, else ([^;,)]+)",
                                " ".join(action.help.split()))
            official = getattr(GenerationConfig(), action.dest)
            real = ("on" if official else "off") if official is None or isinstance(official, bool) else f"{official:g}"
            assert stated and stated[-1].strip() == real, (action.option_strings, stated, real)
            checked += 1
            continue
        if action.help is None or action.default is None or action.default == "==SUPPRESS==":
            continue
        stated = re.findall(r"default: ([^;,)]+)", " ".join(action.help.split()))
        assert stated, f"{action.option_strings} does not state its default"
        real = ("on" if action.default else "off") if isinstance(action.default, bool) else str(action.default)
        assert stated[-1].strip() == real, (action.option_strings, stated[-1], real)
        checked += 1
    assert checked >= 18


def test_generate_help_names_the_files_ema_and_text_encoder_really_read():
    from hart_edu.checkpoint import EMA_WEIGHT_FILES, WEIGHT_FILES
    from hart_edu.text_encoder import TEXT_ENCODER_POINTER

    helps = {a.dest: " ".join(a.help.split()) for a in _generate_parser()._actions if a.help}
    for name in EMA_WEIGHT_FILES + WEIGHT_FILES:
        assert f"llm/{name}" in helps["ema"], helps["ema"]
    assert "WEIGHTS/text_encoder/" in helps["text_encoder"]
    assert f"WEIGHTS/{TEXT_ENCODER_POINTER}" in helps["text_encoder"], helps["text_encoder"]


def test_no_progress_also_hides_the_loading_bar(tree, tmp_path, capsys):
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    capsys.readouterr()
    assert run(generate_argv(tree, tmp_path / "quiet")) == 0  # --no-progress
    quiet = capsys.readouterr().err
    assert "Loading weights" not in quiet and "it/s" not in quiet, quiet
    assert run(generate_argv(tree, tmp_path / "loud", "--progress")) == 0
    loud = capsys.readouterr().err
    assert "Loading weights" in loud or not before, loud  # the bar the option must hide (a control)
    assert hf_logging.is_progress_bar_enabled() == before  # the process-wide setting is put back


def test_the_determinism_rule_the_readme_states(tree, first_run, tmp_path):
    """README, Generate, **Determinism**: the same command and seed give the same bytes
    (test_same_seed_gives_identical_files), and an image depends on the whole batch: one
    generator draws for all images of a run, as sample.py does, so image 0 changes with
    --num-images and with the prompts."""
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    assert "**Determinism.** The same command with the same seed gives the same bytes when" in readme
    assert "changing `--num-images`, the prompts or their order changes every image, image 0 included" in readme
    alone = tmp_path / "alone"
    argv = ["generate", "--weights", str(tree), "--seed", "1", "--no-progress", "--prompt", PROMPTS[0]]
    assert run([*argv, "--out", str(alone)]) == 0
    assert run([*argv, "--out", str(tmp_path / "two"), "--num-images", "2"]) == 0
    image0 = folder_bytes(first_run)["000000.png"]  # PROMPTS[0] first, then PROMPTS[1]
    assert folder_bytes(alone)["000000.png"] != image0
    assert folder_bytes(tmp_path / "two")["000000.png"] != folder_bytes(alone)["000000.png"]
