"""The ``greenhouse`` command line.

One module per noun (``run``, later ``ca``, ``certs``, ``superlink`` ...). Each
command parses its arguments, calls one library function and renders the result.
:func:`main` is the single place that turns errors into one line on stderr and an
exit code; a traceback is shown only with ``--verbose``.
"""

from __future__ import annotations

import logging
import sys

import click
import grpc

from appliance.errors import AppConfigError, ApplianceError
from appliance.logs import configure_logging
from appliance.supernode.policy import PolicyError
from audit import AuditError
from certs import CertError

__all__ = ["cli", "main"]

#: Exit codes by error family; the first matching entry wins. Libraries' root
#: errors are added here as their commands are registered.
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (AppConfigError, 3),
    (PolicyError, 7),
    (ApplianceError, 1),
    (CertError, 4),
    (AuditError, 6),
]
EXIT_USAGE = 2
EXIT_RPC = 5
EXIT_INTERRUPTED = 130


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logs and full tracebacks.")
@click.version_option(package_name="greenhouse-fl")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Greenhouse: privacy-hardened federated learning for hospitals and banks."""
    ctx.obj = {"verbose": verbose}
    configure_logging("console", level=logging.DEBUG if verbose else logging.INFO)


def _register_commands() -> None:
    from appliance.cli import app as app_cmd
    from appliance.cli import approval as approval_cmd
    from appliance.cli import audit as audit_cmd
    from appliance.cli import budget as budget_cmd
    from appliance.cli import ca as ca_cmd
    from appliance.cli import certs as certs_cmd
    from appliance.cli import health as health_cmd
    from appliance.cli import node as node_cmd
    from appliance.cli import policy as policy_cmd
    from appliance.cli import run as run_cmd
    from appliance.cli import runs as runs_cmd
    from appliance.cli import superlink as superlink_cmd
    from appliance.cli import supernode as supernode_cmd

    cli.add_command(run_cmd.run)
    cli.add_command(runs_cmd.ls)
    cli.add_command(runs_cmd.show)
    cli.add_command(runs_cmd.log)
    cli.add_command(runs_cmd.stop)
    cli.add_command(runs_cmd.pull)
    cli.add_command(node_cmd.node)
    cli.add_command(ca_cmd.ca)
    cli.add_command(certs_cmd.certs)
    cli.add_command(superlink_cmd.superlink)
    cli.add_command(supernode_cmd.supernode)
    cli.add_command(health_cmd.health)
    cli.add_command(app_cmd.app)
    cli.add_command(policy_cmd.policy)
    cli.add_command(approval_cmd.pending)
    cli.add_command(approval_cmd.approve)
    cli.add_command(approval_cmd.refuse)
    cli.add_command(budget_cmd.budget)
    cli.add_command(audit_cmd.audit_group)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    try:
        cli.main(args=args, prog_name="greenhouse", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("greenhouse: interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except KeyboardInterrupt:
        click.echo("greenhouse: interrupted", err=True)
        return EXIT_INTERRUPTED
    except grpc.RpcError as exc:
        if verbose:
            raise
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        name = exc.code().name if hasattr(exc, "code") else "ERROR"
        click.echo(f"greenhouse: error: the server said {name}: {detail}", err=True)
        return EXIT_RPC
    except Exception as exc:
        for family, code in EXIT_CODES:
            if isinstance(exc, family):
                if verbose:
                    raise
                click.echo(f"greenhouse: error: {exc}", err=True)
                return code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
