"""Choose ConSE's top-T and class-name form by zero-shot top-1 (the table in :mod:`ex2.vlm.conse`).

    python analysis/conse_measure.py           # samples dataset, CPU, about a minute once cached

Images: the ``samples`` dataset (8 classes x 10 views). Text: "a photo of a {}." for each class.
Two label sets: the 8 sample classes alone, and the 8 plus the 100 CIFAR-100 class names as
distractors (harder: "cup" competes with "espresso", "castle" with "temple", "rose" with "dahlia").
Each cell is top-1 accuracy (%) and, after the slash, the mean softmax probability of the true
class at logit scale 100.
"""

from __future__ import annotations

import torch

from ex2.vlm.conse import NAME_FORMS, class_name_embeddings

TOP_TS = (1, 3, 5, 10, 20, 50, 1000)
_CIFAR100 = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach "
    "couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster "
    "house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree "
    "motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear "
    "pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar "
    "sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip "
    "turtle wardrobe whale willow_tree wolf woman worm"
)
CIFAR100 = [name.replace("_", " ") for name in _CIFAR100.split()]


def score(vlm, probabilities: torch.Tensor, labels: torch.Tensor, texts: torch.Tensor) -> str:
    """``top-1 % / mean p(true class)`` for the current top-T and class embeddings."""
    images = torch.nn.functional.normalize(vlm.mix(probabilities), dim=-1)
    logits = vlm.logit_scale * images @ texts.T
    top1 = (logits.argmax(dim=1) == labels).float().mean().item()
    p_true = logits.softmax(dim=1)[torch.arange(len(labels)), labels].mean().item()
    return f"{100 * top1:5.1f}/{p_true:.2f}"


def measure(dataset: str = "samples") -> str:
    """The table of top-1 (and mean true-class probability) per name form and top-T."""
    from ex2.data import load_dataset, load_image
    from ex2.vlm import load_vlm

    vlm = load_vlm("conse", device="cpu", precision="fp32")
    data = load_dataset(dataset)
    pixels = torch.stack([vlm.preprocess(load_image(path, strict=True)) for path, _ in data.items])
    labels = torch.tensor([label for _, label in data.items])
    with torch.inference_mode():
        probabilities = vlm.class_probabilities(pixels)
    label_sets = {
        f"{len(data.classnames)} classes": data.classnames,
        f"+ {len(CIFAR100)} CIFAR-100 distractors": data.classnames
        + [c for c in CIFAR100 if c not in data.classnames],
    }
    lines = [f"{'label set':<30} {'name form':<10} " + " ".join(f"{f'T={t}':<10}" for t in TOP_TS)]
    for set_name, names in label_sets.items():
        texts = vlm.encode_texts([f"a photo of a {name}." for name in names])
        for form in NAME_FORMS:
            vlm.class_embeddings = class_name_embeddings(vlm.text_encoder, form)
            cells = []
            for top_t in TOP_TS:
                vlm.top_t = top_t
                cells.append(f"{score(vlm, probabilities, labels, texts):<10}")
            lines.append(f"{set_name:<30} {form:<10} " + " ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    print(measure())
