r"""Data-parallel training over several processes with ``torch.distributed``, launched by torchrun.

    torchrun --nproc-per-node 2 -m hart_edu.train.transformer --batch-size 64 ...

torchrun starts one copy of the script per *rank* and tells each who it is through environment
variables: ``RANK`` (0 .. W-1 over all machines), ``LOCAL_RANK`` (on this machine),
``WORLD_SIZE`` (W), ``MASTER_ADDR`` / ``MASTER_PORT`` (where the ranks meet). :func:`init`
reads them and joins the process group: ``gloo`` when the ranks train on CPUs, ``nccl`` when
each trains on its own GPU (``cuda:LOCAL_RANK``). Started without torchrun (or with W = 1) a
script is the one process it always was: no process group, not one number changes.

How the training scripts share a step out (this is what makes W ranks train as one process)
-------------------------------------------------------------------------------------------

* Every rank holds the same model and the same run generator (seeded with the run's seed), so
  every rank draws the *global* batch, B rows and all of their noise, exactly as one process
  does, and keeps its own slice, rows [r B/W, (r+1) B/W) (:func:`batch_share`). There are no
  rank-local draws: a seed derived from the rank would make the trace depend on W.
* Each rank's loss is the mean over its B/W rows; DistributedDataParallel all-reduces the
  gradients and divides by W during the backward pass::

      grad = 1/W sum_r grad( W/B sum_{b in rank r} loss_b ) = grad( 1/B sum_b loss_b )

  the gradient of the global batch's mean. The optimiser steps equal the single process's up
  to float rounding (the sums are taken in another order).
* Logged numbers (losses, accuracies) are per-rank means over equal shares, so their mean over
  the ranks (:func:`mean_over_ranks`) is the global batch's.
* Only rank 0 (:attr:`Ranks.is_main`) writes: checkpoints, weights, reports and progress bars.
  Resuming, every rank reads the same ``state.pt`` (the run folder must be on storage that
  every machine sees) and :func:`same_on_every_rank` checks that they all did.

When something fails (:func:`run_main`)
---------------------------------------

A rank that raises prints one line and leaves the process group; the other ranks, waiting for
it in their next collective, get a "connection closed" error from the backend (or a timeout
after ``--dist-timeout`` seconds for a rank that hangs) and print one line each saying that
they stopped because a collective failed. torchrun then ends with the failing rank's exit code.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Ranks",
    "SINGLE",
    "single",
    "launched_by_torchrun",
    "init",
    "shutdown",
    "batch_share",
    "barrier",
    "mean_over_ranks",
    "sum_over_ranks",
    "gather_rows",
    "gather_objects",
    "same_on_every_rank",
    "data_parallel",
    "run_main",
]

DEFAULT_TIMEOUT_S = 1800  # torch's own default: long enough for rank 0 to encode the training set


@dataclass(frozen=True)
class Ranks:
    """Who this process is in the run."""

    rank: int  # 0 .. world_size - 1
    world_size: int  # W
    local_rank: int  # the rank on this machine (picks the GPU)
    device: torch.device  # where this rank trains
    backend: str | None  # "gloo" or "nccl"; None: one process, no process group

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def describe(self) -> str:
        """One line for the log: how many ranks, which backend, which device."""
        if not self.distributed:
            return f"one process on {self.device} (no process group)"
        return (f"data parallel: {self.world_size} ranks, torch.distributed backend {self.backend} "
                f"(chosen for device {self.device.type}); this is rank {self.rank} on {self.device}")


def single(device: torch.device | str) -> Ranks:
    """The one-process run: rank 0 of 1, no process group."""
    return Ranks(0, 1, 0, torch.device(device), None)


SINGLE = single("cpu")


def launched_by_torchrun() -> bool:
    """True when torchrun (or anything setting its variables) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def rank_device(device: torch.device | str, local_rank: int, world_size: int) -> torch.device:
    """The device of one rank: ``cpu`` stays ``cpu``; ``cuda`` becomes ``cuda:LOCAL_RANK``.

    Nothing is switched silently: a GPU index given by hand, or fewer GPUs than ranks on this
    machine, is a one-line error."""
    device = torch.device(device)
    if device.type == "cpu" or world_size == 1:
        return device
    if device.type != "cuda":
        raise ValueError(f"data-parallel training runs on cpu or cuda devices, not {device}")
    if device.index is not None:
        raise ValueError(f"--device {device}: under torchrun give --device cuda, each rank takes cuda:LOCAL_RANK")
    if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ValueError(f"rank with LOCAL_RANK {local_rank} needs a GPU of its own, this machine has {count}: "
                         f"start at most {count} processes per node (--nproc-per-node)")
    return torch.device("cuda", local_rank)


