"""Runs a sweep: every point of a config file's `sweep(arg)` as its own `irl_lm.main` process.

    python -m irl_lm.sweep --config=configs/demo.py --workdir=workdirs/lambda --parallel=2
    python -m irl_lm.sweep --config=configs/demo.py --sweep_arg=entropy --workdir=DIR \
        [--only=REGEX] [--dry_run] [--print_commands] [--config.total_steps=500 ...]

A config file defines its sweeps beside `get_config`: `sweep(arg=None) -> list[dict]`, one
dict per point of `config` field overrides by dotted path (`{"loss.lam": 0.3, "seed": 1}`),
optionally with `config_arg` (the `get_config` arg of that point, e.g. "loss=iqlearn") and
`name`. Each point gets a readable, filesystem-safe name from its overrides
(`lam=0.3,seed=1`) and trains in `DIR/<name>`, logging to `DIR/<name>/log.txt`; on a GPU
machine `--parallel=N` gives each running point its own N-th of the GPUs (when N divides
their count; else the points share them). Every point is checked before anything runs: an
unknown field, a value the command line cannot carry, or two points with one name fail,
naming them.

A point whose `results.json` records a finished run is skipped; an unfinished one is run
again in its workdir, so it resumes from its checkpoint. A failing point does not stop the
others; the summary names it, its exit code and its log, and the exit code is 1.
`DIR/sweep.json` records every point (overrides, command, status, exit code, duration) and
the code's git commit. `--print_commands` prints the `irl_lm.main` arguments of each point
still to run, one point a line, for a cluster launcher (docs/sweeps.md).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from irl_lm import files
from irl_lm.config_utils import AUTO_MESH, format_value, point_names

SWEEP_FILE = "sweep.json"
LOG_FILE = "log.txt"


@dataclasses.dataclass
class Point:
    name: str
    overrides: dict[str, Any]  # dotted config field -> value
    config_arg: str | None  # get_config's arg for this point
    args: list[str]  # the irl_lm.main arguments
    workdir: str
    total_steps: int
    status: str = "pending"  # pending | running | done | failed | interrupted
    skipped: bool = False  # finished before this invocation
    returncode: int | None = None
    duration_s: float | None = None

    def resolve_config(self):
        """The config `irl_lm.main` builds for this point (to run it in-process)."""
        spec = self.args[0].removeprefix("--config=")
        return _resolve(spec, [a for a in self.args[1:] if not a.startswith("--workdir=")])

    @property
    def log(self) -> str:
        return str(files.path(self.workdir, LOG_FILE))

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "irl_lm.main", *self.args]

    def record(self) -> dict:
        """The point as sweep.json lists it."""
        record = dataclasses.asdict(self)
        del record["args"]
        return record | {"command": self.command, "log": self.log}


# ----------------------------------------------------------------------------- definitions


def load_config_module(config_file: str):
    """The config file as a module (it must define `get_config`)."""
    if not os.path.exists(config_file):
        raise FileNotFoundError(f"--config={config_file}: no such file")
    spec = importlib.util.spec_from_file_location("_sweep_config", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep_definition(module, config_file: str, sweep_arg: str | None) -> list[dict]:
    if not hasattr(module, "sweep"):
        raise ValueError(
            f"{config_file} defines no sweep(arg=None) -> list[dict] beside get_config; "
            "add one (see configs/demo.py)"
        )
    points = module.sweep(sweep_arg) if sweep_arg is not None else module.sweep()
    if not points or not all(isinstance(p, dict) for p in points):
        raise ValueError(
            f"{config_file}: sweep({sweep_arg!r}) must return a non-empty list of dicts"
        )
    return [dict(p) for p in points]


def merge_config_args(base: str | None, point: str | None, where: str) -> str | None:
    """`--config=FILE:BASE` with a point's own `config_arg` ("mode=full,loss=iqlearn")."""
    items = dict(kv.partition("=")[::2] for kv in filter(None, (base or "").split(",")))
    for key, _, value in (kv.partition("=") for kv in filter(None, (point or "").split(","))):
        if items.get(key, value) != value:
            raise ValueError(
                f"{where} has config_arg {key}={value}, but --config gives {key}={items[key]}; "
                "drop it from --config (or pick another sweep with --sweep_arg)"
            )
        items[key] = value
    return ",".join(f"{k}={v}" for k, v in items.items()) or None


