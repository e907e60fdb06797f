"""The error measures of varbench/utils/compare.py against closed forms."""

import pytest
import torch

from varbench.utils.compare import rel_max, rel_rms


def test_rel_rms_of_a_uniform_relative_perturbation_is_that_perturbation():
    ref = torch.tensor([3.0, -4.0], dtype=torch.float64)  # rms 5 / sqrt(2)
    assert rel_rms(ref * 1.01, ref) == pytest.approx(0.01, rel=1e-12)
    assert rel_rms(ref + torch.tensor([1.0, 0.0]), ref) == pytest.approx((0.5 ** 0.5) / (12.5 ** 0.5), rel=1e-12)


def test_rel_max_is_the_worst_element_on_the_reference_scale():
    ref = torch.tensor([1.0, -8.0, 2.0])
    assert rel_max(ref + torch.tensor([0.5, 0.0, -2.0]), ref) == pytest.approx(2.0 / 8.0, rel=1e-12)