def init(device: torch.device | str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> Ranks:
    """Join the process group torchrun set up (a no-op for a single process).

    The backend follows the device: gloo for CPUs, nccl for GPUs. ``timeout_s``: how long a
    collective waits for a rank that does not come (then it fails instead of hanging)."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return single(device)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = rank_device(device, local_rank, world_size)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return Ranks(rank, world_size, local_rank, device, backend)


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def batch_share(batch_size: int, ranks: Ranks) -> slice:
    """This rank's rows of a global batch of ``batch_size``: [r B/W, (r+1) B/W)."""
    W = ranks.world_size
    if batch_size % W:
        nearest = batch_size // W * W or W
        raise ValueError(f"--batch-size {batch_size} is the global batch: "
                         f"it must divide by the {W} ranks (e.g. {nearest})")
    per_rank = batch_size // W
    return slice(ranks.rank * per_rank, (ranks.rank + 1) * per_rank)


def barrier(ranks: Ranks) -> None:
    """Wait until every rank gets here."""
    if ranks.distributed:
        dist.barrier()


def _collective_tensor(ranks: Ranks, values: list[float]) -> torch.Tensor:
    # gloo reduces CPU tensors, nccl GPU tensors; float64 so a mean of means loses nothing
    return torch.tensor(values, dtype=torch.float64, device=ranks.device)


def mean_over_ranks(ranks: Ranks, values: list[float]) -> list[float]:
    """The mean of each value over the ranks (one all-reduce for the list)."""
    if not ranks.distributed:
        return list(values)
    v_K = _collective_tensor(ranks, values)
    dist.all_reduce(v_K, op=dist.ReduceOp.SUM)
    return (v_K / ranks.world_size).tolist()


def sum_over_ranks(ranks: Ranks, x: torch.Tensor) -> torch.Tensor:
    """The sum over the ranks of a tensor of the same shape on each (in place; returned)."""
    if ranks.distributed:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def gather_rows(ranks: Ranks, x_b: torch.Tensor) -> torch.Tensor:
    """Every rank's rows (b, ...) concatenated in rank order: the global batch (W b, ...)."""
    if not ranks.distributed:
        return x_b
    parts = [torch.empty_like(x_b) for _ in range(ranks.world_size)]
    dist.all_gather(parts, x_b.contiguous())
    return torch.cat(parts)


def gather_objects(ranks: Ranks, obj: object) -> list[object]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ranks.distributed:
        return [obj]
    parts: list[object] = [None] * ranks.world_size
    dist.all_gather_object(parts, obj)
    return parts


def same_on_every_rank(ranks: Ranks, value: int, what: str) -> None:
    """A one-line error on every rank unless ``value`` is the same on all of them."""
    if not ranks.distributed:
        return
    lo_hi = torch.tensor([value, -value], dtype=torch.int64, device=ranks.device)
    dist.all_reduce(lo_hi, op=dist.ReduceOp.MAX)
    if int(lo_hi[0]) != -int(lo_hi[1]):
        raise RuntimeError(f"the ranks disagree on {what} (from {-int(lo_hi[1])} to {int(lo_hi[0])})")


def data_parallel(module: nn.Module, ranks: Ranks) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel (the module itself for one process).

    Call the wrapper, not the module: DDP hooks the backward pass of what its ``forward``
    computed, all-reducing the gradients bucket by bucket while the rest of the backward runs.
    ``static_graph``: the same parameters take part in every step (the tokenizer has a few that
    never do, such as a shared Phi no scale uses); DDP learns which in the first step."""
    if not ranks.distributed:
        return module
    device_ids = [ranks.device.index] if ranks.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, static_graph=True)


# --------------------------------------------------------------------------------------
# Ending a run: one line per rank
# --------------------------------------------------------------------------------------


class StoppedBySignal(Exception):
    """torchrun (or a user) sent SIGTERM: usually because another rank failed."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise StoppedBySignal("stopped by SIGTERM (torchrun ends the other ranks when one fails)")


_BACKEND_ERROR = re.compile(r"gloo|nccl|ProcessGroup|Connection closed|Connection reset|Broken pipe|Timed out",
                            re.IGNORECASE)


def _collective_failed(err: BaseException) -> bool:
    """Did a collective fail (a peer died or timed out), rather than this rank's own code?"""
    return isinstance(err, getattr(dist, "DistError", ())) or \
        (isinstance(err, RuntimeError) and bool(_BACKEND_ERROR.search(str(err))))


def _first_sentence(message: str) -> str:
    """The backend's message without its source location: ``[.../pair.cc:553] Connection closed
    by peer [127.0.0.1]:17029. This is typically ...`` -> ``Connection closed by peer [127.0.0.1]:17029``."""
    text = " ".join(message.split())
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", text)
    return text.split(". ")[0][:300]


def failure_line(prog: str, err: BaseException) -> str:
    """The one line a rank prints when the run ends in an error."""
    where = f"rank {os.environ.get('RANK', '0')} of {os.environ.get('WORLD_SIZE', '1')}"
    if isinstance(err, StoppedBySignal):
        return f"{prog}: {where} {err}"
    if _collective_failed(err):
        return (f"{prog}: {where} stopped: a collective operation failed ({_first_sentence(str(err))}), "
                f"most likely because another rank failed: see its line")
    message = " ".join(str(err).split())  # this rank's own error: its whole message, on one line
    return f"{prog}: {where} failed: {type(err).__name__}: {message}"


def run_main(main: Callable[[], int], prog: str) -> int:
    """Run a script's ``main`` under torchrun's rules: an error ends this rank with one line
    (:func:`failure_line`) and exit code 1, never a traceback from every rank or a hang; the
    process group is left in every case. A process not started by torchrun runs ``main`` as is
    (errors raise as they always did)."""
    if not launched_by_torchrun():
        return main()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return main()
    except Exception as err:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one line, even if torchrun's SIGTERM comes now
        traceback.clear_frames(err.__traceback__)  # progress bars in the failed frames close now, before the line
        print(failure_line(prog, err), file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutdown()
