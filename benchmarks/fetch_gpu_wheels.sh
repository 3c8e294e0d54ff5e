#!/usr/bin/env bash
# Download, here, the wheels that benchmarks/gpu.sh needs and the lent GPU machines lack.
# Their image (/work/.library/device/KINDS.md) already holds torch, triton, torchmetrics,
# scikit-image, numpy, lightning, torchmetrics and pytest; MONAI and pytorch-msssim (benchmark rows,
# reference tests) are missing, and so are what `medmtl fit` needs beyond those (PARTS=train): jsonargparse
# with docstring-parser and typeshed-client (LightningCLI), nibabel, nilearn (the MNI template) and pydicom.
# All are pure-Python wheels whose other needs are on the machine (about 19 MiB together).
# The wheels land in .whl/ (git-ignored), which gpu.sh installs from when the run carries it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  monai==1.6.1 pytorch-msssim==1.0.0 jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 \
  nibabel==5.4.2 nilearn==0.14.1 pydicom==3.0.2
ls -l .whl
