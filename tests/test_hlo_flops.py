"""irl_lm.hlo_flops: matmul FLOPs from optimized HLO, loops counted at their trip counts.

On the CPU backend (where `cost_analysis` counts a loop body once) and on TPU topologies
compiled here by libtpu (skipped where it is not installed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from irl_lm import hlo_flops

F32 = jnp.float32


def compile_cpu(f, *shapes):
    return jax.jit(f).lower(*(jax.ShapeDtypeStruct(s, F32) for s in shapes)).compile()


def chunked(x, w, chunks=7):
    """sum(x @ w), the rows of x taken `chunks` at a time by a scan (as chunked logits are)."""
    xs = x.reshape(chunks, -1, x.shape[-1])
    return lax.scan(lambda c, xc: (c + jnp.sum(xc @ w), None), 0.0, xs)[0]


def test_one_matmul_matches_cost_analysis():
    compiled = compile_cpu(lambda x, w: x @ w, (256, 512), (512, 384))
    flops = hlo_flops.matmul_flops(compiled)
    assert flops == 2 * 256 * 512 * 384
    assert flops == pytest.approx(compiled.cost_analysis()["flops"], rel=0.01)
    assert hlo_flops.loop_report(compiled) == {
        "while_loops": 0,
        "unknown_trip_count": [],
        "trip_counts": {},
    }


def test_scan_counts_every_iteration():
    compiled = compile_cpu(chunked, (7 * 32, 512), (512, 384))
    chunk = 2 * 32 * 512 * 384
    assert hlo_flops.matmul_flops(compiled) == 7 * chunk
    # What this module fixes: XLA's cost analysis counts the loop body once.
    assert compiled.cost_analysis()["flops"] < 1.1 * chunk
    report = hlo_flops.loop_report(compiled)
    assert report["while_loops"] == 1 and report["unknown_trip_count"] == []
    assert list(report["trip_counts"].values()) == [7]


def test_nested_scans_multiply():
    def nested(x, w):
        xs = x.reshape(3, 4, 32, 512)
        inner = lambda c, xc: (c + jnp.sum(xc @ w), None)
        return lax.scan(lambda c, xo: (lax.scan(inner, c, xo)[0], None), 0.0, xs)[0]

    compiled = compile_cpu(nested, (12 * 32, 512), (512, 384))
    assert hlo_flops.matmul_flops(compiled) == 12 * 2 * 32 * 512 * 384
    assert sorted(hlo_flops.loop_report(compiled)["trip_counts"].values()) == [3, 4]


def test_mlp_gradient():
    b, d, h, o = 64, 128, 256, 32

    def loss(params, x):
        return jnp.sum((jax.nn.relu(x @ params["w1"]) @ params["w2"]) ** 2)

    params = {"w1": jax.ShapeDtypeStruct((d, h), F32), "w2": jax.ShapeDtypeStruct((h, o), F32)}
    x = jax.ShapeDtypeStruct((b, d), F32)
    forward = hlo_flops.matmul_flops(jax.jit(loss).lower(params, x).compile())
    assert forward == 2 * b * d * h + 2 * b * h * o
    grad = hlo_flops.matmul_flops(jax.jit(jax.grad(loss)).lower(params, x).compile())
    # The forward pass, then d(w2) = h^T g, d(h) = g w2^T, d(w1) = x^T d(h); d(x) is not
    # asked for, so the backward of the first layer is one matmul, not two.
    assert grad == forward + 2 * (2 * b * h * o) + 2 * b * d * h


def test_conditional_counts_its_largest_branch():
    def f(p, x, w):
        return lax.cond(p > 0, lambda: jnp.sum(x @ w), lambda: jnp.sum(x))

    compiled = compile_cpu(f, (), (64, 128), (128, 256))
    assert hlo_flops.matmul_flops(compiled) == 2 * 64 * 128 * 256


def test_data_dependent_loop_is_unknown():
    def f(x, w):
        return lax.while_loop(lambda v: jnp.sum(v) < 100.0, lambda v: jnp.tanh(v @ w), x)

    compiled = compile_cpu(f, (64, 128), (128, 128))
    assert hlo_flops.matmul_flops(compiled) == 2 * 64 * 128 * 128  # counted once
    report = hlo_flops.loop_report(compiled)
    assert report["while_loops"] == 1 and len(report["unknown_trip_count"]) == 1


@pytest.mark.parametrize(
    "strides, padding, lhs_dilation, groups",
    [
        ((1, 1), "SAME", (1, 1), 1),
        ((2, 1), ((2, 1), (0, 3)), (1, 1), 1),
        ((1, 1), "VALID", (1, 1), 4),
        ((1, 1), ((1, 2), (2, 1)), (2, 2), 1),  # a transposed convolution
    ],
)
def test_convolutions_match_cost_analysis(strides, padding, lhs_dilation, groups):
    """Only the window positions over the input (not padding) count, as XLA counts them."""

    def conv(x, k):
        return lax.conv_general_dilated(
            x, k, strides, padding, lhs_dilation, (1, 2), ("NHWC", "HWIO", "NHWC"), groups
        )

    compiled = compile_cpu(conv, (2, 17, 19, 8), (3, 5, 8 // groups, 16))
    assert hlo_flops.matmul_flops(compiled) == compiled.cost_analysis()["flops"]


# Operands printed with their shapes, a loop with no trip count in its backend config (its
# condition a fused compare), a conditional, an async wrapper (older HLO prints `calls=` on
# async-done too) and a quoted string that names a computation.
SYNTHETIC = """
HloModule synthetic, entry_computation_layout={(f32[8,16]{1,0}, f32[16,16]{1,0}, pred[])->f32[8,16]{1,0}}

