"""Complex-valued layers on real tensors with a trailing (real, imag) pair.

A complex feature map is a real (B, C, *spatial, 2) tensor (DESIGN.md): ONNX has no complex type, so
no layer here uses complex dtypes or ``view_as_complex`` in ``forward``.
"""

from medmtl.nn.complex.activations import Cardioid, CReLU, ModReLU, ZReLU
from medmtl.nn.complex.conv import (
    ComplexConv2d,
    ComplexConv3d,
    ComplexConvTranspose2d,
    ComplexConvTranspose3d,
)
from medmtl.nn.complex.dropout import ComplexDropout, ComplexDropout2d, ComplexDropout3d
from medmtl.nn.complex.init import complex_kaiming_
from medmtl.nn.complex.linear import ComplexLinear
from medmtl.nn.complex.norm import (
    ComplexBatchNorm2d,
    ComplexBatchNorm3d,
    ComplexInstanceNorm2d,
    ComplexInstanceNorm3d,
)

__all__ = [
    "CReLU",
    "Cardioid",
    "ComplexBatchNorm2d",
    "ComplexBatchNorm3d",
    "ComplexConv2d",
    "ComplexConv3d",
    "ComplexConvTranspose2d",
    "ComplexConvTranspose3d",
    "ComplexDropout",
    "ComplexDropout2d",
    "ComplexDropout3d",
    "ComplexInstanceNorm2d",
    "ComplexInstanceNorm3d",
    "ComplexLinear",
    "ModReLU",
    "ZReLU",
    "complex_kaiming_",
]
