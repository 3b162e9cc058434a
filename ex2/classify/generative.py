"""Classification with a generative VLM as Zhang et al. (NeurIPS 2024, VLMClassifier) ran it, three ways.

The prompt (``--prompt-format``, :mod:`ex2.gvlm.backend`): ``auto`` writes LLaVA-1.5's
``USER: <image>\\n{question}\\nASSISTANT:`` as their ``main_results/main.py`` does for LLaVA-1.5 models
and the chat template for others; ``chat`` (ours) the processor's chat template always.

``open``
    Ask what is in the photo (``--question``, their "What type of object is in this photo?").
``closed``
    The same question followed by the choices, as in their code: ``… Choose one from "a, b, c".``
    ``--choice-order shuffled`` (theirs, ``main_results/main_*.sh``): every image gets its own
    seeded draw, ``--n-choices all`` every class, ``N`` the true class and N-1 others, drawn as
    ``main.py`` draws them (one ``random.Random(--seed)``: the images shuffled, then per image
    ``sample`` of the other names, sorted, and ``shuffle``; ``--seed 1234`` is theirs). ``fixed``
    lists every class in dataset order (their label-order ablation).
``likelihood``
    Each class name scored as the continuation of a fixed answer (``--answer-prefix``, theirs
    "The photo features a", ``inference_analysis/main.py``) after the question: the mean
    (``--length-norm mean``) or sum of its tokens' log-probabilities, both reported, the prompt and
    image run once per image (:meth:`GenerativeVLM.token_logprobs`). Their calibration
    (``inference_analysis/get_accuracy.ipynb``) is reported beside: summed scores mixed with each
    class's mean over the evaluated images, ``α·S + (1−α)·mean(S)`` for α in 0..8, the best α
    **chosen on the evaluated (test) images** (:func:`alpha_grid`). Ours, ``--calibrate``: the
    scores become ``log softmax(scores) - log prior``, the prior the mean softmax over images held
    out from evaluation (``--calibration-split`` or a seeded ``--calibration-fraction`` of each
    class's images, then left out of the metrics); test images never estimate the prior.

**Answer rule** (``--answer-match``): ``substring`` (theirs, ``main_results/eval.ipynb``): an
answer, open or closed, is correct when one of the true class's names (the class name and its
synonyms from ``--synonyms``) occurs in it as a substring, ignoring case ("cat" counts in
"category"). ``words`` (ours): a class is *named* when one of its names occurs as whole words,
ignoring case, its words joined by spaces, hyphens or underscores, with an optional plural
``s``/``es`` (:func:`ex2.core.text.concept_pattern`), a match inside a longer match of another class
not counting ("cat" inside "tabby cat"); open answers are correct when they name the true class,
closed ones when the true class is the only listed choice they name.

Metrics use CLIP's keys: ``acc1``, ``acc5`` (None for open and closed: one answer has no
top five) and ``mean_per_class_recall``, from :func:`ex2.classify.zeroshot.classification_metrics`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from ex2.classify import zeroshot
from ex2.classify.common import report, split_per_class, unreadable_classes, write_skipped
from ex2.classify.metrics import Evaluation, write_tables
from ex2.core.io import check_output_path, read_text, write_csv
from ex2.core.text import concept_pattern, contains_name

DEFAULT_QUESTION = "What type of object is in this photo?"
ANSWER_MATCHES = ("substring", "words")  # VLMClassifier's eval.ipynb; ours
CHOICE_ORDERS = ("shuffled", "fixed")  # VLMClassifier's main_*.sh; its fixed-order ablation
VLMCLASSIFIER_PREFIX = "The photo features a"  # inference_analysis/main.py
ALPHA_GRID = tuple(range(9))  # inference_analysis/get_accuracy.ipynb


# --- class names and synonyms --------------------------------------------------------------------


def read_synonyms(path: str | Path, classnames: Sequence[str]) -> list[list[str]]:
    """Names per class: the class name, then its synonyms from ``path`` — a JSON object
    ``{class: [synonym, ...]}`` or a text file with one class a line, ``class, synonym, ...``.
    Classes the file leaves out keep their name alone; a class the dataset lacks is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-name file {path} does not exist (expected JSON or one class a line)")
    if path.suffix == ".json":
        try:
            data = json.loads(read_text(path, "JSON {class: [synonym, ...]}"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); expected {{class: [synonym, ...]}}") from err
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise ValueError(f"{path}: expected a JSON object mapping each class to a list of synonyms")
        entries = {str(k): [str(s) for s in v] for k, v in data.items()}
    else:
        lines = [line for line in read_text(path, "one class a line: class, synonym, ...").splitlines() if line.strip()]
        parts = [[p.strip() for p in line.split(",") if p.strip()] for line in lines if not line.startswith("#")]
        entries = {p[0]: p[1:] for p in parts if p}
    index = {zeroshot.normalise_name(c): i for i, c in enumerate(classnames)}
    names = [[c] for c in classnames]
    unknown = [k for k in entries if zeroshot.normalise_name(k) not in index]
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} class(es) not in the dataset: {', '.join(unknown[:10])}")
    for key, synonyms in entries.items():
        own = names[index[zeroshot.normalise_name(key)]]
        own += [s for s in synonyms if s not in own]
    return names


