"""Shorter report variants that keep the PI-RADS sentences, and the class head that also learns from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthaug.data.phantom import make_phantom_case
from synthaug.data.report_variants import report_variants, sentences
from synthaug.ldm.train import ReportVariants, variant_texts
from synthaug.text.store import TextBatch
from tests.helpers import small_config
from tests.test_class_slot import DIM, TOKENS, toy_trainer

REPORT = ("Clinical history: 69-year-old man, PSA 5.7 ng/mL. Suspected prostate cancer.\n\n"
          "Findings: 9 mm lesion in the right peripheral zone (T2W score 3; DWI score 4). PI-RADS category 4. "
          "Seminal vesicles unremarkable.\n\nImpression: PI-RADS 4 (clinically significant cancer is likely).")


def test_sentences_split_at_full_stops_and_blank_lines_but_not_inside_numbers():
    assert sentences(REPORT) == [
        "Clinical history: 69-year-old man, PSA 5.7 ng/mL.", "Suspected prostate cancer.",
        "Findings: 9 mm lesion in the right peripheral zone (T2W score 3; DWI score 4).", "PI-RADS category 4.",
        "Seminal vesicles unremarkable.", "Impression: PI-RADS 4 (clinically significant cancer is likely)."]


def test_every_variant_keeps_the_pirads_sentences_and_a_subset_of_the_others_in_order():
    parts = sentences(REPORT)
    variants = report_variants(REPORT, 200, np.random.default_rng(0))
    assert len(variants) == 200
    for v in variants:
        kept = sentences(v)
        assert {"PI-RADS category 4.", parts[-1]} <= set(kept)
        assert kept == [s for s in parts if s in kept]  # a subsequence of the report's sentences
    lengths = {len(sentences(v)) for v in variants}
    assert min(lengths) == 2 and max(lengths) == len(parts)  # from the PI-RADS sentences alone to the whole report
    assert report_variants(REPORT, 5, np.random.default_rng(0)) == variants[:5]  # seeded


@pytest.mark.parametrize("report", ["", "Findings: no focal lesion. Seminal vesicles unremarkable."])
def test_a_report_that_names_no_pirads_score_has_no_variants(report):
    assert report_variants(report, 4, np.random.default_rng(0)) == []


def test_phantom_reports_keep_their_overall_pirads_in_every_variant():
    from synthaug.data.reports import parse_overall_pirads

    cfg, rng = small_config(), np.random.default_rng(1)
    for seed in range(12):
        case = make_phantom_case(seed, cfg.data, cfg.phantom, positive=bool(seed % 2), empty_report=False)
        for v in report_variants(case.report, 3, rng):
            assert parse_overall_pirads(v) == parse_overall_pirads(case.report), (seed, v)


def test_variant_index_points_each_case_at_its_own_variants():
    reports = [REPORT, "No PI-RADS score here.", "Impression: PI-RADS 1."]
    texts, index = variant_texts(reports, 3, seed=0)
    assert index.shape == (3, 3) and index[1].tolist() == [-1, -1, -1]
    assert all("PI-RADS 4" in texts[i] for i in index[0].tolist())
    assert [texts[i] for i in index[2].tolist()] == ["Impression: PI-RADS 1."] * 3
    again, other = variant_texts(reports, 3, seed=0), variant_texts(reports, 3, seed=1)
    assert again[0] == texts and torch.equal(again[1], index) and other[0] != texts  # drawn from the seed


def toy_reports(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Made-up token features: a full report has a loud style token and a quiet score token, both naming the
    class; its variant has the score token alone. Returns (labels, full reports, variants)."""
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(n) % 2
    style, score = torch.randn(2, DIM, generator=g), torch.randn(2, DIM, generator=g)
    full = 0.05 * torch.randn(n, TOKENS, DIM, generator=g)
    full[:, 0] += 4.0 * style[labels]
    full[:, 1] += 0.3 * score[labels]
    short = torch.zeros(n, TOKENS, DIM)
    short[:, 1] = 0.3 * score[labels]
    return labels, full, short


def variant_reading(tmp_path, with_variants: bool) -> torch.Tensor:
    """P(true class) the adapter reads from the score-only variants after training on the full reports."""
    n = 16
    labels, full, short = toy_reports(n)
    trainer = toy_trainer(tmp_path, "loss.focal_weight=1", "loss.text_dropout=0", "loss.report_variants=1",
                          "train.steps=120", "train.lr=0.003", "train.batch_size=4", labels=labels, text=full)
    mask = torch.zeros(n, TOKENS, dtype=torch.bool)
    mask[:, 1] = True
    if with_variants:
        trainer.variants = ReportVariants(TextBatch(short, mask, torch.zeros(n, dtype=torch.bool)),
                                          torch.arange(n)[:, None])
    for _ in range(trainer.cfg.train.steps):
        logs = trainer.train_step()
    assert ("focal_variants" in logs) == with_variants
    trainer.model.eval()
    with torch.no_grad():
        probs = trainer.model.adapter(short, mask, torch.zeros(n, dtype=torch.long))[1].softmax(dim=-1)
    return probs[torch.arange(n), labels]


def test_the_class_head_learns_to_read_the_score_from_the_variants(tmp_path):
    learnt = variant_reading(tmp_path / "with", with_variants=True)
    assert float(learnt.min()) > 0.5 and float(learnt.mean()) > 0.9, learnt
    unseen = variant_reading(tmp_path / "without", with_variants=False)
    assert float(unseen.mean()) < 0.8, unseen  # the full reports alone do not teach it


def test_without_variants_the_step_draws_nothing_more(tmp_path):
    off, on = toy_trainer(tmp_path / "off"), toy_trainer(tmp_path / "on", "loss.report_variants=2")
    assert on.variant_rows(torch.arange(4)) is None  # no ReportVariants given: no draw
    off.train_step()
    on.train_step()
    assert torch.equal(off.generator.get_state(), on.generator.get_state())
