"""ex2 inspect with a judge question from a file (--prompt-file) and with EX2's answers (--from-ex2-answers).

The judge is the real OpenAI client talking to a scripted OpenAI-compatible server on 127.0.0.1
(stdlib http.server), so the requests it sends (messages, temperature, top-p) are what is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from serving import chat_completion, scripted_chat_server

from ex2.cli import main
from ex2.core.io import read_jsonl, write_jsonl
from ex2.inspect.judges import (
    CATEGORY_SYSTEM,
    EX2_ANSWER,
    AnswerError,
    PromptFileError,
    ex2_answer_text,
    load_judge_prompt,
)

REPO = Path(__file__).resolve().parents[1]
EX2_QUESTION = REPO / "configs" / "judge_ex2_question.yaml"
CATEGORY = '{"category": "visual", "attribute": "color", "explanation": "a colour"}'


def scripted_answer(messages: list[dict]) -> str:
    """The category question gets a category; the first question is answered by the snippet's words."""
    if messages[0]["content"] == CATEGORY_SYSTEM:
        return CATEGORY
    snippet = messages[-1]["content"]
    if "photo" in snippet:
        return '{"explanation": "a caption", "increases_knowledge": "No"}'
    if "yellow" in snippet:
        return '{"increases_knowledge": " yes "}'
    return '{"informative": true}'  # not the field the prompt file asks for


@pytest.fixture
def judge_server():
    requests: list[dict] = []

    def answer(body: dict):
        requests.append(body)
        return 200, chat_completion(body["model"], scripted_answer(body["messages"]), len(requests))

    with scripted_chat_server(answer) as base_url:
        yield base_url, requests


def inspect_argv(base_url: str, descriptions: Path, output: Path, *extra: str) -> list[str]:
    return ["inspect", "--backend", "openai", "--model", "judge", "--base-url", base_url, "--api-key", "EMPTY",
            "--input", str(descriptions), "--output", str(output), "--concurrency", "1", "--no-report",
            "--no-json-mode", *extra]


# --- the prompt file ------------------------------------------------------------------------


def test_ex2_question_asked_at_its_temperature_with_yes_no_answers(tmp_path, judge_server):
    base_url, requests = judge_server
    descriptions = tmp_path / "descriptions.jsonl"
    write_jsonl(descriptions, [{"concept": "goldfinch", "description": d} for d in (
        "Click to enlarge photo of a goldfinch.", "The male is bright yellow.", "A goldfinch.")])
    output = tmp_path / "categories.jsonl"
    argv = inspect_argv(base_url, descriptions, output, "--prompt-file", str(EX2_QUESTION), "--max-retries", "0")
    assert main(argv) == 0
    records = {r["description"]: r for r in read_jsonl(output)}
    caption, yellow, odd = (records[d] for d in ("Click to enlarge photo of a goldfinch.",
                                                  "The male is bright yellow.", "A goldfinch."))
    assert (caption["informative"], caption["category"], caption["explanation"]) == (False, "spurious", "a caption")
    assert (yellow["informative"], yellow["category"], yellow["attribute"]) == (True, "visual", "color")
    assert yellow["judge_requests"] == 2 and caption["judge_requests"] == 1
    assert odd["category"] == "unparsed" and "'increases_knowledge' must be" in odd["explanation"]
    prompt = load_judge_prompt(EX2_QUESTION)
    assert {r["judge_prompt_version"] for r in records.values()} == {prompt.version + "+ex2-judge-v1"}
    first = [r for r in requests if r["messages"][0]["content"] == prompt.system]
    assert len(first) == 3 and len(requests) == 4
    assert {(r["temperature"], r["top_p"]) for r in first} == {(0.1, 0.1)}
    assert first[0]["messages"][:3] == prompt.messages("x", "y")[:3]  # system + worked example
    asked = {r["messages"][-1]["content"] for r in first}
    assert prompt.user.format(concept="goldfinch", description="A goldfinch.") in asked


