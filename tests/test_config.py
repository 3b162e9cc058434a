from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import PIL.Image
import pytest
import yaml

from ex2.core.config import ConfigError, option, parse_config, save_config


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


def test_a_missing_input_file_is_a_one_line_command_line_error(tmp_path, capsys):
    from ex2.finetune.stage import FinetuneConfig

    missing = tmp_path / "none.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        parse_config(FinetuneConfig, ["--descriptions", str(missing), "--output", str(tmp_path / "o")], prog="t")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and str(missing) in err and "Traceback" not in err


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


# --- options the stages share ------------------------------------------------------------------

SHARED = ("dataset", "data_root", "split", "vlm", "llm")


def stage_configs() -> list[type]:
    from ex2.classify.stage import ClassifyConfig
    from ex2.demo import DemoConfig as PipelineConfig
    from ex2.generate.stage import GenerateConfig

    return [ClassifyConfig, GenerateConfig, PipelineConfig]


def test_stages_share_one_declaration_of_each_common_option():
    from ex2.core import config as config_module

    declared = {
        "dataset": config_module.dataset_option(), "data_root": config_module.data_root_option(),
        "split": config_module.split_option(), "vlm": config_module.vlm_option(), "llm": config_module.llm_option(),
    }
    seen = set()
    for cls in stage_configs():
        for field in dataclasses.fields(cls):
            if field.name in SHARED:
                assert dict(field.metadata) == dict(declared[field.name].metadata), (cls.__name__, field.name)
                assert field.default == declared[field.name].default
                seen.add(field.name)
    assert seen == set(SHARED)


def test_shared_options_work_in_hf_argument_parser():
    from transformers import HfArgumentParser

    from ex2.core.config import data_root_option, dataset_option, llm_option, split_option, vlm_option

    @dataclass
    class Options:
        dataset: str = dataset_option()
        data_root: str | None = data_root_option()
        split: str | None = split_option()
        vlm: str = vlm_option()
        llm: str = llm_option()
        output: str = option("runs/x", "run folder", short="-o")

    (parsed,) = HfArgumentParser(Options).parse_args_into_dataclasses(
        ["--dataset", "pets", "--data-root", "/data/pets", "-o", "out"])
    assert (parsed.dataset, parsed.data_root, parsed.split, parsed.vlm, parsed.output) == (
        "pets", "/data/pets", None, "conse", "out")
    assert parse_config(Options, ["-o", "o2"], prog="t").output == "o2"


def test_every_stage_config_reads_name_colon_root(tmp_path):
    from ex2.data import load_dataset
    from ex2.inspect.stage import InspectConfig
    from ex2.train.stage import TrainConfig

    tree = tmp_path / "tree"
    for cls in ("a", "b"):
        (tree / cls).mkdir(parents=True)
        PIL.Image.new("RGB", (4, 4)).save(tree / cls / "0.png")
    spec = f"imagefolder:{tree}"
    for cls in stage_configs():
        config = parse_config(cls, ["--dataset", spec], prog="t")
        assert (config.dataset, config.data_root) == ("imagefolder", str(tree)), cls.__name__
    train = TrainConfig(dataset=spec)  # train reads it when it loads the dataset
    assert load_dataset(train.dataset, train.data_root, train.split).classnames == ["a", "b"]
    assert InspectConfig(input="d.jsonl", dataset=spec).dataset == "imagefolder"  # a label: the name alone


def test_a_root_given_twice_is_a_command_line_error(tmp_path, capsys):
    for cls in stage_configs():
        with pytest.raises(SystemExit):
            parse_config(cls, ["--dataset", f"pets:{tmp_path / 'a'}", "--data-root", str(tmp_path / "b")], prog="t")
        err = capsys.readouterr().err
        assert str(tmp_path / "a") in err and str(tmp_path / "b") in err
