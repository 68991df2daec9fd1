"""Shorter versions of a report that keep its PI-RADS statements: what the adapter's class head also learns from.

    variants = report_variants(report, 4, np.random.default_rng(0))  # [] if the report names no PI-RADS score

A class head trained on full reports alone learns whichever cue separates them first. On the phantom that is
the T2W and DWI wording, so a report in another style (a short one a user types, a template) is misread even
when it states its PI-RADS category. Each variant keeps every sentence that names a PI-RADS score and each
other sentence with a probability drawn per variant from U(0, 1): from the PI-RADS sentences alone to nearly
the whole report. The label stays true to a variant wherever the class follows the stated PI-RADS (the
``pirads3``/``pirads4`` label rules); a report that names no score gets no variants.
"""

from __future__ import annotations

import re

import numpy as np

from synthaug.data.reports import PIRADS_SCORE

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")  # after a full stop and space, or at a blank line


def sentences(report: str) -> list[str]:
    """The report's sentences, stripped; a section heading stays with the sentence it opens."""
    return [s.strip() for s in _SENTENCE_END.split(report) if s.strip()]


def report_variants(report: str, k: int, rng: np.random.Generator) -> list[str]:
    """``k`` sentence subsets of ``report``, each with every PI-RADS sentence, in the report's order.

    A variant is never the empty string; it may equal the report. ``[]`` where no sentence names a score.
    """
    parts = sentences(report)
    anchor = [PIRADS_SCORE.search(s) is not None for s in parts]
    if not any(anchor):
        return []
    out = []
    for _ in range(k):
        keep_other = rng.random()
        keep = [a or rng.random() < keep_other for a in anchor]
        out.append(" ".join(s for s, kept in zip(parts, keep) if kept))
    return out
