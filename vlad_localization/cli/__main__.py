import sys

from vlad_localization.cli.main import main

sys.exit(main())
