"""The classification methods' registry: one module per method, its options, checks and run; the
command line built from the shared options plus the chosen method's."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from test_gvlm import ScriptedVLM

from ex2.classify.methods import METHODS, all_methods, option_groups
from ex2.classify.methods.base import Method
from ex2.classify.options import OptionGroup, SharedOptions
from ex2.classify.stage import GROUPS, ClassifyConfig, parse_args, run
from ex2.cli import main
from ex2.core.config import config_to_dict, option

CLASSIFY = Path(__file__).resolve().parents[1] / "ex2" / "classify"


def test_every_registered_method_declares_its_options_and_run():
    methods = all_methods()
    assert [m.name for m in methods] == list(METHODS)
    assert {"clip", "dclip", "cupl", "ex2", "waffle", "coder", "open", "closed", "likelihood"} <= set(METHODS)
    for method in methods:
        assert isinstance(method, Method) and callable(method.run) and callable(method.check) and method.summary
        for group in method.options:
            assert issubclass(group, OptionGroup) and dataclasses.is_dataclass(group), group
            assert all(f.metadata.get("help") for f in dataclasses.fields(group)), group
    assert [m.name for m in methods if m.needs_gvlm] == ["open", "closed", "likelihood"]


def test_the_config_is_the_shared_options_plus_every_group_each_field_once():
    names = [f.name for f in dataclasses.fields(ClassifyConfig)]
    assert len(names) == len(set(names))
    assert names[:len(dataclasses.fields(SharedOptions))] == [f.name for f in dataclasses.fields(SharedOptions)]
    assert set(names) == {f.name for g in GROUPS for f in dataclasses.fields(g)}
    assert {"classnames", "synonyms", "waffle_kind", "knowledge", "n_choices"} <= set(names)


def test_two_groups_declaring_one_option_are_refused():
    @dataclasses.dataclass
    class Clash(OptionGroup):
        """Clash"""

        seed: int = option(1, "a second seed")

    clash = Method("clash", "a clash", (Clash,), run=lambda config, vlm, dataset: Path())
    with pytest.raises(TypeError, match="'seed' is declared by both SharedOptions and Clash"):
        option_groups([clash], SharedOptions)


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


@pytest.mark.parametrize("path", [*sorted((CLASSIFY / "methods").glob("*.py")), CLASSIFY / "coder.py",
                                  CLASSIFY / "generative.py", CLASSIFY / "common.py", CLASSIFY / "metrics.py",
                                  CLASSIFY.parent / "probe" / "stage.py"], ids=lambda p: p.name)
def test_nothing_below_the_dispatcher_imports_it(path):
    assert "ex2.classify.stage" not in imports_of(path)


def test_help_groups_the_options_by_method(capsys):
    with pytest.raises(SystemExit):
        main(["classify", "--help"])
    every = capsys.readouterr().out
    for title in ("Options of every method", "WaffleCLIP options (waffle)", "CoDer options (coder)",
                  "Answer options (open, closed)", "Likelihood options (likelihood)"):
        assert title in every
    assert "--waffle-kind" in every and "--knowledge" in every and "likelihood " in every  # the methods listed
    with pytest.raises(SystemExit):
        main(["classify", "--method", "waffle", "--help"])
    waffle = capsys.readouterr().out
    assert "WaffleCLIP options (waffle)" in waffle and "--waffle-kind" in waffle and "--dataset" in waffle
    assert "--knowledge" not in waffle and "CoDer options" not in waffle


def test_a_flag_of_another_method_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        main(["classify", "--method", "clip", "--waffle-kind", "words", "--output", str(out)])
    err = capsys.readouterr().err
    assert "--waffle-kind is an option of --method waffle, not of --method clip" in err and not out.exists()
    with pytest.raises(SystemExit):
        main(["classify", "--method", "dclip", "--descriptions", "d.json", "--no-calibrate"])
    assert "--no-calibrate is an option of --method likelihood" in capsys.readouterr().err
    # the method may come from the YAML file; its own flags are then accepted
    path = tmp_path / "waffle.yaml"
    path.write_text("method: waffle\nwaffle_seeds: 2\n")
    config = parse_args(["--config", str(path), "--waffle-kind", "words"])
    assert (config.method, config.waffle_seeds, config.waffle_kind) == ("waffle", 2, "words")


def test_a_saved_config_with_every_option_parses_back(tmp_path):
    config = ClassifyConfig(method="ex2", descriptions="d.jsonl", categories=["visual"], seed=3)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    assert parse_args(["--config", str(path)]) == config


def test_classnames_and_synonyms_are_two_options(tmp_path):
    names = tmp_path / "names.txt"
    config = parse_args(["--vlm", "gen:org/model", "--method", "open", "--classnames", str(names),
                         "--synonyms", str(tmp_path / "synonyms.txt")])
    assert config.classnames == str(names) and config.synonyms == str(tmp_path / "synonyms.txt")


def test_open_names_classes_from_the_class_name_file_and_counts_synonyms(shared_cache, tmp_path):
    from ex2.data import SAMPLE_CONCEPTS

    renamed = [f"thing {i}" for i in range(len(SAMPLE_CONCEPTS))]
    renamed[0] = "tabby"
    (tmp_path / "names.txt").write_text("\n".join(renamed) + "\n")
    (tmp_path / "synonyms.txt").write_text("tabby, kitten\n")
    config = ClassifyConfig(vlm="gen:org/model", method="open", classnames=str(tmp_path / "names.txt"),
                            synonyms=str(tmp_path / "synonyms.txt"), output=str(tmp_path / "open"), progress=False)
    metrics = json.loads((run(config, ScriptedVLM(["A kitten on a rug."])) / "metrics.json").read_text())
    assert metrics["acc1"] == pytest.approx(10 / 80)  # the ten images of the first class, named by a synonym
    assert metrics["synonyms"] == str(tmp_path / "synonyms.txt")
    records = [json.loads(line) for line in (tmp_path / "open" / "answers.jsonl").read_text().splitlines()]
    assert records[0]["label"] == "tabby" and records[0]["named"] == ["tabby"]


@pytest.mark.parametrize("argv", [["classify", "--vlm", "gen:org/model", "--method", "open"],
                                  ["classify", "--vlm", "gen:org/model", "--method", "likelihood"],
                                  ["probe", "--vlm", "gen:org/model"]])
def test_generative_runs_and_probes_check_their_output_before_a_model_loads(argv, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file\n")
    assert main([*argv, "--output", str(taken)]) == 1
    assert f"--output {taken} is an existing file; expected a folder" in capsys.readouterr().err
    assert taken.read_text() == "a file\n"
