"""Bad input at ``hart-edu generate`` and ``hart-edu app``: one line on stderr, exit status 2,
no traceback and no file written, for every case of issue 7's list.

Prompts: an empty or blank prompt is refused; a prompt longer than the text encoder's
``max_length`` tokens is cut to them with a one-line warning (the official behaviour) and
the run goes on; beyond 10,000 characters it is refused (hart_edu.limits). Checkpoints:
truncated or corrupted files (safetensors and .bin), a pickle that would run code when
unpickled (refused by ``torch.load(weights_only=True)``: the marker file it would create
must not exist), and configs of another model type. Damaged tensor data is caught in .bin
files by their zip CRC-32s (hart_edu.checkpoint checks them); safetensors files carry no
checksum, so only damage to their header or length can be detected there.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from hart_edu import cli
from hart_edu.limits import MAX_IMAGES, MAX_PROMPT_CHARS, MAX_PROMPT_FILE_BYTES, max_threads
from test_sampler import build_tiny_tree


@pytest.fixture(scope="module")
def pristine(golden_dir, tmp_path_factory) -> Path:
    return build_tiny_tree(golden_dir, tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def tree(pristine, tmp_path) -> Path:
    """A fresh copy of the tiny tree that a test may damage."""
    return Path(shutil.copytree(pristine, tmp_path / "tree"))


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def assert_one_clear_line(code: int, err: str, fragment: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert [line for line in lines if "error:" in line] == [lines[-1]], err  # (loading bars may precede)
    assert fragment in lines[-1], lines[-1]


def generate(tree: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--weights", str(tree), "--out", str(out), "--no-progress", *extra]


@pytest.fixture
def app_must_not_serve(monkeypatch):
    """``hart-edu app`` loads everything before it serves; a test that expects a refusal must
    never reach the server (it would block)."""
    import hart_edu.app

    def refuse(studio):
        raise AssertionError("hart-edu app loaded a damaged tree and was about to serve it")

    monkeypatch.setattr(hart_edu.app, "build_ui", refuse)


# ------------------------------------------------------------------------------------ prompts


@pytest.mark.parametrize("prompt, fragment", [
    ("", "prompt 0 is empty"),
    (" \t ", "prompt 0 is empty"),
    ("w1 " * (MAX_PROMPT_CHARS // 3 + 1), f"more than the limit of {MAX_PROMPT_CHARS:,}"),
])
def test_empty_and_absurdly_long_prompts_are_refused(pristine, tmp_path, capsys, prompt, fragment):
    out = tmp_path / "out"
    code, err = run_cli(generate(pristine, out, "--prompt", "w1", "--prompt", prompt), capsys)
    assert_one_clear_line(code, err, fragment.replace("prompt 0", "prompt 1"))
    assert not out.exists()


@pytest.mark.parametrize("command", ["generate", "run-real"])
def test_a_prompt_that_is_not_utf8_is_refused_before_any_model_loads(pristine, tmp_path, capsys, monkeypatch, command):
    """Bytes that are not UTF-8 on the command line arrive as lone surrogates (surrogateescape,
    as ``os.fsdecode`` makes them); the tokenizer failed on them with a TypeError after loading."""
    import hart_edu.profile
    import hart_edu.sampler

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded for a prompt that is not UTF-8")

    monkeypatch.setattr(hart_edu.sampler.HARTPipeline, "from_pretrained", no_model)
    monkeypatch.setattr(hart_edu.profile, "random_release_pipeline", no_model)
    prompt = "w1 " + os.fsdecode(b"caf\xe9")  # what sys.argv holds for these bytes
    assert "\udce9" in prompt
    out = tmp_path / "out"
    argv = (generate(pristine, out, "--prompt", prompt) if command == "generate"
            else ["run-real", "--random-weights", "--size", "tiny", "--prompt", prompt])
    code, err = run_cli(argv, capsys)
    assert_one_clear_line(code, err, "prompt 0 is not valid UTF-8 text (byte 0xe9 at character 6)")
    assert not out.exists()


def test_a_prompt_over_the_token_limit_is_cut_with_a_warning(pristine, tmp_path, capsys):
    T = json.loads((pristine / "llm" / "config.json").read_text())["context_token"]  # the encoder's max_length
    long, cut = " ".join(f"w{i}" for i in range(1, 40)), " ".join(f"w{i}" for i in range(1, T + 1))
    code, err = run_cli(generate(pristine, tmp_path / "long", "--prompt", long, "--no-system-prompt"), capsys)
    assert code == 0, err
    assert f"prompt 0 has 39 tokens, more than max_length={T}: it is truncated" in err and "Traceback" not in err
    # what was generated is exactly the image of the prompt's first T tokens
    assert run_cli(generate(pristine, tmp_path / "cut", "--prompt", cut, "--no-system-prompt"), capsys)[0] == 0
    assert (tmp_path / "long" / "000000.png").read_bytes() == (tmp_path / "cut" / "000000.png").read_bytes()


@pytest.mark.parametrize("content, fragment", [
    ("w1\n".encode("utf-16"), "not UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not UTF-8"),
    (b"w1\n" * (MAX_PROMPT_FILE_BYTES // 3 + 1), "bytes, more than"),
])
def test_prompt_files_that_are_not_utf8_text_or_too_big(pristine, tmp_path, capsys, content, fragment):
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_bytes(content)
    code, err = run_cli(generate(pristine, tmp_path / "out", "--prompt-file", str(prompt_file)), capsys)
    assert_one_clear_line(code, err, fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, fragment", [
    (["--num-images", "1000000000"], f"more than {MAX_IMAGES} in one run"),
    (["--num-images", str(MAX_IMAGES // 2 + 1), "--prompt", "w2"], f"more than {MAX_IMAGES} in one run"),
    (["--num-images", "-5"], "num_images"),
    (["--num-images", "1e3"], "invalid int value"),
    (["--cfg", "1e308"], "cfg"),
    (["--cfg", "inf"], "cfg"),
    (["--cfg", "-inf"], "cfg"),
    (["--seed", str(2**64)], "seed"),
    (["--top-k", "99999999999999999999999"], None),  # a huge top-k is fine (all codes): not an error
])
def test_absurd_numbers(pristine, tmp_path, capsys, extra, fragment):
    out = tmp_path / "out"
    code, err = run_cli(generate(pristine, out, "--prompt", "w1", *extra), capsys)
    if fragment is None:
        assert code == 0 and "Traceback" not in err
        return
    assert_one_clear_line(code, err, fragment)
    assert not out.exists()


@pytest.mark.parametrize("threads", ["100000", "0", "-1", str(max_threads() + 1)])
def test_run_real_threads_are_capped_at_the_cpus(tmp_path, capsys, threads):
    """``run-real --threads 100000`` made OpenMP crash (exit 139): refused by the parser now."""
    out = tmp_path / "r.json"
    code, err = run_cli(["run-real", "--random-weights", "--size", "tiny", "--threads", threads,
                         "--json", str(out)], capsys)
    assert_one_clear_line(code, err, f"use 1 to {max_threads()}")
    assert not out.exists()
    assert f"1 to {max_threads()}" in " ".join(cli.build_parser()._subparsers._group_actions[0]
                                               .choices["run-real"].format_help().split())


@pytest.mark.parametrize("threshold", ["1.5", "nan", "inf", "-0.1", "1", "abc"])
@pytest.mark.parametrize("with_checker", [False, True])
@pytest.mark.parametrize("command", ["generate", "app"])
def test_safety_threshold_outside_0_1_is_refused(pristine, tmp_path, capsys, app_must_not_serve,
                                                 threshold, with_checker, command):
    """Checked when the command line is read, also without --safety-checker (it was ignored)."""
    out = tmp_path / "out"
    extra = ["--safety-threshold", threshold]
    if with_checker:
        extra += ["--safety-checker", str(tmp_path / "no-such-checker")]
    argv = (generate(pristine, out, "--prompt", "w1", *extra) if command == "generate"
            else ["app", "--weights", str(pristine), *extra])
    code, err = run_cli(argv, capsys)
    assert_one_clear_line(code, err, "--safety-threshold")
    assert "[0, 1)" in err or "float" in err, err
    assert not out.exists()


@pytest.mark.parametrize("tokenizer", [False, True])
@pytest.mark.parametrize("case, fragment", [
    ("a folder", "is a folder"), ("no suffix", "does not end in .png"), ("jpg", "does not end in .png"),
    ("missing folder", "does not exist"),
])
def test_demo_out_is_the_png_it_writes(tmp_path, capsys, tokenizer, case, fragment):
    """``demo --out DIR`` printed "wrote DIR" and wrote ``DIR.png``: refused before any model loads."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    out = {"a folder": folder, "no suffix": tmp_path / "grid", "jpg": tmp_path / "grid.jpg",
           "missing folder": tmp_path / "nope" / "demo.png"}[case]
    before = sorted(tmp_path.rglob("*"))
    code, err = run_cli(["demo", "--out", str(out), *(["--tokenizer"] if tokenizer else [])], capsys)
    assert_one_clear_line(code, err, fragment)
    assert sorted(tmp_path.rglob("*")) == before


