"""PNG plots of a ``run_stream`` result: quality over time, and quality against update compute."""

from __future__ import annotations

import os

STYLE = {"static": ("tab:gray", "-"), "incremental": ("tab:blue", "-"), "full_retrain": ("tab:red", "-"),
         "last_window": ("tab:orange", "-"), "popularity": ("k", ":")}


def plot_result(result: dict, out_dir: str) -> list[str]:
    """Write ``stream_<dataset>_time.png`` and ``stream_<dataset>_compute.png``; their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = result["config"]["evaluation"]["k"]
    nd = f"ndcg@{k}"
    name = result["dataset"]
    paths = []

    fig, ax = plt.subplots(figsize=(9, 5))
    for s, r in result["strategies"].items():
        color, ls = STYLE.get(s, (None, "--"))
        xs = list(range(1, len(r["windows"]) + 1))
        ax.plot(xs, [w[nd] for w in r["windows"]], ls, color=color, lw=2.2 if s in STYLE else 1.0,
                marker="o" if s in STYLE else None, ms=3, label=f"{s} ({r[nd]:.4f})")
    ax.set_xlabel(f"window (replay of {result['stats']['replay_events']} events after "
                  f"{result['stats']['warmup_end'][:10]})")
    ax.set_ylabel(f"NDCG@{k} (events of the window, before learning them)")
    ax.set_title(f"{name}: prequential NDCG@{k} per window (overall in the legend)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, f"stream_{name}_time.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    for s, r in result["strategies"].items():
        color, _ = STYLE.get(s, ("tab:purple", "--"))
        x = max(r["update_seconds"], 1e-2)  # static and popularity spend (almost) nothing
        ax.scatter([x], [r[nd]], color=color, s=60 if s in STYLE else 25)
        ax.annotate(s, (x, r[nd]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("update compute over the replay (CPU seconds, log scale; floor 0.01)")
    ax.set_ylabel(f"overall NDCG@{k}")
    ax.set_title(f"{name}: quality against update compute")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, f"stream_{name}_compute.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
