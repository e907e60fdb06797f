"""Shared fixtures: the golden folder beside the checkout, small layouts, registry enumeration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from varbench.layout import ScaleLayout
from varbench.resolvers import register_resolvers

# every test that composes the configs needs the resolvers they read, whatever ran before it (the command registers
# them in varbench/cli.py; a test composing in-process does not go through it)
register_resolvers()

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN_A = SHARED / "golden" / "setA"
COMPAT = SHARED / "compat"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    # a missing golden folder is a broken checkout, never a reason to skip
    assert (GOLDEN_A / "config.json").is_file(), \
        f"golden data not found at {GOLDEN_A} (shared/ must sit beside the checkout)"
    return GOLDEN_A


@pytest.fixture
def tiny_layout() -> ScaleLayout:
    """Four scales, 30 tokens: every contract test runs on it."""
    return ScaleLayout((1, 2, 3, 4))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def read_tsv(name: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """key -> (shape, kind) from a shared/compat key list."""
    rows = (COMPAT / name).read_text().splitlines()
    header = rows[0].split("\t")
    out = {}
    for line in rows[1:]:
        cols = dict(zip(header, line.split("\t")))
        shape = tuple(int(s) for s in cols["shape"].split("x")) if cols["shape"] else ()
        out[cols["key"]] = (shape, cols["kind"])
    return out


@pytest.fixture
def cheap_inception(monkeypatch):
    """Inception replaced by a 4-d projection of each image's mean colour (torch-fidelity's extractor contract): for
    tests of which rows are written; the real network's features are tested in tests/test_inception.py."""
    from torch_fidelity import FeatureExtractorBase

    from varbench.eval import metrics

    class Cheap(FeatureExtractorBase):
        def __init__(self):
            super().__init__("cheap", ["2048"])
            self.proj = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))

        @staticmethod
        def get_provided_features_list():
            return ("2048",)

        def forward(self, x_B3HW):
            return (x_B3HW.float().mean(dim=(2, 3)) @ self.proj,)
    monkeypatch.setattr(metrics, "inception_extractor", lambda weights=None, device="cpu": (Cheap(), "abc123"))
