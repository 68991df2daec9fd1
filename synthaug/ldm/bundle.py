"""A trained generator as a folder: ``config.json`` + ``*.safetensors`` + ``train_cases.jsonl`` + ``fingerprint``.

    save_bundle("runs/b", cfg, autoencoder, ldm, ldm_ema, info, train_cases)
    bundle = load_bundle("runs/b")            # verified against its fingerprint; models on the device
    bundle.ldm_ema or bundle.ldm, bundle.scale_factor, bundle.info["text"]["fingerprint"]

Never pickle: weights are safetensors, metadata JSON. The fingerprint is a sha256 over every file of
the bundle, so a cache or a sweep can tell which generator made its data and refuse a stranger's. It
is an integrity check, not a signature: anyone can recompute it, so nothing in a bundle is trusted to
run code (``load_bundle`` turns ``text.trust_remote_code`` off unless its caller turns it on).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synthaug.config import SynthaugConfig
from synthaug.data.io import file_sha256, load_weights, make_temp_dir, save_weights
from synthaug.errors import ConfigError, InputError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
AUTOENCODER_FILE = "autoencoder.safetensors"
LDM_FILE = "ldm.safetensors"
LDM_EMA_FILE = "ldm_ema.safetensors"
CASES_FILE = "train_cases.jsonl"
FINGERPRINT_FILE = "fingerprint"
REQUIRED_FILES = (CONFIG_FILE, AUTOENCODER_FILE, LDM_FILE, CASES_FILE)
# Keys of config.json that loading and generation read, as "section.key" paths.
REQUIRED_KEYS = ("config", "scale_factor", "latent_shape", "text.fingerprint", "text.dim", "text.max_tokens",
                 "data.intensity.p0_median", "data.intensity.p99_5_median")


@dataclass
class Bundle:
    """A loaded bundle: config, metadata, models (eval mode, frozen) and the training cases' reports."""

    path: Path
    config: SynthaugConfig
    info: dict[str, Any]  # scale_factor, text encoder id/fingerprint/dim, latent shape, data stats, versions
    autoencoder: nn.Module
    ldm: nn.Module
    ldm_ema: nn.Module | None
    train_cases: list[dict[str, Any]] = field(default_factory=list)  # case_id, label, report
    fingerprint: str = ""

    @property
    def scale_factor(self) -> float:
        return float(self.info["scale_factor"])

    @property
    def train_case_ids(self) -> set[str]:
        return {c["case_id"] for c in self.train_cases}


def compute_fingerprint(folder: str | os.PathLike[str]) -> str:
    """sha256 over the names and contents of every bundle file except ``fingerprint`` itself."""
    folder = Path(folder)
    h = hashlib.sha256()
    for name in sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != FINGERPRINT_FILE):
        h.update(f"{name}\0{file_sha256(folder / name)}\n".encode())
    return h.hexdigest()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_bundle(
    path: str | os.PathLike[str],
    config: SynthaugConfig,
    autoencoder: nn.Module,
    ldm: nn.Module,
    ldm_ema: nn.Module | None,
    info: dict[str, Any],
    train_cases: list[dict[str, Any]],
    overwrite: bool = False,
) -> str:
    """Write a bundle folder atomically (built beside ``path``, renamed at the end); return its fingerprint."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise InputError("bundle folder exists and is not empty", where=str(path),
                         fix="choose another --out or pass --overwrite")
    tmp = make_temp_dir(path)
    try:
        document = {"format_version": FORMAT_VERSION, "config": config.to_dict(), **info}
        (tmp / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_weights(_state(autoencoder), tmp / AUTOENCODER_FILE)
        save_weights(_state(ldm), tmp / LDM_FILE)
        if ldm_ema is not None:
            save_weights(_state(ldm_ema), tmp / LDM_EMA_FILE)
        (tmp / CASES_FILE).write_text(
            "".join(json.dumps(c, ensure_ascii=False, sort_keys=True) + "\n" for c in train_cases), encoding="utf-8")
        fingerprint = compute_fingerprint(tmp)
        (tmp / FINGERPRINT_FILE).write_text(fingerprint + "\n", encoding="utf-8")
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return fingerprint


def read_bundle_info(path: str | os.PathLike[str], verify: bool = True) -> tuple[dict[str, Any], str]:
    """``config.json`` of a bundle and its fingerprint, checked against the files unless ``verify`` is False."""
    path = Path(path)
    if not path.is_dir():
        raise InputError("bundle folder not found", where=str(path), fix="pass the folder `synthaug train` wrote")
    missing = [name for name in (*REQUIRED_FILES, FINGERPRINT_FILE) if not (path / name).is_file()]
    if missing:
        raise InputError(f"bundle is missing {', '.join(missing)}", where=str(path),
                         fix="copy the whole bundle folder, or train it again")
    try:
        stated = (path / FINGERPRINT_FILE).read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        stated = ""
    if len(stated) != 64 or any(c not in "0123456789abcdef" for c in stated):
        raise InputError("is not a sha256 fingerprint (64 hex digits)", where=str(path / FINGERPRINT_FILE),
                         fix="copy the whole bundle folder again, or train it again")
    if verify and compute_fingerprint(path) != stated:
        raise InputError("bundle files do not match its fingerprint (changed or corrupt)", where=str(path),
                         fix="restore the original files or train the bundle again")
    try:
        document = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError("is not valid JSON", where=str(path / CONFIG_FILE), fix="train the bundle again") from exc
    if not isinstance(document, dict):
        raise InputError("is not a JSON object", where=str(path / CONFIG_FILE), fix="train the bundle again")
    if document.get("format_version") != FORMAT_VERSION:
        raise InputError(f"bundle format {document.get('format_version')!r} is not {FORMAT_VERSION}",
                         where=str(path), fix="use the synthaug version that wrote it, or train it again")
    for key in REQUIRED_KEYS:
        node: Any = document
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            raise InputError(f"has no {key!r}", where=str(path / CONFIG_FILE),
                             fix="use the synthaug version that wrote it, or train the bundle again")
    return document, stated


def read_train_cases(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The bundle's ``train_cases.jsonl``: one ``{case_id, label, report}`` object per line."""
    file = Path(path) / CASES_FILE
    cases = []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError("is not UTF-8 text", where=str(file), fix="train the bundle again") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
            ok = (isinstance(case, dict) and isinstance(case.get("case_id"), str) and case.get("label") in (0, 1)
                  and isinstance(case.get("report"), str))
        except json.JSONDecodeError:
            ok = False
        if not ok:
            raise InputError(f"line {number} is not a {{case_id, label, report}} JSON object", where=str(file),
                             fix="train the bundle again")
        cases.append(case)
    return cases


