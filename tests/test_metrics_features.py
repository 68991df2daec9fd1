"""Feature extractors: published weight layouts load, anything else is one clear InputError."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from synthaug.errors import InputError
from synthaug.metrics import KerasResNet50, MedicalNet3D, RadImageNet2D, SeededResNet2D, SeededResNet3D, read_state_dict
from synthaug.metrics.features import _medicalnet_resnet, _torchvision_resnet


def volumes(n: int = 2, shape=(16, 16, 8)) -> torch.Tensor:
    return torch.rand(n, 1, *shape, generator=torch.Generator().manual_seed(0))


def test_medicalnet_resnet50_loads_the_published_layout(tmp_path):
    model = _medicalnet_resnet(50, dilated=True)
    published = {f"module.{k}": v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    published["module.conv_seg.0.weight"] = torch.zeros(32, 2048, 3, 3, 3)  # the segmentation head, ignored
    path = tmp_path / "resnet_50_23dataset.pth"
    torch.save({"state_dict": published}, path)

    extractor = MedicalNet3D(path)
    x = volumes()
    feats = extractor.extract(x)
    assert feats.shape == (2, 2048) and extractor.comparable
    assert len(extractor.weights_sha256) == 64 and extractor.name == "medicalnet-resnet50-3d"
    with torch.no_grad():  # the same network with per-volume z-score: the weights really were loaded
        z = (x - x.mean((1, 2, 3, 4), keepdim=True)) / x.std((1, 2, 3, 4), keepdim=True)
        assert torch.allclose(feats, model.eval()(z), atol=1e-4)


def test_medicalnet_accepts_safetensors(tmp_path):
    model = _medicalnet_resnet(10, dilated=True)
    save_file(model.state_dict(), str(tmp_path / "resnet_10.safetensors"))
    assert MedicalNet3D(tmp_path / "resnet_10.safetensors", depth=10).extract(volumes()).shape == (2, 512)


def test_medicalnet_refuses_weights_of_another_network(tmp_path):
    torch.save({"state_dict": _medicalnet_resnet(10, dilated=True).state_dict()}, tmp_path / "r10.pth")
    with pytest.raises(InputError, match="do not match MedicalNet ResNet-50") as err:
        MedicalNet3D(tmp_path / "r10.pth")
    assert "missing keys" in err.value.message and "wrong shapes" in err.value.message


@pytest.mark.parametrize("content, message", [
    (nn.Linear(2, 2), "needs code"),                        # a whole pickled model
    ([torch.zeros(2)], "not a state dict"),                 # tensors, but no names
    ({"state_dict": {"conv1.weight": "text"}}, "not a state dict"),
])
def test_weights_that_are_not_a_state_dict_are_refused(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    torch.save(content, path)
    for load in (read_state_dict, MedicalNet3D, RadImageNet2D):
        with pytest.raises(InputError, match=message):
            load(path)


def test_missing_and_corrupt_weight_files_are_refused(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_state_dict(tmp_path / "absent.pth")
    (tmp_path / "junk.bin").write_bytes(b"this is not a weights file")
    with pytest.raises(InputError, match="neither a safetensors file"):
        read_state_dict(tmp_path / "junk.bin")


def test_radimagenet_loads_the_community_port_layout(tmp_path):
    model = KerasResNet50()
    assert "conv1.bias" in model.state_dict() and "layer1.0.downsample.0.bias" in model.state_dict()
    torch.save(model.state_dict(), tmp_path / "RadImageNet-ResNet50_notop.pth")
    extractor = RadImageNet2D(tmp_path / "RadImageNet-ResNet50_notop.pth")
    planes = extractor.extract_planes(volumes())
    assert set(planes) == {"x", "y", "z"} and all(f.shape == (2, 2048) for f in planes.values())
    assert extractor.extract(volumes()).shape == (2, 3 * 2048)
    assert extractor.describe()["kind"] == "2.5d"


def test_radimagenet_accepts_a_torchvision_resnet50_and_refuses_a_resnet18(tmp_path):
    torch.save(_torchvision_resnet(50).state_dict(), tmp_path / "tv50.pth")
    assert RadImageNet2D(tmp_path / "tv50.pth").extract(volumes(1)).shape == (1, 3 * 2048)
    torch.save(_torchvision_resnet(18).state_dict(), tmp_path / "tv18.pth")
    with pytest.raises(InputError, match="do not match torchvision ResNet-50"):
        RadImageNet2D(tmp_path / "tv18.pth")


def test_slices_are_bgr_mean_subtracted():
    extractor = SeededResNet2D(seed=0)
    x = extractor.preprocess(torch.ones(1, 1, 4, 4))
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([1 - 0.406, 1 - 0.456, 1 - 0.485]))


def test_seeded_extractors_are_deterministic_and_say_they_are_not_comparable():
    a, b = SeededResNet3D(seed=0), SeededResNet3D(seed=0)
    assert a.weights_sha256 == b.weights_sha256 != SeededResNet3D(seed=1).weights_sha256
    assert torch.equal(a.extract(volumes()), b.extract(volumes()))
    for extractor in (a, SeededResNet2D(seed=0)):
        assert not extractor.comparable and "NOT comparable" in extractor.name


def test_extract_refuses_wrongly_shaped_input():
    with pytest.raises(InputError, match=r"\(N, 1, X, Y, Z\)"):
        SeededResNet3D().extract(torch.zeros(2, 3, 8, 8, 8))


def test_slice_features_average_every_slice_of_each_plane_or_a_spaced_subset():
    extractor = SeededResNet2D(seed=0)
    x = volumes(1)
    planes = extractor.extract_planes(x)
    v = (x - x.min()) / (x.max() - x.min())
    with torch.no_grad():  # z plane: the 8 axial slices, each (1, 1, 16, 16), features averaged
        z = torch.stack([extractor.model(extractor.preprocess(v[:, :, :, :, i])) for i in range(8)]).mean(0)
        x_sub = torch.stack([extractor.model(extractor.preprocess(v[:, :, i])) for i in (0, 15)]).mean(0)
    assert torch.allclose(planes["z"], z, atol=1e-5)
    few = SeededResNet2D(seed=0, max_slices=2)
    assert torch.allclose(few.extract_planes(x)["x"], x_sub, atol=1e-5)
    assert few.describe()["max_slices_per_axis"] == 2
