"""Latency against eval15 PSNR, one panel per model spec (needs matplotlib: deepfusionnet[train])."""

from __future__ import annotations

from pathlib import Path

from deepfusionnet.errors import DFNError, require


def plot_frontier(result: dict, path: str | Path, size: str | None = None) -> Path:
    """Latency (end-to-end p50) against eval15 PSNR, one panel per model spec (their scores differ by
    dB, the precisions within one by hundredths), one marker per row and a dashed quality/speed frontier."""
    matplotlib = require("matplotlib", "train", "matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["p50_ms"] and r["psnr_eval15"] is not None
            and (size is None or r["size"] == size)]
    if not rows:
        raise DFNError("nothing to plot: no row has both a latency and an eval15 PSNR (pass --quality)")
    models = list(dict.fromkeys(r["model"] for r in rows))
    ncols = min(2, len(models))
    nrows = -(-len(models) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 3.6 * nrows), dpi=110, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for i, m in enumerate(models):
        ax = axes[i // ncols][i % ncols]
        pts = sorted((r for r in rows if r["model"] == m), key=lambda r: r["p50_ms"])
        ax.scatter([r["p50_ms"] for r in pts], [r["psnr_eval15"] for r in pts], color=cmap(i % 10), s=36)
        for k, r in enumerate(pts):  # neighbours in latency get labels at different heights
            label = f"{r['backend']} {r['precision']}" if r["backend"] != "auto" else f"auto: {r['precision']}"
            ax.annotate(label, (r["p50_ms"], r["psnr_eval15"]), fontsize=6.5, xytext=(3, 4 + 9 * (k % 4)),
                        textcoords="offset points", arrowprops={"arrowstyle": "-", "lw": 0.3, "color": "0.6"})
        frontier, best = [], -1e9
        for r in pts:
            if r["psnr_eval15"] > best:
                frontier.append(r)
                best = r["psnr_eval15"]
        ax.plot([r["p50_ms"] for r in frontier], [r["psnr_eval15"] for r in frontier], "--", color=cmap(i % 10),
                lw=0.8)
        lo, hi = min(r["psnr_eval15"] for r in pts), max(r["psnr_eval15"] for r in pts)
        pad = max(0.02, (hi - lo) * 0.3)
        ax.set_ylim(lo - pad, hi + 2.5 * pad)  # head room for the stacked labels
        ax.set_xscale("log")
        ax.set_title(m, fontsize=8)
        ax.set_xlabel(f"end-to-end p50, ms (log){' at ' + size if size else ''}", fontsize=7)
        ax.set_ylabel("eval15 PSNR, dB", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
    for j in range(len(models), nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    cpu = result.get("machine", {}).get("cpu", "")
    fig.suptitle(f"Quality vs speed — {cpu}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
