"""Per-migration figure: pages sent per round as bars, pages dirtied during each round as a line."""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

# A migration's entry of summary["migrations"] (built by cluster.metrics; plain JSON data).
Migration = Mapping[str, Any]


def migration_png(m: Migration) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = m["per_round"]
    xs = list(range(1, len(rounds) + 1))
    sent = [r["pages_sent"] for r in rounds]
    dirty = [r["pages_dirtied"] if r["pages_dirtied"] >= 0 else None for r in rounds]
    colors = ["#4C72B0" if r["live"] else "#C44E52" for r in rounds]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.bar(xs, sent, color=colors, label="pages sent (red: paused final round)")
    dx = [x for x, d in zip(xs, dirty) if d is not None]
    dy = [d for d in dirty if d is not None]
    if dx:
        ax.plot(dx, dy, "o-", color="#55A868", label="pages dirtied during the round")
    ax.set_xlabel("round")
    ax.set_ylabel("pages (4 KiB)")
    ax.set_xticks(xs)
    title = f"{m['domain']}: {m['src']} -> {m['dst']} ({m['policy']}), {m['status']}"
    if m.get("total_ms") is not None:
        title += f"\ntotal {m['total_ms'] / 1000:.2f} s, downtime {m['downtime_ms']:.1f} ms, {m['bytes_sent'] / 1e6:.0f} MB sent"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def round_rows(migrations: Sequence[Migration]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for m in migrations:
        for r in m["per_round"]:
            rows.append(
                {
                    "migration": m["id"],
                    "domain": m["domain"],
                    "policy": m["policy"],
                    "round": r["index"],
                    "live": r["live"],
                    "start_ns": r["start_ns"],
                    "end_ns": r["end_ns"],
                    "pages_sent": r["pages_sent"],
                    "pages_skipped": r["pages_skipped"],
                    "bytes_sent": r["bytes_sent"],
                    "pages_dirtied": r["pages_dirtied"] if r["pages_dirtied"] >= 0 else None,
                    "rate_limit_mbit": r["rate_limit_mbit"],
                }
            )
    return rows
