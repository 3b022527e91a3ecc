"""Each paper-task config trains a tiny model on the shared data and decodes with its metric."""

import json
import os

import pytest
from test_configs import CONFIG_DIR, load

from irl_lm import train

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
METRICS = {"xsum": "rouge1", "gsm8k": "accuracy", "tldr": "rougeLsum", "wmt22": "bleu"}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_tiny_mode_trains_and_decodes(name, tmp_path):
    if not os.path.isdir(DATA):
        pytest.skip(f"shared data not found at {DATA} (see shared/data/README.md)")
    config = load(os.path.join(CONFIG_DIR, f"{name}.py")).get_config(f"mode=tiny,data={DATA}")
    config.total_steps = 10
    results = train.train_and_evaluate(config, str(tmp_path))
    scores = results["eval"]["decode"]
    assert 0.0 <= scores[METRICS[name]] <= 100.0
    assert results["eval"]["validation"]["mle/nll"] > 0
    with open(tmp_path / "predictions" / "decode" / "10.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 8
    assert set(rows[0]) == {"input", "target", "predictions", "scores"}
    if name == "gsm8k":  # the calculator's accuracy, the paper's second GSM8k metric
        assert 0.0 <= results["eval"]["calculator"]["accuracy"] <= 100.0
    print(f"\n{name} mode=tiny: {scores}")


def test_full_mode_resolves_to_the_preset_with_a_checkpoint_vocabulary():
    config = load(os.path.join(CONFIG_DIR, "xsum.py")).get_config(f"mode=full,data={DATA}")
    assert config.task.vocabulary == ""  # comes from --config.init_from=hf:DIR
    config.task.vocabulary = "byte"  # stands in for a checkpoint's here
    train.validate_config(config)
    assert train.resolve_model_config(config)["d_model"] == 768  # t5_base


def test_evaluate_cli_rescores_a_workdir(tmp_path):
    if not os.path.isdir(DATA):
        pytest.skip(f"shared data not found at {DATA} (see shared/data/README.md)")
    from irl_lm.evaluate import evaluate

    config = load(os.path.join(CONFIG_DIR, "gsm8k.py")).get_config(f"mode=tiny,data={DATA}")
    config.total_steps = 4
    config.checkpoint.every = 2
    trained = train.train_and_evaluate(config, str(tmp_path))
    again = evaluate(str(tmp_path))  # the latest step: the same parameters, the same scores
    assert again["step"] == 4
    assert again["eval"]["decode"] == pytest.approx(trained["eval"]["decode"])
    assert again["eval"]["validation"] == pytest.approx(trained["eval"]["validation"], rel=1e-5)
    earlier = evaluate(str(tmp_path), step=2, names=["validation"])
    assert set(earlier["eval"]) == {"validation"}
    assert json.load(open(tmp_path / "eval-2.json"))["step"] == 2
    with pytest.raises(ValueError, match=r"--evals \['nope'\] not in config.evals"):
        evaluate(str(tmp_path), names=["nope"])
