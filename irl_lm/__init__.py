"""irl-lm: imitating language via scalable inverse reinforcement learning, in JAX/Flax."""

import os

from irl_lm import tf_setup

# TensorFlow (used by seqio for input pipelines only) is chatty at run time too: its INFO and
# WARNING lines (e.g. at the end of every finite tf.data pass) are not shown.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# It must not take accelerator memory from JAX, nor open with CUDA messages on a CPU machine.
tf_setup.install()
