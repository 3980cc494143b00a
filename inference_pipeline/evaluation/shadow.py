"""Champion vs challenger, from a results database: over a period, the events both scored, their agreement on
anomalies, each one's score distribution and the alerts the alerting rule opens on each one's predictions (a table
and a plot); and how long a version has scored in shadow (what ``model.min_shadow_s`` requires before a promotion).

The challenger's rows are the ``shadow_predictions`` a stream records when ``model.shadow`` is set; the champion's
are the ``predictions`` of the same events. Alerts are counted by replaying the stream's own debouncing
(``steps.alerts.debounce_flags``, with the config's ``open_after`` / ``close_after``) over each side's decisions in
event-time order per device, so both sides are counted by the same rule.
"""
from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from inference_pipeline.evaluation.report import text_table
from inference_pipeline.steps.alerts import DebounceState, debounce_flags

QUANTILES = (0.5, 0.9, 0.99)


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of the comparison: the version(s) that scored, anomalies, score quantiles, alerts opened."""

    models: tuple[str, ...]
    anomalies: int
    score_quantiles: tuple[float, ...]
    alerts: int


@dataclasses.dataclass(frozen=True)
class Comparison:
    since: float
    until: float
    events: int
    champion: Side
    challenger: Side
    both: int
    champion_only: int
    challenger_only: int
    neither: int

    @property
    def agreement(self) -> float:
        return (self.both + self.neither) / self.events if self.events else float("nan")

    @property
    def kappa(self) -> float:
        """Cohen's kappa of the two sides' anomaly decisions (1: identical, 0: no better than chance)."""
        n = self.events
        if not n:
            return float("nan")
        p_champion, p_challenger = (self.both + self.champion_only) / n, (self.both + self.challenger_only) / n
        chance = p_champion * p_challenger + (1 - p_champion) * (1 - p_challenger)
        return 1.0 if chance == 1 else (self.agreement - chance) / (1 - chance)


_PAIRS = """
SELECT p.device_id, p.event_time, p.anomaly_score AS champion_score, p.is_anomaly AS champion_anomaly,
       p.model_name || '/' || p.model_version AS champion_model,
       s.anomaly_score AS challenger_score, s.is_anomaly AS challenger_anomaly,
       s.model_name || '/' || s.model_version AS challenger_model
FROM shadow_predictions s JOIN predictions p ON p.event_id = s.event_id
WHERE s.received_at >= ? AND s.received_at < ?
"""


def scored_pairs(db: Path, since: float, until: float, challenger: str | None = None) -> pd.DataFrame:
    """Events both sides scored with received time in [since, until) (challenger: ``<name>/<version>``, default
    any), in event-time order per device."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        pairs = pd.read_sql_query(_PAIRS, connection, params=(since, until))
    if challenger is not None:
        pairs = pairs[pairs["challenger_model"] == challenger]
    return pairs.sort_values(["device_id", "event_time"], kind="stable").reset_index(drop=True)


def alerts_opened(pairs: pd.DataFrame, side: str, open_after: int, close_after: int) -> int:
    """Incidents the alerting rule opens on one side's decisions."""
    opened = 0
    for device_id, rows in pairs.groupby("device_id", sort=False):
        incidents = debounce_flags(DebounceState(), str(device_id), "", "", rows[f"{side}_anomaly"].tolist(),
                                   rows["event_time"].tolist(), rows[f"{side}_score"].tolist(), open_after,
                                   close_after)
        opened += sum(incident.status == "open" for incident in incidents)
    return opened


def _side(pairs: pd.DataFrame, side: str, open_after: int, close_after: int) -> Side:
    scores = pairs[f"{side}_score"].to_numpy(dtype=float)
    quantiles = tuple(float(q) for q in np.quantile(scores, QUANTILES)) if len(scores) else (float("nan"),) * 3
    return Side(tuple(sorted(pairs[f"{side}_model"].unique())), int(pairs[f"{side}_anomaly"].sum()), quantiles,
                alerts_opened(pairs, side, open_after, close_after))


def compare(db: Path, since: float, until: float, open_after: int, close_after: int,
            challenger: str | None = None) -> tuple[Comparison, pd.DataFrame]:
    """The comparison over [since, until), and the pairs it was computed from."""
    pairs = scored_pairs(db, since, until, challenger)
    a, b = pairs["champion_anomaly"].astype(bool), pairs["challenger_anomaly"].astype(bool)
    comparison = Comparison(since, until, len(pairs), _side(pairs, "champion", open_after, close_after),
                            _side(pairs, "challenger", open_after, close_after), int((a & b).sum()),
                            int((a & ~b).sum()), int((~a & b).sum()), int((~a & ~b).sum()))
    return comparison, pairs


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def comparison_table(comparison: Comparison, open_after: int) -> str:
    c = comparison
    rows = [("", "champion", "challenger"),
            ("model", ",".join(c.champion.models) or "-", ",".join(c.challenger.models) or "-"),
            ("anomalies", *(f"{s.anomalies} ({s.anomalies / c.events:.2%})" if c.events else "0"
                            for s in (c.champion, c.challenger))),
            ("score p50/p90/p99", *("/".join(f"{q:.3f}" for q in s.score_quantiles) for s in (c.champion,
                                                                                               c.challenger))),
            (f"alerts (open_after {open_after})", str(c.champion.alerts), str(c.challenger.alerts))]
    lines = [f"shadow comparison {_when(c.since)} .. {_when(c.until)}: {c.events} events scored by both",
             text_table(rows)]
    lines.append(f"agreement on anomalies {c.agreement:.2%} (both {c.both}, champion only {c.champion_only}, "
                 f"challenger only {c.challenger_only}, neither {c.neither}); Cohen's kappa {c.kappa:.3f}")
    return "\n".join(lines)


def comparison_plot(comparison: Comparison, pairs: pd.DataFrame, threshold: float, path: Path) -> Path:
    """Score histograms of both sides, and each event's champion score against its challenger score."""
    figure = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(figure)
    histogram, scatter = figure.subplots(1, 2)
    bins = np.linspace(0, 1, 51)
    for side, color in (("champion", "tab:blue"), ("challenger", "tab:orange")):
        label = f"{side} {','.join(getattr(comparison, side).models)}"
        histogram.hist(pairs[f"{side}_score"], bins=bins, alpha=0.55, color=color, label=label)
    histogram.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"alert threshold {threshold}")
    histogram.set(yscale="log", xlabel="anomaly score", ylabel="events", title="score distributions")
    histogram.legend(fontsize=8)
    scatter.scatter(pairs["champion_score"], pairs["challenger_score"], s=3, alpha=0.3)
    scatter.axvline(threshold, color="black", linestyle="--", linewidth=1)
    scatter.axhline(threshold, color="black", linestyle="--", linewidth=1)
    scatter.set(xlim=(0, 1), ylim=(0, 1), xlabel="champion score", ylabel="challenger score",
                title=f"agreement {comparison.agreement:.1%}, kappa {comparison.kappa:.2f}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def shadow_seconds(db: Path, model: str) -> float:
    """How long ``<name>/<version>`` has scored in shadow: its first to its last shadow prediction (0: never)."""
    name, version = model.rsplit("/", 1)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        first, last = connection.execute(
            "SELECT MIN(processing_time), MAX(processing_time) FROM shadow_predictions "
            "WHERE model_name = ? AND model_version = ?", (name, version)).fetchone()
    return 0.0 if first is None else float(last - first)
