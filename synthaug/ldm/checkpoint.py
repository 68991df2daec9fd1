"""Training checkpoints without pickle: every tensor in one safetensors file, the rest in JSON.

    save_checkpoint(folder, step, {"model": sd, "ema": sd, "optimizer": flat}, meta, run_key)
    step, tensors, meta = load_checkpoint(folder, run_key)   # refuses truncated or foreign checkpoints

``latest.json`` names the newest file and its sha256 and is written last (atomically), so a process
killed mid-save leaves the previous checkpoint in force.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from synthaug.data.io import atomic_path, atomic_write_text, file_sha256, load_weights, save_weights
from synthaug.errors import InputError

LATEST = "latest.json"
KEEP = 2  # checkpoint files kept on disk


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` -> (tensors keyed ``"<param>.<name>"``, JSON-able rest)."""
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``flatten_optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(
    folder: str | os.PathLike[str],
    step: int,
    groups: dict[str, dict[str, torch.Tensor]],
    meta: dict[str, Any],
    run_key: str,
) -> Path:
    """Write ``groups`` (name -> state dict of tensors) and ``meta`` for ``step``; keep the newest ``KEEP``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"step-{step:08d}.safetensors"
    flat = {f"{group}/{key}": t.detach().cpu().contiguous() for group, sd in groups.items() for key, t in sd.items()}
    with atomic_path(file) as tmp:
        save_weights(flat, tmp)
    latest = {"step": step, "file": file.name, "sha256": file_sha256(file), "run_key": run_key, "meta": meta}
    atomic_write_text(folder / LATEST, json.dumps(latest, indent=1) + "\n")
    for old in sorted(folder.glob("step-*.safetensors"))[:-KEEP]:
        old.unlink()
    return file


def clear_checkpoints(folder: str | os.PathLike[str]) -> None:
    """Remove every checkpoint in ``folder`` (``latest.json`` first, so none is half-visible)."""
    folder = Path(folder)
    (folder / LATEST).unlink(missing_ok=True)
    for file in folder.glob("step-*.safetensors"):
        file.unlink()


def has_checkpoint(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / LATEST).is_file()


def load_checkpoint(
    folder: str | os.PathLike[str], run_key: str
) -> tuple[int, dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """The newest checkpoint's step, tensor groups and meta; ``InputError`` if missing, truncated or foreign."""
    folder = Path(folder)
    fix = "start again without --resume (pass --overwrite to discard it)"
    if not has_checkpoint(folder):
        raise InputError("no checkpoint to resume from", where=str(folder), fix="train without --resume first")
    try:
        latest = json.loads((folder / LATEST).read_text(encoding="utf-8"))
        file = folder / latest["file"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
        raise InputError(f"{LATEST} is unreadable", where=str(folder), fix=fix) from exc
    if latest.get("run_key") != run_key:
        raise InputError("checkpoint belongs to another run (different data, config or text encoder)",
                         where=str(folder), fix=fix)
    if not file.is_file() or file_sha256(file) != latest.get("sha256"):
        raise InputError(f"checkpoint {file.name} is missing, truncated or changed", where=str(folder), fix=fix)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_weights(file).items():
        group, name = key.split("/", 1)
        groups.setdefault(group, {})[name] = tensor
    return int(latest["step"]), groups, latest.get("meta", {})
