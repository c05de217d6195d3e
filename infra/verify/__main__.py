import sys

from infra.verify.cli import main

sys.exit(main())
