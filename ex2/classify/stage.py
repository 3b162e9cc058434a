"""Zero-shot classification: ``ex2 classify``, dispatched to one method of :mod:`ex2.classify.methods`.

    ex2 classify --dataset samples --vlm conse --method clip --output runs/clip
    ex2 classify --method dclip --descriptions descriptors_cub.json --dataset cub --data-root DIR ...
    ex2 classify --method ex2 --descriptions runs/gen/descriptions.jsonl --categories visual ...
    ex2 classify --method waffle --help        (the shared options and waffle's own)

:class:`ClassifyConfig` is the shared options plus every method's option groups, one flat dataclass:
a YAML file or a Python call names each option as it always did, and each method reads its own. The
command line offers the shared options and the chosen method's (``--help`` without ``--method``
lists every method's, group by group). The run folder holds ``metrics.json`` (fixed keys, rolled
up by ``ex2 report``), per-class accuracy and the confusion matrix as CSV and PNG,
``predictions.csv``, ``class_texts.json``, the resolved ``config.yaml`` and, with ``--explain``,
one figure per explained image. Inputs are checked and the model scores the images before anything
is written, so a refused or failed run leaves no folder behind and never touches an older run's files.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from ex2.classify.methods import all_methods, load_method, methods_reading, option_groups
from ex2.classify.options import SharedOptions
from ex2.core.config import ConfigError, build_parser, load_yaml_defaults, parse_config
from ex2.core.names import is_gvlm_name

METHODS = all_methods()
GROUPS = option_groups(METHODS, SharedOptions)  # SharedOptions first, then each method's groups


@dataclasses.dataclass
class ClassifyConfig(*reversed(GROUPS)):  # reversed: the fields of SharedOptions come first
    """Zero-shot classification: class names, descriptions (DCLIP, CuPL, EX2, WaffleCLIP), CoDer or a gVLM.

    The shared options and every method's option groups in one dataclass (see the module docstring)."""

    def __post_init__(self) -> None:
        method = load_method(self.method)
        gvlm = is_gvlm_name(self.vlm)
        if gvlm and not method.needs_gvlm:
            names = ", ".join(m.name for m in METHODS if m.needs_gvlm)
            raise ValueError(f"--vlm {self.vlm} is a generative VLM; use --method {names}")
        if method.needs_gvlm and not gvlm:
            raise ValueError(f"--method {self.method} needs a generative VLM: --vlm gen:ORG/NAME or gen:local-dir:PATH")
        for group in GROUPS:
            group.check(self)
        if self.aggregate is None:
            self.aggregate = method.aggregate
        method.check(self)


def run(config: ClassifyConfig, vlm=None, dataset=None) -> Path:
    """Classify the dataset's images with ``config.method``; write the run folder and return it.

    ``vlm`` and ``dataset`` (already loaded) let one script evaluate many description files
    without loading the model again; by default both are loaded from the config.
    """
    return load_method(config.method).run(config, vlm, dataset)


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None, prog: str = "ex2 classify") -> ClassifyConfig:
    """A :class:`ClassifyConfig` from flags and ``--config FILE.yaml`` (defaults that flags override).

    The flags are the shared options and the chosen method's; a YAML file may hold any option (a
    run folder's config.yaml holds them all). Bad values exit with the usage and a message."""
    argv = list(argv or [])
    method = chosen_method(argv, prog)
    parser = method_parser(method, prog)
    config = parse_config(ClassifyConfig, argv, prog, parser=parser)
    foreign = foreign_flags(argv, config.method)
    if foreign:
        flag, owners = foreign[0]
        parser.error(f"{flag} is an option of --method {', '.join(owners)}, not of --method {config.method} "
                     f"(see {prog} --method {owners[0]} --help)")
    return config


def chosen_method(argv: list[str], prog: str) -> str | None:
    """The ``--method`` of the command line or of its ``--config`` file; None when neither names one."""
    first = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    first.add_argument("--config")
    first.add_argument("--method")
    early, _ = first.parse_known_args(argv)
    if early.method or not early.config:
        return early.method
    try:
        return load_yaml_defaults(early.config, ClassifyConfig).get("method")
    except ConfigError as err:
        first.error(str(err))
        raise  # unreachable: error exits


def method_parser(method: str | None, prog: str) -> argparse.ArgumentParser:
    """Every option; the help lists the shared options and ``method``'s, group by group (every
    group without a method). The other groups' flags are parsed but not listed."""
    methods = [m for m in METHODS if m.name == method] or METHODS
    shown = {SharedOptions, *(g for m in methods for g in m.options)}
    sections = {f.name: (group_title(group) if group in shown else None)
                for group in GROUPS for f in dataclasses.fields(group)}
    parser = build_parser(ClassifyConfig, prog, sections=sections)
    if method is None:
        parser.epilog = "methods:\n" + "\n".join(f"  {m.name:<11} {m.summary}" for m in METHODS)
        parser.formatter_class = HelpFormatter
    return parser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, and the epilog's list of methods kept as written."""


def group_title(group: type) -> str:
    return (group.__doc__ or group.__name__).strip().splitlines()[0]


def foreign_flags(argv: list[str], method: str) -> list[tuple[str, list[str]]]:
    """``(flag, methods that read it)`` for each flag on the command line that ``method`` ignores."""
    mine = {SharedOptions, *load_method(method).options}
    hints = typing.get_type_hints(ClassifyConfig)
    found = []
    for group in GROUPS:
        if group in mine:
            continue
        owners = methods_reading(group, METHODS)
        for field in dataclasses.fields(group):
            names = {field.name, field.name.replace("_", "-")}
            flags = {f"--{n}" for n in names} | ({f"--no-{n}" for n in names} if hints[field.name] is bool else set())
            found += [(given, owners) for given in (a.split("=", 1)[0] for a in argv) if given in flags]
    return found
