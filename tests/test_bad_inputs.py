"""The catalogue of bad inputs (docs/reliability.md): one test per row.

Each checks the error type and that its message names the file and line or the config
field, and the fix; where the behaviour is "count and report", the count. Every error
comes before training, so nothing is lost (no checkpoint is written).
"""

import json
import logging
import os
import re
import shutil

import jax
import numpy as np
import pytest
import seqio
from absl import flags
from conftest import tiny_config
from ml_collections import config_flags

from configs import demo
from irl_lm import evaluators, sharding, studies, sweep, train
from irl_lm.data import tasks, text_tasks
from irl_lm.losses import loss_fields, make_loss
from irl_lm.models import build_model
from irl_lm.models.hf import export_hf
from irl_lm.models.safetensors_io import read_file, write_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}


def write_lines(path, lines) -> str:
    """`lines` (dicts as JSON, strings as they are) one a line, as a JSON Lines file."""
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    path.write_text(text)
    return str(path)


def gsm8k_config(path: str, **overrides) -> dict:
    files = {"validation": path}
    return dict(name="irl_lm.gsm8k", source="jsonl", files=files, vocabulary="byte") | overrides


def read_split(task_config: dict) -> list[dict]:
    """Every example of the validation split, read through the seqio task."""
    task = tasks.get_task(task_config)
    dataset = task.get_dataset(
        tasks.feature_lengths(task_config), split="validation", shuffle=False, use_cached=False
    )
    return list(text_tasks.read(dataset))


def assert_rejected(path: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_split(gsm8k_config(path))


# ----------------------------------------------------------------------------- JSONL files


@pytest.mark.parametrize(
    "line,match",
    [
        ("{not json", r"bad.jsonl:2: not a JSON object \(Expecting .*\); fix or remove the line"),
        ("[1, 2]", r"bad.jsonl:2: not a JSON object \(a list\); fix or remove the line"),
        ("", r"bad.jsonl:2: empty line; remove it"),
    ],
    ids=["not_json", "not_an_object", "empty_line"],
)
def test_malformed_jsonl_line(tmp_path, line, match):
    assert_rejected(write_lines(tmp_path / "bad.jsonl", [GOOD, line, GOOD]), match)


@pytest.mark.parametrize("where", ["mid_record", "mid_character", "at_byte_0"])
def test_truncated_jsonl(tmp_path, where):
    """A file cut at a byte offset: inside its last record, inside a 2-byte 'ß', at 0."""
    records = [GOOD | {"answer": f"Maß {i}"} for i in range(3)]
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    ends = {"mid_record": len(data) - 5, "mid_character": data.rindex("ß".encode()) + 1}
    path = tmp_path / "bad.jsonl"
    path.write_bytes(data[: ends.get(where, 0)])
    if where == "at_byte_0":
        assert_rejected(str(path), r"bad.jsonl: the file is empty; config.task.files must name")
        return
    what = "not UTF-8 text" if where == "mid_character" else "not a JSON object"
    cut = r"no newline: the file looks truncated \(copy it again\)"
    assert_rejected(str(path), rf"bad.jsonl:3: {what} .*; it is the last line and has {cut}")


def test_missing_field(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, {"question": "q", "answr": "a"}])
    assert_rejected(
        path,
        r"bad.jsonl:2: field 'answer' is missing \(the line has \['answr', 'question'\]\); "
        r"each line needs the non-empty text fields \['question', 'answer'\]",
    )


@pytest.mark.parametrize(
    "value,kind",
    [(5, r"a number \(5\)"), (["5"], r"an array \(\[\"5\"\]\)"), (None, r"null \(null\)")],
    ids=["number", "array", "null"],
)
def test_non_string_field(tmp_path, value, kind):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, GOOD | {"answer": value}])
    assert_rejected(
        path,
        rf"bad.jsonl:2: field 'answer' is {kind}, not text; each line needs the non-empty text "
        r"fields \['question', 'answer'\]",
    )


@pytest.mark.parametrize("field", ["answer", "question"])
def test_empty_target_or_input(tmp_path, field):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, GOOD, GOOD | {field: " \n "}])
    assert_rejected(path, rf"bad.jsonl:3: field '{field}' is empty; fill it in or remove the line")


