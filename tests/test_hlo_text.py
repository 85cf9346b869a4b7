"""benchmarks/hlo_text.py, how roofline.py reads compiled HLO: kernels counted and their bytes
taken from the types of their operands and results, on a program XLA:CPU compiles here (the HLO
text has the TPU compiler's syntax) and on an instruction line in the TPU compiler's form."""

import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import hlo_text  # noqa: E402


def test_kernels_and_their_bytes_of_a_compiled_program():
    f = jax.jit(lambda x, y: jnp.tanh(x @ y))
    text = f.lower(jnp.ones((64, 128)), jnp.ones((128, 32))).compile().as_text()
    assert hlo_text.kernel_counts(text)["kernels"] >= 1
    top = hlo_text.heaviest(text)
    dot = [k for k in top if "dot_general" in k["metadata"]]
    assert len(dot) == 1, top
    # reads x (64 x 128 fp32) and y (128 x 32), writes 64 x 32, whatever else is fused in
    assert dot[0]["operand_bytes"] == 4 * (64 * 128 + 128 * 32), dot
    assert dot[0]["result_bytes"] == 4 * 64 * 32, dot
    assert top == sorted(top, key=lambda k: -(k["operand_bytes"] + k["result_bytes"]))


def test_an_output_that_aliases_an_operand_counts_once():
    """The TPU compiler's async-collective fusions pass an all-gathered buffer through as an
    output aliasing an operand (output_to_operand_aliasing): it is the operand, not a write."""
    text = "\n".join([
        "ENTRY %main (p0: bf16[4,8], p1: bf16[1024,256]) -> bf16[4,256] {",
        "  %p0 = bf16[4,8]{1,0} parameter(0)",
        "  %p1 = bf16[1024,256]{1,0} parameter(1)",
        "  %fusion.1 = (bf16[4,256]{1,0}, bf16[1024,256]{1,0}) fusion(%p0, %p1), kind=kOutput, "
        "output_to_operand_aliasing={{1}: (1, {})}, calls=%c, metadata={op_name=\"mlp\"}",
        "  ROOT %gte = bf16[4,256]{1,0} get-tuple-element(%fusion.1), index=0",
        "}"])
    (k,) = hlo_text.heaviest(text)
    assert k["name"] == "fusion.1" and k["metadata"] == "mlp"
    assert k["operand_bytes"] == 2 * (4 * 8 + 1024 * 256)
    assert k["result_bytes"] == 2 * 4 * 256  # the aliased [1024, 256] output is not a write
    assert hlo_text.kernel_counts(text) == {"fusions": 1, "custom_calls": 0, "kernels": 1,
                                            "by_opcode": {"fusion": 1}}
