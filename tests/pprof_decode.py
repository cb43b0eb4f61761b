"""A minimal profile.proto decoder for the tests, written apart from the
encoder in pyarena._pprof so that a round trip checks one against the other.

It reads the protobuf wire format generically (varint, 64-bit, length-
delimited, 32-bit) and knows the Profile schema of github.com/google/pprof
proto/profile.proto by field number. Repeated scalars are accepted packed or
not, as a protobuf parser must.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = 0
    v = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            return v, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def fields(data: bytes):
    """(field number, wire type, value) for each field of a message; the
    value is an int for varint/fixed fields, bytes for length-delimited."""
    i = 0
    while i < len(data):
        key, i = read_varint(data, i)
        num, wire = key >> 3, key & 7
        if num == 0:
            raise ValueError("field number 0")
        if wire == 0:
            v, i = read_varint(data, i)
        elif wire == 1:
            v = int.from_bytes(data[i:i + 8], "little")
            i += 8
        elif wire == 2:
            n, i = read_varint(data, i)
            if i + n > len(data):
                raise ValueError("truncated length-delimited field")
            v = data[i:i + n]
            i += n
        elif wire == 5:
            v = int.from_bytes(data[i:i + 4], "little")
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
        yield num, wire, v


def int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def repeated_ints(wire: int, v, signed: bool = True) -> list[int]:
    if wire == 2:  # packed
        out, i = [], 0
        while i < len(v):
            x, i = read_varint(v, i)
            out.append(int64(x) if signed else x)
        return out
    return [int64(v) if signed else v]


@dataclass
class Line:
    function_id: int = 0
    line: int = 0


@dataclass
class Location:
    id: int = 0
    mapping_id: int = 0
    address: int = 0
    lines: list = field(default_factory=list)


@dataclass
class Function:
    id: int = 0
    name: int = 0
    system_name: int = 0
    filename: int = 0
    start_line: int = 0


@dataclass
class Label:
    key: int = 0
    str: int = 0
    num: int = 0


@dataclass
class Sample:
    location_ids: list = field(default_factory=list)
    values: list = field(default_factory=list)
    labels: list = field(default_factory=list)


@dataclass
class Mapping:
    id: int = 0
    filename: int = 0
    has_functions: bool = False
    has_filenames: bool = False
    has_line_numbers: bool = False


@dataclass
class Profile:
    sample_types: list = field(default_factory=list)   # (type idx, unit idx)
    samples: list = field(default_factory=list)
    mappings: list = field(default_factory=list)
    locations: list = field(default_factory=list)
    functions: list = field(default_factory=list)
    strings: list = field(default_factory=list)
    time_nanos: int = 0
    period_type: tuple = (0, 0)
    period: int = 0
    default_sample_type: int = 0
    order: list = field(default_factory=list)  # top-level field numbers as met

    def s(self, i: int) -> str:
        return self.strings[i]

    def stacks(self):
        """Each sample as ([(filename, function, line), ...], values,
        {label key: num}), frames innermost first."""
        locs = {l.id: l for l in self.locations}
        funcs = {f.id: f for f in self.functions}
        out = []
        for smp in self.samples:
            frames = []
            for lid in smp.location_ids:
                for ln in locs[lid].lines:
                    fn = funcs[ln.function_id]
                    frames.append((self.s(fn.filename), self.s(fn.name), ln.line))
            labels = {self.s(lb.key): lb.num for lb in smp.labels}
            out.append((frames, smp.values, labels))
        return out


def _value_type(data: bytes) -> tuple[int, int]:
    t = u = 0
    for num, _, v in fields(data):
        if num == 1:
            t = v
        elif num == 2:
            u = v
    return t, u


def decode(data: bytes) -> Profile:
    """Decode a profile.proto message (gunzipped first if it is gzip)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    p = Profile()
    for num, wire, v in fields(data):
        p.order.append(num)
        if num == 1:
            p.sample_types.append(_value_type(v))
        elif num == 2:
            smp = Sample()
            for n2, w2, v2 in fields(v):
                if n2 == 1:
                    smp.location_ids += repeated_ints(w2, v2, signed=False)
                elif n2 == 2:
                    smp.values += repeated_ints(w2, v2)
                elif n2 == 3:
                    lb = Label()
                    for n3, _, v3 in fields(v2):
                        if n3 == 1:
                            lb.key = v3
                        elif n3 == 2:
                            lb.str = v3
                        elif n3 == 3:
                            lb.num = int64(v3)
                    smp.labels.append(lb)
            p.samples.append(smp)
        elif num == 3:
            m = Mapping()
            for n2, _, v2 in fields(v):
                if n2 == 1:
                    m.id = v2
                elif n2 == 5:
                    m.filename = v2
                elif n2 == 7:
                    m.has_functions = bool(v2)
                elif n2 == 8:
                    m.has_filenames = bool(v2)
                elif n2 == 9:
                    m.has_line_numbers = bool(v2)
            p.mappings.append(m)
        elif num == 4:
            loc = Location()
            for n2, _, v2 in fields(v):
                if n2 == 1:
                    loc.id = v2
                elif n2 == 2:
                    loc.mapping_id = v2
                elif n2 == 3:
                    loc.address = v2
                elif n2 == 4:
                    ln = Line()
                    for n3, _, v3 in fields(v2):
                        if n3 == 1:
                            ln.function_id = v3
                        elif n3 == 2:
                            ln.line = int64(v3)
                    loc.lines.append(ln)
            p.locations.append(loc)
        elif num == 5:
            fn = Function()
            for n2, _, v2 in fields(v):
                if n2 == 1:
                    fn.id = v2
                elif n2 == 2:
                    fn.name = v2
                elif n2 == 3:
                    fn.system_name = v2
                elif n2 == 4:
                    fn.filename = v2
                elif n2 == 5:
                    fn.start_line = int64(v2)
            p.functions.append(fn)
        elif num == 6:
            p.strings.append(bytes(v).decode("utf-8"))
        elif num == 9:
            p.time_nanos = int64(v)
        elif num == 11:
            p.period_type = _value_type(v)
        elif num == 12:
            p.period = int64(v)
        elif num == 14:
            p.default_sample_type = int64(v)
    return p
