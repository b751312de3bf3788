#!/usr/bin/env python3
"""What streaming through `spillway serve` costs against `spillway generate`
on the same model: decode tokens/s, alternating rounds, best and median
ratios (serve / generate).

    bench/serve-overhead.py SPILLWAY MODEL [--rounds 5] [--tokens 256] [--threads 2]

generate's figure is its own `decode_tokens_per_sec` (tokens after the
first over the time after the first); serve's is measured by the client the
same way: completion tokens after the first over the time from the first
streamed token to the last, so it includes the HTTP, SSE and JSON cost."""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import http.client
import urllib.parse

PROMPT = "Write a long story about a river that floods a valley."


def generate(args):
    out = subprocess.run(
        [args.spillway, "generate", "--model", args.model, "--prompt", PROMPT, "--greedy",
         "--ignore-eos", "--max-tokens", str(args.tokens), "--threads", str(args.threads), "--json"],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["decode_tokens_per_sec"]


def through_server(base, model, args):
    """Streams one reply over a plain HTTP connection, reading the server-sent
    events line by line (the OpenAI client's per-chunk parsing would cost
    this 2-core machine more CPU than the server does)."""
    url = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    body = json.dumps({
        "model": model, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
        "max_tokens": args.tokens, "stream": True, "stream_options": {"include_usage": True},
        "ignore_eos": True})
    conn.request("POST", url.path + "/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    first = last = None
    tokens, engine = 0, 0.0
    for line in resp:
        if not line.startswith(b"data: "):
            continue
        if b'"usage"' in line:
            final = json.loads(line[6:])
            tokens = final["usage"]["completion_tokens"]
            engine = final["timings"]["predicted_per_second"]
        elif b'"content":"' in line and b'"content":""' not in line:
            now = time.perf_counter()
            first = first or now
            last = now
    conn.close()
    return (tokens - 1) / (last - first), engine


def main():
    p = argparse.ArgumentParser()
    p.add_argument("spillway")
    p.add_argument("model")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    tmp = tempfile.mkdtemp()
    ready = os.path.join(tmp, "ready.json")
    server = subprocess.Popen(
        [args.spillway, "serve", "--model", args.model, "--port", "0", "--threads", str(args.threads),
         "--ready-file", ready], stderr=subprocess.DEVNULL)
    try:
        while not os.path.exists(ready):
            if server.poll() is not None:
                sys.exit("spillway serve exited")
            time.sleep(0.05)
        with open(ready) as f:
            info = json.load(f)
        base, model = info["base_url"], info["model"]
        through_server(base, model, args)  # warm-up
        gen, srv, eng = [], [], []
        for r in range(args.rounds):
            gen.append(generate(args))
            client_rate, engine_rate = through_server(base, model, args)
            srv.append(client_rate)
            eng.append(engine_rate)
            print(f"round {r + 1}: generate {gen[-1]:.2f} t/s, serve (streamed, at the client) "
                  f"{srv[-1]:.2f} t/s, the server's engine {eng[-1]:.2f} t/s", file=sys.stderr)
        ratios = [s / g for s, g in zip(srv, gen)]
        engine_ratios = [e / g for e, g in zip(eng, gen)]
        print(json.dumps({
            "model": os.path.basename(args.model),
            "threads": args.threads,
            "tokens": args.tokens,
            "generate_tokens_per_sec": gen,
            "serve_tokens_per_sec": srv,
            "generate_median": statistics.median(gen),
            "serve_median": statistics.median(srv),
            "ratio_median": statistics.median(ratios),
            "ratio_best": max(ratios),
            "ratio_of_medians": statistics.median(srv) / statistics.median(gen),
            "server_engine_tokens_per_sec": eng,
            "engine_ratio_median": statistics.median(engine_ratios),
            "engine_ratio_best": max(engine_ratios),
        }, indent=1))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
