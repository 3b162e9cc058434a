"""The small shared helpers: device and dtype resolution, lazy registries, figure saving."""

from __future__ import annotations

import inspect
import typing

import pytest
import torch

from ex2.core import devices
from ex2.core.devices import dtype_name, resolve_device, resolve_dtype
from ex2.core.registry import LazyRegistry, load_object, split_reference


def test_device_defaults_to_cuda_when_available(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device("") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda")


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_is_bf16_on_cuda_where_supported_else_fp16_and_fp32_on_cpu(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert resolve_dtype("auto", "cuda") == (torch.bfloat16 if bf16 else torch.float16)
    assert resolve_dtype("auto", None) == resolve_dtype("auto", "cuda:0")  # default device: cuda here
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", torch.device("mps")) == torch.float32
    assert resolve_dtype("fp16", "cpu") == torch.float16 and resolve_dtype("bf16", "cuda") == torch.bfloat16


@pytest.mark.parametrize("avx512_bf16,amx", [(True, False), (False, True), (False, False)])
def test_fast_is_bf16_where_the_hardware_computes_it_else_auto(monkeypatch, avx512_bf16, amx):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_dtype("fast", "cpu") == (torch.bfloat16 if avx512_bf16 or amx else torch.float32)
    assert resolve_dtype("fast", torch.device("mps")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for bf16 in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, bf16=bf16, **kwargs: bf16)
        assert resolve_dtype("fast", "cuda") == resolve_dtype("auto", "cuda") == (torch.bfloat16 if bf16 else torch.float16)


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match="unknown precision 'half'; choose one of auto, fast, fp32, fp16, bf16"):
        resolve_dtype("half", "cpu")
    assert dtype_name(torch.bfloat16) == "bfloat16" and dtype_name(torch.float32) == "float32"


def test_vllm_dtype_resolves_auto_like_every_other_stage(monkeypatch):
    from ex2.llm.samplers import vllm_engine_kwargs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for bf16, name in ((True, "bfloat16"), (False, "float16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, bf16=bf16, **kwargs: bf16)
        assert vllm_engine_kwargs("/models/base", None)["dtype"] == name
    assert vllm_engine_kwargs("/models/base", None, dtype="fp32")["dtype"] == "float32"
    assert "enforce_eager" not in vllm_engine_kwargs("/models/base", None)  # CUDA keeps its graphs


def test_vllm_on_a_cpu_takes_the_cpu_dtype_an_eager_engine_and_a_small_kv_cache(monkeypatch):
    from ex2.llm.samplers import VLLM_CPU_KV_CACHE_BYTES, vllm_engine_kwargs

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    for native, fast in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(devices, "native_bf16", lambda *args, native=native: native)
        assert vllm_engine_kwargs("/m", None, dtype="fast", device="cpu")["dtype"] == fast
        assert vllm_engine_kwargs("/m", None, dtype="auto", device="cpu")["dtype"] == "float32"  # never fp16
    engine = vllm_engine_kwargs("/m", None, device="cpu")
    assert engine["enforce_eager"] is True and engine["kv_cache_memory_bytes"] == VLLM_CPU_KV_CACHE_BYTES
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")  # vLLM's own setting wins
    assert "kv_cache_memory_bytes" not in vllm_engine_kwargs("/m", None, device="cpu")


def test_lazy_registry_imports_only_the_chosen_entry():
    registry = LazyRegistry("widget", {"path": "pathlib:PurePosixPath", "missing": "ex2.no_such_module:X"})
    assert registry.load("path").__name__ == "PurePosixPath"
    assert list(registry) == ["path", "missing"] and "path" in registry
    with pytest.raises(ValueError, match="unknown widget 'nope'; valid widgets: path, missing"):
        registry.load("nope")
    with pytest.raises(ModuleNotFoundError):
        registry.load("missing")
    with pytest.raises(ImportError, match="pathlib has no 'Nope'"):
        load_object("pathlib:Nope")


@pytest.mark.parametrize("reference", ["pathlib", "pathlib:", ":Path", "a:b:c"])
def test_malformed_references_are_refused(reference):
    with pytest.raises(ValueError, match="expected 'module:attr'"):
        split_reference(reference)
    with pytest.raises(ValueError):
        LazyRegistry("widget", {"w": reference})


def test_registries_name_real_objects():
    from ex2.inspect.stage import JUDGES
    from ex2.llm.samplers import SAMPLERS
    from ex2.vlm import BACKENDS

    for registry in (JUDGES, SAMPLERS, BACKENDS):
        for name in registry:
            assert callable(registry.load(name)), (registry.kind, name)


@pytest.mark.parametrize("backend", ["embedded", "hf", "openai"])
def test_make_judge_passes_what_each_judge_takes(backend, monkeypatch):
    from ex2.inspect.stage import JUDGES, InspectConfig, judge_options

    assert set(JUDGES) == set(typing.get_args(typing.get_type_hints(InspectConfig)["backend"]))
    config = InspectConfig(input="d.jsonl", backend=backend, model="m", device="cpu", max_tokens=7)
    options = judge_options(config)
    inspect.signature(JUDGES.load(backend)).bind(**options)  # raises TypeError on a wrong argument
    if backend != "embedded":
        assert options["model"] == "m" and options["max_tokens"] == 7
    assert options.get("device", "cpu") == "cpu"


def test_save_png_writes_atomically_with_agg(tmp_path):
    import matplotlib

    from ex2.core.plotting import pyplot, save_png

    plt = pyplot()
    assert matplotlib.get_backend().lower() == "agg"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save_png(fig, tmp_path / "sub" / "curve.png", dpi=50)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["curve.png"]  # no temp file left
    assert not plt.fignum_exists(fig.number)  # closed
    fig, _ = plt.subplots()

    def killed(handle, **kwargs):
        handle.write(b"\x89PNG half")
        raise RuntimeError("killed mid-write")

    fig.savefig = killed
    with pytest.raises(RuntimeError):
        save_png(fig, tmp_path / "bad.png")
    assert [p.name for p in tmp_path.iterdir()] == ["sub"]  # neither the file nor a temp file
    plt.close(fig)


def test_a_stage_leaves_accelerate_free_to_choose_another_precision():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from ex2.core.devices import accelerate_state_released

    with accelerate_state_released():  # as trl's trainer in the demo's bf16 training
        assert Accelerator(cpu=True, mixed_precision="bf16").mixed_precision == "bf16"
    try:
        assert Accelerator(cpu=True, mixed_precision="no").mixed_precision == "no"  # as ex2 finetune after it
        with pytest.raises(ValueError, match="already been initialized"):  # what the release prevents
            Accelerator(cpu=True, mixed_precision="bf16")
    finally:
        AcceleratorState._reset_state()
