"""Site policy: what may run on this site and what may leave it (``site.toml``).

The only module that makes site decisions. The site administrator, not the data
scientist, writes ``site.toml``; :func:`load_policy` turns it into a frozen
:class:`SitePolicy` or raises :class:`PolicyError` naming the file, section and key
(unknown keys, wrong types, out-of-range values, contradictions). Every default is
either safe or absent: an empty file admits no bundle, answers no ``query``, lets
no string or unlisted metric leave, and isolates the ClientApp from the network.

Decisions are pure functions that return a verified object or raise
:class:`PolicyRefused` (``.key`` names the policy key, ``.reason`` is safe to send
to the ServerApp); the SuperNode turns a refusal into a ``POLICY_REFUSED`` error
reply with :func:`refusal_reply`:

* :func:`admit_bundle` -- before any bundle byte is unpacked: allowlisted hash, or a
  trusted publisher's signature (:mod:`appliance.supernode.publisher`);
* :func:`admit_message` -- before a message reaches the ClientApp;
* :func:`host_mods` -- the mods the SuperNode wraps around the ClientApp whatever
  the app declares (SecAgg+ with the site's minimum cohort, DP clipping/noise);
* :func:`verify_egress` -- on every reply, before it is signed: size, names,
  metric keys, strings, array values; it returns the exact frame to send;
* :func:`resource_limits` -- the ClientApp subprocess limits (:mod:`.limits`).

Left to others: reading the run's privacy plan and reserving budget
(:mod:`dp.ledger`, with this policy's caps), manual approval, receipts and the
audit log (they record :func:`policy_hash` and the :class:`EgressReport` facts).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from appliance.clientapp import CallNext, Mod
from appliance.context import Context
from appliance.errors import ApplianceError
from appliance.message import MAX_REASON_CHARS, Error, ErrorCode, Message
from appliance.records import ArrayRecord, ConfigRecord, MetricRecord, all_finite
from appliance.supernode.limits import ResourceLimits
from appliance.supernode.publisher import (
    PublisherError,
    PublisherKey,
    load_publisher_key,
    parse_bundle_digest,
    parse_bundle_signature,
    verify_bundle_signature,
)
from appliance.wire import WireError, encode_record_dict_hashed
from secagg import make_secagg_mod
from secagg.codec import STAGE_OF_TYPE, decode_reply, encode_reply
from secagg.errors import SecAggError

if TYPE_CHECKING:
    from secagg import CredentialsSource

__all__ = [
    "Admission",
    "AdmittedBundle",
    "ApprovalMode",
    "ApprovalPolicy",
    "ApprovedReply",
    "AppsPolicy",
    "DPMode",
    "EgressPolicy",
    "EgressRefused",
    "EgressReport",
    "EgressViolation",
    "ExecutionPolicy",
    "Network",
    "PolicyError",
    "PolicyRefused",
    "PrivacyPolicy",
    "SitePolicy",
    "admit_bundle",
    "admit_message",
    "check_data_path",
    "check_egress",
    "host_mods",
    "load_policy",
    "parse_policy",
    "policy_hash",
    "refusal_reply",
    "resource_limits",
    "verify_egress",
]

POLICY_FORMAT = "greenhouse-site-policy/v1"
MAX_POLICY_BYTES = 1 << 20
MIN_SECAGG_COHORT = 3  # SecAgg+ needs 3; with 2, each site learns the other's update
DEFAULT_REPLY_BYTES = 256 * 2**20
STANDARD_RECORD_NAMES = frozenset({"arrays", "metrics", "config"})


class PolicyError(ApplianceError):
    """``site.toml`` is invalid; the message names the file, section and key."""


class PolicyRefused(ApplianceError):
    """Site policy refused a bundle, a message or a reply.

    ``key`` names the policy key (``"egress.allow_query"``) or built-in rule that
    refused; ``reason`` never contains app-controlled text and may be sent back.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"site policy {key}: {reason}")
        self.key = key
        self.reason = reason


class EgressRefused(PolicyRefused):
    """A reply broke an egress rule; ``report`` holds the facts and every violation
    (with the site-only ``detail``) for the site's log."""

    def __init__(self, key: str, reason: str, report: EgressReport) -> None:
        super().__init__(key, reason)
        self.report = report


class DPMode(enum.StrEnum):
    """Who adds the noise a site requires (``[privacy] require_dp``)."""

    LOCAL = "local"  # the site clips and noises its own update (LocalDPMod)
    CENTRAL = "central"  # the site clips, the server noises the aggregate
    DISTRIBUTED = "distributed"  # the site adds its Skellam noise share under SecAgg+
    DP_SGD = "dp-sgd"  # the ClientApp trains with DP-SGD under the run's dp-sgd plan


class Network(enum.StrEnum):
    """The ClientApp's network access (``[execution] network``)."""

    NONE = "none"
    ALLOWED = "allowed"


