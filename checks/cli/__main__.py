import sys

from recipe_checks.cli import main

sys.exit(main())
