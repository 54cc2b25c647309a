"""The comparison a practitioner decides from, as Markdown and as a self-contained HTML page.

Input is what the evaluate stage wrote (metrics and details) and the params behind them;
nothing here trains or scores. The document is built once as a list of blocks
(:mod:`transferlab.report.format`), section by section (:mod:`transferlab.report.sections`),
and rendered twice, so the two formats cannot drift apart. Figures are PNGs
(:mod:`transferlab.report.figures`): files next to the Markdown, embedded in the HTML.
"""

from __future__ import annotations

from typing import Any

from transferlab.report import sections as S
from transferlab.report.card import verdict_card
from transferlab.report.format import Document
from transferlab.report.size import size_section


def build(
    metrics: dict[str, Any],
    details: dict[str, Any],
    comparisons: dict[str, Any],
    *,
    title: str,
    code_version: str,
    params_text: str,
    screens: list[dict[str, Any]] | None = None,
) -> Document:
    """The whole report, in the order a reader needs it: the verdict card and its figure
    (what to use, why, how sure, the cost), then the numbers behind it, how they were
    obtained, the views beyond the verdict, provenance."""
    r = S.Inputs(metrics, details, comparisons)
    doc = Document()
    doc.add("h1", title)
    verdict_card(doc, r, r.verdict["recommended"])  # the first screen: the answer, then its figure
    S.data_section(doc, r, code_version)
    recommended = S.recommendation_section(doc, r)
    S.unresolved_section(doc, r)
    S.comparison_section(doc, r, recommended)
    S.paired_section(doc, r)
    S.protocol_section(doc, r)
    S.seeds_section(doc, r)
    for name, model in details["models"].items():
        if "wise" in model:
            S.wise_section(doc, name, model["wise"])
    if "robustness" in details:
        S.robustness_section(doc, details["robustness"], r.by, r.val)
    S.backbone_section(doc, details, screens or [])
    S.rules_section(doc, r)
    if "curves" in details:
        size_section(doc, details["curves"])  # or, on data too small for any size, why not
    S.figures_section(doc, r)
    S.provenance_section(doc, r, params_text)
    return doc
