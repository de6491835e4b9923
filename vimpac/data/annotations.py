"""Readers for the official annotation files of the datasets VIMPAC trains and evaluates on.

Every reader returns an `AnnotationSet`: a list of `VideoRecord`s (a path relative to the
dataset's video root, a 0-based label or None, and a stable key) plus the class names. The
generic format is MMAction2's list ("relative/path label" per line), which the authors' code
also used; `write_mmaction_list` converts any of the official formats into it.

Supported formats (`load_annotations(fmt, path, ...)`):

| fmt          | official file(s)                                                  |
|--------------|-------------------------------------------------------------------|
| mmaction     | a "path label" (or "path") list, optional class-name file         |
| ucf101       | ucfTrainTestlist/: classInd.txt, trainlist0N.txt, testlist0N.txt  |
| hmdb51       | testTrainMulti_7030_splits/: <class>_test_split<N>.txt            |
| ssv2         | something-something-v2-labels.json + train/validation/test json   |
| diving48     | Diving48_V2_train.json / _test.json (+ Diving48_vocab.json)       |
| kinetics400  | train.csv / validate.csv / test.csv                               |
| howto100m    | HowTo100M_v1.csv, or a plain list of video ids                    |

Malformed input raises `AnnotationError` naming the file, the 1-based line number (or the
0-based JSON item index) and what was expected. Keys are the record path without its
extension for every format, so a set read from an official file and the same set written
with `write_mmaction_list` and read back have identical records.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Literal, Sequence

from vimpac.io import atomic_write_text

PathLike = str | os.PathLike

Subset = Literal["train", "test"]

FORMATS = ("mmaction", "ucf101", "hmdb51", "ssv2", "diving48", "kinetics400", "howto100m")

UCF101_SPLITS = (1, 2, 3)
HMDB51_SPLITS = (1, 2, 3)
DIVING48_NUM_CLASSES = 48

# HMDB51's split files mark each video of a class: 1 = train, 2 = test, 0 = not in this split.
_HMDB51_SUBSET_CODE = {"train": 1, "test": 2}

# Kinetics video folder layouts (see `kinetics400_relative_path`).
KineticsLayout = Literal["split/label", "label", "split", "flat"]
KINETICS_LAYOUTS: tuple[str, ...] = ("split/label", "label", "split", "flat")


class AnnotationError(ValueError):
    """An annotation file is missing or malformed.

    `path` is the file, `location` the 1-based line number or the JSON item index (None when
    the problem concerns the whole file), `reason` what was expected.
    """

    def __init__(self, path: PathLike, reason: str, location: str | None = None) -> None:
        self.path = str(path)
        self.location = location
        self.reason = reason
        where = f"{self.path}, {location}" if location else self.path
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset."""

    path: str  # relative to the dataset's video root, with the official file name / extension
    label: int | None  # 0-based class index; None for unlabelled data (HowTo100M, test splits)
    key: str  # stable unique id for the token store: the relative path without extension


