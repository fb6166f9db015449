import sys

from vqjax.convert.cli import main

main(sys.argv[1:])
