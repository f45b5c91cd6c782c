"""hart-edu download: the failure paths for real (offline, unreachable hub), the sizes stated
first (from a stand-in for the hub's metadata), and the layout check and loading it feeds,
on the golden tiny trees laid out as a download would lay them out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from golden_fixtures import GOLDEN_DIR, needs_golden
from hart_edu import download as dl

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env_update: dict[str, str | None]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in env_update}
    env.update({k: v for k, v in env_update.items() if v is not None})
    return subprocess.run([sys.executable, "-m", "hart_edu", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("env_update, expected", [
    ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set"),
    # a real connection attempt, refused at once: nothing listens on port 9 of this machine
    ({"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"},
     "cannot reach the Hugging Face hub"),
])
def test_download_fails_with_one_line_and_writes_nothing(tmp_path, env_update, expected):
    cache = tmp_path / "cache"
    done = run_cli("download", "--cache-dir", str(cache), env_update=env_update)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hart-edu download: error:"), done.stderr
    assert expected in lines[0] and "Traceback" not in done.stderr
    assert not cache.exists()


class FakeHub:
    """Answers model_info(files_metadata=True) like the hub does: siblings with sizes."""

    def __init__(self, files: dict[str, dict[str, int]]):
        self.files = files

    def model_info(self, repo, files_metadata=False, timeout=None):
        assert files_metadata
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=n, size=s) for n, s in self.files[repo].items()])


def test_sizes_are_stated_first_with_what_is_already_there(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(dl, "_offline", lambda: False)
    hub = FakeHub({dl.HART_REPO: {"llm/pytorch_model.bin": 3_000_000_000, "llm/config.json": 1_000},
                   dl.TEXT_ENCODER_REPO: {"model.safetensors": 3_100_000_000, "config.json": 500}})
    hart_root, text_root = dl.real_weights_paths(tmp_path)
    (hart_root / "llm").mkdir(parents=True)
    (hart_root / "llm" / "config.json").write_bytes(b"x" * 1_000)  # complete
    text_root.mkdir()
    (text_root / "config.json").write_bytes(b"x" * 10)  # partial: not counted
    said: list[str] = []
    out = dl.download(tmp_path, dry_run=True, api=hub, echo=said.append)
    assert out == tmp_path
    table = said[0].splitlines()
    assert table[0].startswith(f"{dl.HART_REPO}: 2 files, 3.00 GB (0.00 GB already")
    assert table[1].startswith(f"{dl.TEXT_ENCODER_REPO}: 2 files, 3.10 GB (0.00 GB already")
    assert table[2] == "total: 6.10 GB"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["Qwen2-VL-1.5B-Instruct", "config.json", "config.json",
                                                          "hart-0.7b-1024px", "llm"]  # nothing written


def test_cache_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(dl.WEIGHTS_ENV, str(tmp_path))
    assert dl.default_cache_dir() == tmp_path
    assert dl.real_weights_paths() == (tmp_path / "hart-0.7b-1024px", tmp_path / "Qwen2-VL-1.5B-Instruct")
    monkeypatch.delenv(dl.WEIGHTS_ENV)
    assert dl.default_cache_dir() == Path.home() / ".cache" / "hart_edu"


def fake_download(cache: Path) -> Path:
    """The golden tiny model laid out as `hart-edu download` lays out the released one."""
    from test_sampler import word_level_tokenizer

    hart_root, text_root = dl.real_weights_paths(cache)
    for part in ("tokenizer", "llm"):
        shutil.copytree(GOLDEN_DIR / "tiny-official" / part, hart_root / part)
    shutil.copytree(GOLDEN_DIR / "tiny-official" / "text_encoder", text_root)
    word_level_tokenizer().save_pretrained(str(cache / "text_tokenizer"))
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the released repo holds its tokenizer files
        shutil.copy(cache / "text_tokenizer" / name, text_root / name)
    return cache


@needs_golden
def test_layout_check_names_each_missing_piece(tmp_path):
    assert dl.find_real_weights(tmp_path) is None
    problems = dl.check_layout(*dl.real_weights_paths(tmp_path))
    assert len(problems) == 3 and "tokenizer" in problems[0] and "llm" in problems[1] and "text encoder" in problems[2]

    cache = fake_download(tmp_path)
    hart_root, text_root = dl.real_weights_paths(cache)
    assert dl.check_layout(hart_root, text_root) == []
    assert dl.find_real_weights(cache) == (hart_root, text_root)

    (hart_root / "llm" / "ema_model.bin").unlink()
    (text_root / "tokenizer.json").unlink()
    (text_root / "tokenizer_config.json").unlink()
    problems = dl.check_layout(hart_root, text_root)
    assert [p.split(" in ")[0] for p in problems] == ["no ema_model.bin or ema_model.safetensors", "no tokenizer files"]
    with pytest.raises(FileNotFoundError, match="incomplete.*run `hart-edu download`"):
        dl.load_real_pipeline(cache)


@needs_golden
def test_load_real_pipeline_loads_the_downloaded_tree_in_bf16(tmp_path):
    from hart_edu.sampler import HARTPipeline

    cache = fake_download(tmp_path)
    pipe = dl.load_real_pipeline(cache, text_tokenizer=cache / "text_tokenizer")
    assert pipe.dtype == torch.bfloat16 and pipe.text_encoder.model.dtype == torch.bfloat16
    out = pipe(["w3 w4 w5"], seed=1, progress=False)
    assert out.image_B3HW.shape == (1, 3, 32, 32) and bool(torch.isfinite(out.image_B3HW.float()).all())

    # the same tree in float32 is exactly what HARTPipeline.from_pretrained loads
    hart_root, text_root = dl.real_weights_paths(cache)
    a = dl.load_real_pipeline(cache, dtype=torch.float32, text_tokenizer=cache / "text_tokenizer")
    b = HARTPipeline.from_pretrained(hart_root, text_encoder=text_root, text_tokenizer=cache / "text_tokenizer")
    oa, ob = a(["w3 w4 w5"], seed=2, progress=False), b(["w3 w4 w5"], seed=2, progress=False)
    assert torch.equal(oa.image_B3HW, ob.image_B3HW)
