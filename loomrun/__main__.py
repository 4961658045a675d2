"""`python -m loomrun`: the same entry point as the `loom` console script."""

from loomrun.cli import main

if __name__ == "__main__":
    main()
