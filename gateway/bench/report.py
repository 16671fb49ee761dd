"""Benchmark figures: one record per run, capacity, a text table, SVG plots and an HTML page.

A run is one system under test at one number of concurrent calls. :func:`summarise` turns the
generator's raw output into a :class:`RunRecord`; :func:`capacity` finds the largest load that
meets the criteria (loss below 0.1 %, added p99 latency below 1 ms, and a generator that kept
its schedule, so that a slow generator is never taken for a slow relay).

Plots are inline SVG written here: the report must render on an operator's box that has no
plotting library, and a line chart needs no more than a polyline and some labels.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from gateway.bench.loadgen import CORE_KEEPER_LABEL

__all__ = [
    "MAX_LOSS_PCT",
    "MAX_P99_ADDED_US",
    "MAX_SLIP_P99_US",
    "Latency",
    "RunRecord",
    "capacity",
    "generator_ceiling",
    "html_page",
    "line_chart",
    "summarise",
    "table",
]

#: Capacity criteria (the issue's): loss below 0.1 % and added p99 latency below 1 ms.
MAX_LOSS_PCT = 0.1
MAX_P99_ADDED_US = 1000.0
#: A generator whose own p99 schedule slip exceeds this was overloaded: the run says nothing
#: about the relay and counts as "not measured", never as a pass or a relay failure.
MAX_SLIP_P99_US = 1000.0


class Latency(msgspec.Struct):
    """One-way latency percentiles in µs."""

    p50: float
    p99: float
    p999: float
    max: float


class RunRecord(msgspec.Struct, kw_only=True):
    """What one run measured (the JSON record of the report)."""

    mode: str
    calls: int
    suite: str
    #: Packets per second offered, both directions together.
    pps: float
    #: Packets sent in the window that never arrived, both directions.
    loss_pct: float
    #: One-way, send to kernel receive stamp; worse of the two directions per percentile.
    latency_us: Latency
    #: ``latency_us`` less the direct path's (same calls) at the same percentile: the relay's cost.
    added_latency_us: Latency
    #: RFC 3550 interarrival jitter: mean over streams (worse direction), and the worst stream.
    jitter_us: float
    jitter_max_us: float
    duplicates: int
    srtp_failures: int
    #: CPU share (% of one core) per process of the system under test, over the window.
    cpu_pct: dict[str, float]
    rss_mib: dict[str, float]
    #: The generator's own figures: schedule slip and CPU (it must not be the bottleneck).
    generator_slip_us: Latency
    generator_cpu_pct: float
    generator_ok: bool
    #: Calls set up per second through SIP (gateway over SIP/TLS only).
    setup_per_s: float | None = None
    calls_failed: int = 0
    #: Runs of this level thrown away first because the generator itself slipped (0 or 1).
    repeated: int = 0
    per_direction: list[dict[str, Any]] = []

    @property
    def media_cpu_pct(self) -> float:
        """CPU of the media path (worker or relay process), % of one core."""
        media = [
            v
            for k, v in self.cpu_pct.items()
            if k != "signalling" and not k.endswith(CORE_KEEPER_LABEL)
        ]
        return sum(media)

    @property
    def keeper_cpu_pct(self) -> float:
        """CPU of the media worker's core keeper: idle time it spun through, not work."""
        return sum(v for k, v in self.cpu_pct.items() if k.endswith(CORE_KEEPER_LABEL))

    def passes(self) -> bool:
        return self.loss_pct < MAX_LOSS_PCT and self.added_latency_us.p99 < MAX_P99_ADDED_US


def _latency(raw: dict[str, Any]) -> Latency:
    return Latency(float(raw["p50"]), float(raw["p99"]), float(raw["p999"]), float(raw["max"]))


def summarise(
    mode: str,
    suite: str,
    raw: dict[str, Any],
    *,
    cpu_pct: dict[str, float],
    rss_mib: dict[str, float],
    ptime_ms: float,
    floor: Latency | None = None,
    setup_per_s: float | None = None,
    calls_failed: int = 0,
) -> RunRecord:
    """One record from the generator's JSON; ``floor`` is the direct path's latency."""
    dirs = raw["dirs"]
    sent = sum(int(d["sent"]) for d in dirs)
    received = sum(int(d["received"]) for d in dirs)
    lats = [_latency(d["latency_us"]) for d in dirs]
    latency = Latency(
        max(x.p50 for x in lats),
        max(x.p99 for x in lats),
        max(x.p999 for x in lats),
        max(x.max for x in lats),
    )
    base = floor or Latency(0.0, 0.0, 0.0, 0.0)
    added = Latency(
        max(0.0, latency.p50 - base.p50),
        max(0.0, latency.p99 - base.p99),
        max(0.0, latency.p999 - base.p999),
        max(0.0, latency.max - base.max),
    )
    slip = _latency(raw["slip_us"])
    return RunRecord(
        mode=mode,
        calls=int(raw["calls"]) + calls_failed,
        suite=suite,
        pps=2 * (int(raw["calls"]) + calls_failed) * 1000.0 / ptime_ms,
        loss_pct=100.0 * (sent - received) / sent if sent else 100.0,
        latency_us=latency,
        added_latency_us=added,
        jitter_us=max(float(d["jitter_us_mean"]) for d in dirs),
        jitter_max_us=max(float(d["jitter_us_max"]) for d in dirs),
        duplicates=sum(int(d["duplicates"]) for d in dirs),
        srtp_failures=sum(int(d["srtp_failures"]) for d in dirs),
        cpu_pct={k: round(v, 1) for k, v in cpu_pct.items()},
        rss_mib={k: round(v, 2) for k, v in rss_mib.items()},
        generator_slip_us=slip,
        generator_cpu_pct=float(raw["cpu_pct"]),
        generator_ok=slip.p99 < MAX_SLIP_P99_US,
        setup_per_s=setup_per_s,
        calls_failed=calls_failed,
        per_direction=dirs,
    )


