"""Fine-tuning from a checkpoint: config.init_from (Hugging Face or Orbax) and the converter."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hf_fixtures import save_hf_model, train_sentencepiece
from test_trainer import read_events

from irl_lm import checkpointing, sharding, train
from irl_lm.convert import convert
from irl_lm.models import build_model
from irl_lm.models.safetensors_io import read_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny T5 v1.1 with a 128-token SentencePiece vocabulary (118 pieces + 10 sentinels)."""
    folder = tmp_path_factory.mktemp("hf_t5")
    train_sentencepiece(folder, vocab_size=118, extra_ids=10)
    save_hf_model(folder, "t5_v1_1", vocab_size=128, d_model=32, d_kv=8, num_layers=1)
    return str(folder)


def assert_same_tensors(folder_a, folder_b):
    a, b = read_folder(folder_a), read_folder(folder_b)
    aliases = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    assert set(a) - aliases == set(b) - aliases
    for name in set(b) - aliases:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


def test_init_from_hf_starts_from_its_weights_and_vocabulary(make_config, hf_folder, tmp_path):
    config = make_config("mle", init_from=f"hf:{hf_folder}", total_steps=1)
    config.optimizer.learning_rate = 0.0  # the saved step-1 parameters are the imported ones
    config.evals = {}
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)

    written = json.load(open(os.path.join(workdir, "config.json")))
    assert written["task"]["vocabulary"] == hf_folder  # taken from the checkpoint
    assert os.path.exists(os.path.join(workdir, "spiece.model"))
    model_config = json.load(open(os.path.join(workdir, checkpointing.MODEL_FILE)))
    assert (model_config["d_model"], model_config["vocab_size"]) == (32, 128)  # not the demo's
    assert model_config["tie_word_embeddings"] is False
    # Orbax workdir -> Hugging Face: the tensors come back bit for bit, tokenizer included.
    convert(workdir, f"hf:{tmp_path / 'export'}")
    assert_same_tensors(hf_folder, str(tmp_path / "export"))
    assert os.path.exists(tmp_path / "export" / "spiece.model")


def test_init_from_hf_fine_tunes_and_resume_takes_precedence(make_config, hf_folder, tmp_path):
    config = make_config("iqlearn", init_from=f"hf:{hf_folder}", total_steps=40)
    config.optimizer.learning_rate = 3e-3
    config.checkpoint.every = 20
    config.evals = dict(validation=dict(kind="loss", every=20, max_examples=16))
    config.log_every = 1
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    losses = [v for _, v in read_events(workdir)["train/loss"]]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses

    config.total_steps = 44  # resumes at 40; init_from is not applied again
    results = train.train_and_evaluate(config, workdir)
    assert results["step"] == 44
    resumed = dict(read_events(workdir)["train/loss"])
    assert abs(resumed[41] - losses[-1]) < 0.25 * abs(losses[0] - losses[-1])


def test_convert_cli_round_trip_and_orbax_init_from(hf_folder, tmp_path):
    orbax_dir, back = tmp_path / "orbax", tmp_path / "back"
    for src, dst in ((f"hf:{hf_folder}", orbax_dir), (str(orbax_dir), f"hf:{back}")):
        subprocess.run(
            [sys.executable, "-m", "irl_lm.convert", f"--src={src}", f"--dst={dst}"],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
    assert sorted(os.listdir(orbax_dir)) == sorted(
        ["generation_config.json", "model.json", "params", "spiece.model", "tokenizer_config.json"]
    )
    assert_same_tensors(hf_folder, str(back))
    # The converted folder works as config.init_from, on an fsdp x tensor mesh.
    source = checkpointing.parse_init_from(str(orbax_dir))
    assert source.kind == "params" and source.vocabulary_folder() == str(orbax_dir)
    model = build_model(source.model_config())
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with sharding.use_mesh(mesh):
        abstract, shardings = sharding.abstract_params(model, mesh)
    params = source.load_params(model, abstract, shardings)
    query = params["decoder_layers_0"]["self_attention"]["query"]
    assert query.sharding == shardings["decoder_layers_0"]["self_attention"]["query"]
    reference = read_folder(hf_folder)["decoder.block.0.layer.0.SelfAttention.q.weight"]
    np.testing.assert_array_equal(np.asarray(query), np.asarray(reference).T.reshape(32, 4, 8))


def test_init_from_errors_name_the_field(make_config, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.init_from='hf:.*no config.json"):
        train.train_and_evaluate(make_config(init_from=f"hf:{tmp_path}"), str(tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match=r"config.init_from=.*neither"):
        train.train_and_evaluate(make_config(init_from=str(tmp_path)), str(tmp_path / "b"))
