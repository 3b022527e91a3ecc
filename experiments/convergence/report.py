"""Tables and plots of the five studies at convergence (experiments/convergence/config.py).

    python experiments/convergence/report.py workdirs/convergence_lr workdirs/convergence \
        workdirs/convergence_eval [--out=experiments/convergence]

Prints, in Markdown: the learning-rate grid (held-out NLL at the last step and its minimum,
the rate picked per size, the 6000-step check), then one table per claim of PAPER.md §5
(mean ± s.e. over seeds; "s.e." differences are in units of the combined standard error of
two independent means). Writes `grid.csv`, `results.csv` (every run at its last step),
`lr_grid.png` (the grid's held-out NLL curves), `nll_curves.png` (study 1's and the small
data sets' held-out NLL) and `budgets.png` (validity and Self-BLEU against λ and β at 1000
steps, from experiments/lambda_entropy, and at this budget).
"""

import csv
import math
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from irl_lm import report  # noqa: E402
from irl_lm.config_utils import format_value  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
STUDY_1_1000 = os.path.join(HERE, "..", "lambda_entropy", "groups.csv")
NLL = ("validation/iqlearn/nll", "validation/mle_entropy/nll")
EXPERT = {
    "expert/validity": ("validity", 3),
    "expert/forward_kl": ("forward KL", 3),
    "expert/reverse_kl": ("reverse KL", 4),
    "expert/self_bleu": ("Self-BLEU", 1),
}
REWARD = {
    "reward/spearman_expert_log_prob": "ρ(R, log p_E) pooled",
    "reward/logprob_spearman_expert_log_prob": "ρ(log π, log p_E) pooled",
    "reward/within_spearman_expert_log_prob": "ρ(R, log p_E) within input",
    "reward/logprob_within_spearman_expert_log_prob": "ρ(log π, log p_E) within input",
    "reward/spearman_validity": "ρ(R, validity) pooled",
    "reward/logprob_spearman_validity": "ρ(log π, validity) pooled",
}


def nll(point) -> float:
    return next((point.scalars[k] for k in NLL if k in point.scalars), math.nan)


def loss_of(point) -> str:
    """ "mle", "lam=0.1", "beta=0.01" or "online"."""
    o = point.overrides
    if "loss.alpha" in o:
        return "online"
    if "loss.beta" in o:
        return f"beta={format_value(o['loss.beta'])}"
    return "mle" if o.get("loss.lam", 0) == 0 else f"lam={format_value(o['loss.lam'])}"


def label(loss: str) -> str:
    return {"mle": "MLE", "online": "IQLearn online λ = 0.1, α = 0.1"}.get(
        loss, loss.replace("lam=", "IQLearn λ = ").replace("beta=", "MLE + entropy β = ")
    )


def by(points, key):
    """key(point) -> [finished points], in first-seen order."""
    out = {}
    for p in points:
        if p.status == "done":
            out.setdefault(key(p), []).append(p)
    return out


def values(points, scalar):
    return [nll(p) if scalar == "nll" else p.scalars.get(scalar, math.nan) for p in points]


def cell(points, scalar, digits=3):
    return report.mean_sem_text(*report.mean_sem(values(points, scalar)), digits)


def z(a, b, scalar) -> str:
    """a − b ± combined s.e., and the difference in s.e."""
    return z_values(values(a, scalar), values(b, scalar))


def z_values(a, b) -> str:
    if not (len(a) > 1 and len(b) > 1):
        return "–"
    (ma, sa), (mb, sb) = report.mean_sem(a), report.mean_sem(b)
    se = math.hypot(sa, sb)
    if se == 0:
        return f"{ma - mb:+.3g} (s.e. 0)"
    return f"{ma - mb:+.3g} ({(ma - mb) / se:+.1f} s.e.)"


