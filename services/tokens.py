"""API tokens from the command line, for machines and people:

    python -m services.tokens issue --email E [--name N] [--admin] [--expires 90d]
    python -m services.tokens list --email E
    python -m services.tokens revoke PREFIX

`issue` prints the new token once, alone on stdout (what it did goes to stderr), so a script
can capture it; only its hash is stored. `revoke` applies within AUTH_CACHE_SECONDS.
"""

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from core.settings import get_settings
from db.transactions import in_one_transaction
from services import api_tokens
from services.worker import parse_age


def parse_expiry(text: str) -> timedelta | None:
    """`90d`, `12h`, … (as `parse_age`), or `never`."""
    if text.strip().lower() == "never":
        return None
    if text.strip().isdigit():
        # `parse_age` reads a bare number as seconds: `--expires 90` meant days, surely.
        raise argparse.ArgumentTypeError("give the expiry a unit: 90d, 12h, 30m (or `never`)")
    age = parse_age(text)
    if age <= timedelta(0):
        raise argparse.ArgumentTypeError("an expiry must be in the future (or `never`)")
    return age


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.tokens", description="Issue, list and revoke API tokens."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    issue = commands.add_parser(
        "issue",
        help="a new token for a user (created if missing); printed once",
        description="Print a new API token for the user with this e-mail, creating the user "
        "(a customer, or an admin with --admin) if there is none.",
    )
    issue.add_argument("--email", required=True)
    issue.add_argument("--name", help="the new user's name (default: the e-mail's local part)")
    issue.add_argument("--admin", action="store_true", help="the user is (made) an admin")
    issue.add_argument(
        "--expires",
        type=parse_expiry,
        default=None,
        metavar="AGE",
        help="e.g. 90d, 12h, or never (the default)",
    )
    listing = commands.add_parser("list", help="a user's tokens: prefixes and dates")
    listing.add_argument("--email", required=True)
    revoke = commands.add_parser("revoke", help="end a token, named by its prefix")
    revoke.add_argument("prefix", metavar="PREFIX")
    return parser.parse_args(argv)


def _when(moment: datetime | None, empty: str = "-") -> str:
    return empty if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _arguments(argv)
    settings = get_settings()
    try:
        if arguments.command == "issue":
            issued = asyncio.run(
                in_one_transaction(
                    settings,
                    lambda s: api_tokens.issue_token(
                        s,
                        email=arguments.email,
                        name=arguments.name,
                        admin=arguments.admin,
                        expires_in=arguments.expires,
                    ),
                )
            )
            who = "new " if issued.new_user else ""
            role = "admin" if issued.is_admin else "customer"
            print(
                f"issued {issued.prefix}... for {who}{role} {issued.email}, expires "
                f"{_when(issued.expires_at, 'never')}; shown once, store it now:",
                file=sys.stderr,
            )
            print(issued.token)
        elif arguments.command == "list":
            tokens = asyncio.run(
                in_one_transaction(
                    settings, lambda s: api_tokens.list_tokens(s, email=arguments.email)
                )
            )
            now = datetime.now(UTC)
            print(f"{'prefix':<21} {'created':<17} {'expires':<17} {'last used':<17} status")
            for token in tokens:
                print(
                    f"{token.prefix:<21} {_when(token.created_at):<17} "
                    f"{_when(token.expires_at, 'never'):<17} {_when(token.last_used_at):<17} "
                    f"{token.status(now)}"
                )
        else:
            revoked = asyncio.run(
                in_one_transaction(
                    settings, lambda s: api_tokens.revoke_token(s, prefix=arguments.prefix)
                )
            )
            if revoked is None:
                print(f"no live token with prefix {arguments.prefix!r}", file=sys.stderr)
                return 1
            print(
                f"revoked {revoked.prefix} of {revoked.email}; processes that used it lately "
                f"trust it for up to {settings.auth_cache_seconds:g}s more"
            )
    except api_tokens.UnknownUser as error:
        print(error.message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