def test_prompt_file_needs_an_llm_judge(tmp_path, capsys):
    descriptions = tmp_path / "d.jsonl"
    write_jsonl(descriptions, [{"concept": "cat", "description": "Furry."}])
    with pytest.raises(SystemExit):
        main(["inspect", "--input", str(descriptions), "--prompt-file", str(EX2_QUESTION)])
    assert "--backend openai or hf" in capsys.readouterr().err


def valid_prompt() -> dict:
    return {"system": "Be a teacher.", "user": "{concept}: {description}",
            "answer": {"field": "adds", "values": {"Yes": "informative", "No": "spurious"}}}


def without(data: dict, dotted: str) -> dict:
    data = json.loads(json.dumps(data))
    *parents, key = dotted.split(".")
    target = data
    for parent in parents:
        target = target[parent]
    del target[key]
    return data


@pytest.mark.parametrize(("data", "message"), [
    (without(valid_prompt(), "system"), "missing key 'system'"),
    (without(valid_prompt(), "user"), "missing key 'user'"),
    (without(valid_prompt(), "answer"), "missing key 'answer'"),
    (without(valid_prompt(), "answer.field"), "missing key 'answer.field'"),
    (without(valid_prompt(), "answer.values"), "missing key 'answer.values'"),
    (valid_prompt() | {"user": "{concept} {snippet}"}, "unknown placeholder(s) {snippet}"),
    (valid_prompt() | {"user": "About {concept}."}, "must hold {description}"),
    (valid_prompt() | {"user": "{description} {"}, "not a valid template"),
    (valid_prompt() | {"answer": {"field": "adds", "values": {"Yes": "informative", "No": "visual"}}},
     "must map the answers to informative and spurious"),
    (valid_prompt() | {"answer": {"field": "adds", "values": {"Yes": "informative"}}}, "each at least once"),
    (valid_prompt() | {"temperature": -1}, "'temperature' must be a number >= 0"),
    (valid_prompt() | {"top_p": 0}, "'top_p' must be a number in (0, 1]"),
    (valid_prompt() | {"model": "gpt"}, "unknown key(s) model"),
    (valid_prompt() | {"examples": [{"concept": "c", "description": "d", "answer": {"adds": "Maybe"}}]},
     "examples[0].answer does not parse"),
    (valid_prompt() | {"examples": [{"concept": "c", "answer": "{}"}]}, "missing key 'examples[0].description'"),
    ([1, 2], "expected a mapping"),
])
def test_prompt_file_errors_name_the_file_and_the_key(tmp_path, data, message):
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PromptFileError) as err:
        load_judge_prompt(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_prompt_file_in_json_with_examples_and_the_cli_error(tmp_path, capsys):
    data = valid_prompt() | {"examples": [{"concept": "tit", "description": "Blue cap.",
                                            "answer": '{"adds": "Yes", "explanation": "colour"}'}]}
    path = tmp_path / "judge.json"
    path.write_text(json.dumps(data))
    prompt = load_judge_prompt(path)
    assert prompt.temperature == 0.0 and prompt.top_p is None and prompt.version.startswith("judge-")
    assert [m["content"] for m in prompt.messages("cat", "Furry {x}.")] == [
        "Be a teacher.", "tit: Blue cap.", '{"adds": "Yes", "explanation": "colour"}', "cat: Furry {x}."]
    assert prompt.parse('{"adds": "NO", "explanation": "none"}') == (False, "none")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(without(valid_prompt(), "answer.values")))
    with pytest.raises(SystemExit):
        main(["inspect", "--backend", "hf", "--input", str(tmp_path / "x.jsonl"), "--prompt-file", str(bad)])
    err = capsys.readouterr().err
    assert str(bad) in err and "missing key 'answer.values'" in err
    with pytest.raises(SystemExit):
        main(["inspect", "--backend", "hf", "--input", "x.jsonl", "--prompt-file", str(tmp_path / "none.yaml")])
    assert "no such judge prompt file" in capsys.readouterr().err


