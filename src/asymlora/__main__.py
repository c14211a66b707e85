"""`python -m asymlora ...` is the `asymlora` command, so launchers that take a module run it:
`accelerate launch -m asymlora train ...`, `torchrun -m asymlora train ...`."""

import sys

from .cli import main

sys.exit(main())
