"""vicreg for PyTorch: the fused VICReg loss and vicreg's backbones and weights files.

    import torch, vicreg
    terms = vicreg.vicreg_loss(z_a, z_b)          # official preset, 25 / 25 / 1
    terms.total.backward()                        # terms.invariance, .variance, .covariance
    criterion = vicreg.VICRegLoss(preset="paper")  # an nn.Module

The loss is the C++ library's (the same code as the vicreg CLI): the covariance term through the
n x n Gram matrix when n < d, a closed-form backward pass, fp32 accumulation for half/bfloat16
inputs. See the README of the vicreg repository for the presets and the formulas.

Weights: vicreg.load_backbone(path) runs a vicreg backbone (backbone.pt, an exported
.safetensors, or a torchvision or official-zoo ResNet state dict) from Python;
vicreg.build_backbone(arch) builds a fresh one; vicreg.save_safetensors /
vicreg.load_weights read and write safetensors (Debian has no safetensors package) and read
torch.save state dicts the way the CLI's --init-backbone does.
"""
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch  # loads LibTorch before the extension, which links to it
from torch import nn

from . import _C

__version__: str = _C.__version__  # the C++ library's, from CMake's project() call
__all__ = ["VICRegLossTerms", "vicreg_loss", "vicreg_loss_reference", "VICRegLoss",
           "Backbone", "load_backbone", "backbone_names", "build_backbone", "save_safetensors",
           "load_weights"]

PRESETS = ("official", "paper")


class VICRegLossTerms(NamedTuple):
    """The loss and its unweighted terms, 0-dim tensors (fp32; fp64 for double inputs)."""
    total: torch.Tensor
    invariance: torch.Tensor  #: official: mean of (z_a - z_b)^2; paper: (1/n) sum_i ||z_a_i - z_b_i||^2
    variance: torch.Tensor    #: v(z_a) + v(z_b)
    covariance: torch.Tensor  #: c(z_a) + c(z_b)


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"preset must be 'official' or 'paper', not {preset!r}")


def vicreg_loss(z_a: torch.Tensor, z_b: torch.Tensor, sim_coeff: float = 25.0,
                std_coeff: float = 25.0, cov_coeff: float = 1.0, gamma: float = 1.0,
                eps: float = 1e-4, preset: str = "official",
                check_finite: bool = True) -> VICRegLossTerms:
    """The VICReg loss of two [n, d] batches of embeddings (float, double, half, bfloat16; n >= 2).

    official (facebookresearch/vicreg): total = sim_coeff * mse + std_coeff * (v_a + v_b) / 2
    + cov_coeff * (c_a + c_b); paper: the invariance is summed over dimensions and the variance
    weight is not halved. Differentiable through torch.autograd (closed-form backward in C++).
    check_finite=False skips the NaN/Inf check (one scalar read; a host sync on CUDA).
    """
    _check_preset(preset)
    return VICRegLossTerms(*_C.vicreg_loss(z_a, z_b, float(sim_coeff), float(std_coeff),
                                           float(cov_coeff), float(gamma), float(eps), preset,
                                           bool(check_finite)))


def vicreg_loss_reference(z_a: torch.Tensor, z_b: torch.Tensor, sim_coeff: float = 25.0,
                          std_coeff: float = 25.0, cov_coeff: float = 1.0, gamma: float = 1.0,
                          eps: float = 1e-4, preset: str = "official") -> VICRegLossTerms:
    """The same loss as the C++ library's reference formulation (d x d covariance, masked)."""
    _check_preset(preset)
    return VICRegLossTerms(*_C.vicreg_loss_reference(z_a, z_b, float(sim_coeff), float(std_coeff),
                                                     float(cov_coeff), float(gamma), float(eps),
                                                     preset))


