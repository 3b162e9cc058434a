"""CoDer: scoring, re-ranking and Tip-Adapter against direct transcriptions of the published
formulas on random tensors; ``ex2 knowledge`` -> ``ex2 classify --method coder`` end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_classify import folder  # noqa: F401  (ImageFolder of colour classes)

from ex2.classify.coder import (
    carve_support,
    class_scores,
    coder_texts,
    minmax_rows,
    ovo_rerank,
    search_alpha_beta,
    tip_adapter_logits,
)
from ex2.cli import main
from ex2.core.io import read_jsonl

# --- transcriptions of the published loops -------------------------------------------------------


def loop_scores(neighbors, text_nums):
    """Per class: its attribute+analogue columns, then its name+synonym columns; mean over the first
    group and the max of the second; times 100."""
    idx, out = 0, []
    for att_ana, name_syno in text_nums:
        best = neighbors[:, idx + att_ana: idx + att_ana + name_syno].max(1).values
        out.append(torch.cat([neighbors[:, idx: idx + att_ana], best[:, None]], 1).mean(1)[:, None])
        idx += att_ana + name_syno
    return 100 * torch.cat(out, 1)


def loop_rerank(image, top, ovo):
    scores = []
    for c in top:
        score = []
        for o in [x for x in top if x != c]:
            if (c, o) in ovo and (o, c) in ovo:
                score.append((image @ ovo[c, o].T).mean() - (image @ ovo[o, c].T).mean())
            else:
                score.append(0)
        scores.append(sum(score) / len(score))
    ranked = sorted(zip(scores, top, strict=True), key=lambda x: x[0], reverse=True)
    return ranked[0][1]


def loop_tip(test_f, keys_t, values, clip_logits, alpha, beta):
    affinity = test_f.float() @ keys_t.float()
    row_max, row_min = affinity.max(1).values, affinity.min(1).values
    affinity = (affinity - row_min.view(-1, 1)) / (row_max - row_min).view(-1, 1)
    metric = (-1 * (beta - beta * affinity)).exp()
    return clip_logits + metric.float() @ values.float() * alpha


def loop_search(val_f, val_labels, keys_t, values, clip_logits, beta_steps, alpha_steps):
    b_lo, b_hi, a_lo, a_hi = 0.1, 200, 0.1, 20
    for _ in range(3):
        betas = [i * (b_hi - b_lo) / beta_steps + b_lo for i in range(beta_steps)]
        alphas = [i * (a_hi - a_lo) / alpha_steps + a_lo for i in range(alpha_steps)]
        best_acc, best_beta, best_alpha = 0, 0, 0
        for beta in betas:
            for alpha in alphas:
                logits = loop_tip(val_f, keys_t, values, clip_logits, alpha, beta)
                acc = 100 * (logits.argmax(1) == val_labels).float().mean().item()
                if acc > best_acc:
                    best_acc, best_beta, best_alpha = acc, beta, alpha
        b_lo, b_hi, a_lo, a_hi = best_beta * 0.5, best_beta * 1.5, best_alpha * 0.5, best_alpha * 1.5
    return best_alpha, best_beta


def random_layout(seed: int, n_classes: int = 6):
    """Texts in CoDer's per-class order (attributes+analogues, then name+synonyms), shuffled for ours."""
    rng = random.Random(seed)
    text_nums = [(rng.randint(0, 4), rng.randint(1, 3)) for _ in range(n_classes)]
    owners = torch.tensor([c for c, (a, n) in enumerate(text_nums) for _ in range(a + n)])
    pooled = torch.tensor([i >= a for a, n in text_nums for i in range(a + n)])
    return text_nums, owners, pooled


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_scores_equal_the_published_loop(seed):
    text_nums, owners, pooled = random_layout(seed)
    torch.manual_seed(seed)
    neighbors = torch.randn(7, len(owners), dtype=torch.float64)
    expected = loop_scores(neighbors, text_nums)
    torch.testing.assert_close(class_scores(neighbors, owners, pooled, len(text_nums)), expected, atol=1e-6, rtol=0)
    order = torch.randperm(len(owners))  # our layout need not group texts by class
    torch.testing.assert_close(class_scores(neighbors[:, order], owners[order], pooled[order], len(text_nums)),
                               expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="no name text"):
        class_scores(neighbors, owners, torch.zeros_like(pooled), len(text_nums))


