"""The one-command demos: a real federation of three sites on this machine.

``make demo`` runs ``python examples/demo.py`` (the hospital example); ``make
demo-bank`` runs ``python examples/demo.py bank``. Either creates a throwaway
federation CA, a SuperLink on SQLite and three SuperNodes -- separate processes
talking mutual TLS over 127.0.0.1, every node request signed with the site's Ed25519
key -- then submits the example as a data scientist under the sites' policies,
streams the run's progress, verifies the audit logs, and shuts everything down.

* **hospital**: SecAgg+ and central DP; each hospital's policy requires both and
  caps the site-level epsilon in its own budget ledger.
* **bank**: SecAgg+ and DP-SGD (Opacus) at every bank; each bank's policy requires
  SecAgg+ and caps the record-level epsilon its ledger books (needs the torch extra).

Every file it makes (certificates, keys, databases, logs) stays in one directory
inside the checkout, printed at the end. Processes are stopped even on Ctrl-C or
when a step fails. The machinery is ``demo_federation.py``; this file says what
differs between the examples.
"""

from __future__ import annotations

import argparse
import re
import sys

from demo_federation import ROOT, Example, run_demo

HOSPITAL_POLICY = """\
# {site}'s site policy: what may run here and what may leave.
[apps]
allow = ["sha256:{bundle}"]            # the hospital app, reviewed by this site

[privacy]
require_secure_aggregation = true      # train only inside SecAgg+ rounds...
min_secagg_cohort = 3                  # ...with at least 3 hospitals
require_dp = "central"                 # only runs that declare central DP, and...
clip_norm = 1.0                        # ...updates leave clipped to at most this norm
max_epsilon_per_run = 30               # site-level epsilon caps, kept in budget.db
max_epsilon_total = 100

[egress]
allowed_metric_keys = ["num-examples", "train-loss", "loss", "accuracy"]
allow_config_strings = false           # no free-form text leaves the site
allow_query = false

[execution]
memory_mb = 2048
wall_seconds = 120
# "none": the ClientApp gets its own empty network namespace (where the kernel allows
# unprivileged user namespaces; elsewhere see docs/site-policy.md).
network = "{network}"
"""

BANK_POLICY = """\
# {site}'s site policy: what may run here and what may leave.
[apps]
allow = ["sha256:{bundle}"]            # the bank app, reviewed by this bank

[privacy]
require_secure_aggregation = true      # train only inside SecAgg+ rounds...
min_secagg_cohort = 3                  # ...with at least 3 banks
require_dp = "dp-sgd"                  # only runs that train with DP-SGD (dp-mode = "dp-sgd"):
# their plan's record-level epsilon is booked in budget.db before any transaction is
# touched, and a plan over these caps is refused.
max_record_epsilon_per_run = 4
max_record_epsilon_total = 10

[egress]
allowed_metric_keys = ["num-examples", "auprc", "recall-at-fpr", "loss",
                       "dp-epsilon-record", "dp-delta-record", "dp-sgd-noise-multiplier"]
allow_config_strings = false           # no free-form text leaves the bank
allow_query = false

[execution]
memory_mb = 2048
wall_seconds = 120
network = "{network}"                  # see the hospital's policy above
"""


def _hospital_summary(output: str) -> str:
    accuracy = re.search(r"federated model: test accuracy (\S+)", output)
    spent = re.search(r"privacy spent: (.*)", output)
    return (
        f"federated test accuracy {accuracy.group(1) if accuracy else '?'}; "
        f"privacy spent {spent.group(1) if spent else '?'}"
    )


def _bank_summary(output: str) -> str:
    fpr = re.search(r"recall at a false-positive rate of (\S+)", output)
    result = re.search(r"federated, DP-SGD \(this run\)\s+AUPRC (\S+)\s+recall (\S+)", output)
    spent = re.search(
        r"privacy spent \(DP-SGD.*?\): ε = (\S+) at δ = (\S+), the largest of the banks' "
        r"\(([^)]*)\)",
        output,
    )
    auprc, recall = result.groups() if result else ("?", "?")
    each, delta = (spent.group(3), spent.group(2)) if spent else ("?", "?")
    return (
        f"federated AUPRC {auprc}, recall {recall} at {fpr.group(1) if fpr else '?'} FPR "
        f"(DP-SGD); record-level ε spent per bank {each} at δ = {delta}"
    )


EXAMPLES = {
    "hospital": Example(
        name="hospital",
        site_noun="hospital",
        sites=("st-marys", "city-general", "northside"),
        site_policy=HOSPITAL_POLICY,
        policy_summary=(
            "allowlist the app, require SecAgg+ (>= 3 sites) and central DP, cap epsilon"
        ),
        # z = 0.7: with three hospitals the noise on the mean is large; at z = 1 about one
        # run in twenty ends on a noisy last round (site-level epsilon: 26.3 vs 16.5).
        run_config={
            "secure-aggregation": True,
            "dp-mode": "central",
            "dp-noise-multiplier": 0.7,
        },
        run_summary="with SecAgg+ and central DP",
        summary=_hospital_summary,
        workdir=ROOT / "var" / "demo",
    ),
    "bank": Example(
        name="bank",
        site_noun="bank",
        # Partitions 0, 1, 2: a regional savings bank, a national bank, a digital bank.
        sites=("riverside-savings", "national-union", "nova-digital"),
        site_policy=BANK_POLICY,
        policy_summary=(
            "allowlist the app, require SecAgg+ (>= 3 sites) and DP-SGD, cap the "
            "record-level epsilon"
        ),
        # The app's own plan: DP-SGD at every bank, record-level ε = 2 at δ = 1e-5.
        run_config={"secure-aggregation": True},
        run_summary="with SecAgg+ and DP-SGD (record-level ε = 2 per bank)",
        summary=_bank_summary,
        workdir=ROOT / "var" / "demo-bank",
        needs=("torch", "opacus"),
        install_hint="the torch extra; make demo-bank installs it",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "example",
        nargs="?",
        default="hospital",
        choices=sorted(EXAMPLES),
        help="the example to run (default: hospital, what make demo runs)",
    )
    args = parser.parse_args(argv)
    return run_demo(EXAMPLES[args.example])


if __name__ == "__main__":
    sys.exit(main())
