"""Structured prostate-MRI findings -> free-text radiology report in PI-RADS v2.1 language.

Used by the phantom (which knows every drawn lesion) and by the PI-CAI adapter (which knows only
the marksheet fields, so most lesion attributes are ``None`` and are left out of the text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Zone = Literal["PZ", "TZ", "CZ", "AFS"]
Side = Literal["right", "left", "midline"]
Level = Literal["base", "mid", "apex"]
BenignKind = Literal["bph_nodule", "prostatitis", "cyst"]

ZONE_NAMES = {
    "PZ": "peripheral zone",
    "TZ": "transition zone",
    "CZ": "central zone",
    "AFS": "anterior fibromuscular stroma",
}
LEVEL_NAMES = {"base": "base", "mid": "mid-gland", "apex": "apex"}
LEVEL_ADJ = {"base": "basal", "mid": "mid-gland", "apex": "apical"}

LIKELIHOOD = {
    1: "clinically significant cancer is highly unlikely to be present",
    2: "clinically significant cancer is unlikely to be present",
    3: "the presence of clinically significant cancer is equivocal",
    4: "clinically significant cancer is likely to be present",
    5: "clinically significant cancer is highly likely to be present",
}


def lesion_pirads(zone: str | None, t2_score: int, dwi_score: int, dce_positive: bool | None = None) -> int:
    """PI-RADS v2.1 assessment category of one lesion from its T2W and DWI scores.

    Peripheral zone: DWI is dominant; DWI 3 with positive DCE upgrades to 4.
    Transition zone (and CZ/AFS here): T2W is dominant; T2W 2 with DWI >= 4 -> 3, T2W 3 with DWI 5 -> 4.
    """
    for name, score in (("t2_score", t2_score), ("dwi_score", dwi_score)):
        if not 1 <= int(score) <= 5:
            raise ValueError(f"{name} must be 1-5, got {score}")
    if zone == "PZ":
        return 4 if dwi_score == 3 and dce_positive else int(dwi_score)
    if t2_score == 2 and dwi_score >= 4:
        return 3
    if t2_score == 3 and dwi_score == 5:
        return 4
    return int(t2_score)


@dataclass(frozen=True)
class Lesion:
    """One reported lesion. Unknown attributes (e.g. from PI-CAI's marksheet) stay ``None``."""

    pirads: int
    zone: Zone | None = None
    side: Side | None = None
    level: Level | None = None
    sector: str | None = None  # e.g. "posterolateral", "posteromedial", "anterior"
    size_mm: float | None = None
    t2_score: int | None = None
    dwi_score: int | None = None
    epe: bool = False  # suspected extraprostatic extension


@dataclass(frozen=True)
class BenignFinding:
    """A benign finding that can mimic cancer (not a PI-RADS >= 3 lesion)."""

    kind: BenignKind
    zone: Zone | None = None
    side: Side | None = None
    level: Level | None = None
    size_mm: float | None = None


@dataclass(frozen=True)
class Findings:
    """Everything a report states about one examination."""

    age: int | None = None
    psa: float | None = None  # ng/mL
    prostate_volume_ml: float | None = None
    lesions: tuple[Lesion, ...] = ()
    benign: tuple[BenignFinding, ...] = ()
    overall_pirads: int | None = None  # None: the maximum lesion category (or unknown if no lesions)
    field_strength_t: float | None = 3.0
    sequences: tuple[str, ...] = ("T2W", "DWI", "ADC")
    extra: dict[str, str] = field(default_factory=dict)  # e.g. {"seminal vesicles": "unremarkable"}

    @property
    def overall(self) -> int | None:
        if self.overall_pirads is not None:
            return self.overall_pirads
        return max((les.pirads for les in self.lesions), default=None)

    @property
    def psa_density(self) -> float | None:
        if self.psa is None or not self.prostate_volume_ml:
            return None
        return self.psa / self.prostate_volume_ml


# ---------------------------------------------------------------- phrasing


class _Phraser:
    """Picks among equivalent phrasings with one seeded generator (or always the first)."""

    def __init__(self, rng: np.random.Generator | None, varied: bool) -> None:
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.varied = varied

    def pick(self, *options: str) -> str:
        if not self.varied or len(options) == 1:
            return options[0]
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return self.varied and bool(self.rng.random() < p)


def _location(les: Lesion | BenignFinding, sector: str | None = None) -> str:
    words = []
    if les.side is not None:
        words.append(les.side)
    if les.level is not None:
        words.append(LEVEL_ADJ[les.level])
    if sector:
        words.append(sector)
    words.append(ZONE_NAMES[les.zone] if les.zone else "prostate")
    return " ".join(words)


def _size(mm: float | None) -> str:
    return f"{mm:.0f} mm" if mm is not None else ""


_T2_PZ = {
    1: "uniformly hyperintense signal",
    2: "a linear, wedge-shaped or diffuse area of mild hypointensity with indistinct margins",
    3: "heterogeneous, non-circumscribed moderate hypointensity",
    4: "a circumscribed, homogeneous, moderately hypointense focus",
    5: "a circumscribed, homogeneous, moderately hypointense mass",
}
_T2_TZ = {
    1: "normal appearance or a round, completely encapsulated nodule",
    2: "a mostly encapsulated nodule",
    3: "heterogeneous signal intensity with obscured margins",
    4: "a lenticular, non-circumscribed, homogeneous, moderately hypointense area (erased-charcoal sign)",
    5: "a lenticular, non-circumscribed, homogeneous, moderately hypointense mass",
}
_DWI = {
    1: "no abnormality on ADC or high b-value images",
    2: "linear or wedge-shaped hypointensity on ADC without focal restriction",
    3: "focal mild to moderate hypointensity on ADC, isointense to mildly hyperintense on high b-value",
    4: "focal marked hypointensity on ADC and marked hyperintensity on high b-value images",
    5: "focal marked restricted diffusion, markedly hyperintense on high b-value images",
}


def _lesion_paragraph(i: int, les: Lesion, ph: _Phraser, numbered: bool) -> str:
    head = ph.pick(f"Lesion {i}:", f"Lesion #{i}:", f"Lesion {i} (index):" if i == 1 else f"Lesion {i}:")
    if not numbered:
        head = ph.pick("There is", "Noted is", "Identified is")
    size = _size(les.size_mm)
    where = _location(les, les.sector)
    if les.zone is None and les.size_mm is None and les.t2_score is None and les.dwi_score is None:
        return f"{head if numbered else 'Lesion:'} PI-RADS {les.pirads}."  # only the category is known
    parts: list[str] = []
    if les.t2_score is not None:
        t2_text = (_T2_PZ if les.zone == "PZ" else _T2_TZ)[les.t2_score]
        opener = f"{size} " if size else ""
        parts.append(ph.pick(
            f"{opener}lesion in the {where} demonstrating {t2_text} on T2W (T2W score {les.t2_score})",
            f"{opener}area in the {where} with {t2_text} on T2-weighted imaging (T2 score {les.t2_score})",
        ))
    else:
        parts.append(f"{size + ' ' if size else ''}lesion in the {where}")
    if les.dwi_score is not None:
        parts.append(ph.pick(
            f"{_DWI[les.dwi_score]} (DWI score {les.dwi_score})",
            f"DWI shows {_DWI[les.dwi_score]} (DWI score {les.dwi_score})",
        ))
    text = f"{head} " + "; ".join(parts) + "."
    if les.epe:
        text += " " + ph.pick("Suspected extraprostatic extension.", "Broad capsular contact with bulge, suspicious for extraprostatic extension.")
    elif les.zone is not None and les.size_mm is not None:
        text += " " + ph.pick("No extraprostatic extension.", "The capsule is intact.", "No evidence of extraprostatic extension.")
    text += " " + ph.pick(f"PI-RADS {les.pirads}.", f"PI-RADS category {les.pirads}.", f"Assessment: PI-RADS {les.pirads}.")
    return text[0].upper() + text[1:] if not numbered else text


def _benign_sentence(b: BenignFinding, ph: _Phraser) -> str:
    where = _location(b)
    if b.kind == "bph_nodule":
        return ph.pick(
            f"Encapsulated, heterogeneous nodule in the {where}{' measuring ' + _size(b.size_mm) if b.size_mm else ''}, typical of benign prostatic hyperplasia.",
            f"Benign-appearing BPH nodule in the {where}, circumscribed and encapsulated.",
        )
    if b.kind == "prostatitis":
        return ph.pick(
            f"Band-like / wedge-shaped mild T2 hypointensity in the {where} without focal restricted diffusion, in keeping with prostatitis or fibrosis.",
            f"Wedge-shaped area of mild hypointensity in the {where}, likely post-inflammatory change; no focal diffusion restriction.",
        )
    return f"Small simple cyst in the {where}{' (' + _size(b.size_mm) + ')' if b.size_mm else ''}."


def _indication(f: Findings, ph: _Phraser) -> str | None:
    facts = []
    if f.age is not None:
        facts.append(f"{f.age}-year-old man")
    if f.psa is not None:
        facts.append(ph.pick(f"PSA {f.psa:.1f} ng/mL", f"elevated PSA of {f.psa:.1f} ng/mL", f"PSA {f.psa:.2f} ng/ml"))
    if not facts:
        return None
    title = ph.pick("CLINICAL INDICATION:", "Clinical history:", "Indication:")
    reason = ph.pick("Suspected prostate cancer.", "Evaluate for clinically significant prostate cancer.", "Raised PSA; assess for csPCa.")
    return f"{title} {', '.join(facts)}. {reason}"


def _technique(f: Findings, ph: _Phraser) -> str | None:
    if f.field_strength_t is None:
        return None
    title = ph.pick("TECHNIQUE:", "Technique:", "Protocol:")
    seqs = ", ".join(f.sequences)
    return f"{title} {ph.pick('Multiparametric', 'Biparametric')} MRI of the prostate at {f.field_strength_t:g} T: {seqs}."


def _gland(f: Findings, ph: _Phraser) -> str | None:
    facts = []
    if f.prostate_volume_ml is not None:
        facts.append(ph.pick(f"Prostate volume {f.prostate_volume_ml:.0f} mL", f"The gland measures approximately {f.prostate_volume_ml:.0f} cc"))
    if f.psa_density is not None:
        facts.append(ph.pick(f"PSA density {f.psa_density:.2f} ng/mL/mL", f"PSAD {f.psa_density:.2f}"))
    return "; ".join(facts) + "." if facts else None


def _impression(f: Findings, ph: _Phraser) -> str:
    title = ph.pick("IMPRESSION:", "Impression:", "CONCLUSION:")
    overall = f.overall
    suspicious = [les for les in f.lesions if les.pirads >= 3]
    if overall is None:
        body = ph.pick(
            "No lesion with PI-RADS 3 or higher.",
            "No focal lesion suspicious for clinically significant prostate cancer.",
        ) if not suspicious else "Suspicious lesion(s) as above."
        return f"{title} {body}"
    if overall <= 2:
        neg = ph.pick(
            "No focal lesion suspicious for clinically significant prostate cancer (csPCa).",
            "No suspicious focal lesion identified.",
            "There is no MRI evidence of clinically significant prostate cancer.",
        )
        return f"{title} {neg} {ph.pick(f'Overall PI-RADS {overall}.', f'PI-RADS {overall}: {LIKELIHOOD[overall]}.')}"
    count = len(suspicious)
    lead = ph.pick(
        f"Overall PI-RADS {overall}: {LIKELIHOOD[overall]}.",
        f"PI-RADS {overall} ({LIKELIHOOD[overall]}).",
        f"Overall assessment PI-RADS {overall}.",
    )
    if count:
        index = max(suspicious, key=lambda les: (les.pirads, les.size_mm or 0))
        where = _location(index)
        lead += " " + ph.pick(
            f"{count} suspicious lesion{'s' if count > 1 else ''}; index lesion in the {where}.",
            f"Index lesion in the {where}" + (f" ({_size(index.size_mm)})." if index.size_mm else "."),
        )
    return f"{title} {lead}"


def render_report(findings: Findings, rng: np.random.Generator | None = None, varied: bool = True) -> str:
    """Write a PI-RADS v2.1-structured report; ``rng`` picks phrasings and section order if ``varied``."""
    ph = _Phraser(rng, varied)
    header = [s for s in (_indication(findings, ph), _technique(findings, ph)) if s]
    if ph.chance(0.2) and len(header) == 2:
        header = header[::-1]

    body: list[str] = []
    gland = _gland(findings, ph)
    lesions = list(findings.lesions)
    if ph.chance(0.5):
        lesions.sort(key=lambda les: -les.pirads)
    numbered = len(lesions) > 1 or not ph.chance(0.5)
    lesion_text = [_lesion_paragraph(i, les, ph, numbered) for i, les in enumerate(lesions, start=1)]
    benign_text = [_benign_sentence(b, ph) for b in findings.benign]
    if not lesions:
        lesion_text = [ph.pick(
            "No focal lesion suspicious for clinically significant cancer in the peripheral or transition zone.",
            "No suspicious focal lesion is seen.",
            "No focal abnormality of the peripheral zone or transition zone is identified.",
        )] if findings.overall is None or findings.overall <= 2 else []
    other = [f"{k.capitalize()}: {v}." for k, v in findings.extra.items()]
    other.append(ph.pick(
        "Seminal vesicles unremarkable. No pelvic lymphadenopathy. No suspicious bone lesion.",
        "No lymphadenopathy. Seminal vesicles and visualised bones are unremarkable.",
    ))
    findings_parts = ([gland] if gland else []) + lesion_text + benign_text
    if gland and ph.chance(0.3):
        findings_parts = findings_parts[1:] + [gland]
    title = ph.pick("FINDINGS:", "Findings:", "REPORT:")
    body.append(title + " " + " ".join(findings_parts + other))
    return "\n\n".join(header + body + [_impression(findings, ph)])


_IMPRESSION = re.compile(r"(?:IMPRESSION|Impression|CONCLUSION):(.*)\Z", re.S)
PIRADS_SCORE = re.compile(r"PI-RADS(?: category)? ([1-5])")


def parse_overall_pirads(report: str) -> int | None:
    """The overall PI-RADS stated in a report's impression (``None`` if it states none)."""
    match = _IMPRESSION.search(report)
    scores = [int(s) for s in PIRADS_SCORE.findall(match.group(1) if match else report)]
    return max(scores) if scores else None


# ---------------------------------------------------------------- templated reports for generation

_POSITIVE_FROM = {"pirads3": 3, "pirads4": 4, "cspca": 4}


def template_findings(label: int, rng: np.random.Generator, label_rule: str = "pirads3") -> Findings:
    """Plausible findings for a requested class: one index lesion at or above the rule's PI-RADS threshold
    for label 1; PI-RADS 1-2 (at most a benign mimic) for label 0. ``cspca`` is approximated by PI-RADS 4-5.
    """
    volume = float(np.round(rng.uniform(20, 70), 1))
    psa = float(np.round(rng.uniform(2.0, 15.0), 1))
    age = int(rng.integers(50, 80))
    side = str(rng.choice(["right", "left"]))
    level = str(rng.choice(["base", "mid", "apex"]))
    if label == 1:
        pirads = int(rng.integers(_POSITIVE_FROM[label_rule], 6))
        zone = str(rng.choice(["PZ", "TZ"], p=[0.7, 0.3]))
        size = float(np.round(rng.uniform(15, 25) if pirads == 5 else rng.uniform(6, 14), 0))
        lesion = Lesion(pirads=pirads, zone=zone, side=side, level=level, size_mm=size)  # type: ignore[arg-type]
        return Findings(age=age, psa=psa, prostate_volume_ml=volume, lesions=(lesion,))
    benign = (BenignFinding(kind="bph_nodule", zone="TZ", side=side, level=level),) if rng.random() < 0.5 else ()
    return Findings(age=age, psa=psa, prostate_volume_ml=volume, benign=benign,  # type: ignore[arg-type]
                    overall_pirads=2 if benign else int(rng.integers(1, 3)))


def template_report(label: int, rng: np.random.Generator, label_rule: str = "pirads3") -> str:
    """A report for a requested class, written from ``template_findings`` in the usual PI-RADS language."""
    return render_report(template_findings(label, rng, label_rule), rng, varied=True)
