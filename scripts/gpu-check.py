#!/usr/bin/env python3
"""The GPU check: Spillway's CUDA build on a real NVIDIA GPU, in one run.

Run through scripts/gpu-check.sh (which finds the binary and the CUDA
libraries). Writes gpu-check.json (every figure and a pass/fail per check)
and gpu-check.log (every command and its output) under --out.

Checks:
  fixtures     every fixture in tests/fixtures, --mode full-gpu: greedy tokens
               equal to the CPU run's
  synthesize   synthetic Mistral-7B-Instruct-v0.3 Q4_K_M and Q8_0, made here
  full_gpu     pp512 / tg128 full-GPU, decode as a fraction of the HBM bound
               (bytes per token / device copy bandwidth)
  caps         --vram 2, 4, 6 GiB: the planner's split, its predicted GPU peak
               against the VRAM nvidia-smi saw the process use (within 5 %),
               predicted against measured tokens/s, speed per split
  oom          a real out-of-memory mid-reply (another process takes the free
               VRAM while the reply streams): the reply completes, the engine
               re-plans; and a cap above what is free is planned within it
  replace      re-placement GPU -> RAM -> disk -> GPU during a reply: greedy
               tokens equal to an unbroken reply
  speculative  prompt lookup on the GPU tier: greedy tokens equal, speed
  kv_in_ram    GPU layers with their KV caches in RAM (VRAM short of half the
               caches at 32k): fixture tokens equal, 7B decode both ways

--dry-run (no GPU): the same steps on the CPU build, the GPU tier simulated on
candle's CPU device (`--vram 2GiB --simulate-with-candle`), small synthetic
shapes; GPU-only measurements (bandwidth, nvidia-smi, the memory hog) skipped.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
GIB = 1 << 30


class Check:
    def __init__(self, args):
        self.args = args
        self.bin = args.bin
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "gpu-check.log", "w")
        self.env = dict(os.environ, SPILLWAY_CACHE_DIR=str(self.work / "cache"), RUST_BACKTRACE="1")
        self.results = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "dry_run": args.dry_run,
            "binary": str(self.bin),
            "threads": args.threads,
            "checks": {},
        }

    # --- running things -------------------------------------------------
    def say(self, text):
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def run(self, argv, timeout=600, check=True):
        argv = [str(a) for a in argv]
        self.say("$ " + " ".join(argv))
        t = time.time()
        p = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout)
        self.log.write(p.stdout[-20000:])
        self.log.write(p.stderr[-20000:])
        self.log.write(f"[exit {p.returncode}, {time.time() - t:.1f} s]\n")
        self.log.flush()
        if check and p.returncode != 0:
            raise RuntimeError(f"{argv[1]} failed ({p.returncode}): {p.stderr.strip()[-600:]}")
        return p

    def json_of(self, argv, **kw):
        p = self.run(argv, **kw)
        return json.loads(p.stdout.strip().splitlines()[-1])

    def gpu_args(self, mode="full-gpu"):
        """Placement flags that put the model on the GPU tier."""
        if self.args.dry_run:
            return ["--mode", mode, "--vram", "2GiB", "--simulate-with-candle"]
        return ["--mode", mode]

    def record(self, name, ok, **figures):
        self.results["checks"][name] = {"ok": bool(ok), **figures}
        self.say(f"== {name}: {'PASS' if ok else 'FAIL'} {json.dumps(figures)[:1500]}")
        self.save()

    def save(self):
        (self.out / "gpu-check.json").write_text(json.dumps(self.results, indent=2))

    def step(self, name, fn):
        try:
            fn()
        except Exception as e:  # one failed check must not stop the others
            self.record(name, False, error=str(e)[-2000:])

    # --- the device -----------------------------------------------------
    def device(self):
        info = {}
        if shutil.which("nvidia-smi"):
            p = self.run(["nvidia-smi", "--query-gpu=name,memory.total,memory.used,driver_version",
                          "--format=csv,noheader,nounits"], check=False)
            info["nvidia_smi"] = p.stdout.strip()
        if not self.args.dry_run:
            info["copy_bandwidth_bytes_per_sec"] = self.bandwidth()
        self.results["device"] = info
        self.save()

    def bandwidth(self):
        """Device-to-device copy bandwidth (bytes read + written per second),
        best of 10 copies of 2 GiB, measured with PyTorch."""
        code = (
            "import torch,time\n"
            "a=torch.empty(2**31,dtype=torch.uint8,device='cuda');b=torch.empty_like(a)\n"
            "b.copy_(a);torch.cuda.synchronize();best=1e9\n"
            "for _ in range(10):\n"
            " s=torch.cuda.Event(enable_timing=True);e=torch.cuda.Event(enable_timing=True)\n"
            " s.record();b.copy_(a);e.record();torch.cuda.synchronize();best=min(best,s.elapsed_time(e)/1e3)\n"
            "print(2*2**31/best)\n"
        )
        p = self.run([sys.executable, "-c", code], check=False)
        try:
            return float(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None

    # --- checks ---------------------------------------------------------
    def fixtures(self):
        figures, ok = {}, True
        for name in ["mistral_tiny", "qwen2_tiny_text", "qwen2_5_vl_tiny", "qwen3_vl_tiny"]:
            d = FIXTURES / name
            base = [self.bin, "generate", "--model", d, "--chat", d / "messages.json", "--greedy",
                    "--ignore-eos", "--max-tokens", "8", "--dtype", "f32", "--quant", "none",
                    "--threads", self.args.threads, "--json"]
            cpu = self.json_of(base + ["--mode", "cpu-only"])
            gpu = self.json_of(base + self.gpu_args())
            same = cpu["generated_tokens"] == gpu["generated_tokens"]
            ok &= same and "gpu" in gpu["tiers"]
            figures[name] = {"cpu": cpu["generated_tokens"], "gpu": gpu["generated_tokens"],
                             "equal": same, "tiers": sorted(set(gpu["tiers"]))}
        self.record("fixtures", ok, **figures)

    def synthesize(self):
        figures = {}
        self.models = {}
        config = FIXTURES / "configs" / "mistral-7b-instruct-v0.3" / "config.json"
        if self.args.dry_run:
            # The same code path at a size this machine runs in seconds.
            c = json.loads(config.read_text())
            c.update(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                     num_attention_heads=8, num_key_value_heads=2)
            config = self.work / "small-mistral" / "config.json"
            config.parent.mkdir(exist_ok=True)
            config.write_text(json.dumps(c))
        for quant in ["q4_k_m", "q8_0"]:
            out = self.work / f"mistral-7b-{quant}.gguf"
            r = self.json_of([self.bin, "synthesize", "--config", config, "--quant", quant,
                              "-o", out, "--json"])
            self.models[quant] = out
            figures[quant] = {k: r[k] for k in ["file_bytes", "seconds", "mb_per_s"]}
        self.record("synthesize", True, **figures)

    def bench(self, model, extra, reps, poll=True):
        """`spillway bench --json` with the process's VRAM polled alongside."""
        argv = [self.bin, "bench", "--model", model, "--threads", self.args.threads,
                "--repetitions", reps, "--json"] + extra
        peak = {"bytes": None}
        stop = threading.Event()
        poller = None
        if poll and not self.args.dry_run and shutil.which("nvidia-smi"):
            def watch():
                best = 0
                while not stop.is_set():
                    p = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                        "--format=csv,noheader,nounits"],
                                       capture_output=True, text=True)
                    for line in p.stdout.splitlines():
                        parts = [x.strip() for x in line.split(",")]
                        if len(parts) == 2 and parts[1].isdigit():
                            best = max(best, int(parts[1]) << 20)
                    peak["bytes"] = best
                    time.sleep(0.2)
            poller = threading.Thread(target=watch, daemon=True)
            poller.start()
        try:
            r = self.json_of(argv)
        finally:
            stop.set()
            if poller:
                poller.join()
        r["nvidia_smi_peak_bytes"] = peak["bytes"]
        return r

    def full_gpu(self):
        figures, ok = {}, True
        bw = self.results.get("device", {}).get("copy_bandwidth_bytes_per_sec")
        for quant, model in self.models.items():
            r = self.bench(model, self.gpu_args(), 3)
            bytes_per_token = r["weights_bytes_per_token"]
            bound = bw / bytes_per_token if bw else None
            figures[quant] = {
                "pp512": r["pp_tokens_per_sec"], "tg128": r["tg_tokens_per_sec"],
                "layers": r["layers"], "bytes_per_token": bytes_per_token,
                "hbm_bound_tokens_per_sec": bound,
                "fraction_of_bound": r["tg_tokens_per_sec"] / bound if bound else None,
                "predicted_decode": r["predicted_decode_tokens_per_sec"],
                "vram_peak_bytes": r["nvidia_smi_peak_bytes"],
                "predicted_gpu_peak_bytes": r["predicted_peak_gpu_bytes"],
            }
            ok &= r["layers"]["ram"] == 0 and r["layers"]["disk"] == 0
        self.record("full_gpu", ok, **figures)

    def caps(self):
        figures, ok = {}, True
        model = self.models["q4_k_m"]
        for cap in ([2, 4, 6] if not self.args.dry_run else [2]):
            extra = ["--mode", "auto", "--vram", f"{cap}GiB"]
            if self.args.dry_run:
                extra.append("--simulate-with-candle")
            r = self.bench(model, extra, 1)
            measured = r["nvidia_smi_peak_bytes"]
            predicted = r["predicted_peak_gpu_bytes"]
            err = (predicted / measured - 1) if measured else None
            speed_err = (r["predicted_decode_tokens_per_sec"] / r["tg_tokens_per_sec"] - 1
                         if r["tg_tokens_per_sec"] else None)
            figures[f"{cap}GiB"] = {
                "layers": r["layers"], "pp512": r["pp_tokens_per_sec"],
                "tg128": r["tg_tokens_per_sec"], "predicted_gpu_peak_bytes": predicted,
                "nvidia_smi_peak_bytes": measured, "vram_error": err,
                "predicted_decode": r["predicted_decode_tokens_per_sec"],
                "decode_prediction_error": speed_err,
            }
            if not self.args.dry_run:
                ok &= err is not None and abs(err) <= 0.05 and measured <= cap * GIB
        self.record("caps", ok, **figures)

    def oom(self):
        """A real out-of-memory mid-reply: once the reply streams, a helper
        process takes all but 32 MiB of the free VRAM for 60 s."""
        if self.args.dry_run:
            self.record("oom", True, skipped="needs a GPU (the simulated tier's fault injection is "
                        "tested by cargo test: placement::out_of_memory_*)")
            return
        model = self.models["q4_k_m"]
        argv = [self.bin, "generate", "--model", model, "--prompt", "Write a long story.",
                "--greedy", "--ignore-eos", "--max-tokens", "96", "--threads", self.args.threads,
                "--mode", "auto", "--vram", "8GiB", "--repeat-penalty", "1.0"]
        self.say("$ " + " ".join(map(str, argv)) + "   (hog starts at the first token)")
        p = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=self.env)
        first = p.stdout.read(1)  # the first streamed byte: the reply is under way
        hog_code = (
            "import torch,time,sys\n"
            "free,_=torch.cuda.mem_get_info();n=max(free-(32<<20),0);held=[]\n"
            "while n>=(64<<20):\n"
            " try: held.append(torch.empty(min(n,1<<30),dtype=torch.uint8,device='cuda'));n-=min(n,1<<30)\n"
            " except RuntimeError: break\n"
            "print(sum(t.numel() for t in held),flush=True);time.sleep(60)\n"
        )
        hog = subprocess.Popen([sys.executable, "-c", hog_code], stdout=subprocess.PIPE, text=True)
        held = hog.stdout.readline().strip()
        rest, err = p.communicate(timeout=540)
        hog.kill()
        text = (first + rest).decode(errors="replace")
        err = err.decode(errors="replace")
        self.log.write(text + "\n" + err + "\n")
        replanned = "re-planned" in err.lower()
        done = "96 generated" in err
        figures = {"hog_bytes": int(held) if held.isdigit() else held, "exit": p.returncode,
                   "completed_96_tokens": done, "replanned": replanned,
                   "notes": [l for l in err.splitlines() if l.startswith("note:")][-6:]}
        # A cap above what is free: the plan must fit what is free.
        hog2 = subprocess.Popen([sys.executable, "-c", hog_code.replace("32<<20", "3<<30")],
                                stdout=subprocess.PIPE, text=True)
        hog2.stdout.readline()
        try:
            r = self.bench(model, ["--mode", "auto", "--vram", "6GiB", "--prompt-tokens", "64",
                                   "--gen-tokens", "16"], 1)
            figures["cap_above_free"] = {"layers": r["layers"],
                                         "nvidia_smi_peak_bytes": r["nvidia_smi_peak_bytes"],
                                         "predicted_gpu_peak_bytes": r["predicted_peak_gpu_bytes"]}
            cap_ok = True
        except Exception as e:
            figures["cap_above_free"] = {"error": str(e)[-600:]}
            cap_ok = False
        finally:
            hog2.kill()
        self.record("oom", p.returncode == 0 and done and replanned and cap_ok, **figures)

    def replace(self):
        figures, ok = {}, True
        modes = "cpu-only,disk-offload,full-gpu"
        if self.args.dry_run:
            gpu_extra = ["--vram", "2GiB", "--simulate-with-candle"]
        else:
            gpu_extra = []
        d = FIXTURES / "mistral_tiny"
        base = [self.bin, "generate", "--model", d, "--chat", d / "messages.json", "--greedy",
                "--ignore-eos", "--max-tokens", "16", "--dtype", "f32", "--quant", "none",
                "--repeat-penalty", "1.0", "--threads", self.args.threads, "--json",
                "--mode", "full-gpu"] + gpu_extra
        plain = self.json_of(base)
        moved = self.json_of(base + ["--replace-every", "4", "--replace-modes", modes])
        same = plain["generated_tokens"] == moved["generated_tokens"]
        ok &= same and len(moved["replacements"]) == 3
        figures["mistral_tiny"] = {"equal": same, "plain": plain["generated_tokens"],
                                   "replaced": moved["generated_tokens"],
                                   "moves": [(m["mode"], m["moved_layers"], round(m["seconds"], 3))
                                             for m in moved["replacements"]]}
        model = self.models["q4_k_m"]
        big = [self.bin, "generate", "--model", model, "--prompt", "Tell me about rivers.",
               "--greedy", "--ignore-eos", "--max-tokens", "16", "--repeat-penalty", "1.0",
               "--threads", self.args.threads, "--json", "--mode", "full-gpu"] + gpu_extra
        r = self.json_of(big + ["--replace-every", "4", "--replace-modes", modes])
        figures["mistral_7b_q4_k_m"] = {"moves": [(m["mode"], m["moved_layers"], round(m["seconds"], 2))
                                                  for m in r["replacements"]]}
        ok &= len(r["replacements"]) == 3
        self.record("replace", ok, **figures)


