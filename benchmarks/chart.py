"""The chart of a run: deliveries per second and p99 latency per target and scenario (matplotlib PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in report["results"] if "deliveries_per_second" in r]
    loads = sorted({(r["scenario"], r["subscribers"]) for r in measured})
    targets = sorted({r["target"] for r in measured})
    figure, (speed, latency) = plt.subplots(2, 1, figsize=(12, 8), constrained_layout=True)
    width = 0.8 / max(1, len(targets))
    for index, target in enumerate(targets):
        by_load = {(r["scenario"], r["subscribers"]): r for r in measured if r["target"] == target}
        xs = [i + index * width for i in range(len(loads))]
        speed.bar(xs, [by_load.get(k, {}).get("deliveries_per_second", 0) for k in loads], width, label=target)
        latency.bar(xs, [by_load.get(k, {}).get("latency_p99_ms", 0) for k in loads], width, label=target)
    labels = [f"{scenario}\n{subscribers} subs" for scenario, subscribers in loads]
    titles = ((speed, "deliveries per second (higher is better)"), (latency, "p99 latency, ms (lower is better)"))
    for axes, title in titles:
        axes.set_xticks([i + 0.4 - width / 2 for i in range(len(loads))], labels)
        axes.set_title(title)
        axes.grid(axis="y", alpha=0.3)
    latency.set_yscale("log")
    speed.legend(fontsize=8, ncols=3)
    figure.suptitle(f"sse_wsgi and peers, {report['machine']['date'][:10]}")
    figure.savefig(path, dpi=110)
    plt.close(figure)
