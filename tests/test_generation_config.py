"""``generation_config.json``: the sampling defaults a weights tree carries (hart_edu.generation_config).

Read (present, absent = the official defaults), validated (a bad file names the key and the
file), and used: ``HARTPipeline.from_pretrained`` picks it up, a call without arguments samples
with it, an explicit argument wins, and ``hart-edu generate``, the demo and the app start from it.
What reaches generation is checked on the SamplingSettings handed to ``generate``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import hart_edu.sampler
from hart_edu import cli
from hart_edu.generation import SamplingSettings
from hart_edu.generation_config import (
    GENERATION_CONFIG,
    GenerationConfig,
    read_generation_config,
    write_generation_config,
)
from hart_edu.paths import TINY_WEIGHTS
from hart_edu.sampler import HARTPipeline
from test_sampler import build_tiny_tree

# Not the official values in any field, so that each one shows where it came from.
TUNED = GenerationConfig(cfg=2.5, top_k=7, top_p=0.9, more_smooth=False, greedy=True, residual=False,
                         diffusion_temperature=0.8)


def settings_of(config: GenerationConfig) -> dict:
    """The fields of SamplingSettings a GenerationConfig decides (0 = off for top-k/top-p)."""
    return dict(cfg=config.cfg, top_k=config.top_k or 0, top_p=config.top_p or 0.0, greedy=config.greedy,
                more_smooth=config.more_smooth, residual=config.residual,
                diffusion_temperature=config.diffusion_temperature)


def chosen(settings: SamplingSettings) -> dict:
    return {name: getattr(settings, name) for name in settings_of(GenerationConfig())}


@pytest.fixture
def captured(monkeypatch) -> list[SamplingSettings]:
    """The SamplingSettings of every generation the pipeline runs (the run itself goes on)."""
    seen: list[SamplingSettings] = []
    real = hart_edu.sampler.generate

    def spy(*args, settings, **kwargs):
        seen.append(settings)
        return real(*args, settings=settings, **kwargs)

    monkeypatch.setattr(hart_edu.sampler, "generate", spy)
    return seen


@pytest.fixture(scope="module")
def tree(golden_dir, tmp_path_factory) -> Path:
    """The tiny official tree of the golden fixtures (no generation_config.json)."""
    return build_tiny_tree(golden_dir, tmp_path_factory.mktemp("hart_tree"))


@pytest.fixture(scope="module")
def tuned_tree(golden_dir, tmp_path_factory) -> Path:
    """The same tree with TUNED in its generation_config.json."""
    root = build_tiny_tree(golden_dir, tmp_path_factory.mktemp("tuned_tree"))
    write_generation_config(root, TUNED, note="test values")
    return root


@pytest.fixture(scope="module")
def tuned_pipe(tuned_tree) -> HARTPipeline:
    with pytest.warns(UserWarning, match="system prompt"):  # the official one, cut to T = 8
        return HARTPipeline.from_pretrained(tuned_tree)


# ---------------------------------------------------------------------------- the file


def test_the_defaults_are_the_official_ones():
    assert GenerationConfig() == GenerationConfig(cfg=4.5, top_k=None, top_p=None, more_smooth=True, greedy=False,
                                                  residual=True, diffusion_temperature=1.0)
    assert GenerationConfig(top_k=0, top_p=0) == GenerationConfig()  # 0 is "off", stored as None
    assert isinstance(GenerationConfig(cfg=3).cfg, float)


def test_a_tree_without_the_file_gets_the_official_defaults(tmp_path):
    assert read_generation_config(tmp_path) == GenerationConfig()
    assert read_generation_config(tmp_path / "missing") == GenerationConfig()


def test_written_and_read_back(tmp_path):
    path = write_generation_config(tmp_path, TUNED, note="chosen with eval --sweep", chosen_on="held-out scenes")
    assert path == tmp_path / GENERATION_CONFIG and read_generation_config(tmp_path) == TUNED
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2) + "\n"
    assert list(data) == sorted(data) and data["note"] == "chosen with eval --sweep"
    assert data["chosen_on"] == "held-out scenes" and data["top_k"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == [GENERATION_CONFIG]  # no temporary file left
    write_generation_config(tmp_path, GenerationConfig())
    assert json.loads(path.read_text(encoding="utf-8"))["top_k"] is None and "note" not in path.read_text()


def test_a_partial_file_keeps_the_official_value_of_the_rest(tmp_path):
    (tmp_path / GENERATION_CONFIG).write_text('{"cfg": 3, "top_k": 0, "note": "only the guidance"}')
    assert read_generation_config(tmp_path) == GenerationConfig(cfg=3.0)


@pytest.mark.parametrize("content, names", [
    ({"cfg": 3.0, "temperature": 0.9, "top-k": 5}, ["'temperature'", "'top-k'"]),  # unknown keys, all named
    ({"cfg": "4.5"}, ["cfg"]),
    ({"cfg": 60.0}, ["cfg", "out of range"]),
    ({"cfg": None}, ["cfg"]),
    ({"top_k": -1}, ["top_k"]),
    ({"top_k": 2.5}, ["top_k"]),
    ({"top_p": 1.5}, ["top_p"]),
    ({"more_smooth": 1}, ["more_smooth"]),
    ({"residual": "true"}, ["residual"]),
    ({"greedy": None}, ["greedy"]),
    ({"diffusion_temperature": 0}, ["diffusion_temperature"]),
    ({"note": 3}, ["note"]),
    ({"chosen_on": ["a"]}, ["chosen_on"]),
])
def test_a_bad_file_names_the_key_and_the_file(tmp_path, content, names):
    path = tmp_path / GENERATION_CONFIG
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError) as err:
        read_generation_config(tmp_path)
    for fragment in [str(path), *names]:
        assert fragment in str(err.value), (fragment, str(err.value))


@pytest.mark.parametrize("text, fragment", [("[1, 2]", "one JSON object"), ("{cfg: 3}", "not valid"),
                                            (b"\xff\xfe", "not valid")])
def test_a_file_that_is_not_a_json_object_is_refused(tmp_path, text, fragment):
    path = tmp_path / GENERATION_CONFIG
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=fragment) as err:
        read_generation_config(tmp_path)
    assert str(path) in str(err.value)


def test_writing_refuses_what_it_could_not_read_back(tmp_path):
    with pytest.raises(ValueError, match="GenerationConfig"):
        write_generation_config(tmp_path, {"cfg": 3.0})
    with pytest.raises(ValueError, match="note"):
        write_generation_config(tmp_path, TUNED, note=3)
    with pytest.raises(FileNotFoundError):
        write_generation_config(tmp_path / "missing", TUNED)
    assert not (tmp_path / GENERATION_CONFIG).exists()


# ---------------------------------------------------------------------------- the pipeline


def test_from_pretrained_reads_it_and_a_call_without_arguments_uses_it(tuned_pipe, captured):
    assert tuned_pipe.generation_config == TUNED
    with pytest.warns(UserWarning, match="top_k=7 is ignored"):  # the official quirk still overrides top-k
        tuned_pipe(["w1 w2"], progress=False)
    assert chosen(captured[-1]) == settings_of(TUNED)


def test_an_explicit_argument_beats_the_file(tuned_pipe, captured):
    out = tuned_pipe(["w1 w2"], cfg=4.0, top_k=0, top_p=0.0, more_smooth=True, greedy=False, residual=True,
                     diffusion_temperature=1.2, progress=False)
    assert chosen(captured[-1]) == dict(cfg=4.0, top_k=0, top_p=0.0, greedy=False, more_smooth=True, residual=True,
                                        diffusion_temperature=1.2)
    assert out.residual_BChw is not None
    tuned_pipe(["w1"], cfg=3.5, top_k=0, progress=False)  # one argument: the rest stays the file's
    assert chosen(captured[-1]) == {**settings_of(TUNED), "cfg": 3.5, "top_k": 0}


def test_without_the_file_a_call_samples_as_before(tree, tuned_pipe, captured):
    """The official tree and a pipeline built from models: the official defaults, as before."""
    with pytest.warns(UserWarning, match="system prompt"):
        official = HARTPipeline.from_pretrained(tree)
    built = HARTPipeline(tuned_pipe.text_encoder, tuned_pipe.transformer, tuned_pipe.tokenizer)
    with pytest.raises(ValueError, match="generation_config must be a GenerationConfig"):
        HARTPipeline(tuned_pipe.text_encoder, tuned_pipe.transformer, tuned_pipe.tokenizer,
                     generation_config={"cfg": 3.0})
    for pipe in (official, built):
        assert pipe.generation_config == GenerationConfig()
        pipe(["w1"], progress=False)
        assert chosen(captured[-1]) == dict(cfg=4.5, top_k=0, top_p=0.0, greedy=False, more_smooth=True,
                                            residual=True, diffusion_temperature=1.0)


def test_the_same_seed_gives_the_same_images_from_the_file_or_from_arguments(tuned_pipe):
    """The file only supplies arguments: no other change to the generation."""
    plain = HARTPipeline(tuned_pipe.text_encoder, tuned_pipe.transformer, tuned_pipe.tokenizer)
    from_file = tuned_pipe(["w3 w4"], seed=2, quirks=_no_override(), progress=False)
    explicit = plain(["w3 w4"], seed=2, quirks=_no_override(), progress=False, **TUNED.to_dict())
    assert from_file.image_B3HW.equal(explicit.image_B3HW)


def _no_override():
    from hart_edu.generation import OfficialQuirks

    return OfficialQuirks(top_k_override=False)


def test_a_bad_file_stops_from_pretrained_before_the_weights_load(golden_dir, tmp_path, monkeypatch):
    root = build_tiny_tree(golden_dir, tmp_path / "tree")
    (root / GENERATION_CONFIG).write_text('{"cfg": 4.5, "sampler": "ddim"}')
    monkeypatch.setattr(hart_edu.sampler.HybridTokenizer, "from_pretrained",
                        lambda *a, **k: pytest.fail("the weights started loading"))
    with pytest.raises(ValueError, match="unknown key.*'sampler'"):
        HARTPipeline.from_pretrained(root)


@pytest.mark.skipif(not (TINY_WEIGHTS / "llm").is_dir(), reason="weights/tiny not built")
def test_a_copy_of_the_tiny_tree_with_the_file(tmp_path, captured):
    root = tmp_path / "tiny"
    root.mkdir()
    for part in ("tokenizer", "llm"):
        shutil.copytree(TINY_WEIGHTS / part, root / part)
    shutil.copy(TINY_WEIGHTS / "text_encoder.json", root)
    assert HARTPipeline.from_pretrained(root).generation_config == GenerationConfig()  # no file yet
    config = GenerationConfig(cfg=3.0, more_smooth=False, diffusion_temperature=0.9)
    write_generation_config(root, config, note="a test")
    pipe = HARTPipeline.from_pretrained(root)
    assert pipe.generation_config == config
    pipe(["a red circle on a white background"], progress=False)
    assert chosen(captured[-1]) == settings_of(config)


# ---------------------------------------------------------------------------- the command line


def test_the_cli_takes_the_weights_defaults_and_the_options_win(tuned_tree, tmp_path, captured, capsys):
    base = ["generate", "--weights", str(tuned_tree), "--prompt", "w1 w2", "--no-progress",
            "--no-official-quirks"]
    assert cli.main(base + ["--out", str(tmp_path / "a")]) == 0
    assert chosen(captured[-1]) == settings_of(TUNED)
    assert cli.main(base + ["--out", str(tmp_path / "b"), "--cfg", "4.5", "--top-k", "0", "--top-p", "0",
                            "--more-smooth", "--no-greedy", "--residual", "--diffusion-temperature", "1.5"]) == 0
    assert chosen(captured[-1]) == dict(cfg=4.5, top_k=0, top_p=0.0, greedy=False, more_smooth=True, residual=True,
                                        diffusion_temperature=1.5)
    assert cli.main(base + ["--out", str(tmp_path / "c"), "--cfg", "1"]) == 0
    assert chosen(captured[-1]) == {**settings_of(TUNED), "cfg": 1.0}


def test_the_cli_refuses_a_bad_file_or_option_before_loading(golden_dir, tmp_path, captured, capsys):
    root = build_tiny_tree(golden_dir, tmp_path / "tree")
    (root / GENERATION_CONFIG).write_text('{"cfg": 99}')
    out = tmp_path / "out"
    assert cli.main(["generate", "--weights", str(root), "--prompt", "w1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(root / GENERATION_CONFIG) in err and "cfg=99" in err and "Traceback" not in err
    (root / GENERATION_CONFIG).unlink()
    for option in (["--diffusion-temperature", "0"], ["--top-p", "2"], ["--cfg", "-1"]):
        assert cli.main(["generate", "--weights", str(root), "--prompt", "w1", "--out", str(out), *option]) == 2
        assert option[0].lstrip("-").replace("-", "_") in capsys.readouterr().err
    assert not out.exists() and captured == []


# ---------------------------------------------------------------------------- demo and app


@pytest.mark.skipif(not (TINY_WEIGHTS / "llm").is_dir(), reason="weights/tiny not built")
def test_the_demo_samples_with_the_trees_config_unless_cfg_is_given(tmp_path, captured, capsys):
    from hart_edu import demo

    root = tmp_path / "tiny"
    root.mkdir()
    for part in ("tokenizer", "llm"):
        shutil.copytree(TINY_WEIGHTS / part, root / part)
    shutil.copy(TINY_WEIGHTS / "text_encoder.json", root)
    config = GenerationConfig(cfg=2.0, top_p=0.8, more_smooth=False, greedy=False, residual=True,
                              diffusion_temperature=0.7)
    write_generation_config(root, config)
    assert demo.main(tmp_path / "a.png", root, n=1) == 0
    assert {chosen(s)["cfg"] for s in captured} == {2.0}
    assert chosen(captured[-1]) == settings_of(config)
    assert str(root / GENERATION_CONFIG) in capsys.readouterr().out
    assert cli.main(["demo", "--weights", str(root), "--n", "1", "--cfg", "3.5", "--out", str(tmp_path / "b.png")]) == 0
    assert chosen(captured[-1]) == {**settings_of(config), "cfg": 3.5}


def test_the_app_starts_from_the_pipelines_config(tuned_pipe, captured):
    pytest.importorskip("gradio")
    from hart_edu.app import Studio, build_ui

    studio = Studio(tuned_pipe)
    studio.generate("w1 w2", seed=3)  # the form's fields left out: the config's
    assert chosen(captured[-1]) == settings_of(TUNED)
    studio.generate("w1 w2", seed=3, cfg=4.0, more_smooth=True, residual=True)
    assert chosen(captured[-1]) == {**settings_of(TUNED), "cfg": 4.0, "more_smooth": True, "residual": True}

    blocks = build_ui(studio)
    values = {getattr(c, "label", None): getattr(c, "value", None) for c in blocks.blocks.values()}
    assert values["Guidance scale (CFG)"] == TUNED.cfg
    assert (values["Smoothing (more_smooth)"], values["Residual diffusion"]) == (TUNED.more_smooth, TUNED.residual)
