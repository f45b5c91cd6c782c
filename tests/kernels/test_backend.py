"""The backend switch: explicit choice, clear errors, no silent fallback."""

from __future__ import annotations

import pytest
import torch

from hart_edu.kernels import backend, rmsnorm_modulate as rmsnorm_module
from hart_edu.kernels.backend import get_backend, triton_available, triton_status, use_backend
from hart_edu.kernels.swiglu import swiglu, swiglu_triton


def test_triton_runs_here():
    """conftest.py set TRITON_INTERPRET=1 (no GPU) or there is a GPU: Triton must be usable."""
    status = triton_status()
    assert status.available and status.reason == "", status.reason
    assert status.mode in ("cuda", "interpreter")
    assert triton_available()


def test_default_and_nesting():
    assert get_backend() == "reference"
    with use_backend("triton") as chosen:
        assert chosen == "triton" and get_backend() == "triton"
        with use_backend("reference"):
            assert get_backend() == "reference"
        assert get_backend() == "triton"
    assert get_backend() == "reference"


def test_restored_after_an_error():
    with pytest.raises(KeyError):
        with use_backend("triton"):
            raise KeyError("boom")
    assert get_backend() == "reference"


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda'"):
        with use_backend("cuda"):
            pass


def test_dispatch_follows_the_switch(monkeypatch, generator, device):
    calls = []
    real = rmsnorm_module.rmsnorm_modulate_triton
    monkeypatch.setattr(rmsnorm_module, "rmsnorm_modulate_triton", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(1, 3, 8, generator=generator).to(device)
    w, s, b = torch.ones(8, device=device), torch.zeros(1, 1, 8, device=device), torch.zeros(1, 1, 8, device=device)
    rmsnorm_module.rmsnorm_modulate(x, w, s, b, 1e-6)
    assert calls == []
    with use_backend("triton"):
        y = rmsnorm_module.rmsnorm_modulate(x, w, s, b, 1e-6)
    assert calls == [1]
    torch.testing.assert_close(y, rmsnorm_module.rmsnorm_modulate_reference(x, w, s, b, 1e-6))


def test_no_gpu_and_no_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not triton_available()
    with pytest.raises(RuntimeError, match="no CUDA device is available and TRITON_INTERPRET=1 is not set"):
        with use_backend("triton"):
            pass
    assert get_backend() == "reference"
    # the Triton functions called directly refuse as well, and the reference keeps working
    a = torch.ones(4)
    with pytest.raises(RuntimeError, match="cannot run here"):
        swiglu_triton(a, a)
    torch.testing.assert_close(swiglu(a, a), torch.nn.functional.silu(a))


def test_interpreter_requested_too_late(monkeypatch):
    """TRITON_INTERPRET=1 set after the kernels were defined as GPU kernels is refused."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(backend, "_probe", object())  # stands for a kernel built as a GPU kernel
    with pytest.raises(RuntimeError, match="set after hart_edu.kernels was imported"):
        with use_backend("triton"):
            pass


def test_triton_not_installed(monkeypatch):
    monkeypatch.setattr(backend, "triton", None)
    with pytest.raises(RuntimeError, match='"triton" package is not installed'):
        with use_backend("triton"):
            pass
    stub = backend._MissingTriton(lambda x: x)
    with pytest.raises(RuntimeError, match="cannot launch"):
        stub[(1,)]


def test_cuda_mode_refuses_cpu_tensors(monkeypatch):
    monkeypatch.setattr(backend, "triton_status", lambda: backend.TritonStatus(True, "cuda", ""))
    with pytest.raises(RuntimeError, match="Triton kernels run on CUDA tensors; got a tensor on cpu"):
        backend.require_triton(torch.zeros(2))