def capacity(records: Iterable[RunRecord], mode: str, ceiling: int | None = None) -> int:
    """The largest load that passes, counting only loads below the first failure.

    A pass above a failure is luck, not capacity: the sweep is read from the bottom up. With
    ``ceiling`` (the generator's own, from the direct runs) nothing above it counts: there the
    generator, not the relay, might be what failed.
    """
    best = 0
    for record in sorted((r for r in records if r.mode == mode), key=lambda r: r.calls):
        if ceiling is not None and record.calls > ceiling:
            break
        if not record.passes():
            break
        best = record.calls
    return best


def generator_ceiling(records: Iterable[RunRecord]) -> int:
    """Largest direct-mode load at which the generator kept its schedule (p99 slip < 1 ms).

    Not cut at the first slip: on a shared host one noisy run below a clean one at a higher
    load is the host, not the generator's limit (which shows as slip at every load above it).
    """
    return max((r.calls for r in records if r.mode == "direct" and r.generator_ok), default=0)


def table(records: Sequence[RunRecord]) -> str:
    """A fixed-width table, one line per run."""
    head = (
        f"{'mode':<10}{'calls':>6}{'pps':>8}{'loss%':>8}{'p50':>8}{'p99':>8}{'p99.9':>8}"
        f"{'max':>8}{'+p99':>8}{'jitter':>8}{'cpu%':>7}{'rss MiB':>9}{'gen p99':>9}  ok"
    )
    lines = [head, "-" * len(head)]
    for r in records:
        rss = sum(r.rss_mib.values())
        lines.append(
            f"{r.mode:<10}{r.calls:>6}{r.pps:>8.0f}{r.loss_pct:>8.3f}{r.latency_us.p50:>8.1f}"
            f"{r.latency_us.p99:>8.1f}{r.latency_us.p999:>8.1f}{r.latency_us.max:>8.0f}"
            f"{r.added_latency_us.p99:>8.1f}{r.jitter_us:>8.1f}{r.media_cpu_pct:>7.1f}"
            f"{rss:>9.1f}{r.generator_slip_us.p99:>9.1f}  "
            f"{'yes' if r.passes() else ('gen' if not r.generator_ok else 'no')}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- SVG

_COLOURS = {"gateway": "#1f77b4", "rtpengine": "#d62728", "direct": "#7f7f7f"}
_FALLBACK = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2")


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def line_chart(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    *,
    x_label: str,
    y_label: str,
    width: int = 540,
    height: int = 300,
    threshold: float | None = None,
    log_y: bool = False,
) -> str:
    """An SVG line chart of ``series`` (name → points), with an optional dashed threshold."""
    left, right, top, bottom = 64, 120, 30, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [x for pts in series.values() for x, _ in pts] or [0.0, 1.0]
    ys = [y for pts in series.values() for _, y in pts] or [0.0, 1.0]
    if threshold is not None:
        ys.append(threshold)
    x_max = _nice_max(max(xs))
    if log_y:
        y_lo = 10 ** math.floor(math.log10(max(min(y for y in ys if y > 0) if any(ys) else 1, 0.1)))
        y_hi = 10 ** math.ceil(math.log10(max(max(ys), y_lo * 10)))
    else:
        y_lo, y_hi = 0.0, _nice_max(max(ys))

    def sx(x: float) -> float:
        return left + plot_w * x / x_max

    def sy(y: float) -> float:
        if log_y:
            y = max(y, y_lo)
            frac = (math.log10(y) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo))
        else:
            frac = (y - y_lo) / (y_hi - y_lo)
        return top + plot_h * (1 - frac)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="18" font-size="13" font-weight="bold">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#999"/>',
    ]
    ticks = (
        [y_lo * 10**i for i in range(round(math.log10(y_hi / y_lo)) + 1)]
        if log_y
        else [y_hi * i / 5 for i in range(6)]
    )
    for t in ticks:
        y = sy(t)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>'
        )
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
    for i in range(6):
        x = x_max * i / 5
        out.append(
            f'<text x="{sx(x):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{x:g}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">'
        f"{html.escape(x_label)}</text>"
    )
    out.append(
        f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2})">{html.escape(y_label)}</text>'
    )
    if threshold is not None:
        y = sy(threshold)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
            'stroke="#e69500" stroke-dasharray="5,4"/>'
        )
    for index, (name, pts) in enumerate(series.items()):
        colour = _COLOURS.get(name, _FALLBACK[index % len(_FALLBACK)])
        pts = sorted(pts)
        if pts:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
            for x, y in pts:
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>')
        ly = top + 14 + 16 * index
        out.append(
            f'<line x1="{left + plot_w + 10}" y1="{ly - 4}" x2="{left + plot_w + 28}" '
            f'y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>'
        )
        out.append(f'<text x="{left + plot_w + 32}" y="{ly}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def standard_charts(records: Sequence[RunRecord]) -> list[str]:
    """The report's plots: latency p99 and p50, loss, jitter and CPU against calls."""
    modes = list(dict.fromkeys(r.mode for r in records))

    def series(value: Any) -> dict[str, list[tuple[float, float]]]:
        return {m: [(r.calls, value(r)) for r in records if r.mode == m] for m in modes}

    return [
        line_chart(
            "Added one-way latency, p99",
            series(lambda r: max(r.added_latency_us.p99, 0.1)),
            x_label="concurrent calls",
            y_label="µs (log)",
            threshold=MAX_P99_ADDED_US,
            log_y=True,
        ),
        line_chart(
            "One-way latency, p50",
            series(lambda r: r.latency_us.p50),
            x_label="concurrent calls",
            y_label="µs",
        ),
        line_chart(
            "Packet loss",
            series(lambda r: r.loss_pct),
            x_label="concurrent calls",
            y_label="%",
            threshold=MAX_LOSS_PCT,
        ),
        line_chart(
            "RFC 3550 interarrival jitter (mean of streams)",
            series(lambda r: r.jitter_us),
            x_label="concurrent calls",
            y_label="µs",
        ),
        line_chart(
            "CPU of the media path (keeper: idle time)",
            {
                **series(lambda r: r.media_cpu_pct),
                **{
                    f"{m} keeper": points
                    for m, points in series(lambda r: r.keeper_cpu_pct).items()
                    if any(y > 0 for _, y in points)
                },
            },
            x_label="concurrent calls",
            y_label="% of one core",
            threshold=100.0,
        ),
    ]


def html_page(title: str, intro: str, sections: list[tuple[str, str]], verdict: str) -> str:
    """A self-contained HTML page: ``sections`` are (heading, HTML body); verdict last."""
    body = [f"<h1>{html.escape(title)}</h1>", intro]
    for heading, content in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>\n{content}")
    body.append(f'<p class="verdict">{html.escape(verdict)}</p>')
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:24px;max-width:1120px;color:#222}"
        "table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
        "th{background:#f3f3f3}.charts svg{margin:6px 10px 6px 0}"
        ".verdict{font-size:18px;font-weight:bold;padding:12px;background:#eef6ee;"
        "border:1px solid #8b8}.bad{color:#b00}"
        "</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def html_table(records: Sequence[RunRecord]) -> str:
    """The runs as an HTML table."""
    head = (
        "<tr><th>mode</th><th>calls</th><th>packets/s</th><th>loss %</th><th>p50 µs</th>"
        "<th>p99 µs</th><th>p99.9 µs</th><th>max µs</th><th>added p99 µs</th>"
        "<th>jitter µs</th><th>media CPU %</th><th>RSS MiB</th><th>generator slip p99 µs</th>"
        "<th>pass</th></tr>"
    )
    rows = [head]
    for r in records:
        ok = "yes" if r.passes() else ("generator" if not r.generator_ok else "no")
        cls = "" if r.passes() else ' class="bad"'
        rows.append(
            f"<tr><td>{html.escape(r.mode)}</td><td>{r.calls}</td><td>{r.pps:.0f}</td>"
            f"<td>{r.loss_pct:.3f}</td><td>{r.latency_us.p50:.1f}</td>"
            f"<td>{r.latency_us.p99:.1f}</td><td>{r.latency_us.p999:.1f}</td>"
            f"<td>{r.latency_us.max:.0f}</td><td>{r.added_latency_us.p99:.1f}</td>"
            f"<td>{r.jitter_us:.1f}</td><td>{r.media_cpu_pct:.1f}</td>"
            f"<td>{sum(r.rss_mib.values()):.1f}</td><td>{r.generator_slip_us.p99:.1f}</td>"
            f"<td{cls}>{ok}</td></tr>"
        )
    return "<table>" + "\n".join(rows) + "</table>"