def nll_curve(events) -> list[tuple[int, float]]:
    """A run's held-out NLL per evaluation, [(step, value)], from its event files."""
    return next((events[f"eval/{k}"] for k in NLL if f"eval/{k}" in events), [])


def at_lowest_nll(events) -> dict:
    """Early stopping on the held-out NLL: its lowest value, the step, and the expert
    evaluator's validity and forward KL at that step."""
    step, lowest = min(nll_curve(events), key=lambda sv: sv[1])
    at = {
        k: dict(events.get(f"eval/expert/{k}", [])).get(step, math.nan)
        for k in ("validity", "forward_kl")
    }
    return {"nll": lowest, "step": step, **at}


def grid_section(points, out):
    runs = {
        (
            p.overrides["model.d_model"],
            p.overrides["optimizer.learning_rate"],
            p.overrides["total_steps"],
        ): p
        for p in points
    }
    rows, csv_rows, picked = [], [], {}
    steps = max(t for _, _, t in runs)
    base = min(t for _, _, t in runs)
    events = {k: report.read_scalar_events(p.workdir) for k, p in runs.items()}
    for (d, lr, total), p in sorted(runs.items()):
        curve = nll_curve(events[(d, lr, total)])
        best_step, best = min(curve, key=lambda sv: sv[1]) if curve else (None, math.nan)
        rows.append(
            [
                d,
                format_value(lr),
                total,
                f"{nll(p):.4f}",
                f"{best:.4f} @ {best_step}",
                f"{p.scalars['expert/validity']:.3f}",
            ]
        )
        csv_rows.append([d, lr, total, nll(p), best, best_step, p.scalars["expert/validity"]])
        if total == base and nll(p) < picked.get(d, (math.inf, None))[0]:
            picked[d] = (nll(p), lr)
    with open(os.path.join(out, "grid.csv"), "w") as f:
        f.write(
            report._csv(
                ["d_model", "lr", "steps", "final_nll", "min_nll", "min_step", "validity"], csv_rows
            )
        )
    print(f"## Learning rate per size (MLE, seed 0, {base} steps; held-out NLL)\n")
    header = ["d_model", "lr", "steps", "held-out NLL, last", "lowest (step)", "validity"]
    print(report._md(header, rows) + "\n")
    print(
        "Picked (lowest held-out NLL at the last step): "
        + ", ".join(f"d_model {d}: {format_value(lr)}" for d, (_, lr) in sorted(picked.items()))
        + "\n"
    )
    if steps > base:
        long = [k for k in runs if k[2] == steps][0]
        short = runs[(long[0], long[1], base)]
        print(
            f"Plateau check (d_model {long[0]}, lr {format_value(long[1])}): held-out NLL "
            f"{nll(short):.4f} after {base} steps, {nll(runs[long]):.4f} after {steps}; "
            f"validity {short.scalars['expert/validity']:.3f} → "
            f"{runs[long].scalars['expert/validity']:.3f}\n"
        )
    floor = next(iter(runs.values())).reference.get("expert/entropy", math.nan)
    grid_plot(events, floor, os.path.join(out, "lr_grid.png"))


