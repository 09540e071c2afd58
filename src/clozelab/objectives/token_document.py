"""Token-document relation prediction (ERNIE 2.0, Sun et al. 2020; SPECS.md §20).

For each token of a segment, predict whether its id also occurs in another part of the same
document: a 2-way ``TokenClassifier`` reading ``token_document_labels``
(``clozelab.data.token_features``, computed from the shards for any instance kind). Tokens that
recur across a document are its key words (or common words): the paper's reason for the task.
Logs ``token_document_loss`` and ``token_document_acc``.
"""

from __future__ import annotations

from clozelab.objectives.token_classifier import TokenClassifier


class TokenDocumentRelation(TokenClassifier):
    """Does this token occur elsewhere in its document; reads
    ``batch["token_document_labels"]`` [B, T]."""

    name = "token_document"
    requires = ("token_document_labels",)
    label_key = "token_document_labels"
