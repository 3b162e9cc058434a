"""``clip``: each class's name in CLIP's templates ("a photo of a {}."), pooled into one text
embedding per class (Radford et al.).

    ex2 classify --dataset samples --vlm conse --method clip --output runs/clip
    ex2 classify --method clip --templates clip_ensemble --output runs/ens
"""

from __future__ import annotations

from ex2.classify import zeroshot
from ex2.classify.common import text_classifier
from ex2.classify.methods.base import Method
from ex2.classify.options import EncoderOptions, TemplateOptions, TextClassifierOptions
from ex2.data import load_templates


def class_texts(config, classnames: list[str]) -> tuple[list[list[list[str]]], dict, list[str]]:
    """One text set: every class name in every template."""
    templates = load_templates(config.templates)
    return [zeroshot.template_texts(classnames, templates)], {"templates": config.templates}, []


METHOD = Method(
    name="clip",
    summary="class names in templates, one mean text embedding per class",
    options=(TemplateOptions, TextClassifierOptions, EncoderOptions),
    run=text_classifier(class_texts),
    aggregate="mean_embedding",
)
