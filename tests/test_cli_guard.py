"""The command's one guard: every user mistake is one line and exit code 2, and leaves nothing behind.

The cases are derived from the parser itself, so a new command or option is covered without a new test.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from synthaug.cli import build_parser, main
from synthaug.cli_types import out_file, out_folder
from synthaug.config import SynthaugConfig, load_config
from synthaug.errors import ConfigError, InputError
from synthaug.ldm.bundle import CASES_FILE, CONFIG_FILE, FINGERPRINT_FILE, compute_fingerprint, load_bundle


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every leaf command ("generate", "cache verify", ...) and its parser."""
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}".strip())
                return
        out[prefix] = parser

    walk(build_parser(), "")
    return out


# The smallest argument list that gets each command past argparse (files need not exist: the option
# under test is refused first, or the command refuses the missing input before writing anything).
REQUIRED = {
    "phantom": ["--out", "{out}"], "picai": ["--images", "x", "--labels", "y", "--out", "{out}/m.jsonl"],
    "train": ["--data", "m.jsonl", "--out", "{out}"],
    "generate": ["--bundle", "b", "--out", "{out}"], "pregenerate": ["--bundle", "b", "--out", "{out}", "--n", "2"],
    "evaluate": ["--real", "m.jsonl", "--synthetic", "c", "--out", "{out}"],
    "sweep": ["--data", "m.jsonl", "--synthetic", "c", "--out", "{out}"], "demo": ["--out", "{out}"],
}


def options_of_type(kinds: tuple) -> list[tuple[str, str]]:
    """(command, option) for every option whose type is one of ``kinds`` (by the type's name)."""
    found = []
    for name, parser in commands().items():
        for action in parser._actions:
            kind = getattr(action.type, "__name__", "")
            if kind in kinds and action.option_strings:
                found.append((name, action.option_strings[0]))
    return found


