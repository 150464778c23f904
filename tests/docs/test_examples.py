"""The docs-run harness's reading of the docs (tests/docs/examples.py), checked fast: how a command is split,
what counts as a curl call, where a `# -> NNN` status is read, and that the real docs have nothing it would
skip (a curl command in a non-shell block, a `# -> NNN` on no curl, a `python -m ml` line it cannot read)."""

from __future__ import annotations

from .examples import (
    CURL_DOCS,
    curl_blocks,
    curl_outside_shell,
    fenced_blocks,
    ml_examples,
    ml_mentions,
    split_commands,
)

BLOCK = """H=http://x/api/v1   # the server
TOKEN=$(curl -s -X POST $H/auth/token/ \\
        -d '{"username": "alice",
             "password": "# not a comment"}' | python -c 'print(1)')
curl -s "$H/jobs/?page=2"   # -> 404 (past the end)
# a comment that mentions curl is no call
echo curl-less; curl -s $H/kinds/ | grep -c curl
"""


def test_commands_join_continuations_and_quoted_newlines():
    commands = split_commands(BLOCK, 1)
    assert [c.line for c in commands] == [1, 2, 5, 7]
    assert [c.curl_calls for c in commands] == [0, 1, 1, 1]  # `grep -c curl`: an argument, not a call
    assert [c.expect for c in commands] == [None, None, 404, None]
    assert "# not a comment" in commands[1].code and "\n" in commands[1].code  # inside quotes: kept


def test_the_docs_have_no_example_the_harness_would_skip():
    blocks = curl_blocks()
    assert blocks and all(b.lang in ("bash", "sh", "shell", "console", "") for b in blocks)
    assert not curl_outside_shell(), "a curl command in a json/python/... block: nothing would run it"
    for doc in CURL_DOCS:
        for block in fenced_blocks(doc):
            for c in block.commands:
                assert c.expect is None or c.curl_calls, f"{doc}:{c.line}: a `# -> NNN` on a line with no curl call"
    assert len(ml_examples()) == ml_mentions() > 0
