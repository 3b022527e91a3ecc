"""Text tasks as seqio tasks over streaming sources: the paper's (XSUM, GSM8k, TL;DR, WMT22)
and the config-only `jsonl` task.

A text task formats each raw example, a dict of text fields (the layout of `../shared/data`,
which is also that of the TFDS and Hugging Face copies), into `inputs` and `targets` with two
format templates over its fields (`"summarize: {document}"`), then tokenizes them. Its
sources (`config.task.source`), none of which loads a split into memory:

- `jsonl`: JSON Lines files per split (`config.task.files.<split>`: a path, a glob or a
  list), read line by line by `JsonlDataSource` (a `seqio.FileDataSource`: files are split
  across hosts when there are enough) and parsed by `parse_jsonl`. A malformed line or a
  missing, non-text or empty field fails naming the file, the line and the field, and the fix.
- `tfds`: `seqio.TfdsDataSource` (`config.task.tfds_name`, `data_dir`), sharded by file.
- `hf`: a Hugging Face dataset, streamed once into a JSON Lines file under
  `config.task.data_dir` (default `~/.cache/irl_lm/data`), then read as `jsonl`.
- `sacrebleu`: the WMT22 test sets through sacreBLEU's loader, converted once likewise.

Inputs and targets longer than `max_input_len` / `max_target_len` tokens are truncated by the
feature converter; `irl_lm.data.tasks.report_truncation` counts them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import string
from collections.abc import Callable, Iterator, Mapping, Sequence

import seqio
import tensorflow as tf

from irl_lm import files
from irl_lm.metrics import text as text_metrics

SPLITS = ("train", "validation", "test")
LENGTH_FIELDS = {"inputs": "max_input_len", "targets": "max_target_len"}  # of config.task
LANGUAGES = {"en": "English", "de": "German", "cs": "Czech", "zh": "Chinese"}
# The WMT22 pairs with a shared test file (task wmt22_<source>_<target>).
WMT22_PAIRS = (("en", "de"), ("de", "en"), ("en", "cs"), ("cs", "en"), ("en", "zh"), ("zh", "en"))
DEFAULT_DATA_DIR = os.path.join("~", ".cache", "irl_lm", "data")  # converted sources


@dataclasses.dataclass(frozen=True)
class TextTask:
    inputs: str  # format template over the raw fields, e.g. "summarize: {document}"
    targets: str
    max_lengths: tuple[int, int]  # default (inputs, targets) token lengths; (0, 0): none
    metrics: tuple[str, ...]  # names in irl_lm.metrics.text.METRICS
    source: str = "tfds"  # the source of the registered task (`irl_lm.<name>`)
    tfds_splits: tuple[str, ...] = SPLITS  # the splits its TFDS dataset has

    @property
    def fields(self) -> tuple[str, ...]:
        """The raw fields the templates read, in order."""
        names = template_fields(self.inputs, "inputs") + template_fields(self.targets, "targets")
        return tuple(dict.fromkeys(names))

    def format(self, row: Mapping[str, str]) -> tuple[str, str]:
        """(inputs, targets) of one raw example, in Python (what `formatter` does in TF)."""
        return self.inputs.format_map(row), self.targets.format_map(row)


def _translation(source: str, target: str) -> TextTask:
    prefix = f"translate {LANGUAGES[source]} to {LANGUAGES[target]}: "
    return TextTask(
        prefix + f"{{{source}}}",
        f"{{{target}}}",
        (256, 256),
        ("bleu", "chrf"),
        tfds_splits=("train", "validation"),
    )  # WMT19's; WMT22's test: sacrebleu


TEXT_TASKS: dict[str, TextTask] = {
    "xsum": TextTask("summarize: {document}", "{summary}", (512, 64), ("rouge",)),
    # the worked answer, ending in "#### <number>"
    "gsm8k": TextTask(
        "{question}", "{answer}", (256, 256), ("gsm8k_accuracy",), tfds_splits=("train", "test")
    ),
    # "SUBREDDIT: r/...\nTITLE: ...\nPOST: ...\nTL;DR:"
    "tldr": TextTask("{prompt}", "{label}", (512, 64), ("rouge",), source="hf"),
    **{f"wmt22_{s}_{t}": _translation(s, t) for s, t in WMT22_PAIRS},
}

# TFDS xsum needs its manual download; WMT22 trains on a WMT19 corpus by default
# (`config.task.tfds_name` picks another, e.g. "wmt19_translate/de-en:1.0.0").
# seqio wants versioned names.
TFDS_NAMES = {"gsm8k": "gsm8k:1.0.0", "xsum": "xsum:1.1.0"}
for _s, _t in WMT22_PAIRS:
    _pair = "-".join(sorted((_s, _t), key=lambda x: x == "en"))  # de-en, cs-en, zh-en
    TFDS_NAMES[f"wmt22_{_s}_{_t}"] = f"wmt19_translate/{_pair}:1.0.0"
HF_NAMES = {"xsum": "EdinburghNLP/xsum", "tldr": "CarperAI/openai_summarize_tldr"}
# Split names of the Hugging Face datasets that differ from ours.
HF_SPLITS = {"tldr": {"validation": "valid"}}  # CarperAI's TL;DR: "valid"


# ----------------------------------------------------------------------------- templates


def as_template(value: str) -> str:
    """A field name (`"question"`) as the template that copies it; templates stay as they are."""
    return value if "{" in value or "}" in value else f"{{{value}}}"


def input_template(task_config: Mapping) -> str | None:
    """The template a run's task formats its inputs with: `config.task.inputs` where set (a
    template, or a field name), else that of the paper task `irl_lm.<name>`; None for a task
    that is not text (the synthetic expert)."""
    inputs = task_config.get("inputs") or ""
    if inputs:
        return as_template(inputs)
    task = TEXT_TASKS.get(str(task_config.get("name", "")).removeprefix("irl_lm."))
    return task.inputs if task else None


def template_fields(template: str, where: str) -> tuple[str, ...]:
    """The fields `template` reads; fails naming `where` (the config field) on a bad one."""
    fix = "write fields as {name} and literal braces as {{ and }}"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(
            f"config.task.{where}={template!r} is not a template ({e}); {fix}"
        ) from None
    fields = []
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise ValueError(
                f"config.task.{where}={template!r}: {{{field}}} is not a field name; {fix}"
            )
        fields.append(field)
    if not fields:
        raise ValueError(
            f"config.task.{where}={template!r} reads no field; name one, e.g. 'question' or "
            "'question: {question}'"
        )
    return tuple(fields)


def _format_tf(template: str, row: Mapping[str, tf.Tensor]) -> tf.Tensor:
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append(literal)
        if field is not None:
            parts.append(row[field])
    return parts[0] if len(parts) == 1 else tf.strings.join(parts)


def formatter(task: TextTask) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    """A seqio preprocessor: raw rows -> {"inputs", "targets"} text by the task's templates."""

    @seqio.map_over_dataset
    def format_row(row):
        return {"inputs": _format_tf(task.inputs, row), "targets": _format_tf(task.targets, row)}

    return format_row


