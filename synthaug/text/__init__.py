"""Report text -> frozen language-model token features, and their on-disk cache (DESIGN.md section 2).

    encoder = TextEncoder.from_config(cfg.text)          # offline; weights load on first use
    store = EmbeddingStore("cache/text", encoder)
    store.precompute(reports)                            # once; later runs never re-encode
    batch = store.get(["PI-RADS 4 lesion ...", ""])      # features (B, T, D), mask (B, T), isnull (B,)
"""

from synthaug.text.encoder import DEFAULT_MODEL, TextEncoder, detect_kind
from synthaug.text.store import EmbeddingStore, TextBatch, collate_text, normalise_report, text_key

__all__ = [
    "DEFAULT_MODEL",
    "EmbeddingStore",
    "TextBatch",
    "TextEncoder",
    "collate_text",
    "detect_kind",
    "normalise_report",
    "text_key",
]