def test_over_long_examples_are_counted_and_reported(tmp_path, caplog):
    """Byte vocabulary: a target of n characters is n + 1 tokens with EOS. Two of five are
    over max_target_len=8: they are kept, truncated, and the warning counts them."""
    answers = ["#### 1", "a" * 20, "#### 3", "b" * 30, "#### 5"]
    path = write_lines(tmp_path / "long.jsonl", [GOOD | {"answer": a} for a in answers])
    config = gsm8k_config(path, max_target_len=8, max_input_len=64)
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert tasks.report_truncation(tasks.build(config), "validation") == {
            "inputs": 0,
            "targets": 2,
        }
    examples = read_split(config)
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert warnings == [
        "irl_lm.gsm8k/validation: 2 of 5 targets are longer than 8 tokens (the longest: 31) and "
        "are truncated; raise config.task.max_target_len to keep them whole"
    ]
    # Nothing is dropped, and the count is the number the feature converter cuts.
    vocab = seqio.ByteVocabulary()
    kept = [vocab.decode(ex["targets"][:-1].tolist()) for ex in examples]
    assert len(kept) == 5 and all(len(ex["targets"]) <= 8 for ex in examples)
    assert sum(k != a for k, a in zip(kept, answers, strict=True)) == 2


# ----------------------------------------------------------------------------- vocabularies


def write_hf_folder(folder, **model_fields) -> str:
    """A Hugging Face T5 folder (config.json, model.safetensors) of the tiny test model with
    random weights, written by our exporter."""
    model_config = train.resolve_model_config(tiny_config("mle")) | model_fields
    model = build_model(model_config)
    mesh = sharding.make_mesh({"data": -1})
    with sharding.use_mesh(mesh):
        abstract, _ = sharding.abstract_params(model, mesh)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(x.dtype), abstract)
    export_hf(model, params, str(folder))
    return str(folder)


