"""Green Button (NAESB ESPI) Atom feeds -> usage intervals in kWh.

A feed is an Atom `<feed>` of `<entry>`s; each entry's `<content>` holds one ESPI
resource (UsagePoint, MeterReading, ReadingType, IntervalBlock, ...). Entries are tied
together by their Atom links, not by nesting: a MeterReading's `up` link is its
UsagePoint's `self` + "/MeterReading", an IntervalBlock's `up` link is its MeterReading's
`self` + "/IntervalBlock", and a MeterReading names its ReadingType in a `related` link.
Entries may come in any order (the 15-minute sample puts the ReadingType last).

Values are scaled by the ReadingType, never assumed: kWh = value x 10^powerOfTenMultiplier
in the unit `uom` (72 = Wh). Every error names the file, line and element at fault.

The parser is expat (stdlib) rather than ElementTree because it reports line numbers for
elements, and a DOCTYPE is refused outright: ESPI files have none, and refusing it closes
the entity-expansion attacks that defusedxml exists for.

An IntervalBlock whose stamps show the daylight-saving error of the 2011 SGIP samples (an
interval one DST offset too long or short, then a run of stamps off by that offset, while
the readings in file order tile the block exactly) is read by position, with a warning
naming what was re-placed; docs/greenbutton.md gives the evidence. A file path ending in
`.gz` is decompressed first (a year of hourly ESPI XML is 1.7 MB, 60 kB gzipped).
"""

from __future__ import annotations

import gzip
import xml.parsers.expat
from dataclasses import dataclass, field
from pathlib import Path

from tendril_transactive.cloud.timefmt import utc_time

ATOM_NS = "http://www.w3.org/2005/Atom"
ESPI_NS = "http://naesb.org/espi"

UOM_WH = 72  # ESPI UnitSymbolKind: watt-hours
UOM_NAMES = {38: "W", 61: "VA", 63: "VAr", 71: "VAh", 72: "Wh", 73: "VArh", 169: "therm"}
FLOW_FORWARD = 1  # energy delivered to the customer
FLOW_NET = 19
SERVICE_ELECTRICITY = 0


class GreenButtonError(ValueError):
    """A malformed or unusable Green Button file; names the file, line and element at fault."""

    def __init__(self, source: str, line: int, element: str, message: str) -> None:
        super().__init__(f"{source}:{line}: <{element}>: {message}")
        self.source = source
        self.line = line
        self.element = element
        self.message = message


@dataclass
class _Node:
    ns: str
    name: str
    line: int
    attrs: dict[str, str]
    children: list[_Node] = field(default_factory=list)
    text: str = ""

    def find(self, name: str) -> _Node | None:
        for child in self.children:
            if child.name == name:
                return child
        return None

    def find_all(self, name: str) -> list[_Node]:
        return [child for child in self.children if child.name == name]


@dataclass(frozen=True)
class UsageInterval:
    """Energy over one interval: unix start (UTC), length in seconds, kWh."""

    start: int
    duration_s: int
    kwh: float

    @property
    def end(self) -> int:
        return self.start + self.duration_s


@dataclass(frozen=True)
class ReadingType:
    href: str
    line: int
    uom: int
    power_of_ten_multiplier: int
    interval_length_s: int | None
    flow_direction: int | None
    kind: int | None
    uom_line: int = 0

    @property
    def is_energy(self) -> bool:
        return self.uom == UOM_WH

    def to_kwh(self, value: int, source: str) -> float:
        """kWh represented by one IntervalReading value (divides, so 703 Wh -> 0.703 exactly as typed)."""
        if not self.is_energy:
            unit = UOM_NAMES.get(self.uom, "unknown")
            raise GreenButtonError(source, self.uom_line or self.line, "uom",
                                   f"uom {self.uom} ({unit}) is not energy in Wh; cannot read usage in kWh")
        mult = self.power_of_ten_multiplier
        scale: int = 10 ** abs(mult)
        return value * scale / 1000 if mult >= 0 else value / (scale * 1000)


@dataclass(frozen=True)
class IntervalReading:
    start: int
    duration_s: int
    value: int
    line: int


@dataclass
class MeterReading:
    href: str
    title: str
    line: int
    reading_type: ReadingType
    readings: list[IntervalReading] = field(default_factory=list)

    def usage(self, source: str = "<feed>") -> list[UsageInterval]:
        rtype = self.reading_type
        return [UsageInterval(r.start, r.duration_s, rtype.to_kwh(r.value, source)) for r in self.readings]


@dataclass
class UsagePoint:
    href: str
    title: str
    line: int
    service_kind: int | None
    meter_readings: list[MeterReading] = field(default_factory=list)


