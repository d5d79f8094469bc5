import sys

from grasprune.cli.main import main

sys.exit(main())
