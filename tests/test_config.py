from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
import yaml

from ex2.config import ConfigError, option, parse_config, save_config


@dataclass
class DemoConfig:
    """A config used to test the parser."""

    max_steps: int = option(10, "steps to run")
    learning_rate: float = option(1e-4, "step size")
    name: str | None = option(None, "a name")
    mode: Literal["a", "b"] = option("a", "one of a or b")
    verbose: bool = option(False, "say more")
    tags: list[str] = option(["x"], "several values")
    api_key: str | None = option(None, "never saved", secret=True)
    runs: list[str] = option([], "run folders", positional=True)

    def __post_init__(self):
        if self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")


def test_defaults_and_both_flag_spellings():
    config = parse_config(DemoConfig, ["--max-steps", "3", "--learning_rate", "0.5"], prog="t")
    assert (config.max_steps, config.learning_rate, config.mode, config.tags) == (3, 0.5, "a", ["x"])


def test_yaml_gives_defaults_and_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"max-steps": 7, "mode": "b", "tags": ["p", "q"]}))
    config = parse_config(DemoConfig, ["--config", str(path), "--mode", "a"], prog="t")
    assert (config.max_steps, config.mode, config.tags) == (7, "a", ["p", "q"])


def test_unknown_yaml_key_is_an_error_naming_the_file(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("max_stepz: 3\n")
    with pytest.raises(SystemExit):
        parse_config(DemoConfig, ["--config", str(path)], prog="t")
    err = capsys.readouterr().err
    assert "max_stepz" in err and str(path) in err and "max_steps" in err


def test_validation_error_exits_with_message(capsys):
    with pytest.raises(SystemExit):
        parse_config(DemoConfig, ["--max-steps", "0"], prog="t")
    assert "max_steps must be >= 1" in capsys.readouterr().err


def test_bad_choice_and_bool_flags(capsys):
    assert parse_config(DemoConfig, ["--verbose"], prog="t").verbose is True
    assert parse_config(DemoConfig, ["--no-verbose"], prog="t").verbose is False
    with pytest.raises(SystemExit):
        parse_config(DemoConfig, ["--mode", "c"], prog="t")


def test_positional_list(tmp_path):
    assert parse_config(DemoConfig, ["r1", "r2"], prog="t").runs == ["r1", "r2"]
    assert parse_config(DemoConfig, ["--runs", "r3"], prog="t").runs == ["r3"]


def test_saved_config_drops_secrets(tmp_path):
    config = parse_config(DemoConfig, ["--api-key", "sk-secret", "--name", "n"], prog="t")
    text = save_config(config, tmp_path).read_text()
    assert "sk-secret" not in text and "api_key" not in text
    assert yaml.safe_load(text)["name"] == "n"


def test_list_options_repeat_and_replace_the_default():
    config = parse_config(DemoConfig, ["--tags", "a", "--tags", "b", "c"], prog="t")
    assert config.tags == ["a", "b", "c"]
    assert parse_config(DemoConfig, [], prog="t").tags == ["x"]