@dataclass
class GreenButtonFeed:
    source: str
    usage_points: list[UsagePoint]
    warnings: list[str] = field(default_factory=list)  # odd but usable readings, with their lines

    def electricity_usage(self) -> list[UsageInterval]:
        """The one electricity energy series (delivered or net) in the feed, in kWh."""
        delivered = [
            mr for up in self.usage_points if up.service_kind in (None, SERVICE_ELECTRICITY)
            for mr in up.meter_readings if mr.reading_type.flow_direction in (None, FLOW_FORWARD, FLOW_NET)
        ]
        candidates = [mr for mr in delivered if mr.reading_type.is_energy]
        if not candidates and delivered:
            return delivered[0].usage(self.source)  # raises, naming the ReadingType's uom
        if len(candidates) != 1:
            found = ", ".join(f"{mr.href} (line {mr.line})" for mr in candidates) or "none"
            raise GreenButtonError(self.source, 1, "feed",
                                   f"expected exactly one electricity energy MeterReading, found {found}")
        return candidates[0].usage(self.source)


# --------------------------------------------------------------------------- XML -> nodes


def _parse_nodes(data: bytes, source: str) -> _Node:
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
    parser.buffer_text = True
    stack: list[_Node] = []
    root: list[_Node] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        ns, _, local = name.rpartition(" ")
        node = _Node(ns, local, parser.CurrentLineNumber, attrs)
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
        stack.append(node)

    def end(name: str) -> None:
        stack.pop()

    def chars(text: str) -> None:
        if stack:
            stack[-1].text += text

    def doctype(*_args: object) -> None:
        raise GreenButtonError(source, parser.CurrentLineNumber, "!DOCTYPE",
                               "DOCTYPE declarations are not accepted in Green Button files")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.StartDoctypeDeclHandler = doctype
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        element = stack[-1].name if stack else "document"
        raise GreenButtonError(source, exc.lineno, element,
                               f"malformed XML: {xml.parsers.expat.ErrorString(exc.code)}") from None
    if not root:
        raise GreenButtonError(source, 1, "document", "no root element")
    return root[0]


# --------------------------------------------------------------------------- nodes -> ESPI


def _int_child(node: _Node, name: str, source: str, required: bool = True) -> int | None:
    child = node.find(name)
    if child is None:
        if required:
            raise GreenButtonError(source, node.line, node.name, f"missing <{name}>")
        return None
    text = child.text.strip()
    try:
        return int(text)
    except ValueError:
        raise GreenButtonError(source, child.line, name, f"not an integer: {text[:40]!r}") from None


def _req_int(node: _Node, name: str, source: str) -> int:
    value = _int_child(node, name, source)
    assert value is not None  # required=True raises instead of returning None
    return value


@dataclass
class _Entry:
    line: int
    title: str
    self_href: str
    up_href: str
    related: list[str]
    resources: list[_Node]  # ESPI allows several IntervalBlocks in one entry's content

    @property
    def resource(self) -> _Node:
        return self.resources[0]


def _entries(root: _Node, source: str) -> list[_Entry]:
    if root.ns != ATOM_NS or root.name != "feed":
        raise GreenButtonError(source, root.line, root.name, "root element must be an Atom <feed>")
    out = []
    for entry in root.find_all("entry"):
        links: dict[str, list[str]] = {}
        for link in entry.find_all("link"):
            href = link.attrs.get("href", "").rstrip("/")
            links.setdefault(link.attrs.get("rel", ""), []).append(href)
        content = entry.find("content")
        espi = [c for c in content.children if c.ns == ESPI_NS] if content is not None else []
        if not espi:
            raise GreenButtonError(source, entry.line, "entry", "no ESPI resource in <content>")
        if len(espi) > 1 and any(node.name != "IntervalBlock" for node in espi):
            names = sorted({node.name for node in espi})
            raise GreenButtonError(source, espi[1].line, espi[1].name,
                                   f"only IntervalBlocks may share one <content>, found {names}")
        title_node = entry.find("title")
        out.append(_Entry(entry.line, title_node.text.strip() if title_node is not None else "",
                          (links.get("self") or [""])[0], (links.get("up") or [""])[0],
                          links.get("related", []), espi))
    return out


def _reading_type(entry: _Entry, source: str) -> ReadingType:
    node = entry.resource
    return ReadingType(
        href=entry.self_href, line=node.line, uom=_req_int(node, "uom", source),
        power_of_ten_multiplier=_int_child(node, "powerOfTenMultiplier", source, required=False) or 0,
        interval_length_s=_int_child(node, "intervalLength", source, required=False),
        flow_direction=_int_child(node, "flowDirection", source, required=False),
        kind=_int_child(node, "kind", source, required=False),
        uom_line=uom_node.line if (uom_node := node.find("uom")) is not None else node.line,
    )


