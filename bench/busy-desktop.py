#!/usr/bin/env python3
"""Prompt and decode speed on a busy desktop: Spillway and llama.cpp side by
side, with 0, 1 and 2 cores kept busy by `yes` processes at normal priority.

Rounds alternate between the engines (and any extra Spillway builds given
with --also); each figure is tokens/s of one run; best and median over the
rounds are reported, with Spillway's ratios to its own quiet speed and to
llama.cpp under the same load.

usage: bench/busy-desktop.py SPILLWAY LLAMA_BENCH MODEL [--rounds 5]
           [--threads 2] [--pp 256] [--tg 64] [--busy 0,1,2] [--also NAME=PATH]
"""
import argparse, json, statistics, subprocess, sys


def spillway(exe, a):
    out = subprocess.run(
        [exe, "bench", "--model", a.model, "--threads", str(a.threads),
         "--prompt-tokens", str(a.pp), "--gen-tokens", str(a.tg),
         "--repetitions", "1", "--json"],
        capture_output=True, text=True, check=True).stdout
    v = json.loads(out)
    return v["pp_tokens_per_sec"], v["tg_tokens_per_sec"]


def llama(exe, a):
    out = subprocess.run(
        [exe, "-m", a.model, "-t", str(a.threads), "-p", str(a.pp), "-n", str(a.tg),
         "-r", "1", "-o", "json"], capture_output=True, text=True, check=True).stdout
    pp = tg = None
    for t in json.loads(out):
        if t["n_prompt"] > 0:
            pp = t["avg_ts"]
        else:
            tg = t["avg_ts"]
    return pp, tg


def main():
    p = argparse.ArgumentParser()
    p.add_argument("spillway"); p.add_argument("llama_bench"); p.add_argument("model")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pp", type=int, default=256)
    p.add_argument("--tg", type=int, default=64)
    p.add_argument("--busy", default="0,1,2")
    p.add_argument("--also", action="append", default=[])
    a = p.parse_args()
    engines = [("spillway", lambda: spillway(a.spillway, a))]
    for extra in a.also:
        name, path = extra.split("=", 1)
        engines.append((name, lambda path=path: spillway(path, a)))
    engines.append(("llama.cpp", lambda: llama(a.llama_bench, a)))
    results = {}
    for busy in [int(b) for b in a.busy.split(",")]:
        hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(busy)]
        try:
            for r in range(a.rounds):
                for name, run in engines:
                    pp, tg = run()
                    results.setdefault((busy, name), []).append((pp, tg))
                    print(json.dumps({"busy": busy, "round": r + 1, "engine": name,
                                      "pp": pp, "tg": tg}), flush=True)
        finally:
            for h in hogs:
                h.kill(); h.wait()
    print()
    print(f"| busy cores | engine | pp{a.pp} best / median | tg{a.tg} best / median |")
    print("|---|---|---|---|")
    for (busy, name), runs in results.items():
        pps = [x[0] for x in runs]; tgs = [x[1] for x in runs]
        print(f"| {busy} | {name} | {max(pps):.1f} / {statistics.median(pps):.1f} "
              f"| {max(tgs):.1f} / {statistics.median(tgs):.1f} |")
    print()
    for busy in sorted({b for b, _ in results}):
        s = results[(busy, "spillway")]; l = results[(busy, "llama.cpp")]
        q = results[(0, "spillway")] if (0, "spillway") in results else None
        for i, what in [(0, "pp"), (1, "tg")]:
            sv = [x[i] for x in s]; lv = [x[i] for x in l]
            line = (f"busy {busy} {what}: Spillway/llama.cpp best {max(sv)/max(lv):.2f}x "
                    f"median {statistics.median(sv)/statistics.median(lv):.2f}x")
            if q and busy:
                qv = [x[i] for x in q]
                line += (f"; of quiet Spillway best {max(sv)/max(qv):.2f} "
                         f"median {statistics.median(sv)/statistics.median(qv):.2f}")
            print(line)


if __name__ == "__main__":
    sys.exit(main())
