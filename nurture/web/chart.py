"""The score over time as a small SVG, drawn on the server (no script, no library).

A step line: the score holds between two changes. The MQL threshold is a dashed line.
Labels give the first and last dates (UTC) and the highest score; the chart carries a
text alternative for screen readers.
"""

from __future__ import annotations

from datetime import datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT, PAD = 600, 180, 32


def _time(value: datetime | str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value


def score_chart(points: list[tuple[datetime | str, int]], threshold: int | None = None) -> Markup:
    """An <svg> of the score (oldest first); a sentence when there is nothing to draw."""
    if not points:
        return Markup('<p class="muted">No score change yet.</p>')
    times = [_time(at).timestamp() for at, _ in points]
    scores = [score for _, score in points]
    top = max([*scores, threshold or 0, 10])
    start, end = times[0], max(times[-1], times[0] + 1)

    def x(t: float) -> float:
        return PAD + (t - start) / (end - start) * (WIDTH - 2 * PAD)

    def y(score: float) -> float:
        return HEIGHT - PAD - max(score, 0) / top * (HEIGHT - 2 * PAD)

    path = [f"M{x(times[0]):.1f},{y(scores[0]):.1f}"]
    for t, score in zip(times[1:], scores[1:]):
        path.append(f"H{x(t):.1f}V{y(score):.1f}")
    first, last = _time(points[0][0]), _time(points[-1][0])
    summary = (f"Score from {scores[0]} to {scores[-1]} between {first:%Y-%m-%d} and {last:%Y-%m-%d} UTC, "
               f"highest {max(scores)}" + (f"; MQL threshold {threshold}" if threshold else ""))
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="score-chart-title">',
        f'<title id="score-chart-title">{escape(summary)}</title>',
        f'<line class="axis" x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}"/>',
        f'<line class="axis" x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}"/>',
        f'<text x="{PAD - 4}" y="{PAD + 4}" text-anchor="end">{top}</text>',
        f'<text x="{PAD - 4}" y="{HEIGHT - PAD + 4}" text-anchor="end">0</text>',
        f'<text x="{PAD}" y="{HEIGHT - 10}">{first:%Y-%m-%d}</text>',
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 10}" text-anchor="end">{last:%Y-%m-%d} UTC</text>',
    ]
    if threshold:
        parts.append(f'<line class="threshold" x1="{PAD}" y1="{y(threshold):.1f}" x2="{WIDTH - PAD}" '
                     f'y2="{y(threshold):.1f}"/><text x="{WIDTH - PAD}" y="{y(threshold) - 4:.1f}" '
                     f'text-anchor="end">MQL {threshold}</text>')
    parts.append(f'<path class="line" d="{"".join(path)}"/></svg>')
    return Markup("".join(parts))
