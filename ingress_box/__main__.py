"""``python -m ingress_box``: the same program as the ``ingress-box`` console script."""

from .cli.main import main

main(prog_name="ingress-box")