class VICRegLoss(nn.Module):
    """nn.Module form of vicreg_loss: criterion(z_a, z_b) -> VICRegLossTerms."""

    def __init__(self, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0,
                 gamma: float = 1.0, eps: float = 1e-4, preset: str = "official",
                 check_finite: bool = True):
        super().__init__()
        _check_preset(preset)
        for name, value in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff),
                            ("cov_coeff", cov_coeff), ("gamma", gamma), ("eps", eps)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, not {value!r}")
        self.sim_coeff, self.std_coeff, self.cov_coeff = sim_coeff, std_coeff, cov_coeff
        self.gamma, self.eps, self.preset, self.check_finite = gamma, eps, preset, check_finite

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> VICRegLossTerms:
        return vicreg_loss(z_a, z_b, self.sim_coeff, self.std_coeff, self.cov_coeff, self.gamma,
                           self.eps, self.preset, self.check_finite)

    def extra_repr(self) -> str:
        return (f"sim_coeff={self.sim_coeff}, std_coeff={self.std_coeff}, "
                f"cov_coeff={self.cov_coeff}, gamma={self.gamma}, eps={self.eps}, "
                f"preset={self.preset!r}")


class Backbone(nn.Module):
    """A vicreg encoder (C++) in eval mode: backbone(x) -> [N, output_dim] representations.

    For inference and weights: state_dict() has torchvision's names (a ResNet's loads into
    torchvision.models.resnetNN); to train in PyTorch, load it into the torchvision model.
    """

    def __init__(self, impl):
        super().__init__()
        self._impl = impl
        self.arch, self.output_dim = impl.arch, impl.output_dim
        self.in_channels, self.image_size = impl.in_channels, impl.image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._impl.forward(x)

    def state_dict(self, *args, **kwargs) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict(self._impl.state_dict())

    def export(self, path: str) -> int:
        """Writes the backbone as safetensors (like `vicreg export`); returns the tensor count."""
        return _C.export_backbone(self._impl, str(path))

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, in_channels={self.in_channels}, output_dim={self.output_dim}"


def load_backbone(path: str) -> Backbone:
    """A backbone.pt, a safetensors file from `vicreg export`, or a state dict (safetensors or
    torch.save; the architecture is read off the weights) with torchvision's names (ResNet, ViT,
    ConvNeXt), timm's ViT names (DINO, MAE, MoCo v3, I-JEPA) or the official ConvNeXt's (VICRegL)."""
    return Backbone(_C.load_backbone(str(path)))


def backbone_names() -> List[str]:
    """The architectures build_backbone takes, from vicreg's backbone registry (today
    resnet18/34/50/101/152/200, the official VICReg zoo's wide resnet50x2/x4/x5 and resnet200x2,
    convnet, mlp, vit_tiny/small/base/large with torchvision's vit_b_16/vit_b_32/vit_l_16, and
    convnext_tiny/small/base/large/xlarge)."""
    return list(_C.backbone_names())


def build_backbone(arch: str, in_channels: int = 3, image_size: int = 224, patch_size: int = 0,
                   depth: int = 0) -> Backbone:
    """A freshly initialised vicreg image encoder of one of backbone_names() (ResNets and ConvNeXts
    take the small-image stem for image_size <= 64; ViTs take patch_size and depth, 0 for the
    arch's)."""
    return Backbone(_C.build_backbone(arch, in_channels, image_size, patch_size, depth))


def save_safetensors(tensors: Dict[str, torch.Tensor], path: str,
                     metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes tensors (moved to the CPU) as a safetensors file, atomically."""
    _C.save_safetensors(list(tensors.items()), str(path), dict(metadata or {}))


def load_weights(path: str) -> Tuple["OrderedDict[str, torch.Tensor]", Dict[str, str]]:
    """Reads a safetensors or torch.save file as the CLI does: (tensors in file order, with nested
    dicts flattened by '.'; the safetensors metadata)."""
    tensors, metadata, _ = _C.load_weights(str(path))
    return OrderedDict(tensors), dict(metadata)
