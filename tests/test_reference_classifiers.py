"""DCLIP, CuPL and WaffleCLIP on their own files: ``ex2 classify`` against the peers' real artifacts.

The files live outside the project, in ``$EX2_REFERENCE_DIR`` (default: ``shared/reference``
beside the checkout, or beside the main checkout when this is a git worktree); every test here
skips, saying why, when they are absent. Each test builds a fake copy of the dataset in its
official layout with the real class names (one tiny image a class), runs ``ex2 classify`` with a
tiny random-init open_clip model and checks what the method made of the file: every class
matched, the texts by the authors' rule, CuPL's repeats counted, WaffleCLIP's draws. The last
tests check each method's class scores against a direct computation on random tensors.
"""

from __future__ import annotations

import io
import json
import os
import re
import statistics
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import scipy.io
import torch

from ex2.classify import zeroshot
from ex2.classify.common import evaluate
from ex2.classify.metrics import summarise
from ex2.classify.stage import ClassifyConfig
from ex2.cli import main
from ex2.data import DATASETS, flowers102_classnames

REPO = Path(__file__).resolve().parents[1]


def _main_checkout(repo: Path) -> Path:
    """The main checkout of a git worktree (whose ``.git`` is a file naming its git dir); else ``repo``."""
    dot_git = repo / ".git"
    if not dot_git.is_file():
        return repo
    gitdir = Path(dot_git.read_text().split(":", 1)[1].strip())
    common = gitdir / "commondir"
    return (gitdir / common.read_text().strip()).resolve().parent if common.is_file() else repo


def reference_dir() -> Path:
    if os.environ.get("EX2_REFERENCE_DIR"):
        return Path(os.environ["EX2_REFERENCE_DIR"])
    for checkout in (REPO, _main_checkout(REPO)):
        if (checkout.parent / "shared" / "reference").is_dir():
            return checkout.parent / "shared" / "reference"
    return REPO.parent / "shared" / "reference"


def reference(relative: str) -> Path:
    path = reference_dir() / relative
    if not path.is_file():
        pytest.skip(f"reference file {path} is not here (set EX2_REFERENCE_DIR to the folder of the peers' files)")
    return path


def keys_of(relative: str) -> dict[str, list[str]]:
    return json.loads(reference(relative).read_text(encoding="utf-8"))


def needs_dataset(name: str) -> None:
    if name not in DATASETS:
        pytest.skip(f"ex2 has no {name!r} dataset in this checkout")


# --- fake dataset trees in the official layouts, one tiny image a class ---------------------------

JPEG = io.BytesIO()
PIL.Image.new("RGB", (8, 8), (120, 60, 30)).save(JPEG, "JPEG")


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(JPEG.getvalue())


def make_cub(root: Path, names: list[str]) -> Path:
    """CUB_200_2011 with the real folder names (``001.Black_footed_Albatross``)."""
    base = root / "CUB_200_2011"
    folders = [f"{i:03d}." + re.sub(r"[ -]", "_", name) for i, name in enumerate(names, start=1)]
    files = [f"{folder}/img.jpg" for folder in folders]
    base.mkdir(parents=True)
    (base / "classes.txt").write_text("".join(f"{i} {f}\n" for i, f in enumerate(folders, start=1)))
    (base / "images.txt").write_text("".join(f"{i} {f}\n" for i, f in enumerate(files, start=1)))
    (base / "image_class_labels.txt").write_text("".join(f"{i} {i}\n" for i in range(1, len(files) + 1)))
    (base / "train_test_split.txt").write_text("".join(f"{i} 0\n" for i in range(1, len(files) + 1)))
    for f in files:
        image(base / "images" / f)
    return base


def make_flowers102(root: Path) -> Path:
    base = root / "flowers-102"
    base.mkdir(parents=True)
    ids = np.arange(1, 103)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": ids})
    scipy.io.savemat(base / "setid.mat", {"trnid": ids, "valid": ids, "tstid": ids})
    for i in ids:
        image(base / "jpg" / f"image_{i:05d}.jpg")
    return base


