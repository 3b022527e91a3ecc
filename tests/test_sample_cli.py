"""`python -m irl_lm.sample` on a Hugging Face folder and on a training workdir."""

import json

import jax
import numpy as np
import pytest
from hf_fixtures import save_hf_model, torch, train_sentencepiece

from irl_lm import checkpointing, decoding, sample, sharding, train
from irl_lm.data.vocabularies import load_vocabulary
from irl_lm.models import build_model


def write_jsonl(path, records):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_hf_folder_text_inputs_match_transformers_generate(tmp_path):
    held_out = train_sentencepiece(tmp_path, vocab_size=118, extra_ids=10)
    reference = save_hf_model(tmp_path, "t5_v1_1", vocab_size=128)
    texts = held_out[:11]  # 11 inputs in batches of 8 rows: the last batch is padded
    records = [{"inputs": t} for t in texts[:-1]] + [{"input_ids": [5, 9, 17]}]
    inputs = write_jsonl(tmp_path / "in.jsonl", records)
    out_path = str(tmp_path / "out.jsonl")
    sample.main(
        [
            "--hf",
            str(tmp_path),
            "--input-file",
            inputs,
            "--output-file",
            out_path,
            "--max-decode-len",
            "7",
            "--batch-size",
            "8",
        ]
    )
    outputs = read_jsonl(out_path)
    assert len(outputs) == 11

    tokenizer = __import__("transformers").T5Tokenizer.from_pretrained(str(tmp_path))
    vocab = load_vocabulary(str(tmp_path))
    for record, out in zip(records, outputs, strict=True):
        ids = tokenizer(record["inputs"]).input_ids if "inputs" in record else [5, 9, 17, 1]
        with torch.no_grad():
            expected = reference.generate(
                input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=7
            )[0, 1:].tolist()
        while expected and expected[-1] == 0:
            expected.pop()
        assert out["output_ids"] == [expected]
        assert out["outputs"] == [vocab.decode(expected)]  # vocab checked against HF elsewhere
        assert out["lengths"] == [len(expected)]

    sample.main(
        [
            "--hf",
            str(tmp_path),
            "--input-file",
            inputs,
            "--output-file",
            out_path,
            "--method",
            "beam",
            "--num-beams",
            "3",
            "--max-decode-len",
            "7",
        ]
    )
    for out in read_jsonl(out_path):
        assert len(out["output_ids"]) == 3 and out["scores"] == sorted(out["scores"])[::-1]


def test_workdir_token_inputs_round_trip(make_config, tmp_path):
    config = make_config("mle", total_steps=2)
    config.evals = {}
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    rng = np.random.default_rng(0)
    records = [{"input_ids": rng.integers(3, 20, rng.integers(2, 6)).tolist()} for _ in range(5)]
    inputs = write_jsonl(tmp_path / "in.jsonl", records)
    out_path = str(tmp_path / "out.jsonl")
    argv = [
        "--workdir",
        workdir,
        "--input-file",
        inputs,
        "--output-file",
        out_path,
        "--method",
        "temperature",
        "--num-decodes",
        "3",
        "--seed",
        "4",
        "--max-decode-len",
        "6",
    ]
    summary = sample.main(argv)
    assert summary["inputs"] == 5 and summary["truncated_inputs"] == 0
    outputs = read_jsonl(out_path)
    assert [len(o["output_ids"]) for o in outputs] == [3] * 5
    assert "outputs" not in outputs[0]  # the synthetic task has no text vocabulary
    sample.main(argv)
    assert read_jsonl(out_path) == outputs  # same seed, same samples

    # Greedy through the CLI == the decoder run here on the workdir's restored parameters.
    sample.main(argv[:6] + ["--max-decode-len", "6"])
    source = checkpointing.parse_init_from(workdir)
    model = build_model(source.model_config())
    mesh = sharding.make_mesh({"data": -1})
    with sharding.use_mesh(mesh):
        abstract, shardings = sharding.abstract_params(model, mesh)
        params = source.load_params(model, abstract, shardings)
    for record, out in zip(records, read_jsonl(out_path), strict=True):
        batch = {"encoder_input_tokens": np.array([record["input_ids"] + [1]], np.int32)}
        greedy = jax.device_get(decoding.greedy(model, params, batch, max_len=6))
        n = int(greedy["lengths"][0, 0])
        assert out["output_ids"] == [greedy["tokens"][0, 0, :n].tolist()]
        log_prob = float(greedy["log_probs"][0, 0].sum())
        assert out["scores"] == [pytest.approx(log_prob, abs=1e-4)]


def test_bad_input_lines_are_named(make_config, tmp_path):
    save_hf_model(tmp_path, "t5_v1_1")  # no spiece.model: text inputs cannot be encoded
    cases = {
        '{"inputs": "hello"}\n': r"in.jsonl:1: 'inputs' is text, but the checkpoint has no vocab",
        '{"input_ids": [3, 4]}\nnot json\n': r"in.jsonl:2: not a JSON object",
        '{"input_ids": [3, 400]}\n': r"in.jsonl:1: token ids \[400\] outside \[0, 128\)",
        '{"text": "x"}\n': r"in.jsonl:1: needs 'inputs' \(text\) or 'input_ids'",
    }
    for content, message in cases.items():
        (tmp_path / "in.jsonl").write_text(content)
        with pytest.raises(ValueError, match=message):
            sample.main(
                [
                    "--hf",
                    str(tmp_path),
                    "--input-file",
                    str(tmp_path / "in.jsonl"),
                    "--output-file",
                    str(tmp_path / "out.jsonl"),
                ]
            )
