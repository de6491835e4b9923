"""The dataclass config machinery: presets, YAML files and key=value overrides."""

import re
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from vimpac.config import KEY_VALUE_ITEMS, ConfigError, apply_overrides, build_config, from_dict, to_dict


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.98)


@dataclass(frozen=True)
class Run:
    name: str = "run"
    layers: int = 6
    layout: Literal["T,H|W", "T,H,W"] = "T,H|W"
    pre_ln: bool = False
    max_minutes: Optional[float] = None
    optim: Optim = field(default_factory=Optim)


PRESETS = {"tiny": Run(name="tiny", layers=2), "small": Run(name="small", layers=6)}


def test_overrides_convert_to_the_declared_types():
    cfg = apply_overrides(Run(), ["layers=12", "pre_ln=true", "optim.lr=3e-4", "optim.betas=0.9,0.999",
                                  "max_minutes=2.5", "layout=T,H,W"])
    assert cfg.layers == 12 and cfg.pre_ln is True and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.optim.betas == (0.9, 0.999) and cfg.max_minutes == 2.5 and cfg.layout == "T,H,W"
    assert apply_overrides(cfg, ["max_minutes=none"]).max_minutes is None


@dataclass(frozen=True)
class Stage:
    names: tuple[str, ...] = ()
    model_overrides: tuple[str, ...] = field(default=(), metadata=KEY_VALUE_ITEMS)


@pytest.mark.parametrize("value, expected", [
    ("layout=T,H,W", ("layout=T,H,W",)),
    ("dim=64,layout=T,H|W,heads=2", ("dim=64", "layout=T,H|W", "heads=2")),
    ('["layout=T,H,W", "dim=64"]', ("layout=T,H,W", "dim=64")),
    # Unquoted, YAML splits a list at every comma ('layout=T', 'H', 'W'): refused before, now
    # rejoined by the rule of the comma-separated form.
    ("[layout=T,H,W]", ("layout=T,H,W",)),
    ("[dim=64, layout=T,H|W, heads=2]", ("dim=64", "layout=T,H|W", "heads=2")),
])
def test_a_key_value_list_keeps_the_commas_of_a_value_with_its_key(value, expected, tmp_path):
    assert apply_overrides(Stage(), [f"model_overrides={value}"]).model_overrides == expected
    path = tmp_path / "stage.yaml"
    path.write_text(f"model_overrides: '{value}'\n")
    assert build_config(Stage, yaml_path=path).model_overrides == expected
    # A list of plain names is still split at every comma.
    assert apply_overrides(Stage(), ["names=a,b,c"]).names == ("a", "b", "c")


def test_an_unquoted_yaml_list_of_key_value_items_in_a_file_is_rejoined_too(tmp_path):
    path = tmp_path / "stage.yaml"
    path.write_text("model_overrides: [dim=64, layout=T,H,W]\nnames: [a, b]\n")
    cfg = build_config(Stage, yaml_path=path)
    assert cfg.model_overrides == ("dim=64", "layout=T,H,W") and cfg.names == ("a", "b")


@pytest.mark.parametrize("override", ["model_overrides=[layout=T,H,W", "names=[a, b"])
def test_a_list_setting_that_is_not_valid_yaml_is_a_config_error_naming_it(override):
    # It was PyYAML's ScannerError: a traceback from `vimpac demo 'seeds=[0,1'`.
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}: .* is not a valid YAML list: line 1, column \d+"):
        apply_overrides(Stage(), [override])


def test_preset_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("layers: 3\noptim:\n  lr: 0.01\n")
    cfg = build_config(Run, PRESETS, "tiny", path, ["optim.lr=0.5"])
    assert (cfg.name, cfg.layers, cfg.optim.lr) == ("tiny", 3, 0.5)


@pytest.mark.parametrize(
    "override, message",
    [("nope=1", "unknown config field 'nope'"), ("layers=1.5", "layers: expected int"),
     ("pre_ln=maybe", "pre_ln: expected true/false"), ("layout=T", "not one of"), ("layers", "expected key=value")],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Run(), [override])


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match=r"unknown preset 'huge'.*small.*tiny"):
        build_config(Run, PRESETS, "huge")


def test_dict_roundtrip():
    cfg = apply_overrides(Run(), ["optim.betas=0.5,0.6"])
    assert from_dict(Run, to_dict(cfg)) == cfg
    assert to_dict(cfg)["optim"]["betas"] == [0.5, 0.6]


@pytest.mark.parametrize("override, guess", [
    ("lr=1", "'optim.lr'"),                # a field of a section, given without the section
    ("optim.lrr=1", "'optim.lr'"),         # a misspelt field
    ("otpim.lr=1", "'optim.lr'"),          # a misspelt section
    ("optim.beta=1", "'optim.betas'"),    # a near name
])
def test_unknown_fields_suggest_the_keys_that_exist(override, guess):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"unknown config field '{key}' \\(did you mean {guess}\\?\\)"):
        apply_overrides(Run(), [override])


def test_an_unknown_field_without_a_near_key_only_lists_the_fields():
    with pytest.raises(ConfigError) as info:
        apply_overrides(Run(), ["zzz=1"])
    assert "did you mean" not in str(info.value) and "'layers'" in str(info.value)


def test_a_yaml_syntax_error_is_one_line_naming_the_file_and_the_line(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("layers: 3\noptim:\n  lr: [0.1\n")
    with pytest.raises(ConfigError) as info:
        build_config(Run, PRESETS, "tiny", path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: not valid YAML: line ")


def test_a_bad_setting_in_the_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("optim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: optim.lr: expected float, got 'fast'$"):
        build_config(Run, PRESETS, "tiny", path)
    with pytest.raises(ConfigError, match="^optim.lr: expected float"):  # the same on the command line: no file
        build_config(Run, PRESETS, "tiny", None, ["optim.lr=fast"])


def test_a_yaml_section_with_every_key_commented_out_changes_nothing(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("layers: 3\noptim:\n  # lr: 0.01\n")
    cfg = build_config(Run, PRESETS, "tiny", path)
    assert (cfg.layers, cfg.optim) == (3, Optim())


def test_a_text_field_set_to_null_is_refused_not_stored_as_the_text_none(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("name:\n")
    with pytest.raises(ConfigError, match=r"name: expected a string, got null"):
        build_config(Run, PRESETS, "tiny", path)


@pytest.mark.parametrize("content", [b"[" * 5000, b"a: \xff\xfe\n", b"!!python/object/apply:os.system ['true']\n"],
                         ids=["nested_too_deeply", "not_utf8", "python_object_tag"])
def test_crafted_yaml_is_a_config_error_naming_the_file(tmp_path, content):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: (cannot read YAML config|not valid YAML): "):
        build_config(Run, yaml_path=path)
