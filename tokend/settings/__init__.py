"""The daemon's settings: every option declared once (:mod:`tokend.settings.options`, in the
terms of :mod:`tokend.option_table`), layered from the command line over ``TOKEND_*`` variables
over the defaults, and checked into one frozen :class:`tokend.settings.values.Settings` that the
service trees are built from. The ``tokend`` tool reads the same declarations and variables."""
