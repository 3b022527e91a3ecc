"""irl-lm: imitating language via scalable inverse reinforcement learning, in JAX/Flax."""

import os

# TensorFlow (used by seqio for input pipelines only) is chatty at start-up and must not
# take accelerator memory from JAX.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
