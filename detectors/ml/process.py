"""Process values: what each tag (a register, a node, a sensor's quantity) did in training, and
what it does now that it never did: out of its range, changing faster than it ever did, or
stuck. Pure functions, no I/O.

A :class:`TagModel` learns, from a tag's training samples (time, value):

- **range**: the smallest and largest value, widened by ``margin`` of the spread (a tank seen
  between 1,200 and 3,400 mm accepts 980 to 3,620 with the default 0.1);
- **rate of change**: the largest change per second between consecutive samples, times
  ``1 + margin``; a jump beyond it is a change the process never made (a setpoint rewritten,
  a sensor replaced by a replay);
- **stuck**: the longest time the value stayed exactly the same; a value frozen more than
  ``stuck_factor`` times as long (and over at least ``min_stuck_samples`` samples) is a sensor
  or a PLC output that stopped (or a replayed constant). A tag constant in training is never
  "stuck".

:class:`ProcessModel` holds one per tag and :meth:`ProcessModel.score` gives the
:class:`ProcessFinding` of every sample outside what its tag learnt, naming the tag, the value
and what was expected. :func:`evaluate_rows` scores labelled rows (any tabular time series: the
entry point ``soc detectors evaluate --csv`` reads) and gives precision, recall, F1, the attack
segments detected and the time to detect each.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Series = Sequence[tuple[int, float]]  # (time µs, value), in time order


@dataclass(frozen=True)
class TagModel:
    """What one tag did in training (see the module)."""

    tag: str
    low: float
    high: float
    max_rate: float  # per second
    max_run_s: float  # longest constant stretch
    period_s: float  # median time between samples
    samples: int
    varies: bool  # not constant in training

    @classmethod
    def learn(cls, tag: str, series: Series, margin: float = 0.1) -> TagModel:
        """The model of ``series`` (at least two samples)."""
        values = [v for _, v in series]
        low, high = min(values), max(values)
        spread = (high - low) or abs(high) or 1.0
        rates, gaps = [], []
        run_start, longest = series[0][0], 0
        for (t0, v0), (t1, v1) in itertools.pairwise(series):
            dt = (t1 - t0) / 1e6
            if dt > 0:
                rates.append(abs(v1 - v0) / dt)
                gaps.append(dt)
            if v1 != v0:
                run_start = t1
            longest = max(longest, t1 - run_start)
        gaps.sort()
        return cls(
            tag,
            low - margin * spread,
            high + margin * spread,
            max(rates, default=0.0) * (1 + margin),
            longest / 1e6,
            gaps[len(gaps) // 2] if gaps else 0.0,
            len(series),
            high != low,
        )


@dataclass(frozen=True)
class ProcessFinding:
    """One sample outside what its tag learnt."""

    tag: str
    ts_us: int
    value: float
    kind: str  # out_of_range, rate_of_change, stuck
    expected: str  # what the tag learnt, in words

    @property
    def message(self) -> str:
        """``level = 5200 (out_of_range; learnt 980 to 3620)``."""
        return f"{self.tag} = {self.value:g} ({self.kind}; {self.expected})"


@dataclass
class ProcessModel:
    """One :class:`TagModel` per tag, and how findings are decided."""

    tags: dict[str, TagModel] = field(default_factory=dict)
    stuck_factor: float = 3.0
    min_stuck_samples: int = 5

    def train(self, series: Mapping[str, Series], margin: float = 0.1) -> ProcessModel:
        """Learn every tag with at least two training samples."""
        self.tags = {
            tag: TagModel.learn(tag, s, margin) for tag, s in series.items() if len(s) >= 2
        }
        return self

    def score(self, series: Mapping[str, Series]) -> list[ProcessFinding]:
        """The findings of every tag's samples, in time order (tags not learnt are skipped)."""
        out: list[ProcessFinding] = []
        for tag, samples in series.items():
            model = self.tags.get(tag)
            if model is not None:
                out.extend(self._tag(model, samples))
        out.sort(key=lambda f: (f.ts_us, f.tag))
        return out

    def _tag(self, m: TagModel, samples: Series) -> Iterable[ProcessFinding]:
        previous: tuple[int, float] | None = None
        run_start, run_samples = None, 0
        stuck_after = max(m.max_run_s * self.stuck_factor, m.period_s * self.min_stuck_samples)
        for ts, value in samples:
            if not m.low <= value <= m.high:
                yield ProcessFinding(m.tag, ts, value, "out_of_range",
                                     f"learnt {m.low:g} to {m.high:g}")  # fmt: skip
            elif previous is not None and ts > previous[0]:
                rate = abs(value - previous[1]) / ((ts - previous[0]) / 1e6)
                if m.max_rate > 0 and rate > m.max_rate:
                    yield ProcessFinding(m.tag, ts, value, "rate_of_change",
                                         f"{rate:g}/s where at most {m.max_rate:g}/s was seen")  # fmt: skip
            if previous is None or value != previous[1]:
                run_start, run_samples = ts, 1
            else:
                run_samples += 1
                held = (ts - (run_start or ts)) / 1e6
                if m.varies and held > stuck_after and run_samples >= self.min_stuck_samples:
                    yield ProcessFinding(m.tag, ts, value, "stuck",
                                         f"unchanged {held:g} s where at most {m.max_run_s:g} s "
                                         "was seen")  # fmt: skip
            previous = (ts, value)


