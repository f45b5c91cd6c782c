"""The parity runner itself: the full golden run, its bookkeeping and its exit codes."""

from __future__ import annotations

import json

import torch

from golden_fixtures import needs_golden
from hart_edu.parity import Check, compare, run_parity, summary_line
from hart_edu.parity.__main__ import main


def test_compare_tolerances():
    ints = torch.tensor([[1, 2, 3]])
    assert compare("x.idx", ints, ints.clone()).ok
    assert not compare("x.idx", ints, torch.tensor([[1, 2, 4]])).ok
    f = torch.zeros(4)
    assert compare("x.img", f, f + 9e-5).ok
    assert not compare("x.img", f, f + 2e-4).ok
    assert not compare("x.img", f, torch.zeros(5)).ok  # shape
    assert not compare("x.img", f, f + float("nan")).ok
    big = torch.full((3,), 200.0)
    assert compare("diff.p.pmv_variance", big, big * (1 + 5e-5)).ok  # relative for the variance
    assert not compare("diff.p.pmv_variance", big, big * (1 + 2e-4)).ok


def test_summary_counts_inputs_as_matched_and_reports_uncovered():
    checks = [Check("a", "match"), Check("b", "input"), Check("c", "not covered"), Check("d", "MISMATCH")]
    assert summary_line(checks) == "parity: 2/4 match, 1 not covered"


@needs_golden
def test_full_golden_run_matches_every_tensor(golden_dir, capsys):
    n = len(json.loads((golden_dir / "tiny-golden.json").read_text())["tensors"])
    assert main([str(golden_dir)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"parity: {n}/{n} match, 0 not covered"
    assert not any(line.startswith("producer error") for line in out)


@needs_golden
def test_a_wrong_producer_fails_the_run(golden_dir, monkeypatch):
    import hart_edu.parity as parity

    def wrong(golden):  # a "producer" that gets one index wrong
        idx = golden.tensors["tok.idx.s0"].clone()
        idx[0, 0] += 1
        return {"tok.idx.s0": idx}

    monkeypatch.setattr(parity, "_load_producer", lambda spec: wrong)
    checks, errors = run_parity(golden_dir, [("wrong", "x:y")])
    status = {c.name: c.status for c in checks}
    assert status["tok.idx.s0"] == "MISMATCH" and status["tok.f"] == "not covered"
    assert main([str(golden_dir)]) == 1


@needs_golden
def test_manifest_all_parts(golden_dir, capsys):
    assert main(["--manifest", str(golden_dir / "manifest-hart-0.7b-1024px.json")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "manifest: 3/3 parts match"


def test_cli_errors(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["--manifest", str(tmp_path / "none.json")]) == 2
