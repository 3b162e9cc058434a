"""One config dataclass per stage, turned into a command line.

Every field is declared with :func:`option` (a default and a help string). :func:`parse_config`
builds an argparse parser from the dataclass: ``--config file.yaml`` supplies defaults, flags
override them, unknown YAML keys are errors, and flags accept both ``--max-steps`` and
``--max_steps``. :func:`save_config` writes the resolved config (secrets removed) into a run folder.

Options that several stages share (the dataset, its root, split and class names, the VLM, the LLM) are declared
once here, with one help text each: ``dataset: str = dataset_option()``. They are plain dataclass
fields with ``metadata={"help": ...}``, so transformers' ``HfArgumentParser`` reads them too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from ex2.core.io import atomic_write_text, read_text
from ex2.core.names import LLM_FORMS, VLM_FORMS

C = TypeVar("C")


def option(
    default: Any, help: str, *, secret: bool = False, short: str | None = None, positional: bool = False
) -> Any:
    """A config field with a help string.

    ``secret`` fields are never written to disk; a ``positional`` list field also takes bare
    arguments (``ex2 report RUN1 RUN2``) besides its flag. ``short`` is kept under the key
    ``aliases``, the one ``HfArgumentParser`` reads; a field without ``secret`` or ``positional``
    carries no other metadata than that and its help, so ``HfArgumentParser`` accepts it.
    """
    meta: dict[str, Any] = {"help": help}
    if short:
        meta["aliases"] = [short]
    if secret:
        meta["secret"] = True
    if positional:
        meta["positional"] = True
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def dataset_option(default: str = "samples") -> Any:
    """``--dataset``: the image dataset a stage reads."""
    return option(default, "image dataset: a name from `ex2 ls`, or NAME:ROOT for a local copy")


def classnames_option(whose: str = "the dataset's") -> Any:
    """``--classnames``: a class-name file naming the classes (a dataset's: applied by ``load_dataset``)."""
    return option(None, "class-name file (a JSON list such as EX2's data_files/*_class_names.json, or one name a "
                        "line, class-id order): the names the classes are asked and matched by, instead of "
                        f"{whose} own; it must name as many classes")


TEXT_FIELDS = ("auto", "raw", "description")


def text_field_option() -> Any:
    """``--text-field``: which text of a generated record a stage reads (:func:`ex2.core.text.resolve_text_field`)."""
    return option("auto", "text of each generated record: raw (the whole decoded completion, as EX2's reward "
                          "and ex2 train's default --reward-text raw score it) | description (its first "
                          "paragraph, as generate keeps it) | auto: what an inspection judged, else raw where "
                          "every record has it, else description")


def data_root_option() -> Any:
    """``--data-root``: where the dataset lives (the ROOT of ``NAME:ROOT``)."""
    return option(None, "folder (csv: file) holding the dataset, the same as NAME:ROOT; not needed for samples")


def split_option() -> Any:
    """``--split``: the dataset split."""
    return option(None, "dataset split (default: the dataset's evaluation split)")


def vlm_option(default: str = "conse") -> Any:
    """``--vlm``: the vision-language model that scores images against texts."""
    return option(default, f"VLM scoring images against texts: {VLM_FORMS}")


def llm_option(default: str = "smollm2") -> Any:
    """``--llm``: the language model that writes descriptions."""
    return option(default, f"LLM writing the descriptions: {LLM_FORMS}")


class _RepeatableList(argparse.Action):
    """A list option: the first use replaces the default, later uses add to it (``--x a --x b c``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_lists_given", set())
        current = list(getattr(namespace, self.dest) or []) if self.dest in seen else []
        setattr(namespace, self.dest, current + list(values))
        seen.add(self.dest)


class ConfigError(ValueError):
    """A config value or file that cannot be used; the message says how to fix it."""


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _add_field(parser: argparse.ArgumentParser | argparse._ArgumentGroup, field: dataclasses.Field, tp: Any) -> argparse.Action:
    tp, _ = _unwrap_optional(tp)
    flags = [f"--{field.name.replace('_', '-')}"]
    if "_" in field.name:
        flags.append(f"--{field.name}")
    flags[:0] = field.metadata.get("aliases", [])
    kwargs: dict[str, Any] = {"dest": field.name, "help": field.metadata.get("help", "")}
    origin = typing.get_origin(tp)
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is list:
        (item,) = typing.get_args(tp) or (str,)
        kwargs.update(nargs="+", type=item, action=_RepeatableList)
    elif origin is Literal:
        choices = typing.get_args(tp)
        kwargs.update(choices=choices, type=type(choices[0]))
    else:
        kwargs["type"] = tp
    if kwargs.get("action") is not argparse.BooleanOptionalAction:
        kwargs["metavar"] = field.name.upper()
    action = parser.add_argument(*flags, **kwargs)
    if field.metadata.get("positional"):
        parser.add_argument(
            f"{field.name}__positional",
            nargs="*",
            type=kwargs.get("type", str),
            metavar=field.name.upper(),
            help=f"same as {flags[0]}",
        )
    return action


def config_fields(config_cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(config_cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(config_cls)]


def build_parser(config_cls: type, prog: str, description: str | None = None,
                 sections: dict[str, str | None] | None = None) -> argparse.ArgumentParser:
    """Flags for every field of ``config_cls``. ``sections`` (field name -> title) lists fields under
    titled groups in ``--help``; a field mapped to None is parsed but left out of the help."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description or (config_cls.__doc__ or "").strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of defaults; flags override it")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field, tp in config_fields(config_cls):
        title = (sections or {}).get(field.name, "")
        if title and title not in groups:
            groups[title] = parser.add_argument_group(title)
        action = _add_field(groups[title] if title else parser, field, tp)
        if title is None:
            action.help = argparse.SUPPRESS
    defaults = {}
    for field in dataclasses.fields(config_cls):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    parser.set_defaults(**defaults)
    return parser


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string (quote it)"}


