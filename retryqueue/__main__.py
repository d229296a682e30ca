"""``python -m retryqueue``: the ``retryqueue`` command."""

from retryqueue.cli import main

if __name__ == "__main__":
    main()
