"""classifiers.models: the registry builds every model; weights come only from a local file."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from classifiers import ClassifierError, build_model, list_models, models, register_model


def test_list_models_names_the_registry():
    assert {"efficientnet-b0", "resnet10", "resnet18", "densenet121", "tiny-cnn", "resnet18-2.5d"} <= set(list_models())


@pytest.mark.parametrize("name", ["efficientnet-b0", "resnet10", "resnet18", "densenet121", "tiny-cnn",
                                  "resnet18-2.5d"])
def test_every_model_runs_one_forward_pass(name):
    model = build_model(name, in_channels=1, num_classes=2, spatial_dims=3, seed=0).eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 1, 64, 64, 32))  # (B, C, X, Y, Z)
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_seed_fixes_the_initial_weights_without_touching_the_global_generator():
    state = torch.random.get_rng_state()
    a, b = build_model("tiny-cnn", 2, 1, seed=3), build_model("tiny-cnn", 2, 1, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ClassifierError, match="unknown model 'resnet9'.*efficientnet-b0.*tiny-cnn"):
        build_model("resnet9", 1, 2)


def test_pretrained_weights_load_from_a_local_safetensors_or_torch_file(tmp_path):
    source = build_model("tiny-cnn", 1, 2, seed=1)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.pt")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pt"):
        loaded = build_model("tiny-cnn", 1, 2, seed=2, pretrained=path)
        assert all(torch.equal(p, q) for p, q in zip(loaded.state_dict().values(), source.state_dict().values()))


def test_weights_of_another_head_load_only_when_not_strict(tmp_path):
    save_file(build_model("tiny-cnn", 1, 2, seed=1).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(ClassifierError, match="of another shape.*pretrained_strict=False"):
        build_model("tiny-cnn", 1, 1, pretrained=tmp_path / "w.safetensors")
    model = build_model("tiny-cnn", 1, 1, pretrained=tmp_path / "w.safetensors", pretrained_strict=False)
    assert model.head[1].out_features == 1


def test_a_bad_pretrained_file_is_a_clear_error(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not weights")
    with pytest.raises(ClassifierError, match="cannot read weights"):
        build_model("tiny-cnn", 1, 2, pretrained=tmp_path / "junk.safetensors")
    with pytest.raises(ClassifierError, match="not found"):
        build_model("tiny-cnn", 1, 2, pretrained=tmp_path / "missing.pt")
    save_file(build_model("resnet10", 1, 2).state_dict(), tmp_path / "resnet.safetensors")
    with pytest.raises(ClassifierError, match="do not fit this model"):
        build_model("tiny-cnn", 1, 2, pretrained=tmp_path / "resnet.safetensors")


def test_register_your_own_model(monkeypatch):
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))  # keep this test's model to this test

    @register_model("test-linear")
    def linear(in_channels, num_classes, spatial_dims, **kwargs):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    assert "test-linear" in list_models()
    assert build_model("test-linear", 1, 2)(torch.rand(2, 1, 4, 4, 4)).shape == (2, 2)
    with pytest.raises(ClassifierError, match="already registered"):
        register_model("test-linear")(linear)
