"""Bad input gets a clear error that names the problem, and loses nothing."""

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer

from varbench.backbones.convert import load_official, varbench_to_official
from varbench.utils.checkpoint import read_state_dict


@pytest.fixture(scope="module")
def model():
    return tiny_model("attention")


def test_wrong_label_range(model):
    x = torch.zeros(2, model.layout.L - 1, model.latent_dim)
    with pytest.raises(ValueError, match=r"\[0, 10\]"):
        model(torch.tensor([3, 11]), x)
    with pytest.raises(ValueError, match=r"\[0, 10\]"):
        model(torch.tensor([-1, 0]), x)
    with pytest.raises(ValueError, match="integers"):
        model(torch.tensor([0.0, 1.0]), x)


def test_wrong_teacher_forcing_shape(model):
    with pytest.raises(ValueError, match=r"\(B, 29, 8\)"):
        model(torch.tensor([1]), torch.zeros(1, 30, model.latent_dim))


def test_wrong_image_size_names_the_expected_size():
    vae = tiny_tokenizer()
    with pytest.raises(ValueError, match="64x64"):
        vae.img_to_ids(torch.zeros(1, 3, 32, 32))


def test_checkpoint_with_missing_and_extra_keys_names_them(model):
    sd = varbench_to_official(model)
    sd.pop("blocks.1.ffn.fc2.bias")
    sd["blocks.0.attn.not_a_param"] = torch.zeros(3)
    with pytest.raises(ValueError) as err:
        load_official(tiny_model("attention"), sd)
    assert "blocks.1.mixer.ffn.fc2.bias" not in str(err.value)
    assert "blocks.1.ffn.fc2.bias" in str(err.value) and "blocks.0.mixer.not_a_param" in str(err.value)


def test_checkpoint_for_other_patch_nums_is_refused(model):
    sd = varbench_to_official(model)
    sd["lvl_1L"] = torch.zeros_like(sd["lvl_1L"])
    with pytest.raises(ValueError, match="patch_nums"):
        load_official(tiny_model("attention"), sd)


def test_round_trip_through_a_file_is_exact(model, tmp_path):
    path = tmp_path / "var.pth"
    torch.save(varbench_to_official(model), path)
    other = load_official(tiny_model("attention"), path)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


class NotATensor:
    pass


def test_pickle_with_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": NotATensor()}, path)
    with pytest.raises(ValueError, match="refusing"):
        read_state_dict(path)


def test_non_tensor_entries_are_refused():
    with pytest.raises(ValueError, match="flat mapping"):
        read_state_dict({"a": torch.zeros(1), "b": [1, 2]})