def speculative(c):
    """Speculative decoding on the GPU tier: greedy tokens with prompt lookup
    (every round drafting 8) against plain decoding — the fixture, and the
    synthetic 7B (random weights repeat, so lookup drafts are accepted) with
    its decode speed both ways."""
    figures, ok = {}, True
    d = FIXTURES / "mistral_tiny"
    base = [c.bin, "generate", "--model", d, "--chat", d / "messages.json", "--greedy",
            "--ignore-eos", "--max-tokens", "24", "--dtype", "f32", "--quant", "none",
            "--threads", c.args.threads, "--json"] + c.gpu_args()
    spec = ["--lookup-ngram", "2", "--draft-tokens", "8", "--draft-fixed"]
    plain = c.json_of(base)
    drafted = c.json_of(base + spec)
    same = plain["generated_tokens"] == drafted["generated_tokens"]
    ok &= same
    figures["mistral_tiny"] = {"equal": same, "drafted": drafted["draft_proposed"],
                               "accepted": drafted["draft_accepted"]}
    model = c.models["q4_k_m"]
    big = [c.bin, "generate", "--model", model, "--prompt", "Tell me about rivers.",
           "--greedy", "--ignore-eos", "--max-tokens", "64", "--threads", c.args.threads,
           "--json"] + c.gpu_args()
    plain = c.json_of(big)
    drafted = c.json_of(big + ["--lookup-ngram", "3"])
    same = plain["generated_tokens"] == drafted["generated_tokens"]
    ok &= same
    figures["mistral_7b_q4_k_m"] = {
        "equal": same,
        "plain_tokens_per_sec": plain["decode_tokens_per_sec"],
        "lookup_tokens_per_sec": drafted["decode_tokens_per_sec"],
        "drafted": drafted["draft_proposed"], "accepted": drafted["draft_accepted"],
        "passes": drafted["decode_passes"],
    }
    c.record("speculative", ok, **figures)


