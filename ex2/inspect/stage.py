"""``ex2 inspect``: label each description as spurious, visual or non-visual, then report the shares.

EX2 asks of every description whether it would increase a student's knowledge of the concept; those
that would not are *spurious*. Informative ones are *visual* (seen in a photo) or *non-visual*::

    category     attribute                                     example (concept: goldfinch)
    spurious     none                                          "Click to enlarge photo of a goldfinch."
                                                               "goldfinch stock photos", "A photo of a goldfinch."
                                                               "Oh goldfinch, little song of joy, ..." (a poem)
    visual       color shape size pattern texture parts        "The male has bright lemon-yellow plumage."
    non_visual   habitat behavior diet origin history use other  "It feeds almost entirely on thistle seeds."

``docs/taxonomy.md`` gives the full taxonomy with examples. Each input record (``descriptions.jsonl``
from ``ex2 generate``, or any JSONL with ``concept`` and ``description``) is written to
``categories.jsonl`` with ``informative``, ``category``, ``attribute``, ``explanation``,
``judge_backend``, ``judge_model``, ``judge_prompt_version`` and ``judge_requests`` added; a description
the judge could not answer for gets ``category: "unparsed"``. Judges (:mod:`ex2.inspect.judges`,
:mod:`ex2.inspect.categorize`)::

    ex2 inspect --input runs/gen/descriptions.jsonl                      # embedded: MiniLM + cues, offline
    ex2 inspect --input d.jsonl --backend hf --model smollm2             # a local chat model as judge
    ex2 inspect --input d.jsonl --backend openai --model gpt-4o-mini     # OPENAI_API_KEY from the environment
    ex2 inspect --input d.jsonl --backend openai --base-url http://127.0.0.1:8000/v1 --model MODEL
    ex2 inspect --input d.jsonl --backend openai --model gpt-3.5-turbo-1106 \\
        --prompt-file configs/judge_ex2_question.yaml                   # EX2's question, at temperature 0.1
    ex2 inspect --input pets.jsonl --from-ex2-answers answers.json      # EX2's inspection output read in

``--prompt-file`` replaces the first question (informative or not) with one read from a file; ex2's
category question still sorts the informative ones (:func:`ex2.inspect.judges.load_judge_prompt`).
``--from-ex2-answers`` takes the first question's answers from EX2's ``inspection.py`` output, a list
per class parallel to the descriptions (counts checked class by class); only informative ones go to
the judge, for their category.

Results are appended as they arrive, keyed by (judge backend, model, prompt version, concept,
description); a rerun judges only what is missing, and a failure or Ctrl-C keeps every answer already
received. An output belongs to one input: ``OUTPUT.inputs.json`` records the input's path and SHA-256,
each record carries ``input_sha256`` (its first 16 hex digits), and giving the output of one input to
another (or to the same file changed since) is refused unless ``--append`` adds it (answers already
in the output are reused). One run writes an output at a time (``OUTPUT.lock``; a second run names
the holder). The report (``summary.json``, ``summary.md`` and
PNG plots, see :mod:`ex2.inspect.report`) goes to ``--report-dir`` (default ``inspect_report/`` beside
the output).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from ex2.core.config import TEXT_FIELDS, classnames_option, option, save_config, text_field_option
from ex2.core.errors import OutputError
from ex2.core.io import (
    append_jsonl,
    check_output_path,
    file_digest,
    output_lock,
    read_jsonl,
    repair_jsonl,
    write_json,
)
from ex2.core.names import split_dataset_name
from ex2.core.registry import LazyRegistry
from ex2.core.taxonomy import UNPARSED
from ex2.core.text import record_text, resolve_text_field
from ex2.data import load_classnames
from ex2.inspect.judges import EX2_ANSWER, AnsweredJudge, Judgement, load_judge_prompt
from ex2.inspect.report import write_report

JUDGE_FIELDS = ("judge_backend", "judge_model", "judge_prompt_version")
INPUT_FIELD = "input_sha256"  # which input a record was judged for (first 16 hex digits of its SHA-256)
# judge backend -> "module:Class", imported only when chosen
JUDGES = LazyRegistry("judge backend", {
    "embedded": "ex2.inspect.categorize:EmbeddedJudge",
    "hf": "ex2.inspect.judges:HFJudge",
    "openai": "ex2.inspect.judges:OpenAIJudge",
})
DEFAULT_MODELS = {"embedded": "all-MiniLM-L6-v2", "hf": "smollm2", "openai": ""}


@dataclass
class InspectConfig:
    """Label descriptions as spurious, visual or non-visual (with an attribute) and report the shares."""

    input: str = option("", "descriptions JSONL (from ex2 generate, or any JSONL with concept and description)")
    output: str = option("", "categories JSONL to append to (default: categories.jsonl beside --input)")
    append: bool = option(False, "add this input's judgements to an output that holds another input's")
    backend: Literal["embedded", "openai", "hf"] = option("embedded", "judge: embedded (offline), openai, hf")
    model: str = option("", "judge model: a served model name (openai) or an LLM name (hf, default smollm2)")
    base_url: str = option("", "OpenAI-compatible server URL (default $OPENAI_BASE_URL, else api.openai.com)")
    api_key: str = option("", "API key (default $OPENAI_API_KEY; never written to disk)", secret=True)
    concurrency: int = option(4, "requests in flight at once (openai backend)")
    max_retries: int = option(3, "asks again per unusable answer")
    request_retries: int = option(2, "retries per request on 429/5xx, refused connections and timeouts (openai)")
    timeout: float = option(15.0, "seconds before one request times out (openai backend; a dead server is "
                                  "reported after (request_retries + 1) x timeout)")
    max_tokens: int = option(128, "longest judge answer, in tokens (openai and hf backends)")
    json_mode: bool = option(True, "ask the server for JSON mode; dropped automatically when refused")
    device: str = option("", "device for the embedded and hf judges (default: cuda if available, else cpu)")
    batch_size: int = option(64, "descriptions per batch (embedded backend)")
    limit: int = option(0, "judge only the first N input records (0: all)")
    dataset: str = option("", "dataset name for records that carry none (used by the report; NAME:ROOT keeps NAME)")
    classnames: str | None = classnames_option("the input's")
    text_field: Literal[TEXT_FIELDS] = text_field_option()
    vlm: str = option("", "VLM name for records that carry none (used by the report)")
    report: bool = option(True, "write summary.json, summary.md and plots after judging")
    report_dir: str = option("", "report folder (default: inspect_report/ beside --output)")
    prompt_file: str = option("", "the judge's first question from a YAML/JSON file: system, user template "
                                  "({concept}, {description}), answer field and values, temperature "
                                  "(e.g. configs/judge_ex2_question.yaml); openai and hf backends")
    from_ex2_answers: str = option("", "EX2's inspection output (per class, its answers, parallel to --input): "
                                       "read informative/spurious from it instead of asking; the judge only "
                                       "sorts informative ones into visual/non_visual")

    def __post_init__(self):
        if not self.input:
            raise ValueError("--input is required: a descriptions JSONL with concept and description fields")
        if self.concurrency < 1 or self.batch_size < 1:
            raise ValueError("--concurrency and --batch-size must be at least 1")
        if self.max_retries < 0 or self.request_retries < 0 or self.limit < 0:
            raise ValueError("--max-retries, --request-retries and --limit must be 0 or more")
        if self.timeout <= 0:
            raise ValueError(f"--timeout must be more than 0 seconds, not {self.timeout}")
        self.model = self.model or DEFAULT_MODELS[self.backend]
        self.dataset = split_dataset_name(self.dataset)[0]
        if self.text_field not in TEXT_FIELDS:
            raise ValueError(f"--text-field must be one of {', '.join(TEXT_FIELDS)}, got {self.text_field!r}")
        if self.backend == "openai" and not self.model:
            raise ValueError("--backend openai needs --model: the model name the server serves")
        if self.prompt_file:
            try:
                load_judge_prompt(self.prompt_file)  # errors name the file and the key, before any work
            except FileNotFoundError as err:
                raise ValueError(str(err)) from err
            if self.backend == "embedded" and not self.from_ex2_answers:
                raise ValueError("--prompt-file is a question for an LLM judge: add --backend openai or hf")
        if self.from_ex2_answers and not Path(self.from_ex2_answers).is_file():
            raise ValueError(f"{self.from_ex2_answers}: no such file (expected EX2's inspection output)")

    @property
    def output_path(self) -> Path:
        return Path(self.output) if self.output else Path(self.input).parent / "categories.jsonl"

    @property
    def report_path(self) -> Path:
        return Path(self.report_dir) if self.report_dir else self.output_path.parent / "inspect_report"


def judge_options(config: InspectConfig) -> dict:
    """The constructor arguments of the judge ``config.backend`` names."""
    if config.backend == "embedded":
        return {"device": config.device or None}
    if config.backend == "hf":
        return {"model": config.model, "max_retries": config.max_retries, "max_tokens": config.max_tokens,
                "device": config.device or None}
    return {
        "model": config.model,
        "base_url": config.base_url or os.environ.get("OPENAI_BASE_URL"),
        "api_key": config.api_key or os.environ.get("OPENAI_API_KEY"),
        "max_retries": config.max_retries, "timeout": config.timeout, "max_tokens": config.max_tokens,
        "json_mode": config.json_mode, "request_retries": config.request_retries,
    }


def make_judge(config: InspectConfig):
    """The judge a config names; heavy imports happen only for the chosen backend."""
    return JUDGES.load(config.backend)(**judge_options(config))


def record_key(record: dict) -> tuple:
    """What makes a judgement: the judge (backend, model, prompt version), the concept and the text."""
    return tuple(record.get(f) for f in JUDGE_FIELDS) + (record["concept"], record["description"])


def read_inputs(config: InspectConfig) -> list[dict]:
    """Every input record, its concept renamed from ``--classnames`` when given; the judged
    ``description`` is the text ``--text-field`` picks (raw: the completion as EX2 scored it), and
    each record's ``text_field`` says which."""
    records = read_jsonl(config.input, required=("concept", "description"))
    if config.classnames:
        name_classes(records, config.classnames, config.input)
    text_field = resolve_text_field(records, config.text_field, config.input)
    for record in records:
        record["description"] = record_text(record, text_field, config.input)
        record["text_field"] = text_field
    return records


