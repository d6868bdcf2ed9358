"""The recall task of the BPTT lab: cells, truncation and clipping trained on planted keys, with a known answer.

`python -m lm lab --task recall` plans the same runs as the Wikipedia lab
(`lm/reports/lab.py: plan_runs`: every cell at equal parameters, k2 swept
for a gated cell and the vanilla RNN, clipping off / by norm / by value for
the vanilla RNN), trains each for the same wall-clock budget on a planted
corpus (`corpora/planted.py`: filler from the chosen corpus, a key asked
for 40-400 characters later by default; the test questions may be
drawn at other distances, `--test-distances`), and measures each run on held-out planted
questions (`lm/reports/recall.py`): recall by distance against the chance
level and the controls, reach at the question, the key's share of the
influence, and whether the reach told the truth. Gradient-norm telemetry
and the recurrence's Jacobian come from the same training as in the
Wikipedia lab. Writes out/recall.json (every figure) and out/recall.html
(self-contained, with its PNGs beside it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from corpora import Corpus, load_corpus
from corpora.planted import SHORTEST_DISTANCE, planted_corpus
from lm.reports.lab import LabSettings, lab_record, plan_runs, train_lab_run
from lm.reports.recall import measure_recall, recall_by_distance, truthfulness
from lm.reports.recall_report import write_recall_report
from lm.tokenizers import build_tokenizer

__all__ = ["RecallSettings", "run_recall_lab"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecallSettings:
    """The planted corpus and how runs are measured on it."""

    min_distance: int = 40  # characters from the prediction point back to the key
    max_distance: int = 400
    test_distances: tuple[int, int] | None = None  # (min, max) of the test questions; None: as in training
    train_examples: int = 4000
    plain_lines: int = 1  # lines of the corpus's own text after each planted training line (0: every line planted)
    heldout_examples: int = 400  # per held-out split, controls included
    control_share: float = 0.5  # of held-out examples
    measured: int = 200  # test questions measured per run
    confidence: float = 0.5  # the bar for "answered correctly" in the truthfulness figure
    ablate: bool = True

    def __post_init__(self) -> None:
        for low, high in [(self.min_distance, self.max_distance)] + ([self.test_distances] if self.test_distances else []):
            if low < SHORTEST_DISTANCE:
                raise ValueError(f"the shortest distance is {SHORTEST_DISTANCE} characters (the longest key, '. ' and the "
                                 f"question), not {low}")
            if high < low:
                raise ValueError(f"the longest distance ({high}) is below the shortest ({low})")
        if self.plain_lines < 0 or self.train_examples < 1:
            raise ValueError("plain_lines must be at least 0 and train_examples at least 1")

    @classmethod
    def quick_mode(cls) -> "RecallSettings":
        """Enough to exercise every figure in seconds per run."""
        return cls(train_examples=400, heldout_examples=40, measured=16)


def run_recall_lab(corpus_spec: str, out: Path, settings: LabSettings, recall: RecallSettings,
                   corpus: Corpus | None = None) -> Path:
    """Train every planned run on planted keys and measure it; writes recall.json and recall.html; returns the page."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = corpus or load_corpus(corpus_spec)
    planted = planted_corpus(source, seed=settings.seed, counts=(recall.train_examples, recall.heldout_examples,
                                                                 recall.heldout_examples),
                             min_distance=recall.min_distance, max_distance=recall.max_distance,
                             control_share=recall.control_share, plain_lines=recall.plain_lines,
                             test_distances=recall.test_distances)
    vocab = build_tokenizer(settings.tokenizer, planted.corpus.train.text, settings.vocab_size).vocab_size
    runs = plan_runs(settings, vocab)
    questions = planted.examples["test"][: recall.measured]
    results = []
    for index, run in enumerate(runs, 1):
        log.info("recall lab run %d/%d: %s (hidden %d, k2 %d, clipping %s)", index, len(runs), run.name, run.hidden_dim,
                 run.bptt, run.clipping)
        figures, predictor = train_lab_run(run, settings, planted.corpus, out)
        measures = measure_recall(predictor, questions, ablate=recall.ablate, seed=settings.seed)
        real = [m for m in measures if not m.control]
        controls = [m for m in measures if m.control]
        figures["recall"] = {
            "top1": sum(m.recalled for m in real) / max(len(real), 1),
            "control_top1": sum(m.recalled for m in controls) / max(len(controls), 1),
            "by_distance": recall_by_distance(measures),
            "truthfulness": truthfulness(measures, recall.confidence),
            "measures": [m.as_dict() for m in measures],
        }
        results.append(figures)
    record = lab_record(planted.corpus, settings, results)
    record.update(task="recall", recall_settings=asdict(recall), chance=planted.chance, filler=source.name)
    (out / "recall.json").write_text(json.dumps(record, indent=1, allow_nan=True), encoding="utf-8")
    return write_recall_report(record, out)
