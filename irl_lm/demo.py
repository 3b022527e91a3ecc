"""`make demo`: every loss on the synthetic expert, with the expert's own row.

Trains `--config` (`configs/demo.py`) once per loss (same seed and data) in
`<workdir>/<run>`, evaluates each against the exact expert, and prints the table; each
run's `results.json` holds its row.
The runs are listed in `<workdir>/sweep.json` like a sweep's points, and `irl_lm.report`
writes their tables and plots (`pareto.png`) into `<workdir>/report/`. Rerunning skips
finished runs.
"""

import os
import time

from absl import app, flags

from irl_lm import files, report, sweep, train

_CONFIG = flags.DEFINE_string("config", "configs/demo.py", "The config file of every run.")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "Parent directory of the runs.")
_RUNS = flags.DEFINE_multi_string(
    "run",
    [
        "loss=mle",
        "loss=mle_entropy,beta=0.01",
        "loss=iqlearn,lam=0.1",
        "loss=iqlearn,lam=1.0",
        "loss=iqlearn_online,lam=0.1,alpha=0.1",
        "loss=gail",
    ],
    "A --config arg (get_config(arg)); repeat the flag for several runs.",
)
_STEPS = flags.DEFINE_integer("total_steps", None, "Override config.total_steps for every run.")

COLUMNS = ("validity", "forward_kl", "reverse_kl", "self_bleu", "entropy")


def run_name(arg: str) -> str:
    return arg.replace("loss=", "").replace(",", "_").replace("=", "")


# config.loss field -> its symbol in the table's "setting" column
SYMBOLS = {"beta": "β", "lam": "λ", "alpha": "α", "kl_coef": "KL"}


def setting(loss_config) -> str:
    """The loss's main knobs, e.g. "λ=0.1 α=0.1" ("-" for MLE)."""
    parts = [f"{symbol}={loss_config[k]:g}" for k, symbol in SYMBOLS.items() if k in loss_config]
    return " ".join(parts) or "-"


def format_table(rows: list[dict]) -> str:
    header = ["method", "setting", *COLUMNS, "steps/s"]
    lines = [header]
    for row in rows:
        cells = [row["method"], row["setting"]]
        cells += [f"{row[c]:.3f}" if c != "self_bleu" else f"{row[c]:.1f}" for c in COLUMNS]
        cells.append(f"{row['steps_per_sec']:.1f}" if row["steps_per_sec"] else "-")
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    rows = ("  ".join(str(c).rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines)
    return "\n".join(rows)


def main(argv):
    del argv
    train.quiet_library_logs()
    started = time.perf_counter()
    rows, reference, points = [], None, []
    config_module = sweep.load_config_module(_CONFIG.value)
    for arg in _RUNS.value:
        config = config_module.get_config(arg)
        if _STEPS.value:
            config.total_steps = _STEPS.value
            config.checkpoint.every = min(config.checkpoint.every, _STEPS.value)
        workdir = os.path.join(_WORKDIR.value, run_name(arg))
        if config.loss.name == "gail":  # GAIL fine-tunes the MLE run (PAPER.md §4)
            config.init_from = os.path.join(_WORKDIR.value, "mle")
            if not files.path(config.init_from).is_dir():
                raise ValueError(
                    "--run=loss=gail fine-tunes the MLE run: add --run=loss=mle before it"
                )
        results = train.train_and_evaluate(config, workdir)
        points.append({"name": run_name(arg), "config_arg": arg, "overrides": {}, "status": "done"})
        rows.append(
            {
                "method": config.loss.name,
                "setting": setting(config.loss),
                "steps_per_sec": results["steps_per_sec"],
            }
            | results["eval"]["expert"]
        )
        if reference is None:
            reference = results["eval_reference"]["expert"]
    rows.append({"method": "expert", "setting": "-", "steps_per_sec": None} | reference)
    table = format_table(rows)
    files.write_text(files.path(_WORKDIR.value, "table.txt"), table + "\n")
    files.write_json(files.path(_WORKDIR.value, "results.json"), rows)
    info = {"config": _CONFIG.value, "commit": sweep.git_commit(), "points": points}
    files.write_json(files.path(_WORKDIR.value, sweep.SWEEP_FILE), info)
    written = report.write_report(_WORKDIR.value)
    print(f"\nSynthetic expert, {len(_RUNS.value)} runs, {time.perf_counter() - started:.0f} s")
    print(
        "KL in nats per token; reverse KL of the policy restricted to valid sequences; "
        "Self-BLEU of 4 samples per input (lower = more diverse)."
    )
    print(table)
    print(f"\nReport (tables, pareto.png, curves.png): {written['dir']}/")


if __name__ == "__main__":
    app.run(main)
