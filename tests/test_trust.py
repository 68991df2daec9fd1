"""What something received from someone else may do: a bundle, a cache or a config file never runs code.

The attacker's bundle below names a text model folder whose tokenizer is custom Python code, turns on
``text.trust_remote_code`` and carries fingerprints recomputed to match; loading it must leave no trace
of that code having run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from synthaug.cli import main
from synthaug.config import load_config
from synthaug.errors import ConfigError, InputError
from synthaug.ldm.bundle import CONFIG_FILE, FINGERPRINT_FILE, compute_fingerprint, load_bundle
from synthaug.mix.cache import SyntheticCache
from synthaug.text.encoder import DEFAULT_MODEL, TextEncoder, _resolve

EVIL_CODE = '''
from pathlib import Path
Path({marker!r}).write_text("the bundle's code ran")
from transformers import BertTokenizerFast


class EvilTokenizer(BertTokenizerFast):
    pass
'''


def evil_text_model(folder: Path, marker: Path) -> Path:
    """The default MiniLM folder plus a custom tokenizer class whose module writes ``marker`` on import."""
    shutil.copytree(_resolve(DEFAULT_MODEL)[1], folder)
    (folder / "tokenization_evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]}
    config["tokenizer_class"] = "EvilTokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def attacker_bundle(bundle: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of ``bundle`` pointing at the evil model, trust_remote_code on, every fingerprint recomputed."""
    marker = tmp_path / "code-ran"
    model = evil_text_model(tmp_path / "evil-model", marker)
    forged = tmp_path / "forged-bundle"
    shutil.copytree(bundle, forged)
    document = json.loads((forged / CONFIG_FILE).read_text())
    document["config"]["text"].update(model=str(model), trust_remote_code=True)
    document["text"]["fingerprint"] = _fingerprint_of(model, document["config"]["text"])
    (forged / CONFIG_FILE).write_text(json.dumps(document))
    (forged / FINGERPRINT_FILE).write_text(compute_fingerprint(forged) + "\n")
    return forged, marker


def _fingerprint_of(model: Path, text: dict) -> str:
    """The text fingerprint synthaug computes for ``model`` with the bundle's text settings (no loading)."""
    from synthaug.text.encoder import TOKENIZER_FILES, _read_model_config, _weight_files, detect_kind, fingerprint_files

    kind = detect_kind(_read_model_config(str(model), model)) if text["kind"] == "auto" else text["kind"]
    files = [model / "config.json", *_weight_files(str(model), model),
             *[model / f for f in TOKENIZER_FILES if (model / f).is_file()]]
    settings = {"kind": kind, "max_tokens": text["max_tokens"], "truncate_side": text["truncate_side"]}
    return fingerprint_files([(p.name, p) for p in files], settings)


def test_the_evil_model_does_run_code_when_its_owner_trusts_it(tmp_path):
    """The attack is real: with trust_remote_code on the user's own command, transformers runs the folder's code."""
    marker = tmp_path / "code-ran"
    model = evil_text_model(tmp_path / "evil-model", marker)
    TextEncoder.from_config(load_config(overrides=[f"text.model={model}", "text.trust_remote_code=true"]).text)
    assert marker.is_file()


def test_a_forged_bundle_runs_no_code(small_bundle, tmp_path, capsys):
    forged, marker = attacker_bundle(small_bundle, tmp_path)
    assert load_bundle(forged).config.text.trust_remote_code is False  # the bundle's setting is not taken
    code = main(["generate", "--bundle", str(forged), "--out", str(tmp_path / "out"), "--n", "1",
                 "--sampler", "ddim", "--steps", "1"])
    err = capsys.readouterr().err
    assert not marker.exists(), "the bundle's code ran"
    # transformers either refuses the custom class or reads tokenizer.json without it; never a traceback
    assert code == 0 or (code == 2 and len(err.strip().splitlines()) == 1), err


def test_a_mismatched_text_model_is_refused_before_its_tokenizer_loads(small_bundle, tmp_path, monkeypatch):
    """The bundle's text fingerprint is compared before anything of the local model folder is loaded."""
    from synthaug.generate import CCELLAGenerator

    model = evil_text_model(tmp_path / "evil-model", tmp_path / "code-ran")
    generator = CCELLAGenerator.from_bundle(small_bundle, trust_remote_code=True)
    generator.bundle.config.text.model = str(model)  # e.g. another model installed under the same path
    loaded = []
    monkeypatch.setattr(TextEncoder, "_load_tokenizer", lambda self: loaded.append(self))
    with pytest.raises(ConfigError, match="differs from the one the bundle was trained with"):
        generator.text_encoder  # noqa: B018 - loads the encoder
    assert not loaded


def test_a_config_file_cannot_turn_on_remote_code(tmp_path):
    file = tmp_path / "shared.yaml"
    file.write_text("text:\n  trust_remote_code: true\n")
    with pytest.raises(ConfigError, match="cannot set text.trust_remote_code"):
        load_config(file)
    # the user's own command line may
    assert load_config(overrides=["text.trust_remote_code=true"]).text.trust_remote_code is True


def test_cache_rows_may_only_name_their_own_volume(small_cache, tmp_path):
    cache_dir = tmp_path / "cache"
    shutil.copytree(small_cache, cache_dir)
    manifest = cache_dir / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    outside = Path("/etc/hostname") if Path("/etc/hostname").is_file() else Path(__file__)
    forged = {**rows[0], "id": "syn-l0-000999", "file": str(outside),
              "sha256": hashlib.sha256(outside.read_bytes()).hexdigest()}
    climbing = {**rows[0], "id": "syn-l0-000998", "file": "volumes/../../x.nii.gz"}
    for bad in (forged, climbing):
        manifest.write_text("".join(json.dumps(r) + "\n" for r in [*rows, bad]))
        cache = SyntheticCache(cache_dir)
        report = cache.verify()
        assert not report.ok and report.bad_lines == [len(rows) + 1]
        assert "not its own" in report.why[len(rows) + 1]
        with pytest.raises(InputError, match="not its own"):
            cache.items()
        with pytest.raises(InputError, match="not its own"):
            cache.info()


def test_cache_json_missing_keys_is_one_error(small_cache, tmp_path):
    cache_dir = tmp_path / "cache"
    shutil.copytree(small_cache, cache_dir)
    meta = json.loads((cache_dir / "cache.json").read_text())
    del meta["generator"]
    (cache_dir / "cache.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="'generator' is missing"):
        SyntheticCache(cache_dir)