# -- evaluation on labelled rows ----------------------------------------------------------------


@dataclass(frozen=True)
class RowEvaluation:
    """Row-level precision, recall and F1 of the flagged rows against the labels, the attack
    segments (runs of attack rows) detected and the time to detect each, and the false alerts
    (runs of flagged normal rows) per hour of normal rows scored."""

    rows: int
    attack_rows: int
    flagged_rows: int
    true_positives: int
    precision: float
    recall: float
    f1: float
    segments: int
    segments_detected: int
    time_to_detect_s: tuple[float | None, ...]
    false_alerts: int
    normal_hours: float

    @property
    def false_alerts_per_hour(self) -> float | None:
        """False alerts per hour of normal rows (None without normal rows)."""
        return self.false_alerts / self.normal_hours if self.normal_hours else None


def evaluate_rows(
    times: Sequence[int],
    labels: Sequence[bool],
    columns: Mapping[str, Sequence[float | None]],
    train: Sequence[bool],
    margin: float = 0.1,
) -> tuple[RowEvaluation, list[ProcessFinding]]:
    """Train on the rows marked ``train``, score the others: ``times`` in µs (increasing),
    ``labels`` True for attack rows, ``columns`` the tags' values per row (None: missing)."""

    def series(keep: Sequence[bool]) -> dict[str, list[tuple[int, float]]]:
        return {name: [(t, v) for t, v, k in zip(times, values, keep, strict=True)
                       if k and v is not None]
                for name, values in columns.items()}  # fmt: skip

    model = ProcessModel().train(series(train), margin)
    scored = [not t for t in train]
    findings = model.score(series(scored))
    flagged_times = {f.ts_us for f in findings}
    flagged = [s and t in flagged_times for t, s in zip(times, scored, strict=True)]
    rows = [i for i, s in enumerate(scored) if s]
    tp = sum(1 for i in rows if flagged[i] and labels[i])
    fp = sum(1 for i in rows if flagged[i] and not labels[i])
    attack_rows = sum(1 for i in rows if labels[i])
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / attack_rows if attack_rows else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    detect: list[float | None] = []
    false_alerts, normal_us = 0, 0
    i = 0
    while i < len(rows):
        j = i
        while j + 1 < len(rows) and labels[rows[j + 1]] == labels[rows[i]]:
            j += 1
        segment = rows[i : j + 1]
        if labels[rows[i]]:
            first = next((times[k] for k in segment if flagged[k]), None)
            detect.append(None if first is None else (first - times[segment[0]]) / 1e6)
        else:
            normal_us += times[segment[-1]] - times[segment[0]]
            marks = [flagged[k] for k in segment]  # a run of flagged rows is one alert
            false_alerts += sum(1 for a, b in itertools.pairwise([False, *marks]) if b and not a)
        i = j + 1
    return (
        RowEvaluation(
            len(rows), attack_rows, sum(flagged), tp, precision, recall, f1, len(detect),
            sum(d is not None for d in detect), tuple(detect), false_alerts, normal_us / 3.6e9,
        ),
        findings,
    )  # fmt: skip