def _at(t: int) -> str:
    """A stamp as the file writes it (to find it there) and as a person reads it."""
    return f"{t} ({utc_time(t)})"


@dataclass(frozen=True)
class _Stamped:
    start: int
    duration_s: int
    value: int
    line: int
    period_line: int


def _dst_episodes(readings: list[_Stamped], step: int, shift: int) -> list[tuple[int, int, int]] | None:
    """(index, run, sign) of each DST stamp error in a block, or None if the block does not fit.

    The 2011 SGIP samples were stamped from local wall-clock time: at each clock change one
    reading is `shift` too long (spring) or too short (fall), and the next `run` stamps are
    `shift` off in the same direction, while the readings in file order still tile the block
    hour by hour (docs/greenbutton.md). Only that exact shape counts: every other reading must
    sit on the grid of the block's first start, each run must end back on the grid within a
    day, and anything else (a gap, a true repeat, another offset) leaves the block as stated.
    """
    if not readings or step <= 0 or shift <= 0:
        return None
    first = readings[0].start
    per_day = 86400 // step
    episodes = []
    i = 0
    while i < len(readings):
        r = readings[i]
        if r.start != first + i * step:
            return None
        if r.duration_s == step:
            i += 1
            continue
        if abs(r.duration_s - step) != shift:
            return None
        sign = 1 if r.duration_s > step else -1
        j = i + 1
        while (j < len(readings) and readings[j].duration_s == step
               and readings[j].start == first + j * step + sign * shift):
            j += 1
        if j == len(readings) or j - i - 1 >= per_day:
            return None  # a run that never returns to the grid is not this error
        episodes.append((i, j - i - 1, sign))
        i = j
    return episodes


def _replace_dst_runs(readings: list[_Stamped], step: int, shift: int, source: str,
                      warnings: list[str]) -> list[_Stamped] | None:
    episodes = _dst_episodes(readings, step, shift)
    if not episodes:
        return None
    first = readings[0].start
    out = list(readings)
    for i, run, sign in episodes:
        odd, last = readings[i], readings[i + run]
        for k in range(i, i + run + 1):
            out[k] = _Stamped(first + k * step, step, readings[k].value, readings[k].line,
                              readings[k].period_line)
        since, until = first + i * step, first + (i + run + 1) * step
        after = f" and the {run} after it (to line {last.line}, stamped {sign * shift:+d} s off)" if run else ""
        warnings.append(
            f"{source}:{odd.line}: <IntervalReading>: daylight-saving stamp error: this {odd.duration_s} s "
            f"reading at {_at(odd.start)}{after} re-placed in file order as {run + 1} consecutive {step} s "
            f"readings, {utc_time(since)} to {utc_time(until)}; no reading dropped")
    return out


def _interval_readings(block: _Node, rtype: ReadingType, source: str, warnings: list[str],
                       dst_shift_s: int | None = None) -> list[IntervalReading]:
    interval = block.find("interval")
    if interval is None:
        raise GreenButtonError(source, block.line, "IntervalBlock", "missing <interval>")
    b_start, b_len = _req_int(interval, "start", source), _req_int(interval, "duration", source)
    stamped = []
    for node in block.find_all("IntervalReading"):
        period = node.find("timePeriod")
        if period is None:
            raise GreenButtonError(source, node.line, "IntervalReading", "missing <timePeriod>")
        start, duration = _req_int(period, "start", source), _req_int(period, "duration", source)
        value = _req_int(node, "value", source)
        if duration < 0:
            raise GreenButtonError(source, period.line, "timePeriod",
                                   f"duration must be >= 0, got {duration}")
        stamped.append(_Stamped(start, duration, value, node.line, period.line))
    if rtype.interval_length_s is not None and dst_shift_s is not None:
        stamped = _replace_dst_runs(stamped, rtype.interval_length_s, dst_shift_s, source,
                                    warnings) or stamped
    out = []
    for r in stamped:
        start, duration, value = r.start, r.duration_s, r.value
        if duration == 0:
            # Energy in no time cannot be placed on a clock; reported, not silently kept.
            warnings.append(f"{source}:{r.line}: <IntervalReading>: zero-length reading at {_at(start)} "
                            f"({value} counts) dropped")
            continue
        if rtype.interval_length_s is not None and duration != rtype.interval_length_s:
            # The reading's own timePeriod is authoritative; note the difference.
            warnings.append(f"{source}:{r.period_line}: <timePeriod>: {duration} s reading, ReadingType "
                            f"intervalLength is {rtype.interval_length_s} s")
        if start < b_start or start + duration > b_start + b_len:
            # The samples size each monthly block in 24-hour days, an hour off across DST.
            warnings.append(f"{source}:{r.period_line}: <timePeriod>: {duration} s reading at {_at(start)} "
                            f"lies outside its IntervalBlock of {b_len} s from {_at(b_start)}")
        out.append(IntervalReading(start, duration, value, r.line))
    return out


