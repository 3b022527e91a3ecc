"""Matmul FLOPs of a compiled program, with its loops counted at their trip counts.

    flops = hlo_flops.matmul_flops(jax.jit(step).lower(*args).compile())
    report = hlo_flops.loop_report(compiled)  # while loops found, those of unknown trip count

XLA's `compiled.cost_analysis()["flops"]` counts the body of a `while` loop once, not once per
iteration. A program whose work sits in loops therefore reports a fraction of the FLOPs it runs:
logits computed by chunks with `jax.lax.scan` or `lax.map`, layers under `scan`, and the
windowed einsums (collective matmuls) a TPU compile makes of a sharded matmul and its
all-gather or reduce-scatter, a loop over the devices of the mesh axis (libtpu can emit them,
by default, for the weight gradients of an FSDP train step).

This module reads the optimized HLO (`compiled.as_text()`) instead and sums the FLOPs of every
`dot` (2 x output elements x contracted elements) and `convolution` (2 x output elements x
kernel window positions that overlap the input x input features per group; TPUs compile their
matmuls to convolutions), each times the number of times its computation runs from ENTRY:
once for a computation called by `fusion`, `call`, `async-start` (not again by the matching
`async-update` / `async-done`), `custom-call` and the rest; the largest branch once for a
`conditional`; trip count times for a `while` body (trip count + 1 for its condition), nested
loops multiplying. A loop's trip count comes from its `known_trip_count` backend config when the
compiler wrote one (the CPU compiler does), else from its condition: an induction variable
(a loop-state element initialised from a constant, stepped by a constant add) compared against a
constant (the TPU compiler writes no trip counts). A loop whose trip count neither gives is
counted once and listed in `loop_report`'s `unknown_trip_count`.

The FLOPs are per device: an SPMD program's HLO is one device's share. Other ops (elementwise,
reductions, `ragged-dot`, matmuls in custom calls such as cuBLAS GEMMs) are not counted.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any

# -------------------------------------------------------------------------------- parsing


@dataclasses.dataclass
class Instruction:
    """One HLO instruction: its shape's dims (None for a tuple or token), opcode, operand names,
    the shapes printed with its operands (None where only the name is), and its attributes."""

    name: str
    dims: tuple[int, ...] | None
    opcode: str
    operands: list[str]
    operand_dims: list[tuple[int, ...] | None]
    literal: str  # the operand text of a constant
    attrs: str  # after the operand list, quoted strings blanked
    raw_attrs: str
    called: dict[str, list[str]]  # attribute (calls, body, to_apply, ...) -> computations


@dataclasses.dataclass
class Computation:
    name: str
    instructions: dict[str, Instruction]
    root: str
    is_entry: bool


_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_ARRAY = re.compile(r"^([a-z][a-z0-9]*)\[([^\]]*)\]")
_COMMENT = re.compile(r"/\*.*?\*/")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_CALLED = re.compile(
    r"\b(calls|to_apply|body|condition|branch_computations|true_computation|false_computation"
    r"|called_computations)=(\{[^}]*\}|%?[\w.\-]+)"
)


def _closing(text: str, start: int) -> int:
    """The index of the bracket closing the one at `text[start]`."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced brackets in HLO: {text[start : start + 200]!r}")


