"""Golden numbers: short MLE and IQLearn runs of the shrunk demo config, pinned to 10+ digits.

A change that is exact in real arithmetic but not in float32 (a reduction reassociated, an
einsum spelled with other axes, a bias added per layer instead of once, a dtype cast moved)
changes these digits at ~1e-8 relative after a few dozen steps, and 3000 demo steps amplify
it into a moved table (6c4453b: 0.009 validity). Here it fails at once, naming the numbers.

The digits depend on the CPU (its vector units pick XLA's kernels), the device count (8 fake
CPU devices, conftest), and the jax/jaxlib version: they are recorded on one machine type,
`GOLDEN_MACHINE`, the type CI runs on. Elsewhere this test may fail without a bug: re-record.

Re-record after a change that is meant to move the digits (say why in the commit):
    IRL_LM_RECORD_GOLDEN=1 .venv/bin/python -m pytest -q -s tests/test_golden.py
prints the new `GOLDEN_MACHINE` and `GOLDEN` blocks to paste over the ones below.
"""

import os
import platform
import pprint

import jax
import pytest
from conftest import tiny_config

from irl_lm.train import train_and_evaluate

RECORD_ENV = "IRL_LM_RECORD_GOLDEN"
STEPS = 24
# Repeated runs on one machine agree bit for bit; a float32 change moves a value by at least
# about one float32 ulp of a final loss (~1e-7 relative), so anything above zero and well
# under that separates the two.
RTOL = 1e-10

GOLDEN_MACHINE = "AMD EPYC (family 25 model 1), avx2 fma no-avx512f, jax 0.10.2"
GOLDEN = {
    "iqlearn": {
        "validation/iqlearn/delta_mean": -2.5927080656352794,
        "validation/iqlearn/loss": 4.3932136937191615,
        "validation/iqlearn/nll": 3.338819965563322,
        "validation/iqlearn/td2": 10.543936639083059,
        "validation/iqlearn/v_mean": 4.0934297260485195,
    },
    "mle": {"validation/mle/nll": 3.284983424136513, "validation/mle/v_mean": 4.162584806743421},
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
    """The demo config shrunk (conftest) and run for `STEPS` steps, one checkpoint and one
    validation pass at the end; the demo's 2 + 2 layers, so cross-layer sums are exercised."""
    config = tiny_config(loss, total_steps=STEPS)
    config.model.update(num_layers=2, num_decoder_layers=2)
    config.checkpoint.every = STEPS
    config.evals = dict(validation=dict(kind="loss", every=STEPS, max_examples=16))
    return config


def run(loss: str, workdir) -> dict[str, float]:
    results = train_and_evaluate(golden_config(loss), str(workdir))
    assert results["step"] == STEPS
    return {f"validation/{k}": float(v) for k, v in results["eval"]["validation"].items()}


def record_instructions(loss: str, got: dict) -> str:
    entry = pprint.pformat({loss: got}, width=92)[1:-1]
    return (
        "The training digits changed. A float-level change (reassociated sum, einsum spelling, "
        "dtype cast) moves them; if the change is meant, re-record on the CI machine type "
        f"(digits depend on the CPU: recorded on {GOLDEN_MACHINE!r}, this is {machine()!r}):\n"
        f"    {RECORD_ENV}=1 .venv/bin/python -m pytest -q -s tests/test_golden.py\n"
        "and paste the printed entries into GOLDEN in tests/test_golden.py (and the machine "
        f"into GOLDEN_MACHINE). This run's entry:\n    {entry},"
    )


@pytest.mark.parametrize("loss", ["mle", "iqlearn"])
def test_golden_numbers_of_a_short_run(loss, tmp_path):
    got = run(loss, tmp_path)
    if os.environ.get(RECORD_ENV):
        print(f"\n# GOLDEN_MACHINE = {machine()!r}\n    {pprint.pformat({loss: got})[1:-1]},")
        pytest.skip(f"{RECORD_ENV} set: printed the {loss} entry (run with -s to see it)")
    golden = GOLDEN[loss]
    mismatches = [
        f"{loss} {name}: got {got.get(name)!r}, golden {want!r}"
        for name, want in golden.items()
        if name not in got or abs(got[name] - want) > RTOL * abs(want)
    ]
    if set(got) - set(golden):
        mismatches.append(f"{loss}: metrics not pinned yet: {sorted(set(got) - set(golden))}")
    assert not mismatches, "\n".join(mismatches) + "\n\n" + record_instructions(loss, got)
