"""Faults reported as one line naming what and where, and nothing lost or mixed up on the way.

Judges that refuse, hang or reject the key are loopback servers on 127.0.0.1 (stdlib http.server);
kills are real subprocesses; bad folders and files are crafted in tmp_path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

import pytest
import yaml

from ex2.cli import main
from ex2.config import ConfigError, check_values, option, parse_config
from ex2.errors import OutputError
from ex2.io import check_output_path, read_jsonl, write_jsonl

REPO = Path(__file__).resolve().parents[1]


# --- 5. config values are type-checked when the file is read ----------------------------------


@dataclass
class Options:
    """A config with one field of each kind."""

    batch_size: int = option(2, "an int")
    rate: float = option(0.5, "a float")
    vlm: str = option("conse", "a string")
    root: str | None = option(None, "a string or nothing")
    categories: list[str] = option([], "a list")
    mode: Literal["a", "b"] = option("a", "a choice")
    flag: bool = option(False, "a bool")


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("batch_size", 2.5, "batch_size: expected an integer, got 2.5 (float)"),
    ("batch_size", True, "batch_size: expected an integer, got True (bool)"),
    ("vlm", 12, "vlm: expected a string (quote it), got 12 (int)"),
    ("root", 3, "root: expected a string (quote it) or null, got 3 (int)"),
    ("mode", "c", "mode: expected one of 'a', 'b', got 'c'"),
    ("flag", "yes", "flag: expected true or false, got 'yes' (str)"),
    ("categories", [1], "categories: expected a list, got [1]"),
    ("rate", "fast", "rate: expected a number, got 'fast'"),
])
def test_yaml_values_are_checked_against_the_field_type(tmp_path, capsys, key, value, expected):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({key: value}))
    with pytest.raises(SystemExit):
        parse_config(Options, ["--config", str(path)], prog="t")
    err = capsys.readouterr().err
    assert f"config file {path}: {expected}" in err


def test_scalars_become_one_item_lists_and_ints_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("categories: visual\nrate: 2\nroot: null\n")
    config = parse_config(Options, ["--config", str(path)], prog="t")
    assert config.categories == ["visual"] and config.rate == 2.0 and isinstance(config.rate, float)


def test_check_values_works_for_any_dataclass():
    assert check_values(Options, {"batch_size": 3, "unknown": object}, "x")["batch_size"] == 3
    with pytest.raises(ConfigError, match=r"^flags: batch_size: expected an integer"):
        check_values(Options, {"batch_size": "3"}, "flags")
    trl = pytest.importorskip("trl")
    checked = check_values(trl.GRPOConfig, {"beta": 0, "lr_scheduler_type": "linear"}, "t.yaml")
    assert checked == {"beta": 0.0, "lr_scheduler_type": "linear"}
    with pytest.raises(ConfigError, match="t.yaml: per_device_train_batch_size: expected an integer"):
        check_values(trl.GRPOConfig, {"per_device_train_batch_size": 2.5}, "t.yaml")


def test_a_bad_stage_config_fails_before_any_model_loads(tmp_path, capsys):
    path = tmp_path / "generate.yaml"
    path.write_text("batch_size: 2.5\n")
    with pytest.raises(SystemExit):
        main(["generate", "--config", str(path)])
    assert f"config file {path}: batch_size: expected an integer, got 2.5" in capsys.readouterr().err
