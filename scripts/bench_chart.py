#!/usr/bin/env python3
"""Draws scripts/bench.sh's CSV as one PNG: python3 scripts/bench_chart.py BENCH.csv OUT.png

Four panels: wall time and bytes on the wire per case (mend vs rsync, log scale), peak RSS
per run, and reconciliation bytes per d (mend vs negentropy, log scale, round trips on the
bars)."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def colour(tool):
    if tool.startswith("disk"):
        return "#969696"
    if tool.startswith("mend verify --full-scan"):
        return "#9ecae1"
    if tool.startswith("mend"):
        return "#2171b5"
    if tool.startswith("negentropy"):
        return "#756bb1"
    if "--fsync" in tool:
        return "#a63603"
    if "default sockets" in tool:
        return "#fdae6b"
    return "#e6550d"


def short(tool):
    return (tool.replace(" (TCP_NODELAY)", "").replace("(default sockets)", "(no NODELAY)")
            .replace(" (redb: fsync)", "").replace(" -a --delete", "")
            .replace(" fingerprints", "").replace("-byte ids", " B ids")
            .replace("disk: dd conv=fdatasync", "disk (dd, fdatasync)"))


def grouped(ax, groups, value, ylabel, log=True, label_fmt=None):
    """groups: [(group name, [row, ...])]; one bar per row, side by side per group, each
    bar named below the axis, its value above it, the group's name under its bars."""
    x = 0.0
    ticks, names, values = [], [], []
    for name, rows in groups:
        start = x
        for r in rows:
            v = value(r)
            if v is None:
                continue
            ax.bar(x, v, width=0.8, color=colour(r["tool"]))
            ax.text(x, v * (1.15 if log else 1.02), label_fmt(r, v), ha="center", va="bottom",
                    fontsize=7)
            ticks.append(x)
            names.append(short(r["tool"]))
            values.append(v)
            x += 1
        if x > start:
            ax.text((start + x - 1) / 2, -0.30, name, transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=9, fontweight="bold")
            x += 0.8
    ax.set_xticks(ticks)
    ax.set_xticklabels(names, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    if log and values:
        ax.set_yscale("log")
        ax.set_ylim(min(values) / 3, max(values) * 8)
    elif values:
        ax.set_ylim(0, max(values) * 1.2)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    rows = list(csv.DictReader(open(src)))
    num = lambda v: float(v) if v not in ("", None) else None  # noqa: E731
    by_section = lambda s: [r for r in rows if r["section"] == s]  # noqa: E731
    cases = [("sparse repair", by_section("sparse")), ("in-sync check", by_section("in-sync")),
             ("bulk", by_section("bulk"))]
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    (a_time, a_bytes), (a_rss, a_rec) = axes

    def time_label(r, v):
        mbs = f"\n{float(r['mb_per_s']):.0f} MB/s" if r["mb_per_s"] else ""
        return f"{v:.2f} s{mbs}"

    grouped(a_time, cases, lambda r: num(r["wall_s"]), "median wall time, s (log)",
            label_fmt=time_label)
    a_time.set_title("Wall time (lower is better)")
    grouped(a_bytes, cases, lambda r: num(r["wire_bytes"]), "bytes on the wire (log)",
            label_fmt=lambda r, v: f"{v / 1e6:.2f}\nMB")
    a_bytes.set_title("Bytes on the wire, both ways (lower is better)")

    rss_rows = [r for r in rows if r["rss_client_kib"] or r["rss_server_kib"]]
    labels = [f"{r['section']}: {short(r['tool'])}" for r in rss_rows]
    ys = range(len(rss_rows))
    client = [num(r["rss_client_kib"]) or 0 for r in rss_rows]
    server = [num(r["rss_server_kib"]) or 0 for r in rss_rows]
    a_rss.barh([y - 0.2 for y in ys], [c / 1024 for c in client], height=0.4, color="#31a354",
               label="client (mend dc/verify; rsync sender)")
    a_rss.barh([y + 0.2 for y in ys], [s / 1024 for s in server], height=0.4, color="#a1d99b",
               label="server (mend nodes, both replicas; rsync daemon)")
    a_rss.set_yticks(list(ys))
    a_rss.set_yticklabels(labels, fontsize=7)
    a_rss.invert_yaxis()
    a_rss.set_xscale("log")
    a_rss.set_xlabel("peak RSS, MiB (log)")
    a_rss.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    a_rss.set_title("Peak memory")

    rec = [r for r in rows if r["section"] == "reconcile"]
    order = []
    for r in rec:
        if r["case"] not in order:
            order.append(r["case"])
    grouped(a_rec, [(c.split(" (")[0] + ("\n(real nodes)" if "real" in c else ""),
                     [r for r in rec if r["case"] == c]) for c in order],
            lambda r: num(r["wire_bytes"]), "bytes (log)",
            label_fmt=lambda r, v: (f"{v / 1e6:,.1f} MB" if v >= 1e7 else f"{v / 1e3:,.1f} kB")
            + f"\n{r['round_trips']} rt")
    n_ids = next((r["n"] for r in rec if "in memory" in r["case"]), "?")
    a_rec.set_title(f"Reconciliation of {n_ids} ids, d differing: mend vs negentropy\n"
                    "(mend: 64-byte ids, one client asking both replicas; negentropy: 32-byte ids)",
                    fontsize=10)

    sparse = by_section("sparse")
    fig.suptitle(f"mend vs rsync vs negentropy: sparse/in-sync N = {sparse[0]['n'] if sparse else '?'} "
                 f"x 1 KiB objects, bulk 64 KiB objects", fontsize=12)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main()