def make_cars(root: Path, names: list[str]) -> Path:
    """torchvision's Stanford Cars layout; ``cars_meta.mat`` names end with the year."""
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    scipy.io.savemat(base / "devkit/cars_meta.mat", {"class_names": np.array(names, dtype=object)})
    annotations = np.zeros(len(names), dtype=[("fname", object), ("class", object)])
    annotations[:] = [(f"{i:05d}.jpg", i) for i in range(1, len(names) + 1)]
    scipy.io.savemat(base / "cars_test_annos_withlabels.mat", {"annotations": annotations})
    for i in range(1, len(names) + 1):
        image(base / "cars_test" / f"{i:05d}.jpg")
    return base


def make_imagenet(root: Path, wnids: list[str]) -> Path:
    for wnid in wnids:
        image(root / "val" / wnid / "ILSVRC2012_val_1.JPEG")
    return root


def make_food101(root: Path, folders: list[str]) -> Path:
    base = root / "food-101"
    (base / "meta").mkdir(parents=True)
    (base / "meta/classes.txt").write_text("".join(f"{f}\n" for f in folders))
    (base / "meta/test.txt").write_text("".join(f"{f}/1\n" for f in folders))
    (base / "meta/train.txt").write_text("".join(f"{f}/2\n" for f in folders))
    for f in folders:
        image(base / "images" / f / "1.jpg")
        image(base / "images" / f / "2.jpg")
    return base


def make_aircraft_family(root: Path, families: list[str]) -> Path:
    base = root / "fgvc-aircraft-2013b"
    (base / "data").mkdir(parents=True)
    (base / "data/families.txt").write_text("".join(f"{f}\n" for f in families))
    (base / "data/variants.txt").write_text("".join(f"{f} v\n" for f in families))
    for split in ("train", "val", "trainval", "test"):
        lines = "".join(f"{1000000 + i} {f}\n" for i, f in enumerate(families))
        (base / "data" / f"images_family_{split}.txt").write_text(lines)
        variant_lines = "".join(f"{1000000 + i} {f} v\n" for i, f in enumerate(families))
        (base / "data" / f"images_variant_{split}.txt").write_text(variant_lines)
    for i in range(len(families)):
        image(base / "data/images" / f"{1000000 + i}.jpg")
    return base


@pytest.fixture
def classify(open_clip_dir, tmp_cache, tmp_path, capsys):  # noqa: F811
    """Run ``ex2 classify`` on a dataset copy; (metrics, class texts, what it printed)."""

    def run(dataset: str, root: Path, method: str, descriptions: Path, *extra: str):
        out = tmp_path / f"run-{method}-{len(list(tmp_path.glob('run-*')))}"
        argv = ["classify", "--dataset", dataset, "--data-root", str(root), "--vlm", f"local-dir:{open_clip_dir}",
                "--no-progress", "--method", method, "--descriptions", str(descriptions), "--output", str(out), *extra]
        code = main(argv)
        printed = capsys.readouterr()
        assert code == 0, printed.err
        metrics = json.loads((out / "metrics.json").read_text())
        texts = json.loads((out / "class_texts.json").read_text())
        return metrics, texts, printed.out

    return run


# --- DCLIP: "{class}, which (is/has) {descriptor}" on the raw descriptor -------------------------


def dclip_rule(key: str, descriptor: str, after: str = "") -> str:
    """DCLIP's string, written out independently: the first matching prefix picks the verb."""
    verbs = [(("a",), "which is "), (("has", "often", "typically", "may", "can"), "which "), (("used",), "which is ")]
    verb = next((v for prefixes, v in verbs if any(descriptor[: len(p)] == p for p in prefixes)), "which has ")
    return key.replace("_", " ") + ", " + verb + descriptor + after


