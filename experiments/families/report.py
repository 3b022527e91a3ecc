"""Tables and plots of the two-family sweep (experiments/families/config.py).

    python experiments/families/report.py workdirs/families [--out=experiments/families]

Prints, in Markdown: every family × loss at its last step (mean ± s.e. over seeds); each
loss's change against its family's MLE, paired by seed, and the difference of those changes
between the families (T5 minus decoder-only, with the combined standard error); GAIL's
stability per seed (start = the MLE checkpoint it fine-tunes, end, discriminator accuracy,
reward scale and KL to the reference over training). Writes `results.csv`, `gail.csv`,
`gail_curves.png` and `nll_curves.png` (held-out NLL of every loss, the budget's plateau).
"""

import os
import sys

import numpy as np
from absl import app, flags
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from irl_lm import files, report  # noqa: E402

_OUT = flags.DEFINE_string("out", os.path.dirname(os.path.abspath(__file__)), "Output folder.")

MEASURES = {
    "expert/validity": "validity",
    "expert/forward_kl": "forward KL",
    "expert/reverse_kl": "reverse KL",
    "expert/self_bleu": "Self-BLEU",
}
LOSS_LABELS = {
    "mle": "MLE",
    "entropy=0.03": "MLE + entropy β = 0.03",
    "lam=0.03": "IQLearn λ = 0.03",
    "lam=0.1": "IQLearn λ = 0.1",
    "online": "IQLearn online λ = 0.1, α = 0.1",
    "gail": "GAIL (500 steps from MLE)",
}
FAMILY_LABELS = {"t5": "T5", "decoder_only": "decoder-only"}
GAIL_TAGS = {
    "train/gail/disc_accuracy_data": "discriminator accuracy, expert tokens",
    "train/gail/disc_accuracy_policy": "discriminator accuracy, policy tokens",
    "train/gail/reward_std": "reward s.d. over sampled tokens",
    "train/gail/kl_to_reference": "KL to the MLE start, per token",
    "eval/expert/forward_kl": "forward KL to the expert",
    "eval/expert/validity": "validity",
}