def _check_fields(config, overrides: dict, where: str) -> None:
    for key in overrides:
        node, parts = config, key.split(".")
        for i, part in enumerate(parts):
            if not hasattr(node, "keys") or part not in node:
                known = sorted(node.keys()) if hasattr(node, "keys") else []
                raise ValueError(
                    f"{where}: config field {key!r} does not exist "
                    f"({'.'.join(parts[:i]) or 'config'} has {known})"
                )
            node = node[part]


def _resolve(spec: str, args: list[str]):
    """The config `irl_lm.main` will build from `--config=spec` and `args` (before
    `--config.mesh=auto`, which the point resolves at start-up)."""
    argv = ["irl_lm.main", f"--config={spec}", *(a for a in args if a != AUTO_MESH)]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config


def build_points(
    config: str, workdir: str, sweep_arg: str | None = None, overrides: Sequence[str] = ()
) -> list[Point]:
    """Every point of `config`'s sweep, checked: fields exist, values survive the command
    line, names are unique. `overrides`: `--config.x=y` arguments common to all points."""
    config_file, _, base_arg = config.partition(":")
    module = load_config_module(config_file)
    definitions = sweep_definition(module, config_file, sweep_arg)
    names = point_names(definitions)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"{config_file}: sweep({sweep_arg!r}) has several points named "
            f"{duplicates}; make their overrides differ or give them a 'name'"
        )
    common = {a.split("=", 1)[0].removeprefix("--config."): a for a in overrides}
    points = []
    for name, definition in zip(names, definitions, strict=True):
        where = f"{config_file}: sweep point {name!r}"
        arg = merge_config_args(base_arg, definition.pop("config_arg", None), where)
        definition.pop("name", None)
        spec = f"{config_file}:{arg}" if arg else config_file
        _check_fields(module.get_config(arg), {**common, **definition}, where)
        clash = sorted(set(definition) & set(common))
        if clash:
            raise ValueError(f"{where} sets {clash}, which the command line sets for every point")
        point_args = [f"--config.{k}={format_value(v)}" for k, v in definition.items()]
        try:
            resolved = _resolve(spec, [*common.values(), *point_args])
        except Exception as e:  # config_flags' parse errors name the flag
            raise ValueError(f"{where} (with {list(common.values())}): {e}") from None
        for key, value in definition.items():
            got = resolved
            for part in key.split("."):
                got = got[part]
            if got != value:
                raise ValueError(
                    f"{where}: {key}={value!r} reads back from the command line "
                    f"as {got!r}; use a value of the field's type"
                )
        _check_task(resolved, where)
        point_dir = os.path.join(workdir, name)  # as given: relative, absolute or gs://
        args = [f"--config={spec}", f"--workdir={point_dir}", *common.values(), *point_args]
        points.append(Point(name, definition, arg, args, point_dir, int(resolved.total_steps)))
    return points


def _check_task(config, where: str) -> None:
    """Imports `config.task.modules` and resolves the task's name, before anything runs."""
    from irl_lm.data import tasks  # brings seqio and TensorFlow: only when points exist

    try:
        tasks.task_name(config.task)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


# ----------------------------------------------------------------------------- running


def git_commit() -> str:
    """The code's commit, with "-dirty" when tracked files differ from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def write_sweep_file(workdir: str, info: dict, points: Sequence[Point]) -> None:
    files.write_json(
        files.path(workdir, SWEEP_FILE), info | {"points": [p.record() for p in points]}
    )


def visible_gpus() -> list[str]:
    """The GPUs of this machine: `CUDA_VISIBLE_DEVICES` when set, else those `nvidia-smi`
    lists (none on a machine without it)."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    listed = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return listed.stdout.split() if listed.returncode == 0 else []