def test_rerank_equals_the_published_loop_on_small_gaps_only():
    torch.manual_seed(0)
    n, c, d = 40, 8, 16
    images = F.normalize(torch.randn(n, d), dim=-1)
    logits = torch.randn(n, c) * 2
    ovo = {(a, b): F.normalize(torch.randn(3, d), dim=-1) for a in range(c) for b in range(c)
           if a != b and random.Random(a * 10 + b).random() < 0.7}
    gap = 0.3
    new, rows = ovo_rerank(images, logits, ovo, gap, top_k=5)
    probs = logits.softmax(1).topk(2).values
    assert rows.tolist() == ((probs[:, 0] - probs[:, 1]) < gap).tolist() and 0 < rows.sum() < n
    for i in range(n):
        top = logits[i].topk(5).indices.tolist()
        expected = loop_rerank(images[i], top, ovo) if rows[i] else top[0]
        assert new[i].argmax().item() == expected
        assert set(new[i].topk(5).indices.tolist()) == set(top)  # acc5 is unchanged
    assert (new.argmax(1) != logits.argmax(1)).any()


def test_tip_adapter_and_search_equal_the_published_loops():
    torch.manual_seed(1)
    n_classes, t = 4, 12
    keys = F.normalize(torch.randn(8, t, dtype=torch.float64), dim=-1)
    key_labels = torch.arange(n_classes).repeat(2)
    queries = F.normalize(torch.randn(10, t, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, n_classes, (10,))
    clip_logits = torch.randn(10, n_classes, dtype=torch.float64) * 3
    values = F.one_hot(key_labels, n_classes)
    ours = tip_adapter_logits(clip_logits, queries, keys, key_labels, n_classes, alpha=1.7, beta=5.5)
    torch.testing.assert_close(ours, loop_tip(queries, keys.T, values, clip_logits, 1.7, 5.5).double(),
                               atol=1e-6, rtol=0)
    alpha, beta, acc = search_alpha_beta(clip_logits, queries, labels, keys, key_labels, n_classes,
                                         beta_steps=20, alpha_steps=8)
    expected = loop_search(queries, labels, keys.T, values, clip_logits, 20, 8)
    assert (alpha, beta) == pytest.approx(expected, abs=1e-6)
    assert 0 < acc <= 1
    torch.testing.assert_close(minmax_rows(torch.tensor([[1.0, 3.0, 2.0]])), torch.tensor([[0.0, 1.0, 0.5]]))


def test_class_texts_follow_coder_templates():
    knowledge = {"attributes": {"red_apple": ["a shiny skin"]}, "analogous": {"Red apple": ["a tomato"]},
                 "synonyms": {"red apple": ["pome"]}}
    texts = coder_texts(["red apple", "leaf"], knowledge, ["a photo of a {}."])
    assert texts.per_class(2) == [["red apple which has a shiny skin", "a red apple similar to a tomato.",
                                   "a photo of a red apple.", "a photo of a pome."], ["a photo of a leaf."]]
    assert texts.pooled_max.tolist() == [False, False, True, True, True]
    only = coder_texts(["red apple"], knowledge, ["a photo of a {}."], kinds=["synonyms"])
    assert only.kinds == ["name", "synonyms"]
    with pytest.raises(ValueError, match="unknown CoDer text kind"):
        coder_texts(["x"], knowledge, ["{}"], kinds=["ovo"])


def test_support_and_validation_are_disjoint_per_class():
    labels = [0] * 5 + [1] * 6
    support, val = carve_support(labels, 2, 2, seed=3)
    assert not set(support) & set(val)
    assert sorted(labels[i] for i in support) == [0, 0, 1, 1] and sorted(labels[i] for i in val) == [0, 0, 1, 1]
    assert carve_support(labels, 2, 2, seed=3) == (support, val)
    with pytest.raises(ValueError, match="class id 0 has 5"):
        carve_support(labels, 4, 2, seed=0)


# --- the chain through the CLI -------------------------------------------------------------------


@pytest.fixture
def knowledge_file(tiny_llm, folder, open_clip_dir, tmp_path, tmp_cache) -> Path:  # noqa: F811
    out = tmp_path / "knowledge.jsonl"
    assert main(["knowledge", "--dataset", "imagefolder", "--data-root", str(folder), "--llm", str(tiny_llm),
                 "--vlm", f"local-dir:{open_clip_dir}", "--kinds", "attributes,analogous,ovo",
                 "--max-new-tokens", "12", "--pairs", "nearest:1", "--output", str(out)]) == 0
    return out


def _classify(knowledge: Path, folder, open_clip_dir, out: Path, *extra: str) -> dict:  # noqa: F811
    data = ["--dataset", "imagefolder", "--data-root", str(folder), "--vlm", f"local-dir:{open_clip_dir}"]
    return _run_coder(data, knowledge, out, *extra)


def _run_coder(data: list[str], knowledge: Path, out: Path, *extra: str) -> dict:
    assert main(["classify", *data, "--no-progress", "--method", "coder", "--knowledge", str(knowledge),
                 "--output", str(out), *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_knowledge_then_coder_zero_shot_rerank_and_few_shot(knowledge_file, folder, open_clip_dir, tmp_path):  # noqa: F811
    records = read_jsonl(knowledge_file)
    kinds = {r["kind"] for r in records}
    assert kinds <= {"attributes", "analogous", "ovo"} and records
    assert all(set(r) == {"concept", "class_id", "kind", "text", "other_concept", "model", "adapter", "source"}
               for r in records)
    assert all((r["other_concept"] is not None) == (r["kind"] == "ovo") for r in records)
    zero = _classify(knowledge_file, folder, open_clip_dir, tmp_path / "zero")
    for key in ("acc1", "acc5", "mean_per_class_recall", "n_images", "method", "kinds", "knowledge"):
        assert key in zero
    assert zero["method"] == "coder" and zero["n_images"] == 9
    reranked = _classify(knowledge_file, folder, open_clip_dir, tmp_path / "ovo", "--ovo-gap", "1.0")
    assert reranked["rerank"]["images_considered"] == 9 and reranked["acc5"] == zero["acc5"]
    few = _classify(knowledge_file, folder, open_clip_dir, tmp_path / "few", "--shots", "1", "--augment-views", "2")
    assert 0 <= few["few_shot"]["clip_acc1_same_images"] <= 1
    assert few["few_shot"]["n_support"] == 3 and few["few_shot"]["n_val"] == 3 and few["n_images"] == 3
    assert (tmp_path / "few" / "per_class.csv").is_file()


def test_coder_needs_a_knowledge_file(folder, open_clip_dir, tmp_path, capsys):  # noqa: F811
    with pytest.raises(SystemExit):
        main(["classify", "--method", "coder", "--output", str(tmp_path / "x")])
    assert "needs --knowledge FILE" in capsys.readouterr().err
    missing = tmp_path / "missing.jsonl"
    assert main(["classify", "--dataset", "imagefolder", "--data-root", str(folder), "--vlm",
                 f"local-dir:{open_clip_dir}", "--method", "coder", "--knowledge", str(missing),
                 "--output", str(tmp_path / "y")]) == 1
    assert "missing.jsonl" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_knowledge_and_coder_on_samples_with_conse(shared_cache, tmp_path):
    out = tmp_path / "knowledge.jsonl"
    assert main(["knowledge", "--dataset", "samples", "--llm", "smollm2", "--vlm", "conse", "--limit-concepts", "8",
                 "--kinds", "attributes,analogous,synonyms", "--max-new-tokens", "48", "--output", str(out)]) == 0
    records = read_jsonl(out)
    assert {r["kind"] for r in records} >= {"attributes", "analogous"}
    metrics = _run_coder(["--dataset", "samples", "--vlm", "conse"], out, tmp_path / "run")
    assert metrics["acc1"] > 0.5 and metrics["texts_per_kind"]["attributes"] > 0
