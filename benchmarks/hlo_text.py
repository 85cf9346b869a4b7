"""Reading XLA's compiled HLO text (as `compiled.as_text()` prints it, on TPU and CPU alike):
the entry computation's instructions, the kernels they launch and the bytes each one's operands
and results hold, by their HLO types. Used by benchmarks/roofline.py."""

from __future__ import annotations

import collections
import math
import re


def entry_computation(text: str) -> list[str]:
    """The instruction lines of the ENTRY computation of compiled HLO text."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("ENTRY "):
            inside = True
        elif inside and line.strip() == "}":
            break
        elif inside and "=" in line:
            lines.append(line.strip())
    return lines


def opcode(line: str) -> str:
    """The opcode of one HLO instruction line ('%x = bf16[2]{0} fusion(...)' -> 'fusion'):
    the first lowercase word followed by '(' after '=' (types and TPU layouts never are)."""
    m = re.search(r"\s([a-z][a-z0-9_-]*)\(", line.split("=", 1)[1])
    return m.group(1) if m else "?"


# Instructions that launch no work of their own.
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
         "partition-id", "replica-id", "opt-barrier"}


def kernel_counts(text: str) -> dict:
    """{'fusions', 'custom_calls', 'kernels', 'by_opcode'} of the entry computation: every
    instruction that launches work (fusions, custom calls, collectives, copies, loops ...)."""
    ops = collections.Counter(opcode(ln) for ln in entry_computation(text))
    work = {k: v for k, v in ops.items() if k not in _FREE}
    return {"fusions": ops.get("fusion", 0), "custom_calls": ops.get("custom-call", 0),
            "kernels": sum(work.values()), "by_opcode": dict(sorted(work.items()))}


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


def shape_bytes(text: str) -> int:
    """Bytes of every array type written in `text` ('bf16[40,2560]{1,0}' -> 204800)."""
    total = 0
    for dt, dims in re.findall(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]", text):
        if dt in _DTYPE_BYTES:
            total += _DTYPE_BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _instruction(line: str) -> tuple[str, str, str, str]:
    """(name, opcode, result types, operand text) of one HLO instruction line."""
    op = opcode(line)
    name = line.split("=", 1)[0].replace("ROOT", "").strip().lstrip("%")
    rhs = line.split("=", 1)[1]
    at = rhs.index(op + "(") if op + "(" in rhs else len(rhs)
    args = rhs[at + len(op) + 1:]
    depth, end = 1, 0
    for end, ch in enumerate(args):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            break
    return name, op, rhs[:at], args[:end]


def _top_level(types: str) -> list[str]:
    """The element types of a result: '(a, b[2], (c))' -> ['a', 'b[2]', '(c)']; 'a' -> ['a']."""
    types = types.strip()
    if not types.startswith("("):
        return [types]
    out, cur, depth = [], "", 0
    for ch in types[1:-1]:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
        cur += ch
    return out + [cur]


def heaviest(text: str, n: int = 8) -> list[dict]:
    """The n entry instructions with the most operand + result bytes (operands by their names'
    types; outputs that alias an operand, `output_to_operand_aliasing`, are the operand passed
    through and count once): what each would move if it read every operand whole (a slice or
    an in-place write moves less), to say which kernel reads what."""
    lines = entry_computation(text)
    sizes = {}
    for ln in lines:
        name, _, result, _ = _instruction(ln)
        sizes[name] = shape_bytes(result)
    out = []
    for ln in lines:
        name, op, result, args = _instruction(ln)
        if op in _FREE:
            continue
        aliased = re.search(r"output_to_operand_aliasing=\{(.*?)\}, ", ln)
        passed = {int(o or 0) for o in re.findall(r"\{(\d*)\}: \(\d+", aliased.group(1))
                  } if aliased else set()
        results = _top_level(result)
        out.append({"name": name, "opcode": op,
                    "operand_bytes": sum(sizes.get(a, 0) for a in re.findall(r"%([\w.\-]+)",
                                                                               args)),
                    "result_bytes": sum(shape_bytes(t) for k, t in enumerate(results)
                                        if k not in passed),
                    "metadata": (re.search(r'op_name="([^"]*)"', ln) or [None, ""])[1]})
    return sorted(out, key=lambda d: -(d["operand_bytes"] + d["result_bytes"]))[:n]
