"""A safetensors checkpoint for the seed table: written once, loaded by the real `safetensors` library.

    python3 -m benchmarks.checkpoint load PATH [START]   # prints {"seconds", "bytes", "tensors"} as JSON

START, a time.monotonic() value (one clock for every process here), makes several loaders begin together: each
waits for it after its imports, and its seconds count from it.
"""

import json
import os
import random
import struct
import sys
import time

MiB = 1 << 20
# Weight matrices and bias vectors of the widths a diffusion model's layers have: about 500 tensors a GiB.
WIDTHS = (320, 640, 1280, 2560)


def write(path, mib):
    """Writes a valid safetensors file of about MIB MiB of float16 tensors (random values) to PATH."""
    rng = random.Random(mib)
    target = mib * MiB - MiB   # leaves room for the header
    tensors, offset = {}, 0
    while offset < target:
        shape = [rng.choice(WIDTHS), rng.choice(WIDTHS)] if rng.random() < 0.8 else [rng.choice(WIDTHS)]
        size = 2 * shape[0] * (shape[1] if len(shape) == 2 else 1)
        if offset + size > target:
            shape, size = [(target - offset) // 2], (target - offset) // 2 * 2
        name = f"model.diffusion_model.blocks.{len(tensors)}.{'weight' if len(shape) == 2 else 'bias'}"
        tensors[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps({"__metadata__": {"format": "pt"}, **tensors}).encode()
    header += b" " * (-len(header) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for _ in range(offset // MiB):
            f.write(os.urandom(MiB))
        f.write(os.urandom(offset % MiB))
    os.replace(path + ".tmp", path)


def is_valid(path):
    """True when PATH opens with safetensors (its offsets must cover the data exactly) and has tensors."""
    from safetensors import safe_open
    try:
        with safe_open(path, framework="numpy") as f:
            return len(list(f.keys())) > 0
    except Exception:
        return False


def load(path, start=None):
    """Loads every tensor of PATH the way a model server does (safe_open maps the file; get_tensor copies each
    tensor out of the mapping into a numpy array, so every byte is read); tensors are dropped once loaded, so the
    process holds one at a time. Timed from START if given (waiting for it first), else from now."""
    from safetensors import safe_open
    if start is None:
        start = time.monotonic()
    time.sleep(max(0.0, start - time.monotonic()))
    count = total = 0
    with safe_open(path, framework="numpy") as f:
        for name in f.keys():
            total += f.get_tensor(name).nbytes
            count += 1
    return {"seconds": time.monotonic() - start, "bytes": total, "tensors": count}


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[1] != "load":
        sys.exit(__doc__)
    print(json.dumps(load(sys.argv[2], float(sys.argv[3]) if len(sys.argv) == 4 else None)))
