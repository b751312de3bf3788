#!/usr/bin/env python3
"""Speculative decoding, side by side: Spillway's decode tokens/s on one
prompt without a drafter and with each drafter asked for, in alternating
rounds (plain, drafter 1, drafter 2, ..., then llama.cpp's speculative
examples when given), greedy, the same number of tokens each. Every
Spillway drafter's tokens are checked against the plain run's (greedy
output must not change), except under --force-acceptance (random-weight
models, where the output is not the model's).

    bench/speculative.py SPILLWAY MODEL --prompt-file F [--chatml] \
        [--modes plain,lookup:3,self:q4_k_m,draft:PATH] [--rounds N] \
        [--tokens T] [--threads K] [--disk-layers all] [--ram 2GiB] \
        [--draft-tokens K] [--draft-fixed] [--force-acceptance R] \
        [--llama-lookup BIN] [--llama-speculative BIN --llama-draft PATH]

Prints one line per run and a summary (best and median tokens/s, and the
best and median of the per-round ratios to the plain run) as JSON last.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile


def chatml(user):
    return (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n"
    )


def spillway_run(a, prompt, mode):
    cmd = [
        a.spillway, "generate", "--model", a.model, "--raw", "--prompt", prompt,
        "--greedy", "--max-tokens", str(a.tokens), "--ignore-eos", "--json",
        "--threads", str(a.threads), "--ctx", str(a.ctx),
    ]
    if a.disk_layers:
        cmd += ["--disk-layers", a.disk_layers]
    if a.ram:
        cmd += ["--ram", a.ram]
    kind, _, arg = mode.partition(":")
    if kind == "lookup":
        cmd += ["--lookup-ngram", arg or "3"]
    elif kind == "self":
        cmd += ["--draft-quant", arg or "q4_k_m"]
    elif kind == "draft":
        cmd += ["--draft-model", arg]
    elif kind != "plain":
        sys.exit(f"unknown mode {mode}")
    if kind != "plain":
        if a.draft_tokens:
            cmd += ["--draft-tokens", str(a.draft_tokens)]
        if a.draft_fixed:
            cmd += ["--draft-fixed"]
        if a.force_acceptance is not None:
            cmd += ["--force-acceptance", str(a.force_acceptance)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} … failed: {out.stderr[-2000:]}")
    d = json.loads(out.stdout)
    return {
        "tokens_per_sec": d["decode_tokens_per_sec"],
        "tokens": d["generated_tokens"],
        "proposed": d["draft_proposed"],
        "accepted": d["draft_accepted"],
        "passes": d["decode_passes"],
        "decode_secs": d["decode_secs"],
        "draft_secs": d["draft_secs"],
    }


def llama_run(a, prompt, which):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(prompt)
    common = ["-f", f.name, "-n", str(a.tokens), "-t", str(a.threads), "-c", str(a.ctx),
              "--temp", "0", "--ignore-eos", "-s", "1"]
    if which == "llama-lookup":
        cmd = [a.llama_lookup, "-m", a.model, "--spec-draft-n-max", str(a.draft_tokens or 8)] + common
    else:
        cmd = [a.llama_speculative, "-m", a.model, "-md", a.llama_draft, "--spec-type", "draft-simple",
               "--spec-draft-n-max", str(a.draft_tokens or 8), "-td", str(a.threads)] + common
    out = subprocess.run(cmd, capture_output=True, text=True)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        sys.exit(f"{which} failed: {text[-2000:]}")
    m = re.search(r"decoded\s+(\d+)\s+tokens in\s+([\d.]+)\s+seconds, speed:\s+([\d.]+) t/s", text)
    drafted = re.search(r"n_drafted\s*=\s*(\d+)", text)
    accepted = re.search(r"n_accept\s*=\s*(\d+)", text)
    if not m:
        sys.exit(f"{which}: no speed line in its output: {text[-2000:]}")
    return {
        "tokens_per_sec": float(m.group(3)),
        "proposed": int(drafted.group(1)) if drafted else None,
        "accepted": int(accepted.group(1)) if accepted else None,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("spillway")
    p.add_argument("model")
    p.add_argument("--prompt-file", required=True)
    p.add_argument("--chatml", action="store_true", help="wrap the prompt in Qwen's chat format")
    p.add_argument("--modes", default="plain,lookup:3")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--disk-layers")
    p.add_argument("--ram")
    p.add_argument("--draft-tokens", type=int)
    p.add_argument("--draft-fixed", action="store_true")
    p.add_argument("--force-acceptance", type=float)
    p.add_argument("--llama-lookup")
    p.add_argument("--llama-speculative")
    p.add_argument("--llama-draft")
    a = p.parse_args()
    prompt = open(a.prompt_file).read()
    if a.chatml:
        prompt = chatml(prompt)
    modes = a.modes.split(",")
    if modes[0] != "plain" and a.force_acceptance is None:
        sys.exit("the first mode must be plain (the reference) unless acceptance is forced")
    peers = []
    if a.llama_lookup:
        peers.append("llama-lookup")
    if a.llama_speculative:
        peers.append("llama-speculative-simple")
    runs = {m: [] for m in modes + peers}
    for r in range(a.rounds):
        reference = None
        for m in modes:
            res = spillway_run(a, prompt, m)
            if m == "plain":
                reference = res["tokens"]
            elif a.force_acceptance is None and res["tokens"] != reference:
                sys.exit(f"round {r + 1}: {m} changed the greedy output")
            runs[m].append(res)
            print(f"round {r + 1} spillway {m}: {res['tokens_per_sec']:.2f} t/s, "
                  f"{res['accepted']}/{res['proposed']} drafted accepted, {res['passes']} passes",
                  flush=True)
        for peer in peers:
            res = llama_run(a, prompt, peer)
            runs[peer].append(res)
            print(f"round {r + 1} {peer}: {res['tokens_per_sec']:.2f} t/s, "
                  f"{res['accepted']}/{res['proposed']} drafted accepted", flush=True)
    summary = {}
    plain = [x["tokens_per_sec"] for x in runs.get("plain", [])]
    for m, rs in runs.items():
        tps = [x["tokens_per_sec"] for x in rs]
        ratios = [t / b for t, b in zip(tps, plain)] or [float("nan")]
        summary[m] = {
            "tokens_per_sec": tps,
            "best": max(tps),
            "median": statistics.median(tps),
            "ratio_best": max(ratios),
            "ratio_median": statistics.median(ratios),
            "accepted": [x.get("accepted") for x in rs],
            "proposed": [x.get("proposed") for x in rs],
            # Seconds a model pass takes on average (drafting excluded).
            "pass_secs": [
                (x["decode_secs"] - x["draft_secs"]) / x["passes"]
                for x in rs
                if x.get("passes")
            ],
        }
    print(json.dumps({"model": a.model, "tokens": a.tokens, "threads": a.threads,
                      "disk_layers": a.disk_layers, "ram": a.ram, "summary": summary}))


if __name__ == "__main__":
    main()
