"""Runs a stage module in one process, or in N data-parallel processes through torchrun.

The DVC train stage calls it with `train.nproc`:
`python -m pipeline.launch --nproc 4 pipeline.train --params params.yaml ...` becomes
`torchrun --standalone --nproc-per-node 4 -m pipeline.train --params params.yaml ...` (one
node, a private rendezvous); with `--nproc 1`, or when already started by torchrun, the module
runs right here, as `python -m pipeline.train ...` would. Several nodes: start torchrun on each
node yourself (docs/cluster.md).
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

from pipeline.distributed import ENV_VARS


def torchrun_command(nproc: int, module: str, args: list[str]) -> list[str]:
    """The torchrun command line for `nproc` processes of `python -m module args` on this node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(nproc), "-m", module, *args]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes on this node (train.nproc); 1 runs the module in-process")
    parser.add_argument("module", help="the stage module, e.g. pipeline.train")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the module's own arguments")
    args = parser.parse_args(argv)
    if args.nproc < 1:
        parser.error(f"--nproc {args.nproc}: use 1 or more processes")
    if args.nproc == 1 or all(name in os.environ for name in ENV_VARS):
        sys.argv = [args.module, *args.args]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        return
    command = torchrun_command(args.nproc, args.module, args.args)
    sys.stdout.flush()
    os.execv(command[0], command)  # torchrun's exit status becomes the stage's


if __name__ == "__main__":
    main()
