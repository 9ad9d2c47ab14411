"""``greenhouse app``: hash, sign and verify app bundles (publishers and site administrators).

``hash`` prints the SHA-256 a site lists in ``[apps] allow``; ``keygen`` makes a
publisher key pair; ``sign`` writes the signature a site checks against its
``[apps] trusted_publishers``; ``verify`` checks one offline, as the site would.
"""

from __future__ import annotations

from pathlib import Path

import click

from appliance.bundle import build_bundle
from appliance.supernode.publisher import (
    PublisherError,
    generate_publisher_key,
    load_publisher_key,
    load_publisher_signing_key,
    parse_bundle_signature,
    sign_bundle,
    verify_bundle_signature,
)

_APP_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def app() -> None:
    """Hash, sign and verify app bundles."""


@app.command(name="hash")
@click.argument("app_dir", type=_APP_DIR)
def hash_(app_dir: Path) -> None:
    """Print the SHA-256 of APP_DIR's deterministic bundle (for [apps] allow)."""
    click.echo(f"sha256:{build_bundle(app_dir).sha256}")


@app.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
def keygen(out_dir: Path) -> None:
    """Create a publisher key pair in --out (publisher.key 0600, publisher.pub)."""
    private_path, public_path, key = generate_publisher_key(out_dir)
    click.echo(f"wrote {private_path}")
    click.echo(f"wrote {public_path}")
    click.echo(f"publisher {key.fingerprint}")


@app.command()
@click.argument("app_dir", type=_APP_DIR)
@click.option("--key", "key_path", required=True, type=_FILE, help="Publisher private key.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def sign(app_dir: Path, key_path: Path, out: Path) -> None:
    """Sign APP_DIR's bundle hash with a publisher key; write the signature to --out."""
    bundle = build_bundle(app_dir)
    signature = sign_bundle(load_publisher_signing_key(key_path), bundle.sha256)
    try:
        out.write_bytes(signature.to_bytes())
    except OSError as exc:
        raise PublisherError(f"cannot write {out}: {exc.strerror}") from None
    click.echo(f"wrote {out}")
    click.echo(f"sha256:{bundle.sha256} signed by publisher {signature.publisher}")


@app.command()
@click.argument("app_dir", type=_APP_DIR)
@click.option("--signature", "signature_path", required=True, type=_FILE)
@click.option(
    "--publisher",
    "publishers",
    required=True,
    multiple=True,
    type=_FILE,
    help="A trusted publisher's public key; repeatable.",
)
def verify(app_dir: Path, signature_path: Path, publishers: tuple[Path, ...]) -> None:
    """Check a signature over APP_DIR's bundle against trusted publisher keys."""
    bundle = build_bundle(app_dir)
    signature = parse_bundle_signature(signature_path.read_bytes())
    trusted = [load_publisher_key(path) for path in publishers]
    publisher = verify_bundle_signature(signature, bundle.sha256, trusted)
    click.echo(f"sha256:{bundle.sha256} signed by {publisher}")
