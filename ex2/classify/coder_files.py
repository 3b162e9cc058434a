"""CoDer's own files read as data, from a clone of YCaigogogo/CODER (never imported, never copied).

    templates = read_templates("CODER/CODER/template.py", "oxford-pet")      # ast, not import
    gap = read_thresholds("CODER/utils.py")["oxford-pet"]                    # CODER*'s top-2 gap
    names = read_class_names("CODER/datasets/class_name", "oxford-pet")
    knowledge = read_knowledge("CODER/expert_knowledge", "oxford-pet", names) # its released files

``template.py`` holds four functions (name, attribute, analogous-class and one-vs-one templates),
each an ``if dataset == …: templates = [f"…", …] elif … else …`` chain of f-strings and ``+``
concatenations. :func:`read_templates` parses it with :mod:`ast` and walks the chain for one
dataset (and ``task_type``), turning every template into a format string with ``{c}`` (the class),
``{a}`` (the attribute, analogue, synonym or one-vs-one feature) and ``{b}`` (the other class);
any other construct is refused with its line number, so nothing in the file ever runs.

The released knowledge (the ``expert_knowledge`` folder of CoDer's README) is read as it is:
``attribute/NAME.pkl`` and ``simile_class/NAME.pkl`` (a list per class, in
``datasets/class_name/NAME.txt`` order), ``synonym/NAME.json`` (``[{"syno": [...]}, …]`` in the same
order) and ``ovo_attribute/NAME.json`` (``{class: {other class: [feature, …]}}``). The pickles go
through :class:`DataOnlyUnpickler`, whose ``find_class`` refuses every global, so a pickle can
build lists, dicts, strings and numbers and nothing else: no function is ever called.
"""

from __future__ import annotations

import ast
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

from ex2.core.io import read_text

# ex2 dataset name -> CoDer's name for it (its configs, template.py branches, class_name/*.txt)
CODER_DATASETS = {
    "pets": "oxford-pet", "dtd": "DTD", "food101": "food-101", "eurosat": "eurosat", "imagenet": "ImageNet",
    "imagenetv2": "ImageNet-V2", "cub": "CUB200", "flowers102": "oxford_flowers", "aircraft": "Aircraft",
    "cars": "stanford_cars", "places365": "places-365",
}
TASK_TYPES = ("zero-shot", "few-shot")
KNOWLEDGE_FILES = {  # ex2 kind -> CoDer's file under expert_knowledge/
    "attributes": "attribute/{}.pkl", "analogous": "simile_class/{}.pkl", "synonyms": "synonym/{}.json",
    "ovo": "ovo_attribute/{}.json",
}
TEMPLATE_FUNCTIONS = {  # kind -> function in template.py, and the fields of its parameters in order
    "name": "get_name_templates", "attribute": "get_att_templates", "analogous": "get_ana_templates",
    "ovo": "get_ovo_templates",
}
FIELDS = ("c", "a", "b")  # class, attribute/analogue/feature, other class
CONTEXT = ("dataset", "task_type")  # the parameters a branch may test


class CoderFileError(ValueError):
    """A CoDer file that is not in the shape its code reads; the message names file and line."""


@dataclass(frozen=True)
class CoderTemplates:
    """Format strings per kind of text: ``{c}`` class, ``{a}`` attribute/analogue/feature, ``{b}`` other class."""

    name: tuple[str, ...]
    attribute: tuple[str, ...]
    analogous: tuple[str, ...]
    ovo: tuple[str, ...]
    source: str = "ex2"


def coder_dataset_name(dataset: str) -> str:
    """CoDer's name for an ex2 dataset (its own names pass through)."""
    return CODER_DATASETS.get(dataset, dataset)


def knowledge_dataset(name: str) -> str:
    """The file stem CoDer reads knowledge and one-vs-one templates under (ImageNet-V2 reads ImageNet's)."""
    return "ImageNet" if name == "ImageNet-V2" else name


# --- template.py ---------------------------------------------------------------------------------


