#!/usr/bin/env python3
"""The seed project's Python stack, for contrast (docs/BENCHMARKS.md).

transformers + accelerate on the CPU in fp32, on Qwen2.5-Coder-0.5B-Instruct
read from its GGUF (dequantized by transformers) and saved as safetensors;
then, in a fresh process per case:
  ram   every layer in RAM
  disk  every decoder layer mapped to "disk" (accelerate's offload_folder)
Prints one JSON line per case: prompt (pp) and decode (tg) tokens/s and the
process's peak resident memory. Spillway's side of the comparison is
`spillway bench` on the same GGUF (the command is in BENCHMARKS.md).

usage: bench/python-peer.py GGUF WORK_DIR [ram|disk] [--threads 2]
needs: pip install torch transformers accelerate gguf safetensors
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def convert(gguf: Path, out: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch

    if (out / "config.json").exists():
        return
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers will not re-save a model it read from a GGUF: copy the
    # dequantized weights into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def run_case(folder: Path, case: str, threads: int, pp: int, tg: int):
    import torch
    import transformers
    import accelerate
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    kw = {"torch_dtype": torch.float32}
    offload = None
    if case == "disk":
        cfg = json.loads((folder / "config.json").read_text())
        device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "lm_head": "cpu",
                      "model.rotary_emb": "cpu"}
        for i in range(cfg["num_hidden_layers"]):
            device_map[f"model.layers.{i}"] = "disk"
        offload = tempfile.mkdtemp(prefix="peer-offload-")
        kw.update(device_map=device_map, offload_folder=offload)
    t = time.time()
    model = AutoModelForCausalLM.from_pretrained(folder, **kw)
    model.eval()
    load = time.time() - t
    vocab = model.config.vocab_size
    ids = torch.tensor([[(i * 7919 + 13) % (vocab - 1000) + 100 for i in range(pp)]])
    with torch.inference_mode():
        t = time.time()
        model(ids)
        pp_secs = time.time() - t
        # Decode: one token at a time from a one-token prompt, greedy, with
        # the KV cache; the first step (the prompt) is not counted.
        first = torch.tensor([[1000]])
        out = model(first, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t = time.time()
        for _ in range(tg):
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        tg_secs = time.time() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "case": case, "threads": threads, "load_seconds": load,
        "pp_tokens": pp, "pp_tokens_per_sec": pp / pp_secs,
        "tg_tokens": tg, "tg_tokens_per_sec": tg / tg_secs,
        "peak_rss_bytes": peak,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__},
    }), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("cases", nargs="*", default=["ram", "disk"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=32)
    a = ap.parse_args()
    folder = a.work / "qwen2.5-coder-0.5b-fp32"
    if a.case:
        run_case(folder, a.case, a.threads, a.pp, a.tg)
        return
    convert(a.gguf, folder)
    for case in a.cases:
        # A fresh process per case, so each peak memory is its own.
        subprocess.run([sys.executable, __file__, str(a.gguf), str(a.work), "--case", case,
                        "--threads", str(a.threads), "--pp", str(a.pp), "--tg", str(a.tg)], check=True)


if __name__ == "__main__":
    main()
