from __future__ import annotations

import sys

from onnx_hierarchy.cli import main

if __name__ == "__main__":
    sys.exit(main())
