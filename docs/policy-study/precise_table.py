"""The precise-policy table of docs/policy-study.md, from the sweeps `precise.sh` runs.

Usage: python docs/policy-study/precise_table.py STUDY_DIR OUT_DIR
Reads every `STUDY_DIR/<sweep>/<job>/result.json`, averages each (scenario, policy) over its jobs
(target positions and seeds), prices the checks at 10 and at 100 ms (the objective's weight; the
runs do not depend on it, so one run serves both), and writes OUT_DIR/precise.csv, precise.md (the
table) and precise.png (precise's objective over the best of the other presets).
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

WEIGHTS = (10, 100)
OTHERS = ("default", "steady", "thrifty")
POLICIES = (*OTHERS, "precise")
METRICS = (
    "detection_latency_ms",
    "recovery_latency_ms",
    "checks_spent",
    "undetected_episodes",
    "unrecovered_repairs",
)


def load(study: Path) -> tuple[dict[tuple[str, str], dict[str, float]], list[str], int]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    order: list[str] = []
    failed = 0
    for path in sorted(study.glob("*/*/result.json")):
        record = json.loads(path.read_text())
        if record.get("status") != "completed":
            failed += 1
            continue
        scenario, policy = record["scenario"], record["choices"]["policy"]
        if scenario not in order:
            order.append(scenario)
        groups[(scenario, policy)].append(record)
    means: dict[tuple[str, str], dict[str, float]] = {}
    for key, records in groups.items():
        row = {m: sum(r["metrics"][m] or 0 for r in records) / len(records) for m in METRICS}
        weight_rec = records[0].get("objective_formula", "").split(" + ")[1].split(" ")[0]
        row["jobs"] = len(records)
        for w in WEIGHTS:
            row[f"objective_w{w}"] = (
                row["detection_latency_ms"]
                + float(weight_rec) * row["recovery_latency_ms"]
                + w * row["checks_spent"]
            )
        means[key] = row
    return means, order, failed


def main(study: Path, out: Path) -> None:
    means, order, failed = load(study)
    rows, ratios = [], {}
    for scenario in order:
        for w in WEIGHTS:
            best = min(OTHERS, key=lambda p: means[(scenario, p)][f"objective_w{w}"])
            ratio = (
                means[(scenario, "precise")][f"objective_w{w}"] / means[(scenario, best)][f"objective_w{w}"]
            )
            ratios[(scenario, w)] = (ratio, best)
        for policy in POLICIES:
            m = means[(scenario, policy)]
            rows.append({"scenario": scenario, "policy": policy, **{k: round(v, 2) for k, v in m.items()}})
    with open(out / "precise.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| scenario | jobs | precise: checks | detect ms | recover ms | w=10: precise / best (best) "
        "| w=100: precise / best (best) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in order:
        p = means[(scenario, "precise")]
        cells = []
        for w in WEIGHTS:
            ratio, best = ratios[(scenario, w)]
            mark = "**" if ratio <= 1.05 else ""
            cells.append(f"{mark}{ratio:.2f}{mark} ({best} {means[(scenario, best)][f'objective_w{w}']:.0f})")
        lines.append(
            f"| {scenario} | {int(p['jobs'])} | {p['checks_spent']:.0f} | {p['detection_latency_ms']:.0f} "
            f"| {p['recovery_latency_ms']:.0f} | {cells[0]} | {cells[1]} |"
        )
    lines.append("")
    lines.append(
        "| scenario | policy | checks | detect ms | undet | recover ms | unrecovered "
        "| objective w=10 | w=100 |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['policy']} | {r['checks_spent']:.0f} | {r['detection_latency_ms']:.0f} "
            f"| {r['undetected_episodes']:.2f} | {r['recovery_latency_ms']:.0f} "
            f"| {r['unrecovered_repairs']:.2f} "
            f"| {r['objective_w10']:.0f} | {r['objective_w100']:.0f} |"
        )
    if failed:
        lines.append(f"\n{failed} jobs failed (see their result.json).")
    (out / "precise.md").write_text("\n".join(lines) + "\n")
    _plot(order, ratios, out / "precise.png")
    print("\n".join(lines))


def _plot(order: list[str], ratios: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.38
    for i, w in enumerate(WEIGHTS):
        xs = [k + (i - 0.5) * width for k in range(len(order))]
        ax.bar(xs, [ratios[(s, w)][0] for s in order], width, label=f"check weight {w}")
    ax.axhline(1.05, color="k", linestyle="--", linewidth=1, label="target 1.05")
    ax.axhline(0.8, color="grey", linestyle=":", linewidth=1, label="target 0.8 (mixed faults)")
    ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
    ax.set_ylabel("precise objective / best of default, steady, thrifty")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
