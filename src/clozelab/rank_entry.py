"""Entry point of the extra processes that Lightning's DDP launcher starts on one machine.

Lightning starts ranks 1..n-1 by re-running the command line (``sys.argv``, plus Hydra overrides
that pin the run directory). ``cli.point_rank_launcher`` sets ``sys.argv`` to this script and the
command's overrides, with the command in ``CLOZELAB_COMMAND``, so each extra rank runs the same
``clozelab <command>``.
"""

import os
import sys

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))  # not a top-level import path
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    from clozelab.cli import run_command

    run_command(os.environ["CLOZELAB_COMMAND"], sys.argv[1:])
