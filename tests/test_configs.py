"""Every config file loads, validates and resolves for each of its `arg` variants."""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from irl_lm import train

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
CONFIG_FILES = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.py")))


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
@pytest.mark.parametrize("arg", [None, "loss=mle", "loss=iqlearn,lam=0.3,gamma=0.9"])
def test_config_validates(path, arg):
    module = load(path)
    assert module.__doc__ and "python -m irl_lm.main" in module.__doc__
    config = module.get_config(arg)
    train.validate_config(config)
    assert train.resolve_model_config(config)["vocab_size"] > 0


def test_unknown_arg_key_is_rejected():
    module = load(os.path.join(CONFIG_DIR, "demo.py"))
    with pytest.raises(
        ValueError, match=r"'los=mle'.*\['alpha', 'beta', .*'lam', 'loss', .*'reward'\]"
    ):
        module.get_config("los=mle")


def test_reading_configs_loads_neither_tensorflow_nor_seqio():
    """Every config file, its `get_config()` and its `sweep()`, in a fresh interpreter:
    reading a config (a sweep planner, a launcher) does not pay for seqio and TensorFlow."""
    script = f"""
import glob, importlib.util, os, sys
sys.path.insert(0, {os.path.dirname(CONFIG_DIR)!r})
paths = sorted(glob.glob(os.path.join({CONFIG_DIR!r}, "*.py")))
paths += sorted(glob.glob(os.path.join({CONFIG_DIR!r}, "..", "experiments", "*", "config.py")))
for path in paths:
    spec = importlib.util.spec_from_file_location("cfg_" + str(len(sys.modules)), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.get_config()
    if hasattr(module, "sweep"):
        module.sweep()
print(len(paths), sorted(m for m in ("tensorflow", "seqio") if m in sys.modules))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    ).stdout.split()
    assert int(out[0]) >= 12  # configs/ and the studies' config files
    assert out[1:] == ["[]"]
