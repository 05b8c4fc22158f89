"""The text-augmentation policy of training items: which report texts an item carries."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmcardio.errors import ConfigError
from mmcardio.sentences import UNITS, sample_sentences
from mmcardio.study import Study


@dataclass(frozen=True)
class TextViews:
    """How a training item draws its report texts (with the generator its seed gives; at
    inference every item carries its study's reports unchanged).

    sample_sentences: each report is a random subset of its sentences (of their clauses with
        `text_unit="clause"`, see `sentences.sample_sentences`).
    report_views: with sample_sentences, items also carry "text_view", a second independent
        subset of the report's sentences (for the model's `report_views` loss term).
    text_unit: what sample_sentences draws, one of `sentences.UNITS`.
    translations: each item's reports (and apart from them its text_view) are in a language
        drawn uniformly from the study's report language and its `translations`, so every
        study teaches the text tower each language it has.
    view_translations: the same draw for the text_view alone; the reports aligned with the
        study towers stay in the study's own language.
    """

    sample_sentences: bool = False
    report_views: bool = False
    text_unit: str = "sentence"
    translations: bool = False
    view_translations: bool = False

    def __post_init__(self) -> None:
        if self.text_unit not in UNITS:
            raise ConfigError(f"expected one of {UNITS}, got {self.text_unit!r}", field="text_unit")
        if self.report_views and not self.sample_sentences:
            raise ConfigError("report_views needs sample_sentences: the two views of a report are "
                              "two random subsets of its sentences", field="sample_sentences")

    def draw(self, study: Study, modalities: Sequence[str],
             rng: np.random.Generator | None) -> tuple[str, dict[str, str], str | None]:
        """(whole report, {modality: its exam report} for `modalities`, text_view or None
        without report_views) of one item; without `rng`, the study's own reports."""
        reported = _in_drawn_language(study, rng, self.translations)
        text, exams, view = reported.report, {m: reported.report_for(m) for m in modalities}, None
        if rng is not None and self.sample_sentences:
            drawn = {t: sample_sentences(t, rng, unit=self.text_unit)
                     for t in dict.fromkeys([text, *exams.values()])}
            text, exams = drawn[text], {m: drawn[t] for m, t in exams.items()}
            if self.report_views:
                viewed = _in_drawn_language(study, rng, self.translations or self.view_translations)
                view = sample_sentences(viewed.report, rng, unit=self.text_unit)
        return text, exams, view


def _in_drawn_language(study: Study, rng: np.random.Generator | None, draw: bool) -> Study:
    if rng is None or not draw or not study.translations:
        return study
    languages = study.languages()
    return study.in_language(languages[rng.integers(len(languages))])
