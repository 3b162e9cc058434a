"""CoDer's own files read as data: its template.py (checked against the file's own functions, run
here from ``$EX2_REFERENCE_DIR/coder`` only to compare), its class lists, its CODER* gaps, its released
knowledge (pickles through the data-only unpickler), and ``ex2 classify --method coder --coder-dir``."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
from test_classify import folder  # noqa: F401  (ImageFolder of colour classes)
from test_reference_classifiers import reference

from ex2.classify.coder import coder_texts
from ex2.classify.coder_files import (
    CoderFileError,
    load_data_pickle,
    read_class_names,
    read_knowledge,
    read_templates,
    read_thresholds,
)
from ex2.cli import main

DATASETS = ("oxford-pet", "DTD", "food-101", "eurosat", "ImageNet", "ImageNet-V2", "caltech-101", "CUB200",
            "oxford_flowers", "Aircraft", "places-365")


def their_get_templates():
    """template.py's own get_templates, loaded from the reference copy to compare against."""
    path = reference("coder/template.py")
    spec = importlib.util.spec_from_file_location("coder_reference_template", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_templates


@pytest.mark.parametrize("task_type", ["zero-shot", "few-shot"])
@pytest.mark.parametrize("dataset", DATASETS)
def test_templates_read_as_data_equal_the_files_own_function(dataset, task_type):
    get_templates = their_get_templates()
    ours = read_templates(reference("coder/template.py"), dataset, task_type)
    c, a, b = "CLASS_x", "FEATURE {y}", "OTHER"
    assert [t.format(c=c) for t in ours.name] == get_templates(dataset, "name", class_name=c)
    assert [t.format(c=c, a=a) for t in ours.attribute] == get_templates(
        dataset, "att", class_name=c, att=a, task_type=task_type)
    assert [t.format(c=c, a=a) for t in ours.analogous] == get_templates(
        dataset, "ana", class_name=c, ana=a, task_type=task_type)
    own = "ImageNet" if dataset == "ImageNet-V2" else dataset  # CODER.py asks ovo templates of ImageNet
    assert [t.format(c=c, a=a, b=b) for t in ours.ovo] == get_templates(
        own, "ovo", class_name=c, ovo=a, other_class_name=b)


def test_synonym_texts_as_their_code_makes_them():
    get_templates = their_get_templates()
    templates = read_templates(reference("coder/template.py"), "DTD")
    knowledge = {"synonyms": {"banded": ["striped"]}}
    texts = coder_texts(["banded"], knowledge, templates, ["synonyms"], synonyms_as_run=True)
    # CODER.py calls get_templates(dataset, 'syno', synonym): the synonym lands in class_name
    assert texts.per_class(1)[0][1:] == get_templates("DTD", "syno", "striped")
    filled = coder_texts(["banded"], knowledge, templates, ["synonyms"])
    assert filled.per_class(1)[0][1:] == [templates.name[0].format(c="striped")]


def test_templates_refuse_code(tmp_path):
    path = tmp_path / "template.py"
    path.write_text("def get_name_templates(dataset, class_name):\n"
                    "    if __import__('os').getcwd():\n        templates = ['x']\n    return templates\n")
    with pytest.raises(CoderFileError, match="line 2: a condition"):
        read_templates(path, "DTD")
    path.write_text("def get_name_templates(dataset, class_name):\n    templates = [open('x').read()]\n")
    with pytest.raises(CoderFileError, match="line 2: a template other than text"):
        read_templates(path, "DTD")


def test_their_class_lists_read_as_coder_reads_them():
    lists = reference("coder/class_name/oxford-pet.txt").parent
    pets = read_class_names(lists, "oxford-pet")
    assert len(pets) == 37 and all(name == name.strip() and name for name in pets)
    assert len(read_class_names(lists, "ImageNet-V2")) == 1000  # ImageNet-V2 reads ImageNet's list


def test_thresholds_from_get_thres(tmp_path):
    (tmp_path / "utils.py").write_text("import torch\n\ndef get_thres(dataset):\n"
                                       "    thres_dict = {'DTD': 0.6, 'ImageNet': 0.1}\n    return thres_dict[dataset]\n")
    assert read_thresholds(tmp_path / "utils.py") == {"DTD": 0.6, "ImageNet": 0.1}
    (tmp_path / "other.py").write_text("x = 1\n")
    with pytest.raises(CoderFileError, match="no get_thres"):
        read_thresholds(tmp_path / "other.py")


# --- knowledge files -------------------------------------------------------------------------------


def write_knowledge(root: Path, dataset: str, classes: list[str]) -> Path:
    """An expert_knowledge folder in CoDer's layout: per-class lists in class_name order."""
    for sub in ("attribute", "simile_class", "synonym", "ovo_attribute"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    with open(root / "attribute" / f"{dataset}.pkl", "wb") as handle:
        pickle.dump([[f"{c} colour", f"{c} colour"] for c in classes], handle)  # a repeat counts twice
    with open(root / "simile_class" / f"{dataset}.pkl", "wb") as handle:
        pickle.dump([[f"a {c} picture"] for c in classes], handle)
    (root / "synonym" / f"{dataset}.json").write_text(json.dumps([{"syno": [f"{c} tone"]} for c in classes]))
    (root / "ovo_attribute" / f"{dataset}.json").write_text(json.dumps(
        {a: {b: ["hue"] for b in classes if b != a} for a in classes}))
    return root


def test_released_knowledge_reads_by_position(tmp_path):
    classes = ["banded", "blotchy", "braided"]
    root = write_knowledge(tmp_path / "expert_knowledge", "DTD", classes)
    knowledge = read_knowledge(root, "DTD", ["Banded", "Blotchy", "Braided"])  # by position, not by name
    assert knowledge["attributes"]["Blotchy"] == ["blotchy colour", "blotchy colour"]
    assert knowledge["synonyms"]["Braided"] == ["braided tone"] and knowledge["ovo"]["banded", "braided"] == ["hue"]
    with pytest.raises(CoderFileError, match="list of 2 lists"):
        read_knowledge(root, "DTD", ["a", "b"], ("attributes",))
    with pytest.raises(FileNotFoundError, match="attribute/ImageNet.pkl"):
        read_knowledge(root, "ImageNet-V2", classes, ("attributes",))


class Payload:
    """Pickles as a call to os.system: what a hostile pickle would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_never_runs_code(tmp_path):
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(pickle.dumps([["fine"], Payload(marker)]))
    with pytest.raises(CoderFileError, match="refused (posix|nt|os).system"):
        load_data_pickle(hostile)
    assert not marker.exists()
    sets = tmp_path / "set.pkl"
    sets.write_bytes(pickle.dumps([{"a", "b"}], protocol=4))  # built without any global, still not admitted
    with pytest.raises(CoderFileError, match="holds a set"):
        load_data_pickle(sets)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps([["a", 1, 2.5], {"k": ["v"]}]))
    assert load_data_pickle(plain) == [["a", 1, 2.5], {"k": ["v"]}]


# --- a clone through the CLI -------------------------------------------------------------------------


def fake_clone(root: Path, classes: list[str]) -> Path:
    """A CoDer clone's layout: its real template.py, a get_thres table, a class list, knowledge."""
    (root / "CODER").mkdir(parents=True)
    shutil.copy(reference("coder/template.py"), root / "CODER" / "template.py")
    (root / "utils.py").write_text("def get_thres(dataset):\n    thres_dict = {'DTD': 0.6}\n"
                                   "    return thres_dict[dataset]\n")
    (root / "datasets" / "class_name").mkdir(parents=True)
    (root / "datasets" / "class_name" / "DTD.txt").write_text("\n".join(classes))
    write_knowledge(root / "expert_knowledge", "DTD", classes)
    (root / "configs").mkdir()
    (root / "configs" / "dtd.yaml").write_text("init_beta: 3.0\ninit_alpha: 1.5\ndataset: 'DTD'\nshots: 1\n")
    return root


def test_classify_with_a_coder_clone(folder, open_clip_dir, tmp_cache, tmp_path):  # noqa: F811
    clone = fake_clone(tmp_path / "CODER", ["blue sky", "green leaf", "red_apple"])  # the folder's class order
    base = ["classify", "--dataset", "imagefolder", "--data-root", str(folder), "--vlm", f"local-dir:{open_clip_dir}",
            "--no-progress", "--method", "coder", "--coder-dir", str(clone), "--coder-dataset", "DTD"]
    assert main([*base, "--coder-star", "--output", str(tmp_path / "star")]) == 0
    metrics = json.loads((tmp_path / "star" / "metrics.json").read_text())
    assert "template.py (DTD)" in metrics["templates"] and metrics["kinds"] == ["attributes", "analogous", "synonyms"]
    assert metrics["rerank"]["ovo_gap"] == 0.6 and metrics["rerank"]["gap_from"] == "CoDer utils.py"
    assert metrics["rerank"]["pairs"] == 6
    texts = json.loads((tmp_path / "star" / "class_texts.json").read_text())
    assert texts["red apple"][:2] == [
        read_templates(clone / "CODER" / "template.py", "DTD").attribute[0].format(c="red_apple", a="red_apple colour")
    ] * 2  # attribute texts keep CoDer's raw name and every repeat
    assert main([*base, "--shots", "1", "--val-shots", "1", "--augment-views", "1",
                 "--output", str(tmp_path / "few")]) == 0
    few = json.loads((tmp_path / "few" / "metrics.json").read_text())
    assert few["kinds"] == ["attributes", "analogous"] and "synonyms" not in few["texts_per_kind"]
    published = few["few_shot"]["as_published"]
    assert (published["init_alpha"], published["init_beta"]) == (1.5, 3.0) and "test set" in published["chosen_on"]
    assert published["acc1_max_with_init"] == max(published["acc1_init"], few["acc1"])
    with pytest.raises(SystemExit):  # a config error, before anything loads
        main([*base, "--coder-star", "--ovo-gap", "0.2", "--output", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