# -------------------------------------------------------------------------------- checkpoints


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def scramble(path: Path) -> None:
    """Overwrite 4 KiB in the middle of the file (the length stays)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes((7 * i + 13) % 256 for i in range(4096))
    path.write_bytes(bytes(data))


def to_safetensors(folder: Path) -> Path:
    """Write folder/model.safetensors from its pytorch_model.bin (the loader prefers it)."""
    from safetensors.torch import save_file

    state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder / "model.safetensors"


def damage_json_header(path: Path) -> None:
    """Overwrite the start of the JSON header (bytes 8..40) of a safetensors file."""
    data = bytearray(path.read_bytes())
    data[8:40] = b"\x00\xff" * 16
    path.write_bytes(bytes(data))


def garbage_header(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes((2**40).to_bytes(8, "little") + data[8:])  # a header length past the end


DAMAGE = {
    "truncated tokenizer .bin": (lambda t: truncate(t / "tokenizer" / "pytorch_model.bin"), "cannot read weights"),
    "scrambled llm .bin (tensor data)": (lambda t: scramble(t / "llm" / "pytorch_model.bin"), "CRC-32"),
    "truncated ema .bin": (lambda t: truncate(t / "llm" / "ema_model.bin"), "cannot read weights"),
    "empty .bin": (lambda t: (t / "tokenizer" / "pytorch_model.bin").write_bytes(b""), "cannot read weights"),
    "truncated safetensors": (lambda t: truncate(to_safetensors(t / "tokenizer")), "cannot read weights"),
    "safetensors bad header": (lambda t: garbage_header(to_safetensors(t / "tokenizer")), "cannot read weights"),
    "safetensors header damaged": (lambda t: damage_json_header(to_safetensors(t / "tokenizer")),
                                   "cannot read weights"),
    "text encoder truncated": (lambda t: truncate(t / "text_encoder" / "model.safetensors"),
                               "cannot load the text encoder"),
    "a list, not a state dict": (lambda t: torch.save([torch.zeros(2)], t / "llm" / "ema_model.bin"),
                                 "does not hold a flat state dict"),
    "llm config is the tokenizer's": (
        lambda t: shutil.copy(t / "tokenizer" / "config.json", t / "llm" / "config.json"),
        "model_type 'hart_autoencoder_with_disc', expected 'hart_transformer_t2i'"),
    "tokenizer config is the llm's": (
        lambda t: shutil.copy(t / "llm" / "config.json", t / "tokenizer" / "config.json"),
        "expected 'hart_autoencoder_with_disc'"),
    "text encoder config is HART's": (
        lambda t: shutil.copy(t / "llm" / "config.json", t / "text_encoder" / "config.json"), "hart_transformer_t2i"),
    "config not JSON": (lambda t: (t / "llm" / "config.json").write_bytes(b"{\xff not json"), "not valid JSON"),
    "config with a foreign key": (
        lambda t: (t / "llm" / "config.json").write_text('{"model_type": "hart_transformer_t2i", "n_embd": 3}'),
        "unsupported config option(s): n_embd"),
}


@pytest.mark.parametrize("command", ["generate", "app"])
@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_checkpoints_are_one_line_and_no_files(tree, tmp_path, capsys, app_must_not_serve, case, command):
    damage, fragment = DAMAGE[case]
    damage(tree)
    out = tmp_path / "out"
    if command == "generate":
        argv = generate(tree, out, "--prompt", "w1")
    else:  # the app loads everything before it serves: the same refusal, no server
        argv = ["app", "--weights", str(tree)]
    code, err = run_cli(argv, capsys)
    assert_one_clear_line(code, err, fragment)
    assert not out.exists()


class _Payload:
    """Unpickling this calls ``Path.touch(marker)``: a stand-in for any code a pickle may run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("fmt", ["torch.save zip", "plain pickle"])
