"""WSPO guarantees that ``make mutate`` found unchecked (docs/TESTING.md lists the mutants each kills): how
``map_token_values`` picks the destination token that owns a character when the destination tokens are not
the plain left-to-right, gap-free case the other tests use."""

from __future__ import annotations

from ml.stages.wspo import map_token_values

# One value per character, powers of two: every owner is visible in the sums.
TEXT = "abcdef"
CHARS = [(i, i + 1) for i in range(len(TEXT))]
VALS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]


def test_a_gap_goes_to_the_token_that_starts_after_it_whatever_the_token_indexes():
    """The next token is found by its START: here the gap b..d precedes the middle token (index 1, start 4),
    not the last one, and the indexes (0, 1, 2) are far from the starts (0, 4, 5)."""
    assert map_token_values(TEXT, CHARS, VALS, [(0, 1), (4, 5), (5, 6)]) == [1.0, 2.0 + 4.0 + 8.0 + 16.0, 32.0]


def test_the_owner_of_a_character_does_not_depend_on_the_order_the_tokens_are_listed():
    """A character belongs to the token covering it, and a gap to the token starting after it, however the
    destination offsets are listed: the mapping reads positions, not list order."""
    text = "ab cd"
    src = [(i, i + 1) for i in range(5)]
    vals = [1.0, 2.0, 4.0, 8.0, 16.0]
    assert map_token_values(text, src, vals, [(0, 2), (3, 5)]) == [3.0, 28.0]
    assert map_token_values(text, src, vals, [(3, 5), (0, 2)]) == [28.0, 3.0]


def test_a_zero_width_destination_token_in_a_gap_takes_the_gap_character_at_its_position():
    """A zero-width token at position p is the first token starting at or after character p, so an uncovered
    character p is its; then identical tokenisations with a zero-width token in a gap map value for value
    (a zero-width source token puts its value on character p as well)."""
    text = "a b"
    offs = [(0, 1), (1, 1), (2, 3)]
    assert map_token_values(text, offs, [1.0, 2.0, 4.0], offs) == [1.0, 2.0, 4.0]
    # Per-character source: the space (character 1) goes to the zero-width token, not past it.
    assert map_token_values(text, [(0, 1), (1, 2), (2, 3)], [1.0, 2.0, 4.0], offs) == [1.0, 2.0, 4.0]