def runs(points):
    """(family, loss) -> {seed: point} of finished points."""
    out = {}
    for point in points:
        if point.status == "done":
            family, loss, seed = point.name.split(",")
            out.setdefault((family, loss), {})[int(seed.split("=")[1])] = point
    return out


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: report.py SWEEP_DIR [--out=DIR]")
    _, points = report.load_points(argv[1])
    found = runs(points)
    out = _OUT.value
    os.makedirs(out, exist_ok=True)
    families = [f for f in FAMILY_LABELS if any(k[0] == f for k in found)]

    # What a step costs each family (the MLE runs' own accounting).
    print("## Compute\n")
    for family in families:
        for point in list(found.get((family, "mle"), {}).values())[:1]:
            results = files.read_json(os.path.join(point.workdir, "results.json"))
            flops = results["perf"]["model_flops_per_step"]
            print(f"- {FAMILY_LABELS[family]}: {flops / 1e9:.2f} GFLOP per training step (MLE)")
    print()

    # Every run at its last step.
    table, csv_rows = [], []
    for family in families:
        for loss in LOSS_LABELS:
            seeds = found.get((family, loss), {})
            if not seeds:
                continue
            cells = []
            for scalar in MEASURES:
                m, s = report.mean_sem([p.scalars[scalar] for p in seeds.values()])
                cells.append(report.mean_sem_text(m, s, 1 if "bleu" in scalar else 3))
                csv_rows.append([family, loss, scalar, len(seeds), m, s])
            table.append([FAMILY_LABELS[family], LOSS_LABELS[loss], str(len(seeds)), *cells])
    with open(os.path.join(out, "results.csv"), "w") as f:
        f.write(report._csv(["family", "loss", "scalar", "seeds", "mean", "sem"], csv_rows))
    print("## Every run at its last step (mean ± s.e. over seeds)\n")
    print(report._md(["family", "loss", "seeds", *MEASURES.values()], table) + "\n")

    # Each loss against its family's MLE, paired by seed; then T5's change minus the
    # decoder-only's.
    print("## Change against the family's MLE (paired by seed), and T5 minus decoder-only\n")
    table = []
    for loss in [k for k in LOSS_LABELS if k != "mle"]:
        for scalar, label in MEASURES.items():
            changes = {}
            for family in families:
                mle, other = found.get((family, "mle"), {}), found.get((family, loss), {})
                seeds = sorted(set(mle) & set(other))
                changes[family] = [other[s].scalars[scalar] - mle[s].scalars[scalar] for s in seeds]
            stats_ = {f: report.mean_sem(v) for f, v in changes.items()}
            digits = 2 if "bleu" in scalar else 4 if "kl" in scalar else 3
            cells = [report.mean_sem_text(*stats_[f], digits) for f in families]
            if len(families) == 2 and all(len(v) > 1 for v in changes.values()):
                (m1, s1), (m2, s2) = (stats_[f] for f in families)
                diff, se = m1 - m2, float(np.hypot(s1, s2))
                cells += [
                    report.mean_sem_text(diff, se, digits),
                    f"{diff / se:+.1f}" if se > 0 else "–",
                ]
            else:
                cells += ["–", "–"]
            table.append([LOSS_LABELS[loss], label, *cells])
    header = ["loss", "measure", *[f"{FAMILY_LABELS[f]} change" for f in families]]
    print(report._md([*header, "T5 − decoder-only", "in s.e."], table) + "\n")

    # GAIL's stability, per seed.
    events = {}
    gail_rows, table = [], []
    for family in families:
        for seed, point in sorted(found.get((family, "gail"), {}).items()):
            start = found.get((family, "mle"), {}).get(seed)
            tags = events[(family, seed)] = report.read_scalar_events(point.workdir)

            def first_last(tag, tags=tags):
                series = tags.get(tag, [])
                return (series[0][1], series[-1][1]) if series else (np.nan, np.nan)

            row = {
                "family": family,
                "seed": seed,
                **{
                    f"{name}_{when}": (start.scalars if when == "start" else point.scalars)[
                        f"expert/{name}"
                    ]
                    for name in ("validity", "forward_kl", "reverse_kl")
                    for when in ("start", "end")
                    if start is not None or when == "end"
                },
            }
            for tag in GAIL_TAGS:
                if tag.startswith("train/"):
                    row[f"{tag}_first"], row[f"{tag}_last"] = first_last(tag)
            gail_rows.append(row)
            table.append(
                [
                    FAMILY_LABELS[family],
                    str(seed),
                    *[
                        f"{row.get(f'{n}_start', np.nan):.3f} → {row[f'{n}_end']:.3f}"
                        for n in ("validity", "forward_kl", "reverse_kl")
                    ],
                    *[
                        f"{row[f'{t}_first']:.3f} → {row[f'{t}_last']:.3f}"
                        for t in GAIL_TAGS
                        if t.startswith("train/")
                    ],
                ]
            )
    if gail_rows:
        keys = list(gail_rows[0])
        with open(os.path.join(out, "gail.csv"), "w") as f:
            f.write(report._csv(keys, [[r.get(k) for k in keys] for r in gail_rows]))
        header = [
            "family",
            "seed",
            "validity (MLE start → end)",
            "forward KL",
            "reverse KL",
            *[GAIL_TAGS[t] for t in GAIL_TAGS if t.startswith("train/")],
        ]
        print("## GAIL per seed: start → end (training metrics: first logged → last)\n")
        print(report._md(header, table) + "\n")
        print("## Seeds whose GAIL run improves on its MLE start\n")
        for family in families:
            rows = [r for r in gail_rows if r["family"] == family and "validity_start" in r]
            better = {
                "validity": sum(r["validity_end"] > r["validity_start"] for r in rows),
                "forward KL": sum(r["forward_kl_end"] < r["forward_kl_start"] for r in rows),
                "reverse KL": sum(r["reverse_kl_end"] < r["reverse_kl_start"] for r in rows),
            }
            print(
                f"- {FAMILY_LABELS[family]}: "
                + ", ".join(f"{k} {v}/{len(rows)}" for k, v in better.items())
            )
        gail_plot(events, os.path.join(out, "gail_curves.png"))
    nll_plot(found, families, os.path.join(out, "nll_curves.png"))


def gail_plot(events, path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), dpi=110)
    for ax, (tag, label) in zip(axes.flat, GAIL_TAGS.items(), strict=True):
        for (family, seed), tags in sorted(events.items()):
            series = tags.get(tag, [])
            if series:
                color = "C0" if family == "t5" else "C3"
                ax.plot(
                    *zip(*series, strict=True),
                    "o-",
                    ms=2,
                    color=color,
                    alpha=0.5 + 0.25 * (seed % 3) / 2,
                    label=f"{FAMILY_LABELS[family]} seed {seed}",
                )
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("GAIL step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("GAIL from MLE on the exact expert, each seed (blue: T5, red: decoder-only)")
    report._save(fig, path)


def nll_plot(found, families, path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(families), figsize=(6.5 * len(families), 4.5), dpi=110)
    for ax, family in zip(np.atleast_1d(axes), families, strict=True):
        for i, loss in enumerate(k for k in LOSS_LABELS if k != "gail"):
            curves = []
            for point in found.get((family, loss), {}).values():
                tags = report.read_scalar_events(point.workdir)
                nll = next((v for k, v in tags.items() if k.endswith("/nll") and "eval/" in k), [])
                curves.append(dict(nll))
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            values = np.array([[c[s] for s in steps] for c in curves])
            ax.plot(steps, values.mean(0), "o-", ms=3, color=f"C{i}", label=LOSS_LABELS[loss])
            if len(values) > 1:
                sem = stats.sem(values, axis=0, ddof=1)
                ax.fill_between(
                    steps, values.mean(0) - sem, values.mean(0) + sem, color=f"C{i}", alpha=0.2
                )
        ax.set_title(f"{FAMILY_LABELS[family]}: held-out NLL per token (mean ± s.e.)", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    report._save(fig, path)


if __name__ == "__main__":
    app.run(main)
