"""Cross-check a site's audit log against the SuperLink's (issue 7, ``reconcile``).

Input: two exports (:mod:`audit.export`) and the two logs' verifier keys. Both
are verified first (:func:`audit.verify.check_export`; the SuperLink side may
be a chain of archives plus the live export, :mod:`audit.chain`); if either
fails, that is the only finding. Then, from the entry shapes in docs/audit.md
("Entries the runtime writes"):

* **replies, both ways** - every ``egress.reply`` on the site (``subjects.message_id``,
  ``details.sha256``) must match one ``reply.received`` on the SuperLink with
  the same id and hash, and every ``reply.received`` from the site's node(s)
  must match an ``egress.reply``. Missing on either side, a different hash,
  and one id logged with two hashes are findings. Replies older than the first
  entry of the other export (when it is an archived segment) are counted as
  unchecked, not missing;
* **tree heads** - every ``checkpoint.seen`` on the site (``details.note``, a
  tree head the SuperLink served) must be signed by the SuperLink key and be
  consistent with the SuperLink's export: a size beyond the export's end means
  the log was rolled back or truncated; otherwise a RFC 9162 consistency proof
  from that size to the export's end is computed from the export's leaves and
  verified against the root the site stored - it fails exactly when the log
  was forked or rewritten after the site saw it.

The site's node id(s) come from its ``egress.reply`` / ``message.received``
subjects (``node``) unless given. Reads files only; no database, no network.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from audit.chain import check_chain
from audit.checkpoint import verify_checkpoint
from audit.entry import Action, Entry, format_time, parse_entry
from audit.errors import (
    AuditUsageError,
    BadSignature,
    ExportFailed,
    MalformedNote,
    ProofError,
    ReconcileFailed,
)
from audit.note import VerifierKey, parse_verifier_key
from audit.tree import MerkleLevels, leaf_hash, verify_consistency
from audit.verify import ENTRIES_FILE, ExportReport, check_export

__all__ = ["Finding", "FindingKind", "ReconcileReport", "reconcile"]

_REPLY = b'"reply.received"'


class FindingKind(StrEnum):
    """What reconciliation found wrong."""

    SITE_LOG_INVALID = "site log does not verify"
    LINK_LOG_INVALID = "SuperLink log does not verify"
    MISSING_ON_LINK = "reply missing on the SuperLink"
    MISSING_ON_SITE = "reply missing on the site"
    HASH_MISMATCH = "reply hash mismatch"
    CONFLICTING_REPLY = "conflicting replies"
    BAD_TREE_HEAD = "tree head not signed by the SuperLink"
    ROLLED_BACK = "SuperLink log rolled back"
    FORKED = "SuperLink log forked"


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One disagreement, with the entries it is about (``seq`` in each log)."""

    kind: FindingKind
    message: str
    message_id: str | None = None
    site_entry: int | None = None
    link_entry: int | None = None
    tree_size: int | None = None

    def line(self) -> str:
        """One human-readable line."""
        return f"{self.kind.value}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileReport:
    """Result of :func:`reconcile`; ``ok`` when there are no findings."""

    nodes: tuple[str, ...] = ()
    site_entries: int = 0
    link_entries: int = 0
    replies_sent: int = 0
    replies_received: int = 0
    replies_matched: int = 0
    replies_unchecked: int = 0
    tree_heads_seen: int = 0
    tree_heads_consistent: int = 0
    tree_heads_unchecked: int = 0
    findings: tuple[Finding, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when the logs agree."""
        return not self.findings

    def to_error(self) -> ReconcileFailed:
        """The first finding (and how many there are) as a typed error."""
        if not self.findings:
            raise AuditUsageError("the logs agree: there is no error to raise")
        first = self.findings[0]
        more = f" (and {len(self.findings) - 1} more)" if len(self.findings) > 1 else ""
        return ReconcileFailed(
            f"{first.line()}{more}", entry_index=first.site_entry, tree_size=first.tree_size
        )


@dataclass(slots=True)
class _Reply:
    seq: int
    time: str
    sha256: str


@dataclass(slots=True)
class _Side:
    """What reconciliation needs from one log."""

    first_time: str | None = None
    archived_before: bool = False  # the export is a segment: older entries were archived
    replies: dict[str, list[_Reply]] = field(default_factory=dict)
    nodes: set[str] = field(default_factory=set)
    tree_heads: list[tuple[int, str]] = field(default_factory=list)  # (seq, note)
    entries: int = 0


def _lines(directory: Path) -> Iterator[bytes]:
    try:
        with (directory / ENTRIES_FILE).open("rb") as f:
            for raw in f:
                yield raw.rstrip(b"\n")
    except OSError as exc:
        raise ExportFailed(f"cannot read {ENTRIES_FILE} in {directory}: {exc.strerror}") from exc


def _reply(entry: Entry) -> tuple[str, _Reply] | None:
    message_id, sha = entry.subjects.get("message_id"), entry.details.get("sha256")
    if message_id is None or not isinstance(sha, str):
        return None
    return message_id, _Reply(seq=entry.seq, time=format_time(entry.time), sha256=sha.lower())


def _read_site(directory: Path) -> _Side:
    side = _Side()
    for line in _lines(directory):
        entry = parse_entry(line)
        side.entries += 1
        if side.first_time is None:
            side.first_time = format_time(entry.time)
        node = entry.subjects.get("node")
        if node is not None and entry.action in (Action.EGRESS_REPLY, Action.MESSAGE_RECEIVED):
            side.nodes.add(node)
        if entry.action is Action.EGRESS_REPLY and (reply := _reply(entry)):
            side.replies.setdefault(reply[0], []).append(reply[1])
        elif entry.action is Action.CHECKPOINT_SEEN:
            note = entry.details.get("note")
            side.tree_heads.append((entry.seq, note if isinstance(note, str) else ""))
    return side


def _read_link(
    directories: Sequence[Path], base_report: ExportReport
) -> tuple[_Side, MerkleLevels]:
    side = _Side()
    leaves: list[bytes] = []
    for directory in directories:
        for line in _lines(directory):
            leaves.append(leaf_hash(line))
            if side.first_time is None:
                side.first_time = format_time(parse_entry(line).time)
            if _REPLY in line:
                entry = parse_entry(line)
                if entry.action is Action.REPLY_RECEIVED and (reply := _reply(entry)):
                    node = entry.subjects.get("node", "")
                    side.replies.setdefault(f"{node}\n{reply[0]}", []).append(reply[1])
    side.entries = len(leaves)
    side.archived_before = base_report.start > 0
    base = None if base_report.segment is None else base_report.segment.start_range
    return side, MerkleLevels(leaves, base)


class _Reconciler:
    def __init__(self, site: _Side, link: _Side, levels: MerkleLevels, nodes: set[str]) -> None:
        self.site, self.link, self.levels, self.nodes = site, link, levels, nodes
        self.findings: list[Finding] = []
        self.counts = {"matched": 0, "unchecked": 0, "consistent": 0, "heads_unchecked": 0}

    def _conflicts(self, message_id: str, replies: list[_Reply], where: str) -> bool:
        hashes = {r.sha256 for r in replies}
        if len(hashes) > 1:
            self.findings.append(
                Finding(
                    kind=FindingKind.CONFLICTING_REPLY,
                    message=f"the {where} logged reply {message_id} with {len(hashes)} "
                    f"different hashes (entries {', '.join(str(r.seq) for r in replies)})",
                    message_id=message_id,
                    site_entry=replies[0].seq if where == "site" else None,
                    link_entry=replies[0].seq if where != "site" else None,
                )
            )
        return len(hashes) > 1

    def replies(self) -> None:
        link_by_id: dict[str, list[_Reply]] = {}
        for key, replies in self.link.replies.items():
            node, message_id = key.split("\n", 1)
            if node in self.nodes:
                link_by_id.setdefault(message_id, []).extend(replies)
        for message_id, sent in sorted(self.site.replies.items()):
            if self._conflicts(message_id, sent, "site"):
                continue
            received = link_by_id.get(message_id)
            if received is None:
                first = self.link.first_time
                if self.link.archived_before and first and sent[0].time < first:
                    self.counts["unchecked"] += 1
                    continue
                self.findings.append(
                    Finding(
                        kind=FindingKind.MISSING_ON_LINK,
                        message=f"the site sent reply {message_id} (site entry {sent[0].seq}, "
                        f"sha256 {sent[0].sha256}) but the SuperLink log has no reply.received",
                        message_id=message_id,
                        site_entry=sent[0].seq,
                    )
                )
            elif not self._conflicts(message_id, received, "SuperLink"):
                if received[0].sha256 != sent[0].sha256:
                    self.findings.append(
                        Finding(
                            kind=FindingKind.HASH_MISMATCH,
                            message=f"reply {message_id}: the site sent sha256 "
                            f"{sent[0].sha256} (site entry {sent[0].seq}) but the SuperLink "
                            f"received {received[0].sha256} (entry {received[0].seq})",
                            message_id=message_id,
                            site_entry=sent[0].seq,
                            link_entry=received[0].seq,
                        )
                    )
                else:
                    self.counts["matched"] += 1
        self._missing_on_site(link_by_id)

    def _missing_on_site(self, link_by_id: dict[str, list[_Reply]]) -> None:
        for message_id, received in sorted(link_by_id.items()):
            if message_id in self.site.replies:
                continue
            first = self.site.first_time
            if self.site.archived_before and first and received[0].time < first:
                self.counts["unchecked"] += 1
                continue
            self.findings.append(
                Finding(
                    kind=FindingKind.MISSING_ON_SITE,
                    message=f"the SuperLink logged reply {message_id} from this site (entry "
                    f"{received[0].seq}, sha256 {received[0].sha256}) but the site never "
                    "logged sending it",
                    message_id=message_id,
                    link_entry=received[0].seq,
                )
            )

    def tree_heads(self, link_key: VerifierKey) -> None:
        levels = self.levels
        end = levels.size
        end_root = levels.root(end)
        checked: set[tuple[int, bytes]] = set()
        for seq, note in self.site.tree_heads:
            try:
                cp = verify_checkpoint(note, link_key).checkpoint
            except (BadSignature, MalformedNote) as exc:
                self.findings.append(
                    Finding(
                        kind=FindingKind.BAD_TREE_HEAD,
                        message=f"site entry {seq} stores a tree head the SuperLink key does "
                        f"not verify: {exc}",
                        site_entry=seq,
                    )
                )
                continue
            if (cp.size, cp.root_hash) in checked:
                self.counts["consistent"] += 1
                continue
            if cp.size < levels.base_size:
                self.counts["heads_unchecked"] += 1
                continue
            if cp.size > end:
                self.findings.append(
                    Finding(
                        kind=FindingKind.ROLLED_BACK,
                        message=f"site entry {seq} stores a signed tree head of size {cp.size} "
                        f"but the SuperLink export ends at {end} entries: the log was rolled "
                        "back or truncated",
                        site_entry=seq,
                        tree_size=cp.size,
                    )
                )
                continue
            proof = levels.consistency_proof(cp.size, end)
            try:
                verify_consistency(cp.size, end, cp.root_hash, end_root, proof)
            except ProofError:
                self.findings.append(
                    Finding(
                        kind=FindingKind.FORKED,
                        message=f"site entry {seq} stores the signed root "
                        f"{cp.root_hash.hex()} at size {cp.size}, but the SuperLink's log has "
                        f"{levels.root(cp.size).hex()} there: the log was forked or rewritten",
                        site_entry=seq,
                        tree_size=cp.size,
                    )
                )
                continue
            checked.add((cp.size, cp.root_hash))
            self.counts["consistent"] += 1


def _key(key: VerifierKey | str) -> VerifierKey:
    return parse_verifier_key(key) if isinstance(key, str) else key


def _verify_link(
    link: str | Path | Sequence[str | Path], key: VerifierKey
) -> tuple[list[Path], ExportReport | None, str | None]:
    """Verify the SuperLink export(s): (directories, first segment's report, problem)."""
    dirs = [Path(link)] if isinstance(link, str | Path) else [Path(d) for d in link]
    if len(dirs) == 1:
        single = check_export(dirs[0], key)
        problem = single.problem
        return dirs, single, None if problem is None else problem.to_error().args[0]
    chain = check_chain(dirs, key)
    first = chain.segments[0] if chain.segments else None
    return dirs, first, None if chain.problem is None else chain.problem.to_error().args[0]


def reconcile(
    site_export_dir: str | Path,
    link_export_dir: str | Path | Sequence[str | Path],
    *,
    site_key: VerifierKey | str,
    link_key: VerifierKey | str,
    node: str | None = None,
) -> ReconcileReport:
    """Cross-check a site's export against the SuperLink's export(s).

    Args:
        site_export_dir: the site's export.
        link_export_dir: the SuperLink's export, or its archives then live export.
        site_key: the site log's verifier key.
        link_key: the SuperLink log's verifier key.
        node: the site's node id at the SuperLink (default: from the site log).

    Returns:
        Counts and findings; ``report.ok`` when the logs agree.

    Raises:
        MalformedNote: a key does not parse.
        AuditUsageError: the site's node id is unknown and the SuperLink logged replies.
        ExportFailed: an export cannot be read.
    """
    skey, lkey = _key(site_key), _key(link_key)
    site_report = check_export(site_export_dir, skey)
    if site_report.problem is not None:
        finding = Finding(
            kind=FindingKind.SITE_LOG_INVALID,
            message=site_report.problem.to_error().args[0],
            site_entry=site_report.problem.entry_index,
        )
        return ReconcileReport(findings=(finding,))
    dirs, first, problem = _verify_link(link_export_dir, lkey)
    if problem is not None or first is None:
        finding = Finding(kind=FindingKind.LINK_LOG_INVALID, message=str(problem))
        return ReconcileReport(findings=(finding,))
    site = _read_site(Path(site_export_dir))
    site.archived_before = site_report.start > 0
    link, levels = _read_link(dirs, first)
    nodes = {node} if node else site.nodes
    if not nodes and link.replies:
        raise AuditUsageError(
            "the site log names no node id (subjects.node): pass the site's node id"
        )
    work = _Reconciler(site, link, levels, nodes)
    work.replies()
    work.tree_heads(lkey)
    return ReconcileReport(
        nodes=tuple(sorted(nodes)),
        site_entries=site.entries,
        link_entries=link.entries,
        replies_sent=len(site.replies),
        replies_received=sum(1 for key in link.replies if key.split("\n", 1)[0] in nodes),
        replies_matched=work.counts["matched"],
        replies_unchecked=work.counts["unchecked"],
        tree_heads_seen=len(site.tree_heads),
        tree_heads_consistent=work.counts["consistent"],
        tree_heads_unchecked=work.counts["heads_unchecked"],
        findings=tuple(work.findings),
    )
