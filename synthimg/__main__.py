"""``python -m synthimg`` (also the entry point that torchrun and srun launch)."""

from synthimg.cli import main

if __name__ == "__main__":
    main()
