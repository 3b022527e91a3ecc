"""Golden numbers: short MLE and IQLearn runs of the shrunk demo config, pinned to 10+ digits.

A change that is exact in real arithmetic but not in float32 (a reduction reassociated, an
einsum spelled with other axes, a bias added per layer instead of once, a dtype cast moved)
moves training by about one float32 ulp per step, and 3000 demo steps amplify that into a
moved table (0.009 validity for such a change in the attention einsums). After 40 steps such
a change still sits in the last bit, and flips any one readout only about half the time, so
each run pins several: the final validation metrics
(`train_and_evaluate`'s result) and the sums over all steps of the train loss and gradient
norm (its TensorBoard scalars; float32 values, so the float64 sum is exact and any step's
change shows).

The digits depend on the CPU (its vector units pick XLA's kernels), the device count (8 fake
CPU devices, conftest), and the jax/jaxlib version: `GOLDEN` holds them per machine type
(`machine()`), and on a machine type not recorded the test skips, saying how to record it.

Re-record after a change that is meant to move the digits (say why in the commit):
    IRL_LM_RECORD_GOLDEN=1 .venv/bin/python -m pytest -q -s tests/test_golden.py
prints this machine's `GOLDEN` entry for each loss, to paste below.
"""

import math
import os
import platform
import pprint

import jax
import pytest
from conftest import tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from irl_lm.train import train_and_evaluate

RECORD_ENV = "IRL_LM_RECORD_GOLDEN"
STEPS = 40
EVAL_EXAMPLES = 64  # 8 validation batches: more float32 sums to carry a last-bit change
SUMMED_TRAIN_SCALARS = ("train/loss", "train/grad_norm")
# Repeated runs on one machine agree bit for bit; a float32 change moves a readout by at
# least about one float32 ulp (~1e-7 relative; ~2e-9 of a 40-step sum), so a tolerance
# above zero and well under that separates the two.
RTOL = 1e-10

GOLDEN = {
    "AMD EPYC (family 25 model 1), avx2 fma no-avx512f, jax 0.10.2": {
        "mle": {
            "train/grad_norm summed over steps": 69.22187268733978,
            "train/loss summed over steps": 110.18979728221893,
            "validation/mle/nll": 3.2432005959453534,
            "validation/mle/v_mean": 4.165979848518073,
        },
        "iqlearn": {
            "train/grad_norm summed over steps": 103.70589530467987,
            "train/loss summed over steps": 144.6020450592041,
            "validation/iqlearn/delta_mean": -2.525880479937123,
            "validation/iqlearn/loss": 4.283221252282045,
            "validation/iqlearn/nll": 3.2939849933195986,
            "validation/iqlearn/td2": 9.892362031861945,
            "validation/iqlearn/v_mean": 4.0774777165903435,
        },
    }
}


def machine() -> str:
    """The CPU and versions the digits depend on, e.g. 'AMD EPYC (family 25 model 1), avx2
    fma no-avx512f, jax 0.10.2'."""
    fields, flags = {}, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "flags":
                    flags = set(value.split())
                    break
                fields.setdefault(key, value)
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']} model {fields.get('model', '?')})"
    isa = " ".join(f if f in flags else f"no-{f}" for f in ("avx2", "fma", "avx512f"))
    return f"{name}, {isa}, jax {jax.__version__}"


def golden_config(loss: str):
    """The demo config shrunk (conftest): `STEPS` steps, the demo's 2 + 2 layers (so sums
    across layers are exercised), one checkpoint and one validation pass at the end."""
    config = tiny_config(loss, total_steps=STEPS)
    config.model.update(num_layers=2, num_decoder_layers=2)
    config.task.num_eval_examples = EVAL_EXAMPLES
    config.checkpoint.every = STEPS
    config.evals = dict(validation=dict(kind="loss", every=STEPS, max_examples=EVAL_EXAMPLES))
    return config


def train_scalar_sums(workdir) -> dict[str, float]:
    """Each of `SUMMED_TRAIN_SCALARS` summed over the steps (read from the event files)."""
    events = EventAccumulator(str(workdir), size_guidance={"tensors": 0})
    events.Reload()
    sums = {}
    for tag in SUMMED_TRAIN_SCALARS:
        values = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
        assert len(values) == STEPS, f"{tag}: {len(values)} values for {STEPS} steps"
        sums[f"{tag} summed over steps"] = math.fsum(values)
    return sums


def run(loss: str, workdir) -> dict[str, float]:
    results = train_and_evaluate(golden_config(loss), str(workdir))
    assert results["step"] == STEPS
    validation = {f"validation/{k}": float(v) for k, v in results["eval"]["validation"].items()}
    return validation | train_scalar_sums(workdir)


def record_instructions(loss: str, got: dict) -> str:
    entry = pprint.pformat({loss: got}, width=92)[1:-1]
    return (
        "The training digits changed. A float-level change (reassociated sum, einsum spelling, "
        "dtype cast) moves them; if it was not meant, find it (bisect the diff); if it was, "
        f"re-record on this machine type ({machine()!r}; the digits depend on the CPU):\n"
        f"    {RECORD_ENV}=1 .venv/bin/python -m pytest -q -s tests/test_golden.py\n"
        "and paste the printed entries into GOLDEN in tests/test_golden.py. This run's "
        f"entry:\n    {entry},"
    )


@pytest.mark.parametrize("loss", ["mle", "iqlearn"])
def test_golden_numbers_of_a_short_run(loss, tmp_path):
    recording = bool(os.environ.get(RECORD_ENV))
    if machine() not in GOLDEN and not recording:
        pytest.skip(
            f"no golden numbers for this machine type ({machine()!r}; recorded: "
            f"{sorted(GOLDEN)}): record them with {RECORD_ENV}=1 .venv/bin/python -m pytest "
            "-q -s tests/test_golden.py"
        )
    got = run(loss, tmp_path)
    if recording:
        print(f"\n# GOLDEN[{machine()!r}]\n    {pprint.pformat({loss: got})[1:-1]},")
        pytest.skip(f"{RECORD_ENV} set: printed the {loss} entry (run with -s to see it)")
    golden = GOLDEN[machine()][loss]
    mismatches = [
        f"{loss} {name}: got {got.get(name)!r}, golden {want!r}"
        for name, want in golden.items()
        if name not in got or abs(got[name] - want) > RTOL * abs(want)
    ]
    if set(got) - set(golden):
        mismatches.append(f"{loss}: metrics not pinned yet: {sorted(set(got) - set(golden))}")
    assert not mismatches, "\n".join(mismatches) + "\n\n" + record_instructions(loss, got)
