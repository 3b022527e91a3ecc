"""The paper's data splits as JSON Lines files, from their public releases.

    python -m irl_lm.data.fetch --task=xsum                    # ~/.cache/irl_lm/data/xsum/
    python -m irl_lm.data.fetch --task=gsm8k --out=gs://BUCKET/data

writes `OUT/<task>/{train,validation,test}.jsonl`, which `configs/<task>.py:mode=full` reads
(`data=OUT`), and `OUT/<task>/manifest.json`: where each split came from, its examples, its
SHA-256, and every example left out and why. A task already fetched is skipped (`--force`
fetches again). The splits (docs/tasks.md):

- xsum: Hugging Face `EdinburghNLP/xsum`, its train / validation / test (204,045 / 11,332 /
  11,334 articles).
- gsm8k: Hugging Face `openai/gsm8k` (`main`); the 1,319 test problems; validation is 500 of
  the 7,473 training problems (those whose question hashes lowest: the same 500 whatever the
  order), held out of train.
- tldr: Hugging Face `CarperAI/openai_summarize_tldr`, OpenAI's filtered Reddit TL;DR in the
  prompt / label layout: train / valid / test.
- wmt22_en_de: train from WMT19's de-en training corpora on Hugging Face (`wmt/wmt19`), every
  `--stride`-th pair (default 20: a sample across its corpora of about the size the full
  config trains on: 20,000 steps of 64 pairs); validation newstest2021 and test
  generaltest2022 through sacreBLEU.

Rows missing a field the task reads, or with one empty, are left out (counted); so are
training examples whose formatted inputs are also in validation or test (counted), so that a
run on the files passes the trainer's check that training data holds no evaluation example.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from absl import app, flags, logging

from irl_lm import files
from irl_lm.config_utils import FULL_DATA
from irl_lm.data import text_tasks

SPLITS = text_tasks.SPLITS
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class Source:
    """One split of a public release: what it is, and its rows (each a dict of fields)."""

    describe: str
    rows: Callable[[], Iterable[dict]]


def hf(name: str, split: str, config: str | None = None) -> Source:
    describe = f"Hugging Face {name}{f' ({config})' if config else ''}, split {split}"
    return Source(describe, lambda: text_tasks.hf_rows(name, split, config))


def sacrebleu(test_set: str, source: str, target: str) -> Source:
    describe = f"sacreBLEU {test_set} {source}-{target}"
    return Source(describe, lambda: text_tasks.sacrebleu_rows(test_set, source, target))


def wmt19_pairs(source: str, target: str) -> Source:
    """WMT19's training pairs for a language pair, as rows {source: ..., target: ...}."""
    pair = "-".join(sorted((source, target), key=lambda x: x == "en"))  # de-en

    def rows() -> Iterator[dict]:
        for row in text_tasks.hf_rows("wmt/wmt19", "train", pair):
            yield {source: row["translation"][source], target: row["translation"][target]}

    return Source(f"Hugging Face wmt/wmt19 ({pair}), split train", rows)


@dataclasses.dataclass(frozen=True)
class Release:
    """Where a task's splits come from. `hold_out`: validation is that many train examples
    (the lowest hashes of their inputs), taken out of train; `stride`: train keeps every
    stride-th row."""

    splits: dict[str, Source]
    hold_out: int = 0
    stride: int = 1


RELEASES = {
    "xsum": Release({s: hf("EdinburghNLP/xsum", s) for s in SPLITS}),
    "gsm8k": Release(
        {s: hf("openai/gsm8k", s, "main") for s in ("train", "test")},
        hold_out=500,
    ),
    "tldr": Release(
        {
            "train": hf("CarperAI/openai_summarize_tldr", "train"),
            "validation": hf("CarperAI/openai_summarize_tldr", "valid"),
            "test": hf("CarperAI/openai_summarize_tldr", "test"),
        }
    ),
    "wmt22_en_de": Release(
        {
            "train": wmt19_pairs("en", "de"),
            "validation": sacrebleu("wmt21", "en", "de"),
            "test": sacrebleu("wmt22", "en", "de"),
        },
        stride=20,
    ),
}


def _fields(task: text_tasks.TextTask, row: dict) -> dict | None:
    """The row's fields the task reads (and its id), or None when one is missing or empty."""
    if not all(isinstance(row.get(f), str) and row[f].strip() for f in task.fields):
        return None
    return {f: row[f] for f in (*task.fields, "id") if f in row}


