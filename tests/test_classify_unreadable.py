"""Classify numbers that would be wrong without a word: a link back into the dataset tree, a class
whose images are all unreadable, skipped images; on crafted ImageFolders and the tiny open_clip."""

from __future__ import annotations

import json

import torch
from test_classify import folder  # noqa: F401  (ImageFolder of colour classes, one corrupt file)

from ex2.classify.common import drop_classes
from ex2.cli import main
from ex2.data import load_dataset


def test_a_link_back_into_the_tree_is_no_class(folder, tmp_path, capsys):  # noqa: F811
    (folder / "again").symlink_to(".", target_is_directory=True)
    (folder / "leaf copy").symlink_to(folder / "green leaf", target_is_directory=True)
    elsewhere = tmp_path / "elsewhere" / "grass"
    elsewhere.mkdir(parents=True)
    (elsewhere / "0.png").write_bytes((folder / "green leaf" / "0.png").read_bytes())
    (folder / "grass").symlink_to(elsewhere, target_is_directory=True)  # a class kept outside: counted
    dataset = load_dataset("imagefolder", folder, "test")
    assert dataset.classnames == ["blue sky", "grass", "green leaf", "red apple"]
    assert len(dataset) == 11 and len({p.resolve() for p, _ in dataset.items}) == 11
    printed = capsys.readouterr().out
    assert f"skipping {folder / 'again'}" in printed and f"skipping {folder / 'leaf copy'}" in printed


def test_dropped_classes_renumber_labels_and_texts(folder):  # noqa: F811
    dataset = load_dataset("imagefolder", folder, "test")
    texts = [[["b"], ["g"], ["r"]], [["b2"], ["g2"], ["r2"]]]
    smaller, kept, labels = drop_classes(dataset, texts, torch.tensor([0, 2, 2]), [1])
    assert smaller.classnames == ["blue sky", "red apple"] and kept == [[["b"], ["r"]], [["b2"], ["r2"]]]
    assert labels.tolist() == [0, 1, 1] and {y for _, y in smaller.items} == {0, 1}
    assert len(smaller) == len(dataset) - 3 and len(dataset.classnames) == 3  # the original is untouched


def test_a_class_without_a_readable_image_stops_the_run_or_is_dropped_on_request(
        folder, open_clip_dir, tmp_cache, tmp_path, capsys):  # noqa: F811
    (folder / "again").symlink_to(".", target_is_directory=True)
    (folder / "grey stone").mkdir()
    for name in ("0.png", "1.png"):
        (folder / "grey stone" / name).write_bytes(b"not a png either")
    out = tmp_path / "run"
    argv = ["classify", "--dataset", "imagefolder", "--data-root", str(folder), "--vlm", f"local-dir:{open_clip_dir}",
            "--no-progress", "--method", "clip", "--output", str(out)]
    capsys.readouterr()
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert "'grey stone'" in error and "--drop-unreadable-classes" in error and not out.exists()
    assert main([*argv, "--drop-unreadable-classes"]) == 0
    printed = capsys.readouterr().out
    assert "dropped 1 class(es) without a readable image: 'grey stone'" in printed
    assert f"3 image(s) skipped as unreadable (see {out / 'skipped_images.csv'})" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_classes"] == 3 and metrics["n_images"] == 9 and metrics["n_skipped_images"] == 3
    assert metrics["dropped_classes"] == ["grey stone"] and metrics["acc5"] == 1.0
    assert "grey stone" not in (out / "per_class.csv").read_text()


def _unreadable_class(root, count: int = 3) -> None:
    (root / "grey stone").mkdir()
    for i in range(count):
        (root / "grey stone" / f"{i}.png").write_bytes(b"not a png either")


def test_coder_refuses_a_class_without_a_readable_image(folder, open_clip_dir, tmp_cache, tmp_path, capsys):  # noqa: F811
    from ex2.core.io import write_jsonl

    _unreadable_class(folder)
    knowledge = write_jsonl(tmp_path / "k.jsonl", [{"concept": "blue sky", "kind": "attributes", "text": "blue"}])
    out = tmp_path / "run"
    assert main(["classify", "--dataset", "imagefolder", "--data-root", str(folder), "--vlm",
                 f"local-dir:{open_clip_dir}", "--no-progress", "--method", "coder", "--knowledge", str(knowledge),
                 "--kinds", "attributes", "--output", str(out)]) == 1
    assert "no readable image in 1 class(es): 'grey stone'" in capsys.readouterr().err and not out.exists()


def test_probe_refuses_a_class_without_a_readable_image(folder, open_clip_dir, tmp_cache, tmp_path, capsys):  # noqa: F811
    _unreadable_class(folder)
    out = tmp_path / "run"
    assert main(["probe", "--dataset", "imagefolder", "--data-root", str(folder), "--vlm",
                 f"local-dir:{open_clip_dir}", "--output", str(out)]) == 1
    assert "'grey stone'" in capsys.readouterr().err and not out.exists()


def test_generative_classify_refuses_a_class_without_a_readable_image(folder, tmp_path):  # noqa: F811
    import pytest
    from test_gvlm import ScriptedVLM

    from ex2.classify import generative
    from ex2.classify.stage import ClassifyConfig

    _unreadable_class(folder)
    out = tmp_path / "open"
    config = ClassifyConfig(vlm="gen:org/model", method="open", output=str(out), progress=False)
    with pytest.raises(ValueError, match="no readable image in 1 class"):
        generative.run(config, ScriptedVLM(["A red thing."]), load_dataset("imagefolder", str(folder)))
    assert not out.exists()


def test_a_refused_probe_into_a_finished_run_leaves_its_config(folder, open_clip_dir, tmp_cache, tmp_path, capsys):  # noqa: F811
    (folder / "blue sky" / "broken.png").unlink()  # every class's held-out part readable
    out = tmp_path / "run"
    argv = ["probe", "--dataset", "imagefolder", "--data-root", str(folder), "--vlm", f"local-dir:{open_clip_dir}",
            "--output", str(out)]
    assert main(argv) == 0
    before = (out / "config.yaml").read_bytes()
    _unreadable_class(folder)  # the rerun is refused after its images are read
    assert main([*argv, "--seed", "3"]) == 1
    assert (out / "config.yaml").read_bytes() == before
