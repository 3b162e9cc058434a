"""Open and closed answers through vLLM (GPU, ``pip install 'ex2[vllm]'``), imported only when chosen."""

from __future__ import annotations

from collections.abc import Sequence

import PIL.Image

from ex2.core.names import parse_gvlm_name
from ex2.vlm.offline import hub_offline


def import_vllm():
    """The vllm module, or an error (a ValueError too, so the CLI prints it) naming the extra."""
    from ex2.llm.samplers import MissingExtraError

    try:
        import vllm
    except ImportError as err:
        raise MissingExtraError(
            "--gen-backend vllm needs vllm and a CUDA GPU: pip install 'ex2[vllm]' (or use --gen-backend transformers)"
        ) from err
    return vllm


class VLLMAnswerer:
    """Greedy answers of the generative VLM ``name`` (``gen:…``) through vLLM, loaded once:
    ``answerer(images, questions) -> answers``."""

    def __init__(self, name: str, max_new_tokens: int = 64, prompt_format: str = "chat") -> None:
        self.vllm = import_vllm()
        from transformers import AutoConfig, AutoProcessor

        from ex2.gvlm.backend import resolve_prompt_format

        model = parse_gvlm_name(name).model
        with hub_offline():
            self.processor = AutoProcessor.from_pretrained(model)
            self.prompt_format = resolve_prompt_format(prompt_format, AutoConfig.from_pretrained(model).model_type)
            self.llm = self.vllm.LLM(model=model, limit_mm_per_prompt={"image": 1})
        self.sampling = self.vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens)

    def __call__(self, images: Sequence[PIL.Image.Image], questions: Sequence[str]) -> list[str]:
        from ex2.gvlm.backend import format_prompt

        requests = [
            {"prompt": format_prompt(self.processor, q, prompt_format=self.prompt_format),
             "multi_modal_data": {"image": image}}
            for image, q in zip(images, questions, strict=True)
        ]
        outputs = self.llm.generate(requests, self.sampling, use_tqdm=False)
        return [out.outputs[0].text.strip() for out in outputs]
