"""Class lists, annotation lists and few-shot subsets: formats and their error messages."""

import json
import pickle

import pytest

from tcclip_jax.data.classes import (
    AnnotationError,
    check_list,
    few_shot_subset,
    load_class_names,
    read_annotations,
)
from tcclip_jax.data.readers import Entry, entries_from_list, entries_from_pairs


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_csv_class_list_is_ordered_by_id(tmp_path):
    path = write(tmp_path, "c.csv", 'id,name\n1,"Brush, hair"\n0,ApplyEyeMakeup\n2,cartwheel\n')
    assert load_class_names(path) == ["ApplyEyeMakeup", "Brush, hair", "cartwheel"]


def test_csv_class_list_ignores_extra_columns(tmp_path):
    path = write(tmp_path, "c.csv", "name,id,count\nrun,1,5\nwalk,0,7\n")
    assert load_class_names(path) == ["walk", "run"]


def test_llm_json_class_list(tmp_path):
    names = {"1": "Climb: A person goes up.", "0": "Brush hair: A person is grooming."}
    path = write(tmp_path, "c.json", json.dumps(names))
    assert load_class_names(path) == [names["0"], names["1"]]


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,name\n0,a\n2,c\n", "without gaps; missing [1]"),
        ("id,name\n0,a\n1,b\n1,c\n", "c.csv:4: duplicate class id 1 (first defined at"),
        ("id,name\n0,a\nx,b\n", "c.csv:3: class id 'x' is not an integer"),
        ("idx,label\n0,a\n", "c.csv:1: expected a header with columns 'id' and 'name'"),
        ("id,name\n0,\n", "c.csv:2: empty class name"),
        ("id,name\n", "the class list is empty"),
    ],
)
def test_bad_csv_class_lists_name_file_and_line(tmp_path, text, message):
    with pytest.raises(AnnotationError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_class_names(write(tmp_path, "c.csv", text))


def test_json_duplicate_and_gap_ids(tmp_path):
    dup = write(tmp_path, "d.json", '{"0": "a", "1": "b", "1": "c"}')
    with pytest.raises(AnnotationError, match=r"d.json: duplicate class ids \['1'\]"):
        load_class_names(dup)
    gap = write(tmp_path, "g.json", '{"0": "a", "5": "b"}')
    with pytest.raises(AnnotationError, match=r"g.json: class ids must be 0..1 without gaps"):
        load_class_names(gap)
    broken = write(tmp_path, "b.json", '{"0": "a",\n "1": }')
    with pytest.raises(AnnotationError, match=r"b.json:2: invalid JSON"):
        load_class_names(broken)


def test_annotation_list_parses_paths_with_spaces(tmp_path):
    path = write(tmp_path, "a.txt", "a/v1.avi 3\n\n  b/my video.mp4   0 \n")
    assert read_annotations(path, num_classes=4) == [("a/v1.avi", 3), ("b/my video.mp4", 0)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a.mp4 1\nb.mp4\n", r"a.txt:2: expected 'relative/path LABEL', got 'b.mp4'"),
        ("a.mp4 1\nb.mp4 one\n", r"a.txt:2: label 'one' is not an integer"),
        ("a.mp4 1\nb.mp4 4\n", r"a.txt:2: label 4 is outside the class list \(0..3\)"),
        ("a.mp4 -1\n", r"a.txt:1: label -1 is outside the class list"),
        ("\n\n", r"a.txt: the annotation list has no entries"),
    ],
)
def test_bad_annotation_lines_name_file_and_line(tmp_path, text, message):
    with pytest.raises(AnnotationError, match=message):
        read_annotations(write(tmp_path, "a.txt", text), num_classes=4)


def test_missing_lists_are_named(tmp_path):
    with pytest.raises(AnnotationError, match="annotation list .*nope.txt does not exist"):
        read_annotations(str(tmp_path / "nope.txt"))
    with pytest.raises(AnnotationError, match="class list .*nope.csv does not exist"):
        load_class_names(str(tmp_path / "nope.csv"))


def test_few_shot_subset_takes_k_per_class_deterministically():
    annotations = [(f"v{i}.mp4", i % 3) for i in range(30)]
    subset = few_shot_subset(annotations, shots=4, seed=7)
    assert sorted(label for _, label in subset) == [0] * 4 + [1] * 4 + [2] * 4
    assert subset == few_shot_subset(annotations, shots=4, seed=7)
    assert subset != few_shot_subset(annotations, shots=4, seed=8)
    positions = [annotations.index(a) for a in subset]
    assert positions == sorted(positions)  # original order kept
    with pytest.raises(AnnotationError, match="class 0 has 10 examples, fewer than 11 shots"):
        few_shot_subset(annotations, shots=11, seed=0)


