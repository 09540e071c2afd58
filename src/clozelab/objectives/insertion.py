"""Insertion detection: which tokens were inserted (extraneous insertion, SPECS §16).

Consumes the ``insert`` corruption's ``insertion_labels`` [B, T] (1 on an inserted token, 0 on an
original non-special one, -100 on specials and padding), the detection analogue of ``deletion``.
ELECTRA's discriminator head (dense H -> H, activation, dense H -> 1); the loss is the sigmoid
cross-entropy averaged over the labelled (non-special) positions of the batch.
"""

from __future__ import annotations

from clozelab.objectives.deletion import TokenDetection


class InsertionDetection(TokenDetection):
    """Predict, at each position, whether the token was inserted."""

    name = "insertion"
    labels_key = "insertion_labels"
    requires = ("insertion_labels",)
    requires_fix = "use corruption=insert (extraneous insertion), alone or in a composed corruption"
