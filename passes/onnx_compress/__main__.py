"""``python -m onnx_compress`` is the ``onnx-compress`` command."""

import sys

from onnx_compress.cli import main

sys.exit(main())
