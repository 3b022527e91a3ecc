"""Tables and plots of the best-of-N evaluation sweep (experiments/best_of_n/config.py).

    python experiments/best_of_n/plot.py workdirs/best_of_n [--out=experiments/best_of_n]

Writes `best_of.csv` (every policy × ranker × N × measure: mean and standard error over the
seeds), `gamma.csv` (the reward's rank correlations at each γ), the plots
`validity_vs_n.png`, `reverse_kl_vs_n.png`, `forward_kl_vs_n.png` and
`expert_log_prob_vs_n.png` (one panel per policy, one line per ranker; R at γ = 0.99),
and prints the tables in Markdown.
"""

import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from irl_lm import report  # noqa: E402

_OUT = flags.DEFINE_string("out", os.path.dirname(os.path.abspath(__file__)), "Output folder.")

RANKERS = {
    "reward": "R (extracted reward)",
    "logprob": "log π(y)",
    "mean_logprob": "log π(y) / |y|",
    "random": "random",
}
MEASURES = {
    "validity": "validity of the kept sample",
    "expert_log_prob": "log p_E per token (valid kept samples)",
    "reverse_kl": "reverse KL per token, KL(q_N ‖ p_E) (valid)",
    "forward_kl": "forward KL per token, KL(p_E ‖ q_N)",
}
PLOT_GAMMA = "gamma_0_99"
CORRELATIONS = {
    "spearman_validity": "ρ(R, valid) pooled",
    "within_spearman_validity": "ρ(R, valid) within",
    "spearman_expert_log_prob": "ρ(R, log p_E) pooled",
    "within_spearman_expert_log_prob": "ρ(R, log p_E) within",
}


def policy_groups(points):
    """(steps, λ) -> the finished points of that policy, one per seed."""
    groups = {}
    for point in points:
        if point.status != "done":
            continue
        fields = dict(item.split("=") for item in point.name.split(","))
        groups.setdefault((int(fields["steps"]), float(fields["lam"])), []).append(point)
    return dict(sorted(groups.items()))


def policy_label(key) -> str:
    steps, lam = key
    return f"{'MLE' if lam == 0 else f'IQLearn λ={lam:g}'}, {steps} steps"


def seed_stats(points, scalar):
    """Mean and standard error of `scalar` over the points (seeds) that have it."""
    return report.mean_sem([p.scalars[scalar] for p in points if scalar in p.scalars])


def best_of_ns(points) -> list[int]:
    prefix = f"{PLOT_GAMMA}/best_of_"
    found = {
        int(k[len(prefix) :].split("_")[0])
        for p in points
        for k in p.scalars
        if k.startswith(prefix)
    }
    return sorted(found)


