"""The studies' sweeps (experiments/*/config.py, and the paper tasks' `sweep(arg)`) load,
and the paper tasks' mode=tiny versions run: every kind of point, on one task, in-process."""

import json
import os

import pytest

from irl_lm import report, sweep, train
from irl_lm.studies import STUDIES

ROOT = os.path.join(os.path.dirname(__file__), "..")
DATA = os.path.join(ROOT, "..", "shared", "data")
STUDY_POINTS = {  # experiments/<study>/config.py -> points
    "lambda_entropy": 30,
    "model_size": 24,
    "decoding": 63,
    "data_size": 36,
    "reward_correlation": 21,
}
TASK_POINTS = {  # configs/<task>.py sweep(study=...) -> points
    "lambda": 18,
    "lambda_entropy": 30,
    "model_size": 18,
    "decoding": 42,
    "data_size": 36,
    "reward_correlation": 21,
}


@pytest.mark.parametrize("study", sorted(STUDY_POINTS))
def test_expert_study_sweeps_build(study, tmp_path):
    config = os.path.join(ROOT, "experiments", study, "config.py")
    points = sweep.build_points(config, str(tmp_path))
    assert len(points) == STUDY_POINTS[study] == len({p.name for p in points})
    assert {p.overrides["seed"] for p in points} == {0, 1, 2}
    if study in ("decoding", "reward_correlation"):  # study 1's runs, evaluated
        evaluated = [p for p in points if "init_from" in p.overrides]
        study_1 = os.path.join(ROOT, "experiments", "lambda_entropy", "config.py")
        names = {p.name for p in sweep.build_points(study_1, str(tmp_path))}
        assert {os.path.basename(p.overrides["init_from"]) for p in evaluated} <= names
        assert all(p.total_steps == 0 for p in evaluated)


def test_best_of_n_sweeps_train_then_evaluate_the_same_runs(tmp_path):
    config = os.path.join(ROOT, "experiments", "best_of_n", "config.py")
    trained = sweep.build_points(config, str(tmp_path / "policies"), "policies")
    evaluated = sweep.build_points(config, str(tmp_path / "bon"), str(tmp_path / "policies"))
    assert len(trained) == len(evaluated) == 18
    assert [p.name for p in trained] == [p.name for p in evaluated]
    assert {p.total_steps for p in trained} == {1000, 3000}
    assert all(
        p.overrides["init_from"] == q.workdir for p, q in zip(evaluated, trained, strict=True)
    )
    resolved = evaluated[0].resolve_config()
    assert resolved.total_steps == 0 and resolved.loss.lam == 0
    assert sorted(resolved.evals) == ["gamma_0_9", "gamma_0_99", "gamma_1"]
    assert resolved.evals.gamma_0_9.gamma == 0.9
    assert tuple(resolved.evals.gamma_1.best_of) == (1, 2, 4, 8, 16)
    assert len(sweep.build_points(config, str(tmp_path / "x"))) == 18  # default: policies


def test_convergence_learning_rate_grid_covers_every_size(tmp_path):
    config = os.path.join(ROOT, "experiments", "convergence", "config.py")
    points = sweep.build_points(config, str(tmp_path))
    assert len(points) == 10 == len({p.name for p in points})
    grid = {(p.overrides["model.d_model"], p.overrides["optimizer.learning_rate"]) for p in points}
    assert grid == {(d, lr) for d in (32, 64, 128) for lr in (1e-3, 3e-3, 1e-2)}
    assert sorted(p.total_steps for p in points)[-2:] == [3000, 6000]
    resolved = points[-1].resolve_config()
    assert (resolved.total_steps, resolved.model.d_model, resolved.loss.lam) == (6000, 64, 0.0)
    assert resolved.evals.validation.every == 250