def _split_top(text: str) -> list[str]:
    """`text` split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _dims(shape: str) -> tuple[int, ...] | None:
    """The dimensions of an array shape (`bf16[8,<=128]{1,0:T(8,128)}`), None for others."""
    m = _ARRAY.match(shape.strip())
    if not m:
        return None
    body = m.group(2).strip()
    if not body:
        return ()
    try:
        return tuple(int(d.strip().removeprefix("<=")) for d in body.split(","))
    except ValueError:  # an unbounded dynamic dimension (`?`)
        return None


def _instruction(name: str, text: str) -> Instruction:
    """Parses `shape opcode(operands), attrs` (what follows `%name = `)."""
    if text.startswith("("):
        end = _closing(text, 0) + 1
    else:
        m = _ARRAY.match(text)
        end = m.end() if m else text.index(" ")
        if end < len(text) and text[end] == "{":
            end = _closing(text, end) + 1
    dims = _dims(text[:end])
    rest = text[end:].lstrip()
    m = re.match(r"([\w\-]+)\(", rest)
    if not m:
        raise ValueError(f"unparsed HLO instruction %{name} = {text[:200]!r}")
    opcode = m.group(1)
    close = _closing(rest, m.end() - 1)
    literal = _COMMENT.sub("", rest[m.end() : close])
    operands, operand_dims = [], []
    if opcode != "constant":
        for part in _split_top(literal):
            token = part.split()[-1]
            operands.append(token.removeprefix("%"))
            operand_dims.append(_dims(part) if len(part.split()) > 1 else None)
    raw_attrs = rest[close + 1 :]
    attrs = _QUOTED.sub('""', raw_attrs) if '"' in raw_attrs else raw_attrs
    called = {
        key: [n.strip().removeprefix("%") for n in value.strip("{}").split(",") if n.strip()]
        for key, value in _CALLED.findall(attrs)
    }
    return Instruction(
        name, dims, opcode, operands, operand_dims, literal.strip(), attrs, raw_attrs, called
    )


def _open_brackets(line: str) -> int:
    """How many more brackets `line` opens than it closes, outside quoted strings."""
    count = lambda text: sum(map(text.count, "([{")) - sum(map(text.count, ")]}"))
    n = count(line)
    return count(_QUOTED.sub("", line)) if n and '"' in line else n


def parse_hlo(text: str) -> dict[str, Computation]:
    """The computations of an HLO module's text, by name."""
    computations: dict[str, Computation] = {}
    current: Computation | None = None
    pending = ""  # an instruction printed over several lines (a large literal), so far
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and line.rstrip().endswith("{"):
                current = Computation(m.group(2), {}, "", bool(m.group(1)))
            continue
        if pending or (line.strip() != "}" and _open_brackets(line) > 0):
            pending = f"{pending} {line.strip()}" if pending else line
            if _open_brackets(pending) > 0:
                continue
            line, pending = pending, ""
        if line.strip() == "}":
            computations[current.name] = current
            current = None
            continue
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        instruction = _instruction(m.group(2), m.group(3))
        current.instructions[instruction.name] = instruction
        if m.group(1):
            current.root = instruction.name
    if not any(c.is_entry for c in computations.values()):
        raise ValueError("no ENTRY computation in the HLO text")
    for c in computations.values():
        c.root = c.root or next(reversed(c.instructions), "")
    return computations


def _attr_ints(attrs: str, key: str) -> tuple[int, ...]:
    m = re.search(rf"\b{key}=\{{([^}}]*)\}}", attrs)
    if not m or not m.group(1).strip():
        return ()
    return tuple(int(v) for v in m.group(1).split(","))


# ---------------------------------------------------------------------------------- FLOPs


def _operand_dims(computation: Computation, instruction: Instruction, i: int) -> tuple[int, ...]:
    dims = instruction.operand_dims[i]
    if dims is None and instruction.operands[i] in computation.instructions:
        dims = computation.instructions[instruction.operands[i]].dims
    if dims is None:
        raise ValueError(f"no shape for operand {i} of %{instruction.name} in {computation.name}")
    return dims


def dot_flops(computation: Computation, instruction: Instruction) -> float:
    """2 x output elements x contracted elements (batch dimensions are in the output)."""
    lhs = _operand_dims(computation, instruction, 0)
    contracted = math.prod(lhs[d] for d in _attr_ints(instruction.attrs, "lhs_contracting_dims"))
    return 2.0 * math.prod(instruction.dims or ()) * contracted


