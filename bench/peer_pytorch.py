#!/usr/bin/python3
"""The PyTorch peers of bench/train_bench.cpp, run by scripts/bench-train.sh on the same machine.

  train:    the default vicreg configuration as a plain PyTorch loop (ConvNet 4x2 convs width 32
            and a 1x1 conv to 1024 channels, expander 1024-1024-1024, batch 128, the
            facebookresearch/vicreg loss, AdamW with 1-D parameters out of weight decay,
            torchvision augmentations of the fashion-mnist recipe, DataLoader with 2 workers);
            --precision bf16 --channels-last: as the PyTorch references train (autocast around the
            forward passes and the loss, as facebookresearch/vicreg's main_vicreg.py);
            --reuse-batch: the step alone, on one batch; --loss-fp32: the loss outside autocast
            in fp32 (the strongest plain loop); --arch vit_tiny (torchvision's VisionTransformer,
            patch 4, 1 channel) or convnext_tiny (torchvision's, a 3x3 stride-1 stem, 1 channel):
            train_bench's BM_TrainStepFamily. Reports the process's peak resident memory.
  device-step: one training step of torchvision's resnet50, vit_b_16 or convnext_tiny (3 channels,
            --image-size 224, heads removed) with the expander --mlp (8192-8192-8192), batch
            --batch, on a batch of random views resident on --device (cuda: cudnn.benchmark,
            fused AdamW, channels_last for the convolutional ones), in fp32 or under autocast
            bf16 / fp16 (with GradScaler), the loss outside autocast in fp32 (the strongest plain
            loop; --loss-in-autocast: as main_vicreg.py): train_bench's BM_TrainStepDevice, run by
            scripts/gpu-check.sh. Reports images/s and the peak tensor memory (CUDA's allocator).
  augment:  facebookresearch/vicreg's per-image ImageNet pipeline (PIL decode + two 224-px views,
            torchvision transforms) on one core, over the JPEGs train_bench writes.
Both start OpenBLAS on the kernels vicreg's programs use (openblas_kernels). Prints one JSON object.
"""
import argparse, ctypes, glob, gzip, json, os, random, resource, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps
import torchvision
import torchvision.transforms as T


PRE_AVX2_CORES = {"unknown", "katmai", "coppermine", "northwood", "prescott", "banias", "atom", "core2",
                  "penryn", "dunnington", "nehalem", "athlon", "opteron", "opteron(sse3)", "barcelona",
                  "nano", "sandybridge", "bobcat", "bulldozer", "piledriver", "steamroller", "excavator"}


def openblas_kernels():
    """vicreg::select_blas_kernels() (src/runtime.cpp) for this process, so that the peer multiplies
    with the kernels we do: OpenBLAS 0.3.21 falls back to its Prescott (SSE3) kernels on CPUs it does
    not know (the Emerald Rapids Xeon), and is switched to SkylakeX (AVX-512) or Haswell (AVX2) ones,
    as OPENBLAS_CORETYPE would (a value set by the user is kept). Returns the core in use, or None
    without OpenBLAS. Call before the first matrix product."""
    try:
        lib = ctypes.CDLL("libopenblas.so.0")  # the copy torch loaded, found by its soname
    except OSError:
        return None
    lib.openblas_get_corename.restype = ctypes.c_char_p
    core = lib.openblas_get_corename().decode()
    if "OPENBLAS_CORETYPE" in os.environ or core.lower() not in PRE_AVX2_CORES:
        return core
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    elif {"avx2", "fma"} <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"
    else:
        return core
    lib.gotoblas_dynamic_quit()
    lib.gotoblas_dynamic_init()
    return lib.openblas_get_corename().decode()


def fashion_mnist(path="/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"):
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)


class ConvNet(nn.Module):
    def __init__(self, width=32, stages=4, final_conv=1024):
        super().__init__()
        layers, cin = [], 1
        for s in range(stages):
            cout = width << s
            for c in range(2):
                layers += [nn.Conv2d(cin if c == 0 else cout, cout, 3, 2 if (c == 0 and s > 0) else 1, 1, bias=False),
                           nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        if final_conv:
            layers += [nn.Conv2d(cin, final_conv, 1, bias=False), nn.BatchNorm2d(final_conv), nn.ReLU(inplace=True)]
            cin = final_conv
        self.out_dim = cin
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).mean((2, 3))