def test_convergence_studies_share_their_runs_and_evaluate_study_1s(tmp_path):
    """Studies 1, 2 and 4 at convergence in one folder (a run two studies share runs once,
    each size at its grid-picked rate); studies 3 and 5 evaluate that folder's runs."""
    config = os.path.join(ROOT, "experiments", "convergence", "config.py")
    module = sweep.load_config_module(config)
    train = sweep.build_points(config, str(tmp_path / "train"), "train")
    # study 1: 10 losses; 2: 3 sizes x 2 losses, d_model 64 shared; 4: 4 sizes x 3 losses,
    # 20k shared (MLE, λ 0.1 and β 0.01 are in study 1): 10 + 4 + 9 runs x 3 seeds
    assert len(train) == 69 == len({p.name for p in train})
    assert {p.total_steps for p in train} == {module.STEPS}
    for point in train:
        d_model = point.overrides["model.d_model"]
        assert point.overrides["optimizer.learning_rate"] == module.LEARNING_RATES[d_model]
    sizes = {(p.overrides["model.d_model"], p.overrides["task.num_train_examples"]) for p in train}
    assert sizes == {(32, 20_000), (128, 20_000), *((64, n) for n in module.DATA_SIZES)}
    resolved = train[0].resolve_config()
    assert (resolved.total_steps, resolved.evals.expert.every) == (module.STEPS, 250)

    evaluated = sweep.build_points(config, str(tmp_path / "eval"), f"evaluate:{tmp_path}/train")
    assert len(evaluated) == 63 + 18 + 3 == len({p.name for p in evaluated})
    names = {p.workdir for p in train}
    from_runs = [p for p in evaluated if "init_from" in p.overrides]
    assert {p.overrides["init_from"] for p in from_runs} <= names
    assert all(p.total_steps == 0 for p in from_runs)
    decoded = [p for p in from_runs if "evals.expert.method" in p.overrides]
    assert len(decoded) == 63 and sorted(decoded[0].resolve_config().evals) == ["expert"]
    online = [p for p in evaluated if "init_from" not in p.overrides]
    assert [p.total_steps for p in online] == [module.STEPS] * 3
    resolved = online[0].resolve_config()
    assert resolved.loss.name == "iqlearn_online" and sorted(resolved.evals) == [
        "expert",
        "reward",
    ]
    with pytest.raises(ValueError, match="allowed: lr, train, evaluate:FOLDER"):
        module.sweep("evaluate")
    with pytest.raises(ValueError, match="evals=best"):
        module.get_config("evals=best")


def test_convergence_report_stops_early_at_the_lowest_held_out_nll():
    import importlib.util
    import math

    path = os.path.join(ROOT, "experiments", "convergence", "report.py")
    spec = importlib.util.spec_from_file_location("convergence_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    events = {
        "eval/validation/mle_entropy/nll": [(250, 2.0), (500, 1.3), (750, 1.6)],
        "eval/expert/validity": [(250, 0.1), (500, 0.55), (750, 0.6)],
        "eval/expert/forward_kl": [(250, 0.9), (750, 0.2)],
    }
    stopped = module.at_lowest_nll(events)
    assert (stopped["step"], stopped["nll"], stopped["validity"]) == (500, 1.3, 0.55)
    assert math.isnan(stopped["forward_kl"])  # not evaluated at that step: no neighbour's
    assert module.z_values([1.0, 3.0], [0.0, 0.0]) == "+2 (+2.0 s.e.)"
    assert module.z_values([1.0], [0.0, 0.0]) == "–"


def test_family_sweep_pairs_a_t5_with_a_decoder_only_model_of_its_size(tmp_path):
    import jax
    import numpy as np

    from irl_lm import sharding
    from irl_lm.models import build_model

    config = os.path.join(ROOT, "experiments", "families", "config.py")
    points = sweep.build_points(config, str(tmp_path), str(tmp_path))
    assert len(points) == 36 == len({p.name for p in points})
    gail = [p for p in points if ",gail," in p.name]
    assert [p.overrides["init_from"] for p in gail] == [
        str(tmp_path / f"{family},mle,seed={seed}")
        for family in ("t5", "decoder_only")
        for seed in (0, 1, 2)
    ]
    assert points[-6:] == gail  # after the MLE runs they start from
    sizes = {}
    for point in (points[0], points[15]):  # t5,mle and decoder_only,mle
        resolved = point.resolve_config()
        assert resolved.total_steps == 3000
        model = build_model(train.resolve_model_config(resolved))
        params = jax.eval_shape(
            lambda model=model, resolved=resolved: model.init(
                jax.random.PRNGKey(0), train.dummy_batch(resolved, model, 1)
            )
        )["params"]
        leaves = jax.tree.leaves(sharding.unbox(params))
        sizes[resolved.model.name] = sum(int(np.prod(x.shape)) for x in leaves)
    assert abs(sizes["decoder_only"] / sizes["t5"] - 1) < 0.05, sizes
    resolved = gail[0].resolve_config()
    assert (resolved.total_steps, resolved.evals.expert.every) == (500, 100)


