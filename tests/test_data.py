"""ex2.data: every loader on a tiny fake tree in its real layout, the sampler, and image loading."""

from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import scipy.io

from ex2.core.names import DatasetNameError
from ex2.data import (
    DATASETS,
    DatasetError,
    ImageError,
    concept_names,
    load_dataset,
    load_image,
    sample_per_class,
)
from ex2.data import samples as samples_module
from ex2.data.fine_grained import flowers102_classnames


def image(path: Path, color=(200, 30, 30), size=(4, 4)) -> Path:
    """A tiny RGB image file; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.new("RGB", size, color).save(path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def rel(ds, root: Path) -> list[tuple[str, int]]:
    return [(p.relative_to(root).as_posix(), label) for p, label in ds.items]


# --- EX2's six datasets, official layouts -------------------------------------------------


def make_cub(root: Path) -> Path:
    base = root / "CUB_200_2011"
    files = [
        "001.Black_footed_Albatross/a.jpg",
        "001.Black_footed_Albatross/b.jpg",
        "002.Laysan_Albatross/c.jpg",
        "002.Laysan_Albatross/d.jpg",
    ]
    write(base / "images.txt", "".join(f"{i} {f}\n" for i, f in enumerate(files, start=1)))
    write(base / "classes.txt", "2 002.Laysan_Albatross\n1 001.Black_footed_Albatross\n")
    write(base / "image_class_labels.txt", "1 1\n2 1\n3 2\n4 2\n")
    write(base / "train_test_split.txt", "1 1\n2 0\n3 0\n4 1\n")
    for f in files:
        image(base / "images" / f)
    return base


def test_cub_official_layout(tmp_path):
    base = make_cub(tmp_path)
    test = load_dataset("cub", tmp_path)  # the parent of CUB_200_2011/ works too
    assert test.split == "test" and test.root == base
    assert test.classnames == ["Black footed Albatross", "Laysan Albatross"]
    assert rel(test, base / "images") == [
        ("001.Black_footed_Albatross/b.jpg", 0),
        ("002.Laysan_Albatross/c.jpg", 1),
    ]
    train = load_dataset("cub", base, "train")
    assert rel(train, base / "images") == [
        ("001.Black_footed_Albatross/a.jpg", 0),
        ("002.Laysan_Albatross/d.jpg", 1),
    ]
    assert len(train) == 2 and train.paths_of(1) == [base / "images/002.Laysan_Albatross/d.jpg"]


def make_pets(root: Path) -> Path:
    base = root / "oxford-iiit-pet"
    write(
        base / "annotations/trainval.txt",
        "#Image CLASS-ID SPECIES BREED ID\nAbyssinian_1 1 1 1\namerican_bulldog_10 2 2 1\n",
    )
    write(
        base / "annotations/test.txt",
        "american_bulldog_2 2 2 1\nAbyssinian_5 1 1 1\namerican_bulldog_1 2 2 1\n",
    )
    for name in (
        "Abyssinian_1",
        "Abyssinian_5",
        "american_bulldog_1",
        "american_bulldog_2",
        "american_bulldog_10",
    ):
        image(base / "images" / f"{name}.jpg")
    return base


def test_pets_official_layout(tmp_path):
    base = make_pets(tmp_path)
    test = load_dataset("pets", tmp_path)
    assert test.classnames == ["Abyssinian", "american bulldog"]
    assert rel(test, base / "images") == [
        ("Abyssinian_5.jpg", 0),
        ("american_bulldog_1.jpg", 1),
        ("american_bulldog_2.jpg", 1),
    ]
    assert len(load_dataset("pets", base, "trainval")) == 2


def test_pets_missing_root_names_the_layout(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("pets", tmp_path / "x" / "y")
    assert str(err.value) == (
        f"pets: {tmp_path / 'x' / 'y'} has no annotations/test.txt; expected the Oxford-IIIT Pets "
        "layout: images/*.jpg, annotations/{trainval,test}.txt"
    )


def test_flowers102_from_mat_files(tmp_path):
    base = tmp_path / "flowers-102"
    # image i (1-based) has label (i - 1) % 102 + 1; ids 1..102 train, 103..204 val, 205..306 test
    labels = np.array([(i - 1) % 102 + 1 for i in range(1, 307)])
    base.mkdir()
    scipy.io.savemat(base / "imagelabels.mat", {"labels": labels})
    ids = np.arange(1, 307)
    scipy.io.savemat(
        base / "setid.mat", {"trnid": ids[:102], "valid": ids[102:204], "tstid": ids[204:][::-1]}
    )
    jpeg = io.BytesIO()
    PIL.Image.new("RGB", (4, 4)).save(jpeg, "JPEG")
    (base / "jpg").mkdir()
    for i in ids:
        (base / "jpg" / f"image_{i:05d}.jpg").write_bytes(jpeg.getvalue())
    test = load_dataset("flowers102", tmp_path)
    assert test.classnames == flowers102_classnames() and len(test.classnames) == 102
    assert test.classnames[:2] == ["pink primrose", "hard-leaved pocket orchid"]
    assert len(test) == 102 and test.items[0] == (base / "jpg/image_00205.jpg", 0)
    assert test.items[-1] == (base / "jpg/image_00306.jpg", 101)
    assert load_dataset("flowers102", base, "val").items[5] == (base / "jpg/image_00108.jpg", 5)


def test_cars_torchvision_layout(tmp_path):
    base = tmp_path / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = np.array(["AM General Hummer SUV 2000", "Acura RL Sedan 2012"], dtype=object)
    scipy.io.savemat(base / "devkit/cars_meta.mat", {"class_names": names})
    annotations = np.zeros(3, dtype=[("fname", object), ("class", object)])
    annotations[:] = [("00003.jpg", 2), ("00001.jpg", 1), ("00002.jpg", 2)]
    scipy.io.savemat(base / "cars_test_annos_withlabels.mat", {"annotations": annotations})
    scipy.io.savemat(base / "devkit/cars_train_annos.mat", {"annotations": annotations[:2]})
    for name in ("00001.jpg", "00002.jpg", "00003.jpg"):
        image(base / "cars_test" / name)
        image(base / "cars_train" / name)
    test = load_dataset("cars", tmp_path)
    assert test.classnames == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]
    assert rel(test, base) == [
        ("cars_test/00001.jpg", 0),
        ("cars_test/00002.jpg", 1),
        ("cars_test/00003.jpg", 1),
    ]
    assert rel(load_dataset("cars", base, "train"), base) == [
        ("cars_train/00001.jpg", 0),
        ("cars_train/00003.jpg", 1),
    ]


def make_dogs(root: Path) -> Path:
    folders = [
        "n02085620-Chihuahua",
        "n02099601-golden_retriever",
        "n02110958-pug",
        "n02116738-African_hunting_dog",
    ]
    for folder in folders:
        for n in (1, 2):
            image(root / "Images" / folder / f"{folder.split('-')[0]}_{n}.jpg")
    files = np.array([f"{f}/{f.split('-')[0]}_1.jpg" for f in folders], dtype=object)
    (root / "lists").mkdir()
    scipy.io.savemat(root / "lists/test_list.mat", {"file_list": files, "labels": np.arange(1, 5)})
    write(root / "lists/train_list.txt", "".join(f"{f.replace('_1.jpg', '_2.jpg')}\n" for f in files))
    return root


def test_dogs_official_layout(tmp_path):
    make_dogs(tmp_path)
    test = load_dataset("dogs", tmp_path)
    assert test.classnames == ["Chihuahua dog", "golden retriever dog", "pug dog", "African hunting dog"]
    assert rel(test, tmp_path / "Images")[0] == ("n02085620-Chihuahua/n02085620_1.jpg", 0)
    assert [label for _, label in test.items] == [0, 1, 2, 3]
    train = load_dataset("dogs", tmp_path, "train")  # from the text list
    assert rel(train, tmp_path / "Images")[3] == ("n02116738-African_hunting_dog/n02116738_2.jpg", 3)


def test_aircraft_official_layout(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    write(data / "variants.txt", "707-320\nA300B4\nF/A-18\n")
    write(data / "images_variant_test.txt", "1025794 707-320\n0056978 F/A-18\n0100000 A300B4\n")
    write(data / "images_variant_trainval.txt", "1000001 707-320\n1000002 A300B4\n1000003 F/A-18\n")
    for name in ("1025794", "0056978", "0100000", "1000001", "1000002", "1000003"):
        image(data / "images" / f"{name}.jpg")
    test = load_dataset("aircraft", tmp_path)
    assert test.classnames == ["707-320 aircraft", "A300B4 aircraft", "F/A-18 aircraft"]
    assert rel(test, data / "images") == [("1025794.jpg", 0), ("0100000.jpg", 1), ("0056978.jpg", 2)]
    assert len(load_dataset("aircraft", tmp_path, "trainval")) == 3
    with pytest.raises(DatasetError, match=r"images_variant_val.txt does not exist"):
        load_dataset("aircraft", tmp_path, "val")


# --- generic formats ----------------------------------------------------------------------


def test_imagefolder_with_and_without_split_folders(tmp_path):
    for cls in ("golden_retriever", "tabby"):
        image(tmp_path / "flat" / cls / "b.png")
        image(tmp_path / "flat" / cls / "nested" / "a.jpg")
        image(tmp_path / "split" / "val" / cls / "x.jpg")
    write(tmp_path / "flat" / "tabby" / "notes.txt", "not an image")
    flat = load_dataset("imagefolder", tmp_path / "flat")
    assert flat.classnames == ["golden retriever", "tabby"]
    assert rel(flat, tmp_path / "flat") == [
        ("golden_retriever/b.png", 0),
        ("golden_retriever/nested/a.jpg", 0),
        ("tabby/b.png", 1),
        ("tabby/nested/a.jpg", 1),
    ]
    assert len(load_dataset("imagefolder", tmp_path / "split", "val")) == 2
    with pytest.raises(DatasetError, match=r"split folder\(s\) val but no test/"):
        load_dataset("imagefolder", tmp_path / "split")


def test_empty_class_is_an_error_naming_it(tmp_path):
    image(tmp_path / "cat" / "a.jpg")
    (tmp_path / "dog").mkdir()
    with pytest.raises(DatasetError, match=r"1 class\(es\) without images: 'dog'"):
        load_dataset("imagefolder", tmp_path)


def test_csv_manifest(tmp_path):
    image(tmp_path / "imgs" / "1.png")
    image(tmp_path / "imgs" / "2.png")
    image(tmp_path / "3.png")
    manifest = write(
        tmp_path / "m.csv",
        "path,label,split\nimgs/2.png,sea_otter,test\nimgs/1.png,beaver,test\n3.png,sea_otter,train\n",
    )
    test = load_dataset("csv", manifest)
    assert test.classnames == ["beaver", "sea otter"]
    assert test.items == [(tmp_path / "imgs/1.png", 0), (tmp_path / "imgs/2.png", 1)]
    with pytest.raises(DatasetError, match="without images: 'beaver'"):  # class ids span all splits
        load_dataset("csv", manifest, "train")
    write(tmp_path / "bad.csv", "file,class\na.png,x\n")
    with pytest.raises(DatasetError, match=r"bad.csv lacks column\(s\) label, path"):
        load_dataset("csv", tmp_path / "bad.csv")


def test_csv_folder_of_split_files(tmp_path):
    image(tmp_path / "a.png")
    write(tmp_path / "test.csv", "path,label\na.png,otter\n")
    assert load_dataset("csv", tmp_path).items == [(tmp_path / "a.png", 0)]
    with pytest.raises(DatasetError, match=r"train.csv does not exist"):
        load_dataset("csv", tmp_path, "train")


def make_hf(root: Path):
    datasets = pytest.importorskip("datasets")
    pngs = [PIL.Image.new("RGB", (5, 5), (i * 40, 0, 0)) for i in range(4)]
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "label": datasets.ClassLabel(names=["sea_otter", "beaver"]),
            "note": datasets.Value("string"),
        }
    )
    data = {"img": pngs, "label": [1, 0, 1, 0], "note": ["a", "b", "c", "d"]}
    splits = datasets.DatasetDict(
        {
            "test": datasets.Dataset.from_dict(data, features=features),
            "train": datasets.Dataset.from_dict(data, features=features).select([0, 1]),
        }
    )
    splits.save_to_disk(str(root))
    return pngs


def test_hf_disk_materialises_images_once(tmp_path, tmp_cache):
    pngs = make_hf(tmp_path / "hf")
    ds = load_dataset("hf_disk", tmp_path / "hf")
    assert ds.classnames == ["sea otter", "beaver"] and len(ds) == 4
    assert [label for _, label in ds.items] == [0, 0, 1, 1]
    assert all(path.is_relative_to(tmp_cache / "datasets") and path.suffix == ".png" for path, _ in ds.items)
    assert np.array_equal(np.asarray(load_image(ds.paths_of(1)[0])), np.asarray(pngs[0]))  # row 0 is a beaver
    folders = list((tmp_cache / "datasets").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("hf-")  # no temp folder left behind
    again = load_dataset("hf_disk", tmp_path / "hf")
    assert again.items == ds.items and len(list((tmp_cache / "datasets").iterdir())) == 1
    with pytest.raises(DatasetError, match=r"no split 'val'; its splits are test, train"):
        load_dataset("hf_disk", tmp_path / "hf", "val")


# --- registry, errors, names ----------------------------------------------------------------


def test_registry_and_bad_names_or_splits(tmp_path):
    assert {
        "samples",
        "cub",
        "pets",
        "flowers102",
        "cars",
        "dogs",
        "aircraft",
        "imagefolder",
        "csv",
        "hf_disk",
    } <= set(DATASETS)
    for name, loader in DATASETS.items():
        assert loader.__doc__ and len(loader.__doc__.strip().splitlines()) == 1, name
    with pytest.raises(DatasetError, match=r"unknown dataset 'cifar10'; valid names: samples, cub"):
        load_dataset("cifar10")
    with pytest.raises(DatasetError, match=r"cub has no split 'val'; valid splits: test, train"):
        load_dataset("cub", tmp_path, "val")
    with pytest.raises(
        DatasetError, match=r"cub: no root given; pass the folder holding the CUB-200-2011 layout"
    ):
        load_dataset("cub")


def test_missing_listed_image_is_an_error(tmp_path):
    base = make_cub(tmp_path)
    (base / "images/002.Laysan_Albatross/c.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 listed image\(s\) missing, e.g. .*c.jpg"):
        load_dataset("cub", base)


def test_concept_names(tmp_path):
    assert concept_names("samples") == list(samples_module.SAMPLE_CONCEPTS)  # without building it
    assert len(concept_names("flowers102")) == 102
    make_cub(tmp_path)
    assert concept_names(f"cub:{tmp_path}") == ["Black footed Albatross", "Laysan Albatross"]
    assert concept_names(str(write(tmp_path / "c.txt", "# mine\nsea otter\n\nbeaver\n"))) == [
        "sea otter",
        "beaver",
    ]
    with pytest.raises(ValueError, match="listed twice: otter"):
        concept_names(str(write(tmp_path / "d.txt", "otter\notter\n")))
    with pytest.raises(ValueError, match="neither a concept file"):
        concept_names(str(tmp_path / "nope.txt"))


# --- sampler ---------------------------------------------------------------------------------


@pytest.fixture
def ten_per_class(tmp_path):
    for cls in ("a", "b"):
        for i in range(10):
            image(tmp_path / cls / f"{i:02d}.png")
    return load_dataset("imagefolder", tmp_path)


def test_sample_per_class_first_n_in_sorted_order(ten_per_class, tmp_path):
    chosen = sample_per_class(ten_per_class, 3)
    assert chosen == {
        0: [tmp_path / f"a/{i:02d}.png" for i in range(3)],
        1: [tmp_path / f"b/{i:02d}.png" for i in range(3)],
    }
    assert sample_per_class(ten_per_class, None)[1] == ten_per_class.paths_of(1)
    assert len(sample_per_class(ten_per_class, 50)[0]) == 10
    with pytest.raises(ValueError, match="at least 1"):
        sample_per_class(ten_per_class, 0)


def test_sample_per_class_seeded_is_deterministic(ten_per_class):
    first = sample_per_class(ten_per_class, 4, seed=7)
    assert first == sample_per_class(ten_per_class, 4, seed=7)
    assert all(len(paths) == 4 and paths == sorted(paths) for paths in first.values())
    assert {0: first[0], 1: first[1]} != sample_per_class(ten_per_class, 4, seed=8)
    assert first[0] != sample_per_class(ten_per_class, 4)[0]  # not just the first four


# --- images ----------------------------------------------------------------------------------


def test_image_modes_convert_to_rgb(tmp_path):
    PIL.Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    assert load_image(tmp_path / "cmyk.jpg").getpixel((0, 0)) == pytest.approx((255, 0, 0), abs=3)
    deep = PIL.Image.fromarray(np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16))
    deep.save(tmp_path / "deep.png")
    assert PIL.Image.open(tmp_path / "deep.png").mode == "I;16"
    rgb = load_image(tmp_path / "deep.png")
    assert rgb.mode == "RGB" and [rgb.getpixel(xy) for xy in ((0, 0), (1, 0), (0, 1), (1, 1))] == [
        (0, 0, 0),
        (100, 100, 100),
        (255, 255, 255),
        (200, 200, 200),
    ]
    rgba = PIL.Image.new("RGBA", (2, 1), (0, 0, 255, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))
    rgba.save(tmp_path / "rgba.png")
    assert list(load_image(tmp_path / "rgba.png").getdata()) == [(0, 0, 255), (255, 255, 255)]
    PIL.Image.new("LA", (1, 1), (0, 0)).save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").getpixel((0, 0)) == (255, 255, 255)


def test_palette_images_with_and_without_transparency(tmp_path):
    palette = PIL.Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png")
    assert list(load_image(tmp_path / "p.png").getdata()) == [(255, 0, 0), (0, 255, 0)]
    palette.save(tmp_path / "pt.png", transparency=1)
    assert list(load_image(tmp_path / "pt.png").getdata()) == [(255, 0, 0), (255, 255, 255)]
    palette.save(tmp_path / "pt.gif", transparency=0)
    assert list(load_image(tmp_path / "pt.gif").getdata()) == [(255, 255, 255), (0, 255, 0)]


def test_corrupt_and_truncated_images_are_skipped_or_strict(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    full = io.BytesIO()
    PIL.Image.effect_noise((64, 64), 50).convert("RGB").save(full, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    for name in ("junk.jpg", "cut.jpg"):
        with pytest.warns(UserWarning, match=f"skipping unreadable image .*{name}"):
            assert load_image(tmp_path / name) is None
        with pytest.raises(ImageError, match=f"{name}: cannot read the image"):
            load_image(tmp_path / name, strict=True)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "absent.png")


@pytest.mark.parametrize("pixels", [30 * 30, 12 * 12])  # over twice the limit (error), over it (warning)
def test_decompression_bombs_are_refused(tmp_path, monkeypatch, pixels):
    side = int(pixels**0.5)
    path = image(tmp_path / "bomb.png", size=(side, side))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a mere warning would let the image through
        before = list(warnings.filters)
        with pytest.raises(
            ImageError, match=r"bomb.png: refusing an image over PIL's decompression-bomb limit"
        ):
            load_image(path)
        assert warnings.filters == before


def test_images_load_from_threads_beside_a_bomb(tmp_path, monkeypatch):
    good = [image(tmp_path / f"{i}.png", color=(i, 0, 0)) for i in range(16)]
    bomb = image(tmp_path / "bomb.png", size=(30, 30))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)

    def load(path):
        try:
            return load_image(path, strict=True).getpixel((0, 0))
        except ImageError:
            return "refused"

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(load, [bomb, *good, bomb]))
    assert results == ["refused", *[(i, 0, 0) for i in range(16)], "refused"]


# --- the embedded samples -------------------------------------------------------------------


def test_augmented_views_are_deterministic_and_distinct():
    photo = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    views = [samples_module.augmented_view(photo, 3, view) for view in range(4)]
    assert all(v.size == (samples_module.SIZE, samples_module.SIZE) and v.mode == "RGB" for v in views)
    again = samples_module.augmented_view(photo, 3, 2)
    assert again.tobytes() == views[2].tobytes()
    assert len({v.tobytes() for v in views}) == 4
    assert samples_module.augmented_view(photo, 4, 2).tobytes() != views[2].tobytes()


@pytest.mark.slow
def test_samples_dataset_is_built_once(tmp_cache, monkeypatch):
    ds = load_dataset("samples")
    assert ds.classnames == [
        "cat",
        "espresso",
        "rocket",
        "tripod",
        "motorcycle",
        "helmet",
        "temple",
        "dahlia",
    ]
    assert ds.root == tmp_cache / "datasets" / "samples-v1"
    assert len(ds) == 80 and all(len(ds.paths_of(c)) == 10 for c in range(8))
    assert ds.paths_of(0)[0] == ds.root / "cat" / "00.png"
    first = load_image(ds.paths_of(0)[0], strict=True)
    assert first.size == (256, 256) and first.mode == "RGB"
    assert [p.name for p in (tmp_cache / "datasets").iterdir()] == ["samples-v1"]
    monkeypatch.setattr(samples_module, "_write_samples", lambda out: pytest.fail("rebuilt"))
    assert load_dataset("samples").items == ds.items


# --- NAME:ROOT ---------------------------------------------------------------------------------


def tiny_tree(root: Path) -> Path:
    for cls in ("golden_retriever", "tabby"):
        image(root / cls / "a.png")
    return root


def test_name_colon_root_is_the_same_as_a_data_root(tmp_path, monkeypatch):
    tree = tiny_tree(tmp_path / "odd:name")  # a colon inside the root is part of the root
    given = load_dataset("imagefolder", tree)
    assert load_dataset(f"imagefolder:{tree}").items == given.items
    assert load_dataset(f"imagefolder:{tree}", tree).items == given.items  # the same root twice is fine
    monkeypatch.chdir(tmp_path)
    assert load_dataset("imagefolder:odd:name").items == load_dataset("imagefolder", "odd:name").items
    monkeypatch.setenv("HOME", str(tmp_path))
    assert [p for p, _ in load_dataset("imagefolder:~/odd:name").items] == [p for p, _ in given.items]
    assert concept_names(f"imagefolder:{tree}") == concept_names("imagefolder", tree) == ["golden retriever", "tabby"]


def test_samples_with_a_root_reads_that_folder(tmp_path):
    root = tmp_path / "views"
    for name in samples_module.SAMPLE_CONCEPTS:
        image(root / name.replace(" ", "_") / "00.png")  # already built there: nothing is rendered
    ds = load_dataset(f"samples:{root}")
    assert ds.root == root and len(ds) == len(samples_module.SAMPLE_CONCEPTS)
    assert ds.items == load_dataset("samples", root).items


def test_a_root_given_twice_must_agree(tmp_path):
    tree = tiny_tree(tmp_path / "tree")
    other = tmp_path / "other"
    for call in (lambda: load_dataset(f"imagefolder:{tree}", other),
                 lambda: concept_names(f"imagefolder:{tree}", other)):
        with pytest.raises(DatasetNameError, match="given twice") as error:
            call()
        assert str(tree) in str(error.value) and str(other) in str(error.value)
    with pytest.raises(DatasetNameError, match="expected NAME or NAME:ROOT"):
        load_dataset("imagefolder:")
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        load_dataset(f"nope:{tree}")
