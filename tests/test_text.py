"""Text encoder (frozen language model -> token features) and the text-embedding store."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from synthaug.config import TextConfig
from synthaug.errors import ConfigError
from synthaug.text import EmbeddingStore, TextBatch, TextEncoder, collate_text, detect_kind, text_key

REPORTS = [
    "Lesion 1: 12 mm area in the left peripheral zone, PI-RADS 4.",
    "No focal lesion suspicious for clinically significant cancer. PI-RADS 2.",
    "",
    "Transition zone BPH nodule, circumscribed and encapsulated.",
]


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_network(monkeypatch)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    """The default encoder, loaded once for the module (with networking disabled)."""
    with pytest.MonkeyPatch.context() as mp:
        _no_network(mp)
        encoder = TextEncoder.from_config(TextConfig())
        encoder.load()
    return encoder


def _save_minilm_tokenizer(encoder: TextEncoder, folder: Path) -> None:
    encoder.tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory, minilm: TextEncoder) -> Path:
    """A random 2-layer T5 (d_model 32) saved as a full encoder-decoder, with the MiniLM tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    config = T5Config(vocab_size=minilm.tokenizer.vocab_size, d_model=32, d_ff=64, d_kv=16, num_heads=2,
                      num_layers=2, num_decoder_layers=2, pad_token_id=0, eos_token_id=102, decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    _save_minilm_tokenizer(minilm, folder)
    return folder


def _word_tokenizer(folder: Path) -> None:
    """A word-level tokenizer with an eos token, no pad token and no special tokens added (like GPT-2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "the a prostate lesion zone left right peripheral transition pi-rads 1 2 3 4 5 . , no".split()
    vocab = {"[UNK]": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>").save_pretrained(folder)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny_decoder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer causal LM (hidden 32) saved with its LM head, plus a word-level tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    if request.param == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                           bos_token_id=1, eos_token_id=1))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                             max_position_embeddings=64, bos_token_id=1, eos_token_id=1,
                                             pad_token_id=None))
    model.save_pretrained(folder)
    _word_tokenizer(folder)
    return folder


# ------------------------------------------------------------------ encoder


def test_default_model_loads_offline(no_network: None) -> None:
    with pytest.raises(OSError, match="network"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    encoder = TextEncoder.from_config(TextConfig())
    assert (encoder.model_id, encoder.kind, encoder.dim) == ("all-MiniLM-L6-v2", "encoder", 384)
    assert not encoder.loaded  # weights load lazily, on the first encode
    features, mask = encoder.encode(REPORTS)
    assert encoder.loaded
    counts = [len(ids) for ids in encoder.tokenizer(REPORTS)["input_ids"]]
    assert features.shape == (4, max(counts), 384) and features.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == counts
    assert torch.all(features[~mask] == 0) and torch.all(features[mask].abs().sum(-1) > 0)
    assert all(not p.requires_grad for p in encoder.load().parameters()) and not encoder.load().training
    alias = TextEncoder.from_config(TextConfig(model="minilm"))
    assert alias.fingerprint == encoder.fingerprint and alias.model_id == "all-MiniLM-L6-v2"


def test_loading_hides_transformers_progress_bars_and_then_restores_them(no_network, monkeypatch) -> None:
    import transformers
    from transformers.utils import logging as hf_logging

    while_loading = []
    from_pretrained = transformers.AutoModel.from_pretrained

    def spy(*args, **kwargs):
        while_loading.append(hf_logging.is_progress_bar_enabled())
        return from_pretrained(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    before = hf_logging.is_progress_bar_enabled()
    try:
        for enabled in (True, False):
            (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
            TextEncoder.from_config(TextConfig()).load()
            assert hf_logging.is_progress_bar_enabled() is enabled  # the caller's setting, as it was
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
    assert while_loading == [False, False]


def test_batching_and_padding_do_not_change_features(minilm: TextEncoder) -> None:
    small = TextEncoder.from_config(TextConfig(batch_size=3))
    features, mask = small.encode(REPORTS + REPORTS[:2])
    for i, text in enumerate(REPORTS + REPORTS[:2]):
        alone, alone_mask = minilm.encode([text])
        n = int(alone_mask.sum())
        assert int(mask[i].sum()) == n
        torch.testing.assert_close(features[i, :n], alone[0, :n], atol=1e-5, rtol=1e-4)


def test_truncation_keeps_the_end_of_long_reports(minilm: TextEncoder) -> None:
    head = "the prostate is enlarged " * 40
    tail = "impression overall pirads five highly suspicious lesion left apex"
    n_tail = len(minilm.tokenizer(tail, add_special_tokens=False)["input_ids"])
    cfg = TextConfig(max_tokens=n_tail + 2)  # [CLS] + the tail + [SEP]
    left = TextEncoder.from_config(cfg)
    ids = left.tokenize([head + tail])["input_ids"][0]
    assert ids.tolist() == left.tokenize([tail])["input_ids"][0].tolist()
    long_features, long_mask = left.encode([head + tail])
    tail_features, _ = left.encode([tail])
    assert long_mask.shape[1] == cfg.max_tokens
    torch.testing.assert_close(long_features, tail_features, atol=1e-5, rtol=1e-4)

    right = TextEncoder.from_config(cfg.model_copy(update={"truncate_side": "right"}))
    right_ids = right.tokenize([head + tail])["input_ids"][0]
    assert right_ids.tolist() == right.tokenize([head])["input_ids"][0][:n_tail + 1].tolist() + [ids[-1].item()]
    assert right.fingerprint != left.fingerprint


def test_empty_report_is_the_empty_string_embedding(minilm: TextEncoder) -> None:
    features, mask = minilm.encode(["", "   \n", "PI-RADS 4."])
    assert mask[0].sum() == 2  # [CLS] [SEP]
    torch.testing.assert_close(features[0], features[1])
    empty, _ = minilm.encode([""])
    torch.testing.assert_close(features[0, :2], empty[0])


def test_t5_encoder_only(tiny_t5: Path) -> None:
    assert detect_kind(json.loads((tiny_t5 / "config.json").read_text())) == "t5"
    encoder = TextEncoder.from_config(TextConfig(model=str(tiny_t5), max_tokens=16))
    assert (encoder.kind, encoder.dim) == ("t5", 32)
    features, mask = encoder.encode(REPORTS + ["word " * 50])
    assert type(encoder.load()).__name__ == "T5EncoderModel"  # the decoder weights are never loaded
    assert features.shape == (5, 16, 32) and mask[-1].all()
    assert mask.sum(1).tolist()[:4] == [min(len(i), 16) for i in encoder.tokenizer(REPORTS)["input_ids"]]


def test_decoder_llm(tiny_decoder: Path) -> None:
    cfg = TextConfig(model=str(tiny_decoder), max_tokens=8, batch_size=2)
    encoder = TextEncoder.from_config(cfg)
    assert (encoder.kind, encoder.dim) == ("decoder", 32)
    assert encoder.tokenizer.pad_token == encoder.tokenizer.eos_token == "<eos>"
    texts = ["the lesion left peripheral zone pi-rads 4 .", "", "no lesion", "a " * 20 + "right"]
    features, mask = encoder.encode(texts)
    assert features.shape == (4, 8, 32) and mask.sum(1).tolist() == [8, 1, 2, 8]  # "" -> one eos token
    assert encoder.tokenize(["a " * 20 + "right"])["input_ids"][0, -1] == encoder.tokenizer.convert_tokens_to_ids(
        "right")
    alone, _ = encoder.encode(["no lesion"])  # right padding: a causal model's real tokens are unchanged
    torch.testing.assert_close(features[2, :2], alone[0], atol=1e-5, rtol=1e-4)
    assert all(not p.requires_grad for p in encoder.load().parameters())


def test_kind_detection_from_config() -> None:
    assert detect_kind({"model_type": "bert", "architectures": ["BertModel"]}) == "encoder"
    assert detect_kind({"model_type": "t5", "is_encoder_decoder": True}) == "t5"
    assert detect_kind({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}) == "decoder"
    assert detect_kind({"model_type": "newthing", "architectures": ["NewThingForCausalLM"]}) == "decoder"


def test_fingerprint_tracks_model_and_settings(minilm: TextEncoder, tiny_t5: Path, tmp_path: Path) -> None:
    base = TextEncoder.from_config(TextConfig(model=str(tiny_t5)))
    assert len(base.fingerprint) == 64
    assert TextEncoder.from_config(TextConfig(model=str(tiny_t5))).fingerprint == base.fingerprint
    copy = tmp_path / "elsewhere" / "t5-copy"
    shutil.copytree(tiny_t5, copy)
    assert TextEncoder.from_config(TextConfig(model=str(copy))).fingerprint == base.fingerprint  # not path-based
    assert TextEncoder.from_config(TextConfig(model=str(copy), max_tokens=64)).fingerprint != base.fingerprint
    assert TextEncoder.from_config(TextConfig(model=str(copy), batch_size=7)).fingerprint == base.fingerprint
    weights = load_file(copy / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    assert TextEncoder.from_config(TextConfig(model=str(copy))).fingerprint != base.fingerprint
    assert minilm.fingerprint != base.fingerprint


def test_large_weight_files_are_sampled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthaug.text import encoder as encoder_module

    monkeypatch.setattr(encoder_module, "FULL_HASH_LIMIT", 1000)
    blob = tmp_path / "w.safetensors"
    blob.write_bytes(bytes(range(256)) * 40000)  # ~10 MiB
    first = encoder_module._file_digest(blob)
    assert first.startswith("sampled:")
    data = bytearray(blob.read_bytes())
    data[-10] ^= 1  # a change in the last MiB
    blob.write_bytes(bytes(data))
    assert encoder_module._file_digest(blob) != first


# ------------------------------------------------------------------ errors


def test_missing_path_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(ConfigError, match="not found") as info:
        TextEncoder.from_config(TextConfig(model=str(missing)))
    assert str(missing) in str(info.value) and "\n" not in str(info.value) and info.value.exit_code == 2


def test_folder_without_config_or_tokenizer_is_refused(tmp_path: Path, tiny_t5: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no config.json") as info:
        TextEncoder.from_config(TextConfig(model=str(empty)))
    assert str(empty) in str(info.value)
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    shutil.copy(tiny_t5 / "config.json", no_tok)
    shutil.copy(tiny_t5 / "model.safetensors", no_tok)
    with pytest.raises(ConfigError, match="no tokenizer") as info:
        TextEncoder.from_config(TextConfig(model=str(no_tok)))
    assert str(no_tok) in str(info.value)
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_t5, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no weight files"):
        TextEncoder.from_config(TextConfig(model=str(no_weights)))


def test_vision_model_is_refused(tmp_path: Path) -> None:
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTForImageClassification"],
                                                 "image_size": 224, "hidden_size": 768}))
    with pytest.raises(ConfigError, match="vision model") as info:
        TextEncoder.from_config(TextConfig(model=str(vit)))
    assert str(vit) in str(info.value)


def test_uncached_hub_id_says_downloads_are_disabled(no_network: None) -> None:
    with pytest.raises(ConfigError, match="downloads are disabled") as info:
        TextEncoder.from_config(TextConfig(model="synthaug-test/no-such-model-xyz"))
    assert "synthaug-test/no-such-model-xyz" in str(info.value)


def test_max_tokens_beyond_the_model_is_refused(minilm: TextEncoder) -> None:
    with pytest.raises(ConfigError, match="512"):
        TextEncoder.from_config(TextConfig(max_tokens=1024))


# ------------------------------------------------------------------ store


class CountingEncoder:
    """Wraps a TextEncoder and counts how many texts reach ``encode``."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.inner = encoder
        self.encoded: list[str] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.encoded.extend(texts)
        return self.inner.encode(texts)


def test_store_precompute_dedups_and_get_reads_from_disk(minilm: TextEncoder, tmp_path: Path) -> None:
    counting = CountingEncoder(minilm)
    store = EmbeddingStore(tmp_path / "text", counting)  # type: ignore[arg-type]
    seen: list[tuple[int, int]] = []
    texts = REPORTS + REPORTS + ["  "]  # duplicates, and whitespace == ""
    assert store.precompute(texts, progress=lambda done, total: seen.append((done, total))) == 4
    assert sorted(counting.encoded) == sorted(REPORTS) and seen[-1] == (4, 4)
    assert store.precompute(texts) == 0 and len(counting.encoded) == 4

    batch = store.get(REPORTS[::-1])
    assert isinstance(batch, TextBatch) and len(counting.encoded) == 4  # no re-encoding
    expected, mask = minilm.encode(REPORTS[::-1])
    assert batch.features.dtype == torch.float32 and torch.equal(batch.mask, mask)
    torch.testing.assert_close(batch.features, expected, atol=2e-3, rtol=2e-3)  # float16 on disk
    assert batch.isnull.tolist() == [False, True, False, False]
    assert store.get(["\t"]).isnull.tolist() == [True]
    assert len(counting.encoded) == 4

    padded = store.get(REPORTS[:2], pad_to=40)
    assert padded.features.shape == (2, 40, 384) and padded.mask.sum(1).tolist() == mask[[3, 2]].sum(1).tolist()


def test_store_reopened_never_loads_the_model(minilm: TextEncoder, tmp_path: Path) -> None:
    EmbeddingStore(tmp_path, minilm).precompute(REPORTS)
    fresh = TextEncoder.from_config(TextConfig())  # same model and settings, weights not loaded
    store = EmbeddingStore(tmp_path, fresh)
    batch = store.get(REPORTS)
    assert not fresh.loaded and batch.features.shape[0] == 4 and len(store) == 4 and REPORTS[0] in store
    store.get(REPORTS + ["a report never seen before"])  # a miss encodes and stores it
    assert fresh.loaded and len(store) == 5


def test_store_is_namespaced_by_fingerprint(minilm: TextEncoder, tmp_path: Path) -> None:
    first = EmbeddingStore(tmp_path, minilm)
    first.precompute(REPORTS)
    other = TextEncoder.from_config(TextConfig(max_tokens=64))
    counting = CountingEncoder(other)
    second = EmbeddingStore(tmp_path, counting)  # type: ignore[arg-type]
    assert second.folder != first.folder and second.folder.name == other.fingerprint
    assert second.precompute(REPORTS) == 4 and len(counting.encoded) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([minilm.fingerprint, other.fingerprint])


def test_store_files_are_safetensors_and_atomic(minilm: TextEncoder, tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, minilm, shard_size=2)
    (store.folder).mkdir(parents=True)
    (store.folder / ".shard-abc.1234.tmp.safetensors").write_bytes(b"\x00half-written")  # a killed writer
    store.precompute(REPORTS)
    files = sorted(p.name for p in store.folder.iterdir() if not p.name.startswith("."))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert files == sorted(shards + ["encoder.json"]) and len(shards) == 2  # shard_size=2 -> 2 shards
    meta = json.loads((store.folder / "encoder.json").read_text())
    assert meta["fingerprint"] == minilm.fingerprint and meta["dim"] == 384
    keys = set()
    for shard in shards:
        with safe_open(str(store.folder / shard), framework="pt") as f:
            assert f.metadata()["fingerprint"] == minilm.fingerprint
            for key in f.keys():
                x = f.get_tensor(key)
                assert x.dtype == torch.float16 and x.ndim == 2 and x.shape[1] == 384  # unpadded (T_i, D)
                keys.add(key)
    assert keys == {text_key(t) for t in REPORTS}
    assert EmbeddingStore(tmp_path, minilm).get(REPORTS).features.shape[0] == 4


def test_store_float32_option(minilm: TextEncoder, tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, minilm, dtype=torch.float32)
    batch = store.get(REPORTS[:1])
    expected, _ = minilm.encode(REPORTS[:1])
    torch.testing.assert_close(batch.features, expected, atol=1e-6, rtol=1e-6)


def test_collate_text_pads_and_masks() -> None:
    items = [torch.ones(3, 4), torch.full((1, 4), 2.0, dtype=torch.float16)]
    features, mask = collate_text(items)
    assert features.shape == (2, 3, 4) and features.dtype == torch.float32
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert features[1, 0, 0] == 2.0 and features[1, 1:].abs().sum() == 0
    assert collate_text(items, pad_to=5)[0].shape == (2, 5, 4)
    with pytest.raises(ValueError, match="pad_to"):
        collate_text(items, pad_to=2)