def plot(groups, ns, measure, path):
    keys = list(groups)
    steps = sorted({s for s, _ in keys})
    lams = sorted({lam for _, lam in keys})
    fig, _ = report._figure(f"Best-of-N on the exact expert: {MEASURES[measure]}", len(lams))
    fig.clf()
    fig.set_size_inches(4.2 * len(lams), 3.4 * len(steps))
    axes = fig.subplots(len(steps), len(lams), squeeze=False, sharey=True)
    for row, step in enumerate(steps):
        for col, lam in enumerate(lams):
            ax = axes[row][col]
            points = groups.get((step, lam), [])
            for ranker, label in RANKERS.items():
                ys = [
                    seed_stats(points, f"{PLOT_GAMMA}/best_of_{n}_{ranker}_{measure}") for n in ns
                ]
                ax.errorbar(
                    ns,
                    [m for m, _ in ys],
                    yerr=[0 if np.isnan(s) else s for _, s in ys],
                    marker="o",
                    ms=3,
                    capsize=2,
                    label=label,
                    linestyle="--" if ranker == "random" else "-",
                )
            ax.set_xscale("log", base=2)
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.set_title(f"{policy_label((step, lam))} ({len(points)} seeds)", fontsize=9)
            ax.set_xlabel("N (samples per input)")
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(MEASURES[measure], fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        f"Best-of-N on the exact expert: {MEASURES[measure]} (mean ± s.e. over seeds; "
        "R at γ = 0.99)",
        fontsize=10,
    )
    report._save(fig, path)


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: plot.py SWEEP_DIR [--out=DIR]")
    _, points = report.load_points(argv[1])
    groups = policy_groups(points)
    if not groups:
        raise SystemExit(f"{argv[1]}: no finished point yet")
    ns = best_of_ns([p for ps in groups.values() for p in ps])
    gammas = sorted(
        {k.split("/")[0] for ps in groups.values() for p in ps for k in p.scalars},
        key=lambda g: float(g.removeprefix("gamma_").replace("_", ".")),
    )
    out = _OUT.value
    os.makedirs(out, exist_ok=True)

    rows = []
    for key, pts in groups.items():
        for gamma in gammas:
            for ranker in RANKERS:
                for n in ns:
                    for measure in MEASURES:
                        m, s = seed_stats(pts, f"{gamma}/best_of_{n}_{ranker}_{measure}")
                        rows.append([key[0], key[1], gamma, ranker, n, measure, len(pts), m, s])
    header = ["steps", "lam", "gamma", "ranker", "n", "measure", "seeds", "mean", "sem"]
    with open(os.path.join(out, "best_of.csv"), "w") as f:
        f.write(report._csv(header, rows))

    for measure in MEASURES:
        plot(groups, ns, measure, os.path.join(out, f"{measure}_vs_n.png"))

    print("## Best-of-N, R at γ = 0.99 (mean ± s.e. over seeds)\n")
    for measure in ("validity", "expert_log_prob", "reverse_kl", "forward_kl"):
        print(f"### {MEASURES[measure]}\n")
        table = [["policy", "ranker", *[f"N = {n}" for n in ns]]]
        for key, pts in groups.items():
            for ranker in RANKERS:
                table.append(
                    [
                        policy_label(key),
                        ranker,
                        *[
                            report.mean_sem_text(
                                *seed_stats(pts, f"{PLOT_GAMMA}/best_of_{n}_{ranker}_{measure}")
                            )
                            for n in ns
                        ],
                    ]
                )
        print(report._md(table[0], table[1:]) + "\n")

    # R against log π as a ranker, paired by seed: R − log π of the kept samples' validity.
    print("### R minus log π as the ranker (validity of the kept sample; paired over seeds)\n")
    table = [["policy", "γ", *[f"N = {n}" for n in ns[1:]]]]
    for key, pts in groups.items():
        for gamma in gammas:
            cells = []
            for n in ns[1:]:
                diffs = [
                    p.scalars[f"{gamma}/best_of_{n}_reward_validity"]
                    - p.scalars[f"{gamma}/best_of_{n}_logprob_validity"]
                    for p in pts
                ]
                cells.append(report.mean_sem_text(*report.mean_sem(diffs), 4))
            table.append(
                [policy_label(key), gamma.removeprefix("gamma_").replace("_", "."), *cells]
            )
    print(report._md(table[0], table[1:]) + "\n")

    grows, table = [], [["policy", "γ", *CORRELATIONS.values(), "log π: ρ(·, valid) within"]]
    for key, pts in groups.items():
        for gamma in gammas:
            cells = []
            for scalar in CORRELATIONS:
                m, s = seed_stats(pts, f"{gamma}/{scalar}")
                grows.append([key[0], key[1], gamma, scalar, len(pts), m, s])
                cells.append(report.mean_sem_text(m, s))
            m, s = seed_stats(pts, f"{gamma}/logprob_within_spearman_validity")
            grows.append(
                [key[0], key[1], gamma, "logprob_within_spearman_validity", len(pts), m, s]
            )
            cells.append(report.mean_sem_text(m, s))
            table.append(
                [policy_label(key), gamma.removeprefix("gamma_").replace("_", "."), *cells]
            )
    with open(os.path.join(out, "gamma.csv"), "w") as f:
        f.write(report._csv(["steps", "lam", "gamma", "scalar", "seeds", "mean", "sem"], grows))
    print("### The reward's rank correlations against γ\n")
    print(report._md(table[0], table[1:]))


if __name__ == "__main__":
    app.run(main)
