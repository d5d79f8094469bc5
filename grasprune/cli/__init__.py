"""The ``grasprune`` command line."""