def name_classes(records: list[dict], path: str | Path, source: str) -> None:
    """Rename each record's concept from a class-name file, class by class (class-id order when every
    record has a ``class_id``, else order of first appearance); the counts must agree."""
    groups = _class_groups(records)
    names = load_classnames(path, len(groups), f"{source} (its descriptions)")
    for name, group in zip(names, groups, strict=True):
        for record in group:
            record["concept"] = name


def load_inputs(config: InspectConfig) -> list[dict]:
    records = read_inputs(config)
    for number, record in enumerate(records, start=1):
        if not isinstance(record["concept"], str) or not isinstance(record["description"], str):
            raise ValueError(f"{config.input}: record {number}: concept and description must be strings")
        if config.dataset:
            record.setdefault("dataset", config.dataset)
        if config.vlm:
            record.setdefault("vlm", config.vlm)
    if not records:
        raise ValueError(f"{config.input}: no records; expected JSON Lines with concept and description")
    return records[: config.limit] if config.limit else records


def inputs_path(output: Path) -> Path:
    """``OUTPUT.inputs.json``: the inputs whose judgements ``output`` holds (path and SHA-256)."""
    return output.with_name(output.name + ".inputs.json")


def claim_output(config: InspectConfig, output: Path) -> str:
    """Check that ``output`` is this input's (or ``--append`` adds it) and record it; returns the
    input's ``input_sha256``. An output without records belongs to nobody yet."""
    mine = {"path": str(Path(config.input).resolve()), "sha256": file_digest(config.input)}
    sidecar = inputs_path(output)
    owners: list[dict] = []
    if output.is_file() and output.stat().st_size > 0:
        if sidecar.is_file():
            owners = json.loads(sidecar.read_text()).get("inputs", [])
        elif not config.append:
            raise OutputError(f"{output} already holds judgements and no {sidecar.name} says of which input; give "
                              f"another --output (or delete it), or add --append to judge {config.input} into it")
    if owners and mine not in owners and not config.append:
        raise OutputError(f"{output} holds the judgements of {_owner_text(owners, mine)}; give another --output "
                          f"(or delete it), or add --append to add {config.input}'s judgements to it")
    if mine not in owners:
        write_json(sidecar, {"inputs": [*owners, mine]})
    return mine["sha256"][:16]