class _Writer:
    """Writes one split's rows to its file, counting them and hashing the file's bytes."""

    def __init__(self, folder, split: str):
        self.path, self.count, self.sha = folder / f"{split}.jsonl", 0, hashlib.sha256()

    def write(self, rows: Iterable[dict]) -> None:
        def lines():
            for row in rows:
                line = json.dumps(row, ensure_ascii=False) + "\n"
                self.count += 1
                self.sha.update(line.encode())
                yield line

        files.write_lines(self.path, lines())


def fetch(task: str, out: str = FULL_DATA, *, force: bool = False, stride: int = 0) -> dict:
    """Writes the paper's splits of `task` under `out/<task>/` (see the module docstring);
    returns the manifest. `stride` overrides the release's."""
    if task not in RELEASES:
        raise ValueError(f"--task={task!r}; the paper's tasks: {sorted(RELEASES)}")
    release, text_task = RELEASES[task], text_tasks.TEXT_TASKS[task]
    stride = stride or release.stride
    folder = files.path(os.path.expanduser(out), task)
    if (folder / MANIFEST).exists() and not force:
        logging.info("%s: already fetched (%s); --force fetches again", task, folder / MANIFEST)
        return files.read_json(folder / MANIFEST)
    dropped = {split: Counter() for split in SPLITS}

    def clean(split: str, rows: Iterable[dict]) -> Iterator[dict]:
        for row in rows:
            kept = _fields(text_task, row)
            if kept is None:
                dropped[split]["missing or empty field"] += 1
            else:
                yield kept

    def key(row: dict) -> str:
        return text_tasks.example_key(text_task, row)

    evaluation = {
        s: list(clean(s, release.splits[s].rows()))
        for s in ("validation", "test")
        if s in release.splits
    }
    held_out = {key(r) for rows in evaluation.values() for r in rows}

    def train_rows() -> Iterator[dict]:
        for index, row in enumerate(clean("train", release.splits["train"].rows())):
            if index % stride:
                continue
            if key(row) in held_out:
                dropped["train"]["inputs also in validation or test"] += 1
            else:
                yield row

    train: Iterable[dict] = train_rows()
    sources = {s: release.splits[s].describe for s in release.splits}
    if release.hold_out:  # validation: the train examples whose inputs hash lowest
        train = list(train)
        held = set(sorted({key(r) for r in train})[: release.hold_out])
        evaluation["validation"] = [r for r in train if key(r) in held]
        train = [r for r in train if key(r) not in held]
        sources["validation"] = (
            f"{release.hold_out} examples of {sources['train']} (the lowest SHA-1 of their "
            "inputs), held out of train"
        )
    writers = {split: _Writer(folder, split) for split in SPLITS}
    for split, rows in evaluation.items():
        writers[split].write(rows)
    writers["train"].write(train)
    if stride > 1:
        sources["train"] += f", every {stride}th row"
    manifest = {
        "task": task,
        "fetched": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "sources": sources,
        "examples": {s: writers[s].count for s in SPLITS},
        "left_out": {s: dict(c) for s, c in dropped.items() if c},
        "sha256": {s: writers[s].sha.hexdigest() for s in SPLITS},
    }
    files.write_json(folder / MANIFEST, manifest)
    for split in SPLITS:
        left = ", ".join(f"{n} {why}" for why, n in dropped[split].items()) or "none left out"
        logging.info("%s %s: %d examples (%s)", task, split, writers[split].count, left)
    return manifest


_TASK = flags.DEFINE_multi_string("task", None, f"A paper task: {sorted(RELEASES)}.")
_OUT = flags.DEFINE_string("out", FULL_DATA, "The data folder (local or gs://).")
_FORCE = flags.DEFINE_bool("force", False, "Fetch again a task already fetched.")
_STRIDE = flags.DEFINE_integer("stride", 0, "Keep every n-th training row (0: the task's).")


def main(argv):
    del argv
    for task in _TASK.value:
        manifest = fetch(task, _OUT.value, force=_FORCE.value, stride=_STRIDE.value)
        print(json.dumps({"task": task, "examples": manifest["examples"]}))


if __name__ == "__main__":
    flags.mark_flags_as_required(["task"])
    app.run(main)
