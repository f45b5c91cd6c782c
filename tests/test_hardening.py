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


# --------------------------------------------------------------------- issue 13: second round


def poison_safetensors(path: Path, value: float = float("nan")) -> str:
    """Overwrite the first element of the first float32 tensor (in data order) of a
    safetensors file with ``value``; the header stays valid. Returns the tensor's key."""
    import struct

    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    floats = sorted((spec["data_offsets"][0], key) for key, spec in header.items()
                    if key != "__metadata__" and spec["dtype"] == "F32" and spec["data_offsets"][1] > spec["data_offsets"][0])
    start, key = floats[0]
    at = 8 + header_len + start
    data[at : at + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(data))
    return key


def poison_bin(path: Path, value: float = float("nan")) -> str:
    """Set one element of the first floating-point weight of a torch.save file to ``value``
    (saved again: its CRC-32s are valid). Returns the key."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() and k != "attn_bias_for_masking")
    state[key].view(-1)[0] = value
    torch.save(state, path)
    return key


NOT_FINITE = {
    "NaN in tokenizer safetensors": (lambda t: poison_safetensors(to_safetensors(t / "tokenizer")),
                                     "tokenizer/model.safetensors", "NaN"),
    "NaN in llm safetensors": (lambda t: poison_safetensors(to_safetensors(t / "llm")),
                               "llm/model.safetensors", "NaN"),
    "NaN in ema .bin": (lambda t: poison_bin(t / "llm" / "ema_model.bin"), "llm/ema_model.bin", "NaN"),
    "inf in llm .bin": (lambda t: poison_bin(t / "llm" / "pytorch_model.bin", float("inf")),
                        "llm/pytorch_model.bin", "infinite"),
    "-inf in tokenizer safetensors": (lambda t: poison_safetensors(to_safetensors(t / "tokenizer"), float("-inf")),
                                      "tokenizer/model.safetensors", "infinite"),
}


@pytest.mark.parametrize("command", ["generate", "app", "convert"])
@pytest.mark.parametrize("case", list(NOT_FINITE))
def test_weights_that_are_not_finite_are_refused_naming_file_and_key(tree, tmp_path, capsys, app_must_not_serve,
                                                                      case, command):
    """Safetensors carry no checksum: NaN data bytes loaded fine and failed later in sampling
    with a RuntimeError naming neither file nor key. (attn_bias_for_masking, the official
    -inf mask, is loaded in every other test: infinities are allowed there only.)"""
    damage, file, what = NOT_FINITE[case]
    if command == "convert" and file.endswith(".safetensors"):
        pytest.skip("convert reads the .bin files only")
    key = damage(tree)
    out = tmp_path / "out"
    argv = {"generate": generate(tree, out, "--prompt", "w1"), "app": ["app", "--weights", str(tree)],
            "convert": ["convert", str(tree), str(out)]}[command]
    code, err = run_cli(argv, capsys)
    assert_one_clear_line(code, err, f"{tree / file} is damaged: tensor {key!r} holds 1 {what}")
    assert not out.exists()


def test_the_finiteness_check_is_one_pass_per_tensor():
    """check_finite reads each tensor once with aminmax (no mask): a NaN anywhere, an infinity
    outside the official -inf mask, and an empty or integer tensor are handled."""
    from hart_edu.checkpoint import CheckpointError, check_finite

    mask = torch.full((4, 4), float("-inf")).triu(1)
    check_finite({"attn_bias_for_masking": mask, "empty": torch.zeros(0), "ids": torch.arange(3),
                  "w": torch.randn(8, dtype=torch.bfloat16)}, source="ok")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        bad = torch.randn(100).to(dtype)
        bad[57] = float("nan")
        with pytest.raises(CheckpointError, match=r"src is damaged: tensor 'b' holds 1 NaN value\(s\) \(of 100\)"):
            check_finite({"a": torch.ones(3, dtype=dtype), "b": bad}, source="src")
    with pytest.raises(CheckpointError, match="'attn_bias_for_masking' holds 1 NaN"):
        check_finite({"attn_bias_for_masking": torch.tensor([0.0, float("nan")])}, source="src")
    with pytest.raises(CheckpointError, match="'w' holds 2 infinite"):
        check_finite({"w": torch.tensor([float("inf"), float("-inf"), 1.0])}, source="src")



@pytest.mark.parametrize("value, what", [(float("nan"), "NaN"), (float("inf"), "infinite")])
@pytest.mark.parametrize("command", ["generate", "app"])
def test_a_text_encoder_that_is_not_finite_is_refused_naming_its_file(tree, tmp_path, capsys, app_must_not_serve,
                                                                       command, value, what):
    """The text encoder is loaded by transformers (AutoModel.from_pretrained), not by
    hart_edu.checkpoint: its weights are checked after loading (load_text_model). A NaN in its
    safetensors used to give NaN context vectors, and images of noise, without a word."""
    file = tree / "text_encoder" / "model.safetensors"
    key = poison_safetensors(file, value)
    out = tmp_path / "out"
    argv = generate(tree, out, "--prompt", "w1") if command == "generate" else ["app", "--weights", str(tree)]
    code, err = run_cli(argv, capsys)
    model_key = key.removeprefix("model.")  # AutoModel loads the base model of a *ForCausalLM checkpoint
    assert_one_clear_line(code, err, f"{file} is damaged: tensor {model_key!r} holds 1 {what}")
    assert not out.exists()


def test_load_text_model_checks_the_weights_of_a_copied_golden_encoder(golden_dir, tmp_path):
    """load_text_model itself (also used by the parity checks), on a copy of the golden Qwen2
    encoder folder: a NaN is one CheckpointError naming the file; the pristine copy loads."""
    from hart_edu.checkpoint import CheckpointError
    from hart_edu.text_encoder import load_text_model

    folder = Path(shutil.copytree(golden_dir / "tiny-official" / "text_encoder", tmp_path / "text_encoder"))
    load_text_model(folder)
    key = poison_safetensors(folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"model\.safetensors is damaged: tensor '{key.removeprefix('model.')}' "
                                              r"holds 1 NaN value\(s\)"):
        load_text_model(folder)


# ------------------------------------------------------------------------- outputs: --out


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_out_reused_is_refused_unless_overwrite_which_leaves_only_the_new_run(pristine, tmp_path, capsys):
    """A run's folder holds that run only: old images never stay beside a new prompt.txt."""
    out = tmp_path / "out"
    assert run_cli(generate(pristine, out, "--prompt", "w1", "--num-images", "3"), capsys)[0] == 0
    first = files_under(out)
    assert sorted(first) == ["000000.png", "000001.png", "000002.png", "prompt.txt"]

    code, err = run_cli(generate(pristine, out, "--prompt", "w2"), capsys)
    assert_one_clear_line(code, err, f"--out {out} is not empty (000000.png, 000001.png, 000002.png and 1 more)")
    assert "--overwrite" in err.splitlines()[-1]
    assert files_under(out) == first  # untouched

    code, err = run_cli(generate(pristine, out, "--prompt", "w2", "--overwrite"), capsys)
    assert code == 0, err
    assert sorted(files_under(out)) == ["000000.png", "prompt.txt"]  # 000001/000002.png of the old run are gone
    assert (out / "prompt.txt").read_text(encoding="utf-8") == "w2"
    fresh = tmp_path / "fresh"
    assert run_cli(generate(pristine, fresh, "--prompt", "w2"), capsys)[0] == 0
    assert files_under(out) == files_under(fresh)  # exactly what a run into an empty folder writes