def test_entries_index_like_a_list_and_pickle_compactly(tmp_path):
    path = write(tmp_path, "l{1}.txt", "a/x.mp4 2\n\nb/y z.mp4 0\nc.mp4 1\n")
    entries = entries_from_list(path, num_classes=3)
    assert len(entries) == 3 and entries.labels.tolist() == [2, 0, 1]
    assert entries[1] == Entry("b/y z.mp4", 0, f"{path}:3")
    assert entries[-1].where == f"{path}:4" and [e.path for e in entries[:2]] == [
        "a/x.mp4",
        "b/y z.mp4",
    ]
    with pytest.raises(IndexError):
        entries[3]
    assert list(pickle.loads(pickle.dumps(entries))) == list(entries)
    assert entries_from_pairs([("v.mp4", 4)], "subset")[0] == Entry("v.mp4", 4, "subset[0]")


def test_check_list_against_its_class_list(tmp_path):
    classes = tmp_path / "base.csv"
    classes.write_text("id,name\n0,pour\n1,pullup\n2,punch\n")
    good = tmp_path / "base_val.txt"
    good.write_text("a.avi 2\nb.avi 0\nc.avi 1\nd.avi 1\n")
    summary = check_list(str(good), str(classes))
    assert summary.class_names == ["pour", "pullup", "punch"]
    assert summary.label_range == (0, 2) and summary.labels_used == 3
    assert summary.annotations[0] == ("a.avi", 2)
    out_of_range = tmp_path / "other.txt"
    out_of_range.write_text("a.avi 0\nb.avi 3\n")
    with pytest.raises(AnnotationError, match=r"other\.txt:2: label 3 is outside .*3 classes\)$"):
        check_list(str(out_of_range), str(classes))
    # Labels in range, but a class without a single video: the list belongs to another class file.
    subset = tmp_path / "subset.txt"
    subset.write_text("a.avi 0\nb.avi 2\n")
    with pytest.raises(AnnotationError, match=r"no video of 1 of the 3 classes .*1 'pullup'"):
        check_list(str(subset), str(classes))
    assert check_list(str(subset), str(classes), every_class=False).labels_used == 2


# Files saved on Windows: a byte-order mark (Excel's "CSV UTF-8", Notepad), CRLF line endings,
# or UTF-16 (Excel's "Unicode text").
WINDOWS_ENCODINGS = [
    pytest.param(lambda text: text.replace("\n", "\r\n").encode("utf-8-sig"), id="utf8-bom-crlf"),
    pytest.param(lambda text: text.encode("utf-8-sig"), id="utf8-bom"),
    pytest.param(lambda text: text.replace("\n", "\r\n").encode("utf-8"), id="crlf"),
    pytest.param(lambda text: text.replace("\n", "\r\n").encode("utf-16"), id="utf16-crlf"),
]


@pytest.mark.parametrize("encode", WINDOWS_ENCODINGS)
def test_class_lists_and_annotation_lists_saved_on_windows(tmp_path, encode):
    csv_path, json_path, list_path = tmp_path / "c.csv", tmp_path / "c.json", tmp_path / "a.txt"
    csv_path.write_bytes(encode("id,name\n1,Café au lait\n0,brush hair\n"))
    json_path.write_bytes(encode('{\n  "0": "brush hair: a comb",\n  "1": "café"\n}\n'))
    list_path.write_bytes(encode("brush_hair/v 1.avi 0\ncafé/v2.avi 1\n"))
    assert load_class_names(str(csv_path)) == ["brush hair", "Café au lait"]
    assert load_class_names(str(json_path)) == ["brush hair: a comb", "café"]
    assert read_annotations(str(list_path), num_classes=2) == [
        ("brush_hair/v 1.avi", 0),
        ("café/v2.avi", 1),
    ]
    entries = entries_from_list(str(list_path), 2)
    assert entries[0].path == "brush_hair/v 1.avi" and entries[1].label == 1


def test_a_mark_inside_a_line_is_still_an_error(tmp_path):
    # Only a mark at the very start of the file is dropped: one in a header is a real mistake.
    path = tmp_path / "c.csv"
    path.write_bytes(b"name,\xef\xbb\xbfid\n0,a\n")
    with pytest.raises(AnnotationError, match=r"expected a header with columns 'id' and 'name'"):
        load_class_names(str(path))


def test_latin1_list_names_the_byte(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes("id,name\n0,café\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"c.csv: not UTF-8 text \(byte 13: b'\\xe9'\)"):
        load_class_names(str(path))
