"""``python -m vlad_localization.demo [--data DIR] [--weights FILE]`` (``make demo``)."""
import sys

from vlad_localization.demo.runner import main

sys.exit(main())
