"""Protocol buffer definitions and their generated code.

Only :mod:`appliance.wire` (and, later, the RPC layers) import the generated
modules. Regenerate with ``make proto``.
"""