def _owner_text(owners: list[dict], mine: dict) -> str:
    same = [o for o in owners if o.get("path") == mine["path"]]
    if same:
        return (f"{mine['path']} as it was before it changed (sha256 {same[-1].get('sha256', '?')[:12]}…, "
                f"now {mine['sha256'][:12]}…)")
    return " and ".join(str(o.get("path")) for o in owners)


def load_done(path: Path) -> list[dict]:
    """Records already written; a torn last line (a kill mid-write) is dropped from the file."""
    if not path.is_file():
        return []
    return repair_jsonl(path, required=("concept", "description"))


def _judge_parallel(judge, pending: list[tuple[str, str]], config: InspectConfig):
    """Yield ``((concept, description), judgement)`` as answers arrive."""
    if hasattr(judge, "judge_batch"):
        size = config.batch_size
        for start in range(0, len(pending), size):
            chunk = pending[start : start + size]
            yield from zip(chunk, judge.judge_batch(chunk), strict=True)
        return
    errors: list[BaseException] = []
    stop = threading.Event()  # set by the first failure, so queued work is not started after it

    def ask(pair: tuple[str, str]) -> Judgement | None:
        if stop.is_set():
            return None
        try:
            return judge.judge(*pair)
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
        futures = {pool.submit(ask, pair): pair for pair in pending}
        try:
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                if future.exception() is not None:  # stop starting work, keep what already finished
                    errors.append(future.exception())
                    for other in futures:
                        other.cancel()
                    continue
                if future.result() is not None:
                    yield futures[future], future.result()
        finally:
            stop.set()
            for future in futures:
                future.cancel()
    if errors:
        raise errors[0]


