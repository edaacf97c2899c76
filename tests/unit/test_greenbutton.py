"""Green Button ESPI parsing: real sample files, scaling by ReadingType, malformed files with line numbers."""

from __future__ import annotations

import gzip
import itertools
import re
from pathlib import Path

import pytest

from tendril_transactive.cloud.sources.greenbutton import GreenButtonError, load_feed, load_usage, parse_feed

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
GB = ROOT / "tests" / "data" / "greenbutton"  # provenance: tests/data/greenbutton/README.md
COASTAL = GB / "Coastal_Single_Family_Jan_1_2011_to_Jan_1_2012.xml.gz"
FIFTEEN_MIN_DST_DAY = GB / "15minLP_15Days_2012-03-11.xml"
BUNDLED = ROOT / "data" / "greenbutton"


def test_coastal_file_scaled_from_wh_with_its_quirks_reported() -> None:
    feed = load_feed(COASTAL)
    (point,) = feed.usage_points
    assert point.title == "Coastal Single Family"
    (meter,) = point.meter_readings
    rtype = meter.reading_type
    assert (rtype.uom, rtype.power_of_ten_multiplier, rtype.interval_length_s) == (72, 0, 3600)
    usage = feed.electricity_usage()
    assert usage[0].start == 1293868800 and usage[0].kwh == pytest.approx(0.703)
    # Independent total: every <value> inside an IntervalReading, in Wh, less the two readings
    # the parser must drop (a zero-length one of 462 Wh, a repeated hour of 721 Wh).
    text = gzip.decompress(COASTAL.read_bytes()).decode()
    values = [int(v) for v in re.findall(r"<IntervalReading>.*?<value>(-?\d+)</value>", text, re.S)]
    assert len(values) == 8760
    assert sum(iv.kwh for iv in usage) == pytest.approx((sum(values) - 462 - 721) / 1000)
    assert len(usage) == 8758
    joined = "\n".join(feed.warnings)
    assert ":52130: <IntervalReading>: zero-length reading" in joined
    assert ":12146: <IntervalReading>: repeats the interval of line 12139" in joined
    assert ":12091: <timePeriod>: 7200 s reading" in joined
    starts = [iv.start for iv in usage]
    assert starts == sorted(starts)
    assert all(a.end <= b.start for a, b in itertools.pairwise(usage))


def test_fifteen_minute_spring_forward_day_with_reading_type_after_its_block() -> None:
    """This sample (US Eastern, tzOffset -18000) stamps its 23-hour DST day correctly: read as is."""
    feed = load_feed(FIFTEEN_MIN_DST_DAY)
    usage = feed.electricity_usage()
    assert feed.warnings == []
    midnight_est, midnight_edt = 1331442000, 1331524800  # 2012-03-11T05:00Z, 2012-03-12T04:00Z
    assert [iv.start for iv in usage] == list(range(midnight_est, midnight_edt, 900))
    assert {iv.duration_s for iv in usage} == {900}
    values = re.findall(r"<IntervalReading>.*?<value>(-?\d+)</value>", FIFTEEN_MIN_DST_DAY.read_text(), re.S)
    assert [iv.kwh for iv in usage] == [int(v) / 1000 for v in values]


def test_bundled_slices_are_march_2011() -> None:
    for site in ("coastal", "inland"):
        usage = load_usage(BUNDLED / f"{site}_2011-03.xml")
        assert usage[0].start == 1298966400  # 2011-03-01 00:00 PST
        assert usage[-1].end == 1301641200  # 2011-04-01 00:00 PDT
        assert len(usage) == 742  # 743 clock hours, one reading spanning two


# ------------------------------------------------------------------------- synthetic feeds


def feed(uom: str = "72", mult: str = "0", value: str = "1500", duration: str = "3600",
         second_start: str = "1700003600", extra_reading: str = "", rtype_link: str = "ReadingType/01",
         block_up: str = "UsagePoint/01/MeterReading/01/IntervalBlock", prolog: str = "") -> bytes:
    """A minimal valid ESPI feed (line numbers matter to the tests: the ReadingType's <uom> is
    on line 21, the first IntervalReading on line 30, its <value> on line 31)."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>{prolog}
<feed xmlns="http://www.w3.org/2005/Atom">
<entry>
  <link rel="self" href="UsagePoint/01"/>
  <title>test house</title>
  <content><UsagePoint xmlns="http://naesb.org/espi"><ServiceCategory><kind>0</kind></ServiceCategory>
  </UsagePoint></content>
</entry>
<entry>
  <link rel="self" href="UsagePoint/01/MeterReading/01"/>
  <link rel="up" href="UsagePoint/01/MeterReading"/>
  <link rel="related" href="{rtype_link}"/>
  <content><MeterReading xmlns="http://naesb.org/espi"/></content>
</entry>
<entry>
  <link rel="self" href="ReadingType/01"/>
  <content>
    <ReadingType xmlns="http://naesb.org/espi">
      <flowDirection>1</flowDirection>
      <intervalLength>3600</intervalLength>
      <uom>{uom}</uom>
      <powerOfTenMultiplier>{mult}</powerOfTenMultiplier>
    </ReadingType>
  </content>
</entry>
<entry>
  <link rel="up" href="{block_up}"/>
  <content><IntervalBlock xmlns="http://naesb.org/espi">
    <interval><duration>7200</duration><start>1700000000</start></interval>
    <IntervalReading><timePeriod><duration>{duration}</duration><start>1700000000</start></timePeriod>
      <value>{value}</value></IntervalReading>
    <IntervalReading><timePeriod><duration>3600</duration><start>{second_start}</start></timePeriod>
      <value>500</value></IntervalReading>{extra_reading}
  </IntervalBlock></content>
</entry>
</feed>
""".encode()


