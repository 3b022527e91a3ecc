"""`python -m irl_lm.report`: a finished sweep read back as tables and plots, checked against
NumPy over the points' own results.json files."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from irl_lm import report

ROOT = os.path.join(os.path.dirname(__file__), "..")
PLOTS = {  # file -> pixel size
    "pareto.png": (768, 576),
    "curves.png": (1536, 576),
    "expert_validity_vs_lam.png": (768, 576),
    "expert_self_bleu_vs_lam.png": (768, 576),
}


@pytest.fixture(scope="module")
def sweep_report(finished_sweep, tmp_path_factory):
    """A copy of the finished sweep (the sweep tests rerun points in the original) and its
    report, written by the CLI."""
    _, workdir, code, _ = finished_sweep
    assert code == 0
    copy = str(tmp_path_factory.mktemp("report") / "lam")
    shutil.copytree(workdir, copy)
    proc = subprocess.run(
        [sys.executable, "-m", "irl_lm.report", copy],
        cwd=ROOT,
        env=dict(os.environ, XLA_FLAGS=""),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return copy, proc.stdout


def _flat(results):
    out = {f"{ev}/{k}": v for ev, scalars in results["eval"].items() for k, v in scalars.items()}
    return out | {"steps_per_sec": results["steps_per_sec"]}


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _float(text):
    return math.nan if text == "" else float(text)


def test_groups_are_numpy_means_and_standard_errors_of_the_points(sweep_report):
    workdir, stdout = sweep_report
    assert "2 groups, x=expert/validity, y=expert/self_bleu" in stdout
    points = json.load(open(os.path.join(workdir, "sweep.json")))["points"]
    results = {
        p["name"]: _flat(json.load(open(os.path.join(workdir, p["name"], "results.json"))))
        for p in points
    }
    groups = _read_csv(os.path.join(workdir, "report", "groups.csv"))
    assert [(g["loss.lam"], g["n"]) for g in groups] == [("0.0", "2"), ("0.3", "2")]
    checked = 0
    for group in groups:
        lam = float(group["loss.lam"])
        members = [p["name"] for p in points if p["overrides"]["loss.lam"] == lam]
        for scalar in results[members[0]]:
            values = np.array([results[name][scalar] for name in members], np.float64)
            mean = values.mean()
            sem = values.std(ddof=1) / np.sqrt(len(values))
            np.testing.assert_allclose(_float(group[f"{scalar}_mean"]), mean, rtol=1e-12)
            np.testing.assert_allclose(_float(group[f"{scalar}_sem"]), sem, rtol=1e-12)
            checked += 1
    assert checked >= 2 * 10


def test_results_csv_reads_back_every_point_exactly(sweep_report):
    workdir, _ = sweep_report
    rows = _read_csv(os.path.join(workdir, "report", "results.csv"))
    assert [r["name"] for r in rows] == [
        "lam=0,seed=0",
        "lam=0,seed=1",
        "lam=0.3,seed=0",
        "lam=0.3,seed=1",
    ]
    for row in rows:
        results = json.load(open(os.path.join(workdir, row["name"], "results.json")))
        assert (row["status"], int(row["step"])) == ("done", results["step"])
        for scalar, value in _flat(results).items():
            assert _float(row[scalar]) == value or (math.isnan(value) and row[scalar] == "")
    md = open(os.path.join(workdir, "report", "groups.md")).read()
    assert "mean ± standard error" in md and "| 0.3 | 2 |" in md


def test_plots_exist_have_their_size_and_are_regenerated_identically(sweep_report):
    workdir, stdout = sweep_report
    folder = os.path.join(workdir, "report")
    first = {}
    for name, size in PLOTS.items():
        path = os.path.join(folder, name)
        assert f"{folder}/{name}" in stdout
        assert os.path.getsize(path) > 10_000, name
        with Image.open(path) as image:
            assert image.size == size, name
            colours = len(set(image.convert("RGB").getdata()))
        assert colours > 50, name  # axes, text, markers: not a blank canvas
        first[name] = open(path, "rb").read()
    tables = {
        n: open(os.path.join(folder, n)).read() for n in os.listdir(folder) if ".png" not in n
    }
    report.write_report(workdir)
    for name in PLOTS:
        assert open(os.path.join(folder, name), "rb").read() == first[name], name
    for name, text in tables.items():
        assert open(os.path.join(folder, name)).read() == text, name


def test_unfinished_points_are_listed_not_dropped(sweep_report, tmp_path):
    workdir, _ = sweep_report
    partial = str(tmp_path / "partial")
    shutil.copytree(workdir, partial)
    os.remove(os.path.join(partial, "lam=0.3,seed=1", "results.json"))
    written = report.write_report(partial)
    assert written["missing"] == [("lam=0.3,seed=1", "unfinished")]
    rows = _read_csv(os.path.join(partial, "report", "results.csv"))
    assert [(r["name"], r["status"], r["step"]) for r in rows][-1] == (
        "lam=0.3,seed=1",
        "unfinished",
        "",
    )
    assert (
        "Not finished (1):\n\n- lam=0.3,seed=1: unfinished"
        in open(os.path.join(partial, "report", "results.md")).read()
    )
    groups = _read_csv(os.path.join(partial, "report", "groups.csv"))
    assert [g["n"] for g in groups] == ["2", "1"]
    assert groups[1]["expert/forward_kl_sem"] == ""  # one seed: no standard error
    with pytest.raises(ValueError, match=r"--group_by=\['gamma'\] are not swept fields"):
        report.write_report(partial, group_by=["gamma"])


def test_an_infinite_reverse_kl_is_reported_as_inf_not_averaged_away(tmp_path):
    """A seed with no valid output (reverse KL +inf, as results.json holds it): its group's
    mean is inf with no standard error, the tables say how many points are inf, and the plots
    are drawn without it; NumPy gives the other group's mean and standard error."""
    import warnings

    from irl_lm import files

    kls = {(0.0, 0): math.inf, (0.0, 1): 0.5, (0.1, 0): 0.2, (0.1, 1): 0.3}
    points = []
    for (lam, seed), kl in kls.items():
        name = f"lam={lam},seed={seed}"
        files.write_json(tmp_path / name / "config.json", {"total_steps": 10})
        expert = {"validity": 0.0 if math.isinf(kl) else 0.5, "reverse_kl": kl, "self_bleu": 50.0}
        files.write_json(tmp_path / name / "results.json", {"step": 10, "eval": {"expert": expert}})
        points.append({"name": name, "overrides": {"loss.lam": lam, "seed": seed}})
    files.write_json(tmp_path / "sweep.json", {"points": points})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy / SciPy warning about inf - inf
        written = report.write_report(str(tmp_path), metrics=["expert/reverse_kl"])
    assert "expert_reverse_kl_vs_lam.png" in written["written"]
    groups = _read_csv(tmp_path / "report" / "groups.csv")
    assert groups[0]["expert/reverse_kl_mean"] == "inf"
    assert groups[0]["expert/reverse_kl_sem"] == ""
    assert float(groups[1]["expert/reverse_kl_mean"]) == pytest.approx(np.mean([0.2, 0.3]))
    sem = np.std([0.2, 0.3], ddof=1) / np.sqrt(2)
    assert float(groups[1]["expert/reverse_kl_sem"]) == pytest.approx(sem)
    md = (tmp_path / "report" / "groups.md").read_text()
    assert "| 0 | 2 | 0.25 ± 0.25 | inf (1 of 2 inf) | 50 ± 0 |" in md
    assert "so the mean is infinite" in md
    results = _read_csv(tmp_path / "report" / "results.csv")
    assert [r["expert/reverse_kl"] for r in results] == ["inf", "0.5", "0.2", "0.3"]


