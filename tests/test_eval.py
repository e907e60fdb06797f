"""Evaluation: the Frechet distance against closed forms, the ADM npz layout, resumable bitwise-stable sampling,
the project classifier (accurate on real images, at chance on an untrained model's samples), the torch-fidelity
wiring with that classifier as the feature extractor (no Inception, nothing downloaded), and task=evaluate."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model, tiny_tokenizer, write_run
from PIL import Image

from varbench.data.embedded import EmbeddedShapes
from varbench.eval import classifier as clf
from varbench.eval.metrics import (
    NpzImages,
    feature_statistics,
    fidelity_metrics,
    frechet_distance,
    load_adm_npz,
    read_adm_reference,
    save_adm_npz,
)
from varbench.eval.sampling import PRESETS, image_seed, sample_for_eval

SIDE = 32  # the classifier tests run at 32 px: seconds on 2 cores


# ----- Frechet distance ------------------------------------------------------------------------------------------
def closed_form(mu1, a, mu2, b) -> float:
    """FD of N(mu1, Q diag(a) Q^T) and N(mu2, Q diag(b) Q^T): the covariances commute, so
    sqrt(S1 S2) = Q diag(sqrt(ab)) Q^T."""
    return float(((mu1 - mu2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum())


@pytest.mark.parametrize("rotate", [False, True])
def test_frechet_distance_matches_the_closed_form(rotate):
    rng = np.random.default_rng(0)
    D = 6
    mu1, mu2, a, b = rng.normal(size=D), rng.normal(size=D), rng.uniform(0.1, 3, D), rng.uniform(0.1, 3, D)
    Q = np.linalg.qr(rng.normal(size=(D, D)))[0] if rotate else np.eye(D)
    s1, s2 = Q @ np.diag(a) @ Q.T, Q @ np.diag(b) @ Q.T
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed_form(mu1, a, mu2, b), rel=1e-8, abs=1e-10)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_sample_statistics():
    features = np.random.default_rng(1).normal(size=(500, 8))
    mu, sigma = feature_statistics(features)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu, sigma, mu + 1, sigma) == pytest.approx(8.0, rel=1e-9)  # |shift|^2 only
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(mu, sigma, mu[:4], sigma[:4, :4])


# ----- ADM npz layout ----------------------------------------------------------------------------------------------
def test_adm_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5])
    path = save_adm_npz(tmp_path / "samples.npz", images, labels)
    with np.load(path) as raw:  # the layout ADM's evaluator reads
        assert sorted(raw.keys()) == ["arr_0", "arr_1"] and raw["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(raw["arr_0"], images)
    loaded, loaded_labels = load_adm_npz(path)
    assert isinstance(loaded, np.memmap)  # stored uncompressed: mapped, not read
    np.testing.assert_array_equal(loaded, images)
    np.testing.assert_array_equal(loaded_labels, labels)
    item = NpzImages(path)[2]
    assert item.dtype == torch.uint8 and item.shape == (3, 16, 16) and torch.equal(item.permute(1, 2, 0),
                                                                                  torch.from_numpy(images[2]))
    np.savez_compressed(tmp_path / "c.npz", arr_0=images)  # compressed members are read, not mapped
    np.testing.assert_array_equal(load_adm_npz(tmp_path / "c.npz")[0], images)
    np.savez(tmp_path / "ref.npz", arr_0=images, mu=np.zeros(4), sigma=np.eye(4))
    mu, sigma = read_adm_reference(tmp_path / "ref.npz")
    assert mu.shape == (4,) and sigma.shape == (4, 4)
    with pytest.raises(KeyError, match="not an ADM reference"):
        read_adm_reference(path)
    with pytest.raises(ValueError, match="uint8"):
        save_adm_npz(tmp_path / "bad.npz", images.astype(np.float32))


# ----- resumable sampling ----------------------------------------------------------------------------------------
def test_sampling_resumes_to_the_same_images(tmp_path):
    vae = tiny_tokenizer()
    model = tiny_model("attention", vae=vae)
    args = {"num_classes": 2, "per_class": 3, "batch_size": 2, "preset": "eval", "seed": 7, "device": "cpu"}
    first = sample_for_eval(model, vae, tmp_path, **args)
    folder = Path(first["folder"])
    assert first["generated"] == 6 and first["skipped"] == 0 and folder.parent == tmp_path
    pngs = {p.name: p.read_bytes() for p in (folder / "images").glob("*.png")}
    assert sorted(pngs) == [f"{c:04d}_{i:03d}.png" for c in range(2) for i in range(3)]
    npz_bytes = np.load(first["npz"])["arr_0"].copy()
    for name in ("0000_001.png", "0001_002.png"):  # in two different batches (batches are pairs, class-major)
        (folder / "images" / name).unlink()
    again = sample_for_eval(model, vae, tmp_path, **args)
    assert again["generated"] == 2 and again["skipped"] == 4 and again["folder"] == first["folder"]
    assert {p.name: p.read_bytes() for p in (folder / "images").glob("*.png")} == pngs
    np.testing.assert_array_equal(np.load(again["npz"])["arr_0"], npz_bytes)
    assert json.loads((folder / "manifest.json").read_text())["top_k"] == PRESETS["eval"].top_k
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "seed": 8}))
    with pytest.raises(ValueError, match="other settings"):  # a folder whose manifest disagrees is never mixed into
        sample_for_eval(model, vae, tmp_path, **args)


def test_samples_of_other_weights_or_settings_are_never_reused(tmp_path):
    """Samples are keyed by content: other weights (a run retrained into the same folder), another seed or another
    tokenizer draw new images into another folder, never reusing the ones on disk."""
    vae = tiny_tokenizer()
    model = tiny_model("attention", vae=vae)
    args = {"num_classes": 2, "per_class": 1, "batch_size": 2, "preset": "eval", "seed": 7, "device": "cpu"}
    first = sample_for_eval(model, vae, tmp_path, **args)
    other_vae = tiny_tokenizer()
    with torch.no_grad():
        model.head.bias.add_(1.0)  # the same module, other weights
        other_vae.quantize.embedding.weight.add_(0.1)
    for out in (sample_for_eval(model, vae, tmp_path, **args),
                sample_for_eval(tiny_model("attention", vae=vae), vae, tmp_path, **{**args, "seed": 8}),
                sample_for_eval(tiny_model("attention", vae=vae), other_vae, tmp_path, **args)):
        assert out["generated"] == 2 and out["folder"] != first["folder"]
    assert len(list(tmp_path.iterdir())) == 4


def test_samples_decoded_in_another_mode_get_their_own_folder(tmp_path):
    """A decode mode other than eager rounds differently: its samples are keyed (and their manifest says so) apart
    from eager's, whose key is the one it had before decode modes existed (no decode_mode in its settings)."""
    vae = tiny_tokenizer()
    model = tiny_model("attention", vae=vae)
    args = {"num_classes": 2, "per_class": 1, "batch_size": 2, "preset": "eval", "seed": 7, "device": "cpu"}
    eager = sample_for_eval(model, vae, tmp_path, **args)
    assert "decode_mode" not in json.loads((Path(eager["folder"]) / "manifest.json").read_text())
    fast = sample_for_eval(model, vae, tmp_path, **args, decode_mode="channels_last")
    assert fast["generated"] == 2 and fast["folder"] != eager["folder"] and vae.decode_mode == "channels_last"
    assert json.loads((Path(fast["folder"]) / "manifest.json").read_text())["decode_mode"] == "channels_last"
    again = sample_for_eval(model, vae, tmp_path, **args, decode_mode="eager")
    assert again == {**eager, "generated": 0, "skipped": 2} and vae.decode_mode == "eager"


