"""The thin click layer: one module per ``em-*`` tool (console scripts in setup.cfg).

Each command parses its options, calls library functions, writes outputs and prints what it
wrote; the contract (stdout for data, one-line errors, exit codes, atomic writes) lives in
:mod:`emtools.cli.common`. This package imports the library; nothing in the library imports it
(``tests/test_layering.py`` checks both). Tools that need no torch (tile, augment, watershed,
agglomerate, eval) never import it.
"""
