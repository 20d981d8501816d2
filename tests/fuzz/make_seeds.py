#!/usr/bin/python3
"""Writes the seed corpora of vicreg's fuzz targets (tests/fuzz/): small valid files of every
format each target reads, one folder per target under OUT. The seeds of stored settings (config,
checkpoint) and exported backbones come from tiny runs of the vicreg CLI given as VICREG (train,
then export).

    make_seeds.py OUT VICREG
"""
import glob
import gzip
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image


def put(out, target, name, data):
    os.makedirs(os.path.join(out, target), exist_ok=True)
    with open(os.path.join(out, target, name), "wb") as f:
        f.write(data)


def torch_bytes(obj, zip_format=True):
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zip_format)
    return buf.getvalue()


def safetensors_bytes(tensors, metadata=None):
    header, offset, blobs = {}, 0, []
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.uint8: "U8", torch.float64: "F64"}
    for name, t in tensors.items():
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def idx_bytes(array):
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(">BBBB", 0, 0, 8, array.ndim) + \
        b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def npy_bytes(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def main(out, cli):
    g = torch.Generator().manual_seed(0)
    w = {"conv.weight": torch.randn(4, 1, 3, 3, generator=g), "bn.running_mean": torch.zeros(4),
         "bn.num_batches_tracked": torch.tensor(3), "fc.bias": torch.randn(2, generator=g).half()}
    # safetensors
    put(out, "safetensors", "plain", safetensors_bytes(w))
    put(out, "safetensors", "metadata", safetensors_bytes(
        {"a": torch.arange(6, dtype=torch.float64).view(2, 3), "e": torch.zeros(0, 3)},
        {"format": "pt", "note": "seed"}))
    # torch.save: zip and legacy pickle, shared storage and views, nested containers
    base = torch.arange(12, dtype=torch.float32)
    views = {"t": base.view(3, 4).t(), "s": base[2:7], "b": base.view(3, 4)[1:, ::2]}
    put(out, "torch_file", "zip", torch_bytes(w))
    put(out, "torch_file", "legacy", torch_bytes(w, zip_format=False))
    put(out, "torch_file", "views", torch_bytes(views))
    put(out, "torch_file", "nested", torch_bytes(
        {"state_dict": w, "epoch": 3, "args": {"arch": "resnet50", "lr": [0.1, 0.2]}}))
    put(out, "torch_file", "pickle_only", pickle.dumps({"a": [1, 2.5, "x", None, True]}, 2))
    # .npy
    put(out, "npy", "f32", npy_bytes(np.arange(12, dtype=np.float32).reshape(3, 4)))
    put(out, "npy", "f64_fortran", npy_bytes(np.asfortranarray(np.ones((2, 3)))))
    put(out, "npy", "u8", npy_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4)))
    put(out, "npy", "i64", npy_bytes(np.arange(5, dtype=np.int64)))
    # IDX, raw and gzip
    images = np.arange(3 * 4 * 4).reshape(3, 4, 4) % 256
    put(out, "idx", "images", idx_bytes(images))
    put(out, "idx", "labels", idx_bytes([1, 2, 3]))
    put(out, "idx", "images_gz", gzip.compress(idx_bytes(images)))
    # CIFAR: the first byte picks CIFAR-100 (odd)
    rng = np.random.default_rng(0)
    put(out, "cifar", "cifar10", b"\0" + bytes([3]) + rng.integers(0, 256, 3072, np.uint8).tobytes())
    put(out, "cifar", "cifar100", b"\1" + bytes([1, 42]) + rng.integers(0, 256, 3072, np.uint8).tobytes())
    # JPEGs (decode_jpeg, and OpenCV behind it): 4:2:0, 4:4:4 progressive, grayscale, CMYK, and
    # one with EXIF orientation 6
    def jpeg(img, **kw):
        buf = io.BytesIO()
        img.save(buf, "JPEG", **kw)
        return buf.getvalue()
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (13, 21, 3), np.uint8))
    put(out, "image", "yuv420", jpeg(rgb, quality=80))
    put(out, "image", "yuv444_progressive", jpeg(rgb, quality=90, subsampling=0, progressive=True))
    put(out, "image", "gray", jpeg(rgb.convert("L"), quality=75))
    put(out, "image", "cmyk", jpeg(rgb.convert("CMYK")))
    exif = Image.Exif()
    exif[0x0112] = 6
    put(out, "image", "exif_orientation", jpeg(rgb, exif=exif.tobytes()))
    # config files: flat, by sections
    put(out, "config", "flat", json.dumps(
        {"arch": "resnet18", "mlp": "512-512", "epochs": 2, "batch_size": 32, "base_lr": 0.3,
         "seed": 7, "dataset": "cifar10", "precision": "bf16"}).encode())
    # checkpoint and backbone: a tiny run of the CLI (images, then a matrix)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        os.makedirs(data)
        imgs = rng.integers(0, 256, (32, 8, 8), np.uint8)
        labels = rng.integers(0, 10, 32, np.uint8)
        for split, n in (("train", 32), ("t10k", 16)):
            with open(os.path.join(data, f"{split}-images-idx3-ubyte"), "wb") as f:
                f.write(idx_bytes(imgs[:n]))
            with open(os.path.join(data, f"{split}-labels-idx1-ubyte"), "wb") as f:
                f.write(idx_bytes(labels[:n]))
        table = os.path.join(tmp, "table")
        os.makedirs(table)
        np.save(os.path.join(table, "train.npy"), rng.standard_normal((32, 6)).astype(np.float32))
        np.save(os.path.join(table, "val.npy"), rng.standard_normal((8, 6)).astype(np.float32))
        runs = {
            "convnet": ["--dataset", "mnist", "--data-dir", data, "--image-size", "8",
                        "--width", "4", "--stages", "2", "--mlp", "8-8"],
            "mlp": ["--dataset", "npy", "--data-dir", table, "--arch", "mlp",
                    "--encoder-mlp", "8-8", "--mlp", "8-8"],
        }
        for name, flags in runs.items():
            exp = os.path.join(tmp, name)
            subprocess.run([cli, "train", *flags, "--batch-size", "8", "--epochs", "1",
                            "--max-steps", "2", "--threads", "1", "--workers", "1",
                            "--progress", "none", "--exp-dir", exp], check=True,
                           stderr=subprocess.DEVNULL)
            subprocess.run([cli, "export", "--checkpoint", os.path.join(exp, "checkpoint.pt"),
                            "--out", os.path.join(exp, "backbone.safetensors")],
                           check=True, stdout=subprocess.DEVNULL)
            for target, file in (("backbone", "backbone.safetensors"),
                                 ("config", "config.json")):
                with open(os.path.join(exp, file), "rb") as f:
                    put(out, target, f"{name}_{file}", f.read())
            for k, events in enumerate(sorted(glob.glob(os.path.join(exp, "events.out.*")))):
                with open(events, "rb") as f:
                    put(out, "event_file", f"{name}_{k}", f.read())
            # fuzz_checkpoint is structure-aware: [kind][3 x int32 shape][config JSON]
            with open(os.path.join(exp, "config.json"), "rb") as f:
                config = f.read()
            shape = (1, 8, 64) if name == "convnet" else (1, 0, 6)
            for kind, what in ((0, "checkpoint"), (1, "backbone")):
                put(out, "checkpoint", f"{name}_{what}",
                    bytes([kind]) + struct.pack("<3i", *shape) + config)
    put(out, "backbone", "state_dict_pth", torch_bytes(w))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
