"""A known stochastic expert p_E(y | x), so learned policies can be checked against exact values.

The expert reads an input x of symbols left to right and, for each symbol, emits one of a few
"synonym" tokens, sometimes a "filler" token first, and EOS at the end. Its state (pointer into x,
mode, tokens emitted) changes deterministically with each emitted token, and the emitted token names
the option taken, so the state after any prefix is a function of (x, prefix). That makes the
log-probability, the next-token distribution and its entropy exact for any token sequence.

Pure NumPy: nothing here imports jax or tensorflow.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2  # Reserved so the layout matches real vocabularies; the expert never emits it.
FIRST_TOKEN = 3

SPLITS = ("train", "validation", "test")

# First words of the seed entropy, so the tables and each split draw from disjoint streams.
# Entropy lists always have 4 words: SeedSequence pads short lists with zeros, so lists of
# different lengths could otherwise collide.
_TABLES_STREAM = 0
_EXAMPLES_STREAM = 1


@dataclasses.dataclass(frozen=True)
class ExpertSpec:
    """Shape and randomness of a synthetic expert; validated by `SyntheticExpert`."""

    num_symbols: int = 12
    num_output_tokens: int = 24
    num_states: int = 3
    branching: int = 3
    temperature: float = 1.0
    filler_prob: float = 0.1
    min_input_len: int = 4
    max_input_len: int = 8
    # Fillers the longest input can afford; shorter inputs can afford more (see max_target_len).
    max_fillers: int = 2
    seed: int = 0

    @property
    def first_output_token(self) -> int:
        return FIRST_TOKEN + self.num_symbols

    @property
    def filler_token(self) -> int:
        return self.first_output_token + self.num_output_tokens

    @property
    def vocab_size(self) -> int:
        """Specials, input symbols, output tokens and the filler, rounded up to a multiple of 8."""
        return -(-(self.filler_token + 1) // 8) * 8

    @property
    def max_target_len(self) -> int:
        """Most tokens the expert emits, EOS included."""
        return self.max_input_len + self.max_fillers + 1

    @property
    def max_input_len_with_eos(self) -> int:
        return self.max_input_len + 1


def _validate_spec(spec: ExpertSpec) -> None:
    for name in (
        "num_symbols",
        "num_output_tokens",
        "num_states",
        "branching",
        "min_input_len",
        "max_input_len",
    ):
        value = getattr(spec, name)
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"ExpertSpec.{name} must be a positive integer, got {value!r}")
    for name in ("max_fillers", "seed"):
        value = getattr(spec, name)
        if not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"ExpertSpec.{name} must be a non-negative integer, got {value!r}")
    if spec.branching > spec.num_output_tokens:
        raise ValueError(
            f"ExpertSpec.branching ({spec.branching}) must be <= num_output_tokens "
            f"({spec.num_output_tokens}): synonyms of one state are distinct output tokens"
        )
    if not (math.isfinite(spec.temperature) and spec.temperature > 0):
        raise ValueError(f"ExpertSpec.temperature must be finite and > 0, got {spec.temperature}")
    if not 0 <= spec.filler_prob < 1:
        raise ValueError(f"ExpertSpec.filler_prob must be in [0, 1), got {spec.filler_prob}")
    if spec.min_input_len > spec.max_input_len:
        raise ValueError(
            f"ExpertSpec.min_input_len ({spec.min_input_len}) must be <= max_input_len "
            f"({spec.max_input_len})"
        )


@dataclasses.dataclass(frozen=True)
class _Step:
    """What the expert may emit from one state: tokens, their log-probs and where each leads."""

    tokens: np.ndarray  # int32 [K]
    log_probs: np.ndarray  # float64 [K]
    next_modes: np.ndarray  # int [K]
    advances: np.ndarray  # int [K], 1 if the token consumes the current input symbol
    cum_probs: np.ndarray  # float64 [K], for inverse-CDF sampling
    entropy: float
    option_of_token: dict[int, int]


def _make_step(tokens, log_probs, next_modes, advances) -> _Step:
    probs = np.exp(log_probs)
    # Underflowed options (tiny temperature) have p = 0 and contribute nothing to the entropy.
    entropy = -float(np.sum(np.where(probs > 0, probs * log_probs, 0.0)))
    return _Step(
        tokens=np.asarray(tokens, np.int32),
        log_probs=np.asarray(log_probs, np.float64),
        next_modes=np.asarray(next_modes),
        advances=np.asarray(advances),
        cum_probs=np.cumsum(probs),
        entropy=max(0.0, entropy),
        option_of_token={int(t): k for k, t in enumerate(tokens)},
    )


def _strip_after_eos(targets) -> np.ndarray:
    """Targets up to and including the first EOS; all of them when there is no EOS."""
    targets = np.asarray(targets)
    if targets.ndim != 1:
        raise ValueError(f"targets must be 1-D, got shape {targets.shape}")
    eos_positions = np.flatnonzero(targets == EOS_ID)
    if eos_positions.size:
        targets = targets[: eos_positions[0] + 1]
    return targets.astype(np.int64)


class SyntheticExpert:
    """Samples from, and gives exact log-probs and entropies of, the expert `spec` describes.

    Sequence arguments (`targets`, `prefix`) are cut after their first EOS, so model batches with
    trailing PAD can be passed as they are; per-token outputs cover the tokens up to and including
    that EOS, or every token when there is none.
    """

    def __init__(self, spec: ExpertSpec):
        _validate_spec(spec)
        self.spec = spec
        num_symbols, num_modes, branching = spec.num_symbols, spec.num_states, spec.branching
        rng = np.random.default_rng([spec.seed, _TABLES_STREAM, 0, 0])
        synonyms_SxQxB = spec.first_output_token + np.stack(
            [
                rng.choice(spec.num_output_tokens, size=branching, replace=False)
                for _ in range(num_symbols * num_modes)
            ]
        ).reshape(num_symbols, num_modes, branching)
        logits_SxQxB = rng.normal(size=(num_symbols, num_modes, branching))
        next_mode_SxQxB = rng.integers(0, num_modes, size=(num_symbols, num_modes, branching))

        # Shifting by the max keeps exp() finite for any temperature; options far below the max
        # underflow to probability 0 but keep a finite log-prob.
        scaled_SxQxB = logits_SxQxB / spec.temperature
        scaled_SxQxB -= scaled_SxQxB.max(axis=-1, keepdims=True)
        log_softmax_SxQxB = scaled_SxQxB - np.log(np.exp(scaled_SxQxB).sum(-1, keepdims=True))

        self._eos_step = _make_step([EOS_ID], [0.0], [0], [0])
        # _steps[filler_allowed][symbol][mode]
        self._steps: list[list[list[_Step]]] = [[], []]
        for symbol in range(num_symbols):
            no_filler, with_filler = [], []
            for mode in range(num_modes):
                tokens = synonyms_SxQxB[symbol, mode]
                log_probs = log_softmax_SxQxB[symbol, mode]
                next_modes = next_mode_SxQxB[symbol, mode]
                advances = np.ones(branching, np.int64)
                no_filler.append(_make_step(tokens, log_probs, next_modes, advances))
                if spec.filler_prob > 0:
                    with_filler.append(
                        _make_step(
                            np.append(tokens, spec.filler_token),
                            np.append(
                                log_probs + math.log1p(-spec.filler_prob),
                                math.log(spec.filler_prob),
                            ),
                            np.append(next_modes, (mode + 1) % num_modes),
                            np.append(advances, 0),
                        )
                    )
                else:
                    with_filler.append(no_filler[-1])
            self._steps[0].append(no_filler)
            self._steps[1].append(with_filler)

    # ---- state machine --------------------------------------------------------------------

    def _check_inputs(self, inputs) -> np.ndarray:
        """Input symbols as ints; a trailing EOS and PADs (as in model batches) are dropped."""
        inputs = np.asarray(inputs)
        if inputs.ndim != 1:
            raise ValueError(f"inputs must be 1-D, got shape {inputs.shape}")
        inputs = inputs.astype(np.int64)
        end = len(inputs)
        while end and inputs[end - 1] == PAD_ID:
            end -= 1
        if end and inputs[end - 1] == EOS_ID:
            end -= 1
        inputs = inputs[:end]
        if not 1 <= len(inputs) <= self.spec.max_input_len:
            raise ValueError(
                f"inputs must hold 1..{self.spec.max_input_len} symbols, got {len(inputs)}"
            )
        symbols = inputs - FIRST_TOKEN
        if np.any((symbols < 0) | (symbols >= self.spec.num_symbols)):
            raise ValueError(
                f"input ids must lie in [{FIRST_TOKEN}, {self.spec.first_output_token}), "
                f"got {inputs.tolist()}"
            )
        return symbols

    def _step(self, symbols: np.ndarray, pos: int, mode: int, num_emitted: int) -> _Step:
        remaining = len(symbols) - pos
        if remaining == 0:
            return self._eos_step
        # A filler is allowed only if the remaining symbols and EOS still fit after it.
        filler_allowed = num_emitted + 1 + remaining + 1 <= self.spec.max_target_len
        return self._steps[int(filler_allowed)][symbols[pos]][mode]

    def _walk(self, symbols: np.ndarray, tokens: np.ndarray):
        """Yields (step, log-prob of the token) along tokens; step is None once impossible."""
        pos, mode = 0, 0
        for num_emitted, token in enumerate(tokens.tolist()):
            step = self._step(symbols, pos, mode, num_emitted)
            option = step.option_of_token.get(token)
            if option is None:
                yield step, -math.inf
                for _ in range(num_emitted + 1, len(tokens)):
                    yield None, -math.inf
                return
            yield step, float(step.log_probs[option])
            pos += int(step.advances[option])
            mode = int(step.next_modes[option])

    # ---- public API -----------------------------------------------------------------------

    def sample_inputs(self, rng: np.random.Generator) -> np.ndarray:
        """An input x: int32 [n], no EOS."""
        n = rng.integers(self.spec.min_input_len, self.spec.max_input_len + 1)
        return (FIRST_TOKEN + rng.integers(0, self.spec.num_symbols, size=n)).astype(np.int32)

    def sample(self, inputs, rng: np.random.Generator) -> np.ndarray:
        """y ~ p_E(. | x): int32 [T], ending with EOS, T <= spec.max_target_len."""
        symbols = self._check_inputs(inputs)
        pos, mode, emitted = 0, 0, []
        while True:
            step = self._step(symbols, pos, mode, len(emitted))
            # side="right" never lands on an option of probability 0.
            option = int(
                np.searchsorted(step.cum_probs, rng.random() * step.cum_probs[-1], "right")
            )
            option = min(option, len(step.tokens) - 1)
            token = int(step.tokens[option])
            emitted.append(token)
            if token == EOS_ID:
                return np.asarray(emitted, np.int32)
            pos += int(step.advances[option])
            mode = int(step.next_modes[option])

    def token_log_probs(self, inputs, targets) -> np.ndarray:
        """log p_E(y_t | x, y_<t): float64, -inf from the first impossible token on."""
        symbols = self._check_inputs(inputs)
        targets = _strip_after_eos(targets)
        return np.array([lp for _, lp in self._walk(symbols, targets)], np.float64)

    def log_prob(self, inputs, targets) -> float:
        """log p_E(y | x); -inf if a token is impossible or y stops before EOS."""
        targets = _strip_after_eos(targets)
        if len(targets) == 0 or targets[-1] != EOS_ID:
            return -math.inf
        return float(np.sum(self.token_log_probs(inputs, targets)))

    def next_token_distribution(self, inputs, prefix) -> np.ndarray:
        """p_E(. | x, prefix): float64 [vocab_size]; all zeros if prefix is impossible or ended."""
        symbols = self._check_inputs(inputs)
        prefix = _strip_after_eos(prefix)
        probs = np.zeros(self.spec.vocab_size, np.float64)
        if len(prefix) and prefix[-1] == EOS_ID:
            return probs
        pos, mode = 0, 0
        for num_emitted, token in enumerate(prefix.tolist()):
            step = self._step(symbols, pos, mode, num_emitted)
            option = step.option_of_token.get(token)
            if option is None:
                return probs
            pos += int(step.advances[option])
            mode = int(step.next_modes[option])
        step = self._step(symbols, pos, mode, len(prefix))
        probs[step.tokens] = np.exp(step.log_probs)
        return probs

    def entropies(self, inputs, targets) -> np.ndarray:
        """Entropy (nats) of p_E(. | x, y_<t) at each t: float64, NaN where y_<t is impossible."""
        symbols = self._check_inputs(inputs)
        targets = _strip_after_eos(targets)
        return np.array(
            [
                math.nan if step is None else step.entropy
                for step, _ in self._walk(symbols, targets)
            ],
            np.float64,
        )

    def example(self, split: str, index: int) -> dict[str, np.ndarray]:
        """One (inputs, targets) pair, the same for the same (spec.seed, split, index).

        Returns {'inputs': int32 [n] without EOS, 'targets': int32 [T] ending with EOS}.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        rng = np.random.default_rng(
            [self.spec.seed, _EXAMPLES_STREAM, SPLITS.index(split), int(index)]
        )
        inputs = self.sample_inputs(rng)
        return {"inputs": inputs, "targets": self.sample(inputs, rng)}
