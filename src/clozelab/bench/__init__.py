"""``clozelab bench``: throughput side by side with the peer implementation (DESIGN §7).

- ``command.py``: the command (``bench``: runs the sections ``bench.sections`` selects, writes
  ``bench.json``);
- ``pretrain.py``: the pretrain, unpad and corruption sections;
- ``plm.py``: XLNet permutation LM against HF ``XLNetLMHeadModel``;
- ``seq2seq.py``: the T5 encoder-decoder step against HF ``T5ForConditionalGeneration``;
- ``knowledge.py``: ERNIE-THU's fusion overhead and entity pipeline speed.
"""

from clozelab.bench.command import bench

__all__ = ["bench"]
