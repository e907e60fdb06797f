"""varbench.eval.memorisation: copies of training images give a ratio << 1, fresh images a ratio ~ 1."""

import pytest
import torch

from varbench.eval.memorisation import memorisation_check, nearest_distances

EXTRACTOR = "synthetic features"


def _sets(seed=0):
    g = torch.Generator().manual_seed(seed)
    train, heldout, fresh = (torch.randn(n, 16, generator=g) for n in (400, 200, 200))
    return g, train, heldout, fresh


def test_copies_of_training_images_give_a_ratio_far_below_one():
    g, train, heldout, _ = _sets()
    copies = train[:200] + 1e-3 * torch.randn(200, 16, generator=g)
    rec = memorisation_check(copies, heldout, train, EXTRACTOR)
    assert rec["metric"] == "nn_distance_ratio" and rec["feature_extractor"] == EXTRACTOR
    assert rec["value"] < 0.01 and rec["copy_fraction"] == 1.0


def test_fresh_images_give_a_ratio_near_one():
    _, train, heldout, fresh = _sets()
    rec = memorisation_check(fresh, heldout, train, EXTRACTOR)
    assert 0.9 < rec["value"] < 1.1 and rec["copy_fraction"] == 0.0
    assert rec["num_samples"] == 200 and rec["num_train"] == 400


def test_nearest_distances_match_brute_force_over_chunks():
    _, train, heldout, _ = _sets(1)
    brute = torch.cdist(heldout.double(), train.double()).min(dim=1).values
    assert torch.allclose(nearest_distances(heldout, train, chunk=7), brute)


def test_bad_inputs_are_errors():
    _, train, heldout, _ = _sets()
    with pytest.raises(ValueError, match="one D"):
        nearest_distances(heldout[:, :8], train)
    with pytest.raises(ValueError, match="leaked split"):
        memorisation_check(heldout, train[:50], train, EXTRACTOR)
    with pytest.raises(ValueError, match="feature_extractor"):
        memorisation_check(heldout, heldout, train, "")


def test_the_ratio_is_a_column_of_the_quality_tables(tmp_path):
    import json

    from varbench.analysis.load import load_records
    from varbench.analysis.tables import quality_wide
    _, train, heldout, fresh = _sets()
    rec = memorisation_check(fresh, heldout, train, EXTRACTOR)
    lines = [{**rec, "mixer": "attention", "intra": "none", "depth": 6, "resolution": 32, "seed": s, "cell_id": f"c{s}",
              "preset": "eval", "date": "2099-01-01T00:00:00+00:00"} for s in (0, 1)]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    table = quality_wide(load_records(tmp_path))
    assert table["NN ratio (synthetic features, 200)"].iloc[0] == pytest.approx(rec["value"])


def test_training_features_are_computed_once_per_extractor_data_set_and_count(tmp_path):
    """memorisation_rows with a cache: the training images' features are loaded, not recomputed, by the next
    evaluation with the same extractor weights, data set and count; anything else computes its own."""
    from pathlib import Path

    from varbench.data.embedded import EmbeddedShapes
    from varbench.eval.memorisation import memorisation_rows
    train, val = (EmbeddedShapes(split, image_size=16, size_per_class=n) for split, n in (("train", 5), ("val", 2)))

    def pixels(x_B3HW):
        return x_B3HW.flatten(1)

    def recomputed(x_B3HW):
        raise AssertionError("recomputed")
    samples = torch.stack([train[i][0] for i in range(10)]).flatten(1)  # training images: distance 0
    heldout = torch.stack([val[i][0] for i in range(len(val))]).flatten(1)
    fields = {"feature_extractor": "pixels", "feature_extractor_sha256": "v1"}
    (first,) = memorisation_rows(samples, heldout, train, pixels, 50, 16, "cpu", fields, tmp_path)
    (again,) = memorisation_rows(samples, heldout, train, recomputed, 50, 16, "cpu", fields, tmp_path)
    assert again == first and first[1] < 1e-6 and Path(first[3]["train_features"]).parent == tmp_path
    for other_fields, count in (({**fields, "feature_extractor_sha256": "v2"}, 50), (fields, 40)):
        with pytest.raises(AssertionError, match="recomputed"):  # other weights, another count
            memorisation_rows(samples, heldout, train, recomputed, count, 16, "cpu", other_fields, tmp_path)
    other_data = EmbeddedShapes("train", image_size=16, size_per_class=5, seed=1)
    with pytest.raises(AssertionError, match="recomputed"):
        memorisation_rows(samples, heldout, other_data, recomputed, 50, 16, "cpu", fields, tmp_path)