def check_dclip_texts(texts: dict, keys: dict, classnames: list[str], after: str = "") -> None:
    """A dozen classes spread over the dataset carry exactly DCLIP's strings (class = the file's key)."""
    pairs = list(zip(classnames, keys.items(), strict=False))
    for name, (key, descriptors) in pairs[:: max(1, len(pairs) // 12)]:
        assert texts[name] == [dclip_rule(key, d, after) for d in (descriptors or [""])]


def test_dclip_cub_matches_every_class_and_writes_dclip_strings(tmp_path, classify):
    keys = keys_of("dclip/descriptors_cub.json")
    names = json.loads(reference("ex2-paper/cub_class_names.json").read_text())
    root = make_cub(tmp_path / "data", names)
    metrics, texts, printed = classify("cub", root, "dclip", reference("dclip/descriptors_cub.json"))
    assert metrics["class_match"] == {"matched_classes": 200, "unused_keys": 0, "by_position": True,
                                      "named_otherwise": 0}
    assert "classes_without_descriptions" not in metrics
    assert texts["Black footed Albatross"][:3] == [  # by hand from the file's first class
        "Black-footed Albatross, which is a seabird",
        "Black-footed Albatross, which has black and white",
        "Black-footed Albatross, which is a long, hooked bill",
    ]
    check_dclip_texts(texts, keys, list(texts))
    assert sum(len(t) for t in texts.values()) == sum(len(v) for v in keys.values())
    assert "matched by position, as DCLIP does" in printed


def test_dclip_imagenet_ends_every_text_with_a_period(tmp_path, classify):
    needs_dataset("imagenet")
    from ex2.data.benchmarks import imagenet_wnids

    keys = keys_of("dclip/descriptors_imagenet.json")
    root = make_imagenet(tmp_path / "imagenet", imagenet_wnids())
    metrics, texts, printed = classify("imagenet", root, "dclip", reference("dclip/descriptors_imagenet.json"))
    assert metrics["class_match"]["matched_classes"] == 1000 and metrics["class_match"]["unused_keys"] == 0
    assert metrics["class_match"]["by_position"] is True
    assert texts["tench"][0] == "tench, which is a freshwater fish."  # by hand
    gong = [t for t in texts["gong"] if "struck" in t]
    assert gong == ["gong, which has is struck with a mallet to produce a deep, resonant sound."]
    check_dclip_texts(texts, keys, list(texts), after=".")
    assert all(t.endswith(".") for class_texts in texts.values() for t in class_texts)
    assert metrics["dclip"]["suffix"] == "."


def test_dclip_imagenet_subset_uses_the_dataset_classes_and_reports_unused_keys(tmp_path, classify):
    needs_dataset("imagenet")
    from ex2.data.benchmarks import imagenet_classnames, imagenet_wnids

    wanted = list(range(0, 1000, 97))  # 11 classes, none of the four DCLIP names otherwise
    root = make_imagenet(tmp_path / "imagenet", [imagenet_wnids()[i] for i in wanted])
    metrics, texts, printed = classify("imagenet", root, "dclip", reference("dclip/descriptors_imagenet.json"))
    assert metrics["class_match"] == {"matched_classes": 11, "unused_keys": 989, "by_position": False,
                                      "named_otherwise": 0}
    assert list(texts) == [imagenet_classnames()[i] for i in wanted]
    assert "989 of 1000 keys name no class of this dataset and are unused" in printed
    keys = keys_of("dclip/descriptors_imagenet.json")
    assert texts["tench"] == [dclip_rule("tench", d, ".") for d in keys["tench"]]


def test_dclip_food101_scores_empty_lists_with_the_empty_descriptor(tmp_path, classify):
    needs_dataset("food101")
    keys = keys_of("dclip/descriptors_food101.json")
    root = make_food101(tmp_path / "data", [k.replace(" ", "_") for k in keys])
    metrics, texts, printed = classify("food101", root, "dclip", reference("dclip/descriptors_food101.json"))
    assert metrics["class_match"]["matched_classes"] == 101 and metrics["class_match"]["unused_keys"] == 0
    assert texts["donuts"] == ["donuts, which has "]  # DCLIP gives an empty list one empty descriptor
    assert metrics["dclip"]["classes_with_empty_list"] == 5
    check_dclip_texts(texts, keys, list(texts))


# --- CuPL: every prompt, repeats counted --------------------------------------------------------


def test_cupl_flowers_counts_repeated_prompts_and_pools_with_templates(tmp_path, classify):
    prompts = keys_of("cupl/flower_prompts_base.json")
    root = make_flowers102(tmp_path / "data")
    metrics, texts, printed = classify("flowers102", root, "cupl", reference("cupl/flower_prompts_base.json"))
    assert metrics["class_match"] == {"matched_classes": 102, "unused_keys": 0, "by_position": True,
                                      "named_otherwise": 3}  # "barbeton daisy", "pink and yellow dahlia", "air plant"
    assert metrics["aggregate"] == "mean_embedding"
    by_position = dict(zip(flowers102_classnames(), prompts.values(), strict=True))
    assert texts == by_position  # every prompt, in the file's order, repeats kept
    repeats = sum(len(v) - len(set(v)) for v in prompts.values())
    assert repeats > 0 and metrics["cupl"]["repeated_prompts"] == repeats
    assert metrics["cupl"]["prompts"] == sum(len(v) for v in prompts.values())
    both, texts, _ = classify("flowers102", root, "cupl", reference("cupl/flower_prompts_base.json"),
                              "--cupl-mode", "both")
    name, first_key = flowers102_classnames()[0], next(iter(prompts))
    assert len(texts[name]) == 80 + len(prompts[first_key])
    assert texts[name][0] == f"a bad photo of a {first_key}." and texts[name][80:] == prompts[first_key]
    assert both["cupl"]["n_templates"] == 80


def test_cupl_bird_file_is_birdsnap_and_covers_part_of_cub(tmp_path, classify):
    """CuPL's bird prompts are Birdsnap's 500 species; CUB's classes among them match by name."""
    prompts = keys_of("cupl/bird_prompts_base.json")
    names = json.loads(reference("ex2-paper/cub_class_names.json").read_text())
    root = make_cub(tmp_path / "data", names)
    metrics, texts, printed = classify("cub", root, "cupl", reference("cupl/bird_prompts_base.json"),
                                       "--allow-missing")
    matched = metrics["class_match"]["matched_classes"]
    assert matched == 138 and metrics["class_match"]["unused_keys"] == 500 - 138
    assert len(metrics["classes_without_descriptions"]) == 62
    normalised = {zeroshot.normalise_name(k): v for k, v in prompts.items()}
    for name, class_texts in texts.items():
        expected = normalised.get(zeroshot.normalise_name(name), [name])
        assert class_texts == expected  # repeats kept


# --- WaffleCLIP: its alphabet, its shape, its draws ---------------------------------------------


def waffle_shape(keys: list[str]) -> tuple[int, int, int, int]:
    """WaffleCLIP's sizes written out independently: (words, word length, groups, group length)."""
    words = max(round(statistics.mean(len(k.replace("_", " ").split(" ")) for k in keys)), 1)
    length = round(statistics.mean(statistics.mean(map(len, k.replace("_", " ").split(" "))) for k in keys))
    groups = round(statistics.mean(k.count(" ") for k in keys)) + 1
    chars = -(-sum(max(map(len, k.split(" "))) for k in keys) // len(keys))  # ceil of the mean
    chars += groups - chars % groups
    return words, length, groups, chars // groups


def joins(text: str, entries: set[str], n: int) -> bool:
    """``text`` is ``n`` entries of ``entries`` joined by single spaces (entries may hold spaces)."""
    if n == 1:
        return text in entries
    return any(text[i] == " " and text[:i] in entries and joins(text[i + 1 :], entries, n - 1)
               for i in range(len(text)))


def check_waffle_texts(texts: dict, keys: dict[str, list[str]], key: str, first_two: tuple[str, str]) -> None:
    """Seed 0's texts: 15 pairs of a word and a character descriptor of WaffleCLIP's alphabet and
    shape, shared by all classes; ``key``'s first pair as WaffleCLIP's own code draws it."""
    words, length, groups, group_length = waffle_shape(list(keys))
    alphabet = set("".join(t for v in keys.values() for t in v)) - set(" ,.")
    word_list = reference("waffleclip/word_list.txt").read_text(encoding="utf-8").split("\n")[:-1]
    cut = {w[:length] for w in word_list}
    shared = None
    for class_texts, file_key in zip(texts.values(), keys, strict=True):
        head = f"A photo of a {file_key.replace('_', ' ')}, "
        assert len(class_texts) == 30 and all(t.startswith(head) and t.endswith(".") for t in class_texts)
        descriptors = [re.sub(r"^which (is |has )?", "", t.removeprefix(head)[:-1]) for t in class_texts]
        assert shared is None or descriptors == shared  # one random set for all classes
        shared = descriptors
    for chars in shared[1::2]:
        parts = chars.split(", ")
        assert len(parts) == groups and all(len(p) == group_length and set(p) <= alphabet for p in parts), chars
    assert all(joins(drawn, cut, words) for drawn in shared[0::2])
    name = list(texts)[list(keys).index(key)]
    assert tuple(texts[name][:2]) == first_two


def test_waffleclip_cars_draws_its_texts(tmp_path, classify):
    keys = keys_of("waffleclip/descriptors_cars.json")
    names = json.loads(reference("ex2-paper/stanford_cars_class_names.json").read_text())
    root = make_cars(tmp_path / "data", [re.sub(r"^(\d{4}) (.*)$", r"\2 \1", n) for n in names])  # year last
    metrics, texts, printed = classify("cars", root, "waffle", reference("waffleclip/descriptors_cars.json"),
                                       "--waffle-words", str(reference("waffleclip/word_list.txt")),
                                       "--waffle-seeds", "2")
    assert metrics["class_match"]["matched_classes"] == 196 and metrics["class_match"]["unused_keys"] == 0
    assert metrics["waffle"]["generator"] == "waffleclip" and metrics["waffle"]["seeds"] == [0, 1]
    assert len(metrics["per_seed"]) == 2 and ClassifyConfig(method="waffle").waffle_seeds == 7  # WaffleCLIP's 7
    assert metrics["acc1_std"] == pytest.approx(float(np.std([s["acc1"] for s in metrics["per_seed"]])))
    # seed 0 as WaffleCLIP's waffle_tools.py draws it (its code run on these files)
    check_waffle_texts(texts, keys, "Acura Integra Type R 2001", (
        "A photo of a Acura Integra Type R 2001, which has wear can gondo only.",
        "A photo of a Acura Integra Type R 2001, which has NFN, h)b, 2z9, HCi."))


def test_waffleclip_aircraft_families_with_concept_guidance(tmp_path, classify):
    needs_dataset("aircraft_family")
    keys = keys_of("waffleclip/descriptors_fgvcaircraft.json")
    root = make_aircraft_family(tmp_path / "data", list(keys))
    metrics, texts, printed = classify(
        "aircraft_family", root, "waffle", reference("waffleclip/descriptors_fgvcaircraft.json"),
        "--waffle-words", str(reference("waffleclip/word_list.txt")), "--waffle-seeds", "2")
    assert metrics["class_match"]["matched_classes"] == 70 and metrics["class_match"]["unused_keys"] == 0
    check_waffle_texts(texts, keys, "A380", ("A photo of a A380, which has conne.", "A photo of a A380, which has vR”MLHt."))
    _, guided, _ = classify(
        "aircraft_family", root, "waffle", reference("waffleclip/descriptors_fgvcaircraft.json"),
        "--waffle-words", str(reference("waffleclip/word_list.txt")), "--waffle-seeds", "1",
        "--waffle-concept", "aircraft")
    name = list(texts)[list(keys).index("A380")]
    assert guided[name][0] == "A photo of a aircraft: a A380, which has conne."


# --- class scores against a direct computation --------------------------------------------------


def _bank(texts: list[list[str]], dim: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    distinct = list(dict.fromkeys(t for class_texts in texts for t in class_texts))
    vectors = torch.nn.functional.normalize(torch.randn(len(distinct), dim, generator=generator), dim=-1)
    return dict(zip(distinct, vectors, strict=True))


def _direct(images: torch.Tensor, texts: list[list[str]], bank: dict, merged: bool) -> torch.Tensor:
    """Cosine scores by loops in float64: mean over texts, or against the renormalised mean."""
    scores = torch.zeros(len(images), len(texts), dtype=torch.float64)
    for c, class_texts in enumerate(texts):
        rows = torch.stack([bank[t] for t in class_texts]).double()
        if merged:
            mean = rows.mean(0)
            scores[:, c] = images.double() @ (mean / mean.norm())
        else:
            scores[:, c] = (images.double() @ rows.T).mean(1)
    return scores


def _score(texts: list[list[list[str]]], aggregate: str, images: torch.Tensor, bank: dict):
    encode = lambda batch: torch.stack([bank[t] for t in batch])  # noqa: E731
    labels = torch.arange(len(images)) % len(texts[0])
    return evaluate(encode, texts, images, labels, aggregate, logit_scale=1.0)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(1)), dim=-1)


def test_clip_and_cupl_scores_are_the_cosine_to_the_renormalised_mean(images):
    clip = zeroshot.template_texts(["cat", "dog", "emu"], ["a photo of a {}.", "art of a {}."])
    cupl = zeroshot.cupl_texts(["cat", "dog", "emu"], [["fur", "fur", "whiskers"], ["barks"], ["tall", "tall"]],
                               ["a photo of a {}."])
    assert cupl[0] == ["a photo of a cat.", "fur", "fur", "whiskers"]  # repeats stay, so weigh twice
    for texts in (clip, cupl):
        bank = _bank(texts)
        (result,) = _score([texts], "mean_embedding", images, bank)
        assert torch.allclose(result.logits.double(), _direct(images, texts, bank, merged=True), atol=1e-6)
    repeated = _direct(images, cupl, bank, merged=True)
    once = _direct(images, [list(dict.fromkeys(t)) for t in cupl], bank, merged=True)
    assert not torch.allclose(repeated[:, 0], once[:, 0], atol=1e-4)  # the repeat changes the class score


def test_dclip_and_ex2_scores_are_the_mean_cosine_over_descriptors(images):
    dclip = zeroshot.dclip_texts(["cat", "dog"], [["whiskers", "a tail"], []], ".")
    assert dclip == [["cat, which has whiskers.", "cat, which is a tail."], ["dog, which has ."]]
    ex2 = [["It purrs.", "It has whiskers."], ["It barks."]]
    for texts in (dclip, ex2):
        bank = _bank(texts)
        (result,) = _score([texts], "mean_score", images, bank)
        assert torch.allclose(result.logits.double(), _direct(images, texts, bank, merged=False), atol=1e-6)


def test_waffle_scores_per_seed_and_their_mean_and_population_spread(images):
    keys = ["red fox", "grey wolf", "snow_owl"]
    words = ["", "amber", "basalt", "cedar", "dune"]
    sets = []
    for seed in range(3):
        shared, drawn_for = zeroshot.waffleclip_texts(keys, ["Ab, c.", "xyz"], words, 2, seed)
        sets.append(zeroshot.waffleclip_class_texts(shared, drawn_for, [k.replace("_", " ") for k in keys]))
    bank = _bank([t for texts in sets for t in texts])
    results = _score(sets, "mean_score", images, bank)
    labels = torch.arange(len(images)) % 3
    accs = []
    for texts, result in zip(sets, results, strict=True):
        direct = _direct(images, texts, bank, merged=False)
        assert torch.allclose(result.logits.double(), direct, atol=1e-6)
        accs.append((direct.argmax(1) == labels).double().mean().item())
    summary = summarise(results)
    assert summary["acc1"] == pytest.approx(np.mean(accs)) and summary["acc1_std"] == pytest.approx(np.std(accs))
    _, _, groups, group_length = waffle_shape(keys)
    assert (groups, group_length) == (2, 3)  # 2/3 spaces a key rounds to 1; longest words 3, 4, 8: ceil 5, raised to 6
    for texts in sets:
        chars = [t.split("which has ")[-1].rstrip(".") for t in texts[0][1::2]]
        assert all(re.fullmatch(r"[Abcxyz]{3}, [Abcxyz]{3}", c) for c in chars), chars
        assert texts[1] == [t.replace("red fox", "grey wolf") for t in texts[0]]


def test_match_classes_by_name_position_and_clash():
    names = ["crane", "Black footed Albatross", "crane", "sea lion"]
    by_name = zeroshot.match_classes(names, ["sea_lion", "black-footed albatross", "crane", "zebra"])
    assert by_name.keys_of == ((), (1,), (2,), (0,)) and by_name.unused == (3,) and not by_name.by_position
    # a clash goes by the key's position when that is one of the classes, else the first free one
    assert zeroshot.match_classes(names, ["x", "y", "crane"]).keys_of[2] == (2,)
    assert zeroshot.match_classes(names, ["crane", "CRANE"]).keys_of[0::2] == ((0,), (1,))
    in_order = zeroshot.match_classes(names, ["crane", "Black-footed albatross", "crane bird", "otter"], True)
    assert in_order.by_position and in_order.keys_of == ((0,), (1,), (2,), (3,))
    shuffled = zeroshot.match_classes(names, ["sea lion", "x", "y", "crane"], True)
    assert not shuffled.by_position and shuffled.keys_of[3] == (0,)
