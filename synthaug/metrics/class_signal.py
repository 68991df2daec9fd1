"""The class-signal chain: where between the real data and the classifier does the class get lost?

Each link is scored with AUROC and balanced accuracy (bootstrap 95% CIs) against the label it should carry:

    ceiling      the judge on real test volumes (what any later link can reach at best)
    autoencoder  the judge on the VAE's reconstructions of the same volumes
    adapter      the adapter's class head on val + test reports (text -> label)
    fidelity     the judge on generated volumes against the requested label, one row per sampler setting
    cas          train on synthetic, test on real: a classifier trained on N synthetic volumes only, scored
                 on the real test split, beside the same classifier trained on N real cases

The *judge* is one classifier trained on the real train split only: never the adapter's own head and never
a model used to filter synthetic volumes (``check_judge`` refuses a judge whose weights are the filter's).

    chain = class_signal_chain(judge, "tiny-cnn (seed 0, real train)", test_volumes, test_labels,
                               reconstruct=vae_roundtrip, generated={"report, guidance 1": (volumes, labels)})
    chain.first_lost()        # the first link below 95% of the ceiling's AUROC, or None
    chain.markdown()          # the table and one sentence, for reports
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from synthaug.errors import InputError

Predict = Callable[[torch.Tensor], torch.Tensor]  # volumes (B, C, X, Y, Z) in [0, 1] -> P(class 1) (B,)
ORDER = ("ceiling", "autoencoder", "adapter", "fidelity", "cas")
KEEPS = 0.95  # a link keeps the class when its AUROC is at least this fraction of the ceiling's


@dataclass
class LinkScore:
    """One row of the chain: which link, under which setting, scored by whom, with CIs."""

    link: str  # one of ORDER (or "cas-real": the same classifier trained on N real cases)
    setting: str  # e.g. "class from report, guidance 2"
    scorer: str  # which model produced the probabilities
    n: int
    auroc: dict[str, Any]  # estimate, low, high (95% bootstrap), note
    balanced_accuracy: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"link": self.link, "setting": self.setting, "scorer": self.scorer, "n": self.n,
                "auroc": self.auroc, "balanced_accuracy": self.balanced_accuracy}


def _ci_dict(ci) -> dict[str, Any]:  # classifiers.metrics.ConfidenceInterval
    return {"estimate": ci.estimate, "low": ci.low, "high": ci.high, "note": ci.reason}


def score_link(link: str, setting: str, scorer: str, labels: Sequence[int], probs: Sequence[float] | torch.Tensor,
               *, seed: int = 0, n_boot: int = 1000) -> LinkScore:
    """AUROC and balanced accuracy (threshold 0.5) of ``probs`` against ``labels``, each with a bootstrap CI."""
    from classifiers.metrics import bootstrap_ci

    p = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=float).reshape(-1)
    y = np.asarray(labels, dtype=int).reshape(-1)
    if p.shape != y.shape or p.size == 0 or not np.isfinite(p).all():
        raise InputError(f"{p.size} probabilities (finite: {bool(np.isfinite(p).all())}) for {y.size} labels",
                         where=f"class-signal link {link}", fix="score one finite P(class 1) per labelled volume")
    return LinkScore(link, setting, scorer, int(y.size),
                     _ci_dict(bootstrap_ci(y, p, "auroc", n=n_boot, seed=seed)),
                     _ci_dict(bootstrap_ci(y, p, "balanced_accuracy", n=n_boot, seed=seed)))


@dataclass
class ClassSignalChain:
    """The scored links in chain order; ``first_lost`` names the first that loses the class."""

    links: list[LinkScore] = field(default_factory=list)
    judge: str = ""

    def ceiling(self) -> LinkScore | None:
        return next((s for s in self.links if s.link == "ceiling"), None)

    def keeps(self, score: LinkScore) -> bool | None:
        """Whether ``score`` keeps the class: AUROC >= 95% of the ceiling's (None when either is undefined).

        A CAS row is compared with the same classifier trained on as many real cases when there is one.
        """
        reference = self.ceiling()
        if score.link == "cas":
            reference = next((s for s in self.links if s.link == "cas-real"), reference)
        if reference is None or reference.auroc["estimate"] is None or score.auroc["estimate"] is None:
            return None
        return score.auroc["estimate"] >= KEEPS * reference.auroc["estimate"]

    def first_lost(self) -> LinkScore | None:
        """The first link (chain order; within a link, the best setting) below 95% of its reference, or None."""
        for link in ORDER[1:]:
            rows = [s for s in self.links if s.link == link and s.auroc["estimate"] is not None]
            if not rows:
                continue
            best = max(rows, key=lambda s: s.auroc["estimate"])
            if self.keeps(best) is False:
                return best
        return None

    def sentence(self) -> str:
        ceiling = self.ceiling()
        if ceiling is None or ceiling.auroc["estimate"] is None:
            return "No ceiling: the judge could not be scored on real test volumes."
        head = f"The judge reaches AUROC {ceiling.auroc['estimate']:.3f} on real test volumes"
        if ceiling.auroc["low"] is not None and ceiling.auroc["low"] <= 0.5:
            head += " (its CI includes chance: the judge is too weak to measure the later links)"
        lost = self.first_lost()
        if lost is None:
            return head + "; every measured link keeps at least 95% of it."
        return (f"{head}; the first link that loses the class is {lost.link} ({lost.setting}: AUROC "
                f"{lost.auroc['estimate']:.3f}, below 95% of its reference).")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassSignalChain:
        """The inverse of ``to_dict`` (e.g. read back from ``metrics.json``)."""
        return cls(links=[LinkScore(**row) for row in data["links"]], judge=data.get("judge", ""))

    HEADER = ("link", "setting", "scored by", "n", "AUROC [95% CI]", "balanced accuracy [95% CI]", "keeps class")

    def to_dict(self) -> dict[str, Any]:
        lost = self.first_lost()
        return {"judge": self.judge, "links": [s.to_dict() for s in self.links],
                "first_lost": None if lost is None else {"link": lost.link, "setting": lost.setting},
                "sentence": self.sentence()}

    def rows(self) -> list[list[str]]:
        """Table rows: link, setting, scored by, n, AUROC [CI], balanced accuracy [CI], keeps the class."""
        out = []
        for s in self.links:
            keeps = self.keeps(s) if s.link not in ("ceiling", "cas-real") else None
            out.append([s.link, s.setting, s.scorer, str(s.n), _fmt_ci(s.auroc), _fmt_ci(s.balanced_accuracy),
                        "-" if keeps is None else ("yes" if keeps else "no")])
        return out

    def markdown(self) -> str:
        from synthaug.markdown import markdown_table

        lines = markdown_table(self.HEADER, self.rows())
        return "\n".join(["## Class-signal chain", "", *lines, "", self.sentence(), ""]) + "\n"


def _fmt_ci(ci: Mapping[str, Any]) -> str:
    if ci["estimate"] is None:
        return f"n/a ({ci.get('note') or 'undefined'})"
    if ci["low"] is None:
        return f"{ci['estimate']:.3f}"
    return f"{ci['estimate']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def check_judge(judge_sha256: str | None, filter_sha256: str | None) -> None:
    """Refuse a judge that is the filter: a volume the filter kept would be judged by the model that kept it."""
    if judge_sha256 and filter_sha256 and judge_sha256 == filter_sha256:
        raise InputError("the judge's weights are the filter's (same sha256)", where="class-signal judge",
                         fix="train the judge with another architecture or seed than the filter")


@torch.no_grad()
def _predict(predict: Predict, volumes: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([predict(volumes[i:i + batch_size]).float().reshape(-1).cpu()
                      for i in range(0, len(volumes), batch_size)])


def class_signal_chain(
    judge: Predict,
    judge_name: str,
    test_volumes: torch.Tensor,
    test_labels: Sequence[int],
    *,
    reconstruct: Callable[[torch.Tensor], torch.Tensor] | None = None,
    adapter: tuple[Callable[[list[str]], torch.Tensor], Sequence[str], Sequence[int]] | None = None,
    generated: Mapping[str, tuple[torch.Tensor, Sequence[int]]] | None = None,
    cas: Mapping[str, Sequence[float] | torch.Tensor] | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int = 8,
) -> ClassSignalChain:
    """Score every link that has its inputs; see the module docstring.

    Args:
        judge: real-data classifier, volumes ``(B, C, X, Y, Z)`` in [0, 1] -> P(class 1); ``judge_name`` says
            which (architecture, seed, training data) in every output.
        test_volumes / test_labels: the real test split, ``(N, C, X, Y, Z)`` in [0, 1].
        reconstruct: the autoencoder round trip, volumes -> reconstructions of the same shape.
        adapter: ``(reports -> P(class 1), reports, labels)`` for the adapter's class head on val + test reports.
        generated: setting -> (generated volumes, requested labels).
        cas: setting -> P(class 1) on the real test split of a classifier trained on N synthetic volumes only
            (settings "synthetic ..."), or of the same classifier trained on N real cases (settings "real ...").
    """
    test_labels = [int(v) for v in test_labels]
    if len(test_volumes) != len(test_labels):
        raise InputError(f"{len(test_volumes)} test volumes for {len(test_labels)} labels", where="class-signal chain",
                         fix="pass one label per real test volume")
    chain = ClassSignalChain(judge=judge_name)

    def add(link: str, setting: str, scorer: str, labels: Sequence[int], probs: Any) -> None:
        chain.links.append(score_link(link, setting, scorer, labels, probs, seed=seed, n_boot=n_boot))

    add("ceiling", "real test volumes", judge_name, test_labels, _predict(judge, test_volumes, batch_size))
    if reconstruct is not None:
        recon = torch.cat([reconstruct(test_volumes[i:i + batch_size]) for i in range(0, len(test_volumes), batch_size)])
        add("autoencoder", "VAE reconstructions of the test volumes", judge_name, test_labels,
            _predict(judge, recon, batch_size))
    if adapter is not None:
        predict_text, reports, labels = adapter
        add("adapter", f"{len(reports)} val + test reports", "the adapter's class head", labels, predict_text(list(reports)))
    for setting, (volumes, requested) in (generated or {}).items():
        add("fidelity", setting, judge_name, requested, _predict(judge, volumes, batch_size))
    for setting, probs in (cas or {}).items():
        link = "cas-real" if setting.startswith("real") else "cas"
        add(link, setting, "a classifier trained on this row's set", test_labels, probs)
    return chain