def read_templates(path: str | Path, dataset: str, task_type: str = "zero-shot") -> CoderTemplates:
    """The templates ``template.py`` gives ``dataset`` (CoDer's name) for ``task_type``; one-vs-one
    ones for :func:`knowledge_dataset` ``(dataset)``, as CoDer asks for them."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {', '.join(TASK_TYPES)}, not {task_type!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CoDer templates {path} do not exist (expected CODER/template.py of a CoDer clone)")
    try:
        tree = ast.parse(read_text(path, "CoDer's template.py"), filename=str(path))
    except SyntaxError as err:
        raise CoderFileError(f"{path}: not Python ({err}); expected CoDer's template.py") from err
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    found = {}
    for kind, function in TEMPLATE_FUNCTIONS.items():
        if function not in functions:
            raise CoderFileError(f"{path}: no function {function}; expected CoDer's template.py")
        own = dataset if kind != "ovo" else knowledge_dataset(dataset)
        found[kind] = _branch_templates(path, functions[function], {"dataset": own, "task_type": task_type})
    return CoderTemplates(found["name"], found["attribute"], found["analogous"], found["ovo"], f"{path} ({dataset})")


def _branch_templates(path: Path, function: ast.FunctionDef, context: dict[str, str]) -> tuple[str, ...]:
    fields = dict(zip([a.arg for a in function.args.args if a.arg not in CONTEXT], FIELDS, strict=False))
    found = _assigned(path, function.body, context, fields)
    if found is None:
        raise CoderFileError(f"{path}: {function.name} sets no templates for {context['dataset']!r}")
    return found


def _assigned(path: Path, body: list[ast.stmt], context: dict[str, str], fields: dict[str, str]):
    """The list assigned to ``templates`` on the path the ``if``/``elif``/``else`` chain takes."""
    for node in body:
        if isinstance(node, ast.If):
            found = _assigned(path, node.body if _condition(path, node.test, context) else node.orelse,
                              context, fields)
            if found is not None:
                return found
        elif isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["templates"]:
            if not isinstance(node.value, ast.List):
                raise CoderFileError(f"{path} line {node.lineno}: templates is not a list of strings")
            return tuple(_format_string(path, element, fields) for element in node.value.elts)
    return None


def _condition(path: Path, node: ast.expr, context: dict[str, str]) -> bool:
    if isinstance(node, ast.BoolOp):
        values = [_condition(path, v, context) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq | ast.NotEq)
            and isinstance(node.left, ast.Name) and node.left.id in context
            and isinstance(node.comparators[0], ast.Constant)):
        equal = context[node.left.id] == node.comparators[0].value
        return equal if isinstance(node.ops[0], ast.Eq) else not equal
    raise CoderFileError(f"{path} line {node.lineno}: a condition other than dataset/task_type == 'text'")


def _format_string(path: Path, node: ast.expr, fields: dict[str, str]) -> str:
    """A template expression (text, f-string, names, ``+``) as a format string over ``fields``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.replace("{", "{{").replace("}", "}}")
    if isinstance(node, ast.Name) and node.id in fields:
        return "{" + fields[node.id] + "}"
    if isinstance(node, ast.JoinedStr):
        return "".join(_format_string(path, v, fields) for v in node.values)
    if isinstance(node, ast.FormattedValue) and node.conversion == -1 and node.format_spec is None:
        return _format_string(path, node.value, fields)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _format_string(path, node.left, fields) + _format_string(path, node.right, fields)
    raise CoderFileError(f"{path} line {node.lineno}: a template other than text, f-strings, "
                         f"{', '.join(fields)} and +")


# --- utils.py: CODER*'s gaps ---------------------------------------------------------------------


