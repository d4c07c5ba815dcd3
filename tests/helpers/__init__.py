"""Helpers shared by test modules (tests import from here, never from another test module).

`tests/` is on sys.path because tests/conftest.py lives there (pytest's rootdir-relative conftest import), so a
test writes `from helpers.cli import bastion`.
"""
