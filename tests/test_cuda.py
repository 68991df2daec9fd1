"""The CUDA code paths: training with fp16 loss scaling, fp16 generation, CPU portability of a GPU bundle.

Skipped where torch sees no GPU (CI has none). On a GPU machine: ``pytest tests/test_cuda.py``. The text
model is a random 2-layer BERT saved here, so the tests need neither the default model package nor the
phantom's torchio (a GPU image may lack both).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import save_nifti, write_jsonl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

WORDS = "report prostate lesion zone peripheral transition pi-rads no focal 1 2 3 4 5 . ,".split()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random BERT (hidden 32, 2 layers) with a WordPiece vocabulary of the report words."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("bert")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cuda_bundle(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generator trained on the GPU (fp16 VAE with loss scaling, fp32 LDM) on 12 cases with a bright
    blob in class 1."""
    from synthaug.ldm.train import train_generator
    from tests.helpers import small_config

    root = tmp_path_factory.mktemp("cuda_data")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        volume = rng.random((32, 32, 16)) * 50
        if i % 2:
            volume[12:20, 12:20, 6:10] += 150
        image = save_nifti(root / f"case_{i}.nii.gz", volume, spacing=(3.0, 3.0, 6.0))
        rows.append({"case_id": f"case_{i}", "image": image.name, "label": i % 2, "pirads": 4 if i % 2 else 2,
                     "report": f"prostate . pi-rads {4 if i % 2 else 2} .", "spacing": [3.0, 3.0, 6.0],
                     "split": "train" if i < 8 else "val" if i < 10 else "test"})
    manifest = write_jsonl(root / "manifest.jsonl", rows)
    out = root / "bundle"
    train_generator(manifest, out, small_config(f"text.model={tiny_bert}", "train.steps=6", "autoencoder.steps=4"),
                    device="cuda")
    return out


def _pair(bundle: Path, device: str, precision: str):
    from synthaug.generate import CCELLAGenerator

    generator = CCELLAGenerator.from_bundle(bundle, device=device, sampler="ddim", steps=4, eta=0.0,
                                            precision=precision, batch_size=4)
    return generator.generate([0, 1, 0, 1], seeds=[0, 1, 2, 3])


def test_a_bundle_trained_on_the_gpu_generates_on_the_gpu_and_on_a_cpu(cuda_bundle: Path):
    gpu, cpu = _pair(cuda_bundle, "cuda", "fp32"), _pair(cuda_bundle, "cpu", "fp32")
    assert torch.isfinite(gpu.volumes).all() and gpu.volumes.shape == cpu.volumes.shape
    # The same seeds draw the same noise on either device (a CPU generator); TF32 convolutions on the GPU
    # move a voxel by at most a few thousandths of the intensity range.
    scale = float(cpu.volumes.abs().max())
    assert float((gpu.volumes - cpu.volumes).abs().mean()) < 0.005 * scale


def test_fp16_generation_on_the_gpu_agrees_with_fp32_within_the_stated_tolerance(cuda_bundle: Path):
    fp32, fp16 = _pair(cuda_bundle, "cuda", "fp32"), _pair(cuda_bundle, "cuda", "auto")
    assert fp16.provenance[0]["precision"] == "fp16"  # auto = fp16 on CUDA
    scale = float(fp32.volumes.abs().max())
    diff = (fp16.volumes - fp32.volumes).abs() / scale
    assert 0 < float(diff.mean()) < 0.01 and float(diff.max()) < 0.1  # the README's tolerance for bf16 on CPU


def test_the_autoencoder_trains_in_fp16_with_loss_scaling_on_the_gpu(tmp_path: Path):
    from synthaug.ldm.autoencoder import _AutoencoderRun, build_autoencoder
    from tests.helpers import small_config

    cfg = small_config("autoencoder.steps=3").autoencoder
    model = build_autoencoder(cfg, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    volumes = torch.rand((4, 1, 32, 32, 16))
    run = _AutoencoderRun(model, len(volumes), cfg, device="cuda", precision="auto", seed=0)
    assert run.dtype == torch.float16 and run.scaler is not None
    losses = [run.train_step(run.next_batch(volumes, augment=True), step)["loss"] for step in range(3)]
    assert all(np.isfinite(v) for v in losses)
    moved = sum(not torch.equal(b, p.detach().cpu()) for b, p in zip(before, model.parameters()))
    assert moved > 0


def test_a_classifier_fits_on_the_gpu():
    from classifiers import FitConfig, build_model, fit

    g = torch.Generator().manual_seed(0)
    x = torch.rand((16, 1, 16, 16, 8), generator=g)
    y = torch.arange(16) % 2
    x[y == 1, :, 4:12, 4:12, 2:6] += 1.0
    items = [{"image": x[i], "label": int(y[i])} for i in range(16)]
    model = build_model("tiny-cnn", 1, 2, seed=0)
    result = fit(model, items, items, FitConfig(epochs=3, batch_size=8, lr=1e-3, patience=None, device="cuda"),
                 progress=False)  # amp "auto": bf16 autocast on this GPU
    assert next(model.parameters()).device.type == "cuda" and len(result.history) == 3
    assert all(np.isfinite(h["train_loss"]) for h in result.history)