class ApprovalMode(enum.StrEnum):
    """Whether a new run needs the site administrator's approval (``[approval] mode``)."""

    AUTO = "auto"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True, kw_only=True)
class AppsPolicy:
    """``[apps]``: which bundles may run. Empty: none."""

    allow: frozenset[str] = frozenset()  # lowercase hex SHA-256 digests
    trusted_publishers: tuple[PublisherKey, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyPolicy:
    """``[privacy]``: protections the SuperNode applies whatever the app declares."""

    require_secure_aggregation: bool = False
    min_secagg_cohort: int = 0  # MIN_SECAGG_COHORT by default when SecAgg+ is required
    require_dp: DPMode | None = None
    clip_norm: float | None = None
    local_epsilon_per_round: float | None = None
    local_delta: float | None = None
    max_epsilon_per_run: float | None = None
    max_epsilon_total: float | None = None
    #: Record-level caps (DP-SGD inside the site), kept apart from the site-level ones.
    max_record_epsilon_per_run: float | None = None
    max_record_epsilon_total: float | None = None
    #: The name the ledger keeps this site's data under.
    dataset: str = "default"


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressPolicy:
    """``[egress]``: what a reply may carry out of the site."""

    max_reply_bytes: int = DEFAULT_REPLY_BYTES
    allowed_record_names: frozenset[str] = STANDARD_RECORD_NAMES
    allowed_metric_keys: frozenset[str] = frozenset({"num-examples"})
    allowed_config_keys: frozenset[str] = frozenset()
    allow_config_strings: bool = False
    allow_query: bool = False
    max_error_reason_chars: int = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionPolicy:
    """``[execution]``: limits of the ClientApp subprocess."""

    memory_mb: int = 4096
    cpu_seconds: int = 3600  # per message
    wall_seconds: int = 3600  # per message
    network: Network = Network.NONE
    data_path: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalPolicy:
    """``[approval]``: who says yes to a new run."""

    mode: ApprovalMode = ApprovalMode.AUTO


@dataclass(frozen=True, slots=True, kw_only=True)
class SitePolicy:
    """A validated ``site.toml``. Build it with :func:`load_policy` / :func:`parse_policy`."""

    apps: AppsPolicy = AppsPolicy()
    privacy: PrivacyPolicy = PrivacyPolicy()
    egress: EgressPolicy = EgressPolicy()
    execution: ExecutionPolicy = ExecutionPolicy()
    approval: ApprovalPolicy = ApprovalPolicy()
    source: str = field(default="site.toml", compare=False)

    @property
    def policy_hash(self) -> str:
        """``sha256:<hex>`` of the canonical form (see :func:`policy_hash`)."""
        return policy_hash(self)


# -- parsing ----------------------------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, expected: str) -> None:
        self.expected = expected


_Parser = Callable[[object], Any]


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("true or false")
    return value


def _integer(low: int, high: int) -> _Parser:
    what = "a positive integer" if low == 1 else f"an integer >= {low}"

    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(what)
        if not low <= value <= high:
            raise _Invalid(f"{what} and at most {high}")
        return value

    return parse


def _positive_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("a positive number")
    if not (math.isfinite(value) and value > 0):
        raise _Invalid("a finite number > 0")
    return float(value)


def _probability(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise _Invalid("a number in (0, 1)")
    return float(value)


def _choice(kind: type[enum.StrEnum]) -> _Parser:
    names = " or ".join(repr(member.value) for member in kind)

    def parse(value: object) -> enum.StrEnum:
        if not isinstance(value, str) or value not in kind._value2member_map_:
            raise _Invalid(names)
        return kind(value)

    return parse


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _Invalid("a list of non-empty strings")
    if len(set(value)) != len(value):
        raise _Invalid("a list without duplicates")
    return tuple(value)


def _names(value: object) -> frozenset[str]:
    return frozenset(_strings(value))


def _digests(value: object) -> frozenset[str]:
    try:
        digests = [parse_bundle_digest(v) for v in _strings(value)]
    except PublisherError:
        raise _Invalid('a list of bundle hashes "sha256:<64 hex digits>"') from None
    return frozenset(digests)


def _dataset_name(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 128 or not value.isprintable():
        raise _Invalid("a printable name of 1..128 characters")
    return value


def _absolute_path(value: object) -> str:
    if not isinstance(value, str) or not os.path.isabs(value):
        raise _Invalid("an absolute path")
    return value


_SCHEMA: dict[str, dict[str, _Parser]] = {
    "apps": {"allow": _digests, "trusted_publishers": _strings},
    "privacy": {
        "require_secure_aggregation": _boolean,
        "min_secagg_cohort": _integer(MIN_SECAGG_COHORT, 100_000),
        "require_dp": _choice(DPMode),
        "clip_norm": _positive_number,
        "local_epsilon_per_round": _positive_number,
        "local_delta": _probability,
        "max_epsilon_per_run": _positive_number,
        "max_epsilon_total": _positive_number,
        "max_record_epsilon_per_run": _positive_number,
        "max_record_epsilon_total": _positive_number,
        "dataset": _dataset_name,
    },
    "egress": {
        "max_reply_bytes": _integer(1, 2**31),
        "allowed_record_names": _names,
        "allowed_metric_keys": _names,
        "allowed_config_keys": _names,
        "allow_config_strings": _boolean,
        "allow_query": _boolean,
        "max_error_reason_chars": _integer(0, MAX_REASON_CHARS),
    },
    "execution": {
        "memory_mb": _integer(256, 2**22),
        "cpu_seconds": _integer(1, 10**7),
        "wall_seconds": _integer(1, 10**7),
        "network": _choice(Network),
        "data_path": _absolute_path,
    },
    "approval": {"mode": _choice(ApprovalMode)},
}


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _section(source: str, name: str, table: object) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise PolicyError(f"{source}: [{name}] must be a table, got {_show(table)}")
    schema = _SCHEMA[name]
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise PolicyError(
            f"{source}: unknown key [{name}] {unknown[0]} (known: {', '.join(sorted(schema))})"
        )
    values = {}
    for key, value in table.items():
        try:
            values[key] = schema[key](value)
        except _Invalid as exc:
            raise PolicyError(
                f"{source}: [{name}] {key} must be {exc.expected}, got {_show(value)}"
            ) from None
    return values


def _publishers(source: str, paths: tuple[str, ...], base_dir: Path) -> tuple[PublisherKey, ...]:
    keys: list[PublisherKey] = []
    for index, text in enumerate(paths):
        path = Path(text) if os.path.isabs(text) else base_dir / text
        where = f"{source}: [apps] trusted_publishers[{index}]"
        try:
            _check_not_writable_by_others(path, "publisher key")
            key = load_publisher_key(path)
        except (PublisherError, PolicyError) as exc:
            raise PolicyError(f"{where}: {exc}") from None
        if key in keys:
            raise PolicyError(f"{where}: {text!r} is the same key as an earlier entry")
        keys.append(key)
    return tuple(keys)


def _privacy(source: str, values: dict[str, Any]) -> PrivacyPolicy:
    def bad(text: str) -> PolicyError:
        return PolicyError(f"{source}: [privacy] {text}")

    required = values.get("require_secure_aggregation", False)
    if "min_secagg_cohort" in values and not required:
        raise bad("min_secagg_cohort needs require_secure_aggregation = true")
    if required:
        values.setdefault("min_secagg_cohort", MIN_SECAGG_COHORT)
    mode = values.get("require_dp")
    local_keys = [k for k in ("local_epsilon_per_round", "local_delta") if k in values]
    if mode is not DPMode.LOCAL and local_keys:
        raise bad(f"{local_keys[0]} is only used with require_dp = 'local'")
    if mode is DPMode.DISTRIBUTED and not required:
        raise bad("require_dp = 'distributed' needs require_secure_aggregation = true")
    if mode is DPMode.DP_SGD:  # record-level: the run's plan, the record caps
        needed = ["max_record_epsilon_per_run", "max_record_epsilon_total"]
        missing = [k for k in needed if k not in values]
        if missing:
            raise bad(f"require_dp = 'dp-sgd' needs {', '.join(missing)}")
    elif mode is not None:
        needed = ["clip_norm", "max_epsilon_per_run", "max_epsilon_total"]
        needed += ["local_epsilon_per_round", "local_delta"] if mode is DPMode.LOCAL else []
        missing = [k for k in needed if k not in values]
        if missing:
            raise bad(f"require_dp = {mode.value!r} needs {', '.join(missing)}")
    per_run, total = values.get("max_epsilon_per_run"), values.get("max_epsilon_total")
    if per_run is not None and total is not None and per_run > total:
        raise bad(f"max_epsilon_per_run ({per_run:g}) exceeds max_epsilon_total ({total:g})")
    if (per_run is None) != (total is None):
        raise bad("max_epsilon_per_run and max_epsilon_total go together")
    record = values.get("max_record_epsilon_per_run"), values.get("max_record_epsilon_total")
    if (record[0] is None) != (record[1] is None):
        raise bad("max_record_epsilon_per_run and max_record_epsilon_total go together")
    if record[0] is not None and record[1] is not None and record[0] > record[1]:
        raise bad(
            f"max_record_epsilon_per_run ({record[0]:g}) exceeds "
            f"max_record_epsilon_total ({record[1]:g})"
        )
    per_round = values.get("local_epsilon_per_round")
    if per_round is not None and per_run is not None and per_round > per_run:
        raise bad(
            f"local_epsilon_per_round ({per_round:g}) exceeds max_epsilon_per_run ({per_run:g})"
        )
    return PrivacyPolicy(**values)


def parse_policy(
    text: str, *, source: str = "site.toml", base_dir: Path | None = None
) -> SitePolicy:
    """Validate the TOML ``text`` of a site policy.

    Args:
        text: the file's content.
        source: the file name used in error messages.
        base_dir: where relative ``trusted_publishers`` paths start (default: cwd).

    Returns:
        The frozen policy.

    Raises:
        PolicyError: invalid TOML, an unknown section or key, a wrong type or value,
            contradicting keys, or an unreadable publisher key.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: invalid TOML: {exc}") from None
    unknown = sorted(set(document) - set(_SCHEMA))
    if unknown:
        raise PolicyError(
            f"{source}: unknown section [{unknown[0]}] (known: {', '.join(sorted(_SCHEMA))})"
        )
    sections = {name: _section(source, name, document.get(name, {})) for name in _SCHEMA}
    apps = sections["apps"]
    publishers = _publishers(source, apps.get("trusted_publishers", ()), base_dir or Path())
    return SitePolicy(
        apps=AppsPolicy(allow=apps.get("allow", frozenset()), trusted_publishers=publishers),
        privacy=_privacy(source, sections["privacy"]),
        egress=EgressPolicy(**sections["egress"]),
        execution=ExecutionPolicy(**sections["execution"]),
        approval=ApprovalPolicy(**sections["approval"]),
        source=source,
    )


def _check_not_writable_by_others(path: Path, what: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise PolicyError(f"cannot read {what} {path}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o022:
        raise PolicyError(
            f"{what} {path} is writable by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod go-w {path}"
        )


def load_policy(path: Path) -> SitePolicy:
    """Read and validate ``site.toml`` (at start, on SIGHUP, and in ``greenhouse policy check``).

    The file, and every publisher key it names, must not be writable by group or
    others: whoever can edit them decides what runs on the site.

    Raises:
        PolicyError: the file is unreadable, too large, writable by others, not
            UTF-8, or invalid (see :func:`parse_policy`).
    """
    _check_not_writable_by_others(path, "site policy")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyError(f"cannot read site policy {path}: {exc.strerror}") from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"{path.name}: larger than {MAX_POLICY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{path.name}: not UTF-8 text") from None
    return parse_policy(text, source=path.name, base_dir=path.parent)


def _canonical(value: object) -> object:
    if isinstance(value, PublisherKey):
        return value.public_key.hex()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, frozenset | tuple):
        return sorted(_canonical(v) for v in value)  # type: ignore[type-var]
    if dataclasses.is_dataclass(value):
        return {
            f.name: _canonical(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.compare
        }
    return value


def policy_hash(policy: SitePolicy) -> str:
    """``sha256:<hex>`` over the policy's canonical JSON (keys sorted, sets sorted,
    publisher keys as raw-key hex, the file name and comments excluded), for
    receipts and the audit log: two files meaning the same policy hash equally."""
    body = {"format": POLICY_FORMAT, "policy": _canonical(policy)}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- bundles and messages ---------------------------------------------------------------


class Admission(enum.StrEnum):
    """Why a bundle was admitted."""

    ALLOWLIST = "allowlist"
    PUBLISHER = "publisher"


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmittedBundle:
    """A bundle digest this site's policy admits. Only :func:`admit_bundle` makes one."""

    sha256: str
    via: Admission
    publisher: str | None = None  # the publisher key fingerprint, when via PUBLISHER


def admit_bundle(
    policy: SitePolicy, bundle_sha256: str, *, signature: bytes | None = None
) -> AdmittedBundle:
    """Decide whether a run's bundle may be fetched, unpacked and run here.

    Call it with the run's declared digest before fetching the bundle; unpacking
    with ``extract_bundle(expected_sha256=...)`` then proves the bytes match.

    Args:
        policy: the site policy.
        bundle_sha256: the digest (hex or ``sha256:<hex>``).
        signature: the publisher signature file's bytes, if the run has one.

    Returns:
        The admitted bundle and why it was admitted.

    Raises:
        PolicyRefused: ``apps.allow`` (not listed, no signature) or
            ``apps.trusted_publishers`` (signature missing, malformed, for another
            bundle, by an untrusted publisher, or not verifying).
    """
    try:
        digest = parse_bundle_digest(bundle_sha256)
    except PublisherError:
        raise PolicyRefused("apps.allow", "the run's bundle digest is malformed") from None
    if digest in policy.apps.allow:
        return AdmittedBundle(sha256=digest, via=Admission.ALLOWLIST)
    name = f"bundle sha256:{digest}"
    if not policy.apps.trusted_publishers:
        raise PolicyRefused("apps.allow", f"{name} is not on this site's allowlist")
    if signature is None:
        raise PolicyRefused(
            "apps.trusted_publishers",
            f"{name} is not on this site's allowlist and carries no publisher signature",
        )
    try:
        publisher = verify_bundle_signature(
            parse_bundle_signature(signature), digest, policy.apps.trusted_publishers
        )
    except PublisherError as exc:
        raise PolicyRefused("apps.trusted_publishers", f"{name}: {exc}") from None
    return AdmittedBundle(sha256=digest, via=Admission.PUBLISHER, publisher=publisher.fingerprint)


def admit_message(policy: SitePolicy, message: Message) -> None:
    """Decide whether an incoming message may reach the ClientApp (and its host mods).

    Raises:
        PolicyRefused: ``egress.allow_query`` (a query on a site that answers none),
            ``privacy.require_secure_aggregation`` (a ``train`` message that is not a
            SecAgg+ stage), or ``messages`` (``system.*`` messages, which no
            ClientApp needs; or a message without content).
    """
    message_type = message.metadata.message_type
    kind = message_type.split(".", 1)[0]
    if not message.has_content():
        raise PolicyRefused("messages", "a message without content is not accepted")
    if kind == "query" and not policy.egress.allow_query:
        raise PolicyRefused("egress.allow_query", "this site answers no query messages")
    if kind == "system":
        raise PolicyRefused("messages", f"{message_type!r} messages are not accepted")
    privacy = policy.privacy
    if kind == "train" and privacy.require_secure_aggregation and message_type not in STAGE_OF_TYPE:
        raise PolicyRefused(
            "privacy.require_secure_aggregation",
            f"this site trains only under SecAgg+ with at least {privacy.min_secagg_cohort} "
            f"nodes; refused a plain {message_type!r} message",
        )


def refusal_reply(request: Message, refused: PolicyRefused) -> Message:
    """The ``POLICY_REFUSED`` error reply the ServerApp sees for a refusal."""
    return Message(Error(ErrorCode.POLICY_REFUSED, str(refused)), reply_to=request)


# -- host mods and limits ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ModInputs:
    secagg_credentials: CredentialsSource | None
    unsafe_dp_rng: np.random.Generator | None


def _refusing(mod: Mod, key: str) -> Mod:
    """Turn the DP mods' refusals (``dp.DPError``) into ``POLICY_REFUSED`` replies."""
    from dp.errors import ClippingNormRefused, DPError  # dp imports take ~1 s: load lazily

    def guarded(message: Message, context: Context, call_next: CallNext) -> Message:
        try:
            return mod(message, context, call_next)
        except ClippingNormRefused as exc:
            return refusal_reply(message, PolicyRefused("privacy.clip_norm", str(exc)))
        except DPError as exc:
            return refusal_reply(message, PolicyRefused(key, f"{type(exc).__name__}: {exc}"))

    return guarded


def _clipping_mod(policy: SitePolicy, _inputs: _ModInputs) -> Mod:
    from dp import ClientSideClippingMod

    assert policy.privacy.clip_norm is not None
    mod = ClientSideClippingMod(max_clipping_norm=policy.privacy.clip_norm)
    return _refusing(mod, "privacy.clip_norm")


def _local_dp_mod(policy: SitePolicy, inputs: _ModInputs) -> Mod:
    from dp import LocalDPMod

    p = policy.privacy
    assert p.clip_norm is not None
    assert p.local_epsilon_per_round is not None
    assert p.local_delta is not None
    mod = LocalDPMod(
        clipping_norm=p.clip_norm,
        epsilon=p.local_epsilon_per_round,
        delta=p.local_delta,
        unsafe_rng=inputs.unsafe_dp_rng,
    )
    return _refusing(mod, "privacy.require_dp")


def _no_host_mod(_policy: SitePolicy, _inputs: _ModInputs) -> None:
    """Distributed DP: the SecAgg+ mod's encoder clips and adds the site's noise share.
    DP-SGD: the ClientApp adds the noise; the site holds the run to its plan at
    admission (the record-level ledger) and at egress (the reported ε)."""
    return None


#: How each ``require_dp`` mode is enforced at the site, beyond the SecAgg+ mod.
_DP_ENFORCERS: dict[DPMode, Callable[[SitePolicy, _ModInputs], Mod | None]] = {
    DPMode.CENTRAL: _clipping_mod,
    DPMode.LOCAL: _local_dp_mod,
    DPMode.DISTRIBUTED: _no_host_mod,
    DPMode.DP_SGD: _no_host_mod,
}


def _secagg_host_mod(policy: SitePolicy, inputs: _ModInputs) -> Mod | None:
    required = policy.privacy.require_secure_aggregation
    if inputs.secagg_credentials is None:
        if required:
            raise PolicyError(
                f"{policy.source}: [privacy] require_secure_aggregation = true needs the "
                "node's SecAgg+ credentials (none in insecure development mode)"
            )
        return None
    from appliance.distributed_dp import SkellamEncoder

    privacy = policy.privacy
    encoder = SkellamEncoder(
        required=privacy.require_dp is DPMode.DISTRIBUTED,
        max_clipping_norm=privacy.clip_norm,
        unsafe_rng=inputs.unsafe_dp_rng,
    )
    cohort = privacy.min_secagg_cohort if required else 0
    return make_secagg_mod(inputs.secagg_credentials, min_cohort=cohort, integer_encoder=encoder)


def _dp_host_mod(policy: SitePolicy, inputs: _ModInputs) -> Mod | None:
    mode = policy.privacy.require_dp
    if mode is not None:
        return _DP_ENFORCERS[mode](policy, inputs)
    if policy.privacy.clip_norm is not None:
        return _clipping_mod(policy, inputs)  # clip_norm alone: clip every update
    return None


#: The host mods, outermost first: SecAgg+ masks what the DP mods clipped and noised.
#: Requiring another mod is one line here.
_HOST_MODS: tuple[Callable[[SitePolicy, _ModInputs], Mod | None], ...] = (
    _secagg_host_mod,
    _dp_host_mod,
)


def host_mods(
    policy: SitePolicy,
    *,
    secagg_credentials: CredentialsSource | None,
    unsafe_dp_rng: np.random.Generator | None = None,
) -> list[Mod]:
    """The mods the SuperNode wraps around every ClientApp call, whatever the app declares.

    Args:
        policy: the site policy.
        secagg_credentials: the node's SecAgg+ credentials (``None`` in insecure mode).
        unsafe_dp_rng: a seeded generator for local-DP noise (tests only; logged).

    Returns:
        Mods for ``wrap_with_mods``, outermost first: SecAgg+ (with the site's
        ``min_secagg_cohort`` when required), then client-side clipping or local DP.

    Raises:
        PolicyError: SecAgg+ is required but there are no credentials.
    """
    inputs = _ModInputs(secagg_credentials, unsafe_dp_rng)
    return [mod for build in _HOST_MODS if (mod := build(policy, inputs)) is not None]


def resource_limits(policy: SitePolicy) -> ResourceLimits:
    """The ClientApp subprocess limits of ``[execution]`` (wall time is the caller's timeout)."""
    execution = policy.execution
    return ResourceLimits(
        memory_bytes=execution.memory_mb * 2**20,
        cpu_seconds=execution.cpu_seconds,
        isolate_network=execution.network is Network.NONE,
    )


def check_data_path(policy: SitePolicy) -> list[str]:
    """Problems with ``[execution] data_path`` as this process sees it (empty: fine).

    The path must exist and must not be writable by the SuperNode's user: the
    deployment mounts it read-only (container ``:ro`` volume, systemd
    ``ReadOnlyPaths=``); this check shows whether it did.
    """
    path = policy.execution.data_path
    if path is None:
        return []
    if not os.path.exists(path):
        return [f"[execution] data_path {path} does not exist"]
    if os.access(path, os.W_OK):
        return [f"[execution] data_path {path} is writable; mount it read-only"]
    return []


# -- egress -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EgressViolation:
    """One egress rule a reply broke.

    ``reason`` holds no app-controlled text (safe to send back); ``detail`` names
    the offending records and keys for the site's own log only.
    """

    key: str
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressReport:
    """What a reply would carry out of the site: the facts the site's audit log records."""

    message_id: str
    reply_to: str
    message_type: str
    size_bytes: int  # the content frame's length (a lower bound if refused unencoded)
    content_sha256: str  # hex SHA-256 of the content frame; "" for error replies
    record_names: tuple[str, ...]
    metric_keys: tuple[str, ...]
    error_code: int | None
    violations: tuple[EgressViolation, ...]

    @property
    def allowed(self) -> bool:
        """Whether the reply may leave."""
        return not self.violations


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovedReply:
    """A reply that passed egress. Only :func:`verify_egress` makes one.

    Send and sign exactly ``frame`` (the content's wire encoding, ``b""`` for an
    error reply) with ``message``'s metadata and error: that is what was checked.
    """

    message: Message
    frame: bytes | memoryview = field(repr=False)
    report: EgressReport


def _host_metric_keys(policy: SitePolicy) -> frozenset[str]:
    """Metric keys the site's own DP mods add to replies."""
    privacy = policy.privacy
    if privacy.require_dp is None and privacy.clip_norm is None:
        return frozenset()
    from dp import keys  # lazily: see _refusing
    from dp.spend import PrivacySpend, PrivacyUnit

    own = {keys.CLIPPING_NORM, keys.WITHIN_CLIP, keys.UNIT_WEIGHT}
    if privacy.require_dp is DPMode.LOCAL:
        own |= {keys.LOCAL_RELEASES}
        own |= set(PrivacySpend(epsilon=0, delta=0, unit=PrivacyUnit.SITE).to_metrics())
    if privacy.require_dp is DPMode.DP_SGD:  # the app's report the egress rule checks
        own |= set(PrivacySpend(epsilon=0, delta=0, unit=PrivacyUnit.RECORD).to_metrics())
    return frozenset(own)


def _is_secagg_reply(request: Message, reply: Message) -> bool:
    """Whether ``reply`` is exactly a SecAgg+ protocol reply to ``request``'s stage."""
    stage = STAGE_OF_TYPE.get(request.metadata.message_type)
    if stage is None:
        return False
    try:
        return encode_reply(decode_reply(stage, reply)) == reply.content
    except (SecAggError, ValueError, TypeError):
        return False


def _violation(key: str, reason: str, record: str, names: list[str]) -> EgressViolation:
    listed = f": {', '.join(repr(n[:64]) for n in names[:10])}" if names else ""
    return EgressViolation(key, reason, f"record {record[:64]!r}{listed}")


def _is_text(value: object) -> bool:
    if isinstance(value, list):
        return bool(value) and isinstance(value[0], str | bytes)
    return isinstance(value, str | bytes)


def _names_in(request: Message) -> tuple[set[str], set[str], set[str]]:
    """Record names, array names and config keys the request carried (echoing is safe)."""
    records: set[str] = set()
    arrays: set[str] = set()
    config: set[str] = set()
    if request.has_content():
        for name, record in request.content.items():
            records.add(name)
            if isinstance(record, ArrayRecord):
                arrays.update(record)
            elif isinstance(record, ConfigRecord):
                config.update(record)
    return records, arrays, config


def _record_violations(
    policy: SitePolicy, reply: Message, request: Message
) -> list[EgressViolation]:
    egress = policy.egress
    sent_records, sent_arrays, sent_config = _names_in(request)
    metric_keys = egress.allowed_metric_keys | _host_metric_keys(policy)
    found: list[EgressViolation] = []
    for name, record in reply.content.items():
        if name not in egress.allowed_record_names and name not in sent_records:
            found.append(
                _violation("egress.allowed_record_names", "a record name is not allowed", name, [])
            )
        if isinstance(record, MetricRecord):
            extra = [k for k in record if k not in metric_keys]
            if extra:
                reason = f"a MetricRecord holds {len(extra)} key(s) not in allowed_metric_keys"
                found.append(_violation("egress.allowed_metric_keys", reason, name, extra))
        elif isinstance(record, ConfigRecord):
            found += _config_violations(policy, name, record, sent_config)
        else:
            found += _array_violations(name, record, sent_arrays)
    return found


def _config_violations(
    policy: SitePolicy, name: str, record: ConfigRecord, sent_keys: set[str]
) -> list[EgressViolation]:
    egress = policy.egress
    if egress.allow_config_strings:
        return []
    found = []
    textual = [k for k, v in record.items() if _is_text(v)]
    if textual:
        reason = (
            f"a ConfigRecord holds {len(textual)} string or bytes value(s); "
            "no free-form text leaves this site"
        )
        found.append(_violation("egress.allow_config_strings", reason, name, textual))
    extra = [k for k in record if k not in egress.allowed_config_keys and k not in sent_keys]
    if extra:
        reason = f"a ConfigRecord holds {len(extra)} key(s) not in allowed_config_keys"
        found.append(_violation("egress.allowed_config_keys", reason, name, extra))
    return found


def _array_violations(name: str, record: ArrayRecord, sent: set[str]) -> list[EgressViolation]:
    found = []
    unknown = [k for k in record if k not in sent and not (k.isdigit() and len(k) <= 9)]
    if unknown:
        reason = f"an ArrayRecord holds {len(unknown)} array name(s) not in the request"
        found.append(_violation("egress.array_names", reason, name, unknown))
    bad = [
        k
        for k, a in record.items()
        if not isinstance(a, np.ndarray) or not a.dtype.isnative or not all_finite(a)
    ]
    if bad:
        reason = f"{len(bad)} array(s) hold NaN or infinite values or are not native numbers"
        found.append(_violation("egress.array_values", reason, name, bad))
    return found


def _safe_reason(reason: str, limit: int) -> str:
    text = " ".join("".join(c if c.isprintable() else " " for c in reason).split())
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..." if limit > 3 else text[:limit]


def _record_epsilon_violation(reply: Message, cap: float) -> EgressViolation | None:
    """A DP-SGD run's train reply must report its record-level ε once, at most the plan's."""
    from dp.errors import DPError  # lazily: see _refusing
    from dp.spend import PrivacySpend, PrivacyUnit

    key = "privacy.dp_sgd"
    reported = []
    for record in reply.content.metric_records.values():
        try:
            spend = PrivacySpend.from_metrics(record, PrivacyUnit.RECORD)
        except DPError:
            return EgressViolation(key, "the reported record-level epsilon is malformed")
        if spend is not None:
            reported.append(spend.epsilon)
    if len(reported) != 1:
        return EgressViolation(
            key, "a DP-SGD run's train reply must report its record-level epsilon once"
        )
    if reported[0] > cap * (1 + 1e-9):
        return EgressViolation(
            key,
            f"the reply reports record-level epsilon {reported[0]:.4g}, above the run's "
            f"dp-target-epsilon {cap:g}",
        )
    return None


def _inspect(
    policy: SitePolicy,
    reply: Message,
    request: Message,
    host_secagg: bool,
    record_epsilon_cap: float | None = None,
) -> tuple[Message, bytes | memoryview, EgressReport]:
    meta = reply.metadata
    facts: dict[str, Any] = {
        "message_id": meta.message_id,
        "reply_to": meta.reply_to_message_id,
        "message_type": meta.message_type,
    }
    if reply.has_error():
        reason = _safe_reason(reply.error.reason, policy.egress.max_error_reason_chars)
        error = Error(reply.error.code, reason)
        report = EgressReport(
            **facts,
            size_bytes=0,
            content_sha256="",
            record_names=(),
            metric_keys=(),
            error_code=error.code,
            violations=(),
        )
        return Message.from_parts(meta, error), b"", report
    content = reply.content
    violations = []
    if meta.reply_to_message_id != request.metadata.message_id:
        violations.append(EgressViolation("messages", "the reply answers another message"))
    if not (host_secagg and _is_secagg_reply(request, reply)):
        violations += _record_violations(policy, reply, request)
    if record_epsilon_cap is not None and meta.message_type == "train":
        violation = _record_epsilon_violation(reply, record_epsilon_cap)
        violations += [violation] if violation is not None else []
    limit = policy.egress.max_reply_bytes
    array_bytes = sum(r.nbytes for r in content.array_records.values())
    frame: bytes | memoryview = b""
    frame_sha256 = b""
    try:
        if array_bytes <= limit:
            frame, frame_sha256 = encode_record_dict_hashed(content)
    except WireError:
        violations.append(EgressViolation("messages", "the reply cannot be encoded"))
    size = max(array_bytes, len(frame))
    if size > limit:
        reason = f"the reply is {size} bytes, over the site's {limit}"
        violations.append(EgressViolation("egress.max_reply_bytes", reason))
    metric_keys = sorted({k for r in content.metric_records.values() for k in r})
    report = EgressReport(
        **facts,
        size_bytes=size,
        content_sha256=frame_sha256.hex() if frame else "",
        record_names=tuple(content),
        metric_keys=tuple(metric_keys),
        error_code=None,
        violations=tuple(violations),
    )
    return reply, frame, report


def check_egress(
    policy: SitePolicy, reply: Message, *, request: Message, host_secagg: bool = False
) -> EgressReport:
    """What ``reply`` would carry out, and which egress rules it breaks (empty: none).

    Rules for a content reply: at most ``max_reply_bytes`` (encoded frame); record
    names in ``allowed_record_names`` or as in the request; metric keys in
    ``allowed_metric_keys`` (plus those of the site's own DP mods); config keys in
    ``allowed_config_keys`` or as in the request and no ``str``/``bytes`` values,
    unless ``allow_config_strings``; array names as in the request or indices;
    native numeric arrays without NaN/Inf. A reply that is exactly a SecAgg+
    protocol message for the request's stage (keys, shares, masked vector made by
    the SuperNode's own SecAgg+ mod, ``host_secagg=True``) skips the name and
    string rules. Error replies always pass; their reasons are trimmed to
    ``max_error_reason_chars`` printable characters by :func:`verify_egress`.

    Args:
        policy: the site policy.
        reply: the reply, after the host mods.
        request: the message it answers.
        host_secagg: whether the SuperNode runs the SecAgg+ host mod.
    """
    return _inspect(policy, reply, request, host_secagg)[2]


def verify_egress(
    policy: SitePolicy,
    reply: Message,
    *,
    request: Message,
    host_secagg: bool = False,
    record_epsilon_cap: float | None = None,
) -> ApprovedReply:
    """Check ``reply`` (see :func:`check_egress`) and return what may be signed and sent.

    Returns:
        The reply (an error reply with its reason trimmed), its encoded frame and
        the report for the audit log.

    Raises:
        EgressRefused: a rule is broken; ``key`` is the first broken rule's key,
            ``reason`` gives its reason and the other broken rules' keys, without any
            app-controlled text; ``report`` is for the site's log. Send
            ``refusal_reply(request, exc)`` instead (it passes egress).

    ``record_epsilon_cap``: the run's DP-SGD target; a ``train`` reply must then
    report its record-level ε (``dp-epsilon-record``), at most the cap.
    """
    safe, frame, report = _inspect(policy, reply, request, host_secagg, record_epsilon_cap)
    if report.violations:
        first, *others = report.violations
        also = sorted({v.key for v in others} - {first.key})
        more = f" (also: {', '.join(also)})" if also else ""
        raise EgressRefused(
            first.key, f"reply blocked, nothing of it left the site: {first.reason}{more}", report
        )
    return ApprovedReply(message=safe, frame=frame, report=report)
