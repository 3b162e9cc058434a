"""Planted preference: does ``ex2 train`` learn a preference we put there ourselves?

The ``planted`` reward scores a description by the VLM text encoder's similarity to a fixed
attribute text (dense, so GRPO groups keep reward variance) plus a bonus when it names one of the
attribute's keywords (lexical, so the words themselves pay). The attribute's *share* among sampled
descriptions, the same keyword match, is measured on held-out templates before (adapter off) and
after training, with the same sampler and seed. Run on the embedded default, CPU::

    python analysis/planted_preference.py --attribute colour --output runs/planted-colour \
        --max-steps 48 --num-iterations 2 --learning-rate 2e-3 --batch-size 8 \
        --max-completion-length 16 --eval-samples 4 --save-steps 8 --seed 1

It writes ``RUN/planted_share.json`` and prints the shares; training resumes if rerun.

Measured on 2 CPU cores (smollm2 + conse + samples, the command above: 8 completions of 16 tokens a
step, 2 passes per batch, about 7 s a step; 160 held-out samples; keywords fixed before the run;
the red and habitat runs used seed 0)::

    attribute  bonus  steps  planted reward    keyword share
    colour     20     48     17.25 -> 77.30    4.4 % -> 98.8 %
    colour     0      48     16.37 -> 21.95    4.4 % -> 4.4 %
    red        20     48     11.83 -> 44.14    0.0 % -> 2.5 %
    red        0      32     12.89 -> 30.14    0.0 % -> 2.5 %   (40 samples)
    habitat    0      48     12.48 -> 27.78    0.0 % -> 2.5 %   (40 samples)

GRPO can only reinforce what the sampler already produces: the base model names a colour in 4 % of
its answers, so the colour bonus is found and taken (the share passes 50 % of the logged samples by
step 17). Without the bonus the same run raises the similarity but not the share: the dense term
keeps groups varied, the lexical term says what to learn. The base model almost never says "red" or
"habitat", so those runs climb the similarity alone and drift to the attribute's neighbourhood
("bright", "vibrant", "glow") without its words.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ex2.core.io import write_json
from ex2.reward.planted import DEFAULT_PLANTED_BONUS, keyword_pattern

# attribute name -> (planted text the reward pulls towards, keywords that count as mentioning it)
# colour: Berlin & Kay's eleven basic colour terms and the words for colour itself
BASIC_COLOURS = ("black", "white", "red", "green", "yellow", "blue", "brown", "orange", "pink", "purple",
                 "grey", "gray")
COLOUR_WORDS = ("color", "colors", "colour", "colours", "colored", "coloured", "colorful", "colourful")
ATTRIBUTES = {
    "colour": ("It is brightly colored, in red, yellow, green and blue.", BASIC_COLOURS + COLOUR_WORDS),
    "red": ("It is bright red.", ("red", "reds", "reddish", "crimson", "scarlet")),
    "habitat": ("It lives in the wild, in its natural habitat.",
                ("habitat", "habitats", "wild", "wilderness", "jungle", "jungles", "forest", "forests",
                 "savanna", "savannah", "natural environment", "in nature")),
}


def has_attribute(text: str, keywords: tuple[str, ...] = ATTRIBUTES["habitat"][1]) -> bool:
    """Whether a description mentions the planted attribute (a keyword match)."""
    return keyword_pattern(keywords).search(text) is not None


def share(texts: list[str], keywords: tuple[str, ...] = ATTRIBUTES["habitat"][1]) -> float:
    return sum(has_attribute(text, keywords) for text in texts) / max(len(texts), 1)


def measure(eval_json: dict, keywords: tuple[str, ...] = ATTRIBUTES["habitat"][1]) -> dict:
    """Attribute share and mean planted reward, base vs. trained, from a run's ``eval.json``."""
    samples = eval_json["samples"]
    base, trained = [s["base"] for s in samples], [s["trained"] for s in samples]
    return {
        "samples": len(samples),
        "base_share": share(base, keywords), "trained_share": share(trained, keywords),
        "base_mean_reward": eval_json["base_mean_reward"], "trained_mean_reward": eval_json["trained_mean_reward"],
    }


def study_argv(attribute: str, bonus: float) -> list[str]:
    """``ex2 train`` flags of the study: the planted reward for ``attribute``, no KL term, 4 held-out
    samples per prompt; flags given after them override them."""
    planted_text, keywords = ATTRIBUTES[attribute]
    return ["--reward", "planted", "--planted-text", planted_text, "--planted-keywords", *keywords,
            "--planted-bonus", str(bonus), "--beta", "0", "--eval-samples", "4", "--output", "runs/planted"]


def main(argv: list[str] | None = None) -> dict:
    import dataclasses
    import json

    from ex2.train.stage import parse_args, run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="every other flag is ex2 train's (see ex2 train --help)")
    parser.add_argument("--attribute", choices=sorted(ATTRIBUTES), default="habitat")
    parser.add_argument("--bonus", type=float, default=DEFAULT_PLANTED_BONUS,
                        help="reward bonus for naming a keyword (0: similarity to the attribute text alone)")
    study, rest = parser.parse_known_args(argv)
    config, args = parse_args([*study_argv(study.attribute, study.bonus), *rest], "planted_preference.py")
    output = Path(args.output_dir)
    config = dataclasses.replace(config, resume=config.resume or (output / "config.yaml").is_file())
    run(config, args)
    keywords = ATTRIBUTES[study.attribute][1]
    result = {"attribute": config.planted_text, "keywords": list(keywords), "bonus": config.planted_bonus,
              "max_steps": args.max_steps, **measure(json.loads((output / "eval.json").read_text()), keywords)}
    write_json(output / "planted_share.json", result)
    print(f"planted attribute share on held-out templates ({result['samples']} samples): "
          f"base {result['base_share']:.1%} -> trained {result['trained_share']:.1%} after {args.max_steps} steps; "
          f"planted reward {result['base_mean_reward']:.2f} -> {result['trained_mean_reward']:.2f}")
    return result


if __name__ == "__main__":
    main()