def _kind(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return _KIND_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(tp: Any, value: Any) -> Any:
    """``value`` as type ``tp``, or TypeError. Only lossless conversions: an int for a float, a
    scalar for a list (one item); a Path or an enum takes a valid string as it is; a type this
    checker does not know passes."""
    origin = typing.get_origin(tp)
    if tp is Any or isinstance(tp, typing.TypeVar):
        return value
    if origin in (typing.Union, types.UnionType):
        for member in typing.get_args(tp):
            with contextlib.suppress(TypeError):
                return _coerce(member, value)
        raise TypeError
    if origin is Literal:
        if any(value == c and type(value) is type(c) for c in typing.get_args(tp)):
            return value
        raise TypeError
    if origin in (list, tuple) or tp in (list, tuple):
        items = value if isinstance(value, list | tuple) else [value]
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(item, v) for v in items]
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
        raise TypeError
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            tp(value)
        except ValueError:
            raise TypeError from None
        return value
    if tp is Path:
        if isinstance(value, str | Path):
            return value
        raise TypeError
    return value  # a type this checker does not know: the dataclass sees the value as written


def check_values(config_cls: type, values: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """``values`` (option name -> value read from ``source``, e.g. a YAML file) checked against the
    type of ``config_cls``'s field of that name, for any dataclass (a stage config, trl's
    GRPOConfig). Returns them converted where that loses nothing (``2`` for a float field is
    ``2.0``; a scalar for a list field is a one-item list); a mismatch is a ConfigError naming
    ``source``, the key, what was expected and what was found. Keys without a field pass as given.
    """
    hints = typing.get_type_hints(config_cls)
    out = {}
    for key, value in values.items():
        if key not in hints:
            out[key] = value
            continue
        try:
            out[key] = _coerce(hints[key], value)
        except TypeError:
            raise ConfigError(f"{source}: {key}: expected {_kind(hints[key])}, got {value!r} "
                              f"({type(value).__name__})") from None
    return out


def read_yaml_options(path: str | Path) -> dict[str, Any]:
    """A YAML config file's ``option: value`` mapping, keys with hyphens turned into underscores."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(read_text(path, "a YAML mapping of option: value")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_yaml_defaults(path: str | Path, config_cls: type) -> dict[str, Any]:
    """Read a YAML config file; keys may use hyphens or underscores, unknown keys are errors, and
    every value must have its option's type (:func:`check_values`)."""
    values = read_yaml_options(path)
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}"
        )
    return check_values(config_cls, values, f"config file {path}")


def parse_config(config_cls: type[C], argv: list[str] | None, prog: str,
                 parser: argparse.ArgumentParser | None = None) -> C:
    """Parse ``argv`` (with an optional ``--config``) into a ``config_cls`` instance; ``parser``:
    one :func:`build_parser` made for it with other sections or help."""
    parser = parser or build_parser(config_cls, prog)
    known, _ = parser.parse_known_args(argv)
    if known.config:
        try:
            parser.set_defaults(**load_yaml_defaults(known.config, config_cls))
        except ConfigError as err:
            parser.error(str(err))
    args = vars(parser.parse_args(argv))
    args.pop("config")
    args.pop("_lists_given", None)
    for key in [k for k in args if k.endswith("__positional")]:
        bare = args.pop(key)
        if bare:
            args[key.removesuffix("__positional")] = bare
    try:
        return config_cls(**args)
    except (ConfigError, ValueError, TypeError, FileNotFoundError) as err:  # a missing input file: one line
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data, with secret fields left out."""
    out = {}
    for field in dataclasses.fields(config):
        if field.metadata.get("secret"):
            continue
        value = getattr(config, field.name)
        out[field.name] = str(value) if isinstance(value, Path) else value
    return out


def save_config(config: Any, run_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config into ``run_dir`` (atomically, secrets removed)."""
    path = Path(run_dir) / name
    atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path