def test_pareto_axes_pair_one_evaluators_metrics_and_name_it():
    """The default pairs the task metric and Self-BLEU of the same samples (the paper's
    plot), and each axis says which evaluator, decoding what, it comes from."""
    scalars = ["decode/rouge1", "decode/rouge2", "samples/rouge1", "samples/self_bleu"]
    assert report.default_axes(scalars) == ("samples/rouge1", "samples/self_bleu")
    # x asked for: its evaluator's Self-BLEU, else the one there is (two evaluators)
    assert report.default_axes(scalars, "decode/rouge1") == ("decode/rouge1", "samples/self_bleu")
    assert report.default_axes(["expert/validity", "expert/self_bleu", "decode/bleu"]) == (
        "expert/validity",
        "expert/self_bleu",
    )
    from test_configs import CONFIG_DIR, load

    evals = load(os.path.join(CONFIG_DIR, "xsum.py")).get_config("mode=full").evals.to_dict()
    assert report._axis_label("samples/self_bleu", evals) == (
        "self_bleu (0-100, lower = more diverse)\n"
        "samples: samples at temperature 1, 4 per input, validation"
    )
    assert report._axis_label("eval/decode/rouge1", evals).endswith(
        "eval/decode: greedy, validation"
    )
    assert report._axis_label("test/rouge1", evals) == "rouge1 (0-100)\ntest: greedy, test"
    assert report._axis_label("validation/mle/nll", evals).endswith("teacher-forced on validation")
