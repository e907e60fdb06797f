"""Training batches read through a DataLoader with workers and prefetch (issue 18 item 3): the batches are a function of
(seed, batch index, rank share) alone, so workers, a resume and the number of processes change nothing; the loader
settings (`data.num_workers`, `data.prefetch_factor`) are checked and kept out of the data set's constructor."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from varbench.data.batches import GlobalBatches, batch_loader
from varbench.data.folders import ImageFolderData
from varbench.data.loading import GPU_WORKERS, LoaderOptions, loader_options
from varbench.registry import dataset_config

BATCH, STEPS = 4, 6  # 10 images: 3 batches per epoch, so STEPS covers two epochs


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of JPEGs of different sizes; train split: random crop and flip, the draws a resume must repeat."""
    root = tmp_path_factory.mktemp("images")
    for c, name in enumerate(("cat", "dog")):
        (root / "train" / name).mkdir(parents=True)
        for i in range(5):
            rgb = np.random.default_rng(10 * c + i).integers(0, 256, (30 + 2 * i, 40, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(root / "train" / name / f"{i}.jpg")
    return ImageFolderData(root, "train", image_size=16, hflip=True)


def read(dataset, start, stop, workers, rank=0, world_size=1, global_batch=BATCH):
    batches = GlobalBatches(len(dataset), global_batch, seed=3, rank=rank, world_size=world_size)
    return list(batch_loader(dataset, batches, start, stop, LoaderOptions(workers, prefetch_factor=2)))


def assert_same(a, b):
    assert len(a) == len(b)
    for (x1, y1), (x2, y2) in zip(a, b):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_resume_with_workers_gives_the_batches_of_an_uninterrupted_run(folder):
    straight = read(folder, 0, STEPS, workers=2)
    resumed = read(folder, 3, STEPS, workers=2)
    assert_same(resumed, straight[3:])
    assert_same(read(folder, 0, STEPS, workers=0), straight)  # in-process: the same batches


def test_crops_are_random_but_fixed_by_the_seed(folder):
    """Batch 3 (epoch 1) holds the images of batch 0 (epoch 0) in another order with other crops: the test above
    would be blind if the transform drew nothing."""
    batches = GlobalBatches(len(folder), len(folder), seed=3)
    (x0, y0), (x1, y1) = read(folder, 0, 2, workers=0, global_batch=len(folder))
    order0, order1 = batches.indices(0, 0), batches.indices(1, 0)
    crops0 = {i: x for i, x in zip(order0, x0)}
    assert any(not torch.equal(crops0[i], x) for i, x in zip(order1, x1))


def test_two_processes_read_the_batch_of_one(folder):
    one = read(folder, 0, STEPS, workers=0)
    halves = [read(folder, 0, STEPS, workers=0, rank=r, world_size=2) for r in (0, 1)]
    for b, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([halves[0][b][0], halves[1][b][0]]), x)
        assert torch.equal(torch.cat([halves[0][b][1], halves[1][b][1]]), y)


def test_reading_leaves_the_global_rng_alone(folder):
    """The global RNG is checkpointed for exact resume: neither making the loader (its workers' base seed) nor the
    crops drawn in-process may advance it."""
    before = torch.get_rng_state()
    read(folder, 0, 2, workers=0)
    read(folder, 0, 2, workers=1)
    assert torch.equal(torch.get_rng_state(), before)


def _read_with_workers(folder):
    return read(folder, 0, 2, workers=1)


def test_workers_start_inside_a_joblib_worker_as_cluster_local_parallel_runs_cells(folder):
    """hydra-joblib-launcher runs each cell in a loky process, whose default multiprocessing context is loky's: a
    DataLoader inheriting it cannot start its workers (every GPU cell of session 10's lr sweep failed so)."""
    joblib = pytest.importorskip("joblib")
    batches = joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(_read_with_workers)(folder) for _ in range(2))
    for got in batches:
        assert_same(got, read(folder, 0, 2, workers=0))


def test_loader_options_resolve_per_device():
    data = OmegaConf.create({"num_workers": "auto", "prefetch_factor": 3})
    assert loader_options(data, "cpu") == LoaderOptions(0, 3, pin_memory=False)
    cuda = loader_options(data, torch.device("cuda"))
    assert cuda.pin_memory and 0 <= cuda.num_workers <= GPU_WORKERS
    assert loader_options(OmegaConf.create({"num_workers": 5}), "cpu") == LoaderOptions(5, 2)
    assert LoaderOptions(0, 4).kwargs()["prefetch_factor"] is None  # DataLoader refuses it without workers


@pytest.mark.parametrize("key,value", [("num_workers", -1), ("num_workers", "eight"), ("num_workers", 1.5),
                                       ("prefetch_factor", 0), ("prefetch_factor", True), ("num_workers", 10 ** 6)])
def test_bad_loader_options_name_key_value_and_range(key, value):
    with pytest.raises(ValueError, match=rf"data\.{key}=.*{value!r}.*valid"):
        loader_options(OmegaConf.create({key: value}), "cpu")


def test_loader_keys_stay_out_of_the_data_set_constructor():
    cfg = OmegaConf.create({"run_dir": "/tmp/x", "data": {"_target_": "X", "index_dir": "${run_dir}",
                                                          "num_workers": 2, "prefetch_factor": 2}})
    data = dataset_config(cfg.data)
    assert set(data) == {"_target_", "index_dir"} and data.index_dir == "/tmp/x"
    assert cfg.data.num_workers == 2  # the run's config is left as it was


def test_a_data_entry_builds_without_hydra():
    from varbench.registry import build
    assert len(build("data", "embedded", split="val", image_size=16, size_per_class=1)) == 10


def test_training_resumed_with_workers_equals_an_in_process_run(tmp_path):
    """The training loop (in this process): 4 steps read in-process give the weights of 2 steps read in-process, then
    a resume to 4 steps with 2 workers (the loader keys may change on resume: they change no batch)."""
    from safetensors.torch import load_file
    from test_training_resume import config, train

    from varbench.training import checkpoints

    def final(run):
        return load_file(str(checkpoints.latest(run / "run" / "checkpoints") / "model.safetensors"))

    train(config(tmp_path / "straight", "train.steps=4", "data.num_workers=0"))
    train(config(tmp_path / "resumed", "train.steps=2", "data.num_workers=0"))
    summary = train(config(tmp_path / "resumed", "train.steps=4", "data.num_workers=2", "data.prefetch_factor=3"))
    assert summary["steps"] == 4
    a, b = final(tmp_path / "straight"), final(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_negative_seed_is_refused():
    with pytest.raises(ValueError, match="seed=-1: valid range"):
        GlobalBatches(10, 2, seed=-1)


@pytest.mark.parametrize("override,message", [
    ("data.num_workers=-1", "data.num_workers = -1: expected one of ['auto'] or an integer in [0, 256]"),
    ("data.num_workers=eight", "data.num_workers = 'eight'"),
    ("data.prefetch_factor=0", "data.prefetch_factor = 0: expected an integer in [1, 64]")])
def test_the_config_checks_know_the_loader_keys(override, message):
    from varbench.config_schema import ConfigError, validate
    from varbench.registry import compose
    validate(compose(["data=folder", "data.root=/data", "data.num_classes=10", "data.num_workers=3",
                      "data.prefetch_factor=4"]))
    with pytest.raises(ConfigError) as err:
        validate(compose([override]))
    assert message in str(err.value)
