"""Weights between vicreg (C++) and torchvision (Python), both ways, through the CLI and the
extension. Run by CTest (label integration) with PYTHONPATH=build/python and VICREG_CLI set.

The safetensors files are read and written here with this file's own few lines (not vicreg's
code), so that the two implementations check each other.
"""
import json
import os
import struct
import subprocess
import tempfile
import unittest
from collections import OrderedDict

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn

import vicreg

CLI = os.environ.get("VICREG_CLI", "build/vicreg")
DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "F16": torch.float16}
NAMES = {v: k for k, v in DTYPES.items()}


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read_safetensors(path):
    data = read_bytes(path)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = OrderedDict()
    for name, e in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                          key=lambda kv: kv[1]["data_offsets"][0]):
        b, end = e["data_offsets"]
        out[name] = torch.frombuffer(bytearray(body[b:end]), dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
    return out, header.get("__metadata__", {})


def write_safetensors(path, tensors, header_patch=None):
    header, chunks, offset = {}, [], 0
    for name, t in tensors.items():
        raw = t.detach().contiguous().cpu().numpy().tobytes()
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header.update(header_patch or {})
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def write_idx(folder, prefix, n, side, seed):
    """MNIST-style raw IDX files: class k has a bright square at a place of its own."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(n, side, side), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    for i, k in enumerate(labels):
        y, x = (k // 4) * side // 3, (k % 4) * side // 4
        images[i, y:y + side // 3, x:x + side // 4] = 220
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, side, side) + images.tobytes())
    with open(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + labels.tobytes())


def torchvision_resnet18(in_channels=3, small_stem=False):
    m = torchvision.models.resnet18()
    if small_stem:
        m.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    elif in_channels != 3:
        m.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return m


def randomize(m, seed):
    """Weights and BatchNorm statistics that are far from their initial values."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif name.endswith("num_batches_tracked"):
                t.fill_(17)
            elif t.is_floating_point():
                t.normal_(0, 0.05)
    return m.eval()


# The official VICReg model zoo, written here from its definition (not from vicreg's code): a
# torchvision-named ResNet whose every width, the stem's and each block's output included, is
# multiplied by `widen`, with a zero padding of 1 before a stem convolution padded by 2.
ZOO = {"resnet50": ([3, 4, 6, 3], 1), "resnet101": ([3, 4, 23, 3], 1),
       "resnet50x2": ([3, 4, 6, 3], 2), "resnet50x4": ([3, 4, 6, 3], 4),
       "resnet50x5": ([3, 4, 6, 3], 5), "resnet200x2": ([3, 24, 36, 3], 2)}


class ZooBottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride, downsample, device):
        super().__init__()
        kw = dict(bias=False, device=device)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, **kw)
        self.bn1 = nn.BatchNorm2d(planes, device=device)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, **kw)
        self.bn2 = nn.BatchNorm2d(planes, device=device)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, **kw)
        self.bn3 = nn.BatchNorm2d(planes * 4, device=device)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ZooResNet(nn.Module):
    def __init__(self, layers, widen, device=None):
        super().__init__()
        self.padding = nn.ConstantPad2d(1, 0.0)
        self.inplanes = 64 * widen
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 2, bias=False, device=device)
        self.bn1 = nn.BatchNorm2d(self.inplanes, device=device)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        planes = 64 * widen
        for i, n in enumerate(layers):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or self.inplanes != planes * 4:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False, device=device),
                    nn.BatchNorm2d(planes * 4, device=device))
            blocks = [ZooBottleneck(self.inplanes, planes, stride, downsample, device)]
            self.inplanes = planes * 4
            blocks += [ZooBottleneck(self.inplanes, planes, 1, None, device) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            planes *= 2
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.padding(x)))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return torch.flatten(self.avgpool(x), 1)


class WeightsTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="vicreg_py_")
        self.dir = self.tmp.name
        torch.set_num_threads(1)

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def cli(self, *args, ok=True):
        r = subprocess.run([CLI, *args], capture_output=True, text=True)
        if ok:
            self.assertEqual(r.returncode, 0, f"vicreg {' '.join(args)}\n{r.stdout}\n{r.stderr}")
        return r

    def train(self, exp, *extra, ok=True):
        return self.cli("train", "--arch", "resnet18", "--mlp", "32-32", "--batch-size", "8",
                        "--max-steps", "2", "--threads", "1", "--workers", "1", "--progress",
                        "none", "--exp-dir", self.path(exp), *extra, ok=ok)

    def assert_same_outputs(self, a, b, x):
        with torch.no_grad():
            ya, yb = a(x), b(x)
        self.assertEqual(ya.shape, yb.shape)
        torch.testing.assert_close(ya, yb, rtol=0, atol=1e-5)

    # C++ -> torchvision

    def test_small_image_resnet18_from_cpp_loads_into_torchvision(self):
        write_idx(self.path("data"), "train", 40, 16, 1)
        self.train("run", "--dataset", "mnist", "--data-dir", self.path("data"), "--image-size", "16")
        out = self.path("small.safetensors")
        r = self.cli("export", "--checkpoint", self.path("run/checkpoint.pt"), "--out", out)
        self.assertIn("m.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)", r.stdout)
        tensors, meta = read_safetensors(out)
        self.assertEqual(meta["vicreg.arch"], "resnet18")
        self.assertEqual(meta["vicreg.in_channels"], "1")

        m = torchvision_resnet18(1, small_stem=True)
        result = m.load_state_dict(tensors, strict=False)
        self.assertEqual(sorted(result.missing_keys), ["fc.bias", "fc.weight"])
        self.assertEqual(result.unexpected_keys, [])
        m.fc = nn.Identity()
        m.eval()
        x = torch.randn(4, 1, 16, 16)
        self.assert_same_outputs(m, vicreg.load_backbone(self.path("run/backbone.pt")), x)
        self.assert_same_outputs(m, vicreg.load_backbone(out), x)
        # The BatchNorm statistics came along (2 steps, each a forward pass of both views).
        self.assertEqual(int(m.bn1.num_batches_tracked), 4)
        self.assertFalse(torch.equal(m.bn1.running_var, torch.ones(64)))

    def test_torchvision_layout_resnet18_from_cpp_loads_into_torchvision(self):
        for k in range(2):
            os.makedirs(self.path(f"img/class{k}"))
            for i in range(8):
                rgb = np.random.default_rng(10 * k + i).integers(0, 256, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(rgb).save(self.path(f"img/class{k}/{i}.png"))
        # Crops above 64 px give torchvision's stem (7x7 conv, max-pool).
        self.train("run", "--dataset", "image-folder", "--data-dir", self.path("img"),
                   "--channels", "3", "--image-size", "72")
        out = self.path("tv.safetensors")
        self.cli("export", "--backbone", self.path("run/backbone.pt"), "--out", out)
        tensors, _ = read_safetensors(out)
        m = torchvision.models.resnet18()  # unmodified
        result = m.load_state_dict(tensors, strict=False)
        self.assertEqual(sorted(result.missing_keys), ["fc.bias", "fc.weight"])
        self.assertEqual(result.unexpected_keys, [])
        m.fc = nn.Identity()
        m.eval()
        self.assert_same_outputs(m, vicreg.load_backbone(out), torch.randn(2, 3, 72, 72))

    # torchvision -> C++

    def test_torchvision_state_dicts_load_in_cpp(self):
        cases = {"resnet18": (torchvision_resnet18(), (2, 3, 64, 64)),
                 "resnet18 small 1-channel": (torchvision_resnet18(1, True), (2, 1, 16, 16)),
                 "resnet50": (torchvision.models.resnet50(), (1, 3, 64, 64))}
        for i, (name, (m, shape)) in enumerate(cases.items()):
            with self.subTest(name=name):
                randomize(m, i)
                sd = m.state_dict()
                files = {"pth": self.path(f"{i}.pth"), "safetensors": self.path(f"{i}.safetensors"),
                         "nested pth": self.path(f"{i}.nested.pth")}
                torch.save(sd, files["pth"])  # an OrderedDict with _metadata
                write_safetensors(files["safetensors"], sd)
                # The official VICReg full checkpoint's layout.
                torch.save({"epoch": 3, "model": OrderedDict(("module.backbone." + k, v)
                                                             for k, v in sd.items())},
                           files["nested pth"])
                m.fc = nn.Identity()
                x = torch.randn(*shape)
                for kind, f in files.items():
                    b = vicreg.load_backbone(f)
                    self.assertEqual(b.arch, name.split()[0], kind)
                    self.assert_same_outputs(m, b, x)
                    # What C++ holds is what Python saved, name for name.
                    for k, v in b.state_dict().items():
                        self.assertTrue(torch.equal(v, sd[k]), (kind, k))

    # The official model zoo's wide ResNets

    def test_zoo_architectures_have_the_reference_shapes(self):
        for arch, (layers, widen) in ZOO.items():
            with self.subTest(arch=arch):
                ref = ZooResNet(layers, widen, device="meta").state_dict()
                ours = vicreg.build_backbone(arch)
                self.assertEqual(ours.arch, arch)
                self.assertEqual(ours.output_dim, 2048 * widen)
                shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
                self.assertEqual(shapes, {k: tuple(v.shape) for k, v in ref.items()})
                self.assertEqual(sum(v.numel() for k, v in ref.items()
                                     if not k.endswith(("running_mean", "running_var",
                                                        "num_batches_tracked"))),
                                 sum(v.numel() for k, v in ours.state_dict().items()
                                     if not k.endswith(("running_mean", "running_var",
                                                        "num_batches_tracked"))))
                del ours

    def test_official_resnet50x2_state_dict_is_read_as_resnet50x2(self):
        m = randomize(ZooResNet(*ZOO["resnet50x2"]), 3)
        path = self.path("resnet50x2.pth")
        torch.save(m.state_dict(), path)  # as the released resnet50x2.pth: the backbone alone
        b = vicreg.load_backbone(path)
        self.assertEqual(b.arch, "resnet50x2")
        self.assertEqual(b.output_dim, 4096)
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            ya, yb = m(x), b(x)
        torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-4 * float(ya.abs().max()))
        # The CLI embeds with it as the reference evaluates it (224 crops of an image folder).
        for k in range(2):
            for split in ("train", "val"):
                os.makedirs(self.path(f"img/{split}/n0{k}"), exist_ok=True)
                for i in range(2):
                    rgb = np.random.default_rng(10 * k + i).integers(0, 256, (40, 40, 3),
                                                                     dtype=np.uint8)
                    Image.fromarray(rgb).save(self.path(f"img/{split}/n0{k}/{i}.png"))
        out = self.path("emb.npy")
        self.cli("embed", "--backbone", path, "--dataset", "image-folder", "--data-dir",
                 self.path("img"), "--image-size", "64", "--threads", "1", "--out", out)
        self.assertEqual(np.load(out).shape, (4, 4096))
        # torchvision's wide_resnet50_2 is another model: named, not misread.
        torch.save(torchvision.models.wide_resnet50_2().state_dict(), self.path("tvwide.pth"))
        r = self.cli("eval", "--backbone", self.path("tvwide.pth"), ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("wide_resnet50_2", r.stderr)

    def test_cli_trains_and_evaluates_from_a_pytorch_state_dict(self):
        write_idx(self.path("data"), "train", 40, 16, 1)
        write_idx(self.path("data"), "t10k", 20, 16, 2)
        m = randomize(torchvision_resnet18(1, small_stem=True), 5)
        torch.save(m.state_dict(), self.path("init.pth"))
        r = self.train("run", "--dataset", "mnist", "--data-dir", self.path("data"),
                       "--image-size", "16", "--init-backbone", self.path("init.pth"),
                       "--max-steps", "1", "--base-lr", "1e-5")
        self.assertIn("backbone initialised from", r.stderr)
        self.assertIn("skipped the classifier fc.weight fc.bias", r.stderr)
        # One tiny step later the weights are still those of the file.
        trained = vicreg.load_backbone(self.path("run/backbone.pt")).state_dict()
        w0 = m.state_dict()["layer2.0.conv1.weight"]
        self.assertLess((trained["layer2.0.conv1.weight"] - w0).abs().max().item(), 1e-3)
        config = json.loads(read_bytes(self.path("run/config.json")))
        self.assertEqual(config["model"]["init_backbone"], self.path("init.pth"))
        # eval evaluates the file's weights in the model of --config.
        r = self.cli("eval", "--protocol", "knn", "--threads", "1", "--init-backbone",
                     self.path("init.pth"), "--config", self.path("run/config.json"))
        self.assertIn("knn on the representation of " + self.path("init.pth"), r.stdout)

    # bad files

    def test_bad_files_are_named(self):
        m = torchvision_resnet18()
        sd = m.state_dict()
        torch.save(sd, self.path("good.pth"))
        good = read_bytes(self.path("good.pth"))
        write_bytes(self.path("cut.pth"), good[: len(good) // 3])
        torch.save(m, self.path("module.pth"))
        write_safetensors(self.path("wrong_dtype.safetensors"), {"conv1.weight": sd["conv1.weight"]},
                          {"conv1.weight": {"dtype": "F64", "shape": [64, 3, 7, 7],
                                            "data_offsets": [0, 64 * 3 * 49 * 4]}})
        write_safetensors(self.path("cut.safetensors"), sd)
        write_bytes(self.path("cut.safetensors"), read_bytes(self.path("cut.safetensors"))[:-100])
        write_bytes(self.path("header.safetensors"), struct.pack("<Q", 5) + b"{oops" + b"\0" * 8)
        odd = OrderedDict(sd)
        odd["layer1.0.extra.weight"] = torch.zeros(3)
        torch.save(odd, self.path("unknown.pth"))
        shape = OrderedDict(sd)
        shape["layer1.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)
        torch.save(shape, self.path("shape.pth"))
        cases = {"cut.pth": "corrupt or truncated",
                 "module.pth": "Save model.state_dict()",
                 "wrong_dtype.safetensors": "dtype or shape mismatch",
                 "cut.safetensors": "outside",
                 "header.safetensors": "not valid JSON",
                 "unknown.pth": "unknown keys layer1.0.extra.weight",
                 "shape.pth": "layer1.0.conv2.weight has shape [64, 64, 1, 1]"}
        for name, needle in cases.items():
            with self.subTest(file=name):
                with self.assertRaises(RuntimeError) as ctx:
                    vicreg.load_backbone(self.path(name))
                self.assertIn(needle, str(ctx.exception))
        # The CLI says the same and exits 1 before writing anything.
        write_idx(self.path("data"), "train", 40, 16, 1)
        r = self.train("run", "--dataset", "mnist", "--data-dir", self.path("data"),
                       "--image-size", "16", "--init-backbone", self.path("good.pth"), ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("conv1.weight has shape [64, 3, 7, 7], the model's is [64, 1, 3, 3]", r.stderr)
        self.assertFalse(os.path.exists(self.path("run/checkpoint.pt")))

    def test_safetensors_helpers_round_trip(self):
        t = OrderedDict(a=torch.randn(3, 4), b=torch.arange(5), c=torch.randn(2).half())
        vicreg.save_safetensors(t, self.path("x.safetensors"), {"note": "hi"})
        mine, meta = read_safetensors(self.path("x.safetensors"))
        self.assertEqual(meta, {"note": "hi"})
        theirs, meta2 = vicreg.load_weights(self.path("x.safetensors"))
        self.assertEqual(list(theirs), ["a", "b", "c"])
        for k in t:
            self.assertTrue(torch.equal(mine[k], t[k]))
            self.assertTrue(torch.equal(theirs[k], t[k]))


if __name__ == "__main__":
    unittest.main()