def _overlaps(size: int, out: int, window: int, stride: int, lo: int, lhs_dil: int, rhs_dil: int):
    """The (output position, window position) pairs of one spatial dimension that read an input
    element rather than padding."""
    last = (size - 1) * lhs_dil  # the last input element, in the dilated input
    total = 0
    for k in range(window):
        offset = k * rhs_dil - lo  # input index = o * stride + offset
        first_o = max(0, -(offset // stride))
        last_o = min(out - 1, (last - offset) // stride)
        if last_o < first_o:
            continue
        if lhs_dil == 1:
            total += last_o - first_o + 1
            continue
        period = lhs_dil // math.gcd(stride, lhs_dil)
        candidates = range(first_o, min(last_o, first_o + period - 1) + 1)
        start = next((o for o in candidates if (o * stride + offset) % lhs_dil == 0), None)
        if start is not None:
            total += (last_o - start) // period + 1
    return total


def convolution_flops(computation: Computation, instruction: Instruction) -> float:
    """2 x (output batch x output features x valid window positions) x input features per group,
    with `dim_labels` naming the dimensions (`b01f_01io->b01f`)."""
    m = re.search(r"\bdim_labels=([\w]+)_([\w]+)->([\w]+)", instruction.attrs)
    if not m:
        raise ValueError(f"no dim_labels on %{instruction.name}")
    lhs_labels, rhs_labels, out_labels = m.groups()
    lhs = _operand_dims(computation, instruction, 0)
    rhs = _operand_dims(computation, instruction, 1)
    out = instruction.dims or ()
    spatial = sorted(c for c in out_labels if c.isdigit())
    fields: dict[str, list[str]] = {}
    w = re.search(r"\bwindow=\{([^}]*)\}", instruction.attrs)
    for item in w.group(1).split() if w else []:
        key, _, value = item.partition("=")
        fields[key] = value.split("x")

    def field(key: str, s: int, default: int) -> int:
        return int(fields[key][s]) if key in fields else default

    positions = out[out_labels.index("b")] * out[out_labels.index("f")]
    for s, label in enumerate(spatial):
        pad = fields["pad"][s].split("_") if "pad" in fields else ("0", "0")
        positions *= _overlaps(
            lhs[lhs_labels.index(label)],
            out[out_labels.index(label)],
            rhs[rhs_labels.index(label)],
            field("stride", s, 1),
            int(pad[0]),
            field("lhs_dilate", s, 1),
            field("rhs_dilate", s, 1),
        )
    return 2.0 * positions * rhs[rhs_labels.index("i")]


# ---------------------------------------------------------------------------- trip counts


@dataclasses.dataclass(frozen=True)
class WhileLoop:
    """A `while` instruction, the computation it is in, and its trip count (None: unknown)
    with where it was read: "backend_config", "condition" or "unknown"."""

    name: str
    computation: str
    trip_count: int | None
    source: str


_PASS_THROUGH = {"copy", "bitcast", "convert", "reshape"}
_SWAPPED = {"LT": "GT", "LE": "GE", "GT": "LT", "GE": "LE", "EQ": "EQ", "NE": "NE"}


class _Resolver:
    """Reduces a scalar value to ("const", v), ("gte", i) (element i of the computation's
    parameter), ("add", a, b), ("sub", a, b) or ("compare", dir, a, b), looking through copies
    and fusions; None when it is something else."""

    def __init__(self, computations: dict[str, Computation]):
        self.computations = computations

    def __call__(self, comp: Computation, name: str, env: tuple | None = None, depth: int = 0):
        instruction = comp.instructions.get(name)
        if instruction is None or depth > 32:
            return None
        op, args = instruction.opcode, instruction.operands
        recurse = functools.partial(self, comp, env=env, depth=depth + 1)
        if op == "constant":
            try:
                return ("const", int(float(instruction.literal)))
            except ValueError:
                return None
        if op == "parameter":
            index = int(instruction.literal)
            return env[index] if env is not None else ("param", index)
        if op in _PASS_THROUGH:
            return recurse(args[0])
        if op == "get-tuple-element":
            tuple_ = recurse(args[0])
            index = int(re.search(r"\bindex=(\d+)", instruction.attrs).group(1))
            if tuple_ == ("param", 0):
                return ("gte", index)
            return None
        if op in ("add", "subtract"):
            return ("add" if op == "add" else "sub", recurse(args[0]), recurse(args[1]))
        if op == "compare":
            m = re.search(r"\bdirection=(\w+)", instruction.attrs)
            return ("compare", m.group(1), recurse(args[0]), recurse(args[1]))
        if op == "fusion":
            called = instruction.called.get("calls", [])
            if len(called) != 1 or called[0] not in self.computations:
                return None
            inner = self.computations[called[0]]
            inner_env = tuple(recurse(a) for a in args)
            return self(inner, inner.root, inner_env, depth + 1)
        return None

    def element(self, comp: Computation, name: str, index: int):
        """Element `index` of the tuple `name` builds, resolved."""
        instruction = comp.instructions.get(name)
        if instruction is None or instruction.opcode != "tuple":
            return None
        return self(comp, instruction.operands[index])


def _count(init: int, step: int, bound: int, direction: str) -> int | None:
    """How many times `i <direction> bound` holds for i = init, init + step, ..."""
    if direction in ("LT", "LE") and step > 0:
        span = bound - init + (1 if direction == "LE" else 0)
        return max(0, -(-span // step))
    if direction in ("GT", "GE") and step < 0:
        span = init - bound + (1 if direction == "GE" else 0)
        return max(0, -(-span // -step))
    if direction == "NE" and step != 0 and (bound - init) % step == 0:
        return (bound - init) // step if (bound - init) // step >= 0 else None
    return None


def trip_count(
    computations: dict[str, Computation], caller: Computation, loop: Instruction
) -> tuple[int | None, str]:
    """A while loop's trip count and where it was read ("backend_config", "condition"), or
    (None, "unknown")."""
    m = re.search(r'\\?"known_trip_count\\?":\s*\{\s*\\?"n\\?":\s*\\?"?(\d+)', loop.raw_attrs)
    if m:
        return int(m.group(1)), "backend_config"
    unknown = (None, "unknown")
    (cond_name,) = loop.called.get("condition", [None])
    (body_name,) = loop.called.get("body", [None])
    if cond_name not in computations or body_name not in computations:
        return unknown
    resolve = _Resolver(computations)
    cond, body = computations[cond_name], computations[body_name]
    test = resolve(cond, cond.root)
    if not test or test[0] != "compare":
        return unknown
    _, direction, a, b = test
    if b and b[0] == "gte" and not (a and a[0] == "gte"):
        a, b, direction = b, a, _SWAPPED.get(direction, direction)
    if not (a and a[0] == "gte"):
        return unknown
    index = a[1]

    def initial(element: int) -> int | None:
        value = resolve.element(caller, loop.operands[0], element)
        return value[1] if value and value[0] == "const" else None

    if b and b[0] == "gte":  # a loop-invariant bound, set before the loop
        if resolve.element(body, body.root, b[1]) != b:
            return unknown
        b = ("const", initial(b[1])) if initial(b[1]) is not None else None
    if not (b and b[0] == "const"):
        return unknown
    update = resolve.element(body, body.root, index)
    step = None
    if update and update[0] in ("add", "sub"):
        x, y = update[1], update[2]
        if update[0] == "add" and x and x[0] == "const":
            x, y = y, x
        if x == ("gte", index) and y and y[0] == "const":
            step = y[1] if update[0] == "add" else -y[1]
    init = initial(index)
    if step is None or init is None:
        return unknown
    count = _count(init, step, b[1], direction)
    return (count, "condition") if count is not None else unknown


# ------------------------------------------------------------------------------ analysis


@dataclasses.dataclass(frozen=True)
class HloFlops:
    """The matmul FLOPs of a program (per device) and the while loops reached from ENTRY."""

    flops: float
    loops: tuple[WhileLoop, ...]

    @property
    def unknown(self) -> list[str]:
        """The loops counted once because their trip count is unknown."""
        return [loop.name for loop in self.loops if loop.trip_count is None]


_NOT_CALLS = {"async-update", "async-done"}  # their async-start counted the wrapped computation


def hlo_text(compiled: Any) -> str:
    """The optimized HLO text of a `jax.stages.Compiled` (a string passes through)."""
    if isinstance(compiled, str):
        return compiled
    text = compiled.as_text()
    if not text:
        raise ValueError("the compiled program has no HLO text")
    return text


def analyze(compiled: Any) -> HloFlops:
    """The matmul FLOPs and while loops of a compiled program (or of its HLO text)."""
    computations = parse_hlo(hlo_text(compiled))
    loops: dict[tuple[str, str], WhileLoop] = {}
    memo: dict[str, float] = {}

    def flops(name: str, stack: tuple[str, ...] = ()) -> float:
        if name in memo:
            return memo[name]
        if name in stack:
            raise ValueError(f"recursive HLO computation {name}")
        comp = computations[name]
        total = 0.0
        for instruction in comp.instructions.values():
            op, called = instruction.opcode, instruction.called
            if op == "dot":
                total += dot_flops(comp, instruction)
            elif op == "convolution":
                total += convolution_flops(comp, instruction)
            if not called or op in _NOT_CALLS:
                continue
            run = functools.partial(flops, stack=stack + (name,))
            if op == "while":
                count, source = trip_count(computations, comp, instruction)
                loops[(name, instruction.name)] = WhileLoop(instruction.name, name, count, source)
                runs = {"body": 1 if count is None else count, "condition": (count or 0) + 1}
                for key, times in runs.items():
                    total += sum(times * run(c) for c in called.get(key, []) if c in computations)
            elif op == "conditional":
                branches = [c for key, names in called.items() if key != "calls" for c in names]
                total += max((run(c) for c in branches if c in computations), default=0.0)
            else:
                callees = [c for names in called.values() for c in names]
                total += sum(run(c) for c in callees if c in computations)
        memo[name] = total
        return total

    entry = next(c.name for c in computations.values() if c.is_entry)
    return HloFlops(flops(entry), tuple(loops.values()))


def matmul_flops(compiled: Any) -> float:
    """The FLOPs of the `dot`s and `convolution`s of a compiled program, per device, each
    counted as many times as it runs: loop bodies at their trip counts (see `loop_report`)."""
    return analyze(compiled).flops


def loop_report(compiled: Any) -> dict:
    """The while loops of a compiled program: {"while_loops": how many, "unknown_trip_count":
    the names of those counted once for want of a trip count, "trip_counts": name -> count}."""
    result = analyze(compiled)
    return {
        "while_loops": len(result.loops),
        "unknown_trip_count": result.unknown,
        "trip_counts": {loop.name: loop.trip_count for loop in result.loops},
    }
