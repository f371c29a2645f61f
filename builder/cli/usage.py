"""Usage errors as docker reports them: one `ERROR:` line, a pointer to --help, exit code 125.

Docker's CLI exits 125 when its own arguments are wrong (the command never ran) and 1 when the
command failed; scripts tell the two apart. An unknown flag is named alone: argparse would also list
the words around it, so `--frob /ctx` read as "unrecognized arguments: --frob" with `/ctx` taken for
the context. A flag build-image knows but does not implement is declared with `refused()`, so its
value is consumed with it and the message says what is missing.
"""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 125


class UsageError(Exception):
    """Raised instead of exiting, so the caller can print it the one way."""


class UsageParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # docker (cobra) takes no abbreviated flags
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        args = self._boolean_values(sys.argv[1:] if args is None else list(args))
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            flag = next((word for word in extra if word.startswith("-") and word != "-"), None)
            self.error(f"unknown flag: {flag.partition('=')[0]}" if flag else
                       f"unexpected argument{'s' if len(extra) > 1 else ''}: {' '.join(extra)}")
        return ns

    def _boolean_values(self, args: list[str]) -> list[str]:
        """Docker's `--no-cache=false` / `--rm=true` spelling of a switch: true sets it, false drops it."""
        switches = {flag for action in self._actions if action.nargs == 0 for flag in action.option_strings}
        out = []
        for index, word in enumerate(args):
            flag, sep, value = word.partition("=")
            if sep and flag in switches:
                if value.lower() not in ("true", "false", "1", "0"):
                    self.error(f'invalid argument "{value}" for "{flag}" flag: strconv.ParseBool: '
                               f'parsing "{value}": invalid syntax')
                if value.lower() in ("true", "1"):
                    out.append(flag)
                continue
            out.append(word)
            if word == "--":
                out.extend(args[index + 1:])
                break
        return out

    def error(self, message: str):
        print(f"ERROR: {message}", file=sys.stderr)
        print(f"See '{self.prog} --help'.", file=sys.stderr)
        sys.exit(EXIT_USAGE)


class _Refuse(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not supported: {self.help}")


class _Ignore(argparse.Action):
    """A flag accepted with no effect (docker's classic builder flags BuildKit ignores too)."""

    def __call__(self, parser, namespace, values, option_string=None):
        pass


def refused(parser: argparse.ArgumentParser, *flags: str, why: str, takes_value: bool = True) -> None:
    """FLAGS fail as usage errors saying WHY (what build-image lacks); a value is consumed with them."""
    parser.add_argument(*flags, action=_Refuse, nargs=None if takes_value else 0, help=why,
                        metavar="VALUE", dest=argparse.SUPPRESS, default=argparse.SUPPRESS)


def ignored(parser: argparse.ArgumentParser, *flags: str, why: str, takes_value: bool = False,
            choices=None) -> None:
    """FLAGS are accepted and do nothing (WHY is their help); a switch unless TAKES_VALUE."""
    parser.add_argument(*flags, action=_Ignore, nargs=None if takes_value else 0, help=why, choices=choices,
                        dest=argparse.SUPPRESS, default=argparse.SUPPRESS)