@dataclass
class AnnotationSet:
    """The records of one split plus the class vocabulary.

    `class_names[i]` names label i. It is the dataset's vocabulary, so it stays filled for
    an unlabelled test split of a labelled dataset (SSV2 test) and is empty only when the
    dataset has no classes at all (HowTo100M, an unlabelled list without a class file).
    `notes` say what the reader did that the user should know of (e.g. repeated rows merged).
    """

    records: list[VideoRecord]
    class_names: list[str]
    source: str  # e.g. "ucf101 split 1 train"
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_labelled(self) -> bool:
        return bool(self.records) and self.records[0].label is not None

    def __len__(self) -> int:
        return len(self.records)


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _read_text(path: PathLike) -> str:
    """The file's text with a UTF-8 BOM removed and every line ending turned into '\\n'."""
    p = Path(path)
    if not p.is_file():
        reason = ("file not found" if not p.exists() else "expected a file, got a folder" if p.is_dir()
                  else "expected a regular file, got a FIFO, socket or device")
        raise AnnotationError(path, reason)
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, f"expected UTF-8 text ({exc.reason} at byte {exc.start})") from None
    # Not str.splitlines(): it also splits on \x0b, \x1c, U+2028..., which would shift the
    # line numbers that our error messages report.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _lines(path: PathLike, text: str | None = None, comments: bool = True) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for each non-blank line, skipping '#' lines when
    `comments`. The official lists have no comment syntax and must not skip them: HMDB51 has
    videos named '#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi', whose split lines start with '#'."""
    for number, raw in enumerate((_read_text(path) if text is None else text).split("\n"), start=1):
        line = raw.strip()
        if line and not (comments and line.startswith("#")):
            yield number, line


def _read_json(path: PathLike) -> Any:
    text = _read_text(path)
    if not text.strip():
        raise AnnotationError(path, "file is empty; expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"expected valid JSON ({exc.msg})", f"line {exc.lineno}") from None
    except (ValueError, RecursionError) as exc:  # a number of > 4300 digits; nesting too deep to parse
        raise AnnotationError(path, f"expected valid JSON ({exc})") from None


def _line(number: int) -> str:
    return f"line {number}"


def _where(location: str | int) -> str:
    """Error locations are built only on error: an int is a 1-based line number."""
    return _line(location) if isinstance(location, int) else location


def _item(index: int) -> str:
    return f"item {index}"


def _is_relative_path(rel: str) -> bool:
    # Records are joined onto a video root and used as store keys: an absolute path or '..'
    # would escape the root and make keys depend on the machine. Plain string tests first:
    # this runs once per video (1.2M times for HowTo100M) and pathlib is ~20x slower.
    if rel.startswith(("/", "\\")) or (len(rel) > 2 and rel[1] == ":" and rel[2] in "/\\"):
        return False
    return ".." not in rel or ".." not in PurePosixPath(rel.replace("\\", "/")).parts


def _check_relative_path(path: PathLike, location: str | int, rel: str) -> str:
    """`rel` normalised (`./a//b.mp4` -> `a/b.mp4`), so that one video has one key however a
    list spells it; refuses paths that would leave the dataset root."""
    if not _is_relative_path(rel):
        raise AnnotationError(
            path, f"expected a video path relative to the dataset root, got {rel!r}", _where(location)
        )
    return posixpath.normpath(rel)


def _key_of(rel_path: str) -> str:
    """The record key: the relative path without its extension (only the last suffix)."""
    stem, ext = os.path.splitext(rel_path)
    return stem if ext else rel_path


class _KeyRegistry:
    """Rejects duplicate keys, naming where each copy was read."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[PathLike, str | int]] = {}

    def add(self, key: str, path: PathLike, location: str | int) -> None:
        first = self._seen.get(key)
        if first is None:
            self._seen[key] = (path, location)
        else:
            first_path, first_location = first
            first_where = _where(first_location)
            if str(first_path) != str(path):
                first_where = f"{first_path}, {first_where}"
            raise AnnotationError(path, f"duplicate video key {key!r} (first at {first_where})", _where(location))


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _check_label_range(label: int, num_classes: int, path: PathLike, location: str) -> None:
    if not 0 <= label < num_classes:
        raise AnnotationError(
            path, f"label {label} is out of range: expected 0..{num_classes - 1} ({num_classes} classes)", location
        )


def _check_subset(subset: str) -> None:
    if subset not in ("train", "test"):
        raise ValueError(f"subset: expected 'train' or 'test', got {subset!r}")


def _check_split(split: int, allowed: Sequence[int], dataset: str) -> None:
    if split not in allowed:
        raise ValueError(f"split: {dataset} has splits {list(allowed)}, got {split!r}")


# --------------------------------------------------------------------------------------------
# MMAction2 list (the generic format)
# --------------------------------------------------------------------------------------------


