"""Image files as users have them (written with PIL, not OpenCV, which decodes them): CMYK and
grayscale JPEGs, 16-bit, palette, alpha and grayscale-alpha PNGs decode to the channels asked
for, through the CLI's pixels baseline; an undecodable file stops training with its name, or is
skipped and counted with --skip-bad-images. Run by CTest (label integration) with VICREG_CLI set.
"""
import json
import os
import subprocess
import tempfile
import unittest

import numpy as np
from PIL import Image

CLI = os.environ.get("VICREG_CLI", "build/vicreg")
# The imagenet recipe's normalisation (the pixels baseline's features are normalised pixels).
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def odd_images():
    """name -> (PIL image, the RGB PIL converts it to); every image one uniform colour."""
    return {
        "cmyk.jpg": Image.new("CMYK", (16, 16), (0, 160, 255, 40)),
        "gray.jpg": Image.new("L", (16, 16), 77),
        "deep.png": Image.new("I;16", (16, 16), 30000),
        "palette.png": Image.new("RGB", (16, 16), (200, 30, 90)).convert(
            "P", palette=Image.ADAPTIVE),
        "alpha.png": Image.new("RGBA", (16, 16), (20, 140, 220, 128)),
        "gray_alpha.png": Image.new("LA", (16, 16), (150, 200)),
    }


class ImagesTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="vicreg_img_")
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def cli(self, *args):
        return subprocess.run([CLI, *args], capture_output=True, text=True)

    def test_odd_formats_decode_to_rgb_and_grayscale(self):
        images = odd_images()
        for split in ("train", "val"):
            os.makedirs(self.path("img", split, "all"))
            for name, img in images.items():
                img.save(self.path("img", split, "all", name))
        out = self.path("x.npy")
        for channels in (3, 1):
            r = self.cli("embed", "--baseline", "pixels", "--dataset", "image-folder",
                         "--channels", str(channels), "--image-size", "8", "--data-dir",
                         self.path("img"), "--threads", "1", "--out", out)
            self.assertEqual(r.returncode, 0, r.stderr)
            x = np.load(out).reshape(len(images), channels, 8, 8)
            self.assertTrue(np.isfinite(x).all())
            if channels == 1:
                continue
            for i, name in enumerate(sorted(images)):
                with self.subTest(name=name):
                    img = images[name]
                    if img.mode == "I;16":  # 16 bits: the high byte
                        rgb = np.full(3, 30000 // 256)
                    else:
                        rgb = np.asarray(img.convert("RGB"))[0, 0].astype(float)
                    got = x[i].mean(axis=(1, 2)) * STD + MEAN
                    # JPEG's lossy colour conversion: within a few levels.
                    np.testing.assert_allclose(got * 255, rgb, atol=6)

    def test_bad_images_stop_training_or_are_skipped_and_counted(self):
        rng = np.random.default_rng(0)
        for k in range(2):
            os.makedirs(self.path("img", f"c{k}"))
            for i in range(8):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
                    self.path("img", f"c{k}", f"{i}.png"))
        with open(self.path("img", "c1", "broken.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n truncated")
        args = ["train", "--dataset", "image-folder", "--data-dir", self.path("img"), "--recipe",
                "cifar", "--image-size", "12", "--width", "4", "--stages", "2", "--mlp", "16-16",
                "--batch-size", "17", "--epochs", "2", "--threads", "1", "--workers", "1",
                "--progress", "none", "--log-every", "1"]
        r = self.cli(*args, "--exp-dir", self.path("a"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("broken.png", r.stderr)
        self.assertIn("--skip-bad-images", r.stderr)
        r = self.cli(*args, "--exp-dir", self.path("b"), "--skip-bad-images")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr.count("warning: skipped"), 1, r.stderr)  # once per file
        with open(self.path("b", "metrics.jsonl")) as f:
            lines = [json.loads(line) for line in f if '"loss"' in line]
        self.assertEqual(sum(line["bad_images"] for line in lines), 2)  # once per epoch


if __name__ == "__main__":
    unittest.main()
