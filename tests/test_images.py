"""hart_edu.images: the two value ranges and the only conversions between them."""

from __future__ import annotations

import torch

from hart_edu.images import psnr, to_model_range, to_output_range


def test_ranges_map_onto_each_other():
    model_range = torch.tensor([-1.0, 0.0, 1.0])
    assert to_output_range(model_range).tolist() == [0.0, 0.5, 1.0]
    assert torch.equal(to_model_range(to_output_range(model_range)), model_range)


def test_psnr_reads_the_model_range():
    a = torch.zeros(1, 3, 4, 4)
    # an error of 0.2 everywhere: MSE 0.04, peak-to-peak 2 -> 10 log10(4 / 0.04) = 20 dB
    assert abs(float(psnr(a, a + 0.2)[0]) - 20.0) < 1e-4