def judge_records(config: InspectConfig, judge, records: list[dict], output: Path, source: str = "") -> list[dict]:
    """Judge every record of this input (``source``: its ``input_sha256``) not yet in ``output`` and
    append it there; a description judged already (for any input) is not asked again. Returns the
    output's records by this judge."""
    ident = (judge.backend, judge.model, judge.prompt_version)
    by_pair: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        by_pair[(record["concept"], record["description"])].append({**record, INPUT_FIELD: source})
    done = [r for r in load_done(output) if record_key(r)[:3] == ident]
    judged = {record_key(r)[3:]: {k: r[k] for k in Judgement.__dataclass_fields__ if k in r} for r in done}
    written = Counter(record_key(r)[3:] for r in done if r.get(INPUT_FIELD, source) == source)
    output.parent.mkdir(parents=True, exist_ok=True)
    for pair, copies in by_pair.items():  # judged before: for another input, or killed between copies
        for record in copies[written[pair]:] if pair in judged else []:
            append_jsonl(output, {**record, **judged[pair]})
    pending = [pair for pair in by_pair if pair not in judged]
    with tqdm(total=len(by_pair), initial=len(by_pair) - len(pending), desc=f"inspect ({judge.backend})",
              unit="desc") as progress:
        for pair, judgement in _judge_parallel(judge, pending, config):
            for record in by_pair[pair]:
                append_jsonl(output, {**record, **judgement.fields()})
            progress.update(1)
    return [r for r in read_jsonl(output) if record_key(r)[:3] == ident]


