"""Synonyms from WordNet, by CoDer's rule (:func:`wordnet_synonyms`), read with nltk from nltk's own
corpus or Debian's ``wordnet-base``; nothing is downloaded."""

from __future__ import annotations

import shutil
from pathlib import Path

from ex2.core.io import atomic_write_text, cache_dir, temp_folder_beside
from ex2.core.text import normalise_name

WORDNET_DIRS = (Path("/usr/share/wordnet"),)  # Debian's wordnet-base
# WordNet 3.0's lexicographer files in order (lexnames(5WN)); Debian's package omits the list nltk reads
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_POS_NUMBER = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def wordnet():
    """An nltk WordNet reader over nltk's own data if installed, else over Debian's ``wordnet-base``
    (``/usr/share/wordnet``, copied once into the ex2 cache beside the lexnames list nltk reads);
    nothing is downloaded."""
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError as err:
        raise ValueError("synonyms need nltk: pip install 'nltk>=3.8' (listed in ex2's requirements)") from err
    try:  # nltk's own corpus; ex2's copy of Debian's (found once on nltk's path) lacks index.sense
        return WordNetCorpusReader(nltk.data.find("corpora/wordnet"), None)
    except (LookupError, OSError):
        pass
    for folder in WORDNET_DIRS:
        if (folder / "data.noun").is_file():
            root = _nltk_copy(folder)
            if str(root.parents[1]) not in nltk.data.path:
                nltk.data.path.append(str(root.parents[1]))  # nltk reads only below its data paths
            return _wordnet_30_reader()(str(root), None)
    raise ValueError("synonyms need WordNet data: install Debian's wordnet-base (apt-get install wordnet-base, "
                     "as `make system-deps` does) or nltk's wordnet corpus; or leave synonyms out of --kinds")


def _wordnet_30_reader():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class WordNet30(WordNetCorpusReader):
        """Debian ships WordNet 3.0, the version nltk maps other wordnets to: no mapping to build
        (which would read the optional index.sense twice)."""

        def map_wn(self, version="wordnet"):
            return None

    return WordNet30


def _nltk_copy(folder: Path) -> Path:
    """``cache_dir()/nltk_data/corpora/wordnet``: ``folder``'s WordNet files and the lexnames list."""
    target = cache_dir() / "nltk_data" / "corpora" / "wordnet"
    if (target / "lexnames").is_file():
        return target
    tmp = temp_folder_beside(target)
    try:
        for source in folder.iterdir():
            if source.is_file():
                shutil.copyfile(source, tmp / source.name)
        lines = [f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}" for i, name in enumerate(LEXNAMES)]
        atomic_write_text(tmp / "lexnames", "\n".join(lines) + "\n")
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "lexnames").is_file():  # else another process finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def wordnet_synonyms(reader, concept: str, encode) -> list[str]:
    """CoDer's rule: among the noun synsets of ``concept`` (most frequent first), the one whose
    gloss is nearest "a photo of a {concept}." in ``encode``'s space; its lemmas but the concept."""
    synsets = reader.synsets(concept.strip().replace(" ", "_"), pos="n")
    if not synsets:
        return []
    synsets = sorted(synsets, key=lambda s: -sum(_count(lemma) for lemma in s.lemmas()))
    name = encode([f"a photo of a {concept}."])
    glosses = encode([s.definition() for s in synsets])
    chosen = synsets[int((glosses @ name.T).flatten().argmax())]
    own = normalise_name(concept)
    lemmas = [lemma.name().replace("_", " ") for lemma in chosen.lemmas()]
    return [w for w in dict.fromkeys(lemmas) if normalise_name(w) != own]


def _count(lemma) -> int:
    try:
        return lemma.count()
    except (OSError, LookupError):
        return 0
