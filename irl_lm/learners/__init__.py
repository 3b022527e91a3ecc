"""Learners: what differs between objectives, behind one interface (`common.Learner`) that
the trainer's loop runs.

- `policy.py`: MLE, MLE + entropy, offline and online IQLearn (one model, its optimizer);
- `gail.py`: GAIL (policy, discriminator and frozen reference, one state);
- `sampler.py`: the policy samples of the online losses (a fraction α of the batch's inputs
  for online IQLearn, all of them for GAIL);
- `common.py`: optimizer, train state, the `Learner` interface.

`make_learner` picks and builds one from the config; `validate` checks its fields at start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import ml_collections
import numpy as np

from irl_lm import perf
from irl_lm.learners import gail, policy, sampler
from irl_lm.learners.common import Learner, make_optimizer
from irl_lm.losses import LOSSES, make_loss
from irl_lm.models import build_model, merge_fields

__all__ = ["Learner", "example_batch", "make_learner", "sampled_rows", "validate"]


def validate(config: ml_collections.ConfigDict) -> None:
    """Fails at start, naming the field, on settings the chosen learner cannot run."""
    name = config.loss.name
    if LOSSES[name].online and config.grad_accum_steps > 1:
        raise ValueError(
            f"config.loss.name={name!r} samples from the policy each step, which "
            "gradient accumulation does not support yet: set config.grad_accum_steps=1"
        )
    samples = name == "gail" or (LOSSES[name].online and config.loss.get("alpha", 0) > 0)
    if samples and config.data.get("pack", False):
        raise ValueError(
            f"config.data.pack=True with config.loss.name={name!r}: the policy's samples are "
            "drawn from each row's input, and a packed row holds several inputs, so samples "
            "would read the other examples' inputs: set config.data.pack=False"
        )
    if name != "gail":
        return
    if config.get("logits_chunk_size", 0):
        raise ValueError("config.logits_chunk_size: GAIL's losses take whole logits; set it to 0")
    disc = config.discriminator
    if disc.init not in ("policy", "scratch"):
        raise ValueError(f"config.discriminator.init={disc.init!r}; allowed: policy, scratch")
    if disc.head not in gail.HEADS:
        raise ValueError(f"config.discriminator.head={disc.head!r}; allowed: {list(gail.HEADS)}")
    if disc.init == "policy" and dict(disc.model):
        raise ValueError(
            "config.discriminator.model sets fields, so the discriminator's shape may "
            "differ from the policy's: use config.discriminator.init='scratch'"
        )
    if int(disc.updates_per_step) < 1:
        raise ValueError(
            f"config.discriminator.updates_per_step={disc.updates_per_step} must be >= 1"
        )


def sampled_rows(loss: ml_collections.ConfigDict, batch_size: int, mesh) -> int:
    """Rows sampled from the policy each step: all of the batch for GAIL, a fraction alpha
    of it (rounded up to the batch shards) for online IQLearn, none otherwise."""
    if loss.name == "gail":
        return batch_size
    if LOSSES[loss.name].online and loss.get("alpha", 0) > 0:
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        return sampler.num_sampled_rows(batch_size, loss.alpha, shards)
    return 0


def make_learner(config, model, model_config: dict, mesh, *, batch_lengths, lengths, eos_id, rng):
    """The learner `config.loss` calls for: GAIL's (policy, discriminator and reference) or a
    policy learner, with the sampler of online losses. `batch_lengths`: the lengths of the
    model's batch features; `lengths`: the task's {"inputs", "targets"} lengths;
    `model_config`: the resolved `config.model` (GAIL's discriminator overrides its fields)."""
    example = example_batch(model, batch_lengths, 1)
    tx = make_optimizer(config.optimizer, config.schedule, config.total_steps)
    rows = sampled_rows(config.loss, config.batch_size, mesh)
    draw = None
    if rows:
        draw = sampler.make_sampler(
            model, mesh, rows=rows, max_len=lengths["targets"], eos_id=eos_id
        )
    flop_shapes = {
        k: (config.batch_size, batch_lengths[k])
        for k in perf.COUNTED_FEATURES
        if k in batch_lengths
    }
    if config.loss.name == "gail":
        disc = config.discriminator
        disc_family = build_model(merge_fields(model_config, disc.model))
        disc_tx = gail.discriminator_optimizer(
            config.optimizer, config.schedule, config.total_steps, disc.learning_rate
        )
        learner = gail.gail_learner(
            model,
            gail.discriminator_model(disc_family, disc.head),
            tx,
            disc_tx,
            example,
            mesh,
            rng,
            loss=config.loss,
            discriminator=disc,
            sampler=draw,
        )
        update_flops = gail.step_flops(
            model,
            disc_family,
            flop_shapes,
            updates_per_step=disc.updates_per_step,
            head=disc.head,
            mle_weight=config.loss.mle_weight,
        )
    else:
        learner = policy.policy_learner(
            model,
            make_loss(config.loss),
            tx,
            example,
            mesh,
            rng,
            sampler=draw,
            grad_accum_steps=config.grad_accum_steps,
            eos_id=eos_id,
            logits_chunk_size=config.get("logits_chunk_size", 0),
        )
        update_flops = perf.train_flops_per_step(model, flop_shapes)
        if rows:  # the teacher-forced pass over the samples, in the same update
            sample_shapes = {k: (rows, width) for k, (_, width) in flop_shapes.items()}
            update_flops += perf.train_flops_per_step(model, sample_shapes)
    sampling_flops = 0.0
    if rows:
        sampling_flops = perf.sampling_flops(model, rows, lengths["inputs"], lengths["targets"])
    return dataclasses.replace(
        learner, sampled_rows=rows, update_flops=update_flops, sampling_flops=sampling_flops
    )


def example_batch(model, batch_lengths: Mapping[str, int], rows: int) -> dict[str, np.ndarray]:
    """Ones in the shapes of `model`'s input features (for initialisation and shapes)."""
    return {k: np.ones((rows, batch_lengths[k]), np.int32) for k in type(model).input_features}
