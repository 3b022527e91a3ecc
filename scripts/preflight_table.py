"""The "Before you launch" table of docs/preflight.md: `irl_lm.preflight` on the paper's XSUM
config for each (model, loss, target), the train step compiled at full size with
`--config.mesh=auto` (the layout it picks is in the table).

    .venv/bin/python scripts/preflight_table.py --out=DIR [--only=REGEX] [--docs]

Each cell runs `python -m irl_lm.preflight ... --noevals --json=DIR/<cell>.json` (a few
minutes of CPU each at full size) and is skipped when its JSON exists, so a rerun goes on
where the last stopped. The table is printed from every JSON in DIR, in markdown: fits,
GiB per device, roofline step time and the MFU it allows, and the chip-hours of the paper's
λ sweep (6 λ x 3 seeds at the config's steps). Cells not compiled yet are listed after it.
`--docs` writes the table into docs/preflight.md after each cell, keeping the rows already
there for cells that DIR has no JSON for, and compiles only the cells missing from both (so
the table grows across machines).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

MODELS = ("t5_base", "t5_large", "t5_xl", "gemma3_1b", "llama3_2_1b")
LOSSES = ("mle", "iqlearn_online")
TARGETS = ("v4-32", "v5e-16", "v5p-8", "h100x8")
SWEEP_RUNS = 6 * 3  # the paper's λ grid x 3 seeds (configs/xsum.py's sweep)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs", "preflight.md")
HEADER = (
    "| model | loss | target | fits | mesh, remat, accumulation | GiB / device (of usable) "
    "| step: compute / memory (roofline) | MFU at most | λ sweep chip-hours | compile |"
)
MISSING = "Not compiled yet"


def cells() -> list[tuple[str, str, str]]:
    return [(m, loss, t) for m in MODELS for loss in LOSSES for t in TARGETS]


def name(model: str, loss: str, target: str) -> str:
    return f"{model}_{loss}_{target}"


def compile_cell(out: str, model: str, loss: str, target: str) -> None:
    path = os.path.join(out, name(model, loss, target) + ".json")
    if os.path.exists(path):
        return
    cmd = [
        sys.executable,
        "-m",
        "irl_lm.preflight",
        f"--config=configs/xsum.py:mode=full,model={model},loss={loss}",
        f"--topology={target}",
        "--config.mesh=auto",
        "--noevals",
        f"--json={path}",
    ]
    started = time.time()
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # the child's own peak memory
        child.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        printed, errors = stdout.read(), stderr.read()
    summary = (
        f"exit {child.returncode}, {time.time() - started:.0f} s, "
        f"peak RSS {usage.ru_maxrss / 2**20:.1f} GiB"  # ru_maxrss: KiB on Linux
    )
    with open(os.path.join(out, name(model, loss, target) + ".txt"), "w") as f:
        f.write(printed + f"\n{summary}\n")
    if child.returncode not in (0, 1):  # 1: does not fit (its JSON says so)
        print(errors[-2000:], file=sys.stderr)
    print(f"{name(model, loss, target)}: {summary}", flush=True)


def docs_rows(text: str) -> dict[tuple[str, str, str], str]:
    """The rows of the table already in the docs, by (model, loss, target)."""
    rows = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) > 4 and (parts[1], parts[2], parts[3]) in set(cells()):
            rows[(parts[1], parts[2], parts[3])] = line
    return rows


def table(out: str, kept: dict[tuple[str, str, str], str] | None = None) -> str:
    lines = [HEADER, "|---" * HEADER.count("|", 1) + "|"]
    missing = []
    for model, loss, target in cells():
        path = os.path.join(out, name(model, loss, target) + ".json")
        if not os.path.exists(path):
            if kept and (model, loss, target) in kept:
                lines.append(kept[(model, loss, target)])
            else:
                missing.append(f"{model} {loss} {target}")
            continue
        with open(path) as f:
            r = json.load(f)
        needs = max(c["needs_bytes"] for c in r["calls"]) / 2**30
        mesh = "x".join(f"{k}{v}" for k, v in r["mesh"].items() if v > 1) or "1"
        # (JSONs written before preflight recorded remat: the config's default, none.)
        mesh += f", {r.get('remat', 'none')}, {r.get('grad_accum_steps', 1)}"
        seconds = sum(c["compile_s"] for c in r["calls"])
        hours = SWEEP_RUNS * r["chip_hours"]
        step = [c for c in r["calls"] if c["name"] in ("train_step", "sampler")]
        compute = sum(c["flops"] for c in step) / r["target"]["peak_flops"]
        memory = sum(c["bytes_accessed"] for c in step) / r["target"]["bandwidth"]
        lines.append(
            f"| {model} | {loss} | {target} | {'yes' if r['fits'] else '**no**'} | {mesh} | "
            f"{needs:.1f} ({r['capacity_bytes'] / 2**30:.1f}) | {compute * 1e3:.0f} / "
            f"{memory * 1e3:.0f} ms | "
            f"{r['mfu']:.0%} | {hours:,.0f} | {seconds:.0f} s |"
        )
    if missing:
        lines += ["", f"{MISSING} ({len(missing)} of {len(cells())}): {'; '.join(missing)}."]
    return "\n".join(lines)


def update_docs(out: str) -> str:
    """Replaces the table in docs/preflight.md (header to the list of missing cells)."""
    with open(DOCS) as f:
        text = f.read()
    start = text.index(HEADER)
    end = text.index("\n\n", start)  # the table ends at a blank line
    if text[end + 2 :].startswith(MISSING):
        end = text.index("\n", end + 2)
    new = table(out, docs_rows(text[start:end]))
    with open(DOCS, "w") as f:
        f.write(text[:start] + new + text[end:])
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default="", help="compile only the cells matching this")
    parser.add_argument("--table_only", action="store_true", help="print, compile nothing")
    parser.add_argument("--docs", action="store_true", help="write the table into the docs")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not args.table_only:
        with open(DOCS) as f:
            documented = docs_rows(f.read()) if args.docs else {}
        for cell in cells():
            if re.search(args.only, name(*cell)) and cell not in documented:
                compile_cell(args.out, *cell)
                if args.docs:
                    update_docs(args.out)
    print(update_docs(args.out) if args.docs else table(args.out))


if __name__ == "__main__":
    main()