def test_synthetic_feed_parses() -> None:
    usage = parse_feed(feed(), "t.xml").electricity_usage()
    assert [(iv.start, iv.duration_s, iv.kwh) for iv in usage] == [(1700000000, 3600, 1.5),
                                                                   (1700003600, 3600, 0.5)]


@pytest.mark.parametrize(("mult", "value", "kwh"),
                         [("3", "2", 2.0), ("-1", "5", 0.0005), ("0", "703", 0.703)])
def test_power_of_ten_multiplier_is_honoured(mult: str, value: str, kwh: float) -> None:
    usage = parse_feed(feed(mult=mult, value=value), "t.xml").electricity_usage()
    assert usage[0].kwh == kwh


def _error(data: bytes) -> GreenButtonError:
    with pytest.raises(GreenButtonError) as info:
        parse_feed(data, "t.xml").electricity_usage()
    return info.value


def test_truncated_xml_names_line_and_open_element() -> None:
    data = feed()
    cut = data[: data.index(b"<value>1500")]
    err = _error(cut)
    assert err.source == "t.xml" and err.line == 31 and err.element == "IntervalReading"
    assert "malformed XML" in str(err)


def test_mismatched_tag_names_line() -> None:
    err = _error(feed().replace(b"</uom>", b"</uomx>"))
    assert (err.line, err.element) == (21, "uom")


@pytest.mark.parametrize(("kwargs", "line", "element", "words"), [
    ({"value": "12.5"}, 31, "value", "not an integer"),
    ({"uom": "38"}, 21, "uom", "uom 38 (W) is not energy"),
    ({"duration": "-5"}, 30, "timePeriod", "duration must be >= 0"),
    ({"second_start": "1700001800"}, 32, "IntervalReading", "overlapping the reading at line 30"),
    ({"rtype_link": "ReadingType/99"}, 13, "MeterReading", "no ReadingType entry matches"),
    ({"block_up": "Elsewhere/IntervalBlock"}, 28, "IntervalBlock", "names no MeterReading"),
])
def test_malformed_content_names_element_and_line(kwargs: dict[str, str], line: int, element: str,
                                                  words: str) -> None:
    err = _error(feed(**kwargs))
    assert (err.line, err.element) == (line, element), str(err)
    assert words in err.message
    assert str(err).startswith(f"t.xml:{line}: <{element}>")


def test_missing_value_names_the_reading() -> None:
    err = _error(feed().replace(b"<value>1500</value>", b""))
    assert (err.line, err.element) == (30, "IntervalReading")
    assert "missing <value>" in err.message


def test_doctype_refused_before_any_entity_is_expanded() -> None:
    bomb = '\n<!DOCTYPE feed [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
    err = _error(feed(prolog=bomb))
    assert err.element == "!DOCTYPE" and err.line == 2


def test_root_must_be_an_atom_feed() -> None:
    err = _error(b'<?xml version="1.0"?>\n<UsagePoint xmlns="http://naesb.org/espi"/>')
    assert (err.line, err.element) == (2, "UsagePoint")


def test_exact_repeat_kept_once_with_a_warning() -> None:
    repeat = ("\n    <IntervalReading><timePeriod><duration>3600</duration><start>1700003600</start>"
              "</timePeriod><value>900</value></IntervalReading>")
    parsed = parse_feed(feed(extra_reading=repeat), "t.xml")
    assert [iv.kwh for iv in parsed.electricity_usage()] == [1.5, 0.5]
    assert any("repeats the interval of line 32" in w for w in parsed.warnings)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GreenButtonError, match="cannot read"):
        load_feed(tmp_path / "none.xml")


def test_gzip_file_read_and_a_corrupt_one_refused(tmp_path: Path) -> None:
    packed = tmp_path / "t.xml.gz"
    packed.write_bytes(gzip.compress(feed()))
    assert load_usage(packed) == parse_feed(feed(), "t.xml").electricity_usage()
    packed.write_bytes(gzip.compress(feed())[:-9])
    with pytest.raises(GreenButtonError, match="cannot decompress"):
        load_feed(packed)