@pytest.mark.parametrize("command", ["generate", "app"])
def test_a_pickle_that_runs_code_is_refused(tree, tmp_path, capsys, app_must_not_serve, fmt, command):
    marker = tmp_path / "pwned"
    bad = tree / "llm" / "ema_model.bin"
    state = {"weight": torch.zeros(2), "evil": _Payload(marker)}
    if fmt == "torch.save zip":
        torch.save(state, bad)
    else:
        bad.write_bytes(pickle.dumps(state))
    out = tmp_path / "out"
    argv = generate(tree, out, "--prompt", "w1") if command == "generate" else ["app", "--weights", str(tree)]
    code, err = run_cli(argv, capsys)
    assert_one_clear_line(code, err, "ema_model.bin is not a plain tensor file and will not be loaded")
    assert "\x1b" not in err and len(err.splitlines()[-1].replace(str(bad), "")) < 300, err  # not torch's ~1,000 coloured characters
    assert "weights_only=False" not in err, err  # never advise the unsafe load
    assert not marker.exists() and not out.exists()

    # the file really is malicious: an unsafe load runs it (the check above can fail)
    if fmt == "torch.save zip":
        torch.load(bad, weights_only=False)
    else:
        pickle.loads(bad.read_bytes())
    assert marker.exists()