def _spans(answer: str, names: Sequence[str], match: str = "words") -> list[tuple[int, int]]:
    spans = []
    for name in names:
        if match == "substring":
            lower, needle = answer.lower(), name.lower()
            spans += [(i, i + len(needle)) for i in range(len(lower)) if needle and lower.startswith(needle, i)]
            continue
        pattern = concept_pattern(name)
        if pattern is not None:
            spans += [m.span() for m in pattern.finditer(answer)]
    return spans


def named_classes(answer: str, names: Sequence[Sequence[str]], among: Sequence[int] | None = None,
                  match: str = "words") -> list[int]:
    """The classes (of ``among``, default all) an answer names, in order of first mention, by
    the answer rule ``match`` (module docstring; ``substring`` keeps matches inside others)."""
    candidates = range(len(names)) if among is None else among
    spans = {c: _spans(answer, names[c], match) for c in candidates}
    spans = {c: s for c, s in spans.items() if s}
    if match == "substring":
        return sorted(spans, key=lambda c: min(s[0] for s in spans[c]))

    def inside_other(c: int, span: tuple[int, int]) -> bool:
        return any(
            o != c and a <= span[0] and span[1] <= b and (b - a) > (span[1] - span[0])
            for o, others in spans.items() for a, b in others
        )

    kept = {c: [s for s in found if not inside_other(c, s)] for c, found in spans.items()}
    return sorted((c for c, found in kept.items() if found), key=lambda c: min(s[0] for s in kept[c]))


def open_correct(answer: str, label: int, names: Sequence[Sequence[str]], match: str = "words") -> bool:
    """An open answer is correct when it names the true class (``substring``: contains one of its names)."""
    if match == "substring":
        return any(contains_name(answer, name) for name in names[label])
    return label in named_classes(answer, names)


def closed_correct(answer: str, label: int, choices: Sequence[int], names: Sequence[Sequence[str]],
                   match: str = "words") -> bool:
    """A closed answer is correct when the true class is the only listed choice it names (``words``),
    or, as VLMClassifier judges it (``substring``), when it contains one of the true class's names."""
    if match == "substring":
        return open_correct(answer, label, names, match)
    return named_classes(answer, names, among=choices) == [label]


# --- closed questions ------------------------------------------------------------------------------


def parse_n_choices(value: str | int, n_classes: int | None = None) -> int | None:
    """``all`` -> None; else a count of at least 2 (and at most ``n_classes`` when known)."""
    if str(value).strip().lower() == "all":
        return None
    try:
        n = int(value)
    except ValueError as err:
        raise ValueError(f"--n-choices must be 'all' or a whole number, not {value!r}") from err
    if n < 2:
        raise ValueError(f"--n-choices must be at least 2 (or 'all'), got {n}")
    if n_classes is not None and n > n_classes:
        raise ValueError(f"--n-choices {n} exceeds the dataset's {n_classes} classes; use 'all' or fewer")
    return n