# --- EX2's answers --------------------------------------------------------------------------


def completion(content: str) -> str:
    """One item as EX2 saves it: the whole chat completion, dumped as JSON."""
    return json.dumps({"id": "x", "object": "chat.completion", "model": "gpt-3.5-turbo-1106",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})


def test_ex2_answer_items_and_their_parsing():
    assert EX2_ANSWER.parse(ex2_answer_text(completion('{"increases_knowledge": "Yes"}'))) == (True, "")
    assert EX2_ANSWER.parse(ex2_answer_text('{"explanation": "e", "increases_knowledge": "No"}')) == (False, "e")
    assert EX2_ANSWER.parse(ex2_answer_text({"increases_knowledge": "yes"}))[0] is True
    for item in ('{"increases_knowledge": true}', "Yes", completion("Yes")):
        with pytest.raises(AnswerError):
            EX2_ANSWER.parse(ex2_answer_text(item))
    with pytest.raises(AnswerError, match="choices"):
        ex2_answer_text('{"choices": []}')


@pytest.fixture
def ex2_run(tmp_path):
    """Two classes, two descriptions each, as `ex2 generate --from-legacy` writes them."""
    descriptions = tmp_path / "descriptions.jsonl"
    rows = [("goldfinch", 0, "Click to enlarge photo."), ("goldfinch", 0, "Bright yellow plumage."),
            ("cardinal", 1, "A red crest."), ("cardinal", 1, "Cardinal wallpaper.")]
    write_jsonl(descriptions, [{"concept": c, "class_id": i, "description": d} for c, i, d in rows])
    answers = [[completion('{"explanation": "a caption", "increases_knowledge": "No"}'),
                completion('{"explanation": "colour", "increases_knowledge": "Yes"}')],
               [completion('{"increases_knowledge": "Yes"}'), completion("not json")]]
    return descriptions, answers


def test_ex2_answers_become_categories(tmp_path, judge_server, ex2_run):
    base_url, requests = judge_server
    descriptions, answers = ex2_run
    answers_file = tmp_path / "answers.json"
    answers_file.write_text(json.dumps(answers))
    output = tmp_path / "categories.jsonl"
    assert main(inspect_argv(base_url, descriptions, output, "--from-ex2-answers", str(answers_file),
                             "--max-retries", "0")) == 0
    got = [(r["description"], r["informative"], r["category"], r["attribute"]) for r in read_jsonl(output)]
    assert sorted(got) == sorted([
        ("Click to enlarge photo.", False, "spurious", "none"), ("Bright yellow plumage.", True, "visual", "color"),
        ("A red crest.", True, "visual", "color"), ("Cardinal wallpaper.", None, "unparsed", "unparsed")])
    assert len(requests) == 2 and all(r["messages"][0]["content"] == CATEGORY_SYSTEM for r in requests)
    assert all(r["judge_prompt_version"].startswith("ex2-answers-") for r in read_jsonl(output))


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: a[:1], "holds answers for 1 classes but"),
    (lambda a: [a[0], a[1][:1]], "class 1 ('cardinal') has 1 answers but"),
    (lambda a: {"goldfinch": a[0]}, "expected EX2's inspection output: a list"),
])
def test_ex2_answers_counts_are_checked(tmp_path, ex2_run, capsys, change, message):
    descriptions, answers = ex2_run
    answers_file = tmp_path / "answers.json"
    answers_file.write_text(json.dumps(change(answers)))
    output = tmp_path / "categories.jsonl"
    code = main(inspect_argv("http://127.0.0.1:9/v1", descriptions, output, "--from-ex2-answers", str(answers_file)))
    err = capsys.readouterr().err
    assert code == 1 and str(answers_file) in err and message in err and not output.exists()
