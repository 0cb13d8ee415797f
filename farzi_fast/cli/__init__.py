"""The `farzi-fast` command line: distill, train, evaluate, export, inspect.

`parser` defines the arguments (no torch import, so `--help` is quick); each command runs in
its own module, imported only when that command runs. Bad input exits 2 with one line naming
the option or file, and no traceback.
"""

from __future__ import annotations

import importlib
import sys

from .parser import build_parser

COMMANDS = ("distill", "train", "evaluate", "export", "inspect")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..distillation.parallel import RankFailureError, RankMismatchError
    from .processes import join_processes, leave_processes, resolve_device

    joined = False
    try:
        resolve_device(args)
        if args.command == "distill":
            joined = join_processes(args)
        code = importlib.import_module(f".commands.{args.command}", __name__).run(args)
    except (ValueError, FileNotFoundError, TypeError, FloatingPointError,
            RankMismatchError) as error:
        print(f"farzi-fast: error: {error}", file=sys.stderr)
        code = 2
    except RankFailureError as error:  # not the user's input: the run may be resumed
        print(f"farzi-fast: error: {error}; resume from the last checkpoint with --resume",
              file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("farzi-fast: interrupted (a distill run continues from its last checkpoint "
              "with --resume)", file=sys.stderr)
        code = 130
    except BaseException:  # a bug: its traceback is the report
        if joined:
            import torch

            torch.distributed.destroy_process_group()
        raise
    if joined:
        leave_processes(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
