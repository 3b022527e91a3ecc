"""Time to the first training batch and peak memory on a 1M-line JSON Lines file: the
streaming JSONL source against the code before it (a commit that read whole splits).

    .venv/bin/python scripts/bench_streaming.py                # before = b9197ec
    .venv/bin/python scripts/bench_streaming.py --lines=100000 --repeats=3

Each measurement is a fresh process in that code's checkout (a `git worktree` of `--before`
for the old code), which builds the gsm8k config's training stream (`mode=tiny`, byte
vocabulary, every line: `num_train_examples=0`) over the generated file and takes one batch.
Printed: seconds to the first batch and the process's peak resident memory (ru_maxrss), with
its growth over the same process after imports; the median over `--repeats`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs inside the checkout being measured (its own irl_lm and configs).
PROBE = r"""
import json, resource, sys, time
sys.path.insert(0, ".")
from irl_lm.data import pipeline
from configs import gsm8k

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

config = gsm8k.get_config("mode=tiny")
config.task.files = {"train": sys.argv[1]}
config.task.num_train_examples = 0
config.batch_size = 8
base = rss_mb()
start = time.perf_counter()
batch = next(pipeline.TrainIterator(pipeline.train_data(config)))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mb": rss_mb(), "import_mb": base}))
"""


def make_file(path: str, lines: int) -> None:
    """GSM8k-shaped rows (question, answer), about 190 bytes a line."""
    rng = random.Random(0)
    words = "the of and a to in is you that it he was for on are as with his they at".split()
    with open(path, "w") as f:
        for i in range(lines):
            question = " ".join(rng.choice(words) for _ in range(20)) + f" {i}?"
            answer = " ".join(rng.choice(words) for _ in range(10)) + f"\n#### {i % 1000}"
            f.write(json.dumps({"question": question, "answer": answer}) + "\n")


def measure(tree: str, data: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = subprocess.run(
        [sys.executable, "-c", PROBE, data], cwd=tree, env=env, capture_output=True, text=True
    )
    if run.returncode:
        raise RuntimeError(f"{tree}: the probe failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--before", default="b9197ec", help="the commit before streaming")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="", help="also write the figures to this JSON file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "train.jsonl")
        make_file(data, args.lines)
        size_mb = os.path.getsize(data) / 2**20
        before = os.path.join(tmp, "before")
        subprocess.run(
            ["git", "worktree", "add", "--detach", before, args.before],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            results = {}
            for name, tree in (("before", before), ("after", ROOT)):
                runs = [measure(tree, data) for _ in range(args.repeats)]
                results[name] = {
                    key: statistics.median(run[key] for run in runs) for key in runs[0]
                } | {"runs": runs}
                row = results[name]
                print(
                    f"{name:>6}: first batch {row['seconds']:8.2f} s, peak "
                    f"{row['peak_mb']:7.0f} MB (+{row['peak_mb'] - row['import_mb']:.0f} MB "
                    "over imports)",
                    flush=True,
                )
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", before],
                cwd=ROOT,
                check=False,
                capture_output=True,
            )
    b, a = results["before"], results["after"]
    print(
        f"{args.lines} lines ({size_mb:.0f} MB), median of {args.repeats}: first batch "
        f"{b['seconds']:.2f} s -> {a['seconds']:.2f} s ({b['seconds'] / a['seconds']:.0f}x), "
        f"peak memory {b['peak_mb']:.0f} MB -> {a['peak_mb']:.0f} MB"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"lines": args.lines, "file_mb": size_mb, **results}, f, indent=2)


if __name__ == "__main__":
    main()