@pytest.mark.parametrize("overwrite", [False, True])
def test_overwrite_never_deletes_a_file_generate_did_not_write(pristine, tmp_path, capsys, overwrite):
    out = tmp_path / "out"
    out.mkdir()
    (out / "000000.png").write_bytes(b"an earlier run")
    (out / "notes.md").write_text("mine", encoding="utf-8")
    (out / "sub").mkdir()
    before = files_under(out)
    code, err = run_cli(generate(pristine, out, "--prompt", "w1", *(["--overwrite"] if overwrite else [])), capsys)
    fragment = "holds notes.md, sub/, which hart-edu generate did not write" if overwrite else "is not empty"
    assert_one_clear_line(code, err, fragment)
    assert files_under(out) == before and (out / "sub").is_dir()


def test_overwrite_help_and_readme_say_what_it_does():
    gen = cli.build_parser()._subparsers._group_actions[0].choices["generate"]
    help_text = " ".join(gen.format_help().split())
    assert "--overwrite" in help_text and "a run's folder holds that run only" in help_text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "--overwrite" in readme


def _model_must_not_load(monkeypatch):
    import hart_edu.profile
    import hart_edu.sampler

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded although the output cannot be written")

    monkeypatch.setattr(hart_edu.sampler.HARTPipeline, "from_pretrained", no_model)
    monkeypatch.setattr(hart_edu.profile, "random_release_pipeline", no_model)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (a folder nobody can write, root included)")
@pytest.mark.parametrize("case", ["generate --out unwritable", "generate --out under a file",
                                  "run-real --json under a missing folder", "run-real --json unwritable",
                                  "run-real --json a folder", "demo --record under a missing folder"])
