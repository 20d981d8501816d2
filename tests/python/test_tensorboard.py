"""TensorBoard event files of a run, read back by a reader of their own: the records' framing
and masked CRC32C checked with python3-crc32c, the events decoded by python3-protobuf from
src/io/tensorboard.proto compiled here with protoc (and the field numbers TensorBoard uses checked
on the raw bytes). The scalars must equal metrics.jsonl's numbers, step for step, across a run
stopped and resumed, and across a run killed with SIGKILL and resumed. Run by CTest (label
integration) with VICREG_CLI set.
"""
import glob
import importlib
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

import crc32c
import numpy as np
from PIL import Image

CLI = os.environ.get("VICREG_CLI", "build/vicreg")
PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "io")


def masked(data):
    c = crc32c.crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path, torn_tail=False):
    """The data of every record, each CRC checked; a file must end on a whole record (or, with
    torn_tail, may end in a partial one, as a killed writer leaves it)."""
    out = []
    with open(path, "rb") as f:
        raw = f.read()
    at = 0
    while at < len(raw):
        header = raw[at:at + 8]
        if torn_tail and len(raw) < at + 12:
            break
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", raw[at + 8:at + 12])
        assert header_crc == masked(header), f"{path}: bad length CRC at byte {at}"
        data = raw[at + 12:at + 12 + length]
        if torn_tail and len(raw) < at + 16 + length:
            break
        assert len(data) == length, f"{path}: torn record at byte {at}"
        (data_crc,) = struct.unpack("<I", raw[at + 12 + length:at + 16 + length])
        assert data_crc == masked(data), f"{path}: bad data CRC at byte {at}"
        out.append(data)
        at += 16 + length
    return out


class TensorBoardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proto_tmp = tempfile.TemporaryDirectory(prefix="vicreg_pb_")
        subprocess.run(["protoc", f"--proto_path={PROTO_DIR}",
                        f"--python_out={cls.proto_tmp.name}", "tensorboard.proto"], check=True)
        sys.path.insert(0, cls.proto_tmp.name)
        cls.pb = importlib.import_module("tensorboard_pb2")

    @classmethod
    def tearDownClass(cls):
        sys.path.remove(cls.proto_tmp.name)
        cls.proto_tmp.cleanup()

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="vicreg_tb_")
        self.dir = self.tmp.name
        rng = np.random.default_rng(0)
        for split, count in (("train", 12), ("val", 4)):
            for k in range(2):
                os.makedirs(self.path("img", split, f"c{k}"))
                for i in range(count):
                    pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(self.path("img", split, f"c{k}", f"{i}.png"))

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def train_args(self, exp, *extra):
        return ["train", "--dataset", "image-folder", "--data-dir", self.path("img"), "--recipe",
                "cifar", "--image-size", "12", "--width", "4", "--stages", "2", "--mlp", "16-16",
                "--batch-size", "8", "--epochs", "3", "--threads", "1", "--workers", "1",
                "--progress", "none", "--log-every", "1", "--eval-every", "1", "--eval-bank",
                "0", "--exp-dir", self.path(exp), *extra]

    def train(self, exp, *extra):
        r = subprocess.run([CLI, *self.train_args(exp, *extra)], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r

    def events(self, exp, torn_tail=False):
        """(file, Event) of every record of every event file of the run, in name order."""
        out = []
        for f in sorted(glob.glob(self.path(exp, "events.out.tfevents.*"))):
            for data in records(f, torn_tail):
                e = self.pb.Event()
                e.ParseFromString(data)
                out.append((f, e, data))
        return out

    def expected(self, exp):
        """[(step, {tag: value})] from metrics.jsonl, as the event files must hold them."""
        out = []
        with open(self.path(exp, "metrics.jsonl")) as f:
            for line in f:
                m = json.loads(line)
                section = m.get("event", "train")
                scalars = {}
                for key, value in m.items():
                    if key == "step" or isinstance(value, bool) or \
                            not isinstance(value, (int, float)):
                        continue
                    tag = key[len(section) + 1:] if key.startswith(section + "_") else key
                    scalars[f"{section}/{tag}"] = float(np.float32(value))
                out.append((m["step"], scalars))
        return out

    def summaries(self, exp, torn_tail=False):
        got = []
        for _, e, _ in self.events(exp, torn_tail):
            if e.WhichOneof("what") == "summary":
                got.append((e.step, {v.tag: v.simple_value for v in e.summary.value}))
        return got

    def test_event_files_hold_metrics_jsonl_with_tensorboards_field_numbers(self):
        self.train("a")
        files = glob.glob(self.path("a", "events.out.tfevents.*"))
        self.assertEqual(len(files), 1, files)
        events = self.events("a")
        # The first event names the format: wall_time (field 1, double) then file_version
        # (field 3, string), byte for byte as TensorBoard's event.proto numbers them.
        _, first, raw = events[0]
        self.assertEqual(first.file_version, "brain.Event:2")
        self.assertEqual(raw[0], 0x09)
        self.assertEqual(raw[9:], b"\x1a\x0dbrain.Event:2")
        # A scalar: step is field 2 (varint), summary field 5, its value's tag field 1 and
        # simple_value field 2 (float).
        _, second, raw = events[1]
        self.assertEqual(raw[9], 0x10)  # step
        self.assertIn(b"\x2a", raw)  # summary
        self.assertIn(b"\x0a\x0atrain/loss\x15", raw)
        self.assertEqual(self.summaries("a"), self.expected("a"))
        tags = set().union(*(s for _, s in self.summaries("a")))
        for tag in ("train/loss", "train/invariance", "train/variance", "train/covariance",
                    "train/lr", "train/std_z", "train/rankme_y", "train/rankme_z",
                    "train/images_per_s", "train/data_wait_fraction", "knn/top1"):
            self.assertIn(tag, tags)
        # Top-5 of a few classes is 100 %: the kNN probe leaves it out.
        self.assertNotIn("knn/top5", tags)
        self.assertGreater(first.wall_time, 1.6e9)

    def test_a_stopped_and_resumed_run_reads_as_one_run(self):
        self.train("b", "--max-steps", "4")
        self.train("b")  # goes on from its checkpoint in a new file
        files = sorted(glob.glob(self.path("b", "events.out.tfevents.*")))
        self.assertEqual(len(files), 2, files)
        got = self.summaries("b")
        self.assertEqual(got, self.expected("b"))
        steps = [s for s, scalars in got if "train/loss" in scalars]
        self.assertEqual(steps, list(range(1, 10)))  # 3 steps an epoch, each once

    def test_a_killed_and_resumed_run_has_every_step_once(self):
        args = self.train_args("k", "--epochs", "20", "--eval-every", "0",
                               "--checkpoint-every", "5")
        proc = subprocess.Popen([CLI, *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        metrics = self.path("k", "metrics.jsonl")
        deadline = time.monotonic() + 120
        last = 0
        def logged_steps():
            return [s for s, scalars in self.summaries("k", torn_tail=True)
                    if "train/loss" in scalars]
        while proc.poll() is None and time.monotonic() < deadline:
            if os.path.exists(metrics):
                with open(metrics) as f:
                    steps = [json.loads(line)["step"] for line in f if line.endswith("\n")]
                last = steps[-1] if steps else 0
                # Past the checkpoint of step 10 in both logs: a step's event is written just
                # after its metrics.jsonl line, so the two are checked one after the other.
                if last >= 12 and glob.glob(self.path("k", "events.out.tfevents.*")):
                    logged = logged_steps()
                    if logged and logged[-1] > 10:
                        break
            time.sleep(0.005)
        proc.kill()
        self.assertEqual(proc.wait(), -signal.SIGKILL, "the run ended before it was killed")
        before = logged_steps()
        self.assertGreater(before[-1], 10)  # steps after the last checkpoint, to be cut on resume
        self.train("k", "--epochs", "20", "--eval-every", "0", "--checkpoint-every", "5")
        got = self.summaries("k")
        self.assertEqual(got, self.expected("k"))
        steps = [s for s, scalars in got if "train/loss" in scalars]
        self.assertEqual(steps, list(range(1, 61)))  # 3 steps an epoch, each once

    def test_off_writes_no_event_file(self):
        self.train("c", "--tensorboard", "off", "--epochs", "1")
        self.assertEqual(glob.glob(self.path("c", "events.out.tfevents.*")), [])
        r = subprocess.run([CLI, "train", "--tensorboard", "maybe"], capture_output=True,
                           text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("maybe", r.stderr)


if __name__ == "__main__":
    unittest.main()
