"""Differential privacy for federated learning.

Will hold clipping, central / local / distributed DP mechanisms, a real privacy
accountant, the per-site privacy-budget ledger and an Opacus helper for DP-SGD.
Imports only the leaf layer of ``appliance`` (records, message, apps).
"""
