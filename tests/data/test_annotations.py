"""Readers of the official annotation formats: exact records on tiny files, one malformed case each."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vimpac.data.annotations import (
    AnnotationError,
    AnnotationSet,
    VideoRecord,
    detect_format,
    kinetics400_relative_path,
    load_annotations,
    read_diving48,
    read_hmdb51,
    read_howto100m,
    read_kinetics400,
    read_mmaction_list,
    read_ssv2,
    read_class_names,
    read_ucf101,
    write_mmaction_list,
)


def write(path: Path, text: str, *, bom: bool = False, crlf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if crlf:
        text = text.replace("\n", "\r\n")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def write_json(path: Path, obj) -> Path:
    return write(path, json.dumps(obj))


def triples(annotations: AnnotationSet) -> list[tuple[str, int | None, str]]:
    return [(r.path, r.label, r.key) for r in annotations.records]


# ------------------------------------------------------------------------------ MMAction2 list


def test_mmaction_labelled_with_spaces_comments_bom_crlf(tmp_path):
    lst = write(
        tmp_path / "train.txt",
        "# a comment\n"
        "a/one.mp4 2\n"
        "\n"
        "b/two words.mp4   0   \n"  # a path with a space, trailing whitespace
        "c/three.avi\t1\n",
        bom=True,
        crlf=True,
    )
    names = write(tmp_path / "classes.txt", "zero\none\ntwo\n", crlf=True)
    result = read_mmaction_list(lst, names)
    assert triples(result) == [
        ("a/one.mp4", 2, "a/one"),
        ("b/two words.mp4", 0, "b/two words"),
        ("c/three.avi", 1, "c/three"),
    ]
    assert result.class_names == ["zero", "one", "two"]
    assert result.is_labelled and result.num_classes == 3 and len(result) == 3


def test_mmaction_without_class_file_names_up_to_max_label(tmp_path):
    result = read_mmaction_list(write(tmp_path / "l.txt", "x.mp4 3\ny.mp4 1\n"))
    assert result.class_names == ["class_0", "class_1", "class_2", "class_3"]


def test_mmaction_unlabelled(tmp_path):
    result = read_mmaction_list(write(tmp_path / "l.txt", "v/a b.mp4\nv/c.mp4\n"))
    assert triples(result) == [("v/a b.mp4", None, "v/a b"), ("v/c.mp4", None, "v/c")]
    assert result.class_names == [] and not result.is_labelled


def test_mmaction_mixed_labelled_and_unlabelled_names_line(tmp_path):
    path = write(tmp_path / "l.txt", "a.mp4 1\nb.mp4 2\nc.mp4\n")
    with pytest.raises(AnnotationError, match=r"l\.txt, line 3: expected 'relative/path label'") as info:
        read_mmaction_list(path)
    assert info.value.path == str(path) and info.value.location == "line 3"


def test_mmaction_duplicate_key_names_both_lines(tmp_path):
    path = write(tmp_path / "l.txt", "a/x.mp4 0\n\nb.mp4 1\na/x.avi 1\n")
    with pytest.raises(AnnotationError, match=r"l\.txt, line 4: duplicate video key 'a/x' \(first at line 1\)"):
        read_mmaction_list(path)


def test_mmaction_label_out_of_range_and_negative(tmp_path):
    names = write(tmp_path / "c.txt", "a\nb\n")
    with pytest.raises(AnnotationError, match=r"l\.txt, line 2: label 2 is out of range: expected 0\.\.1"):
        read_mmaction_list(write(tmp_path / "l.txt", "a.mp4 1\nb.mp4 2\n"), names)
    with pytest.raises(AnnotationError, match=r"m\.txt, line 1: expected a label >= 0, got -1"):
        read_mmaction_list(write(tmp_path / "m.txt", "a.mp4 -1\n"))


def test_mmaction_empty_missing_absolute(tmp_path):
    with pytest.raises(AnnotationError, match=r"e\.txt: file is empty"):
        read_mmaction_list(write(tmp_path / "e.txt", "# only a comment\n\n  \n"))
    with pytest.raises(AnnotationError, match=r"nope\.txt: file not found"):
        read_mmaction_list(tmp_path / "nope.txt")
    with pytest.raises(AnnotationError, match=r"abs\.txt, line 1: expected a video path relative"):
        read_mmaction_list(write(tmp_path / "abs.txt", "/data/a.mp4 0\n"))
    with pytest.raises(AnnotationError, match=r"up\.txt, line 1: expected a video path relative"):
        read_mmaction_list(write(tmp_path / "up.txt", "../a.mp4 0\n"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9.mp4 0\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"latin1\.txt: expected UTF-8 text"):
        read_mmaction_list(tmp_path / "latin1.txt")


def test_one_video_spelled_two_ways_is_one_key(tmp_path):
    (tmp_path / "l.txt").write_text("./a//x.mp4 0\n")
    record = read_mmaction_list(tmp_path / "l.txt").records[0]
    assert record.key == "a/x" and record.path == "a/x.mp4"
    (tmp_path / "dup.txt").write_text("./a/x.mp4 0\na/x.mp4 0\n")
    with pytest.raises(AnnotationError, match=r"dup\.txt, line 2: duplicate video key 'a/x' \(first at line 1\)"):
        read_mmaction_list(tmp_path / "dup.txt")


def test_class_names_file_duplicate(tmp_path):
    names = write(tmp_path / "c.txt", "a\nb\na\n")
    with pytest.raises(AnnotationError, match=r"c\.txt, line 3: duplicate class name 'a' \(first at line 1\)"):
        read_mmaction_list(write(tmp_path / "l.txt", "x.mp4 0\n"), names)


def test_write_mmaction_list_round_trip(tmp_path):
    original = AnnotationSet(
        records=[VideoRecord("k/a b.mp4", 1, "k/a b"), VideoRecord("k/c.mp4", 0, "k/c")],
        class_names=["first class", "second"],
        source="test",
    )
    write_mmaction_list(tmp_path / "out.txt", original, tmp_path / "names.txt")
    assert (tmp_path / "out.txt").read_text() == "k/a b.mp4 1\nk/c.mp4 0\n"
    back = read_mmaction_list(tmp_path / "out.txt", tmp_path / "names.txt")
    assert back.records == original.records and back.class_names == original.class_names
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file


def test_write_mmaction_list_refuses_what_cannot_round_trip(tmp_path):
    unlabelled_int_tail = AnnotationSet([VideoRecord("clip 3", None, "clip 3")], [], "t")
    with pytest.raises(ValueError, match="would read back as labelled"):
        write_mmaction_list(tmp_path / "x.txt", unlabelled_int_tail)
    mixed = AnnotationSet([VideoRecord("a.mp4", 0, "a"), VideoRecord("b.mp4", None, "b")], ["c"], "t")
    with pytest.raises(ValueError, match=r"record 1 .*mixes labelled and unlabelled"):
        write_mmaction_list(tmp_path / "x.txt", mixed)
    assert not (tmp_path / "x.txt").exists()


# ------------------------------------------------------------------------------ UCF101


def make_ucf101(folder: Path) -> Path:
    # The official files use Windows line endings.
    write(folder / "classInd.txt", "1 ApplyEyeMakeup\n2 ApplyLipstick\n3 HandstandPushups\n", crlf=True)
    write(
        folder / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 3\n"
        "ApplyLipstick/v_ApplyLipstick_g09_c02.avi 2 \n",
        crlf=True,
    )
    write(
        folder / "testlist01.txt",
        "ApplyLipstick/v_ApplyLipstick_g01_c01.avi\nHandstandPushups/v_HandStandPushups_g01_c03.avi\n",
        crlf=True,
    )
    return folder


def test_ucf101_train_and_test(tmp_path):
    folder = make_ucf101(tmp_path / "ucfTrainTestlist")
    train = read_ucf101(folder, 1, "train")
    assert train.class_names == ["ApplyEyeMakeup", "ApplyLipstick", "HandstandPushups"]
    assert triples(train) == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0, "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01"),
        ("HandstandPushups/v_HandStandPushups_g08_c01.avi", 2, "HandstandPushups/v_HandStandPushups_g08_c01"),
        ("ApplyLipstick/v_ApplyLipstick_g09_c02.avi", 1, "ApplyLipstick/v_ApplyLipstick_g09_c02"),
    ]
    assert train.source == "ucf101 split 1 train"
    test = read_ucf101(folder, 1, "test")
    assert [(r.path, r.label) for r in test.records] == [
        ("ApplyLipstick/v_ApplyLipstick_g01_c01.avi", 1),
        ("HandstandPushups/v_HandStandPushups_g01_c03.avi", 2),
    ]
    # A folder spelled with other capitals than classInd.txt still finds its class.
    write(folder / "testlist02.txt", "handstandpushups/v_HandStandPushups_g01_c04.avi\n")
    assert [r.label for r in read_ucf101(folder, 2, "test").records] == [2]


def test_ucf101_malformed(tmp_path):
    folder = make_ucf101(tmp_path / "u")
    write(folder / "trainlist02.txt", "ApplyEyeMakeup/v_a.avi 1\nApplyEyeMakeup/v_b.avi 2\n")
    with pytest.raises(AnnotationError, match=r"trainlist02\.txt, line 2: class id 2 \(ApplyLipstick\) disagrees with the folder"):
        read_ucf101(folder, 2, "train")
    write(folder / "testlist02.txt", "ApplyEyeMakeup/v_a.avi\nDancing/v_b.avi\n")
    with pytest.raises(AnnotationError, match=r"testlist02\.txt, line 2: class folder 'Dancing' is not in classInd\.txt"):
        read_ucf101(folder, 2, "test")
    write(folder / "trainlist03.txt", "ApplyEyeMakeup/v_a.avi 9\n")
    with pytest.raises(AnnotationError, match=r"trainlist03\.txt, line 1: class id 9 is not in classInd\.txt \(expected 1\.\.3\)"):
        read_ucf101(folder, 3, "train")
    with pytest.raises(ValueError, match="split: UCF101 has splits"):
        read_ucf101(folder, 4, "train")
    with pytest.raises(ValueError, match="subset: expected 'train' or 'test'"):
        read_ucf101(folder, 1, "val")  # type: ignore[arg-type]
    write(folder / "classInd.txt", "1 A\n3 B\n")
    with pytest.raises(AnnotationError, match=r"classInd\.txt, line 2: expected class id 2"):
        read_ucf101(folder, 1, "train")


@pytest.mark.parametrize("folder_name", ["..", "."])
def test_ucf101_paths_cannot_leave_the_video_root(tmp_path, folder_name):
    # Every other format refuses '..'; here a classInd.txt naming the class '..' let it through.
    folder = tmp_path / "u"
    write(folder / "classInd.txt", f"1 {folder_name}\n")
    write(folder / "trainlist01.txt", f"{folder_name}/secret.avi 1\n")
    write(folder / "testlist01.txt", f"{folder_name}/secret.avi\n")
    for subset in ("train", "test"):
        with pytest.raises(AnnotationError, match=rf"{subset}list01\.txt, line 1: expected '<Class>/<video>\.avi'"):
            read_ucf101(folder, 1, subset)


@pytest.mark.parametrize("fmt", ["auto", "ucf101"])
def test_ucf101_list_file_and_conflicting_options_are_refused(tmp_path, fmt):
    # A tiny ucfTrainTestlist: the named file and the ones a conflicting option would pick
    # instead (testlist01.txt, trainlist02.txt) all exist, so a silent switch would go unseen.
    folder = make_ucf101(tmp_path / "ucfTrainTestlist")
    write(folder / "trainlist02.txt", "HandstandPushups/v_HandStandPushups_g01_c03.avi 3\n")
    train01 = folder / "trainlist01.txt"
    for options, asked in (({"subset": "test"}, "subset='test'"), ({"split": 2}, "split=2"),
                           ({"split": 2, "subset": "test"}, "split=2 and subset='test'")):
        with pytest.raises(AnnotationError) as caught:
            load_annotations(fmt, train01, **options)
        message = str(caught.value)
        assert message.startswith(f"{train01}: ") and asked in message and "split 1, subset 'train'" in message
    # Options that agree with the file name are fine.
    expected = read_ucf101(folder, 1, "train").records
    assert load_annotations(fmt, train01, split=1, subset="train").records == expected
    assert load_annotations(fmt, train01, subset="train").records == expected
    assert load_annotations(fmt, folder / "testlist01.txt", split=1).source == "ucf101 split 1 test"


# ------------------------------------------------------------------------------ HMDB51


def make_hmdb51(folder: Path) -> Path:
    write(folder / "ride_bike_test_split1.txt", "r1.avi 1 \nr2.avi 2 \nr3.avi 0 \n")
    write(folder / "brush_hair_test_split1.txt", "b1.avi 2 \nb2.avi 1 \n")
    write(folder / "brush_hair_test_split2.txt", "b1.avi 1 \nb2.avi 2 \n")  # other split: ignored
    return folder


def test_hmdb51(tmp_path):
    folder = make_hmdb51(tmp_path / "splits")
    train = read_hmdb51(folder, 1, "train")
    assert train.class_names == ["brush_hair", "ride_bike"]
    assert triples(train) == [("brush_hair/b2.avi", 0, "brush_hair/b2"), ("ride_bike/r1.avi", 1, "ride_bike/r1")]
    test = read_hmdb51(folder, 1, "test")
    assert triples(test) == [("brush_hair/b1.avi", 0, "brush_hair/b1"), ("ride_bike/r2.avi", 1, "ride_bike/r2")]
    assert read_hmdb51(folder, 2, "train").class_names == ["brush_hair"]


def test_hmdb51_videos_named_with_a_leading_hash_are_kept(tmp_path):
    # HMDB51 names some clips after their source title, e.g. '#20_Rhythm_clap_...': a split
    # line starting with '#' is a video, not a comment (it was skipped, losing the video).
    folder = tmp_path / "testTrainMulti_7030_splits"
    write(folder / "clap_test_split1.txt",
          "#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi 1 \n#20_Rhythm_clap_u_nm_np1_fr_goo_1.avi 2 \n"
          "Alex_Hands_clap_u_nm_np1_fr_med_0.avi 1 \n")
    assert triples(read_hmdb51(folder, 1, "train")) == [
        ("clap/#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi", 0, "clap/#20_Rhythm_clap_u_nm_np1_fr_goo_0"),
        ("clap/Alex_Hands_clap_u_nm_np1_fr_med_0.avi", 0, "clap/Alex_Hands_clap_u_nm_np1_fr_med_0"),
    ]
    assert [r.path for r in read_hmdb51(folder, 1, "test").records] == ["clap/#20_Rhythm_clap_u_nm_np1_fr_goo_1.avi"]


def test_ucf101_lists_have_no_comment_lines(tmp_path):
    # An official list has no comment syntax: a '#' line is reported, never skipped silently.
    folder = make_ucf101(tmp_path / "ucfTrainTestlist")
    write(folder / "testlist02.txt", "#ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
    with pytest.raises(AnnotationError, match=r"testlist02\.txt, line 1: class folder '#ApplyEyeMakeup' is not in"):
        read_ucf101(folder, 2, "test")


def test_hmdb51_malformed(tmp_path):
    folder = make_hmdb51(tmp_path / "splits")
    write(folder / "ride_bike_test_split1.txt", "r1.avi 1\nr2.avi 3\n")
    with pytest.raises(AnnotationError, match=r"ride_bike_test_split1\.txt, line 2: expected '<video>\.avi <0\|1\|2>'"):
        read_hmdb51(folder, 1, "train")
    with pytest.raises(AnnotationError, match=r"no '<class>_test_split3\.txt' files found"):
        read_hmdb51(folder, 3, "train")


# ------------------------------------------------------------------------------ SSV2


SSV2_LABELS = {"Approaching something with your camera": "0", "Putting something on something": "1"}


def test_ssv2_labels_from_template(tmp_path):
    labels = write_json(tmp_path / "something-something-v2-labels.json", SSV2_LABELS)
    train = write_json(
        tmp_path / "something-something-v2-train.json",
        [
            {"id": "78687", "label": "putting a cup on a table", "template": "Putting [something] on [something]",
             "placeholders": ["a cup", "a table"]},
            {"id": "42326", "label": "approaching a door with your camera",
             "template": "Approaching [something] with your camera", "placeholders": ["a door"]},
        ],
    )
    result = read_ssv2(labels, train)
    assert result.class_names == ["Approaching something with your camera", "Putting something on something"]
    assert triples(result) == [("78687.webm", 1, "78687"), ("42326.webm", 0, "42326")]
    test = read_ssv2(labels, write_json(tmp_path / "something-something-v2-test.json", [{"id": "1420"}, {"id": 7}]))
    assert triples(test) == [("1420.webm", None, "1420"), ("7.webm", None, "7")]
    assert test.class_names == result.class_names  # the vocabulary stays known for predictions


def test_ssv2_malformed(tmp_path):
    labels = write_json(tmp_path / "labels.json", SSV2_LABELS)
    bad = write_json(
        tmp_path / "validation.json",
        [{"id": "1", "template": "Putting [something] on [something]"}, {"id": "2", "template": "Dropping [something]"}],
    )
    with pytest.raises(AnnotationError, match=r"validation\.json, item 1: template 'Dropping \[something\]' does not match"):
        read_ssv2(labels, bad)
    no_id = write_json(tmp_path / "v2.json", [{"template": "Putting [something] on [something]"}])
    with pytest.raises(AnnotationError, match=r"v2\.json, item 0: expected an object with an \"id\""):
        read_ssv2(labels, no_id)
    gap = write_json(tmp_path / "gap.json", {"a": "0", "b": "2"})
    with pytest.raises(AnnotationError, match=r"gap\.json: expected indices 0\.\.1 without gaps"):
        read_ssv2(gap, no_id)
    dup = write_json(tmp_path / "dup.json", [{"id": "5"}, {"id": 5}])
    with pytest.raises(AnnotationError, match=r"dup\.json, item 1: duplicate video key '5' \(first at item 0\)"):
        read_ssv2(labels, dup)
    broken = write(tmp_path / "broken.json", '[{"id": "1"},\n  oops]')
    with pytest.raises(AnnotationError, match=r"broken\.json, line 2: expected valid JSON"):
        read_ssv2(labels, broken)


# ------------------------------------------------------------------------------ Diving48


DIVING48_ITEMS = [
    {"vid_name": "-mmq0PT-u8k_00155", "label": 1, "start_frame": 0, "end_frame": 76},
    {"vid_name": "-mmq0PT-u8k_00156", "label": 0, "start_frame": 0, "end_frame": 60},
]


def test_diving48_with_and_without_vocab(tmp_path):
    split = write_json(tmp_path / "Diving48_V2_train.json", DIVING48_ITEMS)
    vocab = write_json(
        tmp_path / "Diving48_vocab.json", [["Back", "15som", "05Twis", "FREE"], ["Back", "15som", "15Twis", "FREE"]]
    )
    result = read_diving48(split, vocab)
    assert triples(result) == [
        ("-mmq0PT-u8k_00155.mp4", 1, "-mmq0PT-u8k_00155"),
        ("-mmq0PT-u8k_00156.mp4", 0, "-mmq0PT-u8k_00156"),
    ]
    assert result.class_names == ["Back / 15som / 05Twis / FREE", "Back / 15som / 15Twis / FREE"]
    plain = read_diving48(split)
    assert plain.records == result.records
    assert plain.class_names == [f"class_{i}" for i in range(48)]


def test_diving48_malformed(tmp_path):
    bad = write_json(tmp_path / "Diving48_V2_test.json", [DIVING48_ITEMS[0], {"vid_name": "x", "label": "3"}])
    with pytest.raises(AnnotationError, match=r"Diving48_V2_test\.json, item 1: expected \"label\" to be an integer"):
        read_diving48(bad)
    out_of_range = write_json(tmp_path / "t.json", [{"vid_name": "x", "label": 48}])
    with pytest.raises(AnnotationError, match=r"t\.json, item 0: label 48 is out of range: expected 0\.\.47"):
        read_diving48(out_of_range)
    with pytest.raises(AnnotationError, match=r"e\.json: file is empty \(an empty JSON list\)"):
        read_diving48(write_json(tmp_path / "e.json", []))


# ------------------------------------------------------------------------------ Kinetics-400


KINETICS_CSV = (
    "label,youtube_id,time_start,time_end,split,is_cc\n"
    "abseiling,--07WQ2iBlw,1,11,train,0\n"
    '"passing American football (in game)",-0HEanh7TBs,0,10,train,0\n'
    "abseiling,zzz,120,130,val,0\n"
)


def test_kinetics400_layouts_and_subsets(tmp_path):
    csv_path = write(tmp_path / "train.csv", KINETICS_CSV, crlf=True)
    result = read_kinetics400(csv_path, subset="train")
    assert result.class_names == ["abseiling", "passing American football (in game)"]
    assert triples(result) == [
        ("train/abseiling/--07WQ2iBlw_000001_000011.mp4", 0, "train/abseiling/--07WQ2iBlw_000001_000011"),
        (
            "train/passing American football (in game)/-0HEanh7TBs_000000_000010.mp4",
            1,
            "train/passing American football (in game)/-0HEanh7TBs_000000_000010",
        ),
    ]
    assert [r.path for r in read_kinetics400(csv_path, layout="flat").records] == [
        "--07WQ2iBlw_000001_000011.mp4",
        "-0HEanh7TBs_000000_000010.mp4",
        "zzz_000120_000130.mp4",
    ]
    val = read_kinetics400(csv_path, subset="val", class_names=result.class_names, underscore_labels=True)
    assert triples(val) == [("val/abseiling/zzz_000120_000130.mp4", 0, "val/abseiling/zzz_000120_000130")]
    assert kinetics400_relative_path("id", 3, 13, "train", "a b", "label", underscore_labels=True) == "a_b/id_000003_000013.mp4"
    assert kinetics400_relative_path("id", 3, 13, "train", "a b", "split") == "train/id_000003_000013.mp4"


def test_kinetics400_unlabelled_test_csv(tmp_path):
    csv_path = write(tmp_path / "test.csv", "youtube_id,time_start,time_end,split\nabc,5,15,test\n")
    result = read_kinetics400(csv_path)
    assert triples(result) == [("test/abc_000005_000015.mp4", None, "test/abc_000005_000015")]
    assert result.class_names == []


def test_kinetics400_malformed(tmp_path):
    bad = write(tmp_path / "validate.csv", "label,youtube_id,time_start,time_end,split\nx,abc,1,11,val\ny,def,ten,20,val\n")
    with pytest.raises(AnnotationError, match=r"validate\.csv, line 3: expected a youtube_id and integer seconds"):
        read_kinetics400(bad)
    unknown = write(tmp_path / "v.csv", "label,youtube_id,time_start,time_end,split\nz,abc,1,11,val\n")
    with pytest.raises(AnnotationError, match=r"v\.csv, line 2: label 'z' is not in the given class_names"):
        read_kinetics400(unknown, class_names=["x", "y"])
    header = write(tmp_path / "h.csv", "\nlabel,id,start,end\n")
    with pytest.raises(AnnotationError, match=r"h\.csv, line 2: header is missing column\(s\)"):
        read_kinetics400(header)
    dup = write(tmp_path / "d.csv", "label,youtube_id,time_start,time_end,split\nx,a,1,2,train\nx,a,1,2,train\n")
    with pytest.raises(AnnotationError, match=r"d\.csv, line 3: duplicate video key .*\(first at line 2\)"):
        read_kinetics400(dup)
    with pytest.raises(AnnotationError, match=r"d\.csv: no rows with split 'test'"):
        read_kinetics400(dup, subset="test")


# ------------------------------------------------------------------------------ HowTo100M


def test_howto100m_csv_and_id_list(tmp_path):
    csv_path = write(
        tmp_path / "HowTo100M_v1.csv",
        "video_id,category_1,category_2,rank,task_id\n"
        "nVbIUDjzWY4,Cars & Other Vehicles,Motorcycles,27,52907\n"
        "CTPAZ2euJ2Q,Cars & Other Vehicles,Motorcycles,35,52907\n",
        bom=True,
    )
    result = read_howto100m(csv_path)
    assert triples(result) == [("nVbIUDjzWY4.mp4", None, "nVbIUDjzWY4"), ("CTPAZ2euJ2Q.mp4", None, "CTPAZ2euJ2Q")]
    assert result.class_names == [] and not result.is_labelled
    ids = read_howto100m(write(tmp_path / "ids.txt", "nVbIUDjzWY4\n\nCTPAZ2euJ2Q  \n", crlf=True), extension=".webm")
    assert triples(ids) == [("nVbIUDjzWY4.webm", None, "nVbIUDjzWY4"), ("CTPAZ2euJ2Q.webm", None, "CTPAZ2euJ2Q")]


def test_howto100m_rows_repeating_a_video_are_merged_with_a_note(tmp_path):
    # A CSV with a row per clip or caption names a video on several rows; the later rows are
    # the same unlabelled record, so each video is taken once, at its first row.
    clips = read_howto100m(write(tmp_path / "clips.csv", "video_id,start\na,0\nb,0\na,5\nc,0\nb,5\na,9\n"))
    assert triples(clips) == [("a.mp4", None, "a"), ("b.mp4", None, "b"), ("c.mp4", None, "c")]
    assert clips.notes == [f"{tmp_path / 'clips.csv'}: 3 row(s) repeat a video listed on an earlier row (first: "
                           "'a' on line 4, listed on line 2); each video is taken once, 3 videos in all"]
    ids = read_howto100m(write(tmp_path / "ids.txt", "a\nb\na\n"))
    assert [r.key for r in ids.records] == ["a", "b"] and "1 row(s) repeat" in ids.notes[0]
    assert read_howto100m(write(tmp_path / "HowTo100M_v1.csv", "video_id,rank\na,1\nb,2\n")).notes == []


def test_howto100m_malformed(tmp_path):
    with pytest.raises(AnnotationError, match=r"ids\.txt, line 2: expected one video id per line"):
        read_howto100m(write(tmp_path / "ids.txt", "abc\nab c\n"))


# ------------------------------------------------------------------------------ entry point


def test_load_annotations_auto_detects_every_format(tmp_path):
    ucf = make_ucf101(tmp_path / "ucf")
    hmdb = make_hmdb51(tmp_path / "hmdb")
    write_json(tmp_path / "ssv2" / "something-something-v2-labels.json", SSV2_LABELS)
    ssv2 = write_json(tmp_path / "ssv2" / "train.json", [{"id": "9", "template": "Putting [something] on [something]"}])
    write_json(tmp_path / "div" / "Diving48_vocab.json", [["A"], ["B"]])
    diving = write_json(tmp_path / "div" / "Diving48_V2_train.json", DIVING48_ITEMS)
    kinetics = write(tmp_path / "k.csv", KINETICS_CSV)
    howto = write(tmp_path / "HowTo100M_v1.csv", "video_id,rank\nabc,1\n")
    mm = write(tmp_path / "list.txt", "a.mp4 0\n")

    assert detect_format(ucf) == ("ucf101", {})
    assert detect_format(ucf / "testlist01.txt") == ("ucf101", {"split": 1, "subset": "test"})
    assert detect_format(hmdb) == ("hmdb51", {})
    assert [detect_format(p)[0] for p in (ssv2, diving, kinetics, howto, mm)] == [
        "ssv2", "diving48", "kinetics400", "howto100m", "mmaction"
    ]
    assert load_annotations("auto", ucf / "testlist01.txt").source == "ucf101 split 1 test"
    assert load_annotations("auto", ucf, split=1, subset="train").records == read_ucf101(ucf, 1, "train").records
    assert load_annotations("auto", hmdb, split=1, subset="test").records == read_hmdb51(hmdb, 1, "test").records
    assert load_annotations("auto", ssv2).records == [VideoRecord("9.webm", 1, "9")]
    assert load_annotations("auto", diving).class_names == ["A", "B"]  # sibling vocab picked up
    assert load_annotations("kinetics400", kinetics, subset="val").records[0].key == "val/abseiling/zzz_000120_000130"
    assert load_annotations("auto", howto).records == [VideoRecord("abc.mp4", None, "abc")]
    assert load_annotations("mmaction", mm).records == [VideoRecord("a.mp4", 0, "a")]

    with pytest.raises(AnnotationError, match="this is a label map"):
        detect_format(tmp_path / "ssv2" / "something-something-v2-labels.json")
    with pytest.raises(ValueError, match=r"format 'hmdb51' needs the option\(s\) \['split', 'subset'\]"):
        load_annotations("hmdb51", hmdb)
    with pytest.raises(ValueError, match="fmt: expected one of"):
        load_annotations("kinetics700", kinetics)


def test_any_format_converts_to_mmaction_list(tmp_path):
    ucf = make_ucf101(tmp_path / "ucf")
    original = read_ucf101(ucf, 1, "train")
    write_mmaction_list(tmp_path / "ucf_train.txt", original, tmp_path / "ucf_classes.txt")
    back = read_mmaction_list(tmp_path / "ucf_train.txt", tmp_path / "ucf_classes.txt")
    assert back.records == original.records and back.class_names == original.class_names
    kinetics = read_kinetics400(write(tmp_path / "k.csv", KINETICS_CSV))  # label folders with spaces
    write_mmaction_list(tmp_path / "k.txt", kinetics)
    assert read_mmaction_list(tmp_path / "k.txt").records == kinetics.records


def test_a_fifo_as_annotation_file_is_refused_without_blocking_and_called_what_it_is(tmp_path):
    fifo = tmp_path / "classes.txt"
    os.mkfifo(fifo)
    with pytest.raises(AnnotationError, match="expected a regular file, got a FIFO") as caught:
        read_class_names(fifo)
    assert str(fifo) in str(caught.value)
    with pytest.raises(AnnotationError, match="expected a file, got a folder"):
        read_class_names(tmp_path)
