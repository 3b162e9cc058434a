"""CoDer (Yi et al., CVPR 2024, "Leveraging Cross-Modal Neighbor Representation for Improved CLIP
Classification") as pure functions, and ``ex2 classify --method coder``.

An image is represented by its similarities to many class texts (its *cross-modal neighbors*):
the class name in the name template, "{c} which has {attribute}", "a {c} similar to {analogue}." and
the class's synonyms in the name template. A class's score averages its attribute and analogue
similarities together with the best of its name and synonym similarities::

    texts = coder_texts(classnames, knowledge, ["a photo of a {}."], kinds=("attributes", "analogous"))
    neighbors = images @ encode(texts.texts).T                       # [N, T]
    logits = class_scores(neighbors, texts.owners, texts.pooled_max, len(classnames))

CODER* re-ranks the top classes with one-vs-one texts ("what sets {c} apart from {b}") where the
softmax gap between the two best classes is small (:func:`ovo_rerank`); the few-shot variant is
Tip-Adapter with the normalised neighbor vectors as keys (:func:`tip_adapter_logits`), α and β
searched on a validation split carved from the labelled support pool (:func:`search_alpha_beta`).

    ex2 knowledge --dataset samples --llm smollm2 --output runs/knowledge.jsonl
    ex2 classify --method coder --knowledge runs/knowledge.jsonl --output runs/coder
    ex2 classify --method coder --knowledge runs/knowledge.jsonl --ovo-gap 0.1 --output runs/coder_ovo
    ex2 classify --method coder --knowledge runs/knowledge.jsonl --shots 4 --output runs/coder_4shot

With ``--coder-dir CLONE`` (a clone of YCaigogogo/CODER) the texts are CoDer's own: its
``template.py`` per dataset (``--coder-dataset``, default mapped from ``--dataset``), its class lists
by position, its released ``expert_knowledge`` files, and ``--coder-star`` re-ranks below its
per-dataset gap (:mod:`ex2.classify.coder_files` reads them all as data). Without it the texts are
ex2's (:func:`ours`).

Departures from the published code, on purpose, each with theirs by name: re-ranking applies to
every image whose gap is small (the published loop also required the true label among the top
five: ``--ovo-rows gap-and-label-in-top5``); the few-shot result is the one with α and β from the
validation split (the published script kept the better of that and its config's values, measured
on the test set: reported beside as ``few_shot.as_published``); synonym texts hold the synonym
(the released code's call leaves it None: ``--coder-synonyms as-run``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ex2.classify.coder_files import CoderTemplates
from ex2.classify.common import batched_encoder, embed_dataset, unreadable_classes
from ex2.classify.metrics import Evaluation, build_metrics, class_text_table, write_tables

CLASS_KINDS = ("attributes", "analogous", "synonyms")  # kinds that make class texts
ATTRIBUTE_TEMPLATE = "{c} which has {a}"
ANALOGOUS_TEMPLATE = "a {c} similar to {a}."
OVO_TEMPLATES = (
    "{c}, unlike {b}, shows {a}.",
    "{a} sets {c} apart from {b}.",
    "what tells {c} from {b} is {a}.",
)
Encode = Callable[[list[str]], torch.Tensor]


# --- class texts -------------------------------------------------------------------------------


@dataclass
class CoderTexts:
    """Every class text flattened: its class and whether it joins the max (name, synonyms) or
    the mean (attributes, analogues)."""

    texts: list[str]
    owners: torch.Tensor  # [T] class id of each text
    pooled_max: torch.Tensor  # [T] bool: True for name and synonym texts
    kinds: list[str]  # [T] name, synonyms, attributes or analogous

    def per_class(self, n_classes: int) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in range(n_classes)]
        for text, owner in zip(self.texts, self.owners.tolist(), strict=True):
            out[owner].append(text)
        return out


def fill(templates: Sequence[str], name: str) -> list[str]:
    """``name`` in every name template (``{}`` or ``{c}`` marks it)."""
    return [t.replace("{c}", "{}").format(name) for t in templates]


def ours(name_templates: Sequence[str]) -> CoderTemplates:
    """ex2's own CoDer texts: the given name templates (``{}`` marks the class), CoDer's generic
    attribute and analogue templates and ex2's three one-vs-one templates."""
    return CoderTemplates(tuple(t.replace("{}", "{c}") for t in name_templates), (ATTRIBUTE_TEMPLATE,),
                          (ANALOGOUS_TEMPLATE,), OVO_TEMPLATES, "ex2")