def grid_plot(events, floor, path):
    """Held-out NLL curves per size, one line per rate; `floor`: the expert's entropy per
    token (an NLL no model can beat on average)."""
    import matplotlib.pyplot as plt

    sizes = sorted({d for d, _, _ in events})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), dpi=110, sharey=True)
    rates = sorted({lr for _, lr, _ in events})
    for ax, d in zip(np.atleast_1d(axes), sizes, strict=True):
        for (dd, lr, total), tags in sorted(events.items()):
            curve = nll_curve(tags)
            if dd != d or not curve:
                continue
            s, v = zip(*curve, strict=True)
            long = total > min(t for _, _, t in events)
            ax.plot(
                s,
                v,
                "--" if long else "o-",
                markersize=3,
                color=f"C{rates.index(lr)}",
                label=f"lr {format_value(lr)}"
                + (f", {total} steps" if long else "")
                + (f" (ends at {v[-1]:.2f}, off the axis)" if min(v) > 2 else ""),
            )
        ax.axhline(floor, color="k", lw=0.8, ls=":", label=f"expert's entropy {floor:.3f}")
        ax.set_title(f"d_model {d}")
        ax.set_xlabel("training step")
        ax.set_ylim(top=2.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("held-out NLL (nats/token; clipped at 2)")
    fig.suptitle("MLE on the exact expert, seed 0: held-out NLL by learning rate")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv):
    if len(argv) != 4:
        raise app.UsageError("usage: report.py GRID_DIR TRAIN_DIR EVAL_DIR [--out=DIR]")
    out = flags.FLAGS.out
    os.makedirs(out, exist_ok=True)
    _, grid = report.load_points(argv[1])
    grid_section([p for p in grid if p.status == "done"], out)

    _, train = report.load_points(argv[2])
    _, evaluated = report.load_points(argv[3])
    every = [p for p in train + evaluated if p.status == "done"]
    fields = report.swept_fields(every)
    scalars = report.scalar_names(every)
    with open(os.path.join(out, "results.csv"), "w") as f:
        f.write(report.results_tables(every, fields, scalars, [])[0])
    runs = by(
        train,
        lambda p: (
            loss_of(p),
            p.overrides["model.d_model"],
            p.overrides["task.num_train_examples"],
        ),
    )
    print(f"{sum(map(len, runs.values()))} training runs, {len(every)} runs in all\n")
    d0, n0 = 64, 20_000
    mle = runs.get(("mle", d0, n0), [])

    print("## Claim 1: IQLearn's λ and MLE + entropy's β (d_model 64, 20k examples)\n")
    rows = []
    for (loss, d, n), ps in runs.items():
        if (d, n) != (d0, n0):
            continue
        rows.append(
            [
                label(loss),
                len(ps),
                *(cell(ps, s, k) for s, (_, k) in EXPERT.items()),
                cell(ps, "nll", 4),
                *(
                    z(ps, mle, s) if loss != "mle" else ""
                    for s in ("expert/validity", "expert/self_bleu", "expert/reverse_kl")
                ),
            ]
        )
    header = [
        "loss",
        "seeds",
        *(n for n, _ in EXPERT.values()),
        "held-out NLL",
        "validity − MLE",
        "Self-BLEU − MLE",
        "reverse KL − MLE",
    ]
    print(report._md(header, rows) + "\n")

    print("## Claim 2: model size (20k examples; each size at its picked rate)\n")
    rows = []
    for loss in ("mle", "lam=0.1"):
        sizes = sorted(d for (l_, d, n) in runs if l_ == loss and n == n0)
        for i, d in enumerate(sizes):
            ps = runs[(loss, d, n0)]
            prev = runs[(loss, sizes[i - 1], n0)] if i else None
            rows.append(
                [
                    label(loss),
                    d,
                    len(ps),
                    *(cell(ps, s, k) for s, (_, k) in EXPERT.items()),
                    cell(ps, "nll", 4),
                    z(ps, prev, "expert/validity") if prev else "",
                    z(ps, prev, "expert/self_bleu") if prev else "",
                ]
            )
    header = [
        "loss",
        "d_model",
        "seeds",
        *(n for n, _ in EXPERT.values()),
        "held-out NLL",
        "validity − previous size",
        "Self-BLEU − previous size",
    ]
    print(report._md(header, rows) + "\n")

    decoding = by(
        evaluated,
        lambda p: (
            loss_of(p),
            p.overrides.get("evals.expert.method"),
            p.overrides.get("evals.expert.temperature"),
        ),
    )
    if any(k[1] for k in decoding):
        print("## Claim 3: decoding study 1's checkpoints\n")
        rows = []
        for (loss, method, t), ps in decoding.items():
            if not method:
                continue
            ref = decoding.get(("mle", method, t), [])
            name = method if method != "temperature" else f"T = {format_value(t)}"
            rows.append(
                [
                    label(loss),
                    name,
                    len(ps),
                    *(cell(ps, s, k) for s, (_, k) in EXPERT.items() if "forward" not in s),
                    z(ps, ref, "expert/validity") if loss != "mle" else "",
                    z(ps, ref, "expert/reverse_kl") if loss != "mle" else "",
                ]
            )
        header = [
            "loss",
            "decoder",
            "seeds",
            "validity",
            "reverse KL",
            "Self-BLEU",
            "validity − MLE",
            "reverse KL − MLE",
        ]
        print(report._md(header, rows) + "\n")
        rows = []
        for loss in dict.fromkeys(k[0] for k in decoding if k[1]):
            beam = decoding.get((loss, "beam", 0.0), [])
            sample = decoding.get((loss, "temperature", 1.0), [])
            gains = [
                b.scalars["expert/validity"] - s.scalars["expert/validity"]
                for b, s in zip(
                    sorted(beam, key=lambda p: p.overrides["seed"]),
                    sorted(sample, key=lambda p: p.overrides["seed"]),
                    strict=True,
                )
            ]
            rows.append([label(loss), report.mean_sem_text(*report.mean_sem(gains))])
        print(report._md(["loss", "validity: beam 4 − T = 1 (paired by seed)"], rows) + "\n")

    print("## Claim 4: training-set size (d_model 64)\n")
    print(
        "Early stopping on the held-out NLL: each run's lowest value, and the expert "
        "evaluator's validity and forward KL at that step (128 inputs × 4 samples).\n"
    )
    early = {}
    rows = []
    order = ("mle", "lam=0.1", "beta=0.01")
    rank = {loss: i for i, loss in enumerate(order)}
    for (loss, d, n), ps in sorted(runs.items(), key=lambda kv: (kv[0][2], rank.get(kv[0][0], 9))):
        if d != d0 or loss not in order:
            continue
        stopped = [at_lowest_nll(report.read_scalar_events(p.workdir)) for p in ps]
        early[loss, n] = stopped
        ref = early.get(("mle", n), [])
        mle = runs.get(("mle", d, n), [])

        def col(key, runs_=stopped):
            return [r[key] for r in runs_]

        rows.append(
            [
                n,
                label(loss),
                len(ps),
                cell(ps, "nll", 3),
                f"{report.mean_sem_text(*report.mean_sem(col('nll')), 3)} "
                f"(step {np.mean(col('step')):.0f})",
                cell(ps, "expert/validity"),
                report.mean_sem_text(*report.mean_sem(col("validity"))),
                report.mean_sem_text(*report.mean_sem(col("forward_kl"))),
                z(ps, mle, "nll") if loss != "mle" else "",
                z_values(col("nll"), col("nll", ref)) if loss != "mle" else "",
                z_values(col("validity"), col("validity", ref)) if loss != "mle" else "",
            ]
        )
    header = [
        "examples",
        "loss",
        "seeds",
        "held-out NLL, last",
        "lowest (mean step)",
        "validity, last",
        "validity at the lowest NLL",
        "forward KL at the lowest NLL",
        "last NLL − MLE",
        "lowest NLL − MLE",
        "validity at lowest − MLE",
    ]
    print(report._md(header, rows) + "\n")

    reward = by([p for p in evaluated if "evals.expert.method" not in p.overrides], loss_of)
    if reward:
        print("## Claim 5: the extracted reward (128 inputs × 8 samples, γ = 0.99)\n")
        rows = []
        for loss, ps in reward.items():
            rows.append(
                [
                    label(loss),
                    len(ps),
                    *(cell(ps, s) for s in REWARD),
                    z(ps, reward.get("mle", []), next(iter(REWARD))) if loss != "mle" else "",
                ]
            )
        print(report._md(["loss", "seeds", *REWARD.values(), "pooled ρ(R) − MLE"], rows) + "\n")

    nll_plot(runs, os.path.join(out, "nll_curves.png"))
    budget_plot(runs, os.path.join(out, "budgets.png"))