def _class_groups(records: list[dict]) -> list[list[dict]]:
    """Records per class, in class order (``class_id`` when every record has one, else first appearance)."""
    by_id = all("class_id" in r for r in records)
    groups: dict = {}
    for record in records:
        groups.setdefault(record["class_id"] if by_id else record["concept"], []).append(record)
    return [groups[key] for key in (sorted(groups) if by_id else groups)]


def ex2_answers(path: str | Path, records: list[dict], source: str) -> dict[tuple[str, str], str | dict]:
    """EX2's inspection output (a list per class of answers, parallel to EX2's descriptions) keyed by
    (concept, description) of ``records``; the counts must match class by class. A description
    repeated within a class takes its first answer."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); expected EX2's inspection output") from err
    if not isinstance(data, list) or not all(
        isinstance(answers, list) and all(isinstance(a, str | dict) for a in answers) for answers in data
    ):
        raise ValueError(f"{path}: expected EX2's inspection output: a list with one list of answers per class")
    classes = _class_groups(records)
    if len(data) != len(classes):
        raise ValueError(f"{path}: holds answers for {len(data)} classes but {source} has {len(classes)}")
    mapping: dict[tuple[str, str], str | dict] = {}
    for class_id, (answers, group) in enumerate(zip(data, classes, strict=True)):
        if len(answers) != len(group):
            raise ValueError(f"{path}: class {class_id} ({group[0]['concept']!r}) has {len(answers)} answers but "
                             f"{source} has {len(group)} descriptions of it")
        for record, answer in zip(group, answers, strict=True):
            mapping.setdefault((record["concept"], record["description"]), answer)
    return mapping


def answered_judge(config: InspectConfig, judge, answers: dict) -> AnsweredJudge:
    spec = load_judge_prompt(config.prompt_file).answer if config.prompt_file else EX2_ANSWER
    digest = hashlib.sha256(Path(config.from_ex2_answers).read_bytes()).hexdigest()[:8]
    return AnsweredJudge(judge, answers, spec, f"ex2-answers-{digest}")


def check_outputs(config: InspectConfig) -> Path:
    """The output path, checked (with the report folder) before any input is read or model loaded."""
    output = check_output_path(config.output_path)
    if config.report:
        check_output_path(config.report_path, "folder", "--report-dir")
    if output.exists() and output.resolve() == Path(config.input).resolve():
        raise OutputError(f"--output {output} is the --input file; give the categories another file")
    return output


def run(config: InspectConfig) -> Path:
    """Judge the input descriptions into ``categories.jsonl``, then write the report."""
    output = check_outputs(config)
    records = load_inputs(config)
    answers = None
    if config.from_ex2_answers:  # checked before any model loads
        everything = read_inputs(config)
        answers = ex2_answers(config.from_ex2_answers, everything, config.input)
    with output_lock(output, "ex2 inspect"):
        source = claim_output(config, output)
        judge = make_judge(config)
        if config.prompt_file and hasattr(judge, "use_prompt"):
            judge.use_prompt(load_judge_prompt(config.prompt_file))
        if answers is not None:
            judge = answered_judge(config, judge, answers)
        judged = judge_records(config, judge, records, output, source)
        save_config(config, output.parent, name="inspect_config.yaml")
        if config.report:
            write_report(judged, config.report_path, source=str(output))
    unparsed = sum(r["category"] == UNPARSED for r in judged)
    print(f"inspect: {len(judged)} description(s) in {output}, {unparsed} unparsed (the judge's answer was "
          f"unusable{'; their explanation says why' if unparsed else ''})")
    return output