def gpu_slots(gpus: Sequence[str], parallel: int) -> list[list[str]]:
    """`gpus` split into `parallel` equal groups, one a running point; none (every point sees
    every device) when `parallel` is 1, there are no GPUs, or they do not split evenly."""
    if parallel == 1 or not gpus or len(gpus) % parallel:
        return []
    size = len(gpus) // parallel
    return [list(gpus[i * size : (i + 1) * size]) for i in range(parallel)]


class _Runner:
    """Runs the `todo` points as `python -m irl_lm.main` processes, `parallel` at a time;
    `points` (every point of the sweep) go to sweep.json at each change."""

    def __init__(self, workdir: str, info: dict, points, todo, parallel: int):
        self.workdir, self.info, self.points, self.parallel = workdir, info, points, parallel
        self.todo = list(todo)
        self.running: dict[str, tuple[Point, subprocess.Popen, float, Any, str]] = {}
        self.durations: list[float] = []
        self.stop = False
        self.env = dict(os.environ)
        # On a multi-GPU node each running point gets its own GPUs; elsewhere several JAX
        # processes share the accelerators: no preallocation.
        gpus = visible_gpus()
        self.free_gpus = gpu_slots(gpus, parallel)
        if parallel > 1 and not self.free_gpus:
            self.env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
            if gpus:
                print(
                    f"[sweep] the {len(gpus)} GPUs do not split into {parallel} equal shares: "
                    "the running points share them",
                    flush=True,
                )

    def start(self, point: Point) -> None:
        files.path(point.workdir).mkdir(parents=True, exist_ok=True)
        # A bucket workdir logs to a local file first, copied there when the point ends.
        local_log = point.log
        if files.is_remote(point.workdir):
            local_log = os.path.join(tempfile.mkdtemp(prefix="irl_lm_sweep_"), LOG_FILE)
        command, env, gpus = point.command, self.env, None
        if self.free_gpus:
            gpus = self.free_gpus.pop(0)
            env = env | {"CUDA_VISIBLE_DEVICES": ",".join(gpus)}
        log = open(local_log, "a")  # noqa: SIM115 - closed in poll()
        try:
            where = f" (CUDA_VISIBLE_DEVICES={','.join(gpus)})" if gpus else ""
            log.write(f"\n# sweep {self.info['commit']}{where}: {shlex.join(command)}\n")
            log.flush()
            # Its own session: a Ctrl-C reaches the runner only, which stops the points
            # with SIGTERM (they save a checkpoint), not with SIGINT.
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        except BaseException:
            log.close()
            if gpus:
                self.free_gpus.append(gpus)
            raise
        self.running[point.name] = (point, proc, time.perf_counter(), log, local_log, gpus)
        point.status = "running"
        print(f"[sweep] started {point.name} (log: {point.log})", flush=True)
        if self.stop:  # a signal arrived while it started
            proc.send_signal(signal.SIGTERM)

    def poll(self) -> None:
        for name, (point, proc, started, log, local_log, gpus) in list(self.running.items()):
            if proc.poll() is None:
                continue
            log.close()
            if gpus:
                self.free_gpus.append(gpus)
            if local_log != point.log:  # appended to the bucket's log, as a local log is
                files.append(local_log, point.log)
                shutil.rmtree(os.path.dirname(local_log), ignore_errors=True)
            point.returncode, point.duration_s = proc.returncode, time.perf_counter() - started
            finished = files.finished_results(point.workdir, point.total_steps) is not None
            if finished and proc.returncode == 0:
                point.status = "done"
                self.durations.append(point.duration_s)
            else:  # a stop (SIGTERM: exit code 0, checkpoint saved) or a failure
                stopped = self.stop or proc.returncode == 0
                point.status = "interrupted" if stopped else "failed"
            del self.running[name]
            print(
                f"[sweep] {point.status} {name} in {point.duration_s:.0f} s "
                f"(exit code {proc.returncode}); {self.progress()}",
                flush=True,
            )
            write_sweep_file(self.workdir, self.info, self.points)

    def progress(self) -> str:
        counts = {
            s: sum(p.status == s for p in self.todo)
            for s in ("done", "running", "failed", "pending")
        }
        eta = "?"
        if self.durations:
            left = counts["pending"] + counts["running"]
            seconds = sum(self.durations) / len(self.durations) * math.ceil(left / self.parallel)
            eta = f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"
        return (
            f"{counts['done']}/{len(self.todo)} done, {counts['running']} running, "
            f"{counts['failed']} failed, ETA {eta}"
        )

    def terminate(self, signum, frame) -> None:
        del frame
        print(f"[sweep] signal {signum}: stopping the running points (they save a checkpoint)")
        self.stop = True
        for _, proc, *_ in self.running.values():
            proc.send_signal(signal.SIGTERM)

    def run(self) -> None:
        previous = signal.signal(signal.SIGTERM, self.terminate)
        try:
            pending = list(self.todo)
            while self.running or (pending and not self.stop):
                while pending and len(self.running) < self.parallel and not self.stop:
                    self.start(pending.pop(0))
                    write_sweep_file(self.workdir, self.info, self.points)
                time.sleep(0.2)
                self.poll()
        except KeyboardInterrupt:
            self.terminate(signal.SIGINT, None)
        except BaseException:  # an error in the runner: stop the points, then raise
            self.terminate(signal.SIGTERM, None)
            raise
        finally:
            while self.running:  # after a stop: the points save their checkpoints
                time.sleep(0.2)
                self.poll()
            signal.signal(signal.SIGTERM, previous)