def projector(d_in, spec="1024-1024-1024"):
    sizes = [d_in] + [int(s) for s in spec.split("-")]
    layers = []
    for i in range(len(sizes) - 2):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.BatchNorm1d(sizes[i + 1]), nn.ReLU(True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


def off_diagonal(x):
    n, m = x.shape
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg_loss(x, y, sim=25.0, std=25.0, cov=1.0):  # facebookresearch/vicreg main_vicreg.py
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    n, d = x.shape
    cov_x = (x.T @ x) / (n - 1)
    cov_y = (y.T @ y) / (n - 1)
    cov_loss = off_diagonal(cov_x).pow_(2).sum().div(d) + off_diagonal(cov_y).pow_(2).sum().div(d)
    return sim * repr_loss + std * std_loss + cov * cov_loss


class FashionPairs(torch.utils.data.Dataset):
    def __init__(self):
        self.images = fashion_mnist()
        norm = [T.ToTensor(), T.Normalize((0.2860,), (0.3530,))]
        base = [T.RandomResizedCrop(28, scale=(0.25, 1.0)), T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.4, 0.4)], p=0.8)]
        self.a = T.Compose(base + norm)
        self.b = T.Compose(base + [T.RandomSolarize(128, p=0.2)] + norm)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L")
        return self.a(img), self.b(img)


def layer_norm_in_fp32(model):
    """PyTorch 1.13's CPU autocast leaves LayerNorm alone and its kernel takes no bf16 input with
    fp32 weights ("expected scalar type BFloat16 but found Float"): the fp32 island later releases
    keep, as vicreg does."""
    for mod in model.modules():
        if isinstance(mod, nn.LayerNorm):
            mod.register_forward_pre_hook(lambda _, inputs: (inputs[0].float(),))


class Representation(nn.Module):
    """A torchvision classifier without its head: the representation vicreg's encoder returns."""

    def __init__(self, arch):
        super().__init__()
        if arch == "vit_tiny":
            m = torchvision.models.VisionTransformer(image_size=28, patch_size=4, num_layers=12,
                                                     num_heads=3, hidden_dim=192, mlp_dim=768)
            m.conv_proj = nn.Conv2d(1, 192, 4, 4)
            m.heads = nn.Identity()
            self.out_dim = 192
        else:
            m = torchvision.models.convnext_tiny()
            m.features[0][0] = nn.Conv2d(1, 96, 3, 1, 1)
            m.classifier[2] = nn.Identity()
            self.out_dim = 768
            layer_norm_in_fp32(m)
        self.m = m

    def forward(self, x):
        return self.m(x)


def torchvision_backbone(arch, image_size):
    """torchvision's model without its classifier, and its representation's width."""
    if arch == "vit_b_16":
        m = torchvision.models.vit_b_16(image_size=image_size)
        m.heads = nn.Identity()
        return m, 768
    if arch == "convnext_tiny":
        m = torchvision.models.convnext_tiny()
        m.classifier[2] = nn.Identity()
        return m, 768
    m = torchvision.models.resnet50()
    m.fc = nn.Identity()
    return m, 2048


def bench_device_step(args):
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    backbone, width = torchvision_backbone(args.arch, args.image_size)
    if not cuda and args.arch == "convnext_tiny":
        layer_norm_in_fp32(backbone)
    proj = projector(width, args.mlp)
    fmt = torch.channels_last if cuda and args.arch != "vit_b_16" else torch.contiguous_format
    backbone = backbone.to(device, memory_format=fmt)
    proj = proj.to(device)
    params = list(backbone.parameters()) + list(proj.parameters())
    groups = [{"params": [p for p in params if p.ndim > 1]},
              {"params": [p for p in params if p.ndim == 1], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-4, weight_decay=0.05, **({"fused": True} if cuda else {}))
    dtype = torch.float16 if args.precision == "fp16" else torch.bfloat16  # unused in fp32
    autocast = torch.autocast(device.type, dtype=dtype, enabled=args.precision != "fp32")
    fp16 = args.precision == "fp16"
    scaler = (torch.amp.GradScaler(device.type, enabled=fp16) if hasattr(torch.amp, "GradScaler")
              else torch.cuda.amp.GradScaler(enabled=fp16))  # PyTorch 1.x
    shape = (args.batch, 3, args.image_size, args.image_size)
    x = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    y = torch.randn(shape, device=device).contiguous(memory_format=fmt)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            zx, zy = proj(backbone(x)), proj(backbone(y))
            if args.loss_in_autocast:
                loss = vicreg_loss(zx, zy)
        if not args.loss_in_autocast:
            loss = vicreg_loss(zx.float(), zy.float())
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return {"peer": "pytorch-device-step", "arch": args.arch, "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if cuda else None,
            "precision": args.precision, "batch": args.batch, "image_size": args.image_size,
            "mlp": args.mlp, "steps": args.steps, "images_per_s": 2 * args.batch * args.steps / dt,
            "peak_MiB": peak, "loss_in_autocast": args.loss_in_autocast, "torch": torch.__version__}


def bench_train(args):
    torch.set_num_threads(args.threads)
    backbone = ConvNet(final_conv=args.final_conv) if args.arch == "convnet" else Representation(args.arch)
    proj = projector(backbone.out_dim)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    backbone = backbone.to(memory_format=fmt)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    params = list(backbone.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1]},
                             {"params": [p for p in params if p.ndim == 1], "weight_decay": 0.0}],
                            lr=1e-3, weight_decay=1e-6)
    loader = torch.utils.data.DataLoader(FashionPairs(), batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=True)
    it = iter(loader)
    first = next(it)
    def step():
        x, y = first if args.reuse_batch else next(it)
        x, y = x.to(memory_format=fmt), y.to(memory_format=fmt)
        opt.zero_grad()
        if args.loss_fp32:
            with autocast:
                zx, zy = proj(backbone(x)), proj(backbone(y))
            loss = vicreg_loss(zx.float(), zy.float())
        else:
            with autocast:  # as facebookresearch/vicreg's main_vicreg.py: the loss under autocast too
                loss = vicreg_loss(proj(backbone(x)), proj(backbone(y)))
        loss.backward()
        opt.step()
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    dt = time.perf_counter() - t0
    return {"peer": "pytorch-train", "threads": args.threads, "workers": args.workers,
            "steps": args.steps, "batch": args.batch, "images_per_s": 2 * args.batch * args.steps / dt,
            "precision": args.precision, "channels_last": args.channels_last,
            "reuse_batch": args.reuse_batch, "arch": args.arch, "loss_fp32": args.loss_fp32,
            "maxrss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "torch": torch.__version__, "blas_core": args.blas_core}


class GaussianBlur:
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        if random.random() < self.p:
            return img.filter(ImageFilter.GaussianBlur(radius=random.random() * 1.9 + 0.1))
        return img


class Solarization:
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img) if random.random() < self.p else img