def strip(text: str, example=None, is_target: bool = False) -> str:
    """The text tasks' `postprocess_fn`: decoded text without surrounding whitespace."""
    del example, is_target
    return text.strip()


# ----------------------------------------------------------------------------- JSON Lines


# What a JSON value that is not a string is, in JSON's words (for error messages).
JSON_KINDS = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def check_fields(where: str, row: Mapping, fields: Sequence[str]) -> None:
    """Fails naming `where` (`FILE:LINE`) and the field when one is missing, not text or empty."""
    need = f"each line needs the non-empty text fields {list(fields)}"
    for field in fields:
        value = row.get(field)
        if field not in row:
            raise ValueError(
                f"{where}: field {field!r} is missing (the line has {sorted(row)}); {need}"
            )
        if not isinstance(value, str):
            kind = JSON_KINDS.get(type(value), type(value).__name__)
            raise ValueError(
                f"{where}: field {field!r} is {kind} ({json.dumps(value)[:40]}), not text; {need}"
            )
        if not value.strip():
            # An empty target teaches the model to stop at once; an empty input has nothing
            # to condition on: both are data errors, not examples.
            raise ValueError(f"{where}: field {field!r} is empty; fill it in or remove the line")


def _read_lines(file: tf.Tensor) -> tf.data.Dataset:
    lines = tf.data.TextLineDataset(file).enumerate(start=1)
    return lines.map(lambda n, text: {"file": file, "line": n, "text": text})


