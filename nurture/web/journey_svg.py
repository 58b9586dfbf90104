"""The campaign page's drawings, as server-rendered SVG (no script, nothing fetched).

`journey_graph`: one box per step in the campaign's order, its numbers inside and a bar
for the share of enrolled leads that reached it, so the drop-off reads at a glance;
arrows down for `next`, arcs on the right for jumps (goto, then, else, on_timeout).
`daily_chart`: emails sent and first clicks per UTC day, as bars.
Both take the stats document, so they show exactly the JSON's numbers.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape

from nurture.campaign import Campaign, format_duration

WIDTH, BOX_X, BOX_W, GAP, LINE = 860, 24, 500, 34, 18
END = "end of campaign"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def edges(campaign: Campaign) -> list[tuple[int, int, str]]:
    """(from index, to index, label); index len(steps) is the end of the campaign."""
    steps, found = campaign.steps, []

    def target(step_id: str | None, default: int) -> int:
        index = campaign.step_index(step_id) if step_id else None
        return default if step_id is None else (len(steps) if index is None else index)

    for index, step in enumerate(steps):
        after = index + 1
        if step.kind == "goto":
            found.append((index, target(step.goto, after), "goto"))
        elif step.kind == "if":
            found += [(index, target(step.then, after), "then"), (index, target(step.else_, after), "else")]
        elif step.kind == "wait_for":
            found += [(index, after, "next"), (index, target(step.on_timeout, after), "on_timeout")]
        else:
            found.append((index, after, "next"))
    return found


def _detail(step: Any) -> str:
    if step.kind == "send":
        return f"email {step.send}"
    if step.kind == "wait":
        return f"wait {format_duration(step.wait)}"
    if step.kind == "wait_for":
        return f"waits for {step.wait_for.event}" + (f" on {step.wait_for.step}" if step.wait_for.step else "") \
            + f", up to {format_duration(step.timeout)}"
    if step.kind == "goto":
        return f"go to {step.goto}"
    return f"if … then {step.then}"


def _lines(doc: dict[str, Any], enrolled: int) -> list[str]:
    share = f" ({percent(doc['reached'] / enrolled)} of enrolled)" if enrolled else ""
    lines = [f"reached {doc['reached']}{share} · waiting now {doc['waiting']}"]
    if doc["kind"] == "send":
        rates = doc["rates"]
        lines.append(f"sent {doc['sent']} · delivered {doc['delivered']} ({percent(rates['delivered'])})")
        lines.append(f"unique opens {doc['unique_opens']} ({percent(rates['open'])}) · "
                     f"unique clicks {doc['unique_clicks']} ({percent(rates['click'])})")
        lines.append(f"bounces {doc['bounced']} ({percent(rates['bounce'])}) · "
                     f"unsubscribes {doc['unsubscribed']} ({percent(rates['unsubscribe'])})")
    return lines


def journey_graph(campaign: Campaign, stats: dict[str, Any]) -> Markup:
    steps = stats["steps"]
    heights = [LINE * (2 + len(_lines(doc, stats["enrolled"]))) + 14 for doc in steps] + [LINE + 14]
    tops = [GAP]
    for height in heights[:-1]:
        tops.append(tops[-1] + height + GAP)
    total = tops[-1] + heights[-1] + GAP
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {total}" width="100%" role="img" '
             f'aria-labelledby="graph-title" class="journey">',
             f'<title id="graph-title">Journey of {escape(campaign.name)}: {len(steps)} steps, '
             f'{stats["enrolled"]} enrolled</title>',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#555"/></marker></defs>']
    for slot, (start, end, label) in enumerate(e for e in edges(campaign) if e[2] != "next" or e[1] != e[0] + 1):
        parts.append(_arc(tops, heights, start, end, label, slot))
    for index, (doc, step) in enumerate(zip(steps, campaign.steps)):
        if any(s == index and e == index + 1 for s, e, _ in edges(campaign)):
            parts.append(_down(tops, heights, index, doc, steps[index + 1] if index + 1 < len(steps) else None))
        parts.append(_box(tops[index], heights[index], doc, step, stats["enrolled"]))
    parts.append(f'<rect x="{BOX_X}" y="{tops[-1]}" width="{BOX_W}" height="{heights[-1]}" rx="14" class="end"/>'
                 f'<text x="{BOX_X + BOX_W / 2}" y="{tops[-1] + 21}" text-anchor="middle">{END}: '
                 f'completed {stats["completed"]}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _box(top: float, height: float, doc: dict[str, Any], step: Any, enrolled: int) -> str:
    share = doc["reached"] / enrolled if enrolled else 0.0
    text = [f'<text x="{BOX_X + 12}" y="{top + LINE + 2}" class="title">{escape(doc["id"])} '
            f'<tspan class="kind">{escape(doc["kind"])} · {escape(_detail(step))}</tspan></text>']
    for number, line in enumerate(_lines(doc, enrolled)):
        text.append(f'<text x="{BOX_X + 12}" y="{top + LINE * (number + 2) + 6}">{escape(line)}</text>')
    return (f'<g class="step" data-step="{escape(doc["id"])}"><rect x="{BOX_X}" y="{top}" width="{BOX_W}" '
            f'height="{height}" rx="6" class="box"/>'
            f'<rect x="{BOX_X}" y="{top + height - 6}" width="{BOX_W * share:.1f}" height="6" class="reached"/>'
            + "".join(text) + "</g>")


def _down(tops: list[float], heights: list[float], index: int, doc: dict[str, Any], after: dict[str, Any] | None) -> str:
    x, y1, y2 = BOX_X + 60, tops[index] + heights[index], tops[index + 1]
    label = ""
    if after is not None and after["reached"] < doc["reached"]:
        label = (f'<text x="{x + 10}" y="{(y1 + y2) / 2 + 5}" class="drop">−{doc["reached"] - after["reached"]} '
                 f'reached the next step</text>')
    return f'<line x1="{x}" y1="{y1}" x2="{x}" y2="{y2}" class="edge" marker-end="url(#arrow)"/>{label}'


def _arc(tops: list[float], heights: list[float], start: int, end: int, label: str, slot: int) -> str:
    right = BOX_X + BOX_W
    y1, y2 = tops[start] + heights[start] / 2, tops[end] + min(heights[end] / 2, 20)
    x = right + 26 + 36 * (slot % 8)
    return (f'<path d="M{right},{y1} C{x},{y1} {x},{y2} {right},{y2}" class="edge jump {label}" fill="none" '
            f'marker-end="url(#arrow)"/><text x="{x - 10}" y="{(y1 + y2) / 2}" class="label">{label}</text>')


def daily_chart(days: list[dict[str, Any]]) -> Markup:
    """Bars of emails sent and first clicks per day (UTC), oldest left."""
    if not days:
        return Markup('<p class="muted">No email sent in this period.</p>')
    height, pad, bar = 200, 34, max(4.0, min(24.0, (WIDTH - 2 * 34) / len(days) / 2.5))
    top = max(max(d["sent"] for d in days), 1)
    step = (WIDTH - 2 * pad) / len(days)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height + 30}" width="100%" '
             f'role="img" aria-labelledby="daily-title" class="daily">',
             f'<title id="daily-title">Emails sent and first clicks per day (UTC), {days[0]["day"]} to '
             f'{days[-1]["day"]}: {sum(d["sent"] for d in days)} sent, {sum(d["unique_clicks"] for d in days)} clicked'
             f'</title>',
             f'<text x="{pad}" y="16" class="legend"><tspan class="sent-key">■ sent</tspan> '
             f'<tspan class="click-key">■ first clicks</tspan> (highest day: {top})</text>']
    for index, day in enumerate(days):
        x = pad + index * step
        for offset, (name, value) in enumerate((("sent", day["sent"]), ("clicks", day["unique_clicks"]))):
            h = value / top * (height - 2 * pad)
            parts.append(f'<rect x="{x + offset * bar:.1f}" y="{height - pad - h:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}" class="{name}"><title>{day["day"]}: {value} {name}</title></rect>')
        if len(days) <= 16 or index % max(1, len(days) // 8) == 0:
            parts.append(f'<text x="{x:.1f}" y="{height - pad + 16}" class="axis">{day["day"][5:]}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