def draw_choices(labels: Sequence[int], classnames: Sequence[str], n_choices: int | None, seed: int,
                 order: str = "shuffled") -> list[list[int]]:
    """Class ids listed to each image. ``fixed``: every class in dataset order. ``shuffled``: the
    true class and ``n_choices - 1`` (None: all) other names, drawn as VLMClassifier's
    ``main_results/main.py`` draws them from one ``random.Random(seed)``: the images are shuffled
    first (the order it asks them in), then per image ``sample`` from the other distinct names,
    sorted, and ``shuffle``. A name several classes share stands for its first class."""
    if order not in CHOICE_ORDERS:
        raise ValueError(f"--choice-order must be one of {', '.join(CHOICE_ORDERS)}, not {order!r}")
    if order == "fixed":
        if n_choices is not None and n_choices != len(classnames):
            raise ValueError("--choice-order fixed lists every class in dataset order; use --n-choices all")
        return [list(range(len(classnames))) for _ in labels]
    distinct = sorted(set(classnames))
    first_id: dict[str, int] = {}
    for class_id, name in enumerate(classnames):
        first_id.setdefault(name, class_id)
    count = len(distinct) if n_choices is None else n_choices
    rng = random.Random(seed)
    asked = list(range(len(labels)))
    rng.shuffle(asked)
    out: list[list[int]] = [[] for _ in labels]
    for i in asked:
        own = classnames[labels[i]]
        picked = [own, *rng.sample([name for name in distinct if name != own], count - 1)]
        rng.shuffle(picked)
        out[i] = [labels[i] if name == own else first_id[name] for name in picked]
    return out


def closed_question(question: str, choice_names: Sequence[str]) -> str:
    """Zhang et al.'s closed prompt: the question, then ``Choose one from "a, b, c".``"""
    return f'{question} Choose one from "{", ".join(choice_names)}".'


# --- likelihood ------------------------------------------------------------------------------------


def class_prior(held_out_scores: torch.Tensor) -> torch.Tensor:
    """``[C]`` the mean softmax over held-out images' class scores."""
    if len(held_out_scores) == 0:
        raise ValueError("calibration needs at least one held-out image")
    return torch.softmax(held_out_scores.float(), dim=1).mean(0)