class JsonlDataSource(seqio.FileDataSource):
    """JSON Lines files per split, streamed as rows {"file", "line", "text"} (one per line,
    unparsed: `parse_jsonl` reads them). `limits`: split -> the first n rows only;
    `prepare(split)`: makes the split's file first (a converted source; idempotent)."""

    def __init__(
        self,
        split_to_filepattern: Mapping[str, str | Sequence[str]],
        *,
        limits: Mapping[str, int] | None = None,
        prepare: Callable[[str], None] | None = None,
    ):
        super().__init__(read_file_fn=_read_lines, split_to_filepattern=split_to_filepattern)
        self._limits, self._prepare = dict(limits or {}), prepare

    def list_shards(self, split: str) -> Sequence[str]:
        if self._prepare is not None:
            self._prepare(split)
        pattern = self._split_to_filepattern[split]
        found = super().list_shards(split)
        if not found:
            raise FileNotFoundError(f"config.task.files.{split}: {pattern} does not exist")
        for file in found:
            if not tf.io.gfile.exists(file):
                raise FileNotFoundError(f"config.task.files.{split}: {file} does not exist")
            if tf.io.gfile.stat(file).length == 0:
                raise ValueError(
                    f"{file}: the file is empty; config.task.files must name files of examples"
                )
        return found

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **kwargs):
        limit = self._limits.get(split)
        if not limit:
            return super().get_dataset(split, shuffle, seed, shard_info, **kwargs)
        # The first n rows of the files in order, whatever the seed and the host count.
        ds = super().get_dataset(split, False, seed, None, **kwargs).take(limit)
        return ds.shard(shard_info.num_shards, shard_info.index) if shard_info else ds

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return bool(self._limits)  # a limited split shards by row (above), else by file


def parse_jsonl(fields: Sequence[str]) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    """A seqio preprocessor: `JsonlDataSource` rows -> {field: text} for `fields`, checked
    (`files.parse_jsonl_line`, `check_fields`). Errors surface as TensorFlow errors while a
    dataset is read; `data_errors` turns them back into the ValueError with our message."""
    fields = tuple(fields)

    def parse(file, line_no, text):
        file, line_no = file.numpy().decode(), int(line_no.numpy())
        where = f"{file}:{line_no}"
        cut = lambda: files.last_line_is_cut(file, line_no)  # noqa: E731
        row = files.parse_jsonl_line(where, text.numpy(), cut=cut)
        check_fields(where, row, fields)
        return [row[field].encode() for field in fields]

    @seqio.map_over_dataset
    def parse_row(row):
        values = tf.py_function(
            parse, [row["file"], row["line"], row["text"]], [tf.string] * len(fields)
        )
        return {field: tf.ensure_shape(v, []) for field, v in zip(fields, values, strict=True)}

    return parse_row


_PY_ERROR = re.compile(r"ValueError: (.*?)\nTraceback", re.S)


@contextlib.contextmanager
def data_errors():
    """Re-raises a bad line's ValueError (raised inside tf.data by `parse_jsonl`) as itself."""
    try:
        yield
    except tf.errors.OpError as e:
        found = _PY_ERROR.search(e.message)
        if found is None:
            raise
        raise ValueError(found.group(1)) from None


def read(ds: tf.data.Dataset) -> Iterator:
    """`ds.as_numpy_iterator()`, with bad lines failing as ValueError (`data_errors`)."""
    iterator = ds.as_numpy_iterator()
    while True:
        with data_errors():
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item


# ----------------------------------------------------------------------------- disjoint splits


def split_files(pattern: str | Sequence[str]) -> list[str]:
    """The files a `config.task.files.<split>` value names (a path, a glob or a list)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    found = []
    for p in patterns:
        matched = sorted(tf.io.gfile.glob(p)) if any(c in p for c in "*?[") else [p]
        if not matched:
            raise FileNotFoundError(f"{p}: no file matches the pattern")
        found += matched
    return found


def example_key(task: TextTask, row: Mapping[str, str]) -> str:
    """What makes two examples the same: a digest of their formatted inputs."""
    return hashlib.sha1(task.format(row)[0].encode()).hexdigest()


def example_keys(task: TextTask, paths: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(`FILE:LINE`, `example_key`) for each line of `paths`."""
    for path in paths:
        for where, row in files.read_jsonl_records(path):
            check_fields(where, row, task.fields)
            yield where, example_key(task, row)


