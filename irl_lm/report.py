"""Reads a sweep back as tables and plots.

    python -m irl_lm.report DIR [--group_by=lam,beta] [--x=expert/validity --y=expert/self_bleu]

Reads every point's `results.json` and TensorBoard events (the points of `DIR/sweep.json`,
else every sub-folder with a `config.json`) and writes into `DIR/report/`:

- `results.csv` / `results.md`: one row per point (its overrides, status, final step, every
  final eval scalar); unfinished points keep their row, marked, with empty values;
- `groups.csv` / `groups.md`: one row per group (points that differ only in `seed`, or in
  what `--group_by` leaves out) with `<scalar>_mean`, `<scalar>_sem` (standard error, ddof 1)
  and `n`;
- `pareto.png`: the task metric against Self-BLEU, by default both of one evaluator (the
  same samples) where one has both, a marker per group with standard-error bars, and the
  expert's reference where the evaluator has one; each axis names its evaluator and what it
  decodes (`--x` / `--y` pick other scalars);
- `curves.png`: learning curves (default: the training loss and the x metric), mean over
  seeds with a standard-error band;
- `<metric>_vs_<field>.png`: the x and y metrics against each swept numeric field.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import textwrap
from collections.abc import Sequence

import numpy as np
from absl import app, flags, logging
from scipy import stats

from irl_lm import files
from irl_lm.config_utils import format_value as _fmt_value
from irl_lm.sweep import SWEEP_FILE

REPORT_DIR = "report"
# Task metrics in the order the x axis takes them by default, with their units.
TASK_METRICS = {
    "validity": "fraction of valid samples",
    "accuracy": "%",
    "rouge1": "0-100",
    "rougeLsum": "0-100",
    "bleu": "0-100",
    "chrf": "0-100",
}
UNITS = TASK_METRICS | {
    "self_bleu": "0-100, lower = more diverse",
    "forward_kl": "nats/token",
    "reverse_kl": "nats/token",
    "entropy": "nats/token",
    "loss": "nats/token",
    "nll": "nats/token",
    "td2": "squared TD error",
    "length": "tokens",
}


@dataclasses.dataclass
class PointResult:
    name: str
    overrides: dict
    config_arg: str | None
    status: str  # "done", or why there are no results (e.g. "unfinished", "failed")
    step: int | None
    scalars: dict[str, float]  # "<evaluator>/<metric>" and steps_per_sec
    reference: dict[str, float]  # the evaluators' ground-truth rows (the expert's own)
    workdir: str


def _flatten(evals: dict) -> dict[str, float]:
    return {f"{ev}/{k}": float(v) for ev, scalars in evals.items() for k, v in scalars.items()}


def load_points(sweep_dir: str) -> tuple[dict, list[PointResult]]:
    """The sweep's info (sweep.json without its points) and every point's results; without
    a sweep.json, every sub-folder holding a config.json is a point."""
    root = files.path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep directory")
    sweep_file = root / SWEEP_FILE
    if sweep_file.exists():
        info = files.read_json(sweep_file)
        listed = info.pop("points", [])
    else:
        info = {}
        listed = [
            {"name": sub.name}
            for sub in sorted(root.iterdir(), key=lambda p: p.name)
            if (sub / "config.json").exists()
        ]
    return info, [_load_point(root / entry["name"], entry) for entry in listed]


def _load_point(workdir, entry: dict) -> PointResult:
    """A point's results when its results.json records a finished run (its config's
    `total_steps` reached), else its status ("unfinished", or the sweep's, e.g. "failed")."""
    config_file = workdir / "config.json"
    results = None
    if config_file.exists():  # (total_steps 0: an evaluation-only run, done at step 0)
        results = files.finished_results(workdir, files.read_json(config_file)["total_steps"])
    status, step, scalars, reference = entry.get("status"), None, {}, {}
    if results:
        status, step = "done", results["step"]
        scalars = _flatten(results["eval"])
        if math.isfinite(results.get("steps_per_sec") or math.nan):  # none when nothing trained
            scalars["steps_per_sec"] = float(results["steps_per_sec"])
        reference = _flatten(results.get("eval_reference", {}))
    elif status in (None, "done", "pending", "running"):
        status = "unfinished"
    overrides = {
        k: tuple(v) if isinstance(v, list) else v  # JSON gave tuples back as lists
        for k, v in (entry.get("overrides") or {}).items()
    }
    return PointResult(
        entry["name"],
        overrides,
        entry.get("config_arg"),
        status,
        step,
        scalars,
        reference,
        str(workdir),
    )


# ----------------------------------------------------------------------------- tables


def swept_fields(points: Sequence[PointResult]) -> list[str]:
    """The override fields, in first-seen order, with "config_arg" first when it varies."""
    fields = list(dict.fromkeys(k for p in points for k in p.overrides))
    if len({p.config_arg for p in points}) > 1:
        fields.insert(0, "config_arg")
    return fields


def _field(point: PointResult, field: str):
    return point.config_arg if field == "config_arg" else point.overrides.get(field)


def _label(field: str) -> str:
    return field.rsplit(".", 1)[-1]


def scalar_names(points: Sequence[PointResult]) -> list[str]:
    return list(dict.fromkeys(k for p in points for k in p.scalars))


def mean_sem(values) -> tuple[float, float]:
    """Mean and standard error (ddof 1); with an infinite value (a reverse KL with no valid
    output, say) the mean is infinite and the standard error undefined (NaN), as it is for
    fewer than 2 values."""
    values = np.asarray(values, np.float64)
    if not len(values):
        return math.nan, math.nan
    finite = np.isfinite(values).all()
    sem = float(stats.sem(values, ddof=1)) if len(values) > 1 and finite else math.nan
    return float(np.mean(values)), sem


def mean_sem_text(mean: float, sem: float, digits: int = 3) -> str:
    """ "0.926 ± 0.005" (no "±" without a standard error; "–" without a mean)."""
    if mean is None or math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(sem) else f"{mean:.{digits}f} ± {sem:.{digits}f}"


@dataclasses.dataclass
class Group:
    key: tuple  # the values of the group-by fields
    label: str  # e.g. "lam=0.3"
    points: list[PointResult]

    def values(self, scalar: str) -> np.ndarray:
        return np.array([p.scalars[scalar] for p in self.points if scalar in p.scalars])

    def mean_sem(self, scalar: str) -> tuple[float, float]:
        return mean_sem(self.values(scalar))

    def infinite(self, scalar: str) -> int:
        return int(np.isinf(self.values(scalar)).sum())


def _group_label(fields, values) -> str:
    """`config_arg,lam=0.3`; a field a point does not set (e.g. β of an IQLearn run) is left
    out."""
    return ",".join(
        str(v) if f == "config_arg" else f"{_label(f)}={_fmt_value(v)}"
        for f, v in zip(fields, values, strict=True)
        if v is not None
    )


def group_points(points: Sequence[PointResult], group_by: Sequence[str]) -> list[Group]:
    """Finished points grouped by the values of `group_by`, in first-seen order; with no
    `group_by` (nothing swept but seeds, or no sweep.json) each point is its own group."""
    groups: dict[tuple, Group] = {}
    for point in points:
        if point.status != "done":
            continue
        if not group_by:
            groups[(point.name,)] = Group((point.name,), point.name, [point])
            continue
        key = tuple(_field(point, f) for f in group_by)
        label = _group_label(group_by, key)
        groups.setdefault(key, Group(key, label, [])).points.append(point)
    return list(groups.values())


def _csv(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(
            [
                ""
                if v is None or (isinstance(v, float) and math.isnan(v))
                else repr(v)
                if isinstance(v, float)
                else v
                for v in row
            ]
        )
    return out.getvalue()


def _md(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4g}"


def results_tables(points, fields, scalars, columns) -> tuple[str, str]:
    """results.csv (every scalar) and results.md (the `columns` scalars)."""

    def row(p, names, fmt):
        step = "" if p.step is None else p.step
        values = [fmt(p.scalars.get(s, math.nan)) for s in names]
        return [p.name, *[_field(p, f) for f in fields], p.status, step, *values]

    header = ["name", *fields, "status", "step"]
    csv_text = _csv([*header, *scalars], [row(p, scalars, float) for p in points])
    return csv_text, _md([*header, *columns], [row(p, columns, _num) for p in points])


def group_tables(groups, group_by, scalars, columns) -> tuple[str, str]:
    """groups.csv (mean and sem of every scalar) and groups.md (the `columns` scalars)."""
    group_by = list(group_by) or ["name"]  # ungrouped: a group per point
    header = [*group_by, "n", *(f"{s}_{k}" for s in scalars for k in ("mean", "sem"))]
    rows = [[*g.key, len(g.points), *(v for s in scalars for v in g.mean_sem(s))] for g in groups]

    def cell(group: Group, scalar: str) -> str:
        mean, sem = group.mean_sem(scalar)
        if group.infinite(scalar):
            return f"{_num(mean)} ({group.infinite(scalar)} of {len(group.values(scalar))} inf)"
        return _num(mean) if math.isnan(sem) else f"{_num(mean)} ± {_num(sem)}"

    md_rows = [
        [*map(_fmt_value, g.key), len(g.points), *(cell(g, s) for s in columns)] for g in groups
    ]
    md = _md([*group_by, "n", *columns], md_rows)
    if any(g.infinite(s) for g in groups for s in columns):
        md += (
            "\n`inf (k of n inf)`: k of the group's n points are infinite (e.g. `reverse_kl` "
            "when no output of a run is valid), so the mean is infinite and has no standard "
            "error.\n"
        )
    return _csv(header, rows), md


# ----------------------------------------------------------------------------- plots


def _spread(n: int) -> str:
    """What a marker or line shows, for its legend entry."""
    return f" (mean ± s.e., n={n})" if n > 1 else " (one run)"


def describe_evaluator(fields: dict) -> str:
    """What an evaluator of `config.evals` measures on, in a few words."""
    kind, split = fields.get("kind", ""), fields.get("split") or "validation"
    method = fields.get("method", "greedy" if kind == "decode" else "temperature")
    if kind == "loss":
        return f"teacher-forced on {split}"
    if kind not in ("decode", "synthetic_expert", "reward"):
        return kind
    if method == "beam":
        how = f"beam search ({fields.get('num_beams', 4)} beams)"
    elif method == "greedy":
        how = "greedy"
    else:
        how = f"samples at temperature {_fmt_value(fields.get('temperature', 1.0))}"
    samples = fields.get("num_decodes") or fields.get("num_samples") or 0
    if method != "greedy" and samples > 1:
        how += f", {samples} per input"
    return f"{how}, {split}"


def _axis_label(metric: str, evals: dict | None = None) -> str:
    """The metric, its unit, and the evaluator it comes from with what that decodes."""
    source, _, name = metric.rpartition("/")  # "eval/decode/rouge1", "validation/mle/nll"
    unit = "Spearman's ρ, -1 to 1" if "spearman" in name else UNITS.get(name)
    label = f"{name} ({unit})" if unit else name
    if not source:
        return label
    fields = (evals or {}).get(source.removeprefix("eval/").split("/")[0])
    where = f"{source}: {describe_evaluator(fields)}" if fields else source
    return f"{label}\n{where}"


def default_axes(scalars: Sequence[str], x: str | None = None) -> tuple[str | None, str | None]:
    """The Pareto plot's (task metric, Self-BLEU), both of one evaluator where one has both
    (the paper plots the two of the same samples), the task metrics in `TASK_METRICS`'s
    order; `x` given: its evaluator's Self-BLEU. Else the first of each, from two."""
    candidates = [x] if x else [s for m in TASK_METRICS for s in scalars if s.endswith("/" + m)]
    for metric in candidates:
        same = f"{metric.rsplit('/', 1)[0]}/self_bleu"
        if same in scalars:
            return metric, same
    y = next((s for s in scalars if s.endswith("/self_bleu")), None)
    return (candidates[0] if candidates else None), y


def _figure(title: str, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(6.4 * ncols, 4.8), dpi=120, squeeze=False)
    fig.suptitle(textwrap.fill(title, width=int(80 * ncols)), fontsize=10)
    return fig, axes[0]


def _save(fig, path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    files.write_bytes(path, buffer.getvalue())


def pareto_plot(groups, x, y, reference, title, path, evals=None) -> None:
    if x.rsplit("/", 1)[0] != y.rsplit("/", 1)[0]:
        title += "  ·  x and y from two evaluators"
    fig, (ax,) = _figure(title)
    for i, g in enumerate(groups):
        (mx, ex), (my, ey) = g.mean_sem(x), g.mean_sem(y)
        drawn = np.isfinite(mx) and np.isfinite(my)
        ax.errorbar(
            mx,
            my,
            xerr=np.nan_to_num(ex),
            yerr=np.nan_to_num(ey),
            fmt="o",
            capsize=3,
            color=f"C{i % 10}",
            label=g.label + _spread(len(g.points)) + ("" if drawn else ": not finite, not drawn"),
        )
        if drawn:
            ax.annotate(g.label, (mx, my), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if x in reference and y in reference:
        ax.plot(reference[x], reference[y], "k*", markersize=12, label="reference (expert)")
    ax.set_xlabel(_axis_label(x, evals))
    ax.set_ylabel(_axis_label(y, evals))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    _save(fig, path)


def read_scalar_events(workdir: str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the workdir's TensorBoard scalars (every event file)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(workdir, size_guidance={"tensors": 0})
    events.Reload()
    out = {}
    for tag in events.Tags()["tensors"]:
        values = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
        if values and values[0][1].dtype != object:
            out[tag] = sorted(dict((s, float(v)) for s, v in values).items())
    return out


def curves_plot(groups, tags, events, title, path, evals=None) -> None:
    fig, axes = _figure(title, ncols=len(tags))
    for ax, tag in zip(axes, tags, strict=True):
        for i, g in enumerate(groups):
            series = [dict(events[p.name].get(tag, [])) for p in g.points]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if not steps:
                continue
            values = np.array([[s[step] for step in steps] for s in series])
            mean = values.mean(0)
            label = g.label + _spread(len(g.points))
            ax.plot(steps, mean, "o-", markersize=3, color=f"C{i % 10}", label=label)
            if len(values) > 1:
                with np.errstate(invalid="ignore"):  # an infinite value: no standard error
                    sem = stats.sem(values, axis=0, ddof=1)
                ax.fill_between(steps, mean - sem, mean + sem, color=f"C{i % 10}", alpha=0.2)
        ax.set_xlabel("training step")
        ax.set_ylabel(_axis_label(tag, evals))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def field_plot(groups, group_by, field, metric, title, path, evals=None) -> None:
    """`metric` against the swept `field`, one line per value of the other group fields."""
    fig, (ax,) = _figure(title)
    index = group_by.index(field)
    lines: dict[tuple, list] = {}
    for g in groups:
        lines.setdefault(g.key[:index] + g.key[index + 1 :], []).append(g)
    xs_all = sorted({float(g.key[index]) for g in groups})
    for i, (rest, members) in enumerate(lines.items()):
        members = sorted(members, key=lambda g: float(g.key[index]))
        xs = [float(g.key[index]) for g in members]
        ms, es = zip(*(g.mean_sem(metric) for g in members), strict=True)
        if np.isnan(ms).all():  # e.g. Self-BLEU of a one-output decoder
            continue
        others = [f for f in group_by if f != field]
        label = (_group_label(others, rest) or metric) + _spread(len(members[0].points))
        infinite = [_fmt_value(x) for x, m in zip(xs, ms, strict=True) if np.isinf(m)]
        if infinite:
            label += f"; inf at {_label(field)}={', '.join(infinite)}, not drawn"
        ax.errorbar(
            xs, ms, yerr=np.nan_to_num(es), fmt="o-", capsize=3, color=f"C{i % 10}", label=label
        )
    positive = [x for x in xs_all if x > 0]
    if positive and max(positive) / min(positive) >= 20:  # a log grid, 0 included (symlog)
        ax.set_xscale("symlog", linthresh=min(positive))
        ax.set_xticks(xs_all, [_fmt_value(x) for x in xs_all])
    ax.set_xlabel(field)
    ax.set_ylabel(_axis_label(metric, evals))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


# ----------------------------------------------------------------------------- the report


def write_report(
    sweep_dir: str,
    *,
    group_by: Sequence[str] | None = None,
    x: str | None = None,
    y: str | None = None,
    curves: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> dict:
    """Writes `sweep_dir/report/`; returns what it wrote and the points it could not use.

    `metrics`: the scalars plotted against each swept field (default: x and y); `columns`:
    the scalars of the .md tables (default: all; the CSV files always hold all)."""
    info, points = load_points(sweep_dir)
    if not points:
        raise ValueError(f"{sweep_dir}: no {SWEEP_FILE} and no sub-folder with a config.json")
    fields = swept_fields(points)
    if group_by is None:
        group_by = [f for f in fields if _label(f) != "seed"]
    unknown = [f for f in group_by if f not in fields]
    if unknown:
        raise ValueError(f"--group_by={unknown} are not swept fields; swept: {fields}")
    scalars = scalar_names(points)
    unknown = [s for s in [*(metrics or ()), *(columns or ())] if s not in scalars]
    if unknown:
        raise ValueError(f"{unknown} are not scalars of the points' results; known: {scalars}")
    columns = list(columns or scalars)
    groups = group_points(points, group_by)
    out = files.path(sweep_dir, REPORT_DIR)
    written = []

    def write(name: str, text: str) -> None:
        files.write_text(out / name, text)
        written.append(name)

    results_csv, results_md = results_tables(points, fields, scalars, columns)
    groups_csv, groups_md = group_tables(groups, group_by, scalars, columns)
    missing = [p for p in points if p.status != "done"]
    title_bits = [os.path.basename(os.path.normpath(str(sweep_dir)))]
    if info.get("config"):
        title_bits.append(
            info["config"] + (f" sweep({info['sweep_arg']})" if info.get("sweep_arg") else "")
        )
    if info.get("commit"):
        title_bits.append(f"commit {info['commit'][:12]}")
    title = "  ·  ".join(title_bits)
    note = "".join(f"- {p.name}: {p.status}\n" for p in missing)
    write("results.csv", results_csv)
    write(
        "results.md",
        f"# {title}\n\n{results_md}"
        + (f"\nNot finished ({len(missing)}):\n\n{note}" if missing else ""),
    )
    write("groups.csv", groups_csv)
    write("groups.md", f"# {title}\n\nmean ± standard error over n points per group\n\n{groups_md}")
    if not y:
        x, y = default_axes(scalars, x)
    elif not x:
        x = default_axes(scalars)[0]
    config_file = files.path(points[0].workdir, "config.json")
    evals = files.read_json(config_file).get("evals", {}) if config_file.exists() else {}
    unknown = [m for m in (x, y) if m and m not in scalars]
    if unknown:
        raise ValueError(f"--x/--y {unknown} are not scalars of the points' results: {scalars}")
    reference = next((p.reference for p in points if p.reference), {})
    if groups and x and y:
        pareto_plot(groups, x, y, reference, title, out / "pareto.png", evals)
        written.append("pareto.png")
        events = {p.name: read_scalar_events(p.workdir) for g in groups for p in g.points}
        logged = {tag for series in events.values() for tag in series}
        if curves:
            tags = list(curves)
            unknown = [tag for tag in tags if tag not in logged]
            if unknown:
                raise ValueError(
                    f"--curves {unknown} are not in the points' TensorBoard events: "
                    f"{sorted(logged)}"
                )
        else:  # (evaluation-only points log no training loss)
            tags = [t for t in ["train/loss", f"eval/{x}"] if t in logged]
        if tags:
            curves_plot(groups, tags, events, title, out / "curves.png", evals)
            written.append("curves.png")
        for field in group_by:
            numeric = all(isinstance(g.key[group_by.index(field)], int | float) for g in groups)
            if numeric and len({g.key[group_by.index(field)] for g in groups}) > 1:
                for metric in dict.fromkeys(metrics or [x, y]):
                    name = f"{metric.replace('/', '_')}_vs_{_label(field)}.png"
                    field_plot(groups, list(group_by), field, metric, title, out / name, evals)
                    written.append(name)
    return {
        "dir": str(out),
        "written": written,
        "missing": [(p.name, p.status) for p in missing],
        "x": x,
        "y": y,
        "groups": len(groups),
    }


def define_flags() -> None:
    """The CLI's flags, defined only when it runs (the demo imports this module)."""
    flags.DEFINE_list(
        "group_by",
        None,
        "Override fields that define a group (default: every swept field but seed).",
    )
    flags.DEFINE_string("x", None, "Task metric of pareto.png (default: the first known).")
    flags.DEFINE_string("y", None, "Diversity metric of pareto.png (default: x's Self-BLEU).")
    flags.DEFINE_list("curves", None, "Scalars of curves.png (default: train/loss, x).")
    flags.DEFINE_list("metrics", None, "Scalars plotted against each swept field (default: x, y).")
    flags.DEFINE_list("columns", None, "Scalars of the .md tables (default: all).")


def main(argv):
    logging.set_verbosity(logging.WARNING)  # TensorBoard's event reader logs every file
    if len(argv) != 2:
        raise app.UsageError("usage: python -m irl_lm.report DIR [--group_by=...] [--x= --y=]")
    f = flags.FLAGS
    report = write_report(
        argv[1],
        group_by=f.group_by,
        x=f.x,
        y=f.y,
        curves=f.curves,
        metrics=f.metrics,
        columns=f.columns,
    )
    print(f"report of {argv[1]}: {report['groups']} groups, x={report['x']}, y={report['y']}")
    for name in report["written"]:
        print(f"  {report['dir']}/{name}")
    for name, status in report["missing"]:
        print(f"  not finished: {name} ({status})")


if __name__ == "__main__":
    define_flags()
    app.run(main)
