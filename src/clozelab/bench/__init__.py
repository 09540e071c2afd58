"""``clozelab bench``: throughput side by side with the peer implementation (DESIGN §7).

- ``pretrain.py``: the command (``bench``: runs the sections ``bench.sections`` selects, writes
  ``bench.json``) and its pretrain, unpad and corruption sections;
- ``plm.py``: XLNet permutation LM against HF ``XLNetLMHeadModel``;
- ``seq2seq.py``: the T5 encoder-decoder step against HF ``T5ForConditionalGeneration``;
- ``knowledge.py``: ERNIE-THU's fusion overhead and entity pipeline speed.
"""

from clozelab.bench.pretrain import bench

__all__ = ["bench"]
