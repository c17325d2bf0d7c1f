"""HBM traffic of a compiled TPU program, read from the memory spaces in its HLO.

XLA's `cost_analysis()["bytes accessed"]` is not HBM traffic on a TPU: it charges every operand
and result of every instruction whatever its memory space, so a fusion that reads its operands
from VMEM (`S(1)` in a layout) is charged as if it read HBM, and each prefetch into VMEM is
charged several times over (its `copy-start` / `slice-start` with both the source and the
destination in its result, and its `-done`). A program whose products need their weights again
(TC's context tokens go through the same projections as the frame tokens) has more prefetches and
looks dearer than it is. It also counts a `while` body once.

`hbm_traffic` counts what crosses HBM: each instruction's operands and results that live in HBM
(no memory space in their layout), a prefetch or eviction once (the bytes it moves), a read
through a (dynamic) slice as the slice, an in-place dynamic-update-slice as the update, and a
`while` body times its known trip count. A fusion is counted at its boundary (what it reads and
writes), not inside: it is XLA's unit of memory traffic. What it cannot see: how often a
Pallas kernel (a custom call) reads its operands (counted once, as the kernels' own cost
estimates declare), and a loop whose trip count is not a constant (counted once; `hbm_traffic`
returns how many there were).
"""

from __future__ import annotations

import dataclasses
import re

_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?(%[\w.\-]+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")
_HEADER = re.compile(r"^(ENTRY )?(%[\w.\-]+) .*\{\s*$")
# Instructions that move no data of their own.
_FREE = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
    "partition-id", "replica-id", "opt-barrier", "copy-done", "slice-done",
}  # fmt: skip
_SLICERS = {"slice", "dynamic-slice"}


def _element_bits(dtype: str) -> int:
    if dtype == "pred":
        return 8
    if dtype == "token":
        return 0
    bits = re.match(r"[a-z]+?(\d+)", dtype)
    return int(bits.group(1)) if bits else 0


@dataclasses.dataclass(frozen=True)
class Array:
    """One array of a shape: its size and whether it lives in HBM."""

    bytes: int
    in_hbm: bool


