"""ViTs and ConvNeXts between vicreg (C++) and PyTorch, both ways: vicreg's exports load into
torchvision's VisionTransformer and convnext models and compute the same representations;
torchvision's state dicts, timm's ViT layout and the official ConvNeXt layout (renamed here by
this file's own tables) load into vicreg. Run by CTest (label integration) with
PYTHONPATH=build/python.
"""
import json
import os
import struct
import tempfile
import unittest
from collections import OrderedDict

import torch
import torchvision
from torch import nn

import vicreg


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = OrderedDict()
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        assert e["dtype"] in ("F32", "I64"), e["dtype"]
        dtype = torch.float32 if e["dtype"] == "F32" else torch.int64
        out[name] = torch.frombuffer(bytearray(body[b:end]), dtype=dtype).reshape(e["shape"])
    return out, header.get("__metadata__", {})


def randomize(m, seed):
    """Every parameter away from its initialisation (layer scales included: at 1e-6 a ConvNeXt's
    blocks would hardly count)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m.eval()


def torchvision_vit(image_size, patch, layers, width, in_channels=3):
    m = torchvision.models.VisionTransformer(image_size=image_size, patch_size=patch,
                                             num_layers=layers, num_heads=width // 64,
                                             hidden_dim=width, mlp_dim=4 * width)
    if in_channels != 3:
        m.conv_proj = nn.Conv2d(in_channels, width, patch, patch)
    return m


def torchvision_convnext_tiny(in_channels=3, small_stem=False):
    m = torchvision.models.convnext_tiny()
    if small_stem:
        m.features[0][0] = nn.Conv2d(in_channels, 96, 3, 1, 1)
    elif in_channels != 3:
        m.features[0][0] = nn.Conv2d(in_channels, 96, 4, 4)
    return m


def as_timm(state):
    """torchvision ViT names -> timm's."""
    out = OrderedDict()
    top = {"class_token": "cls_token", "encoder.pos_embedding": "pos_embed",
           "conv_proj.weight": "patch_embed.proj.weight", "conv_proj.bias": "patch_embed.proj.bias",
           "encoder.ln.weight": "norm.weight", "encoder.ln.bias": "norm.bias",
           "heads.head.weight": "head.weight", "heads.head.bias": "head.bias"}
    block = {"ln_1": "norm1", "self_attention.in_proj_weight": "attn.qkv.weight",
             "self_attention.in_proj_bias": "attn.qkv.bias", "self_attention.out_proj": "attn.proj",
             "ln_2": "norm2", "mlp.0": "mlp.fc1", "mlp.3": "mlp.fc2"}
    for k, v in state.items():
        if k in top:
            out[top[k]] = v
            continue
        index, rest = k[len("encoder.layers.encoder_layer_"):].split(".", 1)
        for a, b in block.items():
            if rest.startswith(a):
                out[f"blocks.{index}.{b}{rest[len(a):]}"] = v
    assert len(out) == len(state)
    return out


def as_official_convnext(state):
    """torchvision ConvNeXt names -> facebookresearch/ConvNeXt's."""
    out = OrderedDict()
    parts = {"block.0": "dwconv", "block.2": "norm", "block.3": "pwconv1", "block.5": "pwconv2"}
    for k, v in state.items():
        if k.startswith("classifier.0."):
            out["norm." + k.split(".")[-1]] = v
        elif k.startswith("classifier.2."):
            out["head." + k.split(".")[-1]] = v
        else:
            f, rest = k[len("features."):].split(".", 1)
            f = int(f)
            if f % 2 == 0:
                out[f"downsample_layers.{f // 2}.{rest}"] = v
            else:
                m, part = rest.split(".", 1)
                if part == "layer_scale":
                    out[f"stages.{f // 2}.{m}.gamma"] = v.reshape(-1)
                    continue
                for a, b in parts.items():
                    if part.startswith(a):
                        out[f"stages.{f // 2}.{m}.{b}{part[len(a):]}"] = v
    assert len(out) == len(state)
    return out


class BackbonesTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="vicreg_py_")
        torch.set_num_threads(1)
        torch.manual_seed(0)

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def assert_same_outputs(self, a, b, x, atol=2e-5):
        with torch.no_grad():
            ya, yb = a(x), b(x)
        self.assertEqual(ya.shape, yb.shape)
        torch.testing.assert_close(ya, yb, rtol=0, atol=atol)

    def load_into(self, m, path, missing):
        tensors, meta = read_safetensors(path)
        result = m.load_state_dict(tensors, strict=False)
        self.assertEqual(sorted(result.missing_keys), missing)
        self.assertEqual(result.unexpected_keys, [])
        return meta

    # C++ -> torchvision

    def test_vit_export_loads_into_torchvisions_vision_transformer(self):
        ours = vicreg.build_backbone("vit_tiny", 1, 28, patch_size=7, depth=2)
        ours.export(self.path("vit.safetensors"))
        m = torchvision_vit(28, 7, 2, 192, in_channels=1)
        meta = self.load_into(m, self.path("vit.safetensors"),
                              ["heads.head.bias", "heads.head.weight"])
        self.assertIn("torchvision.models.VisionTransformer(image_size=28, patch_size=7, "
                      "num_layers=2, num_heads=3, hidden_dim=192, mlp_dim=768)",
                      meta["vicreg.torchvision"])
        m.heads = nn.Identity()
        self.assert_same_outputs(m.eval(), ours, torch.randn(3, 1, 28, 28))

    def test_convnext_export_loads_into_torchvisions_convnext(self):
        ours = vicreg.build_backbone("convnext_tiny", 3, 32)  # the small-image stem
        ours.export(self.path("cn.safetensors"))
        m = torchvision_convnext_tiny(3, small_stem=True)
        meta = self.load_into(m, self.path("cn.safetensors"),
                              ["classifier.2.bias", "classifier.2.weight"])
        self.assertIn("m.features[0][0] = nn.Conv2d(3, 96, 3, 1, 1)", meta["vicreg.torchvision"])
        m.classifier[2] = nn.Identity()
        # Its layer scales start at 1e-6: randomise through torchvision, then compare both ways.
        randomize(m, 1)
        path = self.path("cn_random.pt")
        torch.save(m.state_dict(), path)
        self.assert_same_outputs(m, vicreg.load_backbone(path), torch.randn(2, 3, 32, 32))

    # torchvision, timm and the official ConvNeXt -> C++

    def test_torchvision_vit_state_dict_loads_with_its_architecture(self):
        m = randomize(torchvision_vit(32, 8, 3, 384), 2)
        torch.save(m.state_dict(), self.path("tv_vit.pth"))
        b = vicreg.load_backbone(self.path("tv_vit.pth"))
        self.assertEqual((b.arch, b.output_dim, b.in_channels), ("vit_small", 384, 3))
        m.heads = nn.Identity()
        x = torch.randn(2, 3, 32, 32)
        self.assert_same_outputs(m, b, x, atol=1e-4)
        # timm's names, under a training checkpoint's prefix (DINO's teacher, MoCo v3's module.)
        timm = OrderedDict(("module." + k, v) for k, v in as_timm(m.state_dict()).items())
        torch.save({"model": timm}, self.path("timm.pth"))
        self.assert_same_outputs(m, vicreg.load_backbone(self.path("timm.pth")), x, atol=1e-4)

    def test_convnext_state_dicts_load_with_their_architecture(self):
        m = randomize(torchvision.models.convnext_tiny(), 3)
        torch.save(m.state_dict(), self.path("tv_cn.pth"))
        b = vicreg.load_backbone(self.path("tv_cn.pth"))
        self.assertEqual((b.arch, b.output_dim), ("convnext_tiny", 768))
        m.classifier[2] = nn.Identity()
        x = torch.randn(2, 3, 64, 64)
        self.assert_same_outputs(m, b, x, atol=1e-4)
        # The official layout (facebookresearch/ConvNeXt; VICRegL's backbone)
        torch.save({"model": as_official_convnext(m.state_dict())}, self.path("official.pth"))
        self.assert_same_outputs(m, vicreg.load_backbone(self.path("official.pth")), x, atol=1e-4)

    def test_names_are_listed(self):
        names = vicreg.backbone_names()
        for n in ("vit_tiny", "vit_b_16", "vit_b_32", "vit_l_16", "convnext_tiny", "convnext_xlarge"):
            self.assertIn(n, names)
        with self.assertRaises(Exception) as e:
            vicreg.build_backbone("vit_tiny", 1, 28, patch_size=16)
        self.assertIn("do not split into 16 px patches", str(e.exception))


if __name__ == "__main__":
    unittest.main()