def _drop_duplicates(readings: list[IntervalReading], source: str,
                     warnings: list[str]) -> list[IntervalReading]:
    """Sorted readings with exact repeats removed; a partial overlap is a malformed file."""
    kept: list[IntervalReading] = []
    for cur in sorted(readings, key=lambda r: r.start):
        prev = kept[-1] if kept else None
        if prev is not None and cur.start < prev.start + prev.duration_s:
            if (cur.start, cur.duration_s) == (prev.start, prev.duration_s):
                # Meters re-send intervals.
                warnings.append(f"{source}:{cur.line}: <IntervalReading>: repeats the interval of line "
                                f"{prev.line} ({_at(cur.start)}+{cur.duration_s} s); kept the first")
                continue
            raise GreenButtonError(source, cur.line, "IntervalReading",
                                   f"starts at {_at(cur.start)}, overlapping the reading at line {prev.line} "
                                   f"({_at(prev.start)}+{prev.duration_s} s)")
        if prev is not None and cur.start > prev.start + prev.duration_s:
            warnings.append(f"{source}:{cur.line}: <IntervalReading>: gap of "
                            f"{cur.start - prev.start - prev.duration_s} s before this reading")
        kept.append(cur)
    return kept


def parse_feed(data: bytes, source: str = "<feed>") -> GreenButtonFeed:
    """Parse a Green Button Atom feed held in memory; `source` names it in errors."""
    entries = _entries(_parse_nodes(data, source), source)
    warnings: list[str] = []
    by_kind: dict[str, list[_Entry]] = {}
    for entry in entries:
        by_kind.setdefault(entry.resource.name, []).append(entry)
    rtypes = {e.self_href: _reading_type(e, source) for e in by_kind.get("ReadingType", [])}
    # Stamps are only re-placed by the DST offset the feed itself declares, and only if it declares one.
    shifts = {_int_child(e.resource, "dstOffset", source, required=False)
              for e in by_kind.get("LocalTimeParameters", [])}
    dst_shift = shifts.pop() if len(shifts) == 1 else None

    points = []
    for e in by_kind.get("UsagePoint", []):
        kind_node = e.resource.find("ServiceCategory")
        kind = _int_child(kind_node, "kind", source, required=False) if kind_node is not None else None
        points.append(UsagePoint(e.self_href, e.title, e.resource.line, kind))
    if not points:
        raise GreenButtonError(source, 1, "feed", "no UsagePoint entry")

    meters: dict[str, MeterReading] = {}
    for e in by_kind.get("MeterReading", []):
        rtype = next((rtypes[h] for h in e.related if h in rtypes), None)
        if rtype is None:
            raise GreenButtonError(source, e.resource.line, "MeterReading",
                                   f"no ReadingType entry matches its related links {e.related}")
        owner = next((p for p in points if e.up_href == p.href + "/MeterReading"), None)
        if owner is None:
            raise GreenButtonError(source, e.resource.line, "MeterReading",
                                   f"up link {e.up_href!r} names no UsagePoint in the feed")
        meter = MeterReading(e.self_href, e.title, e.resource.line, rtype)
        owner.meter_readings.append(meter)
        meters[e.self_href + "/IntervalBlock"] = meter

    for e in by_kind.get("IntervalBlock", []):
        meter_for_block = meters.get(e.up_href)
        if meter_for_block is None:
            raise GreenButtonError(source, e.resource.line, "IntervalBlock",
                                   f"up link {e.up_href!r} names no MeterReading in the feed")
        for block in e.resources:
            meter_for_block.readings.extend(
                _interval_readings(block, meter_for_block.reading_type, source, warnings, dst_shift))
    for meter in meters.values():
        meter.readings = _drop_duplicates(meter.readings, source, warnings)
    return GreenButtonFeed(source, points, warnings)


def load_feed(path: Path) -> GreenButtonFeed:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GreenButtonError(str(path), 0, "file", f"cannot read: {exc.strerror}") from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise GreenButtonError(str(path), 0, "file", f"cannot decompress: {exc}") from None
    return parse_feed(data, str(path))


def load_usage(path: Path) -> list[UsageInterval]:
    """The electricity usage series of a Green Button file, sorted, in kWh per interval."""
    return load_feed(path).electricity_usage()
