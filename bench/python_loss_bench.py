#!/usr/bin/python3
"""The vicreg extension's loss against plain PyTorch, forward + backward, in the same process.

The baseline is the loss as facebookresearch/vicreg's main_vicreg.py writes it (F.mse_loss,
d x d covariance matrices, off-diagonal through a flattened view), differentiated by autograd.
Shapes are those of bench/loss_bench.cpp. Each (shape, implementation) is timed for at least
--min-time seconds and 3 repetitions after one warm-up; the median is reported, with the ratio
baseline / vicreg from the same run (these machines are shared and noisy: compare ratios).

    PYTHONPATH=build/python /usr/bin/python3 bench/python_loss_bench.py [--shapes 512x8192,...]
        [--threads N] [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--json FILE]

--blas openmp (default) runs under the OpenMP build of OpenBLAS when it is installed (as the C++
programs do, README "BLAS"); --blas system keeps the system's selection (on Debian the pthread
build, whose threads fight LibTorch's OpenMP threads; both implementations pay for it).
"""
import argparse
import json
import os
import statistics
import sys
import time

OPENMP_BLAS = "/usr/lib/x86_64-linux-gnu/openblas-openmp"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="256x2048,512x8192,2048x8192,2048x512,4096x256")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--blas", default="openmp", choices=["openmp", "system"])
    p.add_argument("--json", default="")
    return p.parse_args()


def main():
    args = parse_args()
    if (args.blas == "openmp" and os.path.exists(OPENMP_BLAS + "/libblas.so.3")
            and OPENMP_BLAS not in os.environ.get("LD_LIBRARY_PATH", "")):
        # The dynamic loader reads LD_LIBRARY_PATH at start-up only: start again with it.
        env = dict(os.environ, LD_LIBRARY_PATH=OPENMP_BLAS + ":" + os.environ.get("LD_LIBRARY_PATH", ""))
        os.execve(sys.executable, [sys.executable] + sys.argv, env)

    import torch
    import vicreg

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from peer_pytorch import vicreg_loss as plain  # main_vicreg.py's loss, as in bench-train

    def fused(x, y):
        return vicreg.vicreg_loss(x, y, check_finite=False).total

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def time_one(fn, n, d):
        g = torch.Generator().manual_seed(0)
        za = torch.randn(n, d, generator=g).to(device, dtype).requires_grad_()
        zb = torch.randn(n, d, generator=g).to(device, dtype).requires_grad_()

        def step():
            za.grad = zb.grad = None
            fn(za, zb).backward()
            sync()
        step()  # warm-up
        times, start = [], time.perf_counter()
        while len(times) < 3 or time.perf_counter() - start < args.min_time:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), len(times)

    rows = []
    print(f"torch {torch.__version__}, {args.threads} threads, {args.device}, {args.dtype}, "
          f"BLAS: {'OpenMP OpenBLAS' if OPENMP_BLAS in os.environ.get('LD_LIBRARY_PATH', '') else 'system'}")
    print(f"{'shape':>10} {'plain PyTorch ms':>17} {'vicreg ms':>10} {'speed-up':>9}")
    for shape in args.shapes.split(","):
        n, d = (int(v) for v in shape.lower().split("x"))
        base, base_reps = time_one(plain, n, d)
        ours, our_reps = time_one(fused, n, d)
        rows.append({"n": n, "d": d, "plain_ms": 1e3 * base, "vicreg_ms": 1e3 * ours,
                     "speedup": base / ours, "reps": [base_reps, our_reps]})
        print(f"{shape:>10} {1e3 * base:17.1f} {1e3 * ours:10.1f} {base / ours:8.1f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "device": args.device,
                       "dtype": args.dtype, "blas": args.blas, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
