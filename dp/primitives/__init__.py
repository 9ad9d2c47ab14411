"""WARNING: raw noise and rounding primitives without any privacy check.

Nothing here clips, validates a sensitivity or accounts anything: adding Gaussian
noise of the wrong scale to an unclipped update gives no privacy at all. Only the
safe layer of ``dp`` (``dp.mechanisms``, ``dp.distributed``) imports this package;
applications and other packages use that layer instead.
"""