def check_disjoint(
    task: TextTask, split_to_files: Mapping[str, str | Sequence[str]], limit: int = 0
) -> int:
    """Refuses training data that holds evaluation data: the train split and another split
    naming the same file, or sharing an example (the same formatted inputs, hashed), among
    the first `limit` training examples when it is set. Names both and the fix. Returns the
    number of training examples read."""
    fix = (
        "evaluation data must not be in training: point the splits at disjoint files (`python "
        "-m irl_lm.data.fetch --task=TASK` writes the paper's splits), or set "
        "config.task.allow_overlap=True to run anyway"
    )
    if not split_to_files.get("train"):
        return 0
    for split, pattern in split_to_files.items():
        for p in split_files(pattern) if pattern else []:
            if not files.path(p).exists():
                raise FileNotFoundError(
                    f"config.task.files.{split}: {p} does not exist (`python -m "
                    "irl_lm.data.fetch --task=TASK --out=DIR` writes the paper's splits)"
                )
    train = split_files(split_to_files["train"])
    held_out: dict[str, tuple[str, str]] = {}  # digest -> (split, FILE:LINE)
    for split, pattern in split_to_files.items():
        if split == "train" or not pattern:
            continue
        paths = split_files(pattern)
        same = sorted(
            {os.fspath(files.path(p)) for p in paths} & set(map(os.fspath, map(files.path, train)))
        )
        if same:
            raise ValueError(
                f"config.task.files.train and config.task.files.{split} both name {same[0]}; " + fix
            )
        for where, key in example_keys(task, paths):
            held_out.setdefault(key, (split, where))
    shared, count = [], 0
    for where, key in example_keys(task, train):
        if limit and count == limit:
            break
        count += 1
        if key in held_out:
            shared.append((where, *held_out[key]))
    if shared:
        split = shared[0][1]
        examples = ", ".join(f"{a} is {b}" for a, _, b in shared[:3])
        raise ValueError(
            f"config.task.files.train and config.task.files.{split} share "
            f"{len(shared)} examples ({examples}{', ...' if len(shared) > 3 else ''}); {fix}"
        )
    return count


# ----------------------------------------------------------------------------- the task


def build(task: TextTask, settings: Mapping, vocabulary: seqio.Vocabulary) -> dict:
    """seqio.TaskRegistry.add arguments for `task` with `settings` (config.task's source,
    files, num_train_examples, tfds_name, hf_name, data_dir) and `vocabulary`."""
    source_name = settings.get("source") or task.source
    name = settings["name"]
    if source_name not in SOURCES:
        raise ValueError(f"config.task.source={source_name!r}; allowed: {sorted(SOURCES)}")
    limit = int(settings.get("num_train_examples") or 0)
    preprocessors = [formatter(task), seqio.preprocessors.tokenize]
    if source_name == "tfds":
        source = _tfds_source(name, settings, limit, task.tfds_splits)
    else:
        split_files, prepare = _source_files(source_name, name, settings)
        limits = {"train": limit} if limit else None
        source = JsonlDataSource(split_files, limits=limits, prepare=prepare)
        preprocessors.insert(0, parse_jsonl(task.fields))
    features = {
        key: seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)
        for key in ("inputs", "targets")
    }
    return dict(
        source=source,
        output_features=features,
        preprocessors=[*preprocessors, seqio.preprocessors.append_eos_after_trim],
        postprocess_fn=strip,
        metric_fns=[text_metrics.METRICS[metric] for metric in task.metrics],
    )


def _source_files(source: str, name: str, settings: Mapping):
    """(split -> file pattern, prepare) of a file-based source."""
    if source == "jsonl":
        split_files = {k: v for k, v in (settings.get("files") or {}).items() if v}
        unknown = sorted(set(split_files) - set(SPLITS))
        if unknown or not split_files:
            raise ValueError(
                f"config.task.files for {name} must name JSON Lines files for splits in "
                f"{SPLITS}; got {sorted(split_files) or 'none'}"
            )
        return split_files, None
    fetch = {"hf": _hf_rows, "sacrebleu": _sacrebleu_rows}[source]
    splits = ("test",) if source == "sacrebleu" else SPLITS
    remote = settings.get("hf_name") or HF_NAMES.get(name.removeprefix("irl_lm."), "")
    folder = files.path(
        os.path.expanduser(settings.get("data_dir") or DEFAULT_DATA_DIR),
        source,
        (remote if source == "hf" else name).replace("/", "__"),
    )
    split_files = {split: os.fspath(folder / f"{split}.jsonl") for split in splits}

    def prepare(split: str) -> None:
        path = files.path(split_files[split])
        if not path.exists():
            rows = fetch(name.removeprefix("irl_lm."), split, settings)
            files.write_lines(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

    return split_files, prepare


def _tfds_source(name: str, settings: Mapping, limit: int, splits) -> seqio.TfdsDataSource:
    tfds_name = settings.get("tfds_name") or TFDS_NAMES.get(name.removeprefix("irl_lm."))
    if tfds_name is None:
        raise ValueError(f"no TFDS source for {name}; set config.task.tfds_name")
    if settings.get("tfds_name"):  # another dataset: its splits are not known here
        splits = SPLITS
    splits = {split: split for split in splits}
    if limit:
        splits["train"] = f"train[:{limit}]"
    data_dir = settings.get("data_dir") or None
    return seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=data_dir, splits=splits)


