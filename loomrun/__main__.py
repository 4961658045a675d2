"""`python -m loomrun`: the same entry point as the `loom` console script."""

from loomrun._entry import main

if __name__ == "__main__":
    main()
