"""Faults reported as one line naming what and where, and nothing lost or mixed up on the way.

Judges that refuse, hang or reject the key are loopback servers on 127.0.0.1 (stdlib http.server);
kills are real subprocesses; bad folders and files are crafted in tmp_path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml
from serving import chat_completion, scripted_chat_server

from ex2.cli import main
from ex2.core.config import ConfigError, check_values, option, parse_config
from ex2.core.errors import OutputError
from ex2.core.io import check_output_path, read_jsonl, write_jsonl

REPO = Path(__file__).resolve().parents[1]


# --- 5. config values are type-checked when the file is read ----------------------------------


@dataclass
class Options:
    """A config with one field of each kind."""

    batch_size: int = option(2, "an int")
    rate: float = option(0.5, "a float")
    vlm: str = option("conse", "a string")
    root: str | None = option(None, "a string or nothing")
    categories: list[str] = option([], "a list")
    mode: Literal["a", "b"] = option("a", "a choice")
    flag: bool = option(False, "a bool")


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("batch_size", 2.5, "batch_size: expected an integer, got 2.5 (float)"),
    ("batch_size", True, "batch_size: expected an integer, got True (bool)"),
    ("vlm", 12, "vlm: expected a string (quote it), got 12 (int)"),
    ("root", 3, "root: expected a string (quote it) or null, got 3 (int)"),
    ("mode", "c", "mode: expected one of 'a', 'b', got 'c'"),
    ("flag", "yes", "flag: expected true or false, got 'yes' (str)"),
    ("categories", [1], "categories: expected a list, got [1]"),
    ("rate", "fast", "rate: expected a number, got 'fast'"),
])
def test_yaml_values_are_checked_against_the_field_type(tmp_path, capsys, key, value, expected):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({key: value}))
    with pytest.raises(SystemExit):
        parse_config(Options, ["--config", str(path)], prog="t")
    err = capsys.readouterr().err
    assert f"config file {path}: {expected}" in err


def test_scalars_become_one_item_lists_and_ints_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("categories: visual\nrate: 2\nroot: null\n")
    config = parse_config(Options, ["--config", str(path)], prog="t")
    assert config.categories == ["visual"] and config.rate == 2.0 and isinstance(config.rate, float)


def test_check_values_works_for_any_dataclass():
    assert check_values(Options, {"batch_size": 3, "unknown": object}, "x")["batch_size"] == 3
    with pytest.raises(ConfigError, match=r"^flags: batch_size: expected an integer"):
        check_values(Options, {"batch_size": "3"}, "flags")
    trl = pytest.importorskip("trl")
    checked = check_values(trl.GRPOConfig, {"beta": 0, "lr_scheduler_type": "linear"}, "t.yaml")
    assert checked == {"beta": 0.0, "lr_scheduler_type": "linear"}
    with pytest.raises(ConfigError, match="t.yaml: per_device_train_batch_size: expected an integer"):
        check_values(trl.GRPOConfig, {"per_device_train_batch_size": 2.5}, "t.yaml")


def test_a_bad_stage_config_fails_before_any_model_loads(tmp_path, capsys):
    path = tmp_path / "generate.yaml"
    path.write_text("batch_size: 2.5\n")
    with pytest.raises(SystemExit):
        main(["generate", "--config", str(path)])
    assert f"config file {path}: batch_size: expected an integer, got 2.5" in capsys.readouterr().err


# --- 2. a judge server that refuses, hangs or rejects the key ---------------------------------

SPURIOUS = '{"informative": false, "explanation": "a caption"}'


@pytest.fixture
def fake_judge():
    """A loopback OpenAI-compatible server whose n-th request gets ``script[n]`` (the last one
    repeats): an answer text, 401, or "hang" (no answer for up to 10 s, or until the test ends)."""
    state = {"script": [SPURIOUS], "requests": 0}
    release = threading.Event()

    def answer(body: dict):
        step = state["script"][min(state["requests"], len(state["script"]) - 1)]
        state["requests"] += 1
        if step == "hang":
            release.wait(10)
            return None
        if step == 401:
            return 401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                   "code": "invalid_api_key"}}
        return 200, chat_completion(body["model"], step)

    with scripted_chat_server(answer) as base_url:
        yield base_url, state
        release.set()


@pytest.fixture
def three(tmp_path) -> Path:
    path = tmp_path / "descriptions.jsonl"
    write_jsonl(path, [{"concept": "cat", "description": f"A photo of a cat, number {n}."} for n in range(3)])
    return path


def judge_argv(base_url: str, descriptions: Path, output: Path, *extra: str) -> list[str]:
    return ["inspect", "--backend", "openai", "--model", "judge", "--base-url", base_url, "--api-key", "k",
            "--input", str(descriptions), "--output", str(output), "--concurrency", "1", "--no-report",
            "--no-json-mode", "--request-retries", "0", *extra]


def test_refused_connection_is_one_line_naming_the_server(tmp_path, three, capsys):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    assert main(judge_argv(url, three, tmp_path / "c.jsonl")) == 1
    err = capsys.readouterr().err
    assert f"ex2 inspect: error: cannot connect to judge server {url}" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("ex2 inspect: error: ")  # below the progress bar only


def test_a_hanging_judge_is_reported_after_the_timeout(tmp_path, three, fake_judge, capsys):
    url, state = fake_judge
    state["script"] = [SPURIOUS, "hang"]
    out = tmp_path / "c.jsonl"
    assert main(judge_argv(url, three, out, "--timeout", "0.3", "--request-retries", "1")) == 1
    err = capsys.readouterr().err
    assert f"judge server {url} gave no answer within 0.3 s (2 tries)" in err and "--timeout" in err
    assert state["requests"] == 3  # one answer, then one request and its retry
    assert [r["description"] for r in read_jsonl(out)] == ["A photo of a cat, number 0."]  # kept


def test_a_rejected_key_keeps_the_answers_already_received(tmp_path, three, fake_judge, capsys):
    url, state = fake_judge
    state["script"] = [SPURIOUS, SPURIOUS, 401]
    out = tmp_path / "c.jsonl"
    assert main(judge_argv(url, three, out)) == 1
    err = capsys.readouterr().err
    assert f"judge server {url} refused the API key (401: " in err and "OPENAI_API_KEY" in err
    assert len(read_jsonl(out)) == 2
    state["script"], state["requests"] = [SPURIOUS], 0
    assert main(judge_argv(url, three, out)) == 0  # the rerun asks only for the third
    assert state["requests"] == 1 and len(read_jsonl(out)) == 3


def test_default_timeouts_report_a_dead_server_within_a_minute():
    from openai._constants import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY

    from ex2.inspect.stage import InspectConfig

    config = InspectConfig(input="x.jsonl", backend="openai", model="m")
    waits = sum(min(INITIAL_RETRY_DELAY * 2**n, MAX_RETRY_DELAY) for n in range(config.request_retries))
    assert (config.request_retries + 1) * config.timeout + waits < 60


def test_unparsed_answers_are_counted_on_the_console(tmp_path, three, fake_judge, capsys):
    url, state = fake_judge
    state["script"] = [SPURIOUS, "no idea", SPURIOUS]
    assert main(judge_argv(url, three, tmp_path / "c.jsonl", "--max-retries", "0")) == 0
    assert f"3 description(s) in {tmp_path / 'c.jsonl'}, 1 unparsed" in capsys.readouterr().out


def test_an_uncached_hub_llm_names_itself(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EX2_ALLOW_DOWNLOAD", raising=False)
    code = main(["generate", "--llm", "ex2-test-org/not-cached-llm", "--limit-concepts", "1",
                 "--output", str(tmp_path / "d.jsonl")])
    err = capsys.readouterr().err
    assert code == 1 and "LLM 'ex2-test-org/not-cached-llm' is neither a local folder nor in the Hugging Face " \
        "cache; set EX2_ALLOW_DOWNLOAD=1" in err and "Traceback" not in err


def test_samples_with_a_file_as_data_root(tmp_path, capsys):
    root = tmp_path / "notes.txt"
    root.write_text("not a folder\n")
    assert main(["classify", "--dataset", "samples", "--data-root", str(root), "--method", "clip",
                 "--output", str(tmp_path / "cls")]) == 1
    assert f"samples: --data-root {root} is a file; expected a folder" in capsys.readouterr().err


def test_ctrl_c_says_interrupted_and_exits_130(tmp_path, three, fake_judge):
    url, state = fake_judge
    state["script"] = [SPURIOUS, "hang"]
    out = tmp_path / "c.jsonl"
    argv = judge_argv(url, three, out, "--timeout", "30")
    # SIGINT back to its default in the child: a test run started in the background (``make test &``)
    # ignores it, and Python keeps an ignored SIGINT ignored
    proc = subprocess.Popen([sys.executable, "-m", "ex2.cli", *argv[0:]], cwd=REPO, stderr=subprocess.PIPE,
                            text=True, env=os.environ | {"PYTHONPATH": str(REPO)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while state["requests"] < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)  # wait until the second request hangs
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "ex2 inspect: interrupted; rerun to resume"
    assert len(read_jsonl(out)) == 1  # the answer received before Ctrl-C is kept


# --- 3. an inspect output belongs to one input ------------------------------------------------


def test_the_output_of_one_input_is_refused_to_another_unless_appended(tmp_path, three, fake_judge, capsys):
    url, state = fake_judge
    other = tmp_path / "other.jsonl"
    write_jsonl(other, [{"concept": "dog", "description": "A dog."}, {"concept": "cat", "description": "A photo of a cat, number 0."}])
    out = tmp_path / "c.jsonl"
    assert main(judge_argv(url, three, out)) == 0
    assert main(judge_argv(url, other, out)) == 1
    err = capsys.readouterr().err
    assert f"{out} holds the judgements of {three.resolve()}" in err and "--append" in err
    assert len(read_jsonl(out)) == 3 and state["requests"] == 3

    assert main(judge_argv(url, other, out, "--append", "--report")) == 0
    records = read_jsonl(out)
    assert len(records) == 5 and state["requests"] == 4  # the shared description is not asked again
    assert json.loads((tmp_path / "inspect_report" / "summary.json").read_text())["n_descriptions"] == 5
    owners = json.loads((tmp_path / "c.jsonl.inputs.json").read_text())["inputs"]
    assert [o["path"] for o in owners] == [str(three.resolve()), str(other.resolve())]
    assert main(judge_argv(url, three, out)) == 0 and len(read_jsonl(out)) == 5  # both are its inputs now


def test_a_changed_input_is_not_mixed_with_its_old_judgements(tmp_path, three, fake_judge, capsys):
    url, _ = fake_judge
    out = tmp_path / "c.jsonl"
    assert main(judge_argv(url, three, out)) == 0
    write_jsonl(three, [{"concept": "cat", "description": "A new text."}])
    assert main(judge_argv(url, three, out)) == 1
    err = capsys.readouterr().err
    assert f"{out} holds the judgements of {three.resolve()} as it was before it changed" in err
    old = tmp_path / "old.jsonl"
    write_jsonl(old, [{"concept": "cat", "description": "old"}])  # an output from before inputs were recorded
    assert main(judge_argv(url, three, old)) == 1
    assert "no old.jsonl.inputs.json says of which input" in capsys.readouterr().err


def test_a_second_writer_is_told_who_holds_the_output(tmp_path, three, fake_judge, capsys):
    url, state = fake_judge
    out = tmp_path / "c.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ex2.core.io import output_lock\n"
         f"with output_lock({str(out)!r}, 'ex2 inspect'):\n    print('held', flush=True)\n    time.sleep(120)\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(judge_argv(url, three, out)) == 1
        err = capsys.readouterr().err
        assert f"{out} is being written by pid {holder.pid} on {socket.gethostname()}" in err
        assert "ex2 inspect" in err and state["requests"] == 0 and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(judge_argv(url, three, out)) == 0  # a killed holder releases the lock


# --- 6. outputs are checked before any model loads --------------------------------------------

UNCACHED = "ex2-test-org/not-cached-llm"  # loading it would fail: an output error proves it came first


def unwritable_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return folder
    if not os.access("/proc/sys", os.W_OK):  # root may write anywhere, but not there
        return Path("/proc/sys")
    pytest.skip("no folder here is unwritable for this user")


def generate_argv(output: Path, *extra: str) -> list[str]:
    return ["generate", "--llm", UNCACHED, "--limit-concepts", "1", "--output", str(output), *extra]


def test_generate_output_problems_are_found_before_loading(tmp_path, capsys):
    folder = tmp_path / "existing"
    folder.mkdir()
    note = tmp_path / "note.txt"
    note.write_text("a file\n")
    locked = unwritable_folder(tmp_path)
    cases = [
        (generate_argv(folder), f"--output {folder} is a folder; expected the path of a file"),
        (generate_argv(note / "d.jsonl"), f"--output {note / 'd.jsonl'}: {note} is a file, so nothing can be"),
        (generate_argv(locked / "sub" / "d.jsonl"), f"no permission to write in {locked}"),
        (generate_argv(tmp_path / "d.jsonl", "--legacy-json", str(folder)), f"--legacy-json {folder} is a folder"),
        (generate_argv(tmp_path / "d.jsonl", "--legacy-json", str(tmp_path / "." / "d.jsonl")),
         "is the same file as --output"),
    ]
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and UNCACHED not in err
    assert not list(folder.iterdir()) and not list(tmp_path.glob("*.partial"))


def test_a_nan_temperature_is_refused_up_front(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(generate_argv(tmp_path / "d.jsonl", "--temperature", "nan"))
    assert exit_info.value.code == 2 and "--temperature must be >= 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_inspect_and_report_outputs_are_checked_first(tmp_path, three, capsys):
    note = tmp_path / "note.txt"
    note.write_text("a file\n")
    base = ["inspect", "--backend", "openai", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--input", str(three)]
    assert main([*base, "--output", str(three)]) == 1
    assert f"--output {three} is the --input file" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "c.jsonl"), "--report-dir", str(note)]) == 1
    assert f"--report-dir {note} is an existing file; expected a folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--output", str(note)]) == 1
    assert f"--output {note} is an existing file; expected a folder" in capsys.readouterr().err
    with pytest.raises(OutputError, match="no permission to write in"):
        check_output_path(unwritable_folder(tmp_path) / "x" / "report", "folder")


# --- 8. smaller faults ------------------------------------------------------------------------


def test_bad_utf8_in_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"concept": "cat", "description": "ok"}\n{"concept": "caf\xe9", "description": "x"}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: not valid UTF-8 \(byte 0xe9 at column 17\)"):
        read_jsonl(path)


def test_an_empty_inspect_input_is_named_as_the_input(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["inspect", "--input", str(empty), "--output", str(tmp_path / "c.jsonl")]) == 1
    err = capsys.readouterr().err
    assert f"{empty}: no records; expected JSON Lines with concept and description" in err


def test_a_class_folder_that_is_not_utf8_is_named(tmp_path, capsys):
    import PIL.Image

    tree = tmp_path / "tree"
    for name in (b"cat", b"caf\xe9"):
        folder = Path(os.fsdecode(bytes(tree) + b"/" + name))
        folder.mkdir(parents=True)
        PIL.Image.new("RGB", (4, 4)).save(folder / "0.png")
    assert main(["generate", "--dataset", f"imagefolder:{tree}", "--llm", UNCACHED, "--output",
                 str(tmp_path / "d.jsonl")]) == 1
    assert f"imagefolder: class folder in {tree}: b'caf\\xe9' is not valid UTF-8" in capsys.readouterr().err


def test_inspect_summary_escapes_html_from_descriptions(tmp_path):
    from ex2.inspect.report import write_report

    record = {"concept": "cat<b>", "description": "<script>alert(1)</script> | `x`", "category": "spurious",
              "attribute": "none", "informative": False, "explanation": "<img src=x onerror=alert(2)>",
              "judge_backend": "b", "judge_model": "<i>m</i>", "judge_prompt_version": "v"}
    text = (write_report([record], tmp_path / "report") / "summary.md").read_text()
    assert "<script>" not in text and "<img" not in text and "<b>" not in text and "<i>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; \\| &#96;x&#96;" in text and "&lt;i&gt;m&lt;/i&gt;" in text


# --- 7. a killed and resumed generate run is byte-identical to an uninterrupted one -------------


@pytest.fixture
def gen_inputs(tmp_path) -> tuple[Path, Path]:
    concepts, templates = tmp_path / "concepts.txt", tmp_path / "templates.txt"
    concepts.write_text("cat\nrocket\ndaisy\n")
    templates.write_text("Describe a {}.\nWhat does a {} look like?\n")
    return concepts, templates


def gen_argv(model: Path, inputs: tuple[Path, Path], output: Path) -> list[str]:
    return ["generate", "--llm", str(model), "--concepts", str(inputs[0]), "--templates", str(inputs[1]),
            "--output", str(output), "--max-new-tokens", "6", "--samples-per-template", "2", "--batch-size", "3"]


def run_killed(argv: list[str], patch: str) -> subprocess.CompletedProcess:
    """``ex2 argv`` in a subprocess that ``patch`` (Python run first) SIGKILLs part way."""
    script = f"import os, signal\nfrom ex2.cli import main\n{patch}\nmain({argv!r})\n"
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": str(REPO)})


def test_killed_mid_batch_and_resumed_is_byte_identical(tiny_llm, gen_inputs, tmp_path, tmp_cache, monkeypatch):
    from ex2.core.io import partial_path
    from ex2.llm.samplers import TransformersSampler

    reference = tmp_path / "reference.jsonl"
    assert main(gen_argv(tiny_llm, gen_inputs, reference)) == 0
    out = tmp_path / "killed.jsonl"
    kill_after_five = ("import ex2.generate.stage as g\nreal, n = g.append_jsonl, []\n"
                       "def append(path, record):\n    real(path, record)\n    n.append(1)\n"
                       "    if len(n) == 5:\n        os.kill(os.getpid(), signal.SIGKILL)\n"
                       "g.append_jsonl = append")
    proc = run_killed(gen_argv(tiny_llm, gen_inputs, out), kill_after_five)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(read_jsonl(partial_path(out))) == 1 + 5  # batch 0 whole, two of batch 1's three

    real, batches = TransformersSampler.generate, []

    def record_batches(self, prompt_ids, seeds):
        batches.append(len(seeds))
        return real(self, prompt_ids, seeds)

    monkeypatch.setattr(TransformersSampler, "generate", record_batches)
    assert main(gen_argv(tiny_llm, gen_inputs, out)) == 0
    assert batches == [3, 3, 3]  # batch 1 sampled whole again, as in the uninterrupted run; then 2 and 3
    assert out.read_bytes() == reference.read_bytes()


def test_a_temp_file_left_by_a_kill_is_removed_by_the_next_run(tiny_llm, gen_inputs, tmp_path, tmp_cache):
    out = tmp_path / "d.jsonl"
    kill_at_rename = ("import ex2.core.io\nreal = os.replace\n"
                      "def replace(src, dst):\n    if str(dst).endswith('d.jsonl'):\n"
                      "        os.kill(os.getpid(), signal.SIGKILL)\n    real(src, dst)\n"
                      "ex2.core.io.os.replace = replace")
    proc = run_killed(gen_argv(tiny_llm, gen_inputs, out), kill_at_rename)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = list(tmp_path.glob(".d.jsonl.*.tmp"))
    assert len(left) == 1 and not out.exists()
    assert main(gen_argv(tiny_llm, gen_inputs, out)) == 0
    assert not list(tmp_path.glob(".d.jsonl.*.tmp")) and len(read_jsonl(out)) == 12


def _latin1(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("latin-1"))
    return path


@pytest.mark.parametrize("reader, name, text", [
    ("classnames", "names.txt", "cat\ncaf\u00e9\n"),
    ("synonyms", "synonyms.txt", "cat, kitty\ndog, caf\u00e9\n"),
    ("judge", "judge.yaml", "system: caf\u00e9\n"),
    ("templates", "templates.txt", "a photo of a {} caf\u00e9.\n"),
])
def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path, reader, name, text):
    from ex2.classify.generative import read_synonyms
    from ex2.data import load_templates
    from ex2.data.classnames import load_classnames
    from ex2.inspect.judges import load_judge_prompt

    path = _latin1(tmp_path / name, text)
    read = {"classnames": lambda: load_classnames(path, 2), "synonyms": lambda: read_synonyms(path, ["cat", "dog"]),
            "judge": lambda: load_judge_prompt(path), "templates": lambda: load_templates(str(path))}[reader]
    with pytest.raises(ValueError) as err:
        read()
    message = str(err.value)
    assert message.startswith(f"{path}: line ") and "is not UTF-8 (byte 0xe9)" in message and "codec" not in message


QUIET_WORKER = """
import multiprocessing.queues, threading
from ex2.data.images import quiet_worker
quiet_worker(0)

def fail(err):
    raise err

for err in (ConnectionResetError("parent gone"), BrokenPipeError("parent gone"), ValueError("a real bug")):
    thread = threading.Thread(target=fail, args=(err,))
    thread.start()
    thread.join()
try:
    raise BrokenPipeError("feeding a dead parent")
except BrokenPipeError as err:
    multiprocessing.queues.Queue._on_queue_feeder_error(err, None)
"""


def test_a_loader_worker_of_a_gone_parent_exits_without_a_traceback():
    result = subprocess.run([sys.executable, "-c", QUIET_WORKER], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "a real bug" in result.stderr  # other errors still print
    assert "parent gone" not in result.stderr and "feeding a dead parent" not in result.stderr


def test_the_image_loader_workers_are_quiet_workers(tmp_path):
    import torch

    from ex2.data.images import quiet_worker
    from ex2.vlm import cache

    class Stub:
        preprocess = None
        device = torch.device("cpu")

    loader = cache._image_batches(Stub(), [tmp_path / "a.png"], 1, 1)
    assert loader._worker_init_fn is quiet_worker
    del loader