def kv_in_ram(c):
    """GPU layers keeping their KV caches in RAM: with VRAM short of half
    the caches at 32k tokens, full-gpu keeps the first layers' caches in
    RAM — the fixture's greedy tokens equal to every cache on the GPU, and
    the synthetic 7B's decode speed both ways."""
    figures, ok = {}, True
    sim = ["--simulate-with-candle"] if c.args.dry_run else []

    def split(plan_args, model):
        ample = json.loads(c.run([c.bin, "plan", "--model", model, "--vram", "100GiB",
                                  "--mode", "full-gpu", "--json"] + plan_args).stdout)
        gpu = ample["tiers"]["gpu"]
        return gpu["peak_bytes"] - gpu["kv_cache_bytes"] // 2

    d = FIXTURES / "qwen3_tiny_text"
    fixed = ["--quant", "none", "--ctx", "32768"]
    vram = split(fixed + ["--cache-type-k", "f32", "--cache-type-v", "f32"], d)
    gen = [c.bin, "generate", "--model", d, "--chat", d / "messages.json", "--greedy",
           "--ignore-eos", "--max-tokens", "16", "--dtype", "f32", "--threads", c.args.threads,
           "--json", "--mode", "full-gpu"] + fixed + sim
    on_gpu = c.json_of(gen + ["--vram", "100GiB"])
    in_ram = c.json_of(gen + ["--vram", str(vram)])
    same = on_gpu["generated_tokens"] == in_ram["generated_tokens"]
    ok &= same and "ram" in in_ram["kv_tiers"]
    figures["qwen3_tiny"] = {"equal": same, "kv_tiers": in_ram["kv_tiers"]}
    model = c.models["q4_k_m"]
    ctx = ["--ctx", "32768"]
    vram = split(ctx, model)
    big = [c.bin, "generate", "--model", model, "--prompt", "Tell me about rivers.",
           "--greedy", "--ignore-eos", "--max-tokens", "32", "--threads", c.args.threads,
           "--json", "--mode", "full-gpu"] + ctx + sim
    on_gpu = c.json_of(big + ["--vram", "100GiB"])
    in_ram = c.json_of(big + ["--vram", str(vram)])
    ok &= "ram" in in_ram["kv_tiers"]
    figures["mistral_7b_q4_k_m"] = {
        "vram_bytes": vram,
        "caches_in_ram": in_ram["kv_tiers"].count("ram"),
        "layers": len(in_ram["kv_tiers"]),
        "all_on_gpu_tokens_per_sec": on_gpu["decode_tokens_per_sec"],
        "caches_in_ram_tokens_per_sec": in_ram["decode_tokens_per_sec"],
        "equal": on_gpu["generated_tokens"] == in_ram["generated_tokens"],
    }
    c.record("kv_in_ram", ok, **figures)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--threads", default=str(os.cpu_count() or 2))
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    c = Check(args)
    c.step("device", c.device)
    c.step("fixtures", c.fixtures)
    c.step("synthesize", c.synthesize)
    if getattr(c, "models", None):
        c.step("full_gpu", c.full_gpu)
        c.step("caps", c.caps)
        c.step("oom", c.oom)
        c.step("replace", c.replace)
        c.step("speculative", lambda: speculative(c))
        c.step("kv_in_ram", lambda: kv_in_ram(c))
    checks = c.results["checks"]
    failed = [k for k, v in checks.items() if not v["ok"]]
    c.results["passed"] = not failed
    c.save()
    c.say(f"gpu-check: {len(checks) - len(failed)} passed, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
