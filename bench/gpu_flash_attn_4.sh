#!/usr/bin/env bash
# On the lent GPU machine: install the carried .fa4/ (bench/pack_flash_attn_4.sh) into /tmp/fa4/site-packages, once per
# machine: a folder named site-packages, as quack's compile cache keys installed code by its path (docs/gpu.md).
# Source it, so that PYTHONPATH is exported to the commands that follow:
#
#     source bench/gpu_flash_attn_4.sh && python3 -m bench.bench --device cuda ...
FA4_DIR=${FA4_DIR:-.fa4}
SITE=${SITE:-/tmp/fa4/site-packages}
if [ ! -d "$SITE/flash_attn/cute" ]; then
  mkdir -p "$SITE"
  # wheels first: pip --target replaces whole top-level folders, and nvidia_cutlass_dsl/ is shared with the tarball
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$FA4_DIR"/*.whl &&
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
      "$FA4_DIR/cutlass_dsl.tar.xz" "$SITE" || return 1 2>/dev/null || exit 1
fi
# nvidia-cutlass-dsl puts its packages on the path through a .pth file, which --target installs do not run.
export PYTHONPATH="$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages:$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import flash_attn.cute.interface" && echo "flash-attn-4 ready in $SITE"