def bench_augment(args):
    torch.set_num_threads(1)
    files = sorted(glob.glob(os.path.join(args.jpeg_dir, "*.jpg")))
    if not files:
        raise SystemExit("no JPEGs in %s: run build/bench/train_bench first" % args.jpeg_dir)
    norm = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    def view(blur, sol):
        return T.Compose([T.RandomResizedCrop(224, interpolation=T.InterpolationMode.BICUBIC),
                          T.RandomHorizontalFlip(p=0.5),
                          T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                          T.RandomGrayscale(p=0.2), GaussianBlur(blur), Solarization(sol),
                          T.ToTensor(), norm])
    a, b = view(1.0, 0.0), view(0.1, 0.2)
    def one(i):
        img = Image.open(files[i % len(files)]).convert("RGB")
        a(img), b(img)
    for i in range(5):
        one(i)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        one(n)
        n += 1
    return {"peer": "torchvision-imagenet-augment", "images_per_s": n / (time.perf_counter() - t0)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["train", "device-step", "augment"])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                    help="bf16: torch.autocast('cpu', bfloat16) around the forward passes and the loss; "
                         "device-step: bf16 or fp16 autocast on --device (fp16 with GradScaler)")
    ap.add_argument("--channels-last", action="store_true",
                    help="the backbone's weights and the batches in channels_last memory format")
    ap.add_argument("--reuse-batch", action="store_true",
                    help="train on one batch over and over: the step alone, without the loader "
                         "(train_bench's BM_TrainStep)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--arch", choices=["convnet", "vit_tiny", "convnext_tiny", "resnet50", "vit_b_16"],
                    default="convnet", help="train: convnet, vit_tiny, convnext_tiny; "
                                            "device-step: resnet50, vit_b_16, convnext_tiny")
    ap.add_argument("--device", default="cuda", help="device-step: where the step runs")
    ap.add_argument("--image-size", type=int, default=224, help="device-step: the views' side")
    ap.add_argument("--mlp", default="8192-8192-8192", help="device-step: the expander")
    ap.add_argument("--warmup", type=int, default=5, help="device-step: untimed steps first")
    ap.add_argument("--loss-in-autocast", action="store_true",
                    help="device-step: the loss under autocast too, as main_vicreg.py")
    ap.add_argument("--loss-fp32", action="store_true",
                    help="the loss outside autocast, on fp32 embeddings (the strongest plain loop)")
    ap.add_argument("--final-conv", type=int, default=1024,
                    help="channels of the ConvNet's last 1x1 conv, as vicreg's --final-conv (0: none)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--jpeg-dir", default="/tmp/vicreg_bench_jpeg")
    a = ap.parse_args()
    a.blas_core = openblas_kernels()
    if a.what == "device-step" and a.arch not in ("resnet50", "vit_b_16", "convnext_tiny"):
        ap.error("device-step: --arch must be resnet50, vit_b_16 or convnext_tiny")
    if a.what == "train" and a.arch not in ("convnet", "vit_tiny", "convnext_tiny"):
        ap.error("train: --arch must be convnet, vit_tiny or convnext_tiny")
    run = {"train": bench_train, "device-step": bench_device_step, "augment": bench_augment}[a.what]
    print(json.dumps(run(a)))
