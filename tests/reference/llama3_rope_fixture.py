"""Makes tests/fixtures/llama3_rope_tiny: the mistral_tiny weights and
tokenizer as a Llama model with Llama 3.1's rotary scaling
(rope_type "llama3": theta 500000, factor 8, low/high frequency factors 1
and 4, original context 8192), and the reference logits and greedy tokens
Hugging Face transformers computes for mistral_tiny's chat prompt.

    python tests/reference/llama3_rope_fixture.py  # from the repository root

Needs torch and transformers (made with transformers 5.24.0, torch 2.15.0,
CPU, f32 eager attention). It also prints how far the logits move when the
scaling is left out, so the fixture is known to catch it.
"""
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

root = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
src, out = root / "mistral_tiny", root / "llama3_rope_tiny"
out.mkdir(exist_ok=True)
for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json",
          "generation_config.json", "messages.json"]:
    shutil.copy(src / f, out / f)

config = json.loads((src / "config.json").read_text())
config.update({
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "attention_bias": False,
    "mlp_bias": False,
})
config.pop("sliding_window", None)
(out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

torch.set_num_threads(1)
from safetensors.torch import load_file
ids = load_file(src / "reference.safetensors")["input_ids"]


def run(cfg):
    model = LlamaForCausalLM.from_pretrained(
        out, config=cfg, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        logits = model(ids).logits
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             num_beams=1, max_new_tokens=8, eos_token_id=None,
                             repetition_penalty=None)[:, ids.shape[1]:]
    return logits, gen


cfg = LlamaConfig.from_pretrained(out)
logits, gen = run(cfg)
plain = LlamaConfig.from_pretrained(out)
plain.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
plain_logits, _ = run(plain)
save_file({"input_ids": ids, "logits": logits.contiguous(), "generated_ids": gen.contiguous()},
          out / "reference.safetensors")
diff = (logits - plain_logits).abs().max().item()
print(f"greedy {gen.tolist()}; logits move by {diff:.3f} without the scaling")
(out / "README.md").write_text(
    "# `llama3_rope_tiny`\n\n"
    "mistral_tiny's weights and tokenizer as a `LlamaForCausalLM` with Llama 3.1's rotary scaling "
    "(`rope_scaling.rope_type = \"llama3\"`, theta 500000, factor 8, low/high frequency factors 1/4, "
    "original context 8192). Made by `tests/reference/llama3_rope_fixture.py` with transformers "
    f"(f32, eager attention, CPU). `reference.safetensors`: `input_ids` (mistral_tiny's chat prompt), "
    f"`logits` at every position, 8 greedy `generated_ids` ({gen.tolist()[0]}). Leaving the scaling "
    f"out moves the logits by up to {diff:.3f}.\n")