def test_outputs_that_cannot_be_written_are_refused_before_any_model_loads(tmp_path, capsys, monkeypatch, case):
    """Found first, not as a raw errno after the whole generation or measurement. /proc/self
    stands for a read-only folder: no file can be made there, also by root (chmod would not
    stop root; a read-only mount gives the same 'cannot be written' line)."""
    _model_must_not_load(monkeypatch)
    a_file = tmp_path / "a_file"
    a_file.write_text("x", encoding="utf-8")
    run_real = ["run-real", "--random-weights", "--size", "tiny", "--json"]
    argv, fragment = {
        "generate --out unwritable": (["generate", "--prompt", "w1", "--out", "/proc/self/hart-out"],
                                      "--out /proc/self/hart-out cannot be written"),
        "generate --out under a file": (["generate", "--prompt", "w1", "--out", str(a_file / "out")],
                                        f"{a_file} is a file, not a folder"),
        "run-real --json under a missing folder": ([*run_real, str(tmp_path / "missing" / "r.json")],
                                                   f"folder {tmp_path / 'missing'} does not exist"),
        "run-real --json unwritable": ([*run_real, "/proc/self/r.json"], "--json /proc/self/r.json cannot be written"),
        "run-real --json a folder": ([*run_real, str(tmp_path)], "is a folder"),
        "demo --record under a missing folder": (["demo", "--out", str(tmp_path / "d.png"), "--record",
                                                  str(tmp_path / "missing" / "r.json")], "does not exist"),
    }[case]
    before = sorted(tmp_path.rglob("*"))
    code, err = run_cli(argv, capsys)
    assert_one_clear_line(code, err, fragment)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root writes into a read-only folder anyway (see the /proc case above)")
def test_a_read_only_out_folder_is_refused_before_any_model_loads(tmp_path, capsys, monkeypatch):
    _model_must_not_load(monkeypatch)
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, err = run_cli(["generate", "--prompt", "w1", "--out", str(out / "run")], capsys)
    finally:
        out.chmod(0o755)
    assert_one_clear_line(code, err, "cannot be written (Permission denied")


# ---------------------------------------------------------------------------------- Ctrl-C


def assert_interrupted(code: int, err: str, command: str) -> None:
    assert code == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"hart-edu {command}: interrupted (Ctrl-C)", err


