"""The paper's text tasks (XSUM, GSM8k, TL;DR, WMT22) as seqio task builders.

Each task is a preprocessing function from one raw example (the field layout of
`../shared/data/`, which is also that of the TFDS / Hugging Face copies) to `inputs` /
`targets` text. Examples come from JSON Lines files named per split in `config.task.files`
(`source="jsonl"`), read completely and checked: a malformed line or a missing, non-text or
empty field fails naming the file, line and field, and the fix. Inputs and targets longer
than `max_input_len` / `max_target_len` tokens are truncated by the feature converter, and
counted in a warning when the split is read.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping

import seqio
import tensorflow as tf
from absl import logging

from irl_lm import files

SPLITS = ("train", "validation", "test")
LENGTH_FIELDS = {"inputs": "max_input_len", "targets": "max_target_len"}  # of config.task
LANGUAGES = {"en": "English", "de": "German", "cs": "Czech", "zh": "Chinese"}
# The WMT22 pairs with a shared test file (task wmt22_<source>_<target>).
WMT22_PAIRS = (("en", "de"), ("de", "en"), ("en", "cs"), ("cs", "en"), ("en", "zh"), ("zh", "en"))


@dataclasses.dataclass(frozen=True)
class TextTask:
    fields: tuple[str, ...]  # the raw fields `preprocess` reads
    preprocess: Callable[[Mapping], tuple[str, str]]  # raw example -> (inputs, targets)
    max_lengths: tuple[int, int]  # default (inputs, targets) token lengths
    metrics: tuple[str, ...]  # functions of irl_lm.metrics.text scoring decoded outputs


def _xsum(ex):
    return "summarize: " + ex["document"], ex["summary"]


def _gsm8k(ex):
    return ex["question"], ex["answer"]  # the worked answer, ending in "#### <number>"


def _tldr(ex):
    return ex["prompt"], ex["label"]  # "SUBREDDIT: r/...\nTITLE: ...\nPOST: ...\nTL;DR:"


def _translation(source: str, target: str):
    def preprocess(ex):
        prefix = f"translate {LANGUAGES[source]} to {LANGUAGES[target]}: "
        return prefix + ex[source], ex[target]

    return TextTask((source, target), preprocess, (256, 256), ("bleu", "chrf"))


TEXT_TASKS: dict[str, TextTask] = {
    "xsum": TextTask(("document", "summary"), _xsum, (512, 64), ("rouge",)),
    "gsm8k": TextTask(("question", "answer"), _gsm8k, (256, 256), ("gsm8k_accuracy",)),
    "tldr": TextTask(("prompt", "label"), _tldr, (512, 64), ("rouge",)),
    **{f"wmt22_{s}_{t}": _translation(s, t) for s, t in WMT22_PAIRS},
}


# What a JSON value that is not a string is, in JSON's words (for error messages).
JSON_KINDS = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def read_jsonl(path: str, fields: tuple[str, ...]) -> list[dict]:
    """Every line of `path` as a dict; errors name the file, line and field, and the fix."""
    if not files.path(path).exists():
        raise FileNotFoundError(f"config.task.files: {path} does not exist")
    need = f"each line needs the non-empty text fields {list(fields)}"
    rows = []
    for where, row in files.read_jsonl_records(path):
        for field in fields:
            value = row.get(field)
            if field not in row:
                raise ValueError(
                    f"{where}: field {field!r} is missing (the line has {sorted(row)}); {need}"
                )
            if not isinstance(value, str):
                kind = JSON_KINDS.get(type(value), type(value).__name__)
                raise ValueError(
                    f"{where}: field {field!r} is {kind} ({json.dumps(value)[:40]}), not text; "
                    f"{need}"
                )
            if not value.strip():
                # An empty target teaches the model to stop at once; an empty input has
                # nothing to condition on: both are data errors, not examples.
                raise ValueError(
                    f"{where}: field {field!r} is empty; fill it in or remove the line"
                )
        rows.append(row)
    if not rows:
        raise ValueError(
            f"{path}: the file is empty; config.task.files must name files of examples"
        )
    return rows


def build(
    name: str, task_config: Mapping, vocabulary: seqio.Vocabulary, lengths: Mapping[str, int]
) -> dict:
    """seqio.TaskRegistry.add arguments for text task `name` from `config.task`, whose
    batches have `lengths` tokens (inputs, targets)."""
    task = TEXT_TASKS[name]
    source = task_config.get("source", "jsonl")
    if source not in SOURCES:
        raise ValueError(f"config.task.source={source!r}; allowed: {sorted(SOURCES)}")
    files = dict(task_config.get("files") or {})
    if source == "jsonl":
        unknown = sorted(set(files) - set(SPLITS))
        if unknown or not files:
            raise ValueError(
                f"config.task.files for {name} must name JSON Lines files for splits in "
                f"{SPLITS}; got {sorted(files) or 'none'}"
            )
        splits = tuple(files)
    else:
        splits = SPLITS
    limit = int(task_config.get("num_train_examples") or 0)

    @functools.cache
    def examples(split: str) -> dict[str, list[str]]:
        if source == "jsonl":
            rows, origin = read_jsonl(files[split], task.fields), files[split]
        else:
            rows, origin = SOURCES[source](name, split, task_config), f"{source} source"
        total = len(rows)
        if split == "train" and limit:
            rows = rows[:limit]
        logging.info("%s/%s: %d of the %d examples in %s", name, split, len(rows), total, origin)
        pairs = [task.preprocess(row) for row in rows]
        inputs, targets = [p[0] for p in pairs], [p[1] for p in pairs]
        for feature, texts in (("inputs", inputs), ("targets", targets)):
            sizes = [len(vocabulary.encode(text)) + 1 for text in texts]  # + EOS
            max_len = lengths[feature]
            truncated = sum(size > max_len for size in sizes)
            if truncated:  # the feature converter cuts them: say how many, and the fix
                logging.warning(
                    "%s/%s: %d of %d %s are longer than %d tokens (the longest: %d) and are "
                    "truncated; raise config.task.%s to keep them whole",
                    name,
                    split,
                    truncated,
                    len(sizes),
                    feature,
                    max_len,
                    max(sizes),
                    LENGTH_FIELDS[feature],
                )
        return {"inputs": inputs, "targets": targets}

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices(examples(split))

    features = {
        key: seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)
        for key in ("inputs", "targets")
    }
    return dict(
        source=seqio.FunctionDataSource(dataset_fn, splits=splits),
        output_features=features,
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    )


def default_lengths(name: str) -> dict[str, int]:
    max_in, max_out = TEXT_TASKS[name].max_lengths
    return {"inputs": max_in, "targets": max_out}


# ----------------------------------------------------------------------------- remote sources
# Each returns the rows of one split in the field layout of shared/data; nothing is fetched
# before a split is first read. Unreachable sources fail saying so and naming the jsonl option.

# TFDS xsum needs its manual download; WMT22 trains on a WMT19 corpus by default
# (`config.task.tfds_name` picks another, e.g. "wmt19_translate/de-en:1.0.0").
TFDS_NAMES = {
    "gsm8k": "gsm8k",
    "xsum": "xsum",
    **{f"wmt22_{s}_{t}": f"wmt19_translate/{'-'.join(sorted((s, t), key=lambda x: x == 'en'))}"
       for s, t in WMT22_PAIRS},
}  # fmt: skip
HF_NAMES = {"xsum": "EdinburghNLP/xsum", "tldr": "CarperAI/openai_summarize_tldr"}
HF_SPLITS = {"validation": "valid"}  # CarperAI's TL;DR names its validation split "valid"


def _unreachable(source: str, what: str, split: str, error: Exception) -> RuntimeError:
    return RuntimeError(
        f"config.task.source={source!r}: could not read {what} ({type(error).__name__}: "
        f"{str(error)[:200]}). Offline or without that package, use source='jsonl' with "
        f"config.task.files.{split} pointing at a local JSON Lines file (see shared/data)."
    )


def _tfds_rows(name: str, split: str, task_config: Mapping) -> list[dict]:
    import tensorflow_datasets as tfds

    tfds_name = task_config.get("tfds_name") or TFDS_NAMES.get(name)
    if tfds_name is None:
        raise ValueError(f"no TFDS source for {name}; set config.task.tfds_name")
    try:
        dataset = tfds.load(tfds_name, split=split, data_dir=task_config.get("data_dir"))
    except Exception as e:  # network, missing manual download, unknown split
        raise _unreachable("tfds", f"TFDS {tfds_name!r} split {split!r}", split, e) from e
    return [{k: v.decode() for k, v in ex.items() if isinstance(v, bytes)}
            for ex in tfds.as_numpy(dataset)]  # fmt: skip


def _hf_rows(name: str, split: str, task_config: Mapping) -> list[dict]:
    if name not in HF_NAMES:
        raise ValueError(f"no Hugging Face source for {name}; it has {sorted(HF_NAMES)}")
    hf_name = task_config.get("hf_name") or HF_NAMES[name]
    try:
        import datasets

        rows = datasets.load_dataset(hf_name, split=HF_SPLITS.get(split, split))
    except Exception as e:  # not installed, network, unknown split
        raise _unreachable("hf", f"Hugging Face {hf_name!r} split {split!r}", split, e) from e
    return [dict(row) for row in rows]


def _sacrebleu_rows(name: str, split: str, task_config: Mapping) -> list[dict]:
    """WMT22 generaltest2022 through sacreBLEU's test-set loader (the test split only)."""
    if not name.startswith("wmt22_") or split == "train":
        raise ValueError(
            f"the sacrebleu source holds WMT22 test sets only; for {name}/{split} use jsonl"
        )
    source, target = name.split("_")[1:]
    from sacrebleu.utils import get_reference_files, get_source_file

    try:
        with open(get_source_file("wmt22", f"{source}-{target}")) as f:
            sources = f.read().splitlines()
        with open(get_reference_files("wmt22", f"{source}-{target}")[0]) as f:
            references = f.read().splitlines()
    except Exception as e:
        raise _unreachable("sacrebleu", f"WMT22 {source}-{target}", split, e) from e
    return [{source: s, target: t} for s, t in zip(sources, references, strict=True)]


SOURCES = {"jsonl": None, "tfds": _tfds_rows, "hf": _hf_rows, "sacrebleu": _sacrebleu_rows}
