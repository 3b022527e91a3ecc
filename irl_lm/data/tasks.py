"""seqio tasks and mixtures, named by `config.task.name`.

- **Any task or mixture in seqio's registries**, such as one a user registers in their own
  module: list the module in `config.task.modules` and it is imported first (by the trainer
  on every host, and by the evaluate and sweep CLIs). Its source, preprocessors, vocabulary,
  `postprocess_fn` and `metric_fns` are its own; `config.task.max_input_len` /
  `max_target_len` set the batch lengths and are required.
- **Ours**, registered when this module is imported, as ordinary seqio tasks:
  `irl_lm.xsum`, `irl_lm.gsm8k`, `irl_lm.tldr`, `irl_lm.wmt22_<source>_<target>` (TFDS or
  Hugging Face sources, T5's SentencePiece vocabulary) and `irl_lm.synthetic_expert` (the
  demo's expert). Their settings in `config.task` (`DEFINITIONS[name].fields`: source, files,
  vocabulary, num_train_examples, expert, ...) pick a run's data and vocabulary. A vocabulary
  and a source are parts of a seqio Task (its output features and its source), so a config
  that changes them gets its own task, registered on first use as
  `<name>#<digest of the settings>` by the same code: the name keeps meaning one task
  definition (templates, metrics, postprocessing) and every run reads the data it names.
- **`jsonl`**, a task made by the config alone: `files.<split>`, `inputs` and `targets` (a
  field name or a format template over the row's fields, `"question: {question}"`), `metrics`
  (names in `irl_lm.metrics.text.METRICS`), `vocabulary`, and both lengths.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import importlib
import json
import sys
import time
from collections.abc import Callable, Mapping

import seqio
import tensorflow as tf
from absl import logging

from irl_lm.data import text_tasks
from irl_lm.data.synthetic import EOS_ID, ExpertSpec, SyntheticExpert
from irl_lm.data.vocabularies import load_vocabulary

SPLITS = text_tasks.SPLITS
LENGTH_FIELDS = text_tasks.LENGTH_FIELDS
# config.task fields of every task; the others are settings of our tasks (`TaskDefinition.fields`).
# `allow_overlap`: train although training data holds evaluation examples (`check_disjoint`).
GENERAL_FIELDS = ("name", "modules", *LENGTH_FIELDS.values(), "allow_overlap")
# The vocabulary of the registered text tasks: T5's SentencePiece model (read when used).
T5_VOCABULARY = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
T5_EXTRA_IDS = 100
SYNTHETIC_EXPERT = "irl_lm.synthetic_expert"


def expert_from_config(task_config: Mapping) -> SyntheticExpert:
    """The synthetic expert described by `config.task.expert`."""
    fields = dict(task_config.get("expert") or {})
    try:
        return SyntheticExpert(ExpertSpec(**fields))
    except TypeError as e:  # unknown field
        raise ValueError(f"config.task.expert: {e}") from None


def _synthetic_expert_task(settings: Mapping) -> dict:
    """Examples drawn from the known expert p_E(y | x), deterministic in the expert's seed."""
    expert = expert_from_config(settings)
    sizes = {
        "train": int(settings["num_train_examples"]),
        "validation": int(settings["num_eval_examples"]),
        "test": int(settings["num_eval_examples"]),
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

    vocabulary = task_vocabulary(settings)
    if vocabulary is None:
        vocabulary = seqio.PassThroughVocabulary(size=expert.spec.vocab_size, eos_id=EOS_ID)
    elif vocabulary.vocab_size < expert.spec.vocab_size or vocabulary.eos_id != EOS_ID:
        raise ValueError(
            f"config.task.vocabulary={settings['vocabulary']!r} has {vocabulary.vocab_size} "
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


def _synthetic_expert_lengths(settings: Mapping) -> dict[str, int]:
    spec = expert_from_config(settings).spec
    return {"inputs": spec.max_input_len_with_eos, "targets": spec.max_target_len}


def task_vocabulary(settings: Mapping) -> seqio.Vocabulary | None:
    """`config.task.vocabulary` of our tasks: a folder with a tokenizer (`spiece.model`,
    `tokenizer.model` or `tokenizer.json` of a Hugging Face checkpoint; the trainer fills it
    in from `config.init_from`), "byte" (UTF-8 bytes, as ByT5: needs no file), or "" for the
    task's own."""
    value = settings.get("vocabulary") or ""
    if value == "byte":
        return seqio.ByteVocabulary()
    return load_vocabulary(value) if value else None


def _text_task(task: text_tasks.TextTask | None, settings: Mapping) -> dict:
    name = settings["name"]
    if task is None:  # the config-only jsonl task
        task = jsonl_task(settings)
    vocabulary = task_vocabulary(settings)
    if vocabulary is None and name == "jsonl":
        raise ValueError(
            "config.task.vocabulary is empty: the jsonl task needs one (a folder with a "
            "tokenizer, set for you by config.init_from=hf:DIR, or 'byte')"
        )
    if vocabulary is None:
        vocabulary = seqio.SentencePieceVocabulary(T5_VOCABULARY, extra_ids=T5_EXTRA_IDS)
    return text_tasks.build(task, settings, vocabulary)


def jsonl_task(settings: Mapping) -> text_tasks.TextTask:
    """The config-only task's templates and metrics, checked."""
    for field in ("inputs", "targets"):
        if not settings.get(field):
            raise ValueError(
                f"config.task.{field} is empty: the jsonl task needs the field name (or a "
                "format template such as 'question: {question}') of each line's "
                f"{field}"
            )
    metrics = settings.get("metrics") or ()
    if isinstance(metrics, str):  # "bleu,chrf" (from the command line)
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    metrics = tuple(metrics)
    unknown = sorted(set(metrics) - set(text_tasks.text_metrics.METRICS))
    if unknown:
        raise ValueError(
            f"config.task.metrics: {unknown} are not metrics; allowed: "
            f"{sorted(text_tasks.text_metrics.METRICS)}"
        )
    task = text_tasks.TextTask(
        text_tasks.as_template(settings["inputs"]),
        text_tasks.as_template(settings["targets"]),
        (0, 0),
        metrics,
        source="jsonl",
    )
    task.fields  # noqa: B018 (checks both templates)
    return task


@dataclasses.dataclass(frozen=True)
class TaskDefinition:
    """One of irl-lm's tasks: `build(settings)` -> seqio.TaskRegistry.add arguments, for the
    settings `fields` allows (`defaults`: those of the registered task)."""

    build: Callable[[Mapping], dict]
    lengths: Callable[[Mapping], dict[str, int]]  # the task's natural lengths
    defaults: Mapping
    fields: tuple[str, ...]


_TEXT_FIELDS = (
    "source",
    "files",
    "vocabulary",
    "num_train_examples",
    "tfds_name",
    "hf_name",
    "data_dir",
)


def _text_definition(name: str, task: text_tasks.TextTask) -> TaskDefinition:
    max_in, max_out = task.max_lengths
    return TaskDefinition(
        build=functools.partial(_text_task, task),
        lengths=lambda settings: {"inputs": max_in, "targets": max_out},
        defaults={"name": f"irl_lm.{name}", "source": task.source},
        fields=_TEXT_FIELDS,
    )


DEFINITIONS: dict[str, TaskDefinition] = {
    "irl_lm.synthetic_expert": TaskDefinition(
        build=_synthetic_expert_task,
        lengths=_synthetic_expert_lengths,
        defaults={
            "name": "irl_lm.synthetic_expert",
            "num_train_examples": 20_000,
            "num_eval_examples": 512,
            "expert": dataclasses.asdict(ExpertSpec()),
        },
        fields=("num_train_examples", "num_eval_examples", "expert", "vocabulary"),
    ),
    **{
        f"irl_lm.{name}": _text_definition(name, task)
        for name, task in text_tasks.TEXT_TASKS.items()
    },
    "jsonl": TaskDefinition(
        build=functools.partial(_text_task, None),
        lengths=lambda settings: {"inputs": 0, "targets": 0},
        defaults={"name": "jsonl", "source": "jsonl"},
        fields=("files", "inputs", "targets", "metrics", "vocabulary", "num_train_examples"),
    ),
}

for _name, _definition in DEFINITIONS.items():
    if _name != "jsonl" and _name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(_name, **_definition.build(_definition.defaults))


# ----------------------------------------------------------------------------- names


def _modules(task_config: Mapping) -> list[str]:
    """`config.task.modules`: a list of module names, or one string "a,b"."""
    modules = task_config.get("modules") or ()
    modules = modules.split(",") if isinstance(modules, str) else list(modules)
    return [m.strip() for m in modules if m.strip()]


def import_modules(task_config: Mapping) -> None:
    """Imports `config.task.modules` (module names), whose import registers a user's tasks."""
    for module in _modules(task_config):
        if module in sys.modules:
            continue
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
                raise  # the module exists; something it imports does not
            raise ValueError(
                f"config.task.modules: module {module!r} is not importable ({e}); put the "
                "folder that holds it on PYTHONPATH (or run from that folder), and check "
                "its name in config.task.modules"
            ) from None


def task_name(task_config: Mapping) -> str:
    """The registered name `config.task.name` means (importing `config.task.modules` first);
    fails listing close matches from seqio's registries."""
    import_modules(task_config)
    name = str(task_config.get("name") or "")
    registered = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    if name in DEFINITIONS or name in registered:
        return name
    if f"irl_lm.{name}" in DEFINITIONS:  # our names before they were seqio's (old workdirs)
        return f"irl_lm.{name}"
    known = {n: n for n in registered | set(DEFINITIONS) if "#" not in n}
    known |= {n.removeprefix("irl_lm."): n for n in known if n.startswith("irl_lm.")}
    matches = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.75)
    close = list(dict.fromkeys(known[m] for m in matches))
    raise ValueError(
        f"config.task.name={name!r} is not a registered seqio task or mixture"
        + (f"; close matches: {close}" if close else "")
        + f". Ours: {sorted(DEFINITIONS)}. A task registered in your own module needs that "
        f"module in config.task.modules (now {_modules(task_config)})"
    )


def _to_plain(value):
    if hasattr(value, "to_dict"):  # ml_collections.ConfigDict
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value


def _settings(task_config: Mapping, name: str) -> dict:
    """The settings `config.task` gives (empty values mean the task's own), checked against
    what the task takes."""
    given = {
        k: _to_plain(v)
        for k, v in task_config.items()
        if k not in GENERAL_FIELDS and v not in ("", 0, None) and _to_plain(v) not in ({}, [])
    }
    definition = DEFINITIONS.get(name)
    allowed = definition.fields if definition else ()
    unknown = sorted(set(given) - set(allowed))
    if unknown and definition is None:
        raise ValueError(
            f"config.task: {unknown} are not fields of {name!r}, a seqio task registered "
            "elsewhere, whose source, vocabulary and metrics are its own (source, files, "
            f"vocabulary, ... are settings of irl-lm's tasks); config.task may set "
            f"{list(GENERAL_FIELDS)}"
        )
    if unknown:
        raise ValueError(
            f"config.task: unknown fields {unknown} for task {name!r}; allowed: "
            f"{sorted({*GENERAL_FIELDS, *allowed})}"
        )
    return {**definition.defaults, **given} if definition else {}


def get_task(task_config: Mapping) -> seqio.Task | seqio.Mixture:
    """The seqio task or mixture `config.task` names (ours with its settings registered on
    first use, see the module's docstring)."""
    name = task_name(task_config)
    definition = DEFINITIONS.get(name)
    settings = _settings(task_config, name)
    if definition is None:
        return seqio.get_mixture_or_task(name)
    if name != "jsonl" and settings == _to_plain(definition.defaults):
        return seqio.TaskRegistry.get(name)
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    registry_name = f"{name}#{digest}"
    if registry_name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(registry_name, **definition.build(settings))
    return seqio.TaskRegistry.get(registry_name)


def check_disjoint(task_config: Mapping) -> None:
    """Refuses a run that trains on its evaluation data (`text_tasks.check_disjoint`: the
    same file, or an example in both), unless `config.task.allow_overlap`. Checked for our
    text tasks and the jsonl task on JSON Lines files; TFDS and Hugging Face splits are
    their dataset's own, the synthetic expert draws each split apart, and a task registered
    elsewhere defines its own splits."""
    name = task_name(task_config)
    settings = _settings(task_config, name)
    if task_config.get("allow_overlap") or settings.get("source") != "jsonl":
        return
    if name == "jsonl":
        text_task = jsonl_task(settings)
    elif name.removeprefix("irl_lm.") in text_tasks.TEXT_TASKS:
        text_task = text_tasks.TEXT_TASKS[name.removeprefix("irl_lm.")]
    else:
        return
    started = time.time()
    limit = int(settings.get("num_train_examples") or 0)
    count = text_tasks.check_disjoint(text_task, settings.get("files") or {}, limit)
    logging.info(
        "Training data holds no evaluation example (%d training examples hashed in %.0f s)",
        count,
        time.time() - started,
    )


def subtasks(task: seqio.Task | seqio.Mixture) -> list[seqio.Task]:
    """The tasks of a mixture (its leaves), or [task]."""
    return list(task.tasks) if isinstance(task, seqio.Mixture) else [task]


def vocabulary(task_config: Mapping) -> seqio.Vocabulary:
    """The vocabulary of the task's features; inputs and targets must share it (the models
    have one embedding)."""
    task = get_task(task_config)
    features = task.output_features
    missing = sorted({"inputs", "targets"} - set(features))
    if missing:
        raise ValueError(
            f"task {task.name!r} has the output features {sorted(features)}; irl-lm trains "
            f"on 'inputs' -> 'targets' pairs, and {missing} is missing"
        )
    ours, theirs = features["targets"].vocabulary, features["inputs"].vocabulary
    try:
        ours.vocab_size  # noqa: B018 (a SentencePiece model is read here)
    except Exception as e:  # e.g. T5's vocabulary on gs://, offline
        where = getattr(ours, "sentencepiece_model_file", type(ours).__name__)
        raise RuntimeError(
            f"task {task.name!r}: its vocabulary ({where}) cannot be read "
            f"({type(e).__name__}: {str(e)[:200]}); set config.task.vocabulary to a tokenizer "
            "folder or 'byte', or config.init_from=hf:DIR to take a checkpoint's"
        ) from e
    if ours != theirs and (ours.vocab_size, ours.encode(PROBE_TEXT)) != (
        theirs.vocab_size,
        theirs.encode(PROBE_TEXT),
    ):
        raise ValueError(
            f"task {task.name!r}: its inputs and targets have different vocabularies "
            f"({theirs.vocab_size} and {ours.vocab_size} tokens); the model has one embedding"
        )
    return ours


def takes_vocabulary(task_config: Mapping) -> bool:
    """Whether `config.task.vocabulary` is a setting of this task (ours)."""
    definition = DEFINITIONS.get(task_name(task_config))
    return definition is not None and "vocabulary" in definition.fields


def feature_lengths(task_config: Mapping) -> dict[str, int]:
    """Batch lengths: `config.task.max_input_len` / `max_target_len` when set (> 0, e.g.
    longer rows for packing), else our task's own maxima; required for other tasks."""
    name = task_name(task_config)
    definition = DEFINITIONS.get(name)
    natural = definition.lengths(_settings(task_config, name)) if definition else {}
    lengths = {}
    for feature, field in LENGTH_FIELDS.items():
        lengths[feature] = int(task_config.get(field) or 0) or natural.get(feature, 0)
        if lengths[feature] <= 0:
            raise ValueError(
                f"config.task.{field} must be set (> 0) for task {name!r}: it is a seqio "
                "task whose lengths only its config knows"
            )
    return lengths


@dataclasses.dataclass(frozen=True)
class Task:
    """A run's task, looked up once from `config.task` and handed to the data pipeline, the
    learners and the evaluators: the registered name it means, the seqio task or mixture,
    their one vocabulary, the batch lengths, and for the synthetic expert its exact p_E."""

    name: str
    seqio_task: seqio.Task | seqio.Mixture
    vocabulary: seqio.Vocabulary
    lengths: Mapping[str, int]  # {"inputs": ..., "targets": ...}, before the feature converter
    settings: Mapping  # `config.task` as given, plain (what the data fingerprint reads)
    expert: SyntheticExpert | None = None

    @property
    def subtasks(self) -> list[seqio.Task]:
        return subtasks(self.seqio_task)

    @property
    def eos_id(self) -> int:
        return self.vocabulary.eos_id


def build(task_config: Mapping) -> Task:
    """The `Task` `config.task` describes; fails naming the field on a bad one."""
    name = task_name(task_config)
    expert = expert_from_config(task_config) if name == SYNTHETIC_EXPERT else None
    return Task(
        name=name,
        seqio_task=get_task(task_config),
        vocabulary=vocabulary(task_config),
        lengths=feature_lengths(task_config),
        settings=_to_plain(task_config),
        expert=expert,
    )


# ----------------------------------------------------------------------------- checks


# Text on which two vocabularies must give the same ids to be one (letters, digits, a
# non-Latin script, punctuation, spaces); extra sentinel ids at the top may differ.
PROBE_TEXT = "The 3 quick foxes jumped: Übermaß, naïve, 中文, x+y=12!  Done."


def check_vocabulary_matches(task_config: Mapping, folder: str, where: str) -> None:
    """Fails when the task's vocabulary tokenizes text other than the tokenizer in `folder`
    (the checkpoint `where` names): the model's ids would mean other tokens. Our tasks
    without `config.task.vocabulary` take the checkpoint's, so they always match."""
    if takes_vocabulary(task_config) and not task_config.get("vocabulary"):
        return
    ours, theirs = vocabulary(task_config), load_vocabulary(folder)
    if ours == theirs:
        return
    if (ours.encode(PROBE_TEXT), ours.eos_id) != (theirs.encode(PROBE_TEXT), theirs.eos_id):
        if takes_vocabulary(task_config):
            what = f"config.task.vocabulary={task_config['vocabulary']!r}"
            fix = "set config.task.vocabulary='' to take the checkpoint's tokenizer"
        else:
            what = f"the vocabulary of task {task_name(task_config)!r}"
            fix = "register the task with the checkpoint's tokenizer in its output features"
        raise ValueError(
            f"{what} ({ours.vocab_size} tokens, EOS id {ours.eos_id}) is not the tokenizer "
            f"of {where} ({theirs.vocab_size} tokens, EOS id {theirs.eos_id}), so the "
            f"model's token ids would mean other tokens; {fix}"
        )


def report_truncation(run_task: Task, split: str, max_examples: int = 1000) -> dict:
    """Counts the inputs and targets longer than the batch lengths (the feature converter
    cuts them) among the split's first `max_examples` examples, and warns with the fix.
    Returns {feature: number cut}."""
    lengths = run_task.lengths
    cut = {}
    for task in run_task.subtasks:
        if split not in task.splits:
            continue
        sizes = {feature: [] for feature in lengths}
        try:
            ds = task.get_dataset(None, split=split, shuffle=False, use_cached=False)
            for example in text_tasks.read(ds.take(max_examples)):
                for feature, values in sizes.items():
                    values.append(len(example[feature]))
        except ValueError:
            raise  # a bad line: the data must be fixed
        except Exception as e:  # e.g. a preprocessor that needs the sequence lengths
            logging.warning(
                "%s/%s: over-long examples not counted (%s: %s)",
                task.name,
                split,
                type(e).__name__,
                str(e)[:200],
            )
            continue
        for feature, values in sizes.items():
            over = sum(size > lengths[feature] for size in values)
            cut[feature] = cut.get(feature, 0) + over
            if over:
                of = f"the first {len(values)}" if len(values) == max_examples else len(values)
                logging.warning(
                    "%s/%s: %d of %s %s are longer than %d tokens (the longest: %d) and are "
                    "truncated; raise config.task.%s to keep them whole",
                    task.name.split("#")[0],
                    split,
                    over,
                    of,
                    feature,
                    lengths[feature],
                    max(values),
                    LENGTH_FIELDS[feature],
                )
    return cut