def read_class_names(path: PathLike) -> list[str]:
    """A class-name file: one name per line, line i (0-based, blank lines skipped) = label i."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(_read_text(path).split("\n"), start=1):
        name = raw.strip()
        if not name:
            continue
        if name in seen:
            raise AnnotationError(path, f"duplicate class name {name!r} (first at line {seen[name]})", _line(number))
        seen[name] = number
        names.append(name)
    if not names:
        raise AnnotationError(path, "file is empty; expected one class name per line")
    return names


def read_mmaction_list(path: PathLike, class_names_path: PathLike | None = None) -> AnnotationSet:
    """An MMAction2-style video list: "relative/path label" per line, or "relative/path" alone.

    The label is the LAST whitespace-separated field, so paths may contain spaces. The first
    data line decides whether the list is labelled; every line must then agree. Blank lines
    and lines starting with '#' are skipped.

    Class names come from `class_names_path` (one per line) when given; otherwise a labelled
    list gets "class_<i>" for 0..max label. Pass the class file when a split may miss the
    highest classes, or the class count would come out too small.
    """
    class_names = read_class_names(class_names_path) if class_names_path is not None else None
    records: list[VideoRecord] = []
    keys = _KeyRegistry()
    labelled: bool | None = None
    first_number = 0
    for number, line in _lines(path):
        fields = line.rsplit(None, 1)
        label = _parse_int(fields[1]) if len(fields) == 2 else None
        if labelled is None:
            labelled, first_number = label is not None, number
        if labelled:
            if label is None:
                raise AnnotationError(
                    path,
                    f"expected 'relative/path label' with an integer label last (as on line {first_number}), got {line!r}",
                    _line(number),
                )
            rel = fields[0]
            if label < 0:
                raise AnnotationError(path, f"expected a label >= 0, got {label}", _line(number))
            if class_names is not None:
                _check_label_range(label, len(class_names), path, _line(number))
        else:
            if label is not None:
                raise AnnotationError(
                    path,
                    f"expected an unlabelled 'relative/path' line (line {first_number} has no label), "
                    f"got a trailing integer label in {line!r}",
                    _line(number),
                )
            rel = line
        rel = _check_relative_path(path, number, rel)
        key = _key_of(rel)
        keys.add(key, path, number)
        records.append(VideoRecord(path=rel, label=label, key=key))
    if not records:
        raise AnnotationError(path, "file is empty; expected 'relative/path label' lines")
    if class_names is None:
        class_names = [f"class_{i}" for i in range(max(r.label for r in records) + 1)] if labelled else []
    return AnnotationSet(records=records, class_names=class_names, source=f"mmaction {Path(path).name}")


def write_mmaction_list(
    path: PathLike, annotation_set: AnnotationSet, class_names_path: PathLike | None = None
) -> None:
    """Write `annotation_set` as an MMAction2 list (atomically); optionally its class names too.

    Reading the file back with `read_mmaction_list(path, class_names_path)` gives the same
    records. Paths that cannot survive the round trip (leading/trailing whitespace, a line
    break, a leading '#') are refused.
    """
    if not annotation_set.records:
        raise ValueError(f"{annotation_set.source}: no records to write (an empty list would not read back)")
    labelled = annotation_set.is_labelled
    lines = []
    for index, record in enumerate(annotation_set.records):
        where = f"record {index} ({record.path!r})"
        rel = record.path
        if not rel or rel != rel.strip() or "\n" in rel or "\r" in rel or rel.startswith("#"):
            raise ValueError(f"{where}: path cannot be written to a line-based list")
        if (record.label is not None) != labelled:
            raise ValueError(f"{where}: mixes labelled and unlabelled records")
        if record.key != _key_of(rel):
            raise ValueError(
                f"{where}: key {record.key!r} is not the path without extension, so it would not survive the list"
            )
        if labelled:
            lines.append(f"{rel} {record.label}")
        else:
            # An unlabelled path whose last field is an integer would read back as labelled.
            if len(rel.split()) > 1 and _parse_int(rel.split()[-1]) is not None:
                raise ValueError(f"{where}: an unlabelled path ending in ' <integer>' would read back as labelled")
            lines.append(rel)
    if class_names_path is not None:
        if not annotation_set.class_names:
            raise ValueError("class_names_path given but the annotation set has no class names")
        for name in annotation_set.class_names:
            if not name.strip() or "\n" in name or name != name.strip():
                raise ValueError(f"class name {name!r} cannot be written one per line")
        atomic_write_text(class_names_path, "\n".join(annotation_set.class_names) + "\n")
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


# --------------------------------------------------------------------------------------------
# UCF101
# --------------------------------------------------------------------------------------------


def read_ucf101_classes(class_ind_path: PathLike) -> list[str]:
    """classInd.txt: "1 ApplyEyeMakeup" lines with ids 1..N in order -> names (0-based list)."""
    names: list[str] = []
    for number, line in _lines(class_ind_path, comments=False):
        fields = line.split()
        class_id = _parse_int(fields[0]) if len(fields) == 2 else None
        if class_id is None:
            raise AnnotationError(class_ind_path, f"expected '<class id> <ClassName>', got {line!r}", _line(number))
        if class_id != len(names) + 1:
            raise AnnotationError(
                class_ind_path, f"expected class id {len(names) + 1} (ids count up from 1), got {class_id}", _line(number)
            )
        names.append(fields[1])
    if not names:
        raise AnnotationError(class_ind_path, "file is empty; expected '<class id> <ClassName>' lines")
    return names


def read_ucf101(annotation_dir: PathLike, split: int, subset: Subset) -> AnnotationSet:
    """UCF101's official ucfTrainTestlist folder.

    classInd.txt maps 1-based ids to names (labels here are 0-based). trainlist0N.txt lines
    are "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"; the label must agree with the
    folder name. testlist0N.txt lines have no label: it comes from the folder via classInd.
    """
    _check_split(split, UCF101_SPLITS, "UCF101")
    _check_subset(subset)
    folder = Path(annotation_dir)
    class_names = read_ucf101_classes(folder / "classInd.txt")
    by_name = {name: i for i, name in enumerate(class_names)}
    by_lower = {name.lower(): i for i, name in enumerate(class_names)}
    list_path = folder / f"{subset}list0{split}.txt"
    records: list[VideoRecord] = []
    keys = _KeyRegistry()
    for number, line in _lines(list_path, comments=False):
        fields = line.split()
        where = _line(number)
        rel = fields[0]
        if subset == "train":
            label_1based = _parse_int(fields[1]) if len(fields) == 2 else None
            if label_1based is None:
                raise AnnotationError(list_path, f"expected '<Class>/<video>.avi <class id>', got {line!r}", where)
            if not 1 <= label_1based <= len(class_names):
                raise AnnotationError(
                    list_path, f"class id {label_1based} is not in classInd.txt (expected 1..{len(class_names)})", where
                )
        elif len(fields) != 1:
            raise AnnotationError(list_path, f"expected '<Class>/<video>.avi' (no label in a test list), got {line!r}", where)
        parts = rel.split("/")
        if len(parts) != 2 or not parts[0] or not parts[1] or not _is_relative_path(rel) or parts[0] == ".":
            # '../x.avi' would leave the video root when classInd.txt names a class '..'.
            raise AnnotationError(list_path, f"expected '<Class>/<video>.avi', got {rel!r}", where)
        folder_label = by_name.get(parts[0], by_lower.get(parts[0].lower()))
        if folder_label is None:
            raise AnnotationError(list_path, f"class folder {parts[0]!r} is not in classInd.txt", where)
        if subset == "train" and folder_label != label_1based - 1:
            raise AnnotationError(
                list_path,
                f"class id {label_1based} ({class_names[label_1based - 1]}) disagrees with the folder {parts[0]!r}",
                where,
            )
        key = _key_of(rel)
        keys.add(key, list_path, where)
        records.append(VideoRecord(path=rel, label=folder_label, key=key))
    if not records:
        raise AnnotationError(list_path, "file is empty; expected one video per line")
    return AnnotationSet(records=records, class_names=class_names, source=f"ucf101 split {split} {subset}")


# --------------------------------------------------------------------------------------------
# HMDB51
# --------------------------------------------------------------------------------------------

_HMDB51_FILE = re.compile(r"^(?P<name>.+)_test_split(?P<split>\d+)\.txt$")


def read_hmdb51(split_dir: PathLike, split: int, subset: Subset) -> AnnotationSet:
    """HMDB51's official testTrainMulti_7030_splits folder.

    One file per class and split, "<class>_test_split<N>.txt", with lines "<video>.avi <code>"
    (1 = train, 2 = test, 0 = not used in this split). Classes are sorted alphabetically;
    record paths are "<class>/<video>.avi", the layout of the extracted hmdb51_org rars.
    """
    _check_split(split, HMDB51_SPLITS, "HMDB51")
    _check_subset(subset)
    folder = Path(split_dir)
    if not folder.is_dir():
        raise AnnotationError(split_dir, "expected the folder of '<class>_test_split<N>.txt' files")
    files: dict[str, Path] = {}
    for entry in folder.iterdir():
        match = _HMDB51_FILE.match(entry.name)
        if match and int(match["split"]) == split:
            files[match["name"]] = entry
    if not files:
        raise AnnotationError(split_dir, f"no '<class>_test_split{split}.txt' files found")
    class_names = sorted(files)
    wanted = _HMDB51_SUBSET_CODE[subset]
    records: list[VideoRecord] = []
    keys = _KeyRegistry()
    for label, name in enumerate(class_names):
        path = files[name]
        any_line = False
        for number, line in _lines(path, comments=False):
            any_line = True
            fields = line.split()
            code = _parse_int(fields[1]) if len(fields) == 2 else None
            if code not in (0, 1, 2):
                raise AnnotationError(path, f"expected '<video>.avi <0|1|2>', got {line!r}", _line(number))
            if code != wanted:
                continue
            rel = f"{name}/{fields[0]}"
            rel = _check_relative_path(path, number, rel)
            key = _key_of(rel)
            keys.add(key, path, number)
            records.append(VideoRecord(path=rel, label=label, key=key))
        if not any_line:
            raise AnnotationError(path, "file is empty; expected '<video>.avi <0|1|2>' lines")
    return AnnotationSet(records=records, class_names=class_names, source=f"hmdb51 split {split} {subset}")


# --------------------------------------------------------------------------------------------
# Something-Something v2
# --------------------------------------------------------------------------------------------


def ssv2_template_to_class(template: str) -> str:
    """'Putting [something] on [something]' -> 'Putting something on something'."""
    return template.replace("[", "").replace("]", "")


def read_ssv2_labels(labels_json: PathLike) -> list[str]:
    """something-something-v2-labels.json: {"class name": "index", ...} -> names by index."""
    data = _read_json(labels_json)
    if not isinstance(data, dict) or not data:
        raise AnnotationError(labels_json, 'expected a non-empty JSON object {"class name": "index", ...}')
    names: dict[int, str] = {}
    for name, value in data.items():
        index = value if isinstance(value, int) and not isinstance(value, bool) else None
        if isinstance(value, str):
            index = _parse_int(value)
        if index is None:
            raise AnnotationError(labels_json, f"expected an integer index (e.g. \"0\"), got {value!r}", f"key {name!r}")
        if index in names:
            raise AnnotationError(labels_json, f"index {index} is used twice (also by {names[index]!r})", f"key {name!r}")
        names[index] = name
    if sorted(names) != list(range(len(names))):
        raise AnnotationError(labels_json, f"expected indices 0..{len(names) - 1} without gaps")
    return [names[i] for i in range(len(names))]


def read_ssv2(labels_json: PathLike, split_json: PathLike) -> AnnotationSet:
    """Something-Something v2: the labels json and a train / validation / test json.

    Train and validation items are {"id", "label", "template", "placeholders"}; the class is
    the TEMPLATE with its square brackets removed (the "label" field holds the filled-in
    objects). Test items have only an "id" and give unlabelled records. Paths are "<id>.webm".
    """
    class_names = read_ssv2_labels(labels_json)
    by_name = {name: i for i, name in enumerate(class_names)}
    items = _read_json(split_json)
    if not isinstance(items, list):
        raise AnnotationError(split_json, f'expected a JSON list of {{"id", "template", ...}} items, got {type(items).__name__}')
    if not items:
        raise AnnotationError(split_json, "file is empty (an empty JSON list); expected video items")
    labelled = isinstance(items[0], dict) and "template" in items[0]
    records: list[VideoRecord] = []
    keys = _KeyRegistry()
    for index, item in enumerate(items):
        where = _item(index)
        if not isinstance(item, dict) or "id" not in item:
            raise AnnotationError(split_json, f'expected an object with an "id", got {item!r:.80}', where)
        video_id = item["id"]
        if isinstance(video_id, bool) or not isinstance(video_id, (str, int)) or not str(video_id).strip():
            raise AnnotationError(split_json, f'expected "id" to be a non-empty string or integer, got {video_id!r}', where)
        video_id = str(video_id).strip()
        label: int | None = None
        if labelled:
            template = item.get("template")
            if not isinstance(template, str):
                raise AnnotationError(split_json, 'expected a "template" string (as in item 0)', where)
            label = by_name.get(ssv2_template_to_class(template))
            if label is None:
                raise AnnotationError(
                    split_json,
                    f"template {template!r} does not match any class of {Path(labels_json).name}",
                    where,
                )
        elif "template" in item:
            raise AnnotationError(split_json, 'unexpected "template": item 0 has none, so the file reads as unlabelled', where)
        rel = f"{video_id}.webm"
        rel = _check_relative_path(split_json, where, rel)
        keys.add(video_id, split_json, where)
        records.append(VideoRecord(path=rel, label=label, key=video_id))
    return AnnotationSet(records=records, class_names=class_names, source=f"ssv2 {Path(split_json).stem}")


# --------------------------------------------------------------------------------------------
# Diving48
# --------------------------------------------------------------------------------------------


def read_diving48_vocab(vocab_json: PathLike) -> list[str]:
    """Diving48_vocab.json: a list of [takeoff, somersault, twist, flight] lists -> names."""
    data = _read_json(vocab_json)
    if not isinstance(data, list) or not data:
        raise AnnotationError(vocab_json, "expected a non-empty JSON list of [takeoff, somersault, twist, flight] lists")
    names = []
    for index, entry in enumerate(data):
        if not isinstance(entry, list) or not entry or not all(isinstance(part, str) for part in entry):
            raise AnnotationError(vocab_json, f"expected a list of strings, got {entry!r:.80}", _item(index))
        names.append(" / ".join(entry))
    return names


def read_diving48(split_json: PathLike, vocab_json: PathLike | None = None) -> AnnotationSet:
    """Diving48 V2: Diving48_V2_train.json / Diving48_V2_test.json.

    Items are {"vid_name", "label", "start_frame", "end_frame"}; paths are "<vid_name>.mp4"
    (the released rgb clips are already trimmed, so the frame range is not needed). Class
    names come from Diving48_vocab.json when given, else "class_<i>" for the 48 classes.
    """
    class_names = (
        read_diving48_vocab(vocab_json)
        if vocab_json is not None
        else [f"class_{i}" for i in range(DIVING48_NUM_CLASSES)]
    )
    items = _read_json(split_json)
    if not isinstance(items, list):
        raise AnnotationError(split_json, f'expected a JSON list of {{"vid_name", "label", ...}} items, got {type(items).__name__}')
    if not items:
        raise AnnotationError(split_json, "file is empty (an empty JSON list); expected video items")
    records: list[VideoRecord] = []
    keys = _KeyRegistry()
    for index, item in enumerate(items):
        where = _item(index)
        if not isinstance(item, dict):
            raise AnnotationError(split_json, f'expected an object {{"vid_name", "label", ...}}, got {item!r:.80}', where)
        name, label = item.get("vid_name"), item.get("label")
        if not isinstance(name, str) or not name.strip():
            raise AnnotationError(split_json, f'expected "vid_name" to be a non-empty string, got {name!r}', where)
        if isinstance(label, bool) or not isinstance(label, int):
            raise AnnotationError(split_json, f'expected "label" to be an integer, got {label!r}', where)
        _check_label_range(label, len(class_names), split_json, where)
        rel = f"{name.strip()}.mp4"
        rel = _check_relative_path(split_json, where, rel)
        keys.add(name.strip(), split_json, where)
        records.append(VideoRecord(path=rel, label=label, key=name.strip()))
    return AnnotationSet(records=records, class_names=class_names, source=f"diving48 {Path(split_json).stem}")


# --------------------------------------------------------------------------------------------
# Kinetics-400
# --------------------------------------------------------------------------------------------


def kinetics400_relative_path(
    youtube_id: str,
    time_start: int,
    time_end: int,
    split: str,
    label_name: str | None,
    layout: KineticsLayout = "split/label",
    underscore_labels: bool = False,
) -> str:
    """Where a Kinetics clip lives under the video root.

    The file is "<youtube_id>_<time_start:06d>_<time_end:06d>.mp4" (the ActivityNet
    downloader's name). Folders by `layout`: "split/label" -> "<split>/<label>/<file>" (the
    downloader's default), "label" -> "<label>/<file>", "split" -> "<split>/<file>" (the CVDF
    tarballs), "flat" -> "<file>". Unlabelled rows (test) have no label folder.
    `underscore_labels` writes label folders with '_' for ' ' (MMAction2's renaming step).
    """
    file_name = f"{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
    folders: list[str] = []
    if layout in ("split/label", "split"):
        folders.append(split)
    if layout in ("split/label", "label") and label_name is not None:
        folders.append(label_name.replace(" ", "_") if underscore_labels else label_name)
    if layout not in KINETICS_LAYOUTS:
        raise ValueError(f"layout: expected one of {list(KINETICS_LAYOUTS)}, got {layout!r}")
    return "/".join([*folders, file_name])


def _csv_rows(path: PathLike, text: str | None = None) -> tuple[list[str], int, Iterator[tuple[int, list[str]]]]:
    """The header fields, the header's line number and (line number, fields) of the data rows."""
    reader = csv.reader(io.StringIO(_read_text(path) if text is None else text))
    header: list[str] | None = None
    header_number = 0

    def rows() -> Iterator[tuple[int, list[str]]]:
        try:
            for fields in reader:
                stripped = [f.strip() for f in fields]
                if any(stripped):
                    yield reader.line_num, stripped
        except csv.Error as exc:
            raise AnnotationError(path, f"expected CSV ({exc})", _line(reader.line_num)) from None

    iterator = rows()
    for number, fields in iterator:
        header, header_number = fields, number
        break
    if header is None:
        raise AnnotationError(path, "file is empty; expected a CSV header")
    return header, header_number, iterator


def read_kinetics400(
    csv_path: PathLike,
    subset: str | None = None,
    class_names: Sequence[str] | None = None,
    layout: KineticsLayout = "split/label",
    underscore_labels: bool = False,
) -> AnnotationSet:
    """Kinetics-400's official CSV: label,youtube_id,time_start,time_end,split[,is_cc].

    `subset` keeps only rows whose split column equals it ("train", "val", "test"). Class
    names are the labels sorted alphabetically (400 on the full train CSV); pass
    `class_names` (e.g. the train set's) to index another split with the same vocabulary.
    A CSV without a label column (the original test release) gives unlabelled records.
    Paths follow `layout` (see `kinetics400_relative_path`).
    """
    if layout not in KINETICS_LAYOUTS:
        raise ValueError(f"layout: expected one of {list(KINETICS_LAYOUTS)}, got {layout!r}")
    header, header_number, rows = _csv_rows(csv_path)
    columns = {name: i for i, name in enumerate(header)}
    required = ["split", "youtube_id", "time_start", "time_end"]
    missing = [name for name in required if name not in columns]
    if missing:
        raise AnnotationError(
            csv_path, f"header is missing column(s) {missing}; expected label,youtube_id,time_start,time_end,split",
            _line(header_number),
        )
    has_label = "label" in columns
    rows_out: list[tuple[int, str, int, int, str, str | None]] = []
    num_columns = len(header)
    i_split, i_id, i_start, i_end = (columns[name] for name in required)
    i_label = columns.get("label")
    for number, fields in rows:
        if len(fields) != num_columns:
            raise AnnotationError(csv_path, f"expected {num_columns} fields like the header, got {len(fields)}", _line(number))
        split_name = fields[i_split]
        if subset is not None and split_name != subset:
            continue
        youtube_id = fields[i_id]
        start, end = _parse_int(fields[i_start]), _parse_int(fields[i_end])
        if not youtube_id or start is None or end is None or start < 0 or end < start:
            raise AnnotationError(
                csv_path,
                "expected a youtube_id and integer seconds 0 <= time_start <= time_end, "
                f"got {youtube_id!r}, {fields[i_start]!r}, {fields[i_end]!r}",
                _line(number),
            )
        label_name = fields[i_label] if i_label is not None else None
        if i_label is not None and not label_name:
            raise AnnotationError(csv_path, "expected a non-empty label", _line(number))
        rows_out.append((number, youtube_id, start, end, split_name, label_name))
    if not rows_out:
        what = f"rows with split {subset!r}" if subset is not None else "data rows"
        raise AnnotationError(csv_path, f"no {what}; expected at least one")
    if has_label:
        names = list(class_names) if class_names is not None else sorted({row[5] for row in rows_out})
        by_name = {name: i for i, name in enumerate(names)}
    else:
        names = list(class_names) if class_names is not None else []
        by_name = {}
    records: list[VideoRecord] = []
    keys = _KeyRegistry()
    for number, youtube_id, start, end, split_name, label_name in rows_out:
        label = None
        if label_name is not None:
            label = by_name.get(label_name)
            if label is None:
                raise AnnotationError(csv_path, f"label {label_name!r} is not in the given class_names", _line(number))
        rel = kinetics400_relative_path(youtube_id, start, end, split_name, label_name, layout, underscore_labels)
        rel = _check_relative_path(csv_path, number, rel)
        key = _key_of(rel)
        keys.add(key, csv_path, number)
        records.append(VideoRecord(path=rel, label=label, key=key))
    source = f"kinetics400 {Path(csv_path).stem}" + (f" {subset}" if subset is not None else "")
    return AnnotationSet(records=records, class_names=names, source=source)


# --------------------------------------------------------------------------------------------
# HowTo100M
# --------------------------------------------------------------------------------------------


def read_howto100m(csv_path: PathLike, extension: str = ".mp4") -> AnnotationSet:
    """HowTo100M_v1.csv (video_id,category_1,category_2,rank,task_id) or one video id per line.

    HowTo100M is used for pre-training only, so the records are unlabelled; the path is
    "<video_id><extension>" (the released videos are mostly .mp4, some .webm: pass the
    extension your download used). HowTo100M_v1.csv has one row per video, but a file with a
    row per clip or caption lists a video several times: its later rows would be the same
    record, so each video is taken once (at its first row) and `notes` says how many rows
    were merged.
    """
    if extension and not extension.startswith("."):
        raise ValueError(f"extension: expected a suffix starting with '.', got {extension!r}")
    records: list[VideoRecord] = []
    first_line_of: dict[str, int] = {}
    repeats: list[tuple[str, int]] = []  # (video id, line) of each row naming a video listed earlier
    text = _read_text(csv_path)  # read once: the full csv has 1.2M rows
    first_line = next(_lines(csv_path, text), None)
    if first_line is None:
        raise AnnotationError(csv_path, "file is empty; expected a CSV with a video_id column or one id per line")
    entries: Iterator[tuple[int, str]]
    if "video_id" in [f.strip() for f in next(csv.reader([first_line[1]]))]:
        header, _header_number, rows = _csv_rows(csv_path, text)
        column = header.index("video_id")

        def csv_ids() -> Iterator[tuple[int, str]]:
            for number, fields in rows:
                if len(fields) <= column or not fields[column]:
                    raise AnnotationError(csv_path, f"expected a video_id in column {column + 1}", _line(number))
                yield number, fields[column]

        entries = csv_ids()
    else:

        def listed_ids() -> Iterator[tuple[int, str]]:
            for number, line in _lines(csv_path, text):
                if "," in line or len(line.split()) != 1:
                    raise AnnotationError(
                        csv_path, f"expected one video id per line (or a CSV with a video_id header), got {line!r}", _line(number)
                    )
                yield number, line

        entries = listed_ids()
    for number, video_id in entries:
        rel = f"{video_id}{extension}"
        rel = _check_relative_path(csv_path, number, rel)
        if video_id in first_line_of:
            repeats.append((video_id, number))
            continue
        first_line_of[video_id] = number
        records.append(VideoRecord(path=rel, label=None, key=video_id))
    if not records:
        raise AnnotationError(csv_path, "no video ids; expected at least one")
    notes = []
    if repeats:
        video_id, number = repeats[0]
        notes.append(f"{csv_path}: {len(repeats)} row(s) repeat a video listed on an earlier row (first: "
                     f"{video_id!r} on line {number}, listed on line {first_line_of[video_id]}); each video "
                     f"is taken once, {len(records)} videos in all")
    return AnnotationSet(records=records, class_names=[], source=f"howto100m {Path(csv_path).name}", notes=notes)


# --------------------------------------------------------------------------------------------
# One entry point
# --------------------------------------------------------------------------------------------

_UCF101_LIST = re.compile(r"^(?P<subset>train|test)list0(?P<split>[123])\.txt$")
_SSV2_LABEL_FILES = ("something-something-v2-labels.json", "labels.json")
_DIVING48_VOCAB_FILE = "Diving48_vocab.json"


def detect_format(path: PathLike) -> tuple[str, dict[str, Any]]:
    """Guess (format, implied options) from a file or folder; raise when it is ambiguous.

    A folder with classInd.txt is UCF101, one with <class>_test_split<N>.txt files HMDB51;
    trainlist0N.txt / testlist0N.txt is UCF101 with that split and subset; any other .txt is
    an MMAction2 list (an id list for HowTo100M needs fmt="howto100m"); a .csv with a
    youtube_id column is Kinetics, with a video_id column HowTo100M; a .json list of
    {"vid_name"} items is Diving48, of {"id"} items SSV2.
    """
    p = Path(path)
    if p.is_dir():
        if (p / "classInd.txt").is_file():
            return "ucf101", {}
        if any(_HMDB51_FILE.match(entry.name) for entry in p.iterdir()):
            return "hmdb51", {}
        raise AnnotationError(path, "cannot detect the format: a folder without classInd.txt or *_test_split<N>.txt")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        match = _UCF101_LIST.match(p.name)
        if match and (p.parent / "classInd.txt").is_file():
            return "ucf101", {"split": int(match["split"]), "subset": match["subset"]}
        return "mmaction", {}
    if suffix == ".csv":
        header, _header_number, _rows = _csv_rows(path)
        if "youtube_id" in header:
            return "kinetics400", {}
        if "video_id" in header:
            return "howto100m", {}
        raise AnnotationError(path, f"cannot detect the format from the CSV header {header}; pass fmt explicitly")
    if suffix == ".json":
        data = _read_json(path)
        if isinstance(data, dict):
            raise AnnotationError(path, "this is a label map; point at the split json (train/validation/test) instead")
        if isinstance(data, list) and data and isinstance(data[0], dict):
            if "vid_name" in data[0]:
                return "diving48", {}
            if "id" in data[0]:
                return "ssv2", {}
        raise AnnotationError(path, "cannot detect the format of this JSON; pass fmt explicitly")
    raise AnnotationError(path, f"cannot detect the format from the suffix {p.suffix!r}; pass fmt explicitly")


def load_annotations(fmt: str, path: PathLike, **options: Any) -> AnnotationSet:
    """Read annotations by format name (see `FORMATS`, or "auto" to detect).

    `path` is the main file or folder of each format; the options are the reader's other
    arguments:

    - mmaction: the list file; class_names_path
    - ucf101: the ucfTrainTestlist folder; split, subset
    - hmdb51: the split folder; split, subset
    - ssv2: the train/validation/test json; labels_json (default: something-something-v2-
      labels.json or labels.json next to it)
    - diving48: the split json; vocab_json (default: Diving48_vocab.json next to it, if any)
    - kinetics400: the csv; subset, class_names, layout, underscore_labels
    - howto100m: the csv or id list; extension
    """
    if fmt == "auto":
        fmt, implied = detect_format(path)
        options = _merge_implied_options(path, implied, options)
    p = Path(path)
    if fmt == "mmaction":
        return read_mmaction_list(path, **options)
    if fmt == "ucf101":
        if p.is_file():  # a trainlist0N.txt / testlist0N.txt given directly
            match = _UCF101_LIST.match(p.name)
            if match:
                implied = {"split": int(match["split"]), "subset": match["subset"]}
                options = _merge_implied_options(path, implied, options)
            p = p.parent
        _require(options, ("split", "subset"), fmt)
        return read_ucf101(p, **options)
    if fmt == "hmdb51":
        _require(options, ("split", "subset"), fmt)
        return read_hmdb51(path, **options)
    if fmt == "ssv2":
        labels = options.pop("labels_json", None)
        if labels is None:
            labels = next((p.parent / n for n in _SSV2_LABEL_FILES if (p.parent / n).is_file()), None)
            if labels is None:
                raise AnnotationError(
                    path, f"no labels json given and none of {list(_SSV2_LABEL_FILES)} next to it; pass labels_json"
                )
        return read_ssv2(labels, path, **options)
    if fmt == "diving48":
        if "vocab_json" not in options and (p.parent / _DIVING48_VOCAB_FILE).is_file():
            options["vocab_json"] = p.parent / _DIVING48_VOCAB_FILE
        return read_diving48(path, **options)
    if fmt == "kinetics400":
        return read_kinetics400(path, **options)
    if fmt == "howto100m":
        return read_howto100m(path, **options)
    raise ValueError(f"fmt: expected one of {[*FORMATS, 'auto']}, got {fmt!r}")


def _merge_implied_options(path: PathLike, implied: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The options a file's name implies (trainlist02.txt: split 2, subset train) plus the given
    ones; a given option that contradicts the name is refused rather than silently reading
    another file than the one named."""
    conflicts = [f"{name}={options[name]!r}" for name, value in implied.items()
                 if name in options and options[name] != value]
    if conflicts:
        named = ", ".join(f"{name} {value!r}" for name, value in implied.items())
        raise AnnotationError(
            path,
            f"the file name means {named}, but {' and '.join(conflicts)} was asked (--split / --subset); "
            "drop those options, or point at the ucfTrainTestlist folder and choose split and subset there",
        )
    return {**options, **implied}


def _require(options: dict[str, Any], names: Sequence[str], fmt: str) -> None:
    missing = [name for name in names if name not in options]
    if missing:
        raise ValueError(f"format {fmt!r} needs the option(s) {missing}")