def _filled(templates: Sequence[str], **fields: str) -> list[str]:
    return [t.format_map(fields) for t in templates]


def coder_texts(
    classnames: Sequence[str], knowledge: dict[str, dict[str, list[str]]],
    templates: Sequence[str] | CoderTemplates, kinds: Sequence[str] = CLASS_KINDS, synonyms_as_run: bool = False,
    dedupe: bool = True,
) -> CoderTexts:
    """The class texts of CoDer's zero-shot classifier, in class order.

    ``knowledge[kind][class name]`` lists the attributes, analogous classes or synonyms of each class;
    a class without any keeps its name texts alone. ``templates``: CoDer's for a dataset
    (:func:`ex2.classify.coder_files.read_templates`) or name templates alone (:func:`ours`). As
    CoDer writes them, name texts read the class name with "_" as spaces, the others as it is.
    ``synonyms_as_run``: each synonym text as CoDer's released code makes it, whose call passes the
    synonym where the class name goes, leaving the synonym field None ("a photo of None").
    ``dedupe``: a repeated item counts once (ex2's knowledge); CoDer's files count every entry.
    """
    unknown = sorted(set(kinds) - set(CLASS_KINDS))
    if unknown:
        raise ValueError(f"unknown CoDer text kind(s) {', '.join(unknown)}; choose from {', '.join(CLASS_KINDS)}")
    templates = templates if isinstance(templates, CoderTemplates) else ours(templates)
    if not templates.name:
        raise ValueError("no name templates given; expected at least one, e.g. 'a photo of a {}.'")
    texts: list[str] = []
    owners: list[int] = []
    pooled: list[bool] = []
    text_kinds: list[str] = []

    def add(class_id: int, kind: str, items: list[str], is_max: bool) -> None:
        texts.extend(items)
        owners.extend([class_id] * len(items))
        pooled.extend([is_max] * len(items))
        text_kinds.extend([kind] * len(items))

    for c, name in enumerate(classnames):
        if "attributes" in kinds:
            add(c, "attributes", [t for a in _of(knowledge, "attributes", name, dedupe)
                                  for t in _filled(templates.attribute, c=name, a=a)], False)
        if "analogous" in kinds:
            add(c, "analogous", [t for a in _of(knowledge, "analogous", name, dedupe)
                                 for t in _filled(templates.analogous, c=name, a=a)], False)
        add(c, "name", _filled(templates.name, c=name.replace("_", " ")), True)
        if "synonyms" in kinds:
            add(c, "synonyms", [t for s in _of(knowledge, "synonyms", name, dedupe)
                                for t in _filled(templates.name, c="None" if synonyms_as_run else s)], True)
    return CoderTexts(texts, torch.tensor(owners, dtype=torch.long), torch.tensor(pooled, dtype=torch.bool), text_kinds)


def _of(knowledge: dict[str, dict[str, list[str]]], kind: str, name: str, dedupe: bool = True) -> list[str]:
    from ex2.core.text import normalise_name

    by_name = {normalise_name(k): v for k, v in knowledge.get(kind, {}).items()}
    items = list(by_name.get(normalise_name(name), []))
    return list(dict.fromkeys(items)) if dedupe else items


def ovo_texts(class_a: str, class_b: str, features: Sequence[str], templates: Sequence[str] = OVO_TEMPLATES) -> list[str]:
    """One-vs-one texts: each feature that sets ``class_a`` apart from ``class_b`` in every template."""
    return [t.format(c=class_a, b=class_b, a=f) for f in features for t in templates]


# --- scoring -----------------------------------------------------------------------------------


