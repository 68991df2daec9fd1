"""The one exception ``classifiers`` raises on purpose (a ``ValueError``, so callers may catch either)."""

from __future__ import annotations


class ClassifierError(ValueError):
    """Bad input to ``classifiers``: an unknown model name, an unusable weights file, a wrong-shaped item."""
