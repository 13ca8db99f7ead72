"""Moved to harness.testing.fake_openai (test code: product modules never import it). A re-export for the tests
that still import it from here; it goes away once they import harness.testing.fake_openai."""
from harness.testing.fake_openai import *  # noqa: F401,F403
from harness.testing.fake_openai import main

if __name__ == "__main__":
    raise SystemExit(main())