def read_thresholds(path: str | Path) -> dict[str, float]:
    """The per-dataset top-2 softmax gaps below which CODER* re-ranks (``get_thres`` in ``utils.py``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CoDer utils {path} does not exist (expected utils.py of a CoDer clone)")
    tree = ast.parse(read_text(path, "CoDer's utils.py"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "get_thres":
            for inner in ast.walk(node):
                if isinstance(inner, ast.Dict):
                    table = ast.literal_eval(inner)
                    if all(isinstance(k, str) and isinstance(v, int | float) for k, v in table.items()):
                        return {k: float(v) for k, v in table.items()}
    raise CoderFileError(f"{path}: no get_thres with a {{dataset: gap}} table; expected CoDer's utils.py")


def read_init_alpha_beta(folder: str | Path, dataset: str) -> tuple[float, float] | None:
    """``(init_alpha, init_beta)`` of the config in ``configs/*.yaml`` whose ``dataset`` is ``dataset``
    (CoDer's few-shot starting values), or None without one."""
    import yaml

    for path in sorted(Path(folder).glob("*.yaml")):
        try:
            config = yaml.safe_load(read_text(path, "a CoDer config in YAML"))
        except yaml.YAMLError as err:
            raise CoderFileError(f"{path}: not valid YAML ({err})") from err
        if isinstance(config, dict) and config.get("dataset") == dataset:
            if not all(isinstance(config.get(k), int | float) for k in ("init_alpha", "init_beta")):
                raise CoderFileError(f"{path}: init_alpha and init_beta should be numbers")
            return float(config["init_alpha"]), float(config["init_beta"])
    return None


# --- class names and knowledge ---------------------------------------------------------------------


def read_class_names(folder: str | Path, dataset: str, task_type: str = "zero-shot") -> list[str]:
    """CoDer's class list ``NAME.txt`` (stripped lines, as CoDer reads them); few-shot reads
    ``NAME1.txt`` where it exists (CoDer's ``update_class_names``, for eurosat)."""
    folder, stem = Path(folder), knowledge_dataset(dataset)
    path = folder / f"{stem}.txt"
    if task_type == "few-shot" and (folder / f"{stem}1.txt").is_file():
        path = folder / f"{stem}1.txt"
    if not path.is_file():
        raise FileNotFoundError(f"CoDer class list {path} does not exist (expected datasets/class_name/{stem}.txt)")
    return [line.strip() for line in read_text(path, "one class name a line").splitlines()]


class DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles lists, dicts, strings and numbers only: every global (class, function) is refused,
    so nothing in the file can be called."""

    def find_class(self, module: str, name: str):  # noqa: D102
        raise pickle.UnpicklingError(f"refused {module}.{name}: only lists, dicts, strings and numbers are read")


def load_data_pickle(path: str | Path) -> object:
    """A pickle of plain data (:class:`DataOnlyUnpickler`), its values checked to be only lists,
    dicts, strings and numbers."""
    path = Path(path)
    try:
        value = DataOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001  (a malformed pickle raises many types)
        raise CoderFileError(f"{path}: not a pickle of plain data ({err})") from err
    _check_plain(path, value)
    return value


def _check_plain(path: Path, value: object) -> None:
    if isinstance(value, list):
        for item in value:
            _check_plain(path, item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_plain(path, key)
            _check_plain(path, item)
    elif not isinstance(value, str | int | float):
        raise CoderFileError(f"{path}: holds a {type(value).__name__}; only lists, dicts, strings and numbers are read")


def _per_class(path: Path, value: object, n_classes: int) -> list[list[str]]:
    if not isinstance(value, list) or len(value) != n_classes or not all(isinstance(v, list) for v in value):
        size = len(value) if isinstance(value, list) else type(value).__name__
        raise CoderFileError(f"{path}: expected a list of {n_classes} lists (one per class, in class_name order), "
                             f"found {size}")
    return [[str(item) for item in items] for items in value]


def read_knowledge(folder: str | Path, dataset: str, classnames: list[str],
                   kinds: tuple[str, ...] = tuple(KNOWLEDGE_FILES)) -> dict[str, dict]:
    """CoDer's released knowledge of ``dataset`` as ex2's ``{kind: {class name: [...]}}`` (one-vs-one as
    ``{(class, other): [...]}``), per-class lists matched to ``classnames`` by position as CoDer does."""
    folder, stem = Path(folder).expanduser(), knowledge_dataset(dataset)
    if not folder.is_dir():
        raise FileNotFoundError(f"CoDer knowledge folder {folder} does not exist (expected expert_knowledge/ "
                                "with attribute/, simile_class/, synonym/, ovo_attribute/)")
    out: dict[str, dict] = {}
    for kind in kinds:
        path = folder / KNOWLEDGE_FILES[kind].format(stem)
        if not path.is_file():
            raise FileNotFoundError(f"CoDer knowledge file {path} does not exist (needed for {kind})")
        if kind in ("attributes", "analogous"):
            lists = _per_class(path, load_data_pickle(path), len(classnames))
            out[kind] = dict(zip(classnames, lists, strict=True))
        elif kind == "synonyms":
            out[kind] = dict(zip(classnames, _synonyms(path, len(classnames)), strict=True))
        else:
            out[kind] = _ovo(path)
    return out


def _read_json(path: Path) -> object:
    try:
        return json.loads(read_text(path, "JSON"))
    except json.JSONDecodeError as err:
        raise CoderFileError(f"{path}: not valid JSON ({err})") from err


def _synonyms(path: Path, n_classes: int) -> list[list[str]]:
    data = _read_json(path)
    if (not isinstance(data, list) or len(data) != n_classes
            or not all(isinstance(d, dict) and isinstance(d.get("syno"), list) for d in data)):
        raise CoderFileError(f'{path}: expected a list of {n_classes} {{"syno": [...]}} objects in class_name order')
    return [[str(s) for s in d["syno"]] for d in data]


def _ovo(path: Path) -> dict[tuple[str, str], list[str]]:
    data = _read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise CoderFileError(f"{path}: expected {{class: {{other class: [feature, ...]}}}}")
    return {(a, b): [str(f) for f in features] for a, others in data.items() for b, features in others.items()}
