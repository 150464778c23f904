"""WSPO guarantees that ``make mutate`` found unchecked (docs/TESTING.md lists the mutants each kills): how
``map_token_values`` picks the destination token that owns a character when the destination tokens are not
the plain left-to-right, gap-free case the other tests use, and the loss's mean over very few tokens."""

from __future__ import annotations

import pytest
import torch

from ml.stages.wspo import map_token_values, wspo_loss

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


def test_what_lies_past_the_text_goes_to_the_last_token_even_with_several_at_the_end():
    """A value past the text (a zero-width source token at its end) goes to the LAST destination token, not
    to the first of several zero-width tokens sitting at the end of the text."""
    text = "ab"
    src = [(0, 1), (1, 2), (2, 2)]
    assert map_token_values(text, src, [1.0, 2.0, 4.0], [(0, 2), (2, 2), (2, 2)]) == [3.0, 0.0, 4.0]


def test_each_sequence_weighs_the_same_whatever_its_length():
    """Per-sequence normalisation (the reference's): a 1-token response with error 0.2 and a 3-token one with errors
    0 weigh equally: (0.04 / 1 + 0 / 3) / 2, not the token mean 0.04 / 4."""
    policy = torch.zeros(2, 3)
    ref = torch.zeros(2, 3)
    target = torch.tensor([[0.2, 9.0, 9.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert wspo_loss(policy, ref, target, mask, 0.5).item() == pytest.approx(0.2**2 / 2)
    # A sequence without response tokens is left out of the mean, not counted as a zero.
    mask3 = torch.cat([mask, torch.zeros(1, 3)])
    policy3, ref3, target3 = torch.zeros(3, 3), torch.zeros(3, 3), torch.cat([target, torch.zeros(1, 3)])
    assert wspo_loss(policy3, ref3, target3, mask3, 0.5).item() == pytest.approx(0.2**2 / 2)


def test_the_loss_of_a_batch_with_one_response_token_is_that_tokens_squared_error():
    """The mean is over the masked tokens however few: one token's squared error is divided by 1, and a batch
    with no response token gives 0, not NaN."""
    policy = torch.tensor([[0.0, -1.0, -2.0]])
    ref = torch.tensor([[0.0, -1.5, -1.0]])
    target = torch.tensor([[9.0, 0.05, 9.0]])  # token 1: 0.5 * (-1.0 + 1.5) - 0.05 = 0.2
    one = torch.tensor([[0.0, 1.0, 0.0]])
    assert wspo_loss(policy, ref, target, one, 0.5).item() == pytest.approx(0.2**2)
    assert wspo_loss(policy, ref, target, torch.zeros_like(one), 0.5).item() == 0.0