# ----------------------------------------------------------------------------- remote sources
# Each yields the rows of one split in the field layout of shared/data, once, into the file
# `prepare` writes. Unreachable sources fail saying so and naming the jsonl option.


def _unreachable(source: str, what: str, split: str, error: Exception) -> RuntimeError:
    return RuntimeError(
        f"config.task.source={source!r}: could not read {what} ({type(error).__name__}: "
        f"{str(error)[:200]}). Offline or without that package, use source='jsonl' with "
        f"config.task.files.{split} pointing at a local JSON Lines file (see shared/data)."
    )


def _hf_rows(name: str, split: str, settings: Mapping) -> Iterator[dict]:
    if name not in HF_NAMES and not settings.get("hf_name"):
        raise ValueError(f"no Hugging Face source for {name}; set config.task.hf_name")
    hf_name = settings.get("hf_name") or HF_NAMES[name]
    yield from hf_rows(hf_name, HF_SPLITS.get(name, {}).get(split, split), split=split)


def hf_rows(hf_name: str, hf_split: str, config: str | None = None, split: str = "train"):
    """The rows of a Hugging Face dataset's split, streamed. A dataset still defined by a
    loading script (which `datasets` 4 and newer refuse) is read from the Hub's Parquet
    conversion of it. Unreachable, it fails naming the jsonl option for `split`."""
    try:
        import datasets

        try:
            rows = iter(datasets.load_dataset(hf_name, config, split=hf_split, streaming=True))
            first = next(rows)  # reaching the first row is what fails offline
        except Exception as e:
            if "script" not in str(e):
                raise
            rows = iter(
                datasets.load_dataset(
                    hf_name, config, split=hf_split, streaming=True, revision=HF_PARQUET
                )
            )
            first = next(rows)
    except Exception as e:  # not installed, network, unknown split
        what = f"Hugging Face {hf_name!r}{f' ({config})' if config else ''} split {hf_split!r}"
        raise _unreachable("hf", what, split, e) from e
    yield dict(first)
    yield from (dict(row) for row in rows)


HF_PARQUET = "refs/convert/parquet"  # the Hub's Parquet copy of every public dataset


def _sacrebleu_rows(name: str, split: str, settings: Mapping) -> list[dict]:
    """WMT22 generaltest2022 through sacreBLEU's test-set loader (the test split only)."""
    del settings
    if not name.startswith("wmt22_") or split != "test":
        raise ValueError(
            f"the sacrebleu source holds WMT22 test sets only; for {name}/{split} use jsonl"
        )
    source, target = name.split("_")[1:]
    return sacrebleu_rows("wmt22", source, target, split)


def sacrebleu_rows(test_set: str, source: str, target: str, split: str = "test") -> list[dict]:
    """A WMT test set (`wmt21`, `wmt22`, ...) as rows {source: ..., target: ...}, through
    sacreBLEU's loader (which downloads it once)."""
    from sacrebleu.utils import get_reference_files, get_source_file

    try:
        with open(get_source_file(test_set, f"{source}-{target}")) as f:
            sources = f.read().splitlines()
        with open(get_reference_files(test_set, f"{source}-{target}")[0]) as f:
            references = f.read().splitlines()
    except Exception as e:
        raise _unreachable("sacrebleu", f"{test_set} {source}-{target}", split, e) from e
    return [{source: s, target: t} for s, t in zip(sources, references, strict=True)]


SOURCES = ("jsonl", "tfds", "hf", "sacrebleu")
