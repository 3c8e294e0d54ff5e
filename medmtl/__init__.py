"""medmtl: multitask medical imaging on MONAI + Lightning."""

__version__ = "0.1.0"
