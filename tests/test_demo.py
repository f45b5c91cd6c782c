"""`make demo` (hart-edu demo): the text-to-image grid with per-image times, the tokenizer
comparison figure; clear errors for bad paths."""

from __future__ import annotations

import pytest

from hart_edu.cli import main
from hart_edu.paths import TINY_WEIGHTS


@pytest.mark.skipif(not (TINY_WEIGHTS / "tokenizer").is_dir(), reason="weights/tiny not built")
def test_demo_writes_a_png_and_prints_psnr(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--tokenizer", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert printed.count("PSNR discrete-only") == 4 and "hybrid" in printed


@pytest.mark.skipif(not (TINY_WEIGHTS / "llm").is_dir(), reason="weights/tiny/llm not built")
def test_text_to_image_demo_writes_a_grid_and_times_each_image(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--n", "3", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith(("ok  ", "MISS"))]
    assert len(lines) == 3 and len({line.split(" s  ")[1] for line in lines}) == 3  # distinct captions
    assert "demo: 3 images of 64px, batch 1" in printed and "per image" in printed
    assert "clean on average" in printed


def test_text_to_image_demo_record(tmp_path):
    import json

    out, record = tmp_path / "demo.png", tmp_path / "demo.json"
    assert main(["demo", "--n", "2", "--out", str(out), "--record", str(record)]) == 0
    data = json.loads(record.read_text())
    assert data["n"] == 2 and 0 <= data["correct"] <= 2 and len(data["images"]) == 2
    assert 0.0 <= data["clean_background_min"] <= data["clean_background_mean"] <= 1.0
    assert data["median_seconds_per_image"] > 0 and data["cpu"]["torch capability"]


def test_demo_with_a_wrong_weights_path_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--tokenizer", "--weights", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_text_to_image_demo_with_a_wrong_weights_path_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--weights", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
