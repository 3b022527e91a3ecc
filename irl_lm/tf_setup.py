"""TensorFlow is only our input pipeline (seqio, tf.data): keep it off accelerators, quietly.

Imported with `irl_lm`, this module arranges that whoever imports `tensorflow` first (seqio,
TFDS, clu or our data code) gets it with its GPUs hidden, so it takes no accelerator memory
from JAX, and without the start-up lines a CUDA-enabled TensorFlow prints on a machine
without CUDA (`Could not find cuda drivers`, `failed call to cuInit: ... CUDA error`), its
oneDNN and CPU-instruction notices: they read as failures to a newcomer and concern a
TensorFlow that never computes on a device. Only those lines are held back; anything else
TensorFlow writes while it starts is passed on. JAX's own device logging is untouched:
TensorFlow's start is over before JAX looks for devices.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

# The start-up lines of a CUDA build of TensorFlow that say nothing about our run.
NOISE = re.compile(
    r"cudart_stub\.cc|cuda_platform\.cc|failed call to cuInit|Could not find cuda drivers"
    r"|All log messages before absl::InitializeLog\(\) is called|oneDNN custom operations"
    r"|cpu_feature_guard\.cc|To enable the following instructions|rebuild TensorFlow with"
)


@contextlib.contextmanager
def quiet_start():
    """Captures what is written to the stderr file descriptor (C++ logging included) and
    passes on every line but `NOISE`, once the block ends (also when it raises)."""
    if sys.stderr is None or sys.stderr.closed:
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not NOISE.search(line)))
            sys.stderr.flush()


def keep_off_accelerators(tf) -> None:
    """Hides every GPU from TensorFlow (idempotent). Once TensorFlow has run an op it cannot
    change: then it warns if GPUs are visible to TensorFlow."""
    try:
        with quiet_start():
            tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialized
        if tf.config.get_visible_devices("GPU"):
            print(
                "irl_lm: TensorFlow was started before irl_lm and sees GPUs; it may take "
                "accelerator memory from JAX (import irl_lm first)",
                file=sys.stderr,
            )


class _Loader(importlib.abc.Loader):
    def __init__(self, loader, finder):
        self.loader, self.finder = loader, finder

    def __getattr__(self, name):  # get_source, get_resource_reader, ...: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self.finder)  # once: TensorFlow is imported now
        with quiet_start():
            self.loader.exec_module(module)
        keep_off_accelerators(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as usual, then imports it through `_Loader`. Asking whether it is
    installed (`importlib.util.find_spec`, as etils and flax do) imports nothing and keeps
    the finder in place."""

    def __init__(self):
        self.busy = False

    def find_spec(self, name, path, target=None):
        if name != "tensorflow" or self.busy:
            return None
        self.busy = True  # the lookup below goes through sys.meta_path again
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy = False
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader, self)
        return spec


def install() -> None:
    """Routes the first import of `tensorflow` through `quiet_start`; if it is already
    imported, only hides its GPUs."""
    if "tensorflow" in sys.modules:
        keep_off_accelerators(sys.modules["tensorflow"])
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
