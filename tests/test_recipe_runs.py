"""Recipes compared step for step: window means of the loss histories, finished or stopped."""

from __future__ import annotations

import json

import pytest

from hart_edu import recipe_runs


def fake_history(steps: int, start: float) -> list[dict]:
    return [{"step": t, "ce": start - 0.01 * t, "diffusion": 0.1, "ce_scales": [start - 0.01 * t, 2 * start]}
            for t in range(steps)]


def test_window_means_average_each_window_and_drop_the_incomplete_one():
    means = recipe_runs.window_means(fake_history(25, 3.0), window=10)
    assert [w["step"] for w in means] == [10, 20]
    assert means[0]["ce"] == pytest.approx(3.0 - 0.01 * 4.5)
    assert means[1]["ce_scales"] == pytest.approx([3.0 - 0.01 * 14.5, 6.0])
    with pytest.raises(ValueError, match="window"):
        recipe_runs.window_means(fake_history(5, 3.0), window=0)


def test_record_reads_finished_and_stopped_runs(tmp_path):
    (tmp_path / "a" / "reports").mkdir(parents=True)
    (tmp_path / "a" / "reports" / "transformer_history.json").write_text(json.dumps(fake_history(40, 3.0)))
    (tmp_path / "a" / "command.txt").write_text("python -m hart_edu.train.transformer --steps 40\n")
    (tmp_path / "b" / "partial").mkdir(parents=True)
    (tmp_path / "b" / "partial" / "history.json").write_text(json.dumps(fake_history(20, 2.0)))
    (tmp_path / "empty").mkdir()
    rec = recipe_runs.record(tmp_path, window=10, note="here")
    assert list(rec["runs"]) == ["a", "b"]
    assert rec["runs"]["a"]["finished"] and not rec["runs"]["b"]["finished"]
    assert rec["runs"]["a"]["command"].endswith("--steps 40") and rec["runs"]["b"]["command"] is None
    assert recipe_runs.at_step(rec["runs"]["b"], 20)["ce"] == pytest.approx(2.0 - 0.01 * 14.5)
    assert recipe_runs.at_step(rec["runs"]["b"], 30) is None


def test_the_command_writes_the_record_and_its_plot(tmp_path, capsys):
    (tmp_path / "runs" / "a" / "partial").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "partial" / "history.json").write_text(json.dumps(fake_history(20, 2.0)))
    out = tmp_path / "rec.json"
    assert recipe_runs.main([str(tmp_path / "runs"), "--out", str(out), "--window", "5"]) == 0
    assert json.loads(out.read_text())["runs"]["a"]["steps_done"] == 20
    assert out.with_suffix(".png").stat().st_size > 1000
    assert recipe_runs.main([str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert recipe_runs.main([str(tmp_path / "runs"), "--out", str(tmp_path / "rec.png")]) == 2
    assert "error" in capsys.readouterr().err