def test_ctrl_c_while_generating_is_one_line_and_no_files(pristine, tmp_path, capsys, monkeypatch):
    import hart_edu.sampler

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hart_edu.sampler.HARTPipeline, "__call__", interrupted)
    out = tmp_path / "deep" / "out"
    code, err = run_cli(generate(pristine, out, "--prompt", "w1"), capsys)
    assert_interrupted(code, err, "generate")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def sigint_raises():
    """Ctrl-C raises KeyboardInterrupt during the test, as in a terminal. A test run started in the
    background of a script (``make test &``) inherits SIGINT ignored, the shell's rule for
    background jobs, and hart-edu rightly leaves an ignored SIGINT alone."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("at", [1, 2, 3])  # Ctrl-C as the 1st, 2nd, 3rd temporary file is created
@pytest.mark.parametrize("earlier_run", [False, True])
def test_ctrl_c_while_writing_leaves_no_temporary_file(pristine, tmp_path, capsys, monkeypatch, sigint_raises, at,
                                                       earlier_run):
    """A real SIGINT sent while the outputs are written: held back until the file being
    written is complete, then every temporary file is removed (no ``.*.tmp``), no new folder
    stays, and an earlier run (--overwrite) stays as it was."""
    import signal

    out = tmp_path / "out"
    extra = ["--num-images", "2"]
    if earlier_run:
        assert run_cli(generate(pristine, out, "--prompt", "w9", *extra), capsys)[0] == 0
        extra.append("--overwrite")
    before = files_under(tmp_path)
    real_open, opened = os.open, []

    def open_then_ctrl_c(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if str(path).endswith(".tmp"):
            opened.append(path)
            if len(opened) == at:
                os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C now
        return fd

    monkeypatch.setattr(os, "open", open_then_ctrl_c)
    code, err = run_cli(generate(pristine, out, "--prompt", "w1", *extra), capsys)
    monkeypatch.undo()
    assert len(opened) == at  # it stopped right after the file being written
    assert_interrupted(code, err, "generate")
    assert files_under(tmp_path) == before  # no .tmp, nothing new, the earlier run intact
    assert out.exists() == earlier_run
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again


# --------------------------------------------------------------------------------- convert


@pytest.mark.parametrize("in_place", [False, True])
def test_convert_is_all_or_nothing_when_llm_fails(tree, tmp_path, capsys, in_place):
    """The tokenizer converts first: it used to stay converted when llm/ then failed."""
    truncate(tree / "llm" / "ema_model.bin")
    out = tree if in_place else tmp_path / "converted"
    before = files_under(tree)
    code, err = run_cli(["convert", str(tree), *([] if in_place else [str(out)])], capsys)
    assert_one_clear_line(code, err, f"cannot read weights from {tree / 'llm' / 'ema_model.bin'}")
    assert files_under(tree) == before  # no tokenizer/model.safetensors, no temporary file
    assert in_place or not out.exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_convert_outputs_get_the_usual_file_mode(tree, tmp_path, capsys, umask):
    """safetensors creates its files 0600; outputs get 0666 less the umask, as open() does."""
    old = os.umask(umask)
    try:
        code, err = run_cli(["convert", str(tree), str(tmp_path / "converted")], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    written = sorted(p for p in (tmp_path / "converted").rglob("*") if p.is_file())
    assert [p.name for p in written] == ["config.json", "ema_model.safetensors", "model.safetensors",
                                         "config.json", "model.safetensors"]
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o666 & ~umask)}


# ---------------------------------------------------------------------- parity --manifest


@pytest.mark.parametrize("content, fragment", [
    (b"{bad", "is not valid JSON (Expecting property name enclosed in double quotes at line 1, column 2)"),
    (b"[1, 2]", "must hold a JSON object, got list"),
    (b"{}", "has no part(s) tokenizer, transformer_llm, transformer_llm_alt"),
    (b"\xff\xfe{", "is not UTF-8 text"),
    (None, "manifest not found"),
])
def test_parity_manifest_that_is_not_a_manifest_is_one_line(tmp_path, capsys, content, fragment):
    from hart_edu.parity.__main__ import main as parity_main

    path = tmp_path / "manifest.json"
    if content is not None:
        path.write_bytes(content)
    before = sorted(tmp_path.rglob("*"))
    code = parity_main(["--manifest", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and err.startswith("python -m hart_edu.parity: error: manifest")
    assert fragment in err, err
    assert sorted(tmp_path.rglob("*")) == before


# ------------------------------------------------------------------- text encoder code


def test_a_text_encoder_asking_for_its_own_code_is_refused_at_the_cli(pristine, tmp_path, capsys, monkeypatch):
    """transformers used to ask on stdin whether to run the folder's code ("y" ran it): with
    trust_remote_code=False it is one line, nothing is asked (stdin is closed) and the code
    never runs."""
    import io

    folder = Path(shutil.copytree(pristine / "text_encoder", tmp_path / "custom_encoder"))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom_encoder", auto_map={"AutoConfig": "custom.CustomConfig",
                                                         "AutoModel": "custom.CustomModel"})
    (folder / "config.json").write_text(json.dumps(config))
    ran = tmp_path / "ran"
    (folder / "custom.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # an input() would fail, not wait
    out = tmp_path / "out"
    code, err = run_cli(generate(pristine, out, "--prompt", "w1", "--text-encoder", str(folder)), capsys)
    assert_one_clear_line(code, err, "cannot load the text encoder")
    assert not ran.exists() and not out.exists()


def test_ctrl_c_sent_to_a_real_process_while_it_writes(pristine, tmp_path):
    """The issue's case end to end: ``python -m hart_edu generate`` gets SIGINT as soon as its
    first temporary file appears. Either the interrupt stops it (exit 130, one line, no folder)
    or it came during the final renames (exit 0, every file there); never a traceback, never a
    ``*.tmp`` left."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = [sys.executable, "-m", "hart_edu", *generate(pristine, out, "--prompt", "w1", "--num-images", "64")]
    # SIGINT at its default in the child, as from a terminal (a background test run ignores it)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if out.is_dir() and any(p.name.endswith(".tmp") for p in out.iterdir()):
            break
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not [name for name in left if name.endswith(".tmp")], left
    if proc.returncode == 130:
        assert err.strip().splitlines()[-1] == "hart-edu generate: interrupted (Ctrl-C)"
        assert not out.exists()
    else:
        assert proc.returncode == 0, err
        assert left == sorted(["prompt.txt"] + [f"{i:06d}.png" for i in range(64)])


def test_ctrl_c_during_the_final_renames_lets_the_run_finish(pristine, tmp_path, capsys, monkeypatch, sigint_raises):
    """Once every file is complete the renames are the point of no return: a Ctrl-C then lets
    them finish and the run ends normally with every file (never a mix of old and new)."""
    import signal

    out = tmp_path / "out"
    real_replace, calls = os.replace, []

    def replace_then_ctrl_c(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_ctrl_c)
    code, err = run_cli(generate(pristine, out, "--prompt", "w1", "--num-images", "2"), capsys)
    monkeypatch.undo()
    assert code == 0 and "interrupted" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "prompt.txt"]


def test_a_background_job_that_ignores_ctrl_c_keeps_ignoring_it():
    """A script's background job starts with SIGINT ignored: writing must not install a
    handler that would then record (and act on) a Ctrl-C meant for the foreground."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with cli.interrupts_deferred() as interrupted:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not interrupted()
    finally:
        signal.signal(signal.SIGINT, previous)
