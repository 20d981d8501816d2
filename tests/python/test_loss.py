"""The vicreg extension's loss against a plain PyTorch implementation of both presets.

Run by CTest (label unit) with PYTHONPATH=build/python; by hand:
    PYTHONPATH=build/python /usr/bin/python3 -m unittest -v tests/python/test_loss.py
"""
import unittest

import torch
import torch.nn.functional as F
from torch import nn

import vicreg


def plain_vicreg(z_a, z_b, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, gamma=1.0, eps=1e-4,
                 preset="official"):
    """The loss as the references write it, in the input's dtype, differentiated by autograd:
    facebookresearch/vicreg main_vicreg.py (official) and the paper's equations (paper)."""
    n, d = z_a.shape
    if preset == "official":
        inv = F.mse_loss(z_a, z_b)
    else:
        inv = (z_a - z_b).pow(2).sum(dim=1).mean()
    xa = z_a - z_a.mean(dim=0)
    xb = z_b - z_b.mean(dim=0)
    std_a = torch.sqrt(xa.var(dim=0) + eps)
    std_b = torch.sqrt(xb.var(dim=0) + eps)
    var = F.relu(gamma - std_a).mean() + F.relu(gamma - std_b).mean()
    cov_a = (xa.T @ xa) / (n - 1)
    cov_b = (xb.T @ xb) / (n - 1)
    off = ~torch.eye(d, dtype=torch.bool)
    cov = cov_a[off].pow(2).sum() / d + cov_b[off].pow(2).sum() / d
    w = 0.5 if preset == "official" else 1.0
    total = sim_coeff * inv + w * std_coeff * var + cov_coeff * cov
    return total, inv, var, cov