def calibrate(scores: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``log softmax(scores) - log prior``: scores with the model's class prior divided out."""
    return torch.log_softmax(scores.float(), dim=1) - prior.clamp_min(1e-12).log()


def alpha_grid(summed: torch.Tensor, labels: torch.Tensor, alphas: Sequence[float] = ALPHA_GRID) -> dict:
    """VLMClassifier's calibration (``get_accuracy.ipynb``) of summed log-probs ``[N, C]``: each
    class's score becomes ``α·S + (1−α)·mean over the evaluated images of S``; accuracy for every α
    and the best (first on ties), **chosen on the same images it is reported on**."""
    mean = summed.double().mean(0, keepdim=True)
    per_alpha = {}
    for alpha in alphas:
        logits = alpha * summed.double() + (1 - alpha) * mean
        per_alpha[str(alpha)] = {"acc1": zeroshot.topk_accuracy(logits, labels, 1),
                                 "acc5": zeroshot.topk_accuracy(logits, labels, min(5, summed.shape[1]))}
    best = max(per_alpha, key=lambda a: per_alpha[a]["acc1"])
    return {"chosen_on": "the evaluated (test) images, as VLMClassifier's get_accuracy.ipynb chose it",
            "best_alpha": float(best), **per_alpha[best], "per_alpha": per_alpha}


def onehot_logits(predictions: Sequence[int], n_classes: int) -> torch.Tensor:
    """``[N, C + 1]`` logits with one 1 per row; column C is "no class named"."""
    logits = torch.zeros(len(predictions), n_classes + 1)
    logits[torch.arange(len(predictions)), torch.tensor(list(predictions), dtype=torch.long)] = 1.0
    return logits


def answer_metrics(correct: Sequence[bool], labels: Sequence[int], predictions: Sequence[int],
                   n_classes: int) -> dict:
    """Metrics of open or closed answers: the prediction is the true class when correct, else
    the first other class named (or "none"), never the true class when wrong."""
    predicted = [y if ok else (p if p != y else n_classes) for ok, y, p in zip(correct, labels, predictions, strict=True)]
    metrics = zeroshot.classification_metrics(onehot_logits(predicted, n_classes), torch.tensor(list(labels)))
    metrics.update(acc5=None, acc5_low=None, acc5_high=None)  # one answer has no top five
    metrics["interval"].pop("acc5", None)
    return metrics


def first_other(answer_classes: Sequence[int], label: int, n_classes: int) -> int:
    """The first named class that is not the label, else the "none" column."""
    return next((c for c in answer_classes if c != label), n_classes)


_WS = re.compile(r"\s+")


def one_line(text: str) -> str:
    return _WS.sub(" ", text).strip()


# --- the stage: `ex2 classify --vlm gen:…` ----------------------------------------------------------


def check_config(config) -> None:
    """Errors for a ClassifyConfig whose open, closed or likelihood options cannot work."""
    parse_n_choices(config.n_choices)
    if config.length_norm not in ("mean", "sum"):
        raise ValueError(f"--length-norm must be mean or sum, not {config.length_norm!r}")
    if not 0 < config.calibration_fraction < 1:
        raise ValueError(f"--calibration-fraction must be between 0 and 1, got {config.calibration_fraction}")
    if config.gen_backend == "vllm" and config.method == "likelihood":
        raise ValueError("--gen-backend vllm answers open and closed questions; likelihood runs on transformers")
    if config.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {config.max_new_tokens}")
    from ex2.gvlm.backend import PROMPT_FORMATS

    for name, value, valid in (("prompt-format", config.prompt_format, PROMPT_FORMATS),
                               ("answer-match", config.answer_match, ANSWER_MATCHES),
                               ("choice-order", config.choice_order, CHOICE_ORDERS)):
        if value not in valid:
            raise ValueError(f"--{name} must be one of {', '.join(valid)}, not {value!r}")
    if config.choice_order == "fixed" and parse_n_choices(config.n_choices) is not None:
        raise ValueError("--choice-order fixed lists every class in dataset order; use --n-choices all")


def image_batches(items, batch_size: int, skipped: list, strict: bool = False, progress: bool = True,
                  desc: str = "images"):
    """Batches of ``(index, image, label, path)`` of the readable ``(path, label)`` items, read a batch
    at a time (never the whole dataset in memory); unreadable files go to ``skipped`` with their
    reason (raised when ``strict``)."""
    from tqdm.auto import tqdm

    from ex2.data import load_image

    batch = []
    for index, (path, label) in enumerate(tqdm(items, desc=desc, unit="img", disable=not progress)):
        try:
            image = load_image(path, strict=strict)
        except FileNotFoundError as err:
            if strict:
                raise
            image, reason = None, str(err)
        else:
            reason = "unreadable image"
        if image is None:
            skipped.append((Path(path), reason))
            continue
        batch.append((index, image, int(label), Path(path)))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluation_parts(config, dataset):
    """``(evaluated, held_out)``: the images to score, and those estimating the class prior
    (None without ``--calibrate``); never the same images."""
    if config.method != "likelihood" or not config.calibrate:
        return dataset, None
    if config.calibration_split:
        from ex2.data import load_dataset

        if config.calibration_split == dataset.split:
            raise ValueError(f"--calibration-split {config.calibration_split} is the evaluated split; "
                             "name another split, or leave it out to hold out --calibration-fraction")
        held = load_dataset(config.dataset, config.data_root, config.calibration_split, config.classnames)
        if held.classnames != dataset.classnames:
            raise ValueError(f"split {held.split} has other classes than split {dataset.split}")
        return dataset, held
    held, rest = split_per_class(dataset, config.calibration_fraction, config.seed, "calibration")
    return rest, held


def likelihood_scores(vlm, items, classnames: Sequence[str], config, skipped: list, desc: str = "scoring"):
    """``({"mean": [N, C], "sum": [N, C]}, labels, paths)``: each class name scored as the answer
    prefix's continuation, its token log-probabilities averaged and summed."""
    from ex2.gvlm.backend import join_continuation, reduce_logprobs

    prompt = vlm.prompt(config.question, answer_prefix=config.answer_prefix, prompt_format=config.prompt_format)
    continuations = [join_continuation(prompt, name) for name in classnames]
    rows: dict[str, list] = {"mean": [], "sum": []}
    labels, paths = [], []
    for batch in image_batches(items, config.batch_size, skipped, config.strict, config.progress, desc):
        for per_token in vlm.token_logprobs([b[1] for b in batch], prompt, continuations, config.batch_size):
            for norm, out in rows.items():
                out.append(reduce_logprobs(per_token, norm))
        labels += [b[2] for b in batch]
        paths += [b[3] for b in batch]
    empty = torch.empty(0, len(classnames))
    return {k: torch.stack(v) if v else empty for k, v in rows.items()}, labels, paths


def likelihood_logits(vlm, items, classnames: Sequence[str], config, skipped: list, desc: str = "scoring"):
    """``(logits [N, C], labels, paths)`` by ``--length-norm`` (see :func:`likelihood_scores`)."""
    scores, labels, paths = likelihood_scores(vlm, items, classnames, config, skipped, desc)
    return scores[config.length_norm], labels, paths


def answerer(config, vlm):
    """``answer(images, questions) -> answers``: greedy, through transformers or vLLM (loaded once)."""
    if config.gen_backend == "vllm":
        from ex2.gvlm.vllm_backend import VLLMAnswerer

        return VLLMAnswerer(config.vlm, config.max_new_tokens, config.prompt_format)

    def answer(images, questions):
        prompts = [vlm.prompt(q, prompt_format=config.prompt_format) for q in questions]
        return vlm.generate(images, prompts, config.max_new_tokens, config.batch_size)

    return answer


def collect_answers(answer, items, questions: list[str], config, skipped: list):
    """``(indexes, labels, paths, answers)`` of the readable items, asked ``questions[index]``."""
    indexes, labels, paths, answers = [], [], [], []
    chunk = config.batch_size if config.gen_backend == "transformers" else max(256, config.batch_size)
    for batch in image_batches(items, chunk, skipped, config.strict, config.progress, "answering"):
        answers += answer([b[1] for b in batch], [questions[b[0]] for b in batch])
        indexes += [b[0] for b in batch]
        labels += [b[2] for b in batch]
        paths += [b[3] for b in batch]
    return indexes, labels, paths, answers


def answer_records(config, labels, paths, answers, questions, choices, names) -> tuple[list[dict], list[bool], list[int]]:
    """One record per image (question, answer, named classes, correctness); correctness and the
    class counted as predicted."""
    records, correct, predicted = [], [], []
    n_classes = len(names)
    for i, (label, path, answer) in enumerate(zip(labels, paths, answers, strict=True)):
        among = choices[i] if choices else None
        named = named_classes(answer, names, among=among, match=config.answer_match)
        ok = (closed_correct(answer, label, among, names, config.answer_match) if choices
              else open_correct(answer, label, names, config.answer_match))
        correct.append(ok)
        predicted.append(label if ok else first_other(named, label, n_classes))
        record = {"path": str(path), "label": names[label][0], "question": questions[i], "answer": answer,
                  "named": [names[c][0] for c in named], "correct": ok}
        if among is not None:
            record["choices"] = [names[c][0] for c in among]
        records.append(record)
    return records, correct, predicted


def run_answers(config, vlm, items, names, out: Path, skipped: list, check_labels=lambda labels: None) -> dict:
    """Open or closed answers: answers.jsonl, predictions.csv and the metrics."""
    from ex2.core.io import write_jsonl

    choices = None
    if config.method == "closed":
        n_choices = parse_n_choices(config.n_choices, len(names))
        choices = draw_choices([label for _, label in items], [n[0] for n in names], n_choices, config.seed,
                               config.choice_order)
        questions = [closed_question(config.question, [names[c][0] for c in ch]) for ch in choices]
    else:
        questions = [config.question] * len(items)
    indexes, labels, paths, answers = collect_answers(answerer(config, vlm), items, questions, config, skipped)
    check_labels(labels)
    if choices is not None:
        choices = [choices[i] for i in indexes]
    records, correct, predicted = answer_records(config, labels, paths, answers, [questions[i] for i in indexes],
                                                 choices, names)
    if not records:
        return {"n_images": 0}
    out.mkdir(parents=True, exist_ok=True)  # the folder is made once there are answers
    write_jsonl(out / "answers.jsonl", records)
    write_csv(out / "predictions.csv", ["path", "label", "prediction", "correct", "answer"],
              [[r["path"], r["label"], names[p][0] if p < len(names) else "", int(r["correct"]), one_line(r["answer"])]
               for r, p in zip(records, predicted, strict=True)])
    metrics = answer_metrics(correct, labels, predicted, len(names)) if labels else {}
    metrics.update(question=config.question, gen_backend=config.gen_backend, max_new_tokens=config.max_new_tokens,
                   n_images=len(labels), answer_match=config.answer_match, prompt_format=_prompt_format(config, vlm))
    if choices is not None:
        metrics.update(n_choices=config.n_choices, choice_seed=config.seed, choice_order=config.choice_order)
    return metrics


def run_likelihood(config, vlm, items, classnames, held, out: Path, skipped: list,
                   check_labels=lambda labels: None) -> dict:
    """Class-name likelihoods (optionally calibrated): the CLIP methods' tables and the metrics."""
    scores, labels, paths = likelihood_scores(vlm, items, classnames, config, skipped)
    check_labels(labels)
    logits = scores[config.length_norm]
    info: dict = {"answer_prefix": config.answer_prefix, "length_norm": config.length_norm,
                  "question": config.question, "prompt_format": _prompt_format(config, vlm),
                  "calibrated": held is not None, "n_images": len(labels)}
    if not labels:
        return info
    label_tensor = torch.tensor(labels, dtype=torch.long)
    info["by_length_norm"] = {norm: {"acc1": zeroshot.topk_accuracy(s, label_tensor, 1),
                                     "acc5": zeroshot.topk_accuracy(s, label_tensor, min(5, s.shape[1]))}
                              for norm, s in scores.items()}
    info["vlmclassifier_calibration"] = alpha_grid(scores["sum"], label_tensor)
    if held is not None:
        held_skipped: list = []
        held_logits, _, _ = likelihood_logits(vlm, held.items, classnames, config, held_skipped, "calibrating")
        prior = class_prior(held_logits)
        logits = calibrate(logits, prior)
        info.update(calibration_split=held.split, n_calibration_images=len(held_logits),
                    class_prior=dict(zip(classnames, prior.tolist(), strict=True)))
    metrics = zeroshot.classification_metrics(logits, label_tensor)
    result = Evaluation([[c] for c in classnames], torch.empty(0), torch.empty(0), logits, metrics)
    out.mkdir(parents=True, exist_ok=True)  # the folder is made once there are scores
    write_tables(out, list(classnames), result, label_tensor, paths)
    return {**metrics, **info}


def _prompt_format(config, vlm) -> str:
    from ex2.gvlm.backend import resolve_prompt_format

    return resolve_prompt_format(config.prompt_format, getattr(vlm, "model_type", None)) if vlm is not None \
        else config.prompt_format


def run(config, vlm=None, dataset=None) -> Path:
    """``ex2 classify`` for a generative VLM; writes the run folder and returns it."""
    from ex2.core.config import save_config
    from ex2.core.io import write_json
    from ex2.data import load_dataset

    out = check_output_path(config.output, "folder")
    dataset = dataset or load_dataset(config.dataset, config.data_root, config.split, config.classnames)
    names = read_synonyms(config.synonyms, dataset.classnames) if config.synonyms else [[c] for c in dataset.classnames]
    if config.method == "closed":
        parse_n_choices(config.n_choices, len(names))
    evaluated, held = evaluation_parts(config, dataset)  # bad input fails before the model loads
    if config.gen_backend == "vllm":
        from ex2.gvlm.vllm_backend import import_vllm

        import_vllm()
    elif vlm is None:
        from ex2.gvlm.backend import load_gvlm

        vlm = load_gvlm(config.vlm, config.device, config.precision)
    skipped: list = []

    def every_class_read(labels: list[int]) -> None:  # as the CLIP methods: no class silently without images
        if labels:
            unreadable_classes(evaluated, torch.tensor(labels), drop=False, droppable=False)

    if config.method == "likelihood":
        scores = run_likelihood(config, vlm, evaluated.items, dataset.classnames, held, out, skipped, every_class_read)
    else:
        scores = run_answers(config, vlm, evaluated.items, names, out, skipped, every_class_read)
    if not scores["n_images"]:
        raise ValueError(f"{dataset.name} ({evaluated.split}): no readable images ({len(skipped)} skipped)")
    save_config(config, out)
    write_skipped(out, skipped)
    metrics = {"dataset": config.dataset, "split": evaluated.split, "vlm": config.vlm,
               "vlm_identity": getattr(vlm, "identity", config.vlm), "method": config.method,
               "descriptions": None, "categories": None, **scores,
               "n_classes": len(dataset.classnames), "n_skipped_images": len(skipped)}
    if config.synonyms:
        metrics["synonyms"] = str(config.synonyms)
    write_json(out / "metrics.json", metrics)
    report(config, metrics, out)
    return out
