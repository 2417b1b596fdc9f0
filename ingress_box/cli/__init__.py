"""The ``ingress-box`` command line: :mod:`.main` holds the program, one module per command
family beside it, all over :mod:`.common`. The console script is ``ingress_box.cli.main:main``.
"""
