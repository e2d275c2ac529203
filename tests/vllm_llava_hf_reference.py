"""The HF side of tests/test_vllm_llava.py, run in framepress's main environment (transformers' LLaVA-OneVision).

``python vllm_llava_hf_reference.py PIXELS CASES OUT``: PIXELS a torch file of one video's pixels [F, 3, S, S]
for framepress's packaged model, CASES a JSON list of {"method", "retention", "params"} (a vLLM setting, as
framepress.vllm.settings checks it), OUT a torch file written with, per case, the video's block of the sequence
at the LLM's entry under framepress.apply (its kept tokens, then the image newline) as [N + 1, C].
"""

from __future__ import annotations

import json
import sys

import torch
import transformers

import framepress
from framepress import packaged, registry
from framepress.models.tiny import video_inputs

PROMPT, QUESTION = (5, 6), (7, 8, 9)


def main(pixels_path: str, cases_path: str, out_path: str) -> None:
    torch.manual_seed(0)
    model = transformers.AutoModelForImageTextToText.from_pretrained(
        packaged.FOLDER, local_files_only=True, dtype=torch.float32
    ).eval()
    pixels = torch.load(pixels_path)
    inputs = video_inputs(model, pixels, prompt=PROMPT, question=QUESTION)
    start = 1 + len(PROMPT)  # BOS and the prompt come before the video
    seen: dict[str, torch.Tensor] = {}

    def entry(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    out = []
    for case in json.loads(open(cases_path).read()):
        spec = registry.get(case["method"])
        retention = case["retention"]
        if spec.inner is not None:  # its pre-LLM part alone, as vLLM serves it
            retention = f"{retention * 100!r}%"
        with framepress.apply(model, case["method"], retention, **case.get("params", {})):
            hook = model.model.language_model.register_forward_pre_hook(entry, with_kwargs=True)
            try:
                with torch.no_grad():
                    model(**inputs)
            finally:
                hook.remove()
        embeds = seen.pop("embeds")[0]
        out.append(embeds[start : embeds.shape[0] - len(QUESTION)].clone())
    torch.save(out, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:4])
