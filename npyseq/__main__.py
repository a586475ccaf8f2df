import sys

from npyseq.cli import main

sys.exit(main())
