"""seqio tasks, registered from `config.task` (`config.task.name` picks the builder).

`get_task` registers each task under a name that includes its settings, built once per
settings, so two configs of the same task (say, two expert entropies) live in one process.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping

import seqio
import tensorflow as tf

from irl_lm.data import text_tasks
from irl_lm.data.synthetic import EOS_ID, ExpertSpec, SyntheticExpert
from irl_lm.models.hf import load_vocabulary

SPLITS = ("train", "validation", "test")


def expert_from_config(task_config: Mapping) -> SyntheticExpert:
    """The synthetic expert described by `config.task.expert`."""
    fields = dict(task_config["expert"])
    try:
        return SyntheticExpert(ExpertSpec(**fields))
    except TypeError as e:  # unknown field
        raise ValueError(f"config.task.expert: {e}") from None


def _synthetic_expert_task(task_config: Mapping) -> dict:
    """Examples drawn from the known expert p_E(y | x), deterministic in the expert's seed."""
    expert = expert_from_config(task_config)
    sizes = {
        "train": int(task_config["num_train_examples"]),
        "validation": int(task_config["num_eval_examples"]),
        "test": int(task_config["num_eval_examples"]),
    }

    @functools.cache
    def examples(split: str) -> dict[str, tf.RaggedTensor]:
        # Generated once per split (NumPy), then served from memory: the expert is too slow
        # to run per example per epoch inside the input pipeline.
        inputs, targets = [], []
        for index in range(sizes[split]):
            example = expert.example(split, index)
            assert example["targets"][-1] == EOS_ID
            inputs.append(example["inputs"])
            # seqio appends EOS itself (Feature.add_eos), so stored targets stop before it.
            targets.append(example["targets"][:-1])
        return {
            "inputs": tf.ragged.constant(inputs, dtype=tf.int32),
            "targets": tf.ragged.constant(targets, dtype=tf.int32),
        }

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # generated in order; seqio shuffles examples
        return tf.data.Dataset.from_tensor_slices(examples(split))

    vocabulary = task_vocabulary(task_config)
    if vocabulary is None:
        vocabulary = seqio.PassThroughVocabulary(size=expert.spec.vocab_size, eos_id=EOS_ID)
    elif vocabulary.vocab_size < expert.spec.vocab_size or vocabulary.eos_id != EOS_ID:
        raise ValueError(
            f"config.task.vocabulary={task_config['vocabulary']!r} has {vocabulary.vocab_size} "
            f"tokens and EOS id {vocabulary.eos_id}; the synthetic expert needs at least "
            f"{expert.spec.vocab_size} tokens and EOS id {EOS_ID}"
        )
    features = {
        name: seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)
        for name in ("inputs", "targets")
    }
    return dict(
        source=seqio.FunctionDataSource(dataset_fn, splits=SPLITS, num_input_examples=sizes),
        output_features=features,
        preprocessors=[seqio.preprocessors.append_eos_after_trim],
    )


def task_vocabulary(task_config: Mapping) -> seqio.Vocabulary | None:
    """`config.task.vocabulary`: a folder with a tokenizer (`spiece.model`, `tokenizer.model`
    or `tokenizer.json` of a Hugging Face checkpoint; the trainer fills it in from
    `config.init_from`), "byte" (UTF-8 bytes, as ByT5: needs no file), or "" for the task's
    own."""
    value = task_config.get("vocabulary") or ""
    if value == "byte":
        return seqio.ByteVocabulary()
    return load_vocabulary(value) if value else None


# Text on which two vocabularies must give the same ids to be one (letters, digits, a
# non-Latin script, punctuation, spaces); extra sentinel ids at the top may differ.
PROBE_TEXT = "The 3 quick foxes jumped: Übermaß, naïve, 中文, x+y=12!  Done."


def check_vocabulary_matches(task_config: Mapping, folder: str, where: str) -> None:
    """Fails when `config.task.vocabulary` tokenizes text other than the tokenizer in
    `folder` (the checkpoint `where` names): the model's ids would mean other tokens."""
    ours = task_vocabulary(task_config)
    theirs = load_vocabulary(folder)
    if ours is None or ours == theirs:
        return
    if (ours.encode(PROBE_TEXT), ours.eos_id) != (theirs.encode(PROBE_TEXT), theirs.eos_id):
        raise ValueError(
            f"config.task.vocabulary={task_config['vocabulary']!r} ({ours.vocab_size} tokens) "
            f"is not the tokenizer of {where} ({theirs.vocab_size} tokens), so the model's "
            "token ids would mean other tokens; set config.task.vocabulary='' to take the "
            "checkpoint's tokenizer"
        )


def _text_task(name: str, task_config: Mapping) -> dict:
    vocabulary = task_vocabulary(task_config)
    if vocabulary is None:
        raise ValueError(
            f"config.task.vocabulary is empty: the {name} task needs one (a folder with a "
            "tokenizer, set for you by config.init_from=hf:DIR, or 'byte')"
        )
    return text_tasks.build(name, task_config, vocabulary, feature_lengths(task_config))


def _to_plain(value):
    if hasattr(value, "to_dict"):  # ml_collections.ConfigDict
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


# config.task.name -> builder(task_config) -> keyword arguments of seqio.TaskRegistry.add
TASKS: dict[str, Callable[[Mapping], dict]] = {
    "synthetic_expert": _synthetic_expert_task,
    **{name: functools.partial(_text_task, name) for name in text_tasks.TEXT_TASKS},
}


def _synthetic_expert_lengths(task_config: Mapping) -> dict[str, int]:
    spec = expert_from_config(task_config).spec
    return {"inputs": spec.max_input_len_with_eos, "targets": spec.max_target_len}


# config.task.name -> function(task_config) -> the task's natural {"inputs", "targets"} lengths
FEATURE_LENGTHS: dict[str, Callable[[Mapping], dict[str, int]]] = {
    "synthetic_expert": _synthetic_expert_lengths,
    **{
        name: lambda task_config, name=name: text_tasks.default_lengths(name)
        for name in text_tasks.TEXT_TASKS
    },
}


def get_task(task_config: Mapping) -> seqio.Task:
    """The seqio task for `config.task`, registered on first use (built once per settings)."""
    name = task_config.get("name")
    if name not in TASKS:
        raise ValueError(f"config.task.name={name!r} is not a task; allowed: {sorted(TASKS)}")
    settings = json.dumps(_to_plain(task_config), sort_keys=True)
    registry_name = f"{name}_{hashlib.sha1(settings.encode()).hexdigest()[:10]}"
    if registry_name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(registry_name, **TASKS[name](task_config))
    return seqio.TaskRegistry.get(registry_name)


def feature_lengths(task_config: Mapping) -> dict[str, int]:
    """Batch lengths: `config.task.max_input_len` / `max_target_len` when set (> 0, e.g. longer
    rows for packing), else the task's own maxima."""
    lengths = FEATURE_LENGTHS[task_config["name"]](task_config)
    fields = text_tasks.LENGTH_FIELDS
    return {k: int(task_config.get(fields[k]) or v) for k, v in lengths.items()}