def views(n, d, dtype=torch.float64, seed=0, scale=0.7):
    g = torch.Generator().manual_seed(seed)
    z_a = (scale * torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype)
    z_b = (z_a.double() + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype)
    # Some dimensions with a large spread, so that both sides of the variance hinge are used.
    z_a[:, : d // 4] *= 3
    return z_a.requires_grad_(), z_b.requires_grad_()


SHAPES = [(8, 32), (32, 8), (16, 16), (2, 5), (64, 200)]  # n < d (Gram form), n >= d, n = 2
OPTIONS = [dict(), dict(sim_coeff=1.5, std_coeff=0.5, cov_coeff=0.04, gamma=2.0, eps=1e-3)]


class LossValuesAndGradients(unittest.TestCase):
    def test_equals_plain_pytorch_in_double(self):
        for preset in vicreg.PRESETS:
            for (n, d) in SHAPES:
                for opts in OPTIONS:
                    with self.subTest(preset=preset, n=n, d=d, opts=opts):
                        z_a, z_b = views(n, d, seed=n * d)
                        got = vicreg.vicreg_loss(z_a, z_b, preset=preset, **opts)
                        want = plain_vicreg(z_a, z_b, preset=preset, **opts)
                        self.assertIsInstance(got, vicreg.VICRegLossTerms)
                        for g, w in zip(got, want):
                            self.assertEqual(g.dtype, torch.float64)
                            self.assertEqual(g.dim(), 0)
                            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
                        # Gradients of a mix of all four outputs, so each term's backward counts.
                        mix = lambda t: 0.7 * t[0] + 2.0 * t[1] - 3.0 * t[2] + 0.5 * t[3]
                        ga = torch.autograd.grad(mix(got), (z_a, z_b))
                        wa = torch.autograd.grad(mix(want), (z_a, z_b))
                        for g, w in zip(ga, wa):
                            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)

    def test_float32_half_and_bfloat16(self):
        z_a, z_b = views(16, 48)
        want = plain_vicreg(z_a, z_b)
        for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)):
            with self.subTest(dtype=dtype):
                a = z_a.detach().to(dtype).requires_grad_()
                b = z_b.detach().to(dtype).requires_grad_()
                got = vicreg.vicreg_loss(a, b)
                self.assertEqual(got.total.dtype, torch.float32)  # fp32 accumulation
                torch.testing.assert_close(got.total.double(), want[0].detach(), rtol=tol, atol=tol)
                got.total.backward()
                self.assertEqual(a.grad.dtype, dtype)
                self.assertTrue(torch.isfinite(a.grad.float()).all())

    def test_gradcheck_in_double(self):
        for preset in vicreg.PRESETS:
            for (n, d) in [(5, 9), (9, 4)]:
                with self.subTest(preset=preset, n=n, d=d):
                    z_a, z_b = views(n, d, seed=7)
                    self.assertTrue(torch.autograd.gradcheck(
                        lambda a, b: tuple(vicreg.vicreg_loss(a, b, preset=preset)), (z_a, z_b),
                        eps=1e-6, atol=1e-6, rtol=1e-5))

    def test_module_wrapper(self):
        z_a, z_b = views(12, 20)
        criterion = vicreg.VICRegLoss(sim_coeff=10.0, cov_coeff=0.5, preset="paper")
        self.assertIsInstance(criterion, nn.Module)
        self.assertIn("preset='paper'", repr(criterion))
        got = criterion(z_a, z_b)
        want = plain_vicreg(z_a, z_b, sim_coeff=10.0, cov_coeff=0.5, preset="paper")
        torch.testing.assert_close(got.total, want[0], rtol=1e-12, atol=1e-12)
        # The C++ reference formulation agrees too.
        ref = vicreg.vicreg_loss_reference(z_a, z_b, sim_coeff=10.0, cov_coeff=0.5, preset="paper")
        torch.testing.assert_close(got.total, ref.total, rtol=1e-12, atol=1e-12)

    def test_bad_input_is_named(self):
        z_a, z_b = views(8, 16)
        cases = [
            (lambda: vicreg.vicreg_loss(z_a, z_b[:4]), RuntimeError, "same shape"),
            (lambda: vicreg.vicreg_loss(z_a[:1], z_b[:1]), RuntimeError, "at least 2"),
            (lambda: vicreg.vicreg_loss(z_a, z_b.float()), RuntimeError, "dtype"),
            (lambda: vicreg.vicreg_loss(z_a.detach().reshape(-1), z_b.detach().reshape(-1)),
             RuntimeError, "[n, d]"),
            (lambda: vicreg.vicreg_loss(z_a.detach() * float("nan"), z_b), RuntimeError, "NaN"),
            (lambda: vicreg.vicreg_loss(z_a, z_b, preset="Official"), ValueError, "preset"),
            (lambda: vicreg.vicreg_loss(z_a, z_b, eps=-1.0), RuntimeError, "eps"),
            (lambda: vicreg.VICRegLoss(std_coeff=-1.0), ValueError, "std_coeff"),
        ]
        for fn, exc, needle in cases:
            with self.subTest(needle=needle):
                with self.assertRaises(exc) as ctx:
                    fn()
                self.assertIn(needle, str(ctx.exception))
        # check_finite=False skips the check: the loss is NaN instead of an error.
        t = vicreg.vicreg_loss(z_a.detach() * float("nan"), z_b.detach(), check_finite=False)
        self.assertTrue(torch.isnan(t.total))

    @unittest.skipUnless(torch.cuda.is_available(), "no CUDA device (Debian's torch is CPU-only)")
    def test_cuda_equals_cpu(self):
        z_a, z_b = views(64, 256)
        cpu = vicreg.vicreg_loss(z_a, z_b)
        gpu = vicreg.vicreg_loss(z_a.detach().cuda().requires_grad_(), z_b.detach().cuda())
        torch.testing.assert_close(gpu.total.cpu(), cpu.total, rtol=1e-10, atol=1e-10)


class Optimisation(unittest.TestCase):
    def train(self, loss_fn, steps=8):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 64))
        model.double()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(48, 10, generator=g, dtype=torch.float64)
        losses = []
        for _ in range(steps):
            view_a = x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)
            view_b = x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)
            total = loss_fn(model(view_a), model(view_b))[0]
            opt.zero_grad()
            total.backward()
            opt.step()
            losses.append(total.item())
        return model, losses

    def test_a_small_model_trains_exactly_as_with_plain_pytorch(self):
        model, losses = self.train(vicreg.VICRegLoss())
        plain_model, plain_losses = self.train(plain_vicreg)
        self.assertLess(losses[-1], 0.7 * losses[0])  # it learns
        for a, b in zip(losses, plain_losses):
            self.assertAlmostEqual(a, b, delta=1e-9 * abs(b))
        for p, q in zip(model.parameters(), plain_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11)


if __name__ == "__main__":
    unittest.main()
