"""Dataclass configs: YAML/JSON round trip and errors that name the file and the field."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mmcardio.config import deep_merge, load_config, parse_overrides, save_config
from mmcardio.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: list = field(default_factory=lambda: [0.9, 0.98])


@dataclass
class Run:
    name: str = "tiny"
    steps: int = 10
    optim: Optim = field(default_factory=Optim)
    resume: str | None = None


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path, suffix):
    run = Run(name="x", steps=3, optim=Optim(lr=2e-4))
    path = save_config(run, tmp_path / f"run{suffix}")
    assert load_config(path, Run) == run


def test_int_is_accepted_for_float_and_overrides_apply(tmp_path):
    (tmp_path / "r.yaml").write_text("optim: {lr: 1}\n")
    run = load_config(tmp_path / "r.yaml", Run, overrides={"steps": 7})
    assert run.optim.lr == 1.0 and isinstance(run.optim.lr, float) and run.steps == 7


def test_unknown_key_names_file_and_field(tmp_path):
    (tmp_path / "r.yaml").write_text("optim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml.*'optim'.*unknown key\(s\) \['lrr'\]"):
        load_config(tmp_path / "r.yaml", Run)


def test_wrong_type_names_field(tmp_path):
    (tmp_path / "r.yaml").write_text("steps: ten\n")
    with pytest.raises(ConfigError, match=r"field 'steps'.*expected int"):
        load_config(tmp_path / "r.yaml", Run)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml", Run)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    (tmp_path / "r.yaml").write_text("optim: {lr: 1e-3}\n")  # YAML 1.1 reads this as a string
    assert load_config(tmp_path / "r.yaml", Run).optim.lr == 1e-3
    (tmp_path / "r.yaml").write_text("optim: {lr: fast}\n")
    with pytest.raises(ConfigError, match=r"field 'optim.lr'.*expected a number"):
        load_config(tmp_path / "r.yaml", Run)


def test_exponent_floats_anywhere_and_strings_that_look_like_them_round_trip(tmp_path):
    (tmp_path / "r.yaml").write_text("optim: {lr: 2E-4, betas: [0.9, 1e0]}\nname: '1e3'\n")
    run = load_config(tmp_path / "r.yaml", Run)
    assert run.optim == Optim(lr=2e-4, betas=[0.9, 1.0]) and run.name == "1e3"
    assert load_config(save_config(Run(name="1e3"), tmp_path / "s.yaml"), Run).name == "1e3"


def test_set_overrides_nest_dotted_keys_and_parse_values_as_yaml():
    given = parse_overrides(["optim.lr=1e-3", "optim.betas=[0.9, 0.95]", "name=tiny", "resume=null"])
    assert given == {"optim": {"lr": 1e-3, "betas": [0.9, 0.95]}, "name": "tiny", "resume": None}
    with pytest.raises(ConfigError, match=r"field '--set'.*expected key=value, got 'steps'"):
        parse_overrides(["steps"])


def test_deep_merge_recurses_into_mappings_and_leaves_its_inputs_alone():
    base, extra = {"optim": {"lr": 1.0, "betas": [0.9]}, "steps": 1}, {"optim": {"lr": 2.0}, "name": "x"}
    assert deep_merge(base, extra) == {"optim": {"lr": 2.0, "betas": [0.9]}, "steps": 1, "name": "x"}
    assert base == {"optim": {"lr": 1.0, "betas": [0.9]}, "steps": 1} and extra == {"optim": {"lr": 2.0}, "name": "x"}
