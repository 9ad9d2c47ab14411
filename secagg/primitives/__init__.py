"""DANGER: raw SecAgg+ building blocks with no safety checks. Import only from ``secagg``.

Nothing here validates who may learn what. :mod:`.prg` expands any 32-byte key
into a mask stream without caring whether the key was fresh, derived for the right
pair, or already used for another purpose; :mod:`.shamir` splits and reconstructs
field elements without checking thresholds against a security bound or that the
shares came from the right holders. Misused, either silently leaks an update.

The safe layer (:mod:`secagg.client`, :mod:`secagg.server`, :mod:`secagg.crypto`)
derives keys with HKDF and domain separation, chooses thresholds from
:func:`secagg.choose_parameters`, and is the only code meant to call these
functions. A test checks that nothing outside ``secagg`` imports this package.
"""