def run_sweep(
    config: str,
    workdir: str,
    *,
    sweep_arg: str | None = None,
    overrides: Sequence[str] = (),
    parallel: int = 1,
    only: str | None = None,
    dry_run: bool = False,
    print_commands: bool = False,
    preflight_topology: str | None = None,
) -> int:
    """The sweep CLI: returns the exit code (0: every selected point finished).

    `DIR/sweep.json` always lists every point of the sweep (`--only` selects which run);
    `--print_commands` writes it too, so a report can read a sweep that a launcher ran.
    `preflight_topology`: first compile the unfinished points for that target
    (`preflight_points`) and run nothing when one does not fit."""
    if parallel < 1:
        raise ValueError(f"--parallel={parallel} must be >= 1")
    points = build_points(config, workdir, sweep_arg, overrides)
    selected = [p for p in points if re.search(only, p.name)] if only else points
    if not selected:
        raise ValueError(f"--only={only!r} matches no point of the sweep")
    for point in points:
        if files.finished_results(point.workdir, point.total_steps) is not None:
            point.status, point.skipped = "done", True
    if preflight_topology:
        todo = [p for p in selected if p.status == "pending"]
        if preflight_points(todo, preflight_topology):
            return 1
    if dry_run:
        for point in selected:
            action = "skip (finished)" if point.skipped else "run"
            print(f"{point.name}\t{action}\t{shlex.join(point.command)}")
        return 0
    info = {
        "config": config,
        "sweep_arg": sweep_arg,
        "overrides": list(overrides),
        "commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    todo = [p for p in selected if p.status == "pending"]
    if print_commands:
        write_sweep_file(workdir, info | {"launcher": "external (--print_commands)"}, points)
        for point in todo:
            print(shlex.join(point.args))
        print(
            f"# {len(todo)} of {len(selected)} points to run "
            f"({len(selected) - len(todo)} finished)",
            file=sys.stderr,
        )
        return 0
    skipped = len(selected) - len(todo)
    print(
        f"[sweep] {len(selected)} points ({skipped} already finished), {parallel} at a time, "
        f"in {workdir}",
        flush=True,
    )
    _Runner(workdir, info, points, todo, parallel).run()
    write_sweep_file(workdir, info, points)
    failed = [p for p in selected if p.status != "done"]
    print(
        f"[sweep] {len(selected) - len(failed)}/{len(selected)} points finished "
        f"({skipped} before this run); sweep file: {files.path(workdir, SWEEP_FILE)}"
    )
    for point in failed:
        print(
            f"[sweep] {point.status}: {point.name}  exit code {point.returncode}  "
            f"log: {point.log}{_last_line(point.log)}"
        )
    return 1 if failed else 0


def preflight_points(points: Sequence[Point], topology: str) -> int:
    """Compiles the points for `topology` (`irl_lm.preflight`), each distinct shape once (points
    that differ only in seed or loss coefficients share one), and prints per point whether it
    fits, its roofline step time and chip-hours, and the sweep's total. Returns 1, naming the
    points, when one does not fit; else 0."""
    from irl_lm import preflight

    preflight.compile_only_process()
    target = preflight.get_target(topology)
    reports: dict[str, preflight.Report] = {}
    rows, too_big, total = [], [], 0.0
    for point in points:
        config = point.resolve_config()
        key = preflight.shape_key(config)
        if key not in reports:
            print(f"[preflight] compiling {point.name} for {target.name} ...", flush=True)
            reports[key] = preflight.preflight(
                config, target, config_label=point.name, auto=AUTO_MESH in point.args
            )
        report = reports[key]
        hours = point.total_steps * report.step_seconds * target.chips / 3600
        total += hours
        fits = not report.too_big()
        if not fits:
            too_big.append((point, report))
        needs = max(c.needs(report.state_bytes) for c in report.calls) / preflight.GiB
        rows.append(
            f"{point.name}\t{'fits' if fits else 'DOES NOT FIT'}\t{needs:.2f} GiB/device\t"
            f"{report.step_seconds * 1e3:.1f} ms/step\t{hours:.1f} chip-hours"
        )
    print(f"[preflight] {len(points)} points, {len(reports)} distinct shapes, on {target.name}:")
    print("\n".join(rows))
    print(f"[preflight] at least {total:.1f} chip-hours of training (roofline; no evaluation)")
    for point, report in too_big:
        print(f"[preflight] {point.name} does not fit on {target.name}:")
        print(preflight.format_report(report), flush=True)
    if too_big:
        names = ", ".join(p.name for p, _ in too_big)
        print(f"[preflight] refused: {names} do not fit on {target.name}; nothing was run")
        return 1
    return 0


def _last_line(log: str) -> str:
    try:
        text = files.path(log).read_bytes().decode(errors="replace")
        lines = [line for line in text.splitlines() if line.strip()]
    except OSError:
        return ""
    return f"\n    {lines[-1][:300]}" if lines else ""


def define_flags() -> None:
    """The CLI's flags, defined only when it runs (demo and report import this module)."""
    flags.DEFINE_string("config", None, "Config file[:arg]; the file defines sweep(arg).")
    flags.DEFINE_string("workdir", None, "Parent directory of the points' workdirs.")
    flags.DEFINE_string("sweep_arg", None, "The arg of the file's sweep(arg).")
    flags.DEFINE_integer(
        "parallel",
        1,
        "Points run at the same time; on a GPU machine whose GPU count divides by it, each "
        "gets its own share of the GPUs (CUDA_VISIBLE_DEVICES).",
    )
    flags.DEFINE_string("only", None, "Run only the points whose name matches this regex.")
    flags.DEFINE_bool("dry_run", False, "List the points and their commands; run nothing.")
    flags.DEFINE_bool(
        "print_commands", False, "Print each unfinished point's irl_lm.main arguments, one a line."
    )
    flags.DEFINE_string(
        "preflight",
        None,
        "A TPU slice or GPU node (irl_lm.preflight's --topology): compile each point for it "
        "first, print the sweep's chip-hours, and run nothing when a point does not fit.",
    )
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    unknown = [a for a in argv[1:] if not a.startswith("--config.")]
    if unknown:
        raise app.UsageError(f"unexpected arguments {unknown}")
    f = flags.FLAGS
    code = run_sweep(
        f.config,
        f.workdir,
        sweep_arg=f.sweep_arg,
        overrides=overrides,
        parallel=f.parallel,
        only=f.only,
        dry_run=f.dry_run,
        print_commands=f.print_commands,
        preflight_topology=f.preflight,
    )
    sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl parses the sweep's own flags; `--config.x=y` pass through to every point."""
    own = [a for a in argv[1:] if not a.startswith("--config.")]
    rest = flags.FLAGS([argv[0], *own])
    return rest + [a for a in argv[1:] if a.startswith("--config.")]


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=_parse_flags)
