"""ex2.data: the datasets DCLIP, CuPL and WaffleCLIP evaluate on, each on a tiny fake tree in its
real layout; class names checked against the methods' own files where those are at hand."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_data import image, rel, write

from ex2.data import DATASETS, KNOWN_CLASSNAMES, DatasetError, concept_names, load_dataset
from ex2.data.benchmarks import imagenet_classnames, imagenet_wnids

ROOT = Path(__file__).resolve().parents[1]


def reference(relative: str) -> Path:
    """A file of the methods' public releases (EX2_REFERENCE_DIR); skip when it is not here."""
    folder = Path(os.environ.get("EX2_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))
    path = folder / relative
    if not path.is_file():
        pytest.skip(f"{path} is absent (set EX2_REFERENCE_DIR to the folder of reference files)")
    return path


def reference_keys(relative: str) -> list[str]:
    return list(json.loads(reference(relative).read_text(encoding="utf-8")))


# --- ImageNet and ImageNetV2 ----------------------------------------------------------------


def test_imagenet_wnids_and_names_are_the_standard_1000():
    wnids, names = imagenet_wnids(), imagenet_classnames()
    assert len(wnids) == 1000 == len(names) and wnids == sorted(wnids)
    assert (wnids[0], names[0]) == ("n01440764", "tench")
    assert (wnids[207], names[207]) == ("n02099601", "Golden Retriever")
    assert (wnids[999], names[999]) == ("n15075141", "toilet paper")
    assert concept_names("imagenet") == names


def test_imagenet_names_match_dclip_but_for_its_renames():
    dclip = reference_keys("dclip/descriptors_imagenet.json")  # DCLIP's keys are in class order
    differ = {
        i: (ours, theirs)
        for i, (ours, theirs) in enumerate(zip(imagenet_classnames(), dclip, strict=True))
        if ours != theirs
    }
    assert len(dclip) == 1000
    assert differ == {
        27: ("newt", "eft"),
        638: ("tights", "maillot"),
        744: ("missile", "projectile"),
        836: ("sunglasses", "sunglass"),
    }


def test_imagenet_synset_folders_any_subset_in_standard_order(tmp_path):
    base = tmp_path / "imagenet"
    for wnid in ("n02099601", "n01440764", "n15075141"):  # golden retriever, tench, toilet paper
        image(base / "val" / wnid / f"ILSVRC2012_val_{wnid}.JPEG")
    image(base / "train" / "n01440764" / "n01440764_1.JPEG")
    image(base / "train" / "n01440764" / "n01440764_2.JPEG")
    image(base / "train" / ".cache" / "x.JPEG")  # hidden folders are no class
    val = load_dataset("imagenet", tmp_path)  # the parent of imagenet/ works too
    assert val.split == "val" and val.classnames == ["tench", "Golden Retriever", "toilet paper"]
    assert rel(val, base / "val") == [
        ("n01440764/ILSVRC2012_val_n01440764.JPEG", 0),
        ("n02099601/ILSVRC2012_val_n02099601.JPEG", 1),
        ("n15075141/ILSVRC2012_val_n15075141.JPEG", 2),
    ]
    train = load_dataset("imagenet", base, "train")
    assert train.classnames == ["tench"] and len(train) == 2


def test_imagenet_errors_name_the_layout(tmp_path):
    image(tmp_path / "val" / "n99999999" / "a.JPEG")
    image(tmp_path / "val" / "n01440764" / "a.JPEG")
    with pytest.raises(DatasetError, match=r"folder\(s\) n99999999 that are no ImageNet class"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(DatasetError, match=r"has no train; expected the ILSVRC2012 layout"):
        load_dataset("imagenet", tmp_path, "train")


def test_imagenetv2_index_folders(tmp_path):
    base = tmp_path / "imagenetv2-matched-frequency-format-val"
    image(base / "207" / "b.jpeg")
    image(base / "0" / "a.jpeg")
    image(base / "10" / "c.jpeg")
    ds = load_dataset("imagenetv2", tmp_path)
    assert ds.split == "test" and ds.root == base
    assert ds.classnames == ["tench", imagenet_classnames()[10], "Golden Retriever"]  # numeric order
    assert rel(ds, base) == [("0/a.jpeg", 0), ("10/c.jpeg", 1), ("207/b.jpeg", 2)]
    image(base / "1000" / "x.jpeg")
    with pytest.raises(DatasetError, match=r"folder\(s\) 1000 that are no ImageNet class"):
        load_dataset("imagenetv2", base)
    with pytest.raises(DatasetError, match=r"no class-index folders 0..999; expected the ImageNetV2 layout"):
        load_dataset("imagenetv2", tmp_path / "nothing")


# --- Food-101 -------------------------------------------------------------------------------


def make_food101(root: Path) -> Path:
    base = root / "food-101"
    write(base / "meta" / "classes.txt", "apple_pie\nbaby_back_ribs\nhot_dog\n")
    write(base / "meta" / "train.txt", "apple_pie/1005649\nbaby_back_ribs/2\nhot_dog/3\n")
    write(base / "meta" / "test.txt", "hot_dog/30\napple_pie/10\nbaby_back_ribs/20\nhot_dog/4\n")
    for rel_path in ("apple_pie/1005649", "baby_back_ribs/2", "hot_dog/3", "hot_dog/30", "apple_pie/10"):
        image(base / "images" / f"{rel_path}.jpg")
    image(base / "images" / "baby_back_ribs/20.jpg")
    image(base / "images" / "hot_dog/4.jpg")
    return base


def test_food101_official_layout(tmp_path):
    base = make_food101(tmp_path)
    test = load_dataset("food101", tmp_path)
    assert test.split == "test" and test.classnames == ["apple pie", "baby back ribs", "hot dog"]
    assert rel(test, base / "images") == [
        ("apple_pie/10.jpg", 0),
        ("baby_back_ribs/20.jpg", 1),
        ("hot_dog/30.jpg", 2),
        ("hot_dog/4.jpg", 2),
    ]
    assert len(load_dataset("food101", base, "train")) == 3
    write(base / "meta" / "test.txt", "pizza/1\n")
    with pytest.raises(DatasetError, match=r"test.txt entry pizza/1 names no class in meta/classes.txt"):
        load_dataset("food101", base)


# --- DTD, EuroSAT, Places365 ------------------------------------------------------------------


def test_dtd_official_layout(tmp_path):
    base = tmp_path / "dtd"  # torchvision's root/dtd/dtd works too: the parent of this folder
    for name in ("banded/banded_0002.jpg", "banded/banded_0004.jpg", "zigzagged/zigzagged_0001.jpg"):
        image(base / "images" / name)
    write(base / "labels" / "test1.txt", "zigzagged/zigzagged_0001.jpg\nbanded/banded_0002.jpg\n")
    write(base / "labels" / "train1.txt", "banded/banded_0004.jpg\nzigzagged/zigzagged_0001.jpg\n")
    test = load_dataset("dtd", tmp_path)
    assert test.split == "test" and test.classnames == ["banded", "zigzagged"]
    assert rel(test, base / "images") == [("banded/banded_0002.jpg", 0), ("zigzagged/zigzagged_0001.jpg", 1)]
    assert len(load_dataset("dtd", base, "train")) == 2
    with pytest.raises(DatasetError, match=r"val1.txt does not exist"):
        load_dataset("dtd", base, "val")
    write(base / "labels" / "test1.txt", "dotted/dotted_0001.jpg\n")
    with pytest.raises(DatasetError, match=r"test1.txt entry dotted/dotted_0001.jpg names no folder"):
        load_dataset("dtd", base)


EUROSAT_FOLDERS = [
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
]


def test_eurosat_torchvision_layout_and_split(tmp_path):
    base = tmp_path / "eurosat" / "2750"
    for folder in EUROSAT_FOLDERS:
        for i in range(1, 7):
            image(base / folder / f"{folder}_{i}.jpg")
    test = load_dataset("eurosat", tmp_path)
    assert test.root == base and test.classnames[:3] == [
        "annual crop land",
        "forest",
        "brushland or shrubland",
    ]
    assert test.classnames[-1] == "lake or sea" and len(test.classnames) == 10
    assert rel(test, base)[:2] == [("AnnualCrop/AnnualCrop_1.jpg", 0), ("AnnualCrop/AnnualCrop_6.jpg", 0)]
    train = load_dataset("eurosat", base, "train")
    assert (
        len(test) == 20 and len(train) == 40 and not {p for p, _ in test.items} & {p for p, _ in train.items}
    )
    assert len(load_dataset("eurosat", base, "all")) == 60
    image(base / "Glacier" / "x.jpg")
    with pytest.raises(DatasetError, match=r"folder\(s\) Glacier that are no EuroSAT class"):
        load_dataset("eurosat", base)
    with pytest.raises(DatasetError, match=r"no class folders such as AnnualCrop/; expected the EuroSAT"):
        load_dataset("eurosat", tmp_path / "empty")


CATEGORIES = "/a/airfield 0\n/a/apartment_building/outdoor 1\n/b/bakery/shop 2\n"


def test_places365_torchvision_layout(tmp_path):
    base = tmp_path / "places365"
    write(base / "categories_places365.txt", CATEGORIES)
    write(
        base / "places365_val.txt",
        "Places365_val_00000002.jpg 2\nPlaces365_val_00000001.jpg 0\nPlaces365_val_00000003.jpg 1\n",
    )
    write(
        base / "places365_train_standard.txt",
        "/a/airfield/00000001.jpg 0\n/b/bakery/shop/00000001.jpg 2\n/a/apartment_building/outdoor/00000001.jpg 1\n",
    )
    for n in (1, 2, 3):
        image(base / "val_256" / f"Places365_val_0000000{n}.jpg")
    for folder in ("a/airfield", "b/bakery/shop", "a/apartment_building/outdoor"):
        image(base / "data_256_standard" / folder / "00000001.jpg")
    val = load_dataset("places365", tmp_path)
    assert val.split == "val" and val.classnames == ["airfield", "apartment building outdoor", "bakery shop"]
    assert rel(val, base / "val_256") == [
        ("Places365_val_00000001.jpg", 0),
        ("Places365_val_00000003.jpg", 1),
        ("Places365_val_00000002.jpg", 2),
    ]
    assert rel(load_dataset("places365", base, "train"), base / "data_256_standard")[2] == (
        "b/bakery/shop/00000001.jpg",
        2,
    )
    write(base / "places365_val.txt", "Places365_val_00000001.jpg 365\n")
    with pytest.raises(DatasetError, match=r"line 'Places365_val_00000001.jpg 365' names no class"):
        load_dataset("places365", base)


def test_places365_easy_format(tmp_path):
    base = tmp_path / "places365_standard"
    write(base / "categories_places365.txt", CATEGORIES)
    write(
        base / "val.txt", "val/bakery-shop/b.jpg\nval/airfield/a.jpg\nval/apartment_building-outdoor/c.jpg\n"
    )
    write(
        base / "train.txt", "/a/airfield/1.jpg\n/b/bakery/shop/2.jpg\n/a/apartment_building/outdoor/3.jpg\n"
    )
    for name in ("bakery-shop/b.jpg", "airfield/a.jpg", "apartment_building-outdoor/c.jpg"):
        image(base / "val" / name)
    for name in ("a/airfield/1.jpg", "b/bakery/shop/2.jpg", "a/apartment_building/outdoor/3.jpg"):
        image(base / "train" / name)
    val = load_dataset("places365", tmp_path)
    assert val.root == base and val.classnames == ["airfield", "apartment building outdoor", "bakery shop"]
    assert rel(val, base) == [
        ("val/airfield/a.jpg", 0),
        ("val/apartment_building-outdoor/c.jpg", 1),
        ("val/bakery-shop/b.jpg", 2),
    ]
    assert [label for _, label in load_dataset("places365", base, "train").items] == [0, 1, 2]
    write(base / "val.txt", "val/cave/x.jpg\n")
    with pytest.raises(DatasetError, match=r"val.txt: line 'val/cave/x.jpg' names no class"):
        load_dataset("places365", base)


# --- FGVC-Aircraft families -----------------------------------------------------------------


def make_aircraft(root: Path) -> Path:
    data = root / "fgvc-aircraft-2013b" / "data"
    write(data / "variants.txt", "707-320\nA300B4\nA310\n")
    write(data / "families.txt", "Boeing 707\nA300\nA310\n")
    write(data / "images_variant_test.txt", "1 707-320\n2 A300B4\n3 A310\n4 A300B4\n")
    write(data / "images_family_test.txt", "1 Boeing 707\n2 A300\n3 A310\n4 A300\n")
    write(data / "images_family_trainval.txt", "5 A310\n6 Boeing 707\n7 A300\n")
    for n in range(1, 8):
        image(data / "images" / f"{n}.jpg")
    return data


def test_aircraft_family_level(tmp_path):
    data = make_aircraft(tmp_path)
    family = load_dataset("aircraft_family", tmp_path)
    assert family.classnames == ["Boeing 707", "A300", "A310"]  # families.txt order, as written
    assert rel(family, data / "images") == [("1.jpg", 0), ("2.jpg", 1), ("4.jpg", 1), ("3.jpg", 2)]
    assert len(load_dataset("aircraft_family", tmp_path, "trainval")) == 3
    variant = load_dataset("aircraft", tmp_path)  # the variant level is unchanged
    assert variant.classnames == ["707-320 aircraft", "A300B4 aircraft", "A310 aircraft"]
    write(data / "images_family_test.txt", "1 Boeing 777\n")
    with pytest.raises(
        DatasetError, match=r"aircraft_family: family 'Boeing 777' of image 1 is not in families.txt"
    ):
        load_dataset("aircraft_family", tmp_path)


def test_aircraft_family_names_are_waffleclips_as_written(tmp_path):
    keys = reference_keys("waffleclip/descriptors_fgvcaircraft.json")  # families.txt order
    assert len(keys) == 70 and "BAE 146" in keys and "F/A-18" in keys
    data = tmp_path / "data"
    write(data / "families.txt", "".join(f"{k}\n" for k in keys))
    write(data / "images_family_test.txt", "".join(f"{i} {k}\n" for i, k in enumerate(keys)))
    for i in range(70):
        image(data / "images" / f"{i}.jpg")
    assert load_dataset("aircraft_family", tmp_path).classnames == keys


# --- Flowers102 names -----------------------------------------------------------------------


def test_flowers102_names_against_ex2_and_cupl():
    """One set of 102 classes, named alike by EX2 and CuPL but for a few spellings."""
    ours = concept_names("flowers102")
    ex2 = json.loads(reference("ex2-paper/flowers_class_names.json").read_text(encoding="utf-8"))
    cupl = reference_keys("cupl/flower_prompts_base.json")
    assert {i: (a, b) for i, (a, b) in enumerate(zip(ours, ex2, strict=True)) if a != b} == {
        40: ("barberton daisy", "barbeton daisy")
    }
    assert {i: (a, b) for i, (a, b) in enumerate(zip(ours, cupl, strict=True)) if a != b} == {
        15: ("globe-flower", "globe flower"),
        40: ("barberton daisy", "barbeton daisy"),
        59: ("pink-yellow dahlia", "pink and yellow dahlia"),
        92: ("ball moss", "air plant"),
    }


# --- registry ---------------------------------------------------------------------------------


def test_new_datasets_are_registered_with_one_line_docs():
    new = {"imagenet", "imagenetv2", "food101", "aircraft_family", "dtd", "eurosat", "places365"}
    assert new <= set(DATASETS)
    assert {"imagenet", "imagenetv2", "eurosat"} <= set(KNOWN_CLASSNAMES)
    for name in new:
        assert len(DATASETS[name].__doc__.strip().splitlines()) == 1, name
        with pytest.raises(DatasetError, match=rf"^{name}: no root given; pass the folder holding"):
            load_dataset(name)