%small (a.0: f32[8,16]) -> f32[8,4] {
  %a.0 = f32[8,16]{1,0} parameter(0)
  %zero.0 = f32[] constant(0)
  %k.0 = f32[16,4]{1,0} broadcast(f32[] %zero.0), dimensions={}
  ROOT %d.0 = f32[8,4]{1,0} dot(f32[8,16]{1,0} %a.0, f32[16,4]{1,0} %k.0), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%big (a.1: f32[8,16]) -> f32[8,4] {
  %a.1 = f32[8,16]{1,0} parameter(0)
  %zero.1 = f32[] constant(0)
  %k.1 = f32[16,32]{1,0} broadcast(f32[] %zero.1), dimensions={}
  %d.1 = f32[8,32]{1,0} dot(f32[8,16]{1,0} %a.1, f32[16,32]{1,0} %k.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %s.1 = f32[8,4]{1,0} slice(f32[8,32]{1,0} %d.1), slice={[0:8], [0:4]}
}

%body (state: (s32[], f32[8,16], pred[])) -> (s32[], f32[8,16], pred[]) {
  %state = (s32[], f32[8,16]{1,0}, pred[]) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[8,16]{1,0}, pred[]) %state), index=0
  %x = f32[8,16]{1,0} get-tuple-element((s32[], f32[8,16]{1,0}, pred[]) %state), index=1
  %p = pred[] get-tuple-element((s32[], f32[8,16]{1,0}, pred[]) %state), index=2
  %two = s32[] constant(2)
  %next = s32[] add(s32[] %i, s32[] %two)
  %c = f32[8,4]{1,0} conditional(pred[] %p, f32[8,16]{1,0} %x, f32[8,16]{1,0} %x), true_computation=%big, false_computation=%small
  ROOT %out = (s32[], f32[8,16]{1,0}, pred[]) tuple(s32[] %next, f32[8,16]{1,0} %x, /*index=2*/pred[] %p)
}

%lt (l: s32[], r: s32[]) -> pred[] {
  %l = s32[] parameter(0)
  %r = s32[] parameter(1)
  ROOT %cmp = pred[] compare(s32[] %l, s32[] %r), direction=LT
}

%cond (state.1: (s32[], f32[8,16], pred[])) -> pred[] {
  %state.1 = (s32[], f32[8,16]{1,0}, pred[]) parameter(0)
  %i.1 = s32[] get-tuple-element((s32[], f32[8,16]{1,0}, pred[]) %state.1), index=0
  %ten = s32[] constant(10)
  ROOT %f = pred[] fusion(s32[] %i.1, s32[] %ten), kind=kLoop, calls=%lt
}