def write_sentencepiece(folder) -> None:
    """A 40-piece SentencePiece tokenizer (T5 layout: pad 0, EOS 1, UNK 2) + 4 sentinels."""
    spm = pytest.importorskip("sentencepiece")
    words = "the quick brown fox jumps over a lazy dog and runs far away from home".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 8)) for _ in range(200)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=os.path.join(str(folder), "spiece"),
        vocab_size=40,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    with open(os.path.join(str(folder), "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "T5Tokenizer", "extra_ids": 4}, f)


def test_model_vocab_size_smaller_than_the_task(make_config, tmp_path):
    config = make_config("mle", **{"model.vocab_size": 10})  # the expert has 40 tokens
    with pytest.raises(
        ValueError,
        match=r"config.model.vocab_size=10 is smaller than the task's vocabulary \(40 tokens\); "
        r"set it to 0 to take the task's size",
    ):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


# The two tests below need irl_lm/train.py to check: resolve_config, a config.task.vocabulary
# set by hand against the checkpoint's tokenizer (tasks.check_vocabulary_matches), and
# resolve_model_config, a checkpoint's vocab_size naming config.init_from.


def test_checkpoint_vocab_size_smaller_than_the_task(make_config, tmp_path):
    """The checkpoint (no tokenizer) has 30 tokens, the task 40: the error names
    config.init_from, not config.model.vocab_size (which config.init_from overrides)."""
    folder = write_hf_folder(tmp_path / "hf", vocab_size=30)
    config, source = train.resolve_config(make_config("mle", init_from=f"hf:{folder}"))
    with pytest.raises(
        ValueError,
        match=r"config.init_from='hf:.*': the checkpoint's vocab_size 30 is smaller than the "
        r"task's vocabulary \(40 tokens\); start from a checkpoint made with the task's",
    ):
        train.resolve_model_config(config, source)


@pytest.fixture(scope="module")
def spm_checkpoint(tmp_path_factory) -> str:
    """A Hugging Face folder whose tokenizer is a SentencePiece model (44 tokens)."""
    folder = write_hf_folder(tmp_path_factory.mktemp("spm_hf"), vocab_size=300)
    write_sentencepiece(folder)
    return folder


def test_checkpoint_tokenizer_differs_from_the_task_vocabulary(spm_checkpoint, tmp_path):
    """config.task.vocabulary='byte' set by hand, a checkpoint with another tokenizer."""
    where = f"config.init_from='hf:{spm_checkpoint}'"
    with pytest.raises(
        ValueError,
        match=r"config.task.vocabulary='byte' \(259 tokens, EOS id 1\) is not the tokenizer of "
        r"config.init_from='hf:.*' \(44 tokens, EOS id 1\), so the model's token ids would mean "
        r"other tokens; set config.task.vocabulary='' to take the checkpoint's tokenizer",
    ):
        tasks.check_vocabulary_matches(gsm8k_config("unused.jsonl"), spm_checkpoint, where)
    # The same tokenizer passes, and so does ByT5's (the same bytes, 125 more sentinels).
    config = gsm8k_config("unused.jsonl", vocabulary=spm_checkpoint)
    tasks.check_vocabulary_matches(config, spm_checkpoint, where)
    byt5 = tmp_path / "byt5"
    byt5.mkdir()
    (byt5 / "tokenizer_config.json").write_text('{"tokenizer_class": "ByT5Tokenizer"}')
    tasks.check_vocabulary_matches(gsm8k_config("unused.jsonl"), str(byt5), where)


def test_trainer_checks_the_checkpoint_tokenizer(make_config, spm_checkpoint):
    config = make_config("mle", init_from=f"hf:{spm_checkpoint}", **{"task.vocabulary": "byte"})
    with pytest.raises(ValueError, match=r"config.task.vocabulary='byte' .* is not the tokenizer"):
        config, source = train.resolve_config(config)
        train.resolve_model_config(config, source)


# ----------------------------------------------------------------------------- init_from

TENSOR = "encoder.block.0.layer.1.DenseReluDense.wo.weight"  # [d_model, d_ff] = (32, 64)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    return write_hf_folder(tmp_path_factory.mktemp("tiny_hf"))


@pytest.mark.parametrize(
    "fault,match",
    [
        (
            "missing",
            rf"hf: tensor '{TENSOR}' is missing \(for parameter encoder_layers_0/mlp/wo\); check "
            r"num_layers / num_decoder_layers / feed_forward_proj in config.json, or save the "
            r"checkpoint again",
        ),
        (
            "misshapen",
            rf"hf: tensor '{TENSOR}' has shape \(32, 63\), expected \(32, 64\) from config.json "
            r"\(our parameter encoder_layers_0/mlp/wo is \(64, 32\)\); config.json's sizes and "
            r"the tensors disagree: fix config.json or save the checkpoint again",
        ),
    ],
)
def test_init_from_folder_with_a_bad_tensor(make_config, tiny_checkpoint, tmp_path, fault, match):
    folder = tmp_path / "hf"
    shutil.copytree(tiny_checkpoint, folder)
    tensors = {k: np.array(v) for k, v in read_file(str(folder / "model.safetensors")).items()}
    if fault == "missing":
        del tensors[TENSOR]
    else:
        tensors[TENSOR] = tensors[TENSOR][:, :-1]
    write_file(str(folder / "model.safetensors"), tensors.items())
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        train.train_and_evaluate(make_config("mle", init_from=f"hf:{folder}"), str(workdir))
    saved = workdir / "checkpoints"
    assert not saved.exists() or not [p for p in saved.iterdir() if p.name.isdigit()]


# ----------------------------------------------------------------------------- loss fields


@pytest.mark.parametrize(
    "loss,field,value,allowed",
    [
        ("iqlearn", "lam", -0.1, r"a number >= 0 \(0 is MLE"),
        ("iqlearn", "lam", float("inf"), r"a number >= 0"),
        ("iqlearn", "lam", "0.1", r"a number >= 0"),
        ("iqlearn", "gamma", 0.0, r"a number in \(0, 1\]"),
        ("iqlearn", "gamma", 1.5, r"a number in \(0, 1\]"),
        ("iqlearn", "gamma", float("nan"), r"a number in \(0, 1\]"),
        ("iqlearn_online", "alpha", 1.5, r"a number in \[0, 1\] \(paper 0.1; 0 is offline\)"),
        ("iqlearn_online", "alpha", -0.1, r"a number in \[0, 1\]"),
        ("mle_entropy", "beta", -0.01, r"a number >= 0 \(0 is MLE"),
        ("mle_entropy", "beta", float("inf"), r"a number >= 0"),
    ],
)
def test_bad_lambda_gamma_alpha_beta(loss, field, value, allowed):
    message = rf"config.loss.{field}={re.escape(repr(value))} is invalid; allowed: {allowed}"
    with pytest.raises(ValueError, match=message):
        make_loss(loss_fields(loss) | {field: value})


def test_bad_number_in_the_config_arg():
    with pytest.raises(ValueError, match=r"config arg lam='abc' is not a number; give one, e.g."):
        demo.get_config("loss=iqlearn,lam=abc")


# ----------------------------------------------------------------------------- unknown names


@pytest.mark.parametrize(
    "field,value,match",
    [
        (
            "task.name",
            "gsm8",
            r"config.task.name='gsm8' is not a registered seqio task or mixture; "
            r"close matches: \['irl_lm.gsm8k'\]",
        ),
        (
            "task.name",
            "my_task",
            r"'my_task' is not a registered.*needs that module in config.task.modules",
        ),
        (
            "task.modules",
            ["no_such_module"],
            r"config.task.modules: module 'no_such_module' is not importable",
        ),
        (
            "task.num_eval_exampels",
            4,
            r"config.task: unknown fields \['num_eval_exampels'\] for task "
            r"'irl_lm.synthetic_expert'",
        ),
        ("model.name", "t55", r"config.model.name='t55' is not a model; allowed: \['decoder_only'"),
        ("loss.name", "iqlern", r"config.loss.name='iqlern' is not a loss; allowed: \[.*'iqlearn'"),
        ("optimizer.name", "adam", r"config.optimizer.name='adam' is not allowed; allowed: \("),
        ("schedule.name", "cos", r"config.schedule.name='cos' is not allowed; allowed: \("),
        ("loss.lamda", 0.1, r"config.loss: unknown fields \['lamda'\] for loss 'iqlearn'; allowed"),
        ("model.d_modle", 8, r"config.model: unknown fields \['d_modle'\] for model 't5'; allowed"),
    ],
)
def test_unknown_name_in_the_config(make_config, tmp_path, field, value, match):
    config = make_config("iqlearn", **{field: value})
    with pytest.raises(ValueError, match=match):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")  # refused before the workdir is made


@pytest.mark.parametrize(
    "evals,match",
    [
        ({"kind": "bleu"}, r"config.evals.e.kind='bleu' is not an evaluator; allowed: \["),
        (
            {"kind": "synthetic_expert", "method": "topk"},
            r"config.evals.e.method='topk' is not a decoding method; allowed: \['greedy'",
        ),
        (
            {"kind": "decode", "method": "nucleus"},
            r"config.evals.e.method='nucleus' is not a decoding method; allowed: \['greedy'",
        ),
        (
            {"kind": "loss", "max_exmples": 4},
            r"config.evals.e: unknown fields \['max_exmples'\] for kind 'loss'; allowed: "
            r"\['every', 'kind', 'max_examples', 'split'\]",
        ),
    ],
)
def test_unknown_evaluator_or_decoding_method(evals, match):
    """Raised by make_evaluators before the evaluator does any work (so no model is needed)."""
    config = tiny_config("iqlearn", evals={"e": evals})
    ctx = evaluators.EvalContext(task=None, model=None, mesh=None)
    with pytest.raises(ValueError, match=match):
        evaluators.make_evaluators(ctx, config.evals)


def test_misspelled_field_on_the_command_line():
    """--config.FIELD overrides as irl_lm.main parses them: ml_collections names the field
    and suggests the right one."""
    config_file = os.path.join(ROOT, "configs", "demo.py")
    argv = ["main", f"--config={config_file}:loss=iqlearn", "--config.total_stps=3"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", lock_config=True, flag_values=flag_values, sys_argv=argv
    )
    with pytest.raises(AttributeError, match=r"(?s)total_stps.*Did you mean \"total_steps\""):
        flag_values(argv)


def test_misspelled_field_in_a_sweep_point(tmp_path):
    config_file = tmp_path / "sweep.py"
    config_file.write_text(
        f"import sys\nsys.path.insert(0, {ROOT!r})\n"
        "from configs.demo import get_config  # noqa: F401\n\n\n"
        "def sweep(arg=None):\n    return [{'loss.lam': 0.1}, {'loss.lamda': 0.3}]\n"
    )
    with pytest.raises(
        ValueError,
        match=r"sweep point 'lamda=0.3': config field 'loss.lamda' does not exist \(loss has "
        r"\['gamma', 'lam', 'name'\]\)",
    ):
        sweep.build_points(str(config_file), str(tmp_path / "out"))


@pytest.mark.parametrize(
    "function,arg,match",
    [
        (demo.get_config, "los=mle", r"config arg 'los=mle': expected key=value with key in \["),
        (demo.sweep, "lamda", r"sweep arg 'lamda'; allowed: \["),
        (studies.text_task_sweep, "study=lamda", r"sweep arg study='lamda'; allowed: lambda,"),
    ],
    ids=["config_arg", "sweep_arg", "text_task_sweep_arg"],
)
def test_unknown_config_or_sweep_arg(function, arg, match):
    with pytest.raises(ValueError, match=match):
        function(arg)
