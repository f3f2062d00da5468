"""Every JSON file panoptic_ext reads names itself when it is empty or broken."""

import pytest

from panoptic_ext.data.datasets.register import read_categories
from panoptic_ext.data.json_file import JsonFileError, read_json


@pytest.mark.parametrize(
    "content, why",
    [
        (b"", "the file is empty (0 bytes): an interrupted write?"),
        (b'{"categories": [}', "not valid JSON at line 1 column 17: Expecting value"),
        (b'{"a": "\xff"}', "not UTF-8 text (invalid start byte at byte 7)"),
    ],
    ids=["empty", "invalid", "not_utf8"],
)
def test_bad_json_names_file_and_reason(tmp_path, content, why):
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(JsonFileError) as err:
        read_json(str(path), "panoptic json")
    assert str(err.value) == f"cannot read panoptic json {path}: {why}"
    assert (err.value.path, err.value.why) == (str(path), why)
    assert isinstance(err.value, ValueError)


def test_missing_json_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"JSON file not found: {tmp_path}/nope.json"):
        read_json(str(tmp_path / "nope.json"))


def test_read_categories_of_an_empty_file_names_it(tmp_path):
    """The metadata path (class names, counts) reads the JSON first: it was a bare
    JSONDecodeError "Expecting value: line 1 column 1 (char 0)"."""
    path = tmp_path / "empty.json"
    path.write_bytes(b"")
    with pytest.raises(JsonFileError, match=f"cannot read panoptic json {path}: the file is empty"):
        read_categories(str(path))


def test_good_json_is_read(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text('{"categories": [{"id": 1}]}')
    assert read_json(str(path)) == {"categories": [{"id": 1}]}
