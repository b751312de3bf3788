#!/usr/bin/env python3
"""Regenerates tests/fixtures/llama_cpp_tokens.json: token ids that llama.cpp's
`llama-tokenize` gives for hard texts on the test models, the reference for
tests/integration/tokenizer.rs.

Usage: llama_cpp_tokens.py PATH/TO/llama-tokenize [MODELS_DIR]
"""
import json, os, subprocess, sys, tempfile

TEXTS = [
    "Héllo wörld, ça va? Ångström naïve façade",
    "日本語のテキストと中文混合，还有한국어",
    "emoji: 🦀🚀 👩‍👩‍👧 flags 🇫🇷 and ✨",
    "tabs\tand\t\tmore tabs\n\nnew\r\nlines\n",
    "   leading and trailing spaces   ",
    "numbers 1234567890 3.14159 -42 1e-9",
    "code: fn main() { println!(\"{}\", x[0] >> 2); } // ok",
    "<|im_start|>user\nspecial tokens inline<|im_end|>",
    "What is the capital of France?",
]
MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen05": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}
# Gemma 3 (SentencePiece without a dummy prefix) is also checked on the
# perplexity text, whose token ids decide its perplexity.
PPL_TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "ppl.txt")

def main():
    tool = sys.argv[1]
    models = sys.argv[2] if len(sys.argv) > 2 else os.path.expanduser("~/.cache/spillway/test-models")
    out = {}
    for key, name in MODELS.items():
        cases = []
        texts = list(TEXTS)
        if key == "gemma3":
            with open(PPL_TEXT, encoding="utf-8", newline="") as f:
                texts.append(f.read())
        for text in texts:
            with tempfile.NamedTemporaryFile("w", delete=False, encoding="utf-8", newline="") as f:
                f.write(text)
            res = subprocess.run([tool, "-m", os.path.join(models, name), "-f", f.name,
                                  "--ids", "--no-bos", "--log-disable"],
                                 capture_output=True, text=True, check=True)
            os.unlink(f.name)
            ids = json.loads(res.stdout.strip().splitlines()[-1])
            cases.append({"text": text, "ids": ids})
        out[key] = cases
    print(json.dumps(out, ensure_ascii=False, indent=1))

if __name__ == "__main__":
    main()