def run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)  # usage errors return their exit code too
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command,option", options_of_type(("out_folder", "out_file")))
def test_an_output_path_of_the_wrong_kind_is_one_line_and_changes_nothing(command, option, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine\n")
    a_folder = tmp_path / "a_folder"
    a_folder.mkdir()
    parser = commands()[command]
    wrong = a_folder if any(a.type is out_file for a in parser._actions if option in a.option_strings) else a_file
    args = [part.format(out=tmp_path / "new") for part in REQUIRED[command.split()[0]]]
    if option in args:
        args[args.index(option) + 1] = str(wrong)
    else:
        args += [option, str(wrong)]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = run(command.split() + args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(wrong) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert a_file.read_text() == "mine\n"


def test_every_command_with_an_output_folder_is_covered():
    covered = {c.split()[0] for c, _ in options_of_type(("out_folder", "out_file"))}
    assert covered == set(REQUIRED)


@pytest.mark.parametrize("command,option", options_of_type(("number", "whole number")))
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "x"])
def test_a_bad_number_is_one_line(command, option, value, tmp_path, capsys):
    args = [part.format(out=tmp_path / "new") for part in REQUIRED.get(command.split()[0], [])]
    code, err = run([*command.split(), *args, f"{option}={value}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and option in err, err
    assert not (tmp_path / "new").exists()


def test_numbers_that_mean_nothing_are_refused(capsys):
    for args in (["sweep", "--data", "m", "--synthetic", "c", "--out", "o", "--search", "tpe", "--trials", "0"],
                 ["evaluate", "--real", "m", "--synthetic", "c", "--out", "o", "--max-synthetic", "0"],
                 ["generate", "--bundle", "b", "--out", "o", "--batch-size", "0"]):
        code, err = run(args, capsys)
        assert code == 2 and "must be >= 1" in err, err


@pytest.mark.parametrize("command,option", options_of_type(("device", "device_or_auto")))
@pytest.mark.parametrize("value", ["gpu", "cuda:99"])
def test_a_device_that_is_not_there_is_one_line(command, option, value, tmp_path, capsys):
    args = [part.format(out=tmp_path / "new") for part in REQUIRED.get(command.split()[0], [])]
    code, err = run([*command.split(), *args, option, value], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--device" in err, err


def _float_settings(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of every float setting (alone or in a tuple) in the config models."""
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += _float_settings(annotation, f"{prefix}{name}.")
        elif float in (annotation, *typing.get_args(annotation)):
            names.append(f"{prefix}{name}")
    return names


@pytest.mark.parametrize("setting", _float_settings(SynthaugConfig))
def test_no_float_setting_takes_nan_or_inf(setting):
    value = load_config().model_dump()
    for part in setting.split("."):
        value = value[part]
    for bad in (".nan", ".inf"):
        text = f"[{', '.join([bad] * len(value))}]" if isinstance(value, (tuple, list)) else bad
        with pytest.raises(ConfigError, match="finite number"):
            load_config(overrides=[f"{setting}={text}"])


def test_the_library_checks_sampling_options_like_the_config(small_bundle):
    from synthaug.generate import CCELLAGenerator

    for options, where in (({"guidance": math.nan}, "sample.guidance"), ({"batch_size": 0}, "sample.batch_size"),
                           ({"eta": math.inf}, "sample.eta"), ({"class_source": "x"}, "sample.class_source")):
        with pytest.raises(ConfigError, match=where):
            CCELLAGenerator.from_bundle(small_bundle, **options)


# ------------------------------------------------------------------ damaged bundles


def _damaged(bundle: Path, tmp_path: Path, damage) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    damage(copy)
    if FINGERPRINT_FILE not in getattr(damage, "keeps", ()):
        (copy / FINGERPRINT_FILE).write_text(compute_fingerprint(copy) + "\n")  # a consistent, damaged bundle
    return copy


def _without_key(path: Path) -> None:
    document = json.loads((path / CONFIG_FILE).read_text())
    del document["text"]["dim"]
    (path / CONFIG_FILE).write_text(json.dumps(document))


def _binary_fingerprint(path: Path) -> None:
    (path / FINGERPRINT_FILE).write_bytes(b"\xff\xfe\x00binary")


_binary_fingerprint.keeps = (FINGERPRINT_FILE,)


@pytest.mark.parametrize("damage,words", [
    (_without_key, "has no 'text.dim'"),
    (_binary_fingerprint, "is not a sha256 fingerprint"),
    (lambda p: (p / CASES_FILE).write_text("not json\n"), "line 1 is not a"),
    (lambda p: (p / CASES_FILE).write_bytes(b"\xff\xfe"), "is not UTF-8"),
    (lambda p: (p / CONFIG_FILE).write_text("[1, 2]"), "is not a JSON object"),
])
def test_a_damaged_bundle_is_one_error_naming_the_file(small_bundle, tmp_path, damage, words, capsys):
    copy = _damaged(small_bundle, tmp_path, damage)
    with pytest.raises(InputError, match=words):
        load_bundle(copy)
    code, err = run(["generate", "--bundle", str(copy), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(copy) in err, err
    assert not (tmp_path / "out").exists()


def test_a_pickle_as_autoencoder_is_one_line(small_phantom, tmp_path, capsys):
    import torch

    torch.save({"w": torch.zeros(2)}, tmp_path / "vae.safetensors")
    code, err = run(["train", "--data", str(small_phantom), "--out", str(tmp_path / "b"),
                     "--autoencoder", str(tmp_path / "vae.safetensors")], capsys)
    assert code == 2 and "not safetensors" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae.safetensors"]  # no b/, no b.work/


# ------------------------------------------------------------------ nothing left behind


def test_a_refused_train_leaves_no_work_folder(small_phantom, tmp_path, capsys):
    code, err = run(["train", "--data", str(small_phantom), "--out", str(tmp_path / "b"), "--resume"], capsys)
    assert code == 2 and "nothing to resume" in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_refused_sweep_leaves_no_output_folder(small_phantom, tmp_path, capsys):
    out = tmp_path / "deep" / "sweep"  # the sweep makes its folder, then finds the synthetic source missing
    code, err = run(["sweep", "--data", str(small_phantom), "--synthetic", str(tmp_path / "missing"),
                     "--out", str(out), "--model", "tiny-cnn"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_refused_command_keeps_a_folder_that_was_there(small_phantom, tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _ = run(["sweep", "--data", str(small_phantom), "--synthetic", str(tmp_path / "missing"),
                   "--out", str(out), "--model", "tiny-cnn"], capsys)
    assert code == 2 and (out / "notes.txt").read_text() == "mine"


def test_output_types_accept_new_and_existing_paths_of_the_right_kind(tmp_path):
    assert out_folder(str(tmp_path)) == tmp_path
    assert out_folder(str(tmp_path / "a" / "b")) == tmp_path / "a" / "b"
    (tmp_path / "m.jsonl").write_text("")
    assert out_file(str(tmp_path / "m.jsonl")) == tmp_path / "m.jsonl"
    with pytest.raises(argparse.ArgumentTypeError, match="is a file"):
        out_folder(str(tmp_path / "m.jsonl" / "x"))
