"""`python -m dae` runs the command-line interface."""
from dae.pipeline.cli import main

if __name__ == "__main__":
    main()