def arrays(shape: str) -> list[Array]:
    """The arrays of an HLO shape string, tuples flattened in order."""
    out = []
    for dtype, dims, layout in _ARRAY.findall(shape):
        n = 1
        for d in dims.split(","):
            if d:
                n *= int(d)
        space = re.search(r"S\((\d+)\)", layout or "")
        out.append(Array(n * _element_bits(dtype) // 8, space is None or space.group(1) == "0"))
    return out


def _hbm(shape: str) -> int:
    return sum(a.bytes for a in arrays(shape) if a.in_hbm)


@dataclasses.dataclass
class _Instruction:
    name: str
    shape: str
    op: str
    operands: list[str]
    operand_text: str  # e.g. a parameter's number.
    attributes: str
    root: bool


def _split_operands(rest: str) -> tuple[str, str]:
    """`rest` is everything after `op(`: (the operand list, the attributes after it)."""
    depth = 1
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return rest[:i], rest[i + 1 :]
    return rest, ""


def parse(hlo: str) -> tuple[dict[str, list[_Instruction]], str]:
    """The HLO text's computations (name -> instructions in order) and the entry's name."""
    computations: dict[str, list[_Instruction]] = {}
    entry, current = "", None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith(" "):
            current = computations.setdefault(header.group(2), [])
            entry = header.group(2) if header.group(1) else entry
            continue
        if line.startswith("}"):
            current = None
            continue
        match = _INSTRUCTION.match(line) if current is not None else None
        if match:
            root, name, shape, op, rest = match.groups()
            text, attributes = _split_operands(rest)
            operands = re.findall(r"%[\w.\-]+", text)
            current.append(_Instruction(name, shape, op, operands, text, attributes, bool(root)))
    return computations, entry


class _Counter:
    def __init__(self, hlo: str):
        self.computations, self.entry = parse(hlo)
        # HLO names are unique in a module.
        self.instructions = {i.name: i for body in self.computations.values() for i in body}
        self.shapes = {name: i.shape for name, i in self.instructions.items()}
        self.unknown_trip_counts = 0

    def _called(self, instruction: _Instruction, key: str) -> str | None:
        found = re.search(rf"\b{key}=(%[\w.\-]+)", instruction.attributes)
        return found.group(1) if found else None

    def trip_count(self, loop: _Instruction, condition: str | None) -> int | None:
        """A `while`'s trip count where its condition is `counter < limit`, both constants or
        loop values that start from constants (what `lax.scan` and `fori_loop` compile to), else
        None."""
        body = {ins.name: ins for ins in self.computations.get(condition or "", [])}
        root = next((ins for ins in body.values() if ins.root), None)
        init = self.instructions.get(loop.operands[0]) if loop.operands else None
        if root is None or root.op != "compare" or "direction=LT" not in root.attributes:
            return None

        def value(name: str) -> int | None:
            ins = body.get(name) or self.instructions.get(name)
            while ins is not None and ins.op in ("copy", "bitcast", "convert"):
                ins = self.instructions.get(ins.operands[0])
            if ins is None:
                return None
            if ins.op == "constant":
                return int(ins.operand_text) if re.fullmatch(r"-?\d+", ins.operand_text) else None
            if ins.op == "get-tuple-element" and ins.name in body and init is not None:
                index = int(re.search(r"index=(\d+)", ins.attributes).group(1))
                if init.op == "tuple" and index < len(init.operands):
                    return value(init.operands[index])
            return None

        counter, limit = (value(o) for o in root.operands)
        return None if counter is None or limit is None else max(limit - counter, 0)

    def computation(self, name: str) -> int:
        return sum(self.instruction(i) for i in self.computations.get(name, []))

    def instruction(self, i: _Instruction) -> int:
        if i.op in _FREE or 'custom_call_target="AllocateBuffer"' in i.attributes:
            return 0  # (an allocation writes nothing)
        if i.op == "while":
            condition, body = self._called(i, "condition"), self._called(i, "body")
            trips = self.trip_count(i, condition)
            if trips is None:
                self.unknown_trip_counts += 1
            return (self.computation(body) + self.computation(condition)) * (trips or 1)
        if i.op == "conditional":
            branches = re.findall(r"%[\w.\-]+", i.attributes.split("metadata=")[0])
            names = [b for b in branches if b in self.computations]
            return max((self.computation(b) for b in names), default=0)
        if i.op == "call":
            return self.computation(self._called(i, "to_apply") or self._called(i, "calls"))
        if i.op == "copy-start":  # (destination, source, context): the bytes moved, once.
            destination, source = arrays(i.shape)[:2]
            return destination.bytes * (destination.in_hbm + source.in_hbm)
        if i.op == "slice-start":  # ((source), slice, index): reads the slice from the source.
            source, destination = arrays(i.shape)[:2]
            return destination.bytes * (destination.in_hbm + source.in_hbm)
        if i.op.endswith("-done"):
            return _hbm(i.shape)
        operands = dict.fromkeys(i.operands)  # an array read twice by one op is read once.
        if i.op.endswith("-start"):
            return sum(_hbm(self.shapes.get(o, "")) for o in operands)
        if i.op == "fusion":
            return self._fusion(i)
        if i.op in _SLICERS:  # reads the slice from its source, wherever it writes it
            source = arrays(self.shapes.get(i.operands[0], ""))
            read = sum(a.bytes for a in arrays(i.shape)) if source and source[0].in_hbm else 0
            return read + _hbm(i.shape)
        if i.op == "dynamic-update-slice":
            update = self.shapes.get(i.operands[1], "")
            return _hbm(update) + (sum(a.bytes for a in arrays(update)) if _hbm(i.shape) else 0)
        return sum(_hbm(self.shapes.get(o, "")) for o in operands) + _hbm(i.shape)

    def sliced_reads(self, body: list[_Instruction], name: str) -> int | None:
        """Bytes read of `name` in a fused computation where every use of it is a slice
        (through bitcasts and nested fusions), or None where some use reads all of it."""
        total = 0
        for user in (ins for ins in body if name in ins.operands):
            if user.op in _SLICERS and user.operands[0] == name:
                total += sum(a.bytes for a in arrays(user.shape))
                continue
            inner = None
            if user.op == "bitcast":
                inner = self.sliced_reads(body, user.name)
            elif user.op == "fusion" and user.operands.count(name) == 1:
                nested = self.computations.get(self._called(user, "calls") or "", [])
                n = str(user.operands.index(name))
                param = next((p for p in nested if p.op == "parameter" and p.operand_text == n),
                             None)  # fmt: skip
                inner = self.sliced_reads(nested, param.name) if param else None
            if inner is None:
                return None
            total += inner
        return total

    def _fusion(self, i: _Instruction) -> int:
        """What a fusion reads and writes at its boundary."""
        body = self.computations.get(self._called(i, "calls") or "", [])
        by_name = {ins.name: ins for ins in body}
        number = {ins.name: int(ins.operand_text) for ins in body if ins.op == "parameter"}

        def through_bitcasts(name: str) -> str:
            while name in by_name and by_name[name].op == "bitcast":
                name = by_name[name].operands[0]
            return name

        root = next((ins for ins in body if ins.root), None)
        results = [root]
        if root is not None and root.op == "tuple":
            results = [by_name.get(o) for o in root.operands]
        in_place, write = set(), 0
        for result, out in zip(results, arrays(i.shape), strict=False):
            if not out.in_hbm:
                continue
            result = by_name.get(through_bitcasts(result.name)) if result is not None else None
            if result is not None and result.op == "dynamic-update-slice":
                target = through_bitcasts(result.operands[0])
                if target in number:  # written in place: only the update moves.
                    in_place.add(target)
                    write += sum(a.bytes for a in arrays(self.shapes[result.operands[1]]))
                    continue
            write += out.bytes
        reads: dict[str, int] = {}  # by the fusion's operand: one passed twice is read once.
        for name, n in number.items():
            source = arrays(self.shapes.get(i.operands[n], "")) if n < len(i.operands) else []
            if name in in_place or not source or not source[0].in_hbm:
                continue
            size = sum(a.bytes for a in source)
            sliced = self.sliced_reads(body, name)
            read = size if sliced is None else min(sliced, size)
            reads[i.operands[n]] = max(reads.get(i.operands[n], 0), read)
        return sum(reads.values()) + write


def hbm_traffic(hlo: str) -> tuple[float, int]:
    """(bytes that cross HBM per run of the program, `while` loops without a known trip
    count, each counted once)."""
    counter = _Counter(hlo)
    total = counter.computation(counter.entry)
    return float(total), counter.unknown_trip_counts