def mean_curve(ps):
    series = []
    for p in ps:
        curve = nll_curve(report.read_scalar_events(p.workdir))
        if curve:
            series.append(dict(curve))
    if not series:
        return [], [], []
    steps = sorted(set.intersection(*(set(s) for s in series)))
    v = np.array([[s[t] for t in steps] for s in series])
    sem = v.std(0, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else np.zeros(len(steps))
    return steps, v.mean(0), sem


def nll_plot(runs, path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9), dpi=110)
    panels = [
        (
            "20k examples",
            [
                ("mle", 20_000),
                ("lam=0.03", 20_000),
                ("lam=0.1", 20_000),
                ("lam=1", 20_000),
                ("beta=0.01", 20_000),
                ("beta=0.3", 20_000),
            ],
        ),
    ] + [
        (f"{n:,} examples", [(loss, n) for loss in ("mle", "lam=0.1", "beta=0.01")])
        for n in (4000, 1000, 250)
    ]
    for ax, (title, lines) in zip(axes.flat, panels, strict=True):
        for i, (loss, n) in enumerate(lines):
            steps, mean, sem = mean_curve(runs.get((loss, 64, n), []))
            if not steps:
                continue
            ax.plot(steps, mean, "o-", markersize=2, color=f"C{i}", label=label(loss))
            ax.fill_between(steps, mean - sem, mean + sem, color=f"C{i}", alpha=0.2)
        ax.set_title(f"{title} (mean ± s.e., 3 seeds)")
        ax.set_xlabel("training step")
        ax.set_ylabel("held-out NLL (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def budget_plot(runs, path):
    """Validity and Self-BLEU against λ (and β) at 1000 steps and at this budget."""
    import matplotlib.pyplot as plt

    before = {}
    if os.path.exists(STUDY_1_1000):
        with open(STUDY_1_1000) as f:
            for row in csv.DictReader(f):
                kind = "lam" if row["loss.lam"] else "beta"
                before[(kind, float(row[f"loss.{kind}"] or 0))] = row
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for ax, (scalar, name) in zip(
        axes, [("expert/validity", "validity"), ("expert/self_bleu", "Self-BLEU")], strict=True
    ):
        for kind, marker in (("lam", "o"), ("beta", "s")):
            symbol = "λ" if kind == "lam" else "β"
            old = sorted((v, r) for (k, v), r in before.items() if k == kind)
            if old:
                ax.errorbar(
                    [v for v, _ in old],
                    [float(r[f"{scalar}_mean"]) for _, r in old],
                    [float(r[f"{scalar}_sem"]) for _, r in old],
                    fmt=marker + "--",
                    capsize=3,
                    color="C0" if kind == "lam" else "C2",
                    alpha=0.6,
                    label=f"{symbol}, 1000 steps",
                )
            new = sorted(
                (float(loss.split("=")[1]) if "=" in loss else 0.0, ps)
                for (loss, d, n), ps in runs.items()
                if (d, n) == (64, 20_000) and (loss.startswith(kind) or loss == "mle")
            )
            if new:
                m, s = zip(*(report.mean_sem(values(ps, scalar)) for _, ps in new), strict=True)
                ax.errorbar(
                    [v for v, _ in new],
                    m,
                    np.nan_to_num(s),
                    fmt=marker + "-",
                    capsize=3,
                    color="C1" if kind == "lam" else "C3",
                    label=f"{symbol}, 3000 steps",
                )
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("λ (IQLearn) or β (MLE + entropy); 0 is MLE")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Study 1 at two budgets (d_model 64, 20k examples; mean ± s.e., 3 seeds)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    flags.DEFINE_string("out", HERE, "Output folder.")  # here: tests import this module
    app.run(main)
