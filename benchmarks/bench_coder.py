"""What CoDer's scoring costs against DCLIP's, on the same cached image embeddings and texts.

    python benchmarks/bench_coder.py                          # conse on samples, synthetic knowledge
    python benchmarks/bench_coder.py --knowledge runs/knowledge.jsonl --repeat 50

DCLIP pools each class's texts into one column (``[D, C]``) and scores with one matrix product;
CoDer keeps every text as a column (the neighbor vector ``[N, T]``) and pools the scores per class
(:func:`ex2.classify.coder.class_scores`). Both get the same texts per class (CoDer's attribute, analogue and
name texts); text encoding is timed apart, once, since the VLM's LRU would make a second pass free.
Images are tiled ``--tile`` times so that the product is measurable. Prints seconds per call and the
ratio coder / dclip.
"""

from __future__ import annotations

import argparse
import time


def timed_pair(first, second, repeat: int) -> tuple[float, float]:
    """The fastest of ``repeat`` calls of each, alternating (robust to other load on the machine)."""
    best = [float("inf"), float("inf")]
    first(), second()  # warm-up
    for _ in range(repeat):
        for k, fn in enumerate((first, second)):
            start = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return best[0], best[1]


def synthetic_knowledge(classnames: list[str], per_class: int) -> dict:
    features = ["a long tail", "four legs", "a round shape", "a metal frame", "bright colours", "a flat top"]
    return {"attributes": {c: [features[i % len(features)] + f" {i}" for i in range(per_class)] for c in classnames},
            "analogous": {c: [classnames[(j + 1) % len(classnames)]] for j, c in enumerate(classnames)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="samples")
    parser.add_argument("--data-root")
    parser.add_argument("--vlm", default="conse")
    parser.add_argument("--knowledge", help="knowledge.jsonl; default: 10 synthetic attributes per class")
    parser.add_argument("--tile", type=int, default=100, help="copies of the image embeddings scored")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)

    from ex2.classify import zeroshot
    from ex2.classify.coder import class_scores, coder_texts, neighbor_vectors
    from ex2.classify.common import embed_dataset
    from ex2.classify.stage import ClassifyConfig
    from ex2.data import load_dataset
    from ex2.knowledge.records import load_knowledge
    from ex2.vlm import load_vlm

    dataset = load_dataset(args.dataset, args.data_root)
    vlm = load_vlm(args.vlm)
    images, _ = embed_dataset(vlm, dataset, ClassifyConfig(dataset=args.dataset, vlm=args.vlm, progress=False))
    x = images.embeddings.repeat(args.tile, 1)
    knowledge = load_knowledge(args.knowledge)[0] if args.knowledge else synthetic_knowledge(dataset.classnames, 10)
    texts = coder_texts(dataset.classnames, knowledge, ["a photo of a {}."], ["attributes", "analogous"])
    n = len(dataset.classnames)
    start = time.perf_counter()
    embeddings = vlm.encode_texts(texts.texts)
    encode_s = time.perf_counter() - start

    def dclip():
        weights = zeroshot.pool_classifier(embeddings, texts.owners, n, "mean_score")
        return zeroshot.score(x, weights)

    def coder():
        return class_scores(neighbor_vectors(x, embeddings), texts.owners, texts.pooled_max, n)

    dclip_s, coder_s = timed_pair(dclip, coder, args.repeat)
    print(f"{len(x)} images x {len(texts.texts)} texts ({len(texts.texts) / n:.1f} per class); "
          f"text encoding once: {encode_s:.3f} s")
    print(f"dclip scoring  {dclip_s * 1e3:8.2f} ms")
    print(f"coder scoring  {coder_s * 1e3:8.2f} ms")
    print(f"ratio coder / dclip: {coder_s / dclip_s:.2f}")


if __name__ == "__main__":
    main()