def config_of(document: dict[str, Any]) -> dict[str, Any]:
    """The ``config`` of a bundle's ``config.json``; settings added since it was written take the values that
    reproduce how it was trained (bundles before the class-slot settings: no teacher forcing, no null class;
    before report variants: none)."""
    config = dict(document["config"])
    if isinstance(config.get("loss"), dict):
        config["loss"] = {"p_label": 0.0, "p_null": 0.0, "report_variants": 0, **config["loss"]}
    if isinstance(config.get("sample"), dict):  # and they sampled without class guidance
        config["sample"] = {"class_guidance": 1.0, **config["sample"]}
    return config


def load_state(model: nn.Module, file: str | os.PathLike[str]) -> nn.Module:
    """Load safetensors weights into ``model`` strictly; a wrong architecture is an ``InputError``."""
    try:
        model.load_state_dict(load_weights(file), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "shape or key mismatch"
        raise InputError(f"weights do not fit the configured model ({first})", where=str(file),
                         fix="use the config the weights were trained with") from exc
    return model


def load_bundle(path: str | os.PathLike[str], device: str | torch.device = "cpu", verify: bool = True,
                trust_remote_code: bool = False) -> Bundle:
    """Rebuild the autoencoder and LDM of a bundle from its config and weights, verified, frozen, in eval mode.

    Whatever the bundle's config says, ``text.trust_remote_code`` is ``trust_remote_code``: only the
    caller (the user's own command line) can let the text model's own code run, never the bundle.
    """
    from synthaug.ldm.autoencoder import build_autoencoder
    from synthaug.ldm.model import CCELLALDM

    path = Path(path)
    document, fingerprint = read_bundle_info(path, verify=verify)
    try:
        config = SynthaugConfig.model_validate(config_of(document))
    except Exception as exc:  # pydantic ValidationError or a missing key
        raise ConfigError(f"bundle config is invalid ({type(exc).__name__})", where=str(path / CONFIG_FILE),
                          fix="use the synthaug version that wrote it") from exc
    config.text.trust_remote_code = bool(trust_remote_code)
    info = {k: v for k, v in document.items() if k not in ("config", "format_version")}
    try:
        text_dim = int(info["text"]["dim"])
    except (TypeError, ValueError):
        raise InputError(f"text.dim {info['text']['dim']!r} is not a whole number", where=str(path / CONFIG_FILE),
                         fix="train the bundle again") from None
    cases = read_train_cases(path)

    def built(module: nn.Module, file: str) -> nn.Module:
        module = load_state(module, path / file).to(device).eval()
        module.requires_grad_(False)
        return module

    autoencoder = built(build_autoencoder(config.autoencoder, in_channels=len(config.data.modalities)), AUTOENCODER_FILE)
    ldm = built(CCELLALDM.from_config(config, text_dim), LDM_FILE)
    ema = built(CCELLALDM.from_config(config, text_dim), LDM_EMA_FILE) if (path / LDM_EMA_FILE).is_file() else None
    return Bundle(path=path, config=config, info=info, autoencoder=autoencoder, ldm=ldm, ldm_ema=ema,
                  train_cases=cases, fingerprint=fingerprint)
