#!/usr/bin/env python3
"""Writes a GGUF holding only the `tokenizer.*` metadata of another GGUF.

Spillway's `synthesize` embeds one such file (assets/smollm2-tokenizer.gguf,
made from SmolLM2-135M-Instruct, Apache-2.0) as the tokenizer of synthetic
models; any model's can be made the same way and passed as --tokenizer.

usage: scripts/extract-tokenizer.py MODEL.gguf OUT.gguf   (needs `pip install gguf`)
"""
import sys

import gguf


def main(src: str, out: str) -> None:
    reader = gguf.GGUFReader(src)
    # GGUFWriter always writes general.architecture; keep the source's.
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(out, arch)
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        value = field.contents()
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_array(name, value)
        else:
            writer.add_key_value(name, value, vtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