@pytest.mark.parametrize("task", ["gsm8k", "tldr", "wmt22", "xsum"])
def test_paper_task_study_sweeps_build(task, tmp_path):
    assert set(STUDIES) == set(TASK_POINTS)
    for study, count in TASK_POINTS.items():
        for mode in ("full", "tiny"):
            points = sweep.build_points(
                os.path.join(ROOT, "configs", f"{task}.py"),
                str(tmp_path),
                f"study={study},mode={mode}",
            )
            assert len(points) == count == len({p.name for p in points}), (study, mode)
            assert all(f"mode={mode}" in p.config_arg for p in points)
    with pytest.raises(ValueError, match="study='nope'; allowed: lambda, lambda_entropy"):
        sweep.build_points(os.path.join(ROOT, "configs", f"{task}.py"), str(tmp_path), "study=nope")


def _run(points, names):
    """Runs the named points in-process, as `irl_lm.main` would (training ones for 4 steps);
    their results."""
    by_name = {p.name: p for p in points}
    results = {}
    for name in names:
        point = by_name[name]
        config = point.resolve_config()
        config.total_steps = min(config.total_steps, 4)
        results[name] = train.train_and_evaluate(config, point.workdir)
    return results


def test_paper_task_tiny_studies_run(tmp_path):
    """Every kind of point of the five studies on wmt22 (mode=tiny): training runs, the
    evaluation-only runs of decoding and reward_correlation (study 1's checkpoints, no
    training, no checkpoint) and online IQLearn."""
    if not os.path.isdir(DATA):
        pytest.skip(f"shared data not found at {DATA} (see shared/data/README.md)")
    config = os.path.join(ROOT, "configs", f"wmt22.py:data={DATA}")
    source = str(tmp_path / "lambda_entropy")

    def points(study, workdir):
        arg = f"study={study},mode=tiny,source={source}"
        return sweep.build_points(config, str(tmp_path / workdir), arg)

    first = _run(
        points("lambda_entropy", "lambda_entropy"), ["mode=tiny,loss=iqlearn,lam=0,seed=0"]
    )
    mle = first["mode=tiny,loss=iqlearn,lam=0,seed=0"]
    assert {"validation", "decode", "reward"} <= set(mle["eval"])

    decoders = ["lam=0,seed=0,greedy", "lam=0,seed=0,beam4", "lam=0,seed=0,t=0.5"]
    decoding = _run(points("decoding", "decoding"), decoders)
    # Greedy decoding of the same parameters: the MLE run's own final decode evaluation.
    assert decoding["lam=0,seed=0,greedy"]["eval"]["decode"] == pytest.approx(mle["eval"]["decode"])
    assert "self_bleu" in decoding["lam=0,seed=0,t=0.5"]["eval"]["decode"]  # 4 samples
    for name, result in decoding.items():
        assert result["step"] == 0 and set(result["eval"]) == {"decode"}
        workdir = tmp_path / "decoding" / name
        assert json.load(open(workdir / "results.json"))["step"] == 0
        assert not (workdir / "checkpoints" / "0").exists()  # nothing trained, nothing saved
    _, loaded = report.load_points(str(tmp_path / "decoding"))  # done at step 0, no steps/s
    assert sorted(p.name for p in loaded if p.status == "done") == sorted(decoders)
    assert all("steps_per_sec" not in p.scalars for p in loaded)

    online = "online,lam=0.1,alpha=0.1,seed=0"
    rewards = _run(points("reward_correlation", "reward_correlation"), ["lam=0,seed=0", online])
    for result in rewards.values():
        assert set(result["eval"]) == {"reward"}
        assert "spearman_bleu" in result["eval"]["reward"]
    assert rewards["lam=0,seed=0"]["step"] == 0

    # A model_size point trains as the first one did, at its own width: its config only.
    (size,) = [
        p for p in points("model_size", "model_size") if p.name == "d_model=32,lam=0.1,seed=0"
    ]
    resolved = size.resolve_config()
    assert (resolved.model.d_model, resolved.loss.lam) == (32, 0.1)
    data = _run(
        points("data_size", "data_size"),
        ["mode=tiny,loss=mle_entropy,beta=0.01,num_train_examples=32,seed=0"],
    )
    assert list(data.values())[0]["step"] == 4