%wrapped (a.2: f32[8,16], b.2: f32[16,16]) -> f32[8,16] {
  %a.2 = f32[8,16]{1,0} parameter(0)
  %b.2 = f32[16,16]{1,0} parameter(1)
  ROOT %d.2 = f32[8,16]{1,0} dot(f32[8,16]{1,0} %a.2, f32[16,16]{1,0} %b.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (x.3: f32[8,16], w.3: f32[16,16], p.3: pred[]) -> f32[8,16] {
  %x.3 = f32[8,16]{1,0} parameter(0)
  %w.3 = f32[16,16]{1,0} parameter(1)
  %p.3 = pred[] parameter(2)
  %start = ((f32[8,16]{1,0}, f32[16,16]{1,0}), f32[8,16]{1,0}, s32[]) async-start(f32[8,16]{1,0} %x.3, f32[16,16]{1,0} %w.3), calls=%wrapped
  %done = f32[8,16]{1,0} async-done(((f32[8,16]{1,0}, f32[16,16]{1,0}), f32[8,16]{1,0}, s32[]) %start), calls=%wrapped
  %one = s32[] constant(1)
  %init = s32[] copy(s32[] %one)
  %t = (s32[], f32[8,16]{1,0}, pred[]) tuple(s32[] %init, f32[8,16]{1,0} %done, pred[] %p.3), metadata={op_name="calls=%big"}
  %loop = (s32[], f32[8,16]{1,0}, pred[]) while((s32[], f32[8,16]{1,0}, pred[]) %t), condition=%cond, body=%body
  ROOT %r = f32[8,16]{1,0} get-tuple-element((s32[], f32[8,16]{1,0}, pred[]) %loop), index=1
}
"""  # noqa: E501


def test_hlo_text_with_inline_shapes():
    # i = 1, 3, 5, 7, 9: five iterations, each counting the larger branch; the async call once.
    assert hlo_flops.matmul_flops(SYNTHETIC) == 2 * 8 * 16 * 16 + 5 * (2 * 8 * 32 * 16)
    assert hlo_flops.analyze(SYNTHETIC).loops == (
        hlo_flops.WhileLoop("loop", "main", 5, "condition"),
    )


# ------------------------------------------------------------------------------------ TPU


@pytest.fixture(scope="module")
def tpu_devices():
    """Compile-only devices of a TPU topology, by preflight target name (e.g. "v5e-4")."""
    from irl_lm import preflight

    try:
        preflight.tpu_library()
    except RuntimeError as e:
        pytest.skip(str(e))
    return lambda name: preflight.compile_devices(preflight.get_target(name))


def test_tpu_scan_per_device(tpu_devices):
    mesh = Mesh(np.array(tpu_devices("v5e-4")), ("fsdp",))

    def f(x, w):  # x: [devices * 2, chunks * 32, 512], the batch sharded
        return jax.vmap(chunked, in_axes=(0, None))(x, w).sum()

    x = jax.ShapeDtypeStruct((8, 7 * 32, 512), F32, sharding=NamedSharding(mesh, P("fsdp")))
    w = jax.ShapeDtypeStruct((512, 384), F32, sharding=NamedSharding(mesh, P()))
    compiled = jax.jit(f).lower(x, w).compile()
    total = 8 * 7 * 2 * 32 * 512 * 384
    assert hlo_flops.matmul_flops(compiled) == total / 4
    assert compiled.cost_analysis()["flops"] < 0.2 * total / 4
    # libtpu writes no trip count: it is read from the loop's condition.
    (loop,) = hlo_flops.analyze(compiled).loops
    assert (loop.trip_count, loop.source) == (7, "condition")


def test_tpu_collective_matmul(tpu_devices):
    """An all-gather + matmul compiled to a collective matmul: a loop of collective permutes
    and partial matmuls (here two per iteration, one per ring direction)."""
    mesh = Mesh(np.array(tpu_devices("v5e-16")), ("fsdp",))
    b, d, f = 256, 256, 1024
    x = jax.ShapeDtypeStruct((b, d), jnp.bfloat16, sharding=NamedSharding(mesh, P("fsdp")))
    w = jax.ShapeDtypeStruct((d, f), jnp.bfloat16, sharding=NamedSharding(mesh, P(None, "fsdp")))
    out = NamedSharding(mesh, P(None, "fsdp"))
    compiled = (
        jax.jit(lambda x, w: x @ w, out_shardings=out)
        .lower(x, w)
        .compile({"xla_tpu_all_gather_collective_matmul_mode": "post_spmd"})
    )
    per_device = 2 * b * d * f / 16
    assert hlo_flops.matmul_flops(compiled) == per_device
    assert compiled.cost_analysis()["flops"] < 0.5 * per_device
    report = hlo_flops.loop_report(compiled)
    assert report["while_loops"] == 1 and report["unknown_trip_count"] == []
