"""Vocabulary readers: every format, every bad row, the real Danbooru list."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagsmith.errors import FileFormatError, InputError
from tagsmith.text.prompt import strip_tag_syntax
from tagsmith.text.tokenizer import normalize_tag
from tagsmith.text.vocab import (
    RowProblem,
    VocabEntry,
    Vocabulary,
    _normalize,
    default_vocab_path,
    parse_vocabulary,
    read_vocabulary,
)

TAGCOMPLETE = (
    '1girl,0,6008644,"1girls,sole_female"\n'
    'bottle,0,71684,"bottles"\n'
    "wine_bottle,0,6727,\n"
    "mayonnaise_bottle,0,144,\n"
    'hijikata_toushirou_\\(gintama\\),4,571,""\n'
)
WD14 = (
    "tag_id,name,category,count\n"
    "470575,1girl,0,6008644\n"
    "212816,bottle,0,71684\n"
    "1,wine_bottle,0,6727\n"
)
PLAIN = "1girl\nbottle\nwine bottle\n"


def write(tmp_path: Path, text: str | bytes, name: str = "tags.csv") -> Path:
    p = tmp_path / name
    if isinstance(text, str):
        p.write_text(text, encoding="utf-8", newline="")
    else:
        p.write_bytes(text)
    return p


# -- formats ------------------------------------------------------------------------------


def test_tagcomplete(tmp_path: Path) -> None:
    v = read_vocabulary(write(tmp_path, TAGCOMPLETE))
    assert v.format == "tagcomplete"
    assert v.problems == [] and v.duplicates_removed == 0
    assert v.entries[0] == VocabEntry("1girl", "1girl", 0, 6008644, ("1girls", "sole_female"))
    assert v.entries[2] == VocabEntry("wine_bottle", "wine bottle", 0, 6727, ())
    assert v.by_text()["hijikata toushirou (gintama)"].count == 571
    assert v.texts == ["1girl", "bottle", "wine bottle", "mayonnaise bottle",
                       "hijikata toushirou (gintama)"]


def test_tagcomplete_optional_columns(tmp_path: Path) -> None:
    # tagcomplete's own custom lists (extra-quality-tags.csv) carry tag,category only.
    v = read_vocabulary(write(tmp_path, "masterpiece,5,100\nbest_quality,5\nsolo,0,5,\n"))
    assert v.format == "tagcomplete"
    assert [(e.text, e.category, e.count) for e in v] == [
        ("masterpiece", 5, 100), ("best quality", 5, None), ("solo", 0, 5)
    ]


def test_wd14(tmp_path: Path) -> None:
    v = read_vocabulary(write(tmp_path, WD14, "selected_tags.csv"))
    assert v.format == "wd14"
    assert [(e.tag, e.text, e.category, e.count) for e in v] == [
        ("1girl", "1girl", 0, 6008644),
        ("bottle", "bottle", 0, 71684),
        ("wine_bottle", "wine bottle", 0, 6727),
    ]
    assert v.problems == [] and v.notes == []


def test_wd14_without_header_is_read_by_shape(tmp_path: Path) -> None:
    v = read_vocabulary(write(tmp_path, WD14.split("\n", 1)[1]))
    assert v.format == "wd14"
    assert v.by_text()["wine bottle"].count == 6727
    assert len(v.notes) == 1 and "no header" in v.notes[0]


def test_header_by_column_name(tmp_path: Path) -> None:
    v = read_vocabulary(write(tmp_path, "name,count\nbottle,71684\nwine_bottle,6727\n"))
    assert v.format == "plain"
    assert [(e.text, e.count) for e in v] == [("bottle", 71684), ("wine bottle", 6727)]


def test_plain(tmp_path: Path) -> None:
    v = read_vocabulary(write(tmp_path, PLAIN, "tags.txt"))
    assert v.format == "plain"
    assert [(e.tag, e.text, e.count, e.category) for e in v] == [
        ("1girl", "1girl", None, None),
        ("bottle", "bottle", None, None),
        ("wine bottle", "wine bottle", None, None),
    ]


def test_plain_with_counts(tmp_path: Path) -> None:
    v = read_vocabulary(write(tmp_path, "bottle,71684\nwine_bottle,6727.0\n"))
    assert v.format == "plain"
    assert [(e.text, e.count) for e in v] == [("bottle", 71684), ("wine bottle", 6727)]


@pytest.mark.parametrize("text", [
    "mayonnaise_bottle\nlong hair,500\nsolo\n",  # mostly single tags
    "long hair,500\nmayonnaise_bottle\nsolo,9\n",  # mostly with counts
])
def test_plain_lines_with_and_without_a_count_mix(tmp_path: Path, text: str) -> None:
    v = read_vocabulary(write(tmp_path, text, "tags.txt"))
    assert v.format == "plain" and v.problems == []
    counts = {"mayonnaise bottle": None, "long hair": 500, "solo": 9 if "solo,9" in text else None}
    assert {e.text: e.count for e in v} == counts
    bad = read_vocabulary(write(tmp_path, "solo\nhello, world\nlong hair,500\n", "x.txt"))
    assert [p.line for p in bad.problems] == [2] and "count" in bad.problems[0].message


def test_plain_quoted_tag_with_comma(tmp_path: Path) -> None:
    v = read_vocabulary(write(tmp_path, 'bottle\n"oh, no"\nwine_bottle\n'))
    assert v.texts == ["bottle", "oh, no", "wine bottle"]


def test_underscores_false_keeps_them(tmp_path: Path) -> None:
    v = read_vocabulary(write(tmp_path, TAGCOMPLETE), underscores=False)
    assert v.by_text()["wine_bottle"].count == 6727


# -- encodings and shapes -----------------------------------------------------------------


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda b: gzip.compress(b), id="gzip"),
        pytest.param(lambda b: b"\xef\xbb\xbf" + b, id="bom"),
        pytest.param(lambda b: b.replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(lambda b: gzip.compress(b"\xef\xbb\xbf" + b.replace(b"\n", b"\r\n")),
                     id="gzip-bom-crlf"),
        pytest.param(lambda b: b.replace(b"\n", b"\n\n  \n", 2), id="blank-rows"),
        pytest.param(lambda b: b.rstrip(b"\n"), id="no-final-newline"),
    ],
)
@pytest.mark.parametrize("source", [TAGCOMPLETE, WD14, PLAIN], ids=["tagcomplete", "wd14", "plain"])
def test_encodings_give_the_same_entries(tmp_path: Path, transform, source: str) -> None:
    plain = read_vocabulary(write(tmp_path, source, "a.csv"))
    other = read_vocabulary(write(tmp_path, transform(source.encode()), "b.csv.gz"))
    assert other.entries == plain.entries
    assert other.format == plain.format
    assert other.problems == []


def test_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    v = read_vocabulary(write(tmp_path, gzip.compress(TAGCOMPLETE.encode()), "tags.csv"))
    assert len(v) == 5


def test_quoted_field_spanning_lines_keeps_line_numbers(tmp_path: Path) -> None:
    text = 'bottle,0,1,"a,\nb"\nwine_bottle,0,x,\n'
    v = read_vocabulary(write(tmp_path, text))
    assert v.entries[0].aliases == ("a", "b")
    assert v.problems == [RowProblem(3, "count 'x' is not a whole number")]


# -- bad rows -----------------------------------------------------------------------------


def test_bad_rows_reported_with_line_numbers(tmp_path: Path) -> None:
    text = (
        "bottle,0,71684,\n"  # 1 ok
        ",0,5,\n"  # 2 empty tag
        "a,b,c,d,e,f\n"  # 3 too many columns
        "\n"  # 4 blank: not a problem
        "wine_bottle,0,lots,\n"  # 5 unparseable count
        "jar,0,12.5,\n"  # 6 not a whole number
        "cup,0,-3,\n"  # 7 negative
        "mug,zero,3,\n"  # 8 bad category
        "glass,0,1234.0,\n"  # 9 ok: float count
        "lonely\n"  # 10 too few columns
        "   ,1,2,\n"  # 11 empty tag (whitespace)
    )
    v = read_vocabulary(write(tmp_path, text))
    assert [(e.text, e.count) for e in v] == [("bottle", 71684), ("glass", 1234)]
    assert [p.line for p in v.problems] == [2, 3, 5, 6, 7, 8, 10, 11]
    msgs = {p.line: p.message for p in v.problems}
    assert msgs[2] == "empty tag"
    assert msgs[3] == "expected 2 to 4 columns, found 6 (quote tags that contain commas)"
    assert msgs[5] == "count 'lots' is not a whole number"
    assert msgs[6] == "count '12.5' is not a whole number"
    assert msgs[7] == "count '-3' is not a whole number"
    assert msgs[8] == "category 'zero' is not a whole number"
    assert msgs[10] == "expected 2 to 4 columns, found 1"
    assert str(v.problems[0]) == "line 2: empty tag"
    assert "2 bad rows" not in v.summary() and "8 bad rows skipped" in v.summary()


def test_header_in_headerless_format(tmp_path: Path) -> None:
    v = read_vocabulary(write(tmp_path, "tag,category,count,aliases\n" + TAGCOMPLETE))
    assert v.format == "tagcomplete"
    assert len(v) == 5
    assert v.problems == [RowProblem(1, "header row in a tagcomplete file, which has none")]


def test_header_in_the_middle(tmp_path: Path) -> None:
    v = read_vocabulary(write(tmp_path, TAGCOMPLETE + "tag,category,post_count,aliases\n"))
    assert v.problems == [RowProblem(6, "header row in a tagcomplete file, which has none")]
    w = read_vocabulary(write(tmp_path, WD14 + WD14, "w.csv"))
    assert w.problems == [RowProblem(5, "repeated header row")]
    assert w.duplicates_removed == 3


def test_wd14_wrong_column_count(tmp_path: Path) -> None:
    v = read_vocabulary(write(tmp_path, WD14 + "9,jar,0\n"))
    assert v.problems == [RowProblem(5, "expected 4 columns, found 3")]


def test_duplicates_after_normalisation_keep_highest_count(tmp_path: Path) -> None:
    text = "long_hair,0,10,lh\nlong hair,0,500,longhair\nlong__hair,0,20,\nbottle,0,1,\n"
    v = read_vocabulary(write(tmp_path, text))
    assert v.duplicates_removed == 2
    assert v.entries == [
        VocabEntry("long hair", "long hair", 0, 500, ("longhair", "lh")),
        VocabEntry("bottle", "bottle", 0, 1, ()),
    ]
    assert "2 duplicates merged" in v.summary()


# -- files that cannot be used --------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^Vocabulary file .*nope\.csv does not exist\.$"):
        read_vocabulary(tmp_path / "nope.csv")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"is a directory, not a vocabulary file\.$"):
        read_vocabulary(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\n\n", b"   \r\n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(FileFormatError, match=r"is empty\.$"):
        read_vocabulary(write(tmp_path, content))


def test_only_commas_has_no_tags(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match=r"has no tags \(only blank lines\)\.$"):
        read_vocabulary(write(tmp_path, ",,,\n,,\n"))


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    data = b"bottle,0,1,\njar,0,2,\ncaf\xe9,0,3,\n"
    with pytest.raises(FileFormatError, match=r"not UTF-8 text \(invalid byte 0xe9 on line 3\)"):
        read_vocabulary(write(tmp_path, data))


def test_binary_file(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match=r"is a binary file, not a tagcomplete CSV"):
        read_vocabulary(write(tmp_path, bytes(range(256)) * 4))


def test_nul_byte_late_in_file(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match=r"is a binary file"):
        read_vocabulary(write(tmp_path, TAGCOMPLETE * 2000 + "b\x00c,0,1,\n"))


def test_huge_field(tmp_path: Path) -> None:
    with pytest.raises(
        FileFormatError, match=r"^Cannot read line 2 of .* as CSV \(field larger than field limit"
    ):
        read_vocabulary(write(tmp_path, 'x,0,1,\n"' + "a" * 200_000 + '"\n'))


def test_unclosed_quote(tmp_path: Path) -> None:
    v = read_vocabulary(write(tmp_path, 'a,0,1,\n"unterminated,0,1,\nb,0,2,\nc,0,3,\n'))
    assert v.texts == ["a"]
    assert v.problems == [
        RowProblem(2, "expected 2 to 4 columns, found 1 (an unclosed quote joins the lines "
                      "after it)")
    ]


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-8-sig"])
def test_utf16_and_lone_cr_files_read_as_utf8_ones_do(tmp_path: Path, codec: str) -> None:
    """The same decoding as every tag-list reader (tokenize --file, embed --file)."""
    want = read_vocabulary(write(tmp_path, TAGCOMPLETE, "want.csv"))
    got = read_vocabulary(write(tmp_path, TAGCOMPLETE.encode(codec), "got.csv"))
    assert [(e.text, e.count) for e in got] == [(e.text, e.count) for e in want]
    cr = read_vocabulary(write(tmp_path, TAGCOMPLETE.replace("\n", "\r"), "cr.csv"))
    assert [e.text for e in cr] == [e.text for e in want]
    with pytest.raises(FileFormatError, match="not UTF-16 text"):
        read_vocabulary(write(tmp_path, b"\xff\xfea\x00b", "odd.csv"))


def test_broken_gzip(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match=r"looks gzip-compressed but cannot be decompressed"):
        read_vocabulary(write(tmp_path, gzip.compress(TAGCOMPLETE.encode())[:20]))


def test_nothing_parses(tmp_path: Path) -> None:
    # With a header the format is known, so the sentence is about the rows.
    with pytest.raises(
        FileFormatError,
        match=r"^No tags could be read from .*: all 2 rows were bad \(first: line 2: count",
    ):
        read_vocabulary(write(tmp_path, "name,count\na,x\nb,y\n"))


@pytest.mark.parametrize("text", ["a,0,x,\nb,0,y,\n", "a,b,c\nd,e,f\n", "1,2,3,4,5,6\n"])
def test_unknown_format(tmp_path: Path, text: str) -> None:
    with pytest.raises(
        FileFormatError, match=r"^Cannot tell the format of .*: expected .* but line 1 reads '"
    ):
        read_vocabulary(write(tmp_path, text))


def test_default_vocab_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_vocab_path() is None
    monkeypatch.setenv("TAGSMITH_VOCAB", str(tmp_path / "v.csv"))
    assert default_vocab_path() == tmp_path / "v.csv"
    monkeypatch.setenv("TAGSMITH_VOCAB", "  ")
    assert default_vocab_path() is None


# -- properties ---------------------------------------------------------------------------

tag_text = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00"
    ) | st.sampled_from(list("_ ,\"()\\\t-")),
    min_size=1,
    max_size=30,
)


@given(st.text(max_size=40))
def test_fast_normalize_matches_normalize_tag(tag: str) -> None:
    for underscores in (True, False):
        assert _normalize(tag.strip(), underscores) == normalize_tag(
            tag, underscores=underscores).lower()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            tag_text,
            st.integers(0, 5),
            st.integers(0, 10**7),
            st.lists(tag_text.filter(lambda a: "," not in a and a.strip() == a), max_size=3),
        ),
        min_size=1,
        max_size=20,
    ),
    crlf=st.booleans(),
)
def test_tagcomplete_round_trip(tmp_path: Path, rows, crlf: bool) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n" if crlf else "\n").writerows(
        (tag, cat, count, ",".join(aliases)) for tag, cat, count, aliases in rows
    )
    expected: dict[str, tuple[int, ...]] = {}
    for tag, _cat, count, _ in rows:
        text = normalize_tag(tag).lower()
        if text and tag.strip():
            expected[text] = max(expected.get(text, (-1,)), (count,))
    if not expected:
        return
    v = parse_vocabulary(buf.getvalue())
    assert v.format == "tagcomplete" or len(rows) <= 2
    if v.format != "tagcomplete":
        return
    assert {e.text: (e.count,) for e in v} == expected
    good = sum(1 for tag, *_ in rows if normalize_tag(tag) and tag.strip())
    assert len(v) + v.duplicates_removed == good


@settings(max_examples=60)
@given(st.lists(tag_text.filter(lambda t: normalize_tag(t) != ""), min_size=1, max_size=20))
def test_plain_round_trip(tags: list[str]) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows([t] for t in tags)
    v = parse_vocabulary(buf.getvalue())
    # A plain list reads each line as tokenize does: prompt syntax around a tag ("[0]") goes.
    expected = list(dict.fromkeys(
        normalize_tag(strip_tag_syntax(t.strip())).lower() for t in tags
    ))
    if v.format == "plain" and not v.problems:
        assert v.texts == expected
        assert v.duplicates_removed == len(tags) - len(expected)


# -- the real list ------------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_danbooru_list(danbooru_csv: Path) -> None:
    v = read_vocabulary(danbooru_csv)
    assert isinstance(v, Vocabulary)
    assert v.format == "tagcomplete"
    assert len(v) == 140_782 and v.problems == [] and v.duplicates_removed == 0
    by = v.by_text()
    assert by["bottle"].count == 71_684 and by["bottle"].tag == "bottle"
    assert by["wine bottle"].count == 6_727
    assert by["mayonnaise bottle"].count == 144 and by["mayonnaise bottle"].category == 0
    assert by["1girl"].aliases == ("1girls", "sole_female")
    non_ascii = [e for e in v if not (e.tag + ",".join(e.aliases)).isascii()]
    assert len(non_ascii) == 28


def test_tags_differing_only_in_case_are_one_tag(tmp_path: Path) -> None:
    v = read_vocabulary(write(tmp_path, "long_hair,0,4350743,\nLong_Hair,0,5,\nlong hair,0,7,\n"
                                        "LONG_HAIR,0,9\nHatsune_Miku,4,10,\n"))
    assert [(e.text, e.count) for e in v] == [("long hair", 4350743), ("hatsune miku", 10)]
    assert v.duplicates_removed == 3