def neighbor_vectors(images: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``[N, T]`` of unit images to unit texts (CoDer's representation)."""
    return F.normalize(images.float(), dim=-1) @ F.normalize(text_embeddings.float(), dim=-1).T


def class_scores(
    neighbors: torch.Tensor, owners: torch.Tensor, pooled_max: torch.Tensor, n_classes: int, scale: float = 100.0
) -> torch.Tensor:
    """CoDer's class score ``[N, C]``: the mean over a class's mean-pooled similarities and the max
    of its max-pooled ones, times ``scale``. Every class needs at least one max-pooled text."""
    n = neighbors.shape[0]
    with_max = torch.bincount(owners[pooled_max], minlength=n_classes)
    if (with_max == 0).any():
        raise ValueError(f"class id(s) {(with_max == 0).nonzero().flatten().tolist()[:10]} have no name text")
    max_owners = owners[pooled_max]
    best = torch.full((n, n_classes), -torch.inf, dtype=neighbors.dtype)
    best = best.scatter_reduce(1, max_owners.expand(n, -1), neighbors[:, pooled_max], reduce="amax")
    mean_owners = owners[~pooled_max]
    sums = torch.zeros(n, n_classes, dtype=neighbors.dtype).index_add_(1, mean_owners, neighbors[:, ~pooled_max])
    counts = torch.bincount(mean_owners, minlength=n_classes).to(neighbors.dtype)
    return scale * (sums + best) / (counts + 1)


def softmax_gap(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 softmax probability per row."""
    top = logits.softmax(dim=1).topk(min(2, logits.shape[1]), dim=1).values
    return top[:, 0] - top[:, 1] if top.shape[1] > 1 else top[:, 0]


def ovo_rerank(
    images: torch.Tensor, logits: torch.Tensor, ovo: dict[tuple[int, int], torch.Tensor], gap: float, top_k: int = 5,
    only: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CODER*: re-pick the top class among the ``top_k`` best where the softmax gap is below ``gap``.

    Candidate ``c`` scores the mean over the other candidates ``o`` of mean(image · ovo[c, o]) −
    mean(image · ovo[o, c]); a pair missing either direction counts 0. The best candidate (the
    higher-ranked on ties) swaps its logit with the old top-1, so acc5 is unchanged. Returns the
    new logits and a bool mask of the rows considered; ``only`` (a bool mask) narrows those rows.
    """
    images = F.normalize(images.float(), dim=-1)
    top = logits.topk(min(top_k, logits.shape[1]), dim=1).indices
    rows = softmax_gap(logits) < gap
    if only is not None:
        rows &= only
    out = logits.clone()
    for i in rows.nonzero().flatten().tolist():
        candidates = top[i].tolist()
        scores = [_ovo_score(images[i], c, [o for o in candidates if o != c], ovo) for c in candidates]
        best = candidates[max(range(len(candidates)), key=lambda j: (scores[j], -j))]
        first = candidates[0]
        out[i, first], out[i, best] = logits[i, best], logits[i, first]
    return out, rows


def _ovo_score(image: torch.Tensor, c: int, others: list[int], ovo: dict[tuple[int, int], torch.Tensor]) -> float:
    if not others:
        return 0.0
    total = 0.0
    for o in others:
        if (c, o) in ovo and (o, c) in ovo:
            total += ((ovo[c, o].float() @ image).mean() - (ovo[o, c].float() @ image).mean()).item()
    return total / len(others)


# --- few-shot: Tip-Adapter over neighbor vectors -----------------------------------------------


def minmax_rows(x: torch.Tensor) -> torch.Tensor:
    low, high = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    return (x - low) / (high - low)


def tip_adapter_logits(
    zero_shot_logits: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor,
    n_classes: int, alpha: float, beta: float, temperature: float = 1.0,
) -> torch.Tensor:
    """Tip-Adapter as CoDer uses it: unit neighbor vectors ``queries [N, T]`` against the cache
    ``keys [S, T]``; affinities min-max normalised per row, ``exp(-β(1 − A))`` weights the
    one-hot labels, added ``α`` times to the zero-shot logits."""
    affinity = minmax_rows(queries.double() @ keys.double().T) / temperature
    weights = (-1 * (beta - beta * affinity)).exp()
    values = F.one_hot(key_labels, n_classes).double()
    return zero_shot_logits.double() + alpha * (weights @ values)


def _grid(low: float, high: float, steps: int) -> list[float]:
    return [i * (high - low) / steps + low for i in range(steps)]


def search_alpha_beta(
    zero_shot_logits: torch.Tensor, queries: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor,
    key_labels: torch.Tensor, n_classes: int, beta_range: tuple[float, float] = (0.1, 200.0),
    alpha_range: tuple[float, float] = (0.1, 20.0), beta_steps: int = 500, alpha_steps: int = 50, rounds: int = 3,
) -> tuple[float, float, float]:
    """CoDer's grid search on validation features: β outer, α inner, the first best accuracy kept;
    each further round searches 0.5×..1.5× the best of the last. Returns (α, β, validation acc)."""
    (b_low, b_high), (a_low, a_high) = beta_range, alpha_range
    affinity = minmax_rows(queries.double() @ keys.double().T)
    values = F.one_hot(key_labels, n_classes).double()
    best_alpha = best_beta = best_acc = 0.0
    for _ in range(rounds):
        alphas = torch.tensor(_grid(a_low, a_high, alpha_steps), dtype=torch.float64)
        best_acc, best_alpha, best_beta = 0.0, 0.0, 0.0
        for beta in _grid(b_low, b_high, beta_steps):
            cache = (-1 * (beta - beta * affinity)).exp() @ values
            logits = zero_shot_logits.double()[None] + alphas[:, None, None] * cache[None]
            accs = (logits.argmax(-1) == labels[None]).double().mean(1) * 100
            j = int(accs.argmax())
            if accs[j].item() > best_acc:
                best_acc, best_alpha, best_beta = accs[j].item(), alphas[j].item(), beta
        b_low, b_high, a_low, a_high = best_beta * 0.5, best_beta * 1.5, best_alpha * 0.5, best_alpha * 1.5
    return best_alpha, best_beta, best_acc / 100


def carve_support(
    labels: Sequence[int], shots: int, val_shots: int, seed: int
) -> tuple[list[int], list[int]]:
    """Seeded disjoint picks per class from a labelled pool: ``shots`` for the cache, then
    ``val_shots`` for choosing α and β. Returns their indices into ``labels``."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    support, val = [], []
    for y, members in sorted(by_class.items()):
        if len(members) < shots + val_shots:
            raise ValueError(f"class id {y} has {len(members)} labelled image(s); --shots {shots} needs "
                             f"{shots} plus {val_shots} for validation")
        picked = random.Random(f"{seed}:{y}").sample(members, shots + val_shots)
        support += picked[:shots]
        val += picked[shots:]
    return sorted(support), sorted(val)


# --- ex2 classify --method coder ---------------------------------------------------------------


FEW_SHOT_KINDS = ("attributes", "analogous")  # classify_few_shot.py: names, attributes, analogous classes
OVO_ROWS = ("gap", "gap-and-label-in-top5")


def check_config(config) -> None:
    """Errors for a ClassifyConfig whose CoDer options cannot work."""
    if config.kinds is None:  # CoDer's own: exp_zero_shot.sh adds synonyms, classify_few_shot.py does not
        config.kinds = list(FEW_SHOT_KINDS if config.shots else CLASS_KINDS)
    config.kinds = [k.strip() for item in config.kinds for k in item.split(",") if k.strip()]
    unknown = sorted(set(config.kinds) - set(CLASS_KINDS))
    if unknown:
        extra = " (one-vs-one texts are used through --ovo-gap)" if "ovo" in unknown else ""
        raise ValueError(f"unknown --kinds {', '.join(unknown)}; choose from {', '.join(CLASS_KINDS)}{extra}")
    if config.method != "coder":
        return
    if not config.knowledge and not config.coder_dir:
        raise ValueError("--method coder needs --knowledge FILE (the knowledge.jsonl of `ex2 knowledge`, or CoDer's "
                         "expert_knowledge folder) or --coder-dir CLONE (reads CLONE/expert_knowledge)")
    if config.coder_dir and not (Path(config.coder_dir).expanduser() / "CODER" / "template.py").is_file():
        raise FileNotFoundError(f"--coder-dir {config.coder_dir}: no CODER/template.py; expected a clone of "
                                "YCaigogogo/CODER")
    if not 0 <= config.ovo_gap <= 1:
        raise ValueError(f"--ovo-gap is a softmax-probability gap in [0, 1], not {config.ovo_gap}")
    if config.coder_star and (not config.coder_dir or config.ovo_gap):
        raise ValueError("--coder-star re-ranks below CoDer's per-dataset gap (its utils.py): it needs --coder-dir "
                         "and takes no --ovo-gap")
    if config.ovo_rows not in OVO_ROWS:
        raise ValueError(f"--ovo-rows must be one of {', '.join(OVO_ROWS)}, not {config.ovo_rows!r}")
    for name in ("ovo_top", "augment_views"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.shots < 0 or (config.val_shots is not None and config.val_shots < 1):
        raise ValueError("--shots must be 0 or more and --val-shots at least 1")
    if config.explain or config.explain_misclassified:
        raise ValueError("--explain is not available with --method coder")


def _ovo_bank(encode: Encode, classnames: list[str], ovo: dict[tuple[str, str], list[str]],
              templates: Sequence[str] = OVO_TEMPLATES) -> dict:
    """The embeddings of every pair's one-vs-one texts, all encoded in one call."""
    from ex2.core.text import normalise_name

    index = {normalise_name(n): i for i, n in enumerate(classnames)}
    texts = {}
    for (a, b), features in ovo.items():
        ia, ib = index.get(normalise_name(a)), index.get(normalise_name(b))
        if ia is not None and ib is not None and features:
            texts[ia, ib] = ovo_texts(classnames[ia], classnames[ib], features, templates)
    if not texts:
        return {}
    rows = encode([t for pair_texts in texts.values() for t in pair_texts])
    return dict(zip(texts, rows.split([len(t) for t in texts.values()]), strict=True))


def augmented_embeddings(vlm, paths: list[Path], views: int, seed: int) -> torch.Tensor:
    """Each image's embedding averaged over ``views`` seeded random crops and flips (Tip-Adapter's
    cache augmentation: RandomResizedCrop at scale 0.5..1, horizontal flip), L2-normalised."""
    from torchvision import transforms

    from ex2.data import load_image

    augment = transforms.Compose([
        transforms.RandomResizedCrop(224, scale=(0.5, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(p=0.5),
    ])
    out = []
    for n, path in enumerate(paths):
        image = load_image(path)
        if image is None:
            raise ValueError(f"support image {path} cannot be read")
        with torch.random.fork_rng():
            torch.manual_seed(seed * 1_000_003 + n)
            pixels = torch.stack([vlm.preprocess(augment(image)) for _ in range(views)])
        out.append(vlm.encode_images(pixels).mean(0))
    return F.normalize(torch.stack(out), dim=-1)


@dataclass
class CoderInputs:
    """What a CoDer run reads before any model loads: its templates, the class names its texts
    write (CoDer's list with --coder-dir, by position; else the dataset's), knowledge keyed by
    those names, and the re-ranking gap (0: none)."""

    templates: CoderTemplates
    text_names: list[str]
    knowledge: dict
    provenance: dict
    gap: float
    from_coder_files: bool
    init_alpha_beta: tuple[float, float] | None = None  # few-shot: CoDer's config values, for its own report


def coder_inputs(config, classnames: list[str]) -> CoderInputs:
    """Resolve templates, class names, knowledge and gap (see :class:`CoderInputs`)."""
    from ex2.classify import coder_files as cf

    name = config.coder_dataset or cf.coder_dataset_name(config.dataset)
    task = "few-shot" if config.shots else "zero-shot"
    clone = Path(config.coder_dir).expanduser() if config.coder_dir else None
    if clone is not None:
        templates = cf.read_templates(clone / "CODER" / "template.py", name, task)
        text_names = cf.read_class_names(clone / "datasets" / "class_name", name, task)
        if len(text_names) != len(classnames):
            raise ValueError(f"CoDer lists {len(text_names)} classes for {name} and {config.dataset} has "
                             f"{len(classnames)}; pass --coder-dataset with CoDer's name for this dataset")
        gap = cf.read_thresholds(clone / "utils.py").get(name) if config.coder_star else config.ovo_gap
        if gap is None:
            raise ValueError(f"{clone / 'utils.py'} has no re-ranking gap for {name}; pass --ovo-gap instead")
        init = cf.read_init_alpha_beta(clone / "configs", name) if config.shots else None
    else:
        from ex2.data import load_templates

        templates, text_names, gap = ours(load_templates(config.templates)), list(classnames), config.ovo_gap
        init = None
    source = Path(config.knowledge).expanduser() if config.knowledge else clone / "expert_knowledge"
    if source.is_dir():
        kinds = tuple(config.kinds) + (("ovo",) if gap > 0 else ())
        knowledge = cf.read_knowledge(source, name, text_names, kinds)
        provenance = {"path": str(source.resolve()), "source": f"CoDer's released knowledge ({name})"}
        return CoderInputs(templates, text_names, knowledge, provenance, gap, True, init)
    from ex2.knowledge.records import load_knowledge

    knowledge, provenance = load_knowledge(source, classnames)
    return CoderInputs(templates, text_names, _rekey(knowledge, classnames, text_names), provenance, gap, False, init)


def _rekey(knowledge: dict, names: list[str], new_names: list[str]) -> dict:
    """Knowledge keyed by ``names`` re-keyed to the ``new_names`` at the same positions."""
    from ex2.core.text import normalise_name

    if names == new_names:
        return knowledge
    to = {normalise_name(a): b for a, b in zip(names, new_names, strict=True)}

    def key(k):
        return tuple(to.get(normalise_name(p), p) for p in k) if isinstance(k, tuple) else to.get(normalise_name(k), k)

    return {kind: {key(k): v for k, v in items.items()} for kind, items in knowledge.items()}


def run_classify(config, out: Path, dataset, vlm, inputs: CoderInputs | None = None) -> Path:
    """``ex2 classify --method coder``: the run folder, with the same files as other methods."""
    from ex2.classify import zeroshot
    from ex2.core.io import write_json

    inputs = inputs or coder_inputs(config, dataset.classnames)
    texts = coder_texts(inputs.text_names, inputs.knowledge, inputs.templates, config.kinds,
                        config.coder_synonyms == "as-run", dedupe=not inputs.from_coder_files)
    encode = batched_encoder(vlm, config.progress, config.cache)
    images, labels = embed_dataset(vlm, dataset, config)
    unreadable_classes(dataset, labels, drop=False, droppable=False)  # as the CLIP methods: no class silently without images
    features, paths = images.embeddings, list(images.paths)
    info: dict = {"knowledge": inputs.provenance, "kinds": config.kinds, "templates": inputs.templates.source,
                  "name_templates": list(inputs.templates.name), "coder_synonyms": config.coder_synonyms,
                  "texts_per_kind": {k: texts.kinds.count(k) for k in dict.fromkeys(texts.kinds)}}
    if inputs.text_names != dataset.classnames:
        info["coder_class_names"] = {"renamed": sum(a != b for a, b in zip(inputs.text_names, dataset.classnames,
                                                                          strict=True))}
    text_embeddings = encode(texts.texts)
    if config.shots:
        features, labels, paths, few = _few_shot(config, dataset, vlm, images, labels, text_embeddings, encode,
                                                 inputs.init_alpha_beta)
        logits = few.pop("logits")
        info["few_shot"] = few
    else:
        logits = class_scores(neighbor_vectors(features, text_embeddings), texts.owners, texts.pooled_max,
                              len(dataset.classnames))
    if inputs.gap > 0:
        bank = _ovo_bank(encode, inputs.text_names, inputs.knowledge.get("ovo", {}), inputs.templates.ovo)
        before = logits.argmax(1)
        only = None
        if config.ovo_rows == "gap-and-label-in-top5":  # the published loop's row filter reads the test labels
            only = (logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]).any(1)
        logits, rows = ovo_rerank(features, logits, bank, inputs.gap, config.ovo_top, only)
        info["rerank"] = {"ovo_gap": inputs.gap, "gap_from": "CoDer utils.py" if config.coder_star else "--ovo-gap",
                          "top_k": config.ovo_top, "pairs": len(bank), "rows": config.ovo_rows,
                          "images_considered": int(rows.sum()), "changed": int((logits.argmax(1) != before).sum())}
        if only is not None:
            info["rerank"]["note"] = "rows chosen with the test labels (true class in the top five), as CoDer's loop"
    logits = logits.float()
    metrics_now = zeroshot.classification_metrics(logits, labels)
    per_class = texts.per_class(len(dataset.classnames))
    result = Evaluation(per_class, text_embeddings, torch.empty(0), logits, metrics_now)
    from ex2.core.config import save_config

    out.mkdir(parents=True, exist_ok=True)  # nothing is written before the run has its results
    save_config(config, out)
    write_json(out / "class_texts.json", class_text_table(dataset.classnames, per_class))
    write_tables(out, dataset.classnames, result, labels, paths)
    shown = _Images(paths, images.skipped)
    metrics = build_metrics(config, dataset, vlm, [result], {"descriptions": None, **info}, shown)
    write_json(out / "metrics.json", metrics)
    print(f"coder on {config.dataset} with {config.vlm}: top-1 {metrics['acc1']:.1%}, "
          f"top-5 {metrics['acc5']:.1%} ({metrics['n_images']} images) -> {out / 'metrics.json'}")
    return out


@dataclass
class _Images:
    paths: list[Path]
    skipped: list


def _few_shot(config, dataset, vlm, images, labels, text_embeddings, encode, init=None):
    """Tip-Adapter over neighbor vectors; returns the test features, labels, paths and a summary
    (with the test logits under "logits"). ``init`` (α, β of CoDer's config) adds the number its
    script prints: the better test accuracy of those and the searched α, β, labelled as chosen on test."""
    from ex2.classify import zeroshot
    from ex2.data import load_dataset, load_templates

    val_shots = config.val_shots or min(config.shots, 4)
    if config.support_split:
        pool_set = load_dataset(config.dataset, config.data_root, config.support_split, config.classnames)
        if pool_set.classnames != dataset.classnames:
            raise ValueError(f"--support-split {config.support_split} has other classes than the evaluated split")
        pool, pool_labels = embed_dataset(vlm, pool_set, config)
        test_idx = list(range(len(labels)))
    else:
        pool, pool_labels = images, labels
    support, val = carve_support(pool_labels.tolist(), config.shots, val_shots, config.seed)
    if not config.support_split:
        held = set(support) | set(val)
        test_idx = [i for i in range(len(labels)) if i not in held]
        if not test_idx:
            raise ValueError(f"--shots {config.shots} with {val_shots} validation images per class leaves no test image")
    n_classes = len(dataset.classnames)
    weights = zeroshot.build_classifier(encode, zeroshot.template_texts(dataset.classnames,
                                                                        load_templates(config.templates)))

    def query(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(neighbor_vectors(x, text_embeddings), dim=-1)

    support_x = augmented_embeddings(vlm, [pool.paths[i] for i in support], config.augment_views, config.seed)
    keys, key_labels = query(support_x), pool_labels[support]
    val_x = pool.embeddings[val]
    alpha, beta, val_acc = search_alpha_beta(100 * val_x @ weights, query(val_x), pool_labels[val], keys,
                                             key_labels, n_classes)
    test_x = images.embeddings[test_idx]
    zero_shot = 100 * test_x @ weights
    logits = tip_adapter_logits(zero_shot, query(test_x), keys, key_labels, n_classes, alpha, beta)
    same_images = zeroshot.topk_accuracy(zero_shot, labels[test_idx], 1)
    published = None
    if init is not None:
        searched = zeroshot.topk_accuracy(logits, labels[test_idx], 1)
        at_init = zeroshot.topk_accuracy(tip_adapter_logits(zero_shot, query(test_x), keys, key_labels, n_classes,
                                                            *init), labels[test_idx], 1)
        published = {"init_alpha": init[0], "init_beta": init[1], "acc1_init": at_init,
                     "acc1_max_with_init": max(searched, at_init),
                     "chosen_on": "the test set: classify_few_shot.py prints the better of its config's and the "
                                  "searched alpha, beta"}
    summary = {"clip_acc1_same_images": same_images, "shots": config.shots, "val_shots": val_shots,
               "augment_views": config.augment_views, "support_split": config.support_split or dataset.split, "alpha": alpha, "beta": beta,
               "val_acc1": val_acc, "n_support": len(support), "n_val": len(val), "logits": logits}
    if published is not None:
        summary["as_published"] = published
    return test_x, labels[test_idx], [images.paths[i] for i in test_idx], summary
