"""The class-signal chain on planted inputs: a link that is the real data scores the ceiling, noise scores chance."""

from __future__ import annotations

import pytest
import torch

from synthaug.errors import InputError
from synthaug.metrics.class_signal import check_judge, class_signal_chain, score_link

SHAPE = (1, 16, 16, 8)


def toy_volumes(labels: list[int], seed: int = 0, contrast: float = 0.6) -> torch.Tensor:
    """Noise volumes in [0, 1]; class 1 carries a bright blob in the centre."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(len(labels), *SHAPE, generator=g) * 0.5
    x[torch.tensor(labels, dtype=torch.bool), :, 6:10, 6:10, 3:5] += contrast
    return x.clamp(0, 1)


def blob_judge(volumes: torch.Tensor) -> torch.Tensor:
    """A 'classifier' that looks where the blob is: P(class 1) from the centre's mean brightness."""
    return torch.sigmoid((volumes[:, :, 6:10, 6:10, 3:5].mean(dim=(1, 2, 3, 4)) - 0.55) * 20)


LABELS = [i % 2 for i in range(40)]


def test_synthetic_volumes_that_are_the_real_ones_score_the_ceiling():
    real = toy_volumes(LABELS)
    chain = class_signal_chain(blob_judge, "blob judge", real, LABELS, generated={"planted real": (real, LABELS)},
                               n_boot=200)
    ceiling, fidelity = chain.links[0], chain.links[1]
    assert ceiling.link == "ceiling" and fidelity.link == "fidelity"
    assert fidelity.auroc == ceiling.auroc and fidelity.balanced_accuracy == ceiling.balanced_accuracy
    assert ceiling.auroc["estimate"] > 0.95
    assert chain.first_lost() is None and "every measured link keeps" in chain.sentence()


def test_noise_scores_chance_and_is_named_as_the_lost_link():
    real = toy_volumes(LABELS)
    noise = torch.rand(len(LABELS), *SHAPE, generator=torch.Generator().manual_seed(1)) * 0.5
    chain = class_signal_chain(blob_judge, "blob judge", real, LABELS, reconstruct=lambda v: v,
                               generated={"planted noise": (noise, LABELS)}, n_boot=200)
    fidelity = next(s for s in chain.links if s.link == "fidelity")
    assert abs(fidelity.auroc["estimate"] - 0.5) < 0.2 and fidelity.auroc["low"] < 0.5 < fidelity.auroc["high"]
    assert fidelity.balanced_accuracy["estimate"] == pytest.approx(0.5, abs=0.15)
    lost = chain.first_lost()
    assert lost is not None and lost.link == "fidelity" and "planted noise" in chain.sentence()
    assert chain.to_dict()["first_lost"] == {"link": "fidelity", "setting": "planted noise"}


def test_a_blurring_autoencoder_is_the_first_lost_link():
    real = toy_volumes(LABELS)
    blur = torch.nn.AvgPool3d(7, stride=1, padding=3)
    chain = class_signal_chain(blob_judge, "blob judge", real, LABELS, reconstruct=lambda v: blur(v) * 0 + 0.3,
                               generated={"planted real": (real, LABELS)}, n_boot=100)
    assert chain.first_lost().link == "autoencoder"  # reported before the later (intact) fidelity link
    assert "| autoencoder |" in chain.markdown() and "| no |" in chain.markdown()


def test_adapter_and_cas_rows_are_scored_against_their_references():
    real = toy_volumes(LABELS)
    reports = [f"PI-RADS {4 if y else 2}" for y in LABELS]
    adapter = (lambda texts: torch.tensor([0.9 if "4" in t else 0.1 for t in texts]), reports, LABELS)
    good = blob_judge(real)
    chain = class_signal_chain(blob_judge, "blob judge", real, LABELS, adapter=adapter,
                               cas={"synthetic N=40": 1 - good, "real N=40": good}, n_boot=100)
    rows = {s.link: s for s in chain.links}
    assert rows["adapter"].auroc["estimate"] == 1.0 and rows["adapter"].scorer == "the adapter's class head"
    assert rows["cas-real"].auroc["estimate"] > 0.95 and rows["cas"].auroc["estimate"] < 0.05
    assert chain.first_lost().link == "cas"


def test_a_judge_that_is_the_filter_is_refused():
    check_judge("a" * 64, "b" * 64)
    check_judge("a" * 64, None)
    with pytest.raises(InputError, match="judge's weights are the filter's"):
        check_judge("a" * 64, "a" * 64)


def test_bad_scores_are_one_error():
    with pytest.raises(InputError, match="3 probabilities"):
        score_link("fidelity", "x", "judge", [0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="finite"):
        score_link("fidelity", "x", "judge", [0, 1], [0.1, float("nan")])