def test_image_seeds_depend_on_class_and_index():
    seeds = {image_seed(0, c, i) for c in range(10) for i in range(50)}
    assert len(seeds) == 500 and image_seed(0, 3, 4) == image_seed(0, 3, 4) != image_seed(1, 3, 4)
    assert PRESETS["eval"].cfg == 1.5 and PRESETS["eval"].top_p == 0.96 and not PRESETS["eval"].more_smooth


# ----- the project classifier ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_classifier():
    """A classifier of the 32 px embedded set (100 steps, about 2 s) and its val split."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is as fast, and 10x faster when other jobs share the 2 cores
    try:
        train = EmbeddedShapes("train", image_size=SIDE)
        model = clf.train_classifier(train, num_classes=10, image_size=SIDE, steps=100, batch_size=32, width=16)
    finally:
        torch.set_num_threads(threads)
    return model, EmbeddedShapes("val", image_size=SIDE)


def test_classifier_is_accurate_on_real_images(small_classifier):
    model, val = small_classifier
    features, logits, labels = clf.classify_dataset(model, val)
    assert features.shape == (len(val), 64) and logits.shape == (len(val), 10)
    assert clf.accuracy(logits, labels) > 0.95


def test_untrained_model_samples_are_at_chance(small_classifier):
    model, _ = small_classifier
    vae = tiny_tokenizer()
    labels = torch.arange(10).repeat_interleave(3)
    generator = torch.Generator().manual_seed(0)
    images = tiny_model("attention", vae=vae).generate(vae, labels, cfg=1.5, generator=generator).images
    x_N3HW = F.avg_pool2d(images * 2 - 1, images.shape[-1] // SIDE)  # 64 px samples -> the classifier's 32 px
    assert clf.accuracy(clf.classify(model, x_N3HW)[1], labels) < 0.4


def test_classifier_file_round_trip(small_classifier, tmp_path):
    model, val = small_classifier
    path = clf.save_classifier(model, tmp_path / "c.safetensors", val_accuracy=0.99)
    loaded, meta = clf.load_classifier(path)
    assert meta == {"val_accuracy": 0.99}
    x = torch.stack([val[i][0] for i in range(4)])
    torch.testing.assert_close(loaded(x)[1], model(x)[1], rtol=0, atol=0)


def test_copies_of_training_images_as_samples_give_a_ratio_far_below_fresh_samples(small_classifier):
    """The memorisation row in the classifier's feature space, on the embedded data set: training images handed in
    as "samples" sit on their nearest training image; fresh images of the same distribution are as far from the
    training set as the held-out (val) images are."""
    from varbench.eval.memorisation import memorisation_rows
    model, val = small_classifier
    train = EmbeddedShapes("train", image_size=SIDE, size_per_class=20)
    fresh = EmbeddedShapes("train", image_size=SIDE, size_per_class=10, seed=1)  # another draw: never trained on

    def features(x_N3HW):
        return clf.classify(model, x_N3HW)[0]
    heldout = clf.classify_dataset(model, val)[0]
    fields = {"feature_extractor": f"{clf.FIDELITY_NAME}/test", "reference": val.describe()}
    rows = {}
    for name, images in (("copies", [train[i][0] for i in range(0, 200, 2)]),
                         ("fresh", [fresh[i][0] for i in range(100)])):
        (rows[name],) = memorisation_rows(features(torch.stack(images)), heldout, train, features, 200, 64, "cpu",
                                          fields)
    (metric, copied, unit, rec), (_, new, _, fresh_rec) = rows["copies"], rows["fresh"]
    assert metric == "nn_distance_ratio" and unit == "ratio" and rec["feature_extractor"] == fields["feature_extractor"]
    assert copied < 0.1 * new and rec["copy_fraction"] == 1.0
    assert 0.7 < new < 1.4 and fresh_rec["copy_fraction"] < 0.1
    assert rec["num_train"] == 200 and rec["train_items"].startswith("200 of 200")
    assert memorisation_rows(heldout, heldout, train, features, 0, 64, "cpu", fields) == []  # 0: no row


# ----- torch-fidelity wiring -------------------------------------------------------------------------------------
def write_folder(folder, images_NHW3):
    folder.mkdir()
    for i, img in enumerate(images_NHW3):
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return folder


def test_fidelity_metrics_with_the_classifier(small_classifier, tmp_path):
    model, val = small_classifier
    weights = clf.save_classifier(model, tmp_path / "c.safetensors")
    real = np.stack([val.render(i)[0] for i in range(200)])
    noise = np.random.default_rng(0).integers(0, 256, size=(100, SIDE, SIDE, 3), dtype=np.uint8)
    a, b = write_folder(tmp_path / "a", real[:100]), write_folder(tmp_path / "b", real[100:])
    kw = {"feature_extractor": clf.register_with_fidelity(), "weights_path": weights, "isc": True, "fid": True,
          "kid": True, "prc": True, "isc_splits": 1, "save_cpu_ram": True}
    same = fidelity_metrics(a, b, **kw)
    assert "frechet_inception_distance" not in same and "inception_score_mean" not in same  # not Inception
    assert same["frechet_distance"] < fidelity_metrics(a, write_folder(tmp_path / "n", noise), **kw)["frechet_distance"]
    assert same["precision"] > 0.5 and same["recall"] > 0.5
    # the same number as our own Frechet distance on the classifier's features
    feats = [clf.classify(model, torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1)[0]
             for x in (real[:100], real[100:])]
    ours = frechet_distance(*feature_statistics(feats[0]), *feature_statistics(feats[1]))
    assert same["frechet_distance"] == pytest.approx(ours, rel=1e-3)
    with pytest.raises(ValueError, match="image folder"):  # a torch-fidelity data set name would download
        fidelity_metrics("cifar10-train", b, **kw)


# ----- task=evaluate -----------------------------------------------------------------------------------------------
def evaluate_config(tmp_path, *overrides):
    """The config of task=evaluate on a tiny run written at tmp_path/run (no training: fresh weights), results in
    tmp_path/res; returns (config, checkpoint folder, tokenizer file)."""
    from hydra import compose, initialize_config_dir

    from varbench.registry import CONFIG_ROOT
    base = ["task=evaluate", "device=cpu", "cell_id=test", f"run_dir={tmp_path / 'run'}",
            f"results_dir={tmp_path / 'res'}",
            "model.depth=1", "model.width=64", "model.num_heads=1", "tokenizer.num_res_blocks=1",
            "tokenizer.vocab_size=64", "data.size_per_class=20", "task.per_class=2", "task.batch_size=10",
            "task.classifier_steps=10", "task.classifier_batch_size=16", "task.classifier_width=8",
            "task.classifier_min_val_accuracy=0"]
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*base, *overrides])
    return (cfg, *write_run(cfg))


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 20 samples, 32-d features: a singular covariance
def test_evaluate_task_records_every_metric(tmp_path):
    from varbench.tasks.evaluate import main
    from varbench.utils.hashing import file_sha256
    from varbench.utils.records import read_records
    cfg, folder, tokenizer_file = evaluate_config(tmp_path)
    out = main(cfg)  # the run decides the model and the tokenizer (tests/test_runs.py)
    records = {r["metric"]: r for r in read_records(tmp_path / "res" / "evaluate.jsonl")}
    assert all(r["checkpoint_sha256"] == file_sha256(folder / "model.safetensors")
               and r["tokenizer_sha256"] == file_sha256(tokenizer_file) for r in records.values())
    # the kernels that ran (session 21: the records said only `mixer.backend: auto`); the samples' folder is theirs
    assert all(r["backends"] == {"mixer": "reference", "intra": "none"} for r in records.values())
    manifest = json.loads((Path(out["samples"]["npz"]).parent / "manifest.json").read_text())
    assert '"backends"' in json.dumps(manifest) and '"device": "cpu"' in json.dumps(manifest)
    assert set(records) == {"embedded_fd", "class_accuracy", "classifier_val_accuracy", "classifier_score",
                            "embedded_kd", "embedded_precision", "embedded_recall", "val_nll", "train_nll",
                            "embedded_fd_floor", "embedded_fd_recon", "nn_distance_ratio", "evaluate_seconds"}
    # where the evaluation's time went, part by part, within its total
    timing = records.pop("evaluate_seconds")
    assert set(timing["parts_s"]) == {"sample", "classifier", "kd_precision_recall", "memorisation", "floor_recon",
                                      "val_nll", "train_nll"}  # no Inception FID asked for
    assert timing["unit"] == "s" and 0 < sum(timing["parts_s"].values()) <= timing["value"] + 0.01
    assert out["parts_s"] == timing["parts_s"]
    # train images vs val: the floor; an untrained tokenizer's reconstructions of them are far worse
    assert records["embedded_fd_recon"]["value"] > records["embedded_fd_floor"]["value"]
    assert records["embedded_fd_floor"]["floor_split"].startswith("EmbeddedShapes(split=train")
    for split in ("val", "train"):  # the same teacher-forced NLL on each split: their difference is the gap
        assert records[f"{split}_nll"]["unit"] == "nats/token" \
            and records[f"{split}_nll"]["reference"].startswith(f"EmbeddedShapes(split={split}") \
            and "scored_items" in records[f"{split}_nll"]["items"]
    assert records["train_nll"]["value"] != records["val_nll"]["value"]
    assert records["embedded_fd"]["num_samples"] == 20 and records["embedded_fd"]["preset"] == "eval"
    assert all(r["cfg"] == PRESETS["eval"].cfg for r in records.values())  # the guidance each record was sampled at
    assert all(r["cuda_graphs"] is False for r in records.values())  # task.cuda_graphs: auto samples eagerly on a CPU
    assert all(r["decode_mode"] == "eager" for r in records.values())  # task.decode_mode: auto decodes eagerly there
    assert all(r["feature_extractor"].startswith(clf.FIDELITY_NAME)
               for m, r in records.items() if not m.endswith("_nll"))
    # memorisation: the samples and the val images against every train image (200 < memorisation_train_images)
    nn = records["nn_distance_ratio"]
    assert nn["unit"] == "ratio" and nn["value"] == pytest.approx(nn["sample_nn_median"] / nn["heldout_nn_median"])
    assert (nn["num_samples"], nn["num_heldout"], nn["num_train"]) == (20, 200, 200) and 0 <= nn["copy_fraction"] <= 1
    assert nn["train_reference"].startswith("EmbeddedShapes(split=train") and nn["train_items"].startswith("200 of 200")
    assert nn["reference"].startswith("EmbeddedShapes(split=val") and out["nn_distance_ratio"] == nn["value"]
    assert out["suite"] == "project" and len(list((tmp_path / "res" / "classifiers").glob("*.safetensors"))) == 1
    again = main(cfg)  # resumes: no image is drawn twice, the cached classifier is reused
    assert again["samples"]["generated"] == 0 and again["embedded_fd"] == pytest.approx(out["embedded_fd"])
    cfg.task.classifier_min_val_accuracy = 1.01
    with pytest.raises(ValueError, match="val accuracy"):  # an inaccurate classifier stops the task
        main(cfg)
    # graphed sampling reaches generate, which refuses it on a CPU
    cfg.task.update(cuda_graphs=True, classifier_min_val_accuracy=0, out_dir=str(tmp_path / "graphed"))
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        main(cfg)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_without_the_classifier_s_metrics_inception_s_rows_alone_are_recorded(tmp_path, cheap_inception):
    """task.classifier_metrics=false (grid=study_cifar: a real data set the small project classifier cannot learn):
    no classifier is trained or asked for its accuracy, and Inception's rows (with their floor, reconstruction and
    memorisation rows) are the quality records; without inception_fid nothing would be measured: an error."""
    from varbench.tasks.evaluate import main
    from varbench.utils.records import read_records
    cfg, _, _ = evaluate_config(tmp_path, "task.classifier_metrics=false", "task.classifier_min_val_accuracy=1",
                                "task.inception_fid=true", "task.val_nll_images=0", "task.train_nll_images=0")
    out = main(cfg)
    records = {r["metric"]: r for r in read_records(tmp_path / "res" / "evaluate.jsonl")}
    assert set(records) == {"fid", "kid", "precision", "recall", "fid_floor", "fid_recon", "nn_distance_ratio",
                            "evaluate_seconds"}
    assert set(records["evaluate_seconds"]["parts_s"]) == {"sample", "inception"}
    assert not (tmp_path / "res" / "classifiers").exists() and out["fid"] == records["fid"]["value"]
    cfg.task.inception_fid = False
    with pytest.raises(ValueError, match="classifier_metrics=false needs task.inception_fid=true"):
        main(cfg)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_evaluate_names_match_the_quality_table_columns(tmp_path):
    """What task=evaluate records is what the quality tables show: precision / recall / KD of the classifier and the
    NN ratio each get their column (issue 19: they were recorded under names no column matched)."""
    from varbench.analysis.load import load_records
    from varbench.analysis.tables import quality_wide
    from varbench.tasks.evaluate import main
    cfg, _, _ = evaluate_config(tmp_path, "task.val_nll_images=0", "task.train_nll_images=0", "task.floor_images=0")
    out = main(cfg)
    row = quality_wide(load_records(tmp_path / "res")).iloc[0]
    for name, metric in (("FD", "embedded_fd"), ("Precision", "embedded_precision"), ("Recall", "embedded_recall"),
                         ("KD", "embedded_kd"), ("Class acc.", "class_accuracy"), ("NN ratio", "nn_distance_ratio")):
        assert row[f"{name} (embedded classifier, 20, cfg 1.5)"] == pytest.approx(out[metric])


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_evaluate_at_another_guidance_samples_anew_and_says_so(tmp_path):
    """task.cfg re-evaluates a trained run at another guidance scale: its own samples (the scale is in their key and
    manifest), every record stating the scale; the preset's own scale spelt out draws the preset's samples."""
    from varbench.tasks.evaluate import main
    from varbench.utils.records import read_records
    cheap = ("task.val_nll_images=0", "task.train_nll_images=0", "task.floor_images=0",
             "task.memorisation_train_images=0")
    cfg, _, _ = evaluate_config(tmp_path, *cheap)
    preset = main(cfg)
    cfg.task.cfg = 3  # as Hydra gives task.cfg=3: an int
    guided = main(cfg)
    assert guided["samples"]["key"] != preset["samples"]["key"] and guided["samples"]["generated"] == 20
    assert json.loads((Path(guided["samples"]["folder"]) / "manifest.json").read_text())["cfg"] == 3.0
    assert guided["embedded_fd"] != preset["embedded_fd"]  # other images
    cfg.task.cfg = PRESETS["eval"].cfg
    assert main(cfg)["samples"] == {**preset["samples"], "generated": 0, "skipped": 20}
    records = read_records(tmp_path / "res" / "evaluate.jsonl")
    assert "nn_distance_ratio" not in {r["metric"] for r in records}  # task.memorisation_train_images=0: skipped
    by_key = {}
    for r in records:
        by_key.setdefault(r["samples"], set()).add(r["cfg"])
    assert by_key == {preset["samples"]["npz"]: {1.5}, guided["samples"]["npz"]: {3.0}}


def test_an_invalid_guidance_scale_is_an_error_naming_key_value_and_range(tmp_path):
    from varbench.config_schema import ConfigError, validate
    from varbench.eval.sampling import with_guidance
    from varbench.tasks.evaluate import main
    cfg, _, _ = evaluate_config(tmp_path, "task.cfg=-0.5")
    with pytest.raises(ConfigError, match=r"task\.cfg = -0\.5: expected a number >= 0, or null \(the preset's"):
        validate(cfg)
    with pytest.raises(ValueError, match=r"task\.cfg = -0\.5: expected a finite number >= 0"):
        main(cfg)  # a caller that skips validation is stopped before any image is drawn
    assert not (tmp_path / "run" / "eval").exists()
    for bad in (float("nan"), float("inf"), "high", True):
        with pytest.raises(ValueError, match=f"task.cfg = {bad!r}"):
            with_guidance(PRESETS["eval"], bad)
    assert with_guidance(PRESETS["eval"], None) == PRESETS["eval"]
    assert with_guidance(PRESETS["eval"], 0).cfg == 0.0  # no guidance is a valid scale


def test_teacher_forced_nll_of_a_model_with_uniform_logits_is_log_vocab(tmp_path):
    import math

    from hydra import compose, initialize_config_dir

    from varbench.build import build_dataset, build_model, build_tokenizer
    from varbench.eval.likelihood import teacher_forced_nll
    from varbench.registry import CONFIG_ROOT
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["device=cpu", "model.depth=1", "model.width=64",
                                                       "model.num_heads=1", "tokenizer.num_res_blocks=1",
                                                       "tokenizer.vocab_size=64", "data.size_per_class=4"])
    model, tokenizer, val = build_model(cfg), build_tokenizer(cfg).eval(), build_dataset(cfg, "val")
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)  # every logit 0: each token costs exactly log(V) nats
    nll, n = teacher_forced_nll(model, tokenizer, val, torch.device("cpu"), batch_size=3, max_images=7)
    assert n == 7 and nll == pytest.approx(math.log(64), rel=1e-6)
    trained_like, _ = teacher_forced_nll(build_model(cfg), tokenizer, val, torch.device("cpu"), batch_size=4,
                                         max_images=7)
    assert trained_like != pytest.approx(math.log(64), rel=1e-6)  # the head's output does reach the number


def test_imagenet_runs_are_not_judged_by_the_project_classifier_silently():
    from hydra import compose, initialize_config_dir

    from varbench.registry import CONFIG_ROOT
    from varbench.tasks.evaluate import resolve_suite
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["task=evaluate", "data=imagenet"])
    with pytest.raises(ValueError, match="adm_reference"):
        resolve_suite(cfg)
    cfg.task.adm_reference = "VIRTUAL_imagenet256_labeled.npz"
    assert resolve_suite(cfg) == "adm"


def test_top_ops_names_the_operator_that_holds_the_time():
    from varbench.eval.timing import top_ops
    a, b, v = torch.randn(384, 384), torch.randn(384, 384), torch.randn(16)
    ops = top_ops(lambda: (a @ b, v + 1), steps=3)
    assert ops[0]["op"] == "aten::mm" and ops[0]["calls_per_step"] == 1
    assert sum(o["share"] for o in ops) <= 1 + 1e-9 and ops[0]["share"] > 0.5
    assert len({o["op"] for o in ops}) == len(ops)  # one row per operator, none listed twice
    # the rest in one last row, so that the rows sum to the busy time (session 24: the 15 listed held 73-80 of 96 ms)
    few = top_ops(lambda: (a @ b, v + 1, v * 2, v.sum()), steps=2, limit=1)
    assert few[0]["op"] == "aten::mm" and few[-1]["op"].startswith("(the other ") and len(few) == 2
    assert sum(o["share"] for o in few) == pytest.approx(1.0)
    # without a limit every operator has its row, and they still sum to the busy time
    every = top_ops(lambda: (a @ b, v + 1, v * 2, v.sum()), steps=2, limit=None)
    assert not any(o["op"].startswith("(the other ") for o in every) and len(every) >= 4
    assert {"aten::mm", "aten::add", "aten::mul", "aten::sum"} <= {o["op"] for o in every}
    assert sum(o["share"] for o in every) == pytest.approx(1.0)


def test_the_scored_items_cover_the_classes_whatever_the_order_of_the_data_set():
    from varbench.eval.likelihood import scored_items
    items = scored_items(100_000, 1000)
    assert items == scored_items(100_000, 1000) and items == sorted(set(items)) and len(items) == 1000
    by_class = {i // 100 for i in items}  # 1,000 classes of 100 images, stored class by class (an image folder)
    cyclic = {i % 10 for i in items}      # 10 classes in turn (the embedded data set)
    assert len(by_class) > 400 and cyclic == set(range(10))  # the first 1,000 of the folder: 10 classes only
    assert scored_items(7, 1000) == list(range(7))  # a smaller data set: every item


@pytest.mark.parametrize("override,message", [
    ("task.adm_reference=/nonexistent/VIRTUAL.npz", "task.adm_reference=/nonexistent/VIRTUAL.npz: no such file"),
    ("task.inception_weights=/x/weights-inception-2015-12-05-6726825d.pth", "must be the .safetensors file"),
    ("task.inception_weights=/nonexistent/inception.safetensors", "task.inception_weights=.*: no such file"),
    ("data.root=/nonexistent/imagenet", "data.root=/nonexistent/imagenet: no such folder"),
    # session 22's audit: these failed after 500 and 200 images were sampled
    ("task.suite=adm", "task.suite=adm needs task.adm_reference"),
    ("task.classifier=/nonexistent.safetensors", "task.classifier=/nonexistent.safetensors: no such file")])
def test_evaluate_checks_the_files_it_reads_after_sampling_before_it_samples(override, message, tmp_path):
    """Session 21: a wrong reference batch, Inception weights file or data root surfaced only after every sample
    was drawn (50,000 for ImageNet), and the run recorded nothing."""
    from hydra import compose, initialize_config_dir

    from varbench.registry import CONFIG_ROOT
    from varbench.tasks import check_config
    weights = tmp_path / "model.safetensors"  # (only its existence is checked before the task runs)
    weights.touch()
    extra = ["task.inception_fid=true"] if "inception_weights" in override else []
    extra += ["data=folder"] if override.startswith("data.root") else []
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["task=evaluate", f"task.checkpoint={weights}", *extra, override])
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        check_config(cfg)
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        check_config(compose(config_name="config", overrides=["task=evaluate", f"task.checkpoint={weights}"]))


@pytest.mark.parametrize("task", ["sample", "evaluate", "edit"])
def test_a_task_on_a_trained_model_needs_its_weights_before_it_runs(task, tmp_path):
    """`varbench task=sample` with no run_dir and no task.checkpoint printed a traceback from inside the task, after
    Hydra had made a run folder for it; the check now refuses it first, naming what it expected."""
    from hydra import compose, initialize_config_dir

    from varbench.registry import CONFIG_ROOT
    from varbench.tasks import check_config
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"task={task}", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match=f"no checkpoint at {tmp_path / 'run'}: expected a run directory"):
        check_config(cfg)
